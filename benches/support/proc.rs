//! Another process's figures (from `/proc`), a child that is stopped when dropped, and a
//! Prometheus histogram read from text.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A field of `/proc/{pid}/status` in KiB (`VmRSS:`, `VmHWM:`); 0 when gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Resident memory of `pid`, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// CPU seconds (user + system) used by `pid` so far.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command (which may hold spaces) start after the last ')';
    // utime and stime are the 12th and 13th of them.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Open file descriptors of `pid`.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// A child process: SIGTERM and a wait (then SIGKILL) on `stop` or drop.
pub struct Child(pub std::process::Child);

impl Child {
    /// SIGTERM, up to 10 s for it to exit, then SIGKILL.
    pub fn stop(&mut self) {
        if self.0.try_wait().ok().flatten().is_some() {
            return;
        }
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cumulative histogram: (upper bound, observations at or below it), bounds ascending.
#[derive(Default, Clone, Debug)]
pub struct Histogram(pub Vec<(f64, f64)>);

impl Histogram {
    /// Adds a bucket as read (in the order of the text, which is ascending).
    pub fn push(&mut self, le: f64, count: f64) {
        self.0.push((le, count));
    }

    /// Observations in all.
    pub fn count(&self) -> f64 {
        self.0.last().map_or(0.0, |b| b.1)
    }

    /// This histogram minus an earlier reading of it.
    pub fn minus(&self, earlier: Option<&Histogram>) -> Histogram {
        let Some(e) = earlier else {
            return self.clone();
        };
        Histogram(
            self.0
                .iter()
                .map(|(le, c)| {
                    let before = e.0.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1);
                    (*le, c - before)
                })
                .collect(),
        )
    }

    /// Adds another histogram with the same bounds.
    pub fn add(&mut self, other: &Histogram) {
        if self.0.is_empty() {
            self.0 = other.0.clone();
            return;
        }
        for (b, o) in self.0.iter_mut().zip(&other.0) {
            b.1 += o.1;
        }
    }

    /// The `q` quantile, interpolated linearly within its bucket (as Prometheus's
    /// `histogram_quantile`); NaN without observations.
    pub fn quantile(&self, q: f64) -> f64 {
        let total = self.count();
        if total == 0.0 {
            return f64::NAN;
        }
        let rank = q * total;
        let (mut lower, mut below) = (0.0, 0.0);
        for (le, c) in &self.0 {
            if *c >= rank {
                if le.is_infinite() {
                    return lower;
                }
                let inside = c - below;
                return if inside == 0.0 {
                    *le
                } else {
                    lower + (le - lower) * (rank - below) / inside
                };
            }
            lower = *le;
            below = *c;
        }
        lower
    }

    /// The upper bound of the bucket that holds the slowest observation.
    pub fn max_bound(&self) -> f64 {
        let total = self.count();
        self.0
            .iter()
            .find(|(_, c)| *c >= total)
            .map_or(f64::NAN, |b| b.0)
    }
}

/// The operator's figures read from its Prometheus endpoint.
#[derive(Default, Clone)]
pub struct Scrape {
    /// Poll latency by trigger type.
    pub polls: BTreeMap<String, Histogram>,
    /// Poll errors by (type, kind).
    pub errors: BTreeMap<(String, String), f64>,
    /// The allocator's figures in bytes by kind (`allocated`, `resident`, ...), when the
    /// operator reports them.
    pub allocator: BTreeMap<String, f64>,
}

/// Reads the poll histogram and the poll errors from `url` (`/metrics`).
pub async fn scrape(http: &reqwest::Client, url: &str) -> anyhow::Result<Scrape> {
    let text = http.get(url).send().await?.text().await?;
    let mut s = Scrape::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("trustscale_poll_duration_seconds_bucket{") {
            let (labels, value) = rest.split_once("} ").unwrap_or_default();
            let label = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            let le = label("le");
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            let count: f64 = value.trim().parse().unwrap_or(0.0);
            s.polls.entry(label("type")).or_default().push(le, count);
        } else if let Some(rest) = line.strip_prefix("trustscale_poll_errors_total{") {
            let (labels, value) = rest.split_once("} ").unwrap_or_default();
            let get = |k: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                    .map(|v| v.trim_end_matches('"').to_string())
                    .unwrap_or_default()
            };
            *s.errors.entry((get("type"), get("kind"))).or_default() +=
                value.trim().parse::<f64>().unwrap_or(0.0);
        } else if let Some(rest) = line.strip_prefix("trustscale_allocator_bytes{kind=\"") {
            let (kind, value) = rest.split_once("\"} ").unwrap_or_default();
            s.allocator
                .insert(kind.to_string(), value.trim().parse().unwrap_or(0.0));
        }
    }
    Ok(s)
}

/// Established TCP connections of `pid` to `port` on loopback.
pub fn connections(pid: u32, port: &str) -> usize {
    let out = Command::new("ss")
        .args([
            "-Htnp",
            "state",
            "established",
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output();
    let me = format!("pid={pid},");
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains(&me))
            .count()
    })
    .unwrap_or(0)
}

/// A client for plain HTTP (reqwest still wants a TLS configuration: one that trusts
/// nothing).
pub fn plain_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        )
        .build()?)
}

/// What `read` gives for each entry of `dir`, sorted (entries it gives nothing for left
/// out; nothing when `dir` cannot be read, the process being gone).
fn sorted_entries(dir: String, read: impl Fn(&std::path::Path) -> Option<String>) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter_map(|e| read(&e.path())).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// What the open descriptors of `pid` that are not sockets point at (`readlink` of each).
pub fn non_socket_fd_targets(pid: u32) -> Vec<String> {
    sorted_entries(format!("/proc/{pid}/fd"), |p| {
        let t = std::fs::read_link(p).ok()?.to_string_lossy().into_owned();
        (!t.starts_with("socket:")).then_some(t)
    })
}

/// The names of `pid`'s threads, sorted.
pub fn thread_names(pid: u32) -> Vec<String> {
    sorted_entries(format!("/proc/{pid}/task"), |p| {
        Some(
            std::fs::read_to_string(p.join("comm"))
                .ok()?
                .trim()
                .to_string(),
        )
    })
}

/// The entries of `after` not matched by one of `before` (each counted as often as it
/// occurs).
pub fn added<T: PartialEq + Clone>(before: &[T], after: &[T]) -> Vec<T> {
    let mut left = before.to_vec();
    after
        .iter()
        .filter(|a| match left.iter().position(|b| b == *a) {
            Some(i) => {
                left.swap_remove(i);
                false
            }
            None => true,
        })
        .cloned()
        .collect()
}

/// Open file descriptors of `pid` that are not sockets (files, inotify watches, pipes):
/// what CA-folder churn could leak, unlike sockets, whose count follows the pools.
pub fn open_non_socket_fds(pid: u32) -> usize {
    non_socket_fd_targets(pid).len()
}

/// A TLS 1.3 client configuration from an internal certificate folder: trusting its
/// `ca.crt`, presenting its `tls.crt` and `tls.key` (as a follower replica does). Read
/// through `..data` when there is one, so that a certificate and its key come from the
/// same set even while the folder rotates.
pub fn internal_client_tls(certs: &std::path::Path) -> anyhow::Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let set = std::fs::canonicalize(certs.join("..data")).unwrap_or_else(|_| certs.to_path_buf());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(set.join("ca.crt"))? {
        roots.add(c?)?;
    }
    let chain = CertificateDer::pem_file_iter(set.join("tls.crt"))?.collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_file(set.join("tls.key"))?;
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?)
}
