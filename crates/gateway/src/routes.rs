//! The public routes: every public RPC, with its HTTP binding and edge
//! policy, as declared in the protos (`tenx_proto::edge::PUBLIC`).

/// A public RPC.
pub type Route = tenx_proto::edge::PublicRpc;
