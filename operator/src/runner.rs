//! The whole operator, for any registry: the mutual-TLS metrics API, the internal PKI
//! and its rotation, manifest watching, Prometheus and graceful shutdown.
//!
//! ```no_run
//! # async fn run() -> Result<(), trustscale_operator::OperatorError> {
//! use trustscale_operator::{Operator, OperatorConfig, builtins};
//!
//! let mut registry = builtins::registry();
//! // registry.register("my-source", MyBuilder::default());
//! let config = OperatorConfig::new(["/etc/trustscale/manifests"], "/certs");
//! let operator = Operator::start(config, registry).await?;
//! operator.run_until_signal().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use trustscale::scaler::{BuildContext, Registry};
use trustscale::trust::{TrustError, TrustFactory, TrustOptions};
use trustscale::watch::{FileWatch, WatchOptions};

use crate::authn::RequestHeaderOptions;
use crate::certs::CertManager;
use crate::cluster::{self, ClusterError, ClusterOptions};
use crate::controller::{Controller, DecisionRelay, KubeOptions};
use crate::engine::{DecisionSink, Engine, LogSink};
use crate::leader::{LeaderOptions, Leadership};
use crate::manifest::{self, Env};
use crate::metrics::Metrics;
use crate::pki::{PkiError, PkiOptions};
use crate::secretstore::{SecretError, SecretStore};
use crate::service;
use crate::webhook::{self, Validator};

/// How the operator runs.
#[derive(Clone, Debug)]
#[must_use]
pub struct OperatorConfig {
    /// Manifest files or folders (watched: changes apply without a restart).
    pub manifests: Vec<PathBuf>,
    /// The trust factory's options (the CA folders are always watched).
    pub trust: TrustOptions,
    /// The folder of the internal certificates.
    pub cert_dir: PathBuf,
    /// Generate and rotate the internal certificates (false: bring your own).
    pub cert_rotation: bool,
    /// Lifetimes and names of generated certificates.
    pub pki: PkiOptions,
    /// Address of the mutual-TLS metrics API (port 0: any free port).
    pub listen: SocketAddr,
    /// Address of the Prometheus metrics (plain HTTP), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Address of `/healthz`, `/livez` and `/readyz` (plain HTTP, for the kubelet), if any.
    pub health_listen: Option<SocketAddr>,
    /// Address of the validating admission webhook (HTTPS with the internal certificate,
    /// no client certificate asked for), if any.
    pub webhook_listen: Option<SocketAddr>,
    /// The environment triggers' `...FromEnv` and `env` parameters resolve from.
    pub env: Env,
    /// Folders whose files a trigger's `ca`, `cert` and `key` may name (none: only PEM
    /// given inline, as KEDA takes it from Secrets). The certificate folder is never one.
    pub allow_file_params: Vec<PathBuf>,
    /// Request-header authentication of the kube-apiserver's aggregation layer, if on.
    pub request_header: Option<RequestHeaderOptions>,
    /// In a cluster without [`OperatorConfig::request_header`], do not read the
    /// request-header settings from ConfigMap `kube-system/extension-apiserver-authentication`
    /// (the generic API server's `--authentication-skip-lookup`).
    pub authentication_skip_lookup: bool,
    /// How to reach the cluster, when there is one ([`crate::cluster::connect`]); `None`:
    /// never.
    pub cluster: Option<ClusterOptions>,
    /// Cluster mode: KEDA's resources from the API (the manifests are not read), HPAs,
    /// `/scale` and status written. `None`: file mode.
    pub kube: Option<KubeOptions>,
    /// Leader election (cluster only): only the leader polls and acts; followers answer
    /// the metrics API through it. An empty namespace means the operator's.
    pub leader_election: Option<LeaderOptions>,
}

impl OperatorConfig {
    /// Defaults: KEDA's `/custom/ca` CA folder and minimum versions from the environment
    /// (or the defaults, if the environment holds an invalid value: [`TrustOptions::from_env`]
    /// is the place to check that), rotation on, API on `0.0.0.0:6443`, Prometheus on
    /// `0.0.0.0:8080`, health probes on `0.0.0.0:8081`, the admission webhook on
    /// `0.0.0.0:9443`, the process environment, no request-header authentication.
    pub fn new(
        manifests: impl IntoIterator<Item = impl Into<PathBuf>>,
        cert_dir: impl Into<PathBuf>,
    ) -> Self {
        OperatorConfig {
            manifests: manifests.into_iter().map(Into::into).collect(),
            trust: TrustOptions::from_env().unwrap_or_default(),
            cert_dir: cert_dir.into(),
            cert_rotation: true,
            pki: PkiOptions::default(),
            listen: SocketAddr::from(([0, 0, 0, 0], 6443)),
            metrics_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
            health_listen: Some(SocketAddr::from(([0, 0, 0, 0], 8081))),
            webhook_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9443))),
            env: Env::process(),
            allow_file_params: Vec::new(),
            request_header: None,
            cluster: Some(ClusterOptions::new()),
            authentication_skip_lookup: false,
            kube: None,
            leader_election: None,
        }
    }

    /// Cluster mode on (or, with `None`, off).
    pub fn kube(mut self, options: Option<KubeOptions>) -> Self {
        self.kube = options;
        self
    }

    /// Leader election on (or, with `None`, off).
    pub fn leader_election(mut self, options: Option<LeaderOptions>) -> Self {
        self.leader_election = options;
        self
    }

    /// Turns off reading the cluster's request-header settings (see the field).
    pub fn authentication_skip_lookup(mut self, skip: bool) -> Self {
        self.authentication_skip_lookup = skip;
        self
    }

    /// Sets how to reach the cluster (`None`: never, whatever the environment says).
    pub fn cluster(mut self, options: Option<ClusterOptions>) -> Self {
        self.cluster = options;
        self
    }

    /// Turns on (or, with `None`, off) request-header authentication of the
    /// kube-apiserver's aggregation layer.
    pub fn request_header(mut self, options: Option<RequestHeaderOptions>) -> Self {
        self.request_header = options;
        self
    }

    /// Sets the trust options.
    pub fn trust(mut self, options: TrustOptions) -> Self {
        self.trust = options;
        self
    }

    /// Turns certificate rotation on or off.
    pub fn cert_rotation(mut self, on: bool) -> Self {
        self.cert_rotation = on;
        self
    }

    /// Sets the PKI options.
    pub fn pki(mut self, pki: PkiOptions) -> Self {
        self.pki = pki;
        self
    }

    /// Sets the API address.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// Sets (or, with `None`, turns off) the Prometheus address.
    pub fn metrics_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.metrics_listen = addr;
        self
    }

    /// Sets (or, with `None`, turns off) the health probe address.
    pub fn health_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.health_listen = addr;
        self
    }

    /// Sets (or, with `None`, turns off) the admission webhook's address.
    pub fn webhook_listen(mut self, addr: Option<SocketAddr>) -> Self {
        self.webhook_listen = addr;
        self
    }

    /// Lets triggers name files under these folders (never under the certificate folder).
    pub fn allow_file_params(mut self, dirs: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        self.allow_file_params = dirs.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the environment triggers resolve from.
    pub fn env(mut self, env: Env) -> Self {
        self.env = env;
        self
    }
}

/// Why the operator could not start.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The trust factory could not be built (an invalid option, an unreadable CA folder).
    #[error("trust")]
    Trust(#[from] TrustError),
    /// The internal certificates could not be made or read.
    #[error("internal certificates in {dir}")]
    Certs {
        /// The certificate folder.
        dir: PathBuf,
        /// What went wrong.
        #[source]
        source: PkiError,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what})")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What it is for.
        what: &'static str,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The options contradict each other.
    #[error("{0}")]
    Config(String),
    /// The cluster connection could not be made.
    #[error("the cluster")]
    Cluster(#[from] ClusterError),
    /// The certificates' Secret could not be read or written.
    #[error("the internal certificates' Secret")]
    Secret(#[source] SecretError),
}

/// The first round with the certificates' Secret, retried for a while: serving a set of
/// this replica's own while the Secret holds another would split the replicas' trust.
async fn first_secret_round(
    store: &SecretStore,
    dir: &std::path::Path,
    pki: &PkiOptions,
    metrics: &Metrics,
) -> Result<(), OperatorError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match store.sync(dir, pki, true).await {
            Ok(round) => {
                crate::certs::report(dir, &round.action, metrics);
                tracing::info!(secret = %store.describe(), adopted = round.adopted, written = round.written, "internal certificates kept in their Secret");
                return Ok(());
            }
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::warn!(error = %trustscale::error::Chain(&e), "the certificates' Secret is not usable yet; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(OperatorError::Secret(e)),
        }
    }
}

/// How often the caBundle is checked again without a CA change (another writer may have
/// overwritten it).
const CA_BUNDLE_RESYNC: Duration = Duration::from_secs(30);

/// A running operator. Dropping it without [`Operator::shutdown`] leaves its tasks running
/// until the runtime ends.
pub struct Operator {
    engine: Engine,
    trust: TrustFactory,
    api_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    health_addr: Option<SocketAddr>,
    webhook_addr: Option<SocketAddr>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Operator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Operator")
            .field("api_addr", &self.api_addr)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Operator {
    /// Starts the operator with `registry`'s scalers and a [`LogSink`].
    pub async fn start(
        config: OperatorConfig,
        registry: Registry,
    ) -> Result<Operator, OperatorError> {
        Self::start_with_sink(config, registry, Arc::new(LogSink)).await
    }

    /// Starts the operator, reporting every decision to `sink`.
    pub async fn start_with_sink(
        config: OperatorConfig,
        registry: Registry,
        sink: Arc<dyn DecisionSink>,
    ) -> Result<Operator, OperatorError> {
        if config.pki.cert_lifetime < Duration::from_secs(2) {
            // X.509 validity has one-second resolution.
            return Err(OperatorError::Config(format!(
                "the certificate lifetime must be at least 2s (got {})",
                humantime::format_duration(config.pki.cert_lifetime)
            )));
        }
        if config.pki.cert_lifetime >= config.pki.ca_lifetime {
            return Err(OperatorError::Config(format!(
                "the certificate lifetime ({}) must be shorter than the CA lifetime ({})",
                humantime::format_duration(config.pki.cert_lifetime),
                humantime::format_duration(config.pki.ca_lifetime)
            )));
        }
        let mut options = config.trust.clone();
        options.watch = true;
        // A tenant's trigger must never read the operator's own identity, and reads files
        // only where the operator was told it may.
        options.file_params = trustscale::trust::material::FileParams::Under {
            allowed: config.allow_file_params.clone(),
            denied: vec![config.cert_dir.clone()],
        };
        let trust = TrustFactory::new(options)?;
        let metrics = Arc::new(Metrics::default());
        let cluster = match config.cluster.clone() {
            Some(options) => cluster::connect(options).await?,
            None => None,
        };
        // With rotation in a cluster, the Secret is the truth: the folder starts as what
        // it holds (or what this replica writes there first).
        let secret = match (&cluster, config.cert_rotation) {
            (Some(c), true) => c
                .options
                .cert_secret_name
                .as_deref()
                .filter(|n| !n.is_empty())
                .map(|name| SecretStore::new(c, name)),
            _ => None,
        };
        if let Some(store) = &secret {
            first_secret_round(store, &config.cert_dir, &config.pki, &metrics).await?;
        }
        // With the Secret, rotation happens in its rounds only: the folder holds nothing
        // the Secret does not.
        let certs = CertManager::start(
            config.cert_dir.clone(),
            config.cert_rotation && secret.is_none(),
            config.pki.clone(),
            &trust,
            config.request_header.clone(),
            Arc::clone(&metrics),
        )
        .map_err(|source| OperatorError::Certs {
            dir: config.cert_dir.clone(),
            source,
        })?;
        // Before anything is served: in a cluster, no user is ever let in unreviewed.
        if let Some(c) = &cluster {
            certs
                .authenticator()
                .use_reviewer(crate::authn::Reviewer::new(c.client.clone()));
        }
        let ctx = BuildContext {
            trust: trust.clone(),
        };
        // A review comes from any tenant: it never sees the operator's own environment
        // (its `...FromEnv` parameters are checked when the trigger runs).
        let validator = Arc::new(Validator::new(
            registry.clone(),
            ctx.clone(),
            Env::from_pairs(std::iter::empty::<(String, String)>()),
        ));
        if config.kube.is_some() && cluster.is_none() {
            return Err(OperatorError::Config(
                "cluster mode (--kube) needs a cluster: give --kubeconfig, set KUBECONFIG, or run in a pod".into(),
            ));
        }
        if config.leader_election.is_some() && cluster.is_none() {
            return Err(OperatorError::Config(
                "leader election needs a cluster: give --kubeconfig, set KUBECONFIG, or run in a pod".into(),
            ));
        }
        let leadership = match (&cluster, &config.leader_election) {
            (Some(_), Some(_)) => Leadership::candidate(),
            _ => Leadership::always(),
        };
        if config.leader_election.is_some() {
            certs.use_leadership(Arc::clone(&leadership));
        }
        let relay = config
            .kube
            .is_some()
            .then(|| DecisionRelay::new(Arc::clone(&sink)));
        let sink: Arc<dyn DecisionSink> = match &relay {
            Some(r) => Arc::clone(r) as Arc<dyn DecisionSink>,
            None => sink,
        };
        let engine = Engine::new(registry, ctx, Arc::clone(&metrics), sink);
        let (stop, stop_rx) = tokio::sync::watch::channel(false);

        let bind = |addr: SocketAddr, what: &'static str| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| OperatorError::Bind { addr, what, source })
        };
        let api = bind(config.listen, "the metrics API").await?;
        let api_addr = api.local_addr().map_err(|source| OperatorError::Bind {
            addr: config.listen,
            what: "the metrics API",
            source,
        })?;
        tracing::info!(address = %api_addr, min_tls = %trust.options().service_min_tls, "mutual-TLS metrics API listening");
        let forwarder = match (&cluster, &config.leader_election) {
            (Some(c), Some(_)) => Some(crate::forward::Forwarder::new(
                Arc::clone(&leadership),
                config.cert_dir.clone(),
                format!("{}.{}.svc", c.options.service_name, c.namespace),
                trust.clone(),
            )),
            _ => None,
        };
        let mut tasks = vec![tokio::spawn(service::serve_api_forwarding(
            api,
            certs.server(),
            certs.authenticator(),
            engine.clone(),
            forwarder,
            stop_rx.clone(),
        ))];
        if let (Some(c), Some(options)) = (&cluster, &config.leader_election) {
            let mut options = options.clone();
            if options.namespace.is_empty() {
                options.namespace.clone_from(&c.namespace);
            }
            // Followers dial the leader's pod IP (downward API) at the API's port.
            options.address = std::env::var("POD_IP")
                .ok()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, api_addr.port()).to_string());
            if options.address.is_none() {
                tracing::warn!(
                    "POD_IP is not set: followers cannot reach this replica while it leads"
                );
            }
            tracing::info!(lease = %format!("{}/{}", options.namespace, options.lease_name), identity = %options.identity, "leader election on");
            tasks.push(tokio::spawn(crate::leader::run(
                c.client.clone(),
                options,
                Arc::clone(&leadership),
                stop_rx.clone(),
            )));
            let metrics = Arc::clone(&metrics);
            let mut view = leadership.subscribe();
            let mut stop = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    metrics.leader.set(i64::from(view.borrow().leading));
                    tokio::select! {
                        r = view.changed() => if r.is_err() { return },
                        _ = stop.changed() => return,
                    }
                }
            }));
        } else {
            metrics.leader.set(1);
        }
        let mut metrics_addr = None;
        if let Some(addr) = config.metrics_listen {
            let l = bind(addr, "Prometheus metrics").await?;
            let local = l.local_addr().map_err(|source| OperatorError::Bind {
                addr,
                what: "Prometheus metrics",
                source,
            })?;
            tracing::info!(address = %local, "Prometheus metrics listening");
            metrics_addr = Some(local);
            tasks.push(tokio::spawn(service::serve_metrics(
                l,
                Arc::clone(&metrics),
                trust.clone(),
                stop_rx.clone(),
            )));
        }
        let health = Arc::new(service::Health::default());
        let mut health_addr = None;
        if let Some(addr) = config.health_listen {
            let l = bind(addr, "health probes").await?;
            let local = l.local_addr().map_err(|source| OperatorError::Bind {
                addr,
                what: "health probes",
                source,
            })?;
            tracing::info!(address = %local, "health probes listening (/healthz, /livez, /readyz)");
            health_addr = Some(local);
            tasks.push(tokio::spawn(service::serve_health(
                l,
                Arc::clone(&health),
                stop_rx.clone(),
            )));
        }
        let mut webhook_addr = None;
        if let Some(addr) = config.webhook_listen {
            let l = bind(addr, "the admission webhook").await?;
            let local = l.local_addr().map_err(|source| OperatorError::Bind {
                addr,
                what: "the admission webhook",
                source,
            })?;
            tracing::info!(address = %local, "admission webhook listening (HTTPS, no client certificate)");
            webhook_addr = Some(local);
            tasks.push(tokio::spawn(webhook::serve_webhook(
                l,
                certs.webhook_server(),
                Arc::clone(&validator),
                Arc::clone(&health),
                stop_rx.clone(),
            )));
        }
        if let Some(store) = secret {
            certs.use_secret(store);
        }
        tasks.push(tokio::spawn(Arc::clone(&certs).run(stop_rx.clone())));
        let cluster_for_kube = cluster.clone();
        match cluster {
            Some(c) => {
                if config.request_header.is_none() && !config.authentication_skip_lookup {
                    tasks.push(tokio::spawn(cluster::follow_request_header(
                        c.clone(),
                        Arc::clone(&certs),
                        stop_rx.clone(),
                    )));
                }
                tasks.push(tokio::spawn(cluster::follow_ca_bundle(
                    c,
                    certs.ca_bundle(),
                    CA_BUNDLE_RESYNC,
                    Arc::clone(&metrics),
                    stop_rx.clone(),
                )));
            }
            None => tracing::info!(
                "no cluster (no --kubeconfig, KUBECONFIG or service account): file mode only"
            ),
        }

        if let (Some(options), Some(c), Some(relay)) =
            (config.kube.clone(), cluster_for_kube, relay)
        {
            // Cluster mode: the API is the source; the manifests are not read.
            let (controller, controller_tasks) = Controller::start(
                c.client.clone(),
                options,
                engine.clone(),
                relay,
                Arc::clone(&metrics),
                Arc::clone(&leadership),
                &config.env,
                &stop_rx,
            );
            validator.use_cluster(controller.scaled_object_store(), c.client.clone());
            tasks.extend(controller_tasks);
            health.set_ready();
            return Ok(Operator {
                engine,
                trust,
                api_addr,
                metrics_addr,
                health_addr,
                webhook_addr,
                stop,
                tasks,
            });
        }
        // Manifests: loaded now, then again whenever they change.
        let set = manifest::load(&config.manifests);
        validator.set_known(set.clone());
        engine.apply(&set, &config.env).await;
        metrics.reloaded("manifests", set.problems.is_empty());
        health.set_ready();
        tasks.push(tokio::spawn(follow_manifests(
            config.manifests.clone(),
            config.env.clone(),
            engine.clone(),
            validator,
            Arc::clone(&metrics),
            stop_rx,
        )));
        Ok(Operator {
            engine,
            trust,
            api_addr,
            metrics_addr,
            health_addr,
            webhook_addr,
            stop,
            tasks,
        })
    }

    /// The address the mutual-TLS metrics API listens on.
    #[must_use]
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }

    /// The address the admission webhook listens on, if any.
    #[must_use]
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook_addr
    }

    /// The address Prometheus metrics are served on, if any.
    #[must_use]
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The address health probes are served on, if any.
    #[must_use]
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_addr
    }

    /// The engine (ScaledObjects' status and metrics).
    #[must_use]
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The trust factory every scaler client is built from.
    #[must_use]
    pub fn trust(&self) -> &TrustFactory {
        &self.trust
    }

    /// Stops: no new polls, requests under way finish, clients close.
    pub async fn shutdown(self) {
        tracing::info!("stopping: no new polls; requests under way finish");
        let _ = self.stop.send(true);
        self.engine.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
        tracing::info!("stopped");
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down.
    pub async fn run_until_signal(self) {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        self.shutdown().await;
    }
}

/// Re-loads and applies the manifests whenever they change, until `stop`.
async fn follow_manifests(
    paths: Vec<PathBuf>,
    env: Env,
    engine: Engine,
    validator: Arc<Validator>,
    metrics: Arc<Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&changed);
    let _watch = FileWatch::spawn(
        "manifests",
        paths.clone(),
        WatchOptions {
            quiet: Duration::from_millis(50),
            rescan: Duration::from_secs(5),
        },
        move || notify.notify_one(),
    )
    .inspect_err(|e| tracing::warn!(error = %e, "cannot follow the manifests; they are read once"))
    .ok();
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = stop.changed() => return,
        }
        let set = manifest::load(&paths);
        metrics.reloaded("manifests", set.problems.is_empty());
        if set.listing_failed {
            // A folder that could not be listed says nothing about what it holds: the
            // running ScaledObjects stay until it can be read again.
            for p in &set.problems {
                tracing::warn!(problem = %p, "manifests not re-read; the last good ones keep running");
            }
            continue;
        }
        tracing::info!(problems = set.problems.len(), "manifests changed; applying");
        validator.set_known(set.clone());
        engine.apply(&set, &env).await;
    }
}
