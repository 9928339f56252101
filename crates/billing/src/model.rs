//! Rows as the API shows them: subscriptions, invoices, lines, attempts.

use std::sync::LazyLock;
use std::time::SystemTime;
use tenx_common::db::Prepared;

use prost_types::Timestamp;
use tenx_proto::billing::v1 as pb;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::BillingError;

fn ts(row: &Row, column: &str) -> Option<Timestamp> {
    row.get::<_, Option<SystemTime>>(column).map(Into::into)
}

fn id(row: &Row, column: &str) -> String {
    row.get::<_, Option<Uuid>>(column).map(|u| u.to_string()).unwrap_or_default()
}

pub fn subscription_status(raw: &str) -> pb::SubscriptionStatus {
    match raw {
        "trialing" => pb::SubscriptionStatus::Trialing,
        "active" => pb::SubscriptionStatus::Active,
        "past_due" => pb::SubscriptionStatus::PastDue,
        "canceled" => pb::SubscriptionStatus::Canceled,
        "unpaid" => pb::SubscriptionStatus::Unpaid,
        "incomplete" => pb::SubscriptionStatus::Incomplete,
        _ => pb::SubscriptionStatus::Unspecified,
    }
}

pub fn status_name(status: pb::SubscriptionStatus) -> Option<&'static str> {
    Some(match status {
        pb::SubscriptionStatus::Trialing => "trialing",
        pb::SubscriptionStatus::Active => "active",
        pb::SubscriptionStatus::PastDue => "past_due",
        pb::SubscriptionStatus::Canceled => "canceled",
        pb::SubscriptionStatus::Unpaid => "unpaid",
        pb::SubscriptionStatus::Incomplete => "incomplete",
        pb::SubscriptionStatus::Unspecified => return None,
    })
}

pub fn invoice_status(raw: &str) -> pb::InvoiceStatus {
    match raw {
        "draft" => pb::InvoiceStatus::Draft,
        "open" => pb::InvoiceStatus::Open,
        "paid" => pb::InvoiceStatus::Paid,
        "void" => pb::InvoiceStatus::Void,
        "uncollectible" => pb::InvoiceStatus::Uncollectible,
        _ => pb::InvoiceStatus::Unspecified,
    }
}

pub fn invoice_status_name(status: pb::InvoiceStatus) -> Option<&'static str> {
    Some(match status {
        pb::InvoiceStatus::Draft => "draft",
        pb::InvoiceStatus::Open => "open",
        pb::InvoiceStatus::Paid => "paid",
        pb::InvoiceStatus::Void => "void",
        pb::InvoiceStatus::Uncollectible => "uncollectible",
        pb::InvoiceStatus::Unspecified => return None,
    })
}

pub const SUBSCRIPTION_COLUMNS: &str = "s.id, s.customer_id, s.price_id, p.plan_id, s.status, s.currency, \
    s.current_period_start, s.current_period_end, s.billing_cycle_anchor, s.trial_start, s.trial_end, \
    s.cancel_at_period_end, s.canceled_at, s.ended_at, s.cancellation_reason, s.pending_price_id, \
    s.pending_change_at, s.default_payment_method_id, s.latest_invoice_id, s.version, s.created_at, s.updated_at";

pub fn subscription(row: &Row) -> pb::Subscription {
    let reason = match row.get::<_, Option<String>>("cancellation_reason").as_deref() {
        Some("requested") => pb::CancellationReason::Requested,
        Some("payment_failed") => pb::CancellationReason::PaymentFailed,
        Some("incomplete_expired") => pb::CancellationReason::IncompleteExpired,
        _ => pb::CancellationReason::Unspecified,
    };
    pb::Subscription {
        id: id(row, "id"),
        customer_id: id(row, "customer_id"),
        price_id: id(row, "price_id"),
        plan_id: id(row, "plan_id"),
        status: subscription_status(row.get("status")) as i32,
        currency: row.get::<_, String>("currency").trim().to_owned(),
        current_period_start: ts(row, "current_period_start"),
        current_period_end: ts(row, "current_period_end"),
        billing_cycle_anchor: ts(row, "billing_cycle_anchor"),
        trial_start: ts(row, "trial_start"),
        trial_end: ts(row, "trial_end"),
        cancel_at_period_end: row.get("cancel_at_period_end"),
        canceled_at: ts(row, "canceled_at"),
        ended_at: ts(row, "ended_at"),
        cancellation_reason: reason as i32,
        pending_change: row.get::<_, Option<Uuid>>("pending_price_id").map(|price| pb::PendingChange {
            price_id: price.to_string(),
            effective_at: ts(row, "pending_change_at"),
        }),
        default_payment_method_id: id(row, "default_payment_method_id"),
        latest_invoice_id: id(row, "latest_invoice_id"),
        version: row.get("version"),
        created_at: ts(row, "created_at"),
        updated_at: ts(row, "updated_at"),
    }
}

pub async fn load_subscription<C: Prepared>(db: &C, sub: Uuid) -> Result<pb::Subscription, BillingError> {
    let row = db
        .query_opt_cached(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions s JOIN prices p ON p.id = s.price_id WHERE s.id = $1"),
            &[&sub],
        )
        .await?
        .ok_or(BillingError::NotFound("subscription"))?;
    Ok(subscription(&row))
}

pub const INVOICE_COLUMNS: &str = "id, customer_id, subscription_id, number, status, billing_reason, currency, \
    total_minor, credit_applied_minor, credit_added_minor, amount_due_minor, amount_paid_minor, period_start, \
    period_end, created_at, finalized_at, paid_at, voided_at, marked_uncollectible_at, attempt_count, \
    next_payment_attempt_at";

pub fn invoice(row: &Row) -> pb::Invoice {
    let reason = match row.get::<_, String>("billing_reason").as_str() {
        "subscription_create" => pb::BillingReason::SubscriptionCreate,
        "subscription_cycle" => pb::BillingReason::SubscriptionCycle,
        "subscription_update" => pb::BillingReason::SubscriptionUpdate,
        "subscription_cancel" => pb::BillingReason::SubscriptionCancel,
        _ => pb::BillingReason::Unspecified,
    };
    let (due, paid): (i64, i64) = (row.get("amount_due_minor"), row.get("amount_paid_minor"));
    pb::Invoice {
        id: id(row, "id"),
        customer_id: id(row, "customer_id"),
        subscription_id: id(row, "subscription_id"),
        number: row.get::<_, Option<String>>("number").unwrap_or_default(),
        status: invoice_status(row.get("status")) as i32,
        billing_reason: reason as i32,
        currency: row.get::<_, String>("currency").trim().to_owned(),
        total_minor: row.get("total_minor"),
        credit_applied_minor: row.get("credit_applied_minor"),
        credit_added_minor: row.get("credit_added_minor"),
        amount_due_minor: due,
        amount_paid_minor: paid,
        amount_remaining_minor: due - paid,
        period_start: ts(row, "period_start"),
        period_end: ts(row, "period_end"),
        created_at: ts(row, "created_at"),
        finalized_at: ts(row, "finalized_at"),
        paid_at: ts(row, "paid_at"),
        voided_at: ts(row, "voided_at"),
        marked_uncollectible_at: ts(row, "marked_uncollectible_at"),
        attempt_count: u32::try_from(row.get::<_, i32>("attempt_count")).unwrap_or(0),
        next_payment_attempt_at: ts(row, "next_payment_attempt_at"),
        lines: Vec::new(),
        payment_attempts: Vec::new(),
    }
}

fn line(row: &Row) -> pb::InvoiceLine {
    let kind = match row.get::<_, String>("kind").as_str() {
        "subscription" => pb::InvoiceLineKind::Subscription,
        "proration" => pb::InvoiceLineKind::Proration,
        "usage" => pb::InvoiceLineKind::Usage,
        _ => pb::InvoiceLineKind::Unspecified,
    };
    pb::InvoiceLine {
        id: id(row, "id"),
        kind: kind as i32,
        description: row.get("description"),
        price_id: id(row, "price_id"),
        quantity: row.get("quantity"),
        unit_amount_minor: row.get("unit_amount_minor"),
        amount_minor: row.get("amount_minor"),
        period_start: ts(row, "period_start"),
        period_end: ts(row, "period_end"),
    }
}

pub fn attempt(row: &Row) -> pb::PaymentAttempt {
    let status = match row.get::<_, String>("status").as_str() {
        "pending" => pb::PaymentAttemptStatus::Pending,
        "succeeded" => pb::PaymentAttemptStatus::Succeeded,
        "failed" => pb::PaymentAttemptStatus::Failed,
        _ => pb::PaymentAttemptStatus::Unspecified,
    };
    let failure = match row.get::<_, Option<String>>("failure_code").as_deref() {
        Some("card_declined") => pb::PaymentFailureCode::CardDeclined,
        Some("insufficient_funds") => pb::PaymentFailureCode::InsufficientFunds,
        Some("provider_error") => pb::PaymentFailureCode::ProviderError,
        Some("no_payment_method") => pb::PaymentFailureCode::NoPaymentMethod,
        Some("not_found_at_provider") => pb::PaymentFailureCode::NotFoundAtProvider,
        _ => pb::PaymentFailureCode::Unspecified,
    };
    let trigger = match row.get::<_, String>("initiated_by").as_str() {
        "customer" => pb::PaymentTrigger::Customer,
        "automatic" => pb::PaymentTrigger::Automatic,
        "dunning" => pb::PaymentTrigger::Dunning,
        _ => pb::PaymentTrigger::Unspecified,
    };
    pb::PaymentAttempt {
        id: id(row, "id"),
        invoice_id: id(row, "invoice_id"),
        payment_method_id: id(row, "payment_method_id"),
        amount_minor: row.get("amount_minor"),
        currency: row.get::<_, String>("currency").trim().to_owned(),
        status: status as i32,
        failure_code: failure as i32,
        failure_message: row.get("failure_message"),
        initiated_by: trigger as i32,
        provider_charge_id: row.get::<_, Option<String>>("provider_charge_id").unwrap_or_default(),
        created_at: ts(row, "created_at"),
        completed_at: ts(row, "completed_at"),
    }
}

pub const ATTEMPT_COLUMNS: &str = "id, invoice_id, payment_method_id, amount_minor, currency, status, failure_code, \
    failure_message, initiated_by, provider_charge_id, created_at, completed_at";

/// An invoice with its lines and payment attempts.
pub async fn load_invoice<C: Prepared>(db: &C, invoice_id: Uuid) -> Result<pb::Invoice, BillingError> {
    static HEAD: LazyLock<String> =
        LazyLock::new(|| format!("SELECT {INVOICE_COLUMNS} FROM invoices WHERE id = $1"));
    let (invoice, _) = load_invoice_headed(db, invoice_id, &HEAD, &[&invoice_id]).await?;
    Ok(invoice)
}

/// [`load_invoice`] whose head (a row with [`INVOICE_COLUMNS`]) is read by
/// `head`, which may read more beside it: the invoice and that row. The
/// head, the lines and the attempts go out pipelined: one round trip.
pub async fn load_invoice_headed<C: Prepared>(
    db: &C,
    invoice_id: Uuid,
    head: &str,
    head_params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<(pb::Invoice, Row), BillingError> {
    let lines = "SELECT id, kind, description, price_id, quantity, unit_amount_minor, amount_minor, period_start, \
                 period_end FROM invoice_lines WHERE invoice_id = $1 ORDER BY line_no";
    static ATTEMPTS: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {ATTEMPT_COLUMNS} FROM payment_attempts WHERE invoice_id = $1 ORDER BY created_at, id"
        )
    });
    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = &[&invoice_id];
    let (row, lines, attempts) = futures_util::try_join!(
        db.query_opt_cached(head, head_params),
        db.query_cached(lines, params),
        db.query_cached(&ATTEMPTS, params),
    )?;
    let row = row.ok_or(BillingError::NotFound("invoice"))?;
    let mut invoice = invoice(&row);
    invoice.lines = lines.iter().map(line).collect();
    invoice.payment_attempts = attempts.iter().map(attempt).collect();
    Ok((invoice, row))
}

/// `amount` formatted for people (`USD 19.83`, `JPY 1,490`), with the
/// currency's exponent, which events carry beside it.
pub async fn display<C: Prepared>(
    db: &C,
    currency: &str,
    amount: i64,
) -> Result<(String, u32), BillingError> {
    let exponent = exponent(db, currency).await?;
    Ok((tenx_common::money::format(currency, amount, exponent), exponent))
}

/// The currency's exponent (digits after the decimal point), read once per
/// process: ISO 4217 exponents are seeded by the migrations and never
/// change, so every event of a payment need not ask the database again.
async fn exponent<C: Prepared>(db: &C, currency: &str) -> Result<u32, BillingError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static KNOWN: OnceLock<Mutex<HashMap<String, u32>>> = OnceLock::new();
    let known = KNOWN.get_or_init(Mutex::default);
    if let Some(exponent) = known.lock().unwrap_or_else(|p| p.into_inner()).get(currency) {
        return Ok(*exponent);
    }
    let Some(row) = db
        .query_opt_cached("SELECT exponent FROM currencies WHERE code::text = $1::text", &[&currency])
        .await?
    else {
        // Unknown here (nothing refers to an unknown currency): not cached.
        return Ok(2);
    };
    let exponent = u32::try_from(row.get::<_, i16>(0)).unwrap_or(2);
    known.lock().unwrap_or_else(|p| p.into_inner()).insert(currency.to_owned(), exponent);
    Ok(exponent)
}
