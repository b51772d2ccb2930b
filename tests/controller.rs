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

/// A metrics endpoint: `{"v": value}` (or a 500 while failing); remembers every
/// `Authorization` header.
struct Source {
    port: u16,
    value: Arc<Mutex<f64>>,
    seen: Arc<Mutex<Vec<String>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Source {
    fn start(value: f64) -> Source {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let value = Arc::new(Mutex::new(value));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (v, s, f) = (Arc::clone(&value), Arc::clone(&seen), Arc::clone(&failing));
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
                let (status, body) = if f.load(std::sync::atomic::Ordering::SeqCst) {
                    ("500 Internal Server Error", "broken".to_string())
                } else {
                    ("200 OK", format!("{{\"v\": {}}}", *v.lock().unwrap()))
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Source {
            port,
            value,
            seen,
            failing,
        }
    }

    fn set(&self, v: f64) {
        *self.value.lock().unwrap() = v;
    }

    fn fail(&self, on: bool) {
        self.failing.store(on, std::sync::atomic::Ordering::SeqCst);
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

impl Drop for Operator {
    fn drop(&mut self) {
        // A failing test shows what the operator said (its last 60 lines).
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- operator log ({}) ---\n{}",
                self.stderr.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
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
            .args(
                [
                    "--metrics-bind-address",
                    "--webhook-bind-address",
                    "--health-probe-bind-address",
                ]
                .into_iter()
                .filter(|f| !extra.contains(f))
                .flat_map(|f| [f, ""]),
            )
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

    // Someone edits what the HPA got from the ScaledObject: it is put back (and a field
    // the server could have added, status, is no reason to write).
    s.modify(
        "autoscaling",
        "horizontalpodautoscalers",
        "shop",
        "keda-hpa-web",
        |h| {
            h["spec"]["maxReplicas"] = 50.into();
            h["status"] = json!({"currentReplicas": 3, "desiredReplicas": 3});
        },
    );
    wait_for("the drifted HPA is put back", BOUND, || {
        hpa(&s, "keda-hpa-web").is_some_and(|h| h["spec"]["maxReplicas"] == 7)
    });
    let hpa_writes = || {
        s.requests()
            .iter()
            .filter(|(m, p)| m == "PUT" && p.contains("horizontalpodautoscalers"))
            .count()
    };
    let puts = hpa_writes();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hpa_writes(), puts, "a current HPA is written again");

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
    wait_for("status: unpaused, no pausedReplicaCount", BOUND, || {
        let o = so(&s, "web").unwrap();
        condition(&o, "Paused").0 == "False"
            && o["status"]
                .get("pausedReplicaCount")
                .is_none_or(Value::is_null)
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
        "data": {"token": "Zmlyc3QtdG9rZW4tOTE3"}})); // "first-token-917"
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
        source.saw("Bearer first-token-917")
    });
    wait_for("the container's token is sent", BOUND, || {
        source.saw("Bearer from-pod-secret")
    });

    // Rotate the Secret (as kubectl apply would): the next poll sends the new token.
    s.modify("", "secrets", "shop", "api-token", |o| {
        o["data"]["token"] = "c2Vjb25kLXRva2VuLTQ0Mg==".into(); // "second-token-442"
    });
    wait_for("the rotated token is sent", BOUND, || {
        source.saw("Bearer second-token-442")
    });

    // A target whose container lacks the variable: the trigger fails, naming it; the
    // operator's own variable is never sent.
    s.create(deployment("also-without-env", 1, json!([])));
    s.create(scaled_object("no-env", "also-without-env", &source, {
        let mut a = auth("from-env");
        a["spec"]["scaleTargetRef"] =
            json!({"name": "also-without-env", "envSourceContainerName": "app"});
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
    for secret in ["first-token-917", "second-token-442", "from-pod-secret"] {
        assert!(
            !op.log().contains(secret),
            "a secret reached the log: {secret}"
        );
    }
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
    // The source is idle past the cooldown: a target that is not ours is never scaled.
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        replicas(&s, "taken"),
        2,
        "a target with a foreign HPA was scaled"
    );
    assert_eq!(scale_writes(&s, "taken"), 0);
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
    s.create(scaled_object(
        "web",
        "worker",
        &source,
        json!({"spec": {"cooldownPeriod": 10}}),
    ));
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
        let (body, code) = curl_metric_of(b.port, b.certs.path(), "web", &metric);
        code == "200" && body.contains("\"value\":\"6\"")
    });
    assert_eq!(holder(&s).as_deref(), Some("op-a"));
    assert!(
        !b.log().contains("scaledobject started"),
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
    // And it is TLS 1.3: the internal certificate over TLS 1.2 gets no answer.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--tlsv1.2", "--tls-max", "1.2"])
        .arg("--cacert")
        .arg(a.certs.path().join("ca.crt"))
        .arg("--cert")
        .arg(a.certs.path().join("tls.crt"))
        .arg("--key")
        .arg(a.certs.path().join("tls.key"))
        .arg(format!(
            "https://localhost:{}/apis/external.metrics.k8s.io/v1beta1",
            a.port
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "000",
        "TLS 1.2 reached the internal channel"
    );

    // Kill the leader (no chance to give the lease up): the follower takes over once
    // the lease lapses, and no HPA write happens twice.
    let hpa_writes_before = s
        .answered()
        .iter()
        .filter(|(m, p, code)| is_hpa_write(m, p, *code))
        .count();
    // The source goes idle just before: the cooldown (10 s from the last activity, in
    // the status) runs across the failover.
    wait_for("lastActiveTime is in the status", BOUND, || {
        so(&s, "web").unwrap()["status"]["lastActiveTime"].is_string()
    });
    source.set(0.0);
    let idle_since = Instant::now();
    let killed = Instant::now();
    drop(a);
    wait_for("op-b leads", BOUND, || {
        holder(&s).as_deref() == Some("op-b")
    });
    let failover = killed.elapsed();
    eprintln!("failover took {failover:?} (lease 3s, renew deadline 2s, retry 500ms)");
    wait_for("the new leader answers itself", BOUND, || {
        let (body, code) = curl_metric_of(b.port, b.certs.path(), "web", &metric);
        code == "200" && body.contains("\"value\":\"0\"")
    });
    // A new leader that forgot the cooldown would scale to zero at its first poll.
    while idle_since.elapsed() < Duration::from_secs(7) {
        assert_eq!(
            replicas(&s, "worker"),
            1,
            "the new leader cut the cooldown short"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for(
        "the new leader scales to zero after the cooldown",
        BOUND,
        || replicas(&s, "worker") == 0,
    );
    let hpa_writes_after = s
        .answered()
        .iter()
        .filter(|(m, p, code)| is_hpa_write(m, p, *code))
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

/// A request that wrote, or tried to write, an HPA. A create that lost to a watch that had
/// not caught up (409 AlreadyExists) is not one: the object was there already. A replace
/// that lost on its resourceVersion (409 Conflict) is: it tried to rewrite the HPA.
fn is_hpa_write(method: &str, path: &str, code: u16) -> bool {
    method != "GET"
        && path.contains("horizontalpodautoscalers")
        && !(method == "POST" && code == 409)
}

fn prometheus(port: u16) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn curl_metric_of(port: u16, certs: &Path, so: &str, metric: &str) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(certs.join("ca.crt"))
        .arg("--cert")
        .arg(certs.join("tls.crt"))
        .arg("--key")
        .arg(certs.join("tls.key"))
        .arg(format!(
            "https://localhost:{port}/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/{metric}?labelSelector=scaledobject.keda.sh%2Fname%3D{so}"
        ))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (body.to_string(), code.to_string())
}

fn metric_name(s: &TestApiServer, so_name: &str) -> String {
    wait_for("the metric name is in the status", BOUND, || {
        so(s, so_name).is_some_and(|o| o["status"]["externalMetricNames"][0].is_string())
    });
    so(s, so_name).unwrap()["status"]["externalMetricNames"][0]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn errors_never_scale_idle_and_min_follow_keda_and_fallback_goes_through_the_metric() {
    let s = cluster();
    let metrics_port = support::free_port();
    let op = operator(
        &s,
        "op",
        &[
            "--metrics-bind-address",
            &format!("127.0.0.1:{metrics_port}"),
        ],
        &[],
    );

    // A failing source at zero: never activated, never "active"; KEDA's TriggerError.
    let broken = Source::start(9.0);
    broken.fail(true);
    s.create(deployment("at-zero", 0, json!([])));
    s.create(scaled_object("broken", "at-zero", &broken, json!({})));
    wait_for("the trigger fails, Ready says TriggerError", BOUND, || {
        so(&s, "broken").is_some_and(|o| condition(&o, "Ready").1 == "TriggerError")
    });
    // ... and a failing source above zero is never a reason to scale in.
    s.create(deployment("busy", 3, json!([])));
    s.create(scaled_object("broken-busy", "busy", &broken, json!({})));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(replicas(&s, "at-zero"), 0, "an error activated a target");
    assert_eq!(replicas(&s, "busy"), 3, "an error scaled a target in");
    assert_eq!(condition(&so(&s, "broken").unwrap(), "Active").0, "False");

    // idleReplicaCount below minReplicaCount: inactive → idle; active → min.
    let source = Source::start(0.0);
    s.create(deployment("idle", 2, json!([])));
    s.create(scaled_object(
        "idle",
        "idle",
        &source,
        json!({"spec": {"minReplicaCount": 2, "idleReplicaCount": 0, "cooldownPeriod": 1}}),
    ));
    wait_for("inactive: to idleReplicaCount", BOUND, || {
        replicas(&s, "idle") == 0
    });
    source.set(5.0);
    wait_for("active: from idle to minReplicaCount", BOUND, || {
        replicas(&s, "idle") == 2
    });
    wait_for("the HPA's floor is minReplicaCount", BOUND, || {
        hpa(&s, "keda-hpa-idle").is_some_and(|h| h["spec"]["minReplicas"] == 2)
    });

    // Fallback: after 2 failures the HPA is given replicas × target for that metric;
    // /scale is never written for it (the HPA does it).
    let flaky = Source::start(6.0);
    s.create(deployment("fb", 1, json!([])));
    s.create(scaled_object(
        "fb",
        "fb",
        &flaky,
        json!({"spec": {"fallback": {"failureThreshold": 2, "replicas": 4}}}),
    ));
    let metric = metric_name(&s, "fb");
    wait_for("the real value is served", BOUND, || {
        curl_metric_of(op.port, op.certs.path(), "fb", &metric)
            .0
            .contains("\"value\":\"6\"")
    });
    let writes = scale_writes(&s, "fb");
    flaky.fail(true);
    wait_for("the fallback value (4 × 2) is served", BOUND, || {
        curl_metric_of(op.port, op.certs.path(), "fb", &metric)
            .0
            .contains("\"value\":\"8\"")
    });
    wait_for("status: Fallback, health Failing", BOUND, || {
        let o = so(&s, "fb").unwrap();
        condition(&o, "Fallback") == ("True".into(), "FallbackExists".into())
            && o["status"]["health"][metric.as_str()]["status"] == "Failing"
            && o["status"]["health"][metric.as_str()]["numberOfFailures"].as_u64() >= Some(2)
    });
    assert_eq!(scale_writes(&s, "fb"), writes, "fallback wrote /scale");
    flaky.fail(false);
    wait_for("recovered: the real value again", BOUND, || {
        curl_metric_of(op.port, op.certs.path(), "fb", &metric)
            .0
            .contains("\"value\":\"6\"")
    });

    // KEDA's Prometheus names and labels, beside ours.
    let text = prometheus(metrics_port);
    let value = format!(
        "keda_scaler_metrics_value{{namespace=\"shop\",metric=\"{metric}\",scaledObject=\"fb\",scaler=\"metricsAPIScaler\",triggerIndex=\"0\",type=\"scaledobject\"}} 6"
    );
    assert!(text.contains(&value), "{value} not in:\n{text}");
    assert!(
        text.contains("keda_scaler_errors_total{namespace=\"shop\""),
        "{text}"
    );
    assert!(
        text.contains("keda_scaler_active{namespace=\"shop\""),
        "{text}"
    );
    assert!(
        text.contains(
            "keda_scaled_object_errors_total{namespace=\"shop\",scaledObject=\"broken\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains("keda_scaled_object_paused{namespace=\"shop\",scaledObject=\"fb\"} 0"),
        "{text}"
    );
    assert!(
        text.contains("trustscale_scale_writes_total{result=\"activation\"}"),
        "{text}"
    );
    assert!(
        text.contains("trustscale_hpa_writes_total{result=\"created\"}"),
        "{text}"
    );
    assert!(text.contains("trustscale_leader 1"), "{text}");
    // A deleted ScaledObject's series go.
    kubectl(
        &s,
        &[
            "delete",
            "scaledobjects",
            "broken",
            "-n",
            "shop",
            "--wait=false",
        ],
    );
    wait_for("the ScaledObject is gone", BOUND, || {
        so(&s, "broken").is_none()
    });
    wait_for("its series are gone", BOUND, || {
        !prometheus(metrics_port).contains("scaledObject=\"broken\"")
    });
}

#[test]
fn a_second_scaled_object_on_a_target_is_refused_by_the_webhook_and_never_scales_it() {
    let s = cluster();
    let source = Source::start(0.0);
    let webhook = support::free_port();
    let op = operator(
        &s,
        "op",
        &["--webhook-bind-address", &format!("127.0.0.1:{webhook}")],
        &[],
    );
    s.create(deployment("shared", 2, json!([])));
    s.create(scaled_object("first", "shared", &source, json!({})));
    wait_for("first is ready", BOUND, || {
        so(&s, "first").is_some_and(|o| condition(&o, "Ready").0 == "True")
    });
    // What the kube-apiserver would send for a second one (curl as the client).
    let review = |name: &str, target: &str| {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u-1", "operation": "CREATE", "namespace": "shop",
                "kind": {"group": "keda.sh", "version": "v1alpha1", "kind": "ScaledObject"},
                "object": scaled_object(name, target, &source, json!({}))},
        });
        let file = s.dir().join(format!("review-{name}.json"));
        std::fs::write(&file, body.to_string()).unwrap();
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-H",
                "content-type: application/json",
            ])
            .arg("--cacert")
            .arg(op.certs.path().join("ca.crt"))
            .arg("--data-binary")
            .arg(format!("@{}", file.display()))
            .arg(format!(
                "https://localhost:{webhook}/validate-keda-sh-v1alpha1-scaledobject"
            ))
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap_or(Value::Null)
    };
    let r = review("second", "shared");
    assert_eq!(r["response"]["allowed"], false, "{r}");
    assert!(
        r["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already managed by the ScaledObject 'first'"),
        "{r}"
    );
    // A target with an HPA of someone else's.
    s.create(deployment("hpa-owned", 1, json!([])));
    s.create(json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "theirs", "namespace": "shop"},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "hpa-owned"}, "minReplicas": 1, "maxReplicas": 3}}));
    let r = review("third", "hpa-owned");
    assert_eq!(r["response"]["allowed"], false, "{r}");
    assert!(
        r["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("already managed by the hpa 'theirs'"),
        "{r}"
    );
    // Negative control: a free target is allowed.
    s.create(deployment("free", 1, json!([])));
    let r = review("fourth", "free");
    assert_eq!(r["response"]["allowed"], true, "{r}");

    // One that predates the webhook (created straight in the API): not Ready, and the
    // target is scaled by the first one only.
    s.create(scaled_object("second", "shared", &source, json!({})));
    wait_for("second is not ready, naming first", BOUND, || {
        so(&s, "second").is_some_and(|o| {
            condition(&o, "Ready").0 == "False"
                && o["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("'first'")
        })
    });
    assert!(hpa(&s, "keda-hpa-second").is_none());
    wait_for("first scales the idle target to zero", BOUND, || {
        replicas(&s, "shared") == 0
    });
}

#[test]
fn objects_from_the_api_with_odd_contents_are_reported_and_the_rest_keep_working() {
    let s = cluster();
    let source = Source::start(5.0);
    let op = operator(&s, "op", &[], &[]);
    let bad = |name: &str, spec: Value| {
        s.create(
            json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": "shop"}, "spec": spec}),
        );
    };
    let huge = "x".repeat(512 * 1024);
    let many: Vec<Value> = (0..101)
        .map(|_| json!({"type": "metrics-api", "metadata": {"url": source.url(), "valueLocation": "v", "targetValue": "1"}}))
        .collect();
    s.create(
        json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
        "metadata": {"name": "no-spec", "namespace": "shop"}}),
    );
    bad(
        "triggers-not-a-list",
        json!({"scaleTargetRef": {"name": "w"}, "triggers": "hello"}),
    );
    bad(
        "out-of-range",
        json!({"scaleTargetRef": {"name": "w"}, "pollingInterval": 1_000_000_000_000_i64, "triggers": []}),
    );
    bad(
        "too-many-triggers",
        json!({"scaleTargetRef": {"name": "w"}, "triggers": many}),
    );
    bad(
        "idle-not-below-min",
        json!({"scaleTargetRef": {"name": "w"}, "minReplicaCount": 1, "idleReplicaCount": 1, "triggers": []}),
    );
    for target in ["huge", "nested", "unknown"] {
        s.create(deployment(target, 1, json!([])));
    }
    bad(
        "huge-metadata",
        json!({"scaleTargetRef": {"name": "huge"}, "triggers": [
        {"type": "metrics-api", "metadata": {"url": source.url(), "valueLocation": huge, "targetValue": "1"}}]}),
    );
    bad(
        "nested-metadata",
        json!({"scaleTargetRef": {"name": "nested"}, "triggers": [
        {"type": "metrics-api", "metadata": {"url": {"nested": [1, 2]}}}]}),
    );
    bad(
        "unknown-type",
        json!({"scaleTargetRef": {"name": "unknown"}, "oddField": {"a": [1, {"b": null}]}, "triggers": [
        {"type": "no-such-scaler", "metadata": {}}]}),
    );
    bad(
        "no-target",
        json!({"triggers": [{"type": "metrics-api", "metadata": {"url": source.url(), "valueLocation": "v", "targetValue": "1"}}]}),
    );
    // A good one beside them.
    s.create(deployment("good", 0, json!([])));
    s.create(scaled_object("good", "good", &source, json!({})));
    wait_for("the good one is activated", BOUND, || {
        replicas(&s, "good") == 1
    });
    let message = |name: &str| {
        so(&s, name).and_then(|o| {
            (condition(&o, "Ready").0 == "False").then(|| {
                o["status"]["conditions"][0]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
        })
    };
    for (name, says) in [
        ("no-spec", "spec is required"),
        ("triggers-not-a-list", "triggers"),
        ("out-of-range", "spec.pollingInterval"),
        ("too-many-triggers", "at most 100"),
        ("idle-not-below-min", "idleReplicaCount"),
        ("nested-metadata", "metadata values must be strings"),
        ("unknown-type", "no-such-scaler"),
        ("no-target", "scaleTargetRef"),
        ("huge-metadata", "not working correctly"),
    ] {
        wait_for(
            &format!("{name} is not ready, saying {says:?}"),
            BOUND,
            || message(name).is_some_and(|m| m.contains(says) && m.len() < 64 * 1024),
        );
    }
    assert!(
        message("huge-metadata").unwrap().len() < 4096,
        "a huge value is not echoed whole"
    );
    // Still serving: the good one's metric, and it still follows its source.
    source.set(0.0);
    wait_for("the good one still scales", BOUND, || {
        replicas(&s, "good") == 0
    });
    let log = op.log();
    assert!(!log.contains("panicked"), "the operator panicked:\n{log}");
    // Problems are said when they appear, not every round; nothing is echoed whole.
    let said = log
        .matches("spec.idleReplicaCount (1) must be less")
        .count();
    assert_eq!(said, 1, "a problem was logged {said} times");
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 16 * 1024, "a log line of {longest} bytes");
}

#[test]
fn watch_namespace_limits_what_is_run_and_cluster_trigger_authentications_read_keda_secrets() {
    let s = cluster();
    s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "other"}}));
    let source = Source::start(5.0);
    // KEDA's WATCH_NAMESPACE, from the environment as in KEDA's Deployment.
    let op = operator(&s, "op", &[], &[("WATCH_NAMESPACE", "shop")]);
    // A ClusterTriggerAuthentication's Secret lives in the operator's namespace (keda).
    s.create(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "cluster-token", "namespace": "keda"},
        "data": {"token": "Y2x1c3Rlci10b2tlbi04MDg="}})); // "cluster-token-808"
    s.create(json!({"apiVersion": "keda.sh/v1alpha1", "kind": "ClusterTriggerAuthentication",
        "metadata": {"name": "shared"},
        "spec": {"secretTargetRef": [{"parameter": "token", "name": "cluster-token", "key": "token"}]}}));
    s.create(deployment("w", 0, json!([])));
    s.create(scaled_object("in-shop", "w", &source, json!({"spec": {"triggers": [{
        "type": "metrics-api",
        "metadata": {"url": source.url(), "valueLocation": "v", "targetValue": "2", "authMode": "bearer"},
        "authenticationRef": {"name": "shared", "kind": "ClusterTriggerAuthentication"},
    }]}})));
    let mut elsewhere = deployment("w", 0, json!([]));
    elsewhere["metadata"]["namespace"] = "other".into();
    s.create(elsewhere);
    let mut other = scaled_object("in-other", "w", &source, json!({}));
    other["metadata"]["namespace"] = "other".into();
    s.create(other);
    wait_for("the watched namespace's ScaledObject runs", BOUND, || {
        replicas(&s, "w") == 1
    });
    assert!(
        source.saw("Bearer cluster-token-808"),
        "the ClusterTriggerAuthentication's Secret"
    );
    std::thread::sleep(Duration::from_secs(3));
    let in_other = s
        .get("keda.sh", "scaledobjects", "other", "in-other")
        .unwrap();
    assert!(
        in_other["status"].is_null() && in_other["metadata"]["finalizers"].is_null(),
        "{in_other}"
    );
    assert!(
        s.get(
            "autoscaling",
            "horizontalpodautoscalers",
            "other",
            "keda-hpa-in-other"
        )
        .is_none()
    );
    assert_eq!(
        s.get("apps", "deployments", "other", "w").unwrap()["spec"]["replicas"],
        0,
        "a namespace not watched was scaled"
    );
    // Its watches asked for the one namespace only (no cluster-wide ScaledObject list).
    assert!(
        s.requests()
            .iter()
            .any(|(_, p)| p.starts_with("/apis/keda.sh/v1alpha1/namespaces/shop/scaledobjects"))
    );
    assert!(
        !s.requests()
            .iter()
            .any(|(_, p)| p.starts_with("/apis/keda.sh/v1alpha1/scaledobjects"))
    );
    // Secrets are only ever read by name (the one list is the named watch of the
    // operator's own certificate Secret).
    let lists: Vec<String> = s
        .requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && (p.ends_with("/secrets") || p.contains("/secrets?")))
        .map(|(_, p)| p)
        .filter(|p| !p.contains("fieldSelector=metadata.name%3Dkedaorg-certs"))
        .collect();
    assert!(lists.is_empty(), "Secret lists or watches: {lists:?}");
    drop(op);
}
