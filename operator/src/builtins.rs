//! The built-in scalers compiled into this build, each its own crate behind the cargo
//! feature of the same name.

use trustscale::scaler::Registry;

/// The trigger types of the built-in scalers compiled into this build.
#[must_use]
pub fn types() -> Vec<&'static str> {
    let mut types = Vec::new();
    if cfg!(feature = "kafka") {
        types.push("kafka");
    }
    if cfg!(feature = "metrics-api") {
        types.push("metrics-api");
    }
    if cfg!(feature = "rabbitmq") {
        types.push("rabbitmq");
    }
    if cfg!(feature = "redis") {
        types.extend(["redis", "redis-streams"]);
    }
    types
}

/// A registry with every built-in scaler compiled into this build.
#[must_use]
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut r = Registry::new();
    #[cfg(feature = "metrics-api")]
    r.register(
        "metrics-api",
        trustscale_metrics_api::MetricsApiBuilder::default(),
    );
    #[cfg(feature = "kafka")]
    r.register("kafka", trustscale_kafka::KafkaBuilder::default());
    #[cfg(feature = "rabbitmq")]
    r.register("rabbitmq", trustscale_rabbitmq::RabbitMqBuilder::default());
    #[cfg(feature = "redis")]
    {
        let redis = std::sync::Arc::new(trustscale_redis::RedisBuilder::default());
        r.register_arc("redis", redis.clone());
        r.register_arc("redis-streams", redis);
    }
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_registry_holds_the_compiled_types() {
        let r = super::registry();
        let registered: Vec<&str> = r.types().collect();
        let mut want = super::types();
        want.sort_unstable();
        assert_eq!(registered, want);
    }
}
