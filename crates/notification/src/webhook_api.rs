//! The webhook RPCs of NotificationService: endpoints, attempts, dead letters.

use std::time::SystemTime;

use tenx_common::db::{Db, Prepared};
use tenx_common::outbox::{self, NewEvent};
use tenx_proto::notification::v1 as pb;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::egress::{internal_literal, resolves_internal};
use crate::error::NotifyError;
use crate::webhooks::new_secret;

const ENDPOINT_COLUMNS: &str = "id, url, description, event_types, created_at, disabled_at, disabled_reason";

fn endpoint(row: &Row) -> pb::WebhookEndpoint {
    pb::WebhookEndpoint {
        id: row.get::<_, Uuid>("id").to_string(),
        url: row.get("url"),
        description: row.get("description"),
        event_types: row.get("event_types"),
        created_at: Some(row.get::<_, SystemTime>("created_at").into()),
        disabled_at: row.get::<_, Option<SystemTime>>("disabled_at").map(Into::into),
        disabled_reason: row.get::<_, Option<String>>("disabled_reason").unwrap_or_default(),
    }
}

fn id(field: &'static str, raw: &str) -> Result<Uuid, NotifyError> {
    Uuid::parse_str(raw).map_err(|_| NotifyError::invalid(field, "must be a UUID"))
}

fn limit(raw: u32) -> Result<i64, NotifyError> {
    match raw {
        0 => Ok(50),
        1..=100 => Ok(i64::from(raw)),
        _ => Err(NotifyError::invalid("limit", "must be at most 100")),
    }
}

pub async fn create(
    db: &Db,
    request: pb::CreateWebhookEndpointRequest,
    allow_private_networks: bool,
) -> Result<pb::CreateWebhookEndpointResponse, NotifyError> {
    let url = request.url.trim();
    if url.len() > 2000 || url.chars().any(char::is_whitespace) {
        return Err(NotifyError::invalid("url", "must be an http URL of at most 2000 characters"));
    }
    let parsed: http::Uri =
        url.parse().map_err(|_| NotifyError::invalid("url", "must be an http or https URL"))?;
    let (Some("http" | "https"), Some(host)) = (parsed.scheme_str(), parsed.host()) else {
        return Err(NotifyError::invalid("url", "must be an http or https URL"));
    };
    let port = parsed.port_u16().unwrap_or(if parsed.scheme_str() == Some("https") { 443 } else { 80 });
    if !allow_private_networks && (internal_literal(host) || resolves_internal(host, port).await) {
        return Err(NotifyError::invalid(
            "url",
            "must not point at a loopback, private or link-local address",
        ));
    }
    if request.event_types.is_empty() || request.event_types.len() > 100 {
        return Err(NotifyError::invalid("event_types", "1 to 100 event types"));
    }
    let valid = |t: &String| {
        t == "*"
            || (!t.is_empty()
                && t.len() <= 100
                && t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._".contains(&b)))
    };
    if !request.event_types.iter().all(valid) {
        return Err(NotifyError::invalid("event_types", "each is `*` or like `auth.user.signed_up`"));
    }
    let description = request.description.trim();
    if description.chars().count() > 200 || description.chars().any(char::is_control) {
        return Err(NotifyError::invalid("description", "at most 200 printable characters"));
    }
    let secret = new_secret();
    let row = db
        .write()
        .await?
        .query_one_cached(
            &format!(
                "INSERT INTO webhook_endpoints (id, url, description, event_types, secret) VALUES ($1, $2, $3, $4, $5) \
                 RETURNING {ENDPOINT_COLUMNS}"
            ),
            &[&Uuid::now_v7(), &url, &description, &request.event_types, &secret],
        )
        .await?;
    Ok(pb::CreateWebhookEndpointResponse { endpoint: Some(endpoint(&row)), secret })
}

pub async fn list(db: &Db) -> Result<pb::ListWebhookEndpointsResponse, NotifyError> {
    let rows = db
        .write()
        .await?
        .query_cached(
            &format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE deleted_at IS NULL ORDER BY created_at LIMIT 1000"),
            &[],
        )
        .await?;
    Ok(pb::ListWebhookEndpointsResponse { endpoints: rows.iter().map(endpoint).collect() })
}

pub async fn delete(db: &Db, request: pb::DeleteWebhookEndpointRequest) -> Result<(), NotifyError> {
    let endpoint = id("endpoint_id", &request.endpoint_id)?;
    let n = db
        .write()
        .await?
        .execute_cached(
            "UPDATE webhook_endpoints SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL",
            &[&endpoint],
        )
        .await?;
    if n == 0 {
        return Err(NotifyError::NotFound("webhook endpoint".into()));
    }
    Ok(())
}

pub async fn rotate(
    db: &Db,
    request: pb::RotateWebhookSecretRequest,
) -> Result<pb::RotateWebhookSecretResponse, NotifyError> {
    let endpoint = id("endpoint_id", &request.endpoint_id)?;
    let secret = new_secret();
    let n = db
        .write()
        .await?
        .execute_cached(
            "UPDATE webhook_endpoints SET previous_secret = secret, previous_expires_at = now() + interval '24 hours', \
             secret = $2 WHERE id = $1 AND deleted_at IS NULL",
            &[&endpoint, &secret],
        )
        .await?;
    if n == 0 {
        return Err(NotifyError::NotFound("webhook endpoint".into()));
    }
    Ok(pb::RotateWebhookSecretResponse { secret })
}

pub async fn deliveries(
    db: &Db,
    request: pb::ListDeliveriesRequest,
) -> Result<pb::ListDeliveriesResponse, NotifyError> {
    let endpoint = id("endpoint_id", &request.endpoint_id)?;
    let rows = db
        .write()
        .await?
        .query_cached(
            "SELECT a.message_id, m.event_type, a.attempted_at, a.status_code, a.latency_ms, a.succeeded, a.error \
             FROM webhook_attempts a JOIN webhook_messages m ON m.id = a.message_id \
             WHERE a.endpoint_id = $1 ORDER BY a.id DESC LIMIT $2",
            &[&endpoint, &limit(request.limit)?],
        )
        .await?;
    let attempts = rows
        .iter()
        .map(|r| pb::DeliveryAttempt {
            message_id: r.get::<_, Uuid>(0).to_string(),
            event_type: r.get(1),
            attempted_at: Some(r.get::<_, SystemTime>(2).into()),
            status_code: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
            latency_ms: u32::try_from(r.get::<_, i32>(4)).unwrap_or(0),
            succeeded: r.get(5),
            error: r.get(6),
        })
        .collect();
    Ok(pb::ListDeliveriesResponse { attempts })
}

pub async fn dead_letters(
    db: &Db,
    request: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, NotifyError> {
    let endpoint =
        if request.endpoint_id.is_empty() { None } else { Some(id("endpoint_id", &request.endpoint_id)?) };
    let rows = db
        .write()
        .await?
        .query_cached(
            "SELECT id, endpoint_id, event_type, attempts, last_error, created_at FROM webhook_messages \
             WHERE status = 'dead' AND ($1::uuid IS NULL OR endpoint_id = $1) ORDER BY created_at DESC LIMIT $2",
            &[&endpoint, &limit(request.limit)?],
        )
        .await?;
    let dead_letters = rows
        .iter()
        .map(|r| pb::DeadLetter {
            message_id: r.get::<_, Uuid>(0).to_string(),
            endpoint_id: r.get::<_, Uuid>(1).to_string(),
            event_type: r.get(2),
            attempts: u32::try_from(r.get::<_, i32>(3)).unwrap_or(0),
            last_error: r.get::<_, Option<String>>(4).unwrap_or_default(),
            created_at: Some(r.get::<_, SystemTime>(5).into()),
        })
        .collect();
    Ok(pb::ListDeadLettersResponse { dead_letters })
}

pub async fn redrive(db: &Db, request: pb::RedriveDeadLetterRequest) -> Result<(), NotifyError> {
    let message = id("message_id", &request.message_id)?;
    let mut conn = db.write().await?;
    let tx = conn.transaction().await?;
    let row = tx
        .query_opt_cached(
            "UPDATE webhook_messages SET status = 'pending', attempts = 0 WHERE id = $1 AND status = 'dead' \
             RETURNING endpoint_id",
            &[&message],
        )
        .await?
        .ok_or_else(|| NotifyError::NotFound("dead letter".into()))?;
    let endpoint: Uuid = row.get(0);
    tx.execute_cached(
        "UPDATE webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL \
         WHERE id = $1 AND deleted_at IS NULL",
        &[&endpoint],
    )
    .await?;
    let due = pb::WebhookDue { message_id: message.to_string() };
    outbox::enqueue(&tx, &NewEvent::of(&endpoint.to_string(), &due)).await?;
    tx.commit().await?;
    Ok(())
}
