//! Minimum TLS versions, as KEDA users write them (`TLS10` … `TLS13`).

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use super::error::{Result, TrustError};

/// The environment variable that sets the minimum TLS version of scaler clients.
pub const CLIENT_MIN_TLS_ENV: &str = "KEDA_HTTP_MIN_TLS_VERSION";
/// The environment variable that sets the minimum TLS version of the internal service.
pub const SERVICE_MIN_TLS_ENV: &str = "KEDA_SERVICE_MIN_TLS_VERSION";

/// A minimum TLS protocol version.
///
/// `TLS10` and `TLS11` are accepted so that KEDA configurations load unchanged, but
/// rustls speaks nothing below TLS 1.2: they behave as `TLS12` (see [`TlsVersion::effective`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum TlsVersion {
    /// TLS 1.0 (behaves as TLS 1.2).
    #[serde(rename = "TLS10")]
    Tls10,
    /// TLS 1.1 (behaves as TLS 1.2).
    #[serde(rename = "TLS11")]
    Tls11,
    /// TLS 1.2.
    #[serde(rename = "TLS12")]
    Tls12,
    /// TLS 1.3.
    #[serde(rename = "TLS13")]
    Tls13,
}

impl TlsVersion {
    /// The version that is really enforced: rustls' floor is TLS 1.2.
    #[must_use]
    pub fn effective(self) -> TlsVersion {
        self.max(TlsVersion::Tls12)
    }

    /// The rustls protocol versions allowed by this minimum.
    #[must_use]
    pub fn rustls_versions(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static BOTH: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        static ONLY13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        match self.effective() {
            TlsVersion::Tls13 => ONLY13,
            _ => BOTH,
        }
    }

    /// Reads a version from an environment variable; unset or empty gives `default`.
    ///
    /// An invalid value is an error that names the variable and lists the allowed values
    /// (KEDA logs and ignores it; a silent fallback to a weaker version is worse).
    pub fn from_env(var: &str, default: TlsVersion) -> Result<TlsVersion> {
        match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Self::parse_named(var, &v),
            Ok(_) | Err(std::env::VarError::NotPresent) => Ok(default),
            Err(std::env::VarError::NotUnicode(v)) => Err(TrustError::InvalidTlsVersion {
                source_name: var.to_string(),
                value: v.to_string_lossy().into_owned(),
            }),
        }
    }

    /// Parses a value, naming `source_name` in the error.
    pub fn parse_named(source_name: &str, value: &str) -> Result<TlsVersion> {
        value.parse().map_err(|()| TrustError::InvalidTlsVersion {
            source_name: source_name.to_string(),
            value: value.to_string(),
        })
    }

    /// Whether this minimum is below what rustls can do, so that a warning is due.
    #[must_use]
    pub fn is_below_floor(self) -> bool {
        self < TlsVersion::Tls12
    }
}

impl FromStr for TlsVersion {
    type Err = ();

    fn from_str(s: &str) -> std::result::Result<Self, ()> {
        match s.trim().to_ascii_uppercase().as_str() {
            "TLS10" => Ok(TlsVersion::Tls10),
            "TLS11" => Ok(TlsVersion::Tls11),
            "TLS12" => Ok(TlsVersion::Tls12),
            "TLS13" => Ok(TlsVersion::Tls13),
            _ => Err(()),
        }
    }
}

impl fmt::Display for TlsVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsVersion::Tls10 => "TLS10",
            TlsVersion::Tls11 => "TLS11",
            TlsVersion::Tls12 => "TLS12",
            TlsVersion::Tls13 => "TLS13",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_parse_case_insensitively() {
        let cases = [
            ("TLS12", TlsVersion::Tls12),
            ("tls13", TlsVersion::Tls13),
            (" TLS10 ", TlsVersion::Tls10),
            ("Tls11", TlsVersion::Tls11),
        ];
        for (input, want) in cases {
            assert_eq!(
                TlsVersion::parse_named("X", input).unwrap(),
                want,
                "{input}"
            );
        }
    }

    #[test]
    fn unknown_name_lists_allowed_values() {
        let err = TlsVersion::parse_named("KEDA_HTTP_MIN_TLS_VERSION", "TLS14").unwrap_err();
        let text = err.to_string();
        assert!(text.contains("KEDA_HTTP_MIN_TLS_VERSION"), "{text}");
        assert!(text.contains("\"TLS14\""), "{text}");
        assert!(text.contains("TLS10, TLS11, TLS12, TLS13"), "{text}");
    }

    #[test]
    fn old_versions_behave_as_tls12() {
        assert_eq!(TlsVersion::Tls10.effective(), TlsVersion::Tls12);
        assert!(TlsVersion::Tls11.is_below_floor());
        assert_eq!(TlsVersion::Tls11.rustls_versions().len(), 2);
        assert_eq!(TlsVersion::Tls13.rustls_versions().len(), 1);
    }
}
