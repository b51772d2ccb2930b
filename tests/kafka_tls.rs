//! The kafka scaler over TLS, against the tansu brokers behind stunnel started by
//! `fixtures/brokers.sh start` (a TLS 1.2+1.3 listener, a client-certificate-required
//! one and a TLS 1.2-only one), every positive case with its negative control.
#![cfg(feature = "kafka")]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::fixtures::Fixtures;
use support::{kafka, unique};
use trustscale::scaler::{BuildContext, ErrorKind, Poll, ScalerBuilder, ScalerError, TriggerSpec};
use trustscale::trust::{FailureKind, Secret, TrustFactory, TrustOptions};
use trustscale_kafka::KafkaBuilder;
use trustscale_kafka::rdkafka::ClientConfig;

const WAIT: Duration = Duration::from_secs(10);

fn factory(ca_dirs: Vec<PathBuf>) -> BuildContext {
    BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs(ca_dirs)).unwrap(),
    }
}

fn spec(meta: &[(&str, &str)], auth: &[(&str, &str)]) -> TriggerSpec {
    let mut s = support::trigger("kafka-tls", 0, "kafka", meta);
    s.auth = auth
        .iter()
        .map(|(k, v)| (k.to_string(), Secret::new(*v)))
        .collect();
    s
}

/// librdkafka settings of the test's own admin, producer and committer: the fixture CA
/// by file (independent of the code under test), and the client certificate when asked.
fn client_config(bootstrap: &str, client_cert: bool) -> ClientConfig {
    let fx = Fixtures::get();
    let (ca, cert, key) = (fx.pki("ca.crt"), fx.pki("client.crt"), fx.pki("client.key"));
    kafka::config(
        bootstrap,
        Some(&ca),
        client_cert.then_some((cert.as_path(), key.as_path())),
    )
}

/// Creates `topic` with one partition per entry of `produced`, writes that many records
/// to each, and commits `committed` for `group`.
async fn seed(
    bootstrap: &str,
    client_cert: bool,
    topic: &str,
    produced: &[usize],
    group: &str,
    committed: &[Option<i64>],
) {
    let config = client_config(bootstrap, client_cert);
    kafka::create_topics(&config, &[topic], produced.len() as i32).await;
    kafka::produce(&config, topic, produced);
    kafka::commit(&config, group, topic, committed);
}

async fn poll(
    ctx: &BuildContext,
    meta: &[(&str, &str)],
    auth: &[(&str, &str)],
) -> Result<Poll, ScalerError> {
    // A builder per call: a new client, so nothing is learnt from an earlier poll.
    KafkaBuilder::default()
        .build(&spec(meta, auth), ctx)
        .await?
        .poll()
        .await
}

fn tls_kind(err: &ScalerError) -> Option<FailureKind> {
    match err.kind {
        ErrorKind::Transport(k) => Some(k),
        _ => None,
    }
}

/// The bootstrap address in fixture variable `var`, checked to be listening.
fn bootstrap(var: &str) -> String {
    let addr = Fixtures::get().var(var);
    if std::net::TcpStream::connect(&addr).is_err() {
        panic!(
            "fixture {var} ({addr}) is not listening; start the brokers with `fixtures/brokers.sh start`"
        );
    }
    addr
}

fn dir_with(files: &[&Path]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in files {
        std::fs::copy(f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_ca_folder_trusts_the_broker_and_the_lag_is_exact() {
    let fx = Fixtures::get();
    let boot = bootstrap("KAFKA_TLS_BOOTSTRAP");
    let (topic, group) = (unique("orders"), unique("workers"));
    seed(
        &boot,
        false,
        &topic,
        &[5, 3, 0],
        &group,
        &[Some(1), Some(3), None],
    )
    .await;
    let meta = [
        ("bootstrapServers", boot.as_str()),
        ("consumerGroup", group.as_str()),
        ("topic", topic.as_str()),
        ("tls", "enable"),
    ];
    let ca = fx.ca_dir();
    let p = poll(&factory(vec![ca.path().to_path_buf()]), &meta, &[])
        .await
        .unwrap();
    // 4 + 0 + 1 (no commit, latest policy).
    assert_eq!((p.metrics[0].value, p.active), (5.0, true));

    // The whole group (no topic): the same figure, through the same trust.
    let p = poll(
        &factory(vec![ca.path().to_path_buf()]),
        &[
            ("bootstrapServers", boot.as_str()),
            ("consumerGroup", group.as_str()),
            ("tls", "enable"),
        ],
        &[],
    )
    .await
    .unwrap();
    assert_eq!(p.metrics[0].value, 5.0);

    // Negative control: a folder with another CA only.
    let wrong = dir_with(&[&fx.pki("untrusted-ca.crt")]);
    let err = poll(&factory(vec![wrong.path().to_path_buf()]), &meta, &[])
        .await
        .unwrap_err();
    assert_eq!(tls_kind(&err), Some(FailureKind::UnknownIssuer), "{err}");
    assert!(
        err.to_string().contains("certificate verify failed"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_trigger_ca_is_added_to_the_anchors_of_that_trigger_only() {
    let fx = Fixtures::get();
    let boot = bootstrap("KAFKA_TLS_BOOTSTRAP");
    let (topic, group) = (unique("t"), unique("g"));
    seed(&boot, false, &topic, &[2], &group, &[Some(0)]).await;
    let meta = [
        ("bootstrapServers", boot.as_str()),
        ("consumerGroup", group.as_str()),
        ("topic", topic.as_str()),
    ];
    let system_only = factory(Vec::new());
    let ca = fx.pem("ca.crt");
    let p = poll(&system_only, &meta, &[("tls", "enable"), ("ca", &ca)])
        .await
        .unwrap();
    assert_eq!(p.metrics[0].value, 2.0);
    let err = poll(&system_only, &meta, &[("tls", "enable")])
        .await
        .unwrap_err();
    assert_eq!(
        tls_kind(&err),
        Some(FailureKind::UnknownIssuer),
        "system roots alone do not trust the broker: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_requires_a_client_certificate_gets_the_triggers_identity() {
    let fx = Fixtures::get();
    let boot = bootstrap("KAFKA_MTLS_BOOTSTRAP");
    let (topic, group) = (unique("t"), unique("g"));
    seed(&boot, true, &topic, &[4, 1], &group, &[Some(1), None]).await;
    let meta = [
        ("bootstrapServers", boot.as_str()),
        ("consumerGroup", group.as_str()),
        ("topic", topic.as_str()),
        ("tls", "enable"),
    ];
    let ca = fx.ca_dir();
    let ctx = factory(vec![ca.path().to_path_buf()]);
    // The encrypted key and its password, as a TriggerAuthentication would give them.
    let cert = fx.pem("client-chain.crt");
    let key = fx.pem("client-encrypted.key");
    let password = fx.var("TRUSTSCALE_CLIENT_KEY_PASSWORD");
    let p = poll(
        &ctx,
        &meta,
        &[("cert", &cert), ("key", &key), ("keyPassword", &password)],
    )
    .await
    .unwrap();
    assert_eq!(p.metrics[0].value, 4.0, "3 + 1 (no commit)");
    let err = poll(&ctx, &meta, &[]).await.unwrap_err();
    assert_eq!(
        tls_kind(&err),
        Some(FailureKind::ClientCertRequired),
        "{err}"
    );
    // A client certificate from a CA the broker does not trust.
    let foreign = support::TestCa::new("foreign-client-ca").client("scaler");
    let err = poll(
        &ctx,
        &meta,
        &[("cert", &foreign.chain_pem), ("key", &foreign.key_pem)],
    )
    .await
    .unwrap_err();
    assert_eq!(
        tls_kind(&err),
        Some(FailureKind::ClientCertRejected),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_for_another_host_or_expired_is_refused_and_named() {
    let ca = support::TestCa::new("kafka-own-broker-ca");
    let anchors = tempfile::tempdir().unwrap();
    ca.write_pem(&anchors.path().join("ca.crt"));
    let ctx = factory(vec![anchors.path().to_path_buf()]);
    for (leaf, want) in [
        (
            ca.server_for(&["kafka.other.example"]),
            FailureKind::HostnameMismatch,
        ),
        (ca.expired_server(), FailureKind::Expired),
    ] {
        let broker = OwnBroker::with_certs(
            support::free_port(),
            support::free_port(),
            Some((&leaf.chain_pem, &leaf.key_pem)),
        );
        let boot = broker.bootstrap();
        let err = poll(
            &ctx,
            &[
                ("bootstrapServers", boot.as_str()),
                ("consumerGroup", "g"),
                ("topic", "t"),
                ("tls", "enable"),
            ],
            &[],
        )
        .await
        .unwrap_err();
        assert_eq!(tls_kind(&err), Some(want), "{err}");
    }
    // Control: the same broker with a good certificate is reached (the TLS handshake
    // succeeds; the topic it is asked for does not exist there).
    let good = ca.server();
    let broker = OwnBroker::with_certs(
        support::free_port(),
        support::free_port(),
        Some((&good.chain_pem, &good.key_pem)),
    );
    let boot = broker.bootstrap();
    let err = poll(
        &ctx,
        &[
            ("bootstrapServers", boot.as_str()),
            ("consumerGroup", "own-group"),
            ("topic", "own-topic"),
            ("tls", "enable"),
        ],
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Source, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_ssl_still_works_and_is_the_only_way_without_the_ca() {
    let boot = bootstrap("KAFKA_TLS_BOOTSTRAP");
    let (topic, group) = (unique("t"), unique("g"));
    seed(&boot, false, &topic, &[3], &group, &[Some(1)]).await;
    let meta = [
        ("bootstrapServers", boot.as_str()),
        ("consumerGroup", group.as_str()),
        ("topic", topic.as_str()),
        ("tls", "enable"),
    ];
    let system_only = factory(Vec::new());
    let mut unsafe_meta = meta.to_vec();
    unsafe_meta.push(("unsafeSsl", "true"));
    let p = poll(&system_only, &unsafe_meta, &[]).await.unwrap();
    assert_eq!(p.metrics[0].value, 2.0);
    let err = poll(&system_only, &meta, &[]).await.unwrap_err();
    assert_eq!(tls_kind(&err), Some(FailureKind::UnknownIssuer), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_is_a_source_error_over_tls() {
    let boot = bootstrap("KAFKA_TLS_BOOTSTRAP");
    let ca = Fixtures::get().ca_dir();
    let err = poll(
        &factory(vec![ca.path().to_path_buf()]),
        &[
            ("bootstrapServers", boot.as_str()),
            ("consumerGroup", "g"),
            ("topic", &unique("never-created")),
            ("tls", "enable"),
        ],
        &[],
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Source, "{err}");
}

/// A tansu broker behind stunnel owned by one test, so the test can take it down.
struct OwnBroker {
    dir: tempfile::TempDir,
    tls_port: u16,
    plain_port: u16,
    /// The TLS front's chain and key (the fixture's when not given).
    cert: PathBuf,
    key: PathBuf,
    children: Vec<Child>,
}

impl OwnBroker {
    fn new(tls_port: u16, plain_port: u16) -> OwnBroker {
        Self::with_certs(tls_port, plain_port, None)
    }

    /// A broker whose TLS front serves `chain` and `key` (PEM).
    fn with_certs(tls_port: u16, plain_port: u16, certs: Option<(&str, &str)>) -> OwnBroker {
        let dir = tempfile::tempdir().unwrap();
        let fx = Fixtures::get();
        let (cert, key) = match certs {
            Some((chain, key)) => {
                let (c, k) = (dir.path().join("front.crt"), dir.path().join("front.key"));
                std::fs::write(&c, chain).unwrap();
                std::fs::write(&k, key).unwrap();
                (c, k)
            }
            None => (fx.pki("server-chain.crt"), fx.pki("server.key")),
        };
        let mut b = OwnBroker {
            dir,
            tls_port,
            plain_port,
            cert,
            key,
            children: Vec::new(),
        };
        b.start();
        b
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    fn start(&mut self) {
        let fx = Fixtures::get();
        for port in [self.plain_port, self.tls_port] {
            assert!(
                std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
                "port {port}, needed by this test's own broker, is taken (a broker left by an aborted run?)"
            );
        }
        let conf = self.dir.path().join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{}\nconnect = 127.0.0.1:{}\ncert = {}\nkey = {}\n",
                self.tls_port,
                self.plain_port,
                self.cert.display(),
                self.key.display()
            ),
        )
        .unwrap();
        let tansu = Command::new(fx.var("KAFKA_TANSU_BIN"))
            .args([
                "broker",
                "--cluster-id",
                "trustscale-restart",
                "--listener-url",
                &format!("tcp://127.0.0.1:{}", self.plain_port),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{}", self.tls_port),
                "--storage-engine",
                "memory://tansu-restart/",
            ])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting tansu (KAFKA_TANSU_BIN)");
        let stunnel = Command::new(fx.var("KAFKA_STUNNEL_BIN"))
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting stunnel (KAFKA_STUNNEL_BIN)");
        self.children = vec![tansu, stunnel];
        let deadline = Instant::now() + WAIT;
        for port in [self.plain_port, self.tls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "own broker port {port} never listened"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    fn stop(&mut self) {
        // The TLS front first: stopped after the broker, it would accept handshakes for
        // a moment and close them, a TLS failure instead of a broker that is down.
        for mut c in self.children.drain(..).rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_next_poll_succeeds() {
    let mut broker = OwnBroker::new(support::free_port(), support::free_port());
    let boot = broker.bootstrap();
    let (topic, group) = ("restart-orders", "restart-workers");
    seed(&boot, false, topic, &[6], group, &[Some(2)]).await;
    let ca = Fixtures::get().ca_dir();
    let ctx = factory(vec![ca.path().to_path_buf()]);
    let scaler = KafkaBuilder::default()
        .build(
            &spec(
                &[
                    ("bootstrapServers", boot.as_str()),
                    ("consumerGroup", group),
                    ("topic", topic),
                    ("tls", "enable"),
                ],
                &[],
            ),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 4.0);

    broker.stop();
    let err = scaler.poll().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::CONNECTION, "broker down: {err}");

    // Back, empty (in-memory storage): the same data again, with another lag.
    broker.start();
    seed(&boot, false, topic, &[6], group, &[Some(5)]).await;
    let p = scaler
        .poll()
        .await
        .expect("the first poll after the restart");
    assert_eq!(p.metrics[0].value, 1.0);
}

/// The certificates of a PEM text, as their base64 bodies.
fn bodies(pem: &str) -> Vec<String> {
    pem.split("-----END CERTIFICATE-----")
        .map(|c| {
            c.lines()
                .filter(|l| !l.starts_with("-----") && !l.trim().is_empty())
                .collect::<String>()
        })
        .filter(|b| !b.is_empty())
        .collect()
}

/// The certificates a hashed CA directory holds, sorted.
fn held(dir: &Path) -> Vec<String> {
    let mut all: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flat_map(|e| bodies(&std::fs::read_to_string(e.unwrap().path()).unwrap()))
        .collect();
    all.sort();
    all
}

/// A running trigger's librdkafka clients through CA-folder changes: kept (their CA
/// directory updated in place) while the CA its broker's chain ends in stays, rebuilt
/// when it goes, and then refusing the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_follow_ca_changes_their_broker_does_not_use_and_go_with_its_ca() {
    let fx = Fixtures::get();
    let boot = bootstrap("KAFKA_TLS_BOOTSTRAP");
    let (topic, group) = (unique("follow"), unique("followers"));
    seed(&boot, false, &topic, &[4], &group, &[Some(1)]).await;
    let folder = dir_with(&[&fx.pki("ca.crt")]);
    let ctx = BuildContext {
        trust: TrustFactory::new(
            TrustOptions::default()
                .ca_dirs([folder.path()])
                .watch(false)
                .system_roots(false),
        )
        .unwrap(),
    };
    let builder = KafkaBuilder::default();
    let meta = [
        ("bootstrapServers", boot.as_str()),
        ("consumerGroup", group.as_str()),
        ("topic", topic.as_str()),
        ("tls", "enable"),
    ];
    let scaler = builder.build(&spec(&meta, &[]), &ctx).await.unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 3.0);
    let clusters = builder.clusters();
    assert_eq!(clusters.len(), 1);
    let cluster = std::sync::Arc::clone(&clusters[0]);
    let dir = cluster.ca_dir().expect("a CA directory").to_path_buf();
    let pem = |path: &Path| bodies(&std::fs::read_to_string(path).unwrap());
    let (ours, other) = (pem(&fx.pki("ca.crt")), pem(&fx.pki("untrusted-ca.crt")));
    assert_eq!(held(&dir), ours);
    let throwaway = {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::default();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "throwaway");
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    };
    let sorted = |parts: &[&Vec<String>]| {
        let mut all: Vec<String> = parts.iter().flat_map(|p| p.iter().cloned()).collect();
        all.sort();
        all
    };

    // The brokers' chains become known to the context by rounds of handshakes that polls
    // start: the first poll's covers the bootstrap server, a later one's every broker the
    // metadata named too.
    let start = Instant::now();
    while cluster.brokers_witnessed().is_none() {
        assert!(
            start.elapsed() < WAIT,
            "no round of handshakes covered every broker"
        );
        scaler
            .poll()
            .await
            .expect("a poll while the brokers are witnessed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.brokers_witnessed(), Some(true));

    // From then on, the first poll after a change follows it: the cluster's CA directory
    // holds `want`, and the poll succeeded on the same cluster.
    let follows = |want: Vec<String>, what: &'static str| {
        let (scaler, builder, cluster, dir) = (&scaler, &builder, &cluster, &dir);
        async move {
            let p = scaler
                .poll()
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(p.metrics[0].value, 3.0, "{what}");
            let now = builder.clusters();
            assert!(
                now.len() == 1 && std::sync::Arc::ptr_eq(&now[0], cluster),
                "{what}: the clients were rebuilt"
            );
            assert_eq!(held(dir), want, "{what}: the CA directory");
        }
    };
    // A CA no broker uses: added, replaced by another, removed.
    std::fs::copy(fx.pki("untrusted-ca.crt"), folder.path().join("other.crt")).unwrap();
    ctx.trust.reload().unwrap();
    follows(sorted(&[&ours, &other]), "an unrelated CA added").await;
    std::fs::write(folder.path().join("other.crt"), &throwaway).unwrap();
    ctx.trust.reload().unwrap();
    follows(
        sorted(&[&ours, &bodies(&throwaway)]),
        "the unrelated CA replaced",
    )
    .await;
    std::fs::remove_file(folder.path().join("other.crt")).unwrap();
    ctx.trust.reload().unwrap();
    follows(ours.clone(), "the unrelated CA removed").await;

    // The broker's CA removed: new clients, which refuse the broker.
    std::fs::remove_file(folder.path().join("ca.crt")).unwrap();
    std::fs::copy(fx.pki("untrusted-ca.crt"), folder.path().join("other.crt")).unwrap();
    ctx.trust.reload().unwrap();
    // Rebuilt at the first poll: the broker's chain used it.
    let err = scaler.poll().await.expect_err("the broker's CA is gone");
    assert_eq!(tls_kind(&err), Some(FailureKind::UnknownIssuer), "{err}");
    assert!(
        builder
            .clusters()
            .iter()
            .any(|c| !std::sync::Arc::ptr_eq(c, &cluster)),
        "new clients"
    );
    assert_eq!(
        held(&dir),
        ours,
        "the old clients' directory was left as it was"
    );
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// `trustscale probe` on a KEDA manifest set with Kafka triggers, optionally with a
/// process-wide OpenSSL configuration and a TLS13 client minimum.
fn probe(
    dir: &Path,
    ca_dir: &Path,
    openssl_conf: Option<&Path>,
    min_tls: Option<&str>,
) -> (std::process::Output, serde_json::Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trustscale"));
    cmd.arg("probe")
        .arg("-f")
        .arg(dir)
        .arg("--ca-dir")
        .arg(ca_dir)
        .arg("--json")
        .env_remove("OPENSSL_CONF")
        .env_remove("KEDA_HTTP_MIN_TLS_VERSION");
    if let Some(conf) = openssl_conf {
        cmd.env("OPENSSL_CONF", conf);
    }
    if let Some(v) = min_tls {
        cmd.env("KEDA_HTTP_MIN_TLS_VERSION", v);
    }
    let out = cmd.output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

fn kafka_manifests(tls: &str, mtls: &str, tls12: &str, topic: &str, group: &str) -> String {
    let fx = Fixtures::get();
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: kafka-client, namespace: shop}}
type: Opaque
data:
  cert: {cert}
  key: {key}
stringData:
  tls: enable
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {{name: kafka-mtls, namespace: shop}}
spec:
  secretTargetRef:
    - {{parameter: tls, name: kafka-client, key: tls}}
    - {{parameter: cert, name: kafka-client, key: cert}}
    - {{parameter: key, name: kafka-client, key: key}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: orders, namespace: shop}}
spec:
  scaleTargetRef: {{name: orders-worker}}
  triggers:
    - type: kafka
      metadata: {{bootstrapServers: "{tls}", consumerGroup: {group}, topic: {topic}, lagThreshold: "5", tls: enable}}
    - type: kafka
      metadata: {{bootstrapServers: "{mtls}", consumerGroup: {group}, topic: {topic}, lagThreshold: "5"}}
      authenticationRef: {{name: kafka-mtls}}
    - type: kafka
      metadata: {{bootstrapServers: "{tls12}", consumerGroup: {group}, topic: {topic}, lagThreshold: "5", tls: enable}}
"#,
        cert = b64(&fx.pem("client.crt")),
        key = b64(&fx.pem("client.key")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_of_a_manifest_set_and_a_tls13_minimum_that_really_holds() {
    let fx = Fixtures::get();
    let (tls, mtls, tls12) = (
        bootstrap("KAFKA_TLS_BOOTSTRAP"),
        bootstrap("KAFKA_MTLS_BOOTSTRAP"),
        bootstrap("KAFKA_TLS12_BOOTSTRAP"),
    );
    let (topic, group) = (unique("probe"), unique("probe-group"));
    seed(&tls, false, &topic, &[3], &group, &[Some(1)]).await;
    seed(&mtls, true, &topic, &[3], &group, &[Some(1)]).await;
    seed(&tls12, false, &topic, &[3], &group, &[Some(1)]).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("kafka.yaml"),
        kafka_manifests(&tls, &mtls, &tls12, &topic, &group),
    )
    .unwrap();
    let ca = fx.ca_dir();

    // The default minimum (TLS 1.2): all three listeners.
    let (out, json) = probe(dir.path(), ca.path(), None, None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{json}\n{stderr}");
    for i in 0..3 {
        assert_eq!(json["triggers"][i]["value"], 2.0, "trigger {i}: {json}");
    }
    assert!(!stderr.contains("PRIVATE KEY"), "no key in the logs");

    // TLS13 without a process-wide OpenSSL minimum: librdkafka could not honour it, so
    // every Kafka trigger is refused with a clear error rather than silently downgraded.
    let (out, json) = probe(dir.path(), ca.path(), None, Some("TLS13"));
    assert_eq!(out.status.code(), Some(1), "{json}");
    for i in 0..3 {
        let msg = json["triggers"][i]["error"]["message"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(json["triggers"][i]["error"]["kind"], "config", "{json}");
        assert!(msg.contains("OPENSSL_CONF"), "{msg}");
    }

    // TLS13 with OPENSSL_CONF enforcing it: the TLS 1.2-only listener fails the handshake,
    // the others still answer.
    let conf = dir.path().join("openssl-tls13.cnf");
    std::fs::write(
        &conf,
        trustscale_kafka::openssl_config_for(trustscale::trust::TlsVersion::Tls13),
    )
    .unwrap();
    let (out, json) = probe(dir.path(), ca.path(), Some(&conf), Some("TLS13"));
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json["triggers"][0]["value"], 2.0, "{json}");
    assert_eq!(json["triggers"][1]["value"], 2.0, "{json}");
    assert_eq!(
        json["triggers"][2]["error"]["kind"], "protocol_version",
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_files_manifests_work_through_a_secret_style_ca_folder() {
    let fx = Fixtures::get();
    bootstrap("KAFKA_TLS_BOOTSTRAP");
    fx.port("REDIS_TLS_PORT");
    // pki/custom-ca: ca.crt -> ..data/ca.crt, ..data -> ..<timestamp>/ (gen-pki.sh).
    let ca = fx.pki("custom-ca");
    assert!(
        std::fs::symlink_metadata(ca.join("..data"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let manifests = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../fixtures/docker/manifests"
    ));
    let (out, json) = probe(manifests, &ca, None, None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the Kafka topic does not exist: {json}"
    );
    assert_eq!(json["triggers"][0]["type"], "redis");
    assert_eq!(json["triggers"][0]["value"], 0.0, "{json}");
    // Past TLS: the broker itself answers that the topic is unknown.
    assert_eq!(json["triggers"][1]["error"]["kind"], "source", "{json}");
    // Negative control: the same manifests without the folder fail TLS on both.
    let empty = tempfile::tempdir().unwrap();
    let (_, json) = probe(manifests, empty.path(), None, None);
    assert_eq!(
        json["triggers"][0]["error"]["kind"], "unknown_issuer",
        "{json}"
    );
    assert_eq!(
        json["triggers"][1]["error"]["kind"], "unknown_issuer",
        "{json}"
    );
}
