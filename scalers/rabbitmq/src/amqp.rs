//! A shared AMQP connection, opened over the factory's rustls configuration.

use std::os::fd::AsFd as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::tcp::{AsyncTcpStream, RustlsConnector};
use lapin::types::FieldTable;
use lapin::uri::{AMQPUri, SASLMechanism};
use lapin::{Channel, Connection, ConnectionProperties};

use trustscale::scaler::{ErrorKind, ScalerError};
use trustscale::trust::TlsContext;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long calls may wait on a connection that answers none of them before it is cut.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a connection's watchdog looks.
const WATCH_TICK: Duration = Duration::from_millis(500);

/// A second descriptor of a connection's socket. Shutting it down ends lapin's I/O loop
/// whatever the peer does (its pending calls fail at once, its thread ends); dropping it
/// only closes this descriptor.
#[derive(Default)]
struct Socket(std::sync::Mutex<Option<std::net::TcpStream>>);

impl Socket {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<std::net::TcpStream>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn shutdown(&self) {
        if let Some(s) = self.slot().take() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A connection's calls, as its watchdog sees them.
#[derive(Default)]
struct Watch {
    socket: Socket,
    /// Calls waiting for their answer.
    waiting: AtomicU64,
    /// Answers received (errors included).
    answered: AtomicU64,
    /// Set when the watchdog cut the connection.
    cut: AtomicBool,
}

/// Cuts the watched socket when dropped, unless emptied first.
struct CutOnDrop(Option<Arc<Watch>>);

impl Drop for CutOnDrop {
    fn drop(&mut self) {
        if let Some(w) = self.0.take() {
            w.socket.shutdown();
        }
    }
}

/// One waiting call; dropped when it is answered or given up.
struct Waiting<'a>(&'a Watch);

impl<'a> Waiting<'a> {
    fn new(watch: &'a Watch) -> Self {
        watch.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(watch)
    }

    fn answered(self) {
        self.0.answered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Cuts the connection when calls have waited longer than [`CALL_TIMEOUT`] and none was
/// answered meanwhile. One task per connection instead of a timer per call; it ends
/// with the connection.
async fn watchdog(watch: Weak<Watch>) {
    let mut tick = tokio::time::interval(WATCH_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut silent) = (0, Duration::ZERO);
    loop {
        tick.tick().await;
        let Some(w) = watch.upgrade() else { return };
        let answered = w.answered.load(Ordering::Relaxed);
        if w.waiting.load(Ordering::Relaxed) > 0 && answered == seen {
            silent += WATCH_TICK;
        } else {
            silent = Duration::ZERO;
        }
        seen = answered;
        // A call that came in after the last tick counts a whole tick: strictly more
        // than the timeout means it has waited at least that long.
        if silent > CALL_TIMEOUT {
            w.cut.store(true, Ordering::Relaxed);
            w.socket.shutdown();
            return;
        }
    }
}

/// An open channel and its connection's watch, for a poll to take whole.
struct Ready {
    id: u64,
    channel: Channel,
    watch: Arc<Watch>,
}

struct Live {
    id: u64,
    connection: Connection,
    watch: Arc<Watch>,
    channel: Option<Arc<Ready>>,
}

/// One AMQP connection (and one channel on it), shared by every trigger with the same
/// host, vhost, credentials and trust. Broken connections and channels are replaced;
/// replaced connections are closed, so none leak. A connection that answers no call for
/// [`CALL_TIMEOUT`] is cut by its watchdog.
pub struct AmqpClient {
    uri: AMQPUri,
    tls: Option<TlsContext>,
    name: String,
    live: tokio::sync::Mutex<Option<Live>>,
    /// The open channel, for a poll to take under a short synchronous lock (the async
    /// lock above is for opening and replacing). In an `Arc`: a poll takes one reference,
    /// not a clone of the channel's dozen handles.
    ready: std::sync::Mutex<Option<Arc<Ready>>>,
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

    async fn connect(&self, trigger: &str) -> Result<(Connection, Arc<Watch>), ScalerError> {
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
        let watch = Arc::new(Watch::default());
        // Whatever ends this attempt short of a connection (an error, the limit, or the
        // poll that waits for it being dropped) cuts its socket, so that nothing goes on
        // waiting on a silent peer.
        let mut cut_unless_connected = CutOnDrop(Some(Arc::clone(&watch)));
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        let timed_out = || {
            ScalerError::new(
                ErrorKind::CONNECTION,
                trigger,
                format!("{target}: connecting timed out after {CONNECT_TIMEOUT:?}"),
            )
        };
        // The transport first, here: TCP, then TLS from the trigger's context (the URI's
        // scheme never chooses a TLS stack of its own). lapin is handed a stream that is
        // already up: an attempt that fails in lapin's own connect keeps its internal task
        // and channel structures for good (lapin 4.12 stops that task only on the paths
        // after a transport exists), some 10 KB for every poll that found the broker down.
        // The socket's second descriptor is kept as soon as TCP is up, so that an attempt
        // given up is cut in its TLS handshake too.
        let transport = async {
            let port = self.uri.authority.port;
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect();
            let stream: AsyncTcpStream<async_compat::Compat<tokio::net::TcpStream>> =
                AsyncTcpStream::connect(&runtime, addrs).await?;
            if let AsyncTcpStream::Plain(s) = &stream {
                let second = s.get_ref().as_fd().try_clone_to_owned()?;
                *watch.socket.slot() = Some(std::net::TcpStream::from(second));
            }
            match (&connector, &sni) {
                (Some(connector), Some(sni)) => {
                    let name = sni.to_str();
                    stream.into_rustls(connector, &name).await
                }
                _ => Ok(stream),
            }
        };
        let stream = match tokio::time::timeout_at(deadline, transport).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return Err(ScalerError::from_connect(
                    trigger,
                    &e,
                    tls.as_ref(),
                    &target,
                ));
            }
            Err(_) => return Err(timed_out()),
        };
        // lapin calls this once (it retries nothing by default).
        let stream = std::sync::Mutex::new(Some(stream));
        let connect = async move |_: AMQPUri, _| {
            let taken = stream
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            taken.ok_or_else(|| {
                lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "the connection's transport was used already",
                ))
            })
        };
        let connecting = Connection::connector(self.uri.clone(), runtime, connect, props);
        let connection = match tokio::time::timeout_at(deadline, connecting).await {
            Ok(Ok(c)) => {
                cut_unless_connected.0 = None;
                c
            }
            Ok(Err(e)) => return Err(amqp_error(trigger, &e, tls.as_ref(), &target)),
            Err(_) => return Err(timed_out()),
        };
        tokio::spawn(watchdog(Arc::downgrade(&watch)));
        tracing::debug!(target = %target, tls = tls.is_some(), "connected to rabbitmq");
        Ok((connection, watch))
    }

    /// The number of ready messages of `queue` (a passive declare).
    pub async fn ready_messages(&self, trigger: &str, queue: &str) -> Result<u32, ScalerError> {
        let mut retried = false;
        loop {
            let ready = self.channel(trigger).await?;
            let waiting = Waiting::new(&ready.watch);
            let result = ready
                .channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            waiting.answered();
            let err = match result {
                Ok(q) => return Ok(q.message_count()),
                Err(e) => e,
            };
            if ready.watch.cut.load(Ordering::Relaxed) {
                self.drop_connection(ready.id).await;
                return Err(ScalerError::new(
                    ErrorKind::CONNECTION,
                    trigger,
                    format!("{}: no answer in {CALL_TIMEOUT:?}", self.target()),
                ));
            }
            if is_not_found(&err) {
                // The broker closed the channel; the connection stays.
                self.drop_channel(ready.id).await;
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
            let connection_broken = !self.connection_alive(ready.id).await;
            if connection_broken {
                self.drop_connection(ready.id).await;
            } else {
                self.drop_channel(ready.id).await;
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

    fn ready(&self) -> std::sync::MutexGuard<'_, Option<Arc<Ready>>> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn channel(&self, trigger: &str) -> Result<Arc<Ready>, ScalerError> {
        // A broken connection closes its channels, so an open channel means a live one.
        if let Some(ready) = self.ready().as_ref()
            && ready.channel.status().connected()
        {
            return Ok(Arc::clone(ready));
        }
        let mut live = self.live.lock().await;
        if live
            .as_ref()
            .is_some_and(|l| !l.connection.status().connected())
            && let Some(old) = live.take()
        {
            self.forget(old.id);
            close_in_background(old);
        }
        if live.is_none() {
            // Boxed: connecting is a large future that only a reconnect needs; inline,
            // every poll's future would carry its size.
            let (connection, watch) = Box::pin(self.connect(trigger)).await?;
            let id = self.connects.fetch_add(1, Ordering::Relaxed) + 1;
            *live = Some(Live {
                id,
                connection,
                watch,
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
        if let Some(ready) = &l.channel
            && ready.channel.status().connected()
        {
            return Ok(Arc::clone(ready));
        }
        let channel = Box::pin(l.connection.create_channel())
            .await
            .map_err(|e| amqp_error(trigger, &e, self.tls.as_ref(), &self.target()))?;
        let ready = Arc::new(Ready {
            id: l.id,
            channel,
            watch: Arc::clone(&l.watch),
        });
        l.channel = Some(Arc::clone(&ready));
        *self.ready() = Some(Arc::clone(&ready));
        Ok(ready)
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
            close_in_background(old);
        }
        self.forget(id);
    }

    /// Forgets connection `id`'s channel for the fast path.
    fn forget(&self, id: u64) {
        let mut ready = self.ready();
        if ready.as_ref().is_some_and(|r| r.id == id) {
            *ready = None;
        }
    }
}

impl Drop for AmqpClient {
    fn drop(&mut self) {
        if let Some(l) = self.live.get_mut().take() {
            close_in_background(l);
        }
    }
}

/// Closes `live` politely, within [`CALL_TIMEOUT`], then cuts its socket: a connection
/// whose peer never answers the close must not keep lapin's I/O loop (a thread and its
/// buffers) alive.
fn close_in_background(live: Live) {
    let Live {
        connection, watch, ..
    } = live;
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(async move {
                let _ = tokio::time::timeout(CALL_TIMEOUT, connection.close(200, "closing".into()))
                    .await;
                watch.socket.shutdown();
            });
        }
        Err(_) => watch.socket.shutdown(),
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
