//! Signed webhooks (Standard Webhooks): fan-out of events to subscribed
//! endpoints, delivery with retries through the queue's tiers, a
//! per-attempt log, dead letters and redrive, and disabling endpoints
//! that keep failing.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use prost::Message as _;
use serde_json::{Value, json};
use sha2::Sha256;
use tenx_common::db::{Db, Prepared};
use tenx_common::outbox::{self, NewEvent};
use tenx_common::queue::{Handler, HandlerError, Message};
use tenx_proto::auth::v1 as auth;
use tenx_proto::billing::v1 as billing;
use tenx_proto::notification::v1::WebhookDue;
use uuid::Uuid;

use crate::settings::WebhookSettings;

/// Consumer group of webhook deliveries.
pub const GROUP: &str = "notification.webhooks";
pub const DUE: &str = WebhookDue::EVENT_TYPE;

/// `whsec_` + base64 of 24 random bytes.
pub fn new_secret() -> String {
    use rand::RngCore;
    let mut key = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("whsec_{}", STANDARD.encode(key))
}

/// The `webhook-signature` value for one secret: `v1,<base64 HMAC-SHA256>`
/// of `<id>.<timestamp>.<body>`.
pub fn sign(secret: &str, id: &str, timestamp: u64, body: &str) -> Option<String> {
    let key = STANDARD.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    Some(format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes())))
}

/// The JSON body an endpoint receives for an event. Codes and other
/// secrets in events are never forwarded to third parties.
pub fn body_for(message: &Message) -> String {
    let payload = message.envelope.payload.as_slice();
    let data = match message.event_type() {
        auth::UserSignedUp::EVENT_TYPE => auth::UserSignedUp::decode(payload)
            .map(|e| json!({ "user_id": e.user_id, "email": e.email, "display_name": e.display_name })),
        auth::UserUpdated::EVENT_TYPE => auth::UserUpdated::decode(payload)
            .map(|e| json!({ "user_id": e.user_id, "email": e.email, "display_name": e.display_name })),
        auth::EmailVerificationRequested::EVENT_TYPE => auth::EmailVerificationRequested::decode(payload)
            .map(|e| json!({ "user_id": e.user_id, "email": e.email })),
        auth::PasswordResetRequested::EVENT_TYPE => auth::PasswordResetRequested::decode(payload)
            .map(|e| json!({ "user_id": e.user_id, "email": e.email })),
        auth::PasswordChanged::EVENT_TYPE => {
            auth::PasswordChanged::decode(payload).map(|e| json!({ "user_id": e.user_id, "email": e.email }))
        }
        auth::MfaEnabled::EVENT_TYPE => {
            auth::MfaEnabled::decode(payload).map(|e| json!({ "user_id": e.user_id, "email": e.email }))
        }
        auth::MfaCodesLocked::EVENT_TYPE => {
            auth::MfaCodesLocked::decode(payload).map(|e| json!({ "user_id": e.user_id, "email": e.email }))
        }
        auth::MfaDisabled::EVENT_TYPE => {
            auth::MfaDisabled::decode(payload).map(|e| json!({ "user_id": e.user_id, "email": e.email }))
        }
        auth::MfaRecoveryCodeUsed::EVENT_TYPE => auth::MfaRecoveryCodeUsed::decode(payload).map(|e| {
            json!({ "user_id": e.user_id, "email": e.email, "recovery_codes_remaining": e.recovery_codes_remaining })
        }),
        auth::OrgCreated::EVENT_TYPE => auth::OrgCreated::decode(payload).map(|e| {
            json!({ "organization_id": e.organization_id, "name": e.name, "owner_user_id": e.owner_user_id })
        }),
        auth::OrgMemberJoined::EVENT_TYPE => auth::OrgMemberJoined::decode(payload)
            .map(|e| json!({ "organization_id": e.organization_id, "user_id": e.user_id, "role": e.role })),
        auth::OrgMemberRoleChanged::EVENT_TYPE => auth::OrgMemberRoleChanged::decode(payload).map(|e| {
            json!({ "organization_id": e.organization_id, "user_id": e.user_id, "previous_role": e.previous_role, "role": e.role })
        }),
        auth::OrgMemberRemoved::EVENT_TYPE => auth::OrgMemberRemoved::decode(payload)
            .map(|e| json!({ "organization_id": e.organization_id, "user_id": e.user_id })),
        auth::OrgApiKeyCreated::EVENT_TYPE => auth::OrgApiKeyCreated::decode(payload).map(|e| {
            json!({ "organization_id": e.organization_id, "api_key_id": e.api_key_id, "name": e.name, "scopes": e.scopes, "user_id": e.user_id })
        }),
        auth::OrgApiKeyRevoked::EVENT_TYPE => auth::OrgApiKeyRevoked::decode(payload).map(|e| {
            json!({ "organization_id": e.organization_id, "api_key_id": e.api_key_id, "user_id": e.user_id, "actor_user_id": e.actor_user_id, "reason": e.reason })
        }),
        billing::CustomerCreated::EVENT_TYPE => billing::CustomerCreated::decode(payload).map(|e| {
            json!({ "customer_id": e.customer_id, "user_id": e.user_id, "email": e.email, "created_at": seconds(e.created_at.as_ref()) })
        }),
        billing::SubscriptionCreated::EVENT_TYPE => billing::SubscriptionCreated::decode(payload).map(|e| {
            json!({ "subscription": subscription(e.subscription.as_ref()), "user_id": e.user_id, "email": e.email, "plan_name": e.plan_name })
        }),
        billing::SubscriptionUpdated::EVENT_TYPE => billing::SubscriptionUpdated::decode(payload).map(|e| {
            json!({
                "subscription": subscription(e.subscription.as_ref()),
                "previous_status": status(e.previous_status),
                "previous_price_id": e.previous_price_id,
                "user_id": e.user_id, "email": e.email, "plan_name": e.plan_name,
            })
        }),
        billing::SubscriptionCanceled::EVENT_TYPE => billing::SubscriptionCanceled::decode(payload).map(|e| {
            json!({
                "subscription": subscription(e.subscription.as_ref()),
                "previous_status": status(e.previous_status),
                "user_id": e.user_id, "email": e.email, "plan_name": e.plan_name,
            })
        }),
        billing::InvoiceFinalized::EVENT_TYPE => billing::InvoiceFinalized::decode(payload).map(|e| {
            json!({ "invoice": invoice(e.invoice.as_ref()), "user_id": e.user_id, "email": e.email, "amount_due_display": e.amount_due_display })
        }),
        billing::InvoicePaid::EVENT_TYPE => billing::InvoicePaid::decode(payload).map(|e| {
            json!({
                "invoice": invoice(e.invoice.as_ref()),
                "user_id": e.user_id, "email": e.email,
                "amount_paid_display": e.amount_paid_display,
                "payment_attempt_id": e.payment_attempt_id,
                "card_brand": name(billing::CardBrand::try_from(e.card_brand).map(|b| b.as_str_name()), "CARD_BRAND_"),
                "card_last4": e.card_last4,
                "plan_name": e.plan_name,
            })
        }),
        // The provider's own failure message is left out: the code says
        // why, and the provider's wording is not ours to forward.
        billing::PaymentFailed::EVENT_TYPE => billing::PaymentFailed::decode(payload).map(|e| {
            json!({
                "invoice_id": e.invoice_id, "invoice_number": e.invoice_number,
                "subscription_id": e.subscription_id, "customer_id": e.customer_id,
                "user_id": e.user_id, "email": e.email,
                "payment_attempt_id": e.payment_attempt_id,
                "amount_due_minor": e.amount_due_minor, "currency": e.currency,
                "amount_due_display": e.amount_due_display,
                "failure_code": name(billing::PaymentFailureCode::try_from(e.failure_code).map(|c| c.as_str_name()), "PAYMENT_FAILURE_CODE_"),
                "initiated_by": name(billing::PaymentTrigger::try_from(e.initiated_by).map(|t| t.as_str_name()), "PAYMENT_TRIGGER_"),
                "attempt_count": e.attempt_count,
                "next_retry_at": seconds(e.next_retry_at.as_ref()),
                "final": e.r#final,
                "plan_name": e.plan_name,
                "card_last4": e.card_last4,
            })
        }),
        // Only fields known to be safe to share leave the platform: an
        // event without a mapping here is announced by type and id alone.
        _ => Ok(Value::Null),
    }
    .unwrap_or(Value::Null);
    let timestamp = message.envelope.occurred_at.as_ref().map_or(0, |t| t.seconds);
    json!({ "type": message.event_type(), "id": message.id(), "timestamp": timestamp, "data": data })
        .to_string()
}

/// Unix seconds of a timestamp; null when unset.
fn seconds(t: Option<&prost_types::Timestamp>) -> Value {
    t.map_or(Value::Null, |t| t.seconds.into())
}

/// A proto enum value as its lower-case name without the enum's prefix
/// (`SUBSCRIPTION_STATUS_PAST_DUE` → `past_due`); null when unknown or
/// unspecified.
fn name<E>(value: Result<&str, E>, prefix: &str) -> Value {
    match value.ok().and_then(|n| n.strip_prefix(prefix)) {
        Some("UNSPECIFIED") | None => Value::Null,
        Some(n) => n.to_ascii_lowercase().into(),
    }
}

fn status(value: i32) -> Value {
    name(billing::SubscriptionStatus::try_from(value).map(|s| s.as_str_name()), "SUBSCRIPTION_STATUS_")
}

fn subscription(s: Option<&billing::Subscription>) -> Value {
    let Some(s) = s else { return Value::Null };
    json!({
        "id": s.id, "customer_id": s.customer_id, "price_id": s.price_id, "plan_id": s.plan_id,
        "status": status(s.status), "currency": s.currency,
        "current_period_start": seconds(s.current_period_start.as_ref()),
        "current_period_end": seconds(s.current_period_end.as_ref()),
        "trial_end": seconds(s.trial_end.as_ref()),
        "cancel_at_period_end": s.cancel_at_period_end,
        "canceled_at": seconds(s.canceled_at.as_ref()),
        "ended_at": seconds(s.ended_at.as_ref()),
        "cancellation_reason": name(
            billing::CancellationReason::try_from(s.cancellation_reason).map(|r| r.as_str_name()),
            "CANCELLATION_REASON_",
        ),
        "version": s.version,
    })
}

fn invoice(i: Option<&billing::Invoice>) -> Value {
    let Some(i) = i else { return Value::Null };
    let lines: Vec<Value> = i
        .lines
        .iter()
        .map(|l| json!({ "description": l.description, "quantity": l.quantity, "amount_minor": l.amount_minor }))
        .collect();
    json!({
        "id": i.id, "customer_id": i.customer_id, "subscription_id": i.subscription_id, "number": i.number,
        "status": name(billing::InvoiceStatus::try_from(i.status).map(|s| s.as_str_name()), "INVOICE_STATUS_"),
        "currency": i.currency, "total_minor": i.total_minor, "amount_due_minor": i.amount_due_minor,
        "amount_paid_minor": i.amount_paid_minor, "amount_remaining_minor": i.amount_remaining_minor,
        "period_start": seconds(i.period_start.as_ref()), "period_end": seconds(i.period_end.as_ref()),
        "paid_at": seconds(i.paid_at.as_ref()),
        "lines": lines,
    })
}

pub struct Webhooks {
    pub db: Arc<Db>,
    client: crate::egress::HttpClient,
    settings: WebhookSettings,
    max_attempts: u32,
    metrics: crate::deliver::DeliveryMetrics,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").finish_non_exhaustive()
    }
}

fn retry(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Retry(e.to_string())
}

impl Webhooks {
    pub fn new(
        db: Arc<Db>,
        settings: WebhookSettings,
        max_attempts: u32,
        metrics: &tenx_common::metrics::Metrics,
    ) -> Result<Self, String> {
        let client = crate::egress::http_client(
            Duration::from_millis(settings.timeout_ms),
            settings.allow_private_networks,
            settings.ca_file.as_deref(),
        )?;
        Ok(Self { db, client, settings, max_attempts, metrics: metrics.set() })
    }

    pub fn allow_private_networks(&self) -> bool {
        self.settings.allow_private_networks
    }

    /// One webhook message per subscribed endpoint, written with its
    /// outbox event in one transaction; a redelivered event adds nothing.
    pub async fn fan_out(&self, message: &Message) -> Result<(), HandlerError> {
        let mut conn = self.db.write().await.map_err(retry)?;
        let tx = conn.transaction().await.map_err(retry)?;
        let endpoints = tx
            .query_cached(
                "SELECT id FROM webhook_endpoints WHERE deleted_at IS NULL AND disabled_at IS NULL \
                 AND ($1 = ANY(event_types) OR '*' = ANY(event_types))",
                &[&message.event_type()],
            )
            .await
            .map_err(retry)?;
        if endpoints.is_empty() {
            return Ok(());
        }
        let body = body_for(message);
        for row in endpoints {
            let endpoint: Uuid = row.get(0);
            let inserted = tx
                .query_opt_cached(
                    "INSERT INTO webhook_messages (id, endpoint_id, event_id, event_type, body) VALUES ($1, $2, $3, $4, $5) \
                     ON CONFLICT (endpoint_id, event_id) DO NOTHING RETURNING id",
                    &[&Uuid::now_v7(), &endpoint, &message.id(), &message.event_type(), &body],
                )
                .await
                .map_err(retry)?;
            if let Some(row) = inserted {
                let due = WebhookDue { message_id: row.get::<_, Uuid>(0).to_string() };
                outbox::enqueue(&tx, &NewEvent::of(&endpoint.to_string(), &due)).await.map_err(retry)?;
            }
        }
        tx.commit().await.map_err(retry)?;
        Ok(())
    }

    /// POSTs one message; records the attempt.
    async fn deliver(&self, message_id: Uuid, attempt: u32) -> Result<(), HandlerError> {
        let mut conn = self.db.write().await.map_err(retry)?;
        let row = conn
            .query_opt_cached(
                "SELECT m.status, m.body, m.endpoint_id, e.url, e.secret, \
                        CASE WHEN e.previous_expires_at > now() THEN e.previous_secret END AS previous, \
                        e.deleted_at IS NOT NULL OR e.disabled_at IS NOT NULL AS stopped \
                 FROM webhook_messages m JOIN webhook_endpoints e ON e.id = m.endpoint_id WHERE m.id = $1",
                &[&message_id],
            )
            .await
            .map_err(retry)?;
        let Some(row) = row else { return Ok(()) };
        if row.get::<_, String>("status") != "pending" {
            return Ok(());
        }
        let endpoint: Uuid = row.get("endpoint_id");
        if row.get::<_, bool>("stopped") {
            conn.execute_cached(
                "UPDATE webhook_messages SET status = 'dead', last_error = 'endpoint disabled or deleted' WHERE id = $1",
                &[&message_id],
            )
            .await
            .map_err(retry)?;
            return Ok(());
        }
        let body: String = row.get("body");
        let timestamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let id = message_id.to_string();
        let signatures: Vec<String> =
            [Some(row.get::<_, String>("secret")), row.get::<_, Option<String>>("previous")]
                .into_iter()
                .flatten()
                .filter_map(|secret| sign(&secret, &id, timestamp, &body))
                .collect();
        let url: String = row.get("url");
        let started = Instant::now();
        let outcome = self.post(&url, &id, timestamp, &signatures.join(" "), body).await;
        let latency = i32::try_from(started.elapsed().as_millis()).unwrap_or(i32::MAX);
        let (code, error) = match &outcome {
            Ok(code) if (200..300).contains(code) => (*code, String::new()),
            Ok(code) => (*code, format!("HTTP {code}")),
            Err(e) => (0, e.clone()),
        };
        let succeeded = error.is_empty();
        conn.execute_cached(
            "INSERT INTO webhook_attempts (message_id, endpoint_id, status_code, latency_ms, succeeded, error) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&message_id, &endpoint, &i32::from(code), &latency, &succeeded, &error],
        )
        .await
        .map_err(retry)?;
        if succeeded {
            // A real transaction: it rolls back if dropped half-way, so the
            // pooled connection never goes back mid-transaction.
            let tx = conn.transaction().await.map_err(retry)?;
            tx.execute_cached(
                "UPDATE webhook_messages SET status = 'delivered', delivered_at = now(), attempts = attempts + 1 WHERE id = $1",
                &[&message_id],
            )
            .await
            .map_err(retry)?;
            tx.execute_cached(
                "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = $1",
                &[&endpoint],
            )
            .await
            .map_err(retry)?;
            tx.commit().await.map_err(retry)?;
            self.metrics.sent("webhook");
            return Ok(());
        }
        let last = attempt >= self.max_attempts;
        self.metrics.failed("webhook", last);
        conn.execute_cached(
            "UPDATE webhook_messages SET attempts = attempts + 1, last_error = $2, \
             status = CASE WHEN $3 THEN 'dead' ELSE status END WHERE id = $1",
            &[&message_id, &error, &last],
        )
        .await
        .map_err(retry)?;
        let disable_after = self.settings.disable_after_seconds as f64;
        let disabled = conn
            .execute_cached(
                "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, now()), \
                   disabled_at = CASE WHEN COALESCE(failing_since, now()) < now() - make_interval(secs => $2) THEN now() END, \
                   disabled_reason = CASE WHEN COALESCE(failing_since, now()) < now() - make_interval(secs => $2) \
                     THEN 'failing for longer than ' || $2::bigint || ' s; last error: ' || $3 END \
                 WHERE id = $1 AND disabled_at IS NULL",
                &[&endpoint, &disable_after, &error],
            )
            .await
            .map_err(retry)?;
        let _ = disabled;
        if last {
            Err(HandlerError::Reject(format!("webhook {id}: {error}")))
        } else {
            Err(HandlerError::Retry(error))
        }
    }

    /// The HTTP status, or why there was none.
    async fn post(
        &self,
        url: &str,
        id: &str,
        timestamp: u64,
        signature: &str,
        body: String,
    ) -> Result<u16, String> {
        let request = http::Request::post(url)
            .header("content-type", "application/json")
            .header("user-agent", "tenx-webhooks/1")
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("bad request: {e}"))?;
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(Err(e)) => Err(format!("connection failed: {}", error_chain(&e))),
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                // Drain (bounded in time and size) so the connection can be reused.
                let body = http_body_util::Limited::new(response.into_body(), 64 * 1024);
                let _ = tokio::time::timeout(Duration::from_secs(1), body.collect()).await;
                Ok(status)
            }
        }
    }
}

/// An error with its causes ("client error (Connect): invalid peer
/// certificate: UnknownIssuer"), for the attempt log.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Consumes `notification.webhook_due`.
#[derive(Debug)]
pub struct WebhookWorker {
    pub hooks: Arc<Webhooks>,
}

impl Handler for WebhookWorker {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        let due = WebhookDue::decode(message.envelope.payload.as_slice())
            .map_err(|e| HandlerError::Reject(e.to_string()))?;
        let id =
            Uuid::parse_str(&due.message_id).map_err(|_| HandlerError::Reject("bad message id".into()))?;
        self.hooks.deliver(id, message.attempt).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tenx_proto::events::v1::Envelope;

    fn message<M: prost::Message>(event_type: &str, payload: &M) -> Message {
        Message {
            envelope: Envelope {
                id: "evt-1".into(),
                r#type: event_type.into(),
                payload: payload.encode_to_vec(),
                ..Default::default()
            },
            attempt: 1,
            redelivered: false,
            trace: Default::default(),
        }
    }

    #[test]
    fn billing_events_share_amounts_and_card_last4_but_not_the_providers_message() {
        let paid = billing::InvoicePaid {
            invoice: Some(billing::Invoice {
                number: "7QX2KM4B-0001".into(),
                status: billing::InvoiceStatus::Paid as i32,
                currency: "USD".into(),
                amount_paid_minor: 1983,
                ..Default::default()
            }),
            user_id: "u".into(),
            amount_paid_display: "USD 19.83".into(),
            card_brand: billing::CardBrand::Visa as i32,
            card_last4: "4242".into(),
            ..Default::default()
        };
        let body: Value =
            serde_json::from_str(&body_for(&message("billing.invoice.paid", &paid))).expect("json");
        assert_eq!(body["data"]["invoice"]["number"], "7QX2KM4B-0001");
        assert_eq!(body["data"]["invoice"]["status"], "paid");
        assert_eq!(body["data"]["invoice"]["amount_paid_minor"], 1983);
        assert_eq!(body["data"]["card_brand"], "visa");
        assert_eq!(body["data"]["card_last4"], "4242");

        let failed = billing::PaymentFailed {
            invoice_number: "7QX2KM4B-0002".into(),
            failure_code: billing::PaymentFailureCode::InsufficientFunds as i32,
            failure_message: "issuer said: call 555-0100".into(),
            next_retry_at: Some(prost_types::Timestamp { seconds: 1_772_667_000, nanos: 0 }),
            ..Default::default()
        };
        let text = body_for(&message("billing.payment.failed", &failed));
        let body: Value = serde_json::from_str(&text).expect("json");
        assert_eq!(body["data"]["failure_code"], "insufficient_funds");
        assert_eq!(body["data"]["next_retry_at"], 1_772_667_000);
        assert_eq!(body["data"]["initiated_by"], Value::Null);
        assert!(!text.contains("555-0100"), "{text}");
    }
}
