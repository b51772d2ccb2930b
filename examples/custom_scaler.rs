//! Writing a new scaler type against the `Scaler` trait.
//!
//! `header-value` reads a number from an HTTP response header. Its metadata is parsed with
//! `Params` (the same lookup order, defaults, quantities and error messages as the built-in
//! scalers), and its HTTP client is built from the `TrustFactory`'s context, so custom CA
//! folders, the minimum TLS version and the `unsafeSsl` policy apply to it for free. It is
//! registered next to the built-ins and run by an embedded engine.
//!
//! `cargo run --example custom_scaler`

#[path = "support/https_source.rs"]
mod https_source;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use trustscale::manifest::ManifestSet;
use trustscale::operator::engine::{Engine, LogSink};
use trustscale::operator::metrics::Metrics;
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, Params, Poll, Registry, Scaler, ScalerBuilder,
    ScalerError, TriggerSpec, parse_quantity,
};
use trustscale::trust::{TrustFactory, TrustOptions};

/// Builds `header-value` scalers.
struct HeaderValueBuilder;

/// Reads `header` of a GET on `url` as the metric.
struct HeaderValue {
    label: String,
    url: String,
    header: String,
    client: reqwest::Client,
    spec: MetricSpec,
    activation: f64,
}

#[async_trait]
impl ScalerBuilder for HeaderValueBuilder {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let p = Params::new(spec);
        let url = p.required("url")?;
        let header = p.get("header").unwrap_or_else(|| "x-queue-depth".into());
        let target = p.quantity_or("targetValue", 10.0)?;
        let activation = p.quantity_or("activationTargetValue", 0.0)?;
        // The one trust path: TLS settings (ca, cert, key, unsafeSsl, serverName, ...) go to
        // the factory, whose context gives the rustls configuration.
        let tls = ctx
            .trust
            .context(&p.tls()?, p.trigger())
            .map_err(|e| ScalerError::from_trust(p.trigger(), &e))?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls.rustls_config()).clone())
            .timeout(Duration::from_secs(3))
            .build()
            .map_err(|e| ScalerError::new(ErrorKind::Config, p.trigger(), e.to_string()))?;
        p.warn_unknown();
        Ok(Box::new(HeaderValue {
            label: spec.label.clone(),
            spec: MetricSpec {
                name: spec.metric_name(&format!("header-{header}")),
                target,
                metric_type: spec.metric_type,
            },
            url,
            header,
            client,
            activation,
        }))
    }
}

#[async_trait]
impl Scaler for HeaderValue {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| ScalerError::from_connect(&self.label, &e, None, &self.url))?;
        let text = resp
            .headers()
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ScalerError::new(
                    ErrorKind::Source,
                    &self.label,
                    format!("no {} header", self.header),
                )
            })?;
        let value = parse_quantity(text)
            .map_err(|e| ScalerError::new(ErrorKind::Source, &self.label, e))?;
        Ok(Poll::single(&self.spec.name, value, self.activation))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let ca_folder = work.path().join("ca");
    let source = https_source::start(&ca_folder, "example-source").await?;
    source.set(42);

    let mut registry = Registry::with_builtins();
    registry.register("header-value", HeaderValueBuilder);
    let trust = TrustFactory::new(TrustOptions::from_env()?.ca_dirs([&ca_folder]))?;
    let engine = Engine::new(
        registry,
        BuildContext { trust },
        Arc::new(Metrics::default()),
        Arc::new(LogSink),
    );
    let mut set = ManifestSet::default();
    set.add_text(
        std::path::Path::new("inline.yaml"),
        &format!(
            "kind: ScaledObject\nmetadata: {{name: custom, namespace: demo}}\nspec:\n  pollingInterval: 1\n  maxReplicaCount: 20\n  triggers:\n    - type: header-value\n      metadata: {{url: \"{}\", header: x-queue-depth, targetValue: \"5\"}}\n",
            source.url()
        ),
    );
    engine.apply(&set).await;
    // The first poll of a ScaledObject is spread over up to one polling interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let status = engine.status();
        if !status.is_empty() || std::time::Instant::now() > deadline {
            break status;
        }
    };
    anyhow::ensure!(
        !status.is_empty(),
        "the ScaledObject was not polled within 10 s"
    );
    let t = &status[0].triggers[0];
    match (&t.error, t.value, &status[0].decision) {
        (None, Some(v), Some(d)) => {
            println!(
                "custom scaler `header-value`: {} = {v} -> {} replicas ({})",
                t.metric.as_deref().unwrap_or("?"),
                d.replicas,
                d.reason
            );
            anyhow::ensure!(v == 42.0 && d.replicas == 9, "unexpected result");
        }
        (Some(e), _, _) => anyhow::bail!("the custom scaler failed: {}: {}", e.kind, e.message),
        _ => anyhow::bail!("no poll yet"),
    }
    engine.shutdown().await;
    Ok(())
}
