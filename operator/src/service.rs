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

use crate::engine::{Engine, MetricError};
use crate::metrics::Metrics;

type Body = Full<Bytes>;

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(value.to_string())))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

fn status_error(code: StatusCode, message: &str) -> Response<Body> {
    json(
        code,
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "code": code.as_u16()
        }),
    )
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
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

/// Answers one API request.
pub fn api_response(
    engine: &Engine,
    method: &hyper::Method,
    path: &str,
    query: &str,
) -> Response<Body> {
    if method != hyper::Method::GET {
        return status_error(StatusCode::METHOD_NOT_ALLOWED, "only GET is served");
    }
    let prefix = "/apis/external.metrics.k8s.io/v1beta1/namespaces/";
    if let Some(rest) = path.strip_prefix(prefix) {
        let Some((ns, metric)) = rest.split_once('/') else {
            return status_error(
                StatusCode::NOT_FOUND,
                "expected /namespaces/{namespace}/{metric}",
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
        "/scaledobjects" => json(
            StatusCode::OK,
            &serde_json::json!({ "scaledObjects": engine.status(), "problems": engine.problems() }),
        ),
        "/healthz" | "/readyz" => Response::new(Full::new(Bytes::from_static(b"ok"))),
        _ => status_error(StatusCode::NOT_FOUND, "not found"),
    }
}

/// Serves the mutual-TLS API on `listener` until `stop`; then lets requests under way finish.
pub async fn serve_api(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    engine: Engine,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config());
        let engine = engine.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let engine = engine.clone();
                async move {
                    let resp = api_response(
                        &engine,
                        req.method(),
                        req.uri().path(),
                        req.uri().query().unwrap_or(""),
                    );
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let _ = watcher.watch(conn).await;
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// Serves Prometheus metrics over plain HTTP until `stop`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    trust: TrustFactory,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted { Ok(a) => a, Err(_) => continue },
            _ = stop.changed() => return,
        };
        let metrics = Arc::clone(&metrics);
        let trust = trust.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = Arc::clone(&metrics);
                let trust = trust.clone();
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
                    let body = metrics.encode();
                    Ok(Response::builder()
                        .header(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .body(Full::new(Bytes::from(body)))
                        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Binds a listener, naming the address in the error.
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
    })
}
