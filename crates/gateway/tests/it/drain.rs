//! A rolling restart from the HTTP API's side: on SIGTERM (its shutdown
//! signal) the gateway says it is going (`/readyz` 503) but keeps
//! accepting for `server.shutdown_delay_ms`, so a balancer that has not
//! noticed yet loses nothing; a request in flight finishes; only then are
//! new connections refused.

use std::time::{Duration, Instant};

use tenx_common::metrics::Metrics;
use tenx_common::shutdown::Shutdown;
use tenx_test_support::ChaosProxy;

use crate::support::{Platform, bearer, send, sign_up, unique_email};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_shutdown_the_http_api_keeps_accepting_through_the_delay_and_finishes_what_is_in_flight()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    // Auth behind a proxy that can make every call to it slow.
    let auth = ChaosProxy::start(platform.auth.grpc_addr).await?;
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.auth.url = format!("http://{}", auth.addr());
    settings.server.shutdown_delay_ms = 1_500;
    settings.server.shutdown_grace_ms = 5_000;
    let stop = Shutdown::new();
    let gateway = tenx_gateway::App::build(settings, Metrics::default()).await?.spawn(stop.clone()).await?;
    let (http, admin) = (gateway.http_addr, gateway.admin_addr);
    let (token, _, _) = sign_up(http, &unique_email()).await?;
    let me = move || {
        let authorization = bearer(&token);
        async move { send(http, "GET", "/v1/me", &[("authorization", &authorization)], None).await }
    };
    assert_eq!(me().await?.status, 200);

    // A read in flight (auth now answers after 700 ms) when the signal comes.
    auth.set_delay(Duration::from_millis(700));
    let in_flight = tokio::spawn(me());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let signalled = Instant::now();
    stop.trigger();

    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = send(admin, "GET", "/readyz", &[], None).await?;
    assert_eq!((ready.status, ready.text.as_str()), (503, "shutting down\n"), "balancers are told to go");
    // A new connection inside the delay is still served, start to end.
    let late = me().await?;
    assert_eq!(late.status, 200, "a request that arrived during the delay: {}", late.text);
    let early = in_flight.await??;
    assert_eq!(early.status, 200, "the request in flight at the signal: {}", early.text);
    assert!(signalled.elapsed() < Duration::from_millis(1_500), "both answered inside the delay");

    // After the delay the listener is closed, and the gateway exits once
    // nothing is in flight.
    tokio::time::sleep(
        Duration::from_millis(1_500).saturating_sub(signalled.elapsed()) + Duration::from_millis(300),
    )
    .await;
    assert!(me().await.is_err(), "a new connection after the delay is refused");
    tokio::time::timeout(Duration::from_secs(5), gateway.task).await???;
    Ok(())
}
