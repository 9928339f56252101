//! The delivery worker: consumes auth's and billing's events and Send
//! requests from RabbitMQ (consumer group `notification`) and delivers
//! them.

use std::sync::Arc;

use prost::Message as _;
use serde_json::json;
use tenx_common::queue::{Handler, HandlerError, Message};
use tenx_proto::auth::v1 as auth;
use tenx_proto::billing::v1 as billing;
use tenx_proto::notification::v1::{Channel, SendRequested};
use uuid::Uuid;

use tenx_common::sealed::SealKey;

use crate::deliver::{DeliverError, Deliverer, Job};
use crate::structs::to_json;

pub const GROUP: &str = "notification";
/// The events this service acts on: every domain event may have webhook
/// subscribers; some also mean an email or in-app item.
pub const BINDINGS: [&str; 3] = ["auth.#", "billing.#", SendRequested::EVENT_TYPE];

#[derive(Debug)]
pub struct Worker {
    pub deliverer: Arc<Deliverer>,
    /// Opens the codes auth seals (`codes.seal_key`).
    pub seal: tenx_common::sealed::SealKey,
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// `amqp.max_attempts`: tells a retry from a dead letter in metrics.
    pub max_attempts: u32,
}

fn reject(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::Reject(e.to_string())
}

fn user(id: &str) -> Result<Uuid, HandlerError> {
    Uuid::parse_str(id).map_err(|_| HandlerError::Reject(format!("bad user id {id:?}")))
}

/// Billing learns a customer's address from auth's events; until one has
/// arrived its events carry none. Such an event is acknowledged without a
/// notification (retrying would not bring the address) and logged.
fn no_email(event_type: &str, event: &str, user_id: &str, email: &str) -> bool {
    if email.is_empty() {
        tracing::warn!(event_type, event, user_id, "the event has no email address: nothing sent");
    }
    email.is_empty()
}

/// The code in a reset or verification event: opened from `sealed`, bound
/// to `purpose`, the user and the address it goes to (a sealed code copied
/// into an event for another address does not open); an event from an
/// auth older than sealing carries it plain. One that cannot be opened
/// (the two services' `codes.seal_key` differ) is a dead letter, to
/// redrive once fixed.
fn code_of(
    seal: &SealKey,
    sealed: &[u8],
    plain: &str,
    purpose: &str,
    (user_id, email): (&str, &str),
) -> Result<String, HandlerError> {
    if sealed.is_empty() {
        return Ok(plain.to_owned());
    }
    seal.open(sealed, format!("{purpose}:{user_id}:{email}").as_bytes())
        .and_then(|code| String::from_utf8(code).ok())
        .ok_or_else(|| {
            HandlerError::Reject("the sealed code does not open: is codes.seal_key auth's?".into())
        })
}

/// A change to an account (how it signs in, its role somewhere), told to
/// its owner by email and in the app; the template's data gains the
/// address.
fn owner_notice(
    dedupe: String,
    user_id: Uuid,
    email: String,
    template: &str,
    mut data: serde_json::Value,
    last_attempt: bool,
) -> Job {
    data["email"] = json!(email);
    Job {
        dedupe,
        user_id,
        data,
        email,
        template: template.into(),
        channels: vec![Channel::Email, Channel::InApp],
        last_attempt,
    }
}

/// The job an event asks for, if any.
#[allow(deprecated)] // reads the plain `code` of events sealed before
fn job_for(message: &Message, last_attempt: bool, seal: &SealKey) -> Result<Option<Job>, HandlerError> {
    let payload = message.envelope.payload.as_slice();
    let dedupe = message.id().to_owned();
    let job = match message.event_type() {
        auth::UserSignedUp::EVENT_TYPE => {
            let e = auth::UserSignedUp::decode(payload).map_err(reject)?;
            Job {
                dedupe,
                user_id: user(&e.user_id)?,
                data: json!({ "email": e.email, "display_name": e.display_name }),
                email: e.email,
                template: "welcome".into(),
                channels: vec![Channel::Email, Channel::InApp],
                last_attempt,
            }
        }
        auth::EmailVerificationRequested::EVENT_TYPE => {
            let e = auth::EmailVerificationRequested::decode(payload).map_err(reject)?;
            let code = code_of(seal, &e.sealed_code, &e.code, "verify_email", (&e.user_id, &e.email))?;
            Job {
                dedupe,
                user_id: user(&e.user_id)?,
                data: json!({ "email": e.email, "code": code, "expires_in_minutes": e.expires_in_minutes }),
                email: e.email,
                template: "verify_email".into(),
                channels: vec![Channel::Email],
                last_attempt,
            }
        }
        auth::PasswordResetRequested::EVENT_TYPE => {
            let e = auth::PasswordResetRequested::decode(payload).map_err(reject)?;
            let code = code_of(seal, &e.sealed_code, &e.code, "password_reset", (&e.user_id, &e.email))?;
            Job {
                dedupe,
                user_id: user(&e.user_id)?,
                data: json!({ "email": e.email, "code": code, "expires_in_minutes": e.expires_in_minutes }),
                email: e.email,
                template: "password_reset".into(),
                channels: vec![Channel::Email],
                last_attempt,
            }
        }
        auth::PasswordChanged::EVENT_TYPE => {
            let e = auth::PasswordChanged::decode(payload).map_err(reject)?;
            owner_notice(dedupe, user(&e.user_id)?, e.email, "password_changed", json!({}), last_attempt)
        }
        auth::MfaEnabled::EVENT_TYPE => {
            let e = auth::MfaEnabled::decode(payload).map_err(reject)?;
            owner_notice(dedupe, user(&e.user_id)?, e.email, "mfa_enabled", json!({}), last_attempt)
        }
        auth::MfaDisabled::EVENT_TYPE => {
            let e = auth::MfaDisabled::decode(payload).map_err(reject)?;
            owner_notice(dedupe, user(&e.user_id)?, e.email, "mfa_disabled", json!({}), last_attempt)
        }
        auth::MfaCodesLocked::EVENT_TYPE => {
            let e = auth::MfaCodesLocked::decode(payload).map_err(reject)?;
            owner_notice(dedupe, user(&e.user_id)?, e.email, "mfa_codes_locked", json!({}), last_attempt)
        }
        auth::MfaRecoveryCodeUsed::EVENT_TYPE => {
            let e = auth::MfaRecoveryCodeUsed::decode(payload).map_err(reject)?;
            let data = json!({ "recovery_codes_remaining": e.recovery_codes_remaining });
            owner_notice(dedupe, user(&e.user_id)?, e.email, "mfa_recovery_code_used", data, last_attempt)
        }
        auth::OrgMemberInvited::EVENT_TYPE => {
            let e = auth::OrgMemberInvited::decode(payload).map_err(reject)?;
            if e.sealed_token.is_empty() {
                return Err(reject("an invitation event without its sealed token"));
            }
            let token = code_of(seal, &e.sealed_token, "", "org_invitation", (&e.invitation_id, &e.email))?;
            let data = json!({
                "email": e.email, "organization_name": e.organization_name, "inviter_email": e.inviter_email,
                "role": e.role, "expires_in_hours": e.expires_in_hours,
                "accept_link": format!("{}?token={token}", e.accept_url),
            });
            // The invitee may have no account: the invitation stands in
            // for it (its email log), and nothing goes to an inbox.
            Job {
                dedupe,
                user_id: user(&e.invitation_id)?,
                data,
                email: e.email,
                template: "org_invitation".into(),
                channels: vec![Channel::Email],
                last_attempt,
            }
        }
        auth::OrgMemberRoleChanged::EVENT_TYPE => {
            let e = auth::OrgMemberRoleChanged::decode(payload).map_err(reject)?;
            let data = json!({
                "organization_name": e.organization_name, "previous_role": e.previous_role, "role": e.role,
            });
            owner_notice(dedupe, user(&e.user_id)?, e.email, "org_role_changed", data, last_attempt)
        }
        billing::InvoicePaid::EVENT_TYPE => {
            let e = billing::InvoicePaid::decode(payload).map_err(reject)?;
            let amount = e.invoice.as_ref().map_or(0, |i| i.amount_paid_minor);
            if amount == 0 {
                // Nothing was charged (a free price, or credit covered it):
                // no receipt, or a free plan would get one every period.
                tracing::info!(event = %dedupe, user_id = %e.user_id, "invoice paid without a charge: no receipt");
                return Ok(None);
            }
            if no_email(billing::InvoicePaid::EVENT_TYPE, &dedupe, &e.user_id, &e.email) {
                return Ok(None);
            }
            Job {
                dedupe,
                user_id: user(&e.user_id)?,
                data: crate::billing::receipt(&e),
                email: e.email,
                template: "billing_receipt".into(),
                channels: vec![Channel::Email, Channel::InApp],
                last_attempt,
            }
        }
        billing::PaymentFailed::EVENT_TYPE => {
            let e = billing::PaymentFailed::decode(payload).map_err(reject)?;
            if no_email(billing::PaymentFailed::EVENT_TYPE, &dedupe, &e.user_id, &e.email) {
                return Ok(None);
            }
            Job {
                dedupe,
                user_id: user(&e.user_id)?,
                data: crate::billing::payment_failed(&e),
                email: e.email,
                template: "billing_payment_failed".into(),
                channels: vec![Channel::Email, Channel::InApp],
                last_attempt,
            }
        }
        billing::PaymentRefunded::EVENT_TYPE => {
            let e = billing::PaymentRefunded::decode(payload).map_err(reject)?;
            if no_email(billing::PaymentRefunded::EVENT_TYPE, &dedupe, &e.user_id, &e.email) {
                return Ok(None);
            }
            Job {
                dedupe,
                user_id: user(&e.user_id)?,
                data: crate::billing::refund(&e),
                email: e.email,
                template: "billing_refund".into(),
                channels: vec![Channel::Email, Channel::InApp],
                last_attempt,
            }
        }
        SendRequested::EVENT_TYPE => {
            let e = SendRequested::decode(payload).map_err(reject)?;
            Job {
                dedupe: e.notification_id.clone(),
                user_id: user(&e.user_id)?,
                data: e.data.as_ref().map(to_json).unwrap_or_else(|| json!({})),
                email: e.email,
                template: e.template,
                channels: e.channels.iter().filter_map(|c| Channel::try_from(*c).ok()).collect(),
                last_attempt,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(job))
}

impl Handler for Worker {
    async fn handle(&self, message: &Message) -> Result<(), HandlerError> {
        if message.event_type() != SendRequested::EVENT_TYPE {
            self.webhooks.fan_out(message).await?;
        }
        let Some(job) = job_for(message, message.attempt >= self.max_attempts, &self.seal)? else {
            return Ok(());
        };
        match self.deliverer.deliver(&job).await {
            Ok(()) => Ok(()),
            Err(DeliverError::Template(e)) => Err(HandlerError::Reject(e.to_string())),
            Err(DeliverError::Rejected(e)) => Err(HandlerError::Reject(e)),
            Err(DeliverError::Transient(e)) => Err(HandlerError::Retry(e)),
        }
    }
}
