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

/// At least this long, and always longer than an access token lives (and
/// than any cached API-key answer): after that nothing stale can remain.
const MIN_KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct DenyList {
    redis: Redis,
    revocations: Revocations,
    /// How long a revocation is kept in the set.
    keep: Duration,
}

impl DenyList {
    pub fn new(redis: Redis, revocations: Revocations, tokens: &crate::settings::TokenSettings) -> Self {
        // The longest token lifetime, plus verification leeway and margin.
        let longest = Duration::from_secs(tokens.access_ttl_seconds + 600);
        Self { redis, revocations, keep: longest.max(MIN_KEEP) }
    }

    /// The revocation set this instance checks.
    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    /// Records a revocation; retried in the background while Redis is down.
    pub async fn deny(&self, kind: Revoked, id: &str) {
        let keep = self.keep;
        self.revocations.insert_local(kind, id, keep);
        if publish_revocation(&self.redis, kind, id, keep).await.is_ok() {
            return;
        }
        let (redis, id) = (self.redis.clone(), id.to_owned());
        tokio::spawn(async move {
            // Every second, for as long as the revocation matters.
            for _ in 0..keep.as_secs() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if publish_revocation(&redis, kind, &id, keep).await.is_ok() {
                    return;
                }
            }
            tracing::error!(?kind, "could not record a revocation in Redis");
        });
    }
}
