//! A scaler of your own, run by the real operator.
//!
//! `header-value` (`examples/external-scaler`, a crate outside this workspace that
//! depends on the SDK alone) reads a number from an HTTP response header. This program
//! registers it next to the built-ins and hands the registry to the operator's runner,
//! which gives it everything the `trustscale operator` command has: the mutual-TLS
//! external metrics API, generated and rotated internal certificates, manifest watching,
//! Prometheus and a graceful shutdown. It then reads the metric back through the
//! mutual-TLS API with the operator's own internal certificates.
//!
//! `cargo run --example custom_scaler`

#[path = "support/https_source.rs"]
mod https_source;
// The scaler's crate lives outside this workspace (CI checks it there, on the SDK alone);
// its source is compiled into this example as a module so that the example needs no
// dependency on it.
#[path = "external-scaler/src/lib.rs"]
mod header_value_scaler;

use std::time::Duration;

use header_value_scaler::HeaderValueBuilder;
use trustscale::trust::{Secret, TlsSettings, TrustFactory, TrustOptions};
use trustscale_operator::{Operator, OperatorConfig, builtins};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let ca_folder = work.path().join("ca");
    let source = https_source::start(&ca_folder, "example-source").await?;
    source.set(42);

    // A manifest folder with one ScaledObject on the custom trigger type.
    let manifests = work.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("custom.yaml"),
        format!(
            "kind: ScaledObject\nmetadata: {{name: custom, namespace: demo}}\nspec:\n  pollingInterval: 1\n  maxReplicaCount: 20\n  triggers:\n    - type: header-value\n      metadata: {{url: \"{}\", header: x-queue-depth, targetValue: \"5\"}}\n",
            source.url()
        ),
    )?;

    // The built-ins plus ours; the whole operator around them.
    let mut registry = builtins::registry();
    registry.register("header-value", HeaderValueBuilder::default());
    let cert_dir = work.path().join("certs");
    let config = OperatorConfig::new([&manifests], &cert_dir)
        .trust(TrustOptions::from_env()?.ca_dirs([&ca_folder]))
        .listen("127.0.0.1:0".parse()?)
        .metrics_listen(None)
        .health_listen(None)
        .webhook_listen(None);
    let operator = Operator::start(config, registry).await?;

    // The first poll of a ScaledObject is spread over up to one polling interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (value, replicas) = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = operator.engine().status();
        if let Some(so) = status.first()
            && let (Some(t), Some(d)) = (so.triggers.first(), &so.decision)
        {
            if let Some(e) = &t.error {
                anyhow::bail!("the custom scaler failed: {}: {}", e.kind, e.message);
            }
            if let Some(v) = t.value {
                println!(
                    "custom scaler `header-value`: {} = {v} -> {} replicas ({})",
                    t.metric.as_deref().unwrap_or("?"),
                    d.replicas,
                    d.reason
                );
                break (v, d.replicas);
            }
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the ScaledObject was not polled within 15 s"
        );
    };
    anyhow::ensure!(value == 42.0 && replicas == 9, "unexpected result");

    // The metric, as the kube-apiserver's aggregator asks for it, over mutual TLS with the
    // internal certificates the operator generated (trusting its CA only).
    let client_trust = TrustFactory::new(
        TrustOptions::default()
            .ca_dirs(Vec::<std::path::PathBuf>::new())
            .system_roots(false),
    )?;
    let settings = TlsSettings {
        ca: Some(cert_dir.join("ca.crt").display().to_string()),
        cert: Some(cert_dir.join("tls.crt").display().to_string()),
        key: Some(Secret::new(cert_dir.join("tls.key").display().to_string())),
        ..Default::default()
    };
    let ctx = client_trust.context(&settings, "example client")?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured((*ctx.rustls_config()).clone())
        .timeout(Duration::from_secs(5))
        .build()?;
    let url = format!(
        "https://localhost:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/demo/s0-header-x-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dcustom",
        operator.api_addr().port()
    );
    let bytes = client
        .get(&url)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?;
    let body: serde_json::Value = serde_json::from_slice(&bytes)?;
    let served = body["items"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    println!("the operator's mutual-TLS API serves it: {served}");
    anyhow::ensure!(served == "42", "the API served {body}");

    operator.shutdown().await;
    Ok(())
}
