//! The built-in scalers, one folder each, compiled in behind the cargo feature of the
//! same name. Every client they open is built from the process's `TrustFactory`.

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "redis")]
pub mod redis;
