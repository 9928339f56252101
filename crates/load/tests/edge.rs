//! `compare` through the edge: the same scenario against auth and against
//! a real gateway in front of it, both without errors, and the ratio of
//! the second over the first printed; then the scenarios through the
//! gateway's HTTP API. (How big the ratio is, is a benchmark's business,
//! not a test's.)

use std::time::Duration;

use tenx_common::metrics::Metrics;
use tenx_gateway::GatewaySettings;
use tenx_gateway::settings::RouteOverride;
use tenx_load::Options;
use tenx_load::engine::{Mode, Plan};
use tenx_load::report::Report;
use tenx_load::scenario::Target;
use tenx_test_support::TestRedis;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_runs_a_scenario_against_auth_and_through_the_gateway_and_prints_the_ratio()
-> anyhow::Result<()> {
    let auth = tenx_auth::testing::TestAuth::start().await?;
    let gateway_redis = TestRedis::new();
    // Nothing here calls notification or billing (the gateway connects to
    // them lazily).
    let mut settings = GatewaySettings::isolated(
        &auth.url(),
        "http://127.0.0.1:9",
        "http://127.0.0.1:9",
        gateway_redis.prefix(),
    )?;
    settings.authn.client_secret = tenx_auth::testing::client_secret("gateway").into();
    settings.authn.revocation_prefix = auth.redis.prefix().to_owned();
    // Every signup and login here comes from one address, which the HTTP
    // door's per-client limits would refuse after a few (429s that a real
    // run counts as errors, by kind); the limits stay on, higher.
    for route in ["auth_signup", "auth_login"] {
        let raised = RouteOverride { requests: Some(100_000), period_seconds: Some(60), timeout_ms: None };
        settings.routes.insert(route.into(), raised);
    }
    let gateway =
        tenx_gateway::App::build(settings, Metrics::default()).await?.spawn(auth.shutdown.child()).await?;

    let plan = Plan {
        mode: Mode::Closed { in_flight: 8 },
        duration: Duration::from_millis(1_500),
        max_requests: 100_000,
    };
    let options = |target, addr| Options {
        scenario: "me".into(),
        target,
        addr,
        plan,
        connections: 2,
        json: None,
        plots: None,
        allow_hosts: Vec::new(),
    };
    let direct = tenx_load::run(&options(Target::Auth, auth.running.grpc_addr)).await?;
    let edge = tenx_load::run(&options(Target::Gateway, gateway.grpc_addr)).await?;
    let mut http = Vec::new();
    for scenario in ["me", "login"] {
        http.push(
            tenx_load::run(&Options {
                scenario: scenario.into(),
                ..options(Target::Http, gateway.http_addr)
            })
            .await?,
        );
    }
    for report in [&direct, &edge].into_iter().chain(&http) {
        assert_eq!(report.errors, 0, "{}: {:?}", report.target, report.error_kinds);
        assert!(report.requests > 0, "{} answered nothing", report.target);
    }
    let ratios = Report::ratios(&direct, &edge);
    assert!(ratios.starts_with("gateway ÷ auth"), "{ratios}");
    let rate = edge.rate / direct.rate;
    assert!(ratios.contains(&format!("rate {rate:.2}×")), "{ratios}");
    Ok(())
}
