//! Personal organizations: every account is an organization of one, whose
//! id is the account's own (so the customer billing keys by a user's id is
//! that organization's). Made at sign-up; for accounts from before, by
//! [`backfill`] at each instance's start until one has finished it, and
//! for a straggler (signed up by the previous version during a rollout)
//! by [`ensure`] when it lists its organizations or switches to it.

use std::sync::Arc;
use std::time::Duration;

use tenx_common::db::{Db, Prepared};
use tenx_common::shutdown::Shutdown;
use uuid::Uuid;

use crate::error::AuthError;

/// The name a personal organization has until renamed.
const NAME: &str = "Personal";
/// Accounts given theirs per statement by the backfill.
const BATCH: i64 = 1_000;
/// The backfill's row in `backfills` once done.
const BACKFILL: &str = "personal_organizations";

/// Makes `users`' personal organizations (those not made yet), each with
/// its account as owner; how many were made.
async fn create_for(db: &impl Prepared, users: &[Uuid]) -> Result<u64, AuthError> {
    Ok(db
        .execute_cached(
            "WITH made AS (INSERT INTO organizations (id, name, personal, created_by, created_at, updated_at) \
               SELECT u.id, $2, true, u.id, u.created_at, u.created_at FROM users u WHERE u.id = ANY($1) \
               ON CONFLICT (id) DO NOTHING RETURNING id, created_at) \
             INSERT INTO org_members (org_id, user_id, role, joined_at) \
             SELECT id, id, 'owner', created_at FROM made",
            &[&users, &NAME],
        )
        .await?)
}

/// `user`'s personal organization, made now if it is missing (at sign-up,
/// in the account's own transaction).
pub async fn ensure(db: &impl Prepared, user: Uuid) -> Result<(), AuthError> {
    create_for(db, &[user]).await.map(drop)
}

/// Gives every account without one its personal organization, a batch of
/// [`BATCH`] accounts per statement (each its own short transaction),
/// in id order; then records that it is done, so later starts skip it.
/// Several instances running it at once make each organization once.
/// How many it made.
pub async fn backfill(db: &Db) -> Result<u64, AuthError> {
    let conn = db.write().await?;
    if conn.query_opt_cached("SELECT 1 FROM backfills WHERE name = $1", &[&BACKFILL]).await?.is_some() {
        return Ok(0);
    }
    let (mut after, mut made) = (Uuid::nil(), 0);
    loop {
        let users: Vec<Uuid> = conn
            .query_cached("SELECT id FROM users WHERE id > $1 ORDER BY id LIMIT $2", &[&after, &BATCH])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let Some(last) = users.last() else { break };
        after = *last;
        made += create_for(&*conn, &users).await?;
    }
    conn.execute_cached("INSERT INTO backfills (name) VALUES ($1) ON CONFLICT DO NOTHING", &[&BACKFILL])
        .await?;
    Ok(made)
}

/// [`backfill`], retried every minute until it succeeds or `stop`.
pub async fn backfill_until_done(db: Arc<Db>, stop: Shutdown) {
    loop {
        match backfill(&db).await {
            Ok(0) => return,
            Ok(made) => {
                tracing::info!(made, "personal organizations made for accounts from before");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "making personal organizations failed; retrying in a minute")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait() => return,
        }
    }
}
