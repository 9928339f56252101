//! Email verification, password reset (single use, expiry), password change.

use tenx_proto::auth::v1 as pb;
use tonic::Code;

use crate::support::{PASSWORD, TestAuth, access, authed, sign_up, unique_email};

#[tokio::test]
async fn email_verification_takes_the_emailed_code_once() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let token = access(&created);
    client.request_email_verification(authed(&token, pb::RequestEmailVerificationRequest {})).await?;
    let code = auth.last_code("auth.email_verification_requested").await?;
    assert_eq!(code.len(), 8);

    let wrong = client.verify_email(authed(&token, pb::VerifyEmailRequest { code: "AAAAAAAA".into() })).await;
    assert_eq!(wrong.expect_err("wrong code").code(), Code::PermissionDenied);
    // Typed with spaces and in lower case, the right code works.
    let typed = format!("{} {}", &code[..4].to_lowercase(), &code[4..]);
    let verified =
        client.verify_email(authed(&token, pb::VerifyEmailRequest { code: typed })).await?.into_inner();
    assert_eq!(verified.user.map(|u| u.email_verified), Some(true));
    let reused = client.verify_email(authed(&token, pb::VerifyEmailRequest { code })).await;
    assert_eq!(reused.expect_err("used").code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn a_reset_code_works_once_revokes_every_session_and_expired_codes_are_refused() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    // A key made before the reset (by whoever held the account) dies with it.
    let key = pb::CreateApiKeyRequest {
        name: "k".into(),
        scopes: vec!["profile:read".into()],
        expires_in_days: 0,
        current_password: PASSWORD.into(),
        organization_id: String::new(),
    };
    let key = client.create_api_key(authed(&access(&created), key)).await?.into_inner().secret;
    client.get_user(authed(&key, pb::GetUserRequest::default())).await?;

    // Unknown emails get the same answer and no event.
    client.request_password_reset(pb::RequestPasswordResetRequest { email: unique_email() }).await?;
    assert_eq!(auth.count("tenx_outbox WHERE event_type = 'auth.password_reset_requested'").await?, 0);

    client.request_password_reset(pb::RequestPasswordResetRequest { email: email.clone() }).await?;
    let first = auth.last_code("auth.password_reset_requested").await?;
    let reset = |code: &str, password: &str| pb::ResetPasswordRequest {
        email: email.clone(),
        code: code.to_owned(),
        new_password: password.to_owned(),
    };
    client.reset_password(reset(&first, "a brand new password")).await?;
    let again = client.reset_password(reset(&first, "yet another password")).await.expect_err("single use");
    assert_eq!(again.code(), Code::PermissionDenied);
    let old_session = client.get_user(authed(&access(&created), pb::GetUserRequest::default())).await;
    assert_eq!(old_session.expect_err("sessions revoked").code(), Code::Unauthenticated);
    let old_key = client.get_user(authed(&key, pb::GetUserRequest::default())).await;
    assert_eq!(old_key.expect_err("keys revoked").code(), Code::Unauthenticated);
    let old_password =
        pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    assert_eq!(client.login(old_password).await.expect_err("old password").code(), Code::Unauthenticated);
    client
        .login(pb::LoginRequest {
            email: email.clone(),
            password: "a brand new password".into(),
            device_name: String::new(),
        })
        .await?;

    // Within the cooldown another request sends nothing (same answer).
    let sent = "tenx_outbox WHERE event_type = 'auth.password_reset_requested'";
    assert_eq!(auth.count(sent).await?, 1);
    for _ in 0..3 {
        client.request_password_reset(pb::RequestPasswordResetRequest { email: email.clone() }).await?;
    }
    assert_eq!(auth.count(sent).await?, 1, "one email per cooldown, however often asked");

    // After it, a new code; an expired code is refused.
    auth.sql()
        .await?
        .execute("UPDATE one_time_codes SET created_at = now() - interval '61 seconds'", &[])
        .await?;
    client.request_password_reset(pb::RequestPasswordResetRequest { email: email.clone() }).await?;
    assert_eq!(auth.count(sent).await?, 2);
    let expiring = auth.last_code("auth.password_reset_requested").await?;
    assert_ne!(expiring, first);
    auth.sql()
        .await?
        .execute(
            "UPDATE one_time_codes SET expires_at = now() - interval '1 second' WHERE used_at IS NULL",
            &[],
        )
        .await?;
    let expired = client.reset_password(reset(&expiring, "third password here")).await.expect_err("expired");
    assert_eq!(expired.code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn change_password_needs_the_current_one_and_ends_the_other_sessions() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    let other = client
        .login(pb::LoginRequest {
            email: email.clone(),
            password: PASSWORD.into(),
            device_name: "other".into(),
        })
        .await?
        .into_inner();
    let token = access(&created);
    let change = |current: &str| pb::ChangePasswordRequest {
        current_password: current.into(),
        new_password: "changed password 1".into(),
    };
    let status =
        client.change_password(authed(&token, change("not my password"))).await.expect_err("wrong current");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("current_password"));
    client.change_password(authed(&token, change(PASSWORD))).await?;
    client.get_user(authed(&token, pb::GetUserRequest::default())).await?;
    let other_token = other.tokens.map(|t| t.access_token).unwrap_or_default();
    let ended =
        client.get_user(authed(&other_token, pb::GetUserRequest::default())).await.expect_err("ended");
    assert_eq!(ended.code(), Code::Unauthenticated);
    let event: pb::PasswordChanged = auth.last_event("auth.password_changed").await?;
    assert_eq!(event.email, email);
    Ok(())
}

#[tokio::test]
async fn a_stolen_session_is_no_password_oracle_change_password_guesses_lock_like_logins()
-> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let change = |current: &str| {
        authed(
            &token,
            pb::ChangePasswordRequest {
                current_password: current.into(),
                new_password: "changed password 1".into(),
            },
        )
    };
    for i in 0..5 {
        let wrong = client.change_password(change(&format!("guess number {i}"))).await.expect_err("wrong");
        assert_eq!(wrong.code(), Code::PermissionDenied);
    }
    // Even the right password is refused now, and so is a login from here.
    let locked = client.change_password(change(PASSWORD)).await.expect_err("locked");
    assert_eq!(locked.code(), Code::ResourceExhausted);
    let login =
        pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    assert_eq!(client.login(login).await.expect_err("locked").code(), Code::ResourceExhausted);
    Ok(())
}

#[tokio::test]
async fn verification_emails_are_sent_once_per_cooldown() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let token = access(&sign_up(&mut client, &unique_email()).await?);
    let attempts = (0..5).map(|_| {
        let (mut client, token) = (client.clone(), token.clone());
        async move {
            client.request_email_verification(authed(&token, pb::RequestEmailVerificationRequest {})).await
        }
    });
    for result in futures_util::future::join_all(attempts).await {
        result?;
    }
    assert_eq!(auth.count("tenx_outbox WHERE event_type = 'auth.email_verification_requested'").await?, 1);
    Ok(())
}
