//! How a cluster's librdkafka clients follow new trust anchors without being rebuilt.
//!
//! librdkafka verifies brokers with OpenSSL, reading the anchors from the cluster's hashed
//! CA directory ([`crate::cadir`]), so the SDK's context never sees the chains it
//! accepts. So the cluster hands every broker it knows of (the bootstrap servers and
//! those the metadata named) to one handshake each through the context
//! ([`TlsContext::witness`]), which makes their chains known to it: a round at the first
//! poll, one at the first poll after the metadata named a broker no round covered, and
//! one after every change of the anchors. At a change, the context decides with what the
//! rounds so far have seen ([`TlsContext::follow`]): when no anchor those chains could
//! end in was removed, the directory is updated in place and the clients stay;
//! otherwise, when the last round could not see a broker, or when the change cannot be
//! made in place (see [`crate::cadir::CaDir::update`]), they are rebuilt. A change made
//! while no finished round covers every broker known waits for one (the clients are
//! kept meanwhile; a round takes at most [`WITNESS_TIMEOUT`]).
//!
//! What is left uncovered: a broker that presented a chain ending in an anchor between
//! two rounds (so no handshake saw it), and no longer does when that anchor is removed.
//! OpenSSL may still hold the anchor, and the clients keep trusting it until the next
//! rebuild.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use trustscale::scaler::{ErrorKind, Follower, ScalerError, Witnessed};
use trustscale::trust::TlsContext;

use crate::KafkaCluster;

/// How long a round of handshakes (connections and TLS, all brokers at once) may take.
pub(crate) const WITNESS_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many broker addresses are remembered from the metadata; a cluster that
/// names more is rebuilt at every change.
const MAX_BROKERS: usize = 64;

/// The handshakes of one cluster.
#[derive(Debug, Default)]
pub(crate) struct Witness {
    state: Mutex<State>,
    /// Broker addresses (host:port) named by the metadata.
    brokers: Mutex<Brokers>,
}

#[derive(Debug, Default)]
struct Brokers {
    known: BTreeSet<String>,
    /// More than [`MAX_BROKERS`] were named.
    overflow: bool,
    /// Counts the changes of `known` and `overflow`: a round covers the brokers of the
    /// version it started with.
    version: u64,
}

#[derive(Debug, Default)]
struct State {
    running: bool,
    /// The last finished round.
    done: Option<Round>,
}

/// What a finished round covered and saw.
#[derive(Debug, Clone, Copy)]
struct Round {
    /// The anchors generation it started at.
    generation: u64,
    /// The version of the brokers it handshook with.
    brokers: u64,
    /// Whether every broker was seen.
    seen: bool,
}

/// Sets `running` back when a round ends, however it ends (a panic, a runtime stopping).
struct Running(Arc<Witness>, Round);

impl Drop for Running {
    fn drop(&mut self) {
        let mut state = self
            .0
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        state.running = false;
        state.done = Some(self.1);
    }
}

impl Witness {
    /// Remembers a broker the metadata named.
    pub(crate) fn broker(&self, host: &str, port: i32) {
        let mut brokers = self
            .brokers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        if brokers.known.contains(&address) {
            return;
        }
        if brokers.known.len() < MAX_BROKERS {
            brokers.known.insert(address);
            brokers.version += 1;
        } else if !brokers.overflow {
            brokers.overflow = true;
            brokers.version += 1;
        }
    }

    /// The version of the brokers known now.
    fn brokers_version(&self) -> u64 {
        self.brokers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .version
    }

    /// Whether the last round saw every broker, if one ended that covered every broker
    /// known now.
    pub(crate) fn seen(&self) -> Option<bool> {
        let version = self.brokers_version();
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .done
            .filter(|round| round.brokers >= version)
            .map(|round| round.seen)
    }

    /// Starts a round for `generation` and the brokers known now, unless one is under way
    /// or one that covered both (or later) ended. False when no round can run (no
    /// runtime).
    pub(crate) fn start(
        self: &Arc<Self>,
        bootstrap: &str,
        tls: &TlsContext,
        generation: u64,
    ) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let version = self.brokers_version();
        {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if state.running
                || state
                    .done
                    .is_some_and(|r| r.generation >= generation && r.brokers >= version)
            {
                return true;
            }
            state.running = true;
        }
        let (targets, overflow, version) = {
            let brokers = self
                .brokers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut targets: BTreeSet<String> =
                bootstrap.split(',').filter_map(bootstrap_address).collect();
            targets.extend(brokers.known.iter().cloned());
            (targets, brokers.overflow, brokers.version)
        };
        // Dropped with the round's task, however it ends (the lock is not held here).
        let running = Running(
            Arc::clone(self),
            Round {
                generation,
                brokers: version,
                seen: false,
            },
        );
        let tls = tls.clone();
        runtime.spawn(async move {
            // The whole guard moves into the task (not only the field written below).
            let mut running = running;
            if overflow {
                tracing::debug!("more brokers than are followed; the clients are rebuilt for new trust anchors");
                return;
            }
            let mut round = tokio::task::JoinSet::new();
            for target in targets {
                let tls = tls.clone();
                round.spawn(async move {
                    let r = handshake(&tls, &target).await;
                    (target, r)
                });
            }
            let all = tokio::time::timeout(WITNESS_TIMEOUT, async {
                while let Some(done) = round.join_next().await {
                    match done {
                        Ok((_, Ok(()))) => {}
                        Ok((target, Err(e))) => {
                            tracing::debug!(broker = %target, error = %e, "the broker's chain could not be seen; the clients are rebuilt for new trust anchors");
                            return false;
                        }
                        Err(_) => return false,
                    }
                }
                true
            })
            .await;
            running.1.seen = all.unwrap_or(false);
        });
        true
    }

    /// The answer for a change to `generation`: what the rounds so far saw, once one has
    /// ended that covered every broker known now (a round for `generation` is started
    /// meanwhile, so the chains stay known); until then, a round is under way. No when
    /// the last round missed a broker, or when no round can run.
    fn witnessed(
        self: &Arc<Self>,
        bootstrap: &str,
        tls: &TlsContext,
        generation: u64,
    ) -> Witnessed {
        let done = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .done;
        let current = done.is_some_and(|r| r.brokers >= self.brokers_version());
        match done {
            Some(Round { seen: false, .. }) => Witnessed::No,
            _ if !self.start(bootstrap, tls, generation) => Witnessed::No,
            Some(Round { seen: true, .. }) if current => Witnessed::Yes,
            // None, or a round that did not know a broker the metadata named since.
            _ => Witnessed::Pending,
        }
    }
}

/// `host:port` of a bootstrap entry (`[SSL://]host[:port]`; librdkafka's default port
/// 9092 when it has none).
fn bootstrap_address(entry: &str) -> Option<String> {
    let entry = entry.trim();
    let entry = entry.split_once("://").map_or(entry, |(_, rest)| rest);
    if entry.is_empty() {
        return None;
    }
    let has_port = match entry.rsplit_once(':') {
        Some((host, port)) => {
            port.parse::<u16>().is_ok() && (!host.contains(':') || host.ends_with(']'))
        }
        None => false,
    };
    Some(match (has_port, entry.contains(':')) {
        (true, _) => entry.to_string(),
        (false, true) if !entry.starts_with('[') => format!("[{entry}]:9092"),
        (false, _) => format!("{entry}:9092"),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_entries_become_addresses() {
        assert_eq!(
            bootstrap_address(" localhost:19092 ").as_deref(),
            Some("localhost:19092")
        );
        assert_eq!(
            bootstrap_address("SSL://kafka-0:9093").as_deref(),
            Some("kafka-0:9093")
        );
        assert_eq!(
            bootstrap_address("kafka-0").as_deref(),
            Some("kafka-0:9092")
        );
        assert_eq!(
            bootstrap_address("[::1]:9093").as_deref(),
            Some("[::1]:9093")
        );
        assert_eq!(bootstrap_address("::1").as_deref(), Some("[::1]:9092"));
        assert_eq!(bootstrap_address(""), None);
    }

    #[test]
    fn a_metadata_host_in_ipv6_is_bracketed_and_too_many_brokers_are_noted() {
        let w = Witness::default();
        w.broker("::1", 9093);
        w.broker("::1", 9093);
        assert!(w.brokers.lock().unwrap().known.contains("[::1]:9093"));
        for i in 0..MAX_BROKERS {
            w.broker(&format!("b{i}"), 9092);
        }
        let b = w.brokers.lock().unwrap();
        assert_eq!(b.known.len(), MAX_BROKERS);
        assert!(b.overflow);
    }

    #[test]
    fn a_round_covers_only_the_brokers_known_when_it_started() {
        let w = Witness::default();
        w.broker("kafka-0", 9093);
        let version = w.brokers_version();
        w.state.lock().unwrap().done = Some(Round {
            generation: 1,
            brokers: version,
            seen: true,
        });
        assert_eq!(w.seen(), Some(true));
        // Named again: nothing new.
        w.broker("kafka-0", 9093);
        assert_eq!(w.seen(), Some(true));
        // A broker the round did not handshake with: nothing is known of its chain.
        w.broker("kafka-1", 9093);
        assert_eq!(w.seen(), None);
        // Overflowing changes what a round covers too, once.
        for i in 0..MAX_BROKERS {
            w.broker(&format!("b{i}"), 9092);
        }
        let version = w.brokers_version();
        w.broker("one-more", 9092);
        assert_eq!(w.brokers_version(), version);
    }
}
