//! The operator engine inside someone else's program: its own registry, its own trust
//! options, and its own decision sink (here a channel the program reads).
//!
//! `cargo run --example embed_operator`

#[path = "support/https_source.rs"]
mod https_source;

use std::sync::Arc;
use std::time::Duration;

use trustscale::scaler::{BuildContext, ObjectRef, Registry};
use trustscale::trust::{TlsVersion, TrustFactory, TrustOptions, UnsafeSslPolicy};
use trustscale_operator::decide::Decision;
use trustscale_operator::engine::{DecisionSink, Engine};
use trustscale_operator::manifest::ManifestSet;
use trustscale_operator::metrics::Metrics;

/// Sends every changed decision to the program.
struct ChannelSink(tokio::sync::mpsc::UnboundedSender<(ObjectRef, Decision)>);

impl DecisionSink for ChannelSink {
    fn decided(&self, object: &ObjectRef, decision: &Decision, changed: bool) {
        if changed {
            let _ = self.0.send((object.clone(), decision.clone()));
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let ca_folder = work.path().join("ca");
    let source = https_source::start(&ca_folder, "embedded-source").await?;

    // Trust as this program wants it: only our CA folder, TLS 1.3 for clients, and
    // `unsafeSsl` refused outright.
    let trust = TrustFactory::new(
        TrustOptions::default()
            .ca_dirs([&ca_folder])
            .system_roots(false)
            .client_min_tls(TlsVersion::Tls13)
            .unsafe_ssl(UnsafeSslPolicy::Forbid)
            .watch(true),
    )?;
    // Only the scalers this program wants.
    let mut registry = Registry::new();
    registry.register(
        "metrics-api",
        trustscale_metrics_api::MetricsApiBuilder::default(),
    );
    let (tx, mut decisions) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(
        registry,
        BuildContext { trust },
        Arc::new(Metrics::default()),
        Arc::new(ChannelSink(tx)),
    );

    let mut set = ManifestSet::default();
    set.add_text(
        std::path::Path::new("embedded.yaml"),
        &format!(
            "kind: ScaledObject\nmetadata: {{name: worker, namespace: app}}\nspec:\n  pollingInterval: 1\n  cooldownPeriod: 2\n  triggers:\n    - type: metrics-api\n      metadata: {{url: \"{}\", valueLocation: queue.depth, targetValue: \"10\"}}\n    - type: metrics-api\n      metadata: {{url: \"{}\", valueLocation: queue.depth, targetValue: \"10\", unsafeSsl: \"true\"}}\n",
            source.url(),
            source.url()
        ),
    );
    engine
        .apply(&set, &trustscale_operator::manifest::Env::process())
        .await;
    // Each depth, and the replicas KEDA's formula gives for it (0 after the cooldown).
    for (depth, want) in [(25, 3), (70, 7), (0, 0)] {
        source.set(depth);
        loop {
            let (so, d) = tokio::time::timeout(Duration::from_secs(10), decisions.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("engine stopped"))?;
            println!(
                "queue depth {depth:>3}: {so} -> {} replicas ({})",
                d.replicas, d.reason
            );
            if d.replicas == want {
                break;
            }
        }
    }
    let status = engine.status();
    let refused = &status[0].triggers[1];
    println!(
        "the second trigger asked for unsafeSsl and was refused by this program's policy: {}",
        refused
            .error
            .as_ref()
            .map_or("(not refused?)".to_string(), |e| e.message.clone())
    );
    anyhow::ensure!(
        refused.error.is_some(),
        "unsafeSsl should have been refused"
    );
    engine.shutdown().await;
    Ok(())
}
