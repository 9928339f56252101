//! Edge hygiene: the one error shape, body limits, unknown routes, upstream
//! failures (503 fast, a circuit that opens and recovers), deadlines (504).

use std::time::{Duration, Instant};

use tenx_gateway::settings::RouteOverride;
use tenx_test_support::{ChaosProxy, eventually, http_get};

use crate::support::{Platform, bearer, send, sign_up, unique_email};

#[tokio::test]
async fn every_error_path_answers_in_the_one_json_shape_with_the_right_status() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.http.body_limit_bytes = 1024;
    let gw = platform.gateway_with(settings).await?;
    let email = unique_email();
    let (token, _, _) = sign_up(gw.http_addr, &email).await?;

    let big = format!(r#"{{"display_name":"{}"}}"#, "x".repeat(4096));
    let cases: Vec<(&str, &str, Option<String>, u16, &str)> = vec![
        ("PATCH", "/v1/me", Some(big), 413, "payload_too_large"),
        ("GET", "/v1/nothing-here", None, 404, "not_found"),
        ("DELETE", "/v1/me", None, 405, "invalid_argument"),
        ("POST", "/v1/auth/signup", Some("{not json".into()), 400, "invalid_argument"),
        (
            "POST",
            "/v1/auth/signup",
            Some(r#"{"email":"a@b.c","password":"p","extra":1}"#.into()),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/auth/signup",
            Some(
                serde_json::json!({ "email": "not an email", "password": "correct horse battery" })
                    .to_string(),
            ),
            400,
            "invalid_argument",
        ),
        (
            "POST",
            "/v1/auth/signup",
            Some(serde_json::json!({ "email": email, "password": "correct horse battery" }).to_string()),
            409,
            "already_exists",
        ),
        ("GET", "/v1/notifications?page_size=1000", None, 400, "invalid_argument"),
        ("GET", "/v1/notifications?page_size=abc", None, 400, "invalid_argument"),
    ];
    let auth = bearer(&token);
    for (method, path, body, status, code) in cases {
        let reply = send(gw.http_addr, method, path, &[("authorization", &auth)], body.as_deref()).await?;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text);
        assert_eq!(reply.error_code(), code, "{method} {path}");
    }
    let bad_email = send(
        gw.http_addr,
        "POST",
        "/v1/auth/signup",
        &[],
        Some(&serde_json::json!({ "email": "nope", "password": "correct horse battery" }).to_string()),
    )
    .await?;
    assert_eq!(bad_email.json["error"]["details"][0]["field"], "email", "{}", bad_email.text);
    Ok(())
}

#[tokio::test]
async fn an_upstream_that_is_down_gets_503_fast_then_an_open_circuit_that_recovers() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let proxy = ChaosProxy::start(platform.notification.grpc_addr).await?;
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.notification.url = format!("http://{}", proxy.addr());
    settings.breaker.failure_threshold = 2;
    settings.breaker.open_seconds = 1;
    let gw = platform.gateway_with(settings).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let auth = bearer(&token);
    let headers = [("authorization", auth.as_str())];
    let list = || send(gw.http_addr, "GET", "/v1/notifications", &headers, None);
    assert_eq!(list().await?.status, 200);

    proxy.cut();
    for _ in 0..2 {
        let started = Instant::now();
        let reply = list().await?;
        assert_eq!((reply.status, reply.error_code().as_str()), (503, "unavailable"), "{}", reply.text);
        assert!(started.elapsed() < Duration::from_secs(3), "fast: {:?}", started.elapsed());
    }
    let open = list().await?;
    assert_eq!(open.status, 503);
    assert!(
        open.json["error"]["message"].as_str().unwrap_or_default().contains("circuit open"),
        "{}",
        open.text
    );
    let (_, metrics) = http_get(gw.admin_addr, "/metrics").await?;
    assert!(metrics.contains(r#"tenx_gateway_circuit_open{upstream="notification"} 1"#), "{metrics}");

    proxy.restore();
    eventually(Duration::from_secs(10), "the circuit closed", || async { Ok(list().await?.status == 200) })
        .await?;
    let (_, metrics) = http_get(gw.admin_addr, "/metrics").await?;
    assert!(metrics.contains(r#"tenx_gateway_circuit_open{upstream="notification"} 0"#), "{metrics}");
    Ok(())
}

#[tokio::test]
async fn a_call_slower_than_its_route_deadline_gets_504() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let proxy = ChaosProxy::start(platform.notification.grpc_addr).await?;
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.notification.url = format!("http://{}", proxy.addr());
    settings.routes.insert(
        "notifications_list".into(),
        RouteOverride { requests: None, period_seconds: None, timeout_ms: Some(300) },
    );
    let gw = platform.gateway_with(settings).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    proxy.set_delay(Duration::from_millis(1_500));
    let started = Instant::now();
    let reply =
        send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!((reply.status, reply.error_code().as_str()), (504, "deadline_exceeded"), "{}", reply.text);
    assert!(
        started.elapsed() < Duration::from_millis(1_400),
        "gave up at the deadline: {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn cors_preflight_is_answered_for_allowed_origins_only() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.http.cors_allowed_origins = "https://app.example.com".into();
    let gw = platform.gateway_with(settings).await?;
    let preflight = |origin: &'static str| async move {
        let headers = [
            ("origin", origin),
            ("access-control-request-method", "PATCH"),
            ("access-control-request-headers", "authorization,content-type"),
        ];
        send(gw.http_addr, "OPTIONS", "/v1/me", &headers, None).await
    };
    let allowed = preflight("https://app.example.com").await?;
    assert_eq!(allowed.header("access-control-allow-origin"), Some("https://app.example.com"));
    let other = preflight("https://evil.example.com").await?;
    assert_eq!(other.header("access-control-allow-origin"), None);
    Ok(())
}

#[tokio::test]
async fn past_max_in_flight_requests_are_shed_at_once_with_503() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let proxy = ChaosProxy::start(platform.notification.grpc_addr).await?;
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.notification.url = format!("http://{}", proxy.addr());
    settings.http.max_in_flight = 1;
    let gw = platform.gateway_with(settings).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let auth = bearer(&token);
    proxy.set_delay(Duration::from_millis(1_500));

    let slow = {
        let auth = auth.clone();
        let addr = gw.http_addr;
        tokio::spawn(async move {
            send(addr, "GET", "/v1/notifications", &[("authorization", &auth)], None).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let shed = send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &auth)], None).await?;
    assert_eq!((shed.status, shed.error_code().as_str()), (503, "unavailable"), "{}", shed.text);
    assert!(started.elapsed() < Duration::from_millis(500), "shed without waiting: {:?}", started.elapsed());
    assert!(shed.header("retry-after").is_some());
    assert_eq!(slow.await??.status, 200, "the request in progress is served");
    let (_, metrics) = http_get(gw.admin_addr, "/metrics").await?;
    assert!(metrics.contains("tenx_gateway_http_shed_total 1"), "{metrics}");
    Ok(())
}
