//! A trigger's TLS settings, with KEDA's parameter names.
//!
//! One struct, read by every scaler through [`TlsSettings::from_lookup`] (the one parsing
//! path), so that `tls`, `ca`, `cert`, `key`, `keyPassword`, `unsafeSsl` (and Redis'
//! `enableTLS`) mean the same thing everywhere.
//! Values arrive as strings (Kubernetes metadata and Secrets are string maps), so booleans
//! are parsed the way Go's `strconv.ParseBool` does.

use std::fmt;

use serde::Serialize;

use super::error::{Result, TrustError};

/// A string that must never be printed: `Debug` and `Display` show `<redacted>`, and the
/// memory is cleared when it is dropped.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used, never to log it.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// KEDA's `tls` parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// `enable`: use TLS.
    Enable,
    /// `disable`: plaintext.
    Disable,
}

/// What to do when a trigger asks for `unsafeSsl: true`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnsafeSslPolicy {
    /// Connect without verification, warn once per trigger and count it (KEDA compatible).
    #[default]
    AllowWithWarning,
    /// Refuse to build the context.
    Forbid,
}

impl std::str::FromStr for UnsafeSslPolicy {
    type Err = TrustError;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "allow-with-warning" | "allow" | "warn" => Ok(UnsafeSslPolicy::AllowWithWarning),
            "forbid" => Ok(UnsafeSslPolicy::Forbid),
            other => Err(TrustError::InvalidValue {
                parameter: "unsafe-ssl policy".into(),
                value: other.into(),
                allowed: "allow-with-warning, forbid",
            }),
        }
    }
}

/// The TLS settings of one trigger, as KEDA names them.
///
/// `ca`, `cert` and `key` take either inline PEM (as resolved from a Secret) or the path of
/// a file holding PEM or DER. `Debug` never prints `key` or `keyPassword`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsSettings {
    /// `tls`: `enable` or `disable`.
    pub tls: Option<TlsMode>,
    /// `enableTLS` (Redis' boolean spelling of `tls`).
    pub enable_tls: Option<bool>,
    /// `ca`: an extra CA trusted by this trigger only (added to a copy of the anchors).
    pub ca: Option<String>,
    /// `cert`: the client certificate (chain), for mutual TLS.
    pub cert: Option<String>,
    /// `key`: the client private key (PKCS#8, PKCS#1, SEC1, or encrypted PKCS#8).
    pub key: Option<Secret>,
    /// `keyPassword`: the password of an encrypted PKCS#8 key.
    pub key_password: Option<Secret>,
    /// `unsafeSsl`: skip certificate verification (deprecated).
    pub unsafe_ssl: Option<bool>,
    /// `serverName`: verify the server's certificate against this name instead of the
    /// host connected to (the safe replacement for most uses of `unsafeSsl`).
    pub server_name: Option<String>,
}

impl TlsSettings {
    /// Whether `unsafeSsl` is on.
    #[must_use]
    pub fn unsafe_ssl(&self) -> bool {
        self.unsafe_ssl.unwrap_or(false)
    }

    /// Whether TLS is asked for, by `tls` or `enableTLS`; `None` when neither is set.
    ///
    /// Setting both is an error, as in KEDA's Redis scaler: the two spellings could
    /// disagree and there is no sensible winner.
    pub fn tls_requested(&self) -> Result<Option<bool>> {
        match (self.tls, self.enable_tls) {
            (Some(_), Some(_)) => Err(TrustError::InvalidValue {
                parameter: "tls/enableTLS".into(),
                value: "both set".into(),
                allowed: "either `tls` (enable|disable) or `enableTLS` (true|false), not both",
            }),
            (Some(mode), None) => Ok(Some(mode == TlsMode::Enable)),
            (None, Some(b)) => Ok(Some(b)),
            (None, None) => Ok(None),
        }
    }

    /// Builds settings from a string lookup (metadata, then auth parameters, ...), the way
    /// KEDA reads them. Unknown values are errors that name the parameter.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let tls = get("tls").map(|v| parse_tls_mode(&v)).transpose()?;
        let enable_tls = get("enableTLS")
            .map(|v| parse_go_bool("enableTLS", &v))
            .transpose()?;
        let unsafe_ssl = get("unsafeSsl")
            .map(|v| parse_go_bool("unsafeSsl", &v))
            .transpose()?;
        Ok(TlsSettings {
            tls,
            enable_tls,
            ca: get("ca"),
            cert: get("cert"),
            key: get("key").map(Secret),
            key_password: get("keyPassword").map(Secret),
            unsafe_ssl,
            server_name: get("serverName"),
        })
    }
}

/// Parses a boolean as Go's `strconv.ParseBool` does: `1 t T TRUE true True` and
/// `0 f F FALSE false False`.
pub fn parse_go_bool(parameter: &str, value: &str) -> Result<bool> {
    match value.trim() {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        other => Err(TrustError::InvalidValue {
            parameter: parameter.into(),
            value: other.into(),
            allowed: "true, false (or 1, 0, t, f, TRUE, FALSE, True, False)",
        }),
    }
}

fn parse_tls_mode(value: &str) -> Result<TlsMode> {
    match value.trim() {
        "enable" => Ok(TlsMode::Enable),
        "disable" => Ok(TlsMode::Disable),
        other => Err(TrustError::InvalidValue {
            parameter: "tls".into(),
            value: other.into(),
            allowed: "enable, disable",
        }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn from_map(pairs: &[(&str, &str)]) -> Result<TlsSettings> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TlsSettings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn keda_names_are_read() {
        let s = from_map(&[
            ("tls", "enable"),
            ("ca", "/etc/ca.pem"),
            ("cert", "/etc/c.pem"),
            ("key", "-----BEGIN PRIVATE KEY-----"),
            ("keyPassword", "hunter2"),
            ("unsafeSsl", "True"),
            ("serverName", "redis.internal"),
        ])
        .unwrap();
        assert_eq!(s.tls, Some(TlsMode::Enable));
        assert!(s.unsafe_ssl());
        assert_eq!(s.server_name.as_deref(), Some("redis.internal"));
        assert_eq!(s.key_password.as_ref().map(Secret::expose), Some("hunter2"));
    }

    #[test]
    fn debug_never_prints_key_or_password() {
        let s = from_map(&[("key", "SECRETKEYMATERIAL"), ("keyPassword", "hunter2")]).unwrap();
        let text = format!("{s:?}");
        assert!(!text.contains("SECRETKEYMATERIAL"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
    }

    #[test]
    fn go_booleans_parse_like_go() {
        for (input, want) in [
            ("1", true),
            ("t", true),
            ("TRUE", true),
            ("False", false),
            ("0", false),
        ] {
            assert_eq!(parse_go_bool("x", input).unwrap(), want, "{input}");
        }
        let err = parse_go_bool("unsafeSsl", "yes").unwrap_err().to_string();
        assert!(
            err.contains("unsafeSsl") && err.contains("\"yes\""),
            "{err}"
        );
    }

    #[test]
    fn tls_and_enable_tls_together_are_an_error() {
        let s = from_map(&[("tls", "enable"), ("enableTLS", "true")]).unwrap();
        assert!(s.tls_requested().is_err());
        let s = from_map(&[("enableTLS", "true")]).unwrap();
        assert_eq!(s.tls_requested().unwrap(), Some(true));
        assert!(
            from_map(&[("tls", "on")])
                .unwrap_err()
                .to_string()
                .contains("tls")
        );
    }
}
