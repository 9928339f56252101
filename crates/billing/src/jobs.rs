//! The job table's side of billing's state changes, below everything that
//! schedules work: adding a job (`schedule`, `schedule_period_end`),
//! dropping a reconcile job once its payment or refund settled
//! (`delete_reconcile_job!`), and the transitions that queue or cancel
//! jobs as they change a subscription (charge an invoice later, end now,
//! void, a customer's failed payment and the dunning ladder). The runner
//! that claims and runs due jobs is `scheduler`, above the modules whose
//! work it runs.

use std::time::{Duration, SystemTime};
use tenx_common::db::Prepared;

use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::invoices::{self, NewInvoice, Party, enqueue};
use crate::ledger::{self, About, Entry};
use crate::model;
use crate::settings::DunningSettings;

/// A CTE, `job`, that deletes the reconcile job whose key is parameter
/// `$key` of something the statement's CTE `settled` just settled: nothing
/// is left for it to do, and a job that never ran is no history worth a
/// row (deleting is also cheaper than an update, which would write a new
/// version of the row and its index entries on every payment). A job
/// running right now (locked) is left alone; it finishes itself. `$now` is
/// the parameter with the time.
macro_rules! delete_reconcile_job {
    ($now:literal, $key:literal) => {
        concat!(
            "job AS (DELETE FROM billing_jobs WHERE dedupe_key = ",
            $key,
            " AND status = 'pending' AND (locked_until IS NULL OR locked_until < ",
            $now,
            ") AND EXISTS (SELECT 1 FROM settled))"
        )
    };
}
pub(crate) use delete_reconcile_job;

/// Adds a job unless one with the same `dedupe_key` exists.
#[allow(clippy::too_many_arguments)]
pub async fn schedule<C: Prepared>(
    tx: &C,
    kind: &str,
    dedupe_key: &str,
    subscription: Option<Uuid>,
    invoice: Option<Uuid>,
    attempt: Option<Uuid>,
    run_at: SystemTime,
    now: SystemTime,
) -> Result<(), BillingError> {
    tx.execute_cached(
        "INSERT INTO billing_jobs (id, kind, dedupe_key, subscription_id, invoice_id, payment_attempt_id, run_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dedupe_key) DO NOTHING",
        &[&Uuid::now_v7(), &kind, &dedupe_key, &subscription, &invoice, &attempt, &run_at, &now],
    )
    .await?;
    Ok(())
}

/// The job that ends a subscription's current period.
pub async fn schedule_period_end<C: Prepared>(
    tx: &C,
    subscription: Uuid,
    end: SystemTime,
    now: SystemTime,
) -> Result<(), BillingError> {
    let secs = end.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let key = format!("period_end:{subscription}:{secs}");
    schedule(tx, "period_end", &key, Some(subscription), None, None, end, now).await
}

/// Queues the automatic charge of an issued invoice, when it owes anything.
pub async fn charge_later<C: Prepared>(
    tx: &C,
    sub: Uuid,
    invoice: Uuid,
    now: SystemTime,
) -> Result<(), BillingError> {
    let due: i64 =
        tx.query_one_cached("SELECT amount_due_minor FROM invoices WHERE id = $1", &[&invoice]).await?.get(0);
    if due > 0 {
        schedule(
            tx,
            "charge_invoice",
            &format!("charge:{invoice}"),
            Some(sub),
            Some(invoice),
            None,
            now,
            now,
        )
        .await?;
    }
    Ok(())
}

/// Ends a live subscription now: CANCELED with `reason`, deferred revenue
/// recognized, its pending jobs canceled, `billing.subscription.canceled`.
pub async fn end_now<C: Prepared>(
    tx: &C,
    sub: Uuid,
    reason: &str,
    now: SystemTime,
    party: &Party,
) -> Result<(), BillingError> {
    let live = ["trialing", "active", "past_due", "unpaid", "incomplete"];
    set_status(tx, sub, &live, "canceled", Some(reason), now, party).await?;
    recognize_revenue(tx, sub, now).await?;
    cancel_jobs(tx, sub, now, Uuid::nil()).await
}

/// Moves a subscription from one of `from` to `to`, with its event.
pub(crate) async fn set_status<C: Prepared>(
    tx: &C,
    sub: Uuid,
    from: &[&str],
    to: &str,
    reason: Option<&str>,
    now: SystemTime,
    party: &Party,
) -> Result<(), BillingError> {
    let previous: String =
        tx.query_one_cached("SELECT status FROM subscriptions WHERE id = $1", &[&sub]).await?.get(0);
    if !from.contains(&previous.as_str()) {
        return Ok(());
    }
    tx.execute_cached(
        "UPDATE subscriptions SET status = $2, cancellation_reason = $3, \
           ended_at = CASE WHEN $2 = 'canceled' THEN $4::timestamptz END, \
           canceled_at = CASE WHEN $2 = 'canceled' THEN COALESCE(canceled_at, $4::timestamptz) ELSE canceled_at END, \
           updated_at = $4 WHERE id = $1",
        &[&sub, &to, &reason, &now],
    )
    .await?;
    let subscription = model::load_subscription(tx, sub).await?;
    if to == "canceled" {
        let event = pb::SubscriptionCanceled {
            subscription: Some(subscription),
            previous_status: model::subscription_status(&previous) as i32,
            user_id: party.user_id.to_string(),
            email: party.email.clone(),
            plan_name: party.plan_name.clone(),
        };
        enqueue(tx, sub, &event).await
    } else {
        let price = subscription.price_id.clone();
        let event = party.subscription_updated(subscription, &previous, price);
        enqueue(tx, sub, &event).await
    }
}

/// Fills in `next_retry_at` / `final` of the `billing.payment.failed`
/// event the failed attempt just wrote (same transaction).
pub(crate) async fn announce_next_retry<C: Prepared>(
    tx: &C,
    invoice: Uuid,
    next: Option<SystemTime>,
    last: bool,
) -> Result<(), BillingError> {
    let row = tx
        .query_opt_cached(
            "SELECT id, payload FROM tenx_outbox WHERE event_type = 'billing.payment.failed' AND aggregate_id = $1 \
             ORDER BY seq DESC LIMIT 1",
            &[&invoice.to_string()],
        )
        .await?;
    let Some(row) = row else { return Ok(()) };
    let mut event = <pb::PaymentFailed as prost::Message>::decode(row.get::<_, Vec<u8>>(1).as_slice())
        .map_err(|e| BillingError::Internal(e.to_string()))?;
    event.next_retry_at = next.map(Into::into);
    event.r#final = last;
    tx.execute_cached(
        "UPDATE tenx_outbox SET payload = $2 WHERE id = $1",
        &[&row.get::<_, Uuid>(0), &prost::Message::encode_to_vec(&event)],
    )
    .await?;
    Ok(())
}

/// Moves a subscription's deferred revenue to earned revenue.
pub(crate) async fn recognize_revenue<C: Prepared>(
    tx: &C,
    sub: Uuid,
    now: SystemTime,
) -> Result<(), BillingError> {
    let rows = tx
        .query_cached(
            "SELECT currency::text, COALESCE(sum(amount_minor), 0)::bigint FROM ledger_entries \
             WHERE subscription_id = $1 AND account = 'deferred_revenue' GROUP BY currency",
            &[&sub],
        )
        .await?;
    for row in rows {
        let (currency, balance): (String, i64) = (row.get(0), row.get(1));
        if balance != 0 {
            let entries = [Entry::deferred(sub, -balance), Entry::plain("revenue_subscriptions", balance)];
            let about = About { subscription: Some(sub), ..About::default() };
            ledger::post(tx, "revenue_recognized", about, currency.trim(), "period end", &entries, now)
                .await?;
        }
    }
    Ok(())
}

/// Writes off what is left of an invoice: UNCOLLECTIBLE, Dr bad debt / Cr
/// receivable.
pub(crate) async fn write_off<C: Prepared>(
    tx: &C,
    invoice: Uuid,
    customer: Uuid,
    now: SystemTime,
) -> Result<(), BillingError> {
    let row = tx
        .query_one_cached(
            "UPDATE invoices SET status = 'uncollectible', marked_uncollectible_at = $2, updated_at = $2 \
             WHERE id = $1 RETURNING currency::text, amount_due_minor - amount_paid_minor",
            &[&invoice, &now],
        )
        .await?;
    let (currency, remaining): (String, i64) = (row.get(0), row.get(1));
    if remaining > 0 {
        let entries = [
            Entry::plain("bad_debt", remaining),
            Entry::customer("accounts_receivable", customer, -remaining),
        ];
        let about = About { invoice: Some(invoice), ..About::default() };
        ledger::post(tx, "invoice_written_off", about, currency.trim(), "dunning exhausted", &entries, now)
            .await?;
    }
    Ok(())
}

/// Voids an open invoice: the exact reversal of its finalization entries.
pub(crate) async fn void<C: Prepared>(tx: &C, invoice: Uuid, now: SystemTime) -> Result<(), BillingError> {
    tx.execute_cached(
        "UPDATE invoices SET status = 'void', voided_at = $2, updated_at = $2 WHERE id = $1",
        &[&invoice, &now],
    )
    .await?;
    let finalized = tx
        .query_opt_cached(
            "SELECT id FROM ledger_transactions WHERE invoice_id = $1 AND kind = 'invoice_finalized'",
            &[&invoice],
        )
        .await?;
    if let Some(txn) = finalized {
        let original: Uuid = txn.get(0);
        let reversal = Uuid::now_v7();
        tx.execute_cached(
            "INSERT INTO ledger_transactions (id, kind, invoice_id, reverses_transaction_id, description, posted_at) \
             VALUES ($1, 'invoice_voided', $2, $3, 'void', $4)",
            &[&reversal, &invoice, &original, &now],
        )
        .await?;
        tx.execute_cached(
            "INSERT INTO ledger_entries (id, transaction_id, account, customer_id, subscription_id, currency, amount_minor, posted_at) \
             SELECT gen_random_uuid(), $1, account, customer_id, subscription_id, currency, -amount_minor, $3 \
             FROM ledger_entries WHERE transaction_id = $2",
            &[&reversal, &original, &now],
        )
        .await?;
    }
    Ok(())
}

/// Cancels a subscription's pending jobs (it ended).
pub(crate) async fn cancel_jobs<C: Prepared>(
    tx: &C,
    sub: Uuid,
    now: SystemTime,
    running: Uuid,
) -> Result<(), BillingError> {
    tx.execute_cached(
        "UPDATE billing_jobs SET status = 'canceled', finished_at = $2 \
         WHERE subscription_id = $1 AND status = 'pending' AND id <> $3 \
           AND kind IN ('period_end', 'incomplete_expiry', 'dunning_retry')",
        &[&sub, &now, &running],
    )
    .await?;
    Ok(())
}

/// A customer-side failure of automatic collection: the first starts
/// dunning (ACTIVE → PAST_DUE); each schedules the next retry of the
/// ladder; the last ends it with `dunning.final_action`.
pub async fn customer_failed<C: Prepared>(
    dunning: &DunningSettings,
    tx: &C,
    invoice: Uuid,
    retries_done: usize,
    now: SystemTime,
    job: Uuid,
) -> Result<(), BillingError> {
    let row = tx
        .query_one_cached("SELECT subscription_id, customer_id FROM invoices WHERE id = $1", &[&invoice])
        .await?;
    let (sub, customer): (Option<Uuid>, Uuid) = (row.get(0), row.get(1));
    tx.execute_cached(
        "INSERT INTO dunning_states (invoice_id, subscription_id, status, started_at) VALUES ($1, $2, 'active', $3) \
         ON CONFLICT (invoice_id) DO NOTHING",
        &[&invoice, &sub, &now],
    )
    .await?;
    let started: SystemTime = tx
        .query_one_cached("SELECT started_at FROM dunning_states WHERE invoice_id = $1", &[&invoice])
        .await?
        .get(0);
    let days = &dunning.retry_days;
    let next = days.get(retries_done).map(|d| started + Duration::from_secs(u64::from(*d) * 86_400));
    let plan = match sub {
        Some(s) => crate::prices::price(
            tx,
            model::load_subscription(tx, s).await?.price_id.parse().unwrap_or_default(),
        )
        .await
        .map(|p| p.plan_name)
        .unwrap_or_default(),
        None => String::new(),
    };
    let party = Party::load(tx, customer, &plan).await?;
    let retries = i32::try_from(retries_done).unwrap_or(i32::MAX);
    match next {
        Some(at) => {
            tx.execute_cached(
                "UPDATE dunning_states SET retries_done = $2, next_retry_at = $3 WHERE invoice_id = $1",
                &[&invoice, &retries, &at],
            )
            .await?;
            tx.execute_cached(
                "UPDATE invoices SET next_payment_attempt_at = $2 WHERE id = $1",
                &[&invoice, &at],
            )
            .await?;
            let key = format!("dunning:{invoice}:{}", retries_done + 1);
            schedule(tx, "dunning_retry", &key, sub, Some(invoice), None, at, now).await?;
            if let Some(s) = sub {
                set_status(tx, s, &["active"], "past_due", None, now, &party).await?;
            }
        }
        None => {
            tx.execute_cached(
                "UPDATE dunning_states SET status = 'exhausted', retries_done = $2, next_retry_at = NULL, ended_at = $3 \
                 WHERE invoice_id = $1",
                &[&invoice, &retries, &now],
            )
            .await?;
            tx.execute_cached(
                "UPDATE invoices SET next_payment_attempt_at = NULL WHERE id = $1",
                &[&invoice],
            )
            .await?;
            if dunning.final_action == "cancel" {
                write_off(tx, invoice, customer, now).await?;
                if let Some(s) = sub {
                    // Usage accepted before the end is still billed, once.
                    let current = model::load_subscription(tx, s).await?;
                    let price: Uuid = current.price_id.parse().unwrap_or_default();
                    if let Some(line) = crate::usage::final_line(tx, s, price, now).await? {
                        let final_invoice = NewInvoice::final_usage(&party, s, &current.currency, line, now);
                        invoices::issue(tx, now, final_invoice).await?;
                    }
                    set_status(
                        tx,
                        s,
                        &["past_due", "active"],
                        "canceled",
                        Some("payment_failed"),
                        now,
                        &party,
                    )
                    .await?;
                    recognize_revenue(tx, s, now).await?;
                    cancel_jobs(tx, s, now, job).await?;
                }
            } else if let Some(s) = sub {
                set_status(tx, s, &["past_due"], "unpaid", None, now, &party).await?;
            }
        }
    }
    // The payment.failed event of this attempt says what happens next.
    announce_next_retry(tx, invoice, next, next.is_none()).await
}
