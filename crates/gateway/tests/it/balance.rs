//! Two auth instances behind one gateway: calls are spread over both, and
//! when one goes away mid-traffic no idempotent call fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tenx_common::metrics::Metrics;

use crate::support::{Platform, bearer, send, sign_up, unique_email};

/// How many GetUser calls an auth instance answered.
fn get_users(metrics: &Metrics) -> usize {
    let prefix = "tenx_grpc_server_requests_total{method=\"/tenx.auth.v1.AuthService/GetUser\"";
    metrics
        .render()
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_spread_over_two_auth_instances_and_none_fails_when_one_goes_away() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    // Two more instances of auth on the platform's database, Redis and broker,
    // each stoppable alone and stopped with the platform: one still running
    // when the platform deletes the test's queues would see its consumer
    // cancelled and declare them all again, leaving them on the broker.
    let mut instances = Vec::new();
    for _ in 0..2 {
        let (metrics, stop) = (Metrics::default(), platform.shutdown.child());
        let running = tenx_common::host::start::<tenx_auth::App>(
            platform.auth_settings.clone(),
            metrics.clone(),
            stop.clone(),
        )
        .await?;
        instances.push((running, metrics, stop));
    }
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.auth.url =
        format!("http://{},http://{}", instances[0].0.grpc_addr, instances[1].0.grpc_addr);
    settings.limits.user_requests = 1_000_000;
    let gateway = platform.gateway_with(settings).await?;
    let http = gateway.http_addr;
    let (token, _, _) = sign_up(http, &unique_email()).await?;
    let authorization = bearer(&token);
    let me = move |authorization: String| async move {
        send(http, "GET", "/v1/me", &[("authorization", &authorization)], None).await
    };

    for _ in 0..200 {
        assert_eq!(me(authorization.clone()).await?.status, 200);
    }
    let (a, b) = (get_users(&instances[0].1), get_users(&instances[1].1));
    assert_eq!(a + b, 200);
    assert!((80..=120).contains(&a), "split {a}/{b}, not within 60/40");

    // Four clients read on; the second instance stops half-way through.
    let done = Arc::new(AtomicUsize::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (done, authorization) = (done.clone(), authorization.clone());
        clients.spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..60 {
                statuses.push(me(authorization.clone()).await.map(|r| (r.status, r.text)));
                done.fetch_add(1, Ordering::Relaxed);
            }
            statuses
        });
    }
    while done.load(Ordering::Relaxed) < 100 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let before = get_users(&instances[1].1);
    instances[1].2.trigger();
    let mut failed = Vec::new();
    while let Some(statuses) = clients.join_next().await {
        failed.extend(statuses?.into_iter().filter(|s| !matches!(s, Ok((200, _)))));
    }
    assert!(failed.is_empty(), "{} of 240 reads failed: {:?}", failed.len(), &failed[..failed.len().min(3)]);
    assert!(get_users(&instances[1].1) >= before, "the stopped instance answered what it had");
    Ok(())
}
