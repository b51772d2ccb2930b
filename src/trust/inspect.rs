//! One diagnostic handshake: what a server presents and why trust fails, for
//! `trustscale trust inspect --connect`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::classify::{FailureKind, HandshakeFailure, classify};
use super::context::TlsContext;
use super::verify::RecordingVerifier;

/// A certificate, as a person reads it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertSummary {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial number, hex.
    pub serial: String,
    /// Start of validity (RFC 2822-ish, UTC).
    pub not_before: String,
    /// End of validity.
    pub not_after: String,
    /// Subject alternative names.
    pub names: Vec<String>,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

impl CertSummary {
    /// Summarises a DER certificate; `None` when it does not parse.
    #[must_use]
    pub fn from_der(der: &CertificateDer<'_>) -> Option<CertSummary> {
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        names.push(format!("DNS:{d}"))
                    }
                    x509_parser::extensions::GeneralName::IPAddress(ip) => {
                        names.push(match ip.len() {
                            4 => format!(
                                "IP:{}",
                                std::net::Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])
                            ),
                            16 => {
                                let mut b = [0u8; 16];
                                b.copy_from_slice(ip);
                                format!("IP:{}", std::net::Ipv6Addr::from(b))
                            }
                            _ => "IP:?".into(),
                        })
                    }
                    other => names.push(format!("{other:?}")),
                }
            }
        }
        Some(CertSummary {
            subject: cert.subject().to_string(),
            issuer: cert.issuer().to_string(),
            serial: cert.raw_serial_as_string(),
            not_before: rfc3339(&cert.validity().not_before),
            not_after: rfc3339(&cert.validity().not_after),
            names,
            is_ca: cert.is_ca(),
        })
    }
}

/// The outcome of one handshake.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HandshakeReport {
    /// `host:port` as asked.
    pub target: String,
    /// Whether the handshake succeeded and the server did not reject us right after.
    pub ok: bool,
    /// Negotiated version (`TLSv1_3`, ...).
    pub version: Option<String>,
    /// Negotiated cipher suite.
    pub cipher_suite: Option<String>,
    /// The chain the server presented, leaf first (also on failure, when one was seen).
    pub chain: Vec<CertSummary>,
    /// The classified failure.
    pub error: Option<HandshakeFailure>,
    /// Time taken, in milliseconds.
    pub elapsed_ms: u128,
}

/// How long to wait after the handshake for a late rejection: in TLS 1.3 a server that
/// refuses our client certificate says so only after the client has finished.
const LATE_ALERT_WAIT: Duration = Duration::from_millis(300);

/// Splits `host:port`, `[v6]:port`.
pub fn split_host_port(target: &str) -> Option<(String, u16)> {
    let (host, port) = target.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// Connects to `target` (`host:port`) with the context and reports what happened.
pub async fn handshake(ctx: &TlsContext, target: &str, timeout: Duration) -> HandshakeReport {
    let start = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut report = HandshakeReport {
        target: target.to_string(),
        ok: false,
        version: None,
        cipher_suite: None,
        chain: Vec::new(),
        error: None,
        elapsed_ms: 0,
    };
    let result = run(ctx, target, timeout, &seen, &mut report, start).await;
    if let Ok(chain) = seen.lock() {
        report.chain = chain.iter().filter_map(CertSummary::from_der).collect();
    }
    match result {
        Ok(()) => report.ok = true,
        Err(failure) => report.error = Some(failure),
    }
    if report.elapsed_ms == 0 {
        // Failed before the handshake completed: the time to the failure.
        report.elapsed_ms = start.elapsed().as_millis();
    }
    report
}

async fn run(
    ctx: &TlsContext,
    target: &str,
    timeout: Duration,
    seen: &Arc<Mutex<Vec<CertificateDer<'static>>>>,
    report: &mut HandshakeReport,
    start: Instant,
) -> Result<(), HandshakeFailure> {
    let connection = |message: String| HandshakeFailure {
        kind: FailureKind::Connection,
        message,
    };
    let (host, port) = split_host_port(target)
        .ok_or_else(|| connection(format!("{target:?} is not HOST:PORT")))?;
    let config = ctx.config_with_verifier(|inner| {
        Arc::new(RecordingVerifier {
            inner,
            seen: Arc::clone(seen),
        })
    });
    let name = ctx
        .server_name_for(&host)
        .map_err(|e| connection(e.to_string()))?;
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((host.as_str(), port)))
        .await
        .map_err(|_| connection(format!("{target}: TCP connect timed out after {timeout:?}")))?
        .map_err(|e| classify(&e, Some(ctx), target))?;
    let mut tls = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| {
        connection(format!(
            "{target}: TLS handshake timed out after {timeout:?}"
        ))
    })?
    .map_err(|e| classify(&e, Some(ctx), target))?;
    // The handshake's own time, before the wait for a late alert below.
    report.elapsed_ms = start.elapsed().as_millis().max(1);
    let (_, conn) = tls.get_ref();
    report.version = conn.protocol_version().map(|v| format!("{v:?}"));
    report.cipher_suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()));
    let mut buf = [0u8; 1];
    match tokio::time::timeout(LATE_ALERT_WAIT, tls.read(&mut buf)).await {
        Ok(Err(e)) => Err(classify(&e, Some(ctx), target)),
        _ => Ok(()),
    }
}

/// A certificate time as RFC 3339 (as Kubernetes writes times).
fn rfc3339(t: &x509_parser::time::ASN1Time) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            split_host_port("localhost:443"),
            Some(("localhost".into(), 443))
        );
        assert_eq!(split_host_port("[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":1"), None);
    }
}
