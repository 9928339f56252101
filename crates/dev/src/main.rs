//! `tenx-dev`: every tenx service in one process, for local development.
//!
//! `tenx-dev` (what `make up` runs) creates the local database if needed,
//! applies every service's migrations and runs every service (auth,
//! notification, billing, and the gateway in front of them on http://127.0.0.1:8080
//! and gRPC 127.0.0.1:50050) with its default settings (overridable with `TENX_<SERVICE>__…` variables) until
//! Ctrl-C. `tenx-dev migrate` only applies the migrations.
//!
//! `tenx-dev run --instances N` (`make up INSTANCES=N`) runs N of every
//! service, the gateways included, instance i on every default port plus
//! 100 × i (auth 50051, 50151, …; the gateway's HTTP 8080, 8180, …), all on
//! the same databases, Redis and queues: consumers compete for messages,
//! caches are invalidated across instances, rate limits are shared, and
//! every gateway (and billing and notification towards auth) balances
//! over every instance.

use std::process::ExitCode;

use tenx_common::config::Secret;
use tenx_common::host;
use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        None | Some("run") => match instances(&args) {
            Ok(n) => run(n).await,
            Err(usage) => {
                eprintln!("tenx-dev: {usage}");
                return ExitCode::from(tenx_common::cli::EXIT_USAGE);
            }
        },
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
    host::migrate::<tenx_auth::App>(&auth).await?;
    host::migrate::<tenx_notification::App>(&notification).await?;
    host::migrate::<tenx_billing::App>(&billing).await?;
    println!("tenx-dev: migrations applied (auth, notification, billing)");
    Ok((auth, notification, billing))
}

/// `run [--instances N]`: how many of each service (1 to 9).
fn instances(args: &[String]) -> Result<u16, String> {
    match args.get(1..).unwrap_or_default() {
        [] => Ok(1),
        [flag, n] if flag == "--instances" => match n.parse() {
            Ok(n @ 1..=9) => Ok(n),
            _ => Err(format!("--instances takes 1 to 9, not `{n}`")),
        },
        other => Err(format!("unknown arguments {other:?} (use `run [--instances N]` or `migrate`)")),
    }
}

/// ` #n` naming instance `i` when there are several, else nothing.
fn tag(i: u16, instances: u16) -> String {
    if instances > 1 { format!(" #{}", i + 1) } else { String::new() }
}

/// `addr` moved up by `by` ports.
fn shifted(addr: std::net::SocketAddr, by: u16) -> std::net::SocketAddr {
    std::net::SocketAddr::new(addr.ip(), addr.port() + by)
}

/// `http://127.0.0.1:<port>` of the same port shifted for each instance.
fn every_instance(listen: std::net::SocketAddr, instances: u16) -> String {
    (0..instances)
        .map(|i| format!("http://127.0.0.1:{}", listen.port() + 100 * i))
        .collect::<Vec<_>>()
        .join(",")
}

async fn run(instances: u16) -> anyhow::Result<()> {
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
    if instances > 1 {
        // Every caller balances over every instance of what it calls.
        let auth_urls = every_instance(auth.server.listen, instances);
        notification.upstreams.auth.url = auth_urls.clone();
        billing.upstreams.auth.url = auth_urls.clone();
        gateway.upstreams.auth.url = auth_urls;
        gateway.upstreams.notification.url = every_instance(notification.server.listen, instances);
        gateway.upstreams.billing.url = every_instance(billing.server.listen, instances);
    }
    let telemetry = tenx_common::telemetry::init("tenx-dev", &auth.telemetry)?;
    let shutdown = Shutdown::new();
    shutdown.on_signals()?;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..instances {
        tasks.spawn(serve::<tenx_auth::App>("auth", &auth, i, instances, &shutdown).await?);
    }
    for i in 0..instances {
        tasks.spawn(
            serve::<tenx_notification::App>("notification", &notification, i, instances, &shutdown).await?,
        );
        tasks.spawn(serve::<tenx_billing::App>("billing", &billing, i, instances, &shutdown).await?);
    }
    for i in 0..instances {
        let mut settings = gateway.clone();
        let http: std::net::SocketAddr = settings.http.listen.parse()?;
        settings.http.listen = shifted(http, 100 * i).to_string();
        tasks.spawn(serve::<tenx_gateway::App>("gateway", &settings, i, instances, &shutdown).await?);
    }
    println!(
        "tenx-dev: emails land in the SMTP sink on 127.0.0.1:2525 (/tmp/tenx-smtp-sink/maildir); Ctrl-C stops"
    );
    // Every instance runs until the signal; the first to fail stops them all.
    let mut result = Ok(());
    while let Some(ended) = tasks.join_next().await {
        if let Err(error) = ended.map_err(anyhow::Error::from).and_then(|r| r) {
            shutdown.trigger();
            if result.is_ok() {
                result = Err(error);
            }
        }
    }
    shutdown.trigger();
    telemetry.shutdown().await;
    result
}

/// Starts instance `i` of service `S` on its ports + 100 × i, with its own
/// registry (each serves its own /metrics), through the host as its
/// binary would; returns what waits for it to end.
async fn serve<S: host::Service>(
    name: &str,
    settings: &S::Settings,
    i: u16,
    instances: u16,
    shutdown: &Shutdown,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + use<S>> {
    let mut settings = settings.clone();
    let server = S::server_mut(&mut settings);
    server.listen = shifted(server.listen, 100 * i);
    server.admin_listen = shifted(server.admin_listen, 100 * i);
    let running = host::start::<S>(settings, Metrics::default(), shutdown.child()).await?;
    let tag = tag(i, instances);
    println!(
        "tenx-dev: {name}{tag} gRPC on {} (metrics and health on http://{})",
        running.grpc_addr, running.admin_addr
    );
    if let Some(http) = running.http_addr {
        println!("tenx-dev: {name}{tag} HTTP on http://{http} (OpenAPI at /openapi.json)");
    }
    Ok(async move { Ok(running.task.await??) })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn instances_default_to_one_and_take_one_to_nine() {
        assert_eq!(instances(&args("run")), Ok(1));
        assert_eq!(instances(&args("run --instances 2")), Ok(2));
        for bad in ["run --instances 0", "run --instances 10", "run --instances two", "run --replicas 2"] {
            assert!(instances(&args(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_caller_is_given_every_instance_on_its_shifted_port() {
        let listen = std::net::SocketAddr::from(([0, 0, 0, 0], 50051));
        assert_eq!(every_instance(listen, 1), "http://127.0.0.1:50051");
        assert_eq!(
            every_instance(listen, 3),
            "http://127.0.0.1:50051,http://127.0.0.1:50151,http://127.0.0.1:50251"
        );
        assert_eq!(shifted(listen, 100).port(), 50151);
    }
}
