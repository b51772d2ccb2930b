//! The test API server as kubectl (client-go, a client we did not write) meets it: create,
//! get, list with selectors and chunks, watch, merge patches, conflicts on a stale
//! resourceVersion, the scale subresource, 410 for a compacted resourceVersion, and 401
//! without the token.

use std::process::{Command, Stdio};
use std::time::Duration;

use trustscale_test_apiserver::TestApiServer;

fn kubectl(server: &TestApiServer, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args(["--request-timeout", "10s"])
        .args(args)
        .env("KUBECACHEDIR", server.dir().join("cache"))
        .output()
        .expect("kubectl is installed");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `kubectl create -f` of a JSON object (kubectl's generators such as `create secret`
/// send protobuf, which this server does not speak; files go as JSON).
fn create(server: &TestApiServer, object: serde_json::Value) -> (bool, String, String) {
    let file = server.dir().join(format!(
        "{}.json",
        object["metadata"]["name"].as_str().unwrap_or("object")
    ));
    std::fs::write(&file, object.to_string()).unwrap();
    kubectl(
        server,
        &["create", "-f", file.to_str().unwrap(), "--validate=false"],
    )
}

fn secret(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": {"a": "Yg=="}})
}

fn ok(server: &TestApiServer, args: &[&str]) -> String {
    let (ok, out, err) = kubectl(server, args);
    assert!(ok, "kubectl {args:?}: {err}{out}");
    out
}

#[test]
fn kubectl_creates_reads_lists_patches_and_deletes() {
    let s = TestApiServer::start();
    assert!(create(&s, secret("s1")).0);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&s, &["get", "secret", "s1", "-o", "json"])).unwrap();
    assert_eq!(json["data"]["a"], "Yg==");
    assert_eq!(json["metadata"]["namespace"], "default");
    let rv = json["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    ok(
        &s,
        &[
            "patch",
            "secret",
            "s1",
            "--type=merge",
            "-p",
            r#"{"metadata":{"labels":{"tier":"front"}}}"#,
        ],
    );
    assert_eq!(
        ok(&s, &["get", "secrets", "-l", "tier=front", "-o", "name"]).trim(),
        "secret/s1"
    );
    assert_eq!(
        ok(&s, &["get", "secrets", "-l", "tier!=front", "-o", "name"]).trim(),
        ""
    );

    // A replace carrying the stale resourceVersion is a conflict, worded as the real
    // server words it.
    let mut stale = json.clone();
    stale["metadata"]["resourceVersion"] = rv.into();
    stale["data"]["a"] = "Yw==".into();
    let file = s.dir().join("stale.json");
    std::fs::write(&file, stale.to_string()).unwrap();
    let (done, _, err) = kubectl(
        &s,
        &["replace", "-f", file.to_str().unwrap(), "--validate=false"],
    );
    assert!(
        !done && err.contains("the object has been modified"),
        "{err}"
    );
    // A create of an existing name is AlreadyExists.
    let (done, _, err) = create(&s, secret("s1"));
    assert!(!done && err.contains("already exists"), "{err}");

    // Lists in chunks of one (limit and continue).
    assert!(create(&s, secret("s2")).0);
    assert!(create(&s, secret("s3")).0);
    let names = ok(&s, &["get", "secrets", "--chunk-size=1", "-o", "name"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        ["secret/s1", "secret/s2", "secret/s3"]
    );
    assert!(
        s.requests().iter().any(|(_, p)| p.contains("continue=")),
        "kubectl followed a continue token"
    );

    ok(&s, &["delete", "secret", "s1"]);
    let (done, _, err) = kubectl(&s, &["get", "secret", "s1"]);
    assert!(!done && err.contains("not found"), "{err}");

    // Cluster-scoped kinds of other groups.
    let apiservice = r#"{"apiVersion":"apiregistration.k8s.io/v1","kind":"APIService","metadata":{"name":"v1beta1.external.metrics.k8s.io"},"spec":{"group":"external.metrics.k8s.io","version":"v1beta1","service":{"namespace":"keda","name":"trustscale"},"groupPriorityMinimum":100,"versionPriority":100}}"#;
    let (done, _, err) = create(&s, serde_json::from_str(apiservice).unwrap());
    assert!(done, "{err}");
    ok(
        &s,
        &[
            "patch",
            "apiservice",
            "v1beta1.external.metrics.k8s.io",
            "--type=merge",
            "-p",
            r#"{"spec":{"caBundle":"Y2E="}}"#,
        ],
    );
    assert_eq!(
        ok(
            &s,
            &[
                "get",
                "apiservice",
                "v1beta1.external.metrics.k8s.io",
                "-o",
                "jsonpath={.spec.caBundle}"
            ]
        ),
        "Y2E="
    );
}

#[test]
fn kubectl_scales_through_the_scale_subresource() {
    let s = TestApiServer::start();
    let (done, _, err) = create(
        &s,
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "web", "image": "registry.invalid/web"}]}}}}),
    );
    assert!(done, "{err}");
    ok(&s, &["scale", "deployment", "web", "--replicas=3"]);
    assert_eq!(
        ok(
            &s,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.spec.replicas}"
            ]
        ),
        "3"
    );
    assert!(
        s.requests()
            .iter()
            .any(|(m, p)| m == "PATCH" && p.contains("/deployments/web/scale?")),
        "{:?}",
        s.requests()
    );
    // The status subresource is the only way to change status.
    ok(
        &s,
        &[
            "patch",
            "deployment",
            "web",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":7}}"#,
        ],
    );
    assert_eq!(
        ok(
            &s,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.status.replicas}"
            ]
        ),
        ""
    );
    ok(
        &s,
        &[
            "patch",
            "deployment",
            "web",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status":{"replicas":7}}"#,
        ],
    );
    assert_eq!(
        ok(
            &s,
            &[
                "get",
                "deployment",
                "web",
                "-o",
                "jsonpath={.status.replicas}"
            ]
        ),
        "7"
    );
}

#[test]
fn kubectl_watches_and_a_compacted_resource_version_is_gone() {
    let s = TestApiServer::start();
    assert!(create(&s, configmap("c1")).0);
    let mut watch = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(["get", "configmaps", "--watch", "-o", "name"])
        .env("KUBECACHEDIR", s.dir().join("cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert!(create(&s, configmap("c2")).0);
    std::thread::sleep(Duration::from_secs(2));
    let _ = watch.kill();
    let out = watch.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("configmap/c1") && text.contains("configmap/c2"),
        "{text}"
    );

    let rv = serde_json::from_str::<serde_json::Value>(&ok(
        &s,
        &["get", "configmap", "c1", "-o", "json"],
    ))
    .unwrap()["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    s.compact();
    let raw = ok(
        &s,
        &[
            "get",
            "--raw",
            &format!(
                "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=2"
            ),
        ],
    );
    assert!(
        raw.contains("\"ERROR\"") && raw.contains("\"code\":410") && raw.contains("Expired"),
        "{raw}"
    );
}

#[test]
fn without_the_token_kubectl_is_unauthorized() {
    let s = TestApiServer::start();
    let (done, _, err) = kubectl(&s, &["--token", "wrong", "get", "secrets"]);
    assert!(
        !done && err.contains("the server has asked for the client to provide credentials"),
        "{err}"
    );
}

fn configmap(name: &str) -> serde_json::Value {
    serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}})
}
