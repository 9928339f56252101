//! `tenx-dev`: every tenx service in one process, for local development.
//!
//! `tenx-dev` (what `make up` runs) creates the local database if needed,
//! applies every service's migrations and runs every service (auth,
//! notification, billing, and the gateway in front of them on http://127.0.0.1:8080
//! and gRPC 127.0.0.1:50050) with its default settings (overridable with `TENX_<SERVICE>__…` variables) until
//! Ctrl-C. `tenx-dev migrate` only applies the migrations. Services join
//! here as they land.

use std::process::ExitCode;

use tenx_common::config::Secret;
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
            return ExitCode::from(tenx_common::cli::EXIT_USAGE);
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
async fn migrate() -> anyhow::Result<(
    tenx_auth::AuthSettings,
    tenx_notification::NotificationSettings,
    tenx_billing::BillingSettings,
)> {
    let auth = tenx_auth::AuthSettings::load(None)?;
    let notification = tenx_notification::NotificationSettings::load(None)?;
    // A development deployment: billing's simulated provider (refused in
    // production) unless the environment names another.
    let billing = tenx_billing::BillingSettings::load_development()?;
    for url in [&auth.database.primary_url, &notification.database.primary_url, &billing.database.primary_url]
    {
        ensure_database(url.expose()).await?;
    }
    tenx_auth::migrate(&auth).await?;
    tenx_notification::migrate(&notification).await?;
    tenx_billing::migrate(&billing).await?;
    println!("tenx-dev: migrations applied (auth, notification, billing)");
    Ok((auth, notification, billing))
}

async fn run() -> anyhow::Result<()> {
    let (mut auth, mut notification, mut billing) = migrate().await?;
    let mut gateway = tenx_gateway::GatewaySettings::load(None)?;
    // Each service calls others as itself with a service token from auth,
    // for a client secret only the two of them know. Here, one process:
    // fresh secrets each start, unless set in the environment.
    for (name, secret) in [
        ("gateway", &mut gateway.authn.client_secret),
        ("billing", &mut billing.authn.client_secret),
        ("notification", &mut notification.authn.client_secret),
    ] {
        if secret.expose().is_empty() {
            let fresh = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
            *secret = Secret::new(fresh);
        }
        auth.service_clients.insert(name.to_owned(), secret.clone());
    }
    let telemetry = tenx_common::telemetry::init("tenx-dev", &auth.telemetry)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals()?;
    // One registry per service: each serves its own /metrics.
    let auth = tenx_auth::App::build(auth, Metrics::default()).await?.spawn(shutdown.child()).await?;
    println!("tenx-dev: auth gRPC on {} (metrics and health on http://{})", auth.grpc_addr, auth.admin_addr);
    let notification = tenx_notification::App::build(notification, Metrics::default())
        .await?
        .spawn(shutdown.child())
        .await?;
    println!(
        "tenx-dev: notification gRPC on {} (metrics and health on http://{})",
        notification.grpc_addr, notification.admin_addr
    );
    let billing =
        tenx_billing::App::build(billing, Metrics::default()).await?.spawn(shutdown.child()).await?;
    println!(
        "tenx-dev: billing gRPC on {} (metrics and health on http://{})",
        billing.grpc_addr, billing.admin_addr
    );
    let gateway =
        tenx_gateway::App::build(gateway, Metrics::default()).await?.spawn(shutdown.child()).await?;
    println!(
        "tenx-dev: gateway HTTP on http://{} (OpenAPI at /openapi.json), gRPC on {} (metrics and health on http://{})",
        gateway.http_addr, gateway.grpc_addr, gateway.admin_addr
    );
    println!(
        "tenx-dev: emails land in the SMTP sink on 127.0.0.1:2525 (/tmp/tenx-smtp-sink/maildir); Ctrl-C stops"
    );
    let (auth, notification, billing, gateway) =
        tokio::join!(auth.task, notification.task, billing.task, gateway.task);
    shutdown.trigger();
    telemetry.shutdown().await;
    auth??;
    notification??;
    billing??;
    gateway??;
    Ok(())
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
