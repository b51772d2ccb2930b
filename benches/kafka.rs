//! Kafka scaler figures against librdkafka's in-process mock cluster: 1,000 triggers
//! (10 topics × 100 consumer groups) on one cluster — rdkafka clients created, resident
//! memory per additional trigger, and the time of one full poll round.
//!
//! `cargo bench --bench kafka --features kafka` (mock cluster), or
//! `cargo bench --bench kafka --features kafka -- tls` (the fixture's tansu broker over
//! TLS; `fixtures/brokers.sh start kafka` first).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use trustscale::scaler::{BuildContext, ObjectRef, Scaler, ScalerBuilder, TriggerSpec};
use trustscale::scalers::kafka::KafkaBuilder;
use trustscale::trust::{TrustFactory, TrustOptions};

mod support;

/// librdkafka settings of the bench's own producer and committer.
fn seed_config(boot: &str, ca: Option<&str>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", boot);
    if let Some(ca) = ca {
        c.set("security.protocol", "ssl").set("ssl.ca.location", ca);
    }
    c
}

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
            Some(pki.join("ca.crt").display().to_string()),
            vec![dir],
        )
    } else {
        let mock = mock.as_ref().unwrap();
        (mock.bootstrap_servers(), None, Vec::new())
    };
    let run = std::process::id();
    let topic_name = |t: usize| format!("topic-{run}-{t}");
    let group_name = |g: usize| format!("group-{run}-{g}");
    let ca = ca_file.as_deref();
    let producer: BaseProducer = seed_config(&boot, ca)
        .set("linger.ms", "0")
        .create()
        .unwrap();
    if tls {
        let admin: AdminClient<DefaultClientContext> = seed_config(&boot, ca).create().unwrap();
        let topics: Vec<String> = (0..10).map(topic_name).collect();
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, 4, TopicReplication::Fixed(1)))
            .collect();
        for r in rt
            .block_on(admin.create_topics(new.iter(), &AdminOptions::new()))
            .unwrap()
        {
            r.unwrap();
        }
    } else if let Some(mock) = &mock {
        for t in 0..10 {
            mock.create_topic(&topic_name(t), 4, 1).unwrap();
        }
    }
    // One record per produce request (tansu 0.6.0 miscounts batches).
    for t in 0..10 {
        for p in 0..4 {
            for _ in 0..5 {
                producer
                    .send(
                        BaseRecord::<(), str>::to(&topic_name(t))
                            .partition(p)
                            .payload("x"),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap();
                producer.flush(Duration::from_secs(10)).unwrap();
            }
        }
    }
    for g in 0..100 {
        let c: BaseConsumer = seed_config(&boot, ca)
            .set("group.id", group_name(g))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in 0..10 {
            for p in 0..4 {
                tpl.add_partition_offset(&topic_name(t), p, Offset::Offset(2))
                    .unwrap();
            }
        }
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let ctx = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs(ca_dirs)).unwrap(),
    };
    let builder = KafkaBuilder::default();
    let spec = |i: usize| {
        let meta: BTreeMap<String, String> = [
            ("bootstrapServers", boot.clone()),
            ("consumerGroup", group_name(i / 10)),
            ("topic", topic_name(i % 10)),
            ("tls", if tls { "enable" } else { "disable" }.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        TriggerSpec::new(
            ObjectRef {
                namespace: "bench".into(),
                name: format!("so-{}", i / 10),
            },
            i % 10,
            "kafka",
            meta,
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
