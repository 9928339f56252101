//! The catalog: plans and their prices, seeded and changed only by
//! migrations (prices are immutable; a new price replaces an old one). Read
//! from the database at most once a minute per instance.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tenx_common::db::Prepared;

use tenx_common::db::Db;
use tenx_proto::billing::v1 as pb;
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::error::BillingError;

const FRESH_FOR: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct Catalog {
    db: Arc<Db>,
    default_trial_days: u32,
    loaded: Mutex<Option<(Instant, Arc<Vec<pb::Plan>>)>>,
}

fn interval(raw: &str) -> pb::BillingInterval {
    match raw {
        "month" => pb::BillingInterval::Month,
        "year" => pb::BillingInterval::Year,
        _ => pb::BillingInterval::Unspecified,
    }
}

impl Catalog {
    pub fn new(db: Arc<Db>, default_trial_days: u32) -> Self {
        Self { db, default_trial_days, loaded: Mutex::new(None) }
    }

    /// Every plan with every price, in display order.
    pub async fn plans(&self) -> Result<Arc<Vec<pb::Plan>>, BillingError> {
        let mut loaded = self.loaded.lock().await;
        if let Some((at, plans)) = loaded.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(plans.clone());
        }
        let plans = Arc::new(self.load().await?);
        *loaded = Some((Instant::now(), plans.clone()));
        Ok(plans)
    }

    async fn load(&self) -> Result<Vec<pb::Plan>, BillingError> {
        let conn = self.db.read(None).await?;
        let prices = conn
            .query_cached(
                "SELECT id, plan_id, lookup_key, currency, unit_amount_minor, billing_interval, interval_count, \
                        trial_days, meter, usage_unit_amount_minor, usage_package_size, active, created_at \
                 FROM prices ORDER BY active DESC, currency, billing_interval, unit_amount_minor, lookup_key",
                &[],
            )
            .await?;
        let plans = conn
            .query_cached(
                "SELECT id, code, name, description, active, created_at FROM plans ORDER BY sort_order, code",
                &[],
            )
            .await?;
        Ok(plans
            .iter()
            .map(|p| {
                let id: Uuid = p.get("id");
                pb::Plan {
                    id: id.to_string(),
                    code: p.get("code"),
                    name: p.get("name"),
                    description: p.get("description"),
                    active: p.get("active"),
                    created_at: Some(p.get::<_, SystemTime>("created_at").into()),
                    prices: prices
                        .iter()
                        .filter(|r| r.get::<_, Uuid>("plan_id") == id)
                        .map(|r| pb::Price {
                            id: r.get::<_, Uuid>("id").to_string(),
                            plan_id: id.to_string(),
                            lookup_key: r.get("lookup_key"),
                            currency: r.get::<_, String>("currency").trim().to_owned(),
                            unit_amount_minor: r.get("unit_amount_minor"),
                            interval: interval(r.get("billing_interval")) as i32,
                            interval_count: u32::try_from(r.get::<_, i32>("interval_count")).unwrap_or(1),
                            trial_days: r
                                .get::<_, Option<i32>>("trial_days")
                                .and_then(|d| u32::try_from(d).ok())
                                .unwrap_or(self.default_trial_days),
                            metered: r.get::<_, Option<String>>("meter").map(|meter| pb::MeteredComponent {
                                meter,
                                unit_amount_minor: r
                                    .get::<_, Option<i64>>("usage_unit_amount_minor")
                                    .unwrap_or(0),
                                package_size: r.get::<_, Option<i64>>("usage_package_size").unwrap_or(1),
                            }),
                            active: r.get("active"),
                            created_at: Some(r.get::<_, SystemTime>("created_at").into()),
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// Active plans with their active prices in `currency` (or in every
    /// currency), a page at a time.
    pub async fn list(
        &self,
        currency: Option<&str>,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListPlansResponse, BillingError> {
        let limit = match page_size {
            0 => 20,
            1..=100 => page_size as usize,
            _ => return Err(BillingError::invalid("page_size", "must be at most 100")),
        };
        // The token is the last plan code of the previous page (its form is
        // the contract's); a code that no longer lists ends the listing.
        let after = (!page_token.is_empty()).then(|| page_token.to_owned());
        let plans = self.plans().await?;
        let visible: Vec<pb::Plan> = plans
            .iter()
            .filter(|p| p.active)
            .map(|p| pb::Plan {
                prices: p
                    .prices
                    .iter()
                    .filter(|price| price.active && currency.is_none_or(|c| price.currency == c))
                    .cloned()
                    .collect(),
                ..p.clone()
            })
            .filter(|p| !p.prices.is_empty())
            .collect();
        let start = match &after {
            None => 0,
            Some(code) => visible.iter().position(|p| &p.code == code).map_or(visible.len(), |i| i + 1),
        };
        let page: Vec<pb::Plan> = visible.iter().skip(start).take(limit).cloned().collect();
        let next_page_token = if start + page.len() < visible.len() {
            page.last().map(|p| p.code.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListPlansResponse { plans: page, next_page_token })
    }

    /// One plan with all its prices, inactive ones too.
    pub async fn get(&self, plan_id: Uuid) -> Result<pb::Plan, BillingError> {
        self.plans()
            .await?
            .iter()
            .find(|p| p.id == plan_id.to_string())
            .cloned()
            .ok_or(BillingError::NotFound("plan"))
    }

    /// Whether `code` is a currency of the catalog.
    pub async fn has_currency(&self, code: &str) -> Result<bool, BillingError> {
        Ok(self.plans().await?.iter().any(|p| p.prices.iter().any(|price| price.currency == code)))
    }
}
