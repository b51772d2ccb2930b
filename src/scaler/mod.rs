//! The scaler framework: the [`Scaler`] trait, trigger specs, typed parameters, and the
//! registry that maps trigger types to builders.

mod error;
#[cfg(feature = "http")]
pub mod httpclient;
pub mod params;
pub mod quantity;
mod registry;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use serde::Serialize;

pub use error::{ErrorKind, ScalerError};
pub use params::{Order, Param, Params, TLS_PARAMS};
pub use quantity::{format_quantity, parse_quantity, sanitize};
pub use registry::{Registry, ScalerBuilder};

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
