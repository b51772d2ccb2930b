//! A shared AMQP connection, opened over the factory's rustls configuration.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::FieldTable;
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{Channel, Connection, ConnectionProperties};

use trustscale::scaler::{ErrorKind, ScalerError};
use trustscale::trust::TlsContext;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

struct Live {
    id: u64,
    connection: Connection,
    channel: Option<Channel>,
}

/// One AMQP connection (and one channel on it), shared by every trigger with the same
/// host, vhost, credentials and trust. Broken connections and channels are replaced;
/// replaced connections are closed, so none leak.
pub struct AmqpClient {
    uri: AMQPUri,
    tls: Option<TlsContext>,
    name: String,
    live: tokio::sync::Mutex<Option<Live>>,
    /// The open channel, for a poll to take under a short synchronous lock (the async
    /// lock above is for opening and replacing).
    ready: std::sync::Mutex<Option<(u64, Channel)>>,
    connects: AtomicU64,
}

impl std::fmt::Debug for AmqpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpClient")
            .field("target", &self.target())
            .field("vhost", &self.uri.vhost)
            .finish()
    }
}

impl AmqpClient {
    pub(super) fn new(uri: AMQPUri, tls: Option<TlsContext>, name: String) -> Self {
        AmqpClient {
            uri,
            tls,
            name,
            live: tokio::sync::Mutex::new(None),
            ready: std::sync::Mutex::new(None),
            connects: AtomicU64::new(0),
        }
    }

    fn target(&self) -> String {
        format!("{}:{}", self.uri.authority.host, self.uri.authority.port)
    }

    /// The broker's `host:port`.
    #[must_use]
    pub fn host_port(&self) -> String {
        self.target()
    }

    /// How many connections this client has opened.
    pub fn connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    /// Whether it authenticates with SASL EXTERNAL (its client certificate).
    pub fn uses_external_auth(&self) -> bool {
        self.uri.query.auth_mechanism == Some(SASLMechanism::External)
    }

    async fn connect(&self, trigger: &str) -> Result<Connection, ScalerError> {
        let target = self.target();
        let tls = self.tls.clone();
        let host = self.uri.authority.host.clone();
        let connector = tls
            .as_ref()
            .map(|ctx| RustlsConnector::from(ctx.rustls_config()));
        let sni = match &tls {
            Some(ctx) => Some(
                ctx.server_name_for(&host)
                    .map_err(|e| ScalerError::from_trust(trigger, e))?,
            ),
            None => None,
        };
        let runtime = lapin::runtime::default_runtime().map_err(|e| {
            ScalerError::new(
                ErrorKind::CONNECTION,
                trigger,
                format!("no async runtime: {e}"),
            )
        })?;
        let props = ConnectionProperties::default().with_connection_name(self.name.clone().into());
        // The transport: TCP, then TLS from the trigger's context. The URI's scheme never
        // chooses a TLS stack of its own.
        let connect = async move |uri: AMQPUri, runtime| {
            let addrs: Vec<std::net::SocketAddr> =
                tokio::net::lookup_host((uri.authority.host.as_str(), uri.authority.port))
                    .await?
                    .collect();
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            match (&connector, &sni) {
                (Some(connector), Some(sni)) => {
                    Ok(stream.into_rustls(connector, &sni.to_str()).await?)
                }
                _ => Ok(stream),
            }
        };
        let connecting = Connection::connector(self.uri.clone(), runtime, connect, props);
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                ScalerError::new(
                    ErrorKind::CONNECTION,
                    trigger,
                    format!("{target}: connecting timed out after {CONNECT_TIMEOUT:?}"),
                )
            })?
            .map_err(|e| amqp_error(trigger, &e, tls.as_ref(), &target))?;
        tracing::debug!(target = %target, tls = tls.is_some(), "connected to rabbitmq");
        Ok(connection)
    }

    /// The number of ready messages of `queue` (a passive declare).
    pub async fn ready_messages(&self, trigger: &str, queue: &str) -> Result<u32, ScalerError> {
        let mut retried = false;
        loop {
            let (id, channel) = self.channel(trigger).await?;
            let declare = channel.queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            );
            let result = tokio::time::timeout(CALL_TIMEOUT, declare).await;
            let err = match result {
                Ok(Ok(q)) => return Ok(q.message_count()),
                Ok(Err(e)) => e,
                Err(_) => {
                    self.drop_connection(id).await;
                    return Err(ScalerError::new(
                        ErrorKind::CONNECTION,
                        trigger,
                        format!("{}: no answer in time", self.target()),
                    ));
                }
            };
            if is_not_found(&err) {
                // The broker closed the channel; the connection stays.
                self.drop_channel(id).await;
                return Err(ScalerError::new(
                    ErrorKind::Source,
                    trigger,
                    format!(
                        "queue {queue:?} does not exist in vhost {:?} on {}",
                        self.uri.vhost,
                        self.target()
                    ),
                ));
            }
            let connection_broken = !self.connection_alive(id).await;
            if connection_broken {
                self.drop_connection(id).await;
            } else {
                self.drop_channel(id).await;
            }
            if retried {
                return Err(amqp_error(trigger, &err, self.tls.as_ref(), &self.target()));
            }
            retried = true;
            tracing::debug!(target = %self.target(), error = %err, "amqp channel or connection broke; reopening");
        }
    }

    async fn connection_alive(&self, id: u64) -> bool {
        let live = self.live.lock().await;
        live.as_ref()
            .is_some_and(|l| l.id == id && l.connection.status().connected())
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Option<(u64, Channel)>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn channel(&self, trigger: &str) -> Result<(u64, Channel), ScalerError> {
        // A broken connection closes its channels, so an open channel means a live one.
        if let Some((id, ch)) = self.ready().as_ref()
            && ch.status().connected()
        {
            return Ok((*id, ch.clone()));
        }
        let mut live = self.live.lock().await;
        if live
            .as_ref()
            .is_some_and(|l| !l.connection.status().connected())
            && let Some(old) = live.take()
        {
            self.forget(old.id);
            close_in_background(old.connection);
        }
        if live.is_none() {
            // Boxed: connecting is a large future that only a reconnect needs; inline,
            // every poll's future would carry its size.
            let connection = Box::pin(self.connect(trigger)).await?;
            let id = self.connects.fetch_add(1, Ordering::Relaxed) + 1;
            *live = Some(Live {
                id,
                connection,
                channel: None,
            });
        }
        let Some(l) = live.as_mut() else {
            return Err(ScalerError::new(
                ErrorKind::CONNECTION,
                trigger,
                "no connection",
            ));
        };
        if let Some(ch) = &l.channel
            && ch.status().connected()
        {
            return Ok((l.id, ch.clone()));
        }
        let channel = Box::pin(l.connection.create_channel())
            .await
            .map_err(|e| amqp_error(trigger, &e, self.tls.as_ref(), &self.target()))?;
        l.channel = Some(channel.clone());
        *self.ready() = Some((l.id, channel.clone()));
        Ok((l.id, channel))
    }

    async fn drop_channel(&self, id: u64) {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_mut()
            && l.id == id
        {
            l.channel = None;
        }
        self.forget(id);
    }

    async fn drop_connection(&self, id: u64) {
        let mut live = self.live.lock().await;
        if live.as_ref().is_some_and(|l| l.id == id)
            && let Some(old) = live.take()
        {
            close_in_background(old.connection);
        }
        self.forget(id);
    }

    /// Forgets connection `id`'s channel for the fast path.
    fn forget(&self, id: u64) {
        let mut ready = self.ready();
        if ready.as_ref().is_some_and(|(cur, _)| *cur == id) {
            *ready = None;
        }
    }
}

impl Drop for AmqpClient {
    fn drop(&mut self) {
        if let Some(l) = self.live.get_mut().take() {
            close_in_background(l.connection);
        }
    }
}

fn close_in_background(connection: Connection) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn(async move {
            let _ =
                tokio::time::timeout(CALL_TIMEOUT, connection.close(200, "closing".into())).await;
        });
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => {
            matches!(
                amqp.kind(),
                lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)
            )
        }
        _ => false,
    }
}

fn amqp_error(
    trigger: &str,
    e: &lapin::Error,
    tls: Option<&TlsContext>,
    target: &str,
) -> ScalerError {
    let text = e.to_string();
    // The broker's reply code, not our message: 403 is ACCESS_REFUSED, at login (with the
    // authentication_failure_close capability) or on a vhost or queue.
    let refused = match e.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => amqp.get_id() == 403,
        lapin::ErrorKind::AuthProviderError(_) => true,
        _ => false,
    };
    if refused {
        return ScalerError::new(
            ErrorKind::Auth,
            trigger,
            format!("{target}: the broker refused our credentials ({text})"),
        );
    }
    if let lapin::ErrorKind::IOError(io) = e.kind() {
        return ScalerError::from_connect(trigger, io.as_ref(), tls, target);
    }
    if let Some(failure) = trustscale::trust::find_rustls_error(e) {
        return ScalerError::from_connect(trigger, failure, tls, target);
    }
    ScalerError::new(ErrorKind::CONNECTION, trigger, format!("{target}: {text}"))
}
