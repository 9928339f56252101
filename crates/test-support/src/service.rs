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
        Self::migrated::<S>(schema, schema, None).await
    }

    /// [`TestDb::of_service`] as it was after `S`'s migration `version`
    /// (and all of `common`'s): the database an installation of that
    /// version has, for tests of the upgrade from it.
    pub async fn of_service_at<S: Service>(schema: &str, version: i32) -> anyhow::Result<Self> {
        Self::migrated::<S>(schema, &format!("{schema}_v{version}"), Some(version)).await
    }

    /// `schema` migrated as `migrate` does it, up to `S`'s migration
    /// `until` if given, from the template `kind`.
    async fn migrated<S: Service>(schema: &str, kind: &str, until: Option<i32>) -> anyhow::Result<Self> {
        let in_schema = schema.to_owned();
        Self::from_template(kind, &host::migrations_fingerprint::<S>(), |url| async move {
            let runner = match (S::migrations(), until) {
                (runner, None) => runner,
                (Some(runner), Some(version)) => Some(runner.set_target(refinery::Target::Version(version))),
                (None, Some(_)) => anyhow::bail!("the service has no migrations"),
            };
            tenx_common::db::migrate(&url, &in_schema, runner).await?;
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
