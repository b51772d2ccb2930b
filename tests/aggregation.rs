//! The metrics API as the kube-apiserver's aggregation layer calls it: a front-proxy
//! client certificate from a request-header CA, the caller in `X-Remote-*` headers,
//! HTTP/2, discovery first and then the metric. The clients are curl and a small program
//! on Go's standard library (the aggregator's own HTTP/2 stack); the negative controls
//! are a front-proxy name that is not allowed, the headers sent by an internal client or
//! with no certificate, and a certificate from another CA.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Child, TestCa, free_port, wait_for};

const METRIC: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-metric-api-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dweb";

struct Operator {
    _child: Child,
    _source: support::PythonHttp,
    certs: tempfile::TempDir,
    work: tempfile::TempDir,
    api: u16,
}

impl Operator {
    /// An operator with one ScaledObject (a plain-HTTP source served by python), and
    /// request-header authentication with `front_ca` and `extra` flags.
    fn start(front_ca: &TestCa, extra: &[&str]) -> Operator {
        let work = tempfile::tempdir().unwrap();
        let source = support::python_http(&[("stats.json", r#"{"queue":{"depth":23}}"#)]);
        let source_port = source.port;
        let manifests = work.path().join("manifests");
        std::fs::create_dir(&manifests).unwrap();
        std::fs::write(
            manifests.join("so.yaml"),
            format!(
                "kind: ScaledObject\nmetadata: {{name: web, namespace: shop}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"http://127.0.0.1:{source_port}/stats.json\", valueLocation: queue.depth, targetValue: \"5\"}}\n"
            ),
        )
        .unwrap();
        let front_file = work.path().join("front-proxy-ca.crt");
        front_ca.write_pem(&front_file);
        let certs = tempfile::tempdir().unwrap();
        let api = free_port();
        let child = Child(
            Command::new(env!("CARGO_BIN_EXE_trustscale"))
                .arg("operator")
                .arg("--manifests")
                .arg(&manifests)
                .arg("--cert-dir")
                .arg(certs.path())
                .args(["--ca-dir", "/nonexistent"])
                .args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--metrics-bind-address", ""])
                .args(["--health-probe-bind-address", ""])
                .args(["--webhook-bind-address", ""])
                .arg("--requestheader-client-ca-file")
                .arg(&front_file)
                .args(extra)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(work.path().join("operator.log")).unwrap())
                .spawn()
                .unwrap(),
        );
        let op = Operator {
            _child: child,
            _source: source,
            certs,
            work,
            api,
        };
        wait_for("the metric is served", Duration::from_secs(30), || {
            support::curl_api(op.api, op.certs.path(), METRIC).contains("\"value\":\"23\"")
        });
        op
    }

    fn ca(&self) -> PathBuf {
        self.certs.path().join("ca.crt")
    }

    fn front_file(&self) -> PathBuf {
        self.work.path().join("front-proxy-ca.crt")
    }

    /// Writes a client's certificate and key into the work folder: (cert, key).
    fn client_files(&self, name: &str, leaf: &support::Leaf) -> (PathBuf, PathBuf) {
        let cert = self.work.path().join(format!("{name}.crt"));
        let key = self.work.path().join(format!("{name}.key"));
        std::fs::write(&cert, &leaf.cert_pem).unwrap();
        std::fs::write(&key, &leaf.key_pem).unwrap();
        (cert, key)
    }
}

/// curl with its defaults (HTTP/2 by ALPN), a client certificate and headers:
/// (HTTP status, HTTP version, body, whether curl succeeded).
fn curl(
    port: u16,
    ca: &Path,
    client: Option<(&Path, &Path)>,
    headers: &[&str],
    path: &str,
) -> (u16, String, String, bool) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-w",
        "\n%{http_code} %{http_version}",
    ])
    .arg("--cacert")
    .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = tail.split_once(' ').unwrap_or(("0", ""));
    (
        code.parse().unwrap_or(0),
        version.to_string(),
        body.to_string(),
        out.status.success(),
    )
}

const AS_HPA: [&str; 3] = [
    "X-Remote-User: system:serviceaccount:kube-system:horizontal-pod-autoscaler",
    "X-Remote-Group: system:serviceaccounts",
    "X-Remote-Group: system:authenticated",
];

#[test]
fn curl_follows_the_aggregation_path_over_http2_with_a_front_proxy_certificate() {
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(
        &front,
        &["--requestheader-allowed-names", "front-proxy-client"],
    );
    let (cert, key) = op.client_files("front", &front.client("front-proxy-client"));
    let get = |path: &str| curl(op.api, &op.ca(), Some((&cert, &key)), &AS_HPA, path);

    let (code, version, body, _) = get("/apis/external.metrics.k8s.io/v1beta1");
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["kind"], "APIResourceList");
    assert_eq!(doc["groupVersion"], "external.metrics.k8s.io/v1beta1");
    assert_eq!(doc["resources"][0]["name"], "externalmetrics");
    assert_eq!(doc["resources"][0]["namespaced"], true);
    assert_eq!(doc["resources"][0]["kind"], "ExternalMetricValueList");
    assert_eq!(doc["resources"][0]["verbs"], serde_json::json!(["get"]));

    let (code, _, body, _) = get("/apis");
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["kind"], "APIGroupList");
    assert_eq!(doc["groups"][0]["name"], "external.metrics.k8s.io");
    assert_eq!(
        doc["groups"][0]["preferredVersion"]["groupVersion"],
        "external.metrics.k8s.io/v1beta1"
    );
    let (code, _, body, _) = get("/apis/external.metrics.k8s.io");
    assert_eq!(code, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["kind"], "APIGroup");
    assert_eq!(doc["versions"][0]["version"], "v1beta1");

    // The aggregator fetches OpenAPI and skips a 404; it gets a Status.
    for path in ["/openapi/v2", "/openapi/v3"] {
        let (code, _, body, _) = get(path);
        assert_eq!(code, 404, "{path}: {body}");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (doc["kind"].as_str(), doc["reason"].as_str()),
            (Some("Status"), Some("NotFound"))
        );
    }

    let (code, version, body, _) = get(METRIC);
    assert_eq!((code, version.as_str()), (200, "2"), "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["kind"], "ExternalMetricValueList");
    assert_eq!(doc["items"][0]["value"], "23");

    // Errors are Status objects with Kubernetes' reasons.
    let (code, _, body, _) =
        get("/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-metric-api-queue-depth");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"reason\":\"BadRequest\""), "{body}");
    let (code, _, body, _) = get(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/nothing?labelSelector=scaledobject.keda.sh%2Fname%3Dweb",
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("\"reason\":\"NotFound\""), "{body}");
    // The operator's own view is for its internal clients only.
    let (code, _, body, _) = get("/scaledobjects");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"reason\":\"Forbidden\""), "{body}");
}

#[test]
fn negative_controls_a_name_not_allowed_no_user_an_internal_client_no_certificate_another_ca() {
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(
        &front,
        &["--requestheader-allowed-names", "front-proxy-client"],
    );

    // A certificate of the request-header CA, but not an allowed name: not authenticated,
    // whatever the headers say.
    let (cert, key) = op.client_files("other-name", &front.client("someone-else"));
    let (code, _, body, _) = curl(op.api, &op.ca(), Some((&cert, &key)), &AS_HPA, METRIC);
    assert_eq!(code, 401, "{body}");
    assert!(
        body.contains("\"reason\":\"Unauthorized\"") && body.contains("someone-else"),
        "{body}"
    );

    // An allowed front proxy that names no user.
    let (cert, key) = op.client_files("front", &front.client("front-proxy-client"));
    let (code, _, body, _) = curl(op.api, &op.ca(), Some((&cert, &key)), &[], METRIC);
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("X-Remote-User"), "{body}");

    // An internal client's headers are ignored: it stays an internal client (which may
    // read /scaledobjects; the user it names could not).
    let internal = (
        op.certs.path().join("tls.crt"),
        op.certs.path().join("tls.key"),
    );
    let (code, _, body, _) = curl(
        op.api,
        &op.ca(),
        Some((&internal.0, &internal.1)),
        &["X-Remote-User: system:anonymous"],
        "/scaledobjects",
    );
    assert_eq!(code, 200, "{body}");

    // No certificate at all: the handshake is refused, headers or not.
    let (code, _, body, ok) = curl(op.api, &op.ca(), None, &AS_HPA, METRIC);
    assert!(
        !ok && code == 0,
        "no certificate must be refused: {code} {body}"
    );

    // The same name from another CA: refused in the handshake.
    let stranger = TestCa::new("front-proxy-ca");
    let (cert, key) = op.client_files("stranger", &stranger.client("front-proxy-client"));
    let (code, _, body, ok) = curl(op.api, &op.ca(), Some((&cert, &key)), &AS_HPA, METRIC);
    assert!(
        !ok && code == 0,
        "another CA must be refused: {code} {body}"
    );

    // And the allowed one still works (the controls above did not break the server).
    let (cert, key) = op.client_files("front", &front.client("front-proxy-client"));
    let (code, _, body, _) = curl(op.api, &op.ca(), Some((&cert, &key)), &AS_HPA, METRIC);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn an_empty_allowed_names_list_allows_any_name_of_the_request_header_ca() {
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(&front, &[]);
    let (cert, key) = op.client_files("any", &front.client("any-name-at-all"));
    let (code, _, body, _) = curl(op.api, &op.ca(), Some((&cert, &key)), &AS_HPA, METRIC);
    assert_eq!(code, 200, "{body}");
}

#[test]
fn custom_header_names_are_the_only_ones_believed() {
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(
        &front,
        &[
            "--requestheader-username-headers",
            "X-Proxy-User",
            "--requestheader-group-headers",
            "X-Proxy-Group",
        ],
    );
    let (cert, key) = op.client_files("front", &front.client("front-proxy-client"));
    let (code, _, body, _) = curl(op.api, &op.ca(), Some((&cert, &key)), &AS_HPA, METRIC);
    assert_eq!(
        code, 401,
        "X-Remote-User is not a configured header: {body}"
    );
    let (code, _, body, _) = curl(
        op.api,
        &op.ca(),
        Some((&cert, &key)),
        &["X-Proxy-User: hpa", "X-Proxy-Group: system:authenticated"],
        METRIC,
    );
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_new_request_header_ca_is_followed_and_the_old_one_is_shut_out() {
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(&front, &[]);
    let (old_cert, old_key) = op.client_files("old", &front.client("front-proxy-client"));
    let (code, _, body, _) = curl(
        op.api,
        &op.ca(),
        Some((&old_cert, &old_key)),
        &AS_HPA,
        METRIC,
    );
    assert_eq!(code, 200, "{body}");
    // A connection opened now, kept alive across the change (python's http.client).
    let go = op.work.path().join("go");
    let first = op.work.path().join("first-done");
    let script = format!(
        r#"
import http.client, os, ssl, time
ctx = ssl.create_default_context(cafile={ca:?})
ctx.load_cert_chain({crt:?}, {key:?})
ctx.set_alpn_protocols(["http/1.1"])
c = http.client.HTTPSConnection("localhost", {port}, context=ctx, timeout=10)
hdrs = {{"X-Remote-User": "hpa"}}
c.request("GET", {path:?}, headers=hdrs); r = c.getresponse(); r.read(); print(r.status, flush=True)
open({first:?}, "w").close()
while not os.path.exists({go:?}): time.sleep(0.05)
c.request("GET", {path:?}, headers=hdrs); r = c.getresponse(); print(r.status, r.read().decode(), flush=True)
"#,
        ca = op.ca(),
        crt = old_cert,
        key = old_key,
        port = op.api,
        path = METRIC,
        first = first,
        go = go,
    );
    let kept = Command::new("python3")
        .args(["-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        "the kept connection's first request",
        Duration::from_secs(10),
        || first.exists(),
    );

    // The kube-apiserver's front-proxy CA is replaced (written aside, then renamed, as a
    // ConfigMap update is).
    let next = TestCa::new("front-proxy-ca-2");
    let (new_cert, new_key) = op.client_files("new", &next.client("front-proxy-client"));
    let staged = op.work.path().join("front-proxy-ca.crt.new");
    next.write_pem(&staged);
    std::fs::rename(&staged, op.front_file()).unwrap();
    wait_for(
        "the new request-header CA is used",
        Duration::from_secs(15),
        || {
            curl(
                op.api,
                &op.ca(),
                Some((&new_cert, &new_key)),
                &AS_HPA,
                METRIC,
            )
            .0 == 200
        },
    );
    let (code, _, body, ok) = curl(
        op.api,
        &op.ca(),
        Some((&old_cert, &old_key)),
        &AS_HPA,
        METRIC,
    );
    assert!(
        !ok && code == 0,
        "the old CA's front proxy must be refused now: {code} {body}"
    );
    // The connection opened before the change is shut out too.
    std::fs::write(&go, "").unwrap();
    let out = kept.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        2,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines[0], "200", "{text}");
    assert!(
        lines[1].starts_with("401 ") && lines[1].contains("not trusted"),
        "{text}"
    );

    // A broken replacement is refused; the current CA keeps working.
    std::fs::write(op.front_file(), "not a certificate").unwrap();
    wait_for("the refusal is logged", Duration::from_secs(15), || {
        std::fs::read_to_string(op.work.path().join("operator.log"))
            .is_ok_and(|l| l.contains("the request-header CA file is refused"))
    });
    let (code, _, body, _) = curl(
        op.api,
        &op.ca(),
        Some((&new_cert, &new_key)),
        &AS_HPA,
        METRIC,
    );
    assert_eq!(
        code, 200,
        "the last good request-header CA keeps serving: {body}"
    );
}

#[test]
fn an_unusable_request_header_ca_file_stops_the_start_naming_the_file_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.crt");
    support::mkfifo(&fifo);
    let zero = dir.path().join("zero.crt");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let folder = dir.path().join("folder.crt");
    std::fs::create_dir(&folder).unwrap();
    let empty = dir.path().join("empty.crt");
    std::fs::write(&empty, "").unwrap();
    // A private key where the CA should be: refused, and never echoed.
    let key_pem = TestCa::new("k").client("c").key_pem;
    let key_body = key_pem.lines().nth(1).unwrap().to_string();
    let key_only = dir.path().join("key.crt");
    std::fs::write(&key_only, &key_pem).unwrap();
    let huge = dir.path().join("huge.crt");
    std::fs::write(&huge, "A".repeat(5 << 20)).unwrap();
    let missing = dir.path().join("missing.crt");
    let manifests = tempfile::tempdir().unwrap();
    for file in [&fifo, &zero, &folder, &empty, &key_only, &huge, &missing] {
        let stderr = support::operator_refuses_to_start(
            manifests.path(),
            &["--requestheader-client-ca-file".as_ref(), file.as_os_str()],
        );
        assert!(
            stderr.contains(&file.display().to_string())
                && stderr.contains("--requestheader-client-ca-file"),
            "{}: {stderr}",
            file.display()
        );
        assert!(!stderr.contains(&key_body), "{stderr}");
    }
    // A request-header flag without the CA file is a usage error.
    let out = Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .args(["operator", "--manifests", "/nonexistent"])
        .args(["--requestheader-allowed-names", "front-proxy-client"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--requestheader-client-ca-file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn odd_x_remote_headers_are_refused_or_bounded_and_the_server_keeps_serving() {
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(&front, &[]);
    let (cert, key) = op.client_files("front", &front.client("front-proxy-client"));
    let run = |headers: &[String]| {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        curl(op.api, &op.ca(), Some((&cert, &key)), &refs, METRIC)
    };
    // A user name that is not text.
    let (code, _, body, _) = {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .arg("--cacert")
            .arg(op.ca())
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg("-H")
            .arg(
                <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(
                    b"X-Remote-User: \xff\xfeadmin",
                ),
            )
            .arg(format!("https://localhost:{}{METRIC}", op.api))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
        (
            tail.split(' ')
                .next()
                .unwrap_or("0")
                .parse::<u16>()
                .unwrap_or(0),
            (),
            body.to_string(),
            (),
        )
    };
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("X-Remote-User"), "{body}");
    // An empty user name counts as none.
    let (code, _, body, _) = run(&["X-Remote-User:".into(), "X-Remote-User;".into()]);
    assert_eq!(code, 401, "{body}");
    // A thousand groups, and extra attributes with escapes: accepted.
    let mut many: Vec<String> = (0..1000).map(|i| format!("X-Remote-Group: g{i}")).collect();
    many.push("X-Remote-User: hpa".into());
    many.push("X-Remote-Extra-Scopes%2Fid: a".into());
    let (code, _, body, _) = run(&many);
    assert_eq!(code, 200, "{body}");
    // One header far larger than the server takes: refused without harm.
    let huge = format!("X-Remote-User: {}", "u".repeat(100 * 1024));
    let (code, _, body, _) = run(&[huge]);
    assert_ne!(code, 200, "{body}");
    // Still serving.
    let (code, _, body, _) = run(&["X-Remote-User: hpa".into()]);
    assert_eq!(code, 200, "{body}");
}

/// A client on Go's standard library (`net/http` negotiates HTTP/2 through ALPN, as the
/// kube-apiserver's proxy does), built with the system's `go`.
const GO_CLIENT: &str = r#"package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	ca, cert, key, base := os.Args[1], os.Args[2], os.Args[3], os.Args[4]
	pem, err := os.ReadFile(ca)
	if err != nil {
		panic(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(pem)
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		panic(err)
	}
	client := &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}},
			ForceAttemptHTTP2: true,
		},
	}
	for _, path := range os.Args[5:] {
		req, _ := http.NewRequest("GET", base+path, nil)
		req.Header.Set("X-Remote-User", "system:serviceaccount:kube-system:horizontal-pod-autoscaler")
		req.Header.Add("X-Remote-Group", "system:serviceaccounts")
		req.Header.Add("X-Remote-Group", "system:authenticated")
		resp, err := client.Do(req)
		if err != nil {
			fmt.Printf("ERROR %v\n", err)
			continue
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s %d %s\n", resp.Proto, resp.StatusCode, body)
	}
}
"#;

fn go_client() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-aggregator-client");
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("main.go");
    std::fs::write(&src, GO_CLIENT).unwrap();
    let bin = dir.join("client");
    let out = Command::new("go")
        .arg("build")
        .arg("-o")
        .arg(&bin)
        .arg(&src)
        .env("GO111MODULE", "off")
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .output()
        .expect("go (Debian's golang-go) must be installed: .ci/run installs it");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[test]
fn gos_standard_library_client_reads_discovery_and_the_metric_over_http2() {
    let bin = go_client();
    let front = TestCa::new("front-proxy-ca");
    let op = Operator::start(
        &front,
        &["--requestheader-allowed-names", "front-proxy-client"],
    );
    let run = |leaf: &support::Leaf, name: &str| {
        let (cert, key) = op.client_files(name, leaf);
        let out = Command::new(&bin)
            .arg(op.ca())
            .arg(&cert)
            .arg(&key)
            .arg(format!("https://localhost:{}", op.api))
            .args(["/apis/external.metrics.k8s.io/v1beta1", METRIC])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&front.client("front-proxy-client"), "front");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("HTTP/2.0 200 ") && lines[0].contains("\"APIResourceList\""),
        "{text}"
    );
    assert!(
        lines[1].starts_with("HTTP/2.0 200 ") && lines[1].contains("\"value\":\"23\""),
        "{text}"
    );
    // Negative controls with the same client: a name not allowed, another CA.
    let text = run(&front.client("kube-apiserver"), "not-allowed");
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("HTTP/2.0 401 ")),
        "{text}"
    );
    let text = run(
        &TestCa::new("other").client("front-proxy-client"),
        "stranger",
    );
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(text.lines().all(|l| l.starts_with("ERROR ")), "{text}");
}
