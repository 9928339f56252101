//! Issuing invoices: lines, number, credit, ledger and events, all in the
//! caller's transaction — an invoice is never left half-generated (the
//! database refuses to commit a draft or a total that is not the sum of
//! its lines).

use std::time::SystemTime;
use tenx_common::db::Prepared;

use tenx_common::outbox::{self, NewEvent};
use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::ledger::{self, About, Entry};
pub use crate::lines::{MAX_AMOUNT_MINOR, NewLine};
use crate::model;

/// Who an invoice is for, for its events.
#[derive(Debug, Clone)]
pub struct Party {
    pub customer_id: Uuid,
    pub user_id: Uuid,
    pub email: String,
    pub plan_name: String,
}

impl Party {
    /// The body of `billing.subscription.updated` about `subscription` (as
    /// it is now), sent to this party: what it was before, and the plan.
    pub fn subscription_updated(
        &self,
        subscription: pb::Subscription,
        previous_status: &str,
        previous_price_id: String,
    ) -> pb::SubscriptionUpdated {
        pb::SubscriptionUpdated {
            subscription: Some(subscription),
            previous_status: model::subscription_status(previous_status) as i32,
            previous_price_id,
            user_id: self.user_id.to_string(),
            email: self.email.clone(),
            plan_name: self.plan_name.clone(),
        }
    }

    pub async fn load<C: Prepared>(db: &C, customer: Uuid, plan_name: &str) -> Result<Self, BillingError> {
        let row =
            db.query_one_cached("SELECT user_id, email FROM customers WHERE id = $1", &[&customer]).await?;
        Ok(Self {
            customer_id: customer,
            user_id: row.get(0),
            email: row.get(1),
            plan_name: plan_name.to_owned(),
        })
    }
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct NewInvoice<'a> {
    pub party: &'a Party,
    pub subscription: Option<Uuid>,
    /// `subscription_create`, `subscription_cycle`, …
    pub reason: &'static str,
    pub currency: &'a str,
    pub period: (SystemTime, SystemTime),
    pub lines: Vec<NewLine>,
}

impl<'a> NewInvoice<'a> {
    /// The last invoice of `subscription`, which ends at `end`: the usage
    /// `line` still unbilled, from the start of its period.
    pub fn final_usage(
        party: &'a Party,
        subscription: Uuid,
        currency: &'a str,
        line: NewLine,
        end: SystemTime,
    ) -> Self {
        Self {
            party,
            subscription: Some(subscription),
            reason: "subscription_cancel",
            currency,
            period: (line.period.0, end),
            lines: vec![line],
        }
    }

    /// Whether there is anything to bill (free renewals are not issued).
    pub fn bills_something(&self) -> bool {
        self.lines.iter().any(|l| l.amount_minor != 0 || l.kind == "usage")
    }
}

/// Builds, numbers and finalizes an invoice; posts its ledger transaction
/// and writes `billing.invoice.finalized` (and `.paid` when nothing is
/// due). Returns its id.
pub async fn issue<C: Prepared>(tx: &C, now: SystemTime, new: NewInvoice<'_>) -> Result<Uuid, BillingError> {
    let customer = new.party.customer_id;
    let total = new
        .lines
        .iter()
        .try_fold(0i64, |sum, l| sum.checked_add(l.amount_minor))
        .filter(|t| t.abs() <= MAX_AMOUNT_MINOR)
        .ok_or_else(|| {
            BillingError::invalid("lines", "the invoice total is larger than one invoice can bill")
        })?;
    // The customer's credit (from credited prorations) pays first; a
    // negative total becomes credit. The counter's row lock serialises
    // this per customer, so two invoices cannot spend one credit.
    let (seq, prefix): (i64, String) = {
        let row = tx
            .query_one_cached(
                "UPDATE invoice_number_counters n SET last_number = last_number + 1 FROM customers c \
                 WHERE n.customer_id = $1 AND c.id = n.customer_id RETURNING n.last_number, c.invoice_prefix",
                &[&customer],
            )
            .await?;
        (row.get(0), row.get(1))
    };
    let credit: i64 = tx
        .query_one_cached(
            "SELECT COALESCE(-sum(amount_minor), 0)::bigint FROM ledger_entries \
             WHERE customer_id = $1 AND account = 'customer_credit' AND currency::text = $2::text",
            &[&customer, &new.currency],
        )
        .await?
        .get(0);
    let (applied, added) = if total >= 0 { (credit.clamp(0, total), 0) } else { (0, -total) };
    let due = total - applied + added;
    let number = format!("{prefix}-{seq:04}");
    let id = Uuid::now_v7();
    tx.execute_cached(
        "INSERT INTO invoices (id, customer_id, subscription_id, status, billing_reason, currency, total_minor, \
           credit_applied_minor, credit_added_minor, amount_due_minor, period_start, period_end, created_at, updated_at) \
         VALUES ($1, $2, $3, 'draft', $4, $5::text, $6, $7, $8, $9, $10, $11, $12, $12)",
        &[&id, &customer, &new.subscription, &new.reason, &new.currency, &total, &applied, &added, &due, &new.period.0, &new.period.1, &now],
    )
    .await?;
    // Usage lines claim their records now that the invoice exists.
    for line in new.lines.iter().filter(|l| l.kind == "usage") {
        let sub =
            new.subscription.ok_or_else(|| BillingError::Internal("usage without subscription".into()))?;
        crate::usage::claim(tx, sub, id, line.claim_before.unwrap_or(line.period.1), line.quantity).await?;
    }
    for (i, line) in new.lines.iter().enumerate() {
        let line_no = i16::try_from(i + 1).map_err(|_| BillingError::Internal("too many lines".into()))?;
        tx.execute_cached(
            "INSERT INTO invoice_lines (id, invoice_id, line_no, kind, description, price_id, quantity, \
               unit_amount_minor, amount_minor, period_start, period_end) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            &[
                &Uuid::now_v7(),
                &id,
                &line_no,
                &line.kind,
                &line.description,
                &line.price_id,
                &line.quantity,
                &line.unit_amount_minor,
                &line.amount_minor,
                &line.period.0,
                &line.period.1,
            ],
        )
        .await?;
    }
    let paid = due == 0;
    tx.execute_cached(
        "UPDATE invoices SET number_seq = $2, number = $3, status = $4, finalized_at = $5, \
           paid_at = CASE WHEN $6 THEN $5::timestamptz END, updated_at = $5 WHERE id = $1",
        &[&id, &seq, &number, &(if paid { "paid" } else { "open" }), &now, &paid],
    )
    .await?;

    let mut entries = vec![
        Entry::customer("accounts_receivable", customer, due),
        Entry::customer("customer_credit", customer, applied - added),
    ];
    for line in &new.lines {
        entries.push(match (line.kind, new.subscription) {
            ("usage", _) | (_, None) => Entry::plain("revenue_usage", -line.amount_minor),
            (_, Some(sub)) => Entry::deferred(sub, -line.amount_minor),
        });
    }
    if entries.iter().any(|e| e.amount_minor != 0) {
        let about = About { invoice: Some(id), subscription: new.subscription, ..About::default() };
        ledger::post(tx, "invoice_finalized", about, new.currency, &number, &entries, now).await?;
    }

    let invoice = model::load_invoice(tx, id).await?;
    let (amount_due_display, exponent) = model::display(tx, new.currency, due).await?;
    let event = pb::InvoiceFinalized {
        invoice: Some(invoice.clone()),
        user_id: new.party.user_id.to_string(),
        email: new.party.email.clone(),
        amount_due_display,
        currency_exponent: Some(exponent),
    };
    enqueue(tx, id, &event).await?;
    if paid {
        let event = pb::InvoicePaid {
            invoice: Some(invoice),
            user_id: new.party.user_id.to_string(),
            email: new.party.email.clone(),
            amount_paid_display: model::display(tx, new.currency, 0).await?.0,
            plan_name: new.party.plan_name.clone(),
            currency_exponent: Some(exponent),
            ..Default::default()
        };
        enqueue(tx, id, &event).await?;
    }
    Ok(id)
}

/// Writes events to the outbox, in the caller's transaction, in one
/// statement, in their order.
pub async fn enqueue_all<C: Prepared>(tx: &C, events: &[NewEvent]) -> Result<(), BillingError> {
    outbox::enqueue_all(tx, events).await.map_err(|e| BillingError::Internal(format!("outbox: {e}")))?;
    Ok(())
}

/// Writes an event to the outbox, in the caller's transaction.
pub async fn enqueue<C: Prepared, M: tenx_proto::Event>(
    tx: &C,
    aggregate: Uuid,
    payload: &M,
) -> Result<(), BillingError> {
    outbox::enqueue(tx, &NewEvent::of(&aggregate.to_string(), payload))
        .await
        .map_err(|e| BillingError::Internal(format!("outbox: {e}")))?;
    Ok(())
}
