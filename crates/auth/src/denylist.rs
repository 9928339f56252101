//! Revoking sessions and API keys for every service at once.
//!
//! A revocation goes into this instance's revocation set at once, then
//! into Redis (sorted set + pub/sub message, see
//! `tenx_common::authn::Revocations`), from which every instance of every
//! service learns it within a second. While Redis is down the write is
//! retried every second; meanwhile the other services, whose feed is down
//! too, ask auth's `CheckRevoked` (the primary), so nothing revoked passes.

use std::time::Duration;

use tenx_common::authn::{Revocations, Revoked, publish_revocation};
use tenx_common::cache::Redis;

/// Longer than an access token lives (15 min by default) and than any
/// cached API-key answer: after that nothing stale can remain.
pub const KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct DenyList {
    redis: Redis,
    revocations: Revocations,
}

impl DenyList {
    pub fn new(redis: Redis, revocations: Revocations) -> Self {
        Self { redis, revocations }
    }

    /// The revocation set this instance checks.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Records a revocation; retried in the background while Redis is down.
    pub async fn deny(&self, kind: Revoked, id: &str) {
        self.revocations.insert_local(kind, id, KEEP);
        if publish_revocation(&self.redis, kind, id, KEEP).await.is_ok() {
            return;
        }
        let (redis, id) = (self.redis.clone(), id.to_owned());
        tokio::spawn(async move {
            // Every second, for as long as the revocation matters.
            for _ in 0..KEEP.as_secs() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if publish_revocation(&redis, kind, &id, KEEP).await.is_ok() {
                    return;
                }
            }
            tracing::error!(?kind, "could not record a revocation in Redis");
        });
    }
}
