//! The redis and redis-streams scalers against real TLS Redis servers
//! (`fixtures/brokers.sh start`).

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use redis::AsyncCommands;
use support::fixtures::Fixtures;
use trustscale::scaler::{BuildContext, ErrorKind, Poll, Scaler, ScalerError, TriggerSpec};
use trustscale::trust::{TlsVersion, TrustFactory, TrustOptions};
use trustscale_redis::RedisBuilder;

fn trust(dir: &std::path::Path) -> BuildContext {
    trust_with(TrustOptions::default().ca_dirs([dir]))
}

fn trust_with(options: TrustOptions) -> BuildContext {
    BuildContext {
        trust: TrustFactory::new(options).unwrap(),
    }
}

fn spec(type_name: &str, index: usize, meta: &[(&str, &str)]) -> TriggerSpec {
    support::trigger("redis", index, type_name, meta)
}

async fn build(
    builder: &RedisBuilder,
    ctx: &BuildContext,
    spec: &TriggerSpec,
) -> Result<Box<dyn Scaler>, ScalerError> {
    use trustscale::scaler::ScalerBuilder;
    builder.build(spec, ctx).await
}

async fn poll(ctx: &BuildContext, spec: TriggerSpec) -> Result<Poll, ScalerError> {
    let registry = trustscale_operator::builtins::registry();
    registry.build(&spec, ctx).await?.poll().await
}

/// A plain (non-scaler) client over TLS for setting up data, trusting the fixture CA.
async fn admin(port: u16) -> redis::aio::MultiplexedConnection {
    let connector =
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(support::fixture_client_config()));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let tls = connector
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    let info = redis::RedisConnectionInfo::default();
    let config = redis::AsyncConnectionConfig::new();
    let (conn, driver) = redis::aio::MultiplexedConnection::new_with_config(&info, tls, config)
        .await
        .unwrap();
    tokio::spawn(driver);
    conn
}

/// A key no test writes (unique to this run, so that another run's data cannot meet it).
fn absent() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| unique("absent-list"))
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

#[tokio::test]
async fn each_key_type_is_measured_over_tls_through_the_custom_ca_folder() {
    let fx = Fixtures::get();
    let port = fx.port("REDIS_TLS_PORT");
    let addr = format!("localhost:{port}");
    let mut db = admin(port).await;
    let (list, set, zset, hash, missing) = (
        unique("list"),
        unique("set"),
        unique("zset"),
        unique("hash"),
        unique("none"),
    );
    let _: () = db.rpush(&list, &["a", "b", "c"]).await.unwrap();
    let _: () = db.sadd(&set, &["a", "b"]).await.unwrap();
    let _: () = db
        .zadd_multiple(&zset, &[(1, "a"), (2, "b"), (3, "c"), (4, "d")])
        .await
        .unwrap();
    let _: () = db
        .hset_multiple(&hash, &[("a", 1), ("b", 2), ("c", 3), ("d", 4), ("e", 5)])
        .await
        .unwrap();
    let ca = fx.ca_dir();
    let ctx = trust(ca.path());
    let cases = [
        ("list", &list, 3.0),
        ("set", &set, 2.0),
        ("sorted set", &zset, 4.0),
        ("hash", &hash, 5.0),
        ("missing key", &missing, 0.0),
    ];
    for (name, key, want) in cases {
        let s = spec(
            "redis",
            0,
            &[
                ("address", &addr),
                ("listName", key),
                ("enableTLS", "true"),
                ("activationListLength", "2"),
            ],
        );
        let p = poll(&ctx, s)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.metrics[0].value, want, "{name}");
        assert_eq!(
            p.active,
            want > 2.0,
            "{name}: active only above activationListLength"
        );
        assert_eq!(p.metrics[0].name, format!("s0-redis-{key}"));
    }
    // A key whose type changes between polls is re-measured with the right command.
    let builder = RedisBuilder::default();
    let scaler = build(
        &builder,
        &ctx,
        &spec(
            "redis",
            0,
            &[
                ("address", &addr),
                ("listName", &list),
                ("enableTLS", "true"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 3.0);
    let _: () = db.del(&list).await.unwrap();
    let _: () = db
        .sadd(&list, &["x", "y", "z", "w", "v", "u"])
        .await
        .unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 6.0);
}

#[tokio::test]
async fn each_stream_mode_is_measured() {
    let fx = Fixtures::get();
    let port = fx.port("REDIS_TLS_PORT");
    let addr = format!("localhost:{port}");
    let mut db = admin(port).await;
    let stream = unique("stream");
    for i in 0..10 {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("n")
            .arg(i)
            .query_async(&mut db)
            .await
            .unwrap();
    }
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("workers")
        .arg("0")
        .query_async(&mut db)
        .await
        .unwrap();
    // Read 4 entries: 4 pending, lag 6.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("workers")
        .arg("w1")
        .arg("COUNT")
        .arg(4)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query_async(&mut db)
        .await
        .unwrap();
    let ca = fx.ca_dir();
    let ctx = trust(ca.path());
    let base = [
        ("address", addr.as_str()),
        ("stream", stream.as_str()),
        ("enableTLS", "true"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut m: Vec<(&str, &str)> = base.to_vec();
        m.extend_from_slice(extra);
        spec("redis-streams", 1, &m)
    };
    let cases = [
        ("XLEN without a group", with(&[]), 10.0),
        (
            "XPENDING with a group",
            with(&[("consumerGroup", "workers")]),
            4.0,
        ),
        (
            "lag with lagCount",
            with(&[("consumerGroup", "workers"), ("lagCount", "5")]),
            6.0,
        ),
        (
            "lag of a group not created yet is the stream length",
            with(&[("consumerGroup", "later"), ("lagCount", "5")]),
            10.0,
        ),
    ];
    for (name, s, want) in cases {
        let p = poll(&ctx, s)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.metrics[0].value, want, "{name}");
        assert_eq!(p.metrics[0].name, format!("s1-redis-streams-{stream}"));
    }
    let err = poll(&ctx, with(&[("consumerGroup", "nope")]))
        .await
        .unwrap_err();
    assert_eq!(
        err.kind,
        ErrorKind::Source,
        "XPENDING of a missing group: {err}"
    );
    assert!(err.message.contains("NOGROUP"), "{err}");
}

#[tokio::test]
async fn a_server_from_an_unknown_ca_is_rejected_and_unsafe_ssl_reaches_it_with_a_warning() {
    let fx = Fixtures::get();
    let port = fx.port("REDIS_UNTRUSTED_PORT");
    let ca = fx.ca_dir();
    let ctx = trust(ca.path());
    let s = |extra: &[(&str, &str)]| {
        let addr = format!("localhost:{port}");
        let mut m = vec![
            ("address", addr.as_str()),
            ("listName", absent()),
            ("enableTLS", "true"),
        ];
        m.extend_from_slice(extra);
        spec("redis", 0, &m)
    };
    let err = poll(&ctx, s(&[])).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "unknown_issuer", "{err}");
    let p = poll(&ctx, s(&[("unsafeSsl", "true")])).await.unwrap();
    assert_eq!(p.metrics[0].value, 0.0);
    assert_eq!(ctx.trust.stats().unsafe_ssl_triggers, 1);
    // The server's own CA as the trigger's `ca` is the safe way in.
    let own_ca = fx.pki("untrusted-ca.crt").display().to_string();
    let p = poll(&ctx, s(&[])).await;
    assert!(p.is_err());
    let mut with_ca = s(&[]);
    with_ca
        .auth
        .insert("ca".into(), trustscale::trust::Secret::new(own_ca));
    assert!(
        poll(&ctx, with_ca).await.is_ok(),
        "the trigger's ca is trusted"
    );
}

#[tokio::test]
async fn expired_and_wrong_host_certificates_are_classified() {
    let fx = Fixtures::get();
    let ca = fx.ca_dir();
    let ctx = trust(ca.path());
    for (port_var, kind) in [
        ("REDIS_EXPIRED_PORT", "expired"),
        ("REDIS_WRONGHOST_PORT", "hostname_mismatch"),
    ] {
        let addr = format!("localhost:{}", fx.port(port_var));
        let err = poll(
            &ctx,
            spec(
                "redis",
                0,
                &[
                    ("address", &addr),
                    ("listName", absent()),
                    ("enableTLS", "true"),
                ],
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind.as_str(), kind, "{port_var}: {err}");
    }
}

#[tokio::test]
async fn a_tls13_minimum_refuses_the_tls12_only_server() {
    let fx = Fixtures::get();
    let ca = fx.ca_dir();
    let s = || {
        let addr = format!("localhost:{}", fx.port("REDIS_TLS12_PORT"));
        spec(
            "redis",
            0,
            &[
                ("address", &addr),
                ("listName", absent()),
                ("enableTLS", "true"),
            ],
        )
    };
    let strict = trust_with(
        TrustOptions::default()
            .ca_dirs([ca.path()])
            .client_min_tls(TlsVersion::Tls13),
    );
    let err = poll(&strict, s()).await.unwrap_err();
    assert_eq!(err.kind.as_str(), "protocol_version", "{err}");
    // Positive control: TLS12 minimum works with the same server, and TLS13 with the 1.3 server.
    assert!(poll(&trust(ca.path()), s()).await.is_ok());
    let addr13 = format!("localhost:{}", fx.port("REDIS_TLS13_PORT"));
    assert!(
        poll(
            &strict,
            spec(
                "redis",
                0,
                &[
                    ("address", &addr13),
                    ("listName", absent()),
                    ("enableTLS", "true")
                ]
            )
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn a_client_certificate_is_required_given_and_the_acl_user_authenticates() {
    let fx = Fixtures::get();
    let addr = format!("localhost:{}", fx.port("REDIS_MTLS_PORT"));
    let ca = fx.ca_dir();
    let ctx = trust(ca.path());
    let base = || {
        spec(
            "redis",
            0,
            &[
                ("address", &addr),
                ("listName", absent()),
                ("username", "scaler"),
            ],
        )
    };
    let no_cert = base()
        .with_auth("tls", "enable")
        .with_auth("password", "scalerpass");
    assert_eq!(
        poll(&ctx, no_cert).await.unwrap_err().kind.as_str(),
        "client_cert_required"
    );
    let with_cert = |password: &str| {
        base()
            .with_auth("tls", "enable")
            .with_auth("cert", fx.pem("client-chain.crt"))
            .with_auth("key", fx.pem("client-encrypted.key"))
            .with_auth("keyPassword", fx.var("TRUSTSCALE_CLIENT_KEY_PASSWORD"))
            .with_auth("password", password)
    };
    let p = poll(&ctx, with_cert("scalerpass")).await.unwrap();
    assert_eq!(p.metrics[0].value, 0.0);
    let err = poll(&ctx, with_cert("wrong")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Auth, "{err}");
    // A client certificate from a CA the server does not trust.
    let foreign = support::TestCa::new("foreign-client-ca").client("scaler");
    let err = poll(
        &ctx,
        base()
            .with_auth("tls", "enable")
            .with_auth("cert", foreign.chain_pem.as_str())
            .with_auth("key", foreign.key_pem.as_str())
            .with_auth("password", "scalerpass"),
    )
    .await
    .unwrap_err();
    assert_eq!(err.kind.as_str(), "client_cert_rejected", "{err}");
}

#[tokio::test]
async fn tls_and_enable_tls_together_are_a_config_error() {
    let ca = Fixtures::get().ca_dir();
    let s = spec(
        "redis",
        0,
        &[
            ("address", "localhost:1"),
            ("listName", absent()),
            ("enableTLS", "true"),
        ],
    )
    .with_auth("tls", "enable");
    let err = poll(&trust(ca.path()), s).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Config);
    assert!(err.message.contains("cannot both be set"), "{err}");
    let missing = spec("redis", 0, &[("address", "localhost:1")]);
    let err = poll(&trust(ca.path()), missing).await.unwrap_err();
    assert!(
        err.message.contains("listName") && err.to_string().contains("test/redis#0 (redis)"),
        "{err}"
    );
}

#[tokio::test]
async fn triggers_with_the_same_settings_share_one_connection() {
    let fx = Fixtures::get();
    let addr = format!("localhost:{}", fx.port("REDIS_TLS_PORT"));
    let ca = fx.ca_dir();
    let ctx = trust(ca.path());
    let builder = RedisBuilder::default();
    let mut scalers = Vec::new();
    for i in 0..50 {
        let list = format!("shared-{i}");
        scalers.push(
            build(
                &builder,
                &ctx,
                &spec(
                    "redis",
                    i,
                    &[
                        ("address", &addr),
                        ("listName", &list),
                        ("enableTLS", "true"),
                    ],
                ),
            )
            .await
            .unwrap(),
        );
    }
    let polls = futures_util::future::join_all(scalers.iter().map(|s| s.poll())).await;
    assert!(polls.iter().all(Result::is_ok));
    assert_eq!(builder.live_clients(), 1);
    assert_eq!(builder.clients()[0].connects(), 1);
    // Another database is another connection.
    let other = build(
        &builder,
        &ctx,
        &spec(
            "redis",
            0,
            &[
                ("address", &addr),
                ("listName", absent()),
                ("enableTLS", "true"),
                ("databaseIndex", "1"),
            ],
        ),
    )
    .await
    .unwrap();
    other.poll().await.unwrap();
    assert_eq!(builder.live_clients(), 2);
    drop(scalers);
    drop(other);
    assert_eq!(
        builder.live_clients(),
        0,
        "connections close with their last trigger"
    );
}

/// A Redis server of the test's own, so that it can be restarted.
struct OwnRedis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnRedis {
    fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = OwnRedis {
            port,
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        r.spawn();
        r
    }

    fn spawn(&mut self) {
        let fx = Fixtures::get();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &self.port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(fx.pki("server-chain.crt"))
            .arg("--tls-key-file")
            .arg(fx.pki("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(fx.pki("ca-bundle.crt"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (fixtures/brokers.sh installs it)");
        self.child = Some(child);
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("own redis-server on port {} did not start", self.port);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn the_next_poll_after_a_restart_reconnects() {
    let mut server = OwnRedis::start();
    let ca = Fixtures::get().ca_dir();
    let ctx = trust(ca.path());
    let builder = Arc::new(RedisBuilder::default());
    let addr = format!("localhost:{}", server.port);
    let scaler = build(
        &builder,
        &ctx,
        &spec(
            "redis",
            0,
            &[
                ("address", &addr),
                ("listName", "jobs"),
                ("enableTLS", "true"),
            ],
        ),
    )
    .await
    .unwrap();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 0.0);
    server.stop();
    let err = scaler.poll().await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::CONNECTION, "{err}");
    server.spawn();
    let mut db = admin(server.port).await;
    let _: () = db.rpush("jobs", &["a", "b"]).await.unwrap();
    assert_eq!(
        scaler.poll().await.unwrap().metrics[0].value,
        2.0,
        "the first poll after the restart succeeds"
    );
    // A restart between two polls, without a failed poll in between, is also absorbed.
    drop(db);
    server.stop();
    server.spawn();
    assert_eq!(scaler.poll().await.unwrap().metrics[0].value, 0.0);
    assert_eq!(builder.clients()[0].connects(), 3);
}
