//! Leader election with a `coordination.k8s.io/v1` Lease, as client-go's leaderelection
//! does it: the holder renews `spec.renewTime`; another replica takes the Lease over once
//! it has seen the same record, unchanged, for `leaseDurationSeconds` (measured on its own
//! clock, so clock skew between nodes does not matter). Every write names the
//! resourceVersion it read: two replicas can never both believe they won.
//!
//! The leader also writes the address its followers reach it at (annotation
//! [`ADDRESS_ANNOTATION`]): its pod IP and the internal API port.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};

/// The annotation holding the leader's `ip:port` for its followers.
pub const ADDRESS_ANNOTATION: &str = "trustscale.io/leader-address";

/// How to elect.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace (the operator's).
    pub namespace: String,
    /// This replica (`POD_NAME`, else the host name).
    pub identity: String,
    /// How long a Lease holds without renewal (client-go: 15 s).
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it steps down (10 s).
    pub renew_deadline: Duration,
    /// How often candidates try and the leader renews (2 s).
    pub retry_period: Duration,
    /// `ip:port` followers reach this replica at while it leads, if it can be reached.
    pub address: Option<String>,
}

impl LeaderOptions {
    /// client-go's timings for `lease_name` in `namespace`, the identity from `POD_NAME`
    /// (else the host name).
    #[must_use]
    pub fn new(lease_name: &str, namespace: &str) -> Self {
        LeaderOptions {
            lease_name: lease_name.to_string(),
            namespace: namespace.to_string(),
            identity: identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            address: None,
        }
    }
}

/// `POD_NAME`, else the host name, else a random name.
#[must_use]
pub fn identity() -> String {
    std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| format!("trustscale-{:08x}", fastrand::u32(..)))
}

/// Who leads, as this replica last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderView {
    /// Whether this replica leads.
    pub leading: bool,
    /// The leader's identity, if any.
    pub holder: Option<String>,
    /// The address the leader published, if any.
    pub address: Option<String>,
}

/// The election's state, shared with what depends on it.
#[derive(Debug)]
pub struct Leadership {
    tx: tokio::sync::watch::Sender<LeaderView>,
    /// With an election: until when this replica may act, from the start of its last
    /// successful renewal plus the renew deadline (shorter than the lease, so it stops
    /// before any other replica may take over, whatever its requests are doing).
    until: Option<std::sync::Mutex<Option<Instant>>>,
}

impl Leadership {
    /// A replica that always leads (no election).
    #[must_use]
    pub fn always() -> Arc<Self> {
        let (tx, _) = tokio::sync::watch::channel(LeaderView {
            leading: true,
            holder: None,
            address: None,
        });
        Arc::new(Leadership { tx, until: None })
    }

    /// A replica that does not lead until it wins.
    #[must_use]
    pub fn candidate() -> Arc<Self> {
        let (tx, _) = tokio::sync::watch::channel(LeaderView::default());
        Arc::new(Leadership {
            tx,
            until: Some(std::sync::Mutex::new(None)),
        })
    }

    /// The current view.
    #[must_use]
    pub fn view(&self) -> LeaderView {
        self.tx.borrow().clone()
    }

    /// Whether this replica leads now (and its last renewal is recent enough to act on).
    #[must_use]
    pub fn leading(&self) -> bool {
        self.tx.borrow().leading
            && self.until.as_ref().is_none_or(|u| {
                u.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .is_some_and(|t| Instant::now() < t)
            })
    }

    fn set_until(&self, until: Option<Instant>) {
        if let Some(u) = &self.until {
            *u.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = until;
        }
    }

    /// Follows the view.
    #[must_use]
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<LeaderView> {
        self.tx.subscribe()
    }

    fn set(&self, view: LeaderView) {
        self.tx.send_if_modified(|v| {
            if *v == view {
                false
            } else {
                *v = view;
                true
            }
        });
    }
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// A Lease's holder and renew time, compared to tell whether the holder still renews.
type Record = (Option<String>, Option<String>);

/// The record a replica compares to tell whether the holder still renews.
fn record(lease: &Lease) -> Record {
    let spec = lease.spec.as_ref();
    (
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref().map(|t| t.0.to_string())),
    )
}

/// Runs the election until `stop`; on stop a leader gives the Lease up (its holder is
/// cleared), so that a follower takes over at once rather than after the lease lapses.
pub async fn run(
    client: kube::Client,
    options: LeaderOptions,
    state: Arc<Leadership>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &options.namespace);
    let mut observed: Option<(Record, Instant)> = None;
    let mut last_renew: Option<Instant> = None;
    loop {
        let started = Instant::now();
        // An attempt that hangs is an attempt that failed: it never outlasts the deadline.
        let outcome = match tokio::time::timeout(
            options.renew_deadline,
            try_acquire_or_renew(&api, &options, &mut observed),
        )
        .await
        {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", options.renew_deadline)),
        };
        let view = state.view();
        match outcome {
            Ok(next) => {
                if next.leading {
                    last_renew = Some(started);
                    state.set_until(Some(started + options.renew_deadline));
                    if !view.leading {
                        tracing::info!(identity = %options.identity, lease = %options.lease_name, "became the leader");
                    }
                } else {
                    state.set_until(None);
                    if view.leading {
                        tracing::warn!(identity = %options.identity, holder = ?next.holder, "lost the lease; stepping down");
                    }
                }
                state.set(next);
            }
            Err(e) => {
                // A leader that cannot renew in time stops acting before another replica
                // may take over (renew deadline < lease duration).
                let stale = last_renew.is_none_or(|t| t.elapsed() >= options.renew_deadline);
                if view.leading && stale {
                    tracing::warn!(error = %e, "cannot renew the lease in time; stepping down");
                    // Not "the leader is me" any more: followers' requests must not loop.
                    state.set_until(None);
                    state.set(LeaderView::default());
                    last_renew = None;
                } else {
                    tracing::debug!(error = %e, "lease round failed");
                }
            }
        }
        let jitter = options.retry_period.mul_f64(fastrand::f64() * 0.2);
        tokio::select! {
            _ = tokio::time::sleep(options.retry_period + jitter) => {}
            _ = stop.changed() => break,
        }
    }
    if state.view().leading {
        // Stop acting first; give writes already decided a moment; then let go, so that
        // the next leader starts after the last of ours.
        state.set_until(None);
        state.set(LeaderView::default());
        tokio::time::sleep(options.retry_period.min(Duration::from_millis(500))).await;
        release(&api, &options).await;
    }
}

async fn release(api: &Api<Lease>, options: &LeaderOptions) {
    let Ok(Some(mut lease)) = api.get_opt(&options.lease_name).await else {
        return;
    };
    if lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        != Some(options.identity.as_str())
    {
        return;
    }
    if let Some(spec) = lease.spec.as_mut() {
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now_micro());
    }
    if let Some(a) = lease.metadata.annotations.as_mut() {
        a.remove(ADDRESS_ANNOTATION);
    }
    match api
        .replace(&options.lease_name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => tracing::info!(lease = %options.lease_name, "gave up the lease"),
        Err(e) => tracing::warn!(error = %e, "cannot give up the lease; it lapses by itself"),
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    options: &LeaderOptions,
    observed: &mut Option<(Record, Instant)>,
) -> Result<LeaderView, kube::Error> {
    let me = options.identity.as_str();
    let duration_secs = i32::try_from(options.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX);
    let annotations = || {
        options.address.as_ref().map(|a| {
            [(ADDRESS_ANNOTATION.to_string(), a.clone())]
                .into_iter()
                .collect()
        })
    };
    let Some(mut lease) = api.get_opt(&options.lease_name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(options.lease_name.clone()),
                namespace: Some(options.namespace.clone()),
                annotations: annotations(),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(me.to_string()),
                lease_duration_seconds: Some(duration_secs),
                acquire_time: Some(now_micro()),
                renew_time: Some(now_micro()),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        api.create(&PostParams::default(), &lease).await?;
        return Ok(LeaderView {
            leading: true,
            holder: Some(me.to_string()),
            address: options.address.clone(),
        });
    };
    let rec = record(&lease);
    let now = Instant::now();
    match observed {
        Some((seen, _)) if *seen == rec => {}
        _ => *observed = Some((rec.clone(), now)),
    }
    let since = observed.as_ref().map_or(Duration::ZERO, |(_, t)| now - *t);
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let held_for = spec
        .lease_duration_seconds
        .map_or(options.lease_duration, |s| {
            Duration::from_secs(u64::try_from(s.max(1)).unwrap_or(1))
        });
    let mine = holder.as_deref() == Some(me);
    if !mine && holder.is_some() && since < held_for {
        return Ok(LeaderView {
            leading: false,
            holder,
            address: lease
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(ADDRESS_ANNOTATION).cloned()),
        });
    }
    // Renew ours, or take over a lapsed or released one.
    let mut next = spec;
    if !mine {
        next.acquire_time = Some(now_micro());
        next.lease_transitions = Some(next.lease_transitions.unwrap_or(0).saturating_add(1));
    }
    next.holder_identity = Some(me.to_string());
    next.lease_duration_seconds = Some(duration_secs);
    next.renew_time = Some(now_micro());
    lease.spec = Some(next);
    let mut a = lease.metadata.annotations.take().unwrap_or_default();
    a.remove(ADDRESS_ANNOTATION);
    a.extend(annotations().unwrap_or_default());
    lease.metadata.annotations = Some(a);
    // The resourceVersion read is in `lease.metadata`: a concurrent writer makes this 409.
    let written = api
        .replace(&options.lease_name, &PostParams::default(), &lease)
        .await?;
    *observed = Some((record(&written), Instant::now()));
    Ok(LeaderView {
        leading: true,
        holder: Some(me.to_string()),
        address: options.address.clone(),
    })
}
