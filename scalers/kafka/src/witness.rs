//! How a cluster's librdkafka clients follow new trust anchors without being rebuilt.
//!
//! librdkafka verifies brokers with OpenSSL, reading the anchors from the cluster's hashed
//! CA directory ([`crate::cadir`]), so the SDK's context never sees the chains it
//! accepts. After a change of the anchors, the cluster hands every broker it knows of (the
//! bootstrap servers and those the metadata named) to one handshake each through the
//! context ([`TlsContext::witness`]), which makes their chains known to it. Then the
//! context decides ([`TlsContext::follow`]): when no anchor those chains could end in was
//! removed, the directory is updated in place and the clients stay; otherwise, or when a
//! broker could not be seen, the clients are rebuilt.
//!
//! What is left uncovered: a broker that presented a chain ending in an anchor between
//! two changes (so no handshake saw it), and no longer does when that anchor is removed.
//! OpenSSL may still hold the anchor, and the clients keep trusting it until the next
//! rebuild.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trustscale::scaler::{ErrorKind, Follower, ScalerError, Witnessed};
use trustscale::trust::TlsContext;

use crate::KafkaCluster;

/// How long one witness handshake (connection and TLS) may take.
const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many broker addresses are remembered from the metadata.
const MAX_BROKERS: usize = 64;

/// The handshakes of one cluster.
#[derive(Debug, Default)]
pub(crate) struct Witness {
    state: Mutex<State>,
    /// Broker addresses (host:port) named by the metadata.
    brokers: Mutex<BTreeSet<String>>,
}

#[derive(Debug, Default)]
struct State {
    /// The anchors generation the last round was started for (0: none yet).
    generation: u64,
    running: bool,
    /// Every broker of the last finished round was seen.
    seen: bool,
}

impl Witness {
    /// Remembers a broker the metadata named.
    pub(crate) fn broker(&self, host: &str, port: i32) {
        let mut brokers = self
            .brokers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if brokers.len() < MAX_BROKERS {
            brokers.insert(format!("{host}:{port}"));
        }
    }

    /// The answer for `generation`: known, or a round started (or under way) to know it.
    fn witnessed(
        self: &Arc<Self>,
        bootstrap: &str,
        tls: &TlsContext,
        generation: u64,
    ) -> Witnessed {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.running {
            return Witnessed::Pending;
        }
        if state.generation >= generation {
            return if state.seen {
                Witnessed::Yes
            } else {
                Witnessed::No
            };
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Witnessed::No;
        };
        let mut targets: BTreeSet<String> = bootstrap
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        targets.extend(
            self.brokers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .cloned(),
        );
        *state = State {
            generation,
            running: true,
            seen: false,
        };
        let (me, tls) = (Arc::clone(self), tls.clone());
        runtime.spawn(async move {
            let mut seen = true;
            for target in &targets {
                if let Err(e) = handshake(&tls, target).await {
                    tracing::debug!(broker = %target, error = %e, "the broker's chain could not be seen; its clients are rebuilt for the new trust anchors");
                    seen = false;
                    break;
                }
            }
            let mut state = me
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            state.running = false;
            state.seen = seen;
        });
        Witnessed::Pending
    }
}

/// One handshake with `target` (host:port) through `tls`.
async fn handshake(tls: &TlsContext, target: &str) -> std::io::Result<()> {
    let host = match target.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => target,
    };
    tokio::time::timeout(WITNESS_TIMEOUT, async {
        let stream = tokio::net::TcpStream::connect(target).await?;
        tls.witness(host, stream).await
    })
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"))?
}

/// The follower of a cluster's clients.
pub(crate) fn follower(label: String) -> Follower<KafkaCluster> {
    Follower {
        witnessed: Box::new(
            |cluster: &KafkaCluster, tls: &TlsContext, generation: u64| {
                if cluster.ca_dir.is_none() {
                    // The anchors were given inline: nothing to update in place.
                    return Witnessed::No;
                }
                cluster
                    .witness
                    .witnessed(&cluster.bootstrap, tls, generation)
            },
        ),
        take: Box::new(move |cluster: &KafkaCluster, tls: &TlsContext| {
            let dir = cluster.ca_dir.as_ref().ok_or_else(|| {
                ScalerError::new(ErrorKind::Config, &label, "the cluster has no CA directory")
            })?;
            dir.update(&tls.verifying_trust_pem()).map_err(|e| {
                ScalerError::new(
                    ErrorKind::Config,
                    &label,
                    format!("updating the CA directory: {e}"),
                )
            })
        }),
    }
}
