//! The thin operator: internal PKI with rotation and hot reload, the mutual-TLS metrics
//! API, Prometheus metrics, and the polling engine.

pub mod decide;
pub mod engine;
pub mod metrics;
pub mod pki;
pub mod service;
pub mod watch;
