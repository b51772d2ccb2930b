//! The operator's internal PKI, rotation and hot reload, and the mutual-TLS metrics API,
//! over real TLS; the binary where a real process matters (SIGKILL, SIGTERM, manifests).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::http::{HttpsServer, Request, Response};
use support::{TestCa, Versions, server_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trustscale::scaler::BuildContext;
use trustscale::trust::{TrustFactory, TrustOptions, material};
use trustscale_operator::certs::CertManager;
use trustscale_operator::engine::{Engine, LogSink};
use trustscale_operator::manifest::ManifestSet;
use trustscale_operator::metrics::Metrics;
use trustscale_operator::pki::{self, PkiOptions};
use trustscale_operator::service;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_in(path: &Path) -> Vec<CertificateDer<'static>> {
    material::certificates_for("ca", &std::fs::read(path).unwrap()).unwrap()
}

/// A client config trusting `roots`, presenting `identity` (chain, key), limited to `versions`.
fn client_config(
    roots: &[CertificateDer<'static>],
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store);
    Arc::new(match identity {
        Some((chain, key)) => b.with_client_auth_cert(chain, key).unwrap(),
        None => b.with_no_client_auth(),
    })
}

/// One GET on a fresh connection: (status line, body, the server's leaf).
async fn get(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    path: &str,
) -> Result<(String, String, CertificateDer<'static>), String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or("no peer cert")?
        .into_owned();
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))?;
    Ok((
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
        leaf,
    ))
}

fn serial(cert: &CertificateDer<'_>) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    c.raw_serial_as_string()
}

fn issuer(cert: &CertificateDer<'_>) -> String {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).unwrap();
    c.issuer().to_string()
}

struct Running {
    addr: std::net::SocketAddr,
    stop: tokio::sync::watch::Sender<bool>,
    certs: Arc<CertManager>,
    metrics: Arc<Metrics>,
}

impl Running {
    /// Certificate reloads refused so far.
    fn refused_reloads(&self) -> u64 {
        self.metrics
            .reloads
            .get_or_create(&trustscale_operator::metrics::ReloadLabels {
                what: "certs".into(),
                result: "failed".into(),
            })
            .get()
    }
}

async fn start_operator(dir: &Path, rotation: bool, opts: PkiOptions) -> Running {
    let trust = TrustFactory::new(TrustOptions::default().ca_dirs(Vec::<PathBuf>::new())).unwrap();
    let metrics = Arc::new(Metrics::default());
    let certs = CertManager::start(
        dir.to_path_buf(),
        rotation,
        opts,
        &trust,
        None,
        Arc::clone(&metrics),
    )
    .unwrap();
    let engine = Engine::new(
        trustscale_operator::builtins::registry(),
        BuildContext { trust },
        Arc::clone(&metrics),
        Arc::new(LogSink),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(service::serve_api(
        listener,
        certs.server(),
        certs.authenticator(),
        engine.clone(),
        rx.clone(),
    ));
    tokio::spawn(Arc::clone(&certs).run(rx));
    Running {
        addr,
        stop,
        certs,
        metrics,
    }
}

fn identity(dir: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    // As the operator does: one resolved set, so the chain and the key belong together.
    let set = pki::load(dir).unwrap();
    (set.chain, set.key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let opts = PkiOptions {
        ca_lifetime: Duration::from_secs(9),
        cert_lifetime: Duration::from_secs(3),
        dns_names: vec![],
    };
    let op = start_operator(dir.path(), true, opts).await;
    // The client keeps trusting the FIRST CA only, and picks up its own identity from the
    // folder as a component mounting it would.
    let first_ca = certs_in(&dir.path().join("ca.crt"));
    let (failed, ok) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut leaves = std::collections::BTreeSet::new();
    let mut issuers = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(9);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        let config = client_config(
            &first_ca,
            Some(identity(dir.path())),
            &[&rustls::version::TLS13],
        );
        match get(op.addr, config, "/healthz").await {
            Ok((status, _, leaf)) if status.contains("200") => {
                ok.fetch_add(1, Ordering::Relaxed);
                leaves.insert(serial(&leaf));
                issuers.insert(issuer(&leaf));
            }
            Ok((status, _, _)) => {
                failed.fetch_add(1, Ordering::Relaxed);
                last_error = status;
            }
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                last_error = e;
            }
        }
    }
    let _ = op.stop.send(true);
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed; last: {last_error}",
        ok + failed
    );
    assert!(
        leaves.len() >= 4,
        "the leaf rotated at least three times: {} leaves seen",
        leaves.len()
    );
    assert!(
        issuers.len() >= 2,
        "the CA rotated: issuers seen {issuers:?}"
    );
    assert!(ok > 100, "a steady stream of requests: {ok}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_accepts_only_current_internal_clients_over_tls13() {
    let dir = tempfile::tempdir().unwrap();
    let op = start_operator(dir.path(), true, PkiOptions::default()).await;
    let ca = certs_in(&dir.path().join("ca.crt"));
    let tls13 = &[&rustls::version::TLS13][..];
    // Accepted: the internal identity.
    let (status, body, _) = get(
        op.addr,
        client_config(&ca, Some(identity(dir.path())), tls13),
        "/scaledobjects",
    )
    .await
    .unwrap();
    assert!(status.contains("200"), "{status}");
    assert!(body.contains("scaledObjects"), "{body}");
    // Refused: no client certificate.
    assert!(
        get(op.addr, client_config(&ca, None, tls13), "/healthz")
            .await
            .is_err()
    );
    // Refused: a certificate from another CA (a public CA's would be refused the same way:
    // only ca.crt is trusted for clients).
    let other = TestCa::new("someone else");
    let foreign = other.client("intruder");
    assert!(
        get(
            op.addr,
            client_config(&ca, Some((foreign.chain.clone(), foreign.key())), tls13),
            "/healthz"
        )
        .await
        .is_err()
    );
    // Refused: an expired certificate issued by the internal CA itself.
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca.key")).unwrap())
            .unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca[0], ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["old-client".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    let expired = params.signed_by(&key, &issuer).unwrap();
    let expired_id = (
        vec![expired.der().clone()],
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    );
    assert!(
        get(
            op.addr,
            client_config(&ca, Some(expired_id), tls13),
            "/healthz"
        )
        .await
        .is_err()
    );
    // Refused: TLS 1.2 under the TLS13 default, even with the right identity.
    let err = get(
        op.addr,
        client_config(&ca, Some(identity(dir.path())), &[&rustls::version::TLS12]),
        "/healthz",
    )
    .await
    .unwrap_err();
    assert!(err.contains("handshake"), "{err}");
    let _ = op.stop.send(true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_metrics_api_serves_a_scaledobjects_value() {
    let dir = tempfile::tempdir().unwrap();
    let op = start_operator(dir.path(), true, PkiOptions::default()).await;
    // A metrics source behind TLS with its own CA, trusted through the factory's CA folder.
    let source_ca = TestCa::new("source CA");
    let source = HttpsServer::start(
        server_config(&source_ca.server(), Versions::Both, None),
        |_: &Request| Response::ok(r#"{"q":{"depth":2500}}"#),
    )
    .await;
    let ca_dir = tempfile::tempdir().unwrap();
    source_ca.write_pem(&ca_dir.path().join("source.pem"));
    let trust = TrustFactory::new(TrustOptions::default().ca_dirs([ca_dir.path()])).unwrap();
    let engine = Engine::new(
        trustscale_operator::builtins::registry(),
        BuildContext { trust },
        Arc::new(Metrics::default()),
        Arc::new(LogSink),
    );
    let mut set = ManifestSet::default();
    set.add_text(
        Path::new("so.yaml"),
        &format!(
            "kind: ScaledObject\nmetadata: {{name: web, namespace: shop}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"{}\", valueLocation: q.depth, targetValue: \"1k\"}}\n",
            source.url("/")
        ),
    );
    engine
        .apply(&set, &trustscale_operator::manifest::Env::process())
        .await;
    // Serve this engine's API with the operator's certificates.
    let (stop, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(service::serve_api(
        listener,
        op.certs.server(),
        op.certs.authenticator(),
        engine.clone(),
        rx,
    ));
    let ca = certs_in(&dir.path().join("ca.crt"));
    let config = client_config(&ca, Some(identity(dir.path())), &[&rustls::version::TLS13]);
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-metric-api-q-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dweb";
    let mut body = String::new();
    for _ in 0..50 {
        let (status, b, _) = get(addr, Arc::clone(&config), path).await.unwrap();
        body = b;
        if status.contains("200") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["kind"], "ExternalMetricValueList");
    assert_eq!(json["items"][0]["metricName"], "s0-metric-api-q-depth");
    assert_eq!(json["items"][0]["value"], "2500");
    let status = engine.status();
    assert_eq!(
        status[0].decision.as_ref().unwrap().replicas,
        3,
        "ceil(2500 / 1000)"
    );
    let (s404, _, _) = get(addr, config, "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/nope?labelSelector=scaledobject.keda.sh%2Fname%3Dweb").await.unwrap();
    assert!(s404.contains("404"));
    let _ = stop.send(true);
    engine.shutdown().await;
    let _ = op.stop.send(true);
}

/// A user's own set (as cert-manager would write it), in the Kubernetes Secret layout.
fn user_set(dir: &Path, ca: &TestCa, leaf_cert: &[CertificateDer<'static>], leaf_key: &str) {
    let chain = material::certs_to_pem(leaf_cert.iter());
    pki::write_set(
        dir,
        &[
            ("ca.crt", ca.cert_pem.as_bytes(), false),
            ("tls.crt", chain.as_bytes(), false),
            ("tls.key", leaf_key.as_bytes(), true),
        ],
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bring_your_own_files_switch_without_restart_and_a_bad_pair_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("cert-manager CA");
    let first = ca.server();
    user_set(dir.path(), &ca, &first.chain, &first.key_pem);
    let op = start_operator(dir.path(), false, PkiOptions::default()).await;
    let client = ca.client("api-server");
    let config = client_config(
        std::slice::from_ref(&ca.cert_der),
        Some((client.chain.clone(), client.key())),
        &[&rustls::version::TLS13],
    );
    let served = || async {
        serial(
            &get(op.addr, Arc::clone(&config), "/healthz")
                .await
                .unwrap()
                .2,
        )
    };
    assert_eq!(served().await, serial(&first.cert_der));
    let second = ca.server();
    user_set(dir.path(), &ca, &second.chain, &second.key_pem);
    let start = Instant::now();
    while served().await != serial(&second.cert_der) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "the new certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A mismatched pair (third certificate, second key) is refused; the second keeps serving.
    let third = ca.server();
    let refused = op.refused_reloads();
    user_set(dir.path(), &ca, &third.chain, &second.key_pem);
    // Waits for the refusal itself, not for a time.
    let start = Instant::now();
    while op.refused_reloads() == refused {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the mismatched pair was never read"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served().await, serial(&second.cert_der));
    let err = pki::validate(
        dir.path(),
        &pki::load(dir.path()).unwrap(),
        SystemTime::now(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
    assert!(
        !dir.path().join("ca.key").exists(),
        "rotation off never writes a CA key"
    );
    let _ = op.stop.send(true);
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_trustscale")
}

fn inspect_valid(dir: &Path) -> (bool, String) {
    let out = std::process::Command::new(bin())
        .args(["certs", "inspect", "--json", "--cert-dir"])
        .arg(dir)
        .output()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (
        json["valid"] == true,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn a_sigkill_at_any_moment_of_rotation_leaves_a_consistent_folder() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = || {
        std::process::Command::new(bin())
            .args([
                "operator",
                "--metrics-bind-address",
                "",
                "--webhook-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "127.0.0.1:0",
                "--cert-lifetime",
                "2s",
                "--ca-lifetime",
                "5s",
                "--manifests",
            ])
            .arg(manifests.path())
            .arg("--cert-dir")
            .arg(dir.path())
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut kills = 0;
    for round in 0..10 {
        let mut child = spawn();
        std::thread::sleep(Duration::from_millis(100 + fastrand::u64(0..1500)));
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        if pki::has_files(dir.path()) {
            let set = pki::load(dir.path())
                .unwrap_or_else(|e| panic!("round {round}: unreadable after SIGKILL: {e}"));
            // The set must hang together (key matches leaf, leaf chains to ca.crt); it may
            // have expired while nothing ran, which a restart renews.
            let provider = rustls::crypto::ring::default_provider();
            rustls::sign::CertifiedKey::from_der(set.chain.clone(), set.key.clone_key(), &provider)
                .unwrap_or_else(|e| panic!("round {round}: key and certificate do not match: {e}"));
        }
    }
    // Restarted, it serves again with a valid set.
    let mut child = spawn();
    let start = Instant::now();
    loop {
        let (valid, text) = inspect_valid(dir.path());
        if valid && std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not serving after restart: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(kills, 10);
}

#[test]
fn sigterm_stops_cleanly_and_manifest_changes_apply_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let so = |name: &str| {
        format!(
            "kind: ScaledObject\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: redis\n      metadata: {{address: \"localhost:1\", listName: q}}\n"
        )
    };
    std::fs::write(manifests.path().join("a.yaml"), so("alpha")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(bin())
        .args([
            "operator",
            "--metrics-bind-address",
            "",
            "--webhook-bind-address",
            "127.0.0.1:0",
            "--health-probe-bind-address",
            "127.0.0.1:0",
            "--manifests",
        ])
        .arg(manifests.path())
        .arg("--cert-dir")
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let objects = || -> Option<serde_json::Value> {
        let set = pki::load(dir.path()).ok()?;
        let config = client_config(
            &set.ca,
            Some((set.chain, set.key)),
            &[&rustls::version::TLS13],
        );
        let (_, body, _) = rt.block_on(get(addr, config, "/scaledobjects")).ok()?;
        serde_json::from_str(&body).ok()
    };
    let names = |v: &serde_json::Value| -> Vec<String> {
        v["scaledObjects"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|o| o["scaledObject"].as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let wait_for = |what: &str, cond: &dyn Fn(&serde_json::Value) -> bool| {
        let start = Instant::now();
        loop {
            if let Some(v) = objects()
                && cond(&v)
            {
                return v;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("alpha", &|v| names(v) == ["ns/alpha"]);
    std::fs::write(manifests.path().join("b.yaml"), so("beta")).unwrap();
    wait_for("beta added", &|v| names(v) == ["ns/alpha", "ns/beta"]);
    std::fs::write(
        manifests.path().join("broken.yaml"),
        "kind: ScaledObject\nmetadata: {name: x}\nspec: {triggers: 5}\n",
    )
    .unwrap();
    let v = wait_for("the broken manifest reported", &|v| {
        v["problems"].as_array().is_some_and(|p| !p.is_empty())
    });
    assert_eq!(
        names(&v),
        ["ns/alpha", "ns/beta"],
        "the others keep running"
    );
    std::fs::remove_file(manifests.path().join("a.yaml")).unwrap();
    wait_for("alpha removed", &|v| names(v) == ["ns/beta"]);
    // The trigger fails (nothing listens on port 1): the error is reported, nothing crashes.
    let v = objects().unwrap();
    assert_eq!(
        v["scaledObjects"][0]["triggers"][0]["error"]["kind"],
        "connection"
    );
    let stopped = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "did not stop after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
}

#[test]
fn the_binary_serves_metrics_get_prometheus_and_the_ca_bundle() {
    use base64::Engine as _;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let source_ca = TestCa::new("binary source CA");
    let source = rt.block_on(HttpsServer::start(
        server_config(&source_ca.server(), Versions::Both, None),
        |_: &Request| Response::ok(r#"{"v":7}"#),
    ));
    let ca_dir = tempfile::tempdir().unwrap();
    source_ca.write_pem(&ca_dir.path().join("source.pem"));
    let dir = tempfile::tempdir().unwrap();
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(
        manifests.path().join("web.yaml"),
        format!(
            "kind: ScaledObject\nmetadata: {{name: web, namespace: ns}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"{}\", valueLocation: v, targetValue: \"2\"}}\n",
            source.url("/")
        ),
    )
    .unwrap();
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let (api, prom) = (free(), free());
    let mut child = std::process::Command::new(bin())
        .args([
            "operator",
            "--metrics-bind-address",
            &format!("127.0.0.1:{prom}"),
            "--webhook-bind-address",
            "127.0.0.1:0",
            "--health-probe-bind-address",
            "127.0.0.1:0",
            "--manifests",
        ])
        .arg(manifests.path())
        .arg("--ca-dir")
        .arg(ca_dir.path())
        .arg("--cert-dir")
        .arg(dir.path())
        .args(["--listen", &format!("127.0.0.1:{api}")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let body = loop {
        let out = std::process::Command::new(bin())
            .args(["metrics", "get", "--cert-dir"])
            .arg(dir.path())
            .args([
                "--server",
                &format!("127.0.0.1:{api}"),
                "ns",
                "s0-metric-api-v",
                "--scaledobject",
                "web",
            ])
            .output()
            .unwrap();
        if out.status.success() {
            break String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "metrics get never succeeded: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["items"][0]["value"], "7");

    let scrape = {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(("127.0.0.1", prom)).unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        tcp.read_to_string(&mut out).unwrap();
        out
    };
    for name in [
        "trustscale_desired_replicas{scaledobject=\"ns/web\"} 4",
        "trustscale_metric_value{scaledobject=\"ns/web\",metric=\"s0-metric-api-v\"} 7",
        "trustscale_trust_anchors",
        "trustscale_internal_cert_expiry_seconds",
        "trustscale_poll_duration_seconds_bucket",
    ] {
        assert!(scrape.contains(name), "{name} missing from:\n{scrape}");
    }
    // The allocator's own figures: read from jemalloc at the scrape when the binary
    // allocates with it, absent (not zero) when it does not.
    let allocator = |kind: &str| -> Option<f64> {
        let prefix = format!("trustscale_allocator_bytes{{kind=\"{kind}\"}} ");
        scrape
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| v.trim().parse().expect("a number"))
    };
    if cfg!(feature = "jemalloc") {
        let allocated =
            allocator("allocated").unwrap_or_else(|| panic!("no allocated figure in:\n{scrape}"));
        let resident =
            allocator("resident").unwrap_or_else(|| panic!("no resident figure in:\n{scrape}"));
        assert!(
            allocated > 1_048_576.0 && allocated <= resident,
            "a serving operator has live allocations, all of them resident: allocated {allocated}, resident {resident}"
        );
        for kind in ["active", "retained", "metadata"] {
            assert!(allocator(kind).is_some(), "no {kind} figure in:\n{scrape}");
        }
    } else {
        assert_eq!(
            allocator("allocated"),
            None,
            "no allocator figures without jemalloc"
        );
    }
    let bundle = std::process::Command::new(bin())
        .args(["certs", "ca-bundle", "--cert-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&bundle.stdout).trim())
        .unwrap();
    assert_eq!(decoded, std::fs::read(dir.path().join("ca.crt")).unwrap());
    child.kill().unwrap();
    child.wait().unwrap();

    // Rotation off with an empty folder: a clear error naming the folder, not a panic.
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(bin())
        .args([
            "operator",
            "--enable-cert-rotation=false",
            "--metrics-bind-address",
            "",
            "--webhook-bind-address",
            "127.0.0.1:0",
            "--health-probe-bind-address",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--manifests",
        ])
        .arg(manifests.path())
        .arg("--cert-dir")
        .arg(empty.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&empty.path().display().to_string()) && err.contains("ca.crt"),
        "{err}"
    );
}

/// jemalloc is the binary's `malloc`, so librdkafka's and OpenSSL's allocations are its too,
/// with the small per-thread caches the binary sets (`allocator_options` in main.rs).
/// jemalloc reads `MALLOC_CONF` only when it is the process's `malloc` (a prefixed
/// jemalloc reads `_RJEM_MALLOC_CONF`), and prints its options at exit on `stats_print`;
/// `MALLOC_CONF` overrides the binary's own.
#[test]
fn the_binary_s_malloc_is_jemalloc_with_small_thread_caches() {
    let options = |conf: &str| {
        let out = std::process::Command::new(bin())
            .arg("--version")
            .env("MALLOC_CONF", conf)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = options("stats_print:true");
    if cfg!(all(feature = "jemalloc", target_os = "linux")) {
        for option in ["opt.tcache_max: 1024", "opt.tcache_nslots_small_max: 16"] {
            assert!(err.contains(option), "{option} missing from:\n{err}");
        }
        let err = options("stats_print:true,tcache_max:4096");
        assert!(err.contains("opt.tcache_max: 4096"), "{err}");
    } else {
        assert!(!err.contains("jemalloc"), "{err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_serving_certificate_is_reissued_by_the_same_ca_and_old_clients_keep_connecting()
{
    let dir = tempfile::tempdir().unwrap();
    let op = start_operator(dir.path(), true, PkiOptions::default()).await;
    // A client that took the caBundle and its certificate before the damage.
    let set = pki::load(dir.path()).unwrap();
    let ca = set.ca.clone();
    let client = client_config(&ca, Some(identity(dir.path())), &[&rustls::version::TLS13]);
    let (status, _, before) = get(op.addr, Arc::clone(&client), "/healthz").await.unwrap();
    assert!(status.contains("200"), "{status}");
    // The serving certificate is damaged on disk (and its key removed).
    std::fs::write(dir.path().join(pki::TLS_CRT), "garbage").unwrap();
    std::fs::remove_file(pki::source_dir(dir.path()).join(pki::TLS_KEY)).unwrap();
    let start = Instant::now();
    let after = loop {
        if let Ok((status, _, leaf)) = get(op.addr, Arc::clone(&client), "/healthz").await
            && leaf != before
        {
            assert!(status.contains("200"), "{status}");
            break leaf;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no repaired certificate served within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(issuer(&after), issuer(&before), "issued by the same CA");
    assert_eq!(
        pki::load(dir.path()).unwrap().ca[0],
        ca[0],
        "ca.crt is unchanged"
    );
    // Negative control: a client trusting another CA is refused by the repaired server.
    let stranger = support::TestCa::new("stranger");
    let refused = get(
        op.addr,
        client_config(
            std::slice::from_ref(&stranger.cert_der),
            Some(identity(dir.path())),
            &[&rustls::version::TLS13],
        ),
        "/healthz",
    )
    .await;
    assert!(refused.is_err(), "{refused:?}");
    let _ = op.stop.send(true);
}
