//! `trustscale trust inspect`, run as a user runs it.

mod support;

use std::process::Output;

use support::{TestCa, TestServer, Versions, ca_dir, server_config};

async fn inspect(args: &[&str], env: &[(&str, &str)]) -> (Output, serde_json::Value) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_trustscale"));
    cmd.arg("trust")
        .arg("inspect")
        .args(args)
        .env_remove("KEDA_HTTP_MIN_TLS_VERSION");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out, json)
}

#[tokio::test]
async fn inspect_reports_anchors_files_and_a_good_handshake_as_json() {
    let ca = TestCa::new("cli CA");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.crt"));
    let server = TestServer::start(server_config(&ca.server(), Versions::Both, None)).await;
    let d = dir.path().to_str().unwrap();
    let (out, json) = inspect(
        &["--ca-dir", d, "--connect", &server.target(), "--json"],
        &[],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["anchors"]["custom"], 1);
    assert!(
        json["anchors"]["system"].as_u64().unwrap() > 0,
        "system roots are merged in"
    );
    assert_eq!(json["files"][0]["status"], "loaded");
    assert_eq!(json["handshake"]["ok"], true);
    assert_eq!(json["handshake"]["version"], "TLSv1_3");
    assert_eq!(json["handshake"]["chain"][1]["subject"], "CN=cli CA");
}

#[tokio::test]
async fn inspect_fails_with_a_classified_error_for_an_untrusted_server() {
    let (trusted, other) = (TestCa::new("trusted"), TestCa::new("other"));
    let dir = ca_dir();
    trusted.write_pem(&dir.path().join("ca.crt"));
    let server = TestServer::start(server_config(&other.server(), Versions::Only12, None)).await;
    let d = dir.path().to_str().unwrap();
    let (out, json) = inspect(
        &["--ca-dir", d, "--connect", &server.target(), "--json"],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["handshake"]["ok"], false);
    assert_eq!(json["handshake"]["error"]["kind"], "unknown_issuer");

    let (out, json) = inspect(
        &[
            "--ca-dir",
            d,
            "--connect",
            &server.target(),
            "--json",
            "--min-tls",
            "TLS13",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json["handshake"]["error"]["kind"], "protocol_version");

    let (out, json) = inspect(
        &[
            "--ca-dir",
            d,
            "--connect",
            &server.target(),
            "--json",
            "--unsafe-ssl",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "unsafeSsl still connects");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsafeSsl is deprecated"));
    assert_eq!(json["handshake"]["ok"], true);
}

#[tokio::test]
async fn inspect_lists_rejected_files_and_exits_3() {
    let dir = ca_dir();
    std::fs::write(dir.path().join("junk.pem"), "junk").unwrap();
    let (out, json) = inspect(&["--ca-dir", dir.path().to_str().unwrap(), "--json"], &[]).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json["files"][0]["status"], "rejected");
    assert!(
        json["files"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("neither PEM")
    );
    // Said once: in the report, not again as a log line.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("junk.pem"), "{err}");
}

#[tokio::test]
async fn an_invalid_min_tls_version_is_a_startup_error_listing_the_allowed_values() {
    let (out, _) = inspect(&[], &[("KEDA_HTTP_MIN_TLS_VERSION", "TLS14")]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KEDA_HTTP_MIN_TLS_VERSION") && err.contains("TLS10, TLS11, TLS12, TLS13"),
        "{err}"
    );
}

#[tokio::test]
async fn a_plaintext_port_is_said_not_to_speak_tls() {
    // A plaintext HTTP server we did not write (python's http.server) on one port, a TLS
    // server on another: only the plaintext one is `not_tls`.
    let plain = support::python_http(&[("index.html", "hello")]);
    let (out, json) = inspect(
        &[
            "--ca-dir",
            "/nonexistent",
            "--connect",
            &format!("127.0.0.1:{}", plain.port),
            "--json",
        ],
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{json}");
    let text = json.to_string();
    assert!(text.contains("\"not_tls\""), "{text}");
    assert!(text.contains("does not speak TLS"), "{text}");
    let ca = TestCa::new("tls twin");
    let server = TestServer::start(server_config(&ca.server(), Versions::Both, None)).await;
    let (_, json) = inspect(
        &[
            "--ca-dir",
            "/nonexistent",
            "--connect",
            &server.target(),
            "--json",
        ],
        &[],
    )
    .await;
    let text = json.to_string();
    assert!(
        text.contains("\"unknown_issuer\"") && !text.contains("not_tls"),
        "{text}"
    );
}

/// A TLS 1.2-only server offering only `suites` (IANA names).
async fn tls12_server_with(ca: &TestCa, suites: &[&str]) -> TestServer {
    let mut provider = rustls::crypto::ring::default_provider();
    provider
        .cipher_suites
        .retain(|s| s.suite().as_str().is_some_and(|n| suites.contains(&n)));
    let leaf = ca.server();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(leaf.chain.clone(), leaf.key())
        .unwrap();
    TestServer::start(std::sync::Arc::new(config)).await
}

#[tokio::test]
async fn keda_http_tls_cipher_list_limits_the_tls12_suites_clients_offer() {
    let ca = TestCa::new("cipher CA");
    let dir = ca_dir();
    ca.write_pem(&dir.path().join("ca.crt"));
    let d = dir.path().to_str().unwrap();
    let aes256 = "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384";
    let server = tls12_server_with(&ca, &[aes256, "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]).await;
    let (out, json) = inspect(
        &["--ca-dir", d, "--connect", &server.target(), "--json"],
        &[("KEDA_HTTP_TLS_CIPHER_LIST", aes256)],
    )
    .await;
    assert!(out.status.success(), "{json}");
    assert_eq!(json["handshake"]["cipherSuite"], aes256, "{json}");
    // The twin: a server that has only a suite the list leaves out.
    let aes128_only = tls12_server_with(&ca, &["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"]).await;
    let (out, json) = inspect(
        &["--ca-dir", d, "--connect", &aes128_only.target(), "--json"],
        &[("KEDA_HTTP_TLS_CIPHER_LIST", aes256)],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{json}");
    assert_eq!(json["handshake"]["ok"], false, "{json}");
    // Without the list, the same server is reached.
    let (out, _) = inspect(
        &["--ca-dir", d, "--connect", &aes128_only.target(), "--json"],
        &[],
    )
    .await;
    assert!(out.status.success());
    // An unknown name is a startup error that lists the valid ones.
    let (out, _) = inspect(
        &[],
        &[("KEDA_HTTP_TLS_CIPHER_LIST", "TLS_RSA_WITH_RC4_128_SHA")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("KEDA_HTTP_TLS_CIPHER_LIST")
            && err.contains("TLS_RSA_WITH_RC4_128_SHA")
            && err.contains(aes256),
        "{err}"
    );
}
