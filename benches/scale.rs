//! The scale run: the real operator (`trustscale operator --manifests`) running N triggers
//! from KEDA-format files, against the TLS broker fixtures on the same cores, while a
//! steady client asks its mutual-TLS metrics API. The trigger count, the mix per
//! ScaledObject and the interval are arguments:
//!
//! ```text
//! cargo bench --bench scale -- --triggers 100000 --mix metrics-api=4,redis=5,rabbitmq=1
//! cargo bench --bench scale --features kafka -- --triggers 100000 --mix metrics-api=4,redis=4,kafka=1,rabbitmq=1
//! cargo bench --bench scale -- --plot benches/scale-growth.csv benches/scale-growth.svg
//! ```
//!
//! Reports, for the operator process alone (the brokers, and this process with its
//! in-process HTTPS source and API client, measured apart): resident memory and CPU per
//! 1,000 triggers, connections per source, failed polls by type and kind, poll latency
//! p50/p99/max (from the operator's own `trustscale_poll_duration_seconds` histogram, as a
//! user's Prometheus sees it), and the API's latency under the steady client.
//!
//! Needs `fixtures/brokers.sh start` (with `kafka` in the mix, the Kafka fixture too).
//! `--short` (CI) runs 200 triggers at a 2 s interval for a few seconds.

#[path = "../examples/support/https_source.rs"]
mod https_source;
mod support;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use support::proc::{self as pstat, Histogram, connections, scrape};

#[derive(Parser, Debug)]
#[command(about = "The scale run (see the file's documentation)")]
struct Args {
    /// Triggers in all (a multiple of the mix's size; ScaledObjects = triggers / size).
    #[arg(long, default_value_t = 10_000)]
    triggers: usize,
    /// Triggers of each ScaledObject by type: metrics-api, redis, rabbitmq, kafka.
    #[arg(long, default_value = "metrics-api=4,redis=5,rabbitmq=1")]
    mix: String,
    /// Polling interval of every ScaledObject, seconds.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// The measured window, seconds (after every trigger has polled and one more
    /// interval has passed).
    #[arg(long, default_value_t = 120)]
    window: u64,
    /// Requests a second of the steady API client.
    #[arg(long, default_value_t = 20)]
    api_rate: u32,
    /// Append the figures as a CSV line to this file (for the growth table and plot). A
    /// relative path is taken from the workspace root (`cargo bench` runs benches in the
    /// operator's folder).
    #[arg(long, value_parser = from_root)]
    record: Option<PathBuf>,
    /// CI: 200 triggers at a 2 s interval, a 6 s window; fails when a poll or an API
    /// request fails.
    #[arg(long)]
    short: bool,
    /// Draw the plot of a CSV written by `--record` into an SVG, then exit (relative paths
    /// from the workspace root).
    #[arg(long, num_args = 2, value_names = ["CSV", "SVG"], value_parser = from_root)]
    plot: Option<Vec<PathBuf>>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

fn parse_mix(text: &str) -> anyhow::Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for part in text.split(',') {
        let (name, n) = part
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--mix: `{part}` is not TYPE=COUNT"))?;
        let n: usize = n.parse()?;
        match name {
            "metrics-api" | "redis" | "rabbitmq" => {}
            "kafka" if cfg!(feature = "kafka") => {}
            "kafka" => anyhow::bail!("--mix: kafka needs `--features kafka`"),
            other => anyhow::bail!("--mix: unknown trigger type `{other}`"),
        }
        if n > 0 {
            out.push((name.to_string(), n));
        }
    }
    anyhow::ensure!(!out.is_empty(), "--mix: no triggers");
    Ok(out)
}

struct Ports {
    source: String,
    redis: String,
    amqps: String,
    kafka: String,
}

/// One file per 1,000 ScaledObjects (each file well under the 4 MiB cap).
fn write_manifests(
    dir: &Path,
    objects: usize,
    mix: &[(String, usize)],
    interval: u64,
    p: &Ports,
    run: &str,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for chunk in 0..objects.div_ceil(1000) {
        let mut out = String::new();
        for so in chunk * 1000..objects.min((chunk + 1) * 1000) {
            let _ = write!(
                out,
                "---\napiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {{name: so-{so}, namespace: scale}}\nspec:\n  scaleTargetRef: {{name: worker-{so}}}\n  pollingInterval: {interval}\n  triggers:\n"
            );
            for (kind, n) in mix {
                for i in 0..*n {
                    let _ = match kind.as_str() {
                        "metrics-api" => writeln!(
                            out,
                            "    - type: metrics-api\n      metadata: {{url: \"{}?t={i}\", valueLocation: queue.depth, targetValue: \"10\"}}",
                            p.source
                        ),
                        "redis" => writeln!(
                            out,
                            "    - type: redis\n      metadata: {{address: \"localhost:{}\", listName: \"scale-{so}-{i}\", enableTLS: \"true\"}}",
                            p.redis
                        ),
                        "rabbitmq" => writeln!(
                            out,
                            "    - type: rabbitmq\n      metadata: {{host: \"amqps://admin:adminpass@localhost:{}/\", queueName: scale-queue, mode: QueueLength, value: \"10\"}}",
                            p.amqps
                        ),
                        _ => writeln!(
                            out,
                            "    - type: kafka\n      metadata: {{bootstrapServers: \"{}\", consumerGroup: scale-{run}-group-{}, topic: scale-{run}-topic-{}, tls: enable}}",
                            p.kafka,
                            (so * n + i) % 100,
                            (so * n + i) % 10
                        ),
                    };
                }
            }
        }
        std::fs::write(dir.join(format!("scale-{chunk:03}.yaml")), out)?;
    }
    Ok(())
}

/// The steady client of the mutual-TLS API: `rate` GETs a second of one ScaledObject's
/// metric on one keep-alive connection, with the operator's internal client identity (as
/// a follower replica presents it), each latency recorded.
struct ApiClient {
    latencies: std::sync::Mutex<Vec<u32>>,
    failed: std::sync::Mutex<Vec<String>>,
    stop: AtomicBool,
}

async fn run_api_client(client: Arc<ApiClient>, certs: PathBuf, url: String, rate: u32) {
    let http = match pstat::internal_client_tls(&certs).and_then(|tls| {
        Ok(reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .timeout(Duration::from_secs(5))
            .build()?)
    }) {
        Ok(h) => h,
        Err(e) => {
            client.failed.lock().unwrap().push(format!("client: {e}"));
            return;
        }
    };
    let mut tick = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !client.stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let start = Instant::now();
        let outcome = match http.get(&url).send().await {
            Ok(r) if r.status().is_success() => {
                r.bytes().await.map(|_| ()).map_err(|e| e.to_string())
            }
            Ok(r) => Err(format!("HTTP {}", r.status())),
            Err(e) => Err(trustscale::error::Chain(&e).to_string()),
        };
        match outcome {
            Ok(()) => {
                let us = start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                client.latencies.lock().unwrap().push(us);
            }
            Err(e) => client.failed.lock().unwrap().push(e),
        }
    }
}

fn exact_percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    f64::from(sorted[((sorted.len() - 1) as f64 * p).round() as usize]) / 1000.0
}

/// The fixture processes whose pid files are named `parts` (`run/{part}.pid`).
fn brokers(parts: &[&str]) -> Vec<(String, u32)> {
    let run = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/fixtures/run"
    ));
    let mut out = Vec::new();
    for e in std::fs::read_dir(run).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pid") else {
            continue;
        };
        if !parts.contains(&stem) {
            continue;
        }
        if let Some(pid) = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            out.push((stem.to_string(), pid));
        }
    }
    out.sort();
    out
}

/// A path as given, relative ones taken from the workspace root.
fn from_root(p: &str) -> Result<PathBuf, String> {
    let p = PathBuf::from(p);
    Ok(if p.is_relative() {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join(p)
    } else {
        p
    })
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(p) = &args.plot {
        return support::plot::growth(&p[0], &p[1]);
    }
    if args.short {
        args.triggers = 200;
        args.interval = 2;
        args.window = 6;
        args.api_rate = 20;
    }
    let mix = parse_mix(&args.mix)?;
    anyhow::ensure!(
        mix[0].0 == "metrics-api",
        "--mix must start with metrics-api (the steady API client asks so-0's first metric)"
    );
    let per_object: usize = mix.iter().map(|(_, n)| n).sum();
    anyhow::ensure!(
        args.triggers % per_object == 0 && args.triggers > 0,
        "--triggers {} is not a multiple of the mix's {per_object} triggers per ScaledObject",
        args.triggers
    );
    let objects = args.triggers / per_object;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args, mix, objects))
}

async fn run(args: Args, mix: Vec<(String, usize)>, objects: usize) -> anyhow::Result<()> {
    let env = support::fixture_env();
    let has = |t: &str| mix.iter().any(|(k, _)| k == t);
    let run_id = std::process::id().to_string();
    if has("rabbitmq") {
        let declared = Command::new(&env["RABBITMQCTL"])
            .args(["-n", &env["RABBITMQ_NODENAME"], "eval", "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"scale-queue\">>), false, false, [], none, <<\"bench\">>)."])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(declared.success(), "declaring the RabbitMQ queue failed");
    }
    #[cfg(feature = "kafka")]
    if has("kafka") {
        let ca = PathBuf::from(&env["TRUSTSCALE_CA_CERT"]);
        let config = support::kafka::config(&env["KAFKA_TLS_BOOTSTRAP"], Some(&ca), None);
        let topics: Vec<String> = (0..10)
            .map(|t| format!("scale-{run_id}-topic-{t}"))
            .collect();
        let groups: Vec<String> = (0..100)
            .map(|g| format!("scale-{run_id}-group-{g}"))
            .collect();
        support::seed_kafka(&config, None, &topics, &groups).await;
    }
    let work = tempfile::tempdir()?;
    let ca_dir = work.path().join("ca");
    let certs = work.path().join("certs");
    let source = https_source::start(&ca_dir, "scale-source").await?;
    source.set(25);
    std::fs::copy(&env["TRUSTSCALE_CA_CERT"], ca_dir.join("fixture-ca.crt"))?;
    let ports = Ports {
        source: source.url(),
        redis: env["REDIS_TLS_PORT"].clone(),
        amqps: env["RABBITMQ_AMQPS_PORT"].clone(),
        kafka: env.get("KAFKA_TLS_BOOTSTRAP").cloned().unwrap_or_default(),
    };
    let manifests = work.path().join("manifests");
    write_manifests(&manifests, objects, &mix, args.interval, &ports, &run_id)?;
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
    };
    let (api, prom) = (free()?, free()?);
    let log = work.path().join("operator.log");
    let mut child = support::proc::Child(
        Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .args(["operator", "--kube=false", "--manifests"])
            .arg(&manifests)
            .arg("--cert-dir")
            .arg(&certs)
            .arg("--ca-dir")
            .arg(&ca_dir)
            .args(["--listen", &format!("127.0.0.1:{api}")])
            .args(["--metrics-bind-address", &format!("127.0.0.1:{prom}")])
            .args([
                "--health-probe-bind-address",
                "",
                "--webhook-bind-address",
                "",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?,
    );
    let pid = child.0.id();
    let http = pstat::plain_client()?;
    let prom_url = format!("http://127.0.0.1:{prom}/metrics");
    let started = Instant::now();
    // Every trigger polled once.
    loop {
        if let Some(status) = child.0.try_wait()? {
            anyhow::bail!(
                "the operator exited ({status}): {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        let polled: f64 = match scrape(&http, &prom_url).await {
            Ok(s) => s.polls.values().map(Histogram::count).sum(),
            Err(_) => 0.0,
        };
        if polled >= args.triggers as f64 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {polled} of {} triggers polled within 10 min",
            args.triggers
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_round = started.elapsed();
    eprintln!(
        "{} triggers ({objects} ScaledObjects) all polled once {:.1} s after start",
        args.triggers,
        first_round.as_secs_f64()
    );
    // The steady client, then one more interval before measuring.
    let api_client = Arc::new(ApiClient {
        latencies: Default::default(),
        failed: Default::default(),
        stop: AtomicBool::new(false),
    });
    let api_url = format!(
        "https://localhost:{api}/apis/external.metrics.k8s.io/v1beta1/namespaces/scale/{}?labelSelector=scaledobject.keda.sh%2Fname%3Dso-0",
        METRIC
    );
    let api_task = tokio::spawn(run_api_client(
        Arc::clone(&api_client),
        certs.clone(),
        api_url,
        args.api_rate,
    ));
    tokio::time::sleep(Duration::from_secs(args.interval.min(30))).await;
    api_client.latencies.lock().unwrap().clear();
    api_client.failed.lock().unwrap().clear();
    let s0 = scrape(&http, &prom_url).await?;
    let cpu0 = pstat::cpu_seconds(pid);
    let me = std::process::id();
    let cpu_me0 = pstat::cpu_seconds(me);
    let broker_pids = brokers(&[
        if has("redis") { "redis-tls" } else { "-" },
        if has("rabbitmq") {
            "rabbitmq-rabbitmq"
        } else {
            "-"
        },
        if has("kafka") { "kafka-tls" } else { "-" },
    ]);
    let brokers0: Vec<f64> = broker_pids
        .iter()
        .map(|(_, p)| pstat::cpu_seconds(*p))
        .collect();
    let accepted0 = source.accepted.load(Ordering::Relaxed);
    let rss_start = pstat::rss_kib(pid);
    let t0 = Instant::now();
    let mut rss_samples = Vec::new();
    while t0.elapsed() < Duration::from_secs(args.window) {
        tokio::time::sleep(
            Duration::from_secs(args.window)
                .saturating_sub(t0.elapsed())
                .min(Duration::from_secs(30)),
        )
        .await;
        rss_samples.push(pstat::rss_kib(pid));
    }
    let window = t0.elapsed().as_secs_f64();
    let s1 = scrape(&http, &prom_url).await?;
    let cpu = pstat::cpu_seconds(pid) - cpu0;
    let cpu_me = pstat::cpu_seconds(me) - cpu_me0;
    let rss = pstat::rss_kib(pid);
    let hwm = pstat::status_kib(pid, "VmHWM:");
    api_client.stop.store(true, Ordering::Relaxed);
    let _ = api_task.await;
    let conns: Vec<(String, usize)> = [
        ("metrics-api (HTTPS source)", source.addr.port().to_string()),
        ("redis", ports.redis.clone()),
        ("rabbitmq", ports.amqps.clone()),
        (
            "kafka",
            ports
                .kafka
                .rsplit(':')
                .next()
                .unwrap_or_default()
                .to_string(),
        ),
    ]
    .into_iter()
    .filter(|(k, _)| has(k.split(' ').next().unwrap_or_default()))
    .map(|(k, port)| (k.to_string(), connections(pid, &port)))
    .collect();
    let accepted = source.accepted.load(Ordering::Relaxed) - accepted0;
    let mut polls = Histogram::default();
    let mut by_type = Vec::new();
    for (t, h) in &s1.polls {
        let d = h.minus(s0.polls.get(t));
        by_type.push((t.clone(), d.count(), d.quantile(0.99)));
        polls.add(&d);
    }
    let mut failed = Vec::new();
    for (k, v) in &s1.errors {
        let d = v - s0.errors.get(k).copied().unwrap_or(0.0);
        if d > 0.0 {
            failed.push(format!("{} {}: {d}", k.0, k.1));
        }
    }
    let failed_total: f64 = s1.errors.values().sum::<f64>() - s0.errors.values().sum::<f64>();
    let mut lat = api_client.latencies.lock().unwrap().clone();
    lat.sort_unstable();
    let api_failed = api_client.failed.lock().unwrap().clone();
    let k = args.triggers as f64 / 1000.0;
    let mix_text = mix
        .iter()
        .map(|(t, n)| format!("{t}={n}"))
        .collect::<Vec<_>>()
        .join(",");
    println!(
        "{} triggers ({objects} ScaledObjects of {mix_text}), polled every {} s, measured over {window:.0} s (first round {:.1} s):",
        args.triggers,
        args.interval,
        first_round.as_secs_f64()
    );
    println!(
        "  operator RSS {:.1} MiB ({:.2} MiB per 1,000 triggers), at the window's start {:.1}, peak {:.1}; every 30 s: {}",
        rss as f64 / 1024.0,
        rss as f64 / 1024.0 / k,
        rss_start as f64 / 1024.0,
        hwm as f64 / 1024.0,
        rss_samples
            .iter()
            .map(|r| format!("{:.0}", *r as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  operator CPU {:.1} mCPU ({:.2} mCPU per 1,000 triggers); threads {}",
        cpu / window * 1000.0,
        cpu / window * 1000.0 / k,
        pstat::status_kib(pid, "Threads:")
    );
    for ((name, p), c0) in broker_pids.iter().zip(&brokers0) {
        println!(
            "  apart: {name} RSS {:.1} MiB, CPU {:.1} mCPU",
            pstat::rss_kib(*p) as f64 / 1024.0,
            (pstat::cpu_seconds(*p) - c0) / window * 1000.0
        );
    }
    println!(
        "  apart: this process (HTTPS source, API client, scrapes) RSS {:.1} MiB, CPU {:.1} mCPU",
        pstat::rss_kib(me) as f64 / 1024.0,
        cpu_me / window * 1000.0
    );
    println!(
        "  connections of the operator now: {}; HTTPS connections accepted in the window: {accepted}",
        conns
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  polls {:.0}, failed {failed_total:.0}{}",
        polls.count(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" ({})", failed.join(", "))
        }
    );
    println!(
        "  poll latency (histogram) p50 {:.2} ms, p99 {:.2} ms, max ≤ {} ms; p99 by type: {}",
        polls.quantile(0.5) * 1000.0,
        polls.quantile(0.99) * 1000.0,
        polls.max_bound() * 1000.0,
        by_type
            .iter()
            .map(|(t, n, p)| format!("{t} {:.2} ms ({n:.0} polls)", p * 1000.0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  API (mTLS, {} req/s, one keep-alive connection): {} ok, {} failed; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms{}",
        args.api_rate,
        lat.len(),
        api_failed.len(),
        exact_percentile(&lat, 0.5),
        exact_percentile(&lat, 0.99),
        exact_percentile(&lat, 1.0),
        api_failed
            .first()
            .map(|e| format!(" (first failure: {e})"))
            .unwrap_or_default()
    );
    if let Some(path) = &args.record {
        let new = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("--record {}", path.display()))?;
        use std::io::Write as _;
        if new {
            writeln!(
                f,
                "triggers,mix,interval_s,window_s,rss_mib,cpu_mcpu,polls,failed,p50_ms,p99_ms,max_ms_bound,api_p99_ms,api_failed"
            )
            .with_context(|| format!("--record {}", path.display()))?;
        }
        writeln!(
            f,
            "{},{},{},{window:.0},{:.1},{:.1},{:.0},{failed_total:.0},{:.3},{:.3},{},{:.3},{}",
            args.triggers,
            mix_text.replace(',', " "),
            args.interval,
            rss as f64 / 1024.0,
            cpu / window * 1000.0,
            polls.count(),
            polls.quantile(0.5) * 1000.0,
            polls.quantile(0.99) * 1000.0,
            polls.max_bound() * 1000.0,
            exact_percentile(&lat, 0.99),
            api_failed.len()
        )
        .with_context(|| format!("--record {}", path.display()))?;
    }
    child.stop();
    if args.short {
        anyhow::ensure!(polls.count() > 0.0, "no poll in the window");
        anyhow::ensure!(failed_total == 0.0, "failed polls: {failed:?}");
        anyhow::ensure!(
            !lat.is_empty() && api_failed.is_empty(),
            "API requests failed: {api_failed:?}"
        );
    }
    Ok(())
}

/// The external metric name of so-0's first trigger (a metrics-api one, KEDA's naming).
const METRIC: &str = "s0-metric-api-queue-depth";
