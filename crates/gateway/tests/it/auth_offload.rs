//! Bearer JWTs verified at the edge against auth's JWKS, API keys, key
//! rotation, and what happens when the keys cannot be fetched.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_test_support::{ChaosProxy, eventually, http_get};

use crate::support::{PASSWORD, Platform, bearer, send, sign_up, unique_email};

#[tokio::test]
async fn a_signed_up_user_reads_and_updates_their_profile_over_http() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let (token, _, user_id) = sign_up(gw.http_addr, &unique_email()).await?;
    let auth = bearer(&token);

    let me =
        send(gw.http_addr, "GET", "/v1/me", &[("authorization", &auth), ("x-request-id", "req-42")], None)
            .await?;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["user"]["id"], user_id.as_str());
    assert_eq!(me.json["user"]["display_name"], "Ada");
    assert_eq!(me.header("x-request-id"), Some("req-42"), "the client's request id comes back");
    assert_eq!(me.header("ratelimit-limit"), Some("600"));

    let body = r#"{"display_name":"Grace"}"#;
    let updated = send(gw.http_addr, "PATCH", "/v1/me", &[("authorization", &auth)], Some(body)).await?;
    assert_eq!(updated.status, 200, "{}", updated.text);
    assert!(updated.header("x-tenx-wal-position").is_some_and(|p| p.contains('/')));
    let me = send(gw.http_addr, "GET", "/v1/me", &[("authorization", &auth)], None).await?;
    assert_eq!(me.json["user"]["display_name"], "Grace", "the next read sees the write");
    assert!(
        me.header("x-request-id").is_some_and(|id| id.len() >= 32),
        "an id is generated when none is sent"
    );
    Ok(())
}

/// `token` with its header replaced by `header` (JSON).
fn with_header(token: &str, header: &str) -> String {
    let rest = token.split_once('.').map(|(_, r)| r).unwrap_or_default();
    format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header))
}

/// `token` with its `sub` claim changed, signature kept.
fn with_other_subject(token: &str) -> anyhow::Result<String> {
    let parts: Vec<&str> = token.split('.').collect();
    anyhow::ensure!(parts.len() == 3, "not a JWT");
    let mut claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1])?)?;
    claims["sub"] = uuid::Uuid::now_v7().to_string().into();
    Ok(format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims.to_string()), parts[2]))
}

#[tokio::test]
async fn expired_tampered_wrong_kid_and_missing_tokens_get_401_in_the_error_shape() -> anyhow::Result<()> {
    let platform = Platform::start_with(|auth| auth.tokens.access_ttl_seconds = 1).await?;
    let gw = platform.gateway().await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap_or_default())?)?;
    let kid = header["kid"].as_str().unwrap_or_default().to_owned();

    let valid =
        send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(valid.status, 200, "{}", valid.text);

    let tampered = with_other_subject(&token)?;
    let wrong_kid = with_header(&token, r#"{"alg":"EdDSA","typ":"JWT","kid":"not-a-key"}"#);
    let wrong_alg = with_header(&token, &format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{kid}"}}"#));
    for (what, authorization) in [
        ("tampered", bearer(&tampered)),
        ("wrong kid", bearer(&wrong_kid)),
        ("wrong alg", bearer(&wrong_alg)),
        ("garbage", bearer("abc.def.ghi")),
        ("not bearer", format!("Basic {token}")),
    ] {
        let reply =
            send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &authorization)], None)
                .await?;
        assert_eq!(reply.status, 401, "{what}: {}", reply.text);
        assert_eq!(reply.error_code(), "unauthenticated", "{what}");
    }
    let missing = send(gw.http_addr, "GET", "/v1/me", &[], None).await?;
    assert_eq!((missing.status, missing.error_code().as_str()), (401, "unauthenticated"));

    // Past `exp` plus the gateway's five seconds of clock leeway.
    let claims: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap_or_default())?)?;
    let exp = claims["exp"].as_u64().unwrap_or_default();
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64());
    let wait = (exp as f64 + 6.2 - now()?).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    let expired =
        send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(expired.status, 401, "exp {exp}, now {:.3}: {}", now()?, expired.text);
    assert_eq!(expired.error_code(), "unauthenticated");
    Ok(())
}

#[tokio::test]
async fn tokens_signed_after_a_key_rotation_at_auth_pass_without_a_gateway_restart() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let email = unique_email();
    let (old_token, _, _) = sign_up(gw.http_addr, &email).await?;

    let new_kid =
        tenx_auth::rotate_keys(&platform.auth_settings, &tenx_common::metrics::Metrics::default()).await?;
    // A fresh auth instance signs with the new key.
    let fresh = tenx_common::host::start::<tenx_auth::App>(
        platform.auth_settings.clone(),
        tenx_common::metrics::Metrics::default(),
        platform.shutdown.child(),
    )
    .await?;
    let mut client = AuthServiceClient::connect(format!("http://{}", fresh.grpc_addr)).await?;
    let login = pb::LoginRequest { email, password: PASSWORD.into(), device_name: String::new() };
    let new_token =
        client.login(login).await?.into_inner().tokens.map(|t| t.access_token).unwrap_or_default();
    let kid = serde_json::from_slice::<serde_json::Value>(
        &URL_SAFE_NO_PAD.decode(new_token.split('.').next().unwrap_or_default())?,
    )?["kid"]
        .clone();
    assert_eq!(kid, new_kid.as_str());

    for token in [&new_token, &old_token] {
        let me = send(gw.http_addr, "GET", "/v1/me", &[("authorization", &bearer(token))], None).await?;
        assert_eq!(me.status, 200, "{}", me.text);
    }
    let jwks = send(gw.http_addr, "GET", "/.well-known/jwks.json", &[], None).await?;
    assert_eq!(jwks.json["keys"].as_array().map(Vec::len), Some(2), "{}", jwks.text);
    Ok(())
}

#[tokio::test]
async fn when_auth_keys_cannot_be_fetched_tokens_get_503_not_401() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let proxy = ChaosProxy::start(platform.auth.grpc_addr).await?;
    let mut settings = platform.gateway_settings()?;
    settings.upstreams.auth.url = format!("http://{}", proxy.addr());
    settings.authn.min_refetch_seconds = 0;
    let gw = platform.gateway_with(settings.clone()).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;

    proxy.cut();
    // A known kid verifies locally: auth is not needed to read the inbox.
    let inbox =
        send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(inbox.status, 200, "{}", inbox.text);
    // An unknown kid needs the key set, which cannot be fetched: 503.
    let unknown = with_header(&token, r#"{"alg":"EdDSA","typ":"JWT","kid":"rotated-meanwhile"}"#);
    let reply =
        send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&unknown))], None).await?;
    assert_eq!((reply.status, reply.error_code().as_str()), (503, "unavailable"), "{}", reply.text);
    assert!(reply.header("retry-after").is_some());

    // A gateway starting while auth is unreachable is not ready, and
    // answers tokens with 503.
    let cold = platform.gateway_with(settings).await?;
    let (status, body) = http_get(cold.admin_addr, "/readyz").await?;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("authn:") && !body.contains("authn: ok"), "{body}");
    let reply =
        send(cold.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(reply.status, 503, "{}", reply.text);

    proxy.restore();
    eventually(Duration::from_secs(10), "the cold gateway ready", || async {
        Ok(http_get(cold.admin_addr, "/readyz").await?.0 == 200)
    })
    .await?;
    let reply =
        send(cold.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(reply.status, 200, "{}", reply.text);
    Ok(())
}

#[tokio::test]
async fn an_api_key_works_like_a_token_and_client_identity_headers_are_ignored() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let (token_a, _, user_a) = sign_up(gw.http_addr, &unique_email()).await?;
    let (token_b, _, user_b) = sign_up(gw.http_addr, &unique_email()).await?;

    let mut auth = AuthServiceClient::connect(format!("http://{}", platform.auth.grpc_addr)).await?;
    let mut create = tonic::Request::new(pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec!["profile:read".into(), "notifications:read".into()],
        expires_in_days: 0,
        current_password: PASSWORD.into(),
        organization_id: String::new(),
    });
    create.metadata_mut().insert("authorization", bearer(&token_a).parse()?);
    let secret = auth.create_api_key(create).await?.into_inner().secret;
    let me = send(gw.http_addr, "GET", "/v1/me", &[("authorization", &bearer(&secret))], None).await?;
    assert_eq!(me.status, 200, "{}", me.text);
    assert_eq!(me.json["user"]["id"], user_a.as_str());
    // Only within its scopes: no profile writes, no billing.
    for (method, path, body) in
        [("PATCH", "/v1/me", Some(r#"{"display_name":"Mallory"}"#)), ("GET", "/v1/billing/customer", None)]
    {
        let refused = send(gw.http_addr, method, path, &[("authorization", &bearer(&secret))], body).await?;
        assert_eq!((refused.status, refused.error_code().as_str()), (403, "permission_denied"), "{path}");
    }
    let bad =
        send(gw.http_addr, "GET", "/v1/me", &[("authorization", "Bearer tenx_sk_not-a-key")], None).await?;
    assert_eq!((bad.status, bad.error_code().as_str()), (401, "unauthenticated"));

    // Each user's welcome item arrives through auth's event.
    for token in [&token_a, &token_b] {
        eventually(Duration::from_secs(15), "the welcome item", || async {
            let r =
                send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(token))], None)
                    .await?;
            Ok(r.json["notifications"].as_array().is_some_and(|n| n.len() == 1))
        })
        .await?;
    }
    let own =
        send(gw.http_addr, "GET", "/v1/notifications", &[("authorization", &bearer(&token_a))], None).await?;
    let spoofed = send(
        gw.http_addr,
        "GET",
        "/v1/notifications",
        &[("authorization", &bearer(&secret)), ("x-tenx-user-id", &user_b)],
        None,
    )
    .await?;
    assert_eq!(spoofed.status, 200);
    assert_eq!(spoofed.json["notifications"], own.json["notifications"], "user A's items, not B's");
    Ok(())
}
