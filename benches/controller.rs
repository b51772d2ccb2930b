//! Cluster mode at scale: N ScaledObjects (10,000 by default; `TRUSTSCALE_BENCH_OBJECTS`),
//! each with its own Deployment and one metrics-api trigger (an in-process HTTPS source
//! behind a custom CA folder, polled every 30 s), in the test API server, run by the real
//! binary (`trustscale operator --kube`) through a kubeconfig. Reports:
//!
//! - the time to the first full reconcile (every ScaledObject Ready with its HPA);
//! - API requests per minute in the steady state that follows, by verb and resource;
//! - the operator's resident memory (after the first reconcile, every 30 s of the steady
//!   window, peak) and CPU time per minute in that window.
//!
//! `cargo bench --bench controller` (no fixtures needed).

#[path = "../examples/support/https_source.rs"]
mod https_source;
mod support;

use support::proc::{cpu_seconds, status_kib as proc_field};

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use trustscale_test_apiserver::TestApiServer;

fn ready(s: &TestApiServer, n: usize) -> usize {
    (0..n)
        .filter(|i| {
            let name = format!("so-{i}");
            s.get("keda.sh", "scaledobjects", "shop", &name)
                .is_some_and(|o| {
                    o["status"]["conditions"][0]["status"] == "True"
                        && o["status"]["conditions"][0]["type"] == "Ready"
                })
                && s.get(
                    "autoscaling",
                    "horizontalpodautoscalers",
                    "shop",
                    &format!("keda-hpa-{name}"),
                )
                .is_some()
        })
        .count()
}

fn by_kind(requests: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for (method, full) in requests {
        let watch = full.contains("watch=true") || full.contains("watch=1");
        let path = full.split('?').next().unwrap_or_default();
        let parts: Vec<&str> = path.split('/').collect();
        // .../namespaces/{ns}/{plural}[/{name}[/{sub}]] or .../{plural}
        let resource = match parts.iter().position(|p| *p == "namespaces") {
            Some(i) if parts.len() > i + 2 => {
                let plural = parts[i + 2];
                match parts.get(i + 4) {
                    Some(sub) => format!("{plural}/{sub}"),
                    None => plural.to_string(),
                }
            }
            _ => parts.last().copied().unwrap_or_default().to_string(),
        };
        let verb = if watch { "WATCH" } else { method.as_str() };
        *out.entry(format!("{verb} {resource}")).or_default() += 1;
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("TRUSTSCALE_BENCH_OBJECTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let s = TestApiServer::start();
    for ns in ["keda", "shop"] {
        s.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}));
    }
    let work = tempfile::tempdir()?;
    let ca_dir = work.path().join("ca");
    let source = https_source::start(&ca_dir, "bench").await?;
    source.set(5);
    let created = Instant::now();
    for i in 0..n {
        s.create(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": format!("worker-{i}"), "namespace": "shop"},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": format!("worker-{i}")}},
                     "template": {"spec": {"containers": [{"name": "app", "image": "busybox"}]}}},
        }));
        s.create(json!({
            "apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject",
            "metadata": {"name": format!("so-{i}"), "namespace": "shop"},
            "spec": {
                "scaleTargetRef": {"name": format!("worker-{i}")},
                "minReplicaCount": 1, "maxReplicaCount": 10,
                "triggers": [{"type": "metrics-api", "metadata": {
                    "url": source.url(), "valueLocation": "queue.depth", "targetValue": "10",
                }}],
            },
        }));
    }
    eprintln!(
        "{n} ScaledObjects and Deployments created in {:?}",
        created.elapsed()
    );
    let before = s.requests().len();
    let log = work.path().join("operator.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_trustscale"))
        .args(["operator", "--kube", "--cert-dir"])
        .arg(work.path().join("certs"))
        .arg("--ca-dir")
        .arg(&ca_dir)
        .args(["--listen", "127.0.0.1:0", "--metrics-bind-address", ""])
        .args([
            "--health-probe-bind-address",
            "",
            "--webhook-bind-address",
            "",
        ])
        .args(["--authentication-skip-lookup"])
        .arg("--kubeconfig")
        .arg(s.kubeconfig())
        .env("POD_NAMESPACE", "keda")
        .env(
            "RUST_LOG",
            std::env::var("TRUSTSCALE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()?;
    let pid = child.id();
    let start = Instant::now();
    let mut last = 0;
    loop {
        let r = ready(&s, n);
        if r != last {
            eprintln!(
                "{:>6.1} s: {r}/{n} ready with their HPA",
                start.elapsed().as_secs_f64()
            );
            last = r;
        }
        if r == n {
            break;
        }
        if start.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            anyhow::bail!(
                "not all ready within 15 min ({r}/{n}); log: {}",
                log.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let first = start.elapsed();
    let first_requests = s.requests().len() - before;
    let first_kinds = by_kind(&s.requests()[before..]);
    let rss_first = proc_field(pid, "VmRSS:");
    // Settle, then the steady window.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let r0 = s.requests().len();
    let cpu0 = cpu_seconds(pid);
    let t0 = Instant::now();
    // The steady window (60 s; `TRUSTSCALE_BENCH_STEADY_SECS`), RSS sampled every 30 s.
    let steady_secs: u64 = std::env::var("TRUSTSCALE_BENCH_STEADY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let mut samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(steady_secs) {
        tokio::time::sleep(Duration::from_secs(30).min(Duration::from_secs(steady_secs))).await;
        samples.push(format!("{:.0}", proc_field(pid, "VmRSS:") as f64 / 1024.0));
    }
    let minute = t0.elapsed().as_secs_f64() / 60.0;
    let requests = s.requests();
    let steady = &requests[r0..];
    let cpu = cpu_seconds(pid) - cpu0;
    let rss = proc_field(pid, "VmRSS:");
    let hwm = proc_field(pid, "VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    if let Ok(keep) = std::env::var("TRUSTSCALE_BENCH_KEEP_LOG") {
        std::fs::copy(&log, &keep)?;
    }

    println!("| what | measured |");
    println!("| --- | --- |");
    println!(
        "| ScaledObjects (each its own Deployment, one metrics-api trigger over TLS, polled every 30 s) | {n} |"
    );
    println!(
        "| first full reconcile (all Ready with their HPA) | {:.1} s, {} API requests |",
        first.as_secs_f64(),
        first_requests
    );
    for (k, v) in first_kinds {
        println!("| … {k} | {v} |");
    }
    println!(
        "| API requests per minute, steady state | {:.0} |",
        steady.len() as f64 / minute
    );
    for (k, v) in by_kind(steady) {
        println!("| … {k} | {:.0}/min |", v as f64 / minute);
    }
    println!(
        "| operator RSS after the first reconcile / after the steady window / peak | {:.1} / {:.1} / {:.1} MiB |",
        rss_first as f64 / 1024.0,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    println!(
        "| operator RSS every 30 s of the steady window | {} MiB |",
        samples.join(", ")
    );
    println!(
        "| operator CPU in the steady window, per minute | {:.1} s ({:.0} % of one core) |",
        cpu / minute,
        100.0 * cpu / (60.0 * minute)
    );
    println!(
        "| source connections accepted | {} |",
        source.accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
    Ok(())
}
