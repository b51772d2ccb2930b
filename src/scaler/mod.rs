//! The scaler framework: the [`Scaler`] trait, trigger specs, typed parameters, and the
//! registry that maps trigger types to builders.

mod error;
#[cfg(feature = "http")]
pub mod httpclient;
pub mod params;
pub mod quantity;
mod registry;
mod tracked;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::Serialize;

pub use error::{ErrorKind, ScalerError, refine_transport};
pub use params::{Order, Param, Params, TLS_PARAMS};
pub use quantity::{format_quantity, parse_quantity, sanitize};

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn credentials_in_urls_are_redacted() {
        let cases = [
            (
                "https://user:hunter2@host:8443/a?api_key=s3cr3t&x=1",
                "https://***@host:8443/a?api_key=***&x=***",
            ),
            ("redis://:pw@redis:6379/0", "redis://***@redis:6379/0"),
            (
                "amqps://guest:guest@rabbit/vhost",
                "amqps://***@rabbit/vhost",
            ),
            ("https://host/path", "https://host/path"),
            ("user:pw@host:6379", "***@host:6379"),
            ("host:6379", "host:6379"),
            (
                "\"https://a:b@h/\" is not a URL",
                "\"https://***@h/\" is not a URL",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "{input}");
        }
    }
}
pub use registry::{Registry, ScalerBuilder};
pub use tracked::{Follower, MakeClient, Tracked, Witnessed};

use crate::trust::{Secret, TrustFactory};

/// How the HPA reads a metric.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum MetricType {
    /// The value is divided by the number of replicas (KEDA's default).
    #[default]
    AverageValue,
    /// The value is compared as is.
    Value,
}

/// One metric a scaler serves.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricSpec {
    /// `s{triggerIndex}-{name}`.
    pub name: String,
    /// Target value (per replica for AverageValue).
    pub target: f64,
    /// How the target is applied.
    pub metric_type: MetricType,
}

/// A metric value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricValue {
    /// The metric name.
    pub name: String,
    /// The value (already sanitized: never NaN, infinite or negative).
    pub value: f64,
}

/// The outcome of one poll.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Poll {
    /// One value per metric spec.
    pub metrics: Vec<MetricValue>,
    /// Whether the trigger is active (its value is above the activation threshold).
    pub active: bool,
}

impl Poll {
    /// A poll of one metric, active when `value > activation`.
    #[must_use]
    pub fn single(name: &str, value: f64, activation: f64) -> Poll {
        let value = sanitize(value);
        Poll {
            metrics: vec![MetricValue {
                name: name.to_string(),
                value,
            }],
            active: value > activation,
        }
    }
}

/// A scaler: reads one external source for one trigger.
#[async_trait]
pub trait Scaler: Send + Sync {
    /// The metrics this scaler serves (usually one).
    fn metric_specs(&self) -> Vec<MetricSpec>;

    /// Reads the source: current values and activity.
    async fn poll(&self) -> Result<Poll, ScalerError>;

    /// Releases what this scaler holds (shared clients close with their last user).
    async fn close(&self) {}
}

/// Identifies a ScaledObject.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    /// Namespace (`default` when the manifest gives none).
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One trigger, with its authentication parameters resolved.
#[derive(Clone)]
pub struct TriggerSpec {
    /// The ScaledObject that owns it.
    pub scaled_object: ObjectRef,
    /// Its index in the ScaledObject's triggers.
    pub index: usize,
    /// The trigger type (`redis`, `metrics-api`, ...).
    pub type_name: String,
    /// The trigger's optional name.
    pub name: Option<String>,
    /// The metadata map.
    pub metadata: BTreeMap<String, String>,
    /// Resolved authentication parameters (from Secrets, env, ...).
    pub auth: BTreeMap<String, Secret>,
    /// Environment values resolved for `...FromEnv` metadata.
    pub resolved_env: BTreeMap<String, String>,
    /// AverageValue (default) or Value.
    pub metric_type: MetricType,
    /// `namespace/name#index (type)`, for messages.
    pub label: String,
}

impl TriggerSpec {
    /// A trigger spec with no auth parameters; `label` is derived.
    #[must_use]
    pub fn new(
        scaled_object: ObjectRef,
        index: usize,
        type_name: impl Into<String>,
        metadata: BTreeMap<String, String>,
    ) -> Self {
        let type_name = type_name.into();
        let label = format!("{scaled_object}#{index} ({type_name})");
        TriggerSpec {
            scaled_object,
            index,
            type_name,
            name: None,
            metadata,
            auth: BTreeMap::new(),
            resolved_env: BTreeMap::new(),
            metric_type: MetricType::AverageValue,
            label,
        }
    }

    /// Adds an authentication parameter.
    #[must_use]
    pub fn with_auth(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.auth.insert(name.into(), Secret::new(value.into()));
        self
    }

    /// The metric name KEDA gives this trigger: `s{index}-{name}`, with `name` normalized.
    #[must_use]
    pub fn metric_name(&self, name: &str) -> String {
        format!("s{}-{}", self.index, normalize_metric_name(name))
    }
}

impl fmt::Debug for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TriggerSpec")
            .field("label", &self.label)
            .field("metadata", &self.metadata)
            .field("auth", &self.auth.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A URL (or `host:port`, or any text holding URLs) fit for a message: the user-info of
/// every `scheme://user:password@host` becomes `***@`, and every query value `***`, so
/// that credentials in a URL never reach an error or a log line.
#[must_use]
pub fn redact_url(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority runs to the first '/', '?', '#' or whitespace.
        let end = tail
            .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
        // The path, then the query with its values hidden.
        let stop = rest
            .find(|c: char| c == '?' || c.is_whitespace())
            .unwrap_or(rest.len());
        out.push_str(&rest[..stop]);
        rest = &rest[stop..];
        if let Some(q) = rest.strip_prefix('?') {
            let qend = q
                .find(|c: char| c == '#' || c.is_whitespace())
                .unwrap_or(q.len());
            out.push('?');
            let pairs: Vec<String> = q[..qend]
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) => format!("{k}=***"),
                    None => kv.to_string(),
                })
                .collect();
            out.push_str(&pairs.join("&"));
            rest = &q[qend..];
        }
    }
    // A bare `user:password@host:port` (no scheme).
    if out.is_empty() {
        return match rest.rsplit_once('@') {
            Some((_, host)) if !rest.contains(char::is_whitespace) => format!("***@{host}"),
            _ => rest.to_string(),
        };
    }
    out.push_str(rest);
    out
}

/// KEDA's metric-name normalisation (`util.NormalizeString`): `/ . : % ( )` become `-`.
#[must_use]
pub fn normalize_metric_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if matches!(c, '/' | '.' | ':' | '%' | '(' | ')') {
                '-'
            } else {
                c
            }
        })
        .collect()
}

/// What a builder gets besides the trigger: the trust factory every client is built from.
#[derive(Clone, Debug)]
pub struct BuildContext {
    /// The process's one TLS context factory.
    pub trust: TrustFactory,
}
