//! Kafka scaler figures against librdkafka's in-process mock cluster: 1,000 triggers
//! (10 topics × 100 consumer groups) on one cluster — rdkafka clients created, resident
//! memory per additional trigger, and the time of one full poll round.
//!
//! `cargo bench --bench kafka --features kafka` (mock cluster), or
//! `cargo bench --bench kafka --features kafka -- tls` (the fixture's tansu broker over
//! TLS; `fixtures/brokers.sh start kafka` first).

use std::time::Instant;

use trustscale::scaler::{BuildContext, Scaler, ScalerBuilder};
use trustscale::trust::{TrustFactory, TrustOptions};
use trustscale_kafka::KafkaBuilder;
use trustscale_kafka::rdkafka::mocking::MockCluster;

mod support;

fn main() {
    // `-- tls`: against the fixture's tansu broker behind stunnel (TLS, custom CA folder)
    // instead of the in-process mock cluster.
    let tls = std::env::args().any(|a| a == "tls");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = (!tls).then(|| MockCluster::new(1).unwrap());
    let (boot, ca_file, ca_dirs) = if tls {
        let env = support::fixture_env();
        let pki = std::path::PathBuf::from(&env["TRUSTSCALE_PKI_DIR"]);
        let dir =
            std::env::temp_dir().join(format!("trustscale-kafka-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(pki.join("ca.crt"), dir.join("ca.crt")).unwrap();
        (
            env["KAFKA_TLS_BOOTSTRAP"].clone(),
            Some(pki.join("ca.crt")),
            vec![dir],
        )
    } else {
        let mock = mock.as_ref().unwrap();
        (mock.bootstrap_servers(), None, Vec::new())
    };
    let run = std::process::id();
    let topic_name = |t: usize| format!("topic-{run}-{t}");
    let group_name = |g: usize| format!("group-{run}-{g}");
    let topics: Vec<String> = (0..10).map(topic_name).collect();
    let groups: Vec<String> = (0..100).map(group_name).collect();
    rt.block_on(support::seed_kafka(
        &support::kafka::config(&boot, ca_file.as_deref(), None),
        mock.as_ref(),
        &topics,
        &groups,
    ));
    let ctx = BuildContext {
        // `-- no-system-roots`: only the CA folder (how much of a TLS client's memory is the
        // system trust store that every librdkafka client parses for itself).
        trust: TrustFactory::new(
            TrustOptions::default()
                .ca_dirs(ca_dirs)
                .system_roots(!std::env::args().any(|a| a == "no-system-roots")),
        )
        .unwrap(),
    };
    let builder = KafkaBuilder::default();
    let spec = |i: usize| {
        let (group, topic) = (group_name(i / 10), topic_name(i % 10));
        support::trigger(
            &format!("so-{}", i / 10),
            i % 10,
            "kafka",
            &[
                ("bootstrapServers", &boot),
                ("consumerGroup", &group),
                ("topic", &topic),
                ("tls", if tls { "enable" } else { "disable" }),
            ],
        )
    };
    // The first trigger brings the cluster client; measure the 999 after it.
    let first = rt.block_on(builder.build(&spec(0), &ctx)).unwrap();
    rt.block_on(first.poll()).unwrap();
    let rss0 = support::rss_kib();
    let mut scalers: Vec<Box<dyn Scaler>> = vec![first];
    for i in 1..1000 {
        scalers.push(rt.block_on(builder.build(&spec(i), &ctx)).unwrap());
    }
    let start = Instant::now();
    let results = rt.block_on(futures_util::future::join_all(
        scalers.iter().map(|s| s.poll()),
    ));
    let round = start.elapsed();
    let rss1 = support::rss_kib();
    let failed = results.iter().filter(|r| r.is_err()).count();
    let lag: f64 = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|p| p.metrics[0].value)
        .sum();
    let start = Instant::now();
    let again = rt.block_on(futures_util::future::join_all(
        scalers.iter().map(|s| s.poll()),
    ));
    let round2 = start.elapsed();
    println!(
        "1,000 kafka triggers (10 topics x 100 groups), one cluster ({}): {} cluster client set, {} rdkafka clients created, RSS +{:.1} KiB per additional trigger, first poll round {round:?}, second {round2:?}, {failed}+{} failed, total lag {lag}",
        if tls {
            "tansu behind stunnel, TLS"
        } else {
            "librdkafka mock cluster"
        },
        builder.live_clusters(),
        builder.clusters()[0].clients_created(),
        rss1.saturating_sub(rss0) as f64 / 999.0,
        again.iter().filter(|r| r.is_err()).count(),
    );
}
