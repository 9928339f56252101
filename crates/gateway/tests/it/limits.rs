//! Rate limits shared by every gateway instance through Redis (spent from
//! leased batches of tokens), and the local limiter that takes over when
//! Redis cannot answer.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tenx_gateway::settings::{GatewaySettings, RouteOverride};
use tenx_test_support::{ChaosProxy, addr_of, http_get};

use crate::support::{Platform, send, sign_up, unique_email, wait_for_redis};

/// Route `route` of `settings` allows `requests` per `period_seconds`.
fn limit(settings: &mut GatewaySettings, route: &str, requests: u32, period_seconds: u32) {
    let limit =
        RouteOverride { requests: Some(requests), period_seconds: Some(period_seconds), timeout_ms: None };
    settings.routes.insert(route.into(), limit);
}

fn login_body() -> String {
    serde_json::json!({ "email": unique_email(), "password": "wrong password 123" }).to_string()
}

#[tokio::test]
async fn a_limit_of_n_is_shared_by_two_gateways_and_the_next_request_gets_429_with_headers()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    limit(&mut settings, "auth_login", 3, 60);
    wait_for_redis(&mut settings);
    let (one, two) = (platform.gateway_with(settings.clone()).await?, platform.gateway_with(settings).await?);

    let mut remaining = Vec::new();
    for addr in [one.http_addr, two.http_addr, one.http_addr] {
        let reply = send(addr, "POST", "/v1/auth/login", &[], Some(&login_body())).await?;
        assert_eq!(reply.status, 401, "a wrong password, not a limit: {}", reply.text);
        remaining.push(reply.header("ratelimit-remaining").unwrap_or_default().to_owned());
    }
    assert_eq!(remaining, vec!["2", "1", "0"], "one allowance across both instances");
    for addr in [two.http_addr, one.http_addr] {
        let limited = send(addr, "POST", "/v1/auth/login", &[], Some(&login_body())).await?;
        assert_eq!(limited.status, 429, "{}", limited.text);
        assert_eq!(limited.error_code(), "resource_exhausted");
        assert_eq!(limited.header("ratelimit-limit"), Some("3"));
        assert_eq!(limited.header("ratelimit-remaining"), Some("0"));
        assert_eq!(limited.header("ratelimit-policy"), Some("3;w=60"));
        let retry: u64 = limited.header("retry-after").unwrap_or_default().parse()?;
        assert!((1..=20).contains(&retry), "one request per 20 s refills: {retry}");
    }
    // Signup has its own allowance.
    let body =
        serde_json::json!({ "email": unique_email(), "password": "correct horse battery" }).to_string();
    assert_eq!(send(two.http_addr, "POST", "/v1/auth/signup", &[], Some(&body)).await?.status, 201);
    Ok(())
}

#[tokio::test]
async fn with_redis_unreachable_the_local_limiter_still_serves_and_still_limits() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    let redis = ChaosProxy::start(addr_of(settings.redis.url.expose())?).await?;
    settings.redis.url = format!("redis://{}", redis.addr()).into();
    limit(&mut settings, "auth_login", 2, 60);
    let gw = platform.gateway_with(settings).await?;
    redis.cut();

    let statuses = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses
                .push(send(gw.http_addr, "POST", "/v1/auth/login", &[], Some(&login_body())).await?.status);
        }
        statuses
    };
    assert_eq!(statuses, vec![401, 401, 429], "served, and limited, without Redis");
    let (_, metrics) = http_get(gw.admin_addr, "/metrics").await?;
    assert!(
        metrics.contains(r#"tenx_gateway_ratelimit_decisions_total{store="local",outcome="limited"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(r#"store="redis""#), "no decision came from Redis: {metrics}");
    Ok(())
}

/// The value of the sample `series` (name and labels, exactly as exported)
/// on a gateway's `/metrics`, 0 when absent.
async fn sample(admin: SocketAddr, series: &str) -> anyhow::Result<f64> {
    let (_, text) = http_get(admin, "/metrics").await?;
    Ok(text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0))
}

#[tokio::test]
async fn two_gateways_spending_leased_tokens_admit_exactly_the_allowance_with_few_redis_calls()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    // 320 an hour: leases of 10 tokens; one token refills every 11 s,
    // which this test is too short to notice more than once.
    limit(&mut settings, "me_get", 320, 3600);
    wait_for_redis(&mut settings);
    let (one, two) = (platform.gateway_with(settings.clone()).await?, platform.gateway_with(settings).await?);
    let (token, _, _) = sign_up(one.http_addr, &unique_email()).await?;
    let bearer = format!("Bearer {token}");
    let me = |addr: SocketAddr| {
        let bearer = bearer.clone();
        async move { send(addr, "GET", "/v1/me", &[("authorization", bearer.as_str())], None).await }
    };

    // A caller seen for the first time takes one token; asked for again
    // at once, `one` leases ten and spends one; the header counts the
    // nine it holds as the caller's.
    let first = me(one.http_addr).await?;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.header("ratelimit-remaining"), Some("319"));
    let second = me(one.http_addr).await?;
    assert_eq!(second.header("ratelimit-remaining"), Some("318"), "{}", second.text);
    // Its lease expires unused; the nine go back to Redis (less the second
    // or two they were held: a fifth of a token at 11.25 s each).
    let returned = r#"tenx_gateway_ratelimit_redis_calls_total{kind="return"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sample(one.admin_addr, returned).await? < 1.0 {
        anyhow::ensure!(Instant::now() < deadline, "the unspent tokens never went back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Both gateways, alternately, until both refuse three rounds running.
    let (mut admitted, mut refusing) = (2, 0);
    while refusing < 3 {
        let mut refused = 0;
        for addr in [one.http_addr, two.http_addr] {
            let reply = me(addr).await?;
            match reply.status {
                200 => admitted += 1,
                429 => refused += 1,
                other => anyhow::bail!("GET /v1/me: {other} {}", reply.text),
            }
        }
        refusing = if refused == 2 { refusing + 1 } else { 0 };
        anyhow::ensure!(admitted <= 400, "the limit never bit");
    }
    assert!(
        (319..=321).contains(&admitted),
        "the allowance (give or take the time tokens were held and one refill), none lost in leases: \
         {admitted}"
    );

    let mut redis_calls = 0.0;
    for admin in [one.admin_addr, two.admin_addr] {
        for kind in ["take", "top_up"] {
            redis_calls +=
                sample(admin, &format!(r#"tenx_gateway_ratelimit_redis_calls_total{{kind="{kind}"}}"#))
                    .await?;
        }
    }
    assert!(
        redis_calls <= 60.0,
        "about one Redis call per lease of ten, not one per request: {redis_calls} for {admitted}"
    );
    Ok(())
}
