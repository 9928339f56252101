//! Rate limits shared by every gateway instance through Redis, and the
//! local limiter that takes over when Redis cannot answer.

use tenx_gateway::settings::RouteOverride;
use tenx_test_support::{ChaosProxy, addr_of, http_get};

use crate::support::{Platform, send, unique_email};

fn login_body() -> String {
    serde_json::json!({ "email": unique_email(), "password": "wrong password 123" }).to_string()
}

#[tokio::test]
async fn a_limit_of_n_is_shared_by_two_gateways_and_the_next_request_gets_429_with_headers()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.routes.insert(
        "auth_login".into(),
        RouteOverride { requests: Some(3), period_seconds: Some(60), timeout_ms: None },
    );
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
    settings.routes.insert(
        "auth_login".into(),
        RouteOverride { requests: Some(2), period_seconds: Some(60), timeout_ms: None },
    );
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
