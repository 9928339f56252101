//! The attack suite: each way the platform was found to trust whoever
//! reached it, tried against the real services, on their own ports (as a
//! pod inside the cluster would) and through the gateway. Every attack
//! must be refused; a regression fails here.

use std::time::{Duration, Instant};

use tenx_proto::auth::v1 as auth_pb;
use tenx_proto::auth::v1::auth_service_client::AuthServiceClient;
use tenx_proto::billing::v1 as billing_pb;
use tenx_proto::billing::v1::billing_service_client::BillingServiceClient;
use tenx_proto::notification::v1 as notify_pb;
use tenx_proto::notification::v1::notification_service_client::NotificationServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Platform, bearer, send, sign_up, unique_email, wait_for_redis};

/// `message` with `authorization: Bearer <credential>` and more metadata;
/// a value that is no valid metadata fails the test (it must be sent).
fn call<T>(credential: Option<&str>, extra: &[(&'static str, &str)], message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(credential) = credential {
        let value = bearer(credential).parse().unwrap_or_else(|e| panic!("authorization: {e}"));
        request.metadata_mut().insert("authorization", value);
    }
    for (key, value) in extra {
        let value = value.parse().unwrap_or_else(|e| panic!("{key}: {e}"));
        request.metadata_mut().insert(*key, value);
    }
    request
}

struct Direct {
    auth: AuthServiceClient<Channel>,
    billing: BillingServiceClient<Channel>,
    notification: NotificationServiceClient<Channel>,
}

async fn direct(platform: &Platform) -> anyhow::Result<Direct> {
    Ok(Direct {
        auth: AuthServiceClient::connect(format!("http://{}", platform.auth.grpc_addr)).await?,
        billing: BillingServiceClient::connect(format!("http://{}", platform.billing.grpc_addr)).await?,
        notification: NotificationServiceClient::connect(format!(
            "http://{}",
            platform.notification.grpc_addr
        ))
        .await?,
    })
}

fn code<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.err().map_or(Code::Ok, |s| s.code())
}

/// Waits for billing to create the user's customer (from auth's signup
/// event), so billing reads of it can succeed.
async fn customer_exists(d: &Direct, token: &str) -> anyhow::Result<()> {
    tenx_test_support::eventually(Duration::from_secs(15), "the billing customer", || {
        let mut billing = d.billing.clone();
        let request = call(Some(token), &[], billing_pb::GetCustomerRequest::default());
        async move { Ok(billing.get_customer(request).await.is_ok()) }
    })
    .await
}

#[tokio::test]
async fn identity_headers_are_never_believed_on_any_port() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut d = direct(&platform).await?;
    let (token_a, _, user_a) = sign_up(gw.http_addr, &unique_email()).await?;
    let (token_b, _, user_b) = sign_up(gw.http_addr, &unique_email()).await?;
    customer_exists(&d, &token_a).await?;
    customer_exists(&d, &token_b).await?;
    let admin_headers = [("x-tenx-user-id", user_b.as_str()), ("x-tenx-roles", "admin")];

    // No credential, only the headers the gateway used to set: nobody.
    let customer =
        d.billing.get_customer(call(None, &admin_headers, billing_pb::GetCustomerRequest::default()));
    assert_eq!(code(customer.await), Code::Unauthenticated);
    let ledger = call(None, &admin_headers, billing_pb::ListLedgerEntriesRequest::default());
    assert_eq!(code(d.billing.list_ledger_entries(ledger).await), Code::Unauthenticated);
    let usage = call(None, &admin_headers, billing_pb::RecordUsageRequest::default());
    assert_eq!(code(d.billing.record_usage(usage).await), Code::Unauthenticated);
    let inbox = call(None, &admin_headers, notify_pb::ListNotificationsRequest::default());
    assert_eq!(code(d.notification.list_notifications(inbox).await), Code::Unauthenticated);

    // A real user claiming to be another, or an admin: still themselves.
    let claimed = call(Some(&token_a), &admin_headers, billing_pb::GetCustomerRequest::default());
    let shown = d.billing.get_customer(claimed).await?.into_inner().customer.unwrap_or_default();
    assert_eq!(shown.user_id, user_a, "A's own customer, not B's");
    let ledger = call(Some(&token_a), &admin_headers, billing_pb::ListLedgerEntriesRequest::default());
    assert_eq!(code(d.billing.list_ledger_entries(ledger).await), Code::PermissionDenied);
    let usage = call(Some(&token_a), &admin_headers, billing_pb::RecordUsageRequest::default());
    assert_eq!(code(d.billing.record_usage(usage).await), Code::PermissionDenied);
    let hooks = call(Some(&token_a), &admin_headers, notify_pb::ListWebhookEndpointsRequest::default());
    assert_eq!(code(d.notification.list_webhook_endpoints(hooks).await), Code::PermissionDenied);

    // Through the gateway the same: B's headers do not make A into B.
    let through = send(
        gw.http_addr,
        "GET",
        "/v1/billing/customer",
        &[("authorization", &bearer(&token_a)), ("x-tenx-user-id", &user_b), ("x-tenx-roles", "admin")],
        None,
    )
    .await?;
    assert_eq!(through.status, 200, "{}", through.text);
    assert_eq!(through.json["customer"]["user_id"], user_a.as_str());
    Ok(())
}

/// A reset email is what an attacker would most like to send: the real
/// template, to anyone, with their own text.
#[tokio::test]
async fn only_services_and_admins_may_send_notifications() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut d = direct(&platform).await?;
    let (token, _, user) = sign_up(gw.http_addr, &unique_email()).await?;
    let send_request = |key: &str| notify_pb::SendRequest {
        user_id: user.clone(),
        email: "victim@example.com".into(),
        template: "password_reset".into(),
        channels: vec![notify_pb::Channel::Email as i32],
        idempotency_key: key.into(),
        data: None,
    };
    let anonymous = call(None, &[("x-tenx-roles", "admin")], send_request("a"));
    assert_eq!(code(d.notification.send(anonymous).await), Code::Unauthenticated);
    let as_user = call(Some(&token), &[("x-tenx-roles", "admin")], send_request("b"));
    assert_eq!(code(d.notification.send(as_user).await), Code::PermissionDenied);
    // Nor a platform service: the gateway faces the internet, and its
    // secret must not buy mail to anyone.
    let gateway = auth_pb::IssueServiceTokenRequest {
        service: "gateway".into(),
        secret: tenx_auth::testing::client_secret("gateway"),
    };
    let gateway = d.auth.issue_service_token(gateway).await?.into_inner().access_token;
    assert_eq!(
        code(d.notification.send(call(Some(&gateway), &[], send_request("c"))).await),
        Code::PermissionDenied
    );
    let ledger = call(Some(&gateway), &[], billing_pb::ListLedgerEntriesRequest::default());
    assert_eq!(code(d.billing.list_ledger_entries(ledger).await), Code::PermissionDenied);
    let mut issuer = d.auth.clone();
    let wrong = auth_pb::IssueServiceTokenRequest { service: "billing".into(), secret: "guess".repeat(10) };
    assert_eq!(code(issuer.issue_service_token(wrong).await), Code::Unauthenticated);
    let unknown = auth_pb::IssueServiceTokenRequest {
        service: "mallory".into(),
        secret: tenx_auth::testing::client_secret("billing"),
    };
    assert_eq!(code(issuer.issue_service_token(unknown).await), Code::Unauthenticated);
    let sent: i64 = {
        let (client, conn) =
            tokio_postgres::connect(&platform.notify_db_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        client.query_one("SELECT count(*) FROM notification.sends", &[]).await?.get(0)
    };
    assert_eq!(sent, 0, "a refused Send wrote nothing");
    Ok(())
}

#[tokio::test]
async fn a_revoked_session_is_refused_by_every_service_within_a_second() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut d = direct(&platform).await?;
    let (token, refresh, _) = sign_up(gw.http_addr, &unique_email()).await?;
    customer_exists(&d, &token).await?;

    let accepted = |results: [Code; 4]| results == [Code::Ok; 4];
    let probe = |d: &mut Direct| {
        let (mut a, mut b, mut n) = (d.auth.clone(), d.billing.clone(), d.notification.clone());
        let token = token.clone();
        let http = gw.http_addr;
        async move {
            let me = call(Some(&token), &[], auth_pb::GetUserRequest::default());
            let customer = call(Some(&token), &[], billing_pb::GetCustomerRequest::default());
            let inbox = call(Some(&token), &[], notify_pb::ListNotificationsRequest::default());
            let edge = send(http, "GET", "/v1/me", &[("authorization", &bearer(&token))], None).await?;
            let edge = match edge.status {
                200 => Code::Ok,
                401 => Code::Unauthenticated,
                other => anyhow::bail!("gateway answered {other}: {}", edge.text),
            };
            anyhow::Ok([
                code(a.get_user(me).await),
                code(b.get_customer(customer).await),
                code(n.list_notifications(inbox).await),
                edge,
            ])
        }
    };
    assert!(accepted(probe(&mut d).await?), "the session works everywhere before");

    let logout = serde_json::json!({ "refresh_token": refresh }).to_string();
    let out = send(gw.http_addr, "POST", "/v1/auth/logout", &[], Some(&logout)).await?;
    assert!(out.status < 300, "logout: {} {}", out.status, out.text);
    let revoked_at = Instant::now();
    loop {
        let results = probe(&mut d).await?;
        if results == [Code::Unauthenticated; 4] {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "still accepted 1 s after logout (auth, billing, notification, gateway): {results:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn api_keys_are_held_to_their_scopes_and_never_reach_credential_rpcs() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut d = direct(&platform).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    customer_exists(&d, &token).await?;
    let create = |scopes: &[&str]| auth_pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        expires_in_days: 0,
        current_password: crate::support::PASSWORD.into(),
        organization_id: String::new(),
    };
    let key = d.auth.create_api_key(call(Some(&token), &[], create(&["billing:read"]))).await?.into_inner();
    let secret = key.secret.clone();

    let read = d.billing.get_customer(call(Some(&secret), &[], billing_pb::GetCustomerRequest::default()));
    assert_eq!(code(read.await), Code::Ok, "billing:read reads billing");
    let card = billing_pb::AddPaymentMethodRequest { token: "tok_success".into(), ..Default::default() };
    let add = d.billing.add_payment_method(call(Some(&secret), &[("idempotency-key", "k")], card));
    assert_eq!(code(add.await), Code::PermissionDenied, "billing:read cannot add cards");
    let inbox = call(Some(&secret), &[], notify_pb::ListNotificationsRequest::default());
    assert_eq!(code(d.notification.list_notifications(inbox).await), Code::PermissionDenied);
    let profile = call(Some(&secret), &[], auth_pb::GetUserRequest::default());
    assert_eq!(code(d.auth.get_user(profile).await), Code::PermissionDenied);

    // Credential RPCs: a key can never mint keys, change the password or
    // end sessions, whatever scopes it holds.
    let all = key_with_every_scope(&mut d, &token).await?;
    let minted = d.auth.create_api_key(call(Some(&all), &[], create(&[])));
    assert_eq!(code(minted.await), Code::PermissionDenied);
    let password = auth_pb::ChangePasswordRequest {
        current_password: "whatever".into(),
        new_password: "a brand new password".into(),
    };
    assert_eq!(code(d.auth.change_password(call(Some(&all), &[], password)).await), Code::PermissionDenied);
    let sessions = call(Some(&all), &[], auth_pb::ListSessionsRequest::default());
    assert_eq!(code(d.auth.list_sessions(sessions).await), Code::PermissionDenied);
    let over_http =
        send(gw.http_addr, "GET", "/v1/billing/invoices", &[("authorization", &bearer(&secret))], None)
            .await?;
    assert_eq!(over_http.status, 200, "billing:read lists invoices at the edge: {}", over_http.text);

    // Revoked: refused by billing (which cached the key) within a second.
    let id = key.api_key.unwrap_or_default().id;
    d.auth.revoke_api_key(call(Some(&token), &[], auth_pb::RevokeApiKeyRequest { api_key_id: id })).await?;
    let revoked_at = Instant::now();
    loop {
        let read =
            d.billing.get_customer(call(Some(&secret), &[], billing_pb::GetCustomerRequest::default()));
        match code(read.await) {
            Code::Unauthenticated => break,
            other => assert!(revoked_at.elapsed() < Duration::from_secs(1), "still {other:?} after 1 s"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn key_with_every_scope(d: &mut Direct, token: &str) -> anyhow::Result<String> {
    let scopes = tenx_proto::access::scopes().into_iter().map(str::to_owned).collect();
    let request = auth_pb::CreateApiKeyRequest {
        name: "all".into(),
        scopes,
        expires_in_days: 0,
        current_password: crate::support::PASSWORD.into(),
        organization_id: String::new(),
    };
    Ok(d.auth.create_api_key(call(Some(token), &[], request)).await?.into_inner().secret)
}

#[tokio::test]
async fn forged_and_foreign_tokens_are_refused_by_every_service() -> anyhow::Result<()> {
    use base64::Engine;
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut d = direct(&platform).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let parts: Vec<&str> = token.split('.').collect();
    let header: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[0])?)?;
    let mut claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(parts[1])?)?;
    claims["roles"] = serde_json::json!(["admin"]);
    // The real signature over other claims; no signature; a service claim.
    let escalated = format!("{}.{}.{}", parts[0], b64(&claims), parts[2]);
    let unsigned = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "typ": "JWT"})), b64(&claims));
    claims["svc"] = serde_json::json!("billing");
    claims["sub"] = serde_json::json!("service:billing");
    let as_service = format!("{}.{}.{}", b64(&header), b64(&claims), parts[2]);
    for (name, forged) in [("escalated", &escalated), ("unsigned", &unsigned), ("as a service", &as_service)]
    {
        let ledger = call(Some(forged), &[], billing_pb::ListLedgerEntriesRequest::default());
        assert_eq!(code(d.billing.list_ledger_entries(ledger).await), Code::Unauthenticated, "{name}");
        let hooks = call(Some(forged), &[], notify_pb::ListWebhookEndpointsRequest::default());
        assert_eq!(code(d.notification.list_webhook_endpoints(hooks).await), Code::Unauthenticated, "{name}");
        let me = call(Some(forged), &[], auth_pb::GetUserRequest::default());
        assert_eq!(code(d.auth.get_user(me).await), Code::Unauthenticated, "{name}");
    }
    Ok(())
}

#[tokio::test]
async fn a_service_token_reaches_operator_rpcs_and_nothing_meant_for_users() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut d = direct(&platform).await?;
    let request = auth_pb::IssueServiceTokenRequest {
        service: "operator".into(),
        secret: tenx_auth::testing::client_secret("operator"),
    };
    let service = d.auth.issue_service_token(request).await?.into_inner().access_token;
    let ledger = call(Some(&service), &[], billing_pb::ListLedgerEntriesRequest::default());
    assert_eq!(code(d.billing.list_ledger_entries(ledger).await), Code::Ok);
    let hooks = call(Some(&service), &[], notify_pb::ListWebhookEndpointsRequest::default());
    assert_eq!(code(d.notification.list_webhook_endpoints(hooks).await), Code::Ok);
    // A service is nobody's customer and owns no profile.
    let customer = call(Some(&service), &[], billing_pb::GetCustomerRequest::default());
    assert_eq!(code(d.billing.get_customer(customer).await), Code::PermissionDenied);
    let me = call(Some(&service), &[], auth_pb::GetUserRequest::default());
    assert_eq!(code(d.auth.get_user(me).await), Code::PermissionDenied);
    // Resolving API keys is for services only: users cannot probe keys.
    let (token, _, _) = {
        let gw = platform.gateway().await?;
        sign_up(gw.http_addr, &unique_email()).await?
    };
    let probe = call(Some(&token), &[], auth_pb::AuthenticateApiKeyRequest { secret: "tenx_sk_x".into() });
    assert_eq!(code(d.auth.authenticate_api_key(probe).await), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn clients_with_tiny_deadlines_cannot_open_a_circuit_for_everyone_else() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let mut door = AuthServiceClient::connect(format!("http://{}", gw.grpc_addr)).await?;
    for i in 0..30 {
        let mut login = tonic::Request::new(auth_pb::LoginRequest {
            email: format!("nobody-{i}@example.com"),
            password: "a wrong password".into(),
            device_name: String::new(),
        });
        login.set_timeout(Duration::from_millis(5));
        // Out of time, not refused by a limit: the call reached the door.
        let status = door.login(login).await.expect_err("5 ms is too short for a login");
        assert!(matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled), "{status:?}");
    }
    let me = send(gw.http_addr, "GET", "/v1/me", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(me.status, 200, "an unrelated user is still served: {}", me.text);
    Ok(())
}

/// Calls auth's server counted for any of `methods` (its own RED metrics).
async fn auth_calls(platform: &Platform, methods: &[&str]) -> anyhow::Result<u64> {
    let (_, metrics) = tenx_test_support::http_get(platform.auth.admin_addr, "/metrics").await?;
    Ok(metrics
        .lines()
        .filter(|l| l.starts_with("tenx_grpc_server_requests_total"))
        .filter(|l| methods.iter().any(|m| l.contains(&format!("/{m}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum())
}

#[tokio::test]
async fn a_client_spraying_bogus_credentials_is_stopped_before_auth_pays_for_them() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.limits.failed_auth_requests = 5;
    wait_for_redis(&mut settings);
    let gw = platform.gateway_with(settings).await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    // What a bogus key costs auth: resolving it, or, while the gateway's
    // revocation set is not current (auth's heartbeat late on a loaded
    // machine), the revocation lookup, which already answers "not a live
    // key" and so stops the call before it is resolved.
    let asked_about_keys = ["AuthenticateApiKey", "CheckRevoked"];
    let before = auth_calls(&platform, &asked_about_keys).await?;
    let mut statuses = Vec::new();
    for i in 0..30 {
        let key = format!("Bearer tenx_sk_bogus{i:04}");
        statuses.push(send(gw.http_addr, "GET", "/v1/me", &[("authorization", &key)], None).await?.status);
    }
    assert!(statuses[..5].iter().all(|s| *s == 401), "{statuses:?}");
    assert!(statuses[5..].iter().all(|s| *s == 429), "{statuses:?}");
    let asked = auth_calls(&platform, &asked_about_keys).await? - before;
    assert!((5..=6).contains(&asked), "auth was asked about {asked} bogus keys for one client, not 5");
    // The same client's real token waits too; bogus JWTs count the same.
    let mine = send(gw.http_addr, "GET", "/v1/me", &[("authorization", &bearer(&token))], None).await?;
    assert_eq!(mine.status, 429);
    assert!(mine.header("retry-after").is_some());
    Ok(())
}

/// Logs in over HTTP from `client` (the address the proxy in front wrote).
async fn login_from(
    gw: std::net::SocketAddr,
    client: &str,
    email: &str,
    password: &str,
) -> anyhow::Result<u16> {
    let body = serde_json::json!({ "email": email, "password": password }).to_string();
    Ok(send(gw, "POST", "/v1/auth/login", &[("x-forwarded-for", client)], Some(&body)).await?.status)
}

#[tokio::test]
async fn a_stranger_cannot_lock_a_victim_out_nor_tell_accounts_from_nobody() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let mut settings = platform.gateway_settings()?;
    settings.http.forwarded_hops = 1; // a proxy in front writes X-Forwarded-For
    let gw = platform.gateway_with(settings).await?;
    let (victim, stranger) = ("198.51.100.7", "203.0.113.9");
    let email = unique_email();
    sign_up(gw.http_addr, &email).await?;

    // The stranger guesses the victim's password, and an address nobody
    // has: the answers are the same, attempt by attempt.
    let nobody = unique_email();
    let mut guesses = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..7 {
        guesses
            .push(login_from(gw.http_addr, stranger, &email, &format!("guess {i} of the password")).await?);
        unknown
            .push(login_from(gw.http_addr, stranger, &nobody, &format!("guess {i} of the password")).await?);
    }
    assert_eq!(guesses, vec![401, 401, 401, 401, 401, 429, 429], "the stranger is locked out");
    assert_eq!(unknown, guesses, "an account and no account answer alike");

    // Inside the cluster, claiming the victim's address without the
    // gateway's word for it counts against the shared `direct` bucket.
    let mut direct = AuthServiceClient::connect(format!("http://{}", platform.auth.grpc_addr)).await?;
    for i in 0..6 {
        let mut login = tonic::Request::new(auth_pb::LoginRequest {
            email: email.clone(),
            password: format!("direct guess {i}"),
            device_name: String::new(),
        });
        login.metadata_mut().insert(tenx_common::authn::CLIENT_HEADER, victim.parse()?);
        let status = direct.login(login).await.expect_err("a wrong password");
        assert!(matches!(status.code(), Code::Unauthenticated | Code::ResourceExhausted), "{status:?}");
    }

    // Vouching with anything but the gateway's own token is refused.
    let (user_token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let mut login = tonic::Request::new(auth_pb::LoginRequest {
        email: email.clone(),
        password: "a forged vouch".into(),
        device_name: String::new(),
    });
    login.metadata_mut().insert(tenx_common::authn::CLIENT_HEADER, victim.parse()?);
    login.metadata_mut().insert(tenx_common::authn::EDGE_AUTHORIZATION, bearer(&user_token).parse()?);
    assert_eq!(code(direct.login(login).await), Code::Unauthenticated);

    // The victim, from their own address, still gets in.
    assert_eq!(login_from(gw.http_addr, victim, &email, crate::support::PASSWORD).await?, 200);
    Ok(())
}
