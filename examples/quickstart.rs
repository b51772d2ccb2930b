//! trustscale's main job in one run, with nothing installed:
//!
//! 1. a CA is made and dropped into a temporary custom CA folder (as `/custom/ca`);
//! 2. an HTTPS metrics source starts, with a certificate signed by that CA;
//! 3. the operator engine runs a KEDA ScaledObject pointing at it, trusting it through the
//!    CA folder (no `unsafeSsl`), and the metric and the scaling decision follow the
//!    source's value;
//! 4. the operator's internal certificate rotates (short lifetimes) while a mutual-TLS
//!    client keeps reading the external metrics API, without one failed request.
//!
//! `cargo run --example quickstart`

#[path = "support/https_source.rs"]
mod https_source;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use trustscale::scaler::BuildContext;
use trustscale::trust::{TrustFactory, TrustOptions};
use trustscale_operator::certs::CertManager;
use trustscale_operator::engine::{Engine, LogSink};
use trustscale_operator::manifest::ManifestSet;
use trustscale_operator::metrics::Metrics;
use trustscale_operator::pki::{self, PkiOptions};
use trustscale_operator::service;

const MANIFEST: &str = r#"
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: orders-worker, namespace: shop}
spec:
  scaleTargetRef: {name: orders-worker}
  pollingInterval: 1
  cooldownPeriod: 2
  maxReplicaCount: 10
  triggers:
    - type: metrics-api
      metadata:
        url: "URL"
        valueLocation: queue.depth
        targetValue: "10"
"#;

/// One GET of the external metrics API over mutual TLS, as the Kubernetes API server would.
async fn read_metric(
    addr: std::net::SocketAddr,
    certs: &std::path::Path,
    trusted_ca: &[rustls::pki_types::CertificateDer<'static>],
) -> anyhow::Result<(String, String)> {
    let set = pki::load(certs)?;
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted_ca {
        roots.add(c.clone())?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(set.chain, set.key)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect("localhost".try_into()?, tcp)
        .await?;
    let serial = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| {
            x509_parser::parse_x509_certificate(c.as_ref())
                .ok()
                .map(|(_, x)| x.raw_serial_as_string())
        })
        .unwrap_or_default();
    let path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/s0-metric-api-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dorders-worker";
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tls.read_to_string(&mut out).await?;
    anyhow::ensure!(
        out.starts_with("HTTP/1.1 200"),
        "API answered: {}",
        out.lines().next().unwrap_or_default()
    );
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    let value = serde_json::from_str::<serde_json::Value>(&body)?["items"][0]["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((value, serial))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let work = tempfile::tempdir()?;
    let ca_folder = work.path().join("custom-ca");

    println!(
        "1. Made a CA for the metrics source and put it in the custom CA folder {}",
        ca_folder.display()
    );
    let source = https_source::start(&ca_folder, "quickstart-source").await?;
    println!(
        "2. Started an HTTPS metrics source at {} (its certificate is signed by that CA)",
        source.url()
    );

    let trust = TrustFactory::new(TrustOptions::from_env()?.ca_dirs([&ca_folder]).watch(true))?;
    let anchors = trust.anchors();
    println!(
        "3. The trust factory merged {} system roots with {} CA from the folder; no unsafeSsl anywhere",
        anchors.system_count(),
        anchors.custom_count()
    );
    let metrics = Arc::new(Metrics::default());
    let engine = Engine::new(
        trustscale_operator::builtins::registry(),
        BuildContext {
            trust: trust.clone(),
        },
        Arc::clone(&metrics),
        Arc::new(LogSink),
    );
    let mut set = ManifestSet::default();
    set.add_text(
        std::path::Path::new("quickstart.yaml"),
        &MANIFEST.replace("URL", &source.url()),
    );
    engine
        .apply(&set, &trustscale_operator::manifest::Env::process())
        .await;

    println!(
        "4. Running ScaledObject shop/orders-worker (target 10 per replica, polled every second):"
    );
    for (depth, want) in [(0u64, 0u32), (35, 4), (120, 10), (0, 0)] {
        source.set(depth);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let status = engine.status();
            anyhow::ensure!(
                Instant::now() < deadline,
                "no decision for queue depth {depth} in time"
            );
            // The first poll of a ScaledObject is spread over up to one interval.
            let Some(so) = status.first() else { continue };
            let t = &so.triggers[0];
            if let Some(e) = &t.error {
                anyhow::bail!("the trigger failed: {}: {}", e.kind, e.message);
            }
            if let (Some(v), Some(d)) = (t.value, &so.decision)
                && v == depth as f64
                && d.replicas == want
            {
                println!(
                    "   queue depth {depth:>3} -> metric {v:>5} -> {:>2} replicas ({})",
                    d.replicas, d.reason
                );
                break;
            }
        }
    }

    let cert_dir = work.path().join("certs");
    println!(
        "5. Internal certificates in {} with a 3 s leaf lifetime (renewed at 70 %):",
        cert_dir.display()
    );
    let opts = PkiOptions {
        ca_lifetime: Duration::from_secs(3600),
        cert_lifetime: Duration::from_secs(3),
        dns_names: vec![],
    };
    let certs = CertManager::start(
        cert_dir.clone(),
        true,
        opts,
        &trust,
        None,
        Arc::clone(&metrics),
    )?;
    let (stop, rx) = tokio::sync::watch::channel(false);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(service::serve_api(
        listener,
        certs.server(),
        certs.authenticator(),
        engine.clone(),
        rx.clone(),
    ));
    tokio::spawn(Arc::clone(&certs).run(rx));
    source.set(55);
    let first_ca = pki::load(&cert_dir)?.ca;
    let (mut ok, mut failed, mut serials) = (0, 0, std::collections::BTreeSet::new());
    let until = Instant::now() + Duration::from_secs(5);
    let mut last_value = String::new();
    while Instant::now() < until {
        match read_metric(addr, &cert_dir, &first_ca).await {
            Ok((value, serial)) => {
                ok += 1;
                serials.insert(serial);
                last_value = value;
            }
            Err(e) => {
                failed += 1;
                eprintln!("   request failed: {e}");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "   an mTLS client read the external metrics API {ok} times while the serving certificate rotated {} times: {failed} failed; last value {last_value}",
        serials.len().saturating_sub(1)
    );
    let _ = stop.send(true);
    engine.shutdown().await;
    anyhow::ensure!(
        failed == 0 && serials.len() >= 2,
        "rotation under reads did not go as expected"
    );
    println!(
        "Done: the source was trusted through the CA folder, decisions followed the metric, and rotation lost nothing."
    );
    Ok(())
}
