//! A tiny HTTPS metrics source for the examples: a CA of its own (written into a CA folder,
//! the way a platform team drops its CA into `/custom/ca`), a server certificate signed by
//! it, and a JSON body whose number can be changed while it runs.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

/// A running source.
pub struct Source {
    pub addr: SocketAddr,
    pub value: Arc<AtomicU64>,
    /// TCP connections accepted so far.
    pub accepted: Arc<AtomicU64>,
}

impl Source {
    pub fn url(&self) -> String {
        format!("https://localhost:{}/stats", self.addr.port())
    }

    pub fn set(&self, v: u64) {
        self.value.store(v, Ordering::Relaxed);
    }
}

/// Makes a CA, writes its certificate into `ca_folder/<name>.crt`, and starts an HTTPS
/// server with a certificate from it that answers `{"queue":{"depth":N}}` (plus a header
/// `x-queue-depth: N`).
pub async fn start(ca_folder: &Path, name: &str) -> anyhow::Result<Source> {
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("{name} CA"));
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    std::fs::create_dir_all(ca_folder)?;
    std::fs::write(ca_folder.join(format!("{name}.crt")), ca_cert.pem())?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let leaf =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?
            .signed_by(&key, &issuer)?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(
        vec![leaf.der().clone(), ca_cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let value = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&accepted);
    let v = Arc::clone(&value);
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            let v = Arc::clone(&v);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(move |_req| {
                    let n = v.load(Ordering::Relaxed);
                    async move {
                        let body = format!(r#"{{"queue":{{"depth":{n}}}}}"#);
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .header("x-queue-depth", n.to_string())
                                .body(Full::new(Bytes::from(body)))
                                .unwrap_or_default(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    Ok(Source {
        addr,
        value,
        accepted,
    })
}
