//! Creating subscriptions: with a trial (no invoice yet), free (active at
//! once), or paid (INCOMPLETE with its first invoice and a pending charge,
//! committed before the provider is called).

use std::time::{Duration, SystemTime};
use tenx_common::db::Prepared;

use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::invoices::{self, NewInvoice, NewLine, Party, enqueue};
use crate::model;
use crate::payments::{self, Attempt};
use crate::periods;
use crate::prices::PriceRow;

/// What CreateSubscription decided in its first transaction.
#[derive(Debug)]
pub enum Created {
    /// Nothing to charge (trial or free): the subscription is final.
    Done(Uuid),
    /// INCOMPLETE with its first invoice; this attempt is to be charged.
    Charge(Uuid, Attempt),
}

/// The trial a new subscription gets: the price's own, or one an operator
/// granted (`Custom`), which alone may differ from the price's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trial {
    /// The price's trial, if the customer never had one of this plan.
    Price(u32),
    /// Set by an operator: exactly this, even for a returning customer.
    Custom(u32),
}

/// The first transaction of CreateSubscription.
#[allow(clippy::too_many_arguments)]
pub async fn create<C: Prepared>(
    tx: &C,
    now: SystemTime,
    customer: Uuid,
    price: &PriceRow,
    method: Option<Uuid>,
    trial: Trial,
    policy: payments::Policy,
    incomplete_expiry: Duration,
) -> Result<Created, BillingError> {
    if !price.active {
        return Err(BillingError::refused("PRICE_INACTIVE", "this price can no longer be subscribed to"));
    }
    // One currency per customer, fixed by the first subscription.
    let currency: Option<String> = tx
        .query_one_cached("SELECT currency FROM customers WHERE id = $1 FOR UPDATE", &[&customer])
        .await?
        .get::<_, Option<String>>(0)
        .map(|c| c.trim().to_owned());
    match currency {
        Some(c) if c != price.currency => {
            return Err(BillingError::refused(
                "CURRENCY_MISMATCH",
                format!("this customer is billed in {c}; the price is in {}", price.currency),
            ));
        }
        Some(_) => {}
        None => {
            tx.execute_cached(
                "UPDATE customers SET currency = $2::text, updated_at = $3 WHERE id = $1",
                &[&customer, &price.currency, &now],
            )
            .await?;
        }
    }
    if let Some(m) = method {
        tx.query_opt_cached(
            "SELECT 1 FROM payment_methods WHERE id = $1 AND customer_id = $2 AND detached_at IS NULL",
            &[&m, &customer],
        )
        .await?
        .ok_or(BillingError::NotFound("payment method"))?;
    }
    // One trial per customer per plan (the customer row is locked above, so
    // two concurrent subscriptions cannot both take it).
    let trial_days = match trial {
        Trial::Custom(days) => days,
        Trial::Price(0) => 0,
        Trial::Price(days) => {
            let had_one = tx
                .query_one_cached(
                    "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE customer_id = $1 AND trial_plan_id = $2)",
                    &[&customer, &price.plan_id],
                )
                .await?
                .get::<_, bool>(0);
            if had_one { 0 } else { days }
        }
    };
    let has_method = method.is_some()
        || tx
            .query_one_cached(
                "SELECT default_payment_method_id IS NOT NULL FROM customers WHERE id = $1",
                &[&customer],
            )
            .await?
            .get::<_, bool>(0);
    let paid_now = trial_days == 0 && price.amount_minor > 0;
    if paid_now && !has_method {
        return Err(BillingError::refused(
            "PAYMENT_METHOD_REQUIRED",
            "a paid price without a trial needs a payment method (AddPaymentMethod)",
        ));
    }

    let id = Uuid::now_v7();
    let (status, anchor, cycle, period, trial) = if trial_days > 0 {
        let end = now + Duration::from_secs(u64::from(trial_days) * 86_400);
        ("trialing", end, -1, (now, end), Some((now, end)))
    } else {
        let period = periods::period(now, price.months, 0);
        (if paid_now { "incomplete" } else { "active" }, now, 0, period, None)
    };
    tx.execute_cached(
        "INSERT INTO subscriptions (id, customer_id, price_id, currency, status, billing_cycle_anchor, cycle_index, \
           current_period_start, current_period_end, trial_start, trial_end, default_payment_method_id, created_at, updated_at, \
           trial_plan_id) \
         VALUES ($1, $2, $3, $4::text, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13, $14)",
        &[
            &id,
            &customer,
            &price.id,
            &price.currency,
            &status,
            &anchor,
            &cycle,
            &period.0,
            &period.1,
            &trial.map(|t| t.0),
            &trial.map(|t| t.1),
            &method,
            &now,
            &trial.map(|_| price.plan_id),
        ],
    )
    .await?;
    let party = Party::load(tx, customer, &price.plan_name).await?;
    let mut charge = None;
    if paid_now {
        let line = NewLine {
            kind: "subscription",
            description: format!("{} ({}ly)", price.plan_name, price.interval),
            price_id: price.id,
            quantity: 1,
            unit_amount_minor: price.amount_minor,
            amount_minor: price.amount_minor,
            period,
            claim_before: None,
        };
        let invoice = invoices::issue(
            tx,
            now,
            NewInvoice {
                party: &party,
                subscription: Some(id),
                reason: "subscription_create",
                currency: &price.currency,
                period,
                lines: vec![line],
            },
        )
        .await?;
        tx.execute_cached("UPDATE subscriptions SET latest_invoice_id = $2 WHERE id = $1", &[&id, &invoice])
            .await?;
        let what = payments::Begin { invoice, owner: None, method, initiated_by: "customer", claim: None };
        charge = Some(payments::begin(tx, now, what, policy).await?);
    }
    crate::jobs::schedule_period_end(tx, id, period.1, now).await?;
    if paid_now {
        let expiry = now + incomplete_expiry;
        crate::jobs::schedule(
            tx,
            "incomplete_expiry",
            &format!("incomplete_expiry:{id}"),
            Some(id),
            None,
            None,
            expiry,
            now,
        )
        .await?;
    }
    let event = pb::SubscriptionCreated {
        subscription: Some(model::load_subscription(tx, id).await?),
        user_id: party.user_id.to_string(),
        email: party.email.clone(),
        plan_name: party.plan_name.clone(),
    };
    enqueue(tx, id, &event).await?;
    Ok(match charge {
        Some(attempt) => Created::Charge(id, attempt),
        None => Created::Done(id),
    })
}
