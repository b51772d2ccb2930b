//! The scale run: 10,000 triggers across 1,000 ScaledObjects in one engine — per
//! ScaledObject 4 metrics-api triggers (an in-process HTTPS source), 5 Redis triggers (the
//! TLS Redis fixture) and 1 RabbitMQ trigger (the AMQPS fixture); with the `kafka`
//! feature, one of the Redis triggers becomes a Kafka trigger (the TLS Kafka fixture,
//! 10 topics × 100 groups) — polled every 30 s, then every 1 s. Reports resident memory
//! and CPU per 1,000 triggers, connections per source, failed polls, and p50/p99 poll
//! latency.
//!
//! Needs `fixtures/brokers.sh start`. `cargo bench --bench scale [--features kafka]`

#[path = "../examples/support/https_source.rs"]
mod https_source;
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use trustscale::scaler::{
    BuildContext, MetricSpec, Poll, Registry, Scaler, ScalerBuilder, ScalerError, TriggerSpec,
};
use trustscale::trust::{TrustFactory, TrustOptions};
use trustscale_operator::engine::{Engine, LogSink};
use trustscale_operator::manifest::ManifestSet;
use trustscale_operator::metrics::Metrics;

#[derive(Default)]
struct Record {
    micros: Mutex<Vec<u32>>,
    failed: AtomicU64,
    ok: AtomicU64,
}

/// Wraps a builder so that every poll is timed: the SDK's registry is the hook.
struct Timed {
    inner: Arc<dyn ScalerBuilder>,
    record: Arc<Record>,
}

struct TimedScaler {
    inner: Box<dyn Scaler>,
    record: Arc<Record>,
}

#[async_trait]
impl ScalerBuilder for Timed {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        Ok(Box::new(TimedScaler {
            inner: self.inner.build(spec, ctx).await?,
            record: Arc::clone(&self.record),
        }))
    }
}

#[async_trait]
impl Scaler for TimedScaler {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        self.inner.metric_specs()
    }
    async fn poll(&self) -> Result<Poll, ScalerError> {
        let start = Instant::now();
        let r = self.inner.poll().await;
        let us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
        if let Ok(mut v) = self.record.micros.lock() {
            v.push(us);
        }
        match &r {
            Ok(_) => self.record.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                if self.record.failed.fetch_add(1, Ordering::Relaxed) < 3 {
                    eprintln!("poll failed: {e}");
                }
                0
            }
        };
        r
    }
}

fn manifests(interval: u32, api_url: &str, redis_port: &str, amqps_port: &str) -> String {
    let mut out = String::new();
    for so in 0..1000 {
        let _ = write!(
            out,
            "---\nkind: ScaledObject\nmetadata: {{name: so-{so}, namespace: scale}}\nspec:\n  pollingInterval: {interval}\n  triggers:\n"
        );
        for i in 0..4 {
            let _ = writeln!(
                out,
                "    - type: metrics-api\n      metadata: {{url: \"{api_url}?t={i}\", valueLocation: queue.depth, targetValue: \"10\"}}"
            );
        }
        let redis_triggers = if cfg!(feature = "kafka") { 4 } else { 5 };
        for i in 0..redis_triggers {
            let _ = writeln!(
                out,
                "    - type: redis\n      metadata: {{address: \"localhost:{redis_port}\", listName: \"scale-{so}-{i}\", enableTLS: \"true\"}}"
            );
        }
        #[cfg(feature = "kafka")]
        {
            let _ = writeln!(
                out,
                "    - type: kafka\n      metadata: {{bootstrapServers: \"{}\", consumerGroup: {}, topic: {}, tls: enable}}",
                kafka::bootstrap(),
                kafka::group(so % 100),
                kafka::topic(so % 10)
            );
        }
        let _ = writeln!(
            out,
            "    - type: rabbitmq\n      metadata: {{host: \"amqps://admin:adminpass@localhost:{amqps_port}/\", queueName: scale-queue, mode: QueueLength, value: \"10\"}}"
        );
    }
    out
}

/// The Kafka part: topics and groups on the TLS fixture, and the connections to it.
#[cfg(feature = "kafka")]
mod kafka {

    pub fn bootstrap() -> String {
        super::support::fixture_env()["KAFKA_TLS_BOOTSTRAP"].clone()
    }
    pub fn topic(t: usize) -> String {
        format!("scale-{}-topic-{t}", std::process::id())
    }
    pub fn group(g: usize) -> String {
        format!("scale-{}-group-{g}", std::process::id())
    }

    /// 10 topics of 4 partitions with 5 records each, and 100 groups committed at offset
    /// 2 everywhere, over TLS.
    pub async fn seed() {
        let env = super::support::fixture_env();
        let ca = std::path::PathBuf::from(&env["TRUSTSCALE_CA_CERT"]);
        let config = super::support::kafka::config(&bootstrap(), Some(&ca), None);
        let topics: Vec<String> = (0..10).map(topic).collect();
        let groups: Vec<String> = (0..100).map(group).collect();
        super::support::seed_kafka(&config, None, &topics, &groups).await;
    }

    /// Established connections from this process to the Kafka TLS port.
    pub fn connections() -> usize {
        let port = bootstrap()
            .rsplit(':')
            .next()
            .unwrap_or_default()
            .to_string();
        let out = std::process::Command::new("ss")
            .args([
                "-Htnp",
                "state",
                "established",
                "dport",
                "=",
                &format!(":{port}"),
            ])
            .output()
            .unwrap();
        let me = format!("pid={},", std::process::id());
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&me))
            .count()
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p) as usize]) / 1000.0
}

async fn redis_clients(port: &str, ca: &std::path::Path) -> u64 {
    let out = tokio::process::Command::new("redis-cli")
        .args(["--tls", "--cacert"])
        .arg(ca)
        .args(["-p", port, "INFO", "clients"])
        .output()
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("connected_clients:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn amqp_connections(env: &BTreeMap<String, String>) -> usize {
    let out = std::process::Command::new(&env["RABBITMQCTL"])
        .args([
            "list_connections",
            "client_properties",
            "--no-table-headers",
            "-q",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("trustscale (scale/"))
        .count()
}

fn main() {
    let env = support::fixture_env();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = env["RABBITMQ_NODENAME"].clone();
    let declared = std::process::Command::new(&env["RABBITMQCTL"])
        .args(["-n", &node, "eval", "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"scale-queue\">>), false, false, [], none, <<\"bench\">>)."])
        .status()
        .unwrap();
    assert!(declared.success());
    rt.block_on(async {
        let work = tempfile::tempdir().unwrap();
        let ca_dir = work.path().join("ca");
        let source = https_source::start(&ca_dir, "scale-source").await.unwrap();
        source.set(25);
        std::fs::copy(&env["TRUSTSCALE_CA_CERT"], ca_dir.join("fixture-ca.crt")).unwrap();
        let ca_cert = std::path::PathBuf::from(&env["TRUSTSCALE_CA_CERT"]);
        #[cfg(feature = "kafka")]
        kafka::seed().await;
        for (interval, run_for) in [(30u32, Duration::from_secs(100)), (1, Duration::from_secs(30))] {
            let record = Arc::new(Record::default());
            let builtins = trustscale_operator::builtins::registry();
            let mut registry = Registry::new();
            let inner: Vec<(&str, Arc<dyn ScalerBuilder>)> = vec![
                ("metrics-api", Arc::new(trustscale_metrics_api::MetricsApiBuilder::default())),
                ("redis", Arc::new(trustscale_redis::RedisBuilder::default())),
                ("rabbitmq", Arc::new(trustscale_rabbitmq::RabbitMqBuilder::default())),
                #[cfg(feature = "kafka")]
                ("kafka", Arc::new(trustscale_kafka::KafkaBuilder::default())),
            ];
            for (name, b) in inner {
                registry.register(name, Timed { inner: b, record: Arc::clone(&record) });
            }
            drop(builtins);
            let trust = TrustFactory::new(TrustOptions::default().ca_dirs([&ca_dir])).unwrap();
            let redis_before = redis_clients(&env["REDIS_TLS_PORT"], &ca_cert).await;
            let accepted_before = source.accepted.load(Ordering::Relaxed);
            let rss_before = support::rss_kib();
            let engine = Engine::new(registry, BuildContext { trust }, Arc::new(Metrics::default()), Arc::new(LogSink));
            let mut set = ManifestSet::default();
            set.add_text(std::path::Path::new("scale.yaml"), &manifests(interval, &source.url(), &env["REDIS_TLS_PORT"], &env["RABBITMQ_AMQPS_PORT"]));
            assert!(set.problems.is_empty(), "{:?}", set.problems.first());
            let started = Instant::now();
            engine.apply(&set, &trustscale_operator::manifest::Env::process()).await;
            // Let the first round (building 10,000 scalers) settle, then measure.
            tokio::time::sleep(Duration::from_secs(if interval == 1 { 5 } else { 40 })).await;
            if let Ok(mut v) = record.micros.lock() {
                v.clear();
            }
            let (ok0, failed0) = (record.ok.load(Ordering::Relaxed), record.failed.load(Ordering::Relaxed));
            let cpu0 = support::cpu_seconds();
            let t0 = Instant::now();
            tokio::time::sleep(run_for.saturating_sub(started.elapsed()).max(Duration::from_secs(20))).await;
            let window = t0.elapsed();
            let cpu = support::cpu_seconds() - cpu0;
            let rss = support::rss_kib().saturating_sub(rss_before);
            let redis_conns = redis_clients(&env["REDIS_TLS_PORT"], &ca_cert).await.saturating_sub(redis_before);
            let amqp_conns = amqp_connections(&env);
            let https_conns = source.accepted.load(Ordering::Relaxed) - accepted_before;
            #[cfg(feature = "kafka")]
            let kafka_conns = format!(", kafka (TLS) {}", kafka::connections());
            #[cfg(not(feature = "kafka"))]
            let kafka_conns = String::new();
            let (ok, failed) = (record.ok.load(Ordering::Relaxed) - ok0, record.failed.load(Ordering::Relaxed) - failed0);
            let mut lat = record.micros.lock().map(|v| v.clone()).unwrap_or_default();
            lat.sort_unstable();
            println!(
                "interval {interval:>2} s, 10,000 triggers / 1,000 ScaledObjects, measured over {:.0} s:\n  RSS +{:.1} MiB in all = {:.2} MiB per 1,000 triggers; CPU {:.1} mCPU per 1,000 triggers ({:.2} CPU-s)\n  connections: redis {redis_conns}, rabbitmq (AMQPS) {amqp_conns}, HTTPS source {https_conns} accepted since start{kafka_conns}\n  polls: {ok} ok, {failed} failed ({:.3} %); latency p50 {:.2} ms, p99 {:.2} ms",
                window.as_secs_f64(),
                rss as f64 / 1024.0,
                rss as f64 / 1024.0 / 10.0,
                cpu / window.as_secs_f64() * 1000.0 / 10.0,
                cpu,
                if ok + failed == 0 { 0.0 } else { failed as f64 * 100.0 / (ok + failed) as f64 },
                percentile(&lat, 0.5),
                percentile(&lat, 0.99),
            );
            engine.shutdown().await;
            drop(engine);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}
