//! Two-factor authentication through the HTTP API alone: turning TOTP
//! on, a login that needs a code, step-up for a sensitive call, and the
//! security email when TOTP is turned off.

use std::time::{Duration, SystemTime};

use base64::Engine;
use serde_json::{Value, json};
use tenx_auth::totp;
use tenx_test_support::{eventually, mails};

use crate::support::{PASSWORD, Platform, bearer, send, sign_up, unique_email};

fn code(secret: &[u8], ahead: u64) -> String {
    totp::code(secret, totp::step_at(SystemTime::now()) + ahead)
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn a_person_turns_on_totp_signs_in_with_a_code_steps_up_and_is_told_when_it_goes_off()
-> anyhow::Result<()> {
    let platform = Platform::start_with(|auth| auth.mfa.totp_skew_steps = 4).await?;
    let gw = platform.gateway().await?.http_addr;
    let email = unique_email();
    let (access, refresh, _) = sign_up(gw, &email).await?;
    let me = bearer(&access);

    let enrolled = send(gw, "POST", "/v1/me/mfa/totp", &[("authorization", &me)], Some("{}")).await?;
    assert_eq!(enrolled.status, 201, "{}", enrolled.text);
    let secret =
        totp::from_base32(&text(&enrolled.json["secret"])).ok_or_else(|| anyhow::anyhow!("base32"))?;
    assert!(text(&enrolled.json["otpauth_uri"]).starts_with("otpauth://totp/tenx:"));
    let png = base64::engine::general_purpose::STANDARD.decode(text(&enrolled.json["qr_png"]))?;
    assert!(png.starts_with(b"\x89PNG"), "the QR code is a PNG");

    let body = json!({ "code": code(&secret, 0), "current_password": PASSWORD }).to_string();
    let confirmed =
        send(gw, "POST", "/v1/me/mfa/totp/confirm", &[("authorization", &me)], Some(&body)).await?;
    assert_eq!(confirmed.status, 200, "{}", confirmed.text);
    assert_eq!(confirmed.json["recovery_codes"].as_array().map(Vec::len), Some(10));

    // The password alone now yields a challenge, not a session.
    let login = json!({ "email": email, "password": PASSWORD }).to_string();
    let half = send(gw, "POST", "/v1/auth/login", &[], Some(&login)).await?;
    assert_eq!(half.status, 200, "{}", half.text);
    assert!(half.json.get("tokens").is_none_or(Value::is_null), "{}", half.text);
    let challenge = text(&half.json["mfa_challenge"]["challenge"]);
    let body = json!({ "challenge": challenge, "code": code(&secret, 1) }).to_string();
    let done = send(gw, "POST", "/v1/auth/login/mfa", &[], Some(&body)).await?;
    assert_eq!(done.status, 200, "{}", done.text);
    let phone = bearer(&text(&done.json["tokens"]["access_token"]));
    let profile = send(gw, "GET", "/v1/me", &[("authorization", &phone)], None).await?;
    assert_eq!(profile.json["user"]["email"], email.as_str());

    // The first session logged in an hour ago (as its refreshed token
    // says): a sensitive call asks it to prove itself again.
    let (db, conn) = tokio_postgres::connect(&platform.auth_db_url(), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    db.execute("UPDATE auth.sessions SET authenticated_at = now() - interval '1 hour'", &[]).await?;
    let body = json!({ "refresh_token": refresh }).to_string();
    let refreshed = send(gw, "POST", "/v1/auth/refresh", &[], Some(&body)).await?;
    let stale = bearer(&text(&refreshed.json["tokens"]["access_token"]));
    let key = json!({ "name": "ci", "scopes": ["profile:read"], "current_password": PASSWORD }).to_string();
    let refused = send(gw, "POST", "/v1/me/api-keys", &[("authorization", &stale)], Some(&key)).await?;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert_eq!(
        refused.json["error"]["details"][0]["reason"], "REAUTHENTICATION_REQUIRED",
        "{}",
        refused.text
    );
    assert_eq!(refused.json["error"]["details"][0]["metadata"]["max_age_seconds"], "900", "{}", refused.text);
    let body = json!({ "password": PASSWORD, "code": code(&secret, 2) }).to_string();
    let proved = send(gw, "POST", "/v1/me/reauthenticate", &[("authorization", &stale)], Some(&body)).await?;
    assert_eq!(proved.status, 200, "{}", proved.text);
    let fresh = bearer(&text(&proved.json["access_token"]));
    let created = send(gw, "POST", "/v1/me/api-keys", &[("authorization", &fresh)], Some(&key)).await?;
    assert_eq!(created.status, 201, "{}", created.text);

    let off = send(gw, "DELETE", "/v1/me/mfa/totp", &[("authorization", &fresh)], None).await?;
    assert_eq!(off.status, 204, "{}", off.text);
    let status = send(gw, "GET", "/v1/me/mfa", &[("authorization", &fresh)], None).await?;
    assert_eq!(status.status, 200, "{}", status.text);
    assert!(status.json.get("totp_enabled").is_none_or(|v| v == &json!(false)), "{}", status.text);
    eventually(Duration::from_secs(15), "the security email", || {
        let email = email.clone();
        async move {
            Ok(mails()?
                .iter()
                .any(|m| m.to == email && m.raw.contains("Two-factor authentication was turned off")))
        }
    })
    .await?;
    Ok(())
}
