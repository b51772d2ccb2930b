//! The rabbitmq scaler against a real TLS RabbitMQ node (AMQPS and the management API over
//! HTTPS), started by `fixtures/brokers.sh start`. lapin drives its socket from its own
//! thread through the runtime handle, so these tests run on a multi-threaded runtime.

mod support;

use std::time::Duration;

use support::fixtures::Fixtures;
use support::rabbit::{Mgmt, connections_named, until_eq};
use support::unique;
use trustscale::scaler::{
    BuildContext, ErrorKind, Poll, Scaler, ScalerBuilder, ScalerError, TriggerSpec,
};
use trustscale::trust::{TlsVersion, TrustFactory, TrustOptions};
use trustscale_rabbitmq::RabbitMqBuilder;

fn spec(name: &str, meta: &[(&str, &str)]) -> TriggerSpec {
    support::trigger(name, 0, "rabbitmq", meta)
}

fn trusted() -> BuildContext {
    let fx = Fixtures::get();
    let dir = fx.ca_dir();
    let ctx = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs([dir.path()])).unwrap(),
    };
    std::mem::forget(dir); // the folder outlives the factory's first read; tests are short-lived
    ctx
}

fn amqps() -> String {
    format!(
        "amqps://admin:adminpass@localhost:{}/",
        Fixtures::get().port("RABBITMQ_AMQPS_PORT")
    )
}

fn https() -> String {
    format!(
        "https://admin:adminpass@localhost:{}/",
        Fixtures::get().port("RABBITMQ_MGMT_PORT")
    )
}

async fn poll(ctx: &BuildContext, s: TriggerSpec) -> Result<Poll, ScalerError> {
    trustscale_operator::builtins::registry()
        .build(&s, ctx)
        .await?
        .poll()
        .await
}

async fn value(ctx: &BuildContext, s: TriggerSpec) -> f64 {
    poll(ctx, s).await.unwrap().metrics[0].value
}

/// Takes `n` messages from `queue` over AMQPS and keeps them unacknowledged while the
/// returned connection lives.
async fn hold_unacked(queue: &str, n: u32) -> (lapin::Connection, lapin::Channel) {
    use lapin::options::BasicGetOptions;
    let fx = Fixtures::get();
    let trust = TrustFactory::new(TrustOptions::default().ca_dirs([fx.ca_dir().path()])).unwrap();
    let tls = trust.context(&Default::default(), "holder").unwrap();
    let connector = lapin::tcp::RustlsConnector::from(tls.rustls_config());
    let uri: lapin::uri::AMQPUri = format!(
        "amqps://admin:adminpass@localhost:{}/%2F",
        fx.port("RABBITMQ_AMQPS_PORT")
    )
    .parse()
    .unwrap();
    let conn = lapin::Connection::connector(
        uri,
        lapin::runtime::default_runtime().unwrap(),
        async move |uri: lapin::uri::AMQPUri, runtime| {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
                    .await?
                    .collect();
            let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, addrs).await?;
            Ok(stream.into_rustls(&connector, "localhost").await?)
        },
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for _ in 0..n {
        let got = ch
            .basic_get(queue.into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap();
        assert!(got.is_some());
        std::mem::forget(got);
    }
    // Closing the channel would requeue the messages: keep it open.
    (conn, ch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_length_is_exact_over_amqps_and_https_and_unacked_messages_count_only_over_http() {
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("length");
    mgmt.create_queue(&q).await;
    mgmt.publish(&q, 7).await;
    let ctx = trusted();
    let amqp = |extra: &[(&str, &str)]| {
        let host = amqps();
        let mut m = vec![
            ("host", host.as_str()),
            ("queueName", q.as_str()),
            ("mode", "QueueLength"),
            ("value", "5"),
        ];
        m.extend_from_slice(extra);
        spec("rmq", &m)
    };
    let http = |extra: &[(&str, &str)]| {
        let host = https();
        let mut m = vec![
            ("host", host.as_str()),
            ("queueName", q.as_str()),
            ("mode", "QueueLength"),
            ("value", "5"),
        ];
        m.extend_from_slice(extra);
        spec("rmq", &m)
    };
    let p = poll(&ctx, amqp(&[])).await.unwrap();
    assert_eq!(
        p.metrics[0].value, 7.0,
        "AMQP passive declare is exact at once"
    );
    assert!(p.active);
    assert_eq!(p.metrics[0].name, format!("s0-rabbitmq-{q}"));
    until_eq("HTTPS queue length", 7.0, || value(&ctx, http(&[]))).await;

    let _holder = hold_unacked(&q, 2).await;
    assert_eq!(
        value(&ctx, amqp(&[])).await,
        5.0,
        "AMQP counts ready messages"
    );
    until_eq("HTTPS messages (ready + unacked)", 7.0, || {
        value(&ctx, http(&[]))
    })
    .await;
    until_eq("HTTPS excludeUnacknowledged", 5.0, || {
        value(&ctx, http(&[("excludeUnacknowledged", "true")]))
    })
    .await;
    mgmt.delete_queue(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_rate_is_read_over_https() {
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("rate");
    mgmt.create_queue(&q).await;
    let ctx = trusted();
    let host = https();
    let s = || {
        spec(
            "rmq",
            &[
                ("host", &host),
                ("queueName", &q),
                ("mode", "MessageRate"),
                ("value", "1"),
            ],
        )
    };
    let mut rate = 0.0;
    for _ in 0..60 {
        mgmt.publish(&q, 5).await;
        rate = value(&ctx, s()).await;
        if rate > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rate > 0.0, "the publish rate shows up while publishing");
    mgmt.delete_queue(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_regex_selects_queues_and_sum_avg_max_combine_them() {
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let prefix = unique("rx");
    for (suffix, n) in [("a", 1), ("b", 2), ("c", 6)] {
        let q = format!("{prefix}-{suffix}");
        mgmt.create_queue(&q).await;
        mgmt.publish(&q, n).await;
    }
    let ctx = trusted();
    let host = https();
    let pattern = format!("^{prefix}-.*$");
    for (op, want) in [("sum", 9.0), ("avg", 3.0), ("max", 6.0)] {
        let s = || {
            spec(
                "rmq",
                &[
                    ("host", &host),
                    ("queueName", &pattern),
                    ("useRegex", "true"),
                    ("operation", op),
                    ("mode", "QueueLength"),
                    ("value", "1"),
                ],
            )
        };
        until_eq(op, want, || value(&ctx, s())).await;
    }
    for suffix in ["a", "b", "c"] {
        mgmt.delete_queue(&format!("{prefix}-{suffix}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqps_host_always_goes_through_the_factory_even_without_tls_enable() {
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("trust");
    mgmt.create_queue(&q).await;
    // A CA folder without the fixture CA: the broker is untrusted.
    let empty = tempfile::tempdir().unwrap();
    let untrusting = BuildContext {
        trust: TrustFactory::new(TrustOptions::default().ca_dirs([empty.path()])).unwrap(),
    };
    for host in [amqps(), https()] {
        let err = poll(
            &untrusting,
            spec("rmq", &[("host", &host), ("queueName", &q)]),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind.as_str(), "unknown_issuer", "{host}: {err}");
        // With tls: enable the same holds, and unsafeSsl is honoured either way.
        let with_tls =
            spec("rmq", &[("host", &host), ("queueName", &q)]).with_auth("tls", "enable");
        assert_eq!(
            poll(&untrusting, with_tls).await.unwrap_err().kind.as_str(),
            "unknown_issuer"
        );
        let unsafe_ssl = spec(
            "rmq",
            &[("host", &host), ("queueName", &q), ("unsafeSsl", "true")],
        );
        assert!(
            poll(&untrusting, unsafe_ssl).await.is_ok(),
            "{host}: unsafeSsl still connects"
        );
    }
    assert_eq!(
        untrusting.trust.stats().unsafe_ssl_triggers,
        1,
        "warned once for the one trigger"
    );
    // The trigger's own `ca` is trusted for that trigger.
    let with_ca = spec("rmq", &[("host", &amqps()), ("queueName", &q)])
        .with_auth("ca", Fixtures::get().pem("ca.crt"));
    assert!(poll(&untrusting, with_ca).await.is_ok());
    // tls: enable with a plaintext scheme is refused, not silently plaintext.
    let plain = spec("rmq", &[("host", "amqp://localhost:1/"), ("queueName", &q)])
        .with_auth("tls", "enable");
    let err = poll(&untrusting, plain).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(err.message.contains("amqps://"), "{err}");
    mgmt.delete_queue(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls13_minimum_refuses_the_tls12_only_node() {
    let fx = Fixtures::get();
    let mgmt = Mgmt::new("RABBITMQ12_MGMT_URL");
    let q = unique("v12");
    mgmt.create_queue(&q).await;
    mgmt.publish(&q, 2).await;
    let dir = fx.ca_dir();
    let strict = BuildContext {
        trust: TrustFactory::new(
            TrustOptions::default()
                .ca_dirs([dir.path()])
                .client_min_tls(TlsVersion::Tls13),
        )
        .unwrap(),
    };
    let amqps12 = format!(
        "amqps://admin:adminpass@localhost:{}/",
        fx.port("RABBITMQ12_AMQPS_PORT")
    );
    let https12 = format!(
        "https://admin:adminpass@localhost:{}/",
        fx.port("RABBITMQ12_MGMT_PORT")
    );
    for host in [&amqps12, &https12] {
        let err = poll(&strict, spec("rmq", &[("host", host), ("queueName", &q)]))
            .await
            .unwrap_err();
        assert_eq!(err.kind.as_str(), "protocol_version", "{host}: {err}");
    }
    // Positive control: the TLS12 default reaches the same node.
    assert_eq!(
        value(
            &trusted(),
            spec("rmq", &[("host", &amqps12), ("queueName", &q)])
        )
        .await,
        2.0
    );
    mgmt.delete_queue(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_without_a_password_authenticates_with_sasl_external() {
    let fx = Fixtures::get();
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("external");
    mgmt.create_queue(&q).await;
    mgmt.publish(&q, 3).await;
    let ctx = trusted();
    let host = format!("amqps://localhost:{}/", fx.port("RABBITMQ_AMQPS_PORT"));
    let builder = RabbitMqBuilder::default();
    let s = spec("rmq", &[("host", &host), ("queueName", &q)])
        .with_auth("tls", "enable")
        .with_auth("cert", fx.pem("client-chain.crt"))
        .with_auth("key", fx.pem("client-encrypted.key"))
        .with_auth("keyPassword", fx.var("TRUSTSCALE_CLIENT_KEY_PASSWORD"));
    let scaler = builder.build(&s, &ctx).await.unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 3.0);
    assert!(builder.amqp_clients()[0].uses_external_auth());
    // Negative control: no certificate and no password is refused.
    let err = poll(&ctx, spec("rmq", &[("host", &host), ("queueName", &q)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    // Negative control: a client certificate from a CA the broker does not trust is
    // refused in the handshake (verify_peer).
    let foreign = support::TestCa::new("foreign-client-ca").client("scaler");
    let err = poll(
        &ctx,
        spec("rmq", &[("host", &host), ("queueName", &q)])
            .with_auth("tls", "enable")
            .with_auth("cert", foreign.chain_pem.as_str())
            .with_auth("key", foreign.key_pem.as_str()),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind.as_str(), "client_cert_rejected", "{err}");
    mgmt.delete_queue(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_source_and_auth_errors_are_classified() {
    let ctx = trusted();
    let wrong_pw = format!(
        "amqps://admin:nope@localhost:{}/",
        Fixtures::get().port("RABBITMQ_AMQPS_PORT")
    );
    let wrong_pw_http = format!(
        "https://admin:nope@localhost:{}/",
        Fixtures::get().port("RABBITMQ_MGMT_PORT")
    );
    let cases: Vec<(&str, TriggerSpec, ErrorKind, &str)> = vec![
        (
            "missing queue over AMQP",
            spec("rmq", &[("host", &amqps()), ("queueName", absent())]),
            ErrorKind::Source,
            "does not exist",
        ),
        (
            "missing queue over HTTP",
            spec("rmq", &[("host", &https()), ("queueName", absent())]),
            ErrorKind::Source,
            "does not exist",
        ),
        (
            "wrong password over AMQP",
            spec("rmq", &[("host", &wrong_pw), ("queueName", absent())]),
            ErrorKind::Auth,
            "refused",
        ),
        (
            "wrong password over HTTP",
            spec("rmq", &[("host", &wrong_pw_http), ("queueName", absent())]),
            ErrorKind::Auth,
            "401",
        ),
        (
            "a rate over AMQP",
            spec(
                "rmq",
                &[
                    ("host", &amqps()),
                    ("queueName", absent()),
                    ("mode", "MessageRate"),
                    ("value", "1"),
                ],
            ),
            ErrorKind::Config,
            "protocol: http",
        ),
        (
            "excludeUnacknowledged over AMQP",
            spec(
                "rmq",
                &[
                    ("host", &amqps()),
                    ("queueName", absent()),
                    ("excludeUnacknowledged", "true"),
                ],
            ),
            ErrorKind::Config,
            "excludeUnacknowledged",
        ),
        (
            "queueLength with mode",
            spec(
                "rmq",
                &[
                    ("host", &amqps()),
                    ("queueName", absent()),
                    ("queueLength", "5"),
                    ("mode", "QueueLength"),
                ],
            ),
            ErrorKind::Config,
            "queueLength",
        ),
        (
            "unknown mode",
            spec(
                "rmq",
                &[
                    ("host", &amqps()),
                    ("queueName", absent()),
                    ("mode", "Fastest"),
                    ("value", "1"),
                ],
            ),
            ErrorKind::Config,
            "mode",
        ),
        (
            "no host",
            spec("rmq", &[("queueName", absent())]),
            ErrorKind::Config,
            "host",
        ),
    ];
    for (name, s, kind, text) in cases {
        let err = poll(&ctx, s).await.unwrap_err();
        assert_eq!(err.kind, kind, "{name}: {err}");
        assert!(err.to_string().contains(text), "{name}: {err}");
        assert!(
            !err.to_string().contains("adminpass") && !err.to_string().contains("nope@"),
            "{name}: no credentials in errors: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_with_the_same_settings_share_one_amqp_connection() {
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("shared");
    mgmt.create_queue(&q).await;
    let ctx = trusted();
    let builder = RabbitMqBuilder::default();
    let mut scalers: Vec<Box<dyn Scaler>> = Vec::new();
    let so = unique("shared-so");
    for _ in 0..50 {
        scalers.push(
            builder
                .build(&spec(&so, &[("host", &amqps()), ("queueName", &q)]), &ctx)
                .await
                .unwrap(),
        );
    }
    let polls = futures_util::future::join_all(scalers.iter().map(|s| s.poll())).await;
    assert!(polls.iter().all(Result::is_ok));
    assert_eq!(builder.live_amqp_clients(), 1);
    assert_eq!(builder.amqp_clients()[0].connects(), 1);
    assert_eq!(connections_named(&so), 1, "the broker sees one connection");
    drop(scalers);
    assert_eq!(builder.live_amqp_clients(), 0);
    let mut closed = false;
    for _ in 0..50 {
        if connections_named(&so) == 0 {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "the connection closes with its last trigger");
    mgmt.delete_queue(&q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keda_manifest_set_probes() {
    let fx = Fixtures::get();
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("probe");
    mgmt.create_queue(&q).await;
    mgmt.publish(&q, 4).await;
    let dir = tempfile::tempdir().unwrap();
    let port = fx.port("RABBITMQ_AMQPS_PORT");
    std::fs::write(
        dir.path().join("rabbit.yaml"),
        format!(
            r#"
apiVersion: v1
kind: Secret
metadata: {{name: rabbit, namespace: jobs}}
stringData:
  host: amqps://localhost:{port}/
  username: admin
  password: adminpass
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {{name: rabbit, namespace: jobs}}
spec:
  secretTargetRef:
    - {{parameter: host, name: rabbit, key: host}}
    - {{parameter: username, name: rabbit, key: username}}
    - {{parameter: password, name: rabbit, key: password}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: workers, namespace: jobs}}
spec:
  scaleTargetRef: {{name: workers}}
  triggers:
    - type: rabbitmq
      metadata: {{protocol: amqp, queueName: {q}, mode: QueueLength, value: "2"}}
      authenticationRef: {{name: rabbit}}
"#
        ),
    )
    .unwrap();
    let ca = fx.ca_dir();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .args(["probe", "--json", "-f"])
        .arg(dir.path())
        .arg("--ca-dir")
        .arg(ca.path())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["triggers"][0]["value"], 4.0);
    assert_eq!(json["triggers"][0]["metric"], format!("s0-rabbitmq-{q}"));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("adminpass"));
    mgmt.delete_queue(&q).await;
}

#[tokio::test]
async fn amqp_on_a_current_thread_runtime_is_a_clear_config_error_not_a_hang() {
    let err = poll(
        &trusted(),
        spec("rmq", &[("host", &amqps()), ("queueName", absent())]),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(err.message.contains("multi-threaded"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_management_host_is_read() {
    // The fixtures' nodes speak TLS only; a plaintext management API is played by an
    // in-process HTTP server answering what RabbitMQ answers for one queue.
    let server = support::http::HttpsServer::start_plain(|r: &support::http::Request| {
        let authorized = r
            .headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("Basic "));
        match (r.path.as_str(), authorized) {
            ("/api/queues/%2F/orders", true) => support::http::Response::ok(
                r#"{"messages":7,"messages_ready":5,"message_stats":{"publish_details":{"rate":1.5}}}"#,
            ),
            (_, false) => support::http::Response::status(401),
            _ => support::http::Response::status(404),
        }
    })
    .await;
    let host = format!("http://guest:guest@127.0.0.1:{}/", server.addr.port());
    let ctx = trusted();
    let all = value(
        &ctx,
        spec(
            "plain",
            &[
                ("host", &host),
                ("queueName", "orders"),
                ("mode", "QueueLength"),
                ("value", "5"),
            ],
        ),
    )
    .await;
    let ready = value(
        &ctx,
        spec(
            "plain",
            &[
                ("host", &host),
                ("queueName", "orders"),
                ("mode", "QueueLength"),
                ("value", "5"),
                ("excludeUnacknowledged", "true"),
            ],
        ),
    )
    .await;
    assert_eq!((all, ready), (7.0, 5.0));
    let missing = poll(
        &ctx,
        spec("plain", &[("host", &host), ("queueName", "other")]),
    )
    .await
    .unwrap_err();
    assert_eq!(missing.kind, ErrorKind::Source, "{missing}");
}

/// A context that trusts `ca` alone, and the CA folder it reads (kept while it is used).
fn trusting_only(ca: &support::TestCa) -> (BuildContext, tempfile::TempDir) {
    let anchors = tempfile::tempdir().unwrap();
    ca.write_pem(&anchors.path().join("ca.crt"));
    let ctx = BuildContext {
        trust: TrustFactory::new(
            TrustOptions::default()
                .ca_dirs([anchors.path()])
                .system_roots(false),
        )
        .unwrap(),
    };
    (ctx, anchors)
}

/// A queue no test declares (unique to this run).
fn absent() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| support::unique("absent-queue"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_for_another_host_or_expired_is_named_for_amqps_and_management() {
    let ca = support::TestCa::new("rabbit-test-ca");
    let (ctx, _anchors) = trusting_only(&ca);
    for (leaf, want) in [
        (
            ca.server_for(&["rabbit.other.example"]),
            "hostname_mismatch",
        ),
        (ca.expired_server(), "expired"),
    ] {
        let server = support::TestServer::start(support::server_config(
            &leaf,
            support::Versions::Both,
            None,
        ))
        .await;
        for host in [
            format!("amqps://localhost:{}/", server.addr.port()),
            format!("https://localhost:{}", server.addr.port()),
        ] {
            let err = poll(
                &ctx,
                spec("rmq", &[("host", &host), ("queueName", absent())]),
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind.as_str(), want, "{host}: {err}");
        }
    }
    // Control: a good certificate from the same CA passes the handshake (the server then
    // speaks neither AMQP nor HTTP, which is a different failure).
    let server = support::TestServer::start(support::server_config(
        &ca.server(),
        support::Versions::Both,
        None,
    ))
    .await;
    let err = poll(
        &ctx,
        spec(
            "rmq",
            &[
                (
                    "host",
                    &format!("amqps://localhost:{}/", server.addr.port()),
                ),
                ("queueName", absent()),
            ],
        ),
    )
    .await
    .unwrap_err();
    assert!(
        !matches!(
            err.kind.as_str(),
            "hostname_mismatch" | "expired" | "unknown_issuer"
        ),
        "{err}"
    );
}

/// A TCP relay to `target` that can stop forwarding (both ways, connections kept open),
/// as a network partition does.
async fn silent_relay(target: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = std::sync::Arc::clone(&silent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let s = std::sync::Arc::clone(&s);
            tokio::spawn(async move {
                let Ok(upstream) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                else {
                    return;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut ur, mut uw) = upstream.into_split();
                let (mut a, mut b) = ([0u8; 16384], [0u8; 16384]);
                loop {
                    if s.load(Ordering::Relaxed) {
                        // Partitioned: nothing passes, nothing closes, until it heals.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    tokio::select! {
                        r = cr.read(&mut a) => match r {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if uw.write_all(&a[..n]).await.is_err() { return },
                        },
                        r = ur.read(&mut b) => match r {
                            Ok(0) | Err(_) => return,
                            Ok(n) => if cw.write_all(&b[..n]).await.is_err() { return },
                        },
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            });
        }
    });
    (port, silent)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_stops_answering_is_cut_and_the_next_poll_connects_again() {
    use std::sync::atomic::Ordering;
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    let q = unique("silent");
    mgmt.create_queue(&q).await;
    mgmt.publish(&q, 2).await;
    let (port, silent) = silent_relay(Fixtures::get().port("RABBITMQ_AMQPS_PORT")).await;
    let ctx = trusted();
    let builder = RabbitMqBuilder::default();
    let scaler = builder
        .build(
            &spec(
                &unique("silent-so"),
                &[
                    (
                        "host",
                        &format!("amqps://admin:adminpass@localhost:{port}/"),
                    ),
                    ("queueName", &q),
                ],
            ),
            &ctx,
        )
        .await
        .unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 2.0);

    // The broker no longer answers: the poll fails on its own (the bound here only keeps
    // a regression from hanging the suite), classified and named.
    silent.store(true, Ordering::Relaxed);
    let err = tokio::time::timeout(Duration::from_secs(60), scaler.poll())
        .await
        .expect("a poll on a silent connection must end by itself")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::CONNECTION, "{err}");
    assert!(err.to_string().contains("no answer in 5s"), "{err}");

    // Healed: the cut connection is replaced by a new one at the next poll.
    silent.store(false, Ordering::Relaxed);
    mgmt.publish(&q, 1).await;
    let healed = scaler.poll().await.unwrap();
    assert_eq!(
        healed.metrics[0].value, 3.0,
        "the poll after the partition healed"
    );
    assert_eq!(builder.amqp_clients()[0].connects(), 2);
    mgmt.delete_queue(&q).await;
}

/// A RabbitMQ trigger on `port` of this machine with the fixture's trust.
async fn scaler_on(ctx: &BuildContext, port: u16) -> Box<dyn Scaler> {
    RabbitMqBuilder::default()
        .build(
            &spec(
                &unique("gone-so"),
                &[
                    (
                        "host",
                        &format!("amqps://admin:adminpass@localhost:{port}/"),
                    ),
                    ("queueName", "q"),
                ],
            ),
            ctx,
        )
        .await
        .unwrap()
}

/// The runtime's live tasks, once they are back to `before` (or after 2 s).
async fn alive_tasks_settled(before: usize) -> usize {
    let metrics = tokio::runtime::Handle::current().metrics();
    let mut alive = metrics.num_alive_tasks();
    for _ in 0..40 {
        if alive <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        alive = metrics.num_alive_tasks();
    }
    alive
}

/// The poll on a peer that never answers ends by itself, failed as a `connection` that
/// timed out, and the attempt given up is cut: the peer sees its end within 10 s (reading
/// what comes), nothing keeps waiting on it.
async fn given_up_and_cut(
    poll: tokio::task::JoinHandle<Result<Poll, ScalerError>>,
    peer: &mut (impl tokio::io::AsyncRead + Unpin),
) {
    use tokio::io::AsyncReadExt as _;
    let err = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("a connect to a peer that never answers must end by itself")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::CONNECTION, "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
    let mut buf = [0u8; 4096];
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match peer.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the abandoned connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polls_that_find_the_broker_gone_leave_no_task_behind() {
    // Nothing listens on the port: every poll's connect is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ctx = trusted();
    let scaler = scaler_on(&ctx, port).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    for _ in 0..20 {
        let err = scaler.poll().await.unwrap_err();
        assert_eq!(err.kind, ErrorKind::CONNECTION, "{err}");
        assert!(err.to_string().contains("refused"), "{err}");
    }
    // Each failed attempt used to leave lapin's internal task (and its channel
    // structures) alive for good: twenty polls, twenty tasks.
    let alive = alive_tasks_settled(before).await;
    assert!(
        alive <= before,
        "{alive} tasks alive after 20 failed polls, {before} before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_to_a_peer_that_never_answers_is_given_up_and_its_socket_closed() {
    // Accepts, reads what comes (the TLS ClientHello), answers nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let ctx = trusted();
    let scaler = scaler_on(&ctx, port).await;
    let poll = tokio::spawn(async move { scaler.poll().await });
    let (mut peer, _) = listener.accept().await.unwrap();
    given_up_and_cut(poll, &mut peer).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_takes_tls_but_never_speaks_amqp_is_given_up_leaving_nothing_behind() {
    use tokio::io::AsyncReadExt as _;
    // The transport comes up (TCP and TLS, with a CA the trigger trusts); then the peer
    // reads the AMQP header and answers nothing: the attempt ends in lapin's handshake,
    // which must be cut, its I/O and internal tasks with it.
    let ca = support::TestCa::new("silent amqp peer CA");
    let (ctx, _anchors) = trusting_only(&ca);
    let acceptor = tokio_rustls::TlsAcceptor::from(support::server_config(
        &ca.server(),
        support::Versions::Both,
        None,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let scaler = scaler_on(&ctx, port).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let poll = tokio::spawn(async move { scaler.poll().await });
    let (tcp, _) = listener.accept().await.unwrap();
    let mut peer = acceptor
        .accept(tcp)
        .await
        .expect("the TLS handshake completes");
    let mut header = [0u8; 8];
    peer.read_exact(&mut header).await.unwrap();
    assert_eq!(&header[..4], b"AMQP", "the client got past TLS to AMQP");
    given_up_and_cut(poll, &mut peer).await;
    let alive = alive_tasks_settled(before).await;
    assert!(
        alive <= before,
        "{alive} tasks alive after the attempt was given up, {before} before"
    );
}
