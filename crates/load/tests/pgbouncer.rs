//! The services through a real PgBouncer in transaction mode: Debian's
//! 1.18, which keeps no named prepared statement from one transaction to
//! the next and refuses startup options, with two server connections per
//! database shared by every client connection. With `database.pooling =
//! "transaction"` every flow works through it; a pooler that does not put
//! connections in the service's schema is refused with a clear error.
//!
//! Its own test binary, so its own process: the statement mode is per
//! process (see `tenx_common::db::Prepared`).

use std::time::Duration;

use tenx_common::db::{Db, DbSettings, Pooling};
use tenx_common::metrics::Metrics;
use tenx_load::Options;
use tenx_load::door::{Services, Target};
use tenx_load::engine::{Mode, Plan};
use tenx_load::report::Report;
use tenx_load::scenario::NAMES;
use tenx_test_platform::Platform;
use tenx_test_support::{Bounced, TestDb, TestPgBouncer};

async fn run(platform: &Platform, scenario: &str) -> anyhow::Result<Report> {
    let services = Services {
        auth: platform.auth.grpc_addr,
        billing: platform.billing.grpc_addr,
        notification: platform.notification.grpc_addr,
    };
    let options = Options {
        scenario: scenario.into(),
        target: Target::Direct,
        addr: services.auth,
        services,
        operator_secret: Some(tenx_auth::testing::client_secret("operator")),
        users: 8,
        seeded: None,
        plan: Plan {
            mode: Mode::Closed { in_flight: 8 },
            duration: Duration::from_secs(1),
            max_requests: 100_000,
        },
        connections: 2,
        json: None,
        plots: None,
        allow_hosts: Vec::new(),
    };
    tenx_load::run(&options).await
}

async fn count(url: &str, sql: &str) -> anyhow::Result<i64> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client.query_one(sql, &[]).await?.get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flow_works_through_a_transaction_pooler() -> anyhow::Result<()> {
    let platform = Platform::start_behind_pgbouncer().await?;
    let mut subscribed = 0;
    for scenario in NAMES {
        let report = run(&platform, scenario).await?;
        assert_eq!(report.errors, 0, "{scenario} through PgBouncer: {:?}", report.error_kinds);
        assert!(report.requests > 0, "{scenario} made no request");
        if scenario == "subscribe" {
            subscribed = report.requests;
        }
    }
    // What the calls claimed is in the databases: every subscription
    // charged, and every event auth wrote to its outbox relayed.
    let paid = count(
        &platform.billing_db_url(),
        "SELECT count(*) FROM billing.invoices i JOIN billing.subscriptions s ON s.id = i.subscription_id \
         WHERE i.status = 'paid' AND s.status = 'active'",
    )
    .await?;
    assert!(paid as u64 >= subscribed && subscribed > 0, "{paid} paid subscriptions for {subscribed} calls");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let unsent = count(&platform.auth_db_url(), "SELECT count(*) FROM auth.tenx_outbox_pending").await?;
        if unsent == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{unsent} events still in auth's outbox");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And it all went through PgBouncer, primary and replica alike.
    let bouncer = platform.pgbouncer.as_ref().expect("behind PgBouncer");
    for url in [platform.auth_db_url(), platform.billing_db_url(), platform.notify_db_url()] {
        let db = url.rsplit('/').next().unwrap_or_default().to_owned();
        assert!(bouncer.transactions(&db).await? > 0, "{db}: no transaction through PgBouncer");
    }
    let auth_db = platform.auth_db_url().rsplit('/').next().unwrap_or_default().to_owned();
    assert!(bouncer.transactions(&format!("{auth_db}_replica")).await? > 0, "auth's reads skipped PgBouncer");
    Ok(())
}

#[tokio::test]
async fn a_pooler_that_leaves_connections_outside_the_schema_is_refused() -> anyhow::Result<()> {
    let db = TestDb::of_service::<tenx_auth::App>("auth").await?;
    let bouncer = TestPgBouncer::start(&[Bounced {
        alias: "plain".into(),
        database: db.name().to_owned(),
        replica: false,
        schema: None,
    }])
    .await?;
    let mut settings = DbSettings::new(&bouncer.url("plain"), None, "auth");
    settings.pooling = Pooling::Transaction;
    let pool = Db::connect(&settings, "pgbouncer-test", &Metrics::default())?;
    let refused = pool.write().await.expect_err("a connection outside the auth schema");
    let message = refused.to_string();
    assert!(message.contains("schema `auth`") && message.contains("connect_query"), "{message}");
    // Migrations need a session: behind a transaction pooler they need
    // their own URL, and say so.
    let refused = settings.migrate_url().expect_err("no migrate_url");
    assert!(refused.to_string().contains("database.migrate_url"), "{refused}");
    Ok(())
}
