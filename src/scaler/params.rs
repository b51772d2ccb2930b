//! Typed reading of trigger parameters, KEDA-compatible, in one place.
//!
//! Lookup order (as KEDA's typed config): the trigger's metadata, then its resolved
//! authentication parameters, then `<name>FromEnv` in the metadata naming an environment
//! variable. Secrets (`password`, `ca`, `cert`, `key`, ...) are read from authentication
//! parameters first. Every error names the trigger and the parameter.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::str::FromStr;
use std::sync::Mutex;

use super::error::ScalerError;
use super::quantity::parse_quantity;
use super::{BuildContext, TriggerSpec};
use crate::trust::{TlsContext, TlsSettings, parse_go_bool};

/// Parameter names every scaler accepts (TLS settings).
pub const TLS_PARAMS: &[&str] = &[
    "tls",
    "enableTLS",
    "ca",
    "cert",
    "key",
    "keyPassword",
    "unsafeSsl",
    "serverName",
];

/// Reads one trigger's parameters and remembers which were asked for.
pub struct Params<'a> {
    spec: &'a TriggerSpec,
    asked: Mutex<BTreeSet<String>>,
}

impl<'a> Params<'a> {
    /// Parameters of a trigger.
    #[must_use]
    pub fn new(spec: &'a TriggerSpec) -> Self {
        Params {
            spec,
            asked: Mutex::new(BTreeSet::new()),
        }
    }

    /// The trigger's label for messages.
    #[must_use]
    pub fn trigger(&self) -> &str {
        &self.spec.label
    }

    fn note(&self, name: &str) {
        if let Ok(mut a) = self.asked.lock() {
            a.insert(name.to_string());
            a.insert(format!("{name}FromEnv"));
        }
    }

    /// The value of `name`: metadata, then auth parameters, then `<name>FromEnv`.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<String> {
        self.note(name);
        let non_empty = |v: &String| !v.is_empty();
        self.spec
            .metadata
            .get(name)
            .filter(|v| non_empty(v))
            .cloned()
            .or_else(|| {
                self.spec
                    .auth
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .map(|v| v.expose().to_string())
            })
            .or_else(|| self.env_value(name))
    }

    /// The value of a secret parameter: auth parameters first, then metadata.
    #[must_use]
    pub fn secret(&self, name: &str) -> Option<String> {
        self.note(name);
        self.spec
            .auth
            .get(name)
            .filter(|v| !v.is_empty())
            .map(|v| v.expose().to_string())
            .or_else(|| {
                self.spec
                    .metadata
                    .get(name)
                    .filter(|v| !v.is_empty())
                    .cloned()
            })
            .or_else(|| self.env_value(name))
    }

    fn env_value(&self, name: &str) -> Option<String> {
        let var = self.spec.metadata.get(&format!("{name}FromEnv"))?;
        self.spec
            .resolved_env
            .get(var)
            .cloned()
            .or_else(|| std::env::var(var).ok())
            .filter(|v| !v.is_empty())
    }

    /// A required parameter.
    pub fn required(&self, name: &str) -> Result<String, ScalerError> {
        self.get(name)
            .ok_or_else(|| ScalerError::config(self.trigger(), name, "is required but not set"))
    }

    /// A parsed parameter with a default.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, ScalerError>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.trim().parse().map_err(|e| {
                ScalerError::config(self.trigger(), name, format!("{v:?} is invalid: {e}"))
            }),
        }
    }

    /// A boolean, parsed as Go does (`true`, `1`, `t`, `False`, ...).
    pub fn bool_or(&self, name: &str, default: bool) -> Result<bool, ScalerError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => {
                parse_go_bool(name, &v).map_err(|e| ScalerError::config(self.trigger(), name, e))
            }
        }
    }

    /// A Kubernetes quantity (`5`, `1.5k`, `250m`).
    pub fn quantity_or(&self, name: &str, default: f64) -> Result<f64, ScalerError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_quantity(&v).map_err(|e| ScalerError::config(self.trigger(), name, e)),
        }
    }

    /// One of a fixed set of words (compared case-sensitively, as KEDA does).
    pub fn one_of(
        &self,
        name: &str,
        allowed: &[&str],
        default: &str,
    ) -> Result<String, ScalerError> {
        let v = self.get(name).unwrap_or_else(|| default.to_string());
        if allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(ScalerError::config(
                self.trigger(),
                name,
                format!("{v:?} is not one of: {}", allowed.join(", ")),
            ))
        }
    }

    /// A parameter that no longer works: an error if set, saying what to use instead.
    pub fn deprecated(&self, name: &str, instead: &str) -> Result<(), ScalerError> {
        if self.spec.metadata.contains_key(name) {
            return Err(ScalerError::config(
                self.trigger(),
                name,
                format!("is no longer supported; {instead}"),
            ));
        }
        Ok(())
    }

    /// A parameter that still works but is on its way out: a warning, once per build.
    pub fn deprecated_announced(&self, name: &str, instead: &str) {
        if self.get(name).is_some() {
            tracing::warn!(
                trigger = self.trigger(),
                parameter = name,
                "parameter is deprecated and will be removed; {instead}"
            );
        }
    }

    /// The trigger's TLS settings (KEDA names; secrets from auth parameters first).
    pub fn tls(&self) -> Result<TlsSettings, ScalerError> {
        TlsSettings::from_lookup(|name| match name {
            "ca" | "cert" | "key" | "keyPassword" => self.secret(name),
            _ => self.get(name),
        })
        .map_err(|e| ScalerError::from_trust(self.trigger(), &e))
    }

    /// The trigger's TLS context from the factory when `secure`; otherwise `None`, with a
    /// warning when TLS settings were given that a plaintext connection ignores.
    pub fn tls_context(
        &self,
        ctx: &BuildContext,
        settings: &TlsSettings,
        secure: bool,
        plaintext: &str,
    ) -> Result<Option<TlsContext>, ScalerError> {
        if secure {
            return ctx
                .trust
                .context(settings, self.trigger())
                .map(Some)
                .map_err(|e| ScalerError::from_trust(self.trigger(), &e));
        }
        if settings.ca.is_some() || settings.cert.is_some() || settings.unsafe_ssl() {
            tracing::warn!(
                trigger = self.trigger(),
                "TLS parameters are ignored: {plaintext}"
            );
        }
        Ok(None)
    }

    /// Warns about metadata keys nobody asked for (typos are otherwise silent).
    pub fn warn_unknown(&self) {
        let asked = self.asked.lock().map(|a| a.clone()).unwrap_or_default();
        for key in self.spec.metadata.keys() {
            if !asked.contains(key) && !TLS_PARAMS.contains(&key.as_str()) {
                tracing::warn!(trigger = self.trigger(), parameter = %key, "unknown metadata parameter is ignored");
            }
        }
    }
}
