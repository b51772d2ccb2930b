//! [`TlsContext`]: what every scaler client is built from.

use std::fmt;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::client::danger::ServerCertVerifier;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::anchors::Anchors;
use super::settings::Secret;
use super::version::TlsVersion;

/// A digest of the trust, identity and policy of a context and of its build: equal
/// fingerprints mean the same context, so it is the key for sharing a client between
/// triggers. Contexts built apart never share one, even when they read the same: a
/// context's rustls configuration may follow newer anchors since it was built
/// ([`TlsContext::follow`]), so a client made from an earlier one must never be taken for
/// one made from a new one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub(crate) [u8; 32]);

impl Fingerprint {
    /// The digest bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..16] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A client identity as PEM, for clients on another TLS stack. `Debug` hides the key.
#[derive(Clone)]
pub struct IdentityPem {
    /// The certificate chain, leaf first.
    pub chain: String,
    /// The private key.
    pub key: Secret,
}

impl fmt::Debug for IdentityPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityPem")
            .field(
                "chain",
                &format_args!("<{} bytes of PEM>", self.chain.len()),
            )
            .field("key", &self.key)
            .finish()
    }
}

/// A client identity (certificate chain and private key).
pub(crate) struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

pub(crate) struct ContextInner {
    pub config: Arc<ClientConfig>,
    pub verifier: Arc<dyn ServerCertVerifier>,
    /// The verifier in `config` when certificates are verified: it can move to newer
    /// anchors (see [`TlsContext::follow`]).
    pub following: Option<Arc<super::verify::Following>>,
    pub fingerprint: Fingerprint,
    pub anchors: Arc<Anchors>,
    pub trigger_ca: Vec<CertificateDer<'static>>,
    pub identity: Option<Identity>,
    pub min_tls: TlsVersion,
    pub unsafe_ssl: bool,
    pub server_name: Option<ServerName<'static>>,
    pub generation: u64,
    pub tls12_suites: Option<Vec<rustls::CipherSuite>>,
}

/// The TLS context of a trigger: a rustls client configuration and the same trust in the
/// forms other client libraries need. Cheap to clone; identical settings share one.
///
/// `Debug` shows the policy and counts, never key material.
#[derive(Clone)]
pub struct TlsContext {
    pub(crate) inner: Arc<ContextInner>,
}

impl TlsContext {
    /// The rustls client configuration (for reqwest, lapin, redis, tokio-rustls, ...).
    #[must_use]
    pub fn rustls_config(&self) -> Arc<ClientConfig> {
        Arc::clone(&self.inner.config)
    }

    /// The digest that identifies this trust + identity + policy.
    #[must_use]
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.fingerprint
    }

    /// The name to send as SNI when connecting to `host`: the `serverName` setting when
    /// there is one, else the host itself.
    pub fn server_name_for(&self, host: &str) -> Result<ServerName<'static>, super::TrustError> {
        if let Some(name) = &self.inner.server_name {
            return Ok(name.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|_| super::TrustError::BadMaterial {
            parameter: "host",
            reason: format!("{host:?} is not a valid DNS name or IP address"),
        })
    }

    /// Whether certificate verification is off (`unsafeSsl`).
    #[must_use]
    pub fn is_unsafe(&self) -> bool {
        self.inner.unsafe_ssl
    }

    /// Whether a client certificate is configured.
    #[must_use]
    pub fn has_client_identity(&self) -> bool {
        self.inner.identity.is_some()
    }

    /// The minimum TLS version (as configured; see [`TlsVersion::effective`]).
    #[must_use]
    pub fn min_tls(&self) -> TlsVersion {
        self.inner.min_tls
    }

    /// The shared anchors this context was built from (those [`TlsContext::trust_pem`]
    /// exports). Its rustls configuration may verify against newer ones since (see
    /// [`TlsContext::follow`]).
    #[must_use]
    pub fn anchors(&self) -> &Arc<Anchors> {
        &self.inner.anchors
    }

    /// The anchors generation this context was built from.
    #[must_use]
    pub fn generation(&self) -> u64 {
        self.inner.generation
    }

    /// The generation of the anchors its rustls configuration verifies against now: the
    /// one it was built from, or a newer one it follows.
    #[must_use]
    pub fn verifying_generation(&self) -> u64 {
        match &self.inner.following {
            Some(f) => f.anchors().generation(),
            None => self.inner.generation,
        }
    }

    /// Makes this context's rustls configuration verify against `newer`'s anchors from
    /// the next handshake on, when that cannot alter a verification already made on a
    /// connection opened through it: no anchor that could have ended one of the chains
    /// it accepted (by issuer or subject name) is missing from `newer`. Returns the
    /// generation it verifies against now, or `None` when it cannot follow: the
    /// connections made so far must then be dropped, so the caller makes a new client
    /// from `newer`.
    ///
    /// Only what verifies through [`TlsContext::rustls_config`] (or
    /// [`TlsContext::connect`]) follows; the PEM forms ([`TlsContext::trust_pem`]) stay
    /// those of the anchors the context was built from. `newer` must come from the same
    /// settings (the same trigger `ca`, identity and policy). Contexts that do not verify
    /// (`unsafeSsl`) never follow.
    pub fn follow(&self, newer: &TlsContext) -> Option<u64> {
        match (&self.inner.following, &newer.inner.following) {
            (Some(mine), Some(theirs)) if self.inner.trigger_ca == newer.inner.trigger_ca => {
                mine.follow(theirs)
            }
            _ => None,
        }
    }

    /// Certificates trusted by this trigger only (its `ca` parameter).
    #[must_use]
    pub fn trigger_ca(&self) -> &[CertificateDer<'static>] {
        &self.inner.trigger_ca
    }

    /// Everything this context trusts, as one PEM bundle: the anchors (system roots and
    /// CA folders) followed by the trigger's own `ca`. For clients on another TLS stack
    /// (OpenSSL's librdkafka); with [`TlsContext::is_unsafe`] nothing is verified and the
    /// bundle is not needed.
    #[must_use]
    pub fn trust_pem(&self) -> String {
        let mut bundle = self.inner.anchors.pem_bundle().to_string();
        bundle.push_str(&super::material::certs_to_pem(self.inner.trigger_ca.iter()));
        bundle
    }

    /// Everything this context verifies against now, as one PEM bundle: as
    /// [`TlsContext::trust_pem`], but with the anchors it follows since (see
    /// [`TlsContext::follow`]). For a client on another TLS stack that is given new
    /// anchors while it runs (see [`crate::scaler::Follower`]).
    #[must_use]
    pub fn verifying_trust_pem(&self) -> String {
        let mut bundle = match &self.inner.following {
            Some(f) => f.anchors().pem_bundle().to_string(),
            None => self.inner.anchors.pem_bundle().to_string(),
        };
        bundle.push_str(&super::material::certs_to_pem(self.inner.trigger_ca.iter()));
        bundle
    }

    /// The client identity as PEM, if one is configured: the certificate chain and the
    /// private key (PKCS#8, PKCS#1 or SEC1, as given; decrypted when it had a
    /// `keyPassword`). The key is a [`Secret`]: it never prints.
    #[must_use]
    pub fn identity_pem(&self) -> Option<IdentityPem> {
        let id = self.inner.identity.as_ref()?;
        let label = match &id.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        Some(IdentityPem {
            chain: super::material::certs_to_pem(id.chain.iter()),
            key: Secret::new(super::material::pem_encode(label, id.key.secret_der())),
        })
    }

    /// The name certificates are verified against instead of the host (`serverName`),
    /// if set. A backend that cannot verify against another name must refuse it.
    #[must_use]
    pub fn server_name_override(&self) -> Option<&ServerName<'static>> {
        self.inner.server_name.as_ref()
    }

    /// The TLS 1.2 cipher suites this context is limited to (`KEDA_HTTP_TLS_CIPHER_LIST`),
    /// by IANA name, or `None` when every suite is allowed. For backends that take the
    /// list themselves (librdkafka).
    #[must_use]
    pub fn tls12_cipher_suites(&self) -> Option<Vec<&'static str>> {
        self.inner
            .tls12_suites
            .as_ref()
            .map(|s| s.iter().filter_map(|c| c.as_str()).collect())
    }

    /// Where trust comes from, for error messages: the anchors verified against now.
    #[must_use]
    pub fn describe_trust(&self) -> String {
        let mut s = match &self.inner.following {
            Some(f) => f.anchors().describe(),
            None => self.inner.anchors.describe(),
        };
        if !self.inner.trigger_ca.is_empty() {
            s.push_str(&format!(
                " + {} from the trigger's `ca`",
                self.inner.trigger_ca.len()
            ));
        }
        s
    }

    /// Connects TLS over an established stream, with this context's SNI rules.
    pub async fn connect<IO>(
        &self,
        host: &str,
        stream: IO,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let name = self
            .server_name_for(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        tokio_rustls::TlsConnector::from(self.rustls_config())
            .connect(name, stream)
            .await
    }

    /// A handshake with `host` over `stream` through this context's trust (never a
    /// resumed session), whose accepted chain the context remembers as
    /// [`TlsContext::follow`] does for its own clients' handshakes. For a client on another
    /// TLS stack that follows the anchors (see [`crate::scaler::Follower`]): a handshake
    /// with each of its servers makes the chains they present known. The connection is
    /// closed once the handshake is done.
    pub async fn witness<IO>(&self, host: &str, stream: IO) -> std::io::Result<()>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt as _;
        let name = self
            .server_name_for(host)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let mut config = (*self.inner.config).clone();
        config.resumption = rustls::client::Resumption::disabled();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await?;
        let _ = tls.shutdown().await;
        Ok(())
    }

    /// A configuration equal to this one but with its verifier (the one in force now)
    /// wrapped, for diagnostics: it never resumes a session, so each handshake verifies,
    /// and shares no session store with the clients.
    pub(crate) fn config_with_verifier(
        &self,
        wrap: impl FnOnce(Arc<dyn ServerCertVerifier>) -> Arc<dyn ServerCertVerifier>,
    ) -> Arc<ClientConfig> {
        let mut config = (*self.inner.config).clone();
        let verifier = match &self.inner.following {
            Some(f) => f.current(),
            None => Arc::clone(&self.inner.verifier),
        };
        config.dangerous().set_certificate_verifier(wrap(verifier));
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }
}

impl fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsContext")
            .field("fingerprint", &self.inner.fingerprint)
            .field("min_tls", &self.inner.min_tls)
            .field("unsafe_ssl", &self.inner.unsafe_ssl)
            .field("anchors", &self.inner.anchors.len())
            .field("trigger_ca", &self.inner.trigger_ca.len())
            .field("client_identity", &self.inner.identity.is_some())
            .field("server_name", &self.inner.server_name)
            .finish()
    }
}
