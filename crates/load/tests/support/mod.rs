//! What the fault scenarios share: a gateway with its limits raised,
//! tenx-load traffic through it, and their row of docs/RELIABILITY.md.
// Each test target uses its own part of it.
#![allow(dead_code)]

use std::time::Duration;

use tenx_common::metrics::Metrics;
use tenx_gateway::settings::RouteOverride;
use tenx_load::Options;
use tenx_load::door::{Services, Target};
use tenx_load::engine::{Mode, Plan};
use tenx_load::report::Report;
use tenx_test_platform::Platform;

/// Gateway settings for `platform` with the limits raised (one address
/// and a few users make every call; the limits stay on, higher).
pub fn raised_limits(platform: &Platform) -> anyhow::Result<tenx_gateway::GatewaySettings> {
    let mut settings = platform.gateway_settings()?;
    settings.limits.user_requests = 1_000_000;
    for route in ["auth_signup", "auth_login"] {
        let raised = RouteOverride { requests: Some(100_000), period_seconds: Some(60), timeout_ms: None };
        settings.routes.insert(route.into(), raised);
    }
    Ok(settings)
}

/// A gateway in front of `platform` with its limits raised, and its metrics.
pub async fn gateway(platform: &Platform) -> anyhow::Result<(tenx_gateway::Running, Metrics)> {
    let metrics = Metrics::default();
    Ok((platform.gateway_with_metrics(raised_limits(platform)?, metrics.clone()).await?, metrics))
}

/// `scenarios` through the gateway's gRPC door for `duration`, side by side.
pub fn traffic(
    platform: &Platform,
    gateway: &tenx_gateway::Running,
    scenarios: &[&str],
    duration: Duration,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<Report>>> {
    let services = Services {
        auth: platform.auth.grpc_addr,
        billing: platform.billing.grpc_addr,
        notification: platform.notification.grpc_addr,
    };
    scenarios
        .iter()
        .map(|scenario| {
            let options = Options {
                scenario: (*scenario).into(),
                target: Target::Gateway,
                addr: gateway.grpc_addr,
                services,
                operator_secret: None,
                users: 4,
                seeded: None,
                plan: Plan { mode: Mode::Closed { in_flight: 2 }, duration, max_requests: 1_000_000 },
                connections: 1,
                json: None,
                plots: None,
                allow_hosts: Vec::new(),
            };
            tokio::spawn(async move { tenx_load::run(&options).await })
        })
        .collect()
}

pub async fn reports(
    loads: Vec<tokio::task::JoinHandle<anyhow::Result<Report>>>,
) -> anyhow::Result<Vec<Report>> {
    let mut out = Vec::new();
    for load in loads {
        out.push(load.await??);
    }
    Ok(out)
}

/// The sum of every sample of the metric lines starting with `prefix`.
pub fn metric(metrics: &Metrics, prefix: &str) -> f64 {
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn row(fault: &str, reports: &[Report], lost: &str, duplicates: &str, recovery: Duration) {
    let traffic: Vec<String> = reports.iter().map(|r| format!("{} {}", r.requests, r.scenario)).collect();
    let failed: u64 = reports.iter().map(|r| r.errors).sum();
    let mut kinds = std::collections::BTreeMap::new();
    for (kind, n) in reports.iter().flat_map(|r| &r.error_kinds) {
        *kinds.entry(kind.as_str()).or_insert(0) += n;
    }
    let kinds: Vec<String> = kinds.iter().map(|(kind, n)| format!("{n} × {kind}")).collect();
    let failed =
        if kinds.is_empty() { failed.to_string() } else { format!("{failed} ({})", kinds.join("; ")) };
    println!(
        "| {fault} | {} | {failed} | {lost} | {duplicates} | {:.1} s |",
        traffic.join(", "),
        recovery.as_secs_f64()
    );
}

/// Every scenario in `reports` made requests and none failed, `during`
/// the fault.
pub fn assert_none_failed(reports: &[Report], during: &str) {
    for report in reports {
        assert!(report.requests > 0, "{}: no request", report.scenario);
        assert_eq!(report.errors, 0, "{} {during}: {:?}", report.scenario, report.error_kinds);
    }
}

/// Signs a fresh user up through `client`: its id and `Bearer <access
/// token>`, to call as it.
pub async fn signed_up(
    client: &mut tenx_proto::auth::v1::auth_service_client::AuthServiceClient<
        tenx_common::grpc::TracedChannel,
    >,
    label: &str,
) -> anyhow::Result<(String, tonic::metadata::MetadataValue<tonic::metadata::Ascii>)> {
    let email = format!("{label}-{}@example.com", uuid::Uuid::new_v4().simple());
    let request = tenx_proto::auth::v1::SignUpRequest {
        email,
        password: "correct horse battery".into(),
        ..Default::default()
    };
    let signed_up = client.sign_up(request).await?.into_inner();
    let id = signed_up.user.map(|u| u.id).unwrap_or_default();
    let bearer =
        format!("Bearer {}", signed_up.tokens.map(|t| t.access_token).unwrap_or_default()).parse()?;
    Ok((id, bearer))
}

/// `sql` on `url`: its first column of every row, as text.
pub async fn column(url: &str, sql: &str) -> anyhow::Result<Vec<String>> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client.query(sql, &[]).await?.iter().map(|row| row.get(0)).collect())
}

/// Recipient → how many emails the SMTP sink kept for it, of `recipients`.
pub fn mails_to(
    recipients: &std::collections::BTreeSet<String>,
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let mut found = std::collections::BTreeMap::new();
    for mail in tenx_test_support::mails()?.into_iter().filter(|m| recipients.contains(&m.to)) {
        *found.entry(mail.to).or_insert(0) += 1;
    }
    Ok(found)
}
