//! A price as subscriptions, plan changes and the scheduler read it (with
//! its plan's name and whether both are active), below all of them.

use tenx_common::db::Prepared;
use uuid::Uuid;

use crate::error::BillingError;
use crate::periods;

/// A price as subscriptions need it.
#[derive(Debug, Clone)]
pub struct PriceRow {
    pub id: Uuid,
    /// The product: one trial per customer per plan.
    pub plan_id: Uuid,
    pub currency: String,
    pub amount_minor: i64,
    pub months: i64,
    pub trial_days: Option<u32>,
    pub active: bool,
    pub plan_name: String,
    pub interval: String,
}

pub async fn price<C: Prepared>(db: &C, id: Uuid) -> Result<PriceRow, BillingError> {
    let row = db
        .query_opt_cached(
            "SELECT p.id, p.currency, p.unit_amount_minor, p.billing_interval, p.interval_count, p.trial_days, \
                    p.active AND pl.active AS active, pl.name, p.plan_id FROM prices p JOIN plans pl ON pl.id = p.plan_id WHERE p.id = $1",
            &[&id],
        )
        .await?
        .ok_or(BillingError::NotFound("price"))?;
    let interval: String = row.get(3);
    Ok(PriceRow {
        id: row.get(0),
        currency: row.get::<_, String>(1).trim().to_owned(),
        amount_minor: row.get(2),
        months: periods::months_per_period(&interval, row.get(4)),
        trial_days: row.get::<_, Option<i32>>(5).and_then(|d| u32::try_from(d).ok()),
        active: row.get(6),
        plan_name: row.get(7),
        plan_id: row.get(8),
        interval,
    })
}
