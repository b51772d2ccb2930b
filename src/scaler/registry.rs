//! Trigger type → builder.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use super::{BuildContext, Scaler, ScalerError, TriggerSpec};

/// Makes scalers of one trigger type. Builders live as long as the registry, so they are
/// where shared client pools belong.
#[async_trait]
pub trait ScalerBuilder: Send + Sync {
    /// Builds a scaler for a trigger. Parameter errors are `config` errors naming the
    /// trigger and the parameter; nothing is connected yet where that can wait for `poll`.
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError>;
}

/// Maps trigger types to builders.
#[derive(Clone, Default)]
pub struct Registry {
    builders: BTreeMap<String, Arc<dyn ScalerBuilder>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.builders.keys()).finish()
    }
}

impl Registry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry with every built-in scaler compiled into this build.
    #[must_use]
    pub fn with_builtins() -> Self {
        #[allow(unused_mut)]
        let mut r = Registry::new();
        #[cfg(feature = "http")]
        r.register(
            "metrics-api",
            crate::scalers::http::MetricsApiBuilder::default(),
        );
        #[cfg(feature = "kafka")]
        r.register("kafka", crate::scalers::kafka::KafkaBuilder::default());
        #[cfg(feature = "rabbitmq")]
        r.register(
            "rabbitmq",
            crate::scalers::rabbitmq::RabbitMqBuilder::default(),
        );
        #[cfg(feature = "redis")]
        {
            let redis = Arc::new(crate::scalers::redis::RedisBuilder::default());
            r.register_arc("redis", redis.clone());
            r.register_arc("redis-streams", redis);
        }
        r
    }

    /// Registers (or replaces) the builder of a trigger type.
    pub fn register(
        &mut self,
        type_name: impl Into<String>,
        builder: impl ScalerBuilder + 'static,
    ) -> &mut Self {
        self.register_arc(type_name, Arc::new(builder))
    }

    /// Registers a shared builder.
    pub fn register_arc(
        &mut self,
        type_name: impl Into<String>,
        builder: Arc<dyn ScalerBuilder>,
    ) -> &mut Self {
        self.builders.insert(type_name.into(), builder);
        self
    }

    /// The registered type names.
    pub fn types(&self) -> impl Iterator<Item = &str> {
        self.builders.keys().map(String::as_str)
    }

    /// Builds a scaler for a trigger.
    pub async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let Some(builder) = self.builders.get(&spec.type_name) else {
            return Err(ScalerError::new(
                super::ErrorKind::Config,
                &spec.label,
                format!(
                    "unknown trigger type {:?}; this build knows: {}",
                    spec.type_name,
                    self.types().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        builder.build(spec, ctx).await
    }
}
