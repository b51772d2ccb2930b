//! Turning a failed connection into a kind a person can act on.

use std::error::Error as StdError;
use std::fmt;

use rustls::{AlertDescription, CertificateError, PeerIncompatible};
use serde::Serialize;

use super::context::TlsContext;

/// What kind of failure a handshake (or the connection under it) met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The server's chain does not lead to a trusted anchor.
    UnknownIssuer,
    /// The certificate does not name the host (or `serverName`).
    HostnameMismatch,
    /// A certificate is expired or not yet valid.
    Expired,
    /// No TLS version in common (for example a TLS 1.2-only server and a TLS13 minimum).
    ProtocolVersion,
    /// The server wants a client certificate and none was sent.
    ClientCertRequired,
    /// The server refused the client certificate sent.
    ClientCertRejected,
    /// The peer answered, but not in TLS (a plaintext port).
    NotTls,
    /// Another TLS failure.
    Tls,
    /// The connection itself failed (refused, reset, timed out, name not resolved).
    Connection,
}

impl FailureKind {
    /// The snake_case name used in JSON and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::UnknownIssuer => "unknown_issuer",
            FailureKind::HostnameMismatch => "hostname_mismatch",
            FailureKind::Expired => "expired",
            FailureKind::ProtocolVersion => "protocol_version",
            FailureKind::ClientCertRequired => "client_cert_required",
            FailureKind::ClientCertRejected => "client_cert_rejected",
            FailureKind::NotTls => "not_tls",
            FailureKind::Tls => "tls",
            FailureKind::Connection => "connection",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A classified failure with a message that says what to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HandshakeFailure {
    /// The kind.
    pub kind: FailureKind,
    /// What happened, in words.
    pub message: String,
}

impl fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// Finds the rustls error in an error's source chain (through `std::io::Error` wrappers).
#[must_use]
pub fn find_rustls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(inner) = io.get_ref()
        {
            // io::Error::source() skips the wrapped error itself: look at it directly.
            if let Some(r) = find_rustls_error(inner) {
                return Some(r);
            }
        }
        // Some libraries (redis) keep the cause as a shared trait object.
        if let Some(shared) = e.downcast_ref::<std::sync::Arc<dyn StdError + Send + Sync>>()
            && let Some(r) = find_rustls_error(shared.as_ref())
        {
            return Some(r);
        }
        cur = e.source();
    }
    None
}

/// Classifies a failure. `ctx` adds what was consulted (anchors, client identity) to the
/// message; `target` names the endpoint.
#[must_use]
pub fn classify(
    err: &(dyn StdError + 'static),
    ctx: Option<&TlsContext>,
    target: &str,
) -> HandshakeFailure {
    let Some(tls) = find_rustls_error(err) else {
        return HandshakeFailure {
            kind: FailureKind::Connection,
            message: format!("{target}: {}", chain_text(err)),
        };
    };
    classify_rustls(tls, ctx, target)
}

/// Classifies a rustls error.
#[must_use]
pub fn classify_rustls(
    err: &rustls::Error,
    ctx: Option<&TlsContext>,
    target: &str,
) -> HandshakeFailure {
    use FailureKind as K;
    let has_identity = ctx.is_some_and(TlsContext::has_client_identity);
    let trust = ctx.map_or_else(
        || "the configured anchors".to_string(),
        TlsContext::describe_trust,
    );
    let min = ctx
        .map(|c| c.min_tls().effective().to_string())
        .unwrap_or_else(|| "the configured minimum".into());
    let (kind, message) = match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => (
                K::UnknownIssuer,
                format!(
                    "{target} presented a certificate whose issuer is not trusted; consulted {trust}. Add the issuing CA to a CA folder or the trigger's `ca`"
                ),
            ),
            CertificateError::NotValidForName => (
                K::HostnameMismatch,
                format!(
                    "{target}: the certificate is not valid for this name; set `serverName` to a name it carries"
                ),
            ),
            CertificateError::NotValidForNameContext {
                expected,
                presented,
            } => (
                K::HostnameMismatch,
                format!(
                    "{target}: the certificate is valid for [{}], not for {}; connect by one of those names or set `serverName`",
                    presented
                        .iter()
                        .map(|n| plain_name(n))
                        .collect::<Vec<_>>()
                        .join(", "),
                    expected.to_str()
                ),
            ),
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => (
                K::Expired,
                format!("{target}: the server's certificate has expired ({err})"),
            ),
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => (
                K::Expired,
                format!(
                    "{target}: the server's certificate is not valid yet ({err}); check the clocks"
                ),
            ),
            _ => (K::Tls, format!("{target}: invalid certificate: {err}")),
        },
        rustls::Error::PeerIncompatible(p) => match p {
            PeerIncompatible::ServerDoesNotSupportTls12Or13
            | PeerIncompatible::ServerTlsVersionIsDisabledByOurConfig
            | PeerIncompatible::Tls12NotOffered
            | PeerIncompatible::Tls12NotOfferedOrEnabled
            | PeerIncompatible::SupportedVersionsExtensionRequired => (
                K::ProtocolVersion,
                format!("{target}: no TLS version in common (our minimum is {min}): {err}"),
            ),
            _ => (K::Tls, format!("{target}: {err}")),
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::ProtocolVersion => (
                K::ProtocolVersion,
                format!(
                    "{target} refused our TLS version (our minimum is {min}; the server supports only other versions)"
                ),
            ),
            AlertDescription::CertificateRequired => (
                K::ClientCertRequired,
                format!("{target} requires a client certificate; set `cert` and `key`"),
            ),
            AlertDescription::HandshakeFailure if !has_identity => (
                K::ClientCertRequired,
                format!(
                    "{target} ended the handshake (handshake_failure); it most likely requires a client certificate, and none is configured"
                ),
            ),
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError
                if has_identity =>
            {
                (
                    K::ClientCertRejected,
                    format!("{target} rejected our client certificate (alert {alert:?})"),
                )
            }
            AlertDescription::BadCertificate | AlertDescription::CertificateUnknown => (
                K::ClientCertRequired,
                format!(
                    "{target} refused the connection for lack of a valid client certificate (alert {alert:?}); set `cert` and `key`"
                ),
            ),
            _ => (K::Tls, format!("{target} sent alert {alert:?}")),
        },
        rustls::Error::NoCertificatesPresented => {
            (K::Tls, format!("{target} presented no certificate"))
        }
        rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType | rustls::InvalidMessage::MessageTooLarge,
        ) => (
            K::NotTls,
            format!(
                "{target} does not speak TLS (its answer is not a TLS record): a plaintext port? Connect to its TLS port, or turn TLS off for this trigger"
            ),
        ),
        other => (K::Tls, format!("{target}: {other}")),
    };
    HandshakeFailure { kind, message }
}

/// rustls presents names as `DnsName("x")` / `IpAddress(..)`: show the bare name.
fn plain_name(name: &str) -> String {
    for prefix in ["DnsName(\"", "IpAddress("] {
        if let Some(rest) = name.strip_prefix(prefix) {
            return rest.trim_end_matches(')').trim_end_matches('"').to_string();
        }
    }
    name.to_string()
}

fn chain_text(err: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![err.to_string()];
    let mut cur = err.source();
    while let Some(e) = cur {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        cur = e.source();
    }
    parts.join(": ")
}
