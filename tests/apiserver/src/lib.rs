//! A Kubernetes API server for tests: the real REST protocol over HTTPS on loopback,
//! objects in memory, reached through an ordinary kubeconfig by kube-rs and by kubectl.
//!
//! No kube-apiserver can be installed on the machines this project is built on, so this
//! models the documented behaviour its clients depend on, and only that:
//!
//! - discovery: `/api`, `/api/v1`, `/apis`, `/apis/{group}`, `/apis/{group}/{version}`
//!   (legacy documents; kubectl falls back to them from aggregated discovery), `/version`;
//! - GET, LIST (label selectors with `=`, `==`, `!=` and existence; the field selector
//!   `metadata.name=`/`metadata.namespace=`; `limit` and `continue`), WATCH
//!   (`watch=true`, from a `resourceVersion` or from now with the current objects as
//!   `ADDED`, `timeoutSeconds`, `BOOKMARK`s when asked), POST, PUT, PATCH (JSON merge
//!   patch, JSON patch, and apply patches treated as merge patches that may create),
//!   DELETE (finalizers hold an object with a `deletionTimestamp` until they are
//!   removed);
//! - optimistic concurrency: a write whose `metadata.resourceVersion` is not the
//!   current one is refused with 409 `Conflict`, as the real server words it; a create
//!   of an existing name is 409 `AlreadyExists`;
//! - a bounded event history: a watch or a `continue` from a resourceVersion older
//!   than the history gets 410 `Expired` (an `ERROR` event in a watch);
//! - the `status` subresource (writes change `.status` only; writes to the main
//!   resource leave `.status` alone) and the `scale` subresource of Deployments,
//!   StatefulSets and Argo `Rollout`s (a custom resource with scale; `autoscaling/v1`
//!   `Scale`);
//! - `Status` bodies for every failure; bearer-token authentication (401 without it);
//! - SubjectAccessReviews for external metrics, answered from grants a test makes
//!   ([`TestApiServer::grant_external_metrics`]); no other authorization.
//!
//! Left out: authorization (RBAC), admission (webhooks are not called), server-side
//! apply's field management and conflicts, strategic merge patch (refused with 415, as
//! the real server refuses it for custom resources), protobuf and `Table` output,
//! `generateName`, `dryRun`, garbage collection of owned objects, schema validation,
//! watch events for an object that starts or stops matching a selector (the real server
//! sends ADDED/DELETED; here only objects that match are sent, as they change), and the
//! refusal of a resourceVersion newer than the server's. Tests can make a concurrent writer change an object right before a write
//! ([`TestApiServer::interfere_before_write`]), which gives a write based on an earlier
//! read a genuine 409.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

/// A resource the server knows.
#[derive(Clone, Copy, Debug)]
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    scale: bool,
}

const fn r(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
    scale: bool,
) -> Resource {
    Resource {
        group,
        version,
        plural,
        kind,
        namespaced,
        status,
        scale,
    }
}

#[rustfmt::skip]
const RESOURCES: &[Resource] = &[
    r("", "v1", "namespaces", "Namespace", false, true, false),
    r("", "v1", "secrets", "Secret", true, false, false),
    r("", "v1", "configmaps", "ConfigMap", true, false, false),
    r("", "v1", "events", "Event", true, false, false),
    r("", "v1", "pods", "Pod", true, true, false),
    r("", "v1", "services", "Service", true, true, false),
    r("", "v1", "serviceaccounts", "ServiceAccount", true, false, false),
    r("apps", "v1", "deployments", "Deployment", true, true, true),
    r("apps", "v1", "statefulsets", "StatefulSet", true, true, true),
    // A custom resource with a scale subresource, as Argo Rollouts serves it.
    r("argoproj.io", "v1alpha1", "rollouts", "Rollout", true, true, true),
    r("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", true, true, false),
    r("coordination.k8s.io", "v1", "leases", "Lease", true, false, false),
    r("authorization.k8s.io", "v1", "subjectaccessreviews", "SubjectAccessReview", false, false, false),
    r("apiregistration.k8s.io", "v1", "apiservices", "APIService", false, true, false),
    r("admissionregistration.k8s.io", "v1", "validatingwebhookconfigurations", "ValidatingWebhookConfiguration", false, false, false),
    r("keda.sh", "v1alpha1", "scaledobjects", "ScaledObject", true, true, false),
    r("keda.sh", "v1alpha1", "scaledjobs", "ScaledJob", true, true, false),
    r("keda.sh", "v1alpha1", "triggerauthentications", "TriggerAuthentication", true, true, false),
    r("keda.sh", "v1alpha1", "clustertriggerauthentications", "ClusterTriggerAuthentication", false, true, false),
];

/// Events kept for watches and continues; older resourceVersions are 410 Expired.
const HISTORY: usize = 1000;

fn api_version(res: &Resource) -> String {
    if res.group.is_empty() {
        res.version.to_string()
    } else {
        format!("{}/{}", res.group, res.version)
    }
}

/// (group, plural, namespace, name)
type Key = (String, String, String, String);

#[derive(Clone, Debug)]
struct Event {
    rv: u64,
    kind: &'static str,
    group: String,
    plural: String,
    namespace: String,
    object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    uid: u64,
    objects: BTreeMap<Key, Value>,
    history: VecDeque<Event>,
    /// Objects a concurrent writer changes right before their next writes.
    interfere: HashMap<Key, (usize, Option<Value>)>,
    /// (method, path and query) of every request, for assertions.
    requests: Vec<(String, String)>,
    /// (method, path and query, status code) of every request answered.
    answered: Vec<(String, String, u16)>,
    /// Who may read external metrics where: (user or group, namespace or `*`).
    grants: Vec<(String, String)>,
}

impl Store {
    fn oldest(&self) -> u64 {
        self.history.front().map_or(self.rv, |e| e.rv - 1)
    }

    fn record(&mut self, kind: &'static str, key: &Key, object: Value, tx: &Tx) {
        let e = Event {
            rv: self.rv,
            kind,
            group: key.0.clone(),
            plural: key.1.clone(),
            namespace: key.2.clone(),
            object,
        };
        self.history.push_back(e.clone());
        while self.history.len() > HISTORY {
            self.history.pop_front();
        }
        let _ = tx.send(e);
    }

    fn next_rv(&mut self) -> u64 {
        self.rv += 1;
        self.rv
    }
}

type Tx = tokio::sync::broadcast::Sender<Event>;

struct Shared {
    store: Mutex<Store>,
    events: Tx,
    token: String,
}

/// A running test API server. Dropping it stops it.
pub struct TestApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    dir: tempfile::TempDir,
    ca_pem: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Store> {
    shared
        .store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TestApiServer {
    /// Starts a server on its own thread (usable from sync and async tests) with a fresh
    /// CA and serving certificate for `127.0.0.1` and `localhost`, and writes a kubeconfig
    /// for it (namespace `default`).
    #[must_use]
    pub fn start() -> TestApiServer {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test-apiserver-ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&key).expect("CA");
        let ca_pem = ca_cert.pem();
        let issuer = rcgen::Issuer::new(ca_params, key);
        let leaf_key = rcgen::KeyPair::generate().expect("key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("params");
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).expect("leaf");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca_cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .expect("config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (events, _) = tokio::sync::broadcast::channel(4096);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::default()),
            events,
            token: format!("test-token-{}", std::process::id()),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let s = Arc::clone(&shared);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(serve(listener, Arc::new(config), s, stopped));
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let server = TestApiServer {
            addr,
            shared,
            dir,
            ca_pem,
            stop: Some(stop),
            thread: Some(thread),
        };
        server.write_kubeconfig("default");
        server.create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}),
        );
        server.create(
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}}),
        );
        server
    }

    fn write_kubeconfig(&self, namespace: &str) {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: {namespace}\ncurrent-context: test\n",
            port = self.addr.port(),
            token = self.shared.token,
        );
        std::fs::write(self.kubeconfig(), text).expect("kubeconfig");
    }

    /// The kubeconfig file that reaches this server.
    #[must_use]
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig")
    }

    /// A kubeconfig whose context's namespace is `namespace` (written next to the other).
    #[must_use]
    pub fn kubeconfig_in(&self, namespace: &str) -> PathBuf {
        let path = self.dir.path().join(format!("kubeconfig-{namespace}"));
        let text = std::fs::read_to_string(self.kubeconfig())
            .expect("kubeconfig")
            .replace("namespace: default", &format!("namespace: {namespace}"));
        std::fs::write(&path, text).expect("kubeconfig");
        path
    }

    /// The server's address.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server's certificate.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The folder the kubeconfig is in (removed with the server).
    #[must_use]
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Creates an object (as a POST would); panics if it cannot.
    pub fn create(&self, object: Value) -> Value {
        let res = resource_of(&object).expect("a kind this server knows");
        let ns = if res.namespaced {
            object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string()
        } else {
            String::new()
        };
        match create(&self.shared, res, &ns, object) {
            Ok(v) => v,
            Err((code, status)) => panic!("create failed ({code}): {status}"),
        }
    }

    /// The current object, if any (`namespace` empty for cluster-scoped kinds).
    #[must_use]
    pub fn get(&self, group: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.shared)
            .objects
            .get(&(group.into(), plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    /// Replaces an object as another writer would (its resourceVersion bumped, a
    /// `MODIFIED` event sent); `change` edits it.
    pub fn modify(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) {
        let key = (group.into(), plural.into(), namespace.into(), name.into());
        let mut store = lock(&self.shared);
        let Some(mut obj) = store.objects.get(&key).cloned() else {
            panic!("no object {key:?} to modify");
        };
        change(&mut obj);
        let rv = store.next_rv();
        obj["metadata"]["resourceVersion"] = rv.to_string().into();
        store.objects.insert(key.clone(), obj.clone());
        store.record("MODIFIED", &key, obj, &self.shared.events);
    }

    /// Before each of the next `times` writes (PUT or PATCH) of this object, another
    /// writer's change (an annotation) lands first, so that a write based on what was read
    /// before gets a genuine 409.
    pub fn interfere_before_write(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        times: usize,
    ) {
        self.interfere(group, plural, namespace, name, times, None);
    }

    /// Before the next write of this object, another writer's change lands first: the
    /// JSON merge patch `change` (and an annotation).
    pub fn interfere_before_write_with(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        change: Value,
    ) {
        self.interfere(group, plural, namespace, name, 1, Some(change));
    }

    fn interfere(
        &self,
        group: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        times: usize,
        change: Option<Value>,
    ) {
        lock(&self.shared).interfere.insert(
            (group.into(), plural.into(), namespace.into(), name.into()),
            (times, change),
        );
    }

    /// Lets `subject` (a user or a group) get external metrics in `namespace` (`*`: all),
    /// as SubjectAccessReviews answer.
    pub fn grant_external_metrics(&self, subject: &str, namespace: &str) {
        lock(&self.shared)
            .grants
            .push((subject.to_string(), namespace.to_string()));
    }

    /// Every request so far: (method, path with query).
    #[must_use]
    pub fn requests(&self) -> Vec<(String, String)> {
        lock(&self.shared).requests.clone()
    }

    /// Every request answered so far, with its status code: (method, path with query,
    /// status). A write that lost a race (409) shows here as what it was.
    #[must_use]
    pub fn answered(&self) -> Vec<(String, String, u16)> {
        lock(&self.shared).answered.clone()
    }

    /// Forgets the event history (as etcd compaction does): watches and continues from
    /// any earlier resourceVersion get 410 Expired.
    pub fn compact(&self) {
        lock(&self.shared).history.clear();
    }
}

fn resource_of(object: &Value) -> Option<&'static Resource> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    RESOURCES
        .iter()
        .find(|r| r.kind == kind && api_version_matches(r, api_version))
}

fn api_version_matches(res: &Resource, given: &str) -> bool {
    given == api_version(res)
}

type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

fn json_response(code: StatusCode, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(value.to_string()))
        .unwrap_or_else(|_| Response::new(full("")))
}

type Failure = (StatusCode, Value);

fn status(code: StatusCode, reason: &str, message: &str, details: Option<Value>) -> Failure {
    let mut s = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    if let Some(d) = details {
        s["details"] = d;
    }
    (code, s)
}

fn not_found(res: &Resource, name: &str) -> Failure {
    let what = if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    };
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{what} \"{name}\" not found"),
        Some(json!({"name": name, "group": res.group, "kind": res.plural})),
    )
}

fn conflict(res: &Resource, name: &str) -> Failure {
    let what = if res.group.is_empty() {
        res.plural.to_string()
    } else {
        format!("{}.{}", res.plural, res.group)
    };
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
        Some(json!({"name": name, "group": res.group, "kind": res.plural})),
    )
}

fn expired(rv: u64) -> Failure {
    status(
        StatusCode::GONE,
        "Expired",
        &format!("too old resource version: {rv}"),
        None,
    )
}

async fn serve(
    listener: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
            _ = &mut stopped => return,
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let service = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move {
                    let method = req.method().to_string();
                    let target = req.uri().path_and_query().map_or_else(
                        || req.uri().path().to_string(),
                        |pq| pq.as_str().to_string(),
                    );
                    let response = handle(&shared, req).await;
                    lock(&shared)
                        .answered
                        .push((method, target, response.status().as_u16()));
                    Ok::<_, Infallible>(response)
                }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let mut builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            builder.http2().max_concurrent_streams(1000);
            let builder = if h2 {
                builder.http2_only()
            } else {
                builder.http1_only()
            };
            let _ = builder.serve_connection(io, service).await;
        });
    }
}

/// What a path names.
struct Target {
    res: &'static Resource,
    namespace: String,
    name: Option<String>,
    sub: Option<String>,
}

fn discovery(path: &str) -> Option<Value> {
    let path = path.trim_end_matches('/');
    let groups = || {
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for r in RESOURCES.iter().filter(|r| !r.group.is_empty()) {
            if !seen.contains(&(r.group, r.version)) {
                seen.push((r.group, r.version));
            }
        }
        seen
    };
    let group_doc = |g: &str| {
        let versions: Vec<Value> = groups()
            .into_iter()
            .filter(|(gg, _)| *gg == g)
            .map(|(gg, v)| json!({"groupVersion": format!("{gg}/{v}"), "version": v}))
            .collect();
        json!({"name": g, "versions": versions.clone(), "preferredVersion": versions[0]})
    };
    let resources = |group: &str, version: &str| {
        let mut list = Vec::new();
        for r in RESOURCES
            .iter()
            .filter(|r| r.group == group && r.version == version)
        {
            list.push(json!({
                "name": r.plural, "singularName": r.kind.to_lowercase(), "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }));
            if r.status {
                list.push(json!({"name": format!("{}/status", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "kind": r.kind, "verbs": ["get", "patch", "update"]}));
            }
            if r.scale {
                list.push(
                    json!({"name": format!("{}/scale", r.plural), "singularName": "",
                    "namespaced": r.namespaced, "group": "autoscaling", "version": "v1",
                    "kind": "Scale", "verbs": ["get", "patch", "update"]}),
                );
            }
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": list})
    };
    match path {
        "/version" => Some(
            json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-trustscale-test", "platform": "linux/amd64"}),
        ),
        "/api" => Some(json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})),
        "/api/v1" => Some(resources("", "v1")),
        "/apis" => {
            let mut names: Vec<&str> = groups().into_iter().map(|(g, _)| g).collect();
            names.dedup();
            let docs: Vec<Value> = names.into_iter().map(group_doc).collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": docs}))
        }
        _ => {
            let rest = path.strip_prefix("/apis/")?;
            let parts: Vec<&str> = rest.split('/').collect();
            match parts.as_slice() {
                [g] if groups().iter().any(|(gg, _)| gg == g) => {
                    let mut d = group_doc(g);
                    d["kind"] = "APIGroup".into();
                    d["apiVersion"] = "v1".into();
                    Some(d)
                }
                [g, v] if groups().contains(&(*g, *v)) => Some(resources(g, v)),
                _ => None,
            }
        }
    }
}

fn parse_target(path: &str) -> Option<Target> {
    let (group, version, rest) = if let Some(rest) = path.strip_prefix("/api/v1/") {
        ("", "v1", rest)
    } else {
        let rest = path.strip_prefix("/apis/")?;
        let mut it = rest.splitn(3, '/');
        let g = it.next()?;
        let v = it.next()?;
        let rest = it.next()?;
        let res = RESOURCES.iter().find(|r| r.group == g && r.version == v)?;
        (res.group, res.version, rest)
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let find = |plural: &str| {
        RESOURCES
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
    };
    let (namespace, segs) = match segs.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest.to_vec()),
        _ => (String::new(), segs),
    };
    let res = find(segs.first()?)?;
    if res.namespaced == namespace.is_empty() && !(res.namespaced && segs.len() == 1) {
        return None;
    }
    Some(Target {
        res,
        namespace,
        name: segs.get(1).map(|s| (*s).to_string()),
        sub: segs.get(2).map(|s| (*s).to_string()),
    })
}

fn query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_string(), decode(v)))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(shared: &Arc<Shared>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let q = req.uri().query().unwrap_or("").to_string();
    lock(shared).requests.push((
        req.method().to_string(),
        if q.is_empty() {
            path.clone()
        } else {
            format!("{path}?{q}")
        },
    ));
    let authorized = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {}", shared.token));
    if !authorized {
        let (c, s) = status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized",
            None,
        );
        return json_response(c, &s);
    }
    if req.method() == Method::GET
        && let Some(doc) = discovery(&path)
    {
        return json_response(StatusCode::OK, &doc);
    }
    let Some(target) = parse_target(&path) else {
        let (c, s) = status(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
            None,
        );
        return json_response(c, &s);
    };
    let params = query(&q);
    let method = req.method().clone();
    if target.res.plural == "subjectaccessreviews" {
        if method != Method::POST {
            let (c, s) = status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "subjectaccessreviews can only be created",
                None,
            );
            return json_response(c, &s);
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return match parse_body(&body, "json") {
            Ok(review) => {
                json_response(StatusCode::CREATED, &subject_access_review(shared, review))
            }
            Err((c, s)) => json_response(c, &s),
        };
    }
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let watch = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if method == Method::GET && target.name.is_none() && watch {
        return watch_response(shared, &target, &params);
    }
    let result = match (&method, target.name.as_deref(), target.sub.as_deref()) {
        (&Method::GET, None, _) => list(shared, &target, &params),
        (&Method::GET, Some(name), sub) => get(shared, &target, name, sub),
        (&Method::POST, None, _) => parse_body(&body, &content_type)
            .and_then(|obj| create(shared, target.res, &target.namespace, obj))
            .map(|v| (StatusCode::CREATED, v)),
        (&Method::PUT, Some(name), sub) => parse_body(&body, &content_type)
            .and_then(|obj| update(shared, &target, name, sub, obj))
            .map(|v| (StatusCode::OK, v)),
        (&Method::PATCH, Some(name), sub) => {
            patch(shared, &target, name, sub, &body, &content_type, &params)
        }
        (&Method::DELETE, Some(name), None) => delete(shared, &target, name),
        _ => Err(status(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            &format!("{method} is not supported on {path}"),
            None,
        )),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err((code, s)) => json_response(code, &s),
    }
}

/// Answers a SubjectAccessReview from the grants: `list` of any resource (a metric) in
/// `external.metrics.k8s.io`, as the HPA controller's role grants it, for a granted user
/// or group, in a granted namespace.
fn subject_access_review(shared: &Shared, mut review: Value) -> Value {
    let spec = &review["spec"];
    let attrs = &spec["resourceAttributes"];
    let namespace = attrs["namespace"].as_str().unwrap_or("");
    let mut subjects: Vec<String> = spec["user"]
        .as_str()
        .map(String::from)
        .into_iter()
        .collect();
    subjects.extend(
        spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(String::from)),
    );
    let wanted = attrs["group"] == "external.metrics.k8s.io"
        && attrs["resource"].as_str().is_some_and(|r| !r.is_empty())
        && attrs["verb"] == "list";
    let allowed = wanted
        && lock(shared)
            .grants
            .iter()
            .any(|(who, ns)| subjects.contains(who) && (ns == "*" || ns == namespace));
    review["status"] = if allowed {
        json!({"allowed": true, "reason": "granted by the test server"})
    } else {
        json!({"allowed": false})
    };
    review["metadata"] = json!({"creationTimestamp": null});
    review
}

fn parse_body(body: &[u8], content_type: &str) -> Result<Value, Failure> {
    let parsed: Result<Value, String> = if content_type.contains("yaml") {
        serde_yaml_ng::from_slice(body).map_err(|e| e.to_string())
    } else {
        serde_json::from_slice(body).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| {
        status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!("the body of the request was in an unknown format: {e}"),
            None,
        )
    })
}

fn key(res: &Resource, ns: &str, name: &str) -> Key {
    (
        res.group.to_string(),
        res.plural.to_string(),
        ns.to_string(),
        name.to_string(),
    )
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since the epoch to a civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

fn check_identity(
    res: &Resource,
    ns: &str,
    name: Option<&str>,
    obj: &mut Value,
) -> Result<String, Failure> {
    if !obj.is_object() {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "the body must be an object",
            None,
        ));
    }
    let kind_ok = obj["kind"].as_str().is_none_or(|k| k == res.kind);
    let version_ok = obj["apiVersion"]
        .as_str()
        .is_none_or(|v| v == api_version(res));
    if !kind_ok || !version_ok {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            &format!(
                "the object's kind or apiVersion does not match {} {}",
                api_version(res),
                res.kind
            ),
            None,
        ));
    }
    obj["kind"] = res.kind.into();
    obj["apiVersion"] = api_version(res).into();
    let body_name = obj["metadata"]["name"].as_str().unwrap_or("").to_string();
    let name = match name {
        Some(n) if !body_name.is_empty() && body_name != n => {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!(
                    "the name of the object ({body_name}) does not match the name on the URL ({n})"
                ),
                None,
            ));
        }
        Some(n) => n.to_string(),
        None => body_name,
    };
    if name.is_empty() {
        return Err(status(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            &format!(
                "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                res.kind
            ),
            None,
        ));
    }
    if res.namespaced {
        if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
            && body_ns != ns
        {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
                None,
            ));
        }
        obj["metadata"]["namespace"] = ns.into();
    }
    obj["metadata"]["name"] = name.clone().into();
    Ok(name)
}

fn create(
    shared: &Shared,
    res: &'static Resource,
    ns: &str,
    mut obj: Value,
) -> Result<Value, Failure> {
    let name = check_identity(res, ns, None, &mut obj)?;
    let k = key(res, ns, &name);
    let mut store = lock(shared);
    if store.objects.contains_key(&k) {
        let what = if res.group.is_empty() {
            res.plural.to_string()
        } else {
            format!("{}.{}", res.plural, res.group)
        };
        return Err(status(
            StatusCode::CONFLICT,
            "AlreadyExists",
            &format!("{what} \"{name}\" already exists"),
            Some(json!({"name": name, "group": res.group, "kind": res.plural})),
        ));
    }
    if res.namespaced
        && !store.objects.contains_key(&(
            String::new(),
            "namespaces".into(),
            String::new(),
            ns.into(),
        ))
    {
        return Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("namespaces \"{ns}\" not found"),
            Some(json!({"name": ns, "kind": "namespaces"})),
        ));
    }
    let rv = store.next_rv();
    store.uid += 1;
    let uid = format!("00000000-0000-4000-8000-{:012}", store.uid);
    let meta = &mut obj["metadata"];
    meta["resourceVersion"] = rv.to_string().into();
    meta["uid"] = uid.into();
    meta["creationTimestamp"] = now().into();
    meta["generation"] = 1.into();
    if let Some(m) = meta.as_object_mut() {
        m.remove("deletionTimestamp");
    }
    store.objects.insert(k.clone(), obj.clone());
    store.record("ADDED", &k, obj.clone(), &shared.events);
    Ok(obj)
}

fn get(
    shared: &Shared,
    t: &Target,
    name: &str,
    sub: Option<&str>,
) -> Result<(StatusCode, Value), Failure> {
    let k = key(t.res, &t.namespace, name);
    let obj = lock(shared)
        .objects
        .get(&k)
        .cloned()
        .ok_or_else(|| not_found(t.res, name))?;
    match sub {
        None | Some("status") => Ok((StatusCode::OK, obj)),
        Some("scale") if t.res.scale => Ok((StatusCode::OK, scale_of(&obj))),
        Some(other) => Err(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({other})"),
            None,
        )),
    }
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"],
            "resourceVersion": obj["metadata"]["resourceVersion"], "uid": obj["metadata"]["uid"],
            "creationTimestamp": obj["metadata"]["creationTimestamp"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {"replicas": obj["status"]["replicas"].as_i64().unwrap_or(0), "selector": selector},
    })
}

fn spec_part(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.as_object_mut() {
        m.remove("metadata");
        m.remove("status");
    }
    o
}

/// Writes `new` over the current object `k` (which must exist), checking the
/// resourceVersion it carries.
fn replace(
    shared: &Shared,
    t: &Target,
    name: &str,
    sub: Option<&str>,
    new: Value,
) -> Result<Value, Failure> {
    let k = key(t.res, &t.namespace, name);
    let mut store = lock(shared);
    let mut current = store
        .objects
        .get(&k)
        .cloned()
        .ok_or_else(|| not_found(t.res, name))?;
    // Another writer's update lands first.
    if let Some((n, change)) = store.interfere.get_mut(&k)
        && *n > 0
    {
        *n -= 1;
        if let Some(change) = change.clone() {
            merge_patch(&mut current, &change);
        }
        let rv = store.next_rv();
        current["metadata"]["resourceVersion"] = rv.to_string().into();
        current["metadata"]["annotations"]["test-apiserver/concurrent-writer"] =
            rv.to_string().into();
        store.objects.insert(k.clone(), current.clone());
        store.record("MODIFIED", &k, current.clone(), &shared.events);
    }
    if let Some(rv) = new["metadata"]["resourceVersion"].as_str()
        && !rv.is_empty()
        && Some(rv) != current["metadata"]["resourceVersion"].as_str()
    {
        return Err(conflict(t.res, name));
    }
    let mut next = match sub {
        None => {
            let mut n = new.clone();
            if t.res.status {
                n["status"] = current["status"].clone();
                if current.get("status").is_none()
                    && let Some(m) = n.as_object_mut()
                {
                    m.remove("status");
                }
            }
            n
        }
        Some("status") => {
            let mut n = current.clone();
            n["status"] = new["status"].clone();
            n
        }
        Some("scale") => {
            let mut n = current.clone();
            n["spec"]["replicas"] = new["spec"]["replicas"].clone();
            n
        }
        Some(other) => {
            return Err(status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("the server could not find the requested resource ({other})"),
                None,
            ));
        }
    };
    // What the server owns stays the server's.
    for field in ["uid", "creationTimestamp", "deletionTimestamp"] {
        if let Some(v) = current["metadata"].get(field) {
            next["metadata"][field] = v.clone();
        } else if let Some(m) = next["metadata"].as_object_mut() {
            m.remove(field);
        }
    }
    let generation = current["metadata"]["generation"].as_i64().unwrap_or(1);
    next["metadata"]["generation"] = if spec_part(&next) == spec_part(&current) {
        generation
    } else {
        generation + 1
    }
    .into();
    let rv = store.next_rv();
    next["metadata"]["resourceVersion"] = rv.to_string().into();
    let deleting = next["metadata"].get("deletionTimestamp").is_some();
    let finalizers_left = next["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if deleting && !finalizers_left {
        store.objects.remove(&k);
        store.record("DELETED", &k, next.clone(), &shared.events);
    } else {
        store.objects.insert(k.clone(), next.clone());
        store.record("MODIFIED", &k, next.clone(), &shared.events);
    }
    Ok(match sub {
        Some("scale") => scale_of(&next),
        _ => next,
    })
}

fn update(
    shared: &Shared,
    t: &Target,
    name: &str,
    sub: Option<&str>,
    mut obj: Value,
) -> Result<Value, Failure> {
    if sub == Some("scale") {
        let mut current = get(shared, t, name, None)?.1;
        current["spec"]["replicas"] = obj["spec"]["replicas"].clone();
        current["metadata"]["resourceVersion"] = obj["metadata"]["resourceVersion"].clone();
        return replace(shared, t, name, sub, current);
    }
    check_identity(t.res, &t.namespace, Some(name), &mut obj)?;
    replace(shared, t, name, sub, obj)
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    if let Value::Object(p) = patch {
        if !target.is_object() {
            *target = json!({});
        }
        let t = target.as_object_mut().expect("object");
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    } else {
        *target = patch.clone();
    }
}

fn pointer_parts(path: &str) -> Vec<String> {
    path.split('/')
        .skip(1)
        .map(|p| p.replace("~1", "/").replace("~0", "~"))
        .collect()
}

/// RFC 6902 (add, remove, replace, test, copy, move).
fn json_patch(doc: &mut Value, ops: &Value) -> Result<(), String> {
    let ops = ops.as_array().ok_or("a JSON patch is an array")?;
    for op in ops {
        let kind = op["op"].as_str().ok_or("op is required")?;
        let path = op["path"].as_str().ok_or("path is required")?;
        match kind {
            "test" => {
                if doc.pointer(path) != Some(&op["value"]) {
                    return Err(format!("test failed at {path}"));
                }
            }
            "remove" => remove_at(doc, path)?,
            "add" | "replace" => {
                if kind == "replace" && doc.pointer(path).is_none() {
                    return Err(format!("replace: nothing at {path}"));
                }
                add_at(doc, path, op["value"].clone(), kind == "replace")?;
            }
            "copy" | "move" => {
                let from = op["from"].as_str().ok_or("from is required")?;
                let v = doc
                    .pointer(from)
                    .cloned()
                    .ok_or(format!("nothing at {from}"))?;
                if kind == "move" {
                    remove_at(doc, from)?;
                }
                add_at(doc, path, v, false)?;
            }
            other => return Err(format!("unknown op {other:?}")),
        }
    }
    Ok(())
}

fn split_last(path: &str) -> Result<(String, String), String> {
    let parts = pointer_parts(path);
    let (last, parent) = parts.split_last().ok_or("the root cannot be changed")?;
    let parent = parent
        .iter()
        .map(|p| format!("/{}", p.replace('~', "~0").replace('/', "~1")))
        .collect::<String>();
    Ok((parent, last.clone()))
}

fn add_at(doc: &mut Value, path: &str, v: Value, replace: bool) -> Result<(), String> {
    let (parent, last) = split_last(path)?;
    let p = doc
        .pointer_mut(&parent)
        .ok_or(format!("nothing at {parent}"))?;
    match p {
        Value::Object(m) => {
            m.insert(last, v);
        }
        Value::Array(a) => {
            if last == "-" {
                a.push(v);
            } else {
                let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
                if replace && i < a.len() {
                    a[i] = v;
                } else if i <= a.len() {
                    a.insert(i, v);
                } else {
                    return Err(format!("index {i} out of range"));
                }
            }
        }
        _ => return Err(format!("{parent} is not a container")),
    }
    Ok(())
}

fn remove_at(doc: &mut Value, path: &str) -> Result<(), String> {
    let (parent, last) = split_last(path)?;
    let p = doc
        .pointer_mut(&parent)
        .ok_or(format!("nothing at {parent}"))?;
    match p {
        Value::Object(m) => m
            .remove(&last)
            .map(|_| ())
            .ok_or(format!("nothing at {path}")),
        Value::Array(a) => {
            let i: usize = last.parse().map_err(|_| format!("bad index {last}"))?;
            if i < a.len() {
                a.remove(i);
                Ok(())
            } else {
                Err(format!("index {i} out of range"))
            }
        }
        _ => Err(format!("{parent} is not a container")),
    }
}

fn patch(
    shared: &Shared,
    t: &Target,
    name: &str,
    sub: Option<&str>,
    body: &[u8],
    content_type: &str,
    params: &HashMap<String, String>,
) -> Result<(StatusCode, Value), Failure> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    let apply = ct == "application/apply-patch+yaml";
    if !matches!(
        ct,
        "application/merge-patch+json"
            | "application/json-patch+json"
            | "application/apply-patch+yaml"
    ) {
        return Err(status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            &format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml (not {ct:?})"
            ),
            None,
        ));
    }
    if apply && params.get("fieldManager").is_none_or(String::is_empty) {
        return Err(status(
            StatusCode::BAD_REQUEST,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            None,
        ));
    }
    let patch_doc = parse_body(body, if apply { "yaml" } else { "json" })?;
    let current = match get(shared, t, name, None) {
        Ok((_, v)) => v,
        Err(e) if apply && sub.is_none() => {
            let _ = e;
            let mut obj = patch_doc;
            check_identity(t.res, &t.namespace, Some(name), &mut obj)?;
            return create(shared, t.res, &t.namespace, obj).map(|v| (StatusCode::CREATED, v));
        }
        Err(e) => return Err(e),
    };
    let base = if sub == Some("scale") {
        scale_of(&current)
    } else {
        current.clone()
    };
    let mut next = base.clone();
    if ct == "application/json-patch+json" {
        json_patch(&mut next, &patch_doc).map_err(|e| {
            status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                &format!("the JSON patch cannot be applied: {e}"),
                None,
            )
        })?;
    } else {
        merge_patch(&mut next, &patch_doc);
    }
    // A patch that names no resourceVersion is unconditional.
    let named = patch_doc["metadata"]["resourceVersion"].as_str().is_some()
        || (ct == "application/json-patch+json"
            && next["metadata"]["resourceVersion"] != base["metadata"]["resourceVersion"]);
    if !named {
        next["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
    }
    if sub == Some("scale") {
        let mut obj = current;
        obj["spec"]["replicas"] = next["spec"]["replicas"].clone();
        obj["metadata"]["resourceVersion"] = next["metadata"]["resourceVersion"].clone();
        return replace(shared, t, name, sub, obj).map(|v| (StatusCode::OK, v));
    }
    check_identity(t.res, &t.namespace, Some(name), &mut next)?;
    replace(shared, t, name, sub, next).map(|v| (StatusCode::OK, v))
}

fn delete(shared: &Shared, t: &Target, name: &str) -> Result<(StatusCode, Value), Failure> {
    let k = key(t.res, &t.namespace, name);
    let mut store = lock(shared);
    let mut obj = store
        .objects
        .get(&k)
        .cloned()
        .ok_or_else(|| not_found(t.res, name))?;
    let rv = store.next_rv();
    obj["metadata"]["resourceVersion"] = rv.to_string().into();
    let finalizers = obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty());
    if finalizers {
        if obj["metadata"].get("deletionTimestamp").is_none() {
            obj["metadata"]["deletionTimestamp"] = now().into();
        }
        store.objects.insert(k.clone(), obj.clone());
        store.record("MODIFIED", &k, obj.clone(), &shared.events);
        Ok((StatusCode::ACCEPTED, obj))
    } else {
        store.objects.remove(&k);
        store.record("DELETED", &k, obj.clone(), &shared.events);
        Ok((StatusCode::OK, obj))
    }
}

/// A label selector: `k=v`, `k==v`, `k!=v`, `k`, `!k`, comma-separated.
fn selector_matches(selector: &str, labels: &Value) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let label = |k: &str| labels.get(k.trim()).and_then(Value::as_str);
            if let Some((k, v)) = term.split_once("!=") {
                label(k) != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                label(k) == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                label(k).is_none()
            } else {
                label(term).is_some()
            }
        })
}

fn field_matches(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|s| !s.is_empty()).all(|term| {
        let (neg, (k, v)) = match term.split_once("!=") {
            Some(kv) => (true, kv),
            None => (
                false,
                term.split_once("==")
                    .or_else(|| term.split_once('='))
                    .unwrap_or((term, "")),
            ),
        };
        let actual = match k {
            "metadata.name" => obj["metadata"]["name"].as_str(),
            "metadata.namespace" => obj["metadata"]["namespace"].as_str(),
            _ => None,
        };
        (actual == Some(v)) != neg
    })
}

fn matches(
    t: &Target,
    params: &HashMap<String, String>,
    group: &str,
    plural: &str,
    ns: &str,
    obj: &Value,
) -> bool {
    group == t.res.group
        && plural == t.res.plural
        && (t.namespace.is_empty() || t.namespace == ns)
        && params
            .get("labelSelector")
            .is_none_or(|s| selector_matches(s, &obj["metadata"]["labels"]))
        && params
            .get("fieldSelector")
            .is_none_or(|s| field_matches(s, obj))
}

fn list(
    shared: &Shared,
    t: &Target,
    params: &HashMap<String, String>,
) -> Result<(StatusCode, Value), Failure> {
    let store = lock(shared);
    let limit: usize = params
        .get("limit")
        .and_then(|l| l.parse().ok())
        .filter(|l| *l > 0)
        .unwrap_or(usize::MAX);
    // A continue token: the resourceVersion of the first page and the last key given.
    let (list_rv, after) = match params.get("continue").filter(|c| !c.is_empty()) {
        Some(token) => {
            let text = base64::engine::general_purpose::STANDARD
                .decode(token)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    status(
                        StatusCode::BAD_REQUEST,
                        "BadRequest",
                        "continue key is not valid",
                        None,
                    )
                })?;
            let (rv, after) = text.split_once('\n').ok_or_else(|| {
                status(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    "continue key is not valid",
                    None,
                )
            })?;
            let rv: u64 = rv.parse().unwrap_or(0);
            if rv < store.oldest() {
                return Err(expired(rv));
            }
            (rv, Some(after.to_string()))
        }
        None => (store.rv, None),
    };
    let mut items = Vec::new();
    let mut more = None;
    for ((g, p, ns, name), obj) in &store.objects {
        if !matches(t, params, g, p, ns, obj) {
            continue;
        }
        let k = format!("{ns}/{name}");
        if after.as_ref().is_some_and(|a| k <= *a) {
            continue;
        }
        if items.len() == limit {
            more = Some(format!("{ns}/{}", items_last_name(&items)));
            break;
        }
        items.push(obj.clone());
    }
    let mut meta = json!({"resourceVersion": list_rv.to_string()});
    if let Some(last) = more {
        meta["continue"] = base64::engine::general_purpose::STANDARD
            .encode(format!("{list_rv}\n{last}"))
            .into();
        meta["remainingItemCount"] = 1.into();
    }
    Ok((
        StatusCode::OK,
        json!({
            "kind": format!("{}List", t.res.kind),
            "apiVersion": api_version(t.res),
            "metadata": meta,
            "items": items,
        }),
    ))
}

fn items_last_name(items: &[Value]) -> String {
    items
        .last()
        .and_then(|o| o["metadata"]["name"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn watch_response(
    shared: &Arc<Shared>,
    t: &Target,
    params: &HashMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(256);
    let rx_events = shared.events.subscribe();
    let from: Option<u64> = params
        .get("resourceVersion")
        .filter(|v| !v.is_empty() && *v != "0")
        .and_then(|v| v.parse().ok());
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = params
        .get("allowWatchBookmarks")
        .is_some_and(|v| v == "true");
    // What the watcher gets before the live events.
    let mut initial = Vec::new();
    let mut expired_now = false;
    let start_rv;
    {
        let store = lock(shared);
        start_rv = store.rv;
        match from {
            Some(rv) if rv < store.oldest() => {
                initial.push(watch_line("ERROR", &expired(rv).1));
                expired_now = true;
            }
            Some(rv) => {
                for e in store.history.iter().filter(|e| e.rv > rv) {
                    if matches(t, params, &e.group, &e.plural, &e.namespace, &e.object) {
                        initial.push(watch_line(e.kind, &e.object));
                    }
                }
            }
            None => {
                for ((g, p, ns, _), obj) in &store.objects {
                    if matches(t, params, g, p, ns, obj) {
                        initial.push(watch_line("ADDED", obj));
                    }
                }
            }
        }
    }
    let t = Target {
        res: t.res,
        namespace: t.namespace.clone(),
        name: None,
        sub: None,
    };
    let params = params.clone();
    tokio::spawn(async move {
        let mut rx_events = rx_events;
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        if expired_now {
            return;
        }
        let deadline = tokio::time::sleep(Duration::from_secs(timeout));
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut last_rv = start_rv;
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                _ = tick.tick(), if bookmarks => {
                    let mark = json!({"kind": t.res.kind, "apiVersion": api_version(t.res),
                        "metadata": {"resourceVersion": last_rv.to_string()}});
                    if tx.send(watch_line("BOOKMARK", &mark)).await.is_err() { return; }
                }
                e = rx_events.recv() => match e {
                    Ok(e) => {
                        if e.rv <= start_rv { continue; }
                        last_rv = e.rv;
                        if matches(&t, &params, &e.group, &e.plural, &e.namespace, &e.object)
                            && tx.send(watch_line(e.kind, &e.object)).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                },
                () = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream_from(rx).map(|b| Ok::<_, Infallible>(Frame::data(b)));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("transfer-encoding", "chunked")
        .body(http_body_util::BodyExt::boxed(StreamBody::new(stream)))
        .unwrap_or_else(|_| Response::new(full("")))
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Bytes>,
) -> impl futures_util::Stream<Item = Bytes> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_and_json_patches_follow_the_rfcs() {
        let mut doc = json!({"a": {"b": 1, "c": [1, 2]}, "d": "x"});
        merge_patch(&mut doc, &json!({"a": {"b": null, "e": 2}, "d": ["y"]}));
        assert_eq!(doc, json!({"a": {"c": [1, 2], "e": 2}, "d": ["y"]}));
        json_patch(
            &mut doc,
            &json!([
                {"op": "add", "path": "/a/c/-", "value": 3},
                {"op": "replace", "path": "/a/e", "value": 5},
                {"op": "remove", "path": "/d"},
                {"op": "test", "path": "/a/c/2", "value": 3},
            ]),
        )
        .unwrap();
        assert_eq!(doc, json!({"a": {"c": [1, 2, 3], "e": 5}}));
        assert!(
            json_patch(
                &mut doc,
                &json!([{"op": "test", "path": "/a/e", "value": 6}])
            )
            .is_err()
        );
    }

    #[test]
    fn selectors_and_paths() {
        let labels = json!({"app": "web", "tier": "front"});
        assert!(selector_matches("app=web,tier", &labels));
        assert!(selector_matches("app==web,tier!=back,!missing", &labels));
        assert!(!selector_matches("app=db", &labels));
        let t = parse_target("/api/v1/namespaces/shop/secrets/s").unwrap();
        assert_eq!(
            (t.res.plural, t.namespace.as_str(), t.name.as_deref()),
            ("secrets", "shop", Some("s"))
        );
        let t = parse_target("/api/v1/namespaces/shop").unwrap();
        assert_eq!(
            (t.res.plural, t.name.as_deref()),
            ("namespaces", Some("shop"))
        );
        let t = parse_target("/api/v1/secrets").unwrap();
        assert!(t.namespace.is_empty() && t.name.is_none());
        let t = parse_target("/apis/apps/v1/namespaces/shop/deployments/web/scale").unwrap();
        assert_eq!(t.sub.as_deref(), Some("scale"));
        let t = parse_target(
            "/apis/apiregistration.k8s.io/v1/apiservices/v1beta1.external.metrics.k8s.io",
        )
        .unwrap();
        assert_eq!(t.name.as_deref(), Some("v1beta1.external.metrics.k8s.io"));
        assert!(
            parse_target("/apis/apiregistration.k8s.io/v1/namespaces/x/apiservices/y").is_none()
        );
        assert!(now().ends_with('Z') && now().len() == 20);
    }
}
