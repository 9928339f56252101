//! What every request reads, shared by both front doors and the console:
//! settings, the authenticator, the rate limiter, the upstreams and the
//! read-your-writes positions. Built by `app`, read by the handlers; it
//! imports none of them, so the layers stay layers.

use std::sync::Arc;

use tenx_common::authn::Authenticator;
use tenx_common::metrics::Metrics;
use tokio::sync::Semaphore;

use crate::blocked::BlockedClients;
use crate::ratelimit::RateLimiter;
use crate::settings::GatewaySettings;
use crate::upstream::Upstream;
use crate::writes::Writes;

/// Everything a request needs.
pub struct Gateway {
    pub settings: GatewaySettings,
    pub metrics: Metrics,
    pub authn: Arc<Authenticator>,
    pub limiter: RateLimiter,
    pub auth: Upstream,
    pub notification: Upstream,
    pub billing: Upstream,
    /// Clients over their failed-authentication budget, until when.
    pub auth_blocked: BlockedClients,
    /// Requests in progress; when none is free, new ones are shed.
    pub in_flight: Arc<Semaphore>,
    /// Each user's last write position per service through this instance.
    pub writes: Writes,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// The upstream named by a public RPC (`tenx_proto::edge::PublicRpc::service`).
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        match name {
            "auth" => Some(&self.auth),
            "notification" => Some(&self.notification),
            "billing" => Some(&self.billing),
            _ => None,
        }
    }
}
