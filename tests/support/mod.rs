//! Shared test helpers: a test PKI made with rcgen, in-process rustls servers, and the
//! broker fixtures.
#![allow(dead_code)]

pub mod fixtures;
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod rabbit;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A trigger of `type_name`, number `index` of ScaledObject `test/<object>`, with the
/// metadata `meta`.
pub fn trigger(
    object: &str,
    index: usize,
    type_name: &str,
    meta: &[(&str, &str)],
) -> trustscale::scaler::TriggerSpec {
    trustscale::scaler::TriggerSpec::new(
        trustscale::scaler::ObjectRef {
            namespace: "test".into(),
            name: object.into(),
        },
        index,
        type_name,
        meta.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// A name no other test of this run uses (queues, topics, groups on shared brokers).
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A certificate authority for tests.
pub struct TestCa {
    pub name: String,
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate with its key.
pub struct Leaf {
    pub cert_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_pem: String,
    pub key_der: Vec<u8>,
    /// Leaf + issuing CA, PEM.
    pub chain_pem: String,
    pub chain: Vec<CertificateDer<'static>>,
}

impl Leaf {
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        Self::with_validity(name, None)
    }

    /// A CA valid between the given offsets from now, in days.
    pub fn with_validity(name: &str, days: Option<(i64, i64)>) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = ca_params(name);
        if let Some((from, to)) = days {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::days(from);
            params.not_after = now + time::Duration::days(to);
        }
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            name: name.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A self-signed certificate that is NOT a CA (`CA:FALSE`), for `localhost`, usable as
    /// a server's own certificate ([`TestCa::as_leaf`]) and (wrongly) as an issuer.
    pub fn not_a_ca(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            name: name.to_string(),
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// This certificate with its key, as a server's (self-signed) leaf.
    pub fn as_leaf(&self) -> Leaf {
        let key_der = <PrivateKeyDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
            self.key_pem.as_bytes(),
        )
        .unwrap()
        .secret_der()
        .to_vec();
        Leaf {
            cert_pem: self.cert_pem.clone(),
            cert_der: self.cert_der.clone(),
            key_pem: self.key_pem.clone(),
            key_der,
            chain_pem: self.cert_pem.clone(),
            chain: vec![self.cert_der.clone()],
        }
    }

    fn issue(
        &self,
        names: &[&str],
        cn: &str,
        usage: ExtendedKeyUsagePurpose,
        days: Option<(i64, i64)>,
    ) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*n).try_into().unwrap()),
            })
            .collect();
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some((from, to)) = days {
            let now = time::OffsetDateTime::now_utc();
            params.not_before = now + time::Duration::days(from);
            params.not_after = now + time::Duration::days(to);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            key_der: key.serialize_der(),
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            chain: vec![cert.der().clone(), self.cert_der.clone()],
        }
    }

    /// A server certificate for localhost, 127.0.0.1 and ::1.
    pub fn server(&self) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1", "::1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
    }

    /// A server certificate for other names.
    pub fn server_for(&self, names: &[&str]) -> Leaf {
        self.issue(names, names[0], ExtendedKeyUsagePurpose::ServerAuth, None)
    }

    /// An expired server certificate for localhost.
    pub fn expired_server(&self) -> Leaf {
        self.issue(
            &["localhost", "127.0.0.1"],
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
            Some((-30, -1)),
        )
    }

    /// A client certificate.
    pub fn client(&self, cn: &str) -> Leaf {
        self.issue(&[], cn, ExtendedKeyUsagePurpose::ClientAuth, None)
    }

    /// The CA's private key (PEM).
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, &self.cert_pem).unwrap();
    }
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Which TLS versions a test server speaks.
#[derive(Clone, Copy, Debug)]
pub enum Versions {
    Both,
    Only12,
    Only13,
}

/// A server config presenting `leaf` (full chain); optionally requiring client certs from `client_ca`.
pub fn server_config(
    leaf: &Leaf,
    versions: Versions,
    client_ca: Option<&TestCa>,
) -> Arc<ServerConfig> {
    let versions: &[&rustls::SupportedProtocolVersion] = match versions {
        Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
        Versions::Only12 => &[&rustls::version::TLS12],
        Versions::Only13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert_der.clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(
        builder
            .with_single_cert(leaf.chain.clone(), leaf.key())
            .unwrap(),
    )
}

/// A TLS server on loopback that answers each connection with "hello\n" and then echoes.
pub struct TestServer {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(config: Arc<ServerConfig>) -> TestServer {
        Self::start_with(move || Arc::clone(&config)).await
    }

    /// A server that asks `config` for the configuration of each new connection.
    pub async fn start_with(
        config: impl Fn() -> Arc<ServerConfig> + Send + Sync + 'static,
    ) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = tokio_rustls::TlsAcceptor::from(config());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if tls.write_all(b"hello\n").await.is_err() {
                        return;
                    }
                    let mut buf = [0u8; 1024];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf)).await
                    {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        TestServer { addr, task }
    }

    pub fn target(&self) -> String {
        format!("localhost:{}", self.addr.port())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fresh CA folder.
pub fn ca_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Waits until `cond` holds, polling; panics with `what` after `limit`.
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A server we did not write: python's `http.server` serving a folder.
pub struct PythonHttp {
    child: std::process::Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for PythonHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn python_http(files: &[(&str, &str)]) -> PythonHttp {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in files {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let port = free_port();
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("python3 runs");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "python's http.server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    PythonHttp {
        child,
        port,
        _dir: dir,
    }
}

/// A port nothing listens on now (bound, then let go), for a server the test starts;
/// never the same one twice in a test binary, whose tests run side by side.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A child process that is killed when the test ends, whatever happened.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `ok()` holds, failing the test after `bound`.
pub fn wait_for(what: &str, bound: Duration, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The body of `GET https://localhost:{port}{path}` on a running operator's mutual-TLS API,
/// read by curl (a client we did not write) with the operator's own internal certificates
/// from `certs`; empty when it does not answer.
pub fn curl_api(port: u16, certs: &Path, path: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join("tls.crt"))
        .arg("--key")
        .arg(certs.join("tls.key"))
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A rustls client configuration trusting only the fixture CA, built with rustls alone:
/// test setup (writing data into the brokers) never goes through the code under test.
pub fn fixture_client_config() -> rustls::ClientConfig {
    let pem = std::fs::read(fixtures::Fixtures::get().pki("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in <CertificateDer as rustls::pki_types::pem::PemObject>::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// Runs `trustscale operator` with quiet listeners on `manifests` and a fresh certificate
/// folder, plus `extra`, expecting it to refuse to start: its stderr. Panics if it starts
/// (or hangs) instead.
pub fn operator_refuses_to_start(manifests: &Path, extra: &[&std::ffi::OsStr]) -> String {
    let certs = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .arg("operator")
        .arg("--manifests")
        .arg(manifests)
        .arg("--cert-dir")
        .arg(certs.path())
        .args(["--ca-dir", "/nonexistent", "--listen", "127.0.0.1:0"])
        .args([
            "--metrics-bind-address",
            "",
            "--health-probe-bind-address",
            "",
        ])
        .args(["--webhook-bind-address", ""])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("{extra:?}: the operator neither started nor stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(!status.success(), "{extra:?}: must not start");
    stderr
}

/// Writes a bring-your-own certificate set into `dir`: `ca.crt`, and a serving
/// certificate for localhost issued by `ca` as `tls.crt` and `tls.key`.
pub fn write_cert_set(dir: &Path, ca: &TestCa) {
    let leaf = ca.server();
    std::fs::write(dir.join("ca.crt"), &ca.cert_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
}

/// Makes a FIFO at `path` (for the bad-input cases: a reader that opened it would block).
pub fn mkfifo(path: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mkfifo {}", path.display());
}
