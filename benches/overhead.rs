//! The SDK's own cost per poll, in instructions and allocations, which machine noise
//! cannot move: each scaler's poll against the same request made with the bare client
//! library on the same kind of TLS connection, for Redis (`LLEN`), metrics-api (reqwest's
//! GET and the JSON extraction written directly) and RabbitMQ (lapin's passive
//! `queue.declare`).
//!
//! Each figure is one run of this binary under valgrind, on a current-thread runtime:
//! - instructions: callgrind, collecting only inside the function that runs the measured
//!   polls (`--toggle-collect`), after warm-up polls on the same path;
//! - allocations: dhat, the difference between a run of 2,200 and one of 200 polls
//!   (everything else in the two runs is the same), per poll.
//!
//! `cargo bench --bench overhead` (needs `fixtures/brokers.sh start redis rabbitmq` and
//! valgrind); `-- --polls N` changes the measured count (default 1,000); `--short` (CI)
//! runs each path once natively and checks that both answer the same value.

#[path = "../examples/support/https_source.rs"]
mod https_source;
mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use trustscale::scaler::{BuildContext, Scaler, ScalerBuilder, TriggerSpec};
use trustscale::trust::{TlsContext, TrustFactory, TrustOptions};

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Child mode: the source to poll (redis, metrics-api, rabbitmq).
    #[arg(long)]
    source: Option<String>,
    /// Child mode: scaler or bare.
    #[arg(long)]
    path: Option<String>,
    /// Measured polls.
    #[arg(long, default_value_t = 1000)]
    polls: usize,
    /// Warm-up polls on the same path before the measured ones.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Child mode: the metrics-api source's URL and the folder holding its CA.
    #[arg(long)]
    url: Option<String>,
    #[arg(long)]
    ca_dir: Option<PathBuf>,
    /// CI: each path once, natively; both must answer the same value.
    #[arg(long)]
    short: bool,
    /// Only these sources (comma-separated; default all three).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const QUEUE: &str = "overhead-queue";
const LIST: &str = "overhead-list";

/// What one path polls with. One value per run, held in place: boxing the large variant
/// would add an indirection to the measured bare path.
#[allow(clippy::large_enum_variant)]
enum Client {
    Scaler(Box<dyn Scaler>),
    Redis(redis::aio::MultiplexedConnection),
    Http(reqwest::Client, String),
    /// The connection is held open for the channel.
    Amqp(lapin::Channel, #[allow(dead_code)] lapin::Connection),
}

fn spec(source: &str, env: &std::collections::BTreeMap<String, String>, url: &str) -> TriggerSpec {
    let redis = format!("localhost:{}", env["REDIS_TLS_PORT"]);
    let amqps = format!(
        "amqps://admin:adminpass@localhost:{}/",
        env["RABBITMQ_AMQPS_PORT"]
    );
    match source {
        "redis" => support::trigger(
            "o",
            0,
            "redis",
            &[
                ("address", &redis),
                ("listName", LIST),
                ("enableTLS", "true"),
            ],
        ),
        "metrics-api" => support::trigger(
            "o",
            0,
            "metrics-api",
            &[
                ("url", url),
                ("valueLocation", "queue.depth"),
                ("targetValue", "10"),
            ],
        ),
        _ => support::trigger(
            "o",
            0,
            "rabbitmq",
            &[
                ("host", &amqps),
                ("queueName", QUEUE),
                ("mode", "QueueLength"),
                ("value", "10"),
            ],
        ),
    }
}

async fn bare(
    source: &str,
    env: &std::collections::BTreeMap<String, String>,
    tls: &TlsContext,
    url: &str,
) -> anyhow::Result<Client> {
    Ok(match source {
        "redis" => {
            let tcp = tokio::net::TcpStream::connect((
                "127.0.0.1",
                env["REDIS_TLS_PORT"].parse::<u16>()?,
            ))
            .await?;
            tcp.set_nodelay(true)?;
            let stream = tls.connect("localhost", tcp).await?;
            // Configured as the scaler configures it: a response timeout.
            let (conn, driver) = redis::aio::MultiplexedConnection::new_with_config(
                &redis::RedisConnectionInfo::default(),
                stream,
                redis::AsyncConnectionConfig::new()
                    .set_response_timeout(Some(Duration::from_secs(5))),
            )
            .await?;
            tokio::spawn(driver);
            Client::Redis(conn)
        }
        "metrics-api" => {
            // The client settings a direct user sets too: a timeout, a user agent.
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .connect_timeout(Duration::from_secs(3))
                .user_agent("bare")
                .tls_backend_preconfigured((*tls.rustls_config()).clone())
                .build()?;
            Client::Http(http, url.to_string())
        }
        _ => {
            let connector = lapin::tcp::RustlsConnector::from(tls.rustls_config());
            let uri: lapin::uri::AMQPUri = format!(
                "amqps://admin:adminpass@localhost:{}/%2F",
                env["RABBITMQ_AMQPS_PORT"]
            )
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            let conn = lapin::Connection::connector(
                uri,
                lapin::runtime::default_runtime()?,
                async move |uri: lapin::uri::AMQPUri, runtime| {
                    let addrs: Vec<std::net::SocketAddr> =
                        tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
                            .await?
                            .collect();
                    let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, addrs).await?;
                    Ok(stream.into_rustls(&connector, "localhost").await?)
                },
                lapin::ConnectionProperties::default(),
            )
            .await?;
            let channel = conn.create_channel().await?;
            Client::Amqp(channel, conn)
        }
    })
}

impl Client {
    async fn poll(&mut self) -> f64 {
        match self {
            Client::Scaler(s) => s
                .poll()
                .await
                .map(|p| p.metrics[0].value)
                .unwrap_or(f64::NAN),
            Client::Redis(conn) => redis::cmd("LLEN")
                .arg(LIST)
                .query_async::<i64>(conn)
                .await
                .map_or(f64::NAN, |n| n as f64),
            Client::Http(http, url) => match http.get(url.as_str()).send().await {
                Ok(r) => match r.bytes().await {
                    Ok(body) => std::str::from_utf8(&body)
                        .map_or(f64::NAN, |t| gjson::get(t, "queue.depth").f64()),
                    Err(_) => f64::NAN,
                },
                Err(_) => f64::NAN,
            },
            Client::Amqp(ch, _) => ch
                .queue_declare(
                    QUEUE.into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    lapin::types::FieldTable::default(),
                )
                .await
                .map_or(f64::NAN, |q| f64::from(q.message_count())),
        }
    }
}

/// The measured polls; callgrind collects only while this function runs
/// (`--toggle-collect=*ts_measured_polls*`).
#[inline(never)]
fn ts_measured_polls(rt: &tokio::runtime::Runtime, client: &mut Client, n: usize) -> f64 {
    rt.block_on(async {
        let mut last = 0.0;
        for _ in 0..n {
            last = black_box(client.poll().await);
        }
        last
    })
}

fn child(args: &Args) -> anyhow::Result<()> {
    let env = support::fixture_env();
    let source = args.source.as_deref().unwrap_or_default();
    // A current-thread runtime: the whole poll runs on the measured thread. The RabbitMQ
    // client (lapin, for both paths) wants a multi-threaded one: one worker, where its
    // connection's I/O runs; the poll itself still runs here.
    let rt = if source == "rabbitmq" {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    let ca_dir = args
        .ca_dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("--ca-dir"))?;
    let url = args.url.clone().unwrap_or_default();
    let value = rt.block_on(async {
        let ctx = BuildContext {
            trust: TrustFactory::new(TrustOptions::default().ca_dirs([&ca_dir]))?,
        };
        let tls = ctx.trust.context(&Default::default(), "bare")?;
        // Both paths run in the same process state: the scaler is built (and polled once)
        // either way, and so is the bare client, so that threads (the CA folder watcher)
        // and connections are alike; only the measured path differs.
        let spec = spec(source, &env, &url);
        let built = match source {
            "redis" => {
                trustscale_redis::RedisBuilder::default()
                    .build(&spec, &ctx)
                    .await
            }
            "metrics-api" => {
                trustscale_metrics_api::MetricsApiBuilder::default()
                    .build(&spec, &ctx)
                    .await
            }
            _ => {
                trustscale_rabbitmq::RabbitMqBuilder::default()
                    .build(&spec, &ctx)
                    .await
            }
        };
        let mut scaler = Client::Scaler(built.map_err(|e| anyhow::anyhow!("{e}"))?);
        let mut bare = bare(source, &env, &tls, &url).await?;
        anyhow::ensure!(
            scaler.poll().await == bare.poll().await,
            "the two paths disagree"
        );
        let (mut client, other) = match args.path.as_deref() {
            Some("scaler") => (scaler, bare),
            _ => (bare, scaler),
        };
        for _ in 0..args.warmup {
            black_box(client.poll().await);
        }
        anyhow::Ok((client, other))
    })?;
    // The path not measured stays alive (and idle) through the measured polls.
    let (mut client, _other) = value;
    let last = ts_measured_polls(&rt, &mut client, args.polls);
    println!("value {last}");
    anyhow::ensure!(last.is_finite(), "the last poll failed");
    Ok(())
}

fn valgrind(tool: &[&str], args: &[String]) -> anyhow::Result<String> {
    let out = Command::new("valgrind")
        .args(tool)
        .arg(std::env::current_exe()?)
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "valgrind {tool:?} {args:?} failed:\n{stderr}"
    );
    Ok(stderr)
}

/// Instructions collected: with `toggle`, only inside the measured polls (on their
/// thread), else in the whole process (every thread).
fn callgrind(args: &[String], out: &Path, toggle: bool) -> anyhow::Result<u64> {
    let file = format!("--callgrind-out-file={}", out.display());
    let mut tool = vec!["--tool=callgrind", file.as_str()];
    if toggle {
        tool.push("--toggle-collect=*ts_measured_polls*");
    }
    valgrind(&tool, args)?;
    let text = std::fs::read_to_string(out)?;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary: ")
                .or_else(|| l.strip_prefix("totals: "))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{}: no summary line", out.display()))
}

/// (bytes, blocks) allocated in the whole run.
fn dhat(args: &[String]) -> anyhow::Result<(u64, u64)> {
    let stderr = valgrind(&["--tool=dhat", "--dhat-out-file=/dev/null"], args)?;
    let line = stderr
        .lines()
        .find(|l| l.contains("Total:"))
        .ok_or_else(|| anyhow::anyhow!("dhat printed no total:\n{stderr}"))?;
    let nums: Vec<u64> = line
        .split_whitespace()
        .filter_map(|w| w.replace(',', "").parse().ok())
        .collect();
    match nums[..] {
        [bytes, blocks, ..] => Ok((bytes, blocks)),
        _ => anyhow::bail!("cannot read `{line}`"),
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.source.is_some() {
        return child(&args);
    }
    let env = support::fixture_env();
    let declared = Command::new(&env["RABBITMQCTL"])
        .args(["-n", &env["RABBITMQ_NODENAME"], "eval", &format!("rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"{QUEUE}\">>), false, false, [], none, <<\"bench\">>).")])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(declared.success(), "declaring the RabbitMQ queue failed");
    let push = Command::new("redis-cli")
        .args([
            "--tls",
            "--cacert",
            &env["TRUSTSCALE_CA_CERT"],
            "-p",
            &env["REDIS_TLS_PORT"],
        ])
        .args([
            "EVAL",
            &format!(
                "redis.call('DEL', '{LIST}'); return redis.call('RPUSH', '{LIST}', 'a', 'b', 'c')"
            ),
            "0",
        ])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(push.success(), "redis-cli RPUSH failed");
    // The HTTPS source runs here, outside the measured process.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let work = tempfile::tempdir()?;
    let ca_dir = work.path().join("ca");
    let source = rt.block_on(https_source::start(&ca_dir, "overhead-source"))?;
    source.set(7);
    std::fs::copy(&env["TRUSTSCALE_CA_CERT"], ca_dir.join("fixture-ca.crt"))?;
    let base = |s: &str, path: &str, polls: usize| -> Vec<String> {
        vec![
            "--source".into(),
            s.into(),
            "--path".into(),
            path.into(),
            "--polls".into(),
            polls.to_string(),
            "--warmup".into(),
            args.warmup.to_string(),
            "--url".into(),
            source.url(),
            "--ca-dir".into(),
            ca_dir.display().to_string(),
        ]
    };
    if args.short {
        for s in ["redis", "metrics-api", "rabbitmq"] {
            let mut values = Vec::new();
            for path in ["scaler", "bare"] {
                let out = Command::new(std::env::current_exe()?)
                    .args(base(s, path, 20))
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "{s} {path}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                values.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
            }
            anyhow::ensure!(
                values[0] == values[1],
                "{s}: scaler {} vs bare {}",
                values[0],
                values[1]
            );
            println!("{s}: scaler and bare both answer {}", values[0]);
        }
        return Ok(());
    }
    println!(
        "| source | instructions per poll, measured thread: scaler / bare (ratio) | whole process, 2,200 − 200 polls: scaler / bare (ratio) | allocations per poll: scaler / bare | bytes allocated per poll: scaler / bare |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for s in ["redis", "metrics-api", "rabbitmq"] {
        if !args.only.is_empty() && !args.only.iter().any(|o| o == s) {
            continue;
        }
        let mut ins = Vec::new();
        let mut whole = Vec::new();
        let mut allocs = Vec::new();
        for path in ["scaler", "bare"] {
            let n = args.polls;
            let out = work.path().join(format!("{s}-{path}.callgrind"));
            let i = callgrind(&base(s, path, n), &out, true)?;
            ins.push(i as f64 / n as f64);
            let w0 = callgrind(&base(s, path, 200), &out, false)?;
            let w1 = callgrind(&base(s, path, 2200), &out, false)?;
            whole.push((w1 as f64 - w0 as f64) / 2000.0);
            let (b0, k0) = dhat(&base(s, path, 200))?;
            let (b1, k1) = dhat(&base(s, path, 2200))?;
            allocs.push((
                (k1 as f64 - k0 as f64) / 2000.0,
                (b1 as f64 - b0 as f64) / 2000.0,
            ));
            eprintln!(
                "{s} {path}: {:.0} instructions, {:.1} allocations, {:.0} bytes per poll",
                ins.last().unwrap(),
                allocs.last().unwrap().0,
                allocs.last().unwrap().1
            );
        }
        println!(
            "| {s} | {:.0} / {:.0} ({:.3}) | {:.0} / {:.0} ({:.3}) | {:.1} / {:.1} | {:.0} / {:.0} |",
            ins[0],
            ins[1],
            ins[0] / ins[1],
            whole[0],
            whole[1],
            whole[0] / whole[1],
            allocs[0].0,
            allocs[1].0,
            allocs[0].1,
            allocs[1].1
        );
    }
    Ok(())
}
