//! Errors of scalers, classified the way `trust inspect` and `probe` report them.

use std::fmt;

use serde::Serialize;

use crate::trust::{FailureKind, TrustError};

/// What kind of failure a trigger met.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The trigger's configuration is wrong (a parameter is missing or invalid).
    Config,
    /// The source refused our credentials.
    Auth,
    /// The source could not be reached.
    Connection,
    /// The source answered, but not with something usable (missing queue, bad body...).
    Source,
    /// A TLS failure, classified.
    Tls(FailureKind),
}

impl ErrorKind {
    /// The snake_case name used in JSON and metrics.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "config",
            ErrorKind::Auth => "auth",
            ErrorKind::Connection | ErrorKind::Tls(FailureKind::Connection) => "connection",
            ErrorKind::Source => "source",
            ErrorKind::Tls(k) => k.as_str(),
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

/// A scaler error: its kind, the trigger it is about, and what happened.
#[derive(Clone, Debug, thiserror::Error, Serialize)]
#[error("{trigger}: {message}")]
pub struct ScalerError {
    /// The kind.
    pub kind: ErrorKind,
    /// The trigger (`namespace/name#index (type)`).
    #[serde(skip)]
    pub trigger: String,
    /// What happened, in words.
    pub message: String,
}

impl ScalerError {
    /// A new error.
    #[must_use]
    pub fn new(kind: ErrorKind, trigger: impl Into<String>, message: impl Into<String>) -> Self {
        ScalerError {
            kind,
            trigger: trigger.into(),
            message: message.into(),
        }
    }
    /// A configuration error naming a parameter.
    #[must_use]
    pub fn config(trigger: &str, parameter: &str, message: impl fmt::Display) -> Self {
        ScalerError::new(
            ErrorKind::Config,
            trigger,
            format!("parameter {parameter}: {message}"),
        )
    }
    /// A configuration error from the trust layer (bad `ca`, forbidden `unsafeSsl`, ...).
    #[must_use]
    pub fn from_trust(trigger: &str, err: &TrustError) -> Self {
        ScalerError::new(ErrorKind::Config, trigger, err.to_string())
    }
    /// Classifies a connection-level error: TLS failures get their TLS kind, the rest is
    /// `connection`.
    #[must_use]
    pub fn from_connect(
        trigger: &str,
        err: &(dyn std::error::Error + 'static),
        ctx: Option<&crate::trust::TlsContext>,
        target: &str,
    ) -> Self {
        let failure = crate::trust::classify(err, ctx, target);
        let kind = match failure.kind {
            FailureKind::Connection => ErrorKind::Connection,
            k => ErrorKind::Tls(k),
        };
        ScalerError::new(kind, trigger, failure.message)
    }
}
