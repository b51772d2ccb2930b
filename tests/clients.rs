//! The operator's servers, as clients we did not write meet them: curl with its defaults
//! (HTTP/2 through ALPN) and with `--http1.1`, `openssl s_client`, and python's `ssl`,
//! against a running `trustscale operator` whose one ScaledObject reads a plain-HTTP
//! source served by python's `http.server`.

mod support;

use support::{Child, free_port, wait_for};

use std::process::{Command, Stdio};
use std::time::Duration;

struct Operator {
    _child: Child,
    _source: Child,
    certs: tempfile::TempDir,
    _manifests: tempfile::TempDir,
    _data: tempfile::TempDir,
    api: u16,
    metrics: u16,
    health: u16,
}

impl Operator {
    fn start() -> Operator {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join("stats.json"), r#"{"queue":{"depth":23}}"#).unwrap();
        let source_port = free_port();
        let source = Child(
            Command::new("python3")
                .args(["-m", "http.server", "--bind", "127.0.0.1"])
                .arg(source_port.to_string())
                .current_dir(data.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs"),
        );
        let manifests = tempfile::tempdir().unwrap();
        std::fs::write(
            manifests.path().join("so.yaml"),
            format!(
                "kind: ScaledObject\nmetadata: {{name: web, namespace: shop}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"http://127.0.0.1:{source_port}/stats.json\", valueLocation: queue.depth, targetValue: \"5\"}}\n"
            ),
        )
        .unwrap();
        let certs = tempfile::tempdir().unwrap();
        let (api, metrics, health) = (free_port(), free_port(), free_port());
        let child = Child(
            Command::new(env!("CARGO_BIN_EXE_trustscale"))
                .arg("operator")
                .arg("--manifests")
                .arg(manifests.path())
                .arg("--cert-dir")
                .arg(certs.path())
                .args(["--ca-dir", "/nonexistent"])
                .args(["--listen", &format!("127.0.0.1:{api}")])
                .args(["--metrics-bind-address", &format!("127.0.0.1:{metrics}")])
                .args([
                    "--webhook-bind-address",
                    "127.0.0.1:0",
                    "--health-probe-bind-address",
                    &format!("127.0.0.1:{health}"),
                ])
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let op = Operator {
            _child: child,
            _source: source,
            certs,
            _manifests: manifests,
            _data: data,
            api,
            metrics,
            health,
        };
        wait_for("the metric is served", Duration::from_secs(30), || {
            op.curl(&[]).0.contains("\"value\":\"23\"")
        });
        op
    }

    fn cert(&self, name: &str) -> String {
        self.certs.path().join(name).display().to_string()
    }

    fn metric_url(&self) -> String {
        format!(
            "https://localhost:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-metric-api-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dweb",
            self.api
        )
    }

    /// curl with the internal certificates and `extra` flags: (body, http version, ok).
    fn curl(&self, extra: &[&str]) -> (String, String, bool) {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-w", "\n%{http_version}"])
            .args(["--cacert", &self.cert("ca.crt")])
            .args([
                "--cert",
                &self.cert("tls.crt"),
                "--key",
                &self.cert("tls.key"),
            ])
            .args(extra)
            .arg(self.metric_url())
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, version) = text.rsplit_once('\n').unwrap_or((&text, ""));
        (body.to_string(), version.to_string(), out.status.success())
    }
}

#[test]
fn curl_reads_the_metric_over_http2_and_http1_and_is_refused_without_a_client_certificate() {
    let op = Operator::start();
    let (body, version, ok) = op.curl(&[]);
    assert!(ok && body.contains("\"value\":\"23\""), "{body}");
    assert_eq!(version, "2", "curl's default negotiates HTTP/2: {body}");
    let (body, version, ok) = op.curl(&["--http1.1"]);
    assert!(ok && body.contains("\"value\":\"23\""), "{body}");
    assert_eq!(version, "1.1");
    // Negative controls: no client certificate; TLS 1.2 against the TLS 1.3 minimum.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &op.cert("ca.crt")])
        .arg(op.metric_url())
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "without a client certificate the API must refuse: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let (body, _, ok) = op.curl(&["--tlsv1.2", "--tls-max", "1.2"]);
    assert!(
        !ok,
        "TLS 1.2 must be refused by the TLS 1.3 minimum: {body}"
    );
}

#[test]
fn openssl_s_client_negotiates_tls13_and_h2_and_verifies_the_chain() {
    let op = Operator::start();
    let run = |extra: &[&str]| {
        let mut child = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{}", op.api)])
            .args(["-servername", "localhost", "-verify_hostname", "localhost"])
            .args(["-CAfile", &op.cert("ca.crt")])
            .args(["-cert", &op.cert("tls.crt"), "-key", &op.cert("tls.key")])
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
    let text = run(&[]);
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    assert!(text.contains("ALPN protocol: h2"), "{text}");
    assert!(text.contains("TLSv1.3"), "{text}");
    let text = run(&["-tls1_2"]);
    assert!(
        text.contains("alert protocol version") && !text.contains("ALPN protocol: h2"),
        "a TLS 1.2-only client must be refused by the TLS 1.3 minimum: {text}"
    );
}

#[test]
fn python_ssl_reads_the_metric_and_the_plain_ports_answer_curl() {
    let op = Operator::start();
    let script = format!(
        r#"
import json, ssl, urllib.request
ctx = ssl.create_default_context(cafile={ca:?})
ctx.load_cert_chain({crt:?}, {key:?})
body = json.load(urllib.request.urlopen({url:?}, context=ctx, timeout=10))
print(body["items"][0]["value"])
"#,
        ca = op.cert("ca.crt"),
        crt = op.cert("tls.crt"),
        key = op.cert("tls.key"),
        url = op.metric_url(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "23",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Python trusting nothing but the system roots is refused (negative control).
    let untrusting = script.replace(&format!("cafile={:?}", op.cert("ca.crt")), "cafile=None");
    let out = Command::new("python3")
        .args(["-c", &untrusting])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the internal CA is not a system root"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("CERTIFICATE_VERIFY_FAILED"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let plain = |port: u16, path: &str, extra: &[&str]| {
        let out = Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code} %{http_version}",
            ])
            .args(extra)
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for path in ["/healthz", "/livez", "/readyz"] {
        let text = plain(op.health, path, &[]);
        assert!(text.ends_with("200 1.1"), "{path}: {text}");
        let text = plain(op.health, path, &["--http2-prior-knowledge"]);
        assert!(text.ends_with("200 2"), "{path} over h2c: {text}");
    }
    assert!(plain(op.health, "/metrics", &[]).ends_with("404 1.1"));
    let text = plain(op.metrics, "/metrics", &[]);
    assert!(
        text.contains("trustscale_metric_value") && text.ends_with("200 1.1"),
        "{text}"
    );
    // The allocator's figures reach a client of another make too (the binary allocates with
    // jemalloc when built with that feature).
    assert_eq!(
        text.contains("trustscale_allocator_bytes{kind=\"allocated\"} "),
        cfg!(feature = "jemalloc"),
        "{text}"
    );
}

/// The operator's file rule: a trigger's `ca` may name a file only under a folder given
/// with --allow-file-params, never one that resolves into the operator's own certificate
/// folder (not even through a symlink), and with no such folder, none at all.
#[test]
fn trigger_file_parameters_are_confined_and_never_reach_the_operators_own_certificates() {
    let work = tempfile::tempdir().unwrap();
    let (allowed, other, certs, manifests) = (
        work.path().join("allowed"),
        work.path().join("other"),
        work.path().join("certs"),
        work.path().join("manifests"),
    );
    for d in [&allowed, &other, &manifests] {
        std::fs::create_dir_all(d).unwrap();
    }
    // A CA file under the allowed folder and one outside it; a symlink under the allowed
    // folder into the operator's certificate folder (filled in once the operator made it).
    let ca = support::TestCa::new("file rule");
    ca.write_pem(&allowed.join("ca.pem"));
    ca.write_pem(&other.join("ca.pem"));
    std::os::unix::fs::symlink(certs.join("ca.crt"), allowed.join("sneaky.pem")).unwrap();
    let trigger = |name: &str, ca_path: &std::path::Path| {
        format!(
            "---\nkind: ScaledObject\nmetadata: {{name: {name}, namespace: files}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"https://localhost:1/\", valueLocation: a, targetValue: \"1\", ca: \"{}\"}}\n",
            ca_path.display()
        )
    };
    std::fs::write(
        manifests.join("files.yaml"),
        [
            trigger("allowed", &allowed.join("ca.pem")),
            trigger("outside", &other.join("ca.pem")),
            trigger("sneaky", &allowed.join("sneaky.pem")),
            trigger("own", &certs.join("tls.key")),
        ]
        .concat(),
    )
    .unwrap();
    let run = |extra: &[&std::ffi::OsStr]| -> serde_json::Value {
        let api = free_port();
        let _op = Child(
            Command::new(env!("CARGO_BIN_EXE_trustscale"))
                .arg("operator")
                .args(extra)
                .arg("--manifests")
                .arg(&manifests)
                .arg("--cert-dir")
                .arg(&certs)
                .args([
                    "--ca-dir",
                    "/nonexistent",
                    "--listen",
                    &format!("127.0.0.1:{api}"),
                ])
                .args([
                    "--metrics-bind-address",
                    "",
                    "--webhook-bind-address",
                    "127.0.0.1:0",
                    "--health-probe-bind-address",
                    "",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut last = serde_json::Value::Null;
        // Each has an outcome: a refused configuration (which counts no failures) or a
        // failed poll.
        wait_for("four ScaledObjects polled", Duration::from_secs(30), || {
            last = serde_json::from_str(&support::curl_api(api, &certs, "/scaledobjects"))
                .unwrap_or(serde_json::Value::Null);
            last["scaledObjects"].as_array().is_some_and(|a| {
                a.len() == 4 && a.iter().all(|o| o["triggers"][0]["error"].is_object())
            })
        });
        last
    };
    let message = |json: &serde_json::Value, so: &str| -> String {
        json["scaledObjects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["scaledObject"] == format!("files/{so}"))
            .map(|o| {
                o["triggers"][0]["error"]["message"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    let allow = [
        std::ffi::OsStr::new("--allow-file-params"),
        allowed.as_os_str(),
    ];
    let json = run(&allow);
    // The allowed file is read: the trigger gets as far as connecting.
    let ok = message(&json, "allowed");
    assert!(
        ok.contains("localhost:1") && !ok.contains("refused:"),
        "{ok}"
    );
    let outside = message(&json, "outside");
    assert!(
        outside.contains("parameter ca")
            && outside.contains("not under a folder allowed by --allow-file-params"),
        "{outside}"
    );
    let sneaky = message(&json, "sneaky");
    assert!(
        sneaky.contains("parameter ca") && sneaky.contains("operator's own certificate folder"),
        "{sneaky}"
    );
    // The operator's own private key, named directly: refused.
    let own = message(&json, "own");
    assert!(
        own.contains("refused") && own.contains("operator's own certificate folder"),
        "{own}"
    );
    // Without the flag, no file at all.
    let json = run(&[]);
    let none = message(&json, "allowed");
    assert!(none.contains("file paths are not allowed here"), "{none}");
}

#[test]
fn keda_service_tls_cipher_list_limits_what_the_api_accepts() {
    let manifests = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    let api = free_port();
    let _op = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--manifests")
            .arg(manifests.path())
            .arg("--cert-dir")
            .arg(certs.path())
            .args([
                "--ca-dir",
                "/nonexistent",
                "--listen",
                &format!("127.0.0.1:{api}"),
            ])
            .args([
                "--metrics-bind-address",
                "",
                "--webhook-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "",
            ])
            .env("KEDA_SERVICE_MIN_TLS_VERSION", "TLS12")
            .env(
                "KEDA_SERVICE_TLS_CIPHER_LIST",
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(
        "the API listens with its certificates",
        Duration::from_secs(20),
        || {
            certs.path().join("tls.key").exists()
                && std::net::TcpStream::connect(("127.0.0.1", api)).is_ok()
        },
    );
    let s_client = |cipher: &str| {
        let mut child = Command::new("openssl")
            .args([
                "s_client",
                "-connect",
                &format!("127.0.0.1:{api}"),
                "-tls1_2",
                "-cipher",
                cipher,
            ])
            .arg("-CAfile")
            .arg(certs.path().join("ca.crt"))
            .arg("-cert")
            .arg(certs.path().join("tls.crt"))
            .arg("-key")
            .arg(certs.path().join("tls.key"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let ok = s_client("ECDHE-ECDSA-AES256-GCM-SHA384");
    assert!(
        ok.contains("Cipher is ECDHE-ECDSA-AES256-GCM-SHA384"),
        "{ok}"
    );
    let refused = s_client("ECDHE-ECDSA-AES128-GCM-SHA256");
    assert!(
        refused.contains("alert handshake failure")
            || refused.contains("no shared cipher")
            || refused.contains("Cipher is (NONE)"),
        "{refused}"
    );
}
