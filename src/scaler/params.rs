//! Declared, typed trigger parameters, KEDA-compatible, in one place per scaler.
//!
//! A scaler declares its parameters once, as a table of [`Param`]s (KEDA does the same
//! with its typed config tags). Reading ([`Params`]), the unknown-key warning and the
//! parameter documentation ([`markdown`]) all come from that table.
//!
//! Lookup order, per parameter: [`Order::Metadata`] reads the trigger's metadata, then its
//! resolved authentication parameters, then `<name>FromEnv` (the variable's value as the
//! manifest loader resolved it); [`Order::Secret`] (passwords, keys, `ca`, ...) reads the
//! authentication parameters first. An empty value counts as unset. Every error names the
//! trigger and the parameter.

use std::fmt::Display;
use std::str::FromStr;

use super::error::ScalerError;
use super::quantity::parse_quantity;
use super::{BuildContext, TriggerSpec};
use crate::trust::{TlsContext, TlsSettings, parse_go_bool};

/// Where a parameter is looked for first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Metadata, then authentication parameters, then `<name>FromEnv`.
    Metadata,
    /// Authentication parameters, then metadata, then `<name>FromEnv`: for secrets.
    Secret,
}

/// One declared parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Param {
    /// The name, as KEDA users write it.
    pub name: &'static str,
    /// Where it is looked for first.
    pub order: Order,
    /// The value when it is not set (as text, parsed like a given value).
    pub default: Option<&'static str>,
    /// The only values allowed (empty: any).
    pub allowed: &'static [&'static str],
    /// What it does, for the documentation.
    pub doc: &'static str,
    /// Set when the parameter still works but is on its way out: what to use instead.
    pub deprecated: Option<&'static str>,
}

impl Param {
    /// A parameter read from the metadata first.
    #[must_use]
    pub const fn new(name: &'static str, doc: &'static str) -> Param {
        Param {
            name,
            order: Order::Metadata,
            default: None,
            allowed: &[],
            doc,
            deprecated: None,
        }
    }

    /// A secret, read from the authentication parameters first.
    #[must_use]
    pub const fn secret(name: &'static str, doc: &'static str) -> Param {
        Param {
            order: Order::Secret,
            ..Param::new(name, doc)
        }
    }

    /// With a default value.
    #[must_use]
    pub const fn default(self, value: &'static str) -> Param {
        Param {
            default: Some(value),
            ..self
        }
    }

    /// Only these values are allowed (compared case-sensitively, as KEDA does).
    #[must_use]
    pub const fn one_of(self, allowed: &'static [&'static str]) -> Param {
        Param { allowed, ..self }
    }

    /// Deprecated: still read, with a warning that says what to use instead.
    #[must_use]
    pub const fn deprecated(self, instead: &'static str) -> Param {
        Param {
            deprecated: Some(instead),
            ..self
        }
    }
}

/// The TLS parameters every scaler accepts, read by [`Params::tls`] into one
/// [`TlsSettings`].
pub const TLS_PARAMS: &[Param] = &[
    Param::new("tls", "`enable` or `disable`: whether to connect with TLS.")
        .one_of(&["enable", "disable"]),
    Param::new("enableTLS", "Redis' boolean spelling of `tls` (not both)."),
    Param::secret(
        "ca",
        "An extra CA (PEM, or a file path) trusted by this trigger only, added to a copy of the system roots and CA folders.",
    ),
    Param::secret(
        "cert",
        "The client certificate chain (PEM, or a file path), for mutual TLS.",
    ),
    Param::secret(
        "key",
        "The client private key (PKCS#8, PKCS#1, SEC1, or encrypted PKCS#8; PEM or a file path).",
    ),
    Param::secret("keyPassword", "The password of an encrypted PKCS#8 `key`."),
    Param::new(
        "unsafeSsl",
        "Deprecated: skip certificate verification. Put the server's CA in a CA folder, set `ca`, or set `serverName` instead.",
    ),
    Param::new(
        "serverName",
        "Verify the server's certificate against this name instead of the host connected to.",
    ),
];

/// The parameter table as Markdown (name, default, allowed values, what it does); the
/// TLS parameters are listed once, apart, by the caller that wants them.
#[must_use]
pub fn markdown(params: &[Param]) -> String {
    let mut out = String::from("| parameter | default | what it does |\n| --- | --- | --- |\n");
    for p in params {
        let mut doc = p.doc.to_string();
        if !p.allowed.is_empty() {
            doc.push_str(&format!(" One of: {}.", p.allowed.join(", ")));
        }
        if p.order == Order::Secret {
            doc.push_str(" Read from the authentication parameters first.");
        }
        if let Some(instead) = p.deprecated {
            doc.push_str(&format!(" Deprecated: {instead}."));
        }
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            p.name,
            p.default
                .map_or_else(|| "—".to_string(), |d| format!("`{d}`")),
            doc.replace('|', "\\|")
        ));
    }
    out
}

/// Reads one trigger's parameters against its scaler's declared table.
pub struct Params<'a> {
    spec: &'a TriggerSpec,
    declared: &'static [Param],
}

impl<'a> Params<'a> {
    /// The parameters of a trigger, as declared by `declared` (the TLS parameters are
    /// always declared).
    #[must_use]
    pub fn new(spec: &'a TriggerSpec, declared: &'static [Param]) -> Self {
        Params { spec, declared }
    }

    /// The trigger's label for messages.
    #[must_use]
    pub fn trigger(&self) -> &str {
        &self.spec.label
    }

    fn declaration(&self, name: &str) -> Param {
        match self
            .declared
            .iter()
            .chain(TLS_PARAMS)
            .find(|p| p.name == name)
        {
            Some(p) => *p,
            None => {
                // A scaler reading a parameter it did not declare is a bug in the scaler:
                // its documentation and unknown-key warning would be wrong.
                debug_assert!(false, "parameter {name:?} is read but not declared");
                Param::new("", "")
            }
        }
    }

    fn given(&self, name: &str, order: Order) -> Option<String> {
        let metadata = || {
            self.spec
                .metadata
                .get(name)
                .filter(|v| !v.is_empty())
                .cloned()
        };
        let auth = || {
            self.spec
                .auth
                .get(name)
                .filter(|v| !v.is_empty())
                .map(|v| v.expose().to_string())
        };
        let env = || {
            let var = self.spec.metadata.get(&format!("{name}FromEnv"))?;
            self.spec
                .resolved_env
                .get(var)
                .filter(|v| !v.is_empty())
                .cloned()
        };
        match order {
            Order::Metadata => metadata().or_else(auth),
            Order::Secret => auth().or_else(metadata),
        }
        .or_else(env)
    }

    /// `value` of `name` as an error message may show it: quoted when it was written in
    /// the trigger's metadata (or is the default) of a parameter that is not a secret;
    /// otherwise it came from a TriggerAuthentication or the environment and is never
    /// echoed.
    fn shown(&self, name: &str, value: &str) -> String {
        let d = self.declaration(name);
        let from_metadata = self.spec.metadata.get(name).is_some_and(|v| v == value)
            || (d.default == Some(value) && !self.is_set(name));
        if from_metadata && d.order != Order::Secret {
            format!("{value:?}")
        } else {
            "the value given (from a TriggerAuthentication, the environment or a secret parameter; not shown)".into()
        }
    }

    /// Whether `name` was given (its default does not count).
    #[must_use]
    pub fn is_set(&self, name: &str) -> bool {
        let d = self.declaration(name);
        self.given(name, d.order).is_some()
    }

    /// The value of `name` as given, else its declared default. A value outside the
    /// declared `one_of` list is returned as is: see [`Params::choice`].
    #[must_use]
    pub fn get(&self, name: &str) -> Option<String> {
        let d = self.declaration(name);
        let value = self.given(name, d.order);
        if value.is_some()
            && let Some(instead) = d.deprecated
        {
            tracing::warn!(
                trigger = self.trigger(),
                parameter = name,
                "parameter is deprecated and will be removed; {instead}"
            );
        }
        value.or_else(|| d.default.map(str::to_string))
    }

    /// A parameter that must have a value (given or default).
    pub fn required(&self, name: &str) -> Result<String, ScalerError> {
        self.get(name)
            .ok_or_else(|| ScalerError::config(self.trigger(), name, "is required but not set"))
    }

    /// A parsed parameter; `None` when it is unset and has no default.
    pub fn parse<T>(&self, name: &str) -> Result<Option<T>, ScalerError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.get(name)
            .map(|v| {
                v.trim().parse().map_err(|e| {
                    let shown = self.shown(name, &v);
                    // The parser's own message may quote the value too.
                    let reason = if shown.starts_with('"') {
                        format!("{shown} is invalid: {e}")
                    } else {
                        format!("{shown} is invalid")
                    };
                    ScalerError::config(self.trigger(), name, reason)
                })
            })
            .transpose()
    }

    /// A parsed parameter that must have a value (given or default).
    pub fn value<T>(&self, name: &str) -> Result<T, ScalerError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.parse(name)?
            .ok_or_else(|| ScalerError::config(self.trigger(), name, "is required but not set"))
    }

    /// A boolean, parsed as Go does (`true`, `1`, `t`, `False`, ...); unset and no
    /// default is `false`.
    pub fn flag(&self, name: &str) -> Result<bool, ScalerError> {
        match self.get(name) {
            None => Ok(false),
            Some(v) => parse_go_bool(name, &v).map_err(|e| {
                let shown = self.shown(name, &v);
                if shown.starts_with('"') {
                    ScalerError::config(self.trigger(), name, e)
                } else {
                    ScalerError::config(
                        self.trigger(),
                        name,
                        format!("{shown} is not a boolean (true, false, 1, 0, t, f)"),
                    )
                }
            }),
        }
    }

    /// A Kubernetes quantity (`5`, `1.5k`, `250m`); `None` when unset with no default.
    pub fn quantity(&self, name: &str) -> Result<Option<f64>, ScalerError> {
        self.get(name)
            .map(|v| {
                parse_quantity(&v).map_err(|e| {
                    let shown = self.shown(name, &v);
                    let reason = if shown.starts_with('"') {
                        e
                    } else {
                        format!("{shown} is not a quantity")
                    };
                    ScalerError::config(self.trigger(), name, reason)
                })
            })
            .transpose()
    }

    /// A quantity that must have a value (given or default).
    pub fn quantity_value(&self, name: &str) -> Result<f64, ScalerError> {
        self.quantity(name)?
            .ok_or_else(|| ScalerError::config(self.trigger(), name, "is required but not set"))
    }

    /// One of the declared `one_of` values (given or default).
    pub fn choice(&self, name: &str) -> Result<String, ScalerError> {
        let d = self.declaration(name);
        let v = self.required(name)?;
        if d.allowed.is_empty() || d.allowed.contains(&v.as_str()) {
            Ok(v)
        } else {
            Err(ScalerError::config(
                self.trigger(),
                name,
                format!(
                    "{} is not one of: {}",
                    self.shown(name, &v),
                    d.allowed.join(", ")
                ),
            ))
        }
    }

    /// The trigger's TLS settings (KEDA names; secrets from auth parameters first).
    pub fn tls(&self) -> Result<TlsSettings, ScalerError> {
        TlsSettings::from_lookup(|name| self.get(name))
            .map_err(|e| ScalerError::from_trust(self.trigger(), e))
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
                .map_err(|e| ScalerError::from_trust(self.trigger(), e));
        }
        if settings.ca.is_some() || settings.cert.is_some() || settings.unsafe_ssl() {
            tracing::warn!(
                trigger = self.trigger(),
                "TLS parameters are ignored: {plaintext}"
            );
        }
        Ok(None)
    }

    /// Metadata keys that the scaler did not declare (typos are otherwise silent).
    #[must_use]
    pub fn unknown(&self) -> Vec<String> {
        let known = |key: &str| {
            let base = key.strip_suffix("FromEnv").unwrap_or(key);
            self.declared
                .iter()
                .chain(TLS_PARAMS)
                .any(|p| p.name == key || p.name == base)
        };
        self.spec
            .metadata
            .keys()
            .filter(|k| !known(k))
            .cloned()
            .collect()
    }

    /// Logs every unknown metadata key at warn, naming the trigger.
    pub fn warn_unknown(&self) {
        for key in self.unknown() {
            tracing::warn!(trigger = self.trigger(), parameter = %key, "unknown metadata parameter is ignored");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::scaler::ObjectRef;

    const DECLARED: &[Param] = &[
        Param::new("listName", "the list"),
        Param::new("listLength", "target").default("5"),
        Param::secret("password", "the password"),
        Param::new("format", "body format")
            .default("json")
            .one_of(&["json", "xml"]),
    ];

    fn spec(meta: &[(&str, &str)]) -> TriggerSpec {
        let metadata: BTreeMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TriggerSpec::new(
            ObjectRef {
                namespace: "ns".into(),
                name: "so".into(),
            },
            0,
            "t",
            metadata,
        )
    }

    #[test]
    fn lookup_order_follows_the_declaration() {
        let mut s = spec(&[("listName", "meta"), ("password", "from-meta")])
            .with_auth("listName", "auth")
            .with_auth("password", "from-auth");
        s.metadata.insert("listLengthFromEnv".into(), "LEN".into());
        s.resolved_env.insert("LEN".into(), "7".into());
        let p = Params::new(&s, DECLARED);
        assert_eq!(p.get("listName").as_deref(), Some("meta"));
        assert_eq!(p.get("password").as_deref(), Some("from-auth"));
        assert_eq!(p.quantity_value("listLength").unwrap(), 7.0);
        assert!(p.unknown().is_empty(), "{:?}", p.unknown());
    }

    #[test]
    fn defaults_and_choices_come_from_the_table() {
        let s = spec(&[("format", "csv"), ("listLenght", "3")]);
        let p = Params::new(&s, DECLARED);
        assert_eq!(p.quantity_value("listLength").unwrap(), 5.0);
        assert!(!p.is_set("listLength"));
        let err = p.choice("format").unwrap_err().to_string();
        assert!(err.contains("format") && err.contains("json, xml"), "{err}");
        assert_eq!(p.unknown(), vec!["listLenght".to_string()]);
        let err = p.required("listName").unwrap_err().to_string();
        assert!(
            err.contains("ns/so#0 (t)") && err.contains("listName"),
            "{err}"
        );
    }

    #[test]
    fn values_from_auth_or_the_environment_are_never_echoed() {
        let written = spec(&[("listLength", "lots"), ("format", "csv")]);
        let p = Params::new(&written, DECLARED);
        assert!(
            p.quantity_value("listLength")
                .unwrap_err()
                .to_string()
                .contains("lots")
        );
        assert!(p.choice("format").unwrap_err().to_string().contains("csv"));
        let mut hidden = spec(&[]).with_auth("listLength", "s3cr3t-from-a-secret");
        hidden.metadata.insert("formatFromEnv".into(), "FMT".into());
        hidden
            .resolved_env
            .insert("FMT".into(), "env-s3cr3t".into());
        let p = Params::new(&hidden, DECLARED);
        for e in [
            p.quantity_value("listLength").unwrap_err().to_string(),
            p.parse::<u32>("listLength").unwrap_err().to_string(),
            p.choice("format").unwrap_err().to_string(),
            p.flag("format").unwrap_err().to_string(),
        ] {
            assert!(!e.contains("s3cr3t"), "{e}");
            assert!(e.contains("not shown"), "{e}");
        }
    }

    #[test]
    fn docs_come_from_the_table() {
        let md = markdown(DECLARED);
        assert!(md.contains("| `listLength` | `5` | target |"), "{md}");
        assert!(md.contains("One of: json, xml."), "{md}");
    }
}

#[cfg(test)]
mod properties {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::scaler::ObjectRef;

    const DECLARED: &[Param] = &[
        Param::new("listLength", "target").default("5"),
        Param::new("flag", "a flag"),
        Param::new("mode", "a mode")
            .default("a")
            .one_of(&["a", "b"]),
        Param::secret("password", "a secret"),
    ];

    proptest! {
        /// Whatever a trigger's metadata holds, reading it gives a value or an error that
        /// names the trigger and the parameter, and never a panic.
        #[test]
        fn reading_parameters_never_panics_and_errors_name_the_parameter(
            metadata in proptest::collection::btree_map("[a-zA-Z]{1,12}", "\\PC{0,40}", 0..8),
            length in "\\PC{0,30}",
            flag in "\\PC{0,10}",
            mode in "\\PC{0,5}",
        ) {
            let mut metadata: BTreeMap<String, String> = metadata;
            metadata.insert("listLength".into(), length);
            metadata.insert("flag".into(), flag);
            metadata.insert("mode".into(), mode);
            let spec = TriggerSpec::new(ObjectRef { namespace: "n".into(), name: "s".into() }, 0, "t", metadata);
            let p = Params::new(&spec, DECLARED);
            for (name, result) in [
                ("listLength", p.quantity_value("listLength").map(|_| ())),
                ("flag", p.flag("flag").map(|_| ())),
                ("mode", p.choice("mode").map(|_| ())),
            ] {
                if let Err(e) = result {
                    let text = e.to_string();
                    prop_assert!(text.contains("n/s#0 (t)") && text.contains(name), "{text}");
                }
            }
            let _ = p.unknown();
            let _ = p.tls();
        }
    }
}
