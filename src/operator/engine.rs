//! The polling engine: one task per ScaledObject, polling its triggers every
//! `pollingInterval` (with jitter), deciding replicas, and reporting the decision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::decide::{Decision, Outcome, ScaleState, ScalingSpec, decide};
use super::metrics::{ErrorLabels, Metrics, ObjectLabels, TypeLabels, ValueLabels};
use crate::manifest::{LoadProblem, ManifestSet, ScaledObject};
use crate::scaler::{
    BuildContext, ErrorKind, ObjectRef, Registry, Scaler, ScalerError, TriggerSpec,
};

/// Receives every decision (for embedding the engine; the default logs changes).
pub trait DecisionSink: Send + Sync {
    /// Called after each round with the decision and whether it changed.
    fn decided(&self, object: &ObjectRef, decision: &Decision, changed: bool);
}

/// Logs a line when a decision changes.
#[derive(Debug, Default)]
pub struct LogSink;

impl DecisionSink for LogSink {
    fn decided(&self, object: &ObjectRef, d: &Decision, changed: bool) {
        if changed {
            tracing::info!(scaledobject = %object, replicas = d.replicas, active = d.active, reason = %d.reason, "scaling decision changed");
        }
    }
}

/// A trigger's last result.
#[derive(Clone, Debug, Serialize)]
pub struct TriggerStatus {
    /// Index in the ScaledObject.
    pub index: usize,
    /// Trigger type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Metric name, once built.
    pub metric: Option<String>,
    /// Target.
    pub target: Option<f64>,
    /// Last value.
    pub value: Option<f64>,
    /// Last activity.
    pub active: Option<bool>,
    /// Last error.
    pub error: Option<ErrorOut>,
    /// Consecutive failures.
    pub failures: u32,
}

/// An error, for the API.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorOut {
    /// Kind.
    pub kind: ErrorKind,
    /// Message.
    pub message: String,
}

/// A ScaledObject's state, for the API.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// `namespace/name`.
    pub scaled_object: String,
    /// Namespace.
    #[serde(skip)]
    pub id: Option<ObjectRef>,
    /// Triggers.
    pub triggers: Vec<TriggerStatus>,
    /// The last decision.
    pub decision: Option<Decision>,
    /// Seconds between polls.
    pub polling_interval: u64,
    /// When it was last polled (RFC 3339).
    pub last_poll: Option<String>,
}

struct Running {
    fingerprint: [u8; 32],
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

struct Inner {
    registry: Registry,
    ctx: BuildContext,
    metrics: Arc<Metrics>,
    sink: Arc<dyn DecisionSink>,
    status: RwLock<BTreeMap<ObjectRef, ObjectStatus>>,
    problems: RwLock<Vec<LoadProblem>>,
    running: Mutex<HashMap<ObjectRef, Running>>,
    poll_timeout: Duration,
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine with a registry, a build context (the trust factory), metrics and a sink.
    #[must_use]
    pub fn new(
        registry: Registry,
        ctx: BuildContext,
        metrics: Arc<Metrics>,
        sink: Arc<dyn DecisionSink>,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                registry,
                ctx,
                metrics,
                sink,
                status: RwLock::new(BTreeMap::new()),
                problems: RwLock::new(Vec::new()),
                running: Mutex::new(HashMap::new()),
                poll_timeout: Duration::from_secs(10),
            }),
        }
    }

    /// The build context (trust factory) of this engine.
    #[must_use]
    pub fn context(&self) -> &BuildContext {
        &self.inner.ctx
    }

    /// The metrics.
    #[must_use]
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Runs the ScaledObjects of `set`: new ones start, changed ones restart, removed ones
    /// stop; unchanged ones keep running (and keep their state).
    pub async fn apply(&self, set: &ManifestSet) {
        let wanted: BTreeMap<ObjectRef, ScaledObject> = set
            .scaled_objects()
            .into_iter()
            .map(|so| (so.id.clone(), so))
            .collect();
        for p in &set.problems {
            tracing::warn!(problem = %p, "manifest not loaded; the other manifests keep running");
        }
        if let Ok(mut problems) = self.inner.problems.write() {
            problems.clone_from(&set.problems);
        }
        let mut to_stop = Vec::new();
        {
            let mut running = self
                .inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let ids: Vec<ObjectRef> = running.keys().cloned().collect();
            for id in ids {
                let keep = wanted.get(&id).is_some_and(|so| {
                    running
                        .get(&id)
                        .is_some_and(|r| r.fingerprint == so.fingerprint())
                });
                if !keep && let Some(r) = running.remove(&id) {
                    to_stop.push((id, r));
                }
            }
            for (id, so) in &wanted {
                if running.contains_key(id) {
                    continue;
                }
                let (stop, rx) = tokio::sync::watch::channel(false);
                let inner = Arc::clone(&self.inner);
                let so = so.clone();
                let fingerprint = so.fingerprint();
                let task = tokio::spawn(async move { run_object(inner, so, rx).await });
                tracing::info!(scaledobject = %id, "scaledobject started");
                running.insert(
                    id.clone(),
                    Running {
                        fingerprint,
                        stop,
                        task,
                    },
                );
            }
        }
        for (id, r) in to_stop {
            let _ = r.stop.send(true);
            let _ = r.task.await;
            if !wanted.contains_key(&id) {
                if let Ok(mut status) = self.inner.status.write() {
                    status.remove(&id);
                }
                self.inner.metrics.desired_replicas.remove(&ObjectLabels {
                    scaledobject: id.to_string(),
                });
                tracing::info!(scaledobject = %id, "scaledobject removed");
            }
        }
    }

    /// Stops every ScaledObject: no new polls; polls under way finish; clients close.
    pub async fn shutdown(&self) {
        let all: Vec<Running> = {
            let mut running = self
                .inner
                .running
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            running.drain().map(|(_, r)| r).collect()
        };
        for r in &all {
            let _ = r.stop.send(true);
        }
        for r in all {
            let _ = r.task.await;
        }
    }

    /// Every ScaledObject's state.
    #[must_use]
    pub fn status(&self) -> Vec<ObjectStatus> {
        self.inner
            .status
            .read()
            .map(|s| s.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Manifest problems of the last load.
    #[must_use]
    pub fn problems(&self) -> Vec<LoadProblem> {
        self.inner
            .problems
            .read()
            .map(|p| p.clone())
            .unwrap_or_default()
    }

    /// The last value of `metric` of ScaledObject `namespace/name`.
    pub fn metric(
        &self,
        namespace: &str,
        name: &str,
        metric: &str,
    ) -> Result<(f64, SystemTime), String> {
        let status = self
            .inner
            .status
            .read()
            .map_err(|_| "state unavailable".to_string())?;
        let id = ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        };
        let so = status
            .get(&id)
            .ok_or_else(|| format!("scaledobject {id} not found"))?;
        let t = so
            .triggers
            .iter()
            .find(|t| t.metric.as_deref() == Some(metric))
            .ok_or_else(|| format!("scaledobject {id} has no metric {metric}"))?;
        if let Some(e) = &t.error {
            return Err(format!("{}: {}", e.kind, e.message));
        }
        t.value
            .map(|v| (v, SystemTime::now()))
            .ok_or_else(|| format!("{metric} has not been polled yet"))
    }
}

async fn poll_one(
    inner: &Inner,
    scaler: &dyn Scaler,
    spec: &TriggerSpec,
) -> Result<crate::scaler::Poll, ScalerError> {
    let start = Instant::now();
    let result = match tokio::time::timeout(inner.poll_timeout, scaler.poll()).await {
        Ok(r) => r,
        Err(_) => Err(ScalerError::new(
            ErrorKind::Connection,
            &spec.label,
            format!("no answer within {:?}", inner.poll_timeout),
        )),
    };
    inner
        .metrics
        .poll_seconds
        .get_or_create(&TypeLabels {
            r#type: spec.type_name.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    if let Err(e) = &result {
        inner
            .metrics
            .poll_errors
            .get_or_create(&ErrorLabels {
                r#type: spec.type_name.clone(),
                kind: e.kind.to_string(),
            })
            .inc();
    }
    result
}

async fn run_object(
    inner: Arc<Inner>,
    so: ScaledObject,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let id = so.id.clone();
    let label = id.to_string();
    let n = so.triggers.len();
    let mut scalers: Vec<Option<Box<dyn Scaler>>> = (0..n).map(|_| None).collect();
    let spec = ScalingSpec {
        min: so.min_replica_count,
        max: so.max_replica_count,
        idle: so.idle_replica_count,
        cooldown: Duration::from_secs(so.cooldown_period),
        initial_cooldown: Duration::from_secs(so.initial_cooldown_period),
        fallback: so.fallback,
    };
    let mut state = ScaleState::new(
        so.min_replica_count.max(1).min(so.max_replica_count.max(1)),
        n,
        Instant::now(),
    );
    let mut last: Option<Decision> = None;
    let interval = Duration::from_secs(so.polling_interval.max(1));
    // Spread the first polls: a thousand ScaledObjects starting together would otherwise
    // hit every source at the same instant (and open a connection each).
    let first = interval
        .min(Duration::from_secs(10))
        .mul_f64(fastrand::f64());
    tokio::select! {
        _ = tokio::time::sleep(first) => {}
        _ = stop.changed() => return,
    }
    loop {
        let mut statuses = Vec::with_capacity(n);
        let mut outcomes = Vec::with_capacity(n);
        // Build what is not built yet (a trigger whose build failed is retried each round).
        for (i, trigger) in so.triggers.iter().enumerate() {
            if scalers[i].is_none()
                && let Ok(t) = trigger
                && let Ok(s) = inner.registry.build(t, &inner.ctx).await
            {
                scalers[i] = Some(s);
            }
        }
        let polls =
            futures_util::future::join_all(so.triggers.iter().enumerate().map(|(i, trigger)| {
                let inner = &inner;
                let scaler = scalers[i].as_deref();
                async move {
                    match (trigger, scaler) {
                        (Err(e), _) => Err(e.clone()),
                        (Ok(t), None) => match inner.registry.build(t, &inner.ctx).await {
                            Ok(s) => poll_one(inner, s.as_ref(), t)
                                .await
                                .map(|p| (p, s.metric_specs())),
                            Err(e) => Err(e),
                        },
                        (Ok(t), Some(s)) => {
                            poll_one(inner, s, t).await.map(|p| (p, s.metric_specs()))
                        }
                    }
                }
            }))
            .await;
        for (i, result) in polls.into_iter().enumerate() {
            let type_name = so.triggers[i]
                .as_ref()
                .map(|t| t.type_name.clone())
                .unwrap_or_default();
            let mut ts = TriggerStatus {
                index: i,
                type_name,
                metric: None,
                target: None,
                value: None,
                active: None,
                error: None,
                failures: 0,
            };
            match result {
                Ok((poll, specs)) => {
                    let spec0 = specs.first();
                    let value = poll.metrics.first().map_or(0.0, |m| m.value);
                    ts.metric = spec0.map(|s| s.name.clone());
                    ts.target = spec0.map(|s| s.target);
                    ts.value = Some(value);
                    ts.active = Some(poll.active);
                    if let Some(s) = spec0 {
                        inner
                            .metrics
                            .values
                            .get_or_create(&ValueLabels {
                                scaledobject: label.clone(),
                                metric: s.name.clone(),
                            })
                            .set(value);
                    }
                    outcomes.push(Outcome::Ok {
                        value,
                        target: spec0.map_or(1.0, |s| s.target),
                        metric_type: spec0.map(|s| s.metric_type).unwrap_or_default(),
                        active: poll.active,
                    });
                }
                Err(e) => {
                    tracing::debug!(trigger = %e.trigger, kind = %e.kind, error = %e.message, "poll failed");
                    ts.metric = scalers[i]
                        .as_ref()
                        .and_then(|s| s.metric_specs().first().map(|m| m.name.clone()));
                    ts.error = Some(ErrorOut {
                        kind: e.kind,
                        message: e.message,
                    });
                    outcomes.push(Outcome::Failed);
                }
            }
            statuses.push(ts);
        }
        let decision = decide(&spec, &mut state, &outcomes, Instant::now());
        for (ts, f) in statuses.iter_mut().zip(&state.failures) {
            ts.failures = *f;
        }
        let changed = last.as_ref() != Some(&decision);
        inner.sink.decided(&id, &decision, changed);
        inner
            .metrics
            .desired_replicas
            .get_or_create(&ObjectLabels {
                scaledobject: label.clone(),
            })
            .set(i64::from(decision.replicas));
        if let Ok(mut status) = inner.status.write() {
            status.insert(
                id.clone(),
                ObjectStatus {
                    scaled_object: label.clone(),
                    id: Some(id.clone()),
                    triggers: statuses,
                    decision: Some(decision.clone()),
                    polling_interval: so.polling_interval,
                    last_poll: Some(
                        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    ),
                },
            );
        }
        last = Some(decision);
        // Jitter (±10 %) spreads thousands of objects with the same interval.
        let jitter = 0.9 + fastrand::f64() * 0.2;
        let wait = interval.mul_f64(jitter);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    for s in scalers.into_iter().flatten() {
        s.close().await;
    }
}
