//! Kafka test data for the benchmarks: topics with records, and groups with commits.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The broker to seed: librdkafka's mock cluster (topics made through it), or a real one
/// (topics made with the admin API).
pub enum Target<'a> {
    Mock(&'a MockCluster<'static, DefaultProducerContext>),
    Broker,
}

/// Creates `topics` with `partitions` partitions, writes `records` records to each
/// partition (one per produce request: tansu 0.6.0 miscounts batches), and commits every
/// partition of every topic at `committed` for each of `groups`. `base` holds the
/// bootstrap servers and TLS settings.
pub async fn seed(
    base: &ClientConfig,
    target: Target<'_>,
    topics: &[String],
    partitions: i32,
    records: usize,
    groups: &[String],
    committed: i64,
) {
    match target {
        Target::Mock(mock) => {
            for t in topics {
                mock.create_topic(t, partitions, 1).unwrap();
            }
        }
        Target::Broker => {
            let admin: AdminClient<DefaultClientContext> = base.create().unwrap();
            let new: Vec<NewTopic> = topics
                .iter()
                .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
                .collect();
            for r in admin
                .create_topics(new.iter(), &AdminOptions::new())
                .await
                .unwrap()
            {
                r.unwrap();
            }
        }
    }
    let producer: BaseProducer = base.clone().set("linger.ms", "0").create().unwrap();
    for t in topics {
        for p in 0..partitions {
            for _ in 0..records {
                producer
                    .send(BaseRecord::<(), str>::to(t).partition(p).payload("x"))
                    .map_err(|(e, _)| e)
                    .unwrap();
                producer.flush(Duration::from_secs(10)).unwrap();
            }
        }
    }
    for g in groups {
        let c: BaseConsumer = base.clone().set("group.id", g).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..partitions {
                tpl.add_partition_offset(t, p, Offset::Offset(committed))
                    .unwrap();
            }
        }
        c.commit(&tpl, CommitMode::Sync).unwrap();
    }
}
