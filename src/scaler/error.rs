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

impl ScalerError {
    /// A new error.
    #[must_use]
    pub fn new(kind: ErrorKind, trigger: impl Into<String>, message: impl Into<String>) -> Self {
        ScalerError {
            kind,
            trigger: trigger.into(),
            parameter: None,
            message: message.into(),
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
