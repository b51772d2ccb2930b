//! Helpers for the RabbitMQ fixture: the management API (over TLS, trusting the fixture
//! CA), rabbitmqctl, and a raw AMQPS connection for holding unacknowledged messages.

use std::time::Duration;

use super::fixtures::Fixtures;

pub struct Mgmt {
    client: reqwest::Client,
    base: String,
}

impl Mgmt {
    pub fn new(url_var: &str) -> Mgmt {
        let fx = Fixtures::get();
        let _ = fx.port(if url_var == "RABBITMQ12_MGMT_URL" {
            "RABBITMQ12_MGMT_PORT"
        } else {
            "RABBITMQ_MGMT_PORT"
        });
        // rustls alone, trusting the fixture CA: setup never goes through the code under test.
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(super::fixture_client_config())
            .build()
            .unwrap();
        Mgmt {
            client,
            base: fx.var(url_var),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.base))
            .basic_auth("admin", Some("adminpass"))
    }

    pub async fn create_queue(&self, name: &str) {
        let r = self
            .req(reqwest::Method::PUT, &format!("/api/queues/%2F/{name}"))
            .header("content-type", "application/json")
            .body(r#"{"durable":false,"auto_delete":false}"#)
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "create queue {name}: {}",
            r.status()
        );
    }

    pub async fn delete_queue(&self, name: &str) {
        let _ = self
            .req(reqwest::Method::DELETE, &format!("/api/queues/%2F/{name}"))
            .send()
            .await;
    }

    pub async fn publish(&self, queue: &str, n: usize) {
        for _ in 0..n {
            let r = self
                .req(reqwest::Method::POST, "/api/exchanges/%2F/amq.default/publish")
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"properties":{{}},"routing_key":"{queue}","payload":"job","payload_encoding":"string"}}"#
                ))
                .send()
                .await
                .unwrap();
            let body = r.text().await.unwrap();
            assert!(
                body.contains("\"routed\":true"),
                "publish to {queue}: {body}"
            );
        }
    }
}

/// Runs the fixture's rabbitmqctl wrapper.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let fx = Fixtures::get();
    let out = std::process::Command::new(fx.var("RABBITMQCTL"))
        .args(args)
        .output()
        .expect("the rabbitmqctl wrapper written by fixtures/brokers.sh");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Open AMQP connections (on node A) whose client-provided name contains `needle`.
pub fn connections_named(needle: &str) -> usize {
    connections_named_on(&Fixtures::get().var("RABBITMQ_NODENAME"), needle)
}

/// Open AMQP connections on `node` whose client-provided name contains `needle`.
pub fn connections_named_on(node: &str, needle: &str) -> usize {
    rabbitmqctl(&[
        "-n",
        node,
        "list_connections",
        "client_properties",
        "--no-table-headers",
        "-q",
    ])
    .lines()
    .filter(|l| l.contains(needle))
    .count()
}

/// Polls `f` until it returns `want` (management API counts lag about 1.5 s).
pub async fn until_eq<F, Fut>(what: &str, want: f64, mut f: F) -> f64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = f64>,
{
    let mut last = f64::NAN;
    for _ in 0..100 {
        last = f().await;
        if last == want {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what}: still {last}, wanted {want}");
}
