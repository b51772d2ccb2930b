//! Cluster mode end to end: `trustscale operator --kube` against the test API server,
//! reached by kube-rs through a kubeconfig, with kubectl (a client we did not write)
//! changing and reading the objects. The source is a small HTTP metrics server whose
//! value the test sets and which records the credentials it was sent.

mod support;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Child, wait_for};
use trustscale_test_apiserver::TestApiServer;

/// A metrics endpoint: `{"v": value}`; remembers every `Authorization` header.
struct Source {
    port: u16,
    value: Arc<Mutex<f64>>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Source {
    fn start(value: f64) -> Source {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let value = Arc::new(Mutex::new(value));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (v, s) = (Arc::clone(&value), Arc::clone(&seen));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut auth = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(a) = line
                        .strip_prefix("authorization: ")
                        .or_else(|| line.strip_prefix("Authorization: "))
                    {
                        auth = a.trim().to_string();
                    }
                }
                s.lock().unwrap().push(auth);
                let body = format!("{{\"v\": {}}}", *v.lock().unwrap());
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Source { port, value, seen }
    }

    fn set(&self, v: f64) {
        *self.value.lock().unwrap() = v;
    }

    fn saw(&self, auth: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|a| a == auth)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/m", self.port)
    }
}

fn cluster() -> TestApiServer {
    let s = TestApiServer::start();
    for ns in ["keda", "shop"] {
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    s
}

fn deployment(name: &str, replicas: i64, env: Value) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "sidecar", "image": "busybox"},
                    {"name": "app", "image": "busybox", "env": env},
                ]},
            },
        },
    })
}

fn scaled_object(name: &str, target: &str, source: &Source, extra: Value) -> Value {
    let mut so = json!({
        "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {
            "scaleTargetRef": {"name": target},
            "pollingInterval": 1,
            "cooldownPeriod": 2,
            "maxReplicaCount": 7,
            "triggers": [{"type": "metrics-api", "metadata": {
                "url": source.url(), "valueLocation": "v", "targetValue": "2",
            }}],
        },
    });
    merge(&mut so, extra);
    so
}

fn merge(into: &mut Value, patch: Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (slot, v) => *slot = v,
    }
}

struct Operator {
    child: Child,
    stderr: PathBuf,
    certs: tempfile::TempDir,
    port: u16,
}

impl Operator {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn operator(s: &TestApiServer, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Operator {
    let certs = tempfile::tempdir().unwrap();
    let stderr = s
        .dir()
        .join(format!("{name}-{}.log", support::unique("op")));
    let port = support::free_port();
    let child = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .args(["operator", "--kube", "--cert-dir"])
            .arg(certs.path())
            .args(["--ca-dir", "/nonexistent"])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args([
                "--metrics-bind-address",
                "",
                "--health-probe-bind-address",
                "",
            ])
            .args(["--webhook-bind-address", ""])
            .args(["--authentication-skip-lookup", "--resync-period", "1s"])
            .args(["--service-dns-name", "trustscale.keda.svc"])
            .arg("--kubeconfig")
            .arg(s.kubeconfig())
            .args(extra)
            .env("POD_NAMESPACE", "keda")
            .env("POD_NAME", name)
            .env("POD_IP", "127.0.0.1")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap(),
    );
    Operator {
        child,
        stderr,
        certs,
        port,
    }
}

fn kubectl(s: &TestApiServer, args: &[&str]) -> String {
    let out = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .args(args)
        .env("KUBECACHEDIR", s.dir().join("kubectl-cache"))
        .output()
        .expect("kubectl is installed");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn replicas(s: &TestApiServer, name: &str) -> i64 {
    s.get("apps", "deployments", "shop", name)
        .and_then(|d| d["spec"]["replicas"].as_i64())
        .unwrap_or(-1)
}

fn hpa(s: &TestApiServer, name: &str) -> Option<Value> {
    s.get("autoscaling", "horizontalpodautoscalers", "shop", name)
}

fn so(s: &TestApiServer, name: &str) -> Option<Value> {
    s.get("keda.sh", "scaledobjects", "shop", name)
}

fn condition(so: &Value, type_: &str) -> (String, String) {
    so["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .unwrap_or_default()
}

fn scale_writes(s: &TestApiServer, target: &str) -> usize {
    s.requests()
        .iter()
        .filter(|(m, p)| m == "PATCH" && p.contains(&format!("/{target}/scale")))
        .count()
}

const BOUND: Duration = Duration::from_secs(30);

#[test]
fn a_scaled_object_gets_its_hpa_scales_from_and_to_zero_pauses_and_restores_on_deletion() {
    let s = cluster();
    let source = Source::start(0.0);
    s.create(deployment("worker", 3, json!([])));
    let op = operator(&s, "op", &[], &[]);
    s.create(scaled_object(
        "web",
        "worker",
        &source,
        json!({"spec": {"advanced": {
            "restoreToOriginalReplicaCount": true,
            "horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 5}}},
        }}}),
    ));

    // The HPA: owned, KEDA's name, our metric with KEDA's selector, min at least 1.
    wait_for("the HPA is created", BOUND, || {
        hpa(&s, "keda-hpa-web").is_some()
    });
    // Created once, with its metrics (an HPA without metrics would scale on CPU).
    let h = hpa(&s, "keda-hpa-web").unwrap();
    let owner = &h["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ScaledObject");
    assert_eq!(owner["name"], "web");
    assert_eq!(owner["uid"], so(&s, "web").unwrap()["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(h["spec"]["minReplicas"], 1);
    assert_eq!(h["spec"]["maxReplicas"], 7);
    assert_eq!(
        h["spec"]["scaleTargetRef"],
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"})
    );
    let metric = &h["spec"]["metrics"][0];
    assert_eq!(metric["type"], "External");
    let metric_name = metric["external"]["metric"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(metric_name.starts_with("s0-"), "{metric_name}");
    assert_eq!(
        metric["external"]["metric"]["selector"]["matchLabels"]["scaledobject.keda.sh/name"],
        "web"
    );
    assert_eq!(
        metric["external"]["target"],
        json!({"type": "AverageValue", "averageValue": "2"})
    );
    assert_eq!(
        h["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"],
        5
    );
    // kubectl reads it as any HPA.
    assert_eq!(
        kubectl(
            &s,
            &[
                "get",
                "horizontalpodautoscalers",
                "keda-hpa-web",
                "-n",
                "shop",
                "-o",
                "jsonpath={.spec.metrics[0].external.metric.name}"
            ]
        ),
        metric_name
    );

    // Inactive past the cooldown: 3 → 0; the original count is kept in the status.
    wait_for("scaled to zero", BOUND, || replicas(&s, "worker") == 0);
    wait_for("status: ready, inactive, original 3", BOUND, || {
        let o = so(&s, "web").unwrap();
        condition(&o, "Ready").0 == "True"
            && condition(&o, "Active") == ("False".into(), "ScalerNotActive".into())
            && o["status"]["originalReplicaCount"] == 3
            && o["status"]["externalMetricNames"][0] == metric_name.as_str()
            && o["status"]["hpaName"] == "keda-hpa-web"
            && o["status"]["health"][metric_name.as_str()]["status"] == "Happy"
    });
    assert!(
        so(&s, "web").unwrap()["metadata"]["finalizers"]
            .as_array()
            .unwrap()
            .contains(&json!("finalizer.keda.sh"))
    );

    // Activity: 0 → max(min, 1) = 1; Active with lastActiveTime.
    source.set(5.0);
    wait_for("activated from zero", BOUND, || replicas(&s, "worker") == 1);
    wait_for("status: active", BOUND, || {
        let o = so(&s, "web").unwrap();
        condition(&o, "Active").0 == "True" && o["status"]["lastActiveTime"].is_string()
    });

    // Pause: the HPA goes, no scale write while paused, even with the source idle.
    kubectl(
        &s,
        &[
            "annotate",
            "scaledobjects",
            "web",
            "-n",
            "shop",
            "autoscaling.keda.sh/paused=true",
        ],
    );
    wait_for("the HPA is deleted while paused", BOUND, || {
        hpa(&s, "keda-hpa-web").is_none()
    });
    wait_for("status: paused", BOUND, || {
        condition(&so(&s, "web").unwrap(), "Paused").0 == "True"
    });
    let writes = scale_writes(&s, "worker");
    source.set(0.0);
    std::thread::sleep(Duration::from_secs(5)); // more than the cooldown and 4 polls
    assert_eq!(
        scale_writes(&s, "worker"),
        writes,
        "a scale write happened while paused"
    );
    assert_eq!(replicas(&s, "worker"), 1);

    // paused-replicas: scaled once to 4, then held.
    kubectl(
        &s,
        &[
            "annotate",
            "scaledobjects",
            "web",
            "-n",
            "shop",
            "autoscaling.keda.sh/paused-replicas=4",
        ],
    );
    wait_for("scaled to the paused replicas", BOUND, || {
        replicas(&s, "worker") == 4
    });
    wait_for("status: pausedReplicaCount", BOUND, || {
        so(&s, "web").unwrap()["status"]["pausedReplicaCount"] == 4
    });
    let writes = scale_writes(&s, "worker");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        scale_writes(&s, "worker"),
        writes,
        "paused replicas are written once"
    );

    // Unpaused: the HPA comes back and the idle source scales to zero again.
    kubectl(
        &s,
        &[
            "annotate",
            "scaledobjects",
            "web",
            "-n",
            "shop",
            "autoscaling.keda.sh/paused-",
            "autoscaling.keda.sh/paused-replicas-",
        ],
    );
    wait_for("the HPA is back", BOUND, || {
        hpa(&s, "keda-hpa-web").is_some()
    });
    wait_for("scaled to zero again", BOUND, || {
        replicas(&s, "worker") == 0
    });

    // Deletion: restored to the original 3, HPA gone, the finalizer let go.
    kubectl(
        &s,
        &[
            "delete",
            "scaledobjects",
            "web",
            "-n",
            "shop",
            "--wait=false",
        ],
    );
    wait_for("the ScaledObject is gone", BOUND, || {
        so(&s, "web").is_none()
    });
    assert_eq!(replicas(&s, "worker"), 3, "restoreToOriginalReplicaCount");
    assert!(hpa(&s, "keda-hpa-web").is_none());
    let hpa_creates = s
        .requests()
        .iter()
        .filter(|(m, p)| m == "POST" && p.contains("horizontalpodautoscalers"))
        .count();
    assert_eq!(hpa_creates, 2, "one create, and one after the pause");
    let events = kubectl(
        &s,
        &[
            "get",
            "events",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(events.contains("KEDAScaleTargetActivated"), "{events}");
    assert!(events.contains("KEDAScaleTargetDeactivated"), "{events}");
    drop(op);
}

#[test]
fn env_comes_from_the_scale_targets_container_and_a_rotated_secret_is_used_at_the_next_poll() {
    let s = cluster();
    let source = Source::start(0.0);
    // The operator's own environment holds a variable of the same name: never used.
    let op = operator(&s, "op", &[], &[("API_TOKEN", "the-operators-own")]);
    s.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "api-token", "namespace": "shop"},
        "data": {"token": "Zmlyc3Q="}})); // "first"
    s.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "pod-secret", "namespace": "shop"},
        "data": {"t": "ZnJvbS1wb2Qtc2VjcmV0"}})); // "from-pod-secret"
    s.create(json!({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": {"name": "from-secret", "namespace": "shop"},
        "spec": {"secretTargetRef": [{"parameter": "token", "name": "api-token", "key": "token"}]}}));
    s.create(
        json!({"apiVersion": "keda.sh/v1alpha1", "kind": "TriggerAuthentication",
        "metadata": {"name": "from-env", "namespace": "shop"},
        "spec": {"env": [{"parameter": "token", "name": "API_TOKEN", "containerName": "app"}]}}),
    );
    s.create(deployment("with-env", 1, json!([
        {"name": "API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "pod-secret", "key": "t"}}},
    ])));
    s.create(deployment("without-env", 1, json!([])));
    let bearer = json!({"authMode": "bearer"});
    let auth = |name: &str| {
        json!({"spec": {"triggers": [{"type": "metrics-api", "metadata": {
        "url": source.url(), "valueLocation": "v", "targetValue": "2", "authMode": bearer["authMode"],
    }, "authenticationRef": {"name": name}}]}})
    };
    s.create(scaled_object(
        "secret-so",
        "without-env",
        &source,
        auth("from-secret"),
    ));
    s.create(scaled_object(
        "env-so",
        "with-env",
        &source,
        auth("from-env"),
    ));
    wait_for("the Secret's token is sent", BOUND, || {
        source.saw("Bearer first")
    });
    wait_for("the container's token is sent", BOUND, || {
        source.saw("Bearer from-pod-secret")
    });

    // Rotate the Secret (as kubectl apply would): the next poll sends the new token.
    s.modify("", "secrets", "shop", "api-token", |o| {
        o["data"]["token"] = "c2Vjb25k".into(); // "second"
    });
    wait_for("the rotated token is sent", BOUND, || {
        source.saw("Bearer second")
    });

    // A target whose container lacks the variable: the trigger fails, naming it; the
    // operator's own variable is never sent.
    s.create(scaled_object("no-env", "without-env", &source, {
        let mut a = auth("from-env");
        a["spec"]["scaleTargetRef"] =
            json!({"name": "without-env", "envSourceContainerName": "app"});
        a
    }));
    wait_for("no-env is not ready, naming the variable", BOUND, || {
        so(&s, "no-env").is_some_and(|o| {
            let msg = o["status"]["conditions"][0]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            condition(&o, "Ready").0 == "False"
                && msg.contains("API_TOKEN")
                && msg.contains("container")
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !source.saw("Bearer the-operators-own"),
        "the operator's own environment reached a trigger"
    );
    assert!(!op.log().contains("the-operators-own"));
    assert!(
        !op.log().contains("second") && !op.log().contains("from-pod-secret"),
        "a secret reached the log"
    );
}

#[test]
fn targets_without_scale_custom_resources_with_scale_and_cpu_triggers() {
    let s = cluster();
    let source = Source::start(5.0);
    let _op = operator(&s, "op", &[], &[]);
    // A custom resource with /scale is scaled like a Deployment.
    s.create(
        json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
        "metadata": {"name": "ro", "namespace": "shop"}, "spec": {"replicas": 0}}),
    );
    s.create(scaled_object("rollout", "ro", &source, json!({"spec": {
        "scaleTargetRef": {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "ro"},
        "triggers": [
            {"type": "metrics-api", "metadata": {"url": source.url(), "valueLocation": "v", "targetValue": "2"}},
            {"type": "cpu", "metricType": "Utilization", "metadata": {"value": "60"}},
            {"type": "memory", "metadata": {"type": "AverageValue", "value": "512Mi", "containerName": "app"}},
        ],
    }})));
    wait_for("the Rollout is activated", BOUND, || {
        s.get("argoproj.io", "rollouts", "shop", "ro")
            .is_some_and(|r| r["spec"]["replicas"] == 1)
    });
    wait_for(
        "the HPA has the external and resource metrics",
        BOUND,
        || {
            hpa(&s, "keda-hpa-rollout").is_some_and(|h| {
                h["spec"]["metrics"]
                    .as_array()
                    .is_some_and(|m| m.len() == 3)
            })
        },
    );
    let h = hpa(&s, "keda-hpa-rollout").unwrap();
    assert_eq!(
        h["spec"]["metrics"][1],
        json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60}}})
    );
    assert_eq!(
        h["spec"]["metrics"][2],
        json!({"type": "ContainerResource", "containerResource": {"name": "memory", "container": "app", "target": {"type": "AverageValue", "averageValue": "512Mi"}}})
    );
    assert_eq!(h["spec"]["scaleTargetRef"]["kind"], "Rollout");
    assert_eq!(
        so(&s, "rollout").unwrap()["status"]["resourceMetricNames"],
        json!(["cpu", "memory"])
    );

    // A ConfigMap has no /scale: not Ready, saying so; no HPA.
    s.create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cm", "namespace": "shop"}}));
    s.create(scaled_object("no-scale", "cm", &source, json!({"spec": {"scaleTargetRef": {"apiVersion": "v1", "kind": "ConfigMap", "name": "cm"}}})));
    // A target that does not exist.
    s.create(scaled_object("missing", "nothing-here", &source, json!({})));
    wait_for("no-scale and missing are not ready", BOUND, || {
        let msg = |n: &str| {
            so(&s, n).and_then(|o| {
                (condition(&o, "Ready").0 == "False").then(|| {
                    o["status"]["conditions"][0]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string()
                })
            })
        };
        msg("no-scale").is_some_and(|m| m.contains("no /scale subresource"))
            && msg("missing").is_some_and(|m| m.contains("does not exist"))
    });
    assert!(hpa(&s, "keda-hpa-no-scale").is_none());
    assert!(hpa(&s, "keda-hpa-missing").is_none());
    let events = kubectl(
        &s,
        &[
            "get",
            "events",
            "-n",
            "shop",
            "-o",
            "jsonpath={.items[*].reason}",
        ],
    );
    assert!(events.contains("ScaledObjectCheckFailed"), "{events}");
    // The others keep working: the Rollout's HPA is still there.
    assert!(hpa(&s, "keda-hpa-rollout").is_some());
}

#[test]
fn an_hpa_it_does_not_own_is_left_alone_and_scaled_jobs_are_reported() {
    let s = cluster();
    let source = Source::start(0.0);
    s.create(deployment("taken", 2, json!([])));
    s.create(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "keda-hpa-clash", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "taken"}, "minReplicas": 1, "maxReplicas": 3}}));
    s.create(json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledJob",
        "metadata": {"name": "job", "namespace": "shop"}, "spec": {"jobTargetRef": {"template": {}}, "triggers": []}}));
    let op = operator(&s, "op", &[], &[]);
    s.create(scaled_object("clash", "taken", &source, json!({})));
    wait_for("not ready: the HPA is someone else's", BOUND, || {
        so(&s, "clash").is_some_and(|o| {
            condition(&o, "Ready").0 == "False"
                && o["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("not owned")
        })
    });
    let h = hpa(&s, "keda-hpa-clash").unwrap();
    assert_eq!(
        h["spec"]["maxReplicas"], 3,
        "a foreign HPA is never rewritten"
    );
    wait_for("the ScaledJob is reported", BOUND, || {
        op.log().contains("ScaledJobs are not supported")
    });
    let job = s.get("keda.sh", "scaledjobs", "shop", "job").unwrap();
    assert!(
        job["metadata"]["finalizers"].is_null() && job["status"].is_null(),
        "the ScaledJob is untouched"
    );
}

#[test]
fn with_keda_installed_nothing_is_written_unless_told() {
    let s = cluster();
    let source = Source::start(5.0);
    s.create(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "keda-operator", "namespace": "keda"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "keda-operator"}}, "template": {"spec": {"containers": [{"name": "keda", "image": "keda"}]}}}}));
    s.create(deployment("w", 0, json!([])));
    s.create(scaled_object("beside-keda", "w", &source, json!({})));
    let op = operator(&s, "op", &[], &[]);
    wait_for("KEDA is detected", BOUND, || {
        op.log().contains("KEDA is installed")
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(hpa(&s, "keda-hpa-beside-keda").is_none());
    assert_eq!(replicas(&s, "w"), 0);
    assert!(so(&s, "beside-keda").unwrap()["status"].is_null());
    drop(op);
    let _op = operator(&s, "op2", &["--take-over-from-keda"], &[]);
    wait_for("told to take over, it acts", BOUND, || {
        hpa(&s, "keda-hpa-beside-keda").is_some() && replicas(&s, "w") == 1
    });
}

fn curl_metric(port: u16, certs: &Path, metric: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join("tls.crt"))
        .arg("--key")
        .arg(certs.join("tls.key"))
        .arg(format!(
            "https://localhost:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3Dweb"
        ))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

fn holder(s: &TestApiServer) -> Option<String> {
    s.get(
        "coordination.k8s.io",
        "leases",
        "keda",
        "trustscale-operator",
    )
    .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
}

#[test]
fn two_replicas_elect_one_leader_the_follower_answers_through_it_and_takes_over() {
    let s = cluster();
    let source = Source::start(6.0);
    s.create(deployment("worker", 0, json!([])));
    s.create(scaled_object("web", "worker", &source, json!({})));
    let timings = [
        "--leader-elect",
        "--leader-election-lease-duration",
        "3s",
        "--leader-election-renew-deadline",
        "2s",
        "--leader-election-retry-period",
        "500ms",
    ];
    let a = operator(&s, "op-a", &timings, &[]);
    wait_for("op-a leads", BOUND, || {
        holder(&s).as_deref() == Some("op-a")
    });
    let b = operator(&s, "op-b", &timings, &[]);
    wait_for("the target is activated by the leader", BOUND, || {
        replicas(&s, "worker") == 1
    });
    wait_for("the HPA is created", BOUND, || {
        hpa(&s, "keda-hpa-web").is_some()
    });
    wait_for("both hold the internal certificates", BOUND, || {
        b.certs.path().join("tls.crt").exists() && a.certs.path().join("tls.crt").exists()
    });
    let metric =
        hpa(&s, "keda-hpa-web").unwrap()["spec"]["metrics"][0]["external"]["metric"]["name"]
            .as_str()
            .unwrap()
            .to_string();
    // The follower does not poll, but answers: through the leader.
    wait_for("the follower answers through the leader", BOUND, || {
        let (body, code) = curl_metric(b.port, b.certs.path(), &metric);
        code == "200" && body.contains("\"value\":\"6\"")
    });
    assert_eq!(holder(&s).as_deref(), Some("op-a"));
    assert!(
        b.log().contains("not the leader") || !b.log().contains("scaledobject started"),
        "the follower polls"
    );
    // The channel is mutual TLS under the internal CA: a client certificate of another
    // CA is refused by the leader's port (curl: handshake failure, no HTTP status).
    let other = support::TestCa::new("another CA");
    let dir = tempfile::tempdir().unwrap();
    support::write_cert_set(dir.path(), &other);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-k"])
        .arg("--cert").arg(dir.path().join("tls.crt"))
        .arg("--key").arg(dir.path().join("tls.key"))
        .arg(format!("https://localhost:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3Dweb", a.port))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        code == "000" || code == "401",
        "another CA's certificate got {code}"
    );

    // Kill the leader (no chance to give the lease up): the follower takes over once
    // the lease lapses, and no HPA write happens twice.
    let hpa_writes_before = s
        .requests()
        .iter()
        .filter(|(m, p)| m != "GET" && p.contains("horizontalpodautoscalers"))
        .count();
    let killed = Instant::now();
    drop(a);
    wait_for("op-b leads", BOUND, || {
        holder(&s).as_deref() == Some("op-b")
    });
    let failover = killed.elapsed();
    eprintln!("failover took {failover:?} (lease 3s, retry 500ms)");
    wait_for("the new leader answers itself", BOUND, || {
        let (body, code) = curl_metric(b.port, b.certs.path(), &metric);
        code == "200" && body.contains("\"value\":\"6\"")
    });
    source.set(0.0);
    wait_for("the new leader scales to zero", BOUND, || {
        replicas(&s, "worker") == 0
    });
    let hpa_writes_after = s
        .requests()
        .iter()
        .filter(|(m, p)| m != "GET" && p.contains("horizontalpodautoscalers"))
        .count();
    assert_eq!(
        hpa_writes_before, hpa_writes_after,
        "the new leader rewrote an HPA that was current"
    );
    assert_eq!(hpa_writes_after, 1, "one HPA create in all");
    // A stopped leader (SIGTERM) gives the lease up at once.
    let mut b = b;
    let pid = b.child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("a stopped leader gives the lease up", BOUND, || {
        holder(&s).is_none()
    });
    let _ = b.child.0.wait();
}
