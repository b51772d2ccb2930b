//! The trustscale operator: runs KEDA's resources with trustscale's scalers.
//!
//! - [`manifest`]: KEDA's resources and their loading (files now), auth resolved from an
//!   [`manifest::Env`] passed in;
//! - [`engine`] and [`decide`]: one task per ScaledObject, polling, KEDA's decisions;
//! - [`pki`] and [`certs`]: internal certificates, generated and rotated or brought,
//!   hot-reloaded;
//! - [`service`]: the mutual-TLS external metrics API and Prometheus;
//! - [`builtins`]: the registry of the scalers compiled into this build;
//! - [`runner`]: the whole operator for a program with its own [`trustscale::scaler::Registry`].
#![forbid(unsafe_code)]

pub mod authn;
pub mod builtins;
pub mod certs;
pub mod cluster;
pub mod controller;
pub mod decide;
pub mod engine;
pub mod forward;
pub mod leader;
pub mod manifest;
pub mod metrics;
pub mod pki;
pub mod runner;
pub mod secretstore;
pub mod service;
pub mod webhook;

pub use runner::{Operator, OperatorConfig, OperatorError};
