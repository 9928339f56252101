//! Revoked sessions and API keys, in Redis, checked on every request.
//!
//! The session-status and API-key caches alone are not enough: a load that
//! read a lagging replica just before a revocation can put the stale
//! "active" back into L1/L2 after the invalidation. A deny-list entry
//! outlives every such cache entry (and every access token), so a revoked
//! credential is refused whatever the caches say. Redis unreachable → the
//! caller asks the primary instead.

use std::time::Duration;

use tenx_common::cache::Redis;

/// Longer than an access token lives (15 min by default) and than any L2
/// entry (5 min): after that nothing stale can remain.
const KEEP: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct DenyList {
    redis: Redis,
}

impl DenyList {
    pub fn new(redis: Redis) -> Self {
        Self { redis }
    }

    fn key(&self, kind: &str, id: &str) -> String {
        self.redis.key(&format!("auth:deny:{kind}:{id}"))
    }

    /// Records a revocation; retried in the background while Redis is down.
    pub async fn deny(&self, kind: &'static str, id: &str) {
        let key = self.key(kind, id);
        if self.set(&key).await.is_ok() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(200);
            for _ in 0..30 {
                tokio::time::sleep(delay).await;
                if this.set(&key).await.is_ok() {
                    return;
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            tracing::error!(%key, "could not record a revocation in Redis");
        });
    }

    /// `Ok(true)` if revoked; `Err` when Redis cannot tell.
    pub async fn is_denied(&self, kind: &'static str, id: &str) -> Result<bool, ()> {
        let mut conn = self.redis.connection();
        let mut cmd = redis::cmd("EXISTS");
        cmd.arg(self.key(kind, id));
        self.redis.bounded(cmd.query_async::<bool>(&mut conn)).await.map_err(|_| ())
    }

    async fn set(&self, key: &str) -> redis::RedisResult<()> {
        let mut conn = self.redis.connection();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(1).arg("EX").arg(KEEP.as_secs());
        self.redis.bounded(cmd.query_async::<()>(&mut conn)).await
    }
}
