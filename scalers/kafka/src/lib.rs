//! The `kafka` scaler of trustscale: consumer-group lag, computed as KEDA computes it.
//!
//! Parameters as KEDA: `bootstrapServers`, `consumerGroup`, `topic` (optional: every topic
//! the group has offsets for), `lagThreshold` (10), `activationLagThreshold` (0),
//! `offsetResetPolicy` (latest|earliest), `allowIdleConsumers`, `excludePersistentLag`,
//! `limitToPartitionsWithLag`, `ensureEvenDistributionOfPartitions`,
//! `partitionLimitation` ("1,2,10-12"), `scaleToZeroOnInvalidOffset`; `tls` (metadata or
//! auth, the ScaledObject wins), the TLS settings, `sasl` (none|plaintext|scram_sha256|
//! scram_sha512), `username`, `password`.
//!
//! TLS comes only from the factory's context, translated for librdkafka in one place
//! ([`librdkafka_tls`], in this crate):
//! the merged anchors as `ssl.ca.pem`, the identity, hostname verification on; settings
//! librdkafka cannot honour are refused there. The anchors reach librdkafka as a hashed
//! CA directory of the cluster's ([`cadir`]); when they change, the cluster's clients
//! keep running and the directory is updated in place, unless an anchor the brokers'
//! chains could use was removed, which rebuilds them ([`witness`]).
//!
//! Per cluster (bootstrap servers + trust + credentials), shared by every trigger on it:
//! one metadata client, whose metadata cache holds only the topics asked for (refreshed
//! every 15 s) and which reads newest offsets, plus one committed-offset reader per
//! consumer group. Concurrent polls do not each send their own request: the polls waiting
//! on a cluster (newest offsets), a topic (its partitions, when the cache is stale) or a
//! group (committed offsets) are answered together by one request sent after they asked
//! ([`rounds`]), so the blocking threads and broker requests follow the number of
//! clusters, topics and groups, not of triggers. When librdkafka fails a cluster's whole
//! newest-offsets request for one partition's error, the topics are asked again one by
//! one, so that error lands on its own topic's triggers only. One client for every group
//! would need librdkafka's `ListConsumerGroupOffsets` admin call, and librdkafka 2.12
//! aborts the whole process when a broker drops the connection under such a call (a
//! use-after-free in its coordinator request path; reproduced here by the broker restart
//! test), so the group's own consumer handle, librdkafka's well-trodden path, reads them.
//! The clients' log and error events are kept, so a TLS failure is reported as what it is
//! (`unknown_issuer`, `client_cert_required`, ...) instead of "all brokers are down".
//!
//! librdkafka's reads block, so they run on the tokio runtime's blocking pool, one thread
//! per round in flight. While the brokers are down every round waits for librdkafka's
//! timeout, and a cluster with a hundred groups grows the pool by a hundred threads. tokio
//! ends a pool thread only after it waited for work for its keep-alive (10 s by default),
//! which a busy pool's threads, handed work in turn, never do: an embedder with many groups
//! should build its runtime with a short `thread_keep_alive` (the `trustscale` binary uses
//! 1 s), or the pool keeps its largest size, and the allocator's per-thread caches with it.

// No unsafe code, except the modules that must call C directly: `queue` (librdkafka's
// API) and `heap` (the C library's `malloc_trim`), each of which says why.
#![deny(unsafe_code)]

mod cadir;
mod heap;
mod queue;
mod rounds;
mod tls;
mod witness;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, TopicPartitionList};

pub use rdkafka;
pub use tls::{
    LibrdkafkaTls, OPENSSL_CONF_ENV, classify_librdkafka_message, librdkafka_tls,
    openssl_cipher_name, openssl_config_for, openssl_enforced_min, openssl_name,
};
use trustscale::pool::{SharedPool, secret_digest};
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, Param, Params, Poll, Scaler, ScalerBuilder, ScalerError,
    Tracked, TriggerSpec,
};
use trustscale::trust::{FailureKind, Fingerprint, TlsContext};

/// The parameters of `kafka` (besides the TLS settings).
pub const PARAMETERS: &[Param] = &[
    Param::new("bootstrapServers", "Comma-separated `host:port` of the brokers."),
    Param::new("consumerGroup", "The consumer group whose lag is measured."),
    Param::new("topic", "The topic; empty: every topic the group has committed offsets for."),
    Param::new("lagThreshold", "The target lag per replica.").default("10"),
    Param::new("activationLagThreshold", "The lag above which the trigger is active.").default("0"),
    Param::new("offsetResetPolicy", "What a partition without a committed offset counts as.").default("latest").one_of(&["latest", "earliest"]),
    Param::new("allowIdleConsumers", "Do not cap the value at partitions × lagThreshold.").default("false"),
    Param::new("excludePersistentLag", "A partition whose committed offset did not move since the last poll counts 0 for scaling (still counts for activation).").default("false"),
    Param::new("limitToPartitionsWithLag", "Cap at partitions-with-lag × lagThreshold.").default("false"),
    Param::new("ensureEvenDistributionOfPartitions", "Round the replica count up to a divisor of the partition count.").default("false"),
    Param::new("partitionLimitation", "Only these partitions (\"1,2,10-12\")."),
    Param::new("scaleToZeroOnInvalidOffset", "With latest, a partition without a committed offset counts 0 instead of 1.").default("false"),
    Param::new("sasl", "SASL mechanism.").default("none").one_of(&["none", "plaintext", "scram_sha256", "scram_sha512"]),
    Param::secret("username", "SASL user name."),
    Param::secret("password", "SASL password."),
];

/// How long one librdkafka call may take. At each step of a poll (the partitions, when the
/// cache is stale; the committed offsets; the newest offsets) it may wait for the round in
/// flight and then for its own ([`rounds`]): twice this, inside the engine's 10 s poll
/// timeout. A failed step ends the poll, so a broker that is down or refuses the handshake
/// is reported as what it is, not as a poll that timed out; a broker that answers slowly
/// at one step and fails at the next can still take the poll past 10 s.
const TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClusterKey {
    bootstrap: String,
    tls: Option<Fingerprint>,
    sasl: String,
    username: String,
    password: [u8; 32],
}

/// The client context of a cluster's clients: librdkafka's log lines go to `tracing`, and
/// the newest error or TLS log line is kept (shared by the cluster's clients), because the
/// errors returned by librdkafka's calls only say that no broker answered.
///
/// What is kept is read, not taken, and counts for [`REASON_WINDOW`]: the cluster's clients
/// share their trust and credentials, so one client's handshake failure is the others'
/// too, and concurrent rounds (of the cluster and of each group) must not erase the
/// reason another round's failure is about to read.
#[derive(Clone, Default)]
pub struct KafkaContext {
    last: Arc<Mutex<Option<(std::time::Instant, String)>>>,
}

/// How long a reported error counts as the reason of a failed call: as long as a poll's
/// longest step (the round in flight and its own).
const REASON_WINDOW: Duration = Duration::from_secs(2 * TIMEOUT.as_secs());

impl KafkaContext {
    /// Keeps `text` unless what is kept already names a TLS or login failure and `text`
    /// does not ("1/1 brokers are down" follows every failed handshake).
    fn record(&self, text: String) {
        let tls = |t: &str| {
            is_auth_message(t)
                || !matches!(
                    classify_librdkafka_message(t),
                    None | Some(FailureKind::Connection)
                )
        };
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last
            .as_ref()
            .is_some_and(|(at, t)| at.elapsed() < REASON_WINDOW && tls(t))
            && !tls(&text)
        {
            return;
        }
        *last = Some((std::time::Instant::now(), text));
    }

    /// The error reported last, if within [`REASON_WINDOW`].
    fn recent(&self) -> Option<String> {
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < REASON_WINDOW)
            .map(|(_, t)| t.clone())
    }
}

impl ClientContext for KafkaContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "trustscale::kafka::librdkafka", ?level, facility = fac, "{message}");
        let severe = matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        );
        if severe || classify_librdkafka_message(message).is_some() {
            self.record(message.to_string());
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(target: "trustscale::kafka::librdkafka", %error, "{reason}");
        self.record(reason.to_string());
    }
}

impl ConsumerContext for KafkaContext {}

/// How long the partitions of a topic are taken from the cluster's metadata cache.
const METADATA_TTL: Duration = Duration::from_secs(15);

type GroupReaders = HashMap<String, Arc<BaseConsumer<KafkaContext>>>;

/// A partition of a topic.
type Partition = (String, i32);

/// What a round of newest-offset reads answers: per partition asked, its newest offset or
/// why there is none; or why the whole read failed. Errors name no trigger (each poll
/// puts its own).
type NewestAnswer = Result<Arc<HashMap<Partition, Result<i64, ScalerError>>>, ScalerError>;

/// What a round of committed-offset reads answers: the partitions with a committed offset.
type CommittedAnswer = Result<Arc<HashMap<Partition, i64>>, ScalerError>;

/// The rounds of one topic's partition reads.
type TopicRounds = Arc<rounds::Rounds<(), Result<Vec<i32>, ScalerError>>>;

/// The rounds of committed-offset reads of one group.
type GroupRounds = Arc<rounds::Rounds<Vec<Partition>, CommittedAnswer>>;

/// The shared clients of one Kafka cluster.
pub struct KafkaCluster {
    config: ClientConfig,
    context: KafkaContext,
    /// The metadata client, created on first use: building a trigger connects nowhere
    /// (an admission webhook builds triggers it must not run).
    client: Mutex<Option<Arc<BaseConsumer<KafkaContext>>>>,
    groups: Mutex<GroupReaders>,
    created: AtomicU64,
    /// Partitions of the topics asked for, with when they were fetched.
    partitions: Mutex<HashMap<String, (std::time::Instant, Vec<i32>)>>,
    /// Each topic's partitions, read again (when the cache is stale) for every poll
    /// waiting in one metadata request per round.
    metadata: Mutex<HashMap<String, TopicRounds>>,
    /// When every client's events were last served.
    served_all: Mutex<std::time::Instant>,
    /// The newest offsets, read for every poll waiting in one call per round.
    newest: Arc<rounds::Rounds<Vec<Partition>, NewestAnswer>>,
    /// Each group's committed offsets, read for every poll waiting in one call per round.
    committed: Mutex<HashMap<String, GroupRounds>>,
    /// The CA directory the clients read (kept as long as they live), updated in place
    /// when they follow new anchors.
    ca_dir: Option<Arc<cadir::CaDir>>,
    /// The bootstrap servers.
    bootstrap: String,
    /// The handshakes that make the brokers' chains known to the context.
    witness: Arc<witness::Witness>,
}

impl Drop for KafkaCluster {
    /// The clients go on a blocking thread: librdkafka's destroy joins each client's
    /// threads and closes its connections, and a cluster holds a client per consumer
    /// group, so a cluster dropped by a poll (the last holder after a rebuild) would
    /// otherwise hold an async worker, and every poll waiting on it, for as long.
    /// The CA directory follows them.
    fn drop(&mut self) {
        let client = self
            .client
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let groups = std::mem::take(
            self.groups
                .get_mut()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        // The CA directory goes after the clients that read it (and its files are
        // removed off the async workers too).
        let dir = self.ca_dir.take();
        if client.is_none() && groups.is_empty() && dir.is_none() {
            return;
        }
        let rest = move || {
            drop((client, groups));
            drop(dir);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(rest)),
            Err(_) => rest(),
        }
    }
}

impl KafkaCluster {
    /// rdkafka clients created for this cluster so far: the metadata client and one
    /// committed-offset reader per consumer group.
    pub fn clients_created(&self) -> u64 {
        self.created.load(Ordering::Relaxed)
    }

    /// The hashed CA directory its clients read, if the anchors are given that way.
    #[must_use]
    pub fn ca_dir(&self) -> Option<&std::path::Path> {
        self.ca_dir.as_deref().map(cadir::CaDir::path)
    }

    /// Whether the last round of handshakes with the brokers saw every one of them (see
    /// [`witness`]), once one has ended that covered every broker known now (the
    /// bootstrap servers and those the metadata named; a poll starts a round when the
    /// metadata named a new one).
    #[must_use]
    pub fn brokers_witnessed(&self) -> Option<bool> {
        self.witness.seen()
    }

    /// The metadata client (created on first use).
    fn client(&self) -> Result<Arc<BaseConsumer<KafkaContext>>, KafkaError> {
        let mut client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = client.as_ref() {
            return Ok(Arc::clone(c));
        }
        let c = Arc::new(self.config.create_with_context(self.context.clone())?);
        self.created.fetch_add(1, Ordering::Relaxed);
        *client = Some(Arc::clone(&c));
        Ok(c)
    }

    /// The committed-offset reader of `group` (created on first use).
    fn group(&self, group: &str) -> Result<Arc<BaseConsumer<KafkaContext>>, KafkaError> {
        let mut groups = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = groups.get(group) {
            return Ok(Arc::clone(c));
        }
        let mut config = self.config.clone();
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false");
        let consumer = Arc::new(config.create_with_context(self.context.clone())?);
        self.created.fetch_add(1, Ordering::Relaxed);
        groups.insert(group.to_string(), Arc::clone(&consumer));
        Ok(consumer)
    }

    /// The partitions of `topic` when the cache has them from less than [`METADATA_TTL`]
    /// ago (never blocks).
    fn cached_partitions(&self, topic: &str) -> Option<Vec<i32>> {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(topic)
            .filter(|(at, _)| at.elapsed() < METADATA_TTL)
            .map(|(_, p)| p.clone())
    }

    /// The partitions of `topic`: from the cache when fetched less than [`METADATA_TTL`]
    /// ago, else from a metadata request for that topic only (blocking).
    fn topic_partitions(&self, label: &str, topic: &str) -> Result<Vec<i32>, ScalerError> {
        if let Some(p) = self.cached_partitions(topic) {
            return Ok(p);
        }
        let md = self
            .client()
            .map_err(|e| rd_error(label, self, &e, "creating the Kafka client"))?
            .fetch_metadata(Some(topic), TIMEOUT)
            .map_err(|e| rd_error(label, self, &e, "fetching metadata"))?;
        for b in md.brokers() {
            self.witness.broker(b.host(), b.port());
        }
        let mut ids = Vec::new();
        for t in md.topics() {
            if let Some(err) = t.error() {
                let code = rdkafka::types::RDKafkaErrorCode::from(err);
                return Err(kafka_error(
                    label,
                    self,
                    Some(code),
                    &code.to_string(),
                    &format!("topic {:?}", t.name()),
                ));
            }
            ids.extend(t.partitions().iter().map(|p| p.id()));
        }
        ids.sort_unstable();
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(topic.to_string(), (std::time::Instant::now(), ids.clone()));
        Ok(ids)
    }

    /// Serves the log and error events waiting on every client's queue (to the shared
    /// context), so they are seen and the queues stay short.
    fn serve_events(&self) {
        self.serve_metadata_events();
        let readers: Vec<_> = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for r in readers {
            serve(&r);
        }
    }

    /// Serves every client's events when that was last done a second ago or more. A round
    /// serves its own client's events; this keeps the others' queues short too (a reader
    /// whose triggers are gone has no rounds of its own, and its queue must not grow).
    fn serve_all_now_and_then(&self) {
        let due = {
            let mut last = self
                .served_all
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let due = last.elapsed() >= Duration::from_secs(1);
            if due {
                *last = std::time::Instant::now();
            }
            due
        };
        if due {
            self.serve_events();
        }
    }

    /// Serves the events of the metadata client only.
    fn serve_metadata_events(&self) {
        let client = self
            .client
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(c) = client {
            serve(&c);
        }
    }

    /// Serves the events of `group`'s reader only, when it exists.
    fn serve_group_events(&self, group: &str) {
        let reader = self
            .groups
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(group)
            .cloned();
        if let Some(r) = reader {
            serve(&r);
        }
    }
}

/// Serves the log and error events waiting on a client's queue (to its context).
fn serve(c: &BaseConsumer<KafkaContext>) {
    let waiting = queue::main_queue_len(c.client()).min(10_000);
    for _ in 0..waiting {
        // No subscription: nothing but events can come back.
        let _ = c.poll(Duration::ZERO);
    }
}

/// Builds `kafka` scalers; owns the shared cluster clients.
#[derive(Default)]
pub struct KafkaBuilder {
    clusters: Arc<SharedPool<ClusterKey, KafkaCluster>>,
    ca_dirs: Arc<cadir::CaDirs>,
}

impl KafkaBuilder {
    /// Cluster client sets alive now.
    #[must_use]
    pub fn live_clusters(&self) -> usize {
        self.clusters.live()
    }

    /// Every live cluster.
    #[must_use]
    pub fn clusters(&self) -> Vec<Arc<KafkaCluster>> {
        self.clusters.all()
    }
}

/// Parses KEDA's `partitionLimitation` ("1,2,10-12").
fn parse_partitions(label: &str, text: &str) -> Result<BTreeSet<i32>, ScalerError> {
    let mut out = BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || {
            ScalerError::config(
                label,
                "partitionLimitation",
                format!("{part:?} is not a partition or a range like 10-12"),
            )
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (i32, i32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    Ok(out)
}

/// The `kafka` scaler.
pub struct KafkaScaler {
    label: String,
    cluster: Tracked<KafkaCluster>,
    group: String,
    topic: Option<String>,
    spec: MetricSpec,
    opts: LagOptions,
    previous: Mutex<HashMap<(String, i32), i64>>,
}

/// The lag options of a trigger.
#[derive(Clone, Debug, Default)]
pub struct LagOptions {
    /// lagThreshold.
    pub lag_threshold: f64,
    /// activationLagThreshold.
    pub activation: f64,
    /// offsetResetPolicy is earliest.
    pub earliest: bool,
    /// allowIdleConsumers.
    pub allow_idle_consumers: bool,
    /// excludePersistentLag.
    pub exclude_persistent_lag: bool,
    /// limitToPartitionsWithLag.
    pub limit_to_partitions_with_lag: bool,
    /// ensureEvenDistributionOfPartitions.
    pub even_distribution: bool,
    /// scaleToZeroOnInvalidOffset.
    pub scale_to_zero_on_invalid_offset: bool,
    /// partitionLimitation.
    pub partitions: BTreeSet<i32>,
}

/// One partition's offsets: (newest offset, committed offset or None).
pub type PartitionOffsets = ((String, i32), i64, Option<i64>);

/// KEDA's lag arithmetic: the metric value and the activity from per-partition offsets.
/// `previous` holds the committed offsets of the last poll (for excludePersistentLag).
pub fn compute_lag(
    opts: &LagOptions,
    parts: &[PartitionOffsets],
    previous: &mut HashMap<(String, i32), i64>,
) -> (f64, bool) {
    let (mut total, mut total_with_persistent, mut with_lag) = (0i64, 0i64, 0i64);
    for (key, newest, committed) in parts {
        let (lag, lag_with_persistent) = match committed {
            None => {
                let l = if opts.earliest {
                    *newest
                } else if opts.scale_to_zero_on_invalid_offset {
                    0
                } else {
                    1
                };
                (l, l)
            }
            Some(c) => {
                let l = (newest - c).max(0);
                let persistent =
                    opts.exclude_persistent_lag && l > 0 && previous.get(key) == Some(c);
                previous.insert(key.clone(), *c);
                (if persistent { 0 } else { l }, l)
            }
        };
        if lag > 0 {
            with_lag += 1;
        }
        total += lag;
        total_with_persistent += lag_with_persistent;
    }
    let partitions = parts.len() as f64;
    let mut value = total as f64;
    if !opts.allow_idle_consumers {
        let cap_parts = if opts.limit_to_partitions_with_lag {
            with_lag as f64
        } else {
            partitions
        };
        value = value.min(cap_parts * opts.lag_threshold);
    }
    if opts.even_distribution && opts.lag_threshold > 0.0 && partitions > 0.0 {
        // Round the consumer count up to a divisor of the partition count, so that every
        // consumer gets the same number of partitions.
        let consumers = (value / opts.lag_threshold).ceil() as i64;
        let n = partitions as i64;
        if consumers > 0 {
            let fit = (consumers..=n).find(|c| n % c == 0).unwrap_or(n);
            value = fit as f64 * opts.lag_threshold;
        }
    }
    (value, total_with_persistent as f64 > opts.activation)
}

#[async_trait]
impl ScalerBuilder for KafkaBuilder {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        heap::start_trimming();
        let p = Params::new(spec, PARAMETERS);
        let label = spec.label.clone();
        let bootstrap = p.required("bootstrapServers")?;
        let group = p.required("consumerGroup")?;
        let topic = p.get("topic");
        let reset = p.choice("offsetResetPolicy")?;
        let opts = LagOptions {
            lag_threshold: p.quantity_value("lagThreshold")?,
            activation: p.quantity_value("activationLagThreshold")?,
            earliest: reset == "earliest",
            allow_idle_consumers: p.flag("allowIdleConsumers")?,
            exclude_persistent_lag: p.flag("excludePersistentLag")?,
            limit_to_partitions_with_lag: p.flag("limitToPartitionsWithLag")?,
            even_distribution: p.flag("ensureEvenDistributionOfPartitions")?,
            scale_to_zero_on_invalid_offset: p.flag("scaleToZeroOnInvalidOffset")?,
            partitions: match p.get("partitionLimitation") {
                Some(t) => parse_partitions(&label, &t)?,
                None => BTreeSet::new(),
            },
        };
        if opts.lag_threshold <= 0.0 {
            return Err(ScalerError::config(
                &label,
                "lagThreshold",
                "must be greater than 0",
            ));
        }
        if opts.allow_idle_consumers && opts.limit_to_partitions_with_lag {
            return Err(ScalerError::config(
                &label,
                "limitToPartitionsWithLag",
                "cannot be combined with allowIdleConsumers",
            ));
        }
        // `tls` may be in the metadata or the auth parameters; the ScaledObject wins.
        let settings = p.tls()?;
        let use_tls = settings
            .tls_requested()
            .map_err(|e| ScalerError::from_trust(&label, e))?
            .unwrap_or(false);
        let sasl = p.choice("sasl")?;
        let username = p.get("username").unwrap_or_default();
        let password = p.get("password").unwrap_or_default();
        if sasl != "none" && (username.is_empty() || password.is_empty()) {
            return Err(ScalerError::config(
                &label,
                "username/password",
                format!("sasl {sasl} needs both"),
            ));
        }
        let tls: Option<TlsContext> = p.tls_context(
            ctx,
            &settings,
            use_tls,
            "tls is not enabled for this Kafka trigger",
        )?;
        let clusters = Arc::clone(&self.clusters);
        let ca_dirs = Arc::clone(&self.ca_dirs);
        let make_label = label.clone();
        // The cluster's clients for a context: made again (or found) when the anchors
        // change, under the new context's fingerprint.
        let make = move |tls: Option<&TlsContext>| {
            let label = &make_label;
            let mut config = ClientConfig::new();
            config
                .set("bootstrap.servers", &bootstrap)
                .set("client.id", "trustscale")
                .set("socket.timeout.ms", "5000")
                // A broker that comes back is found again within 2 s (librdkafka's default
                // backoff grows to 10 s, longer than a short polling interval).
                .set("reconnect.backoff.max.ms", "2000")
                .set("log_level", "3");
            let mut ca_pem = None;
            if let Some(ctx) = tls {
                let props =
                    librdkafka_tls(ctx, label).map_err(|e| ScalerError::from_trust(label, e))?;
                for (k, v) in props.entries() {
                    if k == "ssl.ca.pem" {
                        // Written as a directory below, only for a cluster not pooled yet.
                        ca_pem = Some(v.to_string());
                    } else {
                        config.set(k, v);
                    }
                }
            }
            let protocol = match (tls.is_some(), sasl.as_str()) {
                (false, "none") => "plaintext",
                (true, "none") => "ssl",
                (false, _) => "sasl_plaintext",
                (true, _) => "sasl_ssl",
            };
            config.set("security.protocol", protocol);
            if sasl != "none" {
                let mechanism = match sasl.as_str() {
                    "plaintext" => "PLAIN",
                    "scram_sha256" => "SCRAM-SHA-256",
                    _ => "SCRAM-SHA-512",
                };
                config
                    .set("sasl.mechanisms", mechanism)
                    .set("sasl.username", &username)
                    .set("sasl.password", &password);
            }
            let key = ClusterKey {
                bootstrap: bootstrap.clone(),
                tls: tls.map(TlsContext::fingerprint),
                sasl: sasl.clone(),
                username: username.clone(),
                password: secret_digest(Some(&password)),
            };
            clusters
                .try_get_or_insert_with(&key, || {
                    let mut config = config.clone();
                    let mut ca_dir = None;
                    if let Some(pem) = &ca_pem {
                        // The anchors as a hashed directory: OpenSSL then loads only the
                        // issuers a chain needs instead of every anchor into every client.
                        match ca_dirs.dir_for(pem) {
                            Ok(dir) => {
                                config.set("ssl.ca.location", dir.path().to_string_lossy());
                                ca_dir = Some(dir);
                            }
                            Err(e) => {
                                tracing::warn!(
                                    trigger = %label,
                                    error = %e,
                                    "cannot write the CA directory for librdkafka; passing the anchors inline"
                                );
                                config.set("ssl.ca.pem", pem);
                            }
                        }
                    }
                    Ok::<_, KafkaError>(KafkaCluster {
                        config,
                        context: KafkaContext::default(),
                        client: Mutex::new(None),
                        groups: Mutex::new(HashMap::new()),
                        created: AtomicU64::new(0),
                        partitions: Mutex::new(HashMap::new()),
                        metadata: Mutex::new(HashMap::new()),
                        served_all: Mutex::new(std::time::Instant::now()),
                        newest: Arc::default(),
                        committed: Mutex::new(HashMap::new()),
                        ca_dir,
                        bootstrap: bootstrap.clone(),
                        witness: Arc::default(),
                    })
                })
                .map_err(|e| {
                    ScalerError::new(
                        ErrorKind::Config,
                        label,
                        format!("cannot create the Kafka client: {e}"),
                    )
                })
        };
        let cluster = Tracked::new_following(
            ctx,
            &settings,
            tls,
            &label,
            Box::new(make),
            witness::follower(label.clone()),
        )?;
        p.warn_unknown();
        let name = match &topic {
            Some(t) => format!("kafka-{t}"),
            None => format!("kafka-{group}-topics"),
        };
        Ok(Box::new(KafkaScaler {
            label,
            cluster,
            spec: MetricSpec {
                name: spec.metric_name(&name),
                target: opts.lag_threshold,
                metric_type: spec.metric_type,
            },
            group,
            topic,
            opts,
            previous: Mutex::new(HashMap::new()),
        }))
    }

    fn parameters(&self) -> &'static [Param] {
        PARAMETERS
    }
}

/// Whether a librdkafka message says the broker refused the SASL login.
fn is_auth_message(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("sasl authentication") || lower.contains("authentication failed")
}

/// What librdkafka's code says by itself (auth, unknown group or topic), when it does.
fn known_kind(code: Option<rdkafka::types::RDKafkaErrorCode>) -> Option<ErrorKind> {
    use rdkafka::types::RDKafkaErrorCode as C;
    match code {
        Some(
            C::SaslAuthenticationFailed
            | C::TopicAuthorizationFailed
            | C::GroupAuthorizationFailed
            | C::ClusterAuthorizationFailed
            | C::Authentication,
        ) => Some(ErrorKind::Auth),
        Some(
            C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownPartition | C::GroupIdNotFound,
        ) => Some(ErrorKind::Source),
        Some(C::InvalidArgument) => Some(ErrorKind::Config),
        _ => None,
    }
}

/// Classifies a failed call: librdkafka's own code where it says something, else the
/// newest error its callbacks reported (a TLS failure is only visible there).
fn kafka_error(
    label: &str,
    cluster: &KafkaCluster,
    code: Option<rdkafka::types::RDKafkaErrorCode>,
    message: &str,
    what: &str,
) -> ScalerError {
    if known_kind(code).is_some() {
        return classify(label, code, message, what, None);
    }
    cluster.serve_events();
    classify(
        label,
        code,
        message,
        what,
        cluster.context.recent().as_deref(),
    )
}

/// The error of a failed call, from librdkafka's code where it says something, else from
/// `reason`, the newest error its callbacks reported.
fn classify(
    label: &str,
    code: Option<rdkafka::types::RDKafkaErrorCode>,
    message: &str,
    what: &str,
    reason: Option<&str>,
) -> ScalerError {
    if let Some(kind) = known_kind(code) {
        return ScalerError::new(kind, label, format!("{what}: {message}"));
    }
    match reason {
        Some(reason) => {
            let kind = if is_auth_message(reason) {
                ErrorKind::Auth
            } else {
                match classify_librdkafka_message(reason) {
                    Some(FailureKind::Connection) | None => ErrorKind::CONNECTION,
                    Some(k) => ErrorKind::Transport(k),
                }
            };
            ScalerError::new(kind, label, format!("{what}: {message} ({reason})"))
        }
        None => ScalerError::new(ErrorKind::CONNECTION, label, format!("{what}: {message}")),
    }
}

fn rd_error(label: &str, cluster: &KafkaCluster, e: &KafkaError, what: &str) -> ScalerError {
    kafka_error(label, cluster, e.rdkafka_error_code(), &e.to_string(), what)
}

/// The committed offsets of `group` for the partitions in `tpl` (partitions without one
/// are left out).
fn committed_offsets(
    label: &str,
    cluster: &KafkaCluster,
    group: &str,
    tpl: TopicPartitionList,
) -> Result<HashMap<(String, i32), i64>, ScalerError> {
    let what = format!("reading the offsets of group {group:?}");
    let reader = cluster
        .group(group)
        .map_err(|e| rd_error(label, cluster, &e, &what))?;
    let answer = reader
        .committed_offsets(tpl, TIMEOUT)
        .map_err(|e| rd_error(label, cluster, &e, &what))?;
    Ok(answer
        .elements()
        .iter()
        .filter_map(|el| match el.offset() {
            rdkafka::Offset::Offset(o) if o >= 0 => {
                Some(((el.topic().to_string(), el.partition()), o))
            }
            _ => None,
        })
        .collect())
}

/// The topics `group` has committed offsets for (as KEDA, when no topic is set), from the
/// offsets of every partition of every non-internal topic; fills `committed`.
fn group_topics(
    label: &str,
    cluster: &KafkaCluster,
    group: &str,
    committed: &mut HashMap<(String, i32), i64>,
) -> Result<Vec<String>, ScalerError> {
    let md = cluster
        .client()
        .map_err(|e| rd_error(label, cluster, &e, "creating the Kafka client"))?
        .fetch_metadata(None, TIMEOUT)
        .map_err(|e| rd_error(label, cluster, &e, "fetching metadata"))?;
    for b in md.brokers() {
        cluster.witness.broker(b.host(), b.port());
    }
    let mut tpl = TopicPartitionList::new();
    for t in md.topics() {
        if t.error().is_some() || t.name().starts_with("__") {
            continue;
        }
        for part in t.partitions() {
            tpl.add_partition(t.name(), part.id());
        }
    }
    if tpl.count() > 0 {
        *committed = committed_offsets(label, cluster, group, tpl)?;
    }
    let topics: BTreeSet<String> = committed.keys().map(|(t, _)| t.clone()).collect();
    if topics.is_empty() {
        return Err(ScalerError::new(
            ErrorKind::Source,
            label,
            format!(
                "consumer group {group:?} has no committed offsets on any topic; set `topic` to measure a group that has not committed yet"
            ),
        ));
    }
    Ok(topics.into_iter().collect())
}

/// Whether a broker's code is about partitions (their leaders, their offsets, their
/// topic), not about the cluster or the connection.
fn is_partition_error(code: Option<rdkafka::types::RDKafkaErrorCode>) -> bool {
    use rdkafka::types::RDKafkaErrorCode as C;
    matches!(
        code,
        Some(
            C::UnknownTopicOrPartition
                | C::LeaderNotAvailable
                | C::NotLeaderForPartition
                | C::ReplicaNotAvailable
                | C::TopicAuthorizationFailed
                | C::KafkaStorageError
                | C::FencedLeaderEpoch
                | C::UnknownLeaderEpoch
                | C::OffsetNotAvailable
        )
    )
}

/// The same error, about `label`'s trigger (a round's errors name none).
fn relabel(e: &ScalerError, label: &str) -> ScalerError {
    let mut e = e.clone();
    e.trigger = label.to_string();
    e
}

/// A round that answered nobody (its read panicked, or the runtime is stopping).
fn lost(label: &str) -> ScalerError {
    ScalerError::new(
        ErrorKind::CONNECTION,
        label,
        "the Kafka read it waited for was lost (it panicked, or the runtime is stopping)",
    )
}

/// Runs a blocking librdkafka call off the async workers.
async fn blocking<T: Send + 'static>(
    label: &str,
    f: impl FnOnce() -> Result<T, ScalerError> + Send + 'static,
) -> Result<T, ScalerError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(ScalerError::new(
            ErrorKind::CONNECTION,
            label,
            format!("the Kafka read stopped: {e}"),
        ))
    })
}

impl KafkaCluster {
    /// One round of newest-offset reads: every partition asked for, in one ListOffsets
    /// (timestamp "latest").
    fn read_newest(&self, asked: Vec<Vec<Partition>>) -> NewestAnswer {
        self.serve_metadata_events();
        self.serve_all_now_and_then();
        let wanted: BTreeSet<Partition> = asked.into_iter().flatten().collect();
        if wanted.is_empty() {
            return Ok(Arc::default());
        }
        let client = self
            .client()
            .map_err(|e| rd_error("", self, &e, "creating the Kafka client"))?;
        let mut out = HashMap::with_capacity(wanted.len());
        // The callbacks' newest error, taken once for the round: every partition that
        // failed for want of a better code gets the same reason.
        let mut taken: Option<Option<String>> = None;
        let mut reason = |cluster: &KafkaCluster| {
            taken
                .get_or_insert_with(|| {
                    cluster.serve_events();
                    cluster.context.recent()
                })
                .clone()
        };
        let several_topics = wanted
            .first()
            .is_some_and(|(first, _)| wanted.iter().any(|(t, _)| t != first));
        match self.list_newest(&client, wanted.iter(), &mut out, &mut reason) {
            Ok(()) => {}
            // librdkafka fails the whole call with the first partition's error: a leader
            // moving, a topic being deleted. Asked again topic by topic, that error lands
            // on the triggers of its topic only. A timeout or a transport failure is the
            // cluster's: everyone gets it, without asking again.
            // The topics are asked again within one TIMEOUT in all: once it is spent, or
            // once an answer fails for the cluster's sake, the topics not yet asked get
            // the error at hand without asking.
            Err(first) if several_topics && is_partition_error(first.rdkafka_error_code()) => {
                let mut topics: Vec<&str> = wanted.iter().map(|(t, _)| t.as_str()).collect();
                topics.dedup();
                let until = std::time::Instant::now() + TIMEOUT;
                let mut given_up: Option<KafkaError> = None;
                for topic in topics {
                    let parts = wanted.iter().filter(|(t, _)| t == topic);
                    let answer = match &given_up {
                        Some(e) => Err(e.clone()),
                        None if std::time::Instant::now() >= until => Err(first.clone()),
                        None => self.list_newest(&client, parts.clone(), &mut out, &mut reason),
                    };
                    if let Err(e) = answer {
                        if given_up.is_none() && !is_partition_error(e.rdkafka_error_code()) {
                            given_up = Some(e.clone());
                        }
                        let what = format!("reading the newest offsets of topic {topic:?}");
                        let r = reason(self);
                        for p in parts {
                            out.insert(
                                p.clone(),
                                Err(classify(
                                    "",
                                    e.rdkafka_error_code(),
                                    &e.to_string(),
                                    &what,
                                    r.as_deref(),
                                )),
                            );
                        }
                    }
                }
            }
            Err(e) => {
                let r = reason(self);
                return Err(classify(
                    "",
                    e.rdkafka_error_code(),
                    &e.to_string(),
                    "reading the newest offsets",
                    r.as_deref(),
                ));
            }
        }
        Ok(Arc::new(out))
    }

    /// The newest offsets of `parts` in one ListOffsets (timestamp "latest"), into `out`
    /// (a partition's own error as its entry); the call's error when it failed as a whole.
    fn list_newest<'p>(
        &self,
        client: &BaseConsumer<KafkaContext>,
        parts: impl Iterator<Item = &'p Partition>,
        out: &mut HashMap<Partition, Result<i64, ScalerError>>,
        reason: &mut dyn FnMut(&KafkaCluster) -> Option<String>,
    ) -> Result<(), KafkaError> {
        let mut latest = TopicPartitionList::new();
        for (topic, partition) in parts {
            latest.add_partition_offset(topic, *partition, rdkafka::Offset::End)?;
        }
        let newest = client.offsets_for_times(latest, TIMEOUT)?;
        for el in newest.elements() {
            let at = || format!("{}/{}", el.topic(), el.partition());
            let high = match (el.error(), el.offset()) {
                (Err(e), _) => {
                    let code = e.rdkafka_error_code();
                    let r = if known_kind(code).is_some() {
                        None
                    } else {
                        reason(self)
                    };
                    Err(classify(
                        "",
                        code,
                        &e.to_string(),
                        &format!("reading the newest offset of {}", at()),
                        r.as_deref(),
                    ))
                }
                (Ok(()), rdkafka::Offset::Offset(o)) => Ok(o),
                (Ok(()), other) => Err(ScalerError::new(
                    ErrorKind::Source,
                    "",
                    format!("no newest offset for {} (broker answered {other:?})", at()),
                )),
            };
            out.insert((el.topic().to_string(), el.partition()), high);
        }
        Ok(())
    }

    /// One round of `group`'s committed-offset reads: every partition asked for, in one
    /// OffsetFetch.
    fn read_committed(&self, group: &str, asked: Vec<Vec<Partition>>) -> CommittedAnswer {
        self.serve_group_events(group);
        self.serve_all_now_and_then();
        let wanted: BTreeSet<Partition> = asked.into_iter().flatten().collect();
        if wanted.is_empty() {
            return Ok(Arc::default());
        }
        let mut tpl = TopicPartitionList::new();
        for (topic, partition) in &wanted {
            tpl.add_partition(topic, *partition);
        }
        committed_offsets("", self, group, tpl).map(Arc::new)
    }

    /// `topic`'s rounds of partition reads.
    fn metadata_rounds(&self, topic: &str) -> TopicRounds {
        rounds_of(&self.metadata, topic)
    }

    /// `group`'s rounds of committed-offset reads.
    fn committed_rounds(&self, group: &str) -> GroupRounds {
        rounds_of(&self.committed, group)
    }
}

/// The rounds kept for `name` in `all` (made on first use).
fn rounds_of<R: Default>(all: &Mutex<HashMap<String, Arc<R>>>, name: &str) -> Arc<R> {
    let mut all = all
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Arc::clone(all.entry(name.to_string()).or_default())
}

/// Reads the newest and committed offsets of every selected partition: the partitions
/// from the metadata cache (a blocking call when it is stale), the offsets in the
/// cluster's and the group's next rounds.
async fn read_offsets(
    label: &str,
    cluster: &Arc<KafkaCluster>,
    group: &str,
    topic: Option<&str>,
    only: &BTreeSet<i32>,
) -> Result<Vec<PartitionOffsets>, ScalerError> {
    let selected = |topic: &str, ids: Vec<i32>| {
        ids.into_iter()
            .filter(|id| only.is_empty() || only.contains(id))
            .map(|id| (topic.to_string(), id))
            .collect::<Vec<Partition>>()
    };
    let (wanted, committed) = match topic {
        Some(topic) => {
            let ids = match cluster.cached_partitions(topic) {
                Some(ids) => ids,
                None => {
                    let (c, t) = (Arc::clone(cluster), topic.to_string());
                    cluster
                        .metadata_rounds(topic)
                        .ask((), move |_| c.topic_partitions("", &t))
                        .await
                        .ok_or_else(|| lost(label))?
                        .map_err(|e| relabel(&e, label))?
                }
            };
            let wanted = selected(topic, ids);
            if wanted.is_empty() {
                return Err(ScalerError::new(
                    ErrorKind::Source,
                    label,
                    format!("topic {topic:?} has no (selected) partitions"),
                ));
            }
            let c = Arc::clone(cluster);
            let g = group.to_string();
            let committed = cluster
                .committed_rounds(group)
                .ask(wanted.clone(), move |asked| c.read_committed(&g, asked))
                .await
                .ok_or_else(|| lost(label))?
                .map_err(|e| relabel(&e, label))?;
            (wanted, committed)
        }
        // Every topic the group has offsets for: a whole-cluster metadata request, as
        // KEDA (not coalesced: each such trigger asks about its own group).
        None => {
            let (c, l, g) = (Arc::clone(cluster), label.to_string(), group.to_string());
            let (topics, committed) = blocking(label, move || {
                c.serve_events();
                let mut committed = HashMap::new();
                let topics = group_topics(&l, &c, &g, &mut committed)?;
                let mut all = Vec::new();
                for t in topics {
                    all.push((c.topic_partitions(&l, &t)?, t));
                }
                Ok((all, committed))
            })
            .await?;
            let wanted: Vec<Partition> = topics
                .into_iter()
                .flat_map(|(ids, t)| selected(&t, ids))
                .collect();
            if wanted.is_empty() {
                return Err(ScalerError::new(
                    ErrorKind::Source,
                    label,
                    format!("the topics of group {group:?} have no (selected) partitions"),
                ));
            }
            (wanted, Arc::new(committed))
        }
    };
    let c = Arc::clone(cluster);
    let newest = cluster
        .newest
        .ask(wanted.clone(), move |asked| c.read_newest(asked))
        .await
        .ok_or_else(|| lost(label))?
        .map_err(|e| relabel(&e, label))?;
    let mut out = Vec::with_capacity(wanted.len());
    for key in wanted {
        let high = match newest.get(&key) {
            Some(Ok(high)) => *high,
            Some(Err(e)) => return Err(relabel(e, label)),
            None => {
                return Err(ScalerError::new(
                    ErrorKind::Source,
                    label,
                    format!("no newest offset for {}/{} in the answer", key.0, key.1),
                ));
            }
        };
        let c = committed.get(&key).copied();
        out.push((key, high, c));
    }
    Ok(out)
}

#[async_trait]
impl Scaler for KafkaScaler {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let (cluster, tls) = self.cluster.current()?;
        // The brokers' chains known to the context before the anchors change (once per
        // cluster and generation).
        if let Some(tls) = &tls
            && cluster.ca_dir.is_some()
            && !tls.is_unsafe()
        {
            cluster
                .witness
                .start(&cluster.bootstrap, tls, tls.verifying_generation());
        }
        let bootstrap = cluster
            .bootstrap
            .split(',')
            .next()
            .map(|b| b.trim().to_string());
        let parts = read_offsets(
            &self.label,
            &cluster,
            &self.group,
            self.topic.as_deref(),
            &self.opts.partitions,
        )
        .await;
        let parts = match parts {
            Ok(p) => p,
            // librdkafka's OpenSSL says "certificate verify failed" for every cause.
            Err(e) => {
                return Err(trustscale::scaler::refine_transport(
                    e,
                    tls.as_ref(),
                    bootstrap.as_deref(),
                )
                .await);
            }
        };
        let mut previous = self
            .previous
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (value, active) = compute_lag(&self.opts, &parts, &mut previous);
        let mut poll = Poll::single(&self.spec.name, value, self.opts.activation);
        poll.active = active;
        Ok(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> LagOptions {
        LagOptions {
            lag_threshold: 10.0,
            ..Default::default()
        }
    }

    fn part(p: i32, newest: i64, committed: Option<i64>) -> PartitionOffsets {
        (("t".into(), p), newest, committed)
    }

    #[test]
    fn lag_arithmetic_follows_keda() {
        let mut o = opts();
        type Case = (&'static str, LagOptions, Vec<PartitionOffsets>, (f64, bool));
        let cases: Vec<Case> = vec![
            (
                "sum of newest - committed",
                o.clone(),
                vec![part(0, 10, Some(4)), part(1, 7, Some(7))],
                (6.0, true),
            ),
            (
                "no offset, latest: 1",
                o.clone(),
                vec![part(0, 50, None)],
                (1.0, true),
            ),
            (
                "no offset, earliest: newest",
                {
                    o.earliest = true;
                    o.clone()
                },
                vec![part(0, 50, None)],
                (10.0, true),
            ),
            (
                "capped at partitions x threshold",
                opts(),
                vec![part(0, 500, Some(0)), part(1, 0, Some(0))],
                (20.0, true),
            ),
            (
                "idle consumers allowed: no cap",
                LagOptions {
                    allow_idle_consumers: true,
                    ..opts()
                },
                vec![part(0, 500, Some(0))],
                (500.0, true),
            ),
            (
                "cap by partitions with lag",
                LagOptions {
                    limit_to_partitions_with_lag: true,
                    ..opts()
                },
                vec![
                    part(0, 500, Some(0)),
                    part(1, 0, Some(0)),
                    part(2, 0, Some(0)),
                ],
                (10.0, true),
            ),
            (
                "scale to zero on invalid offset",
                LagOptions {
                    scale_to_zero_on_invalid_offset: true,
                    ..opts()
                },
                vec![part(0, 50, None)],
                (0.0, false),
            ),
            (
                "even distribution: consumers to a divisor of 6",
                LagOptions {
                    even_distribution: true,
                    ..opts()
                },
                (0..6)
                    .map(|p| part(p, if p < 4 { 10 } else { 0 }, Some(0)))
                    .collect(),
                (60.0, true),
            ),
        ];
        for (name, o, parts, want) in cases {
            let mut prev = HashMap::new();
            assert_eq!(compute_lag(&o, &parts, &mut prev), want, "{name}");
        }
    }

    #[test]
    fn persistent_lag_counts_for_activity_but_not_for_scaling() {
        let o = LagOptions {
            exclude_persistent_lag: true,
            ..opts()
        };
        let mut prev = HashMap::new();
        let parts = vec![part(0, 8, Some(3))];
        assert_eq!(
            compute_lag(&o, &parts, &mut prev),
            (5.0, true),
            "first sight: counted"
        );
        assert_eq!(
            compute_lag(&o, &parts, &mut prev),
            (0.0, true),
            "did not move: excluded from scaling, still active"
        );
        assert_eq!(
            compute_lag(&o, &[part(0, 9, Some(4))], &mut prev),
            (5.0, true),
            "moved: counted again"
        );
    }

    #[test]
    fn a_refused_login_is_recognised_in_librdkafka_messages() {
        assert!(is_auth_message(
            "sasl_ssl://b:9093/1: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-256"
        ));
        assert!(!is_auth_message(
            "ssl://b:9093/1: SSL handshake failed: certificate verify failed"
        ));
    }

    #[test]
    fn partition_limitation_parses_ranges() {
        assert_eq!(
            parse_partitions("t", "1, 2,10-12").unwrap(),
            [1, 2, 10, 11, 12].into_iter().collect()
        );
        assert!(parse_partitions("t", "3-1").is_err());
        assert!(
            parse_partitions("t", "x")
                .unwrap_err()
                .to_string()
                .contains("partitionLimitation")
        );
    }
}
