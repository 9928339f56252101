//! The email delivery log (`ListEmailDeliveries`) and the redrive of an
//! email that failed every attempt (`RedriveEmail`).
//!
//! A delivery row is keyed by `<message id>:email`; a failed one's event
//! waits in the notification queue's dead-letter queue, and a redrive is
//! that dead letter sent back by its message id: the worker then finds
//! the row `failed`, sends, and records the outcome on the same row.

use std::collections::HashSet;
use std::time::SystemTime;

use tenx_common::db::{Db, Prepared};
use tenx_common::queue::Topology;
use tenx_common::queue::dead_letters::{DeadLetters, Selection};
use tenx_proto::notification::v1 as pb;
use tenx_proto::notification::v1::email_delivery::Status;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::NotifyError;

/// What ties a delivery row to its job: `<message id>:email`.
const EMAIL_SUFFIX: &str = ":email";

fn status_text(status: Status) -> Option<&'static str> {
    match status {
        Status::Pending => Some("pending"),
        Status::Sent => Some("sent"),
        Status::Failed => Some("failed"),
        Status::Unspecified => None,
    }
}

fn delivery(row: &Row) -> pb::EmailDelivery {
    let status = match row.get::<_, &str>("status") {
        "pending" => Status::Pending,
        "sent" => Status::Sent,
        "failed" => Status::Failed,
        _ => Status::Unspecified,
    };
    let key: String = row.get("dedupe_key");
    pb::EmailDelivery {
        id: row.get::<_, Uuid>("id").to_string(),
        user_id: row.get::<_, Uuid>("user_id").to_string(),
        to_address: row.get("to_address"),
        template: row.get("template"),
        status: status as i32,
        attempts: u32::try_from(row.get::<_, i32>("attempts")).unwrap_or(0),
        relay: row.get::<_, Option<String>>("relay").unwrap_or_default(),
        last_error: row.get::<_, Option<String>>("last_error").unwrap_or_default(),
        created_at: Some(row.get::<_, SystemTime>("created_at").into()),
        sent_at: row.get::<_, Option<SystemTime>>("sent_at").map(Into::into),
        message_id: key.strip_suffix(EMAIL_SUFFIX).unwrap_or(&key).to_owned(),
    }
}

fn uuid(field: &'static str, raw: &str) -> Result<Uuid, NotifyError> {
    Uuid::parse_str(raw).map_err(|_| NotifyError::invalid(field, "must be a UUID"))
}

/// Newest first, keyset-paged on the (time-ordered) id.
pub async fn list(
    db: &Db,
    request: pb::ListEmailDeliveriesRequest,
) -> Result<pb::ListEmailDeliveriesResponse, NotifyError> {
    let status = Status::try_from(request.status)
        .map_err(|_| NotifyError::invalid("status", "not an EmailDelivery.Status"))
        .map(status_text)?;
    let user = match request.user_id.as_str() {
        "" => None,
        raw => Some(uuid("user_id", raw)?),
    };
    let limit = match request.limit {
        0 => 50,
        n @ 1..=100 => i64::from(n),
        _ => return Err(NotifyError::invalid("limit", "must be at most 100")),
    };
    let after = match request.page_token.as_str() {
        "" => None,
        raw => Some(uuid("page_token", raw)?),
    };
    // The primary: an operator looking for a failure wants the latest.
    let rows = db
        .write()
        .await?
        .query_cached(
            "SELECT id, dedupe_key, user_id, to_address, template, status, attempts, relay, last_error, \
                    created_at, sent_at \
             FROM email_deliveries \
             WHERE ($1::text IS NULL OR status = $1) AND ($2::uuid IS NULL OR user_id = $2) \
               AND ($3::uuid IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
            &[&status, &user, &after, &(limit + 1)],
        )
        .await?;
    let more = rows.len() as i64 > limit;
    let deliveries: Vec<pb::EmailDelivery> = rows.iter().take(limit as usize).map(delivery).collect();
    let next_page_token =
        if more { deliveries.last().map(|d| d.id.clone()).unwrap_or_default() } else { String::new() };
    Ok(pb::ListEmailDeliveriesResponse { deliveries, next_page_token })
}

/// Sends a failed email's event back from the dead-letter queue.
pub async fn redrive(
    db: &Db,
    letters: &DeadLetters,
    work: &Topology,
    request: pb::RedriveEmailRequest,
) -> Result<(), NotifyError> {
    let id = uuid("id", &request.id)?;
    let row = db
        .write()
        .await?
        .query_opt_cached("SELECT dedupe_key, status FROM email_deliveries WHERE id = $1", &[&id])
        .await?
        .ok_or_else(|| NotifyError::NotFound(format!("email delivery {id}")))?;
    let (key, status): (String, String) = (row.get(0), row.get(1));
    if status != "failed" {
        return Err(NotifyError::Precondition(format!("the email is {status}, not failed")));
    }
    let message_id = key.strip_suffix(EMAIL_SUFFIX).unwrap_or(&key).to_owned();
    let dead_letters = letters
        .find(&work.dead_letter)
        .ok_or_else(|| NotifyError::Internal(format!("{} is not served", work.dead_letter)))?;
    let moved = letters
        .redrive(dead_letters, &Selection::Ids(HashSet::from([message_id.clone()])))
        .await
        .map_err(|e| NotifyError::Internal(format!("redriving {message_id}: {e}")))?;
    if moved.taken == 0 {
        return Err(NotifyError::Precondition(format!(
            "its event {message_id} is no longer in {} (purged, or already redriven)",
            work.dead_letter
        )));
    }
    tracing::info!(delivery = %id, message_id, "failed email redriven");
    Ok(())
}
