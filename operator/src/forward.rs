//! A follower's way to the leader: the internal mutual-TLS channel.
//!
//! Every replica serves the aggregated metrics API; only the leader polls. A follower
//! answers a metrics request by asking the leader's API over TLS (1.3 unless
//! `--service-min-tls-version` allows 1.2) with its own internal certificate as the client
//! certificate. The leader's address comes from the Lease ([`crate::leader`]); its
//! certificate is verified against the internal CA under the Service's DNS name (which
//! its leaf carries), never the IP it is dialled at.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Response, StatusCode};

use crate::leader::Leadership;
use crate::pki;
use trustscale::trust::{TlsVersion, TrustFactory};

type Body = Full<Bytes>;

/// Marks a request a follower sent on: a replica that gets one while not leading answers
/// 503 instead of sending it on again (no loop, whatever the Lease said a moment ago).
pub const FORWARDED_HEADER: &str = "x-trustscale-forwarded";

/// How long a follower waits for the leader's answer.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What a cached client was built for: the leader's address and the certificate's mtime.
type ClientKey = (SocketAddr, Option<SystemTime>);

/// Forwards API requests to the leader.
pub struct Forwarder {
    leadership: Arc<Leadership>,
    cert_dir: PathBuf,
    server_name: String,
    trust: TrustFactory,
    /// The client, for (leader address, certificate folder state).
    client: Mutex<Option<(ClientKey, reqwest::Client)>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// A forwarder verifying the leader as `server_name` (`{service}.{namespace}.svc`)
    /// with the internal certificates of `cert_dir`.
    #[must_use]
    pub fn new(
        leadership: Arc<Leadership>,
        cert_dir: PathBuf,
        server_name: String,
        trust: TrustFactory,
    ) -> Arc<Self> {
        Arc::new(Forwarder {
            leadership,
            cert_dir,
            server_name,
            trust,
            client: Mutex::new(None),
        })
    }

    /// Whether requests go to the leader (this replica does not lead).
    #[must_use]
    pub fn should_forward(&self) -> bool {
        !self.leadership.leading()
    }

    fn client(&self, addr: SocketAddr) -> Result<reqwest::Client, String> {
        let stamp = std::fs::metadata(pki::source_dir(&self.cert_dir).join(pki::TLS_CRT))
            .and_then(|m| m.modified())
            .ok();
        let key = (addr, stamp);
        let mut cached = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((k, c)) = cached.as_ref()
            && *k == key
        {
            return Ok(c.clone());
        }
        let set = pki::load(&self.cert_dir).map_err(|e| format!("internal certificates: {e}"))?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in &set.ca {
            roots
                .add(ca.clone())
                .map_err(|e| format!("internal CA: {e}"))?;
        }
        let versions: &[&rustls::SupportedProtocolVersion] =
            match self.trust.options().service_min_tls {
                TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
                _ => &[&rustls::version::TLS13],
            };
        let mut config = rustls::ClientConfig::builder_with_provider(self.trust.crypto_provider())
            .with_protocol_versions(versions)
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(set.chain.clone(), set.key.clone_key())
            .map_err(|e| format!("internal client certificate: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            // Dial the leader's pod IP; verify the name its certificate carries.
            .resolve(&self.server_name, addr)
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        *cached = Some((key, client.clone()));
        Ok(client)
    }

    /// Asks the leader for `path_and_query` and relays its answer.
    pub async fn forward(&self, path_and_query: &str) -> Response<Body> {
        let view = self.leadership.view();
        let Some(addr) = view
            .address
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok())
        else {
            return unavailable("no leader is known yet; retry");
        };
        let client = match self.client(addr) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot build the client for the leader");
                return unavailable("this replica cannot reach the leader; retry");
            }
        };
        let url = format!(
            "https://{}:{}{}",
            self.server_name,
            addr.port(),
            path_and_query
        );
        match client.get(&url).header(FORWARDED_HEADER, "1").send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                let content_type = r
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/json")
                    .to_string();
                // The leader's answers are small (one metric); a larger one is not relayed.
                match read_capped(r, 1 << 20).await {
                    Ok(body) => Response::builder()
                        .status(status)
                        .header("content-type", content_type)
                        .body(Full::new(body))
                        .unwrap_or_else(|_| unavailable("bad answer from the leader")),
                    Err(e) => {
                        tracing::warn!(leader = %addr, error = %e, "the leader's answer could not be read");
                        unavailable("the leader's answer could not be read; retry")
                    }
                }
            }
            Err(e) => {
                tracing::warn!(leader = %addr, error = %trustscale::error::Chain(&e), "the leader did not answer");
                unavailable("the leader did not answer; retry")
            }
        }
    }
}

async fn read_capped(mut r: reqwest::Response, cap: usize) -> Result<Bytes, String> {
    let mut out = Vec::new();
    while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > cap {
            return Err("too large".into());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(out))
}

/// The answer to a forwarded request that reached a replica that does not lead.
#[must_use]
pub fn not_the_leader() -> Response<Body> {
    unavailable("this replica is not the leader (any more); retry")
}

fn unavailable(message: &str) -> Response<Body> {
    crate::service::json(
        StatusCode::SERVICE_UNAVAILABLE,
        &serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": "ServiceUnavailable", "code": 503
        }),
    )
}
