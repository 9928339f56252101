//! Shared infrastructure for every tenx service.
//!
//! The parts, each usable on its own:
//! - [`config`]: typed settings — embedded defaults → optional file →
//!   `TENX_<SERVICE>__…` environment, validated, secrets never printed.
//! - [`metrics`]: one Prometheus registry per process, served over HTTP.
//! - [`shutdown`]: one shutdown signal, passed down explicitly.
//! - [`telemetry`]: JSON logs, OTLP traces, W3C context propagation.
//! - [`db`]: primary + replica pools, read-your-writes, migrations.
//! - [`cache`]: L1 (moka) → L2 (Redis) → loader, cross-instance invalidation.
//! - [`queue`]: RabbitMQ topology, confirmed publishing, consumers with
//!   retries, dead letters and an inbox.
//! - [`outbox`]: events written in the business transaction, relayed.
//! - [`authn`]: who is calling, verified on every call of every service
//!   (tokens, API keys, service tokens, revocation, per-RPC access rules).
//! - [`sealed`]: a small secret sealed for one other service (codes).
//! - [`money`]: amounts in minor units formatted with their exponent.
//! - [`idempotency`]: the idempotency key's metadata name and rule.
//! - [`grpc`]: server (health, reflection, tracing, graceful shutdown),
//!   error mapping, client channels; [`admin`]: `/metrics`, `/readyz`.
//! - [`host`]: how every service binary serves (telemetry, signals,
//!   build, run, every cause of a failure reported).
//!
//! Each module's doc says why it is shaped the way it is; `docs/ARCHITECTURE.md`
//! shows how they fit together.

pub mod admin;
pub mod authn;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod grpc;
pub mod host;
pub mod idempotency;
pub mod joined;
pub mod metrics;
pub mod money;
pub mod ops;
pub mod outbox;
pub mod probes;
pub mod queue;
pub mod retention;
pub mod sealed;
pub mod shutdown;
pub mod telemetry;
