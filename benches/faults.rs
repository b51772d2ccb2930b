//! The operator's plain ports under hostile clients, measured (not asserted).
//!
//! Runs a `trustscale operator` binary (this build's, or the one named by
//! `TRUSTSCALE_BIN`, to compare builds) with a low file-descriptor limit, then:
//!
//! 1. descriptor exhaustion: 200 clients open connections to the Prometheus port and send
//!    half a request, while a client asks for `/metrics` every 100 ms: how many of those
//!    answers came, how much the operator logged, its peak RSS and CPU;
//! 2. slow clients: 500 idle connections to the same port: how long the operator holds
//!    them before closing them.
//!
//! `cargo bench --bench faults` (short); `FAULTS_SECONDS=60 cargo bench --bench faults`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// (RSS in KiB, CPU ticks) of a process, from /proc.
fn usage(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some((rss, ticks))
}

fn metrics_ok(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.1 200")
}

fn main() {
    let bin = std::env::var("TRUSTSCALE_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_trustscale").to_string());
    let seconds: u64 = std::env::var("FAULTS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let work = tempfile::tempdir().unwrap();
    let manifests = work.path().join("m");
    std::fs::create_dir_all(&manifests).unwrap();
    let log = work.path().join("log");
    // Builds from before the health port have no such flag.
    let help = Command::new(&bin)
        .args(["operator", "--help"])
        .output()
        .unwrap();
    let health = if String::from_utf8_lossy(&help.stdout).contains("--health-probe-bind-address") {
        "--health-probe-bind-address ''"
    } else {
        ""
    };
    let (api, prom) = (free_port(), free_port());
    // A limit of 128 descriptors: enough to start, far fewer than the clients below.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 128; exec {bin} operator --manifests {m} --cert-dir {c} --ca-dir /nonexistent --listen 127.0.0.1:{api} --metrics-bind-address 127.0.0.1:{prom} {health}",
            m = manifests.display(),
            c = work.path().join("certs").display(),
        ))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let start = Instant::now();
    while !metrics_ok(prom) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the operator did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let (_, ticks0) = usage(pid).unwrap();
    let log0 = std::fs::metadata(&log).map_or(0, |m| m.len());

    // 1. Descriptor exhaustion by 200 half-sent requests.
    let mut held = Vec::new();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], prom));
    for _ in 0..200 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n");
            held.push(s);
        }
    }
    let (mut asked, mut answered, mut peak_rss) = (0u32, 0u32, 0u64);
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        asked += 1;
        if metrics_ok(prom) {
            answered += 1;
        }
        if let Some((rss, _)) = usage(pid) {
            peak_rss = peak_rss.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, ticks1) = usage(pid).unwrap_or((0, ticks0));
    let logged = std::fs::metadata(&log).map_or(0, |m| m.len()) - log0;
    let cpu = (ticks1 - ticks0) as f64 / 100.0 / seconds as f64;
    println!(
        "descriptor exhaustion ({} half-sent requests held, {seconds} s, limit 128 fds): /metrics answered {answered} of {asked}; logged {:.1} KiB; peak RSS {:.1} MiB; CPU {:.0} %",
        held.len(),
        logged as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        cpu * 100.0
    );
    drop(held);
    std::thread::sleep(Duration::from_secs(2));

    // 2. Slow clients: how long 500 idle connections are held (at most 90 s).
    let mut idle = Vec::new();
    for _ in 0..500 {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            let _ = s.set_nonblocking(true);
            idle.push(s);
        }
    }
    let opened = idle.len();
    let t0 = Instant::now();
    let mut closed_at = Vec::new();
    while !idle.is_empty() && t0.elapsed() < Duration::from_secs(75) {
        idle.retain_mut(|s| {
            let mut b = [0u8; 64];
            match s.read(&mut b) {
                Ok(0) => {
                    closed_at.push(t0.elapsed());
                    false
                }
                Ok(_) => true,
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    true
                }
                Err(_) => {
                    closed_at.push(t0.elapsed());
                    false
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    closed_at.sort();
    let still_open = idle.len();
    println!(
        "slow clients: {opened} idle connections opened; {} closed by the server, the last after {:.1} s; {still_open} still open after {:.0} s; /metrics answering during it: {}",
        closed_at.len(),
        closed_at.last().map_or(0.0, Duration::as_secs_f64),
        t0.elapsed().as_secs_f64(),
        metrics_ok(prom)
    );
    let _ = child.kill();
    let _ = child.wait();
}
