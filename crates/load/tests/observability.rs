//! What operators scrape: every service's `/metrics` on its admin port,
//! against `docs/OBSERVABILITY.md` (the names the chart's dashboards and
//! alerts are checked against offline, in deploy/tests).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use tenx_test_platform::Platform;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `GET /metrics` on an admin port, the body.
async fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(admin).await?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: tenx\r\n\r\n").await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no body"))?;
    anyhow::ensure!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_owned())
}

/// The series names a scrape exports, as PromQL names them: a counter
/// family `x` is `x_total`; a histogram `x` is `x_bucket`, `x_sum` and
/// `x_count`, listed as `x`.
fn families(scrape: &str) -> BTreeSet<String> {
    scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| if kind == "counter" { format!("{name}_total") } else { name.to_owned() })
        .collect()
}

/// The metric names in the document's tables: the first cell of each row,
/// in backticks.
fn documented() -> anyhow::Result<BTreeSet<String>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/OBSERVABILITY.md");
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("| `tenx_"))
        .filter_map(|l| l.split_once('`'))
        .map(|(rest, _)| format!("tenx_{rest}"))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_metric_is_documented_and_no_probe_fails_on_a_healthy_platform() -> anyhow::Result<()>
{
    let platform = Platform::start().await?;
    let (gateway, _) = support::gateway(&platform).await?;
    // Traffic through the gateway first, so that most families have series.
    let loads = support::traffic(
        &platform,
        &gateway,
        &["me", "login", "signup", "subscribe"],
        Duration::from_secs(2),
    );
    support::assert_none_failed(&support::reports(loads).await?, "before the scrape");
    let admins = [
        ("auth", platform.auth.admin_addr),
        ("notification", platform.notification.admin_addr),
        ("billing", platform.billing.admin_addr),
        ("gateway", gateway.admin_addr),
    ];
    let mut exported: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut scrapes = BTreeMap::new();
    for (service, admin) in admins {
        let body = scrape(admin).await?;
        for family in families(&body) {
            exported.entry(family).or_default().push(service);
        }
        scrapes.insert(service, body);
    }
    let documented = documented()?;
    let undocumented: Vec<_> = exported.keys().filter(|n| !documented.contains(*n)).collect();
    assert!(undocumented.is_empty(), "exported but not in docs/OBSERVABILITY.md: {undocumented:?}");
    // (A family shows once it has a series, so the other way round, that
    // every documented name is registered, is checked on the source, in
    // deploy/tests/test_repo.py.)
    assert!(exported.len() >= 25, "the traffic made most families show: {:?}", exported.keys());

    // On a healthy platform every probe reads its dependency: no failure,
    // and the gauges they own are there with values that fit.
    for (service, body) in &scrapes {
        let failed: Vec<_> = body.lines().filter(|l| l.starts_with("tenx_probe_failures_total")).collect();
        assert!(failed.is_empty(), "{service}: {failed:?}");
    }
    for (service, pool) in
        [("auth", "tenx-auth"), ("notification", "tenx-notification"), ("billing", "tenx-billing")]
    {
        let body = &scrapes[service];
        let series = |prefix: String| body.lines().find(|l| l.starts_with(&prefix)).map(str::to_owned);
        let max = series(format!("tenx_db_pool_max_connections{{pool=\"{pool}\",role=\"primary\"}} "));
        assert!(max.is_some(), "{service}: no pool size in\n{body}");
        let lag = series(format!("tenx_db_replica_lag_bytes{{pool=\"{pool}\"}} "));
        assert!(lag.is_some(), "{service}: no replica lag");
        let pending = series(format!("tenx_outbox_pending{{service=\"{pool}\"}} "));
        assert!(pending.is_some(), "{service}: no outbox backlog");
    }
    for service in ["notification", "billing"] {
        let dead = scrapes[service]
            .lines()
            .filter(|l| l.starts_with("tenx_queue_depth{") && l.contains("kind=\"dead_letter\""))
            .count();
        assert!(dead >= 1, "{service} consumes, so it reports its dead-letter queue's depth");
    }
    Ok(())
}
