//! The kafka scaler's lag, exactly, against librdkafka's in-process mock cluster (real
//! Kafka protocol, real offsets and group commits; plaintext only).
#![cfg(feature = "kafka")]

mod support;

use support::kafka;
use support::{TestCa, ca_dir};
use trustscale::scaler::{
    BuildContext, ErrorKind, Poll, Scaler, ScalerBuilder, ScalerError, TriggerSpec,
};
use trustscale::trust::{Secret, TlsSettings, TlsVersion, TrustFactory, TrustOptions};
use trustscale_kafka::KafkaBuilder;
use trustscale_kafka::rdkafka::mocking::MockCluster;
use trustscale_kafka::rdkafka::producer::DefaultProducerContext;

fn ctx() -> BuildContext {
    BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs(Vec::<std::path::PathBuf>::new()))
            .unwrap(),
    }
}

fn spec(meta: &[(&str, &str)]) -> TriggerSpec {
    support::trigger("kafka", 0, "kafka", meta)
}

/// A mock cluster with `topic` of `partitions` partitions holding `produced[p]` records each,
/// and group `group` committed at `committed[p]` (None: no commit).
struct Cluster {
    mock: MockCluster<'static, DefaultProducerContext>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            mock: MockCluster::new(1).unwrap(),
        }
    }

    fn bootstrap(&self) -> String {
        self.mock.bootstrap_servers()
    }

    fn topic(&self, topic: &str, produced: &[usize]) {
        self.mock
            .create_topic(topic, produced.len() as i32, 1)
            .unwrap();
        kafka::produce(
            &kafka::config(&self.bootstrap(), None, None),
            topic,
            produced,
        );
    }

    fn commit(&self, group: &str, topic: &str, committed: &[Option<i64>]) {
        kafka::commit(
            &kafka::config(&self.bootstrap(), None, None),
            group,
            topic,
            committed,
        );
    }
}

async fn poll(builder: &KafkaBuilder, meta: &[(&str, &str)]) -> Result<Poll, ScalerError> {
    builder.build(&spec(meta), &ctx()).await?.poll().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_and_every_option_match_keda_exactly() {
    let c = Cluster::new();
    c.topic("orders", &[10, 20, 0, 5]);
    c.commit("workers", "orders", &[Some(4), Some(20), None, Some(1)]);
    let b = KafkaBuilder::default();
    let boot = c.bootstrap();
    let base = [
        ("bootstrapServers", boot.as_str()),
        ("consumerGroup", "workers"),
        ("topic", "orders"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut m: Vec<(&str, &str)> = base.to_vec();
        m.extend_from_slice(extra);
        m
    };
    // Partitions: 0 lag 6, 1 lag 0, 2 no commit (latest: 1), 3 lag 4.
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64, bool);
    let cases: Vec<Case> = vec![
        ("lag, latest policy", with(&[]), 11.0, true),
        (
            "earliest: a partition without commit lags by its newest offset (0 here)",
            with(&[("offsetResetPolicy", "earliest")]),
            10.0,
            true,
        ),
        (
            "scaleToZeroOnInvalidOffset",
            with(&[("scaleToZeroOnInvalidOffset", "true")]),
            10.0,
            true,
        ),
        (
            "capped at partitions x lagThreshold",
            with(&[("lagThreshold", "2")]),
            8.0,
            true,
        ),
        (
            "limitToPartitionsWithLag caps by the 3 lagging partitions",
            with(&[("lagThreshold", "2"), ("limitToPartitionsWithLag", "true")]),
            6.0,
            true,
        ),
        (
            "allowIdleConsumers: no cap",
            with(&[("lagThreshold", "2"), ("allowIdleConsumers", "true")]),
            11.0,
            true,
        ),
        (
            "partitionLimitation",
            with(&[("partitionLimitation", "0,3")]),
            10.0,
            true,
        ),
        (
            "activation threshold",
            with(&[("activationLagThreshold", "11")]),
            11.0,
            false,
        ),
        (
            "even distribution: 2 consumers wanted, 2 divides 4",
            with(&[
                ("lagThreshold", "6"),
                ("ensureEvenDistributionOfPartitions", "true"),
            ]),
            12.0,
            true,
        ),
    ];
    for (name, meta, want, active) in cases {
        let p = poll(&b, &meta)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((p.metrics[0].value, p.active), (want, active), "{name}");
        assert_eq!(p.metrics[0].name, "s0-kafka-orders");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_topic_every_topic_the_group_has_offsets_for_counts() {
    let c = Cluster::new();
    c.topic("a", &[5, 5]);
    c.topic("b", &[7]);
    c.topic("unrelated", &[100]);
    c.commit("g", "a", &[Some(1), Some(5)]);
    c.commit("g", "b", &[Some(2)]);
    let b = KafkaBuilder::default();
    let boot = c.bootstrap();
    let p = poll(
        &b,
        &[
            ("bootstrapServers", &boot),
            ("consumerGroup", "g"),
            ("allowIdleConsumers", "true"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        p.metrics[0].value, 9.0,
        "4 on a + 5 on b; the unrelated topic does not count"
    );
    assert_eq!(p.metrics[0].name, "s0-kafka-g-topics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_lag_is_excluded_from_scaling_but_keeps_the_trigger_active() {
    let c = Cluster::new();
    c.topic("t", &[10]);
    c.commit("g", "t", &[Some(3)]);
    let b = KafkaBuilder::default();
    let boot = c.bootstrap();
    let scaler = b
        .build(
            &spec(&[
                ("bootstrapServers", &boot),
                ("consumerGroup", "g"),
                ("topic", "t"),
                ("excludePersistentLag", "true"),
            ]),
            &ctx(),
        )
        .await
        .unwrap();
    let p = scaler.poll().await.unwrap();
    assert_eq!((p.metrics[0].value, p.active), (7.0, true));
    let p = scaler.poll().await.unwrap();
    assert_eq!(
        (p.metrics[0].value, p.active),
        (0.0, true),
        "the offset did not move"
    );
    c.commit("g", "t", &[Some(5)]);
    let p = scaler.poll().await.unwrap();
    assert_eq!((p.metrics[0].value, p.active), (5.0, true), "it moved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_on_one_cluster_share_its_clients() {
    let c = Cluster::new();
    c.topic("t", &[3, 3]);
    let b = KafkaBuilder::default();
    let boot = c.bootstrap();
    let mut scalers: Vec<Box<dyn Scaler>> = Vec::new();
    for i in 0..20 {
        let group = format!("g{}", i % 2);
        scalers.push(
            b.build(
                &spec(&[
                    ("bootstrapServers", &boot),
                    ("consumerGroup", &group),
                    ("topic", "t"),
                ]),
                &ctx(),
            )
            .await
            .unwrap(),
        );
    }
    for s in &scalers {
        assert_eq!(
            s.poll().await.unwrap().metrics[0].value,
            2.0,
            "two partitions without commits: 1 each"
        );
    }
    assert_eq!(b.live_clusters(), 1);
    assert_eq!(
        b.clusters()[0].clients_created(),
        3,
        "one metadata client + one committed-offset reader per group"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified() {
    let c = Cluster::new();
    c.topic("t", &[1]);
    let b = KafkaBuilder::default();
    let boot = c.bootstrap();
    let err = poll(
        &b,
        &[
            ("bootstrapServers", &boot),
            ("consumerGroup", "g"),
            ("topic", "missing"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Source, "{err}");
    let err = poll(
        &b,
        &[
            ("bootstrapServers", &boot),
            ("consumerGroup", "never-committed"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Source, "{err}");
    assert!(err.message.contains("never-committed"), "{err}");
    let err = poll(
        &b,
        &[
            ("bootstrapServers", &boot),
            ("consumerGroup", "g"),
            ("partitionLimitation", "3-1"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    let err = poll(
        &b,
        &[
            ("bootstrapServers", &boot),
            ("consumerGroup", "g"),
            ("sasl", "scram_sha256"),
        ],
    )
    .await
    .unwrap_err();
    assert!(err.message.contains("username/password"), "{err}");
    let err = poll(
        &b,
        &[
            ("bootstrapServers", "127.0.0.1:1"),
            ("consumerGroup", "g"),
            ("topic", "t"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::CONNECTION, "{err}");
}

/// A factory over `dirs` only (no system roots).
fn factory_over(dirs: &[&std::path::Path]) -> TrustFactory {
    TrustFactory::new(
        TrustOptions::default()
            .ca_dirs(dirs.iter().map(|d| d.to_path_buf()))
            .system_roots(false),
    )
    .unwrap()
}

#[tokio::test]
async fn librdkafka_properties_carry_the_same_trust() {
    let ca = TestCa::new("kafka");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.pem"));
    let trigger_ca = TestCa::new("trigger");
    let client = ca.client("scaler");
    let f = factory_over(&[dir.path()]);
    let settings = TlsSettings {
        ca: Some(trigger_ca.cert_pem.clone()),
        cert: Some(client.cert_pem.clone()),
        key: Some(Secret::new(client.key_pem.clone())),
        ..Default::default()
    };
    let props = trustscale_kafka::librdkafka_tls(&f.context(&settings, "t").unwrap(), "t").unwrap();
    assert_eq!(props.get("security.protocol"), Some("ssl"));
    let bundle = props.get("ssl.ca.pem").unwrap();
    let parsed = trustscale::trust::material::parse_certificates(bundle.as_bytes()).unwrap();
    assert_eq!(
        parsed.certs,
        vec![ca.cert_der.clone(), trigger_ca.cert_der.clone()]
    );
    assert_eq!(
        props.get("ssl.endpoint.identification.algorithm"),
        Some("https")
    );
    assert!(props.get("ssl.key.pem").unwrap().contains("PRIVATE KEY"));
    assert!(
        !format!("{props:?}").contains("PRIVATE KEY"),
        "Debug hides the key"
    );
    let unsafe_ctx = f
        .context(
            &TlsSettings {
                unsafe_ssl: Some(true),
                ..Default::default()
            },
            "u",
        )
        .unwrap();
    let unsafe_props = trustscale_kafka::librdkafka_tls(&unsafe_ctx, "u").unwrap();
    assert_eq!(
        unsafe_props.get("enable.ssl.certificate.verification"),
        Some("false")
    );
    let named = f
        .context(
            &TlsSettings {
                server_name: Some("x".into()),
                ..Default::default()
            },
            "n",
        )
        .unwrap();
    assert!(
        trustscale_kafka::librdkafka_tls(&named, "n")
            .unwrap_err()
            .to_string()
            .contains("serverName")
    );
}

#[tokio::test]
async fn a_tls13_minimum_is_refused_for_librdkafka_unless_openssl_enforces_it() {
    // The test process has no OPENSSL_CONF raising the floor, so TLS13 cannot be honoured.
    assert!(
        std::env::var_os("OPENSSL_CONF").is_none(),
        "run the tests without OPENSSL_CONF"
    );
    let f = TrustFactory::new(
        TrustOptions::default()
            .ca_dirs(Vec::<std::path::PathBuf>::new())
            .system_roots(false)
            .client_min_tls(TlsVersion::Tls13),
    )
    .unwrap();
    let ctx = f
        .context(
            &TlsSettings {
                unsafe_ssl: Some(true),
                ..Default::default()
            },
            "k",
        )
        .unwrap();
    let err = trustscale_kafka::librdkafka_tls(&ctx, "k")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("TLS13") && err.contains("OPENSSL_CONF"),
        "{err}"
    );
}

#[tokio::test]
async fn librdkafka_gets_the_same_tls12_cipher_list_in_openssl_names() {
    let mut options = TrustOptions::default()
        .ca_dirs(Vec::<std::path::PathBuf>::new())
        .system_roots(false);
    options.client_cipher_suites = Some(
        trustscale::trust::parse_cipher_list(
            "test",
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384:TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        )
        .unwrap(),
    );
    let f = TrustFactory::new(options).unwrap();
    let ctx = f.context(&TlsSettings::default(), "k").unwrap();
    let props = trustscale_kafka::librdkafka_tls(&ctx, "k").unwrap();
    assert_eq!(
        props.get("ssl.cipher.suites"),
        Some("ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305")
    );
    // Without a list, librdkafka keeps OpenSSL's own.
    let plain = TrustFactory::new(
        TrustOptions::default()
            .ca_dirs(Vec::<std::path::PathBuf>::new())
            .system_roots(false),
    )
    .unwrap();
    let ctx = plain.context(&TlsSettings::default(), "k").unwrap();
    assert_eq!(
        trustscale_kafka::librdkafka_tls(&ctx, "k")
            .unwrap()
            .get("ssl.cipher.suites"),
        None
    );
}

/// Building a trigger connects nowhere (the admission webhook builds triggers whose
/// credentials must not travel to whatever `bootstrapServers` a review names); the first
/// poll does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn building_connects_nowhere_polling_does() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let boot = listener.local_addr().unwrap().to_string();
    let builder = KafkaBuilder::default();
    let scaler = builder
        .build(
            &spec(&[
                ("bootstrapServers", boot.as_str()),
                ("consumerGroup", "g"),
                ("topic", "t"),
                ("sasl", "plaintext"),
                ("username", "u"),
                ("password", "not-for-strangers"),
            ]),
            &ctx(),
        )
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert!(
        listener.accept().is_err(),
        "nothing may connect before the first poll"
    );
    assert_eq!(builder.clusters()[0].clients_created(), 0);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), scaler.poll()).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while listener.accept().is_err() {
        assert!(std::time::Instant::now() < deadline, "the poll connects");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A trigger on `topic` of group `g`, one replica per record of lag.
async fn lag_trigger(b: &KafkaBuilder, boot: &str, topic: &str) -> Box<dyn Scaler> {
    b.build(
        &spec(&[
            ("bootstrapServers", boot),
            ("consumerGroup", "g"),
            ("topic", topic),
            ("lagThreshold", "1"),
            ("allowIdleConsumers", "true"),
        ]),
        &ctx(),
    )
    .await
    .unwrap()
}

/// One poll on topic `x` and one on `y`, on one cluster and group, polled together so that
/// they share each round (a current-thread runtime runs both up to their first wait before
/// the round's task starts), with `errors` injected into the next ListOffsets requests.
async fn shared_round(
    errors: &[trustscale_kafka::rdkafka::types::RDKafkaRespErr],
) -> (Result<Poll, ScalerError>, Result<Poll, ScalerError>) {
    use trustscale_kafka::rdkafka::types::RDKafkaApiKey;
    let c = Cluster::new();
    c.topic("x", &[5]);
    c.topic("y", &[7]);
    c.commit("g", "x", &[Some(1)]);
    c.commit("g", "y", &[Some(2)]);
    let b = KafkaBuilder::default();
    let boot = c.bootstrap();
    let (x, y) = (
        lag_trigger(&b, &boot, "x").await,
        lag_trigger(&b, &boot, "y").await,
    );
    // Alone first: the partitions cached, the group's reader made, the lag right.
    assert_eq!(x.poll().await.unwrap().metrics[0].value, 4.0);
    assert_eq!(y.poll().await.unwrap().metrics[0].value, 5.0);
    c.mock.request_errors(RDKafkaApiKey::ListOffsets, errors);
    let (x, y): (std::sync::Arc<dyn Scaler>, std::sync::Arc<dyn Scaler>) = (x.into(), y.into());
    let px = tokio::spawn({
        let x = std::sync::Arc::clone(&x);
        async move { x.poll().await }
    });
    let py = tokio::spawn({
        let y = std::sync::Arc::clone(&y);
        async move { y.poll().await }
    });
    (px.await.unwrap(), py.await.unwrap())
}

#[tokio::test(flavor = "current_thread")]
async fn a_partition_error_in_a_shared_round_is_asked_again_topic_by_topic() {
    use trustscale_kafka::rdkafka::types::RDKafkaRespErr as E;
    // The shared request fails as a whole for one error: asked again topic by topic,
    // both triggers get their lag.
    let (x, y) = shared_round(&[E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED]).await;
    assert_eq!(x.unwrap().metrics[0].value, 4.0);
    assert_eq!(y.unwrap().metrics[0].value, 5.0);
    // The error comes back for the first topic asked again too: it is that topic's
    // triggers' error, by its kind, and the other topic's triggers are unaffected.
    let (x, y) = shared_round(&[
        E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
        E::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    ])
    .await;
    let e = x.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Auth, "{e}");
    assert!(e.message.contains("\"x\""), "{e}");
    assert_eq!(y.unwrap().metrics[0].value, 5.0);
}
