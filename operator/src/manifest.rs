//! Loading KEDA-format manifests: `ScaledObject`, `TriggerAuthentication`,
//! `ClusterTriggerAuthentication`, `Secret` and `ConfigMap`, several documents per file,
//! several files. Authentication parameters are resolved from Secrets, ConfigMaps and an
//! [`Env`] the caller passes in (the process environment, in file mode).
//!
//! A broken document is reported (file, document number, what is wrong) and the others
//! still load; an unknown kind is noted and ignored.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use trustscale::scaler::{MetricType, ObjectRef, TriggerSpec};
use trustscale::trust::Secret;

/// The environment that `...FromEnv` metadata, a TriggerAuthentication's `env` entries
/// and `KEDA_CLUSTER_OBJECT_NAMESPACE` are resolved from. Passed into loading, never read
/// inline, so that a caller decides whose variables a tenant's trigger may see.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Names only: values may be secrets.
        f.debug_set().entries(self.vars.keys()).finish()
    }
}

impl Env {
    /// A snapshot of this process's environment (its UTF-8 variables).
    #[must_use]
    pub fn process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    /// An environment holding exactly `pairs`.
    #[must_use]
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable's value.
    #[must_use]
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }
}

/// A trigger that could not be made into a [`TriggerSpec`]: its metadata or its
/// authentication could not be resolved.
#[derive(Clone, Debug, thiserror::Error, Serialize)]
#[error("{trigger}: {message}")]
pub struct TriggerError {
    /// The trigger (`namespace/name#index (type)`).
    pub trigger: String,
    /// Its type, as written.
    #[serde(rename = "type")]
    pub type_name: String,
    /// The parameter or field it is about, when it is about one.
    pub parameter: Option<String>,
    /// What is wrong (never a secret's value).
    pub message: String,
    /// Whether the trigger itself is wrong or only something it refers to is missing.
    #[serde(skip)]
    pub cause: TriggerErrorCause,
}

/// What a [`TriggerError`] is about.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TriggerErrorCause {
    /// The trigger as written is wrong.
    #[default]
    Invalid,
    /// Something it refers to (a TriggerAuthentication, a Secret or one of its keys, a
    /// ConfigMap key, an environment variable) is not there, or not yet: GitOps tools
    /// apply objects in any order.
    Unresolved,
}

impl TriggerError {
    fn new(label: &str, type_name: &str, parameter: &str, message: impl fmt::Display) -> Self {
        TriggerError {
            trigger: label.to_string(),
            type_name: type_name.to_string(),
            parameter: Some(parameter.to_string()),
            message: format!("parameter {parameter}: {message}"),
            cause: TriggerErrorCause::Invalid,
        }
    }
}

/// The namespace where cluster-scoped trigger authentications find their Secrets
/// (`KEDA_CLUSTER_OBJECT_NAMESPACE`, default `keda`).
pub const CLUSTER_OBJECT_NAMESPACE_ENV: &str = "KEDA_CLUSTER_OBJECT_NAMESPACE";

/// A document that could not be loaded.
#[derive(Clone, Debug, Serialize, thiserror::Error)]
#[error("{}", self.describe())]
pub struct LoadProblem {
    /// The file.
    pub file: PathBuf,
    /// The document's position in the file (1-based); 0 for the whole file.
    pub document: usize,
    /// What is wrong.
    pub message: String,
}

impl LoadProblem {
    fn describe(&self) -> String {
        if self.document == 0 {
            format!("{}: {}", self.file.display(), self.message)
        } else {
            format!(
                "{} (document {}): {}",
                self.file.display(),
                self.document,
                self.message
            )
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
struct ObjectMeta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "creationTimestamp")]
    creation_timestamp: Option<serde_yaml_ng::Value>,
}

/// `scaleTargetRef`.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// Target name.
    pub name: String,
    /// Target kind (Deployment when absent).
    #[serde(default)]
    pub kind: Option<String>,
    /// Target API version.
    #[serde(default)]
    pub api_version: Option<String>,
    /// The container of the target's pod template whose environment `...FromEnv`
    /// parameters read (the first container when absent).
    #[serde(default)]
    pub env_source_container_name: Option<String>,
}

impl ScaleTargetRef {
    /// The target's API version (`apps/v1` when absent).
    #[must_use]
    pub fn api_version(&self) -> &str {
        self.api_version
            .as_deref()
            .filter(|v| !v.is_empty())
            .unwrap_or("apps/v1")
    }

    /// The target's kind (`Deployment` when absent).
    #[must_use]
    pub fn kind(&self) -> &str {
        self.kind
            .as_deref()
            .filter(|v| !v.is_empty())
            .unwrap_or("Deployment")
    }

    /// Whether `other` names the same workload.
    #[must_use]
    pub fn same_target(&self, other: &ScaleTargetRef) -> bool {
        self.name == other.name
            && self.kind() == other.kind()
            && self.api_version().split('/').next() == other.api_version().split('/').next()
    }
}

/// `advanced`: what trustscale uses of it, and the rest kept as written.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Advanced {
    /// Scale the target back to the replicas it had before the ScaledObject when the
    /// ScaledObject is deleted.
    #[serde(default)]
    pub restore_to_original_replica_count: bool,
    /// Passed into the HPA.
    #[serde(default)]
    pub horizontal_pod_autoscaler_config: Option<HpaConfig>,
    /// The other fields of KEDA's schema (`scalingModifiers`, ...), kept, not used.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `advanced.horizontalPodAutoscalerConfig`.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HpaConfig {
    /// The HPA's name (`keda-hpa-{name}` when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// The HPA's `spec.behavior`, as written.
    #[serde(default)]
    pub behavior: Option<serde_json::Value>,
}

/// A `cpu` or `memory` trigger: it becomes an HPA Resource metric and is never polled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceTrigger {
    /// Its position among the triggers.
    pub index: usize,
    /// `cpu` or `memory`.
    pub resource: String,
    /// `Utilization` or `AverageValue`.
    pub metric_type: String,
    /// The target, as written (a percentage or a quantity).
    pub value: String,
    /// The container it is measured on (a ContainerResource metric), if set.
    pub container_name: Option<String>,
}

/// `fallback`.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// Consecutive failures before the fallback replicas are used.
    pub failure_threshold: u32,
    /// Replicas to use then.
    pub replicas: u32,
}

/// `authenticationRef`.
#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize, PartialEq, Eq, Hash)]
pub struct AuthRef {
    /// The authentication's name.
    pub name: String,
    /// `TriggerAuthentication` (default) or `ClusterTriggerAuthentication`.
    #[serde(default)]
    pub kind: Option<String>,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize, Hash)]
#[serde(rename_all = "camelCase")]
struct TriggerDef {
    #[serde(rename = "type")]
    type_name: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "BTreeMap<String, String>"))]
    metadata: BTreeMap<String, serde_yaml_ng::Value>,
    #[serde(default)]
    authentication_ref: Option<AuthRef>,
    #[serde(default)]
    metric_type: Option<String>,
    #[serde(default)]
    use_cached_metrics: Option<bool>,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ScaledObjectSpec {
    #[serde(default)]
    scale_target_ref: Option<ScaleTargetRef>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "Option<i32>"))]
    polling_interval: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "Option<i32>"))]
    cooldown_period: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "Option<i32>"))]
    initial_cooldown_period: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "Option<i32>"))]
    min_replica_count: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "Option<i32>"))]
    max_replica_count: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    #[cfg_attr(test, schemars(with = "Option<i32>"))]
    idle_replica_count: Option<serde_yaml_ng::Value>,
    #[serde(default)]
    fallback: Option<RawFallback>,
    #[serde(default)]
    advanced: Option<Advanced>,
    triggers: Vec<TriggerDef>,
    /// The other fields of KEDA's schema, kept as written.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFallback {
    #[cfg_attr(test, schemars(with = "i32"))]
    failure_threshold: serde_yaml_ng::Value,
    #[cfg_attr(test, schemars(with = "i32"))]
    replicas: serde_yaml_ng::Value,
    /// The other fields of KEDA's schema (`behavior`), kept as written.
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

/// The numbers of a ScaledObject, checked: KEDA's schema makes them 32-bit integers.
#[derive(Clone, Debug)]
struct Numbers {
    polling_interval: u32,
    cooldown_period: u32,
    initial_cooldown_period: u32,
    min_replica_count: u32,
    max_replica_count: u32,
    idle_replica_count: Option<u32>,
    fallback: Option<Fallback>,
}

/// An integer field in `min..=i32::MAX` (KEDA's int32 fields), or an error naming it.
fn int_field(
    name: &str,
    value: Option<&serde_yaml_ng::Value>,
    min: u32,
) -> Result<Option<u32>, String> {
    let Some(value) = value else { return Ok(None) };
    if value.is_null() {
        return Ok(None);
    }
    let max = i32::MAX as u32;
    let out_of_range = || {
        format!(
            "spec.{name}: {} is out of range ({min} to {max})",
            show(value)
        )
    };
    match value {
        serde_yaml_ng::Value::Number(n) => match n.as_i64() {
            Some(i) if i >= i64::from(min) && i <= i64::from(max) => Ok(Some(i as u32)),
            _ if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() != 0.0) => Err(format!(
                "spec.{name}: {} is not a whole number",
                show(value)
            )),
            _ => Err(out_of_range()),
        },
        _ => Err(format!("spec.{name}: {} is not a number", show(value))),
    }
}

/// A `cpu` or `memory` trigger, checked as KEDA checks it.
fn resource_trigger(
    so: &ObjectRef,
    index: usize,
    def: &TriggerDef,
) -> Result<ResourceTrigger, TriggerError> {
    let label = format!("{so}#{index} ({})", def.type_name);
    let error = |parameter: &str, message: String| {
        TriggerError::new(&label, &def.type_name, parameter, message)
    };
    let get = |k: &str| def.metadata.get(k).and_then(scalar_to_string);
    // `metadata.type` is the older spelling of `metricType`.
    let metric_type = def
        .metric_type
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| get("type"))
        .unwrap_or_else(|| "Utilization".into());
    if !matches!(metric_type.as_str(), "Utilization" | "AverageValue") {
        return Err(error(
            "metricType",
            format!("{metric_type:?} is not one of: Utilization, AverageValue"),
        ));
    }
    let value = get("value").ok_or_else(|| error("value", "is required".into()))?;
    let valid = if metric_type == "Utilization" {
        value.parse::<i32>().is_ok_and(|v| v > 0)
    } else {
        !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-'))
    };
    if !valid {
        let shown: String = value.chars().take(40).collect();
        return Err(error(
            "value",
            format!("{shown:?} is not a valid target for {metric_type}"),
        ));
    }
    Ok(ResourceTrigger {
        index,
        resource: def.type_name.clone(),
        metric_type,
        value,
        container_name: get("containerName").filter(|c| !c.is_empty()),
    })
}

/// A scalar for a message, cut short.
fn show(value: &serde_yaml_ng::Value) -> String {
    let text = scalar_to_string(value).unwrap_or_else(|| "a collection".into());
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

impl ScaledObjectSpec {
    fn numbers(&self) -> Result<Numbers, String> {
        let polling_interval = int_field("pollingInterval", self.polling_interval.as_ref(), 1)?;
        let min_replica_count = int_field("minReplicaCount", self.min_replica_count.as_ref(), 0)?;
        let max_replica_count = int_field("maxReplicaCount", self.max_replica_count.as_ref(), 0)?;
        let fallback = match &self.fallback {
            None => None,
            Some(f) => Some(Fallback {
                failure_threshold: int_field(
                    "fallback.failureThreshold",
                    Some(&f.failure_threshold),
                    0,
                )?
                .unwrap_or(0),
                replicas: int_field("fallback.replicas", Some(&f.replicas), 0)?.unwrap_or(0),
            }),
        };
        let numbers = Numbers {
            polling_interval: polling_interval.unwrap_or(30),
            cooldown_period: int_field("cooldownPeriod", self.cooldown_period.as_ref(), 0)?
                .unwrap_or(300),
            initial_cooldown_period: int_field(
                "initialCooldownPeriod",
                self.initial_cooldown_period.as_ref(),
                0,
            )?
            .unwrap_or(0),
            min_replica_count: min_replica_count.unwrap_or(0),
            max_replica_count: max_replica_count.unwrap_or(100),
            idle_replica_count: int_field("idleReplicaCount", self.idle_replica_count.as_ref(), 0)?,
            fallback,
        };
        if numbers.min_replica_count > numbers.max_replica_count {
            return Err(format!(
                "spec.minReplicaCount ({}) is greater than spec.maxReplicaCount ({})",
                numbers.min_replica_count, numbers.max_replica_count
            ));
        }
        if let Some(idle) = numbers.idle_replica_count
            && idle >= numbers.min_replica_count
        {
            // KEDA's rule: idle is the count below the HPA's range.
            return Err(format!(
                "spec.idleReplicaCount ({idle}) must be less than spec.minReplicaCount ({})",
                numbers.min_replica_count
            ));
        }
        Ok(numbers)
    }
}

/// A ScaledObject, with KEDA's defaults applied.
#[derive(Clone, Debug)]
pub struct ScaledObject {
    /// A digest of everything that affects how it runs (spec, resolved auth), to tell
    /// whether a reload changed it.
    pub digest: [u8; 32],
    /// Namespace and name.
    pub id: ObjectRef,
    /// What it scales.
    pub scale_target_ref: Option<ScaleTargetRef>,
    /// Seconds between polls (30).
    pub polling_interval: u64,
    /// Seconds of inactivity before scaling to zero (300).
    pub cooldown_period: u64,
    /// Seconds after creation before the first scale to zero (0).
    pub initial_cooldown_period: u64,
    /// Minimum replicas (0).
    pub min_replica_count: u32,
    /// Maximum replicas (100).
    pub max_replica_count: u32,
    /// Replicas when idle, if set.
    pub idle_replica_count: Option<u32>,
    /// Fallback on repeated failures.
    pub fallback: Option<Fallback>,
    /// Its triggers, auth resolved; a trigger whose auth could not be resolved is an error.
    pub triggers: Vec<Result<TriggerSpec, TriggerError>>,
    /// The type of each trigger, as written.
    pub trigger_types: Vec<String>,
    /// Where it came from.
    pub source: PathBuf,
    /// `metadata.uid`, when it came from a cluster.
    pub uid: Option<String>,
    /// `metadata.annotations` (`autoscaling.keda.sh/paused`, ...).
    pub annotations: BTreeMap<String, String>,
    /// `metadata.creationTimestamp`, when it came from a cluster.
    pub created: Option<std::time::SystemTime>,
    /// `spec.advanced`.
    pub advanced: Advanced,
    /// Its `cpu` and `memory` triggers (never polled: the HPA measures them).
    pub resource_triggers: Vec<ResourceTrigger>,
    /// The position among all triggers of each of [`ScaledObject::triggers`].
    pub trigger_indexes: Vec<usize>,
    /// The fields of `spec` this tool does not use (`fallback.behavior`,
    /// `advanced.scalingModifiers`, ...: paths below `spec`), kept as written.
    pub unused: BTreeMap<String, serde_json::Value>,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetRef {
    parameter: String,
    name: String,
    key: String,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvRef {
    parameter: String,
    name: String,
    #[serde(default)]
    container_name: Option<String>,
}

#[cfg_attr(test, derive(schemars::JsonSchema))]
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthSpec {
    #[serde(default)]
    secret_target_ref: Vec<TargetRef>,
    #[serde(default)]
    env: Vec<EnvRef>,
    #[serde(default)]
    config_map_target_ref: Vec<TargetRef>,
    /// The providers this tool does not support (vaults, pod identity, ...), kept as
    /// written (the webhook warns about them).
    #[serde(flatten)]
    other: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug)]
struct TriggerAuth {
    /// Where its Secrets and ConfigMaps are; `None` for a cluster-scoped one, whose
    /// namespace comes from `KEDA_CLUSTER_OBJECT_NAMESPACE` (default `keda`).
    namespace: Option<String>,
    spec: AuthSpec,
}

/// Everything loaded from a set of manifest files.
#[derive(Clone, Debug, Default)]
pub struct ManifestSet {
    raw_scaled_objects: Vec<(PathBuf, ObjectMeta, ScaledObjectSpec, Numbers)>,
    /// Where each object was first found (kind, namespace, name) → (file, document), to
    /// report a later duplicate.
    seen: HashMap<(String, String, String), (PathBuf, usize)>,
    trigger_auths: HashMap<(String, String), TriggerAuth>,
    cluster_trigger_auths: HashMap<String, TriggerAuth>,
    secrets: HashMap<(String, String), BTreeMap<String, Vec<u8>>>,
    config_maps: HashMap<(String, String), BTreeMap<String, String>>,
    /// In cluster mode, each ScaledObject's scale target's containers and their
    /// environments: `env` parameters resolve from these, never from the caller's
    /// environment. `None`: file mode (the caller's environment).
    pod_env: Option<HashMap<ObjectRef, PodEnv>>,
    /// Documents that could not be loaded.
    pub problems: Vec<LoadProblem>,
    /// Documents of kinds this tool does not use (ignored).
    pub ignored: Vec<String>,
    /// Whether a folder could not be listed (so this set may lack what it holds).
    pub listing_failed: bool,
}

/// The containers of a scale target's pod template and their environments, as the
/// kubelet would give them (`env` values and the Secrets and ConfigMaps they name).
#[derive(Clone, Debug, Default)]
pub struct PodEnv {
    /// (container name, its environment), in the template's order.
    pub containers: Vec<(String, Env)>,
    /// Why the target's environment could not be read, if it could not.
    pub error: Option<String>,
}

impl PodEnv {
    fn container(&self, name: Option<&str>) -> Result<&Env, String> {
        if let Some(e) = &self.error {
            return Err(e.clone());
        }
        match name.filter(|n| !n.is_empty()) {
            Some(name) => self
                .containers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, env)| env)
                .ok_or_else(|| format!("the scale target has no container {name:?}")),
            None => self
                .containers
                .first()
                .map(|(_, env)| env)
                .ok_or_else(|| "the scale target's pod template has no container".to_string()),
        }
    }
}

/// The Secrets and ConfigMaps a set's ScaledObjects refer to through their
/// TriggerAuthentications: (namespace, name), each once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct References {
    /// Secrets.
    pub secrets: std::collections::BTreeSet<(String, String)>,
    /// ConfigMaps.
    pub config_maps: std::collections::BTreeSet<(String, String)>,
}

/// Lists the manifest files under `paths` (files as given; folders: their `.yaml`/`.yml`
/// files, sorted).
pub fn manifest_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<LoadProblem>) {
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for path in paths {
        if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut found: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                                && !p
                                    .file_name()
                                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                        })
                        .collect();
                    found.sort();
                    // A manifest that is not a regular file (a FIFO, a device, a folder)
                    // is reported by the reader, never skipped in silence.
                    files.extend(found);
                }
                Err(e) => problems.push(LoadProblem {
                    file: path.clone(),
                    document: 0,
                    message: format!("cannot list: {e}"),
                }),
            }
        } else {
            files.push(path.clone());
        }
    }
    (files, problems)
}

/// Loads every manifest under `paths`.
#[must_use]
pub fn load(paths: &[PathBuf]) -> ManifestSet {
    let (files, problems) = manifest_files(paths);
    let mut set = ManifestSet {
        listing_failed: !problems.is_empty(),
        problems,
        ..Default::default()
    };
    for file in files {
        let read = trustscale::trust::material::read_capped(&file, MAX_MANIFEST_BYTES)
            .map_err(|e| format!("cannot read: {e}"))
            .and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| "cannot read: not UTF-8 text".to_string())
            });
        match read {
            Ok(text) => set.add_text(&file, &text),
            Err(message) => set.problems.push(LoadProblem {
                file,
                document: 0,
                message,
            }),
        }
    }
    set
}

/// Triggers one ScaledObject may have (each is a client and a poll).
pub const MAX_TRIGGERS: usize = 100;

/// The largest manifest file read (a Kubernetes object is at most about 1.5 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;
/// The deepest nesting of flow collections (`[`, `{`) a document may have.
pub const MAX_FLOW_DEPTH: usize = 64;
/// The deepest indentation (in columns) a document may have.
pub const MAX_INDENT: usize = 512;

/// Splits a YAML stream into its documents: at `---` (or `...`) at the start of a line.
/// Such a line can only be a document marker: inside a block scalar it would have to be
/// indented. Returns each document's text with its 1-based number.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut started = false;
    let is_marker = |line: &str, m: &str| {
        line.strip_prefix(m)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '#']))
    };
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        if is_marker(bare, "---") {
            // `%YAML` and `%TAG` directives belong to the document their `---` opens.
            let directive = |l: &str| {
                let mut words = l.split_whitespace();
                match (words.next(), words.next(), words.next(), words.next()) {
                    (Some("%YAML"), Some(v), None, None) => v
                        .strip_prefix("1.")
                        .is_some_and(|m| m.parse::<u8>().is_ok()),
                    (Some("%TAG"), Some(h), Some(_), None) => {
                        h.starts_with('!') && h.ends_with('!')
                    }
                    _ => false,
                }
            };
            let directives_only = current.lines().any(directive)
                && current.lines().all(|l| {
                    let t = l.trim();
                    t.is_empty() || t.starts_with('#') || directive(l)
                });
            if directives_only {
                current.push_str(bare);
                current.push('\n');
                started = true;
                continue;
            }
            if started || !current.trim().is_empty() {
                docs.push(std::mem::take(&mut current));
            }
            started = true;
            // `--- {a: 1}` holds content on the marker line.
            current.push_str(&bare[3..]);
            current.push('\n');
            continue;
        }
        if is_marker(bare, "...") {
            docs.push(std::mem::take(&mut current));
            started = false;
            continue;
        }
        current.push_str(line);
    }
    if started || !current.trim().is_empty() {
        docs.push(current);
    }
    docs.into_iter()
        .enumerate()
        .map(|(i, d)| (i + 1, d))
        .collect()
}

/// Refuses a document nested deeper than [`MAX_FLOW_DEPTH`] or indented deeper than
/// [`MAX_INDENT`]: parsing those costs time that grows faster than their size.
fn check_depth(doc: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut quote: Option<char> = None;
    let mut prev = ' ';
    // The last character that was not a space, on this line: a quote opens a quoted
    // scalar only where a scalar can start (`it's` in a plain scalar is an apostrophe).
    let mut last;
    for line in doc.lines() {
        last = '\n';
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent > MAX_INDENT && quote.is_none() {
            return Err(format!(
                "nested too deeply: indented {indent} columns (at most {MAX_INDENT})"
            ));
        }
        let mut escaped = false;
        for c in line.chars() {
            match (quote, c) {
                (Some('"'), '\\') if !escaped => {
                    escaped = true;
                    prev = c;
                    continue;
                }
                (Some('"'), '"') if !escaped => quote = None,
                (Some('\''), '\'') => quote = None,
                (Some(_), _) => {}
                (None, '"' | '\'') if matches!(last, '\n' | ':' | '-' | '[' | '{' | ',' | '?') => {
                    quote = Some(c)
                }
                (None, '#') if prev == ' ' || prev == '\t' => break,
                (None, '[' | '{') => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(format!(
                            "nested too deeply: more than {MAX_FLOW_DEPTH} levels of [ and {{"
                        ));
                    }
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            escaped = false;
            prev = c;
            if !c.is_whitespace() {
                last = c;
            }
        }
        prev = ' ';
    }
    Ok(())
}

fn scalar_to_string(v: &serde_yaml_ng::Value) -> Option<String> {
    match v {
        serde_yaml_ng::Value::String(s) => Some(s.clone()),
        serde_yaml_ng::Value::Bool(b) => Some(b.to_string()),
        serde_yaml_ng::Value::Number(n) => Some(n.to_string()),
        serde_yaml_ng::Value::Null => Some(String::new()),
        _ => None,
    }
}

impl ScaledObject {
    /// The digest of its configuration.
    #[must_use]
    pub fn fingerprint(&self) -> [u8; 32] {
        self.digest
    }

    /// The type of trigger `index`, as written (also when it could not be resolved).
    #[must_use]
    pub fn trigger_type(&self, index: usize) -> &str {
        self.trigger_types.get(index).map_or("", String::as_str)
    }
}

impl ManifestSet {
    /// Adds the documents of one file's text.
    ///
    /// Each document stands alone: one that cannot be parsed or used is reported (file,
    /// document number, what is wrong) and the others still load.
    pub fn add_text(&mut self, file: &Path, text: &str) {
        for (n, doc) in documents(text) {
            let problem = |message: String| LoadProblem {
                file: file.to_path_buf(),
                document: n,
                message,
            };
            if let Err(message) = check_depth(&doc) {
                self.problems.push(problem(message));
                continue;
            }
            let value = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&doc) {
                Ok(serde_yaml_ng::Value::Null) => continue,
                Ok(v) => v,
                Err(e) => {
                    self.problems.push(problem(format!("not valid YAML: {e}")));
                    continue;
                }
            };
            if let Err(message) = self.add_value(file, n, value) {
                self.problems.push(problem(message));
            }
        }
    }

    /// Adds one object read from a cluster (`origin` names it in messages). A problem
    /// is reported as a document's would be, and returned.
    pub fn add_object(&mut self, origin: &Path, value: &serde_json::Value) -> Option<String> {
        let result = serde_yaml_ng::to_value(value)
            .map_err(|e| format!("cannot be read: {e}"))
            .and_then(|v| self.add_value(origin, 0, v));
        let message = result.err()?;
        self.problems.push(LoadProblem {
            file: origin.to_path_buf(),
            document: 0,
            message: message.clone(),
        });
        Some(message)
    }

    /// Adds a Secret's data (read from a cluster).
    pub fn add_secret(&mut self, namespace: &str, name: &str, data: BTreeMap<String, Vec<u8>>) {
        self.secrets
            .insert((namespace.to_string(), name.to_string()), data);
    }

    /// Adds a ConfigMap's data (read from a cluster).
    pub fn add_config_map(&mut self, namespace: &str, name: &str, data: BTreeMap<String, String>) {
        self.config_maps
            .insert((namespace.to_string(), name.to_string()), data);
    }

    /// From now on, `env` parameters resolve from each ScaledObject's scale target's
    /// containers (cluster mode), never from the environment given to
    /// [`ManifestSet::scaled_objects`]; a ScaledObject without an entry resolves none.
    pub fn use_pod_env(&mut self, envs: HashMap<ObjectRef, PodEnv>) {
        self.pod_env = Some(envs);
    }

    /// Each ScaledObject's scale target (those that name one).
    #[must_use]
    pub fn scale_targets(&self) -> Vec<(ObjectRef, ScaleTargetRef)> {
        self.raw_scaled_objects
            .iter()
            .filter_map(|(_, meta, spec, _)| {
                let target = spec.scale_target_ref.clone()?;
                Some((
                    ObjectRef {
                        namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
                        name: meta.name.clone(),
                    },
                    target,
                ))
            })
            .collect()
    }

    /// The Secrets and ConfigMaps the ScaledObjects' TriggerAuthentications refer to;
    /// a cluster-scoped one's are in `KEDA_CLUSTER_OBJECT_NAMESPACE` of `env`.
    #[must_use]
    pub fn references(&self, env: &Env) -> References {
        let mut out = References::default();
        let cluster_ns = env
            .get(CLUSTER_OBJECT_NAMESPACE_ENV)
            .filter(|v| !v.is_empty())
            .unwrap_or("keda")
            .to_string();
        for (_, meta, spec, _) in &self.raw_scaled_objects {
            let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
            for t in &spec.triggers {
                let Some(auth) = &t.authentication_ref else {
                    continue;
                };
                let ta = match auth.kind.as_deref() {
                    Some("ClusterTriggerAuthentication") => {
                        self.cluster_trigger_auths.get(&auth.name)
                    }
                    _ => self.trigger_auths.get(&(ns.clone(), auth.name.clone())),
                };
                let Some(ta) = ta else { continue };
                let at = ta.namespace.clone().unwrap_or_else(|| cluster_ns.clone());
                for r in &ta.spec.secret_target_ref {
                    out.secrets.insert((at.clone(), r.name.clone()));
                }
                for r in &ta.spec.config_map_target_ref {
                    out.config_maps.insert((at.clone(), r.name.clone()));
                }
            }
        }
        out
    }

    /// The environment `env` parameters of ScaledObject `so` resolve from: in file mode
    /// `process`; in cluster mode the scale target's container `container` (its
    /// first container when `None`).
    fn env_of<'a>(
        &'a self,
        so: &ObjectRef,
        container: Option<&str>,
        process: &'a Env,
    ) -> Result<&'a Env, String> {
        match &self.pod_env {
            None => Ok(process),
            Some(envs) => envs
                .get(so)
                .ok_or_else(|| "the scale target's environment has not been read".to_string())?
                .container(container),
        }
    }

    /// Remembers where an object was found; a later one with the same kind, namespace and
    /// name is refused, naming both places (the first one found, in path order, stays).
    fn claim(
        &mut self,
        kind: &str,
        ns: &str,
        name: &str,
        file: &Path,
        doc: usize,
    ) -> Result<(), String> {
        let key = (kind.to_string(), ns.to_string(), name.to_string());
        if let Some((first, first_doc)) = self.seen.get(&key) {
            return Err(format!(
                "{kind} {ns}/{name} is defined again; the first definition ({} document {first_doc}) stays, this one is ignored",
                first.display()
            ));
        }
        self.seen.insert(key, (file.to_path_buf(), doc));
        Ok(())
    }

    fn add_value(
        &mut self,
        file: &Path,
        doc: usize,
        value: serde_yaml_ng::Value,
    ) -> Result<(), String> {
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or_default()
            .to_string();
        let meta: ObjectMeta = value
            .get("metadata")
            .cloned()
            .map(serde_yaml_ng::from_value)
            .transpose()
            .map_err(|e| format!("{kind}: bad metadata: {e}"))?
            .ok_or_else(|| format!("{kind}: metadata.name is required"))?;
        if meta.name.is_empty() {
            return Err(format!("{kind}: metadata.name is required"));
        }
        let ns = meta.namespace.clone().unwrap_or_else(|| "default".into());
        let what = format!("{kind} {ns}/{}", meta.name);
        let spec = || {
            value
                .get("spec")
                .cloned()
                .ok_or_else(|| format!("{what}: spec is required"))
        };
        let claim_ns = if kind == "ClusterTriggerAuthentication" {
            ""
        } else {
            ns.as_str()
        };
        if matches!(
            kind.as_str(),
            "ScaledObject"
                | "TriggerAuthentication"
                | "ClusterTriggerAuthentication"
                | "Secret"
                | "ConfigMap"
        ) {
            // Checked before anything is parsed, so that a broken duplicate is still one.
            self.claim(&kind, claim_ns, &meta.name, file, doc)?;
        }
        match kind.as_str() {
            "ScaledObject" => {
                let spec: ScaledObjectSpec =
                    serde_yaml_ng::from_value(spec()?).map_err(|e| format!("{what}: {e}"))?;
                if spec.triggers.len() > MAX_TRIGGERS {
                    return Err(format!(
                        "{what}: spec.triggers: {} triggers; at most {MAX_TRIGGERS} are run",
                        spec.triggers.len()
                    ));
                }
                let numbers = spec.numbers().map_err(|e| format!("{what}: {e}"))?;
                self.raw_scaled_objects
                    .push((file.to_path_buf(), meta, spec, numbers));
            }
            "TriggerAuthentication" => {
                let spec: AuthSpec =
                    serde_yaml_ng::from_value(spec()?).map_err(|e| format!("{what}: {e}"))?;
                self.trigger_auths.insert(
                    (ns.clone(), meta.name),
                    TriggerAuth {
                        namespace: Some(ns),
                        spec,
                    },
                );
            }
            "ClusterTriggerAuthentication" => {
                let spec: AuthSpec =
                    serde_yaml_ng::from_value(spec()?).map_err(|e| format!("{what}: {e}"))?;
                self.cluster_trigger_auths.insert(
                    meta.name,
                    TriggerAuth {
                        namespace: None,
                        spec,
                    },
                );
            }
            "Secret" => {
                let mut data = BTreeMap::new();
                if let Some(serde_yaml_ng::Value::Mapping(m)) = value.get("data") {
                    for (k, v) in m {
                        let (Some(k), Some(v)) = (k.as_str(), v.as_str()) else {
                            return Err(format!("{what}: data values must be base64 strings"));
                        };
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v.split_whitespace().collect::<String>())
                            .map_err(|e| format!("{what}: data.{k} is not base64: {e}"))?;
                        data.insert(k.to_string(), bytes);
                    }
                }
                if let Some(serde_yaml_ng::Value::Mapping(m)) = value.get("stringData") {
                    for (k, v) in m {
                        let (Some(k), Some(v)) = (k.as_str(), scalar_to_string(v)) else {
                            return Err(format!("{what}: stringData values must be strings"));
                        };
                        data.insert(k.to_string(), v.into_bytes());
                    }
                }
                self.secrets.insert((ns, meta.name), data);
            }
            "ConfigMap" => {
                let mut data = BTreeMap::new();
                if let Some(serde_yaml_ng::Value::Mapping(m)) = value.get("data") {
                    for (k, v) in m {
                        if let (Some(k), Some(v)) = (k.as_str(), scalar_to_string(v)) {
                            data.insert(k.to_string(), v);
                        }
                    }
                }
                self.config_maps.insert((ns, meta.name), data);
            }
            "" => return Err("not a Kubernetes object (no `kind`)".into()),
            other => {
                tracing::info!(file = %file.display(), kind = other, name = %meta.name, "ignoring a document of a kind this tool does not use");
                self.ignored.push(what);
            }
        }
        Ok(())
    }

    /// The ScaledObjects, with every trigger's authentication resolved (Secrets and
    /// ConfigMaps of this set, variables from `env`).
    #[must_use]
    pub fn scaled_objects(&self, env: &Env) -> Vec<ScaledObject> {
        let mut out: Vec<ScaledObject> = self
            .raw_scaled_objects
            .iter()
            .map(|(file, meta, spec, numbers)| self.assemble(file, meta, spec, numbers, env))
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// A ScaledObject that is not part of this set (one under admission review), its
    /// triggers' authentication resolved against this set's objects.
    pub fn review_scaled_object(
        &self,
        origin: &Path,
        value: serde_yaml_ng::Value,
        env: &Env,
    ) -> Result<ScaledObject, String> {
        let meta: ObjectMeta = value
            .get("metadata")
            .cloned()
            .map(serde_yaml_ng::from_value)
            .transpose()
            .map_err(|e| format!("bad metadata: {e}"))?
            .filter(|m: &ObjectMeta| !m.name.is_empty())
            .ok_or_else(|| "metadata.name is required".to_string())?;
        let spec: ScaledObjectSpec = serde_yaml_ng::from_value(
            value
                .get("spec")
                .cloned()
                .ok_or_else(|| "spec is required".to_string())?,
        )
        .map_err(|e| format!("spec: {e}"))?;
        let numbers = spec.numbers()?;
        Ok(self.assemble(origin, &meta, &spec, &numbers, env))
    }

    /// What is wrong with a TriggerAuthentication or ClusterTriggerAuthentication under
    /// admission review (`Err`: deny), and what it refers to that this set lacks (the
    /// warnings).
    pub fn review_trigger_auth(
        &self,
        cluster: bool,
        value: &serde_yaml_ng::Value,
        env: &Env,
    ) -> Result<Vec<String>, String> {
        let spec: AuthSpec = serde_yaml_ng::from_value(
            value
                .get("spec")
                .cloned()
                .ok_or_else(|| "spec is required".to_string())?,
        )
        .map_err(|e| format!("spec: {e}"))?;
        let namespace = if cluster {
            env.get(CLUSTER_OBJECT_NAMESPACE_ENV)
                .filter(|v| !v.is_empty())
                .unwrap_or("keda")
                .to_string()
        } else {
            value
                .get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(|n| n.as_str())
                .unwrap_or("default")
                .to_string()
        };
        let mut warnings = Vec::new();
        let mut parameters = std::collections::HashSet::new();
        let refs = spec
            .secret_target_ref
            .iter()
            .chain(&spec.config_map_target_ref)
            .map(|r| (&r.parameter, &r.name))
            .chain(spec.env.iter().map(|r| (&r.parameter, &r.name)));
        for (parameter, name) in refs {
            if parameter.is_empty() || name.is_empty() {
                return Err("every reference needs a parameter and a name".into());
            }
            if !parameters.insert(parameter.clone()) {
                return Err(format!("parameter {parameter} is given twice"));
            }
        }
        for r in &spec.secret_target_ref {
            match self.secrets.get(&(namespace.clone(), r.name.clone())) {
                None => warnings.push(format!(
                    "parameter {}: Secret {namespace}/{} not found (yet)",
                    r.parameter, r.name
                )),
                Some(s) if !s.contains_key(&r.key) => warnings.push(format!(
                    "parameter {}: Secret {namespace}/{} has no key {:?} (yet)",
                    r.parameter, r.name, r.key
                )),
                Some(_) => {}
            }
        }
        for r in &spec.config_map_target_ref {
            if !self
                .config_maps
                .get(&(namespace.clone(), r.name.clone()))
                .is_some_and(|m| m.contains_key(&r.key))
            {
                warnings.push(format!(
                    "parameter {}: ConfigMap {namespace}/{} key {:?} not found (yet)",
                    r.parameter, r.name, r.key
                ));
            }
        }
        for key in spec.other.keys() {
            warnings.push(format!(
                "spec.{key} is not supported by trustscale and is ignored"
            ));
        }
        Ok(warnings)
    }

    fn assemble(
        &self,
        file: &Path,
        meta: &ObjectMeta,
        spec: &ScaledObjectSpec,
        numbers: &Numbers,
        env: &Env,
    ) -> ScaledObject {
        let id = ObjectRef {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".into()),
            name: meta.name.clone(),
        };
        let container = spec
            .scale_target_ref
            .as_ref()
            .and_then(|t| t.env_source_container_name.as_deref());
        let mut triggers: Vec<Result<TriggerSpec, TriggerError>> = Vec::new();
        let mut trigger_types = Vec::new();
        let mut trigger_indexes = Vec::new();
        let mut resource_triggers = Vec::new();
        for (i, t) in spec.triggers.iter().enumerate() {
            if matches!(t.type_name.as_str(), "cpu" | "memory") {
                match resource_trigger(&id, i, t) {
                    Ok(r) => {
                        resource_triggers.push(r);
                        continue;
                    }
                    Err(e) => triggers.push(Err(e)),
                }
            } else {
                triggers.push(self.trigger(&id, i, t, env, container));
            }
            trigger_types.push(t.type_name.clone());
            trigger_indexes.push(i);
        }
        let digest = {
            use sha2::{Digest, Sha256};
            let mut h = Sha256::new();
            h.update(format!("{spec:?}").as_bytes());
            for t in &triggers {
                match t {
                    Ok(t) => {
                        for (k, v) in &t.auth {
                            h.update(k.as_bytes());
                            h.update([0]);
                            h.update(Sha256::digest(v.expose().as_bytes()));
                        }
                        for (k, v) in &t.resolved_env {
                            h.update(k.as_bytes());
                            h.update([1]);
                            h.update(Sha256::digest(v.as_bytes()));
                        }
                    }
                    Err(e) => h.update(e.message.as_bytes()),
                }
            }
            h.finalize().into()
        };
        ScaledObject {
            digest,
            id,
            scale_target_ref: spec.scale_target_ref.clone(),
            polling_interval: u64::from(numbers.polling_interval),
            cooldown_period: u64::from(numbers.cooldown_period),
            initial_cooldown_period: u64::from(numbers.initial_cooldown_period),
            min_replica_count: numbers.min_replica_count,
            max_replica_count: numbers.max_replica_count,
            idle_replica_count: numbers.idle_replica_count,
            fallback: numbers.fallback,
            triggers,
            trigger_types,
            source: file.to_path_buf(),
            uid: meta.uid.clone(),
            annotations: meta.annotations.clone().unwrap_or_default(),
            created: meta
                .creation_timestamp
                .as_ref()
                .and_then(|t| t.as_str())
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok()),
            advanced: spec.advanced.clone().unwrap_or_default(),
            resource_triggers,
            trigger_indexes,
            unused: {
                let mut unused = spec.other.clone();
                for (k, v) in spec.fallback.iter().flat_map(|f| &f.other) {
                    unused.insert(format!("fallback.{k}"), v.clone());
                }
                for (k, v) in spec.advanced.iter().flat_map(|a| &a.other) {
                    unused.insert(format!("advanced.{k}"), v.clone());
                }
                unused
            },
        }
    }

    fn trigger(
        &self,
        so: &ObjectRef,
        index: usize,
        def: &TriggerDef,
        env: &Env,
        container: Option<&str>,
    ) -> Result<TriggerSpec, TriggerError> {
        let mut metadata = BTreeMap::new();
        let type_name = def.type_name.as_str();
        let label = format!("{so}#{index} ({type_name})");
        let error = |parameter: &str, message: String| {
            TriggerError::new(&label, type_name, parameter, message)
        };
        for (k, v) in &def.metadata {
            let v = scalar_to_string(v)
                .ok_or_else(|| error(k, "metadata values must be strings".into()))?;
            metadata.insert(k.clone(), v);
        }
        let mut spec = TriggerSpec::new(so.clone(), index, type_name, metadata);
        spec.name = def.name.clone();
        spec.metric_type = match def.metric_type.as_deref() {
            None | Some("" | "AverageValue") => MetricType::AverageValue,
            Some("Value") => MetricType::Value,
            Some(other) => {
                return Err(error(
                    "metricType",
                    format!(
                        "{other:?} is not one of: AverageValue, Value (Utilization is for CPU/memory triggers)"
                    ),
                ));
            }
        };
        let _ = def.use_cached_metrics;
        for (k, var) in &spec.metadata {
            if k.ends_with("FromEnv")
                && let Ok(env) = self.env_of(so, container, env)
                && let Some(v) = env.get(var)
            {
                spec.resolved_env.insert(var.clone(), v.to_string());
            }
        }
        if let Some(auth) = &def.authentication_ref {
            self.resolve_auth(so, auth, &mut spec, env, container)
                .map_err(|(parameter, message)| {
                    let mut e = error(&parameter, message);
                    if parameter != "authenticationRef.kind" {
                        e.cause = TriggerErrorCause::Unresolved;
                    }
                    e
                })?;
        }
        Ok(spec)
    }

    /// Resolves a trigger's authentication into `spec.auth`; an error is (the parameter
    /// or field, what is wrong).
    fn resolve_auth(
        &self,
        so: &ObjectRef,
        auth: &AuthRef,
        spec: &mut TriggerSpec,
        env: &Env,
        container: Option<&str>,
    ) -> Result<(), (String, String)> {
        let cluster = match auth.kind.as_deref() {
            None | Some("" | "TriggerAuthentication") => false,
            Some("ClusterTriggerAuthentication") => true,
            Some(other) => {
                return Err((
                    "authenticationRef.kind".into(),
                    format!(
                        "{other:?} is not TriggerAuthentication or ClusterTriggerAuthentication"
                    ),
                ));
            }
        };
        let ta = if cluster {
            self.cluster_trigger_auths.get(&auth.name)
        } else {
            self.trigger_auths
                .get(&(so.namespace.clone(), auth.name.clone()))
        }
        .ok_or_else(|| {
            (
                "authenticationRef".to_string(),
                format!(
                    "{} {:?} not found{}",
                    if cluster {
                        "ClusterTriggerAuthentication"
                    } else {
                        "TriggerAuthentication"
                    },
                    auth.name,
                    if cluster {
                        String::new()
                    } else {
                        format!(" in namespace {}", so.namespace)
                    }
                ),
            )
        })?;
        let namespace = ta.namespace.clone().unwrap_or_else(|| {
            env.get(CLUSTER_OBJECT_NAMESPACE_ENV)
                .filter(|v| !v.is_empty())
                .unwrap_or("keda")
                .to_string()
        });
        for r in &ta.spec.secret_target_ref {
            let secret = self
                .secrets
                .get(&(namespace.clone(), r.name.clone()))
                .ok_or_else(|| {
                    (
                        r.parameter.clone(),
                        format!("Secret {namespace}/{} not found", r.name),
                    )
                })?;
            let value = secret.get(&r.key).ok_or_else(|| {
                (
                    r.parameter.clone(),
                    format!("Secret {namespace}/{} has no key {:?}", r.name, r.key),
                )
            })?;
            let text = String::from_utf8(value.clone()).map_err(|_| {
                (
                    r.parameter.clone(),
                    format!(
                        "Secret {namespace}/{} key {:?} is not UTF-8 text",
                        r.name, r.key
                    ),
                )
            })?;
            spec.auth.insert(r.parameter.clone(), Secret::new(text));
        }
        for r in &ta.spec.config_map_target_ref {
            let value = self
                .config_maps
                .get(&(namespace.clone(), r.name.clone()))
                .and_then(|m| m.get(&r.key))
                .ok_or_else(|| {
                    (
                        r.parameter.clone(),
                        format!("ConfigMap {namespace}/{} key {:?} not found", r.name, r.key),
                    )
                })?;
            spec.auth
                .insert(r.parameter.clone(), Secret::new(value.clone()));
        }
        for r in &ta.spec.env {
            let source = self
                .env_of(
                    so,
                    r.container_name
                        .as_deref()
                        .filter(|c| !c.is_empty())
                        .or(container),
                    env,
                )
                .map_err(|m| (r.parameter.clone(), m))?;
            let value = source.get(&r.name).ok_or_else(|| {
                (
                    r.parameter.clone(),
                    if self.pod_env.is_some() {
                        format!(
                            "environment variable {} is not set in the scale target's container",
                            r.name
                        )
                    } else {
                        format!("environment variable {} is not set", r.name)
                    },
                )
            })?;
            spec.auth
                .insert(r.parameter.clone(), Secret::new(value.to_string()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod schema {
    //! Our types' schema, generated (schemars), against the fields of KEDA's CRDs.
    use super::*;
    use serde_json::Value;

    /// The field paths a generated schema types, and those under which it keeps any
    /// field (a flattened map: `additionalProperties`).
    fn paths(root: &Value) -> (Vec<String>, Vec<String>) {
        fn resolve<'a>(root: &'a Value, mut s: &'a Value) -> &'a Value {
            loop {
                if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                    let name = r.rsplit('/').next().unwrap_or_default();
                    s = &root["$defs"][name];
                } else if let Some(alts) = s
                    .get("anyOf")
                    .or_else(|| s.get("oneOf"))
                    .and_then(Value::as_array)
                {
                    match alts
                        .iter()
                        .find(|a| a.get("type") != Some(&Value::from("null")))
                    {
                        Some(a) => s = a,
                        None => return s,
                    }
                } else if s.get("items").is_some() {
                    s = &s["items"];
                } else {
                    return s;
                }
            }
        }
        fn walk(
            root: &Value,
            s: &Value,
            path: &str,
            typed: &mut Vec<String>,
            open: &mut Vec<String>,
        ) {
            let s = resolve(root, s);
            if s.get("additionalProperties")
                .is_some_and(|a| a != &Value::Bool(false))
                && s.get("properties").is_some()
            {
                open.push(path.to_string());
            }
            for (k, v) in s
                .get("properties")
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
            {
                let p = format!("{path}.{k}");
                typed.push(p.clone());
                walk(root, v, &p, typed, open);
            }
        }
        let (mut typed, mut open) = (Vec::new(), Vec::new());
        walk(root, root, "spec", &mut typed, &mut open);
        (typed, open)
    }

    fn keda(text: &str) -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    }

    fn check(ours: &Value, fields: &str) {
        let (typed, open) = paths(ours);
        let keda = keda(fields);
        for f in &keda {
            // Typed, or the deepest of our fields it lies under keeps unknown fields.
            let deepest = std::iter::once("spec")
                .chain(typed.iter().map(String::as_str))
                .filter(|t| f.starts_with(&format!("{t}.")))
                .max_by_key(|t| t.len());
            let kept = typed.contains(f) || deepest.is_some_and(|d| open.iter().any(|o| o == d));
            assert!(
                kept,
                "KEDA's field {f} is neither typed nor kept by our schema"
            );
        }
        for t in &typed {
            assert!(
                keda.contains(t)
                    || keda
                        .iter()
                        .any(|k| t.starts_with(&format!("{k}.")) && k.ends_with("behavior")),
                "our schema has {t}, which KEDA's does not"
            );
        }
    }

    #[test]
    fn the_scaled_object_schema_types_or_keeps_every_field_keda_documents() {
        let ours = serde_json::to_value(schemars::schema_for!(ScaledObjectSpec)).unwrap();
        check(
            &ours,
            include_str!("../../tests/corpus/keda/scaledobject-spec-fields.txt"),
        );
        // The ones it uses are typed, not merely kept.
        let (typed, _) = paths(&ours);
        for f in [
            "spec.scaleTargetRef.envSourceContainerName",
            "spec.advanced.restoreToOriginalReplicaCount",
            "spec.advanced.horizontalPodAutoscalerConfig.behavior",
            "spec.fallback.failureThreshold",
            "spec.triggers.authenticationRef.kind",
            "spec.idleReplicaCount",
        ] {
            assert!(typed.iter().any(|t| t == f), "{f} is not typed");
        }
    }

    #[test]
    fn the_trigger_authentication_schema_types_or_keeps_every_field_keda_documents() {
        let ours = serde_json::to_value(schemars::schema_for!(AuthSpec)).unwrap();
        check(
            &ours,
            include_str!("../../tests/corpus/keda/triggerauthentication-spec-fields.txt"),
        );
    }

    #[test]
    fn a_field_keda_has_and_we_lost_is_caught() {
        // Negative control: a KEDA field list with a field under a closed (typed, not
        // flattened) struct our schema does not have.
        let ours = serde_json::to_value(schemars::schema_for!(ScaledObjectSpec)).unwrap();
        let result = std::panic::catch_unwind(|| check(&ours, "spec.scaleTargetRef.subresource\n"));
        assert!(result.is_err());
        let result = std::panic::catch_unwind(|| check(&ours, "spec.triggers.metadata\n"));
        assert!(result.is_err(), "our fields KEDA lacks are caught too");
    }

    #[test]
    fn fields_kept_are_kept_as_written() {
        let mut set = ManifestSet::default();
        set.add_text(
            Path::new("t.yaml"),
            "kind: ScaledObject\nmetadata: {name: a}\nspec:\n  scaleTargetRef: {name: w}\n  fallback: {failureThreshold: 3, replicas: 2, behavior: currentReplicasIfHigher}\n  advanced: {scalingModifiers: {formula: \"a + b\", target: \"2\"}}\n  newerField: {x: 1}\n  triggers: [{type: cpu, metricType: Utilization, metadata: {value: \"50\"}}]\n",
        );
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        let so = &set.scaled_objects(&Env::default())[0];
        assert_eq!(so.unused["newerField"], serde_json::json!({"x": 1}));
        assert_eq!(so.advanced.other["scalingModifiers"]["formula"], "a + b");
        assert_eq!(so.resource_triggers.len(), 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SET: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: redis-auth, namespace: shop}
data:
  password: c2VjcmV0   # "secret"
stringData:
  ca: /custom/ca/redis.pem
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {name: redis-ta, namespace: shop}
spec:
  secretTargetRef:
    - {parameter: password, name: redis-auth, key: password}
    - {parameter: ca, name: redis-auth, key: ca}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: orders, namespace: shop}
spec:
  scaleTargetRef: {name: orders-worker}
  pollingInterval: 10
  triggers:
    - type: redis
      metadata: {address: "localhost:16380", listName: orders, listLength: "5", enableTLS: true}
      authenticationRef: {name: redis-ta}
    - type: redis
      metadata: {address: "localhost:16380", listName: other}
      authenticationRef: {name: missing}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: orders-worker}
---
kind: ScaledObject
metadata: {name: broken}
spec: {triggers: "not a list"}
"#;

    #[test]
    fn a_keda_manifest_set_loads_and_resolves_auth() {
        let mut set = ManifestSet::default();
        set.add_text(Path::new("set.yaml"), SET);
        assert_eq!(set.problems.len(), 1, "{:?}", set.problems);
        assert_eq!(set.problems[0].document, 5);
        assert!(
            set.problems[0]
                .message
                .contains("ScaledObject default/broken"),
            "{}",
            set.problems[0]
        );
        assert_eq!(
            set.ignored,
            vec!["Deployment default/orders-worker".to_string()]
        );
        let sos = set.scaled_objects(&Env::default());
        assert_eq!(sos.len(), 1);
        let so = &sos[0];
        assert_eq!(
            (
                so.polling_interval,
                so.cooldown_period,
                so.max_replica_count
            ),
            (10, 300, 100)
        );
        let t0 = so.triggers[0].as_ref().unwrap();
        assert_eq!(
            t0.metadata["enableTLS"], "true",
            "a YAML boolean is read as its string"
        );
        assert_eq!(t0.auth["password"].expose(), "secret");
        assert_eq!(t0.auth["ca"].expose(), "/custom/ca/redis.pem");
        let err = so.triggers[1].as_ref().unwrap_err();
        assert_eq!(err.type_name, "redis");
        assert!(
            err.message
                .contains("\"missing\" not found in namespace shop"),
            "{err}"
        );
        assert!(
            !format!("{t0:?}").contains("secret\""),
            "Debug hides auth values: {t0:?}"
        );
    }

    #[test]
    fn cluster_auth_configmaps_and_env_resolve() {
        // `hostFromEnv` names a variable that is not set: the host then comes from auth.
        let var = "TRUSTSCALE_TEST_UNSET_VARIABLE";
        let text = format!(
            r#"
kind: Secret
metadata: {{name: shared, namespace: keda}}
stringData: {{password: p4ss}}
---
kind: ConfigMap
metadata: {{name: settings, namespace: keda}}
data: {{host: "amqps://rabbit:5671/"}}
---
kind: ClusterTriggerAuthentication
metadata: {{name: cluster-wide}}
spec:
  secretTargetRef: [{{parameter: password, name: shared, key: password}}]
  configMapTargetRef: [{{parameter: host, name: settings, key: host}}]
  env: [{{parameter: username, name: PATH}}]
---
kind: ScaledObject
metadata: {{name: q, namespace: team-a}}
spec:
  triggers:
    - type: rabbitmq
      metadata: {{queueName: jobs, hostFromEnv: {var}}}
      authenticationRef: {{name: cluster-wide, kind: ClusterTriggerAuthentication}}
    - type: rabbitmq
      metadata: {{queueName: jobs}}
      authenticationRef: {{name: cluster-wide, kind: SomethingElse}}
"#
        );
        let mut set = ManifestSet::default();
        set.add_text(Path::new("cluster.yaml"), &text);
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        let so = &set.scaled_objects(&Env::process())[0];
        let t = so.triggers[0].as_ref().unwrap();
        assert_eq!(
            t.auth["password"].expose(),
            "p4ss",
            "a cluster auth reads Secrets from the keda namespace"
        );
        assert_eq!(t.auth["host"].expose(), "amqps://rabbit:5671/");
        assert_eq!(
            t.auth["username"].expose(),
            std::env::var("PATH").unwrap(),
            "env parameters come from the process environment"
        );
        let err = so.triggers[1].as_ref().unwrap_err();
        assert!(err.message.contains("SomethingElse"), "{err}");
    }

    #[test]
    fn invalid_yaml_is_reported_with_its_file() {
        let mut set = ManifestSet::default();
        set.add_text(
            Path::new("bad.yaml"),
            "kind: ScaledObject\nmetadata: {name: x\n",
        );
        assert_eq!(set.problems.len(), 1);
        assert!(
            set.problems[0]
                .to_string()
                .starts_with("bad.yaml (document 1): not valid YAML"),
            "{}",
            set.problems[0]
        );
    }

    fn so(name: &str, extra: &str) -> String {
        format!(
            "kind: ScaledObject\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n{extra}  triggers:\n    - type: redis\n      metadata: {{address: \"localhost:1\", listName: q}}\n"
        )
    }

    #[test]
    fn each_document_stands_alone() {
        let text = format!(
            "{}---\n{}---\nkind: ScaledObject\nmetadata: {{name: x\n---\n{}",
            so("too-big", "  pollingInterval: 17000000000000000000\n"),
            so("negative", "  cooldownPeriod: -5\n"),
            so("good", "  pollingInterval: 7\n"),
        );
        let mut set = ManifestSet::default();
        set.add_text(Path::new("m.yaml"), &text);
        let problems: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:#?}");
        assert!(
            problems[0].starts_with("m.yaml (document 1): ScaledObject ns/too-big: spec.pollingInterval: 17000000000000000000 is out of range (1 to 2147483647)"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("document 2")
                && problems[1].contains("spec.cooldownPeriod: -5 is out of range"),
            "{}",
            problems[1]
        );
        assert!(
            problems[2].contains("document 3") && problems[2].contains("not valid YAML"),
            "{}",
            problems[2]
        );
        let sos = set.scaled_objects(&Env::default());
        assert_eq!(
            sos.len(),
            1,
            "the document after the broken ones still loads"
        );
        assert_eq!(
            (sos[0].id.name.as_str(), sos[0].polling_interval),
            ("good", 7)
        );
    }

    #[test]
    fn a_duplicate_is_reported_naming_both_places_and_the_first_stays() {
        let mut set = ManifestSet::default();
        set.add_text(Path::new("a.yaml"), &so("dup", "  pollingInterval: 5\n"));
        set.add_text(Path::new("b.yaml"), &format!("{}---\nkind: Secret\nmetadata: {{name: s, namespace: ns}}\n---\nkind: Secret\nmetadata: {{name: s, namespace: ns}}\n", so("dup", "  pollingInterval: 9\n")));
        let problems: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].starts_with("b.yaml (document 1): ScaledObject ns/dup is defined again; the first definition (a.yaml document 1) stays"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("Secret ns/s is defined again")
                && problems[1].contains("b.yaml document 2"),
            "{}",
            problems[1]
        );
        let sos = set.scaled_objects(&Env::default());
        assert_eq!((sos.len(), sos[0].polling_interval), (1, 5));
    }

    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let deep = format!(
            "kind: ConfigMap\nmetadata: {{name: d}}\ndata: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let indented = format!(
            "kind: ConfigMap\nmetadata: {{name: i}}\ndata:\n{}x: 1\n",
            " ".repeat(600)
        );
        let quoted = "kind: ConfigMap\nmetadata: {name: q}\ndata: {a: \"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\"}\n";
        let mut set = ManifestSet::default();
        let start = std::time::Instant::now();
        set.add_text(
            Path::new("deep.yaml"),
            &format!("{deep}---\n{indented}---\n{quoted}"),
        );
        let problems: Vec<String> = set.problems.iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(
            problems[0].contains("document 1") && problems[0].contains("nested too deeply"),
            "{}",
            problems[0]
        );
        assert!(
            problems[1].contains("document 2") && problems[1].contains("indented 600 columns"),
            "{}",
            problems[1]
        );
        assert!(
            set.config_maps
                .contains_key(&("default".into(), "q".into())),
            "brackets in a string are text"
        );
        // Not a timing assertion: the figure is printed for the note.
        eprintln!("refusing 100,000 levels took {:?}", start.elapsed());
    }

    #[test]
    fn an_apostrophe_or_an_escape_does_not_switch_the_depth_check_off() {
        let doc = format!(
            "kind: ConfigMap\nmetadata: {{name: a}}\ndata:\n  note: it's fine\n  path: \"C:\\\\\"\n  x: {}{}\n",
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert!(
            check_depth(&doc).is_err(),
            "the deep list after them is still caught"
        );
        assert!(check_depth("a: it's\nb: [1, 2]\n").is_ok());
    }

    #[test]
    fn documents_split_at_markers_only() {
        let docs = documents("a: 1\n---\nb: |\n  ---\n  text\n--- # c\nc: 2\n...\n");
        assert_eq!(docs.len(), 3, "{docs:?}");
        assert!(
            docs[1].1.contains("  ---"),
            "an indented --- is block-scalar text"
        );
    }

    #[test]
    fn directives_stay_with_the_document_they_open() {
        let text = "%YAML 1.2\n%TAG !k! tag:keda.sh,2024:\n---\nkind: ConfigMap\nmetadata: {name: a, namespace: d}\n---\nkind: ConfigMap\nmetadata: {name: b, namespace: d}\n";
        let docs = documents(text);
        assert_eq!(docs.len(), 2, "{docs:?}");
        let mut set = ManifestSet::default();
        set.add_text(Path::new("directives.yaml"), text);
        assert!(set.problems.is_empty(), "{:?}", set.problems);
        assert_eq!(set.config_maps.len(), 2);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Whatever text a manifest file holds, loading it reports problems by file and
        /// document and never panics; a good document after it still loads.
        #[test]
        fn loading_any_text_never_panics_and_a_good_document_after_it_loads(
            junk in prop_oneof![
                "\\PC{0,400}",
                "([\\[{]{0,80}[a-z: ,]{0,20}[\\]}]{0,80})",
                "(kind: ScaledObject\nmetadata: \\{name: [a-z]{1,5}\\}\nspec:\n  pollingInterval: -?[0-9]{1,25}\n  triggers: \\[\\]\n)",
            ],
        ) {
            let good = "kind: ScaledObject\nmetadata: {name: zzgood, namespace: p}\nspec:\n  triggers:\n    - type: t\n      metadata: {a: b}\n";
            let junk = junk.replace("\n---", "\n#--");
            let text = format!("{junk}\n---\n{good}");
            let mut set = ManifestSet::default();
            set.add_text(Path::new("p.yaml"), &text);
            for problem in &set.problems {
                prop_assert!(problem.to_string().starts_with("p.yaml (document"), "{problem}");
            }
            let sos = set.scaled_objects(&Env::default());
            prop_assert!(sos.iter().any(|s| s.id.name == "zzgood"), "{:?}", set.problems);
        }
    }
}
