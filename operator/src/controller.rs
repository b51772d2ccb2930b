//! Cluster mode: KEDA's resources from the Kubernetes API, and KEDA's actions on the
//! cluster.
//!
//! - ScaledObjects, TriggerAuthentications and ClusterTriggerAuthentications come from
//!   kube-rs reflectors (one watch each, limited to `--watch-namespace`); ScaledJobs are
//!   watched only to say they are not supported.
//! - Each round loads them into a [`ManifestSet`], the file loader's one path: the
//!   Secrets and ConfigMaps their TriggerAuthentications name are read by name (never
//!   a Secret watch), and `env` parameters resolve from the scale target's pod template.
//! - Then, per ScaledObject: the finalizer, the HPA `keda-hpa-{name}` it owns, the
//!   status KEDA writes, Events on failure transitions; and on deletion the restore of
//!   the original replicas, the HPA gone, the finalizer removed.
//! - Decisions of the engine drive the `/scale` subresource: to zero (or
//!   `idleReplicaCount`) after the cooldown, from zero when a trigger becomes active,
//!   the fallback replicas, the paused replicas; nothing while paused.
//!
//! Only the leader ([`crate::leader`]) runs rounds and writes; every write checks that it
//! still leads right before it is sent.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt as _;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::{WatchStreamExt as _, reflector, watcher};
use serde_json::{Value, json};

use crate::decide::Decision;
use crate::engine::{DecisionSink, Engine, ObjectStatus};
use crate::leader::Leadership;
use crate::manifest::{
    CLUSTER_OBJECT_NAMESPACE_ENV, Env, ManifestSet, PodEnv, ScaleTargetRef, ScaledObject,
};
use crate::metrics::Metrics;
use trustscale::scaler::ObjectRef;

/// KEDA's finalizer (kept, so that an installation moved from KEDA carries over).
pub const FINALIZER: &str = "finalizer.keda.sh";
/// Pauses all scaling writes while `"true"`.
pub const PAUSED_ANNOTATION: &str = "autoscaling.keda.sh/paused";
/// Scales once to this many replicas, then holds.
pub const PAUSED_REPLICAS_ANNOTATION: &str = "autoscaling.keda.sh/paused-replicas";
/// The label (and external metric selector) naming a ScaledObject.
pub const NAME_LABEL: &str = "scaledobject.keda.sh/name";
const MANAGER: &str = "trustscale-operator";
/// The digest of the HPA spec trustscale last wrote, on the HPA.
const SPEC_ANNOTATION: &str = "trustscale.io/hpa-spec";
/// How long a scale target read (its pod template's environment) is used before it is
/// read again, when the ScaledObject's spec did not change.
const TARGET_REFRESH: Duration = Duration::from_secs(300);
/// How often the leader looks again for an installed KEDA.
const KEDA_CHECK: Duration = Duration::from_secs(30);

/// How cluster mode runs.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// Only this namespace (KEDA's `WATCH_NAMESPACE`); `None`: all.
    pub watch_namespace: Option<String>,
    /// How often every ScaledObject is reconciled even when nothing changed (the
    /// Secrets and ConfigMaps its TriggerAuthentications name are read again then; its
    /// scale target when its spec changed or every 5 minutes).
    pub resync: Duration,
    /// Act even when an installed KEDA is found.
    pub take_over: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions {
            watch_namespace: None,
            resync: Duration::from_secs(30),
            take_over: false,
        }
    }
}

/// Keeps the engine's decisions for the controller (and passes them on).
pub struct DecisionRelay {
    next: Arc<dyn DecisionSink>,
    pending: Mutex<HashMap<ObjectRef, Decision>>,
    notify: tokio::sync::Notify,
}

impl std::fmt::Debug for DecisionRelay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecisionRelay").finish_non_exhaustive()
    }
}

impl DecisionRelay {
    /// A relay that passes every decision on to `next`.
    #[must_use]
    pub fn new(next: Arc<dyn DecisionSink>) -> Arc<Self> {
        Arc::new(DecisionRelay {
            next,
            pending: Mutex::new(HashMap::new()),
            notify: tokio::sync::Notify::new(),
        })
    }

    fn take(&self) -> HashMap<ObjectRef, Decision> {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

impl DecisionSink for DecisionRelay {
    fn decided(&self, object: &ObjectRef, decision: &Decision, changed: bool) {
        self.next.decided(object, decision, changed);
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(object.clone(), decision.clone());
        self.notify.notify_one();
    }
}

fn keda(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("keda.sh", "v1alpha1", kind), plural)
}

fn hpa_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
    )
}

/// Secrets (`true`) and ConfigMaps read in one round, by (kind, namespace, name).
type SourceCache = HashMap<(bool, String, String), Option<BTreeMap<String, String>>>;

/// What the controller knows of one ScaledObject between rounds.
#[derive(Clone, Debug)]
struct View {
    so: ScaledObject,
    raw: Arc<DynamicObject>,
    target: Option<Target>,
}

/// A scale target as last read.
#[derive(Clone, Debug)]
struct Target {
    resource: ApiResource,
    namespace: String,
    name: String,
    /// `spec.replicas` when read.
    replicas: Option<i32>,
    /// When it was read (`None`: served from the cache, `replicas` unknown).
    read_at: Option<std::time::Instant>,
}

#[derive(Clone, Debug, Default)]
struct Memory {
    /// The digest of the status last written (to write only changes).
    status: Option<u64>,
    /// When a trigger was last active (RFC 3339).
    last_active: Option<String>,
    /// The replicas the target had when first seen.
    original: Option<i32>,
    /// The paused replica count already applied.
    paused_applied: Option<i32>,
    /// The last Ready problem reported in an Event.
    reported: Option<String>,
    /// The triggers reported failing in an Event.
    failing: HashSet<usize>,
    /// The last decision.
    decision: Option<Decision>,
    /// The target is not this ScaledObject's to scale now (a foreign HPA, another
    /// ScaledObject has it, it has no /scale): nothing is written to it.
    blocked: bool,
    /// The target's replicas as last read or written.
    replicas: Option<i32>,
    /// Inactive but within the cooldown (KEDA's `ScalerCooldown`).
    cooling: bool,
    /// When `replicas` was read or written (a round's older read never overwrites it).
    replicas_at: Option<std::time::Instant>,
    /// A round has reconciled it since this replica leads (until then `act` leaves it).
    reconciled: bool,
}

/// The cluster-mode controller.
pub struct Controller {
    client: kube::Client,
    options: KubeOptions,
    engine: Engine,
    relay: Arc<DecisionRelay>,
    metrics: Arc<Metrics>,
    leadership: Arc<Leadership>,
    /// `KEDA_CLUSTER_OBJECT_NAMESPACE` only: a tenant's trigger never sees the rest of
    /// the operator's environment.
    env: Env,
    views: Mutex<HashMap<ObjectRef, View>>,
    memory: Mutex<HashMap<ObjectRef, Memory>>,
    /// Whether an installed KEDA keeps this replica from acting.
    observe_only: std::sync::atomic::AtomicBool,
    scaled_objects: reflector::Store<DynamicObject>,
    trigger_auths: reflector::Store<DynamicObject>,
    cluster_trigger_auths: reflector::Store<DynamicObject>,
    scaled_jobs: reflector::Store<DynamicObject>,
    hpas: reflector::Store<DynamicObject>,
    discovery: Mutex<HashMap<(String, String), ApiResource>>,
    changed: Arc<tokio::sync::Notify>,
    /// The ScaledObjects with a `keda_scaled_object_paused` series.
    paused_series: Mutex<HashSet<ObjectRef>>,
    /// Scale targets as last read, per ScaledObject.
    targets: Mutex<HashMap<ObjectRef, CachedTarget>>,
}

/// A scale target read for a ScaledObject, and what it was read for.
#[derive(Clone, Debug)]
struct CachedTarget {
    generation: Option<i64>,
    reference: ScaleTargetRef,
    at: std::time::Instant,
    target: Target,
    env: PodEnv,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// When an object was created (seconds), for "the older one".
type TimeKey = Option<i64>;

/// Each scale target's ScaledObject: the oldest of those that name it (not being deleted).
type Owners = HashMap<(String, String, String, String), (TimeKey, String)>;

fn owners(store: &reflector::Store<DynamicObject>) -> Owners {
    let mut out: Owners = HashMap::new();
    for o in store.state() {
        if o.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let Some(t) = o.data["spec"]
            .get("scaleTargetRef")
            .and_then(|t| serde_json::from_value::<ScaleTargetRef>(t.clone()).ok())
        else {
            continue;
        };
        let ns = o.metadata.namespace.as_deref().unwrap_or("default");
        let mine = (time_key(&o), o.metadata.name.clone().unwrap_or_default());
        let e = out
            .entry(target_key(ns, &t))
            .or_insert_with(|| mine.clone());
        if mine < *e {
            *e = mine;
        }
    }
    out
}

fn time_key(o: &DynamicObject) -> TimeKey {
    o.metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
}

/// A scale target, as two ScaledObjects name the same one: namespace, API group, kind,
/// name.
fn target_key(namespace: &str, t: &ScaleTargetRef) -> (String, String, String, String) {
    (
        namespace.to_string(),
        t.api_version()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        t.kind().to_string(),
        t.name.clone(),
    )
}

/// Another ScaledObject of the same namespace, older than this one (`created`: its
/// creation time in seconds; `None`, being created: newer than all), already scaling
/// `target`, if any: the rule of the controller's rounds ([`owners`]), so that the older
/// one's own updates are never refused.
#[must_use]
pub fn claimed_by(
    store: &reflector::Store<DynamicObject>,
    namespace: &str,
    name: &str,
    created: Option<i64>,
    target: &ScaleTargetRef,
) -> Option<String> {
    let (their_time, owner) = owners(store).remove(&target_key(namespace, target))?;
    let ours = (created.unwrap_or(i64::MAX), name);
    (owner != name && (their_time.unwrap_or(i64::MAX), owner.as_str()) < ours).then_some(owner)
}

impl Controller {
    /// Starts watching (the reflectors run from now on, on every replica, so that a
    /// follower that takes over starts warm); rounds run while this replica leads.
    #[must_use]
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        client: kube::Client,
        options: KubeOptions,
        engine: Engine,
        relay: Arc<DecisionRelay>,
        metrics: Arc<Metrics>,
        leadership: Arc<Leadership>,
        env: &Env,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> (Arc<Controller>, Vec<tokio::task::JoinHandle<()>>) {
        let mut tasks = Vec::new();
        let changed = Arc::new(tokio::sync::Notify::new());
        let ns = options.watch_namespace.clone();
        let mut watch_with = |ar: ApiResource,
                              namespaced: bool,
                              what: &'static str,
                              config: watcher::Config| {
            let api: Api<DynamicObject> = match (&ns, namespaced) {
                (Some(ns), true) => Api::namespaced_with(client.clone(), ns, &ar),
                _ => Api::all_with(client.clone(), &ar),
            };
            let writer = reflector::store::Writer::new(ar);
            let reader = writer.as_reader();
            let changed = Arc::clone(&changed);
            let mut stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                // Held is only what is read: no managedFields (a real server's take more
                // than the object), and of a status only what a round reads back.
                let stream = reflector(
                    writer,
                    watcher(api, config).modify(|o: &mut DynamicObject| {
                        o.metadata.managed_fields = None;
                        slim_status(o);
                    }),
                )
                .default_backoff();
                let mut stream = std::pin::pin!(stream);
                let mut failing = false;
                // What each object last looked like, status aside: the operator's own
                // status writes (and resourceVersion bumps) do not start rounds.
                let mut seen: HashMap<String, u64> = HashMap::new();
                loop {
                    tokio::select! {
                        item = stream.next() => match item {
                            Some(Ok(event)) => {
                                if failing {
                                    tracing::info!(resource = what, "watch recovered");
                                    failing = false;
                                }
                                let significant = match event {
                                    watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                                        let uid = o.metadata.uid.clone().unwrap_or_default();
                                        seen.insert(uid, fingerprint(&o)) != Some(fingerprint(&o))
                                    }
                                    watcher::Event::Delete(o) => {
                                        seen.remove(o.metadata.uid.as_deref().unwrap_or_default());
                                        true
                                    }
                                    watcher::Event::Init => {
                                        seen.clear();
                                        false
                                    }
                                    watcher::Event::InitDone => true,
                                };
                                if significant {
                                    changed.notify_one();
                                }
                            }
                            Some(Err(e)) => {
                                if !failing {
                                    tracing::warn!(resource = what, error = %e, "watch failed; retrying with backoff");
                                    failing = true;
                                }
                            }
                            None => return,
                        },
                        _ = stop.changed() => return,
                    }
                }
            }));
            reader
        };
        let mut watch = |ar: ApiResource, namespaced: bool, what: &'static str| {
            watch_with(ar, namespaced, what, watcher::Config::default())
        };
        let scaled_objects = watch(keda("ScaledObject", "scaledobjects"), true, "scaledobjects");
        let trigger_auths = watch(
            keda("TriggerAuthentication", "triggerauthentications"),
            true,
            "triggerauthentications",
        );
        let cluster_trigger_auths = watch(
            keda(
                "ClusterTriggerAuthentication",
                "clustertriggerauthentications",
            ),
            false,
            "clustertriggerauthentications",
        );
        let scaled_jobs = watch_with(
            keda("ScaledJob", "scaledjobs"),
            true,
            "scaledjobs",
            watcher::Config::default(),
        );
        // The HPAs of the watched namespaces (ours and anyone's: a foreign one on a
        // target, or with our name, must be seen), read from here, never by a GET.
        let hpas = watch_with(
            hpa_resource(),
            true,
            "horizontalpodautoscalers",
            watcher::Config::default(),
        );
        let cluster_ns = env
            .get(CLUSTER_OBJECT_NAMESPACE_ENV)
            .filter(|v| !v.is_empty())
            .unwrap_or("keda")
            .to_string();
        let controller = Arc::new(Controller {
            client,
            options,
            engine,
            relay,
            metrics,
            leadership,
            env: Env::from_pairs([(CLUSTER_OBJECT_NAMESPACE_ENV, cluster_ns)]),
            views: Mutex::new(HashMap::new()),
            memory: Mutex::new(HashMap::new()),
            observe_only: std::sync::atomic::AtomicBool::new(false),
            scaled_objects,
            trigger_auths,
            cluster_trigger_auths,
            scaled_jobs,
            hpas,
            discovery: Mutex::new(HashMap::new()),
            changed,
            paused_series: Mutex::new(HashSet::new()),
            targets: Mutex::new(HashMap::new()),
        });
        tasks.push(tokio::spawn(Arc::clone(&controller).rounds(stop.clone())));
        tasks.push(tokio::spawn(Arc::clone(&controller).act(stop.clone())));
        (controller, tasks)
    }

    /// The ScaledObjects the reflector holds (for the webhook's cluster-wide checks).
    #[must_use]
    pub fn scaled_object_store(&self) -> reflector::Store<DynamicObject> {
        self.scaled_objects.clone()
    }

    /// The client.
    #[must_use]
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    fn leading(&self) -> bool {
        self.leadership.leading()
    }

    fn acting(&self) -> bool {
        self.leading() && !self.observe_only.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn rounds(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut leader = self.leadership.subscribe();
        let mut was_leading = false;
        let mut reported_jobs: HashSet<String> = HashSet::new();
        let mut detected: Option<std::time::Instant> = None;
        loop {
            let leading = self.leading();
            if leading && detected.is_none_or(|t| t.elapsed() >= KEDA_CHECK) {
                self.detect_keda().await;
                detected = Some(std::time::Instant::now());
            }
            if !leading && was_leading {
                // A follower neither polls nor acts, and forgets what it knew: a replica
                // that leads again starts from the cluster, not from its memory.
                self.engine.apply(&ManifestSet::default(), &self.env).await;
                self.views
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                self.memory
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                self.targets
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .clear();
                detected = None;
                tracing::info!("not the leader: polling stopped");
            }
            was_leading = leading;
            if leading {
                // Wait for the reflectors' first lists before the first round: an empty
                // store is not "no ScaledObjects".
                let ready = tokio::time::timeout(Duration::from_secs(30), async {
                    let _ = self.scaled_objects.wait_until_ready().await;
                    let _ = self.trigger_auths.wait_until_ready().await;
                    let _ = self.cluster_trigger_auths.wait_until_ready().await;
                    let _ = self.hpas.wait_until_ready().await;
                })
                .await;
                if ready.is_ok() {
                    self.report_scaled_jobs(&mut reported_jobs).await;
                    self.round().await;
                } else {
                    tracing::warn!("the watches have not listed yet; the round waits");
                }
            }
            tokio::select! {
                _ = self.changed.notified() => {
                    // Let a burst of changes settle into one round.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                _ = tokio::time::sleep(self.options.resync) => {}
                _ = leader.changed() => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Looks for an installed KEDA (its APIService service, its Deployment). Anything
    /// that cannot be read counts as "maybe": this replica then writes nothing until it
    /// can tell. Logs only changes.
    async fn detect_keda(&self) {
        if self.options.take_over {
            return;
        }
        let mut found = Vec::new();
        let apiservices = Api::<DynamicObject>::all_with(
            self.client.clone(),
            &ApiResource::from_gvk_with_plural(
                &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
                "apiservices",
            ),
        );
        match apiservices.get_opt("v1beta1.external.metrics.k8s.io").await {
            Ok(Some(a)) => {
                if let Some(svc) = a.data["spec"]["service"]["name"].as_str()
                    && svc.starts_with("keda-")
                {
                    found.push(format!(
                        "APIService v1beta1.external.metrics.k8s.io points at Service {svc}"
                    ));
                }
            }
            Ok(None) => {}
            Err(e) => found.push(format!(
                "cannot read APIService v1beta1.external.metrics.k8s.io: {}",
                first_line(&e.to_string())
            )),
        }
        let deployments = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("apps", "v1", "Deployment"),
            "deployments",
        );
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), "keda", &deployments);
        match api.get_opt("keda-operator").await {
            Ok(Some(_)) => found.push("Deployment keda/keda-operator exists".into()),
            Ok(None) => {}
            Err(e) => found.push(format!(
                "cannot read Deployment keda/keda-operator: {}",
                first_line(&e.to_string())
            )),
        }
        let keda = !found.is_empty();
        let was = self
            .observe_only
            .swap(keda, std::sync::atomic::Ordering::Relaxed);
        if keda && !was {
            tracing::warn!(found = ?found, "KEDA is installed (or cannot be ruled out): trustscale watches and serves metrics but writes nothing (no HPA, scale, status or finalizer) until KEDA is removed or --take-over-from-keda is given");
        } else if !keda && was {
            tracing::info!("no KEDA found any more: acting");
        }
    }

    async fn report_scaled_jobs(&self, reported: &mut HashSet<String>) {
        let jobs = self.scaled_jobs.state();
        // Bounded by the ScaledJobs there are (a deleted one is forgotten).
        reported.retain(|uid| jobs.iter().any(|j| j.metadata.uid.as_deref() == Some(uid)));
        if !self.acting() {
            // Said (and its Event written) once this replica may write.
            return;
        }
        for job in jobs {
            let uid = job.metadata.uid.clone().unwrap_or_default();
            if !reported.insert(uid) {
                continue;
            }
            let ns = job.metadata.namespace.clone().unwrap_or_default();
            let name = job.metadata.name.clone().unwrap_or_default();
            tracing::warn!(scaledjob = %format!("{ns}/{name}"), "ScaledJobs are not supported by trustscale; left untouched");
            if self.acting() {
                self.event(
                    &job,
                    "ScaledJob",
                    "Warning",
                    "ScaledJobNotSupported",
                    "ScaledJobs are not supported by trustscale; this one is left untouched",
                )
                .await;
            }
        }
    }

    /// One reconcile of everything.
    async fn round(&self) {
        let started = std::time::Instant::now();
        let mut set = ManifestSet::default();
        // Problems name the object themselves ("ScaledObject shop/web: ...").
        let origin = |_: &str, _: &DynamicObject| PathBuf::from("the Kubernetes API");
        for (kind, store) in [
            ("TriggerAuthentication", &self.trigger_auths),
            ("ClusterTriggerAuthentication", &self.cluster_trigger_auths),
        ] {
            for o in store.state() {
                set.add_object(&origin(kind, &o), &with_kind(&o, kind));
            }
        }
        let mut raws: HashMap<ObjectRef, Arc<DynamicObject>> = HashMap::new();
        let mut deleting = Vec::new();
        let mut unloadable = Vec::new();
        for o in self.scaled_objects.state() {
            let id = ObjectRef {
                namespace: o
                    .metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
                name: o.metadata.name.clone().unwrap_or_default(),
            };
            if o.metadata.deletion_timestamp.is_some() {
                deleting.push(o);
                continue;
            }
            match set.add_object(&origin("ScaledObject", &o), &with_kind(&o, "ScaledObject")) {
                Some(problem) => unloadable.push((id, o, problem)),
                None => {
                    raws.insert(id, o);
                }
            }
        }
        // The Secrets and ConfigMaps named, read by name.
        let refs = set.references(&self.env);
        for (ns, name) in &refs.secrets {
            if let Some(data) = self.secret(ns, name).await {
                set.add_secret(ns, name, data);
            }
        }
        for (ns, name) in &refs.config_maps {
            if let Some(data) = self.config_map(ns, name).await {
                set.add_config_map(ns, name, data);
            }
        }
        // The scale targets: their environment, replicas, and whether they scale.
        let mut envs = HashMap::new();
        let mut targets = HashMap::new();
        let mut secret_cache = HashMap::new();
        let mut keep = HashSet::new();
        for (id, target) in set.scale_targets() {
            keep.insert(id.clone());
            // A target read recently for the same ScaledObject spec is not read again
            // (its replicas come from /scale when a write may be due).
            let generation = raws.get(&id).and_then(|o| o.metadata.generation);
            let cached = self
                .targets
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(&id)
                .filter(|c| {
                    c.generation == generation
                        && c.reference == target
                        && c.at.elapsed() < TARGET_REFRESH
                })
                .map(|c| (c.target.clone(), c.env.clone()));
            if let Some((mut t, env)) = cached {
                t.replicas = None;
                t.read_at = None;
                envs.insert(id.clone(), env);
                targets.insert(id, Ok(t));
                continue;
            }
            match self.read_target(&id, &target).await {
                Ok((t, obj)) => {
                    let env = self.pod_env(&id.namespace, &obj, &mut secret_cache).await;
                    self.targets
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(
                            id.clone(),
                            CachedTarget {
                                generation,
                                reference: target.clone(),
                                at: std::time::Instant::now(),
                                target: t.clone(),
                                env: env.clone(),
                            },
                        );
                    envs.insert(id.clone(), env);
                    targets.insert(id, Ok(t));
                }
                Err(e) => {
                    envs.insert(
                        id.clone(),
                        PodEnv {
                            containers: Vec::new(),
                            error: Some(e.clone()),
                        },
                    );
                    targets.insert(id, Err(e));
                }
            }
        }
        self.targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| keep.contains(id));
        set.use_pod_env(envs);
        let all = set.scaled_objects(&self.env);
        // Paused ones do not poll (KEDA stops their scale loop).
        let paused: HashSet<ObjectRef> = all
            .iter()
            .filter(|so| is_paused(so))
            .map(|so| so.id.clone())
            .collect();
        let running: Vec<ScaledObject> = all
            .iter()
            .filter(|so| !paused.contains(&so.id))
            .cloned()
            .collect();
        self.engine.apply_objects(running, &set.problems).await;
        drop(set);
        let statuses: HashMap<ObjectRef, ObjectStatus> = self
            .engine
            .status()
            .into_iter()
            .filter_map(|s| Some((s.id.clone()?, s)))
            .collect();
        // Two ScaledObjects on one target (the webhook denies it, but objects may predate
        // it): the older keeps it; the newer is not Ready and writes nothing.
        // Every ScaledObject counts, one that cannot be loaded too (it may be fixed).
        let owners = owners(&self.scaled_objects);
        let mut views = HashMap::new();
        for so in all {
            let Some(raw) = raws.get(&so.id).cloned() else {
                continue;
            };
            let claimed = so.scale_target_ref.as_ref().and_then(|t| {
                let (_, owner) = owners.get(&target_key(&so.id.namespace, t))?;
                (*owner != so.id.name).then(|| {
                    format!(
                        "the workload '{}' of type '{}' is already managed by the ScaledObject '{owner}'",
                        t.name,
                        t.kind()
                    )
                })
            });
            let target = targets.remove(&so.id);
            let view = View {
                so,
                raw,
                target: target.as_ref().and_then(|t| t.as_ref().ok().cloned()),
            };
            let is_claimed = claimed.is_some();
            let problem = match &target {
                Some(Err(e)) => Some(e.clone()),
                None => Some("spec.scaleTargetRef is required".to_string()),
                Some(Ok(_)) => claimed,
            };
            if self.acting() {
                if is_claimed {
                    // An HPA it made while it had the target (the older one was broken)
                    // must not fight the owner's.
                    self.delete_hpa(&view.so.id.namespace, &hpa_name(&view.so), &view.so)
                        .await;
                }
                self.reconcile(&view, problem, statuses.get(&view.so.id))
                    .await;
            }
            views.insert(view.so.id.clone(), view);
        }
        // keda_scaled_object_paused, for what is here; gone ones lose their series.
        {
            let mut series = self
                .paused_series
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let labels = |id: &ObjectRef| crate::metrics::KedaObjectLabels {
                namespace: id.namespace.clone(),
                scaledObject: id.name.clone(),
            };
            for (id, v) in &views {
                self.metrics
                    .keda_paused
                    .get_or_create(&labels(id))
                    .set(i64::from(is_paused(&v.so)));
            }
            series.retain(|id| {
                views.contains_key(id) || {
                    self.metrics.keda_paused.remove(&labels(id));
                    false
                }
            });
            series.extend(views.keys().cloned());
        }
        // One that cannot be loaded says why where its owner looks: its status.
        let mut live: HashSet<ObjectRef> = views.keys().cloned().collect();
        for (id, raw, problem) in unloadable {
            live.insert(id.clone());
            if self.acting() {
                self.report_unloadable(&id, &raw, &problem).await;
            }
        }
        *self
            .views
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = views;
        for o in deleting {
            if self.acting() {
                self.finalize(&o, &owners).await;
            }
        }
        // Forget what is gone.
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|id, _| live.contains(id));
        tracing::debug!(
            scaledobjects = live.len(),
            elapsed_ms = started.elapsed().as_millis(),
            "round done"
        );
    }

    async fn report_unloadable(&self, id: &ObjectRef, raw: &DynamicObject, problem: &str) {
        let memory = self.memory_of(id);
        if memory.reported.as_deref() != Some(problem) {
            // The engine has logged it (once); the owner sees it as an Event and status.
            self.event(
                raw,
                "ScaledObject",
                "Warning",
                "ScaledObjectCheckFailed",
                problem,
            )
            .await;
            self.update(id, |m| m.reported = Some(problem.to_string()));
        }
        let body = json!({"conditions": [
            condition("Ready", false, "ScaledObjectCheckFailed", problem),
            condition("Active", false, "ScalerNotActive", "Scaling is not performed because triggers are not active"),
            condition("Fallback", false, "NoFallbackFound", "No fallbacks are active on this scaled object"),
            condition("Paused", false, "ScaledObjectUnpaused", "ScaledObject is not paused"),
        ]});
        let d = value_digest(&body);
        if memory.status != Some(d) && self.write_status(raw, &body).await {
            self.update(id, |m| m.status = Some(d));
        }
    }

    async fn secret(&self, ns: &str, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let api: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(s)) => {
                let mut data: BTreeMap<String, Vec<u8>> = s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0))
                    .collect();
                for (k, v) in s.string_data.unwrap_or_default() {
                    data.insert(k, v.into_bytes());
                }
                Some(data)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(secret = %format!("{ns}/{name}"), error = %e, "cannot read a Secret a TriggerAuthentication names");
                None
            }
        }
    }

    async fn config_map(&self, ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> =
            Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(Some(c)) => Some(c.data.unwrap_or_default()),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(configmap = %format!("{ns}/{name}"), error = %e, "cannot read a ConfigMap a TriggerAuthentication names");
                None
            }
        }
    }

    /// The API resource of `api_version`/`kind`, from discovery (cached).
    async fn resource(&self, api_version: &str, kind: &str) -> Result<ApiResource, String> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(ar) = self
            .discovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
        {
            return Ok(ar.clone());
        }
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g, v),
            None => ("", api_version),
        };
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.client, &gvk)
            .await
            .map_err(|e| {
                format!(
                    "scale target kind {kind} ({api_version}) is not served: {}",
                    first_line(&e.to_string())
                )
            })?;
        if !caps.subresources.iter().any(|(s, _)| s.plural == "scale") {
            return Err(format!(
                "the scale target's kind {kind} ({api_version}) has no /scale subresource"
            ));
        }
        self.discovery
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(key, ar.clone());
        Ok(ar)
    }

    async fn read_target(
        &self,
        id: &ObjectRef,
        target: &ScaleTargetRef,
    ) -> Result<(Target, DynamicObject), String> {
        if target.name.is_empty() {
            return Err("spec.scaleTargetRef.name is required".into());
        }
        let ar = self.resource(target.api_version(), target.kind()).await?;
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), &id.namespace, &ar);
        let obj = match api.get_opt(&target.name).await {
            Ok(Some(o)) => o,
            Ok(None) => {
                return Err(format!(
                    "the scale target {} {}/{} does not exist",
                    target.kind(),
                    id.namespace,
                    target.name
                ));
            }
            Err(e) => {
                return Err(format!(
                    "cannot read the scale target: {}",
                    first_line(&e.to_string())
                ));
            }
        };
        let replicas = obj.data["spec"]["replicas"]
            .as_i64()
            .and_then(|r| i32::try_from(r).ok());
        Ok((
            Target {
                resource: ar,
                namespace: id.namespace.clone(),
                name: target.name.clone(),
                replicas,
                read_at: Some(std::time::Instant::now()),
            },
            obj,
        ))
    }

    /// The environments of the target's pod template's containers: `value`s, and the
    /// `valueFrom` Secret and ConfigMap keys and `envFrom` Secrets and ConfigMaps of the
    /// target's namespace, as the kubelet would give them.
    async fn pod_env(&self, ns: &str, target: &DynamicObject, cache: &mut SourceCache) -> PodEnv {
        let Some(containers) = target.data["spec"]["template"]["spec"]["containers"].as_array()
        else {
            return PodEnv {
                containers: Vec::new(),
                error: Some(
                    "the scale target has no pod template (spec.template.spec.containers)".into(),
                ),
            };
        };
        let mut out = Vec::new();
        for c in containers.iter().take(64) {
            let name = c["name"].as_str().unwrap_or_default().to_string();
            let mut vars: Vec<(String, String)> = Vec::new();
            for from in c["envFrom"].as_array().into_iter().flatten().take(64) {
                let prefix = from["prefix"].as_str().unwrap_or_default();
                let (secret, source) = if let Some(s) = from["secretRef"]["name"].as_str() {
                    (true, s)
                } else if let Some(m) = from["configMapRef"]["name"].as_str() {
                    (false, m)
                } else {
                    continue;
                };
                if let Some(data) = self.source(ns, secret, source, cache).await {
                    vars.extend(data.into_iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
                }
            }
            for e in c["env"].as_array().into_iter().flatten().take(1024) {
                let Some(var) = e["name"].as_str() else {
                    continue;
                };
                let value = if let Some(v) = e["value"].as_str() {
                    Some(v.to_string())
                } else if let (Some(s), Some(k)) = (
                    e["valueFrom"]["secretKeyRef"]["name"].as_str(),
                    e["valueFrom"]["secretKeyRef"]["key"].as_str(),
                ) {
                    self.source(ns, true, s, cache)
                        .await
                        .and_then(|d| d.get(k).cloned())
                } else if let (Some(m), Some(k)) = (
                    e["valueFrom"]["configMapKeyRef"]["name"].as_str(),
                    e["valueFrom"]["configMapKeyRef"]["key"].as_str(),
                ) {
                    self.source(ns, false, m, cache)
                        .await
                        .and_then(|d| d.get(k).cloned())
                } else {
                    None
                };
                if let Some(v) = value {
                    vars.push((var.to_string(), v));
                }
            }
            out.push((name, Env::from_pairs(vars)));
        }
        PodEnv {
            containers: out,
            error: None,
        }
    }

    async fn source(
        &self,
        ns: &str,
        secret: bool,
        name: &str,
        cache: &mut SourceCache,
    ) -> Option<BTreeMap<String, String>> {
        let key = (secret, ns.to_string(), name.to_string());
        if let Some(v) = cache.get(&key) {
            return v.clone();
        }
        let v = if secret {
            self.secret(ns, name).await.map(|d| {
                d.into_iter()
                    .filter_map(|(k, v)| Some((k, String::from_utf8(v).ok()?)))
                    .collect()
            })
        } else {
            self.config_map(ns, name).await
        };
        cache.insert(key, v.clone());
        v
    }

    /// Finalizer, HPA, pause, status for one ScaledObject.
    async fn reconcile(
        &self,
        view: &View,
        target_problem: Option<String>,
        status: Option<&ObjectStatus>,
    ) {
        let so = &view.so;
        if !has_finalizer(&view.raw) {
            self.set_finalizer(&view.raw, true).await;
        }
        let raw_status = &view.raw.data["status"];
        let seen = self.memory_of(&so.id);
        let original = seen
            .original
            .or_else(|| {
                raw_status["originalReplicaCount"]
                    .as_i64()
                    .and_then(|r| i32::try_from(r).ok())
            })
            .or(view.target.as_ref().and_then(|t| t.replicas));
        let last_active = seen
            .last_active
            .clone()
            .or_else(|| stored_last_active(so, raw_status));
        let mut problem = target_problem;
        let paused = is_paused(so);
        let paused_replicas = paused_replicas(so);
        let hpa_name = hpa_name(so);
        // A renamed HPA (advanced.horizontalPodAutoscalerConfig.name): the old one goes.
        if let Some(old) = raw_status["hpaName"].as_str()
            && old != hpa_name
        {
            self.delete_hpa(&so.id.namespace, old, so).await;
        }
        let mut paused_applied = seen.paused_applied;
        let mut blocked = problem.is_some();
        if problem.is_none() {
            if paused {
                self.delete_hpa(&so.id.namespace, &hpa_name, so).await;
                if let (Some(n), Some(t)) = (paused_replicas, &view.target)
                    && paused_applied != Some(n)
                    && self.write_scale(t, n, &so.id, "paused-replicas").await
                {
                    paused_applied = Some(n);
                    self.update(&so.id, |m| m.replicas = Some(n));
                }
            } else {
                paused_applied = None;
                if let Err(e) = self.ensure_hpa(so, &hpa_name, status).await {
                    problem = Some(e);
                    blocked = true;
                }
            }
        }
        // Triggers that cannot run make the ScaledObject not Ready, as in KEDA (the others
        // still scale it).
        if problem.is_none() {
            // Those the loader refused, and those that did not build (a config error).
            let built: Vec<String> = status
                .map(|s| s.triggers.as_slice())
                .unwrap_or_default()
                .iter()
                .filter_map(|t| t.error.as_ref())
                .filter(|e| e.kind == trustscale::scaler::ErrorKind::Config)
                .map(|e| e.message.clone())
                .collect();
            let mut failing: Vec<String> = so
                .triggers
                .iter()
                .filter_map(|t| t.as_ref().err().map(|e| e.to_string()))
                .collect();
            for m in built {
                if !failing.contains(&m) && !failing.iter().any(|f| f.ends_with(&m)) {
                    failing.push(m);
                }
            }
            if !failing.is_empty() {
                problem = Some(failing.join("; "));
            }
        }
        match &problem {
            Some(p) if seen.reported.as_deref() != Some(p.as_str()) => {
                tracing::warn!(scaledobject = %so.id, problem = %p, "scaledobject is not ready");
                self.event(
                    &view.raw,
                    "ScaledObject",
                    "Warning",
                    "ScaledObjectCheckFailed",
                    p,
                )
                .await;
            }
            None if seen.reported.is_some() => {
                self.event(
                    &view.raw,
                    "ScaledObject",
                    "Normal",
                    "ScaledObjectReady",
                    "ScaledObject is ready for scaling",
                )
                .await;
            }
            _ => {}
        }
        // A trigger that starts failing is an Event once (KEDA's KEDAScalerFailed).
        let mut failing = seen.failing.clone();
        for t in status.map(|s| s.triggers.as_slice()).unwrap_or_default() {
            match &t.error {
                Some(e) if failing.insert(t.index) => {
                    let msg = format!(
                        "trigger {} ({}): {}: {}",
                        t.index, t.type_name, e.kind, e.message
                    );
                    self.event(
                        &view.raw,
                        "ScaledObject",
                        "Warning",
                        "KEDAScalerFailed",
                        &msg,
                    )
                    .await;
                }
                Some(_) => {}
                None => {
                    failing.remove(&t.index);
                }
            }
        }
        let read = view
            .target
            .as_ref()
            .and_then(|t| Some((t.replicas?, t.read_at?)));
        self.update(&so.id, |m| {
            m.original = original;
            if m.last_active.is_none() {
                m.last_active = last_active;
            }
            m.paused_applied = paused_applied;
            m.reported = problem.clone();
            m.failing = failing;
            m.blocked = blocked;
            m.reconciled = true;
            if let Some((r, at)) = read
                && m.replicas_at.is_none_or(|t| t < at)
            {
                m.replicas = Some(r);
                m.replicas_at = Some(at);
            }
        });
        self.refresh_status(view, status).await;
    }

    /// Writes the status if it changed since the last write.
    async fn refresh_status(&self, view: &View, status: Option<&ObjectStatus>) {
        let memory = self.memory_of(&view.so.id);
        let body = status_body(
            view,
            &memory,
            memory.reported.as_deref(),
            status,
            &hpa_name(&view.so),
        );
        let d = value_digest(&body);
        if memory.status != Some(d) && self.write_status(&view.raw, &body).await {
            self.update(&view.so.id, |m| m.status = Some(d));
        }
    }

    fn memory_of(&self, id: &ObjectRef) -> Memory {
        self.memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// Changes the fields `change` touches, and only those: `act` and rounds both keep
    /// what they own here.
    fn update(&self, id: &ObjectRef, change: impl FnOnce(&mut Memory)) {
        change(
            self.memory
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .entry(id.clone())
                .or_default(),
        );
    }

    fn so_api(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            ns,
            &keda("ScaledObject", "scaledobjects"),
        )
    }

    async fn set_finalizer(&self, raw: &DynamicObject, on: bool) {
        if !self.acting() {
            return;
        }
        let ns = raw.metadata.namespace.as_deref().unwrap_or("default");
        let name = raw.metadata.name.as_deref().unwrap_or_default();
        let mut finalizers: Vec<String> = raw.metadata.finalizers.clone().unwrap_or_default();
        finalizers.retain(|f| f != FINALIZER);
        if on {
            finalizers.push(FINALIZER.into());
        }
        // Names the resourceVersion read: a concurrent change of the list is a 409, and
        // the next round retries from the new object.
        let patch = json!({"metadata": {"finalizers": finalizers, "resourceVersion": raw.metadata.resource_version}});
        if let Err(e) = self
            .so_api(ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            tracing::debug!(scaledobject = %format!("{ns}/{name}"), error = %e, "finalizer not written; retried next round");
        }
    }

    async fn write_status(&self, raw: &DynamicObject, body: &Value) -> bool {
        if !self.acting() {
            return false;
        }
        let ns = raw.metadata.namespace.as_deref().unwrap_or("default");
        let name = raw.metadata.name.as_deref().unwrap_or_default();
        match self
            .so_api(ns)
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(&json!({"status": body})),
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::debug!(scaledobject = %format!("{ns}/{name}"), error = %e, "status not written; retried");
                false
            }
        }
    }

    async fn ensure_hpa(
        &self,
        so: &ScaledObject,
        name: &str,
        status: Option<&ObjectStatus>,
    ) -> Result<(), String> {
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &so.id.namespace,
            &hpa_resource(),
        );
        let desired = hpa_spec(so, status);
        let digest = {
            use sha2::Digest as _;
            let d = sha2::Sha256::digest(desired.to_string().as_bytes());
            d.iter()
                .take(12)
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        // From the reflector (a create that races one it has not seen yet is a 409,
        // and the next round sees it).
        let existing = self
            .hpas
            .get(&reflector::ObjectRef::new_with(name, hpa_resource()).within(&so.id.namespace))
            .map(|h| (*h).clone());
        let owner = json!([{
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "name": so.id.name,
            "uid": so.uid.clone().unwrap_or_default(), "controller": true, "blockOwnerDeletion": true,
        }]);
        let labels = json!({NAME_LABEL: so.id.name, "app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/name": name});
        if let Some(h) = &existing
            && !owned_by(h, so)
        {
            return Err(format!(
                "HPA {name} exists and is not owned by this ScaledObject; it is left alone"
            ));
        }
        // An HPA without metrics would scale on 80 % CPU (the HPA's default), and one
        // without some of them on the rest alone: it is written once every trigger's
        // metric name is known (after their first poll); until then it stays as it is.
        let complete = so.triggers.iter().flatten().all(|t| {
            status.is_some_and(|st| {
                st.triggers
                    .iter()
                    .any(|x| x.index == t.index && x.metric.is_some())
            })
        });
        if !complete || desired["metrics"].as_array().is_none_or(Vec::is_empty) {
            return Ok(());
        }
        match existing {
            Some(h) => {
                // Current when what we last wrote is what we want now (the annotation: the
                // server fills in defaults and rewrites quantities, so its spec never
                // equals ours) and nobody changed what we set since (a subset check).
                let ours = h
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SPEC_ANNOTATION))
                    .is_some_and(|d| *d == digest);
                if ours && covers(&h.data["spec"], &desired) {
                    return Ok(());
                }
                if !self.acting() {
                    return Ok(());
                }
                // The whole spec, replaced (a removed field goes), with the
                // resourceVersion read: a concurrent change is a 409, retried next round.
                let mut next = h.clone();
                next.data["spec"] = desired;
                next.metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(SPEC_ANNOTATION.into(), digest);
                let l = next.metadata.labels.get_or_insert_with(BTreeMap::new);
                l.insert(NAME_LABEL.into(), so.id.name.clone());
                l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
                let written = api.replace(name, &PostParams::default(), &next).await;
                self.hpa_written(written.map(drop), so, name, "updated")?;
            }
            None => {
                if !self.acting() {
                    return Ok(());
                }
                let obj = json!({
                    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                    "metadata": {"name": name, "namespace": so.id.namespace, "labels": labels,
                                 "ownerReferences": owner, "annotations": {SPEC_ANNOTATION: digest}},
                    "spec": desired,
                });
                let obj: DynamicObject = serde_json::from_value(obj).map_err(|e| e.to_string())?;
                let written = api.create(&PostParams::default(), &obj).await;
                self.hpa_written(written.map(drop), so, name, "created")?;
            }
        }
        Ok(())
    }

    /// Counts and logs an HPA write. A 409 (AlreadyExists, Conflict) means this replica's
    /// watch had not caught up: not a problem, the next round has the new object.
    fn hpa_written(
        &self,
        result: Result<(), kube::Error>,
        so: &ScaledObject,
        name: &str,
        what: &str,
    ) -> Result<(), String> {
        match result {
            Ok(()) => {
                self.metrics
                    .hpa_writes
                    .get_or_create(&crate::metrics::ResultLabels {
                        result: what.into(),
                    })
                    .inc();
                tracing::info!(scaledobject = %so.id, hpa = name, "HPA {what}");
                Ok(())
            }
            Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
                self.changed.notify_one();
                Ok(())
            }
            Err(e) => Err(format!(
                "HPA {name} not {what}: {}",
                first_line(&e.to_string())
            )),
        }
    }

    async fn delete_hpa(&self, ns: &str, name: &str, so: &ScaledObject) {
        if !self.acting() {
            return;
        }
        // From the reflector, as in `ensure_hpa`: a paused ScaledObject costs no request
        // per round.
        let Some(h) = self
            .hpas
            .get(&reflector::ObjectRef::new_with(name, hpa_resource()).within(ns))
        else {
            return;
        };
        if !owned_by(&h, so) {
            return;
        }
        let api = Api::<DynamicObject>::namespaced_with(self.client.clone(), ns, &hpa_resource());
        let deleted = match api.delete(name, &DeleteParams::default()).await {
            // Gone already (the watch had not caught up).
            Err(kube::Error::Api(s)) if s.is_not_found() => return,
            r => r.map(drop),
        };
        if let Err(e) = self.hpa_written(deleted, so, name, "deleted") {
            tracing::warn!(error = %e, "retried next round");
        }
    }

    /// A ScaledObject being deleted: restore, HPA gone, finalizer removed.
    async fn finalize(&self, raw: &DynamicObject, owners: &Owners) {
        if !has_finalizer(raw) {
            return;
        }
        let mut set = ManifestSet::default();
        set.add_object(
            &PathBuf::from("finalizing"),
            &with_kind(raw, "ScaledObject"),
        );
        let Some(so) = set.scaled_objects(&self.env).into_iter().next() else {
            // Unreadable: nothing of ours can be found from it; let it go.
            self.set_finalizer(raw, false).await;
            return;
        };
        let original = raw.data["status"]["originalReplicaCount"]
            .as_i64()
            .and_then(|r| i32::try_from(r).ok())
            .or(self.memory_of(&so.id).original);
        // A target another ScaledObject scales is not this one's to restore.
        let theirs = so.scale_target_ref.as_ref().is_some_and(|t| {
            owners
                .get(&target_key(&so.id.namespace, t))
                .is_some_and(|(_, owner)| *owner != so.id.name)
        });
        if so.advanced.restore_to_original_replica_count
            && !theirs
            && let (Some(n), Some(target)) = (original, &so.scale_target_ref)
            && let Ok((t, _)) = self.read_target(&so.id, target).await
            && !self
                .write_scale(&t, n, &so.id, "restoreToOriginalReplicaCount")
                .await
        {
            // Retried next round: the finalizer holds the ScaledObject until then.
            return;
        }
        self.delete_hpa(&so.id.namespace, &hpa_name(&so), &so).await;
        self.set_finalizer(raw, false).await;
        tracing::info!(scaledobject = %so.id, "scaledobject finalized");
    }

    async fn write_scale(&self, t: &Target, replicas: i32, id: &ObjectRef, why: &str) -> bool {
        // The fence: a replica that stopped leading writes nothing.
        if !self.acting() {
            return false;
        }
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &t.namespace, &t.resource);
        let patch = json!({"spec": {"replicas": replicas}});
        match api
            .patch_scale(&t.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                self.metrics
                    .scale_writes
                    .get_or_create(&crate::metrics::ResultLabels { result: why.into() })
                    .inc();
                tracing::info!(scaledobject = %id, target = %t.name, replicas, reason = why, "scaled the target");
                true
            }
            Err(e) => {
                tracing::warn!(scaledobject = %id, target = %t.name, error = %e, "cannot scale the target; retried");
                false
            }
        }
    }

    /// Applies the engine's decisions to `/scale` (activation, deactivation, fallback).
    /// Applies the engine's decisions to `/scale` as KEDA's scale executor does.
    async fn act(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = self.relay.notify.notified() => {}
                _ = stop.changed() => return,
            }
            for (id, decision) in self.relay.take() {
                if !self.acting() {
                    continue;
                }
                let view = self
                    .views
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(&id)
                    .cloned();
                let Some(view) = view else { continue };
                if is_paused(&view.so) {
                    continue;
                }
                let now = SystemTime::now();
                let seen = self.memory_of(&id);
                if !seen.reconciled {
                    continue;
                }
                if decision.active {
                    self.update(&id, |m| {
                        m.last_active = Some(humantime::format_rfc3339_seconds(now).to_string());
                    });
                }
                let last_active = if decision.active {
                    Some(now)
                } else {
                    // Ours, else the status's (another leader's, before a failover).
                    seen.last_active
                        .clone()
                        .or_else(|| stored_last_active(&view.so, &view.raw.data["status"]))
                        .and_then(|t| humantime::parse_rfc3339_weak(&t).ok())
                };
                let created = view.raw.metadata.creation_timestamp.as_ref().map(|t| {
                    SystemTime::UNIX_EPOCH
                        + Duration::from_secs(u64::try_from(t.0.as_second()).unwrap_or(0))
                });
                let cooled_down = match last_active {
                    Some(t) => now >= t + Duration::from_secs(view.so.cooldown_period),
                    None => created.is_none_or(|c| {
                        now >= c + Duration::from_secs(view.so.initial_cooldown_period)
                    }),
                };
                let mut facts = Facts {
                    active: decision.active,
                    failing: decision.failing,
                    current: seen.replicas.unwrap_or(-1),
                    cooled_down,
                };
                // A target that is not ours to scale (its HPA is someone else's, another
                // ScaledObject has it, it has no /scale) is never written.
                if let (false, Some(target)) = (seen.blocked, &view.target) {
                    // The scale is read only when a write may be due.
                    let due = seen.replicas.is_none() || scale_write(&view.so, &facts).is_some();
                    if due && let Some(current) = self.current_replicas(target).await {
                        facts.current = current;
                        self.update(&id, |m| {
                            m.replicas = Some(current);
                            m.replicas_at = Some(std::time::Instant::now());
                        });
                        if let Some((n, why)) = scale_write(&view.so, &facts)
                            && self.write_scale(target, n, &id, why).await
                        {
                            self.update(&id, |m| {
                                m.replicas = Some(n);
                                m.replicas_at = Some(std::time::Instant::now());
                            });
                            let (reason, verb) = if n > current {
                                ("KEDAScaleTargetActivated", "Scaled")
                            } else {
                                ("KEDAScaleTargetDeactivated", "Deactivated")
                            };
                            let message = format!(
                                "{verb} {} {}/{} from {current} to {n}",
                                target.resource.kind, target.namespace, target.name
                            );
                            self.event(&view.raw, "ScaledObject", "Normal", reason, &message)
                                .await;
                        }
                    }
                }
                let cooling =
                    !decision.active && !cooled_down && facts.current > rest_replicas(&view.so);
                let was = seen.decision.as_ref().map(|d| (d.active, d.fallback));
                self.update(&id, |m| {
                    m.cooling = cooling;
                    m.decision = Some(decision.clone());
                });
                // Active and Fallback show in the status as they change, not a round later.
                if was != Some((decision.active, decision.fallback)) {
                    let status = self.engine.status_of(&id);
                    self.refresh_status(&view, status.as_ref()).await;
                }
            }
        }
    }

    async fn current_replicas(&self, t: &Target) -> Option<i32> {
        let api =
            Api::<DynamicObject>::namespaced_with(self.client.clone(), &t.namespace, &t.resource);
        match api.get_scale(&t.name).await {
            Ok(s) => Some(s.spec.and_then(|s| s.replicas).unwrap_or(0)),
            Err(e) => {
                tracing::debug!(target = %t.name, error = %e, "cannot read the scale subresource");
                None
            }
        }
    }

    async fn event(
        &self,
        obj: &DynamicObject,
        kind: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        if !self.acting() {
            return;
        }
        let ns = obj
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = obj.metadata.name.clone().unwrap_or_default();
        let now = humantime::format_rfc3339_micros(SystemTime::now()).to_string();
        let message: String = message.chars().take(1024).collect();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{name}.{:016x}", fastrand::u64(..)), "namespace": ns},
            "involvedObject": {"apiVersion": "keda.sh/v1alpha1", "kind": kind, "name": name, "namespace": ns, "uid": obj.metadata.uid},
            "reason": reason, "message": message, "type": type_,
            "source": {"component": MANAGER},
            "reportingComponent": MANAGER, "reportingInstance": crate::leader::identity(),
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        });
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(self.client.clone(), &ns);
        match serde_json::from_value(event) {
            Ok(e) => {
                if let Err(e) = api.create(&PostParams::default(), &e).await {
                    tracing::debug!(error = %e, "event not written");
                }
            }
            Err(e) => tracing::debug!(error = %e, "event not built"),
        }
    }
}

/// What one poll's result means for a target, as KEDA's scale executor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facts {
    /// A trigger is active.
    pub active: bool,
    /// A trigger failed (KEDA's `isError`).
    pub failing: bool,
    /// The target's replicas now.
    pub current: i32,
    /// `cooldownPeriod` has passed since the last activity (or `initialCooldownPeriod`
    /// since creation, when it never was active).
    pub cooled_down: bool,
}

/// The replicas below the HPA's range an inactive target goes to: `idleReplicaCount`,
/// else `minReplicaCount` (KEDA's "idle or minimum").
fn rest_replicas(so: &ScaledObject) -> i32 {
    i32::try_from(so.idle_replica_count.unwrap_or(so.min_replica_count)).unwrap_or(i32::MAX)
}

/// The `/scale` write KEDA's executor makes for `facts`, and why; the HPA does the rest
/// (between `minReplicas` and `maxReplicas`, never from or to zero):
/// - active: from zero (or from below the minimum, with `idleReplicaCount`) to
///   `max(minReplicaCount, 1)`;
/// - a trigger failed and none is active: nothing (with `fallback` the HPA gets the
///   fallback through the metric);
/// - inactive past the cooldown: to `idleReplicaCount` (or zero, with a minimum of zero);
/// - inactive below the minimum without `idleReplicaCount`: to the minimum.
#[must_use]
pub fn scale_write(so: &ScaledObject, f: &Facts) -> Option<(i32, &'static str)> {
    let min = i32::try_from(so.min_replica_count).unwrap_or(i32::MAX);
    let idle = so
        .idle_replica_count
        .map(|i| i32::try_from(i).unwrap_or(i32::MAX));
    if f.current < 0 {
        return None;
    }
    if f.active {
        let from_idle = idle.is_some() && f.current < min;
        return (from_idle || f.current == 0).then_some((min.max(1), "activation"));
    }
    if f.failing {
        return None;
    }
    if idle.is_some_and(|i| f.current > i) || (f.current > 0 && min == 0) {
        return f
            .cooled_down
            .then_some((idle.unwrap_or(min), "deactivation"))
            .filter(|(n, _)| *n != f.current);
    }
    if idle.is_none() && f.current < min {
        return Some((min, "minReplicaCount"));
    }
    None
}

/// Whether `have` holds everything `want` sets (objects: every key of `want`, recursively;
/// lists: the same length, element by element; quantities compared by value, as the
/// server rewrites `1024Mi` as `1Gi`).
fn covers(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| covers(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| covers(a, b))
        }
        (Value::String(h), Value::String(w)) if h != w => {
            match (
                trustscale::scaler::parse_quantity(h),
                trustscale::scaler::parse_quantity(w),
            ) {
                (Ok(a), Ok(b)) => (a - b).abs() <= f64::EPSILON * a.abs().max(b.abs()),
                _ => false,
            }
        }
        (Value::Number(h), Value::Number(w)) => h.as_f64() == w.as_f64(),
        (h, w) => h == w,
    }
}

/// How far the written `lastActiveTime` may lag while the ScaledObject is active.
fn last_active_slack(so: &ScaledObject) -> Duration {
    Duration::from_secs((so.cooldown_period / 2).clamp(1, 300))
}

/// The last activity another leader recorded: `lastActiveTime`, and if its status still
/// says Active, that plus the slack it may lag by (a cooldown is never cut short by a
/// failover; it may run that much longer).
fn stored_last_active(so: &ScaledObject, status: &Value) -> Option<String> {
    let t = status["lastActiveTime"].as_str()?;
    let active = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Active" && c["status"] == "True");
    if !active {
        return Some(t.to_string());
    }
    let at = humantime::parse_rfc3339_weak(t).ok()? + last_active_slack(so);
    Some(humantime::format_rfc3339_seconds(at).to_string())
}

/// Keeps of an object's status only the fields a round reads back (a ScaledObject's
/// `lastActiveTime`, `originalReplicaCount`, `hpaName`, `health` keys, `conditions`); an
/// HPA's status (it changes at every HPA sync) goes entirely.
fn slim_status(o: &mut DynamicObject) {
    let Some(status) = o.data.get_mut("status").and_then(Value::as_object_mut) else {
        return;
    };
    const KEEP: [&str; 5] = [
        "lastActiveTime",
        "originalReplicaCount",
        "hpaName",
        "health",
        "conditions",
    ];
    status.retain(|k, _| KEEP.contains(&k.as_str()));
    if let Some(health) = status.get_mut("health").and_then(Value::as_object_mut) {
        for v in health.values_mut() {
            *v = Value::Null;
        }
    }
    if status.is_empty()
        && let Some(m) = o.data.as_object_mut()
    {
        m.remove("status");
    }
}

/// A digest of a JSON value (what was last written, without keeping it).
fn value_digest(v: &Value) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// A digest of an object without its status and bookkeeping.
fn fingerprint(o: &DynamicObject) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    o.metadata.name.hash(&mut h);
    o.metadata.namespace.hash(&mut h);
    o.metadata.generation.hash(&mut h);
    o.metadata.labels.hash(&mut h);
    o.metadata.annotations.hash(&mut h);
    o.metadata.finalizers.hash(&mut h);
    o.metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    if let Some(m) = o.data.as_object() {
        for (k, v) in m {
            if k != "status" {
                k.hash(&mut h);
                v.to_string().hash(&mut h);
            }
        }
    }
    h.finish()
}

fn first_line(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}

fn with_kind(o: &DynamicObject, kind: &str) -> Value {
    let mut v = serde_json::to_value(o).unwrap_or(Value::Null);
    v["kind"] = kind.into();
    v["apiVersion"] = "keda.sh/v1alpha1".into();
    v
}

fn has_finalizer(o: &DynamicObject) -> bool {
    o.metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == FINALIZER))
}

fn owned_by(hpa: &DynamicObject, so: &ScaledObject) -> bool {
    hpa.metadata.owner_references.as_ref().is_some_and(|refs| {
        refs.iter().any(|r| {
            r.kind == "ScaledObject"
                && r.name == so.id.name
                && so.uid.as_deref().is_none_or(|u| u.is_empty() || r.uid == u)
        })
    })
}

/// Whether `autoscaling.keda.sh/paused` is `"true"` or paused replicas are set.
#[must_use]
pub fn is_paused(so: &ScaledObject) -> bool {
    so.annotations
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v == "true")
        || paused_replicas(so).is_some()
}

fn paused_replicas(so: &ScaledObject) -> Option<i32> {
    so.annotations
        .get(PAUSED_REPLICAS_ANNOTATION)
        .and_then(|v| v.trim().parse::<i32>().ok())
        .filter(|n| *n >= 0)
}

/// The HPA's name: `advanced.horizontalPodAutoscalerConfig.name` or `keda-hpa-{name}`.
#[must_use]
pub fn hpa_name(so: &ScaledObject) -> String {
    so.advanced
        .horizontal_pod_autoscaler_config
        .as_ref()
        .and_then(|c| c.name.clone())
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| format!("keda-hpa-{}", so.id.name))
}

/// The HPA spec KEDA would write for `so`, its external metrics from the engine's status.
#[must_use]
pub fn hpa_spec(so: &ScaledObject, status: Option<&ObjectStatus>) -> Value {
    let target = so.scale_target_ref.clone().unwrap_or_default();
    let mut metrics = Vec::new();
    let mut by_index: BTreeMap<usize, Value> = BTreeMap::new();
    for r in &so.resource_triggers {
        let t = if r.metric_type == "Utilization" {
            json!({"type": "Utilization", "averageUtilization": r.value.parse::<i32>().unwrap_or(0)})
        } else {
            json!({"type": "AverageValue", "averageValue": r.value})
        };
        let m = match &r.container_name {
            Some(c) => {
                json!({"type": "ContainerResource", "containerResource": {"name": r.resource, "container": c, "target": t}})
            }
            None => json!({"type": "Resource", "resource": {"name": r.resource, "target": t}}),
        };
        by_index.insert(r.index, m);
    }
    if let Some(st) = status {
        for t in &st.triggers {
            let (Some(name), Some(target_value)) = (&t.metric, t.target) else {
                continue;
            };
            let value = trustscale::scaler::format_quantity(target_value);
            let metric_type = so
                .triggers
                .iter()
                .filter_map(|s| s.as_ref().ok())
                .find(|s| s.index == t.index)
                .map(|s| s.metric_type)
                .unwrap_or_default();
            let target = match metric_type {
                trustscale::scaler::MetricType::Value => json!({"type": "Value", "value": value}),
                trustscale::scaler::MetricType::AverageValue => {
                    json!({"type": "AverageValue", "averageValue": value})
                }
            };
            by_index.insert(
                t.index,
                json!({"type": "External", "external": {
                    "metric": {"name": name, "selector": {"matchLabels": {NAME_LABEL: so.id.name}}},
                    "target": target,
                }}),
            );
        }
    }
    metrics.extend(by_index.into_values());
    let mut spec = json!({
        "scaleTargetRef": {"apiVersion": target.api_version(), "kind": target.kind(), "name": target.name},
        "minReplicas": so.min_replica_count.max(1),
        "maxReplicas": so.max_replica_count.max(so.min_replica_count.max(1)),
        "metrics": metrics,
    });
    if let Some(b) = so
        .advanced
        .horizontal_pod_autoscaler_config
        .as_ref()
        .and_then(|c| c.behavior.clone())
    {
        spec["behavior"] = b;
    }
    spec
}

fn condition(type_: &str, on: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if on { "True" } else { "False" }, "reason": reason, "message": message})
}

/// The status KEDA writes.
fn status_body(
    view: &View,
    memory: &Memory,
    problem: Option<&str>,
    status: Option<&ObjectStatus>,
    hpa: &str,
) -> Value {
    let so = &view.so;
    let paused = is_paused(so);
    let decision = memory
        .decision
        .as_ref()
        .or(status.and_then(|s| s.decision.as_ref()));
    let active = decision.is_some_and(|d| d.active);
    let fallback = decision.is_some_and(|d| d.fallback);
    let trigger_error =
        decision.is_some_and(|d| d.failing && !d.active && !d.fallback) && so.fallback.is_none();
    let ready = match problem {
        // KEDA's TriggerError: nothing active, a trigger failing, no fallback.
        None if trigger_error => condition(
            "Ready",
            false,
            "TriggerError",
            "Triggers defined in ScaledObject are not working correctly",
        ),
        None => condition(
            "Ready",
            true,
            "ScaledObjectReady",
            "ScaledObject is defined correctly and is ready for scaling",
        ),
        Some(p) => condition("Ready", false, "ScaledObjectCheckFailed", p),
    };
    let active = if active {
        condition(
            "Active",
            true,
            "ScalerActive",
            "Scaling is performed because triggers are active",
        )
    } else if memory.cooling {
        condition(
            "Active",
            false,
            "ScalerCooldown",
            "Scaler cooling down because triggers are not active",
        )
    } else {
        condition(
            "Active",
            false,
            "ScalerNotActive",
            "Scaling is not performed because triggers are not active",
        )
    };
    let fallback = if fallback {
        condition(
            "Fallback",
            true,
            "FallbackExists",
            "At least one trigger is falling back on this scaled object",
        )
    } else {
        condition(
            "Fallback",
            false,
            "NoFallbackFound",
            "No fallbacks are active on this scaled object",
        )
    };
    let paused_c = if paused {
        condition(
            "Paused",
            true,
            "ScaledObjectPaused",
            "ScaledObject is paused",
        )
    } else {
        condition(
            "Paused",
            false,
            "ScaledObjectUnpaused",
            "ScaledObject is not paused",
        )
    };
    let mut external = Vec::new();
    let mut health = serde_json::Map::new();
    for t in status.map(|s| s.triggers.as_slice()).unwrap_or_default() {
        if let Some(m) = &t.metric {
            external.push(Value::from(m.clone()));
            health.insert(
                m.clone(),
                json!({"numberOfFailures": t.failures, "status": if t.error.is_some() { "Failing" } else { "Happy" }}),
            );
        }
    }
    let resource: Vec<Value> = so
        .resource_triggers
        .iter()
        .map(|r| Value::from(r.resource.clone()))
        .collect();
    let target = so.scale_target_ref.clone().unwrap_or_default();
    let (group, version) = match target.api_version().split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), target.api_version().to_string()),
    };
    let mut body = json!({
        "conditions": [ready, active, fallback, paused_c],
        "externalMetricNames": external,
        "resourceMetricNames": resource,
        "health": health,
        "hpaName": hpa,
        "scaleTargetKind": format!("{}.{}", target.api_version(), target.kind()),
        "scaleTargetGVKR": {
            "group": group, "version": version, "kind": target.kind(),
            "resource": view.target.as_ref().map(|t| t.resource.plural.clone()).unwrap_or_default(),
        },
    });
    if let Some(o) = memory.original {
        body["originalReplicaCount"] = o.into();
    }
    // lastActiveTime carries the cooldown across a failover, and matters once the
    // ScaledObject is inactive: then it is written exactly (once: it no longer moves).
    // While active it is written when it moved by half the cooldown (1 s to 5 min), not
    // at every poll as KEDA does; the leader itself keeps the exact time.
    let written = view.raw.data["status"]["lastActiveTime"].as_str();
    let parse = |t: &str| humantime::parse_rfc3339_weak(t).ok();
    let slack = last_active_slack(so);
    let last_active = match (written, &memory.last_active) {
        (Some(w), Some(m)) if decision.is_some_and(|d| d.active) => match (parse(w), parse(m)) {
            (Some(a), Some(b)) if b.duration_since(a).unwrap_or_default() < slack => Some(w),
            _ => Some(m.as_str()),
        },
        (w, m) => m.as_deref().or(w),
    };
    if let Some(t) = last_active {
        body["lastActiveTime"] = t.into();
    }
    // A merge patch keeps what it does not name: what is gone is written as null.
    body["pausedReplicaCount"] = paused_replicas(so).map_or(Value::Null, Value::from);
    for old in view.raw.data["status"]["health"]
        .as_object()
        .into_iter()
        .flat_map(|h| h.keys())
    {
        if !body["health"]
            .as_object()
            .is_some_and(|h| h.contains_key(old))
        {
            body["health"][old] = Value::Null;
        }
    }
    body
}
