//! Errors of the trust layer.

use std::path::PathBuf;

/// Everything that can go wrong while building trust anchors, TLS contexts or server
/// configurations. Every variant names the input it is about (file, parameter, trigger),
/// and none carries key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// An environment variable or option holds a TLS version we do not know.
    #[error(
        "{source_name} has the invalid value {value:?}; allowed values are TLS10, TLS11, TLS12, TLS13"
    )]
    InvalidTlsVersion {
        /// The variable or option that held the value.
        source_name: String,
        /// The value as given.
        value: String,
    },

    /// A cipher list names a suite this build does not have.
    #[error(
        "{source_name} names the unknown TLS 1.2 cipher suite {value:?}; valid names are {allowed}"
    )]
    InvalidCipher {
        /// The variable or option that held the list.
        source_name: String,
        /// The name as given.
        value: String,
        /// The valid names, comma-separated.
        allowed: String,
    },

    /// A policy or mode value is not one of the allowed words.
    #[error("parameter {parameter} has the invalid value {value:?}; allowed values are {allowed}")]
    InvalidValue {
        /// The parameter name, as the user wrote it.
        parameter: String,
        /// The value as given.
        value: String,
        /// The allowed values, comma-separated.
        allowed: &'static str,
    },

    /// A file named by a parameter could not be read.
    #[error("parameter {parameter}: {}", match path {
        Some(p) => format!("cannot read {}", p.display()),
        None => "the value is neither PEM nor a readable file (the value is not shown)".to_string(),
    })]
    ReadFile {
        /// The parameter that named the file.
        parameter: &'static str,
        /// The file; `None` for a `key`, whose value is never shown.
        path: Option<PathBuf>,
        /// Why reading failed.
        #[source]
        source: std::io::Error,
    },

    /// A parameter names a file that the policy does not let it read.
    #[error("parameter {parameter}: {} is refused: {reason}", match path {
        Some(p) => p.display().to_string(),
        None => "the file it names".to_string(),
    })]
    FileRefused {
        /// The parameter that named the file.
        parameter: &'static str,
        /// The file; `None` for a `key`, whose value is never shown.
        path: Option<PathBuf>,
        /// Why.
        reason: String,
    },

    /// A PEM or DER value given for a parameter could not be used.
    #[error("parameter {parameter}: {reason}")]
    BadMaterial {
        /// The parameter (`ca`, `cert`, `key`, `keyPassword`, ...).
        parameter: &'static str,
        /// What is wrong, in words.
        reason: String,
    },

    /// A CA folder could not be listed (it exists but is unreadable).
    #[error("CA folder {path} cannot be read")]
    CaFolder {
        /// The folder.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// `unsafeSsl` was asked for while the policy forbids it.
    #[error(
        "trigger {trigger}: unsafeSsl is forbidden by policy; trust the server instead: put its CA in a CA folder, set the `ca` parameter, or set `serverName`"
    )]
    UnsafeSslForbidden {
        /// The trigger that asked for it.
        trigger: String,
    },

    /// A setting cannot be honoured by the client library it is meant for.
    #[error("trigger {trigger}: {setting} cannot be honoured by {backend}: {reason}")]
    Unsupported {
        /// The trigger.
        trigger: String,
        /// The setting that cannot be honoured.
        setting: &'static str,
        /// The client library.
        backend: &'static str,
        /// Why, and what to do instead.
        reason: String,
    },

    /// rustls refused the configuration we built.
    #[error("TLS configuration rejected")]
    Rustls(#[from] rustls::Error),

    /// The certificate verifier could not be built from the anchors.
    #[error("cannot build a certificate verifier")]
    Verifier(#[from] rustls::server::VerifierBuilderError),

    /// The thread that follows the CA folders could not be started.
    #[error("cannot watch CA folders")]
    Watch(#[source] std::io::Error),
}

impl TrustError {
    /// The trigger parameter this error is about, when it is about one.
    #[must_use]
    pub fn parameter(&self) -> Option<&str> {
        match self {
            TrustError::InvalidValue { parameter, .. } => Some(parameter),
            TrustError::ReadFile { parameter, .. }
            | TrustError::FileRefused { parameter, .. }
            | TrustError::BadMaterial { parameter, .. } => Some(parameter),
            TrustError::UnsafeSslForbidden { .. } => Some("unsafeSsl"),
            TrustError::Unsupported { setting, .. } => Some(setting),
            _ => None,
        }
    }
}

/// A shorthand for results of the trust layer.
pub type Result<T, E = TrustError> = std::result::Result<T, E>;
