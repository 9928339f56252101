//! Two instances of every service behind a gateway that balances over
//! them, traffic from tenx-load through the gateway's gRPC door, and every
//! instance restarted in turn the way SIGTERM does it (its shutdown fires:
//! health NOT_SERVING, still serving for `shutdown_delay_ms`, then the
//! listener closes and calls in flight finish; a new one starts on its
//! ports). Not one request fails.

use std::time::Duration;

use tenx_gateway::settings::RouteOverride;
use tenx_load::Options;
use tenx_load::door::{Services, Target};
use tenx_load::engine::{Mode, Plan};
use tenx_test_platform::{Platform, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_service_fails_no_request() -> anyhow::Result<()> {
    let mut platform = Platform::start_instances(2).await?;
    let mut settings = platform.gateway_settings()?;
    // One address and a few users make every call: the limits stay on, higher.
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
    // Reads, logins, signups (whose welcome events the consumers take)
    // and purchases (a card, a subscription, its payment), side by side.
    let mut loads = Vec::new();
    for scenario in ["me", "login", "signup", "subscribe"] {
        let options = Options {
            scenario: scenario.into(),
            target: Target::Gateway,
            addr: gateway.grpc_addr,
            services,
            operator_secret: None,
            users: 4,
            seeded: None,
            plan: Plan {
                mode: Mode::Closed { in_flight: 2 },
                duration: Duration::from_secs(10),
                max_requests: 100_000,
            },
            connections: 1,
            json: None,
            plots: None,
            allow_hosts: Vec::new(),
        };
        loads.push(tokio::spawn(async move { tenx_load::run(&options).await }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarts = std::time::Instant::now();
    for service in [Service::Auth, Service::Notification, Service::Billing] {
        for index in 0..2 {
            platform.restart(service, index).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    println!("six restarts in {:?}", restarts.elapsed());
    let mut reports = Vec::new();
    for load in loads {
        reports.push(load.await??);
    }
    for report in &reports {
        println!(
            "{}: {} requests, {} failed {:?}",
            report.scenario, report.requests, report.errors, report.error_kinds
        );
    }
    for report in &reports {
        assert!(report.requests > 0, "{}: no request", report.scenario);
        assert_eq!(report.errors, 0, "{} during the restarts: {:?}", report.scenario, report.error_kinds);
    }
    Ok(())
}
