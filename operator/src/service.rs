//! The operator's servers: the mutual-TLS metrics API and the plain-HTTP Prometheus
//! endpoint.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use trustscale::scaler::format_quantity;
use trustscale::trust::{ServerTls, TrustFactory};

use crate::authn::{Authenticator, Caller};
use crate::engine::{Engine, MetricError};
use crate::metrics::Metrics;

type Body = Full<Bytes>;

pub(crate) fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// A Kubernetes `Status` object, as the API server writes one for a failure.
fn status_error(code: StatusCode, message: &str) -> Response<Body> {
    let reason = match code {
        StatusCode::BAD_REQUEST => "BadRequest",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::METHOD_NOT_ALLOWED => "MethodNotAllowed",
        StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
        _ => "InternalError",
    };
    json(
        code,
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code.as_u16()
        }),
    )
}

/// The group and version this server provides.
pub const GROUP: &str = "external.metrics.k8s.io";
/// See [`GROUP`].
pub const VERSION: &str = "v1beta1";

fn group_version() -> serde_json::Value {
    serde_json::json!({ "groupVersion": format!("{GROUP}/{VERSION}"), "version": VERSION })
}

fn api_group() -> serde_json::Value {
    serde_json::json!({
        "name": GROUP,
        "versions": [group_version()],
        "preferredVersion": group_version(),
    })
}

/// Discovery documents, as the aggregation layer and kubectl read them.
fn discovery(path: &str) -> Option<serde_json::Value> {
    let path = path.strip_suffix('/').unwrap_or(path);
    Some(match path {
        "/apis" => serde_json::json!({
            "kind": "APIGroupList", "apiVersion": "v1", "groups": [api_group()],
        }),
        "/apis/external.metrics.k8s.io" => {
            let mut g = api_group();
            g["kind"] = "APIGroup".into();
            g["apiVersion"] = "v1".into();
            g
        }
        "/apis/external.metrics.k8s.io/v1beta1" => serde_json::json!({
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": format!("{GROUP}/{VERSION}"),
            "resources": [{
                "name": "externalmetrics",
                "singularName": "",
                "namespaced": true,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            }],
        }),
        _ => return None,
    })
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(
                std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"),
                16,
            )
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The namespace and metric a metric path names.
fn metric_target(path: &str) -> Option<(&str, &str)> {
    path.strip_prefix("/apis/external.metrics.k8s.io/v1beta1/namespaces/")?
        .split_once('/')
        .filter(|(ns, m)| !ns.is_empty() && !m.is_empty() && !m.contains('/'))
}

/// Answers one API request from `caller`.
///
/// Authorization: an internal client may read everything; a user the aggregation layer
/// names may read discovery and external metrics (the kube-apiserver authorized it for
/// that path before it proxied the request), never the operator's own `/scaledobjects`.
pub fn api_response(
    engine: &Engine,
    caller: &Caller,
    method: &hyper::Method,
    path: &str,
    query: &str,
) -> Response<Body> {
    if method != hyper::Method::GET {
        return status_error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    if let Some(doc) = discovery(path) {
        return json(StatusCode::OK, &doc);
    }
    let prefix = "/apis/external.metrics.k8s.io/v1beta1/namespaces/";
    if let Some(rest) = path.strip_prefix(prefix) {
        let Some((ns, metric)) = rest
            .split_once('/')
            .filter(|(ns, m)| !ns.is_empty() && !m.is_empty() && !m.contains('/'))
        else {
            return status_error(
                StatusCode::NOT_FOUND,
                "expected /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            );
        };
        let selector = query_param(query, "labelSelector").unwrap_or_default();
        let Some(name) = selector
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("scaledobject.keda.sh/name="))
        else {
            return status_error(
                StatusCode::BAD_REQUEST,
                "labelSelector must name scaledobject.keda.sh/name=NAME",
            );
        };
        return match engine.metric(ns, name, metric) {
            Ok((value, at)) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "kind": "ExternalMetricValueList",
                    "apiVersion": "external.metrics.k8s.io/v1beta1",
                    "metadata": {},
                    "items": [{
                        "metricName": metric,
                        "metricLabels": null,
                        "timestamp": humantime::format_rfc3339_seconds(at).to_string(),
                        "value": format_quantity(value),
                    }]
                }),
            ),
            Err(e @ (MetricError::NoScaledObject(_) | MetricError::NoMetric { .. })) => {
                status_error(StatusCode::NOT_FOUND, &e.to_string())
            }
            Err(e) => status_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        };
    }
    match path {
        "/scaledobjects" if *caller != Caller::Internal => status_error(
            StatusCode::FORBIDDEN,
            "/scaledobjects is for the operator's internal clients only",
        ),
        "/scaledobjects" => json(
            StatusCode::OK,
            &serde_json::json!({ "scaledObjects": engine.status(), "problems": engine.problems() }),
        ),
        "/healthz" | "/readyz" => Response::new(Full::new(Bytes::from_static(b"ok"))),
        _ => status_error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// How long a client may take to send a request's headers (and how long an idle
/// keep-alive connection is kept).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections one listener serves at once at most; more are closed at once (and said
/// so). Below a low descriptor limit, a quarter of it (see [`connection_cap`]).
pub const MAX_CONNECTIONS: usize = 1024;

/// The connections one listener may hold: [`MAX_CONNECTIONS`], or a quarter of the
/// process's open-file limit when that is lower, so that held connections alone can never
/// use up the descriptors (accepting would then fail for everyone, clients and scalers).
#[must_use]
pub fn connection_cap() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        });
    match soft {
        Some(limit) => MAX_CONNECTIONS.min((limit / 4).max(8)),
        None => MAX_CONNECTIONS,
    }
}

/// An HTTP/1.1 and HTTP/2 server (HTTP/2 by ALPN or prior knowledge), with the timeouts
/// a server on a network needs.
fn http_builder() -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(250);
    b
}

/// Logs a repeated event at most once per period, with the count of those not logged.
struct RateLimited {
    every: Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        RateLimited {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed since the last one)` when this one may be logged.
    fn allow(&self) -> Option<u64> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        match s.0 {
            Some(last) if now.duration_since(last) < self.every => {
                s.1 += 1;
                None
            }
            _ => {
                let suppressed = s.1;
                *s = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

/// Accepts connections until `stop`, at most [`MAX_CONNECTIONS`] served at once; a failed
/// accept (out of file descriptors, say) backs off instead of spinning, and is logged at
/// most once a second. `serve` runs each connection with its permit.
async fn accept_loop<F, Fut>(
    listener: TcpListener,
    what: &'static str,
    mut stop: tokio::sync::watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let cap = connection_cap();
    let permits = Arc::new(tokio::sync::Semaphore::new(cap));
    let accept_errors = RateLimited::new(Duration::from_secs(1));
    let refused = RateLimited::new(Duration::from_secs(10));
    let mut backoff = Duration::from_millis(10);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff = Duration::from_millis(10);
                    a
                }
                Err(e) => {
                    if let Some(suppressed) = accept_errors.allow() {
                        tracing::warn!(error = %e, server = what, suppressed, "accepting a connection failed; backing off");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = stop.changed() => break,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            if let Some(suppressed) = refused.allow() {
                tracing::warn!(%peer, server = what, limit = cap, suppressed, "too many connections; closing a new one");
            }
            drop(tcp);
            continue;
        };
        let fut = serve(tcp, peer);
        tokio::spawn(async move {
            fut.await;
            drop(permit);
        });
    }
}

/// Serves one plain connection, but lets it go if no request arrived within the header
/// timeout (a client that sends part of a preface, or an HTTP/2 preface and then nothing,
/// would otherwise hold its permit for ever).
async fn serve_bounded<S>(
    builder: hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    io: TokioIo<tokio::net::TcpStream>,
    service: S,
    asked: Arc<std::sync::atomic::AtomicBool>,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    tokio::select! {
        _ = &mut served => return,
        _ = tokio::time::sleep(HEADER_TIMEOUT) => {}
    }
    if asked.load(std::sync::atomic::Ordering::Relaxed) {
        let _ = served.await;
    }
}

/// Marks its connection as having received a request, then serves it.
struct Marking<S> {
    inner: S,
    asked: Arc<std::sync::atomic::AtomicBool>,
}

impl<S> hyper::service::Service<Request<Incoming>> for Marking<S>
where
    S: hyper::service::Service<Request<Incoming>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.asked.store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// A client's certificate chain, leaf first, as it presented it in the handshake.
pub type PeerChain = Option<Arc<[rustls_pki_types::CertificateDer<'static>]>>;

/// Serves HTTPS on `listener` with `tls` (HTTP/2 or HTTP/1.1 by ALPN) until `stop`, then
/// lets requests under way finish. `make` builds each connection's service from the
/// client's certificate chain and address.
pub async fn serve_tls<F, S>(
    listener: TcpListener,
    what: &'static str,
    tls: Arc<ServerTls>,
    stop: tokio::sync::watch::Receiver<bool>,
    make: F,
) where
    F: Fn(PeerChain, SocketAddr) -> S + Send + Sync + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let graceful = Arc::new(hyper_util::server::graceful::GracefulShutdown::new());
    let g = Arc::clone(&graceful);
    let make = Arc::new(make);
    accept_loop(listener, what, stop, move |tcp, peer| {
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let make = Arc::clone(&make);
        let watcher = g.watcher();
        async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, server = what, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => return,
            };
            let chain: PeerChain = stream
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|c| c.clone().into_owned()).collect());
            let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let service = Marking {
                inner: make(chain, peer),
                asked: Arc::clone(&asked),
            };
            // ALPN decides the protocol (nothing sniffs a preface). A client that sends
            // no request within the header timeout is let go; after its first request,
            // HTTP/1's header timeout and HTTP/2's keep-alive bound an idle connection.
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let builder = if h2 {
                http_builder().http2_only()
            } else {
                http_builder().http1_only()
            };
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let served = watcher.watch(conn.into_owned());
            tokio::pin!(served);
            tokio::select! {
                _ = &mut served => return,
                _ = tokio::time::sleep(HEADER_TIMEOUT) => {}
            }
            if asked.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = served.await;
            }
        }
    })
    .await;
    if let Ok(graceful) = Arc::try_unwrap(graceful) {
        let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
    }
}

/// Serves the mutual-TLS API on `listener` until `stop`; then lets requests under way finish.
pub async fn serve_api(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    authn: Arc<Authenticator>,
    engine: Engine,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    serve_api_forwarding(listener, tls, authn, engine, None, stop).await;
}

/// [`serve_api`], with metrics requests sent on to the leader through `forward` while this
/// replica does not lead.
pub async fn serve_api_forwarding(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    authn: Arc<Authenticator>,
    engine: Engine,
    forward: Option<Arc<crate::forward::Forwarder>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    serve_tls(listener, "metrics API", tls, stop, move |chain, peer| {
        let engine = engine.clone();
        let authn = Arc::clone(&authn);
        let forward = forward.clone();
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let caller = authn.caller(chain.as_deref(), req.headers());
            let engine = engine.clone();
            let authn = Arc::clone(&authn);
            let forward = forward.clone();
            async move {
                let caller = match caller {
                    Ok(caller) => caller,
                    Err(refusal) => {
                        tracing::debug!(%peer, %refusal, "request not authenticated");
                        return Ok::<_, Infallible>(status_error(
                            StatusCode::UNAUTHORIZED,
                            &refusal.to_string(),
                        ));
                    }
                };
                if let Some((ns, metric)) = metric_target(req.uri().path()) {
                    match authn.authorize(&caller, ns, metric).await {
                        Ok(true) => {}
                        Ok(false) => {
                            let who = match &caller {
                                Caller::User(u) => u.name.clone(),
                                Caller::Internal => "internal".into(),
                            };
                            return Ok(status_error(
                                StatusCode::FORBIDDEN,
                                &format!("{metric}.external.metrics.k8s.io is forbidden: User \"{who}\" cannot list resource \"{metric}\" in API group \"external.metrics.k8s.io\" in the namespace \"{ns}\""),
                            ));
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "authorization check failed");
                            return Ok(status_error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "the authorization check could not be made; retry",
                            ));
                        }
                    }
                }
                // A follower does not poll: the leader answers metrics, over the internal
                // mutual-TLS channel (this replica authorized the caller already).
                if let Some(f) = forward.as_deref()
                    && f.should_forward()
                    && req.method() == hyper::Method::GET
                    && metric_target(req.uri().path()).is_some()
                {
                    if req.headers().contains_key(crate::forward::FORWARDED_HEADER) {
                        return Ok(crate::forward::not_the_leader());
                    }
                    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    return Ok(f.forward(pq).await);
                }
                Ok(api_response(
                    &engine,
                    &caller,
                    req.method(),
                    req.uri().path(),
                    req.uri().query().unwrap_or(""),
                ))
            }
        })
    })
    .await;
}

/// Whether the operator is ready (its first manifests applied) and alive.
#[derive(Debug, Default)]
pub struct Health {
    ready: std::sync::atomic::AtomicBool,
}

impl Health {
    /// Marks the operator ready.
    pub fn set_ready(&self) {
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The answer to a health path (`None`: not one).
    pub fn answer(&self, path: &str) -> Option<Response<Body>> {
        let ok = |body: &'static [u8]| Response::new(Full::new(Bytes::from_static(body)));
        match path {
            "/healthz" | "/livez" => Some(ok(b"ok")),
            "/readyz" if self.ready.load(std::sync::atomic::Ordering::Relaxed) => Some(ok(b"ok")),
            "/readyz" => Some(status_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not ready: the manifests are not applied yet",
            )),
            _ => None,
        }
    }
}

/// Serves `/healthz`, `/livez` and `/readyz` over plain HTTP until `stop` (the port a
/// kubelet probes).
pub async fn serve_health(
    listener: TcpListener,
    health: Arc<Health>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    accept_loop(listener, "health", stop, move |tcp, _| {
        let health = Arc::clone(&health);
        async move {
            let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = Arc::clone(&asked);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
                let health = Arc::clone(&health);
                async move {
                    Ok::<_, Infallible>(health.answer(req.uri().path()).unwrap_or_else(|| {
                        status_error(StatusCode::NOT_FOUND, "see /healthz, /livez, /readyz")
                    }))
                }
            });
            // A client that connects and says nothing is let go after the header timeout
            // (HTTP/1 or HTTP/2 is told apart by the first bytes, which must come).
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            serve_bounded(http_builder(), TokioIo::new(tcp), service, asked).await;
        }
    })
    .await;
}

/// Serves Prometheus metrics over plain HTTP until `stop`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    trust: TrustFactory,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    // One exposition is built at a time: at 100,000 triggers it is about 40 MB of text
    // and 0.4 s of CPU, so scrapes that arrive together wait their turn instead of each
    // building one at once.
    let encoding = Arc::new(tokio::sync::Mutex::new(()));
    accept_loop(listener, "Prometheus metrics", stop, move |tcp, _| {
        let metrics = Arc::clone(&metrics);
        let trust = trust.clone();
        let encoding = Arc::clone(&encoding);
        async move {
            let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let seen = Arc::clone(&asked);
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                seen.store(true, std::sync::atomic::Ordering::Relaxed);
                let metrics = Arc::clone(&metrics);
                let trust = trust.clone();
                let encoding = Arc::clone(&encoding);
                async move {
                    if req.uri().path() != "/metrics" {
                        return Ok::<_, Infallible>(status_error(
                            StatusCode::NOT_FOUND,
                            "see /metrics",
                        ));
                    }
                    let stats = trust.stats();
                    metrics.trust_anchors.set(stats.anchors as i64);
                    metrics.rejected_ca_files.set(stats.rejected_files as i64);
                    metrics
                        .unsafe_ssl_triggers
                        .set(stats.unsafe_ssl_triggers as i64);
                    // Built on the blocking pool: on a runtime worker the encoding held
                    // that worker, and the polls and API requests queued behind it waited
                    // (0.4 s per scrape at 100,000 triggers). The turn goes with the
                    // encoding, so a scraper that hangs up does not let a second one start.
                    let turn = encoding.lock_owned().await;
                    let Ok(body) = tokio::task::spawn_blocking(move || {
                        let body = metrics.encode();
                        drop(turn);
                        body
                    })
                    .await
                    else {
                        return Ok(status_error(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "the metrics could not be encoded",
                        ));
                    };
                    Ok(Response::builder()
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
                }
            });
            // A client that connects and says nothing is let go after the header timeout
            // (HTTP/1 or HTTP/2 is told apart by the first bytes, which must come).
            let mut first = [0u8; 1];
            match tokio::time::timeout(HEADER_TIMEOUT, tcp.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            serve_bounded(http_builder(), TokioIo::new(tcp), service, asked).await;
        }
    })
    .await;
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}
