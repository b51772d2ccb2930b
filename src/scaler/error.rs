//! Errors of scalers, classified the way `trust inspect` and `probe` report them.

use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::trust::{FailureKind, TlsContext, TrustError};

/// What kind of failure a trigger met. Each failure has one encoding: a connection that
/// could not be made, TLS or not, is [`ErrorKind::Transport`] with the trust layer's
/// classification ([`FailureKind::Connection`] when TLS was not the reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The trigger's configuration is wrong (a parameter is missing or invalid).
    Config,
    /// The source refused our credentials.
    Auth,
    /// The source answered, but not with something usable (missing queue, bad body...).
    Source,
    /// The source could not be reached: refused, timed out, or a TLS failure, classified.
    Transport(FailureKind),
}

impl ErrorKind {
    /// A connection failure that is not about TLS.
    pub const CONNECTION: ErrorKind = ErrorKind::Transport(FailureKind::Connection);

    /// The snake_case name used in JSON and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Auth => "auth",
            ErrorKind::Source => "source",
            ErrorKind::Transport(k) => k.as_str(),
        }
    }
}

impl Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A scaler error: its kind, the trigger it is about, the parameter (for configuration
/// errors), what happened, and the underlying error when there is one.
#[derive(Clone, Debug, thiserror::Error, Serialize)]
#[error("{trigger}: {message}")]
pub struct ScalerError {
    /// The kind.
    pub kind: ErrorKind,
    /// The trigger (`namespace/name#index (type)`).
    #[serde(skip)]
    pub trigger: String,
    /// The parameter a configuration error is about, when it is about one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// What happened, in words (never a secret).
    pub message: String,
    /// The error underneath, if any.
    #[serde(skip)]
    #[source]
    pub source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

/// The longest message an error keeps (in characters): a message may quote a parameter
/// the user gave, and it goes into logs, statuses and Events every time it happens.
pub const MAX_MESSAGE_CHARS: usize = 2048;

fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_CHARS {
        return message;
    }
    match message.char_indices().nth(MAX_MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}… ({} more bytes)", &message[..cut], message.len() - cut),
        None => message,
    }
}

impl ScalerError {
    /// A new error.
    #[must_use]
    pub fn new(kind: ErrorKind, trigger: impl Into<String>, message: impl Into<String>) -> Self {
        ScalerError {
            kind,
            trigger: trigger.into(),
            parameter: None,
            message: bounded(message.into()),
            source: None,
        }
    }

    /// The same error, with the error underneath it.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// A configuration error naming a parameter.
    #[must_use]
    pub fn config(trigger: &str, parameter: &str, message: impl fmt::Display) -> Self {
        let mut e = ScalerError::new(
            ErrorKind::Config,
            trigger,
            format!("parameter {parameter}: {message}"),
        );
        e.parameter = Some(parameter.to_string());
        e
    }

    /// A configuration error from the trust layer (bad `ca`, forbidden `unsafeSsl`, ...).
    #[must_use]
    pub fn from_trust(trigger: &str, err: TrustError) -> Self {
        // The message says it all (the causes too); the error stays attached as the source.
        let message = crate::error::Chain(&err).to_string();
        let mut e = ScalerError::new(ErrorKind::Config, trigger, message);
        e.parameter = err.parameter().map(str::to_string);
        e.with_source(err)
    }

    /// Classifies a connection-level error: TLS failures get their TLS kind, the rest is
    /// a plain connection failure.
    #[must_use]
    pub fn from_connect(
        trigger: &str,
        err: &(dyn std::error::Error + 'static),
        ctx: Option<&TlsContext>,
        target: &str,
    ) -> Self {
        let failure = crate::trust::classify(err, ctx, target);
        ScalerError::new(ErrorKind::Transport(failure.kind), trigger, failure.message)
    }
}

/// How long the diagnostic handshake of [`refine_transport`] may take.
const DIAGNOSTIC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Makes a transport failure precise with one TLS handshake of our own (rustls, the
/// trigger's same context) against `target` (`host:port`), where the client library's
/// own report cannot tell the causes apart:
///
/// - a general "certificate verify failed" (librdkafka's OpenSSL says it for an unknown
///   issuer, a wrong host name and an expired certificate alike);
/// - a connection reset right after a handshake in which the trigger sent a client
///   certificate (a TLS 1.3 server that refuses the certificate may close before its
///   alert is read).
///
/// And a server that asks for a client certificate the trigger did send refused it.
/// Anything else is returned as it is.
pub async fn refine_transport(
    e: ScalerError,
    tls: Option<&TlsContext>,
    target: Option<&str>,
) -> ScalerError {
    let ErrorKind::Transport(kind) = e.kind else {
        return e;
    };
    let Some(tls) = tls else { return e };
    let sent_identity = tls.has_client_identity();
    let worth_a_look = match kind {
        FailureKind::UnknownIssuer | FailureKind::Tls => true,
        FailureKind::Connection => {
            sent_identity && e.message.to_ascii_lowercase().contains("reset")
        }
        _ => false,
    };
    let mut kind = kind;
    let mut message = e.message.clone();
    if worth_a_look && let Some(target) = target {
        let report = crate::trust::inspect::handshake(tls, target, DIAGNOSTIC_TIMEOUT).await;
        if let Some(f) = report.error.filter(|f| {
            matches!(
                f.kind,
                FailureKind::UnknownIssuer
                    | FailureKind::HostnameMismatch
                    | FailureKind::Expired
                    | FailureKind::ProtocolVersion
                    | FailureKind::ClientCertRejected
                    | FailureKind::ClientCertRequired
            )
        }) {
            kind = f.kind;
            message.push_str(&format!(
                "; checked with a handshake of our own: {}",
                f.message
            ));
        }
    }
    if kind == FailureKind::ClientCertRequired && sent_identity {
        kind = FailureKind::ClientCertRejected;
        message.push_str("; the trigger sent a client certificate: the server does not accept it");
    }
    if ErrorKind::Transport(kind) == e.kind && message == e.message {
        return e;
    }
    let mut out = ScalerError::new(ErrorKind::Transport(kind), &e.trigger, message);
    out.parameter = e.parameter.clone();
    out
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn a_long_message_is_cut_on_a_character_boundary_and_says_how_much_is_left() {
        let long = format!("valueLocation {:?} not found", "é".repeat(10_000));
        let e = ScalerError::new(ErrorKind::Config, "t", long.clone());
        assert!(e.message.chars().count() < MAX_MESSAGE_CHARS + 40);
        assert!(
            e.message.ends_with("more bytes)"),
            "{}",
            &e.message[e.message.len() - 40..]
        );
        assert!(long.starts_with(e.message.split('…').next().unwrap()));
        let short = ScalerError::new(ErrorKind::Config, "t", "short");
        assert_eq!(short.message, "short");
    }
}
