//! The operator and a cluster: a running `trustscale operator` reaches the test API server
//! through an ordinary kubeconfig (kube-rs) and keeps the caBundle of the APIService and of
//! its webhooks current; kubectl, a client we did not write, reads what it wrote.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use support::{Child, TestCa, wait_for};
use trustscale_test_apiserver::TestApiServer;

const APISERVICE: &str = "v1beta1.external.metrics.k8s.io";
const WEBHOOKS: &str = "trustscale-admission";

fn cluster() -> TestApiServer {
    let s = TestApiServer::start();
    s.create(
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "keda"}}),
    );
    s
}

fn apiservice(
    service_ns: &str,
    service: &str,
    annotations: serde_json::Value,
) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
        "metadata": {"name": APISERVICE, "annotations": annotations},
        "spec": {
            "group": "external.metrics.k8s.io", "version": "v1beta1",
            "service": {"namespace": service_ns, "name": service, "port": 443},
            "insecureSkipTLSVerify": true,
            "groupPriorityMinimum": 100, "versionPriority": 100,
        }
    })
}

fn webhooks(annotations: serde_json::Value) -> serde_json::Value {
    let hook = |name: &str, ns: &str, svc: &str, path: &str| {
        serde_json::json!({
            "name": name, "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"namespace": ns, "name": svc, "path": path, "port": 9443}},
            "rules": [{"apiGroups": ["keda.sh"], "apiVersions": ["v1alpha1"],
                       "operations": ["CREATE", "UPDATE"], "resources": ["scaledobjects"]}],
        })
    };
    serde_json::json!({
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOKS, "annotations": annotations},
        "webhooks": [
            hook("vscaledobject.trustscale.io", "keda", "trustscale", "/validate-keda-sh-v1alpha1-scaledobject"),
            hook("vsomething.other.io", "other", "other-webhooks", "/validate"),
        ],
    })
}

struct Operator {
    _child: Child,
    stderr: PathBuf,
}

impl Operator {
    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn start(s: &TestApiServer, certs: &Path, extra: &[&str]) -> Operator {
    let manifests = s.dir().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    let stderr = s
        .dir()
        .join(format!("operator-{}.log", support::unique("o")));
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--manifests")
            .arg(&manifests)
            .arg("--cert-dir")
            .arg(certs)
            .args(["--ca-dir", "/nonexistent"])
            .args(if extra.contains(&"--listen") {
                &[][..]
            } else {
                &["--listen", "127.0.0.1:0"][..]
            })
            .args([
                "--metrics-bind-address",
                "",
                "--health-probe-bind-address",
                "",
            ])
            .args(["--webhook-bind-address", ""])
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args(extra)
            .env("POD_NAMESPACE", "keda")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    Operator {
        _child: child,
        stderr,
    }
}

/// kubectl's view of a field (jsonpath), reading what the operator wrote.
fn kubectl_get(s: &TestApiServer, kind: &str, name: &str, jsonpath: &str) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(["get", kind, name, "-o", &format!("jsonpath={jsonpath}")])
        .env("KUBECACHEDIR", s.dir().join("kubectl-cache"))
        .output()
        .expect("kubectl is installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn bundle_of(certs: &Path) -> String {
    base64::engine::general_purpose::STANDARD.encode(std::fs::read(certs.join("ca.crt")).unwrap())
}

#[test]
fn rotation_publishes_the_ca_bundle_into_the_apiservice_and_our_webhooks_only() {
    let s = cluster();
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    s.create(webhooks(serde_json::json!({})));
    let certs = tempfile::tempdir().unwrap();
    let op = start(&s, certs.path(), &[]);
    wait_for(
        "the APIService gets the caBundle",
        Duration::from_secs(30),
        || {
            certs.path().join("ca.crt").exists()
                && kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}")
                    == bundle_of(certs.path())
        },
    );
    assert_eq!(
        kubectl_get(
            &s,
            "apiservice",
            APISERVICE,
            "{.spec.insecureSkipTLSVerify}"
        ),
        "",
        "insecureSkipTLSVerify goes with the caBundle"
    );
    wait_for(
        "our webhook gets the caBundle",
        Duration::from_secs(10),
        || {
            kubectl_get(
                &s,
                "validatingwebhookconfiguration",
                WEBHOOKS,
                "{.webhooks[0].clientConfig.caBundle}",
            ) == bundle_of(certs.path())
        },
    );
    assert_eq!(
        kubectl_get(
            &s,
            "validatingwebhookconfiguration",
            WEBHOOKS,
            "{.webhooks[1].clientConfig.caBundle}"
        ),
        "",
        "the other service's webhook is left alone"
    );
    let log = op.stderr();
    assert!(log.contains("other/other-webhooks"), "{log}");
}

#[test]
fn bring_your_own_certificates_are_published_and_a_ca_change_is_published_again_through_a_conflict()
{
    let s = cluster();
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    s.create(webhooks(serde_json::json!({})));
    let certs = tempfile::tempdir().unwrap();
    support::write_cert_set(certs.path(), &TestCa::new("users-ca-1"));
    let _op = start(&s, certs.path(), &["--enable-cert-rotation=false"]);
    let first = bundle_of(certs.path());
    wait_for(
        "the user's CA is published",
        Duration::from_secs(30),
        || {
            kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}") == first
                && kubectl_get(
                    &s,
                    "validatingwebhookconfiguration",
                    WEBHOOKS,
                    "{.webhooks[0].clientConfig.caBundle}",
                ) == first
        },
    );

    // Another writer's change lands right before the operator's next write: that write is
    // a genuine 409, and it must read again and retry.
    s.interfere_before_write("apiregistration.k8s.io", "apiservices", "", APISERVICE, 1);
    let staged = tempfile::tempdir().unwrap();
    support::write_cert_set(staged.path(), &TestCa::new("users-ca-2"));
    for f in ["ca.crt", "tls.key", "tls.crt"] {
        std::fs::copy(staged.path().join(f), certs.path().join(f)).unwrap();
    }
    let second = bundle_of(certs.path());
    assert_ne!(first, second);
    wait_for("the new CA is published", Duration::from_secs(30), || {
        kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}") == second
            && kubectl_get(
                &s,
                "validatingwebhookconfiguration",
                WEBHOOKS,
                "{.webhooks[0].clientConfig.caBundle}",
            ) == second
    });
    let obj = s
        .get("apiregistration.k8s.io", "apiservices", "", APISERVICE)
        .unwrap();
    assert!(
        obj["metadata"]["annotations"]["test-apiserver/concurrent-writer"].is_string(),
        "the other writer's change survived: {obj}"
    );
    let puts = s
        .requests()
        .iter()
        .filter(|(m, p)| m == "PUT" && p.contains("/apiservices/"))
        .count();
    assert!(
        puts >= 3,
        "a first write, a conflicting one and its retry: {puts}"
    );
}

#[test]
fn opted_out_cert_manager_and_foreign_objects_are_left_alone_and_reported() {
    let s = cluster();
    // An APIService of another installation, and a webhook configuration that opts out.
    s.create(apiservice(
        "keda",
        "keda-operator-metrics-apiserver",
        serde_json::json!({}),
    ));
    s.create(webhooks(
        serde_json::json!({"trustscale.io/skip-ca-bundle": "true"}),
    ));
    let certs = tempfile::tempdir().unwrap();
    let op = start(&s, certs.path(), &[]);
    wait_for("both are reported", Duration::from_secs(30), || {
        let log = op.stderr();
        log.contains("keda/keda-operator-metrics-apiserver")
            && log.contains("trustscale.io/skip-ca-bundle")
    });
    assert_eq!(
        kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}"),
        ""
    );
    assert_eq!(
        kubectl_get(
            &s,
            "apiservice",
            APISERVICE,
            "{.spec.insecureSkipTLSVerify}"
        ),
        "true"
    );
    assert_eq!(
        kubectl_get(
            &s,
            "validatingwebhookconfiguration",
            WEBHOOKS,
            "{.webhooks[0].clientConfig.caBundle}"
        ),
        ""
    );
    drop(op);

    // cert-manager's injection annotation: cert-manager fills it, not us.
    let s = cluster();
    s.create(apiservice(
        "keda",
        "trustscale",
        serde_json::json!({"cert-manager.io/inject-ca-from": "keda/trustscale-serving"}),
    ));
    s.create(webhooks(serde_json::json!({})));
    let certs = tempfile::tempdir().unwrap();
    let op = start(&s, certs.path(), &[]);
    wait_for("the webhook is patched", Duration::from_secs(30), || {
        certs.path().join("ca.crt").exists()
            && kubectl_get(
                &s,
                "validatingwebhookconfiguration",
                WEBHOOKS,
                "{.webhooks[0].clientConfig.caBundle}",
            ) == bundle_of(certs.path())
    });
    assert_eq!(
        kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}"),
        ""
    );
    assert!(
        op.stderr().contains("cert-manager injects"),
        "{}",
        op.stderr()
    );
}

#[test]
fn objects_created_after_the_start_get_the_bundle_too() {
    let s = cluster();
    let certs = tempfile::tempdir().unwrap();
    let op = start(&s, certs.path(), &[]);
    wait_for(
        "the missing objects are reported",
        Duration::from_secs(30),
        || {
            op.stderr()
                .contains("not found; its caBundle is published once it exists")
        },
    );
    // Installed later (kubectl apply of the manifests after the operator's Deployment).
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    wait_for(
        "the late APIService gets the caBundle",
        Duration::from_secs(45),
        || kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}") == bundle_of(certs.path()),
    );
}

#[test]
fn an_unusable_kubeconfig_stops_the_start_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    support::mkfifo(&fifo);
    let zero = dir.path().join("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, "clusters: [this is: not: a kubeconfig").unwrap();
    let no_context = dir.path().join("empty");
    std::fs::write(&no_context, "apiVersion: v1\nkind: Config\n").unwrap();
    // A token next to a syntax error: the parser's message must not quote it.
    let leaky = dir.path().join("leaky");
    std::fs::write(
        &leaky,
        "apiVersion: v1\nkind: Config\nusers:\n- name: u\n  user:\n    token: KUBETOKENSECRET\n    oops: [unclosed\n",
    )
    .unwrap();
    let huge = dir.path().join("huge");
    std::fs::write(&huge, format!("a: \"{}\"\n", "x".repeat(5 << 20))).unwrap();
    let deep = dir.path().join("deep");
    std::fs::write(
        &deep,
        format!("a: {}{}\n", "[".repeat(100_000), "]".repeat(100_000)),
    )
    .unwrap();
    let folder = dir.path().join("folder-link");
    std::os::unix::fs::symlink("/usr", &folder).unwrap();
    for file in [
        &fifo,
        &zero,
        &garbage,
        &no_context,
        &leaky,
        &huge,
        &deep,
        &folder,
        &dir.path().join("missing"),
    ] {
        let stderr = support::operator_refuses_to_start(
            dir.path(),
            &["--kubeconfig".as_ref(), file.as_os_str()],
        );
        assert!(
            stderr.contains(&file.display().to_string()) && stderr.contains("kubeconfig"),
            "{}: {stderr}",
            file.display()
        );
        assert!(!stderr.contains("KUBETOKENSECRET"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

fn secret_file(s: &TestApiServer, key: &str) -> Option<Vec<u8>> {
    let obj = s.get("", "secrets", "keda", "kedaorg-certs")?;
    let b64 = obj["data"][key].as_str()?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn served_ca(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("ca.crt")).unwrap_or_default()
}

fn with_api(s: &TestApiServer, certs: &Path) -> (Operator, u16) {
    let api = support::free_port();
    let op = start(s, certs, &["--listen", &format!("127.0.0.1:{api}")]);
    (op, api)
}

#[test]
fn rotation_keeps_the_certificates_in_a_secret_and_a_second_replica_serves_the_same() {
    let s = cluster();
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_a, a_api) = with_api(&s, a_dir.path());
    wait_for(
        "the first replica writes the Secret",
        Duration::from_secs(30),
        || {
            ["ca.crt", "ca.key", "tls.crt", "tls.key"]
                .iter()
                .all(|k| secret_file(&s, k).is_some())
                && secret_file(&s, "ca.crt").unwrap() == served_ca(a_dir.path())
        },
    );
    let ca = secret_file(&s, "ca.crt").unwrap();
    // kubectl sees the same.
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args([
            "get",
            "secret",
            "kedaorg-certs",
            "-n",
            "keda",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ])
        .env("KUBECACHEDIR", s.dir().join("kubectl-cache"))
        .output()
        .unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(String::from_utf8_lossy(&out.stdout).trim())
            .unwrap(),
        ca
    );

    let (_b, b_api) = with_api(&s, b_dir.path());
    wait_for(
        "the second replica adopts the Secret",
        Duration::from_secs(30),
        || served_ca(b_dir.path()) == ca,
    );
    // Both serve certificates of the one CA and accept each other's client certificate.
    wait_for("both replicas answer", Duration::from_secs(15), || {
        support::curl_api(b_api, a_dir.path(), "/healthz") == "ok"
            && support::curl_api(a_api, b_dir.path(), "/healthz") == "ok"
    });
    assert_eq!(secret_file(&s, "ca.crt").unwrap(), ca, "no second CA");
    use std::os::unix::fs::PermissionsExt as _;
    for key in ["tls.key", "ca.key"] {
        let mode = std::fs::metadata(b_dir.path().join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
}

#[test]
fn a_replica_that_loses_the_race_adopts_the_winners_certificates() {
    let s = cluster();
    // The Secret exists, empty, as an installer creates it.
    s.create(serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "kedaorg-certs", "namespace": "keda"}, "type": "Opaque"}));
    // Another replica's complete set (CA key included, as a replica writes it) lands right
    // before this one's first write.
    let winner = TestCa::new("winning-replica-ca");
    let leaf = winner.server();
    let b64 = |b: &str| base64::engine::general_purpose::STANDARD.encode(b);
    s.interfere_before_write_with(
        "",
        "secrets",
        "keda",
        "kedaorg-certs",
        serde_json::json!({"data": {
            "ca.crt": b64(&winner.cert_pem), "ca.key": b64(winner.key_pem()),
            "tls.crt": b64(&leaf.cert_pem), "tls.key": b64(&leaf.key_pem),
        }}),
    );
    let certs = tempfile::tempdir().unwrap();
    let op = start(&s, certs.path(), &[]);
    wait_for("the winner's CA is served", Duration::from_secs(30), || {
        served_ca(certs.path()) == winner.cert_pem.as_bytes()
    });
    assert_eq!(
        secret_file(&s, "ca.crt").unwrap(),
        winner.cert_pem.as_bytes()
    );
    assert!(
        op.stderr().contains("adopting what it wrote"),
        "{}",
        op.stderr()
    );
    // And the caBundle it publishes is the winner's.
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    wait_for(
        "the winner's caBundle is published",
        Duration::from_secs(30),
        || {
            kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}")
                == base64::engine::general_purpose::STANDARD.encode(&winner.cert_pem)
        },
    );
}

#[test]
fn a_damaged_leaf_in_the_secret_is_reissued_by_the_ca_it_holds() {
    let s = cluster();
    let first = tempfile::tempdir().unwrap();
    let op = start(&s, first.path(), &[]);
    wait_for("the Secret is written", Duration::from_secs(30), || {
        secret_file(&s, "tls.key").is_some()
    });
    drop(op);
    let ca = secret_file(&s, "ca.crt").unwrap();
    let old_leaf = secret_file(&s, "tls.crt").unwrap();
    s.modify("", "secrets", "keda", "kedaorg-certs", |secret| {
        secret["data"]["tls.crt"] = base64::engine::general_purpose::STANDARD
            .encode("-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n")
            .into();
    });
    let second = tempfile::tempdir().unwrap();
    let _op = start(&s, second.path(), &[]);
    wait_for(
        "a new leaf of the same CA is written back",
        Duration::from_secs(30),
        || {
            secret_file(&s, "tls.crt").is_some_and(|l| {
                l != old_leaf && l.starts_with(b"-----BEGIN CERTIFICATE-----\nMII")
            })
        },
    );
    assert_eq!(secret_file(&s, "ca.crt").unwrap(), ca, "the CA stays");
    assert_eq!(served_ca(second.path()), ca);
}

fn auth_configmap(ca_pem: &str, allowed: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "extension-apiserver-authentication", "namespace": "kube-system"},
        "data": {
            "client-ca-file": "not used by trustscale",
            "requestheader-client-ca-file": ca_pem,
            "requestheader-allowed-names": allowed,
            "requestheader-username-headers": "[\"X-Remote-User\"]",
            "requestheader-group-headers": "[\"X-Remote-Group\"]",
            "requestheader-extra-headers-prefix": "[\"X-Remote-Extra-\"]",
        }
    })
}

/// Another writer (the kube-apiserver) changes the authentication ConfigMap.
fn change_auth_configmap(s: &TestApiServer, change: impl FnOnce(&mut serde_json::Value)) {
    s.modify(
        "",
        "configmaps",
        "kube-system",
        "extension-apiserver-authentication",
        change,
    );
}

/// curl as the aggregation layer reading discovery: the HTTP status (0 when the
/// handshake was refused).
fn as_aggregator(api: u16, certs: &Path, leaf: &support::Leaf, dir: &Path) -> u16 {
    as_user(
        api,
        certs,
        leaf,
        dir,
        "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
        "/apis/external.metrics.k8s.io/v1beta1",
    )
    .0
}

#[test]
fn the_clusters_request_header_settings_are_read_and_followed() {
    let s = cluster();
    let front = TestCa::new("front-proxy-ca");
    s.create(auth_configmap(&front.cert_pem, "[\"front-proxy-client\"]"));
    let certs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (op, api) = with_api(&s, certs.path());
    let proxy = front.client("front-proxy-client");
    wait_for(
        "the front proxy is authenticated",
        Duration::from_secs(30),
        || as_aggregator(api, certs.path(), &proxy, work.path()) == 200,
    );

    // The allowed names change: the same certificate is no longer believed.
    change_auth_configmap(&s, |cm| {
        cm["data"]["requestheader-allowed-names"] = "[\"someone-else\"]".into();
    });
    wait_for(
        "the new allowed names apply",
        Duration::from_secs(15),
        || as_aggregator(api, certs.path(), &proxy, work.path()) == 401,
    );

    // A ConfigMap that cannot be used is refused; the last good settings stay.
    change_auth_configmap(&s, |cm| {
        cm["data"]["requestheader-username-headers"] = "X-Remote-User".into();
    });
    wait_for("the refusal is reported", Duration::from_secs(15), || {
        op.stderr()
            .contains("requestheader-username-headers: not a JSON list of strings")
    });
    assert_eq!(as_aggregator(api, certs.path(), &proxy, work.path()), 401);

    // A new front-proxy CA: the old one's certificates are refused in the handshake.
    let next = TestCa::new("front-proxy-ca-2");
    change_auth_configmap(&s, |cm| {
        *cm = {
            let mut fresh = auth_configmap(&next.cert_pem, "[]");
            fresh["metadata"] = cm["metadata"].clone();
            fresh
        };
    });
    let next_proxy = next.client("any-name");
    wait_for("the new CA applies", Duration::from_secs(15), || {
        as_aggregator(api, certs.path(), &next_proxy, work.path()) == 200
    });
    assert_eq!(as_aggregator(api, certs.path(), &proxy, work.path()), 0);
}

#[test]
fn without_the_configmap_or_with_the_lookup_skipped_no_front_proxy_is_accepted() {
    let s = cluster();
    let front = TestCa::new("front-proxy-ca");
    let certs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (_op, api) = with_api(&s, certs.path());
    wait_for("the API answers", Duration::from_secs(30), || {
        support::curl_api(api, certs.path(), "/healthz") == "ok"
    });
    assert_eq!(
        as_aggregator(
            api,
            certs.path(),
            &front.client("front-proxy-client"),
            work.path()
        ),
        0
    );

    let s = cluster();
    s.create(auth_configmap(&front.cert_pem, "[]"));
    let certs = tempfile::tempdir().unwrap();
    let api = support::free_port();
    let op = start(
        &s,
        certs.path(),
        &[
            "--listen",
            &format!("127.0.0.1:{api}"),
            "--authentication-skip-lookup",
        ],
    );
    // The cluster tasks ran (the caBundle follower says the objects are missing), and
    // none of them read the ConfigMap.
    wait_for("the cluster tasks run", Duration::from_secs(30), || {
        support::curl_api(api, certs.path(), "/healthz") == "ok"
            && op
                .stderr()
                .contains("its caBundle is published once it exists")
    });
    assert!(
        !op.stderr().contains("follows the cluster's settings"),
        "{}",
        op.stderr()
    );
    assert_eq!(
        as_aggregator(
            api,
            certs.path(),
            &front.client("front-proxy-client"),
            work.path()
        ),
        0
    );
}

/// curl as the aggregation layer for `user`, on `path`: (HTTP status, body).
fn as_user(
    api: u16,
    certs: &Path,
    leaf: &support::Leaf,
    dir: &Path,
    user: &str,
    path: &str,
) -> (u16, String) {
    let (cert, key) = (dir.join("front.crt"), dir.join("front.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let out = Command::new("curl")
        .args(["-s", "--max-time", "5", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(["-H", &format!("X-Remote-User: {user}")])
        .args(["-H", "X-Remote-Group: system:authenticated"])
        .arg(format!("https://localhost:{api}{path}"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn in_a_cluster_each_user_is_authorized_with_a_subject_access_review() {
    let s = cluster();
    let front = TestCa::new("front-proxy-ca");
    s.create(auth_configmap(&front.cert_pem, "[]"));
    let hpa = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
    s.grant_external_metrics(hpa, "shop");
    // A ScaledObject in shop whose source is a plain-HTTP file served by python.
    let source = support::python_http(&[("stats.json", r#"{"queue":{"depth":7}}"#)]);
    let port = source.port;
    let manifests = s.dir().join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::write(
        manifests.join("so.yaml"),
        format!("kind: ScaledObject\nmetadata: {{name: web, namespace: shop}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"http://127.0.0.1:{port}/stats.json\", valueLocation: queue.depth, targetValue: \"5\"}}\n"),
    )
    .unwrap();
    let certs = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let (_op, api) = with_api(&s, certs.path());
    let proxy = front.client("front-proxy-client");
    let metric = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-metric-api-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dweb";
    wait_for(
        "the HPA's user reads the metric",
        Duration::from_secs(30),
        || {
            let (code, body) = as_user(api, certs.path(), &proxy, work.path(), hpa, metric);
            code == 200 && body.contains("\"value\":\"7\"")
        },
    );
    let reviews = || {
        s.requests()
            .iter()
            .filter(|(m, p)| m == "POST" && p.contains("/subjectaccessreviews"))
            .count()
    };
    let before = reviews();
    for _ in 0..5 {
        assert_eq!(
            as_user(api, certs.path(), &proxy, work.path(), hpa, metric).0,
            200
        );
    }
    assert_eq!(
        reviews(),
        before,
        "answers are cached, not asked again per request"
    );

    // Another user; the same user in a namespace it was not granted.
    let (code, body) = as_user(api, certs.path(), &proxy, work.path(), "mallory", metric);
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("\"reason\":\"Forbidden\"") && body.contains("mallory"),
        "{body}"
    );
    let elsewhere = metric.replace("/namespaces/shop/", "/namespaces/other/");
    assert_eq!(
        as_user(api, certs.path(), &proxy, work.path(), hpa, &elsewhere).0,
        403
    );
    // Discovery needs no review.
    assert_eq!(
        as_user(
            api,
            certs.path(),
            &proxy,
            work.path(),
            "mallory",
            "/apis/external.metrics.k8s.io/v1beta1"
        )
        .0,
        200
    );
    // Internal clients are not reviewed.
    assert!(support::curl_api(api, certs.path(), metric).contains("\"value\":\"7\""));
}

#[test]
fn a_secret_of_garbage_is_replaced_by_a_usable_set_and_the_operator_serves_it() {
    let s = cluster();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    s.create(serde_json::json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "kedaorg-certs", "namespace": "keda"},
        "data": {"ca.crt": b64(b"not a certificate"), "ca.key": b64(&[0xff, 0xfe, 0x00]),
                 "tls.crt": b64(&vec![b'A'; 200_000]), "tls.key": b64(b""),
                 "unrelated": b64(b"kept as it is")}}));
    let certs = tempfile::tempdir().unwrap();
    let (op, api) = with_api(&s, certs.path());
    wait_for("a usable set is served", Duration::from_secs(30), || {
        support::curl_api(api, certs.path(), "/healthz") == "ok"
    });
    assert_eq!(secret_file(&s, "ca.crt").unwrap(), served_ca(certs.path()));
    assert_eq!(secret_file(&s, "unrelated").unwrap(), b"kept as it is");
    let log = op.stderr();
    assert!(log.contains("replaced"), "{log}");
    assert!(
        !log.contains("AAAAAAAA"),
        "Secret contents never reach the log"
    );
}

#[test]
fn another_writer_that_keeps_putting_its_bundle_back_is_answered_at_a_bounded_rate() {
    let s = cluster();
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    let certs = tempfile::tempdir().unwrap();
    let op = start(&s, certs.path(), &[]);
    wait_for("the caBundle is published", Duration::from_secs(30), || {
        certs.path().join("ca.crt").exists()
            && kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}")
                == bundle_of(certs.path())
    });
    let puts = || {
        s.requests()
            .iter()
            .filter(|(m, p)| m == "PUT" && p.contains("/apiservices/"))
            .count()
    };
    let before = puts();
    // Another writer puts its own bundle back every 200 ms for 5 s.
    for _ in 0..25 {
        s.modify(
            "apiregistration.k8s.io",
            "apiservices",
            "",
            APISERVICE,
            |a| {
                a["spec"]["caBundle"] = "Zm9yZWlnbg==".into();
            },
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let answered = puts() - before;
    assert!(
        (1..=3).contains(&answered),
        "answered {answered} times in 5 s: at least once, at most every 10 s"
    );
    wait_for("the fight is reported", Duration::from_secs(30), || {
        op.stderr()
            .contains("another writer keeps changing the caBundle back")
    });
    // Left alone, it is put right.
    wait_for("the bundle is ours again", Duration::from_secs(30), || {
        kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}") == bundle_of(certs.path())
    });
}

#[test]
fn relative_paths_in_a_kubeconfig_resolve_against_its_folder() {
    let s = cluster();
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    // The same kubeconfig, its CA as a file named relative to the kubeconfig's folder.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("pki")).unwrap();
    std::fs::write(dir.path().join("pki/ca.pem"), s.ca_pem()).unwrap();
    let text = std::fs::read_to_string(s.kubeconfig()).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("certificate-authority-data:") {
                "    certificate-authority: pki/ca.pem".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, text).unwrap();
    let certs = tempfile::tempdir().unwrap();
    let manifests = tempfile::tempdir().unwrap();
    let _op = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--manifests")
            .arg(manifests.path())
            .arg("--cert-dir")
            .arg(certs.path())
            .args(["--ca-dir", "/nonexistent", "--listen", "127.0.0.1:0"])
            .args([
                "--metrics-bind-address",
                "",
                "--health-probe-bind-address",
                "",
            ])
            .args(["--webhook-bind-address", ""])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("POD_NAMESPACE", "keda")
            .current_dir("/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "the APIService gets the caBundle",
        Duration::from_secs(30),
        || {
            certs.path().join("ca.crt").exists()
                && kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}")
                    == bundle_of(certs.path())
        },
    );
}

#[test]
fn a_kubeconfig_that_trusts_another_ca_reaches_nothing_and_says_so() {
    let s = cluster();
    s.create(apiservice("keda", "trustscale", serde_json::json!({})));
    let stranger = TestCa::new("not-the-api-servers-ca");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&stranger.cert_pem);
    let text: String = std::fs::read_to_string(s.kubeconfig())
        .unwrap()
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("certificate-authority-data:") {
                format!("    certificate-authority-data: {b64}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("config");
    std::fs::write(&kubeconfig, text).unwrap();
    let certs = tempfile::tempdir().unwrap();
    support::write_cert_set(certs.path(), &TestCa::new("users-ca"));
    let manifests = tempfile::tempdir().unwrap();
    let log = dir.path().join("operator.log");
    let _op = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--manifests")
            .arg(manifests.path())
            .arg("--cert-dir")
            .arg(certs.path())
            .args(["--enable-cert-rotation=false", "--ca-dir", "/nonexistent"])
            .args(["--listen", "127.0.0.1:0", "--metrics-bind-address", ""])
            .args([
                "--health-probe-bind-address",
                "",
                "--webhook-bind-address",
                "",
            ])
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .env("POD_NAMESPACE", "keda")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_for("the failure is reported", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.contains("publishing the caBundle failed")
                && l.to_ascii_lowercase().contains("certificate")
        })
    });
    assert_eq!(
        kubectl_get(&s, "apiservice", APISERVICE, "{.spec.caBundle}"),
        ""
    );
}
