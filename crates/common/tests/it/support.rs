//! Shared setup for the integration tests.

use tenx_common::db::{self, Db, DbSettings};
use tenx_common::metrics::Metrics;
use tenx_test_support::TestDb;

/// The schema every common test works in.
pub const SCHEMA: &str = "svc";

/// A fresh database with `common`'s tables migrated into [`SCHEMA`].
pub async fn test_db() -> anyhow::Result<TestDb> {
    let fingerprint = db::common_fingerprint();
    TestDb::from_template("common", &fingerprint, |url| async move {
        db::migrate(&url, SCHEMA, None).await?;
        Ok(())
    })
    .await
}

/// Pools on the test database: the real replica, or `replica_url` instead.
pub fn connect(
    test_db: &TestDb,
    replica_url: Option<&str>,
    metrics: &Metrics,
) -> anyhow::Result<Db> {
    let replica = replica_url
        .map(str::to_owned)
        .unwrap_or_else(|| test_db.replica_url());
    let mut settings = DbSettings::new(&test_db.primary_url(), Some(&replica), SCHEMA);
    settings.connect_timeout_ms = 1_000;
    Ok(Db::connect(&settings, "tenx-common-tests", metrics)?)
}

/// The value of the metric line starting with `prefix`, or 0 if absent.
pub fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .render()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}
