//! The SDK's trust as librdkafka properties: the one translation, next to the Kafka scaler.
//!
//! librdkafka speaks TLS through OpenSSL, not rustls, so a [`TlsContext`]'s anchors,
//! identity and policy (which the SDK exports as PEM) become `ssl.*` properties. What librdkafka cannot honour is an
//! error, never dropped: it has no per-client minimum TLS version (only the process-wide
//! OpenSSL configuration can set one) and no way to verify against another name.

use std::fmt;
use std::path::Path;

use trustscale::trust::{FailureKind, TlsContext, TlsVersion, TrustError};

/// The environment variable OpenSSL reads its configuration file from.
pub const OPENSSL_CONF_ENV: &str = "OPENSSL_CONF";

/// librdkafka `ssl.*` properties. `Debug` hides the private key.
#[derive(Clone, PartialEq, Eq)]
pub struct LibrdkafkaTls {
    entries: Vec<(&'static str, String)>,
}

impl LibrdkafkaTls {
    /// The properties, to set on an rdkafka `ClientConfig`.
    pub fn entries(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.entries.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// One property.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

impl fmt::Debug for LibrdkafkaTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut m = f.debug_map();
        for (k, v) in &self.entries {
            match *k {
                "ssl.key.pem" => m.entry(k, &"<redacted>"),
                "ssl.ca.pem" | "ssl.certificate.pem" => {
                    m.entry(k, &format!("<{} bytes of PEM>", v.len()))
                }
                _ => m.entry(k, v),
            };
        }
        m.finish()
    }
}

/// The minimum TLS version the process-wide OpenSSL configuration enforces.
///
/// Reads `MinProtocol` from the file named by `OPENSSL_CONF`; without one, OpenSSL 3's
/// default security level already refuses anything below TLS 1.2.
#[must_use]
pub fn openssl_enforced_min() -> TlsVersion {
    std::env::var_os(OPENSSL_CONF_ENV)
        .and_then(|p| std::fs::read_to_string(Path::new(&p)).ok())
        .and_then(|text| min_protocol_in(&text))
        .unwrap_or(TlsVersion::Tls12)
        .max(TlsVersion::Tls12)
}

fn min_protocol_in(conf: &str) -> Option<TlsVersion> {
    conf.lines().find_map(|line| {
        let line = line.split('#').next()?.trim();
        let (k, v) = line.split_once('=')?;
        if k.trim() != "MinProtocol" {
            return None;
        }
        match v.trim() {
            "TLSv1.3" => Some(TlsVersion::Tls13),
            "TLSv1.2" => Some(TlsVersion::Tls12),
            "TLSv1.1" => Some(TlsVersion::Tls11),
            "TLSv1" | "TLSv1.0" => Some(TlsVersion::Tls10),
            _ => None,
        }
    })
}

/// An OpenSSL configuration file that sets the process-wide minimum version; point
/// `OPENSSL_CONF` at it before OpenSSL is first used.
#[must_use]
pub fn openssl_config_for(min: TlsVersion) -> String {
    format!(
        "openssl_conf = trustscale_init\n\n[trustscale_init]\nssl_conf = trustscale_ssl\n\n[trustscale_ssl]\nsystem_default = trustscale_system_default\n\n[trustscale_system_default]\nMinProtocol = {}\n",
        openssl_name(min.effective())
    )
}

/// Classifies a librdkafka (OpenSSL) error message, as passed to a client context's error
/// or log callback: librdkafka's own errors say only that the brokers are down.
///
/// None when the message is not about TLS or the connection.
#[must_use]
pub fn classify_librdkafka_message(message: &str) -> Option<FailureKind> {
    // Broker names ("ssl://host:port/1") say nothing about the failure.
    let m = message
        .to_ascii_lowercase()
        .replace("sasl_ssl://", "")
        .replace("ssl://", "");
    let has = |needles: &[&str]| needles.iter().any(|n| m.contains(n));
    let kind = if has(&["certificate has expired", "certificate is not yet valid"]) {
        FailureKind::Expired
    } else if has(&["hostname mismatch", "ip address mismatch"]) {
        FailureKind::HostnameMismatch
    } else if has(&[
        "alert certificate required",
        "peer did not return a certificate",
        "client ssl authentication might be required",
    ]) {
        FailureKind::ClientCertRequired
    } else if has(&[
        "alert unknown ca",
        "alert bad certificate",
        "alert certificate unknown",
    ]) {
        FailureKind::ClientCertRejected
    } else if has(&[
        "unable to get local issuer certificate",
        "unable to get issuer certificate",
        "self-signed certificate",
        "self signed certificate",
        "certificate verify failed",
        "broker certificate could not be verified",
    ]) {
        FailureKind::UnknownIssuer
    } else if has(&[
        "unsupported protocol",
        "alert protocol version",
        "wrong version number",
        "no protocols available",
        "version too low",
    ]) {
        FailureKind::ProtocolVersion
    } else if has(&[
        "connection refused",
        "connection reset",
        "connect to ipv",
        "timed out",
    ]) {
        // A reset during the handshake ("SSL handshake failed: Disconnected: connection
        // reset by peer") is the peer going away, as a TLS front whose broker is down
        // does; a TLS failure proper carries an alert or a verification error.
        FailureKind::Connection
    } else if has(&["ssl", "tls"]) {
        FailureKind::Tls
    } else if has(&["disconnected"]) {
        FailureKind::Connection
    } else {
        return None;
    };
    Some(kind)
}

/// OpenSSL's name of a TLS 1.2 suite, from its IANA name.
#[must_use]
pub fn openssl_cipher_name(iana: &str) -> Option<&'static str> {
    Some(match iana {
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384" => "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256" => "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-ECDSA-CHACHA20-POLY1305",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384" => "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256" => "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256" => "ECDHE-RSA-CHACHA20-POLY1305",
        _ => return None,
    })
}

/// The name OpenSSL uses for a version in `MinProtocol`.
#[must_use]
pub fn openssl_name(version: TlsVersion) -> &'static str {
    match version {
        TlsVersion::Tls10 => "TLSv1",
        TlsVersion::Tls11 => "TLSv1.1",
        TlsVersion::Tls12 => "TLSv1.2",
        TlsVersion::Tls13 => "TLSv1.3",
    }
}

/// The trust of `ctx` as librdkafka properties: `security.protocol=ssl`, the merged
/// anchors (system + CA folders + the trigger's `ca`) as `ssl.ca.pem`, the identity as
/// `ssl.certificate.pem`/`ssl.key.pem`, and hostname verification on (both off with
/// `unsafeSsl`).
///
/// Errors when a setting cannot be honoured: `serverName`, or a minimum version above
/// what the process-wide OpenSSL configuration enforces.
pub fn librdkafka_tls(ctx: &TlsContext, trigger: &str) -> Result<LibrdkafkaTls, TrustError> {
    if ctx.server_name_override().is_some() {
        return Err(TrustError::Unsupported {
            trigger: trigger.into(),
            setting: "serverName",
            backend: "librdkafka",
            reason: "it verifies brokers only against the names they advertise; use a certificate that names the advertised host".into(),
        });
    }
    let enforced = openssl_enforced_min();
    let wanted = ctx.min_tls().effective();
    if wanted > enforced {
        return Err(TrustError::Unsupported {
            trigger: trigger.into(),
            setting: "minimum TLS version",
            backend: "librdkafka",
            reason: format!(
                "{wanted} is required but the process-wide OpenSSL configuration enforces only {enforced}; set {OPENSSL_CONF_ENV} to a file with `MinProtocol = {}` (see trustscale_kafka::openssl_config_for) before the process starts",
                openssl_name(wanted)
            ),
        });
    }
    let mut entries: Vec<(&'static str, String)> = vec![("security.protocol", "ssl".into())];
    if ctx.is_unsafe() {
        entries.push(("enable.ssl.certificate.verification", "false".into()));
        entries.push(("ssl.endpoint.identification.algorithm", "none".into()));
    } else {
        entries.push(("ssl.ca.pem", ctx.trust_pem()));
        entries.push(("enable.ssl.certificate.verification", "true".into()));
        entries.push(("ssl.endpoint.identification.algorithm", "https".into()));
    }
    if let Some(suites) = ctx.tls12_cipher_suites() {
        // The same list in OpenSSL's names (TLS 1.3 suites stay OpenSSL's defaults, as
        // rustls keeps its own).
        let names: Vec<&str> = suites
            .iter()
            .filter_map(|s| openssl_cipher_name(s))
            .collect();
        entries.push(("ssl.cipher.suites", names.join(":")));
    }
    if let Some(id) = ctx.identity_pem() {
        entries.push(("ssl.certificate.pem", id.chain));
        entries.push(("ssl.key.pem", id.key.expose().to_string()));
    }
    Ok(LibrdkafkaTls { entries })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn librdkafka_messages_are_classified() {
        let cases = [
            (
                "ssl://127.0.0.1:19092/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured (after 3ms in state SSL_HANDSHAKE)",
                Some(FailureKind::UnknownIssuer),
            ),
            (
                "ssl://127.0.0.1:19092/bootstrap: Connect to ipv4#127.0.0.1:19092 failed: Connection refused (after 0ms in state CONNECT)",
                Some(FailureKind::Connection),
            ),
            (
                "SSL handshake failed: error:0A00045C:SSL routines::tlsv13 alert certificate required",
                Some(FailureKind::ClientCertRequired),
            ),
            (
                "SSL handshake failed: error:0A000102:SSL routines::unsupported protocol",
                Some(FailureKind::ProtocolVersion),
            ),
            (
                "SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: certificate has expired",
                Some(FailureKind::Expired),
            ),
            (
                "GroupCoordinator: 127.0.0.1:19095: SSL handshake failed: Disconnected: connection reset by peer: connecting to a PLAINTEXT broker listener? (after 0ms in state SSL_HANDSHAKE)",
                Some(FailureKind::Connection),
            ),
            ("1/1 brokers are down", None),
        ];
        for (msg, want) in cases {
            assert_eq!(classify_librdkafka_message(msg), want, "{msg}");
        }
    }

    #[test]
    fn min_protocol_is_read_from_openssl_config() {
        assert_eq!(
            min_protocol_in(&openssl_config_for(TlsVersion::Tls13)),
            Some(TlsVersion::Tls13)
        );
        assert_eq!(
            min_protocol_in("MinProtocol = TLSv1.2 # comment"),
            Some(TlsVersion::Tls12)
        );
        assert_eq!(min_protocol_in("# MinProtocol = TLSv1.3"), None);
    }
}
