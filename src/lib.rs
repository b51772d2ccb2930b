//! trustscale: a TLS trust layer and scaler SDK for event-driven autoscaling.
//!
//! Every client a scaler uses to read an external source is built from one
//! [`trust::TrustFactory`], which merges the system roots with custom CA folders (KEDA's
//! `/custom/ca`), enforces a minimum TLS version, and keeps the deprecated `unsafeSsl`
//! working but visible.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod manifest;
pub mod operator;
pub mod scaler;
#[path = "../scalers/mod.rs"]
pub mod scalers;
pub mod trust;
