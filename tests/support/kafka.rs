//! Kafka test data, shared by the Kafka tests and benchmarks: the test's own librdkafka
//! clients (never the code under test) create topics, write records and commit offsets.

use std::path::Path;
use std::time::Duration;

use trustscale_kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use trustscale_kafka::rdkafka::client::DefaultClientContext;
use trustscale_kafka::rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use trustscale_kafka::rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use trustscale_kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};

const WAIT: Duration = Duration::from_secs(10);

/// Settings of the helper clients: plaintext, or TLS trusting the CA file `ca` and
/// presenting `identity` (certificate, key files) when given.
pub fn config(
    bootstrap: &str,
    ca: Option<&Path>,
    identity: Option<(&Path, &Path)>,
) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "5000");
    if let Some(ca) = ca {
        c.set("security.protocol", "ssl")
            .set("ssl.ca.location", ca.to_string_lossy());
    }
    if let Some((cert, key)) = identity {
        c.set("ssl.certificate.location", cert.to_string_lossy())
            .set("ssl.key.location", key.to_string_lossy());
    }
    c
}

/// Creates `topics` with `partitions` partitions each through the admin API (a real
/// broker; librdkafka's mock cluster has its own `create_topic`).
pub async fn create_topics(base: &ClientConfig, topics: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = base.create().unwrap();
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let res = admin
        .create_topics(
            new.iter(),
            &AdminOptions::new().operation_timeout(Some(WAIT)),
        )
        .await
        .expect("create_topics");
    for r in res {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Writes `per_partition[p]` records to partition `p` of `topic`, one record per produce
/// request (tansu 0.6.0 reports a wrong newest offset after a batch).
pub fn produce(base: &ClientConfig, topic: &str, per_partition: &[usize]) {
    let producer: BaseProducer = base
        .clone()
        .set("linger.ms", "0")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for (p, n) in per_partition.iter().enumerate() {
        for _ in 0..*n {
            producer
                .send(
                    BaseRecord::<(), str>::to(topic)
                        .partition(p as i32)
                        .payload("job"),
                )
                .map_err(|(e, _)| e)
                .unwrap();
            producer.flush(WAIT).unwrap();
        }
    }
}

/// Commits `committed[p]` for partition `p` of `topic` as `group` (None: no commit).
pub fn commit(base: &ClientConfig, group: &str, topic: &str, committed: &[Option<i64>]) {
    let consumer: BaseConsumer = base
        .clone()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for (p, c) in committed.iter().enumerate() {
        if let Some(c) = c {
            tpl.add_partition_offset(topic, p as i32, Offset::Offset(*c))
                .unwrap();
        }
    }
    if tpl.count() > 0 {
        consumer.commit(&tpl, CommitMode::Sync).unwrap();
    }
}
