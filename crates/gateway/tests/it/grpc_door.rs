//! The gRPC front door: the services' public RPCs through the same policy.

use tenx_gateway::settings::RouteOverride;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::notification::v1 as notification;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tonic::Code;

use crate::support::{PASSWORD, Platform, bearer, sign_up, unique_email};

fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", bearer(token).parse()?);
    Ok(request)
}

#[tokio::test]
async fn public_rpcs_pass_with_the_same_auth_and_limits_and_private_ones_do_not_exist() -> anyhow::Result<()>
{
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.routes.insert(
        "auth_login".into(),
        RouteOverride { requests: Some(1), period_seconds: Some(60), timeout_ms: None },
    );
    let gw = platform.gateway_with(settings).await?;
    let url = format!("http://{}", gw.grpc_addr);
    let mut auth_client = AuthServiceClient::connect(url.clone()).await?;
    let mut inbox = NotificationServiceClient::connect(url).await?;

    let email = unique_email();
    let signed_up = auth_client
        .sign_up(auth::SignUpRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?
        .into_inner();
    let token = signed_up.tokens.map(|t| t.access_token).unwrap_or_default();
    let me = auth_client.get_user(authed(&token, auth::GetUserRequest::default())?).await?.into_inner();
    assert_eq!(me.user.map(|u| u.email), Some(email.clone()));
    inbox.list_notifications(authed(&token, notification::ListNotificationsRequest::default())?).await?;

    // A client-set identity header without a token is not an identity.
    let mut spoofed = tonic::Request::new(notification::ListNotificationsRequest::default());
    spoofed.metadata_mut().insert("x-tenx-user-id", uuid::Uuid::now_v7().to_string().parse()?);
    assert_eq!(inbox.list_notifications(spoofed).await.expect_err("no token").code(), Code::Unauthenticated);

    let login =
        || auth::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    auth_client.login(login()).await?;
    let limited = auth_client.login(login()).await.expect_err("limit of 1");
    assert_eq!(limited.code(), Code::ResourceExhausted);
    assert!(tonic_types::StatusExt::get_details_retry_info(&limited).is_some(), "RetryInfo tells when");

    // Not public: operators' webhook RPCs and service-to-service calls.
    let hidden = inbox
        .list_dead_letters(authed(&token, notification::ListDeadLettersRequest::default())?)
        .await
        .expect_err("not public");
    assert_eq!(hidden.code(), Code::Unimplemented);
    let hidden = auth_client
        .authenticate_api_key(auth::AuthenticateApiKeyRequest { secret: "tenx_sk_x".into() })
        .await
        .expect_err("not public");
    assert_eq!(hidden.code(), Code::Unimplemented);
    Ok(())
}

#[tokio::test]
async fn a_public_rpc_slower_than_its_deadline_gets_deadline_exceeded() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let proxy = tenx_test_support::ChaosProxy::start(platform.notification.grpc_addr).await?;
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.notification.url = format!("http://{}", proxy.addr());
    settings.routes.insert(
        "notifications_list".into(),
        RouteOverride { requests: None, period_seconds: None, timeout_ms: Some(300) },
    );
    let gw = platform.gateway_with(settings).await?;
    let url = format!("http://{}", gw.grpc_addr);
    let mut auth_client = AuthServiceClient::connect(url.clone()).await?;
    let token = auth_client
        .sign_up(auth::SignUpRequest {
            email: unique_email(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .tokens
        .map(|t| t.access_token)
        .unwrap_or_default();
    proxy.set_delay(std::time::Duration::from_millis(1_500));
    let mut inbox = NotificationServiceClient::connect(url).await?;
    let started = std::time::Instant::now();
    let late = inbox
        .list_notifications(authed(&token, notification::ListNotificationsRequest::default())?)
        .await
        .expect_err("past the deadline");
    assert_eq!(late.code(), Code::DeadlineExceeded, "{late:?}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1_400), "{:?}", started.elapsed());
    Ok(())
}

/// One gRPC-Web call over HTTP/1.1, as a browser library makes it:
/// the status code, response headers and the decoded frames (data
/// messages, then the trailers as text).
async fn grpc_web(
    addr: std::net::SocketAddr,
    path: &str,
    message: &impl prost::Message,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, http::HeaderMap, Vec<Vec<u8>>, String)> {
    use http_body_util::{BodyExt, Full};
    let payload = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
    framed.extend_from_slice(&payload);
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<bytes::Bytes>>();
    let response = client.request(request.body(Full::new(bytes::Bytes::from(framed)))?).await?;
    let (status, response_headers) = (response.status().as_u16(), response.headers().clone());
    let body = response.into_body().collect().await?.to_bytes();
    let (mut messages, mut trailers, mut rest) = (Vec::new(), String::new(), &body[..]);
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let frame = rest.get(5..5 + len).ok_or_else(|| anyhow::anyhow!("truncated frame"))?;
        if rest[0] & 0x80 == 0 {
            messages.push(frame.to_vec());
        } else {
            trailers.push_str(&String::from_utf8_lossy(frame));
        }
        rest = &rest[5 + len..];
    }
    Ok((status, response_headers, messages, trailers))
}

#[tokio::test]
async fn browsers_reach_the_public_rpcs_over_grpc_web_with_the_same_policy() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.http.cors_allowed_origins = "https://app.example.com".into();
    let gw = platform.gateway_with(settings).await?;

    // Anonymous catalog over gRPC-Web (HTTP/1.1).
    let (status, headers, messages, trailers) = grpc_web(
        gw.grpc_addr,
        "/tenx.billing.v1.BillingService/ListPlans",
        &tenx_proto::billing::v1::ListPlansRequest::default(),
        &[("origin", "https://app.example.com")],
    )
    .await?;
    assert_eq!(status, 200);
    assert!(headers.get("content-type").is_some_and(|v| v.as_bytes().starts_with(b"application/grpc-web")));
    assert_eq!(
        headers.get("access-control-allow-origin").map(|v| v.as_bytes()),
        Some(&b"https://app.example.com"[..])
    );
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let plans =
        <tenx_proto::billing::v1::ListPlansResponse as prost::Message>::decode(messages[0].as_slice())?;
    assert!(plans.plans.iter().any(|p| p.code == "pro"));

    // A call that needs a token gets UNAUTHENTICATED, as over gRPC.
    let (status, headers, _, trailers) = grpc_web(
        gw.grpc_addr,
        "/tenx.notification.v1.NotificationService/ListNotifications",
        &notification::ListNotificationsRequest::default(),
        &[],
    )
    .await?;
    assert_eq!(status, 200, "gRPC-Web reports errors in grpc-status");
    let code =
        headers.get("grpc-status").map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default()
            + &trailers;
    assert!(code.contains("16"), "UNAUTHENTICATED: {code:?}");
    Ok(())
}

#[tokio::test]
async fn a_message_larger_than_any_service_takes_is_refused_without_counting_against_the_service()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let mut auth_client = AuthServiceClient::connect(format!("http://{}", gw.grpc_addr)).await?;
    // More than the breaker's threshold (5), each over the 4 MiB a
    // service accepts: refused at the door, before auth spends anything.
    for i in 0..8 {
        let big = auth::GetUserRequest { user_id: "x".repeat(5 * 1024 * 1024) };
        let refused = auth_client.get_user(authed(&token, big)?).await.expect_err("too large");
        assert_eq!(refused.code(), Code::ResourceExhausted, "call {i}: {refused:?}");
    }
    // The client's oversized messages said nothing about auth: its circuit
    // is closed and its instance in rotation.
    let me = auth_client.get_user(authed(&token, auth::GetUserRequest::default())?).await?.into_inner();
    assert!(me.user.is_some());
    Ok(())
}
