//! The gRPC front door: the services' public RPCs through the same policy.

use tenx_gateway::settings::RouteOverride;
use tenx_proto::auth::v1 as auth;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::notification::v1 as notification;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tonic::Code;

use crate::support::{PASSWORD, Platform, bearer, unique_email};

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
