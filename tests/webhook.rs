//! The validating admission webhook, as the kube-apiserver calls it: curl (a client we
//! did not write) POSTs AdmissionReview JSON over HTTPS without a client certificate, on
//! KEDA's paths, to a running `trustscale operator`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Child, TestCa, free_port, wait_for};

const SO_PATH: &str = "/validate-keda-sh-v1alpha1-scaledobject";
const TA_PATH: &str = "/validate-keda-sh-v1alpha1-triggerauthentication";
const CTA_PATH: &str = "/validate-keda-sh-v1alpha1-clustertriggerauthentication";

/// What the operator knows: a TriggerAuthentication and its Secret.
const KNOWN: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: api-auth, namespace: shop}
stringData: {token: not-a-real-token}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {name: api-ta, namespace: shop}
spec:
  secretTargetRef:
    - {parameter: token, name: api-auth, key: token}
"#;

struct Operator {
    _child: Child,
    certs: PathBuf,
    _work: tempfile::TempDir,
    webhook: u16,
}

impl Operator {
    fn start(certs: Option<&Path>, extra: &[&str]) -> Operator {
        let work = tempfile::tempdir().unwrap();
        let manifests = work.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(manifests.join("known.yaml"), KNOWN).unwrap();
        let certs = certs.map_or_else(|| work.path().join("certs"), Path::to_path_buf);
        let (webhook, health) = (free_port(), free_port());
        let child = Child(
            Command::new(env!("CARGO_BIN_EXE_trustscale"))
                .arg("operator")
                .arg("--manifests")
                .arg(&manifests)
                .arg("--cert-dir")
                .arg(&certs)
                .args(["--ca-dir", "/nonexistent", "--listen", "127.0.0.1:0"])
                .args(["--metrics-bind-address", ""])
                .args([
                    "--health-probe-bind-address",
                    &format!("127.0.0.1:{health}"),
                ])
                .args(["--webhook-bind-address", &format!("127.0.0.1:{webhook}")])
                .args(extra)
                .env("RUST_LOG", "warn")
                // A value of the operator's own environment no review may ever see.
                .env("TRUSTSCALE_TEST_SECRET", "hunter2-from-the-operators-env")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for("the operator is ready", Duration::from_secs(30), || {
            Command::new("curl")
                .args(["-sf", "--max-time", "2"])
                .arg(format!("http://127.0.0.1:{health}/readyz"))
                .output()
                .is_ok_and(|o| o.status.success())
        });
        Operator {
            _child: child,
            certs,
            _work: work,
            webhook,
        }
    }

    /// curl POSTing `body` to `path` (no client certificate): (HTTP status, body).
    fn post(&self, path: &str, body: &[u8], extra: &[&str]) -> (u16, String) {
        self.post_trusting(&self.certs.join("ca.crt"), path, body, extra)
    }

    fn post_trusting(&self, ca: &Path, path: &str, body: &[u8], extra: &[&str]) -> (u16, String) {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), body).unwrap();
        let typed = extra
            .iter()
            .any(|e| e.to_ascii_lowercase().starts_with("content-type"));
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(ca)
            .args(if typed {
                &[][..]
            } else {
                &["-H", "Content-Type: application/json"][..]
            })
            .args(extra)
            .arg("--data-binary")
            .arg(format!("@{}", file.path().display()))
            .arg(format!("https://localhost:{}{path}", self.webhook))
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// Reviews `object` (CREATE) on `path`: the review's response.
    fn review(&self, path: &str, object: serde_json::Value) -> serde_json::Value {
        self.review_op(path, "CREATE", object)
    }

    fn review_op(&self, path: &str, op: &str, object: serde_json::Value) -> serde_json::Value {
        let uid = format!("uid-{}", support::unique("r"));
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": uid,
                "kind": {"group": "keda.sh", "version": "v1alpha1", "kind": object["kind"]},
                "operation": op,
                "namespace": "shop",
                "object": object,
            }
        });
        let (code, body) = self.post(path, review.to_string().as_bytes(), &[]);
        assert_eq!(code, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{body}");
        assert_eq!(answer["kind"], "AdmissionReview", "{body}");
        assert_eq!(answer["response"]["uid"], uid, "the uid is echoed: {body}");
        answer["response"].clone()
    }
}

fn scaled_object(spec: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": spec,
    })
}

fn metrics_api(meta: serde_json::Value) -> serde_json::Value {
    scaled_object(serde_json::json!({
        "scaleTargetRef": {"name": "web"},
        "triggers": [{"type": "metrics-api", "metadata": meta}],
    }))
}

fn good_meta() -> serde_json::Value {
    serde_json::json!({
        "url": "https://metrics.example.com/stats",
        "valueLocation": "queue.depth",
        "targetValue": "5",
    })
}

fn message(response: &serde_json::Value) -> String {
    response["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn warnings(response: &serde_json::Value) -> String {
    response["warnings"].to_string()
}

#[test]
fn scaled_objects_are_built_denied_with_the_trigger_and_parameter_and_warned_about() {
    let op = Operator::start(None, &["--unsafe-ssl-policy", "forbid"]);

    // Valid: allowed, no warnings.
    let r = op.review(SO_PATH, metrics_api(good_meta()));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("warnings").is_none(), "{r}");

    // Invalid: a required parameter missing; a value that is not a number.
    let mut meta = good_meta();
    meta.as_object_mut().unwrap().remove("valueLocation");
    let r = op.review(SO_PATH, metrics_api(meta));
    assert_eq!(r["allowed"], false, "{r}");
    assert_eq!(r["status"]["code"], 403, "{r}");
    let m = message(&r);
    assert!(
        m.contains("shop/web#0 (metrics-api)") && m.contains("valueLocation"),
        "{m}"
    );
    let mut meta = good_meta();
    meta["targetValue"] = "lots".into();
    let m = message(&op.review(SO_PATH, metrics_api(meta)));
    assert!(
        m.contains("#0 (metrics-api)") && m.contains("targetValue"),
        "{m}"
    );

    // Unknown keys: allowed, with a warning naming them.
    let mut meta = good_meta();
    meta["valueLocaton"] = "typo".into();
    let r = op.review(SO_PATH, metrics_api(meta));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("valueLocaton"), "{r}");

    // unsafeSsl under the forbidding policy: denied, naming it.
    let mut meta = good_meta();
    meta["unsafeSsl"] = "true".into();
    let r = op.review(SO_PATH, metrics_api(meta));
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("unsafeSsl"), "{r}");

    // A file path in `ca` without --allow-file-params: denied, naming the parameter.
    let mut meta = good_meta();
    meta["ca"] = "/etc/ssl/certs/ca-certificates.crt".into();
    let r = op.review(SO_PATH, metrics_api(meta));
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("parameter ca"), "{r}");

    // min above max; no triggers; an unknown type; two triggers with one name.
    let r = op.review(
        SO_PATH,
        scaled_object(serde_json::json!({
            "minReplicaCount": 5, "maxReplicaCount": 2,
            "triggers": [{"type": "metrics-api", "metadata": good_meta()}],
        })),
    );
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("minReplicaCount"), "{r}");
    let r = op.review(SO_PATH, scaled_object(serde_json::json!({"triggers": []})));
    assert!(message(&r).contains("at least one trigger"), "{r}");
    let r = op.review(
        SO_PATH,
        scaled_object(
            serde_json::json!({"triggers": [{"type": "no-such-scaler", "metadata": {}}]}),
        ),
    );
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("no-such-scaler"), "{r}");
    let r = op.review(
        SO_PATH,
        scaled_object(serde_json::json!({"triggers": [
            {"type": "metrics-api", "name": "q", "metadata": good_meta()},
            {"type": "metrics-api", "name": "q", "metadata": good_meta()},
        ]})),
    );
    assert!(message(&r).contains("\"q\""), "{r}");

    // A TriggerAuthentication that does not exist yet: allowed, with a warning; one that
    // does: no warning.
    let with_auth = |name: &str| {
        scaled_object(serde_json::json!({
            "triggers": [{"type": "metrics-api", "metadata": good_meta(),
                          "authenticationRef": {"name": name}}],
        }))
    };
    let r = op.review(SO_PATH, with_auth("not-applied-yet"));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("not-applied-yet"), "{r}");
    let r = op.review(SO_PATH, with_auth("api-ta"));
    assert_eq!(r["allowed"], true, "{r}");

    // A delete is never denied; an object of another kind on this path is.
    let r = op.review_op(SO_PATH, "DELETE", metrics_api(serde_json::json!({})));
    assert_eq!(r["allowed"], true, "{r}");
    let mut wrong = metrics_api(good_meta());
    wrong["kind"] = "TriggerAuthentication".into();
    let r = op.review(SO_PATH, wrong);
    assert_eq!(r["allowed"], false, "{r}");
}

#[test]
fn trigger_authentications_warn_about_what_is_missing_and_deny_what_is_wrong() {
    let op = Operator::start(None, &[]);
    let ta = |spec: serde_json::Value| {
        serde_json::json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
            "metadata": {"name": "t", "namespace": "shop"}, "spec": spec,
        })
    };
    let r = op.review(
        TA_PATH,
        ta(serde_json::json!({"secretTargetRef": [{"parameter": "token", "name": "api-auth", "key": "token"}]})),
    );
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("warnings").is_none(), "{r}");
    let r = op.review(
        TA_PATH,
        ta(serde_json::json!({"secretTargetRef": [{"parameter": "token", "name": "later", "key": "token"}]})),
    );
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("Secret shop/later not found"), "{r}");
    let r = op.review(
        TA_PATH,
        ta(serde_json::json!({"secretTargetRef": [
            {"parameter": "token", "name": "api-auth", "key": "token"},
            {"parameter": "token", "name": "api-auth", "key": "other"},
        ]})),
    );
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("token"), "{r}");
    let r = op.review(
        TA_PATH,
        ta(serde_json::json!({"hashiCorpVault": {"address": "x"}})),
    );
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("hashiCorpVault"), "{r}");
    let mut cta = ta(serde_json::json!({"env": [{"parameter": "token", "name": "TOKEN"}]}));
    cta["kind"] = "ClusterTriggerAuthentication".into();
    let r = op.review(CTA_PATH, cta);
    assert_eq!(r["allowed"], true, "{r}");
}

#[test]
fn bad_reviews_get_clear_errors_and_the_listener_serves_only_the_webhook() {
    let op = Operator::start(None, &[]);
    let (code, body) = op.post(SO_PATH, b"this is not json", &[]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("not JSON"), "{body}");
    // Deeply nested JSON: refused quickly by the parser's depth limit.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, body) = op.post(SO_PATH, deep.as_bytes(), &[]);
    assert_eq!(code, 400, "{body}");
    // Larger than the limit: HTTP/1.1 gets a 413 review; over HTTP/2 the stream is
    // reset while curl is still sending (no client of ours gets that far).
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(5 * 1024 * 1024));
    let (code, body) = op.post(SO_PATH, huge.as_bytes(), &["--http1.1"]);
    assert_eq!(code, 413, "{body}");
    assert!(body.contains("larger than 4194304 bytes"), "{body}");
    let (code, body) = op.post(SO_PATH, huge.as_bytes(), &[]);
    assert_ne!(code, 200, "{body}");
    // Not JSON by its content type.
    let (code, body) = op.post(SO_PATH, b"{}", &["-H", "Content-Type: text/plain"]);
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("application/json"), "{body}");
    // The wrong version, no uid, no request.
    for review in [
        r#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview","request":{"uid":"a"}}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"operation":"CREATE"}}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","operation":"CREATE","object":{"kind":"ScaledObject","metadata":{"name":"x"},"spec":{"triggers":[{"type":"metrics-api","metadata":{"url":{"nested":[1,2]}}}]}}}}"#,
    ] {
        let (code, body) = op.post(SO_PATH, review.as_bytes(), &[]);
        assert!(
            code == 400 || (code == 200 && body.contains("\"allowed\":false")),
            "{review}: {code} {body}"
        );
    }
    // Only the webhook paths and health; GET on a webhook path is not a review.
    let get = |path: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
            .arg("--cacert")
            .arg(op.certs.join("ca.crt"))
            .arg(format!("https://localhost:{}{path}", op.webhook))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(get("/healthz").ends_with("\n200"));
    assert!(get(SO_PATH).ends_with("\n405"));
    assert!(get("/apis/external.metrics.k8s.io/v1beta1").ends_with("\n404"));
    assert!(get("/scaledobjects").ends_with("\n404"));
    // Still serving.
    let r = op.review(SO_PATH, metrics_api(good_meta()));
    assert_eq!(r["allowed"], true, "{r}");
}

#[test]
fn the_webhook_serves_a_new_certificate_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let first = TestCa::new("first-ca");
    support::write_cert_set(certs.path(), &first);
    let op = Operator::start(Some(certs.path()), &["--enable-cert-rotation=false"]);
    let pems = tempfile::tempdir().unwrap();
    let first_pem = pems.path().join("first.pem");
    first.write_pem(&first_pem);
    let body = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u1", "operation": "DELETE"}
    })
    .to_string();
    let (code, _) = op.post_trusting(&first_pem, SO_PATH, body.as_bytes(), &[]);
    assert_eq!(code, 200);

    // The user's certificates are replaced (cert-manager renewing with a new CA).
    let second = TestCa::new("second-ca");
    let staged = tempfile::tempdir_in(certs.path().parent().unwrap()).unwrap();
    support::write_cert_set(staged.path(), &second);
    for f in ["ca.crt", "tls.key", "tls.crt"] {
        std::fs::rename(staged.path().join(f), certs.path().join(f)).unwrap();
    }
    let second_pem = pems.path().join("second.pem");
    second.write_pem(&second_pem);
    wait_for(
        "the webhook serves the new certificate",
        Duration::from_secs(15),
        || {
            op.post_trusting(&second_pem, SO_PATH, body.as_bytes(), &[])
                .0
                == 200
        },
    );
    let (code, _) = op.post_trusting(&first_pem, SO_PATH, body.as_bytes(), &[]);
    assert_eq!(code, 0, "the old CA no longer verifies the webhook");
}

/// An AdmissionReview of `object` with `operation` in `namespace` (None: no namespace).
fn review_in(
    op: &Operator,
    operation: &str,
    namespace: Option<&str>,
    object: serde_json::Value,
) -> serde_json::Value {
    let mut request = serde_json::json!({
        "uid": "u-ns", "kind": {"group": "keda.sh", "version": "v1alpha1", "kind": "ScaledObject"},
        "operation": operation, "object": object,
    });
    if let Some(ns) = namespace {
        request["namespace"] = ns.into();
    }
    let review = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request});
    let (code, body) = op.post(SO_PATH, review.to_string().as_bytes(), &[]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["response"].clone()
}

#[test]
fn a_review_resolves_in_the_requests_namespace_and_never_sees_the_operators_environment() {
    let op = Operator::start(None, &[]);
    let with_auth = |ns: &str| {
        let mut so = scaled_object(serde_json::json!({
            "triggers": [{"type": "metrics-api", "metadata": good_meta(),
                          "authenticationRef": {"name": "api-ta"}}],
        }));
        so["metadata"]["namespace"] = ns.into();
        so
    };
    // The TriggerAuthentication is in shop: reviewed in shop, it resolves.
    let r = review_in(&op, "CREATE", Some("shop"), with_auth("shop"));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(r.get("warnings").is_none(), "{r}");
    // A body that names shop while the request is in another namespace is denied; in its
    // own namespace, shop's TriggerAuthentication is not found.
    let r = review_in(&op, "CREATE", Some("other"), with_auth("shop"));
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("not the request's namespace"), "{r}");
    let r = review_in(&op, "CREATE", Some("other"), with_auth("other"));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("not found"), "{r}");
    // No namespace at all.
    let r = review_in(&op, "CREATE", None, with_auth("shop"));
    assert_eq!(r["allowed"], false, "{r}");

    // A parameter from the environment: a warning, and the operator's own variable is
    // never read for it.
    let mut meta = good_meta();
    meta.as_object_mut().unwrap().remove("targetValue");
    meta["targetValueFromEnv"] = "TRUSTSCALE_TEST_SECRET".into();
    let r = review_in(&op, "CREATE", Some("shop"), metrics_api(meta));
    assert_eq!(r["allowed"], true, "{r}");
    assert!(warnings(&r).contains("targetValue"), "{r}");
    assert!(!r.to_string().contains("hunter2"), "{r}");
}

#[test]
fn an_object_being_deleted_is_never_held_and_oversized_reviews_are_bounded() {
    let op = Operator::start(None, &[]);
    let mut dying = scaled_object(
        serde_json::json!({"triggers": [{"type": "no-such-scaler", "metadata": {}}]}),
    );
    let mut before = dying.clone();
    before["metadata"]["finalizers"] = serde_json::json!(["finalizer.keda.sh"]);
    dying["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z".into();
    dying["metadata"]["finalizers"] = serde_json::json!([]);
    let r = review_with_old(&op, dying.clone(), before.clone());
    assert_eq!(r["allowed"], true, "finalizer removal is never denied: {r}");
    // Being deleted but its spec changed: checked, and denied.
    let mut changed = dying.clone();
    changed["spec"]["minReplicaCount"] = 1.into();
    let r = review_with_old(&op, changed, before);
    assert_eq!(r["allowed"], false, "{r}");
    // Metadata that is not an object is denied, not a crash.
    let mut odd = dying.clone();
    odd["metadata"] = "x".into();
    assert_eq!(
        review_in(&op, "CREATE", Some("shop"), odd)["allowed"],
        false
    );
    // The same object, not being deleted: denied.
    dying["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("deletionTimestamp");
    assert_eq!(
        review_in(&op, "UPDATE", Some("shop"), dying)["allowed"],
        false
    );
    // More triggers than a review checks.
    let many: Vec<serde_json::Value> = (0..101)
        .map(|_| serde_json::json!({"type": "metrics-api", "metadata": good_meta()}))
        .collect();
    let r = review_in(
        &op,
        "CREATE",
        Some("shop"),
        scaled_object(serde_json::json!({"triggers": many})),
    );
    assert_eq!(r["allowed"], false, "{r}");
    assert!(message(&r).contains("at most 100"), "{r}");
}

/// Values planted in the corpora that must never come back.
const PLANTED: &[&str] = &[
    "HUNTER2PASS",
    "QUERYSECRET",
    "S3CR3TKEYMATERIAL",
    "JUSTASECRETVALUE",
    "ODDPLACESECRET",
];

#[test]
fn the_bad_input_corpora_get_answers_never_secrets_and_the_webhook_keeps_serving() {
    let op = Operator::start(None, &[]);
    let corpus = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/corpus"));
    let check = |what: &str, code: u16, body: &str| {
        assert!(code == 200 || code == 400, "{what}: {code} {body}");
        let answer: serde_json::Value =
            serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {body}"));
        assert_eq!(answer["kind"], "AdmissionReview", "{what}: {body}");
        assert!(answer["response"]["allowed"].is_boolean(), "{what}: {body}");
        for s in PLANTED {
            assert!(!body.contains(s), "{what}: {s} came back: {body}");
        }
    };
    // Raw review bodies.
    let mut bodies = 0;
    for entry in std::fs::read_dir(corpus.join("admission")).unwrap() {
        let path = entry.unwrap().path();
        let (code, body) = op.post(SO_PATH, &std::fs::read(&path).unwrap(), &[]);
        check(&path.display().to_string(), code, &body);
        bodies += 1;
    }
    assert!(bodies >= 9, "the admission corpus is there");
    // Every ScaledObject and TriggerAuthentication of the manifest corpus, as the
    // kube-apiserver would send it.
    let mut reviewed = 0;
    for entry in std::fs::read_dir(corpus.join("manifests")).unwrap() {
        let entry = entry.unwrap();
        if !entry.file_type().unwrap().is_file() {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let Ok(value) = <serde_json::Value as serde::Deserialize>::deserialize(doc) else {
                continue;
            };
            let path = match value["kind"].as_str() {
                Some("ScaledObject") => SO_PATH,
                Some("TriggerAuthentication") => TA_PATH,
                _ => continue,
            };
            let ns = value["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            let review = serde_json::json!({
                "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                "request": {"uid": "corpus", "operation": "CREATE", "namespace": ns, "object": value},
            });
            let (code, body) = op.post(path, review.to_string().as_bytes(), &[]);
            check(&entry.path().display().to_string(), code, &body);
            reviewed += 1;
        }
    }
    assert!(
        reviewed >= 5,
        "the manifest corpus was reviewed: {reviewed}"
    );
    let r = op.review(SO_PATH, metrics_api(good_meta()));
    assert_eq!(r["allowed"], true, "{r}");
}

/// An UPDATE review of `object` whose previous state was `old`, in namespace shop.
fn review_with_old(
    op: &Operator,
    object: serde_json::Value,
    old: serde_json::Value,
) -> serde_json::Value {
    let review = serde_json::json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "u-old", "operation": "UPDATE", "namespace": "shop",
                    "object": object, "oldObject": old}});
    let (code, body) = op.post(SO_PATH, review.to_string().as_bytes(), &[]);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str::<serde_json::Value>(&body).unwrap()["response"].clone()
}

#[test]
fn openssl_and_python_reach_the_webhook_and_tls12_is_refused() {
    let op = Operator::start(None, &[]);
    let ca = op.certs.join("ca.crt");
    // openssl s_client: TLS 1.3, h2 by ALPN, the chain verified, no client certificate.
    let s_client = |extra: &[&str]| {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", op.webhook)])
            .args(["-servername", "localhost", "-verify_hostname", "localhost"])
            .arg("-CAfile")
            .arg(&ca)
            .args(["-alpn", "h2,http/1.1", "-verify_return_error"])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let text = s_client(&[]);
    assert!(
        text.contains("Verify return code: 0 (ok)")
            && text.contains("ALPN protocol: h2")
            && text.contains("TLSv1.3"),
        "{text}"
    );
    // Negative controls: TLS 1.2 against the TLS 1.3 minimum; another CA.
    let text = s_client(&["-tls1_2"]);
    assert!(text.contains("alert protocol version"), "{text}");
    let stranger = tempfile::NamedTempFile::new().unwrap();
    support::TestCa::new("stranger").write_pem(stranger.path());
    let (code, _) = op.post_trusting(stranger.path(), SO_PATH, b"{}", &[]);
    assert_eq!(
        code, 0,
        "a server the stranger CA did not sign must be refused"
    );

    // python's urllib posts a review, as any HTTP/1.1 client would.
    let review = serde_json::json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "py", "operation": "CREATE", "namespace": "shop",
                    "object": metrics_api(good_meta())}
    });
    let script = format!(
        r#"
import json, ssl, urllib.request
ctx = ssl.create_default_context(cafile={ca:?})
req = urllib.request.Request({url:?}, data={body:?}.encode(), headers={{"Content-Type": "application/json"}})
print(json.load(urllib.request.urlopen(req, context=ctx, timeout=10))["response"]["allowed"])
"#,
        ca = ca.display().to_string(),
        url = format!("https://localhost:{}{SO_PATH}", op.webhook),
        body = review.to_string(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "True",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The README's example review, posted as the README shows.
#[test]
fn the_readmes_example_review_is_allowed_with_its_warning() {
    let op = Operator::start(None, &[]);
    let review = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/manifests/admission-review.json"
    ))
    .unwrap();
    let (code, body) = op.post(SO_PATH, &review, &[]);
    assert_eq!(code, 200, "{body}");
    let r: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["response"]["allowed"], true, "{body}");
    assert_eq!(r["response"]["uid"], "4b7c0b7e-0000-4000-8000-000000000001");
    assert!(warnings(&r["response"]).contains("valueLocaton"), "{body}");
}
