//! `tenx-dev`: every tenx service in one process, for local development.
//!
//! `tenx-dev` (what `make up` runs) creates the local database if needed,
//! applies every service's migrations and runs every service with its
//! default settings (overridable with `TENX_<SERVICE>__…` variables) until
//! Ctrl-C. `tenx-dev migrate` only applies the migrations. Services join
//! here as they land.

use std::process::ExitCode;

use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;

#[tokio::main]
async fn main() -> ExitCode {
    let command = std::env::args().nth(1);
    let result = match command.as_deref() {
        None | Some("run") => run().await,
        Some("migrate") => migrate().await.map(|_| ()),
        Some(other) => {
            eprintln!("tenx-dev: unknown command `{other}` (use `run` or `migrate`)");
            return ExitCode::from(64);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tenx-dev: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Loads every service's settings, makes sure their database exists and
/// is migrated.
async fn migrate() -> anyhow::Result<tenx_auth::AuthSettings> {
    let auth = tenx_auth::AuthSettings::load(None)?;
    ensure_database(auth.database.primary_url.expose()).await?;
    tenx_auth::migrate(&auth).await?;
    println!("tenx-dev: migrations applied (auth)");
    Ok(auth)
}

async fn run() -> anyhow::Result<()> {
    let auth = migrate().await?;
    let telemetry = tenx_common::telemetry::init("tenx-dev", &auth.telemetry)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals()?;
    let metrics = Metrics::default();
    let running = tenx_auth::App::build(auth, metrics.clone()).await?.spawn(shutdown.child()).await?;
    println!(
        "tenx-dev: auth gRPC on {} (metrics and health on http://{}); Ctrl-C stops",
        running.grpc_addr, running.admin_addr
    );
    let result = running.task.await?;
    telemetry.shutdown().await;
    Ok(result?)
}

/// Creates the database named in `url` when it does not exist yet (a
/// fresh development machine); connects to `postgres` to do so.
async fn ensure_database(url: &str) -> anyhow::Result<()> {
    let config: tokio_postgres::Config = url.parse()?;
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    if tokio_postgres::connect(url, tokio_postgres::NoTls).await.is_ok() {
        return Ok(());
    }
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    anyhow::ensure!(
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
        "database name {name:?} is not a plain identifier"
    );
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    tracing::info!(database = %name, "created the development database");
    Ok(())
}
