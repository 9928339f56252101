//! Integration tests of `tenx-common` against the real Postgres (primary
//! and replica), Redis and RabbitMQ that `make deps` starts.

mod cache;
mod config;
mod db;
mod dead_letters;
mod grpc;
mod host;
mod otlp_metrics;
mod outbox;
mod pipelined;
mod probes;
mod queue;
mod retention;
mod revocations;
mod support;
mod telemetry;
