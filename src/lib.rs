//! trustscale: the SDK of a TLS trust layer for event-driven autoscaling.
//!
//! Every client a scaler uses to read an external source is built from one
//! [`trust::TrustFactory`], which merges the system roots with custom CA folders (KEDA's
//! `/custom/ca`), enforces a minimum TLS version, and keeps the deprecated `unsafeSsl`
//! working but visible. [`scaler`] is the framework a scaler is written against: the
//! [`scaler::Scaler`] trait, trigger specs, declared parameters and the registry type.
//!
//! This crate carries no operator and no client library but reqwest (the `http` feature,
//! a shared client pool for HTTP-based scalers): the built-in scalers are crates of their
//! own (`trustscale-redis`, `trustscale-rabbitmq`, `trustscale-metrics-api`,
//! `trustscale-kafka`), and `trustscale-operator` runs them.
#![forbid(unsafe_code)]

pub mod error;
pub mod pool;
pub mod scaler;
pub mod trust;
pub mod watch;
