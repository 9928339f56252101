//! Second factors: TOTP enrollment, logins that need a code, recovery
//! codes, lockouts, and step-up (a recent authentication) for sensitive
//! calls.

use std::time::SystemTime;

use tenx_auth::totp;
use tenx_proto::auth::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{Client, PASSWORD, TestAuth, access, authed, claims, sign_up, unique_email};

/// The secret an enrollment handed out, as the phone stores it.
fn secret_of(enrolled: &pb::EnrollTotpResponse) -> anyhow::Result<Vec<u8>> {
    totp::from_base32(&enrolled.secret).ok_or_else(|| anyhow::anyhow!("not base32: {}", enrolled.secret))
}

/// The app's code `ahead` steps from now (the tests accept a skew of a
/// few steps, so several codes are fresh within one 30-second step).
pub(crate) fn code(secret: &[u8], ahead: i64) -> String {
    let now = totp::step_at(SystemTime::now());
    totp::code(secret, now.saturating_add_signed(ahead))
}

/// Six digits that are no code of `secret` anywhere near now.
fn wrong_code(secret: &[u8]) -> String {
    let now = totp::step_at(SystemTime::now());
    (0..10u32)
        .map(|d| d.to_string().repeat(6))
        .find(|c| totp::matching_step(secret, c, now, 6).is_none())
        .unwrap_or_else(|| unreachable!("ten codes cannot all be near now"))
}

/// Turns TOTP on for the holder of `token`: its secret and recovery codes.
pub(crate) async fn enable_totp(client: &mut Client, token: &str) -> anyhow::Result<(Vec<u8>, Vec<String>)> {
    let enrolled = client.enroll_totp(authed(token, pb::EnrollTotpRequest {})).await?.into_inner();
    let secret = secret_of(&enrolled)?;
    let confirm = pb::ConfirmTotpRequest { code: code(&secret, 0), current_password: PASSWORD.into() };
    let codes = client.confirm_totp(authed(token, confirm)).await?.into_inner().recovery_codes;
    Ok((secret, codes))
}

async fn login(client: &mut Client, email: &str) -> Result<pb::LoginResponse, tonic::Status> {
    let request =
        pb::LoginRequest { email: email.to_owned(), password: PASSWORD.into(), device_name: "phone".into() };
    Ok(client.login(request).await?.into_inner())
}

/// A login's challenge (the password was right, a code is due).
async fn challenge(client: &mut Client, email: &str) -> anyhow::Result<String> {
    let answer = login(client, email).await?;
    anyhow::ensure!(answer.tokens.is_none(), "a session before the second factor");
    anyhow::ensure!(answer.user.is_none(), "the account told before the second factor");
    Ok(answer.mfa_challenge.ok_or_else(|| anyhow::anyhow!("no challenge"))?.challenge)
}

async fn complete(
    client: &mut Client,
    challenge: &str,
    code: &str,
) -> Result<pb::CompleteMfaLoginResponse, tonic::Status> {
    let request = pb::CompleteMfaLoginRequest { challenge: challenge.to_owned(), code: code.to_owned() };
    Ok(client.complete_mfa_login(request).await?.into_inner())
}

fn reason(status: &tonic::Status) -> String {
    status.get_details_error_info().map(|info| info.reason).unwrap_or_default()
}

fn with_skew(skew: u64) -> impl FnOnce(&mut tenx_auth::AuthSettings) {
    move |settings| settings.mfa.totp_skew_steps = skew
}

#[tokio::test]
async fn totp_turns_on_with_a_first_code_then_every_login_needs_a_code_that_works_once() -> anyhow::Result<()>
{
    let auth = TestAuth::start_with(with_skew(4)).await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);

    let enrolled = client.enroll_totp(authed(&token, pb::EnrollTotpRequest {})).await?.into_inner();
    let secret = secret_of(&enrolled)?;
    assert_eq!(secret.len(), 20, "160 bits");
    let account = email.replace('@', "%40");
    assert!(
        enrolled
            .otpauth_uri
            .starts_with(&format!("otpauth://totp/tenx:{account}?secret={}", enrolled.secret))
    );
    assert!(enrolled.qr_png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    // Enrolled, not confirmed: logins still need the password only.
    assert!(login(&mut client, &email).await?.tokens.is_some());

    let wrong = pb::ConfirmTotpRequest { code: wrong_code(&secret), current_password: PASSWORD.into() };
    let refused = client.confirm_totp(authed(&token, wrong)).await.expect_err("a wrong code");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // A stolen session without the password cannot turn it on either.
    let thief =
        pb::ConfirmTotpRequest { code: code(&secret, 0), current_password: "not the password".into() };
    let refused = client.confirm_totp(authed(&token, thief)).await.expect_err("a wrong password");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let status = client.get_mfa_status(authed(&token, pb::GetMfaStatusRequest {})).await?.into_inner();
    assert!(!status.totp_enabled, "a wrong first code turns nothing on");

    let first = code(&secret, 0);
    let confirm = pb::ConfirmTotpRequest { code: first.clone(), current_password: PASSWORD.into() };
    let recovery = client.confirm_totp(authed(&token, confirm)).await?.into_inner().recovery_codes;
    assert_eq!(recovery.len(), 10);
    assert_eq!(recovery.iter().collect::<std::collections::HashSet<_>>().len(), 10, "all different");
    assert!(recovery.iter().all(|c| c.len() == 11 && c.as_bytes()[5] == b'-'), "{recovery:?}");
    let status = client.get_mfa_status(authed(&token, pb::GetMfaStatusRequest {})).await?.into_inner();
    assert!(status.totp_enabled && status.totp_enabled_at.is_some());
    assert_eq!(status.recovery_codes_remaining, 10);
    let enabled: pb::MfaEnabled = auth.last_event("auth.mfa.enabled").await?;
    assert_eq!(enabled.email, email);
    let again = client.enroll_totp(authed(&token, pb::EnrollTotpRequest {})).await.expect_err("already on");
    assert_eq!((again.code(), reason(&again).as_str()), (Code::FailedPrecondition, "MFA_ALREADY_ENABLED"));

    // The password alone opens nothing now.
    let pending = challenge(&mut client, &email).await?;
    // The code that confirmed enrollment is spent.
    let replayed = complete(&mut client, &pending, &first).await.expect_err("a replayed code");
    assert_eq!(replayed.code(), Code::PermissionDenied);
    let next = code(&secret, 1);
    let done = complete(&mut client, &pending, &next).await?;
    let tokens = done.tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))?;
    client.get_user(authed(&tokens.access_token, pb::GetUserRequest::default())).await?;
    let said = claims(&tokens.access_token)?;
    assert_eq!(said["amr"], serde_json::json!(["pwd", "otp"]));
    assert!(said["auth_time"].as_u64().is_some_and(|t| t > 0));
    assert_eq!(done.recovery_codes_remaining, 10);

    // A challenge works once; the code works once, on any challenge.
    let used = complete(&mut client, &pending, &code(&secret, 2)).await.expect_err("a used challenge");
    assert_eq!(used.code(), Code::Unauthenticated);
    let other = challenge(&mut client, &email).await?;
    let replayed = complete(&mut client, &other, &next).await.expect_err("a replayed code");
    assert_eq!(replayed.code(), Code::PermissionDenied);
    complete(&mut client, &other, &code(&secret, 2)).await?;
    Ok(())
}

#[tokio::test]
async fn one_code_raced_on_two_logins_opens_one_session() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(with_skew(4)).await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (secret, _) = enable_totp(&mut client, &token).await?;
    let (a, b) = (challenge(&mut client, &email).await?, challenge(&mut client, &email).await?);
    let same = code(&secret, 1);
    let (mut ca, mut cb) = (client.clone(), client.clone());
    let (ra, rb) = tokio::join!(complete(&mut ca, &a, &same), complete(&mut cb, &b, &same));
    assert_eq!(u8::from(ra.is_ok()) + u8::from(rb.is_ok()), 1, "{ra:?} {rb:?}");
    let loser = ra.err().or(rb.err()).ok_or_else(|| anyhow::anyhow!("both won"))?;
    assert_eq!(loser.code(), Code::PermissionDenied);
    Ok(())
}

#[tokio::test]
async fn a_recovery_code_completes_one_login_and_the_owner_is_told() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(with_skew(4)).await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (_, codes) = enable_totp(&mut client, &token).await?;

    // Typed by a person: lower case, spaces, no dash.
    let typed = codes[3].to_lowercase().replace('-', " ");
    let pending = challenge(&mut client, &email).await?;
    let done = complete(&mut client, &pending, &typed).await?;
    assert!(done.tokens.is_some());
    assert_eq!(done.recovery_codes_remaining, 9);
    let told: pb::MfaRecoveryCodeUsed = auth.last_event("auth.mfa.recovery_code_used").await?;
    assert_eq!((told.email.as_str(), told.recovery_codes_remaining), (email.as_str(), 9));

    let pending = challenge(&mut client, &email).await?;
    let spent = complete(&mut client, &pending, &codes[3]).await.expect_err("spent");
    assert_eq!(spent.code(), Code::PermissionDenied);

    // New codes: the old ones stop working.
    let fresh = client
        .regenerate_recovery_codes(authed(&token, pb::RegenerateRecoveryCodesRequest {}))
        .await?
        .into_inner()
        .recovery_codes;
    assert_eq!(fresh.len(), 10);
    let pending = challenge(&mut client, &email).await?;
    let old = complete(&mut client, &pending, &codes[0]).await.expect_err("replaced");
    assert_eq!(old.code(), Code::PermissionDenied);
    let pending = challenge(&mut client, &email).await?;
    complete(&mut client, &pending, &fresh[0]).await?;
    Ok(())
}

#[tokio::test]
async fn wrong_codes_lock_the_client_out_like_wrong_passwords_and_burn_the_challenge() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(|s| {
        s.mfa.totp_skew_steps = 4;
        s.login.max_failures = 3;
        s.mfa.challenge_max_attempts = 10;
    })
    .await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (secret, _) = enable_totp(&mut client, &token).await?;
    let wrong = &wrong_code(&secret);

    // Wrong codes count like wrong passwords (a right password neither
    // adds nor clears): the third locks this client out.
    let pending = challenge(&mut client, &email).await?;
    for _ in 0..3 {
        let refused = complete(&mut client, &pending, wrong).await.expect_err("a wrong code");
        assert_eq!(refused.code(), Code::PermissionDenied);
    }
    let locked = complete(&mut client, &pending, &code(&secret, 1)).await.expect_err("locked out");
    assert_eq!(locked.code(), Code::ResourceExhausted, "{locked:?}");
    let locked = login(&mut client, &email).await.expect_err("locked out");
    assert_eq!(locked.code(), Code::ResourceExhausted);
    let again = pb::ReauthenticateRequest { password: PASSWORD.into(), code: code(&secret, 2) };
    let locked = client.reauthenticate(authed(&token, again)).await.expect_err("locked out");
    assert_eq!(locked.code(), Code::ResourceExhausted, "the same count guards step-up");

    // A challenge takes a bounded number of guesses, whatever the lockout.
    let auth = TestAuth::start_with(|s| {
        s.mfa.totp_skew_steps = 4;
        s.login.max_failures = 100;
        s.mfa.challenge_max_attempts = 2;
    })
    .await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (secret, _) = enable_totp(&mut client, &token).await?;
    let pending = challenge(&mut client, &email).await?;
    for _ in 0..2 {
        complete(&mut client, &pending, wrong).await.expect_err("a wrong code");
    }
    let burnt = complete(&mut client, &pending, &code(&secret, 1)).await.expect_err("burnt");
    assert_eq!(burnt.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn a_stale_session_must_reauthenticate_before_a_sensitive_call_and_nothing_changes_meanwhile()
-> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let signed_up = sign_up(&mut client, &email).await?;
    let tokens = signed_up.tokens.clone().ok_or_else(|| anyhow::anyhow!("no tokens"))?;
    // The session logged in an hour ago; its refreshed token says so.
    auth.sql()
        .await?
        .execute("UPDATE sessions SET authenticated_at = now() - interval '1 hour'", &[])
        .await?;
    let stale = client
        .refresh(pb::RefreshRequest { refresh_token: tokens.refresh_token })
        .await?
        .into_inner()
        .tokens
        .ok_or_else(|| anyhow::anyhow!("no tokens"))?
        .access_token;
    client.get_user(authed(&stale, pb::GetUserRequest::default())).await?;

    let key = |password: &str| pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec!["profile:read".into()],
        expires_in_days: 0,
        current_password: password.into(),
        organization_id: String::new(),
    };
    let refused = client.create_api_key(authed(&stale, key(PASSWORD))).await.expect_err("stale");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::PermissionDenied, "REAUTHENTICATION_REQUIRED")
    );
    let info = refused.get_details_error_info().ok_or_else(|| anyhow::anyhow!("no ErrorInfo"))?;
    assert_eq!(info.metadata.get("max_age_seconds").map(String::as_str), Some("900"));
    assert_eq!(auth.count("api_keys").await?, 0);
    let change = pb::ChangePasswordRequest {
        current_password: PASSWORD.into(),
        new_password: "another long password".into(),
    };
    let refused = client.change_password(authed(&stale, change)).await.expect_err("stale");
    assert_eq!(reason(&refused), "REAUTHENTICATION_REQUIRED");

    let again = |password: &str| pb::ReauthenticateRequest { password: password.into(), code: String::new() };
    let wrong = client.reauthenticate(authed(&stale, again("not the password"))).await.expect_err("wrong");
    assert_eq!(wrong.code(), Code::PermissionDenied);
    let fresh = client.reauthenticate(authed(&stale, again(PASSWORD))).await?.into_inner().access_token;
    let (fresh_at, stale_at) = (claims(&fresh)?["auth_time"].as_u64(), claims(&stale)?["auth_time"].as_u64());
    assert!(fresh_at.zip(stale_at).is_some_and(|(f, s)| f >= s + 3500), "{fresh_at:?} {stale_at:?}");
    client.create_api_key(authed(&fresh, key(PASSWORD))).await?;
    assert_eq!(auth.count("api_keys").await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_session_from_before_totp_proves_the_code_before_turning_it_off() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(with_skew(4)).await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let laptop = access(&sign_up(&mut client, &email).await?);
    let tablet = login(&mut client, &email).await?.tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))?;
    let (secret, _) = enable_totp(&mut client, &laptop).await?;

    // The tablet signed in with the password alone: recent, not enough.
    let refused = client
        .disable_totp(authed(&tablet.access_token, pb::DisableTotpRequest {}))
        .await
        .expect_err("no second factor yet");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::PermissionDenied, "REAUTHENTICATION_REQUIRED")
    );
    let key = pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec![],
        expires_in_days: 0,
        current_password: PASSWORD.into(),
        organization_id: String::new(),
    };
    let refused = client.create_api_key(authed(&tablet.access_token, key)).await.expect_err("no code yet");
    assert_eq!(reason(&refused), "REAUTHENTICATION_REQUIRED");
    let without_code = pb::ReauthenticateRequest { password: PASSWORD.into(), code: String::new() };
    let missing =
        client.reauthenticate(authed(&tablet.access_token, without_code)).await.expect_err("no code");
    assert_eq!(missing.code(), Code::InvalidArgument);
    let with_code = pb::ReauthenticateRequest { password: PASSWORD.into(), code: code(&secret, 1) };
    let proved =
        client.reauthenticate(authed(&tablet.access_token, with_code)).await?.into_inner().access_token;
    assert_eq!(claims(&proved)?["amr"], serde_json::json!(["pwd", "otp"]));

    client.disable_totp(authed(&proved, pb::DisableTotpRequest {})).await?;
    let told: pb::MfaDisabled = auth.last_event("auth.mfa.disabled").await?;
    assert_eq!(told.email, email);
    let status = client.get_mfa_status(authed(&proved, pb::GetMfaStatusRequest {})).await?.into_inner();
    assert!(!status.totp_enabled);
    assert_eq!(auth.count("mfa_recovery_codes").await?, 0);
    assert!(login(&mut client, &email).await?.tokens.is_some(), "the password alone again");
    Ok(())
}

#[tokio::test]
async fn after_a_lock_expires_one_right_password_and_code_sign_in() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(|s| {
        s.mfa.totp_skew_steps = 4;
        s.login.max_failures = 2;
    })
    .await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (secret, _) = enable_totp(&mut client, &token).await?;
    let wrong = wrong_code(&secret);
    let pending = challenge(&mut client, &email).await?;
    complete(&mut client, &pending, &wrong).await.expect_err("a wrong code");
    let locked = complete(&mut client, &pending, &wrong).await.expect_err("locks");
    assert_eq!(locked.code(), Code::PermissionDenied);
    let locked = login(&mut client, &email).await.expect_err("locked out");
    assert_eq!(locked.code(), Code::ResourceExhausted);
    // The lock runs out: the owner's next right password and right code
    // get in (the one guess after a lock covers both steps).
    auth.sql()
        .await?
        .execute("UPDATE login_attempts SET locked_until = now() - interval '1 second'", &[])
        .await?;
    let pending = challenge(&mut client, &email).await?;
    complete(&mut client, &pending, &code(&secret, 1)).await?;
    Ok(())
}

#[tokio::test]
async fn a_flood_of_guesses_on_one_challenge_gets_only_its_allowance_checked() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(|s| {
        s.mfa.totp_skew_steps = 4;
        s.login.max_failures = 100;
        s.mfa.challenge_max_attempts = 3;
    })
    .await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (secret, _) = enable_totp(&mut client, &token).await?;
    let pending = challenge(&mut client, &email).await?;
    let wrong = wrong_code(&secret);
    let guesses = (0..12).map(|_| {
        let (mut client, pending, wrong) = (client.clone(), pending.clone(), wrong.clone());
        async move { complete(&mut client, &pending, &wrong).await }
    });
    let answers = futures_util::future::join_all(guesses).await;
    let checked =
        answers.iter().filter(|a| a.as_ref().is_err_and(|e| e.code() == Code::PermissionDenied)).count();
    let refused =
        answers.iter().filter(|a| a.as_ref().is_err_and(|e| e.code() == Code::Unauthenticated)).count();
    assert_eq!((checked, refused), (3, 9), "{answers:?}");
    let burnt = complete(&mut client, &pending, &code(&secret, 1)).await.expect_err("burnt");
    assert_eq!(burnt.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn wrong_codes_from_everywhere_lock_totp_until_a_password_reset_and_the_owner_is_told()
-> anyhow::Result<()> {
    let auth = TestAuth::start_with(|s| {
        s.mfa.totp_skew_steps = 4;
        s.login.max_failures = 100;
        s.mfa.max_failed_codes = 3;
    })
    .await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let token = access(&sign_up(&mut client, &email).await?);
    let (secret, recovery) = enable_totp(&mut client, &token).await?;
    let wrong = wrong_code(&secret);
    // Three wrong codes, each on a challenge of its own (as a botnet
    // holding the password would spread them).
    for _ in 0..3 {
        let pending = challenge(&mut client, &email).await?;
        complete(&mut client, &pending, &wrong).await.expect_err("a wrong code");
    }
    let told: pb::MfaCodesLocked = auth.last_event("auth.mfa.codes_locked").await?;
    assert_eq!(told.email, email);
    let pending = challenge(&mut client, &email).await?;
    let locked = complete(&mut client, &pending, &code(&secret, 1)).await.expect_err("locked");
    assert_eq!((locked.code(), reason(&locked).as_str()), (Code::FailedPrecondition, "TOTP_LOCKED"));
    // The owner still gets in with a recovery code, and a reset unlocks.
    let pending = challenge(&mut client, &email).await?;
    complete(&mut client, &pending, &recovery[0]).await?;
    client.request_password_reset(pb::RequestPasswordResetRequest { email: email.clone() }).await?;
    let reset = pb::ResetPasswordRequest {
        email: email.clone(),
        code: auth.last_code("auth.password_reset_requested").await?,
        new_password: PASSWORD.into(),
    };
    client.reset_password(reset).await?;
    let pending = challenge(&mut client, &email).await?;
    complete(&mut client, &pending, &code(&secret, 2)).await?;
    Ok(())
}
