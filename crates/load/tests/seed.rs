//! `tenx-load seed` against a real platform: the seeded users log in with
//! the load tool's password through auth itself and have their billing
//! customers; seeding again only adds what is missing; and runs over the
//! seeded users (`--seeded`) have no errors.

use std::time::Duration;

use tenx_load::Options;
use tenx_load::door::{Services, Target};
use tenx_load::engine::{Mode, Plan};
use tenx_load::seed::{self, SeedOptions};
use tenx_test_platform::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_users_log_in_and_have_customers_and_a_second_seed_only_adds_the_rest() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut options = SeedOptions {
        users: 2_000,
        auth_addr: platform.auth.grpc_addr,
        auth_db: platform.auth_db_url(),
        auth_schema: platform.auth_settings.database.schema.clone(),
        billing_db: platform.billing_db_url(),
        billing_schema: "billing".into(),
        allow_hosts: Vec::new(),
    };
    let first = seed::seed(&options).await?;
    assert_eq!((first.users_added, first.customers_added), (2_000, 2_000));
    options.users = 5_000;
    let second = seed::seed(&options).await?;
    assert_eq!((second.users_added, second.customers_added), (3_000, 3_000));

    let billing = tokio_postgres::connect(&platform.billing_db_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(billing.1);
    let row = billing
        .0
        .query_one(
            "SELECT count(*), count(DISTINCT invoice_prefix), count(n.customer_id) FROM billing.customers c \
             LEFT JOIN billing.invoice_number_counters n ON n.customer_id = c.id WHERE c.email LIKE 'seed-0%'",
            &[],
        )
        .await?;
    let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(counts, (5_000, 5_000, 5_000), "a customer, its own prefix and counter per seeded user");

    let services = Services {
        auth: platform.auth.grpc_addr,
        billing: platform.billing.grpc_addr,
        notification: platform.notification.grpc_addr,
    };
    for (scenario, users) in [("login", 4), ("me", 50)] {
        let report = tenx_load::run(&Options {
            scenario: scenario.into(),
            target: Target::Direct,
            addr: services.auth,
            services,
            operator_secret: None,
            users,
            seeded: Some(5_000),
            plan: Plan {
                mode: Mode::Closed { in_flight: 4 },
                duration: Duration::from_millis(1_000),
                max_requests: 100_000,
            },
            connections: 1,
            json: None,
            plots: None,
            allow_hosts: Vec::new(),
        })
        .await?;
        assert_eq!(report.errors, 0, "{scenario}: {:?}", report.error_kinds);
        assert!(report.requests > 0);
    }
    Ok(())
}

#[tokio::test]
async fn seed_refuses_a_database_off_loopback() -> anyhow::Result<()> {
    let options = SeedOptions {
        users: 10,
        auth_addr: Services::default().auth,
        auth_db: "postgres://postgres@10.9.8.7:5432/tenx".into(),
        auth_schema: "auth".into(),
        billing_db: "postgres://postgres@127.0.0.1:5432/tenx".into(),
        billing_schema: "billing".into(),
        allow_hosts: Vec::new(),
    };
    let refused = seed::seed(&options).await.expect_err("not loopback");
    assert!(refused.to_string().contains("--allow-host"), "{refused}");
    Ok(())
}
