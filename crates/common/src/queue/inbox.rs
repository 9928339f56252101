//! Consumer-side dedupe: record a message id in the same transaction as
//! the message's effect, so a redelivered message takes effect once.

use crate::db::Prepared;

/// Claims `message_id` for `consumer` inside the caller's transaction.
/// `true`: first time, apply the effect in this transaction. `false`:
/// already applied; do nothing and ack. The claim commits or rolls back
/// with the effect, so a crash in between leaves the message unclaimed.
pub async fn claim<C: Prepared>(
    tx: &C,
    consumer: &str,
    message_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = tx
        .execute_cached(
            "INSERT INTO tenx_inbox (consumer, message_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&consumer, &message_id],
        )
        .await?;
    Ok(inserted == 1)
}
