//! The polling engine: one task per ScaledObject, polling its triggers every
//! `pollingInterval` (with jitter), deciding replicas, and reporting the decision.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::decide::{Decision, Outcome, ScaleState, ScalingSpec, decide};
use super::metrics::{ErrorLabels, Metrics, ObjectLabels, TypeLabels, ValueLabels};
use crate::manifest::{Env, LoadProblem, ManifestSet, ScaledObject, TriggerError};
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, ObjectRef, Poll, Registry, Scaler, ScalerError,
    TriggerSpec,
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
    /// Whether its metric is a `Value` metric (fallback applies to AverageValue only).
    #[serde(skip)]
    pub value_metric: bool,
}

/// An error, for the API.
#[derive(Clone, Debug, Serialize)]
pub struct ErrorOut {
    /// Kind.
    pub kind: ErrorKind,
    /// Message.
    pub message: String,
}

impl From<&ScalerError> for ErrorOut {
    fn from(e: &ScalerError) -> Self {
        ErrorOut {
            kind: e.kind,
            message: e.message.clone(),
        }
    }
}

impl From<&TriggerError> for ErrorOut {
    fn from(e: &TriggerError) -> Self {
        ErrorOut {
            kind: ErrorKind::Config,
            message: e.message.clone(),
        }
    }
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
    /// Its fallback.
    #[serde(skip)]
    pub fallback: Option<crate::manifest::Fallback>,
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

    /// Runs the ScaledObjects of `set`, their `...FromEnv` and `env` parameters resolved
    /// from `env`: new ones start, changed ones restart, removed ones stop; unchanged ones
    /// keep running (and keep their state).
    pub async fn apply(&self, set: &ManifestSet, env: &Env) {
        self.apply_objects(set.scaled_objects(env), &set.problems)
            .await;
    }

    /// [`Engine::apply`] for ScaledObjects already assembled (and the problems of the
    /// load they came from).
    pub async fn apply_objects(&self, objects: Vec<ScaledObject>, load_problems: &[LoadProblem]) {
        let wanted: BTreeMap<ObjectRef, ScaledObject> =
            objects.into_iter().map(|so| (so.id.clone(), so)).collect();
        if let Ok(mut problems) = self.inner.problems.write() {
            // Said when they appear (a cluster's rounds load the same objects again).
            for p in load_problems {
                if !problems.iter().any(|q| q.to_string() == p.to_string()) {
                    tracing::warn!(problem = %p, "manifest not loaded; the other manifests keep running");
                }
            }
            problems.clear();
            problems.extend_from_slice(load_problems);
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
            // Its series go with it (a restart makes those of its triggers now), so the
            // families never grow with churn or with renamed triggers.
            let removed = !wanted.contains_key(&id);
            let gone = self.inner.status.write().ok().and_then(|mut status| {
                if removed {
                    status.remove(&id)
                } else {
                    status.get(&id).cloned()
                }
            });
            {
                let m = &self.inner.metrics;
                for t in gone.iter().flat_map(|s| &s.triggers) {
                    if let Some(metric) = &t.metric {
                        let keda = crate::metrics::KedaScalerLabels {
                            namespace: id.namespace.clone(),
                            metric: metric.clone(),
                            scaledObject: id.name.clone(),
                            scaler: crate::metrics::keda_scaler_name(&t.type_name),
                            triggerIndex: t.index.to_string(),
                            r#type: "scaledobject".into(),
                        };
                        m.keda_values.remove(&keda);
                        m.keda_active.remove(&keda);
                        m.keda_errors.remove(&keda);
                        m.values.remove(&ValueLabels {
                            scaledobject: id.to_string(),
                            metric: metric.clone(),
                        });
                    }
                }
                m.keda_object_errors
                    .remove(&crate::metrics::KedaObjectLabels {
                        namespace: id.namespace.clone(),
                        scaledObject: id.name.clone(),
                    });
            }
            if removed {
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

    /// One ScaledObject's state.
    #[must_use]
    pub fn status_of(&self, id: &ObjectRef) -> Option<ObjectStatus> {
        self.inner
            .status
            .read()
            .ok()
            .and_then(|s| s.get(id).cloned())
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
    ) -> Result<(f64, SystemTime), MetricError> {
        let status = self
            .inner
            .status
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let id = ObjectRef {
            namespace: namespace.into(),
            name: name.into(),
        };
        let so = status
            .get(&id)
            .ok_or_else(|| MetricError::NoScaledObject(id.clone()))?;
        let t = so
            .triggers
            .iter()
            .find(|t| t.metric.as_deref() == Some(metric))
            .ok_or_else(|| MetricError::NoMetric {
                scaled_object: id.clone(),
                metric: metric.to_string(),
            })?;
        // A trigger past its fallback threshold gives the HPA the value that makes it
        // choose the fallback replicas (KEDA: replicas × target; AverageValue only).
        if let (Some(fb), Some(target)) = (so.fallback, t.target)
            && t.failures >= fb.failure_threshold.max(1)
            && !t.value_metric
        {
            return Ok((f64::from(fb.replicas) * target, SystemTime::now()));
        }
        if let Some(e) = &t.error {
            return Err(MetricError::Failed {
                metric: metric.to_string(),
                kind: e.kind,
                message: e.message.clone(),
            });
        }
        t.value
            .map(|v| (v, SystemTime::now()))
            .ok_or_else(|| MetricError::NotPolledYet(metric.to_string()))
    }
}

/// Why a metric cannot be served.
#[derive(Clone, Debug, thiserror::Error)]
pub enum MetricError {
    /// No ScaledObject of that name runs.
    #[error("scaledobject {0} not found")]
    NoScaledObject(ObjectRef),
    /// The ScaledObject runs but serves no metric of that name.
    #[error("scaledobject {scaled_object} has no metric {metric}")]
    NoMetric {
        /// The ScaledObject.
        scaled_object: ObjectRef,
        /// The metric asked for.
        metric: String,
    },
    /// The trigger has not been polled yet.
    #[error("{0} has not been polled yet")]
    NotPolledYet(String),
    /// The trigger's last poll failed.
    #[error("{metric}: {kind}: {message}")]
    Failed {
        /// The metric.
        metric: String,
        /// The kind of failure.
        kind: ErrorKind,
        /// What happened.
        message: String,
    },
}

async fn poll_one(
    inner: &Inner,
    scaler: &dyn Scaler,
    spec: &TriggerSpec,
) -> Result<Poll, ScalerError> {
    let start = Instant::now();
    let result = match tokio::time::timeout(inner.poll_timeout, scaler.poll()).await {
        Ok(r) => r,
        Err(_) => Err(ScalerError::new(
            ErrorKind::CONNECTION,
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

/// Runs one ScaledObject: each round builds what is not built yet, polls every trigger,
/// decides the replicas and publishes the result, then waits for the next round.
async fn run_object(
    inner: Arc<Inner>,
    so: ScaledObject,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut object = ObjectRun::new(&so);
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
        object.build(&inner, &so).await;
        let results = object.poll(&inner, &so).await;
        let (decision, statuses) = object.decide(&so, results);
        object.publish(&inner, &so, decision, statuses);
        // Jitter (±10 %) spreads thousands of objects with the same interval.
        let wait = interval.mul_f64(0.9 + fastrand::f64() * 0.2);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    for s in object.scalers.into_iter().flatten() {
        s.close().await;
    }
}

/// What one poll of one trigger gave: its value and metric, or why not.
type PollResult = Result<(Poll, Option<MetricSpec>), ErrorOut>;

/// The running state of one ScaledObject.
struct ObjectRun {
    id: ObjectRef,
    label: String,
    /// One per trigger; `None` until it builds (a failed build is retried each round).
    scalers: Vec<Option<Box<dyn Scaler>>>,
    /// The last build error of each trigger that has not built.
    build_errors: Vec<Option<ErrorOut>>,
    spec: ScalingSpec,
    state: ScaleState,
    last: Option<Decision>,
    /// Each trigger's last outcome: `None` ok (or not polled yet), else the error kind.
    health: Vec<Option<ErrorKind>>,
}

impl ObjectRun {
    fn new(so: &ScaledObject) -> Self {
        let n = so.triggers.len();
        ObjectRun {
            id: so.id.clone(),
            label: so.id.to_string(),
            scalers: (0..n).map(|_| None).collect(),
            build_errors: (0..n).map(|_| None).collect(),
            spec: ScalingSpec {
                min: so.min_replica_count,
                max: so.max_replica_count,
                idle: so.idle_replica_count,
                cooldown: Duration::from_secs(so.cooldown_period),
                initial_cooldown: Duration::from_secs(so.initial_cooldown_period),
                fallback: so.fallback,
            },
            state: ScaleState::new(
                so.min_replica_count.max(1).min(so.max_replica_count.max(1)),
                n,
                Instant::now(),
            ),
            last: None,
            health: vec![None; n],
        }
    }

    /// Logs a trigger's change of health: at warn when it starts failing or fails in
    /// another way, at info when it recovers; nothing while it stays as it was.
    fn note_health(&mut self, i: usize, result: Result<(), &ErrorOut>) {
        let now = result.err().map(|e| e.kind);
        if self.health[i] == now {
            return;
        }
        match (result, self.health[i]) {
            (Err(e), _) => tracing::warn!(
                scaledobject = %self.label,
                trigger = i,
                kind = %e.kind,
                error = %e.message,
                "trigger is failing"
            ),
            (Ok(()), Some(was)) => tracing::info!(
                scaledobject = %self.label,
                trigger = i,
                was = %was,
                "trigger recovered"
            ),
            (Ok(()), None) => {}
        }
        self.health[i] = now;
    }

    /// Builds every trigger that has no scaler yet, once per round.
    async fn build(&mut self, inner: &Inner, so: &ScaledObject) {
        for (i, trigger) in so.triggers.iter().enumerate() {
            if self.scalers[i].is_some() {
                continue;
            }
            self.build_errors[i] = match trigger {
                Err(e) => Some(ErrorOut::from(e)),
                Ok(spec) => match inner.registry.build(spec, &inner.ctx).await {
                    Ok(s) => {
                        self.scalers[i] = Some(s);
                        None
                    }
                    Err(e) => Some(ErrorOut::from(&e)),
                },
            };
        }
    }

    /// Polls every built trigger at once; a trigger that did not build reports why.
    async fn poll(&self, inner: &Inner, so: &ScaledObject) -> Vec<PollResult> {
        futures_util::future::join_all(so.triggers.iter().enumerate().map(|(i, trigger)| {
            let scaler = self.scalers[i].as_deref();
            let build_error = self.build_errors[i].clone();
            async move {
                match (trigger, scaler) {
                    (Ok(spec), Some(s)) => {
                        let metric = s.metric_specs().into_iter().next();
                        poll_one(inner, s, spec)
                            .await
                            .map(|p| (p, metric))
                            .map_err(|e| ErrorOut::from(&e))
                    }
                    _ => Err(build_error.unwrap_or_else(|| ErrorOut {
                        kind: ErrorKind::Config,
                        message: "not built".into(),
                    })),
                }
            }
        }))
        .await
    }

    /// Turns the poll results into trigger statuses and a scaling decision.
    fn decide(
        &mut self,
        so: &ScaledObject,
        results: Vec<PollResult>,
    ) -> (Decision, Vec<TriggerStatus>) {
        let mut statuses = Vec::with_capacity(results.len());
        let mut outcomes = Vec::with_capacity(results.len());
        for (i, result) in results.into_iter().enumerate() {
            let mut ts = TriggerStatus {
                index: so.trigger_indexes.get(i).copied().unwrap_or(i),
                type_name: so.trigger_type(i).to_string(),
                metric: None,
                target: None,
                value: None,
                active: None,
                error: None,
                failures: 0,
                value_metric: so
                    .triggers
                    .get(i)
                    .and_then(|t| t.as_ref().ok())
                    .is_some_and(|t| t.metric_type == trustscale::scaler::MetricType::Value),
            };
            self.note_health(i, result.as_ref().map(|_| ()));
            match result {
                Ok((poll, spec)) => {
                    let value = poll.metrics.first().map_or(0.0, |m| m.value);
                    ts.metric = spec.as_ref().map(|s| s.name.clone());
                    ts.target = spec.as_ref().map(|s| s.target);
                    ts.value = Some(value);
                    ts.active = Some(poll.active);
                    outcomes.push(Outcome::Ok {
                        value,
                        target: spec.as_ref().map_or(1.0, |s| s.target),
                        metric_type: spec.map(|s| s.metric_type).unwrap_or_default(),
                        active: poll.active,
                    });
                }
                Err(e) => {
                    tracing::debug!(scaledobject = %self.label, trigger = i, kind = %e.kind, error = %e.message, "poll failed");
                    let spec = self.scalers[i]
                        .as_ref()
                        .and_then(|s| s.metric_specs().into_iter().next());
                    ts.metric = spec.as_ref().map(|m| m.name.clone());
                    ts.target = spec.map(|m| m.target);
                    // A refused configuration is not a source failing: it neither holds
                    // replicas nor counts for fallback (it is reported as it is).
                    let unusable = e.kind == ErrorKind::Config;
                    ts.error = Some(e);
                    outcomes.push(if unusable {
                        Outcome::Unusable
                    } else {
                        Outcome::Failed
                    });
                }
            }
            statuses.push(ts);
        }
        let decision = decide(&self.spec, &mut self.state, &outcomes, Instant::now());
        for (ts, f) in statuses.iter_mut().zip(&self.state.failures) {
            ts.failures = *f;
        }
        (decision, statuses)
    }

    /// Publishes a round: the sink, the Prometheus metrics and the status the API serves.
    fn publish(
        &mut self,
        inner: &Inner,
        so: &ScaledObject,
        decision: Decision,
        statuses: Vec<TriggerStatus>,
    ) {
        let changed = self.last.as_ref() != Some(&decision);
        inner.sink.decided(&self.id, &decision, changed);
        let mut any_error = false;
        for ts in &statuses {
            if let Some(metric) = &ts.metric {
                let keda = crate::metrics::KedaScalerLabels {
                    namespace: self.id.namespace.clone(),
                    metric: metric.clone(),
                    scaledObject: self.id.name.clone(),
                    scaler: crate::metrics::keda_scaler_name(&ts.type_name),
                    triggerIndex: ts.index.to_string(),
                    r#type: "scaledobject".into(),
                };
                if let Some(value) = ts.value {
                    inner.metrics.keda_values.get_or_create(&keda).set(value);
                }
                if let Some(active) = ts.active {
                    inner
                        .metrics
                        .keda_active
                        .get_or_create(&keda)
                        .set(i64::from(active));
                }
                if ts.error.is_some() {
                    inner.metrics.keda_errors.get_or_create(&keda).inc();
                }
            }
            any_error |= ts.error.is_some();
            if let (Some(metric), Some(value)) = (&ts.metric, ts.value) {
                inner
                    .metrics
                    .values
                    .get_or_create(&ValueLabels {
                        scaledobject: self.label.clone(),
                        metric: metric.clone(),
                    })
                    .set(value);
            }
        }
        if any_error {
            inner
                .metrics
                .keda_object_errors
                .get_or_create(&crate::metrics::KedaObjectLabels {
                    namespace: self.id.namespace.clone(),
                    scaledObject: self.id.name.clone(),
                })
                .inc();
        }
        inner
            .metrics
            .desired_replicas
            .get_or_create(&ObjectLabels {
                scaledobject: self.label.clone(),
            })
            .set(i64::from(decision.replicas));
        if let Ok(mut status) = inner.status.write() {
            status.insert(
                self.id.clone(),
                ObjectStatus {
                    scaled_object: self.label.clone(),
                    id: Some(self.id.clone()),
                    triggers: statuses,
                    decision: Some(decision.clone()),
                    polling_interval: so.polling_interval,
                    fallback: so.fallback,
                    last_poll: Some(
                        humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
                    ),
                },
            );
        }
        self.last = Some(decision);
    }
}
