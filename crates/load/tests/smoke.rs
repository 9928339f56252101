//! A few seconds of every scenario against each service itself (a whole
//! test platform: auth, billing and notification on their own databases,
//! Redis prefixes and broker names): no errors, the figures add up, and
//! the JSON and the three plots are written. `make test` runs it.

use std::path::Path;
use std::time::Duration;

use tenx_load::door::{Services, Target};
use tenx_load::engine::{Mode, Plan};
use tenx_load::scenario::NAMES;
use tenx_load::{Options, cli};
use tenx_test_platform::Platform;

fn services(platform: &Platform) -> Services {
    Services {
        auth: platform.auth.grpc_addr,
        billing: platform.billing.grpc_addr,
        notification: platform.notification.grpc_addr,
    }
}

fn options(scenario: &str, services: Services, mode: Mode, dir: &Path) -> Options {
    Options {
        scenario: scenario.into(),
        target: Target::Direct,
        addr: services.auth,
        services,
        operator_secret: Some(tenx_auth::testing::client_secret("operator")),
        users: 16,
        seeded: None,
        plan: Plan { mode, duration: Duration::from_millis(1_500), max_requests: 100_000 },
        connections: 2,
        json: Some(dir.join(format!("{scenario}.json"))),
        plots: Some(dir.to_path_buf()),
        allow_hosts: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_against_the_services_without_errors_and_writes_its_json_and_plots()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let dir = std::env::temp_dir().join(format!("tenx-load-{}", uuid::Uuid::new_v4().simple()));
    let modes = [
        Mode::Open { rate: 400.0, max_in_flight: 1_000 },
        Mode::Closed { in_flight: 8 },
        Mode::Closed { in_flight: 4 },
        Mode::Closed { in_flight: 4 },
        Mode::Open { rate: 50.0, max_in_flight: 1_000 },
        Mode::Closed { in_flight: 8 },
    ];
    for (scenario, mode) in NAMES.iter().zip(modes) {
        let report = tenx_load::run(&options(scenario, services(&platform), mode, &dir)).await?;
        assert_eq!(report.errors, 0, "{scenario}: {:?}", report.error_kinds);
        assert!(report.requests > 0, "{scenario} made no request");
        let per_second: u64 = report.timeline.iter().map(|t| t.ok + t.errors).sum();
        assert_eq!(per_second, report.requests, "{scenario}: the timeline counts every answer");
        assert!(report.latency_ms["p50"] <= report.latency_ms["p99"]);
        if let Mode::Open { rate, .. } = mode {
            // An open loop sends at its rate whatever the answers do.
            let expected = rate * 1.5;
            assert!(
                (report.requests as f64) > expected * 0.8,
                "{scenario}: {} of {expected}",
                report.requests
            );
        }
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(format!("{scenario}.json")))?)?;
        assert_eq!(json["requests"], report.requests);
        for plot in ["latency", "spectrum", "throughput"] {
            let png = std::fs::read(dir.join(format!("{scenario}-direct-{plot}.png")))?;
            assert!(png.starts_with(b"\x89PNG"), "{scenario}-{plot} is a PNG");
        }
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_scenario_claims_is_checked_against_the_platform() -> anyhow::Result<()> {
    // A subscription the load tool calls paid is one billing really
    // charged (notify's delivery is its own inbox check); and without the
    // operator's right secret, notify does not run at all.
    let platform = Platform::start().await?;
    let dir = std::env::temp_dir().join(format!("tenx-load-{}", uuid::Uuid::new_v4().simple()));
    let mut o = options("subscribe", services(&platform), Mode::Closed { in_flight: 2 }, &dir);
    o.plan.max_requests = 6;
    o.plots = None;
    let report = tenx_load::run(&o).await?;
    assert_eq!((report.requests, report.errors), (6, 0), "{:?}", report.error_kinds);
    let billing = tokio_postgres::connect(&platform.billing_db_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(billing.1);
    let paid: i64 = billing
        .0
        .query_one(
            "SELECT count(*) FROM billing.invoices i JOIN billing.subscriptions s ON s.id = i.subscription_id \
             WHERE i.status = 'paid' AND s.status = 'active'",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(paid, 6, "every subscribe call left an active subscription with a paid invoice");

    o.scenario = "notify".into();
    o.operator_secret = Some("not the operator's secret".into());
    let refused = tenx_load::run(&o).await.expect_err("a wrong operator secret");
    assert!(refused.to_string().contains("Unauthenticated"), "{refused:#}");
    o.operator_secret = None;
    let refused = tenx_load::run(&o).await.expect_err("no operator secret");
    assert!(refused.to_string().contains("TENX_LOAD_OPERATOR_SECRET"), "{refused:#}");
    Ok(())
}

#[tokio::test]
async fn only_loopback_is_loaded_unless_a_host_is_allowed() -> anyhow::Result<()> {
    for args in [
        ["run", "me", "--addr", "10.1.2.3:50051", "--duration", "1s"],
        ["run", "me", "--target", "direct", "--billing-addr", "10.1.2.3:50052"],
    ] {
        let Ok(cli::Command::Run(mut o)) = cli::parse(args.map(String::from)) else {
            panic!("a valid command line");
        };
        let refused = tenx_load::run(&o).await.expect_err("not loopback");
        assert!(refused.to_string().contains("--allow-host"), "{refused}");
        o.allow_hosts.push("10.1.2.3".parse()?);
        assert!(tenx_load::check_target(o.addr, &o.allow_hosts).is_ok());
    }
    Ok(())
}
