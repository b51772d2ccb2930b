//! Helpers shared by the benchmarks: the fixture environment and process measurements.
#![allow(dead_code)]

use std::collections::BTreeMap;

/// Trigger `index` of ScaledObject `bench/<object>`, of type `type_name`, with `meta`.
pub fn trigger(
    object: &str,
    index: usize,
    type_name: &str,
    meta: &[(&str, &str)],
) -> trustscale::scaler::TriggerSpec {
    trustscale::scaler::TriggerSpec::new(
        trustscale::scaler::ObjectRef {
            namespace: "bench".into(),
            name: object.into(),
        },
        index,
        type_name,
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// The variables `fixtures/brokers.sh start` wrote; panics with instructions without them.
pub fn fixture_env() -> BTreeMap<String, String> {
    let path = std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/fixtures/env"
    ))
    .to_path_buf();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; start the fixtures with `fixtures/brokers.sh start`",
            path.display()
        )
    });
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// Resident memory of this process, KiB.
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds used by this process so far (user + system).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (field(11) + field(12)) / 100.0
}

#[cfg(feature = "kafka")]
#[path = "../../tests/support/kafka.rs"]
pub mod kafka;

pub mod plot;
pub mod proc;

/// The benchmarks' Kafka data: each of `topics` with 4 partitions of 5 records, and every
/// one of `groups` committed at offset 2 on all of them (a lag of 3 per partition).
/// Topics are made through `mock` when given, else through the admin API.
#[cfg(feature = "kafka")]
pub async fn seed_kafka(
    base: &trustscale_kafka::rdkafka::ClientConfig,
    mock: Option<
        &trustscale_kafka::rdkafka::mocking::MockCluster<
            'static,
            trustscale_kafka::rdkafka::producer::DefaultProducerContext,
        >,
    >,
    topics: &[String],
    groups: &[String],
) {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    match mock {
        Some(m) => {
            for t in &names {
                m.create_topic(t, 4, 1).unwrap();
            }
        }
        None => kafka::create_topics(base, &names, 4).await,
    }
    for t in &names {
        kafka::produce(base, t, &[5; 4]);
        for g in groups {
            kafka::commit(base, g, t, &[Some(2); 4]);
        }
    }
}
