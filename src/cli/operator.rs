//! `trustscale operator`: runs ScaledObjects from manifests, serves their metrics over
//! mutual TLS, and keeps its internal certificates current.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use trustscale::manifest;
use trustscale::operator::engine::{Engine, LogSink};
use trustscale::operator::metrics::Metrics;
use trustscale::operator::pki::PkiOptions;
use trustscale::operator::service::{self, CertManager};
use trustscale::operator::watch;
use trustscale::scaler::{BuildContext, Registry};
use trustscale::trust::TrustFactory;

use super::TrustArgs;

fn parse_bool_flag(s: &str) -> Result<bool, String> {
    trustscale::trust::parse_go_bool("--enable-cert-rotation", s).map_err(|e| e.to_string())
}

#[derive(Args, Debug)]
pub struct OperatorArgs {
    /// Manifest files or folders with ScaledObjects, TriggerAuthentications and Secrets
    /// (repeatable; watched: changes apply without a restart).
    #[arg(long = "manifests", value_name = "PATH", required = true)]
    manifests: Vec<PathBuf>,
    #[command(flatten)]
    trust: TrustArgs,
    /// Folder of the internal certificates (ca.crt, ca.key, tls.crt, tls.key).
    #[arg(long, value_name = "DIR", default_value = "/certs")]
    cert_dir: PathBuf,
    /// Generate and rotate the internal certificates (false: bring your own, e.g.
    /// cert-manager; they are watched and reloaded).
    #[arg(long, value_name = "BOOL", default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool_flag)]
    enable_cert_rotation: bool,
    /// Address of the mutual-TLS metrics API.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Address of the Prometheus metrics (plain HTTP; empty to disable).
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:8080")]
    metrics_bind_address: String,
    /// DNS names for the generated serving certificate (repeatable; localhost,
    /// 127.0.0.1 and ::1 are always included).
    #[arg(long = "service-dns-name", value_name = "NAME")]
    service_dns_names: Vec<String>,
    /// Lifetime of a generated CA.
    #[arg(long, value_name = "DURATION", default_value = "10years", value_parser = humantime::parse_duration)]
    ca_lifetime: Duration,
    /// Lifetime of a generated serving certificate (renewed at 70 %).
    #[arg(long, value_name = "DURATION", default_value = "1year", value_parser = humantime::parse_duration)]
    cert_lifetime: Duration,
}

fn stamp(paths: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let (files, _) = manifest::manifest_files(paths);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        f.hash(&mut h);
        if let Ok(m) = std::fs::metadata(&f) {
            m.len().hash(&mut h);
            m.modified().ok().hash(&mut h);
        }
    }
    h.finish()
}

pub async fn run(args: OperatorArgs) -> anyhow::Result<ExitCode> {
    let mut options = args.trust.options()?;
    options.watch = true;
    let trust = TrustFactory::new(options)?;
    let metrics = Arc::new(Metrics::default());
    let pki = PkiOptions {
        ca_lifetime: args.ca_lifetime,
        cert_lifetime: args.cert_lifetime,
        dns_names: args.service_dns_names.clone(),
    };
    if args.cert_lifetime < Duration::from_secs(2) {
        // X.509 validity has one-second resolution.
        anyhow::bail!(
            "--cert-lifetime must be at least 2s (got {:?})",
            args.cert_lifetime
        );
    }
    if args.cert_lifetime >= args.ca_lifetime {
        anyhow::bail!(
            "--cert-lifetime ({:?}) must be shorter than --ca-lifetime ({:?})",
            args.cert_lifetime,
            args.ca_lifetime
        );
    }
    let certs = CertManager::start(
        args.cert_dir.clone(),
        args.enable_cert_rotation,
        pki,
        &trust,
        Arc::clone(&metrics),
    )
    .with_context(|| format!("internal certificates in {}", args.cert_dir.display()))?;
    let engine = Engine::new(
        Registry::with_builtins(),
        BuildContext {
            trust: trust.clone(),
        },
        Arc::clone(&metrics),
        Arc::new(LogSink),
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

    let api_listener = service::bind(args.listen, "--listen").await?;
    tracing::info!(address = %api_listener.local_addr()?, min_tls = %trust.options().service_min_tls, "mutual-TLS metrics API listening");
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(service::serve_api(
        api_listener,
        certs.server(),
        engine.clone(),
        stop_rx.clone(),
    )));
    if !args.metrics_bind_address.is_empty() {
        let addr: SocketAddr = args
            .metrics_bind_address
            .parse()
            .with_context(|| format!("--metrics-bind-address {:?}", args.metrics_bind_address))?;
        let l = service::bind(addr, "--metrics-bind-address").await?;
        tracing::info!(address = %l.local_addr()?, "Prometheus metrics listening");
        tasks.push(tokio::spawn(service::serve_metrics(
            l,
            Arc::clone(&metrics),
            trust.clone(),
            stop_rx.clone(),
        )));
    }
    tasks.push(tokio::spawn(Arc::clone(&certs).run(stop_rx.clone())));

    // Manifests: load now, then on every change.
    let set = manifest::load(&args.manifests);
    engine.apply(&set).await;
    metrics.reloaded("manifests", set.problems.is_empty());
    let targets: Vec<(PathBuf, notify::RecursiveMode)> = args
        .manifests
        .iter()
        .map(|p| {
            let folder = if p.is_dir() {
                p.clone()
            } else {
                p.parent().map(PathBuf::from).unwrap_or_else(|| ".".into())
            };
            (folder, notify::RecursiveMode::NonRecursive)
        })
        .collect();
    let (_watcher, mut changes) = watch::changes(&targets, "manifests");
    let mut last = stamp(&args.manifests);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            Some(()) = changes.recv() => watch::settle(&mut changes, Duration::from_millis(50)).await,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let now = stamp(&args.manifests);
        if now != last {
            last = now;
            let set = manifest::load(&args.manifests);
            metrics.reloaded("manifests", set.problems.is_empty());
            tracing::info!(
                scaledobjects = set.scaled_objects().len(),
                problems = set.problems.len(),
                "manifests changed; applying"
            );
            engine.apply(&set).await;
        }
    }
    tracing::info!("stopping: no new polls; requests under way finish");
    let _ = stop_tx.send(true);
    engine.shutdown().await;
    for t in tasks {
        let _ = t.await;
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
