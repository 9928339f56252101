//! The quick fault scenarios (`make test`; `make chaos` runs them too):
//! tenx-load traffic through a gateway while a real part fails, and what
//! the users saw at the end. Each prints its row of docs/RELIABILITY.md.
//! The slow ones are in `chaos.rs`.

mod support;

use std::time::{Duration, Instant};

use tenx_test_platform::{Platform, Service, Setup};
use tenx_test_support::TestRedisServer;

use support::{assert_none_failed, gateway, metric, raised_limits, reports, row, signed_up, traffic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_fails_no_request_and_limits_fall_back_to_local() -> anyhow::Result<()> {
    let mut redis = TestRedisServer::start().await?;
    let platform =
        Platform::start_setup(Setup { instances: 2, redis_url: Some(redis.url()), ..Setup::default() })
            .await?;
    let (gateway, metrics) = gateway(&platform).await?;
    let loads = traffic(&platform, &gateway, &["me", "login", "signup"], Duration::from_secs(9));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let local = "tenx_gateway_ratelimit_decisions_total{store=\"local\"";
    let shared = "tenx_gateway_ratelimit_decisions_total{store=\"redis\"";
    assert_eq!(metric(&metrics, local), 0.0, "Redis up: the limits are cluster-wide");
    redis.kill()?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(metric(&metrics, local) > 0.0, "Redis down: the limits fall back to each gateway's own");
    redis.restart().await?;
    // Back: the limits are shared again.
    let restarted = Instant::now();
    let before = metric(&metrics, shared);
    while metric(&metrics, shared) <= before {
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(10),
            "the gateway never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovery = restarted.elapsed();
    let reports = reports(loads).await?;
    row("Redis killed (SIGKILL) 3 s, restarted empty", &reports, "0", "0", recovery);
    assert_none_failed(&reports, "with Redis down");
    Ok(())
}

/// Two instances of every service behind a gateway that balances over
/// them, and every instance restarted in turn the way SIGTERM does it (its
/// shutdown fires: health NOT_SERVING, still serving for
/// `shutdown_delay_ms`, then the listener closes and calls in flight
/// finish; a new one starts on its ports). Not one request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_service_fails_no_request() -> anyhow::Result<()> {
    let mut platform = Platform::start_instances(2).await?;
    let (gateway, _) = gateway(&platform).await?;
    // Reads, logins, signups (whose welcome events the consumers take)
    // and purchases (a card, a subscription, its payment), side by side.
    let loads =
        traffic(&platform, &gateway, &["me", "login", "signup", "subscribe"], Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarts = Instant::now();
    for service in [Service::Auth, Service::Notification, Service::Billing] {
        for index in 0..2 {
            platform.restart(service, index).await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let took = restarts.elapsed();
    let reports = reports(loads).await?;
    row(
        "Rolling restart (the SIGTERM path) of each of 2 instances of auth, notification, billing",
        &reports,
        "0",
        "0",
        took,
    );
    assert_none_failed(&reports, "during the restarts");
    Ok(())
}

/// Two gateways, a client balancing over both (as a load balancer in
/// front of the gateway's pods would), reads and profile updates through
/// them, and each gateway restarted in turn the SIGTERM way: not one call
/// fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_the_gateways_fails_no_call() -> anyhow::Result<()> {
    use tenx_proto::auth::v1 as pb;
    use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;

    let platform = Platform::start_instances(2).await?;
    let mut gateways = vec![
        platform.gateway_instance(raised_limits(&platform)?).await?,
        platform.gateway_instance(raised_limits(&platform)?).await?,
    ];
    let urls: Vec<String> = gateways.iter().map(|g| format!("http://{}", g.running.grpc_addr)).collect();
    let channel = tenx_common::grpc::connect(&tenx_common::grpc::ClientSettings::new(&urls.join(",")))?;
    let mut client = AuthServiceClient::new(channel);
    let (_, bearer) = signed_up(&mut client, "rolling").await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut callers = Vec::new();
    for caller in 0..4 {
        let (mut client, bearer, stopped) = (client.clone(), bearer.clone(), stopped.clone());
        callers.push(tokio::spawn(async move {
            let (mut calls, mut failed) = (0u64, Vec::new());
            while !*stopped.borrow() {
                let outcome = if calls % 5 == 0 {
                    let name = format!("caller {caller} call {calls}");
                    let mut update = tonic::Request::new(pb::UpdateProfileRequest { display_name: name });
                    update.metadata_mut().insert("authorization", bearer.clone());
                    client.update_profile(update).await.map(|_| ())
                } else {
                    let mut read = tonic::Request::new(pb::GetUserRequest::default());
                    read.metadata_mut().insert("authorization", bearer.clone());
                    client.get_user(read).await.map(|_| ())
                };
                if let Err(status) = outcome {
                    failed.push(format!("{:?}: {}", status.code(), status.message()));
                }
                calls += 1;
            }
            (calls, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let restarts = Instant::now();
    for index in 0..gateways.len() {
        let gateway = gateways.remove(index);
        gateways.insert(index, platform.restart_gateway(gateway).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let took = restarts.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.send(true)?;
    let (mut calls, mut failed) = (0, Vec::new());
    for caller in callers {
        let (n, errors) = caller.await?;
        calls += n;
        failed.extend(errors);
    }
    println!(
        "| Rolling restart (the SIGTERM path) of each of 2 gateways, callers balancing over both | {calls} reads and profile updates | {} | 0 | 0 | {:.1} s for both |",
        failed.len(),
        took.as_secs_f64()
    );
    assert!(calls > 100, "only {calls} calls");
    assert!(
        failed.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    Ok(())
}
