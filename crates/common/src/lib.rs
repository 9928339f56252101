//! Shared infrastructure for every tenx service.
//!
//! The parts, each usable on its own:
//! - [`config`]: typed settings — embedded defaults → optional file →
//!   `TENX_<SERVICE>__…` environment, validated, secrets never printed.
//! - [`metrics`]: one Prometheus registry per process, served over HTTP.
//! - [`shutdown`]: one shutdown signal, passed down explicitly.
//!
//! Each module's doc says why it is shaped the way it is; `docs/ARCHITECTURE.md`
//! shows how they fit together.

pub mod cache;
pub mod config;
pub mod db;
pub mod metrics;
pub mod outbox;
pub mod queue;
pub mod shutdown;
pub mod telemetry;
