//! Schema migrations, per service schema, through refinery.
//!
//! Run by an explicit `migrate` step (a Helm hook Job, `make migrate`),
//! never by every replica of a service on start. Two runs at once are
//! safe: a Postgres advisory lock per schema serialises them.

use tokio_postgres::NoTls;

use super::DbError;

mod common_migrations {
    refinery::embed_migrations!("migrations");
}

/// History table of the tables `common` owns (outbox, inbox) in each
/// service schema; a service's own migrations use refinery's default.
const COMMON_HISTORY: &str = "tenx_common_migrations";
const SERVICE_HISTORY: &str = "tenx_migrations";

/// Creates `schema` if needed, then applies `common`'s migrations (outbox,
/// inbox) and the service's own `runner` (from
/// `refinery::embed_migrations!`) inside it.
pub async fn migrate(
    primary_url: &str,
    schema: &str,
    runner: Option<refinery::Runner>,
) -> Result<(), DbError> {
    let schema = schema_ident(schema).map_err(DbError::Settings)?;
    let (mut client, connection) = tokio_postgres::connect(primary_url, NoTls).await?;
    let driver = tokio::spawn(connection);

    let lock_key = format!("tenx.migrate.{schema}");
    client.execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock_key]).await?;
    let result = async {
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"))
            .await?;
        common_migrations::migrations::runner()
            .set_migration_table_name(COMMON_HISTORY)
            .run_async(&mut client)
            .await?;
        if let Some(mut runner) = runner {
            runner.set_migration_table_name(SERVICE_HISTORY).run_async(&mut client).await?;
        }
        Ok::<_, DbError>(())
    }
    .await;
    let unlocked = client.execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock_key]).await;
    drop(client);
    let _ = driver.await;
    result?;
    unlocked?;
    Ok(())
}

/// A checksum of `common`'s migrations, so test templates are rebuilt
/// when they change.
pub fn common_fingerprint() -> String {
    checksum(&common_migrations::migrations::runner())
}

/// A checksum of `common`'s migrations and a service's `runner`: what a
/// test template of that service's schema depends on.
pub fn fingerprint(runner: &refinery::Runner) -> String {
    format!("{}{}", common_fingerprint(), checksum(runner))
}

fn checksum(runner: &refinery::Runner) -> String {
    let sum = runner.get_migrations().iter().fold(0u64, |sum, m| sum.rotate_left(7) ^ m.checksum());
    format!("{sum:016x}")
}

/// `name` if it is a safe unquoted identifier (lowercase letters, digits,
/// `_`; not starting with a digit; at most 63 bytes), else why not.
pub fn schema_ident(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok { Ok(name) } else { Err(format!("`{name}` is not a valid schema name (use [a-z_][a-z0-9_]*)")) }
}
