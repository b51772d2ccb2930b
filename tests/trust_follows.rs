//! A CA added to a running operator's CA folder reaches every running client, and its
//! removal too: each scaler's trigger fails `unknown_issuer` while the CA is missing,
//! gives its value once the CA is added (no restart, no change to the ScaledObject), and
//! fails again once it is removed. Against the fixtures' TLS brokers and a TLS source
//! served by python's `http.server`; the data is written by clients we did not write
//! (redis-cli) or by the tests' own helpers, never by the code under test.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::fixtures::Fixtures;
use support::rabbit::Mgmt;
use support::{Child, free_port, unique};

/// An HTTPS source: python's http.server wrapped in python's ssl, with the fixtures'
/// server certificate (signed by the fixture CA).
fn python_https(body: &str) -> (Child, u16, tempfile::TempDir) {
    let fx = Fixtures::get();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stats.json"), body).unwrap();
    let port = free_port();
    let script = format!(
        r#"
import http.server, ssl
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain({chain:?}, {key:?})
server = http.server.ThreadingHTTPServer(("127.0.0.1", {port}), http.server.SimpleHTTPRequestHandler)
server.socket = ctx.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"#,
        chain = fx.pki("server-chain.crt").display().to_string(),
        key = fx.pki("server.key").display().to_string(),
    );
    let child = Child(
        Command::new("python3")
            .args(["-c", &script])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "python https did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, port, dir)
}

/// One ScaledObject's first trigger: (ScaledObject, kind of error, value).
type State = (String, Option<String>, Option<f64>);

/// Every trigger's (kind of error, value) from the operator's /scaledobjects.
fn states(api: u16, certs: &std::path::Path) -> Vec<State> {
    let Ok(json) =
        serde_json::from_str::<serde_json::Value>(&support::curl_api(api, certs, "/scaledobjects"))
    else {
        return Vec::new();
    };
    json["scaledObjects"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    let t = &o["triggers"][0];
                    (
                        o["scaledObject"].as_str().unwrap_or_default().to_string(),
                        t["error"]["kind"].as_str().map(str::to_string),
                        t["value"].as_f64(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_added_to_the_folder_reaches_every_running_client_and_its_removal_too() {
    let fx = Fixtures::get();
    let ca = fx.pki("ca.crt");

    // The data, written by clients we did not write or by the tests' own helpers.
    let list = unique("follow");
    let ok = Command::new("redis-cli")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &fx.port("REDIS_TLS_PORT").to_string(),
            "--tls",
            "--cacert",
        ])
        .arg(&ca)
        .args(["RPUSH", &list, "a", "b", "c"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&ok.stdout).trim() == "3", "{ok:?}");
    let queue = unique("follow");
    let mgmt = Mgmt::new("RABBITMQ_MGMT_URL");
    mgmt.create_queue(&queue).await;
    mgmt.publish(&queue, 2).await;
    let (_source, https_port, _data) = python_https(r#"{"queue":{"depth":11}}"#);

    let mut manifests = format!(
        r#"
kind: ScaledObject
metadata: {{name: http, namespace: follow}}
spec:
  pollingInterval: 1
  triggers:
    - type: metrics-api
      metadata: {{url: "https://localhost:{https_port}/stats.json", valueLocation: queue.depth, targetValue: "5"}}
---
kind: ScaledObject
metadata: {{name: redis, namespace: follow}}
spec:
  pollingInterval: 1
  triggers:
    - type: redis
      metadata: {{address: "localhost:{redis}", listName: {list}, enableTLS: "true"}}
---
kind: ScaledObject
metadata: {{name: rabbitmq, namespace: follow}}
spec:
  pollingInterval: 1
  triggers:
    - type: rabbitmq
      metadata: {{host: "amqps://admin:adminpass@localhost:{amqps}/", queueName: {queue}, mode: QueueLength, value: "1"}}
"#,
        redis = fx.port("REDIS_TLS_PORT"),
        amqps = fx.port("RABBITMQ_AMQPS_PORT"),
    );
    let mut want: Vec<(&str, f64)> = vec![
        ("follow/http", 11.0),
        ("follow/redis", 3.0),
        ("follow/rabbitmq", 2.0),
    ];
    #[cfg(feature = "kafka")]
    {
        let topic = unique("follow");
        let group = unique("follow-group");
        let config = support::kafka::config(&fx.var("KAFKA_TLS_BOOTSTRAP"), Some(&ca), None);
        support::kafka::create_topics(&config, &[&topic], 1).await;
        support::kafka::produce(&config, &topic, &[5]);
        support::kafka::commit(&config, &group, &topic, &[Some(1)]);
        manifests.push_str(&format!(
            r#"---
kind: ScaledObject
metadata: {{name: kafka, namespace: follow}}
spec:
  pollingInterval: 1
  triggers:
    - type: kafka
      metadata: {{bootstrapServers: "{bootstrap}", consumerGroup: {group}, topic: {topic}, lagThreshold: "10", tls: enable}}
"#,
            bootstrap = fx.var("KAFKA_TLS_BOOTSTRAP"),
        ));
        want.push(("follow/kafka", 4.0));
    }
    let work = tempfile::tempdir().unwrap();
    let (folder, certs, mdir) = (
        work.path().join("ca"),
        work.path().join("certs"),
        work.path().join("m"),
    );
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::create_dir_all(&mdir).unwrap();
    std::fs::write(mdir.join("follow.yaml"), manifests).unwrap();
    let api = free_port();
    let _operator = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--ca-dir")
            .arg(&folder)
            .arg("--manifests")
            .arg(&mdir)
            .arg("--cert-dir")
            .arg(&certs)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args([
                "--metrics-bind-address",
                "",
                "--webhook-bind-address",
                "127.0.0.1:0",
                "--health-probe-bind-address",
                "",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait_all = |what: &str, check: &dyn Fn(&State, f64) -> bool| {
        let start = Instant::now();
        let mut reached: Vec<(String, Duration)> = Vec::new();
        loop {
            let now = states(api, &certs);
            for (so, value) in &want {
                if reached.iter().any(|(r, _)| r == so) {
                    continue;
                }
                if let Some(s) = now.iter().find(|s| s.0 == *so)
                    && check(s, *value)
                {
                    reached.push((so.to_string(), start.elapsed()));
                }
            }
            if reached.len() == want.len() {
                return reached;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{what}: not every trigger within 60 s; reached {reached:?}; now {now:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let failing = |s: &State, _: f64| s.1.as_deref() == Some("unknown_issuer");
    wait_all("without the CA, unknown_issuer", &failing);

    std::fs::copy(&ca, folder.join("fixture-ca.crt")).unwrap();
    let reached = wait_all("with the CA, the values", &|s, v| {
        s.1.is_none() && s.2 == Some(v)
    });
    // Not asserted: measured, for the record.
    eprintln!("a CA added to the folder reached each running client after: {reached:?}");

    std::fs::remove_file(folder.join("fixture-ca.crt")).unwrap();
    let reached = wait_all("the CA removed, unknown_issuer again", &failing);
    eprintln!("a CA removed from the folder reached each running client after: {reached:?}");
}

/// A trigger's own `ca` file (under --allow-file-params), replaced on disk while the
/// operator runs: the running client follows it both ways, with no restart and no change
/// to the ScaledObject.
#[test]
fn a_triggers_own_ca_file_replaced_on_disk_reaches_its_running_client() {
    let fx = Fixtures::get();
    let (_source, port, _data) = python_https(r#"{"queue":{"depth":6}}"#);
    let work = tempfile::tempdir().unwrap();
    let (allowed, certs, mdir, empty) = (
        work.path().join("allowed"),
        work.path().join("certs"),
        work.path().join("m"),
        work.path().join("no-cas"),
    );
    for d in [&allowed, &mdir, &empty] {
        std::fs::create_dir_all(d).unwrap();
    }
    let ca_file = allowed.join("trigger-ca.pem");
    let stranger = support::TestCa::new("not-the-sources-ca");
    let replace = |pem: &[u8]| {
        let staged = allowed.join(".staged");
        std::fs::write(&staged, pem).unwrap();
        std::fs::rename(&staged, &ca_file).unwrap();
    };
    replace(stranger.cert_pem.as_bytes());
    std::fs::write(
        mdir.join("own-ca.yaml"),
        format!(
            "kind: ScaledObject\nmetadata: {{name: own-ca, namespace: follow}}\nspec:\n  pollingInterval: 1\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"https://localhost:{port}/stats.json\", valueLocation: queue.depth, targetValue: \"2\", ca: \"{}\"}}\n",
            ca_file.display()
        ),
    )
    .unwrap();
    let api = free_port();
    let _operator = Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .arg("operator")
            .arg("--ca-dir")
            .arg(&empty)
            .arg("--no-system-roots")
            .arg("--allow-file-params")
            .arg(&allowed)
            .arg("--manifests")
            .arg(&mdir)
            .arg("--cert-dir")
            .arg(&certs)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args([
                "--metrics-bind-address",
                "",
                "--health-probe-bind-address",
                "",
            ])
            .args(["--webhook-bind-address", ""])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let wait = |what: &str, check: &dyn Fn(&State) -> bool| {
        let start = Instant::now();
        loop {
            let now = states(api, &certs);
            if now.iter().any(|s| s.0 == "follow/own-ca" && check(s)) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(30), "{what}: {now:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("a CA that is not the source's: unknown_issuer", &|s| {
        s.1.as_deref() == Some("unknown_issuer")
    });
    replace(&std::fs::read(fx.pki("ca.crt")).unwrap());
    wait("the source's CA: the value", &|s| {
        s.1.is_none() && s.2 == Some(6.0)
    });
    replace(stranger.cert_pem.as_bytes());
    wait("the stranger again: unknown_issuer", &|s| {
        s.1.as_deref() == Some("unknown_issuer")
    });
}
