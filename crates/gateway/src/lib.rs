//! tenx-gateway: the public edge. One policy (JWT/API-key offload,
//! cluster-wide rate limits, deadlines, a circuit breaker per upstream)
//! in front of two doors: an HTTP/JSON API and a gRPC endpoint that
//! re-exposes the services' public RPCs.

pub mod app;
pub mod blocked;
pub mod console;
pub mod error;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod json;
pub mod openapi;
pub mod policy;
pub mod ratelimit;
pub mod routes;
pub mod settings;
pub mod state;
pub mod transcode;
pub mod upstream;
pub mod writes;

pub use app::{App, Running};
pub use settings::GatewaySettings;
