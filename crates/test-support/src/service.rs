//! A service's own database for a test, migrated as the service's
//! `migrate` command does it, and waiting for a service to stop.

use std::time::Duration;

use tenx_common::host::{self, Running, Service};

use crate::TestDb;

impl TestDb {
    /// A database of service `S`'s own: its `schema` with `common`'s and
    /// `S`'s migrations, cloned from a template built once per migration
    /// set.
    pub async fn of_service<S: Service>(schema: &str) -> anyhow::Result<Self> {
        let in_schema = schema.to_owned();
        Self::from_template(schema, &host::migrations_fingerprint::<S>(), |url| async move {
            tenx_common::db::migrate(&url, &in_schema, S::migrations()).await?;
            Ok(())
        })
        .await
    }
}

/// Waits (up to 30 s) until a service whose shutdown was triggered has
/// stopped and so closed its connections: its test database can then be
/// dropped after them rather than under them (Postgres would end them and
/// each pool would log a connection error).
pub async fn stopped(running: &mut Running) -> anyhow::Result<()> {
    let within = Duration::from_secs(30);
    let outcome = tokio::time::timeout(within, &mut running.task).await;
    outcome.map_err(|_| anyhow::anyhow!("the service did not stop within {within:?}"))???;
    Ok(())
}
