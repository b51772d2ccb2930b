//! Shared HTTP clients for scalers that read HTTP(S) sources (metrics-api, the RabbitMQ
//! management API): built from the factory's rustls configuration only, one per trust
//! fingerprint and timeout, each with its own keep-alive pool.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};

pub use reqwest::{Client, Url};

use super::{BuildContext, ErrorKind, ScalerError, Tracked};
use crate::pool::SharedPool;
use crate::trust::{Fingerprint, TlsContext, TlsSettings};

/// Default request timeout when neither the trigger nor `KEDA_HTTP_DEFAULT_TIMEOUT` sets one.
pub const DEFAULT_TIMEOUT_MS: u64 = 3000;

/// The timeout from `KEDA_HTTP_DEFAULT_TIMEOUT` (ms), else [`DEFAULT_TIMEOUT_MS`].
#[must_use]
pub fn default_timeout_ms() -> u64 {
    std::env::var("KEDA_HTTP_DEFAULT_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|v| *v > 0)
        .unwrap_or(DEFAULT_TIMEOUT_MS)
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    fingerprint: Option<Fingerprint>,
    timeout_ms: u64,
}

/// Requests in flight at once to one host (`host:port` of the trigger's URL) through one
/// [`HttpClients`], whatever their trust or timeout. A poll over the bound waits its turn
/// in a fair queue. Without it, when a host slows down, every poll waits in the connection
/// pool's own list of waiters, which is scanned in full each time a connection is handed
/// back: quadratic in the number waiting (measured at 40,000 triggers on one host). The
/// connections stay near the bound too, though not exactly: the pool takes a connection
/// back on a task of its own, and a request that gets its turn first opens a new one.
/// Scalers take their turn with [`HostLimit::turn`]; the bound is theirs to use.
pub const MAX_IN_FLIGHT_PER_HOST: usize = 256;

/// The bound of [`MAX_IN_FLIGHT_PER_HOST`] on one host, shared by every trigger on it.
#[derive(Clone)]
pub struct HostLimit(Arc<HostBound>);

struct HostBound {
    target: String,
    turns: Semaphore,
}

/// A request's turn on its host: held until its response body is read.
pub struct Turn<'a> {
    _permit: SemaphorePermit<'a>,
    /// What is left of the request's timeout after waiting for the turn (`None`: there
    /// was no wait, the client's own timeout applies): set it on the request.
    pub remaining: Option<Duration>,
}

impl HostLimit {
    /// Waits for a turn within the request's timeout; when none comes (the host has had
    /// [`MAX_IN_FLIGHT_PER_HOST`] requests in flight for all that time), a `connection`
    /// error, as for a request that timed out.
    pub async fn turn(&self, trigger: &str, timeout_ms: u64) -> Result<Turn<'_>, ScalerError> {
        if let Ok(p) = self.0.turns.try_acquire() {
            return Ok(Turn {
                _permit: p,
                remaining: None,
            });
        }
        let timeout = Duration::from_millis(timeout_ms);
        let started = std::time::Instant::now();
        match tokio::time::timeout(timeout, self.0.turns.acquire()).await {
            Ok(Ok(p)) => Ok(Turn {
                _permit: p,
                remaining: Some(
                    timeout
                        .saturating_sub(started.elapsed())
                        .max(Duration::from_millis(1)),
                ),
            }),
            _ => Err(ScalerError::new(
                ErrorKind::CONNECTION,
                trigger,
                format!(
                    "{}: waited {timeout_ms} ms for a turn, with {MAX_IN_FLIGHT_PER_HOST} requests to it in flight all that time",
                    self.0.target
                ),
            )),
        }
    }

    /// Requests in flight now.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT_PER_HOST - self.0.turns.available_permits()
    }
}

/// A pool of shared reqwest clients. Cheap to clone (clones share the pool).
#[derive(Clone, Default)]
pub struct HttpClients {
    pool: Arc<SharedPool<Key, reqwest::Client>>,
    hosts: Arc<SharedPool<String, HostBound>>,
}

impl HttpClients {
    /// The client for this trust (None: plain http) and timeout.
    pub fn get(
        &self,
        tls: Option<&TlsContext>,
        timeout_ms: u64,
        trigger: &str,
    ) -> Result<Arc<reqwest::Client>, ScalerError> {
        let key = Key {
            fingerprint: tls.map(TlsContext::fingerprint),
            timeout_ms,
        };
        let mut error = None;
        let client = self.pool.get_or_insert_with(&key, || {
            let timeout = Duration::from_millis(timeout_ms);
            let mut b = reqwest::Client::builder()
                .timeout(timeout)
                .connect_timeout(timeout)
                .pool_idle_timeout(Duration::from_secs(90))
                // Polls are spread over the interval: a burst (every trigger polling at
                // start) must not leave thousands of idle connections behind.
                .pool_max_idle_per_host(256)
                .user_agent(concat!("trustscale/", env!("CARGO_PKG_VERSION")));
            b = match tls {
                // The one trust path: the factory's rustls configuration.
                Some(ctx) => b.tls_backend_preconfigured((*ctx.rustls_config()).clone()),
                // A plaintext source. reqwest still wants a TLS configuration (it would
                // panic for want of a crypto provider): one that trusts nothing, so that a
                // redirect to https:// fails instead of bypassing the factory.
                None => b.tls_backend_preconfigured(trusts_nothing()),
            };
            b.build().unwrap_or_else(|e| {
                error = Some(e.to_string());
                reqwest::Client::new()
            })
        });
        match error {
            Some(e) => Err(ScalerError::new(
                ErrorKind::Config,
                trigger,
                format!("cannot build the HTTP client: {e}"),
            )),
            None => Ok(client),
        }
    }

    /// The shared client for a trigger as a [`Tracked`] client: its next handshakes use
    /// new trust anchors; it is rebuilt from a new context (and found again in this pool)
    /// only when an anchor its servers' chains could use is removed.
    pub fn tracked(
        &self,
        ctx: &BuildContext,
        settings: &TlsSettings,
        tls: Option<TlsContext>,
        timeout_ms: u64,
        trigger: &str,
    ) -> Result<Tracked<reqwest::Client>, ScalerError> {
        let clients = self.clone();
        let label = trigger.to_string();
        Tracked::new_rustls(
            ctx,
            settings,
            tls,
            trigger,
            Box::new(move |tls: Option<&TlsContext>| clients.get(tls, timeout_ms, &label)),
        )
    }

    /// Clients alive now.
    #[must_use]
    pub fn live(&self) -> usize {
        self.pool.live()
    }

    /// The bound on requests in flight to `target` (`host:port`, as [`target_of`] gives
    /// it) through these clients; it lives as long as a trigger holds it.
    #[must_use]
    pub fn host_limit(&self, target: &str) -> HostLimit {
        HostLimit(
            self.hosts
                .get_or_insert_with(&target.to_string(), || HostBound {
                    target: target.to_string(),
                    turns: Semaphore::new(MAX_IN_FLIGHT_PER_HOST),
                }),
        )
    }
}

fn trusts_nothing() -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        // The ring provider supports the default versions; this cannot fail.
        .unwrap_or_else(|_| unreachable!("ring supports TLS 1.2 and 1.3"))
}

/// Classifies a reqwest error: timeouts and connection failures (TLS ones by kind).
/// The URL is dropped from the error first: it may carry an API key in its query.
#[must_use]
pub fn request_error(
    trigger: &str,
    e: reqwest::Error,
    tls: Option<&TlsContext>,
    target: &str,
    timeout_ms: u64,
) -> ScalerError {
    let e = e.without_url();
    if e.is_timeout() {
        return ScalerError::new(
            ErrorKind::CONNECTION,
            trigger,
            format!("{target}: no answer within {timeout_ms} ms"),
        );
    }
    ScalerError::from_connect(trigger, &e, tls, target)
}

/// `host:port` of a URL, for messages (never the credentials or path).
#[must_use]
pub fn target_of(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        _ => "(no host)".into(),
    }
}

/// Reads a body, refusing more than `max` bytes.
pub async fn read_capped(resp: &mut reqwest::Response, max: u64) -> Result<Vec<u8>, String> {
    let too_big =
        |n: u64| format!("the response body ({n} bytes or more) exceeds the limit of {max} bytes");
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(too_big(len));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| e.without_url().to_string())?
    {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(too_big((body.len() + chunk.len()) as u64));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
