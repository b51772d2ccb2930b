//! TLS 1.2 cipher suites by name, as KEDA reads them: `KEDA_HTTP_TLS_CIPHER_LIST` for
//! scaler clients and `KEDA_SERVICE_TLS_CIPHER_LIST` for the internal service, comma or
//! colon separated, with the IANA names Go uses (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`).
//! TLS 1.3 suites are not configurable (in Go neither) and are always offered. An unknown
//! name is an error that lists the valid ones.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{CipherSuite, SupportedCipherSuite};

use super::error::{Result, TrustError};

/// The variable that limits the TLS 1.2 cipher suites of scaler clients.
pub const CLIENT_CIPHERS_ENV: &str = "KEDA_HTTP_TLS_CIPHER_LIST";
/// The variable that limits the TLS 1.2 cipher suites of the internal service.
pub const SERVICE_CIPHERS_ENV: &str = "KEDA_SERVICE_TLS_CIPHER_LIST";

/// The TLS 1.2 suites this build speaks, by their IANA names (and Go's short aliases).
fn tls12_suites() -> Vec<(CipherSuite, &'static str)> {
    rustls::crypto::ring::default_provider()
        .cipher_suites
        .iter()
        .filter(|s| s.version() == &rustls::version::TLS12)
        .filter_map(|s| {
            let id = s.suite();
            id.as_str().map(|name| (id, name))
        })
        .collect()
}

/// Parses a list of TLS 1.2 suite names (`source_name` names the variable in errors).
pub fn parse_cipher_list(source_name: &str, value: &str) -> Result<Vec<CipherSuite>> {
    let known = tls12_suites();
    let mut out = Vec::new();
    for name in value
        .split([',', ':'])
        .map(str::trim)
        .filter(|n| !n.is_empty())
    {
        // Go's names for the ChaCha20 suites leave out the hash.
        let canonical = match name {
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305" => "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305" => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            other => other,
        };
        match known.iter().find(|(_, n)| *n == canonical) {
            Some((id, _)) if !out.contains(id) => out.push(*id),
            Some(_) => {}
            None => {
                return Err(TrustError::InvalidCipher {
                    source_name: source_name.to_string(),
                    value: name.to_string(),
                    allowed: known.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", "),
                });
            }
        }
    }
    if out.is_empty() {
        return Err(TrustError::InvalidCipher {
            source_name: source_name.to_string(),
            value: value.to_string(),
            allowed: known.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", "),
        });
    }
    Ok(out)
}

/// Reads a list from an environment variable; unset or empty is `None` (every suite).
pub fn cipher_list_from_env(var: &str) -> Result<Option<Vec<CipherSuite>>> {
    match std::env::var(var) {
        Ok(v) if !v.trim().is_empty() => parse_cipher_list(var, &v).map(Some),
        _ => Ok(None),
    }
}

/// The crypto provider with its TLS 1.2 suites limited to `tls12` (in that order of
/// preference); TLS 1.3 suites are kept.
pub(crate) fn provider_with(tls12: Option<&[CipherSuite]>) -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    if let Some(allowed) = tls12 {
        let all: Vec<SupportedCipherSuite> = provider.cipher_suites.clone();
        let mut suites: Vec<SupportedCipherSuite> = all
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS13)
            .copied()
            .collect();
        for id in allowed {
            if let Some(s) = all.iter().find(|s| s.suite() == *id) {
                suites.push(*s);
            }
        }
        provider.cipher_suites = suites;
    }
    Arc::new(provider)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_parsed_as_keda_writes_them() {
        let list = parse_cipher_list(
            "X",
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256:TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        let err = parse_cipher_list(CLIENT_CIPHERS_ENV, "TLS_RSA_WITH_RC4_128_SHA")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(CLIENT_CIPHERS_ENV)
                && err.contains("TLS_RSA_WITH_RC4_128_SHA")
                && err.contains("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"),
            "{err}"
        );
        let provider = provider_with(Some(&list));
        assert_eq!(
            provider
                .cipher_suites
                .iter()
                .filter(|s| s.version() == &rustls::version::TLS12)
                .count(),
            2
        );
    }
}
