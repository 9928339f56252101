//! Refunds: money given back from a succeeded payment, in full or in
//! parts. A refund is committed `pending` (under the payment's row lock,
//! so the payment's refunds never add up to more than it) before the
//! provider is asked, with its id as the provider's idempotency key; its
//! settlement records the credit note and the refund in the ledger and
//! tells the customer.

use std::time::{Duration, SystemTime};

use tenx_common::db::Prepared;
use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::invoices::{Party, enqueue};
use crate::ledger::{self, About, Entry};
use crate::model;
use crate::provider::{PaymentProvider, ProviderError, RefundOutcome, RefundRequest};

/// A refund sent (or about to be sent) to the provider.
#[derive(Debug, Clone)]
pub struct Pending {
    pub id: Uuid,
    pub attempt_id: Uuid,
    pub invoice_id: Uuid,
    pub customer_id: Uuid,
    pub amount_minor: i64,
    pub currency: String,
    pub intent: Option<String>,
    pub charge_id: String,
}

impl Pending {
    pub fn request(&self, resumed: bool) -> RefundRequest<'_> {
        RefundRequest {
            refund_id: self.id,
            attempt_id: self.attempt_id,
            intent: self.intent.as_deref(),
            charge_id: &self.charge_id,
            amount_minor: self.amount_minor,
            currency: &self.currency,
            resumed,
        }
    }
}

const PENDING: &str = "SELECT r.id, r.payment_attempt_id, r.invoice_id, r.customer_id, r.amount_minor, \
     r.currency::text, a.provider_intent_id, a.provider_charge_id \
     FROM refunds r JOIN payment_attempts a ON a.id = r.payment_attempt_id WHERE r.id = $1 AND r.status = 'pending'";

fn pending_of(row: &tokio_postgres::Row) -> Pending {
    Pending {
        id: row.get(0),
        attempt_id: row.get(1),
        invoice_id: row.get(2),
        customer_id: row.get(3),
        amount_minor: row.get(4),
        currency: row.get::<_, String>(5).trim().to_owned(),
        intent: row.get(6),
        charge_id: row.get::<_, Option<String>>(7).unwrap_or_default(),
    }
}

const RECONCILE_PREFIX: &str = "refund_reconcile:";

/// The key of a refund's reconcile job.
pub fn reconcile_key(refund: Uuid) -> String {
    format!("{RECONCILE_PREFIX}{refund}")
}

/// The refund a reconcile job's key names.
pub fn reconciled_by(key: &str) -> Option<Uuid> {
    key.strip_prefix(RECONCILE_PREFIX).and_then(|id| Uuid::parse_str(id).ok())
}

/// Settles a refund (`$1`…`$6`, see [`settle`]) once.
const SETTLE: &str = concat!(
    "WITH settled AS (UPDATE refunds SET status = $2, provider_refund_id = $3, failure_message = $4, \
       completed_at = $5 WHERE id = $1 AND status = 'pending' RETURNING id), ",
    crate::jobs::delete_reconcile_job!("$5", "$6"),
    " SELECT EXISTS (SELECT 1 FROM settled)"
);

/// Locks the payment, checks what is left to refund and records a pending
/// refund of `amount` (0: all that is left), in the caller's transaction,
/// with its reconcile job due at `reconcile_at`: a refund whose answer is
/// lost is settled by the scheduler even if nobody retries the request.
pub async fn begin<C: Prepared>(
    tx: &C,
    now: SystemTime,
    reconcile_at: SystemTime,
    attempt: Uuid,
    amount: i64,
    reason: &str,
    requested_by: Uuid,
) -> Result<Pending, BillingError> {
    let payment = tx
        .query_opt_cached(
            "SELECT status, amount_minor, provider, invoice_id, customer_id, currency::text FROM payment_attempts \
             WHERE id = $1 FOR UPDATE",
            &[&attempt],
        )
        .await?
        .ok_or(BillingError::NotFound("payment attempt"))?;
    if payment.get::<_, String>(0) != "succeeded" {
        return Err(BillingError::refused(
            "PAYMENT_NOT_REFUNDABLE",
            "only a succeeded payment can be refunded",
        ));
    }
    let paid: i64 = payment.get(1);
    let refunded: i64 = tx
        .query_one_cached(
            "SELECT COALESCE(sum(amount_minor), 0)::bigint FROM refunds \
             WHERE payment_attempt_id = $1 AND status IN ('pending', 'succeeded')",
            &[&attempt],
        )
        .await?
        .get(0);
    let left = paid.saturating_sub(refunded);
    let amount = if amount == 0 { left } else { amount };
    if amount <= 0 || amount > left {
        return Err(BillingError::refused(
            "REFUND_EXCEEDS_PAYMENT",
            format!("{left} minor units of this payment are left to refund; {amount} were asked"),
        ));
    }
    let id = Uuid::now_v7();
    let (provider, invoice, customer, currency): (String, Uuid, Uuid, String) =
        (payment.get(2), payment.get(3), payment.get(4), payment.get(5));
    tx.execute_cached(
        "INSERT INTO refunds (id, payment_attempt_id, invoice_id, customer_id, amount_minor, currency, status, \
           reason, provider, requested_by, created_at) VALUES ($1, $2, $3, $4, $5, $6::text, 'pending', $7, $8, $9, $10)",
        &[&id, &attempt, &invoice, &customer, &amount, &currency, &reason, &provider, &requested_by, &now],
    )
    .await?;
    crate::jobs::schedule(tx, "refund_reconcile", &reconcile_key(id), None, None, None, reconcile_at, now)
        .await?;
    let row = tx.query_one_cached(PENDING, &[&id]).await?;
    Ok(pending_of(&row))
}

/// Asks the provider to refund (or, when `resumed`, to look the refund up
/// first), bounded by `timeout`. A first request the provider failed
/// certainly refunded nothing: `Refused`, to record as failed. Any other
/// failure leaves the refund pending (an error: its retry or its
/// reconcile job asks again).
pub async fn ask_provider(
    provider: &dyn PaymentProvider,
    refund: &Pending,
    resumed: bool,
    timeout: Duration,
) -> Result<RefundOutcome, BillingError> {
    match tokio::time::timeout(timeout, provider.refund(refund.request(resumed))).await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(ProviderError::Unavailable(_) | ProviderError::Rejected(_))) if !resumed => {
            Ok(RefundOutcome::Refused("the payment provider failed; nothing was refunded".into()))
        }
        Ok(Err(ProviderError::Unavailable(_) | ProviderError::Rejected(_))) => Err(BillingError::Provider {
            reason: "PROVIDER_ERROR",
            message: "the payment provider failed; the refund is still pending: retry with the same idempotency key"
                .into(),
        }),
        Ok(Err(ProviderError::Timeout)) | Err(_) => Err(BillingError::Provider {
            reason: "PROVIDER_TIMEOUT",
            message: "the payment provider's answer is not known yet; the refund is pending: retry with the same \
                      idempotency key"
                .into(),
        }),
    }
}

/// A refund still pending (to resume after a lost answer or a crash).
pub async fn pending<C: Prepared>(db: &C, id: Uuid) -> Result<Option<Pending>, BillingError> {
    Ok(db.query_opt_cached(PENDING, &[&id]).await?.as_ref().map(pending_of))
}

/// Records the provider's answer, in the caller's transaction: the refund,
/// and when it succeeded the ledger (a credit note of the amount, then
/// the refund of that credit) and `billing.payment.refunded`. A refund
/// settled already is left as it is.
pub async fn settle<C: Prepared>(
    tx: &C,
    now: SystemTime,
    refund: &Pending,
    outcome: &RefundOutcome,
) -> Result<(), BillingError> {
    let (status, provider_refund, failure) = match outcome {
        RefundOutcome::Succeeded { refund_id } => ("succeeded", Some(refund_id.as_str()), ""),
        RefundOutcome::Refused(why) => ("failed", None, why.as_str()),
    };
    // Settled once (a retry and the reconciler may race: the second waits
    // for the row lock, then changes nothing); its reconcile job, with
    // nothing left to do, is canceled (unless it is the one settling it).
    let settled: bool = tx
        .query_one_cached(
            SETTLE,
            &[&refund.id, &status, &provider_refund, &failure, &now, &reconcile_key(refund.id)],
        )
        .await?
        .get(0);
    if !settled || provider_refund.is_none() {
        return Ok(());
    }
    let about = About {
        invoice: Some(refund.invoice_id),
        payment_attempt: Some(refund.attempt_id),
        refund: Some(refund.id),
        ..About::default()
    };
    let x = refund.amount_minor;
    let credit_note = [
        Entry::plain("revenue_subscriptions", x),
        Entry::customer("customer_credit", refund.customer_id, -x),
    ];
    ledger::post(tx, "credit_note", about, &refund.currency, "refund", &credit_note, now).await?;
    let given_back =
        [Entry::customer("customer_credit", refund.customer_id, x), Entry::plain("provider_clearing", -x)];
    ledger::post(
        tx,
        "refund",
        about,
        &refund.currency,
        provider_refund.unwrap_or_default(),
        &given_back,
        now,
    )
    .await?;

    let row = tx
        .query_one_cached(
            "SELECT i.number, m.last4, COALESCE(pl.name, '') FROM payment_attempts a \
             JOIN invoices i ON i.id = a.invoice_id LEFT JOIN payment_methods m ON m.id = a.payment_method_id \
             LEFT JOIN subscriptions s ON s.id = i.subscription_id LEFT JOIN prices p ON p.id = s.price_id \
             LEFT JOIN plans pl ON pl.id = p.plan_id WHERE a.id = $1",
            &[&refund.attempt_id],
        )
        .await?;
    let party = Party::load(tx, refund.customer_id, row.get(2)).await?;
    let (amount_display, exponent) = model::display(tx, &refund.currency, x).await?;
    let event = pb::PaymentRefunded {
        refund: Some(load(tx, refund.id).await?),
        invoice_number: row.get::<_, Option<String>>(0).unwrap_or_default(),
        user_id: party.user_id.to_string(),
        email: party.email,
        amount_display,
        card_last4: row.get::<_, Option<String>>(1).unwrap_or_default(),
        currency_exponent: Some(exponent),
    };
    enqueue(tx, refund.invoice_id, &event).await?;
    Ok(())
}

/// A refund as the API shows it.
pub async fn load<C: Prepared>(db: &C, id: Uuid) -> Result<pb::Refund, BillingError> {
    let row = db
        .query_opt_cached(
            "SELECT id, payment_attempt_id, invoice_id, customer_id, amount_minor, currency::text, status, reason, \
               provider_refund_id, failure_message, created_at, completed_at FROM refunds WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or(BillingError::NotFound("refund"))?;
    let status = match row.get::<_, String>(6).as_str() {
        "pending" => pb::RefundStatus::Pending,
        "succeeded" => pb::RefundStatus::Succeeded,
        "failed" => pb::RefundStatus::Failed,
        _ => pb::RefundStatus::Unspecified,
    };
    Ok(pb::Refund {
        id: row.get::<_, Uuid>(0).to_string(),
        payment_attempt_id: row.get::<_, Uuid>(1).to_string(),
        invoice_id: row.get::<_, Uuid>(2).to_string(),
        customer_id: row.get::<_, Uuid>(3).to_string(),
        amount_minor: row.get(4),
        currency: row.get::<_, String>(5).trim().to_owned(),
        status: status as i32,
        reason: row.get(7),
        provider_refund_id: row.get::<_, Option<String>>(8).unwrap_or_default(),
        failure_message: row.get(9),
        created_at: Some(row.get::<_, SystemTime>(10).into()),
        completed_at: row.get::<_, Option<SystemTime>>(11).map(Into::into),
    })
}
