//! Kafka scaler figures against librdkafka's in-process mock cluster: 1,000 triggers
//! (10 topics × 100 consumer groups) on one cluster — rdkafka clients created, resident
//! memory per additional trigger, and the time of one full poll round.
//!
//! `cargo bench --bench kafka --features kafka`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use trustscale::scaler::{BuildContext, ObjectRef, Scaler, ScalerBuilder, TriggerSpec};
use trustscale::scalers::kafka::KafkaBuilder;
use trustscale::trust::{TrustFactory, TrustOptions};

mod support;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mock = MockCluster::new(1).unwrap();
    let boot = mock.bootstrap_servers();
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &boot)
        .create()
        .unwrap();
    for t in 0..10 {
        let topic = format!("topic-{t}");
        mock.create_topic(&topic, 4, 1).unwrap();
        for p in 0..4 {
            for _ in 0..5 {
                producer
                    .send(BaseRecord::<(), str>::to(&topic).partition(p).payload("x"))
                    .unwrap();
            }
        }
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    for g in 0..100 {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &boot)
            .set("group.id", format!("group-{g}"))
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in 0..10 {
            for p in 0..4 {
                tpl.add_partition_offset(&format!("topic-{t}"), p, Offset::Offset(2))
                    .unwrap();
            }
        }
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
    let ctx = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs(Vec::<std::path::PathBuf>::new()))
            .unwrap(),
    };
    let builder = KafkaBuilder::default();
    let spec = |i: usize| {
        let meta: BTreeMap<String, String> = [
            ("bootstrapServers", boot.clone()),
            ("consumerGroup", format!("group-{}", i / 10)),
            ("topic", format!("topic-{}", i % 10)),
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
        "1,000 kafka triggers (10 topics x 100 groups), one cluster: {} cluster client set, {} rdkafka clients created (1 metadata + 1 per group), RSS +{:.1} KiB per additional trigger, first poll round {round:?}, second {round2:?}, {failed}+{} failed, total lag {lag}",
        builder.live_clusters(),
        builder.clusters()[0].clients_created(),
        rss1.saturating_sub(rss0) as f64 / 999.0,
        again.iter().filter(|r| r.is_err()).count(),
    );
}
