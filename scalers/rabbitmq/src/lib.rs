//! The `rabbitmq` scaler of trustscale: queue length over AMQP(S), or queue length and rates over the
//! management API (HTTP(S)).
//!
//! Parameters as KEDA: `host` (amqp://, amqps://, http://, https://; metadata, auth
//! parameters or `hostFromEnv`), `protocol` (auto|amqp|http), `queueName`, `vhostName`,
//! `mode` (QueueLength, MessageRate, DeliverGetRate, PublishedToDeliveredRatio,
//! ExpectedQueueConsumptionTime), `value`, `activationValue`, `excludeUnacknowledged`,
//! `useRegex` + `pageSize` + `operation`, `timeout` (HTTP), `unsafeSsl`; auth `tls`, `ca`,
//! `cert`, `key`, `keyPassword`, `username`, `password`.
//!
//! Every `amqps://` and `https://` host is reached through the factory's TLS context,
//! whether or not `tls: enable` is set (KEDA's `amqps://` without it bypassed the CA pool
//! and ignored `unsafeSsl`). With a client certificate and no password, AMQP
//! authenticates with SASL EXTERNAL.

#![forbid(unsafe_code)]

mod amqp;

use std::sync::Arc;

use async_trait::async_trait;
use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use serde::Deserialize;

pub use amqp::AmqpClient;

use trustscale::pool::{SharedPool, secret_digest};
use trustscale::scaler::httpclient::{self, HttpClients};
use trustscale::scaler::{
    BuildContext, ErrorKind, MetricSpec, Param, Params, Poll, Scaler, ScalerBuilder, ScalerError,
    Tracked, TriggerSpec, parse_quantity, sanitize,
};
use trustscale::trust::{Fingerprint, TlsContext};

/// The parameters of `rabbitmq` (besides the TLS settings).
pub const PARAMETERS: &[Param] = &[
    Param::new(
        "host",
        "amqp://, amqps://, http:// or https:// URL of the broker or its management API (may come from the authentication parameters or `hostFromEnv`).",
    ),
    Param::new(
        "protocol",
        "How to read the queue; auto follows the host's scheme.",
    )
    .default("auto")
    .one_of(&["auto", "amqp", "http"]),
    Param::new(
        "queueName",
        "The queue (a regular expression with `useRegex`).",
    ),
    Param::new(
        "vhostName",
        "The vhost, overriding the one in the host URL.",
    ),
    Param::new(
        "mode",
        "What is measured (default QueueLength); all but QueueLength need the management API.",
    )
    .one_of(&[
        "QueueLength",
        "MessageRate",
        "DeliverGetRate",
        "PublishedToDeliveredRatio",
        "ExpectedQueueConsumptionTime",
    ]),
    Param::new("value", "The target value per replica, with `mode`."),
    Param::new(
        "queueLength",
        "The target queue length (default 20 when neither this nor `mode`/`value` is set).",
    )
    .deprecated("use mode: QueueLength and value"),
    Param::new(
        "activationValue",
        "The value above which the trigger is active.",
    )
    .default("0"),
    Param::new(
        "excludeUnacknowledged",
        "Count only ready messages (management API).",
    )
    .default("false"),
    Param::new(
        "useRegex",
        "`queueName` is a regular expression (management API).",
    )
    .default("false"),
    Param::new("pageSize", "Queues per page with `useRegex`.").default("100"),
    Param::new("operation", "How matched queues combine with `useRegex`.")
        .default("sum")
        .one_of(&["sum", "avg", "max"]),
    Param::new(
        "timeout",
        "Management API request timeout in milliseconds (default: KEDA_HTTP_DEFAULT_TIMEOUT, else 3000).",
    ),
    Param::secret("username", "The user name (overrides the host URL's)."),
    Param::secret("password", "The password (overrides the host URL's)."),
];

/// The largest management API answer read (a regex page of 100 queues is far smaller).
const MAX_BODY: u64 = 8 * 1024 * 1024;

/// What a trigger measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Messages in the queue.
    QueueLength,
    /// Publish rate.
    MessageRate,
    /// Deliver + get rate.
    DeliverGetRate,
    /// Publish rate / deliver-get rate.
    PublishedToDeliveredRatio,
    /// Seconds to drain the queue at the current rates.
    ExpectedQueueConsumptionTime,
}

impl Mode {
    fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "QueueLength" => Mode::QueueLength,
            "MessageRate" => Mode::MessageRate,
            "DeliverGetRate" => Mode::DeliverGetRate,
            "PublishedToDeliveredRatio" => Mode::PublishedToDeliveredRatio,
            "ExpectedQueueConsumptionTime" => Mode::ExpectedQueueConsumptionTime,
            _ => return None,
        })
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct AmqpKey {
    host: String,
    port: u16,
    vhost: String,
    username: String,
    password: [u8; 32],
    external: bool,
    tls: Option<Fingerprint>,
}

/// Builds `rabbitmq` scalers; owns the shared AMQP connections and HTTP clients.
#[derive(Default)]
pub struct RabbitMqBuilder {
    amqp: Arc<SharedPool<AmqpKey, AmqpClient>>,
    http: HttpClients,
}

impl RabbitMqBuilder {
    /// AMQP connections alive now.
    #[must_use]
    pub fn live_amqp_clients(&self) -> usize {
        self.amqp.live()
    }

    /// Every live AMQP client.
    #[must_use]
    pub fn amqp_clients(&self) -> Vec<Arc<AmqpClient>> {
        self.amqp.all()
    }

    /// HTTP clients alive now.
    #[must_use]
    pub fn live_http_clients(&self) -> usize {
        self.http.live()
    }
}

enum Source {
    Amqp {
        client: Tracked<AmqpClient>,
    },
    Http {
        client: Tracked<reqwest::Client>,
        /// The bound on requests in flight to the management API's host.
        limit: httpclient::HostLimit,
        url: reqwest::Url,
        username: String,
        password: String,
        timeout_ms: u64,
    },
}

/// The `rabbitmq` scaler.
pub struct RabbitMqScaler {
    label: String,
    queue: String,
    mode: Mode,
    spec: MetricSpec,
    activation: f64,
    exclude_unacked: bool,
    regex: Option<(u32, Operation)>,
    source: Source,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Operation {
    Sum,
    Avg,
    Max,
}

/// Go's `url.QueryEscape`, used by KEDA in the metric name.
fn query_escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// Splits a management URL's path as KEDA does: the last segment is the vhost, the rest a
/// path prefix; `vhostName` overrides; an empty or `/` vhost is `%2F`.
fn vhost_and_prefix(path: &str, vhost_name: Option<&str>) -> (String, String) {
    let parts: Vec<&str> = path.split('/').collect();
    let last = parts.last().copied().unwrap_or_default();
    let prefix: Vec<&str> = parts[..parts.len().saturating_sub(1)]
        .iter()
        .copied()
        .filter(|p| !p.is_empty())
        .collect();
    let prefix = if prefix.is_empty() {
        String::new()
    } else {
        format!("/{}", prefix.join("/"))
    };
    let vhost = match vhost_name {
        Some(v) => query_escape(v),
        None => last.to_string(),
    };
    let vhost = if vhost.is_empty() || vhost == "/" {
        "%2F".to_string()
    } else {
        vhost
    };
    (vhost, prefix)
}

#[async_trait]
impl ScalerBuilder for RabbitMqBuilder {
    async fn build(
        &self,
        spec: &TriggerSpec,
        ctx: &BuildContext,
    ) -> Result<Box<dyn Scaler>, ScalerError> {
        let p = Params::new(spec, PARAMETERS);
        let label = spec.label.clone();
        let host = p.required("host")?;
        let scheme = host
            .split("://")
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let protocol = p.choice("protocol")?;
        let protocol = match (protocol.as_str(), scheme.as_str()) {
            ("auto", "amqp" | "amqps") | ("amqp", _) => "amqp",
            ("auto", "http" | "https") | ("http", _) => "http",
            _ => {
                return Err(ScalerError::config(
                    &label,
                    "host",
                    "must start with amqp://, amqps://, http:// or https://",
                ));
            }
        };
        let queue = p.required("queueName")?;

        // mode/value, and the deprecated queueLength.
        let queue_length = p.get("queueLength");
        let mode_text = p.get("mode");
        let value_text = p.get("value");
        let (mode, target) = match (queue_length, mode_text, value_text) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ScalerError::config(
                    &label,
                    "queueLength",
                    "is deprecated and cannot be combined with mode/value; use mode and value",
                ));
            }
            (Some(q), None, None) => (
                Mode::QueueLength,
                parse_quantity(&q).map_err(|e| ScalerError::config(&label, "queueLength", e))?,
            ),
            (None, None, None) => (Mode::QueueLength, 20.0),
            (None, mode, value) => {
                let mode_name = mode.unwrap_or_else(|| "QueueLength".into());
                let mode = Mode::parse(&mode_name).ok_or_else(|| {
                    ScalerError::config(
                        &label,
                        "mode",
                        format!("{mode_name:?} is not one of: QueueLength, MessageRate, DeliverGetRate, PublishedToDeliveredRatio, ExpectedQueueConsumptionTime"),
                    )
                })?;
                let value = value
                    .ok_or_else(|| ScalerError::config(&label, "value", "is required with mode"))?;
                (
                    mode,
                    parse_quantity(&value).map_err(|e| ScalerError::config(&label, "value", e))?,
                )
            }
        };
        let activation = p.quantity_value("activationValue")?;
        let exclude_unacked = p.flag("excludeUnacknowledged")?;
        let use_regex = p.flag("useRegex")?;
        let page_size: u32 = p.value("pageSize")?;
        if page_size < 1 {
            return Err(ScalerError::config(
                &label,
                "pageSize",
                "must be at least 1",
            ));
        }
        let operation = match p.choice("operation")?.as_str() {
            "avg" => Operation::Avg,
            "max" => Operation::Max,
            _ => Operation::Sum,
        };
        if protocol == "amqp" {
            let http_only = [
                (
                    mode != Mode::QueueLength,
                    "mode",
                    "modes other than QueueLength need the management API (protocol: http)",
                ),
                (
                    exclude_unacked,
                    "excludeUnacknowledged",
                    "needs the management API (protocol: http)",
                ),
                (
                    use_regex,
                    "useRegex",
                    "needs the management API (protocol: http)",
                ),
                (
                    p.is_set("timeout"),
                    "timeout",
                    "applies to the management API only (protocol: http)",
                ),
            ];
            if let Some((_, name, why)) = http_only.iter().find(|(bad, _, _)| *bad) {
                return Err(ScalerError::config(&label, name, why));
            }
        }

        let settings = p.tls()?;
        let tls_asked = settings
            .tls
            .map(|m| m == trustscale::trust::TlsMode::Enable);
        let secure_scheme = matches!(scheme.as_str(), "amqps" | "https");
        if tls_asked == Some(true) && !secure_scheme {
            return Err(ScalerError::config(
                &label,
                "tls",
                format!("is `enable` but host is {scheme}://; use {scheme}s://"),
            ));
        }
        let tls = p.tls_context(
            ctx,
            &settings,
            secure_scheme,
            &format!("the host is plaintext {scheme}://"),
        )?;
        let username = p.get("username");
        let password = p.get("password");
        let vhost_name = p.get("vhostName");

        let source = if protocol == "amqp" {
            // lapin runs its I/O loop on a thread of its own and drives the socket through
            // the runtime handle, which a current-thread runtime cannot serve: it would hang.
            if tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
            {
                return Err(ScalerError::config(
                    &label,
                    "protocol",
                    "AMQP needs a multi-threaded tokio runtime (e.g. #[tokio::main] or flavor = \"multi_thread\")",
                ));
            }
            let mut uri: AMQPUri = host.parse().map_err(|e| {
                ScalerError::config(&label, "host", format!("not an AMQP URI: {e}"))
            })?;
            // As Go's amqp URI parser (KEDA): a bare `/` path is the default vhost `/`,
            // not the empty vhost.
            if amqp_path(&host).is_none_or(|p| p == "/") {
                uri.vhost = "/".into();
            }
            if let Some(v) = &vhost_name {
                uri.vhost = v.clone();
            }
            if let Some(u) = &username {
                uri.authority.userinfo.username = u.clone();
            }
            if let Some(pw) = &password {
                uri.authority.userinfo.password = pw.clone();
            }
            let has_password = password.is_some() || host_has_password(&host);
            let external =
                tls.as_ref().is_some_and(TlsContext::has_client_identity) && !has_password;
            if external {
                uri.query.auth_mechanism = Some(SASLMechanism::External);
            }
            if (uri.scheme == AMQPScheme::AMQPS) != tls.is_some() {
                return Err(ScalerError::config(
                    &label,
                    "host",
                    "scheme and TLS disagree",
                ));
            }
            let name = format!("trustscale ({})", spec.scaled_object);
            let pool = Arc::clone(&self.amqp);
            // The shared connection for a context, looked up again when the anchors change.
            let make = move |tls: Option<&TlsContext>| {
                let key = AmqpKey {
                    host: uri.authority.host.clone(),
                    port: uri.authority.port,
                    vhost: uri.vhost.clone(),
                    username: uri.authority.userinfo.username.clone(),
                    password: secret_digest(Some(&uri.authority.userinfo.password)),
                    external,
                    tls: tls.map(TlsContext::fingerprint),
                };
                Ok(pool.get_or_insert_with(&key, || {
                    AmqpClient::new(uri.clone(), tls.cloned(), name.clone())
                }))
            };
            Source::Amqp {
                client: Tracked::new_rustls(ctx, &settings, tls, &label, Box::new(make))?,
            }
        } else {
            let mut url = reqwest::Url::parse(&host)
                .map_err(|e| ScalerError::config(&label, "host", format!("not a URL: {e}")))?;
            let url_user = url.username().to_string();
            let url_pass = url.password().unwrap_or_default().to_string();
            let _ = url.set_username("");
            let _ = url.set_password(None);
            let path = url.path().to_string();
            let (vhost, prefix) = vhost_and_prefix(&path, vhost_name.as_deref());
            let api = if use_regex {
                format!(
                    "{prefix}/api/queues/{vhost}?page=1&use_regex=true&pagination=false&name={}&page_size={page_size}",
                    query_escape(&queue)
                )
            } else {
                format!(
                    "{prefix}/api/queues/{vhost}/{}",
                    query_escape(&queue).replace('+', "%20")
                )
            };
            let base = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
            let base = match url.port() {
                Some(port) => format!("{base}:{port}"),
                None => base,
            };
            let url = reqwest::Url::parse(&format!("{base}{api}")).map_err(|e| {
                ScalerError::config(&label, "host", format!("cannot form the API URL: {e}"))
            })?;
            let timeout_ms = p
                .parse("timeout")?
                .unwrap_or_else(httpclient::default_timeout_ms);
            let client = self.http.tracked(ctx, &settings, tls, timeout_ms, &label)?;
            Source::Http {
                client,
                limit: self.http.host_limit(&httpclient::target_of(&url)),
                url,
                username: username.unwrap_or(url_user),
                password: password.unwrap_or(url_pass),
                timeout_ms,
            }
        };
        p.warn_unknown();
        Ok(Box::new(RabbitMqScaler {
            label,
            spec: MetricSpec {
                name: spec.metric_name(&format!("rabbitmq-{}", query_escape(&queue))),
                target,
                metric_type: spec.metric_type,
            },
            queue,
            mode,
            activation,
            exclude_unacked,
            regex: use_regex.then_some((page_size, operation)),
            source,
        }))
    }

    fn parameters(&self) -> &'static [Param] {
        PARAMETERS
    }
}

/// The path of an AMQP URI (`/vhost`), without the query.
fn amqp_path(host: &str) -> Option<&str> {
    let rest = host.split_once("://")?.1;
    let rest = rest.split(['?', '#']).next()?;
    rest.find('/').map(|i| &rest[i..])
}

fn host_has_password(host: &str) -> bool {
    host.split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|authority| authority.rsplit_once('@'))
        .is_some_and(|(userinfo, _)| {
            userinfo
                .split_once(':')
                .is_some_and(|(_, pw)| !pw.is_empty())
        })
}

#[derive(Debug, Default, Deserialize)]
struct Rate {
    #[serde(default)]
    rate: f64,
}

#[derive(Debug, Default, Deserialize)]
struct MessageStats {
    #[serde(default)]
    publish_details: Rate,
    #[serde(default)]
    deliver_get_details: Rate,
}

#[derive(Debug, Default, Deserialize)]
struct QueueInfo {
    #[serde(default)]
    messages: i64,
    #[serde(default)]
    messages_ready: i64,
    #[serde(default)]
    message_stats: MessageStats,
}

#[derive(Debug, Deserialize)]
struct QueuePage {
    #[serde(default)]
    items: Vec<QueueInfo>,
    #[serde(default)]
    page_count: u32,
}

/// (messages, publish rate, deliver-get rate)
type Status = (f64, f64, f64);

impl RabbitMqScaler {
    async fn status(&self) -> Result<Status, ScalerError> {
        match &self.source {
            Source::Amqp { client } => {
                let (client, tls) = client.current()?;
                let n = match client.ready_messages(&self.label, &self.queue).await {
                    Ok(n) => n,
                    // A broker that refuses our client certificate after the TLS 1.3
                    // handshake may reset the connection before its alert is read.
                    Err(e) => {
                        let target = client.host_port();
                        // Boxed: only a failure takes this path.
                        return Err(Box::pin(trustscale::scaler::refine_transport(
                            e,
                            tls.as_ref(),
                            Some(&target),
                        ))
                        .await);
                    }
                };
                Ok((f64::from(n), 0.0, 0.0))
            }
            Source::Http {
                client,
                limit,
                url,
                username,
                password,
                timeout_ms,
            } => {
                // Boxed: the HTTP request is a large future; inline, it would make every
                // AMQP poll's future as large.
                Box::pin(async move {
                let (client, tls) = client.current()?;
                let target = httpclient::target_of(url);
                let turn = limit.turn(&self.label, *timeout_ms).await?;
                let mut req = client.get(url.clone());
                if let Some(left) = turn.remaining {
                    req = req.timeout(left);
                }
                if !username.is_empty() {
                    req = req.basic_auth(username, Some(password));
                }
                let mut resp = req.send().await.map_err(|e| {
                    httpclient::request_error(&self.label, e, tls.as_ref(), &target, *timeout_ms)
                })?;
                let status = resp.status();
                if status == reqwest::StatusCode::UNAUTHORIZED
                    || status == reqwest::StatusCode::FORBIDDEN
                {
                    return Err(ScalerError::new(
                        ErrorKind::Auth,
                        &self.label,
                        format!("{target} answered {status}"),
                    ));
                }
                if status == reqwest::StatusCode::NOT_FOUND {
                    return Err(ScalerError::new(
                        ErrorKind::Source,
                        &self.label,
                        format!(
                            "{target}: queue {:?} (or its vhost) does not exist",
                            self.queue
                        ),
                    ));
                }
                if !status.is_success() {
                    return Err(ScalerError::new(
                        ErrorKind::Source,
                        &self.label,
                        format!("{target} answered {status}"),
                    ));
                }
                let body = httpclient::read_capped(&mut resp, MAX_BODY)
                    .await
                    .map_err(|e| ScalerError::new(ErrorKind::Source, &self.label, e))?;
                let bad = |e: serde_json::Error| {
                    ScalerError::new(
                        ErrorKind::Source,
                        &self.label,
                        format!("{target}: unexpected management API answer: {e}"),
                    )
                };
                let info = match self.regex {
                    None => serde_json::from_slice::<QueueInfo>(&body).map_err(bad)?,
                    Some((_, op)) => {
                        let page = serde_json::from_slice::<QueuePage>(&body).map_err(bad)?;
                        if page.page_count > 1 {
                            return Err(ScalerError::new(
                                ErrorKind::Source,
                                &self.label,
                                "the regex matches more queues than one page holds; raise pageSize",
                            ));
                        }
                        compose(&page.items, op)
                    }
                };
                let messages = if self.exclude_unacked {
                    info.messages_ready
                } else {
                    info.messages
                };
                Ok((
                    messages as f64,
                    info.message_stats.publish_details.rate,
                    info.message_stats.deliver_get_details.rate,
                ))
                })
                .await
            }
        }
    }
}

fn compose(items: &[QueueInfo], op: Operation) -> QueueInfo {
    let mut out = QueueInfo::default();
    if items.is_empty() {
        return out;
    }
    for q in items {
        match op {
            Operation::Sum | Operation::Avg => {
                out.messages += q.messages;
                out.messages_ready += q.messages_ready;
                out.message_stats.publish_details.rate += q.message_stats.publish_details.rate;
                out.message_stats.deliver_get_details.rate +=
                    q.message_stats.deliver_get_details.rate;
            }
            Operation::Max => {
                out.messages = out.messages.max(q.messages);
                out.messages_ready = out.messages_ready.max(q.messages_ready);
                out.message_stats.publish_details.rate = out
                    .message_stats
                    .publish_details
                    .rate
                    .max(q.message_stats.publish_details.rate);
                out.message_stats.deliver_get_details.rate = out
                    .message_stats
                    .deliver_get_details
                    .rate
                    .max(q.message_stats.deliver_get_details.rate);
            }
        }
    }
    if op == Operation::Avg {
        let n = items.len() as i64;
        out.messages /= n;
        out.messages_ready /= n;
        out.message_stats.publish_details.rate /= n as f64;
        out.message_stats.deliver_get_details.rate /= n as f64;
    }
    out
}

/// KEDA's value and activity for each mode.
fn evaluate(mode: Mode, (messages, publish, deliver): Status, activation: f64) -> (f64, bool) {
    match mode {
        Mode::QueueLength => (messages, messages > activation),
        Mode::MessageRate => (publish, publish > activation || messages > activation),
        Mode::DeliverGetRate => (deliver, deliver > activation),
        Mode::PublishedToDeliveredRatio => {
            let ratio = if publish > 0.0 && deliver == 0.0 {
                activation
            } else if publish > 0.0 {
                publish / deliver
            } else {
                0.0
            };
            (
                ratio,
                ratio > activation || (publish > 0.0 && deliver == 0.0),
            )
        }
        Mode::ExpectedQueueConsumptionTime => {
            let eta = if messages == 0.0 {
                0.0
            } else if deliver == 0.0 {
                activation
            } else {
                (publish - deliver) / deliver + messages / deliver
            };
            (eta, eta > activation || (deliver == 0.0 && messages > 0.0))
        }
    }
}

#[async_trait]
impl Scaler for RabbitMqScaler {
    fn metric_specs(&self) -> Vec<MetricSpec> {
        vec![self.spec.clone()]
    }

    async fn poll(&self) -> Result<Poll, ScalerError> {
        let status = self.status().await?;
        let (value, active) = evaluate(self.mode, status, self.activation);
        let mut poll = Poll::single(&self.spec.name, sanitize(value), self.activation);
        poll.active = active;
        Ok(poll)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn management_paths_split_like_keda() {
        let cases = [
            ("root", "/", None, ("%2F", "")),
            ("empty", "", None, ("%2F", "")),
            ("vhost", "/orders", None, ("orders", "")),
            (
                "prefix and vhost",
                "/rabbit/api-gw/orders",
                None,
                ("orders", "/rabbit/api-gw"),
            ),
            ("vhostName wins", "/orders", Some("/"), ("%2F", "")),
            ("vhostName escaped", "/", Some("my vhost"), ("my+vhost", "")),
        ];
        for (name, path, vhost_name, (vhost, prefix)) in cases {
            assert_eq!(
                vhost_and_prefix(path, vhost_name),
                (vhost.to_string(), prefix.to_string()),
                "{name}"
            );
        }
    }

    #[test]
    fn modes_compute_like_keda() {
        let cases = [
            (
                "queue length",
                Mode::QueueLength,
                (7.0, 0.0, 0.0),
                0.0,
                (7.0, true),
            ),
            (
                "message rate",
                Mode::MessageRate,
                (0.0, 2.5, 0.0),
                0.0,
                (2.5, true),
            ),
            (
                "ratio, nothing delivered",
                Mode::PublishedToDeliveredRatio,
                (0.0, 4.0, 0.0),
                1.0,
                (1.0, true),
            ),
            (
                "ratio",
                Mode::PublishedToDeliveredRatio,
                (0.0, 4.0, 2.0),
                1.0,
                (2.0, true),
            ),
            (
                "eta empty queue",
                Mode::ExpectedQueueConsumptionTime,
                (0.0, 0.0, 0.0),
                5.0,
                (0.0, false),
            ),
            (
                "eta no consumers",
                Mode::ExpectedQueueConsumptionTime,
                (10.0, 1.0, 0.0),
                5.0,
                (5.0, true),
            ),
            (
                "eta",
                Mode::ExpectedQueueConsumptionTime,
                (10.0, 1.0, 2.0),
                0.0,
                (4.5, true),
            ),
        ];
        for (name, mode, status, activation, want) in cases {
            assert_eq!(evaluate(mode, status, activation), want, "{name}");
        }
    }

    #[test]
    fn queue_names_escape_like_go() {
        assert_eq!(query_escape("orders.high prio/1"), "orders.high+prio%2F1");
        assert!(host_has_password("amqps://u:p@h:5671/v"));
        assert!(!host_has_password("amqps://u@h:5671/v"));
        assert!(!host_has_password("amqps://h:5671/v"));
        assert_eq!(amqp_path("amqps://u:p@h:5671/"), Some("/"));
        assert_eq!(amqp_path("amqps://h:5671"), None);
        assert_eq!(
            amqp_path("amqps://h:5671/orders?heartbeat=10"),
            Some("/orders")
        );
    }
}
