//! Revoking sessions and API keys for every service at once.
//!
//! A revocation goes into this instance's revocation set at once, then
//! into Redis (sorted set + pub/sub message, see
//! `tenx_common::authn::Revocations`), from which every instance of every
//! service learns it within a second.
//!
//! That publish comes after the commit, so on its own it could be lost:
//! the instance dies in between, the caller goes away and the request's
//! future is dropped, or Redis is down. So the revoking transaction also
//! leaves a row in `revocation_outbox` (written by triggers on `sessions`
//! and `api_keys`, migration V9), and every auth instance publishes and
//! deletes those rows each second ([`DenyList::publish_pending`]), just
//! before its heartbeat. While
//! Redis is down they wait there, and the other services, whose feed is
//! down too, ask auth's `CheckRevoked` (the primary), so nothing revoked
//! passes.

use std::sync::Arc;
use std::time::Duration;

use tenx_common::authn::{
    HEARTBEAT, Revocations, Revoked, heartbeat, publish_revocation, publish_revoked_members,
};
use tenx_common::cache::Redis;
use tenx_common::db::{Db, Prepared};
use tenx_common::shutdown::Shutdown;

use crate::error::AuthError;

/// Longest the outbox round may hold back a heartbeat.
const PENDING_BUDGET: Duration = Duration::from_millis(500);
/// Longest an outbox round runs (cut off, it is published again later).
const ROUND_LIMIT: Duration = Duration::from_secs(10);
/// At most this many revocations per round (one Redis round trip).
const PENDING_BATCH: i64 = 500;

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

    /// Records a revocation now. If Redis does not take it, the row its
    /// transaction left in `revocation_outbox` is published later.
    pub async fn deny(&self, kind: Revoked, id: &str) {
        self.revocations.insert_local(kind, id, self.keep);
        if let Err(error) = publish_revocation(&self.redis, kind, id, self.keep).await {
            tracing::warn!(?kind, %error, "could not publish a revocation; the outbox sweep will");
        }
    }

    /// Publishes the committed revocations left in `revocation_outbox`
    /// (at most [`PENDING_BATCH`]) and deletes them, in one transaction:
    /// rows that Redis did not take stay for the next round. Several
    /// instances share the rows without waiting on each other.
    pub async fn publish_pending(&self, db: &Db) -> Result<usize, AuthError> {
        let mut conn = db.write().await?;
        let tx = conn.transaction().await?;
        let members: Vec<String> = tx
            .query_cached(
                "DELETE FROM revocation_outbox WHERE id IN \
                   (SELECT id FROM revocation_outbox ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED) \
                 RETURNING member",
                &[&PENDING_BATCH],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        if members.is_empty() {
            return Ok(0);
        }
        publish_revoked_members(&self.redis, &members, self.keep)
            .await
            .map_err(|e| AuthError::Internal(format!("publishing revocations: {e}")))?;
        tx.commit().await?;
        Ok(members.len())
    }

    /// Publishes the outbox until it is empty; whether it is, counting rows
    /// another instance holds (they are not published yet either).
    async fn drain(&self, db: &Db) -> Result<bool, AuthError> {
        while self.publish_pending(db).await? == PENDING_BATCH as usize {}
        let left = db
            .write()
            .await?
            .query_one_cached("SELECT EXISTS (SELECT 1 FROM revocation_outbox)", &[])
            .await?;
        Ok(!left.get::<_, bool>(0))
    }

    /// Every [`HEARTBEAT`] until `stop`: the outbox drained, then auth's
    /// heartbeat on the feed, saying whether the outbox was empty. A
    /// follower that loaded its set (Redis back after an outage) trusts it
    /// only from the first drained heartbeat, so by then what was committed
    /// during the outage is in it. The outbox gets at most
    /// [`PENDING_BUDGET`]: with the primary down the heartbeat still goes
    /// (not drained), and followers that trust their sets keep them.
    pub async fn publish_and_beat_until(self, db: Arc<Db>, stop: Shutdown) {
        // The round runs as a task of its own: one that outlasts the
        // budget is waited for, not cancelled between its publish and its
        // commit (which would publish the same rows again every second).
        let mut round: Option<tokio::task::JoinHandle<Result<bool, AuthError>>> = None;
        loop {
            // Only a round begun now may say drained: one carried over
            // from before the last sleep checked the table a second ago.
            let fresh = round.is_none();
            let running = round.get_or_insert_with(|| {
                let (denied, db) = (self.clone(), db.clone());
                tokio::spawn(async move {
                    // A query on a primary that vanished without a word
                    // waits for TCP keepalive; the round gives up sooner.
                    tokio::time::timeout(ROUND_LIMIT, denied.drain(&db))
                        .await
                        .unwrap_or_else(|_| Err(AuthError::Internal("the round took too long".into())))
                })
            });
            let drained = match tokio::time::timeout(PENDING_BUDGET, running).await {
                Ok(finished) => {
                    round = None;
                    match finished {
                        Ok(Ok(drained)) => drained && fresh,
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "publishing pending revocations failed; retrying");
                            false
                        }
                        Err(error) => {
                            tracing::warn!(%error, "the revocation outbox round ended abnormally");
                            false
                        }
                    }
                }
                Err(_) => {
                    tracing::warn!("publishing pending revocations is slow; heartbeat sent as not drained");
                    false
                }
            };
            if let Err(error) = heartbeat(&self.redis, drained).await {
                tracing::debug!(%error, "revocation heartbeat not sent");
            }
            tokio::select! {
                () = tokio::time::sleep(HEARTBEAT) => {}
                () = stop.wait() => {
                    if let Some(round) = round {
                        round.abort();
                    }
                    return;
                }
            }
        }
    }
}
