//! Prometheus metrics of the operator.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Labels of a trigger type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeLabels {
    /// Trigger type.
    pub r#type: String,
}

/// Labels of an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// Trigger type.
    pub r#type: String,
    /// Error kind.
    pub kind: String,
}

/// Labels of a metric value.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ValueLabels {
    /// `namespace/name`.
    pub scaledobject: String,
    /// The metric name (`s0-...`).
    pub metric: String,
}

/// Labels of a ScaledObject.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObjectLabels {
    /// `namespace/name`.
    pub scaledobject: String,
}

/// Labels of a reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// What was reloaded: manifests, certs, ca_folders.
    pub what: String,
    /// ok or failed.
    pub result: String,
}

/// Labels of a caBundle publication.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabels {
    /// The kind of object: APIService, ValidatingWebhookConfiguration (any: the request
    /// failed before one was known).
    pub kind: String,
    /// patched, current, missing, left alone: ..., error.
    pub result: String,
}

/// Labels of a write's result.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// What happened, or why the write was made.
    pub result: String,
}

/// KEDA's labels of a trigger's metric (`keda_scaler_*`), so that existing dashboards
/// and alerts keep working.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KedaScalerLabels {
    /// The ScaledObject's namespace.
    pub namespace: String,
    /// The metric name (`s0-...`).
    pub metric: String,
    /// The ScaledObject's name.
    pub scaledObject: String,
    /// KEDA's name of the scaler (`redisScaler`, ...).
    pub scaler: String,
    /// The trigger's position.
    pub triggerIndex: String,
    /// `scaledobject`.
    pub r#type: String,
}

/// KEDA's labels of a ScaledObject (`keda_scaled_object_*`).
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KedaObjectLabels {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub scaledObject: String,
}

/// KEDA's name of a scaler of `trigger_type` (the Go type's name KEDA reports).
#[must_use]
pub fn keda_scaler_name(trigger_type: &str) -> String {
    match trigger_type {
        "redis" => "redisScaler".into(),
        "rabbitmq" => "rabbitMQScaler".into(),
        "kafka" => "kafkaScaler".into(),
        "metrics-api" => "metricsAPIScaler".into(),
        other => {
            let mut out = String::new();
            let mut upper = false;
            for c in other.chars() {
                if c == '-' || c == '_' {
                    upper = true;
                } else if upper {
                    out.extend(c.to_uppercase());
                    upper = false;
                } else {
                    out.push(c);
                }
            }
            format!("{out}Scaler")
        }
    }
}

/// Labels of an allocator figure.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AllocatorLabels {
    /// `allocated` (live allocations), `active` (pages holding them), `resident` (pages
    /// the allocator holds in memory, its own metadata included), `retained` (address
    /// space kept unmapped for reuse) or `metadata`.
    pub kind: String,
}

/// The allocator's own figures, in bytes, by kind (see [`AllocatorLabels`]).
pub type AllocatorStats = Vec<(&'static str, u64)>;

static ALLOCATOR_PROBE: std::sync::OnceLock<fn() -> AllocatorStats> = std::sync::OnceLock::new();

/// Lets `/metrics` report the process allocator's figures as
/// `trustscale_allocator_bytes{kind}`, read at every scrape. The binary that chooses the
/// global allocator sets it (the `trustscale` command, with jemalloc); the first call wins.
/// They tell the process's memory apart: live allocations (with the threads' caches), what
/// the allocator keeps around them, and (RSS less `resident`) the rest: thread stacks, and
/// the C libraries' allocations unless the allocator is also `malloc` (as jemalloc is in
/// the `trustscale` command).
pub fn set_allocator_probe(probe: fn() -> AllocatorStats) {
    let _ = ALLOCATOR_PROBE.set(probe);
}

/// Every metric the operator exports.
pub struct Metrics {
    /// Registry to encode.
    pub registry: Registry,
    /// Poll latency by trigger type.
    pub poll_seconds: Family<TypeLabels, Histogram>,
    /// Poll errors by type and kind.
    pub poll_errors: Family<ErrorLabels, Counter>,
    /// Current metric values.
    pub values: Family<ValueLabels, Gauge<f64, AtomicU64>>,
    /// Desired replicas per ScaledObject.
    pub desired_replicas: Family<ObjectLabels, Gauge>,
    /// Trust anchors now.
    pub trust_anchors: Gauge,
    /// Rejected CA files now.
    pub rejected_ca_files: Gauge,
    /// Triggers that used unsafeSsl.
    pub unsafe_ssl_triggers: Gauge,
    /// Seconds until the internal serving certificate expires.
    pub cert_expiry_seconds: Gauge<f64, AtomicU64>,
    /// Reloads.
    pub reloads: Family<ReloadLabels, Counter>,
    /// Times the internal CA was replaced because it was unusable (clients holding the
    /// old caBundle are locked out until they get the new one).
    pub ca_replaced: Counter,
    /// caBundle publications by object kind and result.
    pub ca_bundle: Family<BundleLabels, Counter>,
    /// HPA writes by result (created, updated, deleted).
    pub hpa_writes: Family<ResultLabels, Counter>,
    /// `/scale` writes by reason (activation, deactivation, fallback, paused-replicas,
    /// restoreToOriginalReplicaCount).
    pub scale_writes: Family<ResultLabels, Counter>,
    /// Whether this replica leads (1) or follows (0).
    pub leader: Gauge,
    /// `keda_scaler_metrics_value`.
    pub keda_values: Family<KedaScalerLabels, Gauge<f64, AtomicU64>>,
    /// `keda_scaler_active`.
    pub keda_active: Family<KedaScalerLabels, Gauge>,
    /// `keda_scaler_errors_total`.
    pub keda_errors: Family<KedaScalerLabels, Counter>,
    /// `keda_scaled_object_errors_total`.
    pub keda_object_errors: Family<KedaObjectLabels, Counter>,
    /// `keda_scaled_object_paused`.
    pub keda_paused: Family<KedaObjectLabels, Gauge>,
    /// The allocator's figures, set at each scrape when a probe is set.
    allocator: Family<AllocatorLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let poll_seconds = Family::<TypeLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
        });
        let m = Metrics {
            poll_seconds,
            poll_errors: Family::default(),
            values: Family::default(),
            desired_replicas: Family::default(),
            trust_anchors: Gauge::default(),
            rejected_ca_files: Gauge::default(),
            unsafe_ssl_triggers: Gauge::default(),
            cert_expiry_seconds: Gauge::default(),
            reloads: Family::default(),
            ca_replaced: Counter::default(),
            ca_bundle: Family::default(),
            hpa_writes: Family::default(),
            scale_writes: Family::default(),
            leader: Gauge::default(),
            keda_values: Family::default(),
            keda_active: Family::default(),
            keda_errors: Family::default(),
            keda_object_errors: Family::default(),
            keda_paused: Family::default(),
            allocator: Family::default(),
            registry: Registry::default(),
        };
        let registry = root.sub_registry_with_prefix("trustscale");
        registry.register(
            "poll_duration_seconds",
            "Time one trigger poll took",
            m.poll_seconds.clone(),
        );
        registry.register(
            "poll_errors",
            "Trigger poll errors by kind",
            m.poll_errors.clone(),
        );
        registry.register(
            "metric_value",
            "Last value of each trigger metric",
            m.values.clone(),
        );
        registry.register(
            "desired_replicas",
            "Replicas decided for each ScaledObject",
            m.desired_replicas.clone(),
        );
        registry.register(
            "trust_anchors",
            "Trust anchors in use (system roots + CA folders)",
            m.trust_anchors.clone(),
        );
        registry.register(
            "ca_files_rejected",
            "Files of the CA folders that were rejected",
            m.rejected_ca_files.clone(),
        );
        registry.register(
            "unsafe_ssl_triggers",
            "Triggers that connect with unsafeSsl",
            m.unsafe_ssl_triggers.clone(),
        );
        registry.register(
            "internal_cert_expiry_seconds",
            "Seconds until the internal serving certificate expires",
            m.cert_expiry_seconds.clone(),
        );
        registry.register(
            "reloads",
            "Reloads of manifests, internal certificates and CA folders",
            m.reloads.clone(),
        );
        registry.register(
            "internal_ca_replaced",
            "Times the internal CA was unusable and replaced by a new one",
            m.ca_replaced.clone(),
        );
        registry.register(
            "ca_bundle_publications",
            "caBundle publications to the APIService and the webhook configuration, by result",
            m.ca_bundle.clone(),
        );
        registry.register("hpa_writes", "HPA writes by result", m.hpa_writes.clone());
        registry.register(
            "scale_writes",
            "Writes of a scale target's /scale subresource, by reason",
            m.scale_writes.clone(),
        );
        registry.register(
            "leader",
            "Whether this replica is the leader (1) or a follower (0)",
            m.leader.clone(),
        );
        registry.register(
            "allocator_bytes",
            "The process allocator's figures (when it reports them), by kind",
            m.allocator.clone(),
        );
        let keda = root.sub_registry_with_prefix("keda");
        keda.register(
            "scaler_metrics_value",
            "The current value for each scaler's metric that would be used by the HPA in computing the target average.",
            m.keda_values.clone(),
        );
        keda.register(
            "scaler_active",
            "Activity of a Scaler Metric.",
            m.keda_active.clone(),
        );
        keda.register(
            "scaler_errors",
            "The number of errors that have occurred for each scaler.",
            m.keda_errors.clone(),
        );
        keda.register(
            "scaled_object_errors",
            "The number of errors that have occurred for each ScaledObject.",
            m.keda_object_errors.clone(),
        );
        keda.register(
            "scaled_object_paused",
            "Indicates whether a ScaledObject is paused",
            m.keda_paused.clone(),
        );
        Metrics {
            registry: root,
            ..m
        }
    }
}

impl Metrics {
    /// Counts a caBundle publication.
    pub fn ca_bundle_published(&self, kind: &str, result: &str) {
        let result = result.split(':').next().unwrap_or(result);
        self.ca_bundle
            .get_or_create(&BundleLabels {
                kind: kind.into(),
                result: result.into(),
            })
            .inc();
    }

    /// Counts a reload.
    pub fn reloaded(&self, what: &str, ok: bool) {
        self.reloads
            .get_or_create(&ReloadLabels {
                what: what.into(),
                result: if ok { "ok" } else { "failed" }.into(),
            })
            .inc();
    }

    /// The text exposition.
    #[must_use]
    pub fn encode(&self) -> String {
        if let Some(probe) = ALLOCATOR_PROBE.get() {
            let stats = probe();
            // A figure the probe could not read this time is left out, not repeated.
            self.allocator.clear();
            for (kind, bytes) in stats {
                let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
                self.allocator
                    .get_or_create(&AllocatorLabels { kind: kind.into() })
                    .set(bytes);
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
