//! Faults under load, each a scripted run of the real operator that prints its figures:
//!
//! - `broker`: a Redis server of this run's own, killed with SIGKILL and restarted, then
//!   cut off without dying by a fault proxy of ours (connections refused, blackholed,
//!   reset); the same for a RabbitMQ node of the run's own (`fixtures/brokers.sh start
//!   rabbitmqchaos`) and, with `--features kafka`, the TLS front of a Kafka broker of its
//!   own (killed, or stopped with SIGSTOP).
//!   Other sources' triggers keep polling; failures are classified; recovery, connections
//!   and memory are compared with before.
//! - `rotation`: the internal certificates renewed every ~10 s and the CA once in the
//!   middle, while clients send requests to the mutual-TLS API without pause.
//! - `ca-churn`: files of the CA folder added, replaced and removed every few seconds
//!   while the triggers whose CAs never leave keep polling.
//! - `kill-rotation`: the operator killed with SIGKILL at random moments while it rotates
//!   every 2 s, N times; the folder is checked with openssl each time (the key matches the
//!   leaf, the leaf chains to a CA of `ca.crt`), and the restarted operator serves.
//! - `soak`: `broker`'s load and faults (one every 5 minutes, in turn) with the recurring
//!   activities of the others all at once: leaf rotation, CA-folder churn and an API
//!   client. RSS growth and open descriptors from a base line taken once those run.
//!
//! ```text
//! cargo bench --bench chaos -- broker [--triggers 10000] [--fault-secs 30] [--interval 30]
//! cargo bench --bench chaos -- rotation [--secs 600]
//! cargo bench --bench chaos -- ca-churn [--secs 600]
//! cargo bench --bench chaos -- kill-rotation [--rounds 100]
//! cargo bench --bench chaos -- soak [--secs 3600]
//! cargo bench --bench chaos -- all --short        # CI: every scenario in seconds
//! ```
//!
//! Needs `fixtures/brokers.sh start redis rabbitmq`. The brokers that are killed are this
//! run's own; the shared fixtures are only ever cut off through a proxy.

#[path = "../examples/support/https_source.rs"]
mod https_source;
mod support;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use support::proc::{self as pstat, Child, Scrape, connections, scrape};
use tokio::io::AsyncWriteExt;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// The scenario.
    scenario: Scenario,
    /// Triggers in all (metrics-api, redis and rabbitmq in the ratio 4:5:1).
    #[arg(long, default_value_t = 10_000)]
    triggers: usize,
    /// Polling interval, seconds.
    #[arg(long, default_value_t = 30)]
    interval: u64,
    /// How long each broker fault lasts, seconds.
    #[arg(long, default_value_t = 30)]
    fault_secs: u64,
    /// How long `rotation`, `ca-churn` and `soak` run, seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// `kill-rotation` rounds.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// CI: 200 triggers, a 2 s interval, 3 s faults, 12 s runs, 5 rounds; fails when a
    /// figure is off its goal.
    #[arg(long)]
    short: bool,
    /// `broker` and `soak`: only the faults whose name holds this (e.g. `redis refused`,
    /// `kafka`).
    #[arg(long)]
    only: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Scenario {
    Broker,
    Rotation,
    CaChurn,
    KillRotation,
    Soak,
    All,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.short {
        args.triggers = 200;
        args.interval = 2;
        args.fault_secs = 3;
        args.secs = 12;
        args.rounds = 5;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let all = args.scenario == Scenario::All;
        let mut failures = Vec::new();
        if all || args.scenario == Scenario::Broker {
            failures.extend(broker(&args).await?);
        }
        if all || args.scenario == Scenario::Rotation {
            failures.extend(rotation(&args, args.secs).await?);
        }
        if all || args.scenario == Scenario::CaChurn {
            failures.extend(ca_churn(&args, args.secs).await?);
        }
        if all || args.scenario == Scenario::KillRotation {
            failures.extend(kill_rotation(&args).await?);
        }
        if all || args.scenario == Scenario::Soak {
            failures.extend(soak(&args).await?);
        }
        if failures.is_empty() {
            println!("all figures within their goals");
            Ok(())
        } else {
            for f in &failures {
                println!("OFF GOAL: {f}");
            }
            anyhow::bail!("{} figures off their goals", failures.len())
        }
    })
}

// ---------------------------------------------------------------------------------------
// The operator under test and its sources.

struct Rig {
    work: tempfile::TempDir,
    env: BTreeMap<String, String>,
    source: https_source::Source,
    ca_dir: PathBuf,
    certs: PathBuf,
    api: u16,
    prom: u16,
    http: reqwest::Client,
    child: Option<Child>,
    /// The operator's `RUST_LOG`.
    log_filter: String,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Rig {
    async fn new() -> anyhow::Result<Rig> {
        let env = support::fixture_env();
        let work = tempfile::tempdir()?;
        let ca_dir = work.path().join("ca");
        let source = https_source::start(&ca_dir, "chaos-source").await?;
        source.set(25);
        std::fs::copy(&env["TRUSTSCALE_CA_CERT"], ca_dir.join("fixture-ca.crt"))?;
        let declared = Command::new(&env["RABBITMQCTL"])
            .args(["-n", &env["RABBITMQ_NODENAME"], "eval", "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"chaos-queue\">>), false, false, [], none, <<\"bench\">>)."])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(declared.success(), "declaring the RabbitMQ queue failed");
        Ok(Rig {
            certs: work.path().join("certs"),
            api: free_port()?,
            prom: free_port()?,
            http: pstat::plain_client()?,
            work,
            env,
            source,
            ca_dir,
            child: None,
            log_filter: "warn".to_string(),
        })
    }

    /// Writes `triggers` triggers (4 metrics-api : 5 redis : 1 rabbitmq per ScaledObject)
    /// against `redis` and `amqps` (host:port).
    fn manifests(
        &self,
        triggers: usize,
        interval: u64,
        redis: &str,
        amqps: &str,
        kafka: Option<&str>,
    ) -> anyhow::Result<PathBuf> {
        let dir = self.work.path().join("manifests");
        std::fs::create_dir_all(&dir)?;
        let objects = triggers.div_ceil(10);
        for chunk in 0..objects.div_ceil(1000) {
            let mut out = String::new();
            for so in chunk * 1000..objects.min((chunk + 1) * 1000) {
                let _ = write!(
                    out,
                    "---\napiVersion: keda.sh/v1alpha1\nkind: ScaledObject\nmetadata: {{name: so-{so}, namespace: chaos}}\nspec:\n  scaleTargetRef: {{name: w-{so}}}\n  pollingInterval: {interval}\n  triggers:\n"
                );
                for i in 0..4 {
                    let _ = writeln!(
                        out,
                        "    - type: metrics-api\n      metadata: {{url: \"{}?t={i}\", valueLocation: queue.depth, targetValue: \"10\"}}",
                        self.source.url()
                    );
                }
                for i in 0..if kafka.is_some() { 4 } else { 5 } {
                    let _ = writeln!(
                        out,
                        "    - type: redis\n      metadata: {{address: \"{redis}\", listName: \"chaos-{so}-{i}\", enableTLS: \"true\"}}"
                    );
                }
                if let Some(bootstrap) = kafka {
                    let _ = writeln!(
                        out,
                        "    - type: kafka\n      metadata: {{bootstrapServers: \"{bootstrap}\", consumerGroup: chaos-group-{}, topic: chaos-topic-{}, tls: enable}}",
                        so % 100,
                        so % 10
                    );
                }
                let _ = writeln!(
                    out,
                    "    - type: rabbitmq\n      metadata: {{host: \"amqps://admin:adminpass@{amqps}/\", queueName: chaos-queue, mode: QueueLength, value: \"10\"}}"
                );
            }
            std::fs::write(dir.join(format!("chaos-{chunk:03}.yaml")), out)?;
        }
        Ok(dir)
    }

    fn start(&mut self, manifests: &Path, extra: &[&str]) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.work.path().join("operator.log"))?;
        let child = Command::new(env!("CARGO_BIN_EXE_trustscale"))
            .args(["operator", "--kube=false", "--manifests"])
            .arg(manifests)
            .arg("--cert-dir")
            .arg(&self.certs)
            .arg("--ca-dir")
            .arg(&self.ca_dir)
            .args(["--listen", &format!("127.0.0.1:{}", self.api)])
            .args([
                "--metrics-bind-address",
                &format!("127.0.0.1:{}", self.prom),
            ])
            .args([
                "--health-probe-bind-address",
                "",
                "--webhook-bind-address",
                "",
            ])
            .args(extra)
            .env("RUST_LOG", &self.log_filter)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        let pid = child.id();
        self.child = Some(Child(child));
        Ok(pid)
    }

    /// The fixtures' PKI folder (where the CA certificate lives).
    fn pki(&self) -> PathBuf {
        PathBuf::from(&self.env["TRUSTSCALE_CA_CERT"])
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("operator.log")).unwrap_or_default()
    }

    async fn scrape(&self) -> Scrape {
        scrape(
            &self.http,
            &format!("http://127.0.0.1:{}/metrics", self.prom),
        )
        .await
        .unwrap_or_default()
    }

    /// Waits until every trigger has polled once.
    async fn all_polled(&self, triggers: usize) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let polled: f64 = self.scrape().await.polls.values().map(|h| h.count()).sum();
            if polled >= triggers as f64 {
                return Ok(());
            }
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(600),
                "only {polled} of {triggers} triggers polled within 10 min; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Poll and error counts by type.
fn counts(s: &Scrape) -> (BTreeMap<String, f64>, BTreeMap<(String, String), f64>) {
    (
        s.polls
            .iter()
            .map(|(t, h)| (t.clone(), h.count()))
            .collect(),
        s.errors.clone(),
    )
}

// ---------------------------------------------------------------------------------------
// A fault proxy: forwards TCP to a broker until told to refuse, blackhole or reset.

const PASS: u8 = 0;
const REFUSE: u8 = 1;
const BLACKHOLE: u8 = 2;
const RESET: u8 = 3;

struct Proxy {
    port: u16,
    mode: Arc<AtomicU8>,
    /// Bumped on every mode change: connections made before it end (reset or refuse) or
    /// stall (blackhole).
    epoch: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: String) -> anyhow::Result<Proxy> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let mode = Arc::new(AtomicU8::new(PASS));
        let epoch = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, e, s) = (Arc::clone(&mode), Arc::clone(&epoch), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut listener = Some(listener);
            // While refusing: the port bound but not listening, so the kernel refuses
            // connections and nothing else can take the port meanwhile.
            let mut held: Option<tokio::net::TcpSocket> = None;
            while !s.load(Ordering::Relaxed) {
                if m.load(Ordering::Relaxed) == REFUSE {
                    if listener.take().is_some() {
                        held = tokio::net::TcpSocket::new_v4()
                            .and_then(|sock| {
                                sock.set_reuseaddr(true)?;
                                sock.bind(([127, 0, 0, 1], port).into())?;
                                Ok(sock)
                            })
                            .ok();
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let l = match &listener {
                    Some(l) => l,
                    None => {
                        let again = match held.take() {
                            Some(sock) => sock.listen(1024),
                            None => {
                                std::net::TcpListener::bind(("127.0.0.1", port)).and_then(|l| {
                                    l.set_nonblocking(true)?;
                                    tokio::net::TcpListener::from_std(l)
                                })
                            }
                        };
                        match again {
                            Ok(l) => listener.insert(l),
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                    }
                };
                let accepted = tokio::time::timeout(Duration::from_millis(100), l.accept()).await;
                let Ok(Ok((client, _))) = accepted else {
                    continue;
                };
                let (m, e, target) = (Arc::clone(&m), Arc::clone(&e), target.clone());
                tokio::spawn(async move { relay(client, target, m, e).await });
            }
        });
        Ok(Proxy {
            port,
            mode,
            epoch,
            stop,
        })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.set(RESET);
    }
}

/// Makes closing `stream` send a reset (SO_LINGER 0). Deprecated in tokio because a
/// non-zero linger blocks on drop; a zero one never does.
#[allow(deprecated)]
fn reset(stream: &tokio::net::TcpStream) {
    let _ = stream.set_linger(Some(Duration::ZERO));
}

async fn relay(
    client: tokio::net::TcpStream,
    target: String,
    mode: Arc<AtomicU8>,
    epoch: Arc<AtomicU64>,
) {
    let born = epoch.load(Ordering::Relaxed);
    match mode.load(Ordering::Relaxed) {
        // Refusing, but accepted in the moment before the listener went: as refused.
        RESET | REFUSE => {
            reset(&client);
            return;
        }
        BLACKHOLE => {
            // Accepted, never answered, until the fault ends.
            while epoch.load(Ordering::Relaxed) == born {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            reset(&client);
            return;
        }
        _ => {}
    }
    let Ok(upstream) = tokio::net::TcpStream::connect(&target).await else {
        reset(&client);
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let mut a = [0u8; 16384];
    let mut b = [0u8; 16384];
    use tokio::io::AsyncReadExt;
    loop {
        // A fault that starts while connected: reset ends it at once; blackhole stops
        // forwarding (both ways) until the fault ends, then resets it.
        if epoch.load(Ordering::Relaxed) != born {
            match mode.load(Ordering::Relaxed) {
                BLACKHOLE => {
                    let now = epoch.load(Ordering::Relaxed);
                    while epoch.load(Ordering::Relaxed) == now {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    break;
                }
                RESET | REFUSE => break,
                _ => {}
            }
        }
        tokio::select! {
            r = cr.read(&mut a) => match r { Ok(0) | Err(_) => break, Ok(n) => if uw.write_all(&a[..n]).await.is_err() { break } },
            r = ur.read(&mut b) => match r { Ok(0) | Err(_) => break, Ok(n) => if cw.write_all(&b[..n]).await.is_err() { break } },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    if let Ok(c) = cr.reunite(cw) {
        reset(&c);
    }
}

// ---------------------------------------------------------------------------------------
// A Redis server of this run's own (TLS, the fixture's certificates).

struct OwnRedis {
    port: u16,
    dir: PathBuf,
    pki: PathBuf,
    child: Option<std::process::Child>,
}

impl OwnRedis {
    fn start(dir: PathBuf, pki: PathBuf) -> anyhow::Result<OwnRedis> {
        let mut r = OwnRedis {
            port: free_port()?,
            dir,
            pki,
            child: None,
        };
        r.launch()?;
        Ok(r)
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &self.port.to_string(),
            ])
            .arg("--tls-cert-file")
            .arg(self.pki.join("server-chain.crt"))
            .arg("--tls-key-file")
            .arg(self.pki.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(self.pki.join("ca-bundle.crt"))
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
            ])
            .arg(&self.dir)
            .args(["--logfile", "", "--maxclients", "10000"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(10),
                "own redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn sigkill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.sigkill();
    }
}

// ---------------------------------------------------------------------------------------
// Scenario: broker faults.

/// A RabbitMQ node of this run's own: the fixture script's `rabbitmqchaos` node.
struct OwnRabbit {
    port: u16,
    node: String,
}

impl OwnRabbit {
    fn script() -> PathBuf {
        Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/brokers.sh"
        ))
        .to_path_buf()
    }

    fn start() -> anyhow::Result<OwnRabbit> {
        let t = Instant::now();
        let ok = Command::new(Self::script())
            .args(["start", "rabbitmqchaos"])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(
            ok.success(),
            "fixtures/brokers.sh start rabbitmqchaos failed"
        );
        let env = support::fixture_env();
        let r = OwnRabbit {
            port: env["RABBITMQCHAOS_AMQPS_PORT"].parse()?,
            node: env["RABBITMQCHAOS_NODENAME"].clone(),
        };
        // A node starts from an empty database every time: the queue again.
        let declared = Command::new(&env["RABBITMQCTL"])
            .args(["-n", &r.node, "eval", "rabbit_amqqueue:declare(rabbit_misc:r(<<\"/\">>, queue, <<\"chaos-queue\">>), false, false, [], none, <<\"bench\">>)."])
            .stdout(Stdio::null())
            .status()?;
        anyhow::ensure!(
            declared.success(),
            "declaring the queue on {} failed",
            r.node
        );
        eprintln!(
            "own RabbitMQ node {} ready in {:.1} s",
            r.node,
            t.elapsed().as_secs_f64()
        );
        Ok(r)
    }

    fn sigkill(&self) -> anyhow::Result<()> {
        let pidfile = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../target/fixtures/run/rabbitmq-rabbitmqchaos.pid"
        ));
        let pid = std::fs::read_to_string(pidfile)?.trim().to_string();
        anyhow::ensure!(
            Command::new("kill")
                .args(["-KILL", &pid])
                .status()?
                .success(),
            "kill -KILL {pid}"
        );
        Ok(())
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        let _ = Command::new(Self::script())
            .args(["stop", "rabbitmqchaos"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A Kafka broker of this run's own: tansu (in memory) behind its own stunnel (the TLS
/// front), seeded with 10 topics and 100 groups.
#[cfg(feature = "kafka")]
struct OwnKafka {
    tls_port: u16,
    conf: PathBuf,
    tansu: std::process::Child,
    stunnel: Option<std::process::Child>,
}

#[cfg(feature = "kafka")]
impl OwnKafka {
    async fn start(dir: &Path, env: &BTreeMap<String, String>) -> anyhow::Result<OwnKafka> {
        let (plain, tls_port) = (free_port()?, free_port()?);
        std::fs::create_dir_all(dir)?;
        let conf = dir.join("stunnel.conf");
        std::fs::write(
            &conf,
            format!(
                "foreground = yes\npid =\nsyslog = no\ndebug = notice\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                env["TRUSTSCALE_SERVER_CHAIN"], env["TRUSTSCALE_SERVER_KEY"]
            ),
        )?;
        let tansu = Command::new(&env["KAFKA_TANSU_BIN"])
            .args(["broker", "--cluster-id", "trustscale-chaos"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{plain}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{tls_port}"),
            ])
            .args(["--storage-engine", "memory://tansu-chaos/"])
            .env_remove("LISTENER_URL")
            .env_remove("ADVERTISED_LISTENER_URL")
            .env_remove("STORAGE_ENGINE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut k = OwnKafka {
            tls_port,
            conf,
            tansu,
            stunnel: None,
        };
        k.start_front()?;
        wait_listening(plain)?;
        let ca = PathBuf::from(&env["TRUSTSCALE_CA_CERT"]);
        let config = support::kafka::config(&k.bootstrap(), Some(&ca), None);
        let topics: Vec<String> = (0..10).map(|t| format!("chaos-topic-{t}")).collect();
        let groups: Vec<String> = (0..100).map(|g| format!("chaos-group-{g}")).collect();
        support::seed_kafka(&config, None, &topics, &groups).await;
        Ok(k)
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }

    fn start_front(&mut self) -> anyhow::Result<()> {
        let env = support::fixture_env();
        self.stunnel = Some(
            Command::new(&env["KAFKA_STUNNEL_BIN"])
                .arg(&self.conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_listening(self.tls_port)
    }

    fn kill_front(&mut self) {
        if let Some(mut s) = self.stunnel.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
    }

    /// SIGSTOP (true) or SIGCONT (false) the front: alive, but answering nothing.
    fn freeze_front(&self, stop: bool) {
        if let Some(s) = &self.stunnel {
            let _ = Command::new("kill")
                .args([if stop { "-STOP" } else { "-CONT" }, &s.id().to_string()])
                .status();
        }
    }
}

#[cfg(feature = "kafka")]
impl Drop for OwnKafka {
    fn drop(&mut self) {
        self.freeze_front(false);
        self.kill_front();
        let _ = self.tansu.kill();
        let _ = self.tansu.wait();
    }
}

#[cfg(feature = "kafka")]
fn wait_listening(port: u16) -> anyhow::Result<()> {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "port {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// How a broker fault is made.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Through the proxy: refuse, blackhole or reset.
    Proxy(u8),
    /// The broker process killed with SIGKILL, restarted after the fault.
    Kill,
    /// The broker process stopped (SIGSTOP), continued after the fault.
    Freeze,
}

/// The run's own brokers and the proxies in front of Redis and RabbitMQ: what the fault
/// scenarios cut off, kill and bring back.
struct Brokers {
    redis: OwnRedis,
    redis_proxy: Proxy,
    rabbit: Option<OwnRabbit>,
    amqp_proxy: Proxy,
    #[cfg(feature = "kafka")]
    kafka: OwnKafka,
}

impl Brokers {
    async fn start(rig: &Rig) -> anyhow::Result<Brokers> {
        let redis = OwnRedis::start(rig.work.path().join("redis"), rig.pki())?;
        let redis_proxy = Proxy::start(format!("127.0.0.1:{}", redis.port)).await?;
        let rabbit = OwnRabbit::start()?;
        let amqp_proxy = Proxy::start(format!("127.0.0.1:{}", rabbit.port)).await?;
        Ok(Brokers {
            redis,
            redis_proxy,
            rabbit: Some(rabbit),
            amqp_proxy,
            #[cfg(feature = "kafka")]
            kafka: OwnKafka::start(&rig.work.path().join("kafka"), &rig.env).await?,
        })
    }

    /// The manifests of `triggers` triggers against these brokers (through the proxies).
    fn manifests(&self, rig: &Rig, triggers: usize, interval: u64) -> anyhow::Result<PathBuf> {
        rig.manifests(
            triggers,
            interval,
            &format!("localhost:{}", self.redis_proxy.port),
            &format!("localhost:{}", self.amqp_proxy.port),
            self.kafka_bootstrap().as_deref(),
        )
    }

    fn kafka_bootstrap(&self) -> Option<String> {
        #[cfg(feature = "kafka")]
        return Some(self.kafka.bootstrap());
        #[cfg(not(feature = "kafka"))]
        None
    }

    /// Every fault, in the order the scenarios make them.
    fn faults(&self) -> Vec<(&'static str, &'static str, Fault)> {
        let mut faults = vec![
            ("redis", "SIGKILL, restarted", Fault::Kill),
            ("redis", "refused", Fault::Proxy(REFUSE)),
            ("redis", "blackholed", Fault::Proxy(BLACKHOLE)),
            ("redis", "reset", Fault::Proxy(RESET)),
            ("rabbitmq", "SIGKILL, restarted", Fault::Kill),
            ("rabbitmq", "refused", Fault::Proxy(REFUSE)),
            ("rabbitmq", "blackholed", Fault::Proxy(BLACKHOLE)),
            ("rabbitmq", "reset", Fault::Proxy(RESET)),
        ];
        if self.kafka_bootstrap().is_some() {
            faults.push(("kafka", "TLS front SIGKILL, restarted", Fault::Kill));
            faults.push(("kafka", "TLS front stopped (SIGSTOP)", Fault::Freeze));
        }
        faults
    }

    /// The faults whose name (`kind what`) holds `only`; every fault without it.
    fn faults_named(&self, only: Option<&str>) -> Vec<(&'static str, &'static str, Fault)> {
        self.faults()
            .into_iter()
            .filter(|(kind, what, _)| only.is_none_or(|o| format!("{kind} {what}").contains(o)))
            .collect()
    }

    /// The port the operator connects to for `kind`.
    fn port(&self, kind: &str) -> u16 {
        match kind {
            "redis" => self.redis_proxy.port,
            "rabbitmq" => self.amqp_proxy.port,
            _ => self
                .kafka_bootstrap()
                .as_deref()
                .and_then(|b| b.rsplit(':').next()?.parse().ok())
                .unwrap_or(0),
        }
    }

    fn proxy(&self, kind: &str) -> &Proxy {
        if kind == "redis" {
            &self.redis_proxy
        } else {
            &self.amqp_proxy
        }
    }

    /// How long `fault` of `kind` lasts: a blackhole shorter than the clients' timeouts
    /// only slows polls down (a broken connection is retried within the poll), so those
    /// last longer than a poll's whole retry budget (a 5 s answer timeout, then a
    /// reconnect with a 5 s timeout; librdkafka retries within a poll too), so that the
    /// cut shows as failures.
    fn fault_secs(args: &Args, kind: &str, fault: Fault) -> u64 {
        if matches!(fault, Fault::Proxy(BLACKHOLE) | Fault::Freeze) || kind == "kafka" {
            args.fault_secs.max(12)
        } else {
            args.fault_secs
        }
    }

    /// Starts `fault` of `kind`.
    fn begin(&mut self, kind: &str, fault: Fault) -> anyhow::Result<()> {
        match (kind, fault) {
            ("redis", Fault::Kill) => self.redis.sigkill(),
            ("rabbitmq", Fault::Kill) => {
                if let Some(r) = &self.rabbit {
                    r.sigkill()?;
                }
            }
            #[cfg(feature = "kafka")]
            ("kafka", Fault::Kill) => self.kafka.kill_front(),
            #[cfg(feature = "kafka")]
            ("kafka", Fault::Freeze) => self.kafka.freeze_front(true),
            (_, Fault::Proxy(mode)) => self.proxy(kind).set(mode),
            _ => {}
        }
        Ok(())
    }

    /// Ends `fault` of `kind`: the broker restarted, continued or passed through again.
    fn end(&mut self, kind: &str, fault: Fault) -> anyhow::Result<()> {
        match (kind, fault) {
            ("redis", Fault::Kill) => self.redis.launch()?,
            ("rabbitmq", Fault::Kill) => {
                // Stopped (what the kill left), then started again, empty.
                drop(self.rabbit.take());
                self.rabbit = Some(OwnRabbit::start()?);
            }
            #[cfg(feature = "kafka")]
            ("kafka", Fault::Kill) => self.kafka.start_front()?,
            #[cfg(feature = "kafka")]
            ("kafka", Fault::Freeze) => self.kafka.freeze_front(false),
            (_, Fault::Proxy(_)) => self.proxy(kind).set(PASS),
            _ => {}
        }
        Ok(())
    }
}

async fn broker(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rig = Rig::new().await?;
    let mut brokers = Brokers::start(&rig).await?;
    let kafka_bootstrap = brokers.kafka_bootstrap();
    let manifests = brokers.manifests(&rig, args.triggers, args.interval)?;
    let pid = rig.start(&manifests, &[])?;
    rig.all_polled(args.triggers).await?;
    tokio::time::sleep(Duration::from_secs(args.interval)).await;
    let mut off = Vec::new();
    println!(
        "broker faults, {} triggers polled every {} s, each fault {} s:",
        args.triggers, args.interval, args.fault_secs
    );
    println!(
        "| fault | errors of the faulted type, by kind | other types' polls during the fault (errors) | recovered after the source returned | connections before / after | RSS before / after (MiB; jemalloc allocated/resident) |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    let began = Instant::now();
    for (kind, what, fault) in brokers.faults_named(args.only.as_deref()) {
        eprintln!("{:.0} s: {kind} {what}", began.elapsed().as_secs_f64());
        let ty = kind;
        let port = brokers.port(kind);
        let conns0 = connections(pid, &port.to_string());
        let rss0 = pstat::rss_kib(pid);
        let scraped0 = rig.scrape().await;
        let heap0 = heap_mib(&scraped0);
        let (p0, e0) = counts(&scraped0);
        brokers.begin(kind, fault)?;
        let secs = Brokers::fault_secs(args, kind, fault);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        let (p1, e1) = counts(&rig.scrape().await);
        brokers.end(kind, fault)?;
        let back = Instant::now();
        // Recovery: the moment after which no error of that type comes any more (quiet
        // for an interval and a second; given up two intervals and 15 s after the return).
        let mut last_error = Duration::ZERO;
        // Errors made while the broker restarted count before `back`.
        let mut seen = counts(&rig.scrape().await).1;
        let quiet = Duration::from_secs(args.interval + 1);
        while back.elapsed() < Duration::from_secs(2 * args.interval + 15)
            && back.elapsed().saturating_sub(last_error) < quiet
        {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let (_, e) = counts(&rig.scrape().await);
            let now: f64 = e.iter().filter(|((t, _), _)| t == ty).map(|(_, v)| v).sum();
            let before: f64 = seen
                .iter()
                .filter(|((t, _), _)| t == ty)
                .map(|(_, v)| v)
                .sum();
            if now > before {
                last_error = back.elapsed();
            }
            seen = e;
        }
        // Then one more interval: every trigger of that type polled without error.
        let (p2, e2) = counts(&rig.scrape().await);
        tokio::time::sleep(Duration::from_secs(args.interval + 2)).await;
        let scraped3 = rig.scrape().await;
        let heap1 = heap_mib(&scraped3);
        let (p3, e3) = counts(&scraped3);
        let new_errors: f64 = e3
            .iter()
            .filter(|((t, _), _)| t == ty)
            .map(|(k, v)| v - e2.get(k).copied().unwrap_or(0.0))
            .sum();
        let ty_polls = p3.get(ty).copied().unwrap_or(0.0) - p2.get(ty).copied().unwrap_or(0.0);
        let conns1 = connections(pid, &port.to_string());
        let rss1 = pstat::rss_kib(pid);
        let by_kind: Vec<String> = e1
            .iter()
            .filter(|((t, _), _)| t == ty)
            .map(|((_, k), v)| {
                (
                    k,
                    v - e0.get(&(ty.to_string(), k.clone())).copied().unwrap_or(0.0),
                )
            })
            .filter(|(_, d)| *d > 0.0)
            .map(|(k, d)| format!("{k} {d:.0}"))
            .collect();
        let others: Vec<String> = p1
            .iter()
            .filter(|(t, _)| t.as_str() != ty)
            .map(|(t, v)| {
                let errs: f64 = e1
                    .iter()
                    .filter(|((tt, _), _)| tt == t)
                    .map(|(k, v)| v - e0.get(k).copied().unwrap_or(0.0))
                    .sum();
                if errs > 0.0 {
                    off.push(format!(
                        "{kind} {what}: {t} had {errs} errors during the fault"
                    ));
                }
                format!(
                    "{t} {:.0} ({:.0})",
                    v - p0.get(t).copied().unwrap_or(0.0),
                    errs + 0.0
                )
            })
            .collect();
        println!(
            "| {kind} {what} | {} | {} | {:.1} s (then {ty_polls:.0} polls, {new_errors:.0} errors, in one interval) | {conns0} / {conns1} | {:.1} ({heap0}) / {:.1} ({heap1}) |",
            if by_kind.is_empty() {
                "none".into()
            } else {
                by_kind.join(", ")
            },
            others.join(", "),
            last_error.as_secs_f64(),
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0
        );
        if by_kind.is_empty() || by_kind.iter().any(|k| !k.starts_with("connection")) {
            off.push(format!(
                "{kind} {what}: errors not all classified `connection`: {by_kind:?}"
            ));
        }
        if last_error > Duration::from_secs(2 * args.interval) {
            off.push(format!(
                "{kind} {what}: errors went on {last_error:?} after the source returned"
            ));
        }
        let per_object = match ty {
            "redis" if kafka_bootstrap.is_some() => 4,
            "redis" => 5,
            _ => 1,
        };
        if new_errors > 0.0 || ty_polls < (args.triggers / 10 * per_object) as f64 {
            off.push(format!("{kind} {what}: after recovery {ty_polls} polls with {new_errors} errors in one interval"));
        }
        if conns1 != conns0 {
            off.push(format!(
                "{kind} {what}: connections {conns0} before, {conns1} after"
            ));
        }
    }
    if let Some(c) = rig.child.as_mut() {
        c.stop();
    }
    Ok(off)
}

// ---------------------------------------------------------------------------------------
// Scenario: internal certificate rotation under a client that never pauses.

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
    first_failures: std::sync::Mutex<Vec<String>>,
}

impl Tally {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        let mut f = self.first_failures.lock().unwrap();
        if f.len() < 5 {
            f.push(e);
        }
    }
}

/// Sends requests until `stop`, `pause` apart (zero: without pause): a keep-alive client
/// rebuilt from the folder every `refresh` (`fresh` false), or a new connection for every
/// request (`fresh` true).
#[allow(clippy::too_many_arguments)]
async fn hammer(
    certs: PathBuf,
    url: String,
    refresh: Duration,
    fresh: bool,
    pause: Duration,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
) {
    let build = || -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .tls_backend_preconfigured(pstat::internal_client_tls(&certs)?)
            .timeout(Duration::from_secs(5))
            .pool_max_idle_per_host(if fresh { 0 } else { 1 })
            .build()?)
    };
    let mut client = None;
    let mut built = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if client.is_none() || built.elapsed() >= refresh {
            match build() {
                Ok(c) => {
                    client = Some(c);
                    built = Instant::now();
                }
                Err(e) => {
                    tally.fail(format!("reading the folder: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        match c.get(&url).send().await {
            Ok(r) if r.status().is_success() => match r.bytes().await {
                Ok(_) => {
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => tally.fail(format!("body: {e}")),
            },
            Ok(r) => tally.fail(format!("HTTP {}", r.status())),
            Err(e) => tally.fail(trustscale::error::Chain(&e).to_string()),
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

/// The serial number identifier of the first certificate in `path`, and how many there are.
fn first_cert(path: &Path) -> (String, usize) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map(|i| i.filter_map(Result::ok).collect())
        .unwrap_or_default();
    let id = certs
        .first()
        .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
        .map(|(_, c)| c.tbs_certificate.raw_serial_as_string())
        .unwrap_or_default();
    (id, certs.len())
}

async fn rotation(args: &Args, secs: u64) -> anyhow::Result<Vec<String>> {
    let mut rig = Rig::new().await?;
    let env = rig.env.clone();
    let triggers = args.triggers.min(1000);
    let manifests = rig.manifests(
        triggers,
        args.interval,
        &format!("localhost:{}", env["REDIS_TLS_PORT"]),
        &format!("localhost:{}", env["RABBITMQ_AMQPS_PORT"]),
        None,
    )?;
    // Leaf renewed at 70 % of its lifetime (about every 10 s); the CA at 70 % of its own,
    // that is in the middle of the run.
    let (leaf, ca) = if args.short {
        ("2s".to_string(), "9s".to_string())
    } else {
        ("14s".to_string(), format!("{}s", secs * 10 / 14))
    };
    let pid = rig.start(
        &manifests,
        &["--cert-lifetime", &leaf, "--ca-lifetime", &ca],
    )?;
    rig.all_polled(triggers).await?;
    let url = format!(
        "https://localhost:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/chaos/s0-metric-api-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dso-0",
        rig.api
    );
    let stop = Arc::new(AtomicBool::new(false));
    let keep = Arc::new(Tally::default());
    let fresh = Arc::new(Tally::default());
    let refresh = if args.short {
        Duration::from_millis(400)
    } else {
        Duration::from_secs(3)
    };
    let t1 = tokio::spawn(hammer(
        rig.certs.clone(),
        url.clone(),
        refresh,
        false,
        Duration::ZERO,
        Arc::clone(&keep),
        Arc::clone(&stop),
    ));
    let t2 = tokio::spawn(hammer(
        rig.certs.clone(),
        url.clone(),
        refresh,
        true,
        Duration::ZERO,
        Arc::clone(&fresh),
        Arc::clone(&stop),
    ));
    let start = Instant::now();
    let (mut leaves, mut cas) = (
        std::collections::BTreeSet::new(),
        std::collections::BTreeSet::new(),
    );
    let mut most_cas = 0;
    let cpu0 = pstat::cpu_seconds(pid);
    while start.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (l, _) = first_cert(&rig.certs.join("tls.crt"));
        let (c, n) = first_cert(&rig.certs.join("ca.crt"));
        leaves.insert(l);
        cas.insert(c);
        most_cas = most_cas.max(n);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::join!(t1, t2);
    let cpu = pstat::cpu_seconds(pid) - cpu0;
    let (_, e) = counts(&rig.scrape().await);
    let poll_errors: f64 = e.values().sum();
    let mut off = Vec::new();
    println!(
        "internal certificate rotation for {secs} s (leaf lifetime {leaf}, CA lifetime {ca}), two clients without pause:"
    );
    for (name, t) in [
        ("keep-alive, rebuilt from the folder", &keep),
        ("a new connection per request", &fresh),
    ] {
        let (ok, failed) = (
            t.ok.load(Ordering::Relaxed),
            t.failed.load(Ordering::Relaxed),
        );
        println!(
            "  {name}: {ok} ok, {failed} failed{}",
            t.first_failures
                .lock()
                .unwrap()
                .first()
                .map(|f| format!(" (first: {f})"))
                .unwrap_or_default()
        );
        if failed > 0 || ok == 0 {
            off.push(format!(
                "rotation: {name}: {ok} ok, {failed} failed: {:?}",
                t.first_failures.lock().unwrap()
            ));
        }
    }
    println!(
        "  leaves served: {}, CAs: {} (at most {most_cas} in ca.crt at once); operator CPU {:.0} mCPU; poll errors {:.0}",
        leaves.len(),
        cas.len(),
        cpu / start.elapsed().as_secs_f64() * 1000.0,
        poll_errors + 0.0
    );
    if cas.len() < 2 {
        off.push(format!(
            "rotation: the CA did not rotate ({} seen)",
            cas.len()
        ));
    }
    if leaves.len() < (secs / 12).max(3) as usize {
        off.push(format!(
            "rotation: only {} leaves in {secs} s",
            leaves.len()
        ));
    }
    if let Some(c) = rig.child.as_mut() {
        c.stop();
    }
    Ok(off)
}

// ---------------------------------------------------------------------------------------
// Scenario: CA-folder churn.

fn throwaway_ca(name: &str) -> anyhow::Result<String> {
    let key = rcgen::KeyPair::generate()?;
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    Ok(p.self_signed(&key)?.pem())
}

async fn ca_churn(args: &Args, secs: u64) -> anyhow::Result<Vec<String>> {
    let mut rig = Rig::new().await?;
    let env = rig.env.clone();
    let manifests = rig.manifests(
        args.triggers,
        args.interval,
        &format!("localhost:{}", env["REDIS_TLS_PORT"]),
        &format!("localhost:{}", env["RABBITMQ_AMQPS_PORT"]),
        None,
    )?;
    let pid = rig.start(&manifests, &[])?;
    rig.all_polled(args.triggers).await?;
    let (p0, e0) = counts(&rig.scrape().await);
    let fds0 = pstat::open_fds(pid);
    let files0 = pstat::open_non_socket_fds(pid);
    let targets0 = pstat::non_socket_fd_targets(pid);
    let threads0 = pstat::thread_names(pid);
    let rss0 = pstat::rss_kib(pid);
    let period = if args.short {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(3)
    };
    let pool: Vec<String> = (0..8)
        .map(|i| throwaway_ca(&format!("churn {i}")))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    let third = Duration::from_secs(secs) / 3;
    let (mut cpu_marks, mut rss_marks) = (vec![pstat::cpu_seconds(pid)], vec![rss0]);
    let mut step = 0usize;
    let mut files_third = None;
    while start.elapsed() < Duration::from_secs(secs) {
        // Added, replaced, removed, in turn.
        let name = rig.ca_dir.join(format!("churn-{}.crt", step % 3));
        match step % 3 {
            0 => std::fs::write(&name, &pool[step % pool.len()])?,
            1 => {
                let tmp = rig.ca_dir.join(".churn.tmp");
                std::fs::write(&tmp, &pool[(step + 3) % pool.len()])?;
                std::fs::rename(&tmp, rig.ca_dir.join("churn-0.crt"))?;
            }
            _ => {
                let _ = std::fs::remove_file(rig.ca_dir.join("churn-0.crt"));
            }
        }
        step += 1;
        tokio::time::sleep(period).await;
        if start.elapsed() >= third * cpu_marks.len() as u32 {
            cpu_marks.push(pstat::cpu_seconds(pid));
            rss_marks.push(pstat::rss_kib(pid));
            if files_third.is_none() {
                files_third = Some(pstat::open_non_socket_fds(pid));
            }
        }
    }
    let files_third = files_third.unwrap_or(files0);
    // Let the last change reach every trigger (two intervals), then read.
    tokio::time::sleep(Duration::from_secs(2 * args.interval + 3)).await;
    rss_marks.push(pstat::rss_kib(pid));
    let (p1, e1) = counts(&rig.scrape().await);
    // Sockets follow the pools (a replaced client's connections close as its last users
    // move on); files and watches are what churn could leak: those must come back.
    let settle = Instant::now();
    let mut files1 = pstat::open_non_socket_fds(pid);
    while files1 > files_third && settle.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        files1 = pstat::open_non_socket_fds(pid);
    }
    let fds1 = pstat::open_fds(pid);
    let fds_back = settle.elapsed();
    let opened = pstat::added(&targets0, &pstat::non_socket_fd_targets(pid));
    if !opened.is_empty() {
        println!("  descriptors (not sockets) open now that were not before: {opened:?}");
    }
    let started = pstat::added(&threads0, &pstat::thread_names(pid));
    if !started.is_empty() {
        println!("  threads now that were not before: {started:?}");
    }
    let polls: f64 = p1
        .iter()
        .map(|(t, v)| v - p0.get(t).copied().unwrap_or(0.0))
        .sum();
    let errors: f64 = e1
        .iter()
        .map(|(k, v)| v - e0.get(k).copied().unwrap_or(0.0))
        .sum();
    let cpu: Vec<String> = cpu_marks
        .windows(2)
        .map(|w| format!("{:.0}", (w[1] - w[0]) / third.as_secs_f64() * 1000.0))
        .collect();
    println!(
        "CA-folder churn for {secs} s ({step} changes, one every {period:?}), {} triggers:\n  polls {polls:.0}, failed {:.0}; operator CPU by third {} mCPU; RSS at the start, each third and two intervals after {} MiB; open fds {fds0} → {fds1}, of which not sockets {files0} → {files_third} after the first third → {files1} (two intervals after, and {:.1} s more)",
        args.triggers,
        errors + 0.0,
        cpu.join(" / "),
        rss_marks
            .iter()
            .map(|r| format!("{:.1}", *r as f64 / 1024.0))
            .collect::<Vec<_>>()
            .join(" → "),
        fds_back.as_secs_f64()
    );
    let mut off = Vec::new();
    if errors > 0.0 {
        off.push(format!("ca-churn: {errors} failed polls: {e1:?}"));
    }
    // The first reconnection to RabbitMQ starts, once, the runtime lapin's I/O layer keeps
    // for itself (async-compat's thread and its three descriptors): what the changes
    // open must not grow after the first third, which holds the first of them.
    if files1 > files_third {
        off.push(format!(
            "ca-churn: open files and watches {files0} → {files_third} after the first third → {files1}"
        ));
    }
    if let Some(c) = rig.child.as_mut() {
        c.stop();
    }
    Ok(off)
}

// ---------------------------------------------------------------------------------------
// Scenario: SIGKILL during rotation.

fn openssl(args: &[&str]) -> (bool, String) {
    match Command::new("openssl").args(args).output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Checks the folder with openssl: the key matches the leaf, and the leaf chains to a CA
/// of `ca.crt` (through the chain's other certificates; times not checked, since the set
/// may have expired while nothing ran). None when consistent.
fn check_folder(dir: &Path, scratch: &Path) -> Option<String> {
    let set = match std::fs::canonicalize(dir.join("..data")) {
        Ok(s) => s,
        Err(e) => return Some(format!("..data: {e}")),
    };
    let chain = match std::fs::read_to_string(set.join("tls.crt")) {
        Ok(c) => c,
        Err(e) => return Some(format!("tls.crt: {e}")),
    };
    let mut parts = chain.split_inclusive("-----END CERTIFICATE-----\n");
    let Some(leaf) = parts.next().map(str::to_string) else {
        return Some("tls.crt holds no certificate".into());
    };
    let rest: String = parts.collect();
    let leaf_file = scratch.join("leaf.pem");
    let rest_file = scratch.join("rest.pem");
    let written = std::fs::write(&leaf_file, &leaf).and_then(|()| {
        std::fs::write(
            &rest_file,
            if rest.trim().is_empty() {
                leaf.clone()
            } else {
                rest
            },
        )
    });
    if let Err(e) = written {
        return Some(format!("scratch files: {e}"));
    }
    let (lp, a) = openssl(&[
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        &leaf_file.to_string_lossy(),
    ]);
    let (kp, b) = openssl(&[
        "pkey",
        "-pubout",
        "-in",
        &set.join("tls.key").to_string_lossy(),
    ]);
    if !lp || !kp || a != b {
        return Some(format!("the key does not match the leaf ({a} vs {b})"));
    }
    let ca = set.join("ca.crt").to_string_lossy().into_owned();
    let (ok, out) = openssl(&[
        "verify",
        "-no_check_time",
        "-CAfile",
        &ca,
        "-untrusted",
        &rest_file.to_string_lossy(),
        &leaf_file.to_string_lossy(),
    ]);
    (!ok).then(|| format!("the leaf does not chain to ca.crt: {out}"))
}

async fn kill_rotation(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rig = Rig::new().await?;
    let empty = rig.work.path().join("none");
    std::fs::create_dir_all(&empty)?;
    let mut off = Vec::new();
    let (mut checked, mut absent) = (0, 0);
    let started = Instant::now();
    for round in 0..args.rounds {
        rig.start(&empty, &["--cert-lifetime", "2s", "--ca-lifetime", "5s"])?;
        tokio::time::sleep(Duration::from_millis(100 + fastrand::u64(0..2500))).await;
        if let Some(mut c) = rig.child.take() {
            let _ = c.0.kill();
            let _ = c.0.wait();
        }
        if !rig.certs.join("..data").exists() {
            absent += 1;
            continue;
        }
        checked += 1;
        if let Some(problem) = check_folder(&rig.certs, rig.work.path()) {
            off.push(format!("kill-rotation round {round}: {problem}"));
        }
    }
    // Negative controls: the check refuses a folder whose key is another one, and one whose
    // ca.crt holds another CA.
    if checked == 0 {
        off.push("kill-rotation: no folder was ever checked".into());
    }
    if checked > 0 {
        let set = std::fs::canonicalize(rig.certs.join("..data"))?;
        for (bad, what) in [("tls.key", "a foreign key"), ("ca.crt", "a foreign CA")] {
            let copy = rig.work.path().join("control");
            let data = copy.join("..set");
            std::fs::create_dir_all(&data)?;
            for f in ["ca.crt", "tls.crt", "tls.key"] {
                std::fs::copy(set.join(f), data.join(f))?;
            }
            let _ = std::fs::remove_file(copy.join("..data"));
            std::os::unix::fs::symlink("..set", copy.join("..data"))?;
            let other = rcgen::KeyPair::generate()?;
            let replacement = if bad == "tls.key" {
                other.serialize_pem()
            } else {
                throwaway_ca("control")?
            };
            std::fs::write(data.join(bad), replacement)?;
            if check_folder(&copy, rig.work.path()).is_none() {
                off.push(format!(
                    "kill-rotation: the folder check passed a set with {what}"
                ));
            }
        }
    }
    // Restarted, it serves with a valid set (curl, trusting ca.crt, presenting tls.crt).
    rig.start(&empty, &["--cert-lifetime", "2s", "--ca-lifetime", "5s"])?;
    let start = Instant::now();
    let mut served = false;
    while start.elapsed() < Duration::from_secs(15) && !served {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let set = std::fs::canonicalize(rig.certs.join("..data")).unwrap_or_default();
        let out = Command::new("curl")
            .args([
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "3",
                "--cacert",
            ])
            .arg(set.join("ca.crt"))
            .arg("--cert")
            .arg(set.join("tls.crt"))
            .arg("--key")
            .arg(set.join("tls.key"))
            .arg(format!(
                "https://localhost:{}/apis/external.metrics.k8s.io/v1beta1",
                rig.api
            ))
            .output()?;
        served = String::from_utf8_lossy(&out.stdout) == "200";
    }
    println!(
        "SIGKILL during rotation (leaf 2 s, CA 5 s), {} rounds in {:.0} s: {checked} folders checked with openssl, {absent} killed before the first set, {} inconsistent; restarted operator serves (curl): {served}",
        args.rounds,
        started.elapsed().as_secs_f64(),
        off.len()
    );
    if !served {
        off.push(format!(
            "kill-rotation: the restarted operator did not serve; log:\n{}",
            rig.log()
        ));
    }
    if let Some(c) = rig.child.as_mut() {
        c.stop();
    }
    Ok(off)
}

// ---------------------------------------------------------------------------------------
// Scenario: the soak: 10,000 triggers for an hour, with rotation, CA churn and a Redis cut
// recurring.

/// CA-folder churn for the soak: every 2 s one of three files gets a throwaway CA and the
/// next one goes, until `stop`.
async fn churn_ca_folder(ca_dir: PathBuf, stop: Arc<AtomicBool>) -> anyhow::Result<u64> {
    let pool: Vec<String> = (0..8)
        .map(|i| throwaway_ca(&format!("soak {i}")))
        .collect::<Result<_, _>>()?;
    let mut step = 0u64;
    while !stop.load(Ordering::Relaxed) {
        std::fs::write(
            ca_dir.join(format!("soak-{}.crt", step % 3)),
            &pool[(step as usize) % pool.len()],
        )?;
        let _ = std::fs::remove_file(ca_dir.join(format!("soak-{}.crt", (step + 1) % 3)));
        step += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(step)
}

/// jemalloc's allocated and resident MiB as the operator reports them, `allocated/resident`.
fn heap_mib(s: &Scrape) -> String {
    let mib = |k: &str| s.allocator.get(k).map_or(f64::NAN, |b| b / 1048576.0);
    format!("{:.1}/{:.1}", mib("allocated"), mib("resident"))
}

/// Until `stop`, every `every`: the operator's RSS, descriptors and threads, what the
/// soak was doing (`now_doing`) and the poll errors of the window by trigger type and
/// kind, one line per window, so that errors can be placed against the faults.
async fn timeline(
    pid: u32,
    prom: u16,
    mut errors: BTreeMap<(String, String), f64>,
    every: Duration,
    now_doing: Arc<std::sync::Mutex<String>>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let http = match pstat::plain_client() {
        Ok(c) => c,
        Err(_) => return Vec::new(),
    };
    let url = format!("http://127.0.0.1:{prom}/metrics");
    let start = Instant::now();
    let mut lines = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        let doing = now_doing.lock().unwrap().clone();
        let scraped = scrape(&http, &url).await.unwrap_or_default();
        let heap = heap_mib(&scraped);
        let now = scraped.errors;
        let window: Vec<String> = now
            .iter()
            .map(|(k, v)| (k, v - errors.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, d)| *d > 0.0)
            .map(|((t, k), d)| format!("{t} {k} {d:.0}"))
            .collect();
        if !now.is_empty() {
            errors = now;
        }
        lines.push(format!(
            "{} {:.1} ({heap}) {} {} [{doing}] {}",
            start.elapsed().as_secs(),
            pstat::rss_kib(pid) as f64 / 1024.0,
            pstat::open_fds(pid),
            pstat::thread_names(pid).len(),
            window.join(", ")
        ));
    }
    lines
}

/// The operator's "poll failed" log lines grouped by their error, with digits left out
/// (ports, counts, names), most frequent first.
fn poll_failures(log: &str) -> Vec<(usize, String)> {
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("poll failed")) {
        let error = line.split_once("error=").map_or(line, |(_, e)| e);
        let general: String = error.chars().filter(|c| !c.is_ascii_digit()).collect();
        *by.entry(general).or_default() += 1;
    }
    let mut all: Vec<(usize, String)> = by.into_iter().map(|(m, n)| (n, m)).collect();
    all.sort_by_key(|e| std::cmp::Reverse(e.0));
    all
}

/// The least-squares slope of `points` (seconds, KiB), MiB per hour.
fn mib_per_hour(points: &[(u64, u64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mx = points.iter().map(|p| p.0 as f64).sum::<f64>() / n;
    let my = points.iter().map(|p| p.1 as f64).sum::<f64>() / n;
    let sxy: f64 = points
        .iter()
        .map(|p| (p.0 as f64 - mx) * (p.1 as f64 - my))
        .sum();
    let sxx: f64 = points.iter().map(|p| (p.0 as f64 - mx).powi(2)).sum();
    if sxx == 0.0 {
        0.0
    } else {
        sxy / sxx * 3600.0 / 1024.0
    }
}

/// How many more runtime threads than at the start the soak accepts at rest: the blocking
/// pool holds the reads in flight (4 to 16 threads in all at 10,000 triggers).
const POOL_SLACK: usize = 16;

/// The soak: the load of `broker` with every recurring activity of the other scenarios at
/// once (the API client without pause, CA-folder churn, leaf rotation every ~10 s) and a
/// broker fault of `broker`'s list every cycle, in turn.
///
/// RSS growth is measured from a base line taken once the recurring activities have run
/// for two intervals (the working set of that load), to a reading taken after the last
/// fault has recovered with the same activities still running. The reading before each
/// fault gives the trend; the one right after it, the peak. The step from idle to the
/// load (the cold reading) is printed as well. Open descriptors are compared at rest:
/// before the activities start and after they stop.
async fn soak(args: &Args) -> anyhow::Result<Vec<String>> {
    let mut rig = Rig::new().await?;
    // Failed polls are logged at debug: the soak sorts them by message.
    rig.log_filter = "warn,trustscale_operator::engine=debug".to_string();
    let mut brokers = Brokers::start(&rig).await?;
    let manifests = brokers.manifests(&rig, args.triggers, args.interval)?;
    let pid = rig.start(
        &manifests,
        &["--cert-lifetime", "14s", "--ca-lifetime", "20m"],
    )?;
    rig.all_polled(args.triggers).await?;
    tokio::time::sleep(Duration::from_secs(args.interval)).await;
    let (cold, quiet0) = (pstat::rss_kib(pid), pstat::open_fds(pid));
    // Kinds, not identities: a client rebuilt for a new anchor generation (librdkafka's)
    // has new pipes; tokio's blocking pool grows and shrinks with the Kafka polls.
    let files = || -> Vec<String> {
        pstat::non_socket_fd_targets(pid)
            .into_iter()
            .map(|t| match t.split_once(":[") {
                Some((kind, _)) if kind == "pipe" => kind.to_string(),
                _ => t,
            })
            .collect()
    };
    let threads = || -> Vec<String> {
        pstat::thread_names(pid)
            .into_iter()
            .filter(|t| t != "tokio-rt-worker")
            .collect()
    };
    // The runtime's threads: its two workers and its blocking pool, which a fault grows
    // (every Kafka read waits there for librdkafka's timeout) and which must shrink back.
    let pool = || {
        pstat::thread_names(pid)
            .iter()
            .filter(|t| *t == "tokio-rt-worker")
            .count()
    };
    let (files0, threads0, pool0) = (files(), threads(), pool());
    let kinds = ["redis", "rabbitmq", "kafka"];
    let conns = |brokers: &Brokers| -> Vec<usize> {
        kinds
            .iter()
            .map(|k| connections(pid, &brokers.port(k).to_string()))
            .collect()
    };
    let conns0 = conns(&brokers);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let url = format!(
        "https://localhost:{}/apis/external.metrics.k8s.io/v1beta1/namespaces/chaos/s0-metric-api-queue-depth?labelSelector=scaledobject.keda.sh%2Fname%3Dso-0",
        rig.api
    );
    let client = tokio::spawn(hammer(
        rig.certs.clone(),
        url,
        Duration::from_secs(3),
        false,
        Duration::from_millis(50),
        Arc::clone(&tally),
        Arc::clone(&stop),
    ));
    let churn = tokio::spawn(churn_ca_folder(rig.ca_dir.clone(), Arc::clone(&stop)));
    // The recurring activities' working set: two intervals, every client rebuilt at least
    // once for a new anchor generation.
    tokio::time::sleep(Duration::from_secs(args.interval * 2)).await;
    let rss0 = pstat::rss_kib(pid);
    let (_, e0) = counts(&rig.scrape().await);
    let cpu0 = pstat::cpu_seconds(pid);
    let faults = brokers.faults_named(args.only.as_deref());
    anyhow::ensure!(
        !faults.is_empty(),
        "soak: no fault's name holds {:?}",
        args.only
    );
    let cycle_len = if args.short { 6 } else { 300 };
    let start = Instant::now();
    let now_doing = Arc::new(std::sync::Mutex::new(String::from("-")));
    let sampler = tokio::spawn(timeline(
        pid,
        rig.prom,
        e0.clone(),
        Duration::from_secs(if args.short { 2 } else { args.interval }),
        Arc::clone(&now_doing),
        Arc::clone(&stop),
    ));
    // (s, RSS KiB, fds) before and right after each fault.
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut made = Vec::new();
    let mut cycle = 0u64;
    while cycle * cycle_len + cycle_len / 2 < args.secs {
        let at = Duration::from_secs(cycle * cycle_len + cycle_len / 2);
        tokio::time::sleep(at.saturating_sub(start.elapsed())).await;
        let (kind, what, fault) = faults[cycle as usize % faults.len()];
        before.push((
            start.elapsed().as_secs(),
            pstat::rss_kib(pid),
            pstat::open_fds(pid),
        ));
        eprintln!("{} s: {kind} {what}", start.elapsed().as_secs());
        *now_doing.lock().unwrap() = format!("{kind} {what}");
        brokers.begin(kind, fault)?;
        tokio::time::sleep(Duration::from_secs(Brokers::fault_secs(args, kind, fault))).await;
        brokers.end(kind, fault)?;
        *now_doing.lock().unwrap() = format!("after {kind} {what}");
        after.push((
            start.elapsed().as_secs(),
            pstat::rss_kib(pid),
            pstat::open_fds(pid),
        ));
        made.push(format!("{kind} {what}"));
        cycle += 1;
    }
    // The last fault recovers (every trigger polls twice more), then the final reading,
    // with the recurring activities still running.
    let rest = Duration::from_secs(args.secs).saturating_sub(start.elapsed());
    tokio::time::sleep(rest.max(Duration::from_secs(args.interval * 2 + 5))).await;
    let rss1 = pstat::rss_kib(pid);
    let cpu = (pstat::cpu_seconds(pid) - cpu0) / start.elapsed().as_secs_f64() * 1000.0;
    let (p1, e1) = counts(&rig.scrape().await);
    stop.store(true, Ordering::Relaxed);
    let _ = client.await;
    let changes = churn.await??;
    let windows = sampler.await.unwrap_or_default();
    // Descriptors are compared at rest, as at the start: while the folder changes, every
    // client of an old generation (a Kafka client holds several) is on its way out. Two
    // intervals for the last change to reach every trigger, then up to 10 s more. Files,
    // watches and threads must be those of the start (but for lapin's I/O runtime, which
    // starts once, at the first reconnection: a thread, two epolls and an eventfd), and
    // the brokers' connections as many; the HTTPS pool's sockets follow the load.
    tokio::time::sleep(Duration::from_secs(args.interval * 2 + 5)).await;
    let settle = Instant::now();
    let at_rest = |brokers: &Brokers| {
        (
            pstat::added(&files0, &files()),
            pstat::added(&threads0, &threads()),
            conns(brokers),
        )
    };
    // The blocking pool's size follows the polls in flight: a few either way.
    let pool_grew = |n: usize| n > pool0 + POOL_SLACK;
    let (mut opened, mut started, mut conns1) = at_rest(&brokers);
    let mut pool1 = pool();
    while (opened.len() > 3 || started.len() > 1 || conns1 != conns0 || pool_grew(pool1))
        && settle.elapsed() < Duration::from_secs(10)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        (opened, started, conns1) = at_rest(&brokers);
        pool1 = pool();
    }
    let quiet1 = pstat::open_fds(pid);
    println!(
        "  at rest, before and after: open fds {quiet0} → {quiet1}; connections to {kinds:?} {conns0:?} → {conns1:?}; the runtime's threads (workers and blocking pool) {pool0} → {pool1}; descriptors (not sockets) open that were not at the start: {opened:?}; other threads: {started:?}"
    );
    let growth = (rss1 as f64 - rss0 as f64) / rss0 as f64 * 100.0;
    let mut trend: Vec<(u64, u64)> = before.iter().map(|(t, r, _)| (*t, *r)).collect();
    trend.push((start.elapsed().as_secs(), rss1));
    let mib = |k: u64| k as f64 / 1024.0;
    let list = |v: &[(u64, u64, usize)]| {
        v.iter()
            .map(|(t, r, f)| format!("{t} {:.1} {f}", mib(*r)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let errors: Vec<String> = e1
        .iter()
        .map(|(k, v)| (k, v - e0.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d > 0.0)
        .map(|((t, k), d)| format!("{t} {k} {d:.0}"))
        .collect();
    println!(
        "soak for {} s, {} triggers, {cycle} faults ({}), {changes} CA-folder changes, leaf rotation every ~10 s, an API client 20 times a second:\n  RSS {:.1} MiB idle, {:.1} MiB base line (two intervals of the recurring activities) → {:.1} MiB at the end ({growth:+.1} % from the base line, {:+.1} % from idle); trend of the readings before each fault and at the end {:+.1} MiB/h\n  operator CPU {cpu:.0} mCPU; API {} ok, {} failed; polls {:.0}, poll errors since the base line: {}\n  before each fault (s, RSS MiB, fds): {}\n  right after each fault: {}",
        args.secs,
        args.triggers,
        made.join(", "),
        mib(cold),
        mib(rss0),
        mib(rss1),
        (rss1 as f64 - cold as f64) / cold as f64 * 100.0,
        mib_per_hour(&trend),
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        p1.values().sum::<f64>(),
        if errors.is_empty() {
            "none".to_string()
        } else {
            errors.join(", ")
        },
        list(&before),
        list(&after),
    );
    println!(
        "  timeline (s from the base line, RSS MiB (jemalloc allocated/resident MiB), open fds, threads, what ran, poll errors in the window):"
    );
    for w in &windows {
        println!("    {w}");
    }
    println!("  failed polls by message (numbers left out), most frequent first:");
    for (n, message) in poll_failures(&rig.log()).into_iter().take(8) {
        println!("    {n} × {message}");
    }
    let mut off = Vec::new();
    // A short run is too short to tell growth from the last fault's working set: it
    // checks the rest.
    if growth >= 5.0 && !args.short {
        off.push(format!("soak: RSS grew {growth:.1} %"));
    }
    if opened.len() > 3 || started.len() > 1 {
        off.push(format!(
            "soak: at rest, descriptors {opened:?} and threads {started:?} that were not there at the start"
        ));
    }
    if conns1 != conns0 {
        off.push(format!(
            "soak: connections to {kinds:?} {conns0:?} at the start, {conns1:?} at rest"
        ));
    }
    if pool_grew(pool1) {
        off.push(format!(
            "soak: the runtime's threads {pool0} at the start, {pool1} at rest (the blocking pool did not shrink back)"
        ));
    }
    if tally.failed.load(Ordering::Relaxed) > 0 {
        off.push(format!(
            "soak: API requests failed: {:?}",
            tally.first_failures.lock().unwrap()
        ));
    }
    if let Some(c) = rig.child.as_mut() {
        c.stop();
    }
    Ok(off)
}
