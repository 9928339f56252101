//! gRPC plumbing every service shares: the server (health, reflection,
//! the RPC span/metrics layer, graceful shutdown), one error type that
//! maps to `tonic::Status`, and the client channel (timeouts, trace
//! propagation).

mod client;
mod error;
mod rpc_layer;
mod server;

pub use client::{ClientSettings, TraceInterceptor, TracedChannel, connect};
pub use error::ApiError;
pub use rpc_layer::RpcLayer;
pub use server::{GrpcServer, ServerSettings};
