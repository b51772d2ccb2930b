//! The trust layer: one TLS context factory for every client.
//!
//! [`TrustFactory`] owns the trust anchors (system roots merged with the custom CA
//! folders, watched and reloaded), and turns a trigger's [`TlsSettings`] into a
//! [`TlsContext`]: a rustls client configuration, and the same trust as PEM for clients
//! built on another TLS stack. It also builds the internal service's mutual-TLS
//! [`ServerTls`]. It knows nothing about scalers.

mod anchors;
mod ciphers;
mod classify;
mod context;
mod danger;
mod error;
mod factory;
pub mod inspect;
pub mod material;
mod server;
mod settings;
mod verify;
mod version;

pub use anchors::{Anchors, DEFAULT_CA_DIR, FileReport, FileStatus, FolderReport};
pub use ciphers::{
    CLIENT_CIPHERS_ENV, SERVICE_CIPHERS_ENV, cipher_list_from_env, parse_cipher_list,
};
pub use classify::{FailureKind, HandshakeFailure, classify, classify_rustls, find_rustls_error};
pub(crate) use context::ContextInner;
pub use context::{Fingerprint, IdentityPem, TlsContext};
pub use error::{Result, TrustError};
pub use factory::{
    CA_FILES_LOG_TARGET, FileStamp, TrustFactory, TrustOptions, TrustStats, file_stamps,
};
pub use server::{ServerIdentity, ServerTls};
pub use settings::{Secret, TlsMode, TlsSettings, UnsafeSslPolicy, parse_go_bool};
pub use version::{CLIENT_MIN_TLS_ENV, SERVICE_MIN_TLS_ENV, TlsVersion};
