//! Retention: rows past their time to live are deleted in small batches,
//! on a schedule, by every instance at once without stepping on each
//! other (each batch locks its rows with `SKIP LOCKED`, so two instances
//! take disjoint ones and neither waits), and counted in
//! `tenx_retention_pruned_total{service,table}`.
//!
//! Every service prunes its inbox (`retention.inbox_days`) and its
//! published outbox rows (`outbox.retention_hours`); a service adds rules
//! for tables of its own.

use std::time::Duration;

use deadpool_postgres::Pool;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::Deserialize;

use crate::config::{Invalid, Validate};
use crate::db::{Db, DbError, Prepared};
use crate::metrics::{MetricSet, Metrics};
use crate::shutdown::Shutdown;

/// Settings under `retention.`.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// How often each instance prunes (its first run is at a random point
    /// of the first interval, so instances started together spread out).
    #[serde(default = "default_interval_seconds")]
    pub interval_seconds: u64,
    /// Rows deleted per statement: small enough that a batch holds its
    /// locks and writes its WAL only briefly.
    #[serde(default = "default_batch_size")]
    pub batch_size: u32,
    /// Message ids a consumer recorded (`tenx_inbox`) are kept this long:
    /// longer than any redelivery, redrive or replay of the same message.
    #[serde(default = "default_inbox_days")]
    pub inbox_days: u32,
    /// Auth: revoked sessions, and sessions idle past the refresh token's
    /// lifetime, are kept this long after (their refresh tokens go with
    /// them).
    #[serde(default = "default_sessions_days")]
    pub sessions_days: u32,
    /// Auth: one-time codes (email verification, password reset) are kept
    /// this long after they expire.
    #[serde(default = "default_codes_days")]
    pub codes_days: u32,
    /// Notification: in-app notifications are kept this long.
    #[serde(default = "default_notifications_days")]
    pub notifications_days: u32,
    /// Notification: email deliveries and webhook messages in a final
    /// state, and webhook attempts, are kept this long (`ListDeliveries`
    /// shows them until then).
    #[serde(default = "default_deliveries_days")]
    pub deliveries_days: u32,
}

fn default_interval_seconds() -> u64 {
    600
}
fn default_batch_size() -> u32 {
    1_000
}
fn default_inbox_days() -> u32 {
    14
}
fn default_sessions_days() -> u32 {
    30
}
fn default_codes_days() -> u32 {
    7
}
fn default_notifications_days() -> u32 {
    180
}
fn default_deliveries_days() -> u32 {
    30
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            interval_seconds: default_interval_seconds(),
            batch_size: default_batch_size(),
            inbox_days: default_inbox_days(),
            sessions_days: default_sessions_days(),
            codes_days: default_codes_days(),
            notifications_days: default_notifications_days(),
            deliveries_days: default_deliveries_days(),
        }
    }
}

impl Validate for RetentionSettings {
    fn validate(&self) -> Result<(), Invalid> {
        if self.interval_seconds == 0 {
            return Err(Invalid::new("retention.interval_seconds", "must be at least 1"));
        }
        if !(1..=100_000).contains(&self.batch_size) {
            return Err(Invalid::new("retention.batch_size", "must be 1 to 100000"));
        }
        if self.inbox_days == 0 {
            return Err(Invalid::new(
                "retention.inbox_days",
                "must be at least 1 (message ids must outlive redeliveries)",
            ));
        }
        for (key, days) in [
            ("retention.sessions_days", self.sessions_days),
            ("retention.codes_days", self.codes_days),
            ("retention.notifications_days", self.notifications_days),
            ("retention.deliveries_days", self.deliveries_days),
        ] {
            if days == 0 {
                return Err(Invalid::new(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Rows of `table` whose `column` is older than `ttl` (rows where it is
/// NULL are kept), and for which `only` holds, if set (SQL over the
/// table's columns: an outbox row only once published, say).
#[derive(Debug, Clone)]
pub struct Rule {
    pub table: &'static str,
    pub column: &'static str,
    pub ttl: Duration,
    pub only: Option<&'static str>,
}

impl Rule {
    pub fn older(table: &'static str, column: &'static str, ttl: Duration) -> Self {
        Self { table, column, ttl, only: None }
    }

    /// Only the rows for which `predicate` holds as well.
    pub fn only(self, predicate: &'static str) -> Self {
        Self { only: Some(predicate), ..self }
    }

    /// One batch: `$1` seconds of age, at most `$2` rows.
    fn statement(&self) -> String {
        let Rule { table, column, only, .. } = self;
        let only = only.map(|p| format!(" AND ({p})")).unwrap_or_default();
        format!(
            "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} \
             WHERE {column} < now() - make_interval(secs => $1::float8){only} LIMIT $2 FOR UPDATE SKIP LOCKED))"
        )
    }
}

/// `days` days.
pub fn days(days: u32) -> Duration {
    Duration::from_secs(u64::from(days) * 86_400)
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct PrunedLabels {
    service: String,
    table: &'static str,
}

#[derive(Clone, Default)]
struct RetentionMetrics {
    pruned: Family<PrunedLabels, Counter>,
}

impl MetricSet for RetentionMetrics {
    fn register(metrics: &Metrics) -> Self {
        let set = Self::default();
        metrics.register(
            "retention_pruned",
            "Rows deleted past their time to live, by table",
            set.pruned.clone(),
        );
        set
    }
}

/// One service's pruning job.
pub struct Retention {
    pool: Pool,
    service: String,
    rules: Vec<Rule>,
    interval: Duration,
    batch_size: i64,
    metrics: RetentionMetrics,
}

impl std::fmt::Debug for Retention {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retention").field("service", &self.service).field("rules", &self.rules).finish()
    }
}

impl Retention {
    /// The inbox and the published outbox rows (`outbox_hours`), plus
    /// the service's own `rules`, on `db`'s primary.
    pub fn new(
        db: &Db,
        settings: &RetentionSettings,
        outbox_hours: u32,
        rules: Vec<Rule>,
        metrics: &Metrics,
    ) -> Self {
        let mut all = vec![
            Rule::older("tenx_inbox", "processed_at", days(settings.inbox_days)),
            Rule::older("tenx_outbox", "occurred_at", Duration::from_secs(u64::from(outbox_hours) * 3600))
                .only(crate::outbox::published!()),
        ];
        all.extend(rules);
        Self {
            pool: db.primary_pool().clone(),
            service: db.name().to_owned(),
            rules: all,
            interval: Duration::from_secs(settings.interval_seconds),
            batch_size: i64::from(settings.batch_size),
            metrics: metrics.set(),
        }
    }

    /// Prunes every `interval` until `shutdown`, the first time at a random
    /// point of the first interval.
    pub async fn run(self, shutdown: Shutdown) {
        let mut wait = self.interval.mul_f64(fastrand::f64());
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if let Err(error) = self.prune().await {
                tracing::warn!(%error, "retention: pruning failed; trying again next interval");
            }
            wait = self.interval;
        }
    }

    /// Every rule, batch after batch until a batch comes back short.
    /// Returns the rows deleted per table.
    pub async fn prune(&self) -> Result<Vec<(&'static str, u64)>, DbError> {
        let mut pruned = Vec::with_capacity(self.rules.len());
        for rule in &self.rules {
            let statement = rule.statement();
            let age = rule.ttl.as_secs_f64();
            let mut total = 0;
            loop {
                let deleted = {
                    let conn = self.pool.get().await?;
                    conn.execute_cached(&statement, &[&age, &self.batch_size]).await?
                };
                total += deleted;
                let labels = PrunedLabels { service: self.service.clone(), table: rule.table };
                self.metrics.pruned.get_or_create(&labels).inc_by(deleted);
                if deleted < u64::try_from(self.batch_size).unwrap_or(u64::MAX) {
                    break;
                }
            }
            if total > 0 {
                tracing::info!(table = rule.table, rows = total, "retention: pruned");
            }
            pruned.push((rule.table, total));
        }
        Ok(pruned)
    }
}
