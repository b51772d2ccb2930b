//! Operator figures: a certificate file change until the new certificate is served, a CA
//! change until clients of the new CA get in, and the mutual-TLS API under load
//! (keep-alive connections, requests per second).
//!
//! `cargo bench --bench operator`

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use trustscale::scaler::BuildContext;
use trustscale::trust::{TrustFactory, TrustOptions, material};
use trustscale_operator::certs::CertManager;
use trustscale_operator::engine::{Engine, LogSink};
use trustscale_operator::metrics::Metrics;
use trustscale_operator::pki::{self, PkiOptions};
use trustscale_operator::service;

struct Ca {
    der: CertificateDer<'static>,
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

fn ca(name: &str) -> Ca {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).unwrap();
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        issuer: rcgen::Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, client: bool) -> (CertificateDer<'static>, String, PrivateKeyDer<'static>) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.extended_key_usages = vec![if client {
        rcgen::ExtendedKeyUsagePurpose::ClientAuth
    } else {
        rcgen::ExtendedKeyUsagePurpose::ServerAuth
    }];
    let cert = p.signed_by(&key, &ca.issuer).unwrap();
    (
        cert.der().clone(),
        key.serialize_pem(),
        PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
}

fn publish(dir: &Path, ca_pem: &str, cert: &CertificateDer<'static>, key_pem: &str) {
    let chain = material::certs_to_pem([cert]);
    pki::write_set(
        dir,
        &[
            ("ca.crt", ca_pem.as_bytes(), false),
            ("tls.crt", chain.as_bytes(), false),
            ("tls.key", key_pem.as_bytes(), true),
        ],
    )
    .unwrap();
}

fn client(
    roots: &[CertificateDer<'static>],
    id: (CertificateDer<'static>, PrivateKeyDer<'static>),
) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for r in roots {
        store.add(r.clone()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(store)
        .with_client_auth_cert(vec![id.0], id.1)
        .unwrap(),
    )
}

async fn served(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> Option<CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .ok()?;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).await.ok()?;
    if !out.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .map(|c| c.into_owned())
}

fn median(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let ca1 = ca("bench CA 1");
        let (cert, key_pem, _) = leaf(&ca1, false);
        publish(dir.path(), &ca1.pem, &cert, &key_pem);
        let trust = TrustFactory::new(TrustOptions::default().ca_dirs(Vec::<std::path::PathBuf>::new())).unwrap();
        let metrics = Arc::new(Metrics::default());
        let certs = CertManager::start(dir.path().to_path_buf(), false, PkiOptions::default(), &trust, None, Arc::clone(&metrics)).unwrap();
        let engine = Engine::new(trustscale_operator::builtins::registry(), BuildContext { trust }, metrics, Arc::new(LogSink));
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(service::serve_api(listener, certs.server(), certs.authenticator(), engine, rx.clone()));
        tokio::spawn(Arc::clone(&certs).run(rx));
        let (c1, _, k1) = leaf(&ca1, true);
        let config = client(std::slice::from_ref(&ca1.der), (c1.clone(), k1.clone_key()));

        // Certificate file change -> new certificate served.
        let mut samples = Vec::new();
        for _ in 0..20 {
            let (cert, key_pem, _) = leaf(&ca1, false);
            let start = Instant::now();
            publish(dir.path(), &ca1.pem, &cert, &key_pem);
            while served(addr, Arc::clone(&config)).await.as_ref() != Some(&cert) {
                assert!(start.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.push(start.elapsed());
        }
        let (med, max) = median(samples);
        println!("certificate file change -> new certificate served (20 samples): median {med:?}, max {max:?}");

        // CA change -> a client of the new CA gets in.
        let mut samples = Vec::new();
        let mut current = ca1;
        for i in 0..10 {
            let next = ca(&format!("bench CA {}", i + 2));
            let (cert, key_pem, _) = leaf(&next, false);
            let (cc, _, ck) = leaf(&next, true);
            let cfg = client(std::slice::from_ref(&next.der), (cc, ck));
            let start = Instant::now();
            publish(dir.path(), &next.pem, &cert, &key_pem);
            while served(addr, Arc::clone(&cfg)).await.is_none() {
                assert!(start.elapsed() < Duration::from_secs(10));
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.push(start.elapsed());
            current = next;
        }
        let (med, max) = median(samples);
        println!("CA change -> clients of the new CA accepted (10 samples): median {med:?}, max {max:?}");

        // The API under load: keep-alive mTLS connections.
        let (cc, _, ck) = leaf(&current, true);
        let cfg = client(std::slice::from_ref(&current.der), (cc, ck));
        let conns = 16;
        let duration = Duration::from_secs(5);
        let mut tasks = Vec::new();
        for _ in 0..conns {
            let cfg = Arc::clone(&cfg);
            tasks.push(tokio::spawn(async move {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let tls = tokio_rustls::TlsConnector::from(cfg).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
                let mut r = BufReader::new(tls);
                let (mut ok, mut failed) = (0u64, 0u64);
                let end = Instant::now() + duration;
                let mut line = String::new();
                while Instant::now() < end {
                    r.get_mut().write_all(b"GET /scaledobjects HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
                    let mut len = 0usize;
                    line.clear();
                    r.read_line(&mut line).await.unwrap();
                    let good = line.starts_with("HTTP/1.1 200");
                    loop {
                        line.clear();
                        r.read_line(&mut line).await.unwrap();
                        if line == "\r\n" {
                            break;
                        }
                        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                            len = v.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; len];
                    r.read_exact(&mut body).await.unwrap();
                    if good { ok += 1 } else { failed += 1 }
                }
                (ok, failed)
            }));
        }
        let (mut ok, mut failed) = (0, 0);
        for t in tasks {
            let (o, f) = t.await.unwrap();
            ok += o;
            failed += f;
        }
        println!(
            "mTLS API under load ({conns} keep-alive connections, {duration:?}, client and server on the same 2 cores): {:.0} requests/s, {failed} failed",
            ok as f64 / duration.as_secs_f64()
        );
    });
}
