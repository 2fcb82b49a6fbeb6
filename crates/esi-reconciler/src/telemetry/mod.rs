//! Metrics, the health/metrics HTTP server, and log setup.

pub mod logging;
pub mod metrics;
pub mod server;

pub use metrics::Metrics;
