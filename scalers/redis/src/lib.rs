//! The `redis` (list length) and `redis-streams` scalers of trustscale.
//!
//! Connection parameters as KEDA: `address` or `host` + `port`, `username`, `password`,
//! `databaseIndex`, `enableTLS` (metadata) XOR `tls` (auth), `unsafeSsl`, `ca`, `cert`,
//! `key`, `keyPassword`; plus `serverName`.
//!
//! TLS comes only from the factory: the TLS stream is opened with the trigger's
//! [`TlsContext`] and handed to redis' multiplexed connection. Triggers with the same
//! address, database, credentials and trust fingerprint share one connection; a broken
//! connection is dropped and the next poll reconnects.

#![forbid(unsafe_code)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::MultiplexedConnection;
use tokio::net::TcpStream;

use trustscale::pool::{SharedPool, secret_digest};
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, Param, Params, Poll, Scaler, ScalerBuilder, ScalerError,
    Tracked, TriggerSpec,
};
use trustscale::trust::{Fingerprint, TlsContext};

/// The parameters of `redis` and `redis-streams` (besides the TLS settings).
pub const PARAMETERS: &[Param] = &[
    Param::new("address", "`HOST:PORT` of the server (or `host` + `port`)."),
    Param::new("host", "The server's host, with `port`."),
    Param::new("port", "The server's port, with `host`.").default("6379"),
    Param::secret("username", "The ACL user name."),
    Param::secret("password", "The password."),
    Param::new("databaseIndex", "The database number.").default("0"),
    Param::new("listName", "redis: the key to measure: a list (LLEN), set (SCARD), sorted set (ZCARD) or hash (HLEN); a missing key is 0."),
    Param::new("listLength", "redis: the target length per replica.").default("5"),
    Param::new("activationListLength", "redis: the length above which the trigger is active.").default("0"),
    Param::new("stream", "redis-streams: the stream."),
    Param::new("consumerGroup", "redis-streams: the consumer group (pending entries, or its lag with `lagCount`)."),
    Param::new("lagCount", "redis-streams: the target lag of the group per replica (Redis 7 or later); 0 measures pending entries instead.").default("0"),
    Param::new("pendingEntriesCount", "redis-streams: the target pending entries of the group per replica.").default("5"),
    Param::new("streamLength", "redis-streams: the target stream length per replica (no group).").default("5"),
    Param::new("activationLagCount", "redis-streams: the value above which the trigger is active.").default("0"),
];

/// How long connecting (TCP + TLS + AUTH) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    host: String,
    port: u16,
    db: i64,
    username: Option<String>,
    password: [u8; 32],
    tls: Option<Fingerprint>,
}

/// One shared Redis connection.
pub struct RedisClient {
    host: String,
    port: u16,
    tls: Option<TlsContext>,
    info: redis::RedisConnectionInfo,
    /// The live connection: a poll clones it under a short synchronous lock.
    conn: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Held while connecting, so that polls waiting for a connection make one, not many.
    connecting: tokio::sync::Mutex<()>,
    connects: AtomicU64,
}

impl RedisClient {
    fn target(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// How many times this client has (re)connected.
    #[must_use]
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    fn live(&self) -> Option<(u64, MultiplexedConnection)> {
        self.conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn connection(&self, trigger: &str) -> Result<(u64, MultiplexedConnection), ScalerError> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _one = self.connecting.lock().await;
        if let Some(live) = self.live() {
            return Ok(live);
        }
        // Boxed: connecting (TCP, TLS, the handshake with the server) is a large future
        // that only a reconnect needs; inline, every poll's future would carry its size.
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, Box::pin(self.connect(trigger)))
            .await
            .map_err(|_| {
                ScalerError::new(
                    ErrorKind::CONNECTION,
                    trigger,
                    format!(
                        "{}: connecting timed out after {CONNECT_TIMEOUT:?}",
                        self.target()
                    ),
                )
            })??;
        let id = self.connects.fetch_add(1, Ordering::Relaxed) + 1;
        *self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((id, conn.clone()));
        Ok((id, conn))
    }

    async fn connect(&self, trigger: &str) -> Result<MultiplexedConnection, ScalerError> {
        let target = self.target();
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| ScalerError::from_connect(trigger, &e, None, &target))?;
        let _ = tcp.set_nodelay(true);
        let config =
            redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
        let (conn, driver) = match &self.tls {
            Some(ctx) => {
                let stream = ctx
                    .connect(&self.host, tcp)
                    .await
                    .map_err(|e| ScalerError::from_connect(trigger, &e, Some(ctx), &target))?;
                let (conn, driver) =
                    MultiplexedConnection::new_with_config(&self.info, stream, config)
                        .await
                        .map_err(|e| redis_error(trigger, e, Some(ctx), &target))?;
                (
                    conn,
                    Box::pin(driver)
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
                )
            }
            None => {
                let (conn, driver) =
                    MultiplexedConnection::new_with_config(&self.info, tcp, config)
                        .await
                        .map_err(|e| redis_error(trigger, e, None, &target))?;
                (
                    conn,
                    Box::pin(driver)
                        as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
                )
            }
        };
        tokio::spawn(driver);
        tracing::debug!(target = %target, tls = self.tls.is_some(), "connected to redis");
        Ok(conn)
    }

    /// Drops connection `id` if it is still the current one, so the next poll reconnects.
    fn invalidate(&self, id: u64) {
        let mut slot = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if slot.as_ref().is_some_and(|(cur, _)| *cur == id) {
            *slot = None;
        }
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        trigger: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, ScalerError> {
        // A connection that broke since the last poll (server restart, idle cut) is
        // replaced at once: one retry on a fresh connection, so the poll still succeeds.
        let mut retried = false;
        loop {
            let (id, mut conn) = self.connection(trigger).await?;
            match cmd.query_async::<T>(&mut conn).await {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let broken = e.is_io_error()
                        || e.is_connection_dropped()
                        || e.is_timeout()
                        || e.is_unrecoverable_error();
                    if broken {
                        self.invalidate(id);
                    }
                    if !broken || retried {
                        return Err(redis_error(trigger, e, self.tls.as_ref(), &self.target()));
                    }
                    retried = true;
                    tracing::debug!(target = %self.target(), error = %e, "redis connection broke; reconnecting");
                }
            }
        }
    }
}

/// Classifies a redis error; the error itself stays attached as the source, so that a
/// caller can look at the server's reply ([`server_reply`]) instead of our message.
fn redis_error(
    trigger: &str,
    e: redis::RedisError,
    ctx: Option<&TlsContext>,
    target: &str,
) -> ScalerError {
    let classified = if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
    {
        ScalerError::new(ErrorKind::Auth, trigger, format!("{target}: {e}"))
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
        ScalerError::from_connect(trigger, &e, ctx, target)
    } else if e.is_timeout() {
        ScalerError::new(
            ErrorKind::CONNECTION,
            trigger,
            format!("{target}: no answer in time"),
        )
    } else {
        ScalerError::new(ErrorKind::Source, trigger, format!("{target}: {e}"))
    };
    classified.with_source(e)
}

/// The server's error reply behind a scaler error, if it came from one.
fn server_reply(e: &ScalerError) -> Option<&redis::RedisError> {
    e.source.as_deref()?.downcast_ref::<redis::RedisError>()
}

/// The server answered `-WRONGTYPE ...`: the key holds another type.
fn is_wrong_type(e: &ScalerError) -> bool {
    server_reply(e).is_some_and(|r| r.code() == Some("WRONGTYPE"))
}

/// The server answered `-ERR no such key` (XINFO on a stream that does not exist).
fn is_no_such_key(e: &ScalerError) -> bool {
    server_reply(e).is_some_and(|r| r.code() == Some("ERR") && r.detail() == Some("no such key"))
}

/// Builds `redis` and `redis-streams` scalers; owns the shared connections.
#[derive(Default)]
pub struct RedisBuilder {
    clients: Arc<SharedPool<ClientKey, RedisClient>>,
}

impl RedisBuilder {
    /// Connections alive now (one per address, database, credentials and trust).
    #[must_use]
    pub fn live_clients(&self) -> usize {
        self.clients.live()
    }

    /// Every live shared client.
    #[must_use]
    pub fn clients(&self) -> Vec<Arc<RedisClient>> {
        self.clients.all()
    }

    fn client(
        &self,
        p: &Params<'_>,
        ctx: &BuildContext,
    ) -> Result<Tracked<RedisClient>, ScalerError> {
        let trigger = p.trigger().to_string();
        let (host, port) = match p.get("address") {
            Some(addr) => split_address(&addr).ok_or_else(|| {
                ScalerError::config(
                    &trigger,
                    "address",
                    format!(
                        "{:?} is not HOST:PORT",
                        trustscale::scaler::redact_url(&addr)
                    ),
                )
            })?,
            None => {
                let host = p.get("host").ok_or_else(|| {
                    ScalerError::config(
                        &trigger,
                        "address",
                        "either `address` or `host` (+ `port`) is required",
                    )
                })?;
                (host, p.value::<u16>("port")?)
            }
        };
        let db: i64 = p.value("databaseIndex")?;
        let username = p.get("username");
        let password = p.get("password");
        let settings = p.tls()?;
        let use_tls = settings
            .tls_requested()
            .map_err(|_| {
                ScalerError::config(
                    &trigger,
                    "tls",
                    "`enableTLS` (ScaledObject) and `tls` (TriggerAuthentication) cannot both be set",
                )
            })?
            .unwrap_or(false);
        let tls = p.tls_context(
            ctx,
            &settings,
            use_tls,
            "TLS is not enabled (set enableTLS: \"true\" or tls: enable); connecting in plaintext",
        )?;
        let pool = Arc::clone(&self.clients);
        // The shared connection for a context: looked up again when the anchors change,
        // so the new context's fingerprint finds (or makes) the new shared connection.
        let make = move |tls: Option<&TlsContext>| {
            let key = ClientKey {
                host: host.clone(),
                port,
                db,
                username: username.clone(),
                password: secret_digest(password.as_deref()),
                tls: tls.map(TlsContext::fingerprint),
            };
            Ok(pool.get_or_insert_with(&key, || {
                let mut info = redis::RedisConnectionInfo::default().set_db(db);
                if let Some(u) = &username {
                    info = info.set_username(u);
                }
                if let Some(pw) = &password {
                    info = info.set_password(pw);
                }
                RedisClient {
                    host: host.clone(),
                    port,
                    tls: tls.cloned(),
                    info,
                    conn: std::sync::Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    connects: AtomicU64::new(0),
                }
            }))
        };
        Tracked::new_rustls(ctx, &settings, tls, &trigger, Box::new(make))
    }
}

/// `host:port` or `[v6]:port`, as the trust layer parses targets.
fn split_address(addr: &str) -> Option<(String, u16)> {
    trustscale::trust::inspect::split_host_port(addr.trim())
}

#[async_trait]
impl ScalerBuilder for RedisBuilder {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let p = Params::new(spec, PARAMETERS);
        let client = self.client(&p, ctx)?;
        let scaler: Box<dyn Scaler> = match spec.type_name.as_str() {
            "redis-streams" => Box::new(StreamScaler::new(&p, spec, client)?),
            _ => Box::new(ListScaler::new(&p, spec, client)?),
        };
        p.warn_unknown();
        Ok(scaler)
    }

    fn parameters(&self) -> &'static [Param] {
        PARAMETERS
    }
}

/// The command that measures a key, by its type.
const LENGTH_COMMANDS: [&str; 4] = ["LLEN", "SCARD", "ZCARD", "HLEN"];

/// `redis`: the length of a list (or set, sorted set, hash; a missing key is 0).
pub struct ListScaler {
    label: String,
    client: Tracked<RedisClient>,
    list: String,
    spec: MetricSpec,
    activation: f64,
    /// Index into [`LENGTH_COMMANDS`]: the key's type at the last poll. Steady state is one
    /// round trip; a WRONGTYPE answer re-reads the type.
    command: AtomicU8,
    /// Each of [`LENGTH_COMMANDS`] for this key, built when first sent (usually only
    /// `LLEN`), then sent as it is by every poll.
    commands: [std::sync::OnceLock<redis::Cmd>; 4],
}

impl ListScaler {
    fn new(
        p: &Params<'_>,
        spec: &TriggerSpec,
        client: Tracked<RedisClient>,
    ) -> Result<Self, ScalerError> {
        let list = p.required("listName")?;
        let target = p.quantity_value("listLength")?;
        let activation = p.quantity_value("activationListLength")?;
        Ok(ListScaler {
            label: spec.label.clone(),
            client,
            spec: MetricSpec {
                name: spec.metric_name(&format!("redis-{list}")),
                target,
                metric_type: spec.metric_type,
            },
            list,
            activation,
            command: AtomicU8::new(0),
            commands: Default::default(),
        })
    }

    async fn length(&self, client: &RedisClient) -> Result<i64, ScalerError> {
        let index = self.command.load(Ordering::Relaxed) as usize;
        match client.query::<i64>(&self.label, self.command(index)).await {
            Err(e) if is_wrong_type(&e) => {}
            other => return other,
        }
        let kind: String = client
            .query(&self.label, redis::cmd("TYPE").arg(&self.list))
            .await?;
        let index = match kind.as_str() {
            "list" | "none" => 0,
            "set" => 1,
            "zset" => 2,
            "hash" => 3,
            other => {
                return Err(ScalerError::new(
                    ErrorKind::Source,
                    &self.label,
                    format!(
                        "key {:?} is a {other}; listName must name a list, set, sorted set or hash",
                        self.list
                    ),
                ));
            }
        };
        self.command.store(index as u8, Ordering::Relaxed);
        client.query(&self.label, self.command(index)).await
    }

    fn command(&self, index: usize) -> &redis::Cmd {
        self.commands[index]
            .get_or_init(|| redis::cmd(LENGTH_COMMANDS[index]).arg(&self.list).clone())
    }
}

#[async_trait]
impl Scaler for ListScaler {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let client = self.client.client()?;
        let n = self.length(&client).await?;
        Ok(Poll::single(&self.spec.name, n as f64, self.activation))
    }
}

enum StreamMode {
    /// XLEN.
    Length,
    /// XPENDING count of the group.
    Pending(String),
    /// The group's lag from XINFO GROUPS (Redis ≥ 7).
    Lag(String),
}

/// `redis-streams`: stream length, pending entries of a group, or a group's lag.
pub struct StreamScaler {
    label: String,
    client: Tracked<RedisClient>,
    stream: String,
    mode: StreamMode,
    spec: MetricSpec,
    activation: f64,
}

impl StreamScaler {
    fn new(
        p: &Params<'_>,
        spec: &TriggerSpec,
        client: Tracked<RedisClient>,
    ) -> Result<Self, ScalerError> {
        let stream = p.required("stream")?;
        let group = p.get("consumerGroup");
        let lag_count = p.quantity_value("lagCount")?;
        let (mode, target) = match group {
            Some(g) if lag_count != 0.0 => (StreamMode::Lag(g), lag_count),
            Some(g) => (
                StreamMode::Pending(g),
                p.quantity_value("pendingEntriesCount")?,
            ),
            None => (StreamMode::Length, p.quantity_value("streamLength")?),
        };
        let activation = p.quantity_value("activationLagCount")?;
        Ok(StreamScaler {
            label: spec.label.clone(),
            client,
            spec: MetricSpec {
                name: spec.metric_name(&format!("redis-streams-{stream}")),
                target,
                metric_type: spec.metric_type,
            },
            stream,
            mode,
            activation,
        })
    }

    async fn value(&self, client: &RedisClient) -> Result<f64, ScalerError> {
        match &self.mode {
            StreamMode::Length => {
                let n: i64 = client
                    .query(&self.label, redis::cmd("XLEN").arg(&self.stream))
                    .await?;
                Ok(n as f64)
            }
            StreamMode::Pending(group) => {
                let summary: redis::Value = client
                    .query(
                        &self.label,
                        redis::cmd("XPENDING").arg(&self.stream).arg(group),
                    )
                    .await?;
                match summary {
                    redis::Value::Array(items) => match items.first() {
                        Some(redis::Value::Int(n)) => Ok(*n as f64),
                        _ => Err(self.unexpected("XPENDING")),
                    },
                    _ => Err(self.unexpected("XPENDING")),
                }
            }
            StreamMode::Lag(group) => self.lag(client, group).await,
        }
    }

    async fn lag(&self, client: &RedisClient, group: &str) -> Result<f64, ScalerError> {
        let groups: redis::Value = match client
            .query(
                &self.label,
                redis::cmd("XINFO").arg("GROUPS").arg(&self.stream),
            )
            .await
        {
            Ok(v) => v,
            // As KEDA: a stream that does not exist yet has no lag.
            Err(e) if is_no_such_key(&e) => return Ok(0.0),
            Err(e) => return Err(e),
        };
        let redis::Value::Array(groups) = groups else {
            return Err(self.unexpected("XINFO GROUPS"));
        };
        for entry in groups {
            let fields = match entry {
                redis::Value::Array(fields) => fields,
                redis::Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => continue,
            };
            let get = |name: &str| {
                fields.chunks(2).find_map(|kv| match kv {
                    [redis::Value::BulkString(k), v] if k == name.as_bytes() => Some(v.clone()),
                    [redis::Value::SimpleString(k), v] if k == name => Some(v.clone()),
                    _ => None,
                })
            };
            let is_ours =
                matches!(get("name"), Some(redis::Value::BulkString(n)) if n == group.as_bytes());
            if !is_ours {
                continue;
            }
            return match get("lag") {
                Some(redis::Value::Int(n)) => Ok(n as f64),
                Some(redis::Value::Nil) => Err(ScalerError::new(
                    ErrorKind::Source,
                    &self.label,
                    format!(
                        "redis cannot compute the lag of group {group:?} on stream {:?} right now (entries were deleted); it reports lag as nil",
                        self.stream
                    ),
                )),
                None => Err(ScalerError::new(
                    ErrorKind::Source,
                    &self.label,
                    "the server reports no `lag` field; lagCount needs Redis 7 or later",
                )),
                Some(_) => Err(self.unexpected("XINFO GROUPS lag")),
            };
        }
        // As KEDA: a group that does not exist yet lags by the whole stream.
        let n: i64 = client
            .query(&self.label, redis::cmd("XLEN").arg(&self.stream))
            .await?;
        Ok(n as f64)
    }

    fn unexpected(&self, what: &str) -> ScalerError {
        ScalerError::new(
            ErrorKind::Source,
            &self.label,
            format!("unexpected reply to {what}"),
        )
    }
}

#[async_trait]
impl Scaler for StreamScaler {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let client = self.client.client()?;
        let v = self.value(&client).await?;
        Ok(Poll::single(&self.spec.name, v, self.activation))
    }
}

#[cfg(test)]
mod tests {
    use super::split_address;

    #[test]
    fn addresses_split() {
        assert_eq!(split_address("redis:6379"), Some(("redis".into(), 6379)));
        assert_eq!(split_address("[::1]:16380"), Some(("::1".into(), 16380)));
        assert_eq!(split_address("redis"), None);
        assert_eq!(split_address(":1"), None);
    }
}
