use std::future::Future;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio_postgres::NoTls;

use crate::{cleanup_blocking, env_or, unique_suffix};

/// Test databases older than this are assumed leaked by a killed test run.
const STALE_AFTER: Duration = Duration::from_secs(3 * 3600);

/// A URL for database `db` on the primary (`replica = false`) or replica.
pub fn pg_url(replica: bool, db: &str) -> String {
    let host = pg_host();
    let port = pg_port(replica);
    format!("postgres://postgres@{host}:{port}/{db}")
}

pub(crate) fn pg_host() -> String {
    env_or("TENX_TEST_PG_HOST", "127.0.0.1")
}

pub(crate) fn pg_port(replica: bool) -> u16 {
    let (var, default) =
        if replica { ("TENX_TEST_PG_REPLICA_PORT", "5433") } else { ("TENX_TEST_PG_PORT", "5432") };
    env_or(var, default).parse().unwrap_or(if replica { 5433 } else { 5432 })
}

/// A database of this test's own, on the primary and (by replication) the
/// replica; dropped on `Drop`.
#[derive(Debug)]
pub struct TestDb {
    name: String,
}

impl TestDb {
    /// Copies a fresh database from the template `kind`-`fingerprint`,
    /// building the template first with `build(url)` if no test has yet.
    /// Change `fingerprint` whenever what `build` does changes.
    pub async fn from_template<F, Fut>(kind: &str, fingerprint: &str, build: F) -> anyhow::Result<Self>
    where
        F: FnOnce(String) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let admin = admin_client().await?;
        let template = format!("tenx_tpl_{kind}_{fingerprint}");
        ensure_template(&admin, &template, build).await?;

        let name = format!("tenx_test_{}_{}", now_secs(), unique_suffix());
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .with_context(|| format!("creating test database {name}"))?;
        drop_stale(&admin).await;
        Ok(Self { name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL of this database on the primary.
    pub fn primary_url(&self) -> String {
        pg_url(false, &self.name)
    }

    /// URL of this database on the replica.
    pub fn replica_url(&self) -> String {
        pg_url(true, &self.name)
    }

    /// URL of this database through `port` on loopback (a [`crate::ChaosProxy`]).
    pub fn url_via(&self, port: u16) -> String {
        format!("postgres://postgres@127.0.0.1:{port}/{}", self.name)
    }

    /// Waits until the replica has replayed this database's creation.
    pub async fn wait_for_replica(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            match tokio_postgres::connect(&self.replica_url(), NoTls).await {
                Ok(_) => return Ok(()),
                Err(error) if tokio::time::Instant::now() > deadline => {
                    return Err(error).context("test database never appeared on the replica");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Waits until the replica has replayed the primary's WAL up to
    /// `position` (an LSN such as `0/3000060`), so that a read without a
    /// position finds there what was written before it.
    pub async fn wait_for_replay(&self, position: &str) -> anyhow::Result<()> {
        let (client, conn) = tokio_postgres::connect(&self.replica_url(), NoTls).await?;
        tokio::spawn(conn);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let replayed: bool = client
                .query_one(
                    "SELECT COALESCE(pg_last_wal_replay_lsn() >= $1::text::pg_lsn, true)",
                    &[&position],
                )
                .await?
                .get(0);
            if replayed {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the replica never replayed up to {position}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        cleanup_blocking(&name.clone(), move || async move {
            let admin = admin_client().await?;
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
            Ok(())
        });
    }
}

async fn admin_client() -> anyhow::Result<tokio_postgres::Client> {
    let url = pg_url(false, "postgres");
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .with_context(|| format!("connecting to the test Postgres primary at {url} (run `make deps`)"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Builds the template under another name and renames it when complete,
/// all under an advisory lock, so parallel test processes build it once
/// and never copy a half-built one.
async fn ensure_template<F, Fut>(
    admin: &tokio_postgres::Client,
    template: &str,
    build: F,
) -> anyhow::Result<()>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    if database_exists(admin, template).await? {
        return Ok(());
    }
    admin.execute("SELECT pg_advisory_lock(hashtext('tenx.test.template'))", &[]).await?;
    let result = async {
        if database_exists(admin, template).await? {
            return Ok(());
        }
        let building = format!("{template}_building");
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {building} WITH (FORCE)")).await?;
        admin.batch_execute(&format!("CREATE DATABASE {building}")).await?;
        build(pg_url(false, &building)).await.with_context(|| format!("building template {template}"))?;
        // The builder's connections may linger a moment after it returns.
        admin.batch_execute(&format!("ALTER DATABASE {building} RENAME TO {template}")).await?;
        Ok(())
    }
    .await;
    admin.execute("SELECT pg_advisory_unlock(hashtext('tenx.test.template'))", &[]).await?;
    result
}

async fn database_exists(admin: &tokio_postgres::Client, name: &str) -> anyhow::Result<bool> {
    Ok(admin.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name]).await?.is_some())
}

/// Drops test databases left behind by killed test runs (best effort).
async fn drop_stale(admin: &tokio_postgres::Client) {
    let cutoff = now_secs().saturating_sub(STALE_AFTER.as_secs());
    let Ok(rows) = admin.query("SELECT datname FROM pg_database WHERE datname LIKE 'tenx_test_%'", &[]).await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let created = name.split('_').nth(2).and_then(|s| s.parse::<u64>().ok());
        if created.is_some_and(|c| c < cutoff) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await;
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
