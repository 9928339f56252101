//! Through the edge: `compare` runs `me` against auth itself and through
//! a real gateway in front of it and prints the ratio; then every
//! scenario that has a public route runs through the gateway's gRPC door
//! and its HTTP API, without errors. (How big the ratio is, is a
//! benchmark's business, not a test's.)

use std::time::Duration;

use tenx_gateway::settings::RouteOverride;
use tenx_load::Options;
use tenx_load::door::{Services, Target};
use tenx_load::engine::{Mode, Plan};
use tenx_load::report::Report;
use tenx_test_platform::Platform;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_through_the_gateway_and_compare_prints_the_edge_ratio() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    // One address and 16 users make every call here: the per-client and
    // per-user limits would refuse most of them (429s that a real run
    // counts as errors, by kind); the limits stay on, higher.
    settings.limits.user_requests = 1_000_000;
    for route in ["auth_signup", "auth_login"] {
        let raised = RouteOverride { requests: Some(100_000), period_seconds: Some(60), timeout_ms: None };
        settings.routes.insert(route.into(), raised);
    }
    let gateway = platform.gateway_with(settings).await?;
    let services = Services {
        auth: platform.auth.grpc_addr,
        billing: platform.billing.grpc_addr,
        notification: platform.notification.grpc_addr,
    };
    let options = |scenario: &str, target, addr| Options {
        scenario: scenario.into(),
        target,
        addr,
        services,
        operator_secret: Some(tenx_auth::testing::client_secret("operator")),
        users: 16,
        seeded: None,
        plan: Plan {
            mode: Mode::Closed { in_flight: 8 },
            duration: Duration::from_millis(1_000),
            max_requests: 100_000,
        },
        connections: 2,
        json: None,
        plots: None,
        allow_hosts: Vec::new(),
    };
    let direct = tenx_load::run(&options("me", Target::Direct, services.auth)).await?;
    let edge = tenx_load::run(&options("me", Target::Gateway, gateway.grpc_addr)).await?;
    let mut reports = vec![direct.clone(), edge.clone()];
    for scenario in ["subscribe", "notify"] {
        reports.push(tenx_load::run(&options(scenario, Target::Gateway, gateway.grpc_addr)).await?);
    }
    for scenario in ["me", "login", "subscribe", "notify", "mixed"] {
        reports.push(tenx_load::run(&options(scenario, Target::Http, gateway.http_addr)).await?);
    }
    for report in &reports {
        let what = format!("{} → {}", report.scenario, report.target);
        assert_eq!(report.errors, 0, "{what}: {:?}", report.error_kinds);
        assert!(report.requests > 0, "{what} answered nothing");
    }
    let ratios = Report::ratios(&direct, &edge);
    assert!(ratios.starts_with("gateway ÷ direct"), "{ratios}");
    let rate = edge.rate / direct.rate;
    assert!(ratios.contains(&format!("rate {rate:.2}×")), "{ratios}");
    Ok(())
}
