//! The cluster connection, and the `caBundle` the kube-apiserver needs to trust the
//! operator: patched into the APIService and the ValidatingWebhookConfiguration at start
//! and after every CA change, in rotation and in bring-your-own modes.
//!
//! Only what points at this installation's Service is patched: an APIService or a
//! webhook whose service is another one (another KEDA, say) is left alone and reported,
//! as is an object that opts out with [`SKIP_ANNOTATION`] or that cert-manager's CA
//! injector fills ([`CERT_MANAGER_ANNOTATIONS`]). Updates are read–modify–write with the
//! object's resourceVersion; a conflict is read again and retried.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use serde_json::Value;
use trustscale::trust::material;

/// The annotation that keeps the operator's hands off an object (`"true"`).
pub const SKIP_ANNOTATION: &str = "trustscale.io/skip-ca-bundle";
/// cert-manager's CA injector annotations: an object that carries one is cert-manager's.
pub const CERT_MANAGER_ANNOTATIONS: &[&str] = &[
    "cert-manager.io/inject-ca-from",
    "cert-manager.io/inject-ca-from-secret",
    "cert-manager.io/inject-apiserver-ca",
];
/// How soon a caBundle another writer changed is published again after the last time.
const WATCH_REPUBLISH: Duration = Duration::from_secs(10);
/// How many times a conflicting update is read again and retried.
const CONFLICT_RETRIES: usize = 5;
/// The largest kubeconfig read.
const MAX_KUBECONFIG_BYTES: u64 = 4 * 1024 * 1024;

/// Why the cluster could not be reached or changed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {}: {reason}", path.display())]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The in-cluster configuration could not be used.
    #[error("in-cluster configuration: {0}")]
    InCluster(String),
    /// A request failed.
    #[error("{what}: {source}")]
    Api {
        /// What was being done.
        what: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// How the operator reaches the cluster.
#[derive(Clone, Debug, Default)]
pub struct ClusterOptions {
    /// `--kubeconfig FILE`; else `KUBECONFIG`; else the pod's service account.
    pub kubeconfig: Option<PathBuf>,
    /// The operator's namespace (default: `POD_NAMESPACE`, else the kubeconfig context's).
    pub namespace: Option<String>,
    /// The Service in front of this installation (the one the APIService and the webhook
    /// must point at to be patched).
    pub service_name: String,
    /// The APIService to patch.
    pub apiservice_name: String,
    /// The ValidatingWebhookConfiguration to patch.
    pub webhook_configuration_name: String,
    /// With rotation, the Secret every replica keeps the internal certificates in (KEDA's
    /// `kedaorg-certs`); `None`: the folder alone (one replica).
    pub cert_secret_name: Option<String>,
}

impl ClusterOptions {
    /// KEDA's object names and `trustscale` as the Service.
    #[must_use]
    pub fn new() -> Self {
        ClusterOptions {
            kubeconfig: None,
            namespace: None,
            service_name: "trustscale".into(),
            apiservice_name: "v1beta1.external.metrics.k8s.io".into(),
            webhook_configuration_name: "trustscale-admission".into(),
            cert_secret_name: Some("kedaorg-certs".into()),
        }
    }
}

/// A connected cluster.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: kube::Client,
    /// The operator's namespace.
    pub namespace: String,
    /// The options it was made with.
    pub options: ClusterOptions,
    /// Foreign webhooks already reported (each is said once).
    reported: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

fn read_kubeconfig(path: &Path) -> Result<Kubeconfig, ClusterError> {
    let error = |reason: String| ClusterError::Kubeconfig {
        path: path.to_path_buf(),
        reason,
    };
    // Read once, the one way the project reads a file a user names (a regular file,
    // bounded: never a FIFO or /dev/zero); the relative paths inside then resolve against
    // the file's folder, as kubectl resolves them.
    let bytes =
        material::read_capped(path, MAX_KUBECONFIG_BYTES).map_err(|e| error(e.to_string()))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| error("not UTF-8 text".into()))?;
    // The parser's message quotes the lines around the error, which may hold a token or
    // a key: only its first line (what and where) is kept.
    let mut kc = Kubeconfig::from_yaml(text).map_err(|e| error(first_line(&e.to_string())))?;
    if let Some(dir) = path.parent() {
        absolutize(&mut kc, dir);
    }
    Ok(kc)
}

/// The first line of a library's message, which names what is wrong and where; what follows
/// may quote the input.
fn first_line(message: &str) -> String {
    message
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// Makes the file references of a kubeconfig absolute against `dir` (certificate
/// authority, client certificate and key, token file, and an exec command that holds a
/// path separator: client-go's `GetAuthInfoFileReferences`).
fn absolutize(kc: &mut Kubeconfig, dir: &Path) {
    let fix = |value: &mut Option<String>| {
        if let Some(v) = value.as_deref()
            && Path::new(v).is_relative()
            && let Some(abs) = dir.join(v).to_str()
        {
            *value = Some(abs.to_string());
        }
    };
    for named in &mut kc.clusters {
        if let Some(cluster) = &mut named.cluster {
            fix(&mut cluster.certificate_authority);
        }
    }
    for named in &mut kc.auth_infos {
        if let Some(auth) = &mut named.auth_info {
            fix(&mut auth.client_certificate);
            fix(&mut auth.client_key);
            fix(&mut auth.token_file);
            if let Some(exec) = &mut auth.exec
                && exec
                    .command
                    .as_deref()
                    .is_some_and(|c| c.contains(std::path::MAIN_SEPARATOR))
            {
                fix(&mut exec.command);
            }
        }
    }
}

/// Connects: `--kubeconfig`, else `KUBECONFIG` (every file it lists, merged as kubectl
/// does), else the pod's service account when running in a pod; `None` otherwise. A
/// developer's `~/.kube/config` is never used implicitly: an operator started for file
/// mode must not patch whatever cluster the shell happens to point at.
pub async fn connect(options: ClusterOptions) -> Result<Option<Cluster>, ClusterError> {
    let from_files = |paths: Vec<PathBuf>| -> Result<Option<Kubeconfig>, ClusterError> {
        let mut merged: Option<Kubeconfig> = None;
        for path in paths {
            let next = read_kubeconfig(&path)?;
            merged = Some(match merged {
                None => next,
                Some(m) => m.merge(next).map_err(|e| ClusterError::Kubeconfig {
                    path: path.clone(),
                    reason: first_line(&e.to_string()),
                })?,
            });
        }
        Ok(merged)
    };
    let env_paths: Vec<PathBuf> = std::env::var_os("KUBECONFIG")
        .map(|v| {
            std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default();
    let (config, source) = if let Some(path) = &options.kubeconfig {
        let kc = from_files(vec![path.clone()])?.unwrap_or_default();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| ClusterError::Kubeconfig {
                path: path.clone(),
                reason: first_line(&e.to_string()),
            })?;
        (config, path.display().to_string())
    } else if !env_paths.is_empty() {
        let first = env_paths[0].clone();
        let kc = from_files(env_paths)?.unwrap_or_default();
        let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| ClusterError::Kubeconfig {
                path: first,
                reason: first_line(&e.to_string()),
            })?;
        (config, "KUBECONFIG".to_string())
    } else if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        let config =
            kube::Config::incluster().map_err(|e| ClusterError::InCluster(e.to_string()))?;
        (config, "the pod's service account".to_string())
    } else {
        return Ok(None);
    };
    let namespace = options
        .namespace
        .clone()
        .or_else(|| {
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.is_empty())
        })
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|source| ClusterError::Api {
        what: "building the cluster client".into(),
        source,
    })?;
    tracing::info!(%source, %namespace, "connected to the cluster");
    Ok(Some(Cluster {
        client,
        namespace,
        options,
        reported: std::sync::Arc::default(),
    }))
}

fn apiservices() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("apiregistration.k8s.io", "v1", "APIService"),
        "apiservices",
    )
}

fn webhook_configurations() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "admissionregistration.k8s.io",
            "v1",
            "ValidatingWebhookConfiguration",
        ),
        "validatingwebhookconfigurations",
    )
}

/// What publishing the bundle did to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was changed.
    Patched,
    /// It already held the bundle.
    Current,
    /// It does not exist (not installed yet, or not at all).
    Missing,
    /// It is left alone: the reason.
    LeftAlone(String),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Patched => f.write_str("patched"),
            Outcome::Current => f.write_str("current"),
            Outcome::Missing => f.write_str("missing"),
            Outcome::LeftAlone(why) => write!(f, "left alone: {why}"),
        }
    }
}

fn hands_off(obj: &DynamicObject) -> Option<String> {
    let annotations = obj.metadata.annotations.clone().unwrap_or_default();
    if annotations
        .get(SKIP_ANNOTATION)
        .is_some_and(|v| v == "true")
    {
        return Some(format!("it carries {SKIP_ANNOTATION}=true"));
    }
    CERT_MANAGER_ANNOTATIONS
        .iter()
        .find(|a| annotations.contains_key(**a))
        .map(|a| format!("cert-manager injects its caBundle ({a})"))
}

fn points_at_us(service: &Value, cluster: &Cluster) -> bool {
    service["name"].as_str() == Some(cluster.options.service_name.as_str())
        && service["namespace"].as_str() == Some(cluster.namespace.as_str())
}

fn describe_service(service: &Value) -> String {
    format!(
        "{}/{}",
        service["namespace"].as_str().unwrap_or("?"),
        service["name"].as_str().unwrap_or("?")
    )
}

/// Reads, changes with `change` (which says what it did), and writes back with the
/// resourceVersion read; a conflict reads again, up to [`CONFLICT_RETRIES`] times.
async fn read_modify_write(
    api: &Api<DynamicObject>,
    name: &str,
    what: &str,
    change: impl Fn(&mut DynamicObject) -> Outcome,
) -> Result<Outcome, ClusterError> {
    let mut attempt = 0;
    loop {
        let mut obj = match api.get(name).await {
            Ok(o) => o,
            Err(kube::Error::Api(s)) if s.is_not_found() => return Ok(Outcome::Missing),
            Err(source) => {
                return Err(ClusterError::Api {
                    what: format!("reading {what} {name}"),
                    source,
                });
            }
        };
        if let Some(why) = hands_off(&obj) {
            return Ok(Outcome::LeftAlone(why));
        }
        let outcome = change(&mut obj);
        if outcome != Outcome::Patched {
            return Ok(outcome);
        }
        match api.replace(name, &PostParams::default(), &obj).await {
            Ok(_) => return Ok(Outcome::Patched),
            Err(kube::Error::Api(s)) if s.is_conflict() && attempt < CONFLICT_RETRIES => {
                attempt += 1;
                tracing::info!(%what, %name, attempt, "another writer changed it since it was read; reading it again");
                tokio::time::sleep(Duration::from_millis(50 * attempt as u64)).await;
            }
            Err(source) => {
                return Err(ClusterError::Api {
                    what: format!("updating {what} {name}"),
                    source,
                });
            }
        }
    }
}

/// Publishes `ca_pem` (every CA clients must trust, both during an overlap) as the
/// `caBundle` of the APIService and of this installation's webhooks.
pub async fn publish_ca_bundle(
    cluster: &Cluster,
    ca_pem: &str,
) -> Result<(Outcome, Outcome), ClusterError> {
    let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes());
    let apiservices: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &apiservices());
    let api_outcome = read_modify_write(
        &apiservices,
        &cluster.options.apiservice_name,
        "APIService",
        |obj| {
            let spec = &mut obj.data["spec"];
            if !points_at_us(&spec["service"], cluster) {
                return Outcome::LeftAlone(format!(
                    "its service is {}, not this installation's {}/{}",
                    describe_service(&spec["service"]),
                    cluster.namespace,
                    cluster.options.service_name
                ));
            }
            let insecure = spec["insecureSkipTLSVerify"].as_bool() == Some(true);
            if spec["caBundle"].as_str() == Some(bundle.as_str()) && !insecure {
                return Outcome::Current;
            }
            spec["caBundle"] = bundle.clone().into();
            // The kube-apiserver refuses a caBundle next to insecureSkipTLSVerify.
            if let Some(m) = spec.as_object_mut() {
                m.remove("insecureSkipTLSVerify");
            }
            Outcome::Patched
        },
    )
    .await?;
    let webhooks: Api<DynamicObject> =
        Api::all_with(cluster.client.clone(), &webhook_configurations());
    let webhook_outcome = read_modify_write(
        &webhooks,
        &cluster.options.webhook_configuration_name,
        "ValidatingWebhookConfiguration",
        |obj| {
            let Some(list) = obj.data["webhooks"].as_array_mut() else {
                return Outcome::LeftAlone("it has no webhooks".into());
            };
            let mut ours = 0;
            let mut changed = false;
            for w in list.iter_mut() {
                let config = &mut w["clientConfig"];
                if !points_at_us(&config["service"], cluster) {
                    let webhook = w["name"].as_str().unwrap_or("?").to_string();
                    let service = describe_service(&w["clientConfig"]["service"]);
                    let first = cluster
                        .reported
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(format!("{webhook} {service}"));
                    if first {
                        tracing::warn!(%webhook, %service, "a webhook of the configuration points at another service; its caBundle is left alone");
                    }
                    continue;
                }
                ours += 1;
                if config["caBundle"].as_str() != Some(bundle.as_str()) {
                    config["caBundle"] = bundle.clone().into();
                    changed = true;
                }
            }
            match (ours, changed) {
                (0, _) => Outcome::LeftAlone(format!(
                    "none of its webhooks points at this installation's service {}/{}",
                    cluster.namespace, cluster.options.service_name
                )),
                (_, true) => Outcome::Patched,
                (_, false) => Outcome::Current,
            }
        },
    )
    .await?;
    Ok((api_outcome, webhook_outcome))
}

/// Changes to the two objects, watched by name: one created after the start, or a
/// caBundle another writer overwrote, is published again at once.
fn watch_objects(cluster: &Cluster) -> impl futures_util::Stream<Item = ()> + Send + use<> {
    use futures_util::StreamExt as _;
    use kube::runtime::WatchStreamExt as _;
    let watch = |resource: ApiResource, name: &str| {
        let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &resource);
        kube::runtime::watcher::watcher(
            api,
            kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        // A watch that fails (no RBAC for it, say) backs off instead of spinning.
        .default_backoff()
        .map(|_| ())
    };
    futures_util::stream::select(
        watch(apiservices(), &cluster.options.apiservice_name),
        watch(
            webhook_configurations(),
            &cluster.options.webhook_configuration_name,
        ),
    )
}

/// Publishes every CA bundle `bundles` yields, again whenever the objects change, and
/// every `resync` besides, until `stop`. Failures are retried.
pub async fn follow_ca_bundle(
    cluster: Cluster,
    mut bundles: tokio::sync::watch::Receiver<String>,
    resync: Duration,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures_util::StreamExt as _;
    let mut last_report: Option<(Outcome, Outcome)> = None;
    let changes = watch_objects(&cluster);
    tokio::pin!(changes);
    // When the last publication that a change of the objects (not of our CA) set off
    // patched something: another writer that keeps putting its own bundle back (a
    // replica serving other certificates) is answered at most every WATCH_REPUBLISH.
    let mut last_watch_patch: Option<tokio::time::Instant> = None;
    let mut by_watch = false;
    loop {
        let pem = bundles.borrow_and_update().clone();
        let mut wait = resync;
        if !pem.is_empty() {
            match publish_ca_bundle(&cluster, &pem).await {
                Ok(report) => {
                    for (what, name, outcome) in [
                        ("APIService", &cluster.options.apiservice_name, &report.0),
                        (
                            "ValidatingWebhookConfiguration",
                            &cluster.options.webhook_configuration_name,
                            &report.1,
                        ),
                    ] {
                        metrics.ca_bundle_published(what, &outcome.to_string());
                        let repeated = last_report.as_ref().is_some_and(|l| {
                            (if what == "APIService" { &l.0 } else { &l.1 }) == outcome
                        });
                        match outcome {
                            Outcome::Patched if by_watch => {
                                if last_watch_patch
                                    .is_some_and(|t| t.elapsed() < 6 * WATCH_REPUBLISH)
                                {
                                    tracing::warn!(kind = what, %name, "another writer keeps changing the caBundle back (another replica serving other certificates, or another operator?); published again");
                                } else {
                                    tracing::info!(kind = what, %name, "caBundle published again after another writer changed it");
                                }
                                last_watch_patch = Some(tokio::time::Instant::now());
                            }
                            Outcome::Patched => {
                                tracing::info!(kind = what, %name, "caBundle published")
                            }
                            Outcome::Current => {}
                            _ if repeated => {}
                            Outcome::Missing => {
                                tracing::warn!(kind = what, %name, "not found; its caBundle is published once it exists")
                            }
                            Outcome::LeftAlone(why) => {
                                tracing::warn!(kind = what, %name, reason = %why, "caBundle not published")
                            }
                        }
                    }
                    last_report = Some(report);
                }
                Err(e) => {
                    metrics.ca_bundle_published("any", "error");
                    tracing::warn!(error = %trustscale::error::Chain(&e), "publishing the caBundle failed; retrying");
                    wait = Duration::from_secs(2).min(resync);
                }
            }
        }
        by_watch = false;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            r = bundles.changed() => if r.is_err() { return },
            Some(()) = changes.next() => {
                // A burst of events (ours included) is one publication, and one that
                // answers another writer waits its turn.
                let not_before = last_watch_patch
                    .map_or_else(tokio::time::Instant::now, |t| t + WATCH_REPUBLISH)
                    .max(tokio::time::Instant::now() + Duration::from_millis(200));
                tokio::select! {
                    _ = tokio::time::sleep_until(not_before) => by_watch = true,
                    // Our own CA changed meanwhile: published at once.
                    r = bundles.changed() => if r.is_err() { return },
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
    }
}

/// The ConfigMap the kube-apiserver publishes its request-header settings in.
pub const EXTENSION_APISERVER_AUTHENTICATION: (&str, &str) =
    ("kube-system", "extension-apiserver-authentication");

/// Request-header authentication from the `extension-apiserver-authentication` ConfigMap's
/// data: `None` when it holds no `requestheader-client-ca-file` (request-header
/// authentication is not configured in this cluster).
pub fn request_header_from_configmap(
    data: &std::collections::BTreeMap<String, String>,
) -> Result<
    Option<(
        crate::authn::RequestHeaderOptions,
        Vec<rustls_pki_types::CertificateDer<'static>>,
    )>,
    String,
> {
    let Some(ca) = data
        .get("requestheader-client-ca-file")
        .filter(|v| !v.trim().is_empty())
    else {
        return Ok(None);
    };
    let cas = material::certificates_for("requestheader-client-ca-file", ca.as_bytes())
        .map_err(|e| format!("requestheader-client-ca-file: {e}"))?;
    let list = |key: &str, default: &[&str], headers: bool| -> Result<Vec<String>, String> {
        let Some(text) = data.get(key) else {
            return Ok(default.iter().map(|s| (*s).to_string()).collect());
        };
        let values: Vec<String> =
            serde_json::from_str(text).map_err(|_| format!("{key}: not a JSON list of strings"))?;
        if headers
            && let Some(bad) = values
                .iter()
                .find(|v| hyper::header::HeaderName::from_bytes(v.as_bytes()).is_err())
        {
            return Err(format!("{key}: {bad:?} is not a header name"));
        }
        Ok(values)
    };
    let mut options = crate::authn::RequestHeaderOptions::new(format!(
        "configmap {}/{}",
        EXTENSION_APISERVER_AUTHENTICATION.0, EXTENSION_APISERVER_AUTHENTICATION.1
    ));
    options.allowed_names = list("requestheader-allowed-names", &[], false)?;
    options.username_headers = list(
        "requestheader-username-headers",
        crate::authn::DEFAULT_USERNAME_HEADERS,
        true,
    )?;
    options.group_headers = list(
        "requestheader-group-headers",
        crate::authn::DEFAULT_GROUP_HEADERS,
        true,
    )?;
    options.extra_headers_prefixes = list(
        "requestheader-extra-headers-prefix",
        crate::authn::DEFAULT_EXTRA_HEADERS_PREFIXES,
        true,
    )?;
    if options.username_headers.is_empty() {
        return Err("requestheader-username-headers: empty".into());
    }
    Ok(Some((options, cas)))
}

/// Follows the `extension-apiserver-authentication` ConfigMap into the API's
/// request-header authentication until `stop`. A ConfigMap that cannot be used is
/// reported and the last good settings stay.
pub async fn follow_request_header(
    cluster: Cluster,
    certs: std::sync::Arc<crate::certs::CertManager>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures_util::StreamExt as _;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::WatchStreamExt as _;
    use kube::runtime::watcher::Event;
    let (ns, name) = EXTENSION_APISERVER_AUTHENTICATION;
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), ns);
    let events = kube::runtime::watcher::watcher(
        api,
        kube::runtime::watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff();
    tokio::pin!(events);
    let mut last: Option<String> = None;
    loop {
        let event = tokio::select! {
            e = events.next() => match e { Some(e) => e, None => return },
            _ = stop.changed() => return,
        };
        let cm = match event {
            Ok(Event::Apply(cm) | Event::InitApply(cm)) => cm,
            Ok(Event::Delete(_)) => {
                tracing::warn!(configmap = %format!("{ns}/{name}"), "deleted; the request-header settings read last stay");
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(configmap = %format!("{ns}/{name}"), error = %e, "cannot watch it (RBAC: the Role extension-apiserver-authentication-reader in kube-system); retrying");
                continue;
            }
        };
        let data = cm.data.unwrap_or_default();
        let digest = format!("{data:?}");
        if last.as_deref() == Some(digest.as_str()) {
            continue;
        }
        match request_header_from_configmap(&data) {
            Ok(front) => {
                let on = front.is_some();
                match certs.set_front_proxy(front) {
                    Ok(()) => {
                        last = Some(digest);
                        if on {
                            tracing::info!(configmap = %format!("{ns}/{name}"), "request-header authentication of the aggregation layer follows the cluster's settings");
                        } else {
                            tracing::warn!(configmap = %format!("{ns}/{name}"), "it holds no requestheader-client-ca-file: the aggregation layer cannot authenticate to the API");
                        }
                    }
                    Err(e) => {
                        tracing::error!(configmap = %format!("{ns}/{name}"), error = %trustscale::error::Chain(&e), "refused; the last good request-header settings stay")
                    }
                }
            }
            Err(e) => {
                tracing::error!(configmap = %format!("{ns}/{name}"), error = %e, "refused; the last good request-header settings stay");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn the_authentication_configmap_is_read_as_the_kube_apiserver_writes_it() {
        let ca = ca_pem();
        let (opts, cas) = request_header_from_configmap(&data(&[
            ("requestheader-client-ca-file", &ca),
            ("requestheader-allowed-names", "[\"front-proxy-client\"]"),
            ("requestheader-username-headers", "[\"X-Remote-User\"]"),
            ("requestheader-group-headers", "[\"X-Remote-Group\"]"),
            (
                "requestheader-extra-headers-prefix",
                "[\"X-Remote-Extra-\"]",
            ),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(cas.len(), 1);
        assert_eq!(opts.allowed_names, ["front-proxy-client"]);
        assert_eq!(opts.username_headers, ["X-Remote-User"]);
        // Only the CA: the aggregator's usual headers, any name.
        let (opts, _) =
            request_header_from_configmap(&data(&[("requestheader-client-ca-file", &ca)]))
                .unwrap()
                .unwrap();
        assert!(opts.allowed_names.is_empty());
        assert_eq!(opts.group_headers, ["X-Remote-Group"]);
        // No CA: request-header authentication is off.
        assert!(
            request_header_from_configmap(&data(&[("client-ca-file", &ca)]))
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_configmap_that_cannot_be_used_is_refused_naming_the_key() {
        let ca = ca_pem();
        for (key, value, says) in [
            (
                "requestheader-client-ca-file",
                "not a certificate",
                "requestheader-client-ca-file",
            ),
            (
                "requestheader-allowed-names",
                "front-proxy-client",
                "not a JSON list",
            ),
            ("requestheader-allowed-names", "[1, 2]", "not a JSON list"),
            ("requestheader-username-headers", "[]", "empty"),
            (
                "requestheader-group-headers",
                "[\"X Remote\"]",
                "not a header name",
            ),
            (
                "requestheader-extra-headers-prefix",
                "{\"a\": 1}",
                "not a JSON list",
            ),
        ] {
            let mut d = data(&[("requestheader-client-ca-file", &ca)]);
            d.insert(key.into(), value.into());
            let e = request_header_from_configmap(&d).unwrap_err();
            assert!(e.contains(key) && e.contains(says), "{key}={value}: {e}");
        }
    }
}
