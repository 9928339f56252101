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
    let maildir =
        std::env::var("TENX_TEST_SMTP_MAILDIR").unwrap_or_else(|_| "/tmp/tenx-smtp-sink/maildir".into());
    let mut found = std::collections::BTreeMap::new();
    for sub in ["new", "cur"] {
        let Ok(entries) = std::fs::read_dir(std::path::Path::new(&maildir).join(sub)) else { continue };
        for entry in entries {
            let text = std::fs::read_to_string(entry?.path()).unwrap_or_default();
            let to = text.lines().take_while(|l| !l.is_empty()).find_map(|l| {
                l.strip_prefix("To:").map(|v| v.trim().trim_matches(['<', '>']).to_ascii_lowercase())
            });
            if let Some(to) = to
                && recipients.contains(&to)
            {
                *found.entry(to).or_insert(0) += 1;
            }
        }
    }
    Ok(found)
}
