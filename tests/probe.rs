//! `trustscale probe` on KEDA-format manifest sets (ScaledObject + TriggerAuthentication +
//! Secret), against the TLS Redis fixture and an in-process HTTPS metrics source.

mod support;

use base64::Engine as _;
use support::fixtures::Fixtures;
use support::http::{HttpsServer, Request, Response};
use support::{TestCa, Versions, server_config};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

async fn probe(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .arg("probe")
        .args(args)
        .arg("--json")
        .env_remove("KEDA_HTTP_MIN_TLS_VERSION")
        .output()
        .await
        .unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

fn manifests(redis_port: u16, redis_password: &str, api_url: &str) -> String {
    let fx = Fixtures::get();
    format!(
        r#"
apiVersion: v1
kind: Secret
metadata: {{name: redis-tls, namespace: shop}}
type: Opaque
data:
  cert: {cert}
  key: {key}
  keyPassword: {key_password}
stringData:
  password: "{redis_password}"
  tls: enable
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {{name: redis-auth, namespace: shop}}
spec:
  secretTargetRef:
    - {{parameter: tls, name: redis-tls, key: tls}}
    - {{parameter: cert, name: redis-tls, key: cert}}
    - {{parameter: key, name: redis-tls, key: key}}
    - {{parameter: keyPassword, name: redis-tls, key: keyPassword}}
    - {{parameter: password, name: redis-tls, key: password}}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-token, namespace: shop}}
stringData: {{token: s3cr3t}}
---
apiVersion: keda.sh/v1alpha1
kind: TriggerAuthentication
metadata: {{name: api-auth, namespace: shop}}
spec:
  secretTargetRef:
    - {{parameter: token, name: api-token, key: token}}
---
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {{name: orders, namespace: shop}}
spec:
  scaleTargetRef: {{name: orders-worker}}
  triggers:
    - type: redis
      metadata:
        address: localhost:{redis_port}
        username: scaler
        listName: orders-probe-never-filled
        listLength: "10"
      authenticationRef: {{name: redis-auth}}
    - type: metrics-api
      metadata:
        url: "{api_url}"
        valueLocation: backlog.total
        targetValue: "100"
        authMode: bearer
      authenticationRef: {{name: api-auth}}
"#,
        cert = b64(&fx.pem("client-chain.crt")),
        key = b64(&fx.pem("client-encrypted.key")),
        key_password = b64(&fx.var("TRUSTSCALE_CLIENT_KEY_PASSWORD")),
    )
}

#[tokio::test]
async fn a_keda_manifest_set_for_each_scaler_loads_and_probes() {
    let fx = Fixtures::get();
    let port = fx.port("REDIS_MTLS_PORT");
    let api_ca = TestCa::new("api CA");
    let api = HttpsServer::start(
        server_config(&api_ca.server(), Versions::Both, None),
        |r: &Request| {
            if r.headers.get("authorization").map(String::as_str) == Some("Bearer s3cr3t") {
                Response::ok(r#"{"backlog":{"total":250}}"#)
            } else {
                Response::status(401)
            }
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("shop.yaml"),
        manifests(port, "scalerpass", &api.url("/stats")),
    )
    .unwrap();
    let fixture_ca = fx.ca_dir();
    let api_ca_dir = tempfile::tempdir().unwrap();
    api_ca.write_pem(&api_ca_dir.path().join("api.pem"));
    let (out, json) = probe(&[
        "-f",
        dir.path().to_str().unwrap(),
        "--ca-dir",
        fixture_ca.path().to_str().unwrap(),
        "--ca-dir",
        api_ca_dir.path().to_str().unwrap(),
    ])
    .await;
    assert!(
        out.status.success(),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let t = &json["triggers"];
    assert_eq!(t[0]["scaledObject"], "shop/orders");
    assert_eq!(t[0]["type"], "redis");
    assert_eq!(t[0]["metric"], "s0-redis-orders-probe-never-filled");
    assert_eq!(t[0]["value"], 0.0, "a missing key is 0, not an error");
    assert_eq!(t[0]["active"], false);
    assert_eq!(t[1]["type"], "metrics-api");
    assert_eq!(t[1]["value"], 250.0);
    assert_eq!(t[1]["active"], true);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("s3cr3t") && !stderr.contains("scalerpass"),
        "no secret in the logs: {stderr}"
    );

    // The same set with a wrong Redis password and without the API's CA: classified errors, exit 1.
    std::fs::write(
        dir.path().join("shop.yaml"),
        manifests(port, "wrong", &api.url("/stats")),
    )
    .unwrap();
    let (out, json) = probe(&[
        "-f",
        dir.path().to_str().unwrap(),
        "--ca-dir",
        fixture_ca.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["triggers"][0]["error"]["kind"], "auth");
    assert_eq!(json["triggers"][1]["error"]["kind"], "unknown_issuer");
}

#[tokio::test]
async fn a_broken_document_is_reported_and_the_rest_still_probe() {
    let fx = Fixtures::get();
    let port = fx.port("REDIS_TLS_PORT");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.yaml"),
        format!(
            "kind: ScaledObject\nmetadata: {{name: good}}\nspec:\n  triggers:\n    - type: redis\n      metadata: {{address: \"localhost:{port}\", listName: q, enableTLS: \"true\"}}\n---\nkind: ScaledObject\nmetadata: {{name: bad}}\nspec: {{triggers: 7}}\n"
        ),
    )
    .unwrap();
    let ca = fx.ca_dir();
    let (out, json) = probe(&[
        "-f",
        dir.path().to_str().unwrap(),
        "--ca-dir",
        ca.path().to_str().unwrap(),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(1),
        "a broken document fails the probe"
    );
    assert_eq!(json["triggers"][0]["scaledObject"], "default/good");
    assert_eq!(json["triggers"][0]["value"], 0.0);
    assert_eq!(json["problems"][0]["document"], 2);
    assert!(
        json["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ScaledObject default/bad")
    );
}

#[tokio::test]
async fn the_readmes_first_probe_works_as_written_and_fails_without_the_ca_folder() {
    let fx = Fixtures::get();
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/manifests");
    let ca_dir = fx.pki("custom-ca");
    let (out, json) = probe(&["-f", examples, "--ca-dir", ca_dir.to_str().unwrap()]).await;
    assert!(out.status.success(), "{json}");
    let triggers = json["triggers"].as_array().unwrap();
    assert_eq!(triggers.len(), 2, "{json}");
    assert!(triggers.iter().all(|t| t["value"].is_number()), "{json}");
    // Its twin: without the CA folder the same manifests fail as unknown_issuer.
    let (out, json) = probe(&["-f", examples, "--ca-dir", "/nonexistent"]).await;
    assert!(!out.status.success());
    assert!(
        json["triggers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["error"]["kind"] == "unknown_issuer"),
        "{json}"
    );
}

#[tokio::test]
async fn a_misspelt_parameter_is_shown_a_summary_ends_the_output_and_a_missing_path_exits_2() {
    let fx = Fixtures::get();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("typo.yaml"),
        format!(
            "kind: ScaledObject\nmetadata: {{name: typo, namespace: shop}}\nspec:\n  triggers:\n    - type: redis\n      metadata: {{address: \"localhost:{}\", listName: q, listLenght: \"3\", enableTLS: \"true\"}}\n",
            fx.port("REDIS_TLS_PORT")
        ),
    )
    .unwrap();
    let ca = fx.pki("custom-ca");
    let args = [
        "-f",
        dir.path().to_str().unwrap(),
        "--ca-dir",
        ca.to_str().unwrap(),
    ];
    let (out, json) = probe(&args).await;
    assert!(out.status.success(), "{json}");
    assert_eq!(
        json["triggers"][0]["unknownParameters"][0], "listLenght",
        "{json}"
    );
    assert_eq!(json["summary"]["unknownParameters"], 1, "{json}");
    // The same in text, ending with the summary line.
    let text = tokio::process::Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .arg("probe")
        .args(args)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&text.stdout);
    assert!(
        stdout.contains("unknown parameters (ignored): listLenght"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().last(),
        Some("1 triggers: 1 OK, 0 failed; 0 manifest problems; 1 unknown parameters"),
        "{stdout}"
    );
    // A path that does not exist is a usage error, named.
    let missing = tokio::process::Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .args(["probe", "-f", "/nonexistent/manifests"])
        .output()
        .await
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/manifests"));
}
