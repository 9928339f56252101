//! gRPC plumbing every service shares: the server (health, reflection,
//! the RPC span/metrics layer, graceful shutdown), one error type that
//! maps to `tonic::Status`, and the client channel (balanced over an
//! upstream's instances, timeouts, trace propagation).

mod balance;
mod client;
mod error;
mod link;
mod rpc_layer;
mod server;
pub mod timeout;

pub use balance::{Balanced, Resolve, system_resolver};
pub use client::{ClientSettings, TraceInterceptor, TracedChannel, connect, connect_with};
pub use error::ApiError;
pub use link::{BadUrl, LinkError, LinkSettings, MAX_REQUEST};
pub use rpc_layer::{RECENT_SLOW_REQUESTS, RpcLayer, SlowRequest, recent_slow_requests};
pub use server::{GrpcServer, ServerSettings, ServiceRouter};
