//! Plan changes and cancellations: direction, timing, and proration in
//! integer arithmetic (half-to-even, each line rounded on its own, so the
//! lines always add up to the total).

use std::time::SystemTime;
use tenx_common::db::Prepared;

use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::invoices::{self, NewInvoice, NewLine, Party, enqueue};
use crate::jobs::{self, schedule_period_end};
use crate::model;
use crate::periods;
use crate::prices::{self, PriceRow};

/// `n / d` rounded half to even (banker's rounding), for `n ≥ 0, d > 0`.
pub fn round_half_even(n: i128, d: i128) -> i128 {
    let (q, r) = (n / d, n % d);
    if 2 * r > d || (2 * r == d && q % 2 == 1) { q + 1 } else { q }
}

/// The part of `amount` for `remaining` of `length` seconds.
pub fn prorate(amount: i64, remaining: i64, length: i64) -> i64 {
    let share = round_half_even(i128::from(amount) * i128::from(remaining.max(0)), i128::from(length.max(1)));
    i64::try_from(share).unwrap_or(i64::MAX)
}

/// An upgrade costs more per month without shortening the interval
/// (yearly → monthly is a downgrade even when dearer per month).
pub fn is_upgrade(old: &PriceRow, new: &PriceRow) -> bool {
    i128::from(new.amount_minor) * i128::from(old.months)
        > i128::from(old.amount_minor) * i128::from(new.months)
        && new.months >= old.months
}

fn seconds(a: SystemTime, b: SystemTime) -> i64 {
    b.duration_since(a).map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)).unwrap_or(0)
}

/// Config defaults of ChangePlan.
#[derive(Debug, Clone)]
pub struct Rules {
    pub proration_always_invoice: bool,
    pub upgrade_now: bool,
    pub downgrade_now: bool,
}

/// The locked subscription row a change needs.
#[derive(Debug)]
pub struct Locked {
    pub id: Uuid,
    pub customer: Uuid,
    pub status: String,
    pub price: PriceRow,
    pub pending: Option<Uuid>,
    pub period: (SystemTime, SystemTime),
    pub cancel_at_period_end: bool,
}

/// Locks the caller's subscription (NOT_FOUND when it is not theirs).
pub async fn lock<C: Prepared>(tx: &C, sub: Uuid, user: Uuid) -> Result<Locked, BillingError> {
    let row = tx
        .query_opt_cached(
            "SELECT s.customer_id, s.status, s.price_id, s.pending_price_id, s.current_period_start, \
                    s.current_period_end, s.cancel_at_period_end FROM subscriptions s \
             JOIN customers c ON c.id = s.customer_id WHERE s.id = $1 AND c.user_id = $2 FOR UPDATE OF s",
            &[&sub, &user],
        )
        .await?
        .ok_or(BillingError::NotFound("subscription"))?;
    Ok(Locked {
        id: sub,
        customer: row.get(0),
        status: row.get(1),
        price: prices::price(tx, row.get(2)).await?,
        pending: row.get(3),
        period: (row.get(4), row.get(5)),
        cancel_at_period_end: row.get(6),
    })
}

/// What a change did.
#[derive(Debug)]
pub struct Change {
    pub direction: pb::ChangeDirection,
    pub effective_at: SystemTime,
    /// The proration invoice, when one was issued.
    pub invoice: Option<Uuid>,
}

/// ChangePlan's transaction (the charge of its invoice follows).
pub async fn change_plan<C: Prepared>(
    tx: &C,
    now: SystemTime,
    rules: &Rules,
    sub: &Locked,
    new: &PriceRow,
    timing: pb::ChangeTiming,
    proration: pb::ProrationBehavior,
) -> Result<Change, BillingError> {
    if !matches!(sub.status.as_str(), "active" | "trialing") || sub.cancel_at_period_end {
        return Err(BillingError::refused(
            "SUBSCRIPTION_NOT_CHANGEABLE",
            format!(
                "a {} subscription{} cannot change plan",
                sub.status,
                if sub.cancel_at_period_end { " ending at period end" } else { "" }
            ),
        ));
    }
    if !new.active {
        return Err(BillingError::refused("PRICE_INACTIVE", "this price can no longer be subscribed to"));
    }
    if new.currency != sub.price.currency {
        return Err(BillingError::refused(
            "CURRENCY_MISMATCH",
            format!("the subscription bills in {}; the price is in {}", sub.price.currency, new.currency),
        ));
    }
    change_waiting(tx, sub.id).await?;
    let party = Party::load(tx, sub.customer, &new.plan_name).await?;
    let direction = if is_upgrade(&sub.price, new) {
        pb::ChangeDirection::Upgrade
    } else {
        pb::ChangeDirection::Downgrade
    };
    if new.id == sub.price.id {
        if sub.pending.is_none() {
            return Err(BillingError::refused(
                "ALREADY_ON_PRICE",
                "the subscription is already on this price",
            ));
        }
        // Back to the current price: the scheduled change is dropped.
        tx.execute_cached(
            "UPDATE subscriptions SET pending_price_id = NULL, pending_change_at = NULL, updated_at = $2 WHERE id = $1",
            &[&sub.id, &now],
        )
        .await?;
        announce(tx, sub, &party).await?;
        return Ok(Change { direction, effective_at: now, invoice: None });
    }
    let immediately = match timing {
        pb::ChangeTiming::Immediately => true,
        pb::ChangeTiming::PeriodEnd => false,
        pb::ChangeTiming::Unspecified => {
            if direction == pb::ChangeDirection::Upgrade {
                rules.upgrade_now
            } else {
                rules.downgrade_now
            }
        }
    };
    let upgrade = direction == pb::ChangeDirection::Upgrade;
    // During a trial nothing is billed yet, so nothing is prorated: a
    // downgrade (or a change that costs nothing) keeps the trial.
    if (sub.status == "trialing" && !(upgrade && new.amount_minor > 0))
        || (sub.status != "trialing"
            && immediately
            && new.months == sub.price.months
            && !prorates(rules, proration))
    {
        bill_usage_so_far(tx, now, sub, &party).await?;
        tx.execute_cached(
            "UPDATE subscriptions SET price_id = $2, pending_price_id = NULL, pending_change_at = NULL, updated_at = $3 \
             WHERE id = $1",
            &[&sub.id, &new.id, &now],
        )
        .await?;
        announce(tx, sub, &party).await?;
        return Ok(Change { direction, effective_at: now, invoice: None });
    }
    if !immediately {
        tx.execute_cached(
            "UPDATE subscriptions SET pending_price_id = $2, pending_change_at = current_period_end, updated_at = $3 \
             WHERE id = $1",
            &[&sub.id, &new.id, &now],
        )
        .await?;
        announce(tx, sub, &party).await?;
        return Ok(Change { direction, effective_at: sub.period.1, invoice: None });
    }

    // Usage so far belongs to the old price: billed on its own invoice, so
    // the change's invoice holds only the change (and can be voided whole
    // if the change is not paid).
    bill_usage_so_far(tx, now, sub, &party).await?;
    let t = periods::whole_second(now).max(sub.period.0);
    let mut lines = Vec::new();
    let (restart, new_period) = if sub.status == "trialing" {
        // An upgrade ends the trial: the new price's first period starts now.
        let period = periods::period(t, new.months, 0);
        (true, period)
    } else {
        let (length, remaining) = (seconds(sub.period.0, sub.period.1), seconds(t, sub.period.1));
        lines.push(NewLine {
            kind: "proration",
            description: format!("Unused time on {} ({}ly)", sub.price.plan_name, sub.price.interval),
            price_id: sub.price.id,
            quantity: 1,
            unit_amount_minor: sub.price.amount_minor,
            amount_minor: -prorate(sub.price.amount_minor, remaining, length),
            period: (t, sub.period.1),
            claim_before: None,
        });
        if new.months == sub.price.months {
            lines.push(NewLine {
                kind: "proration",
                description: format!("Remaining time on {} ({}ly)", new.plan_name, new.interval),
                price_id: new.id,
                quantity: 1,
                unit_amount_minor: new.amount_minor,
                amount_minor: prorate(new.amount_minor, remaining, length),
                period: (t, sub.period.1),
                claim_before: None,
            });
            (false, sub.period)
        } else {
            (true, periods::period(t, new.months, 0))
        }
    };
    if restart {
        lines.push(NewLine {
            kind: "subscription",
            description: format!("{} ({}ly)", new.plan_name, new.interval),
            price_id: new.id,
            quantity: 1,
            unit_amount_minor: new.amount_minor,
            amount_minor: new.amount_minor,
            period: new_period,
            claim_before: None,
        });
    }
    let invoice = invoices::issue(
        tx,
        now,
        NewInvoice {
            party: &party,
            subscription: Some(sub.id),
            reason: "subscription_update",
            currency: &new.currency,
            period: (t, new_period.1),
            lines,
        },
    )
    .await?;
    tx.execute_cached("UPDATE subscriptions SET latest_invoice_id = $2 WHERE id = $1", &[&sub.id, &invoice])
        .await?;
    tx.execute_cached(
        "INSERT INTO plan_changes (invoice_id, subscription_id, from_price_id, to_price_id, restart_at, period_end, \
           ends_trial, status, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, 'pending', $8)",
        &[
            &invoice,
            &sub.id,
            &sub.price.id,
            &new.id,
            &restart.then_some(t),
            &restart.then_some(new_period.1),
            &(sub.status == "trialing"),
            &now,
        ],
    )
    .await?;
    // Nothing to pay (credit covered it, or a credit note): in force now.
    // Otherwise it takes effect when its invoice is paid.
    let due: i64 =
        tx.query_one_cached("SELECT amount_due_minor FROM invoices WHERE id = $1", &[&invoice]).await?.get(0);
    if due <= 0 {
        apply_paid(tx, invoice, now).await?;
    }
    Ok(Change { direction, effective_at: t, invoice: Some(invoice) })
}

/// BUSY while a plan change of `sub` waits for its payment: nothing else
/// may move the subscription (another change, a cancellation, a renewal)
/// until that payment is settled and the change applied or abandoned.
pub async fn change_waiting<C: Prepared>(tx: &C, sub: Uuid) -> Result<(), BillingError> {
    let waiting = tx
        .query_one_cached(
            "SELECT EXISTS (SELECT 1 FROM plan_changes WHERE subscription_id = $1 AND status = 'pending')",
            &[&sub],
        )
        .await?
        .get::<_, bool>(0);
    if waiting {
        return Err(BillingError::Busy {
            reason: "CHANGE_IN_PROGRESS",
            message: "a plan change of this subscription is waiting for its payment".into(),
            retry_after: std::time::Duration::from_secs(1),
        });
    }
    Ok(())
}

/// Bills the usage recorded so far at the current price, on an invoice of
/// its own charged later, before the price changes.
async fn bill_usage_so_far<C: Prepared>(
    tx: &C,
    now: SystemTime,
    sub: &Locked,
    party: &Party,
) -> Result<(), BillingError> {
    let t = periods::whole_second(now).max(sub.period.0);
    if let Some(line) = crate::usage::pending_line(tx, sub.id, sub.price.id, t).await? {
        let usage_invoice = NewInvoice {
            party,
            subscription: Some(sub.id),
            reason: "subscription_update",
            currency: &sub.price.currency,
            period: (line.period.0, t),
            lines: vec![line],
        };
        let id = invoices::issue(tx, now, usage_invoice).await?;
        jobs::charge_later(tx, sub.id, id, now).await?;
    }
    Ok(())
}

/// Puts in force the plan change `invoice` paid for, if one waits on it:
/// the new price (and, for another interval or the end of a trial, a new
/// period from the change), announced. A subscription that ended
/// meanwhile keeps what it had; the change is abandoned.
pub async fn apply_paid<C: Prepared>(tx: &C, invoice: Uuid, now: SystemTime) -> Result<(), BillingError> {
    let Some(change) = tx
        .query_opt_cached(
            "SELECT pc.subscription_id, pc.to_price_id, pc.restart_at, pc.period_end, pc.ends_trial, c.user_id \
             FROM plan_changes pc JOIN subscriptions s ON s.id = pc.subscription_id \
             JOIN customers c ON c.id = s.customer_id WHERE pc.invoice_id = $1 AND pc.status = 'pending' \
             FOR UPDATE OF pc",
            &[&invoice],
        )
        .await?
    else {
        return Ok(());
    };
    let sub = lock(tx, change.get(0), change.get(5)).await?;
    let applies = matches!(sub.status.as_str(), "active" | "trialing" | "past_due");
    tx.execute_cached(
        "UPDATE plan_changes SET status = $2, decided_at = $3 WHERE invoice_id = $1",
        &[&invoice, &if applies { "applied" } else { "abandoned" }, &now],
    )
    .await?;
    if !applies {
        return Ok(());
    }
    let to: Uuid = change.get(1);
    match change.get::<_, Option<SystemTime>>(2) {
        Some(start) => {
            let end: SystemTime = change.get(3);
            let ends_trial: bool = change.get(4);
            tx.execute_cached(
                "UPDATE subscriptions SET price_id = $2, pending_price_id = NULL, pending_change_at = NULL, \
                   billing_cycle_anchor = $3, cycle_index = 0, current_period_start = $3, current_period_end = $4, \
                   status = CASE WHEN $5 THEN 'active' ELSE status END, \
                   trial_end = CASE WHEN $5 THEN $3 ELSE trial_end END, updated_at = $6 WHERE id = $1",
                &[&sub.id, &to, &start, &end, &ends_trial, &now],
            )
            .await?;
            schedule_period_end(tx, sub.id, end, now).await?;
        }
        None => {
            tx.execute_cached(
                "UPDATE subscriptions SET price_id = $2, pending_price_id = NULL, pending_change_at = NULL, \
                   updated_at = $3 WHERE id = $1",
                &[&sub.id, &to, &now],
            )
            .await?;
        }
    }
    let new = prices::price(tx, to).await?;
    let party = Party::load(tx, sub.customer, &new.plan_name).await?;
    announce(tx, &sub, &party).await
}

/// Abandons the plan change `invoice` was for, if one waits on it, after
/// its charge failed: the invoice is voided (its ledger entries reversed)
/// and the subscription keeps its price. Returns whether one was.
pub async fn abandon_unpaid<C: Prepared>(
    tx: &C,
    invoice: Uuid,
    now: SystemTime,
) -> Result<bool, BillingError> {
    let abandoned = tx
        .execute_cached(
            "UPDATE plan_changes SET status = 'abandoned', decided_at = $2 WHERE invoice_id = $1 AND status = 'pending'",
            &[&invoice, &now],
        )
        .await?;
    if abandoned == 1 {
        jobs::void(tx, invoice, now).await?;
    }
    Ok(abandoned == 1)
}

fn prorates(rules: &Rules, proration: pb::ProrationBehavior) -> bool {
    match proration {
        pb::ProrationBehavior::AlwaysInvoice => true,
        pb::ProrationBehavior::None => false,
        pb::ProrationBehavior::Unspecified => rules.proration_always_invoice,
    }
}

async fn announce<C: Prepared>(tx: &C, sub: &Locked, party: &Party) -> Result<(), BillingError> {
    let subscription = model::load_subscription(tx, sub.id).await?;
    let event = party.subscription_updated(subscription, &sub.status, sub.price.id.to_string());
    enqueue(tx, sub.id, &event).await
}

/// CancelSubscription's transaction: scheduled at period end, or now
/// (optionally crediting the unused time). Returns the final invoice.
pub async fn cancel<C: Prepared>(
    tx: &C,
    now: SystemTime,
    sub: &Locked,
    timing: pb::ChangeTiming,
    proration: pb::ProrationBehavior,
) -> Result<Option<Uuid>, BillingError> {
    change_waiting(tx, sub.id).await?;
    let party = Party::load(tx, sub.customer, &sub.price.plan_name).await?;
    if sub.status == "canceled" || (sub.cancel_at_period_end && timing != pb::ChangeTiming::Immediately) {
        return Err(BillingError::refused(
            "SUBSCRIPTION_CANCELED",
            "the subscription has ended or is ending already",
        ));
    }
    if timing != pb::ChangeTiming::Immediately {
        tx.execute_cached(
            "UPDATE subscriptions SET cancel_at_period_end = true, canceled_at = $2, pending_price_id = NULL, \
               pending_change_at = NULL, updated_at = $2 WHERE id = $1",
            &[&sub.id, &now],
        )
        .await?;
        announce(tx, sub, &party).await?;
        return Ok(None);
    }
    let t = periods::whole_second(now).max(sub.period.0);
    let mut lines: Vec<NewLine> =
        crate::usage::final_line(tx, sub.id, sub.price.id, t).await?.into_iter().collect();
    if proration == pb::ProrationBehavior::AlwaysInvoice
        && sub.status == "active"
        && sub.price.amount_minor > 0
    {
        let credit =
            prorate(sub.price.amount_minor, seconds(t, sub.period.1), seconds(sub.period.0, sub.period.1));
        if credit > 0 {
            lines.push(NewLine {
                kind: "proration",
                description: format!("Unused time on {} ({}ly)", sub.price.plan_name, sub.price.interval),
                price_id: sub.price.id,
                quantity: 1,
                unit_amount_minor: sub.price.amount_minor,
                amount_minor: -credit,
                period: (t, sub.period.1),
                claim_before: None,
            });
        }
    }
    let final_invoice = NewInvoice {
        party: &party,
        subscription: Some(sub.id),
        reason: "subscription_cancel",
        currency: &sub.price.currency,
        period: (sub.period.0.min(t), t),
        lines,
    };
    let mut invoice = None;
    if final_invoice.bills_something() {
        let id = invoices::issue(tx, now, final_invoice).await?;
        tx.execute_cached("UPDATE subscriptions SET latest_invoice_id = $2 WHERE id = $1", &[&sub.id, &id])
            .await?;
        jobs::charge_later(tx, sub.id, id, now).await?;
        invoice = Some(id);
    }
    jobs::end_now(tx, sub.id, "requested", now, &party).await?;
    Ok(invoice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proration_rounds_half_to_even_and_in_whole_minor_units() {
        // docs/services/billing.md's worked examples.
        let (l, r) = (2_678_400, 1_771_200); // 31 days, 20.5 left
        assert_eq!((prorate(2000, r, l), prorate(5000, r, l)), (1323, 3306));
        let (l, r) = (2_592_000, 648_000); // 30 days, 7.5 left: a tie
        assert_eq!((prorate(1490, r, l), prorate(4980, r, l)), (372, 1245), "JPY: 372.5 rounds to even");
        assert_eq!(round_half_even(5, 2), 2);
        assert_eq!(round_half_even(7, 2), 4);
        assert_eq!(prorate(9990, 14 * 86_400, 31 * 86_400), 4512, "CLP");
        assert_eq!(prorate(24_990, 14 * 86_400, 31 * 86_400), 11_286);
    }

    #[test]
    fn a_credit_never_exceeds_what_was_billed() {
        for amount in [1, 7, 999, 2000, 49_999] {
            for remaining in [0, 1, 3_600, 86_399, 2_678_399, 2_678_400] {
                assert!(prorate(amount, remaining, 2_678_400) <= amount);
            }
        }
    }
}
