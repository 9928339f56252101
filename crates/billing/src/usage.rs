//! Metered usage: recorded in batches, deduped by (subscription, event
//! id), and claimed — all of it, exactly once — by the next invoice of its
//! subscription whose cut-off is later than the usage.

use std::time::{Duration, SystemTime};
use tenx_common::db::Prepared;

use tenx_proto::billing::v1 as pb;
use uuid::Uuid;

use crate::error::BillingError;
use crate::lines::{MAX_AMOUNT_MINOR, NewLine};

/// Checked input of one record.
#[derive(Debug, Clone)]
pub struct Record {
    pub subscription: Uuid,
    pub event_id: String,
    pub quantity: i64,
    pub at: SystemTime,
}

/// Validates a batch (all or nothing), naming `records[i].<field>`.
pub fn validate(
    records: &[pb::UsageRecord],
    max_batch: usize,
    now: SystemTime,
    max_future: Duration,
) -> Result<Vec<Record>, BillingError> {
    if records.is_empty() || records.len() > max_batch {
        return Err(BillingError::invalid("records", format!("1 to {max_batch} records")));
    }
    records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let field = |name: &str| format!("records[{i}].{name}");
            let subscription = Uuid::parse_str(&r.subscription_id)
                .map_err(|_| BillingError::invalid(field("subscription_id"), "must be a UUID"))?;
            if r.event_id.is_empty()
                || r.event_id.len() > 255
                || !r.event_id.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err(BillingError::invalid(field("event_id"), "1–255 printable ASCII characters"));
            }
            if !(1..=1_000_000_000).contains(&r.quantity) {
                return Err(BillingError::invalid(field("quantity"), "must be 1–1,000,000,000"));
            }
            let at = r
                .timestamp
                .and_then(|t| SystemTime::try_from(t).ok())
                .ok_or_else(|| BillingError::invalid(field("timestamp"), "is required"))?;
            if at > now + max_future {
                return Err(BillingError::invalid(field("timestamp"), "is in the future"));
            }
            Ok(Record { subscription, event_id: r.event_id.clone(), quantity: r.quantity, at })
        })
        .collect()
}

/// Records a batch in one transaction; the outcome of each, in order.
pub async fn record<C: Prepared>(
    tx: &C,
    now: SystemTime,
    records: &[Record],
) -> Result<Vec<pb::UsageRecordResult>, BillingError> {
    let mut ids: Vec<Uuid> = records.iter().map(|r| r.subscription).collect();
    ids.sort_unstable();
    ids.dedup();
    // FOR KEY SHARE: the lock usage's foreign key takes anyway; invoices
    // take FOR UPDATE, so a usage insert and an invoice's claim are ordered.
    let rows = tx
        .query_cached(
            "SELECT s.id, s.status, p.meter IS NOT NULL, s.created_at, \
                    p.usage_unit_amount_minor > COALESCE(p.usage_package_size, 1) AS dear FROM subscriptions s \
             JOIN prices p ON p.id = s.price_id WHERE s.id = ANY($1) FOR KEY SHARE OF s",
            &[&ids],
        )
        .await?;
    if rows.len() != ids.len() {
        return Err(BillingError::NotFound("subscription"));
    }
    for row in &rows {
        let status: String = row.get(1);
        if !matches!(status.as_str(), "trialing" | "active" | "past_due") {
            return Err(BillingError::refused(
                "SUBSCRIPTION_NOT_BILLABLE",
                format!(
                    "subscription {} is {status}: its usage would never be billed",
                    row.get::<_, Uuid>(0)
                ),
            ));
        }
        if !row.get::<_, bool>(2) {
            return Err(BillingError::refused(
                "PRICE_NOT_METERED",
                format!("subscription {} is on a price without usage charges", row.get::<_, Uuid>(0)),
            ));
        }
    }
    for r in records {
        let created: SystemTime = rows
            .iter()
            .find(|row| row.get::<_, Uuid>(0) == r.subscription)
            .map(|row| row.get(3))
            .unwrap_or(now);
        if r.at < created {
            return Err(BillingError::invalid("records.timestamp", "is before the subscription started"));
        }
    }
    let subs: Vec<Uuid> = records.iter().map(|r| r.subscription).collect();
    let events: Vec<String> = records.iter().map(|r| r.event_id.clone()).collect();
    let quantities: Vec<i64> = records.iter().map(|r| r.quantity).collect();
    let times: Vec<SystemTime> = records.iter().map(|r| r.at).collect();
    let accepted = tx
        .query_cached(
            "INSERT INTO usage_records (subscription_id, event_id, quantity, occurred_at, recorded_at) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[]) AS u, (SELECT $5::timestamptz) AS n \
             ON CONFLICT (subscription_id, event_id) DO NOTHING RETURNING subscription_id, event_id",
            &[&subs, &events, &quantities, &times, &now],
        )
        .await?;
    // Whatever a subscription has unbilled must stay billable in one line:
    // past the bound the whole batch is refused (this transaction rolls
    // back), rather than an invoice that could never be issued. Summing
    // the unbilled records costs a scan, so only prices dearer than one
    // minor unit per usage unit are checked: a cheaper one would need 10^15
    // units (a million of the largest records) in one period to overflow.
    let dear: Vec<Uuid> =
        rows.iter().filter(|r| r.get::<_, Option<bool>>(4) == Some(true)).map(|r| r.get(0)).collect();
    let unbillable = if dear.is_empty() {
        None
    } else {
        tx.query_opt_cached(
            "SELECT u.subscription_id FROM usage_records u JOIN subscriptions s ON s.id = u.subscription_id \
             JOIN prices p ON p.id = s.price_id \
             WHERE u.subscription_id = ANY($1) AND u.invoice_id IS NULL \
             GROUP BY u.subscription_id, p.usage_unit_amount_minor, p.usage_package_size \
             HAVING sum(u.quantity) > $2::bigint \
                 OR ceil(sum(u.quantity)::numeric / GREATEST(COALESCE(p.usage_package_size, 1), 1)) \
                    * COALESCE(p.usage_unit_amount_minor, 0) > $3::bigint LIMIT 1",
            &[&dear, &MAX_UNBILLED_QUANTITY, &MAX_AMOUNT_MINOR],
        )
        .await?
    };
    if let Some(row) = unbillable {
        return Err(BillingError::invalid(
            "records.quantity",
            format!(
                "would make subscription {}'s unbilled usage larger than one invoice can bill",
                row.get::<_, Uuid>(0)
            ),
        ));
    }
    let accepted: std::collections::HashSet<(Uuid, String)> =
        accepted.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut results = Vec::with_capacity(records.len());
    let mut seen = std::collections::HashSet::new();
    for r in records {
        let key = (r.subscription, r.event_id.clone());
        let outcome = if accepted.contains(&key) && seen.insert(key.clone()) {
            pb::UsageRecordOutcome::Accepted
        } else {
            let stored = tx
                .query_one_cached(
                    "SELECT quantity, occurred_at FROM usage_records WHERE subscription_id = $1 AND event_id = $2",
                    &[&r.subscription, &r.event_id],
                )
                .await?;
            if stored.get::<_, i64>(0) == r.quantity && stored.get::<_, SystemTime>(1) == r.at {
                pb::UsageRecordOutcome::Duplicate
            } else {
                pb::UsageRecordOutcome::Conflict
            }
        };
        results.push(pb::UsageRecordResult {
            subscription_id: r.subscription.to_string(),
            event_id: r.event_id.clone(),
            outcome: outcome as i32,
        });
    }
    Ok(results)
}

/// Unbilled usage of `sub` before `cut`: its total and earliest time.
/// Late records (from an already invoiced period) are included: they go on
/// the next invoice, never lost. The caller holds the subscription's row
/// lock, which keeps new records out until it commits.
pub async fn unbilled<C: Prepared>(
    tx: &C,
    sub: Uuid,
    cut: SystemTime,
) -> Result<Option<(i64, SystemTime)>, BillingError> {
    let row = tx
        .query_one_cached(
            "SELECT COALESCE(sum(quantity), 0)::bigint, min(occurred_at) FROM usage_records \
             WHERE subscription_id = $1 AND invoice_id IS NULL AND occurred_at < $2",
            &[&sub, &cut],
        )
        .await?;
    let quantity: i64 = row.get(0);
    Ok((quantity > 0).then(|| (quantity, row.get::<_, Option<SystemTime>>(1).unwrap_or(cut))))
}

/// Marks those records billed by `invoice`; the claimed total must be
/// what was invoiced.
pub async fn claim<C: Prepared>(
    tx: &C,
    sub: Uuid,
    invoice: Uuid,
    cut: SystemTime,
    expected: i64,
) -> Result<(), BillingError> {
    let claimed: i64 = tx
        .query_one_cached(
            "WITH claimed AS (UPDATE usage_records SET invoice_id = $2 \
               WHERE subscription_id = $1 AND invoice_id IS NULL AND occurred_at < $3 RETURNING quantity) \
             SELECT COALESCE(sum(quantity), 0)::bigint FROM claimed",
            &[&sub, &invoice, &cut],
        )
        .await?
        .get(0);
    if claimed == expected {
        Ok(())
    } else {
        Err(BillingError::Internal(format!(
            "usage changed under the lock: claimed {claimed}, invoiced {expected}"
        )))
    }
}

/// The usage line of `price` (a metered one) for what is unbilled before
/// `cut`, if anything.
pub async fn pending_line<C: Prepared>(
    tx: &C,
    sub: Uuid,
    price: Uuid,
    cut: SystemTime,
) -> Result<Option<NewLine>, BillingError> {
    line_before(tx, sub, price, cut, cut).await
}

/// The final usage line of a subscription that ends at `end`: every
/// unbilled record, even one timestamped a little after `end` (clock skew
/// allowed by `usage.max_future_seconds`), since no later invoice will come.
pub async fn final_line<C: Prepared>(
    tx: &C,
    sub: Uuid,
    price: Uuid,
    end: SystemTime,
) -> Result<Option<NewLine>, BillingError> {
    line_before(tx, sub, price, end, end + std::time::Duration::from_secs(366 * 86_400)).await
}

async fn line_before<C: Prepared>(
    tx: &C,
    sub: Uuid,
    price: Uuid,
    shown_end: SystemTime,
    cut: SystemTime,
) -> Result<Option<NewLine>, BillingError> {
    let meter = tx
        .query_one_cached(
            "SELECT meter, usage_unit_amount_minor, usage_package_size FROM prices WHERE id = $1",
            &[&price],
        )
        .await?;
    let Some(meter_name) = meter.get::<_, Option<String>>(0) else { return Ok(None) };
    let Some((quantity, first)) = unbilled(tx, sub, cut).await? else { return Ok(None) };
    let (unit, package): (Option<i64>, Option<i64>) = (meter.get(1), meter.get(2));
    let mut line = line(
        price,
        &meter_name,
        quantity,
        unit.unwrap_or(0),
        package.unwrap_or(1),
        (first.min(shown_end), shown_end),
    )?;
    line.claim_before = Some(cut);
    Ok(Some(line))
}

/// Unbilled units one subscription may hold (RecordUsage refuses more).
pub const MAX_UNBILLED_QUANTITY: i64 = 1_000_000_000_000_000;

/// The usage line for `quantity` units of a metered price: whole packages
/// rounded up, in checked arithmetic (an amount past
/// [`MAX_AMOUNT_MINOR`] is refused, never wrapped).
pub fn line(
    price_id: Uuid,
    meter_name: &str,
    quantity: i64,
    unit: i64,
    package: i64,
    period: (SystemTime, SystemTime),
) -> Result<NewLine, BillingError> {
    let too_large =
        || BillingError::invalid("records.quantity", "the usage is larger than one invoice can bill");
    let package = package.max(1);
    let quantity_billed = quantity.max(0);
    let packages = quantity_billed / package + i64::from(quantity_billed % package != 0);
    let amount = packages.checked_mul(unit).filter(|a| *a <= MAX_AMOUNT_MINOR).ok_or_else(too_large)?;
    Ok(NewLine {
        kind: "usage",
        description: format!("{quantity} {meter_name}"),
        price_id,
        quantity,
        unit_amount_minor: unit,
        amount_minor: amount,
        period,
        claim_before: Some(period.1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_line_bills_whole_packages_and_refuses_an_amount_that_would_overflow() {
        let period = (SystemTime::UNIX_EPOCH, SystemTime::UNIX_EPOCH);
        let amount =
            |q, unit, package| line(Uuid::nil(), "calls", q, unit, package, period).map(|l| l.amount_minor);
        assert_eq!(amount(1, 50, 1000).ok(), Some(50), "a started package is billed");
        assert_eq!(amount(2001, 50, 1000).ok(), Some(150));
        assert_eq!(amount(i64::MAX, 1, 1).ok(), None, "past the bound");
        assert_eq!(amount(1_000_000_000, 99_999_999_999, 1).ok(), None, "10^20 would wrap an i64");
        assert_eq!(amount(i64::MAX, 2, 1).ok(), None, "would wrap");
    }
}
