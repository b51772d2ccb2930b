//! The internal service's server side: mutual TLS with a certificate and client CA that can
//! be replaced at run time.
//!
//! A new identity is checked before it is published (the key must match the certificate),
//! and publishing swaps one `Arc<ServerConfig>`: handshakes already under way finish with
//! the old configuration, new ones use the new.

use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, sign::CertifiedKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{Result, TrustError};
use super::material;
use super::version::TlsVersion;

/// A server's certificate chain and private key.
pub struct ServerIdentity {
    /// The chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key of the leaf.
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// Reads an identity from PEM (or DER) bytes of the certificate chain and the key.
    pub fn from_pem(cert: &[u8], key: &[u8]) -> Result<Self> {
        Ok(ServerIdentity {
            chain: material::certificates_for("cert", cert)?,
            key: material::private_key(key, None)?,
        })
    }
}

impl Clone for ServerIdentity {
    fn clone(&self) -> Self {
        ServerIdentity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_len", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

/// A server configuration that can be replaced while serving.
pub struct ServerTls {
    provider: Arc<CryptoProvider>,
    min_tls: TlsVersion,
    /// Whether client certificates are required (and verified against the client CA).
    mutual: bool,
    current: ArcSwap<ServerConfig>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("min_tls", &self.min_tls)
            .field("mutual", &self.mutual)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    pub(crate) fn new(
        provider: Arc<CryptoProvider>,
        min_tls: TlsVersion,
        identity: ServerIdentity,
        client_ca: Option<&[CertificateDer<'static>]>,
    ) -> Result<Self> {
        let config = build(&provider, min_tls, identity, client_ca)?;
        Ok(ServerTls {
            provider,
            min_tls,
            mutual: client_ca.is_some(),
            current: ArcSwap::from_pointee(config),
        })
    }

    /// Whether client certificates are required.
    #[must_use]
    pub fn is_mutual(&self) -> bool {
        self.mutual
    }

    /// The configuration to use for the next handshake.
    #[must_use]
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// The minimum TLS version served.
    #[must_use]
    pub fn min_tls(&self) -> TlsVersion {
        self.min_tls
    }

    /// Checks a new identity and client CA, then publishes them. On error nothing changes.
    /// A server that requires no client certificate ignores `client_ca`.
    pub fn update(
        &self,
        identity: ServerIdentity,
        client_ca: &[CertificateDer<'static>],
    ) -> Result<()> {
        let client_ca = self.mutual.then_some(client_ca);
        let config = build(&self.provider, self.min_tls, identity, client_ca)?;
        self.current.store(Arc::new(config));
        Ok(())
    }
}

fn build(
    provider: &Arc<CryptoProvider>,
    min_tls: TlsVersion,
    identity: ServerIdentity,
    client_ca: Option<&[CertificateDer<'static>]>,
) -> Result<ServerConfig> {
    let certified =
        CertifiedKey::from_der(identity.chain, identity.key, provider).map_err(|e| {
            TrustError::BadMaterial {
                parameter: "key",
                reason: match e {
                    rustls::Error::InconsistentKeys(_) => {
                        "the private key does not match the certificate".into()
                    }
                    other => format!("unusable server key: {other}"),
                },
            }
        })?;
    let builder = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(min_tls.rustls_versions())?;
    let Some(client_ca) = client_ca else {
        let mut config = builder
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        return Ok(config);
    };
    let mut roots = RootCertStore::empty();
    for cert in client_ca {
        roots
            .add(cert.clone())
            .map_err(|e| TrustError::BadMaterial {
                parameter: "ca",
                reason: format!("client CA cannot be a trust anchor: {e}"),
            })?;
    }
    if roots.is_empty() {
        return Err(TrustError::BadMaterial {
            parameter: "ca",
            reason: "no client CA certificate given".into(),
        });
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .build()?;
    let mut config = builder
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
