//! The validating admission webhook, on KEDA's paths.
//!
//! The kube-apiserver POSTs an `AdmissionReview` (`admission.k8s.io/v1`) for every
//! ScaledObject, TriggerAuthentication or ClusterTriggerAuthentication created or
//! updated, and refuses the write when the answer says `allowed: false`. Every trigger is
//! built with the registry, as the operator would build it, and never polled: a trigger
//! that cannot be built denies, naming the trigger and the parameter. What a trigger
//! refers to that is not there (yet) — a TriggerAuthentication, a Secret or one of its
//! keys — is a warning, because GitOps tools apply objects in any order; so is a
//! parameter the scaler does not know.
//!
//! The listener asks no client for a certificate (the kube-apiserver calls webhooks
//! without one unless told otherwise) and serves nothing but the webhook paths and
//! health.

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::TcpListener;
use trustscale::scaler::{BuildContext, Params, Registry};
use trustscale::trust::ServerTls;

use crate::manifest::{Env, ManifestSet, TriggerErrorCause};
use crate::service::Health;

/// KEDA's path for ScaledObjects.
pub const SCALED_OBJECT_PATH: &str = "/validate-keda-sh-v1alpha1-scaledobject";
/// KEDA's path for TriggerAuthentications.
pub const TRIGGER_AUTHENTICATION_PATH: &str = "/validate-keda-sh-v1alpha1-triggerauthentication";
/// KEDA's path for ClusterTriggerAuthentications.
pub const CLUSTER_TRIGGER_AUTHENTICATION_PATH: &str =
    "/validate-keda-sh-v1alpha1-clustertriggerauthentication";
/// The largest review read (the kube-apiserver's own request limit is 3 MiB).
pub const MAX_REVIEW_BYTES: usize = 4 * 1024 * 1024;
/// How long a client may take to send the body, and a review to be decided (the
/// kube-apiserver waits 10 s by default).
const REVIEW_TIMEOUT: Duration = Duration::from_secs(8);
/// Triggers one ScaledObject may have for a review.
pub const MAX_TRIGGERS: usize = 100;
/// Warnings returned at most (the kube-apiserver may truncate many).
const MAX_WARNINGS: usize = 32;

/// Decides admission reviews against the registry and what the operator knows of the
/// cluster (in file mode: the manifests it loaded).
pub struct Validator {
    registry: Registry,
    ctx: BuildContext,
    env: Env,
    known: ArcSwap<ManifestSet>,
    /// In cluster mode: the ScaledObjects the controller watches and a client, for the
    /// checks that need the whole cluster (one ScaledObject per target, no foreign HPA).
    cluster: std::sync::OnceLock<(
        kube::runtime::reflector::Store<kube::api::DynamicObject>,
        kube::Client,
    )>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator").finish_non_exhaustive()
    }
}

/// The outcome of one review.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Why it is denied (none: allowed).
    pub denied: Vec<String>,
    /// What the user should know.
    pub warnings: Vec<String>,
}

impl Validator {
    /// A validator; [`Validator::set_known`] tells it the objects references resolve to.
    #[must_use]
    pub fn new(registry: Registry, ctx: BuildContext, env: Env) -> Self {
        Validator {
            registry,
            ctx,
            env,
            known: ArcSwap::from_pointee(ManifestSet::default()),
            cluster: std::sync::OnceLock::new(),
        }
    }

    /// Turns on the cluster-wide checks (once; later calls are ignored).
    pub fn use_cluster(
        &self,
        scaled_objects: kube::runtime::reflector::Store<kube::api::DynamicObject>,
        client: kube::Client,
    ) {
        let _ = self.cluster.set((scaled_objects, client));
    }

    /// Another ScaledObject or a foreign HPA already scaling `so`'s target.
    async fn cluster_conflicts(
        &self,
        so: &crate::manifest::ScaledObject,
        deadline: tokio::time::Instant,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let (Some((store, client)), Some(target)) = (self.cluster.get(), &so.scale_target_ref)
        else {
            return out;
        };
        let created = so
            .created
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_secs()).ok());
        if let Some(other) =
            crate::controller::claimed_by(store, &so.id.namespace, &so.id.name, created, target)
        {
            out.push(format!(
                "the workload '{}' of type '{}' is already managed by the ScaledObject '{other}'",
                target.name,
                target.kind()
            ));
        }
        let hpas = kube::api::Api::<kube::api::DynamicObject>::namespaced_with(
            client.clone(),
            &so.id.namespace,
            &kube::api::ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("autoscaling", "v2", "HorizontalPodAutoscaler"),
                "horizontalpodautoscalers",
            ),
        );
        match tokio::time::timeout_at(deadline, hpas.list(&kube::api::ListParams::default())).await
        {
            Ok(Ok(list)) => {
                for h in list.items {
                    let Ok(theirs) = serde_json::from_value::<crate::manifest::ScaleTargetRef>(
                        h.data["spec"]["scaleTargetRef"].clone(),
                    ) else {
                        continue;
                    };
                    let ours = h
                        .metadata
                        .owner_references
                        .iter()
                        .flatten()
                        .any(|r| r.kind == "ScaledObject" && r.name == so.id.name);
                    if theirs.same_target(target) && !ours {
                        out.push(format!(
                            "the workload '{}' of type '{}' is already managed by the hpa '{}'",
                            target.name,
                            target.kind(),
                            h.metadata.name.unwrap_or_default()
                        ));
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list HPAs for the review; not checked")
            }
            Err(_) => tracing::warn!("listing HPAs for the review took too long; not checked"),
        }
        out
    }

    /// The TriggerAuthentications, Secrets and ConfigMaps references resolve to.
    pub fn set_known(&self, set: ManifestSet) {
        self.known.store(Arc::new(set));
    }

    /// Validates a ScaledObject (as JSON, the way the kube-apiserver sends it).
    pub async fn scaled_object(
        &self,
        object: &serde_json::Value,
        deadline: tokio::time::Instant,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let value = match serde_yaml_ng::to_value(object) {
            Ok(v) => v,
            Err(e) => {
                verdict.denied.push(format!("not a usable object: {e}"));
                return verdict;
            }
        };
        let known = self.known.load();
        let so = match known.review_scaled_object(Path::new("admission review"), value, &self.env) {
            Ok(so) => so,
            Err(e) => {
                verdict.denied.push(e);
                return verdict;
            }
        };
        if so.triggers.is_empty() && so.resource_triggers.is_empty() {
            verdict
                .denied
                .push("spec.triggers: at least one trigger is required".into());
        }
        if so.triggers.is_empty() && !so.resource_triggers.is_empty() && so.min_replica_count == 0 {
            verdict.denied.push(
                "spec.minReplicaCount: 0 needs a trigger other than cpu or memory (they cannot scale from zero)".into(),
            );
        }
        verdict
            .denied
            .extend(self.cluster_conflicts(&so, deadline).await);
        if so.fallback.is_some()
            && let Some(t) = so
                .triggers
                .iter()
                .flatten()
                .find(|t| t.metric_type == trustscale::scaler::MetricType::Value)
        {
            verdict.denied.push(format!(
                "spec.fallback: every trigger must use metricType AverageValue ({} uses Value)",
                t.label
            ));
        }
        for key in so.unused.keys().take(MAX_WARNINGS) {
            verdict.warnings.push(format!(
                "spec.{key} is not supported by trustscale and is ignored"
            ));
        }
        if so.triggers.len() > MAX_TRIGGERS {
            verdict.denied.push(format!(
                "spec.triggers: {} triggers; at most {MAX_TRIGGERS} are checked",
                so.triggers.len()
            ));
            return verdict;
        }
        let mut late = false;
        let mut names = std::collections::HashSet::new();
        for (trigger, type_name) in so.triggers.iter().zip(&so.trigger_types) {
            let spec = match trigger {
                Ok(spec) => spec,
                Err(e) if e.cause == TriggerErrorCause::Unresolved => {
                    verdict.warnings.push(format!(
                        "{e} (the trigger is checked in full once that exists)"
                    ));
                    continue;
                }
                Err(e) => {
                    verdict.denied.push(e.to_string());
                    continue;
                }
            };
            if let Some(name) = spec.name.as_deref().filter(|n| !n.is_empty())
                && !names.insert(name.to_string())
            {
                verdict.denied.push(format!(
                    "{}: trigger name {name:?} is used by more than one trigger",
                    spec.label
                ));
            }
            let Some(declared) = self.registry.parameters(type_name) else {
                verdict.denied.push(format!(
                    "{}: unknown trigger type {type_name:?}; this operator knows: {}",
                    spec.label,
                    self.registry.types().collect::<Vec<_>>().join(", ")
                ));
                continue;
            };
            let unknown = Params::new(spec, declared).unknown();
            if !unknown.is_empty() {
                verdict.warnings.push(format!(
                    "{}: unknown parameters (ignored): {}",
                    spec.label,
                    unknown.join(", ")
                ));
            }
            if late {
                continue;
            }
            // Built and closed within the review's one deadline; the checks above run for
            // every trigger whatever time is left.
            let built = tokio::time::timeout_at(deadline, async {
                let scaler = self.registry.build(spec, &self.ctx).await?;
                scaler.close().await;
                Ok::<(), trustscale::scaler::ScalerError>(())
            });
            match built.await {
                Ok(Ok(())) => {}
                // A parameter the trigger takes from the environment of the scale target's
                // containers cannot be checked here (the webhook never reads the
                // operator's own environment for a tenant).
                Ok(Err(e))
                    if e.parameter
                        .as_ref()
                        .is_some_and(|p| spec.metadata.contains_key(&format!("{p}FromEnv"))) =>
                {
                    verdict.warnings.push(format!(
                        "{}: parameter {} comes from the scale target's environment, checked when the trigger runs",
                        spec.label,
                        e.parameter.as_deref().unwrap_or_default()
                    ));
                }
                Ok(Err(e)) => verdict.denied.push(e.to_string()),
                Err(_) => {
                    // Not built, as the kube-apiserver's own timeout with failurePolicy
                    // Ignore would not build it, but said; later triggers get the checks
                    // above without a build.
                    verdict.warnings.push(format!(
                        "{} and the triggers after it: not built: the review took longer than {REVIEW_TIMEOUT:?}",
                        spec.label
                    ));
                    late = true;
                }
            }
        }
        verdict
    }

    /// Validates a TriggerAuthentication (`cluster`: a ClusterTriggerAuthentication).
    #[must_use]
    pub fn trigger_authentication(&self, cluster: bool, object: &serde_json::Value) -> Verdict {
        let mut verdict = Verdict::default();
        let result = serde_yaml_ng::to_value(object)
            .map_err(|e| format!("not a usable object: {e}"))
            .and_then(|value| {
                self.known
                    .load()
                    .review_trigger_auth(cluster, &value, &self.env)
            });
        match result {
            Ok(warnings) => verdict.warnings = warnings,
            Err(e) => verdict.denied.push(e),
        }
        verdict
    }

    /// Answers one `AdmissionReview` posted to `path`: the HTTP status and the body.
    pub async fn review(
        &self,
        path: &str,
        body: &[u8],
        deadline: tokio::time::Instant,
    ) -> (StatusCode, serde_json::Value) {
        let expected = match path {
            SCALED_OBJECT_PATH => "ScaledObject",
            TRIGGER_AUTHENTICATION_PATH => "TriggerAuthentication",
            CLUSTER_TRIGGER_AUTHENTICATION_PATH => "ClusterTriggerAuthentication",
            _ => return (StatusCode::NOT_FOUND, review_error("", 404, "not found")),
        };
        let review: serde_json::Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return (
                    StatusCode::BAD_REQUEST,
                    review_error("", 400, &format!("the body is not JSON: {e}")),
                );
            }
        };
        let (uid, request) = match parse_review(&review) {
            Ok(r) => r,
            Err(message) => {
                return (StatusCode::BAD_REQUEST, review_error("", 400, &message));
            }
        };
        let operation = request
            .get("operation")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if !matches!(operation, "CREATE" | "UPDATE") {
            return (StatusCode::OK, allowed(uid, &[]));
        }
        let Some(object) = request.get("object").filter(|o| o.is_object()) else {
            return (
                StatusCode::OK,
                denied(uid, &["request.object is missing".into()], &[]),
            );
        };
        if !object["metadata"].is_object() {
            return (
                StatusCode::OK,
                denied(uid, &["object.metadata must be an object".into()], &[]),
            );
        }
        // An object being deleted that only loses finalizers (its spec unchanged) is never
        // held Terminating; a spec change is checked as any other.
        if operation == "UPDATE"
            && object["metadata"].get("deletionTimestamp").is_some()
            && request
                .get("oldObject")
                .is_some_and(|old| old.get("spec") == object.get("spec"))
        {
            return (StatusCode::OK, allowed(uid, &[]));
        }
        // References resolve in the request's namespace, the one the kube-apiserver
        // vouches for, never in one the object's body names.
        let mut object = object.clone();
        if expected != "ClusterTriggerAuthentication" {
            let Some(ns) = request
                .get("namespace")
                .and_then(serde_json::Value::as_str)
                .filter(|n| !n.is_empty())
            else {
                return (
                    StatusCode::OK,
                    denied(uid, &["request.namespace is missing".into()], &[]),
                );
            };
            match object["metadata"]["namespace"].as_str() {
                Some(own) if own != ns => {
                    return (
                        StatusCode::OK,
                        denied(
                            uid,
                            &[format!(
                                "metadata.namespace {own:?} is not the request's namespace {ns:?}"
                            )],
                            &[],
                        ),
                    );
                }
                _ => {
                    if let Some(meta) = object["metadata"].as_object_mut() {
                        meta.insert("namespace".into(), ns.into());
                    }
                }
            }
        }
        let object = &object;
        let kind = object
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if kind != expected {
            return (
                StatusCode::OK,
                denied(
                    uid,
                    &[format!(
                        "this path validates {expected} objects, not {kind:?}"
                    )],
                    &[],
                ),
            );
        }
        let verdict = match expected {
            "ScaledObject" => self.scaled_object(object, deadline).await,
            "TriggerAuthentication" => self.trigger_authentication(false, object),
            _ => self.trigger_authentication(true, object),
        };
        let body = if verdict.denied.is_empty() {
            allowed(uid, &verdict.warnings)
        } else {
            denied(uid, &verdict.denied, &verdict.warnings)
        };
        (StatusCode::OK, body)
    }
}

/// The request of a v1 `AdmissionReview` and its uid.
fn parse_review(review: &serde_json::Value) -> Result<(&str, &serde_json::Value), String> {
    let api_version = review
        .get("apiVersion")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let kind = review
        .get("kind")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    if api_version != "admission.k8s.io/v1" || kind != "AdmissionReview" {
        return Err(format!(
            "expected an AdmissionReview of admission.k8s.io/v1, got kind {kind:?} of {api_version:?}"
        ));
    }
    let request = review
        .get("request")
        .filter(|r| r.is_object())
        .ok_or("the AdmissionReview has no request")?;
    let uid = request
        .get("uid")
        .and_then(serde_json::Value::as_str)
        .filter(|u| !u.is_empty() && u.len() <= 128)
        .ok_or("request.uid must be a string of 1 to 128 characters")?;
    Ok((uid, request))
}

fn response(uid: &str, body: serde_json::Value) -> serde_json::Value {
    let mut r = body;
    r["uid"] = uid.into();
    serde_json::json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": r,
    })
}

fn capped(warnings: &[String]) -> Vec<String> {
    let mut out: Vec<String> = warnings.iter().take(MAX_WARNINGS).cloned().collect();
    if warnings.len() > MAX_WARNINGS {
        out.push(format!("… and {} more", warnings.len() - MAX_WARNINGS));
    }
    out
}

fn allowed(uid: &str, warnings: &[String]) -> serde_json::Value {
    let mut r = serde_json::json!({ "allowed": true });
    if !warnings.is_empty() {
        r["warnings"] = capped(warnings).into();
    }
    response(uid, r)
}

fn denied(uid: &str, reasons: &[String], warnings: &[String]) -> serde_json::Value {
    let mut r = serde_json::json!({
        "allowed": false,
        "status": {
            "status": "Failure",
            "code": 403,
            "reason": "Forbidden",
            "message": reasons.join("; "),
        },
    });
    if !warnings.is_empty() {
        r["warnings"] = capped(warnings).into();
    }
    response(uid, r)
}

fn review_error(uid: &str, code: u16, message: &str) -> serde_json::Value {
    response(
        uid,
        serde_json::json!({
            "allowed": false,
            "status": { "status": "Failure", "code": code, "message": message },
        }),
    )
}

async fn answer(
    validator: &Validator,
    health: &Health,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(r) = health.answer(&path) {
        return r;
    }
    if !matches!(
        path.as_str(),
        SCALED_OBJECT_PATH | TRIGGER_AUTHENTICATION_PATH | CLUSTER_TRIGGER_AUTHENTICATION_PATH
    ) {
        return crate::service::json(
            StatusCode::NOT_FOUND,
            &review_error(
                "",
                404,
                "not found: this listener serves the admission webhook only",
            ),
        );
    }
    if req.method() != hyper::Method::POST {
        return crate::service::json(
            StatusCode::METHOD_NOT_ALLOWED,
            &review_error("", 405, "POST an AdmissionReview"),
        );
    }
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = Limited::new(req.into_body(), MAX_REVIEW_BYTES);
    // One deadline for the whole review, the body's arrival included.
    let deadline = tokio::time::Instant::now() + REVIEW_TIMEOUT;
    let bytes = match tokio::time::timeout_at(deadline, body.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_large = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_large {
                crate::service::json(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    &review_error(
                        "",
                        413,
                        &format!("the review is larger than {MAX_REVIEW_BYTES} bytes"),
                    ),
                )
            } else {
                crate::service::json(
                    StatusCode::BAD_REQUEST,
                    &review_error("", 400, "the body could not be read"),
                )
            };
        }
        Err(_) => {
            return crate::service::json(
                StatusCode::REQUEST_TIMEOUT,
                &review_error("", 408, "the body did not arrive in time"),
            );
        }
    };
    // Checked after the body is read: a reply before the request is complete makes
    // HTTP/2 clients see the stream reset.
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return crate::service::json(
            StatusCode::BAD_REQUEST,
            &review_error(
                "",
                400,
                &format!("content type {content_type:?}; expected application/json"),
            ),
        );
    }
    let (status, body) = validator.review(&path, &bytes, deadline).await;
    crate::service::json(status, &body)
}

/// Serves the webhook (TLS, no client certificate) on `listener` until `stop`.
pub async fn serve_webhook(
    listener: TcpListener,
    tls: Arc<ServerTls>,
    validator: Arc<Validator>,
    health: Arc<Health>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    crate::service::serve_tls(
        listener,
        "admission webhook",
        tls,
        stop,
        move |_chain, _peer| {
            let validator = Arc::clone(&validator);
            let health = Arc::clone(&health);
            hyper::service::service_fn(move |req: Request<Incoming>| {
                let validator = Arc::clone(&validator);
                let health = Arc::clone(&health);
                async move { Ok::<_, Infallible>(answer(&validator, &health, req).await) }
            })
        },
    )
    .await;
}
