//! trustscale: a TLS trust layer and scaler SDK for event-driven autoscaling.
//!
//! Every client a scaler uses to read an external source is built from one
//! [`trust::TrustFactory`], which merges the system roots with custom CA folders (KEDA's
//! `/custom/ca`), enforces a minimum TLS version, and keeps the deprecated `unsafeSsl`
//! working but visible.
// No unsafe code, except the one module that must call librdkafka's C API directly
// (scalers/kafka/queue.rs, which says why); without the kafka feature it is
// forbidden outright.
#![cfg_attr(not(feature = "kafka"), forbid(unsafe_code))]
#![cfg_attr(feature = "kafka", deny(unsafe_code))]
#![warn(missing_docs)]

pub mod manifest;
pub mod operator;
pub mod scaler;
#[path = "../scalers/mod.rs"]
pub mod scalers;
pub mod trust;
