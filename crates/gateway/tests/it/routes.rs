//! The public RPCs that reach HTTP by their `(google.api.http)` binding
//! alone (no handler of their own): sessions, API keys, the password,
//! email verification and notification preferences, as a user does them.

use std::time::Duration;

use tenx_test_support::eventually;

use crate::support::{PASSWORD, Platform, Reply, bearer, send, send_bytes, sign_up, unique_email};

/// The first email to `to` whose text contains `marker`, once it arrives.
async fn mail_with(to: &str, marker: &str) -> anyhow::Result<String> {
    let maildir = std::path::PathBuf::from(
        std::env::var("TENX_TEST_SMTP_MAILDIR").unwrap_or_else(|_| "/tmp/tenx-smtp-sink/maildir".into()),
    );
    let found = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    eventually(Duration::from_secs(15), "the email", || {
        let (maildir, found) = (maildir.clone(), found.clone());
        let (to, marker) = (format!("To: {to}"), marker.to_owned());
        async move {
            for entry in std::fs::read_dir(maildir.join("new"))?.filter_map(Result::ok) {
                let mail = std::fs::read_to_string(entry.path()).unwrap_or_default();
                if mail.contains(&to) && mail.contains(&marker) {
                    *found.lock().unwrap_or_else(|p| p.into_inner()) = mail;
                    return Ok(true);
                }
            }
            Ok(false)
        }
    })
    .await?;
    let mail = found.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(mail)
}

fn ok(reply: &Reply, status: u16, what: &str) {
    assert_eq!(reply.status, status, "{what}: {}", reply.text);
}

#[tokio::test]
async fn sessions_and_api_keys_are_managed_over_http_and_a_revoked_key_stops_working() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let auth = bearer(&token);
    let me = [("authorization", auth.as_str())];

    let sessions = send(gw.http_addr, "GET", "/v1/me/sessions", &me, None).await?;
    ok(&sessions, 200, "list sessions");
    assert_eq!(sessions.json["sessions"].as_array().map(Vec::len), Some(1), "{}", sessions.text);
    assert_eq!(sessions.json["sessions"][0]["current"], true);

    // A key that may read the profile: its secret is shown once.
    let body = serde_json::json!({ "name": "ci", "scopes": ["profile:read"], "current_password": PASSWORD });
    let created = send(gw.http_addr, "POST", "/v1/me/api-keys", &me, Some(&body.to_string())).await?;
    ok(&created, 201, "create a key");
    let secret = created.json["secret"].as_str().unwrap_or_default().to_owned();
    let key_id = created.json["api_key"]["id"].as_str().unwrap_or_default().to_owned();
    assert!(secret.starts_with("tenx_sk_"), "{}", created.text);
    let listed = send(gw.http_addr, "GET", "/v1/me/api-keys", &me, None).await?;
    ok(&listed, 200, "list keys");
    assert_eq!(listed.json["api_keys"][0]["id"], key_id.as_str());
    assert!(!listed.text.contains(&secret), "the secret is never listed");

    let with_key = bearer(&secret);
    let key = [("authorization", with_key.as_str())];
    ok(&send(gw.http_addr, "GET", "/v1/me", &key, None).await?, 200, "the key reads the profile");
    let write = send(gw.http_addr, "PATCH", "/v1/me", &key, Some(r#"{"display_name":"Eve"}"#)).await?;
    ok(&write, 403, "the key has no profile:write");
    // A key cannot mint keys (a session only), nor list sessions.
    ok(&send(gw.http_addr, "GET", "/v1/me/sessions", &key, None).await?, 403, "sessions with a key");

    // Bad input is refused by name, before the service.
    let typo = send(gw.http_addr, "POST", "/v1/me/api-keys", &me, Some(r#"{"nmae":"x"}"#)).await?;
    ok(&typo, 400, "an unknown field");
    assert_eq!(typo.json["error"]["details"][0]["field"], "nmae", "{}", typo.text);
    let days =
        send(gw.http_addr, "POST", "/v1/me/api-keys", &me, Some(r#"{"name":"x","expires_in_days":-3}"#))
            .await?;
    ok(&days, 400, "a negative number of days");
    assert_eq!(days.json["error"]["details"][0]["field"], "expires_in_days", "{}", days.text);

    let path = format!("/v1/me/api-keys/{key_id}");
    ok(&send(gw.http_addr, "DELETE", &path, &me, None).await?, 204, "revoke the key (no content)");
    eventually(Duration::from_secs(5), "the revoked key refused", || async {
        Ok(send(gw.http_addr, "GET", "/v1/me", &key, None).await?.status == 401)
    })
    .await?;

    // Revoking the session itself: its token stops working.
    let session = sessions.json["sessions"][0]["id"].as_str().unwrap_or_default().to_owned();
    ok(&send(gw.http_addr, "DELETE", &format!("/v1/me/sessions/{session}"), &me, None).await?, 204, "revoke");
    eventually(Duration::from_secs(5), "the revoked session refused", || async {
        Ok(send(gw.http_addr, "GET", "/v1/me", &me, None).await?.status == 401)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_forgotten_password_is_reset_with_the_emailed_code_and_preferences_are_kept_over_http()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let email = unique_email();
    let (token, _, _) = sign_up(gw.http_addr, &email).await?;
    let auth = bearer(&token);
    let me = [("authorization", auth.as_str())];

    // Preferences: account email muted, read back; a channel that does
    // not exist is refused by name.
    let mute = serde_json::json!({ "preferences": [{ "category": "account", "channel": "email", "enabled": false }] });
    let muted =
        send(gw.http_addr, "PATCH", "/v1/me/notification-preferences", &me, Some(&mute.to_string())).await?;
    ok(&muted, 200, "mute");
    let prefs = send(gw.http_addr, "GET", "/v1/me/notification-preferences", &me, None).await?;
    ok(&prefs, 200, "read preferences");
    let account_email = prefs.json["preferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["category"] == "account" && p["channel"] == "email")
        .cloned()
        .unwrap_or_default();
    assert_eq!(account_email["enabled"], false, "{}", prefs.text);
    let fax =
        serde_json::json!({ "preferences": [{ "category": "account", "channel": "fax", "enabled": false }] });
    let refused =
        send(gw.http_addr, "PATCH", "/v1/me/notification-preferences", &me, Some(&fax.to_string())).await?;
    ok(&refused, 400, "an unknown channel");
    assert_eq!(refused.json["error"]["details"][0]["field"], "preferences[0].channel", "{}", refused.text);

    // The same answer for an address with no account: nothing to learn.
    let ask = |address: &str| serde_json::json!({ "email": address }).to_string();
    let stranger =
        send(gw.http_addr, "POST", "/v1/auth/password-reset", &[], Some(&ask(&unique_email()))).await?;
    let owner = send(gw.http_addr, "POST", "/v1/auth/password-reset", &[], Some(&ask(&email))).await?;
    ok(&owner, 204, "request a reset");
    assert_eq!((stranger.status, &stranger.text), (owner.status, &owner.text));

    let mail = mail_with(&email, "Your reset code is").await?;
    let code: String = mail
        .split("Your reset code is ")
        .nth(1)
        .unwrap_or_default()
        .chars()
        .take_while(char::is_ascii_alphanumeric)
        .collect();
    let new_password = "a brand new passphrase";
    let wrong = serde_json::json!({ "email": email, "code": "WRONG234", "new_password": new_password });
    let denied =
        send(gw.http_addr, "POST", "/v1/auth/password-reset/confirm", &[], Some(&wrong.to_string())).await?;
    assert_eq!(denied.status, 403, "a wrong code: {}", denied.text);
    let right = serde_json::json!({ "email": email, "code": code, "new_password": new_password });
    let reset =
        send(gw.http_addr, "POST", "/v1/auth/password-reset/confirm", &[], Some(&right.to_string())).await?;
    ok(&reset, 204, "reset with the emailed code");

    let login = |password: &str| serde_json::json!({ "email": email, "password": password }).to_string();
    ok(
        &send(gw.http_addr, "POST", "/v1/auth/login", &[], Some(&login(new_password))).await?,
        200,
        "new password",
    );
    ok(
        &send(gw.http_addr, "POST", "/v1/auth/login", &[], Some(&login(PASSWORD))).await?,
        401,
        "old password",
    );
    Ok(())
}

/// A PNG of noise (it does not compress: about 3 bytes a pixel).
fn png(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let mut state = 0x2545_f491_u32;
    let image = image::RgbImage::from_fn(width, height, |_, _| {
        let mut byte = || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 24) as u8
        };
        image::Rgb([byte(), byte(), byte()])
    });
    let mut bytes = Vec::new();
    image.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    Ok(bytes)
}

#[tokio::test]
async fn an_avatar_uploaded_as_the_raw_body_is_served_as_cacheable_thumbnails_and_the_body_limit_is_the_routes_own()
-> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let (token, _, _) = sign_up(gw.http_addr, &unique_email()).await?;
    let auth = bearer(&token);
    let image = png(800, 600)?;
    // Larger than the gateway's limit for every other route (1 MiB by
    // default), within the avatar route's own.
    assert!(image.len() > 1024 * 1024 && image.len() < 5 * 1024 * 1024, "{}", image.len());
    let addr = gw.http_addr;
    let upload = |content_type: &'static str, body: Vec<u8>| {
        let auth = auth.clone();
        async move {
            send_bytes(
                addr,
                "POST",
                "/v1/me/avatar",
                &[("authorization", &auth), ("content-type", content_type)],
                body,
            )
            .await
        }
    };
    let uploaded = upload("image/png", image.clone()).await?;
    ok(&uploaded, 201, "upload");
    assert!(uploaded.json["avatar_id"].as_str().is_some_and(|id| !id.is_empty()), "{}", uploaded.text);
    let me = [("authorization", auth.as_str())];
    eventually(Duration::from_secs(15), "the thumbnails", || async {
        let user = send(gw.http_addr, "GET", "/v1/me", &me, None).await?;
        Ok(user.json["user"]["avatar_64_id"].as_str().is_some_and(|id| !id.is_empty())
            && user.json["user"]["avatar_256_id"].as_str().is_some_and(|id| !id.is_empty()))
    })
    .await?;

    // The thumbnails, to anyone (an `<img>` sends no credential): PNGs of
    // their size that never change under their ids, so cacheable for good
    // and revalidated by their ETag without sending them again.
    use tenx_proto::auth::v1::{GetAvatarRequest, auth_service_client::AuthServiceClient};
    let mut door = AuthServiceClient::connect(format!("http://{}", gw.grpc_addr)).await?;
    let user = send(gw.http_addr, "GET", "/v1/me", &me, None).await?;
    for (field, size) in [("avatar_64_id", 64), ("avatar_256_id", 256)] {
        let path = format!("/v1/avatars/{}", user.json["user"][field].as_str().unwrap_or_default());
        let got = send(gw.http_addr, "GET", &path, &[], None).await?;
        assert_eq!(got.status, 200, "{path}: {}", got.text);
        assert_eq!(got.header("content-type"), Some("image/png"));
        assert_eq!(got.header("cache-control"), Some("public, max-age=31536000, immutable"));
        let thumbnail = image::load_from_memory(&got.body)?;
        assert_eq!((thumbnail.width(), thumbnail.height()), (size, size), "{field}");
        let etag = got.header("etag").unwrap_or_default().to_owned();
        assert!(etag.starts_with('"') && etag.len() > 8, "a strong ETag: {etag:?}");
        let again = send(gw.http_addr, "GET", &path, &[("if-none-match", &etag)], None).await?;
        assert_eq!(again.status, 304, "{}", again.text);
        assert!(again.body.is_empty(), "a 304 carries no image");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let stale = send(gw.http_addr, "GET", &path, &[("if-none-match", "\"another\"")], None).await?;
        assert_eq!((stale.status, stale.body.len()), (200, got.body.len()));
        // The same bytes to a gRPC client, through the gateway's gRPC door.
        let id = user.json["user"][field].as_str().unwrap_or_default().to_owned();
        let over_grpc = door.get_avatar(GetAvatarRequest { avatar_id: id }).await?.into_inner();
        assert_eq!((over_grpc.content_type.as_str(), &over_grpc.data[..]), ("image/png", &got.body[..]));
    }
    let unknown =
        send(gw.http_addr, "GET", &format!("/v1/avatars/{}", uuid::Uuid::now_v7()), &[], None).await?;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    let malformed = send(gw.http_addr, "GET", "/v1/avatars/not-an-id", &[], None).await?;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    assert_eq!(malformed.json["error"]["details"][0]["field"], "avatar_id", "{}", malformed.text);

    // Not an image type: refused by auth, naming the field.
    let text = upload("text/plain", b"hello".to_vec()).await?;
    ok(&text, 400, "a text body");
    assert_eq!(text.json["error"]["details"][0]["field"], "content_type", "{}", text.text);
    // Over the route's limit: 413 at the edge, auth never sees it.
    let huge = upload("image/png", vec![0; 5_308_417]).await?;
    ok(&huge, 413, "six megabytes");
    // A JSON route keeps the gateway's own (smaller) limit.
    let big_json = format!(r#"{{"display_name":"{}"}}"#, "x".repeat(2 * 1024 * 1024));
    let refused = send(gw.http_addr, "PATCH", "/v1/me", &me, Some(&big_json)).await?;
    ok(&refused, 413, "a 2 MiB profile update");
    Ok(())
}

#[tokio::test]
async fn every_route_that_needs_a_credential_refuses_a_caller_without_one() -> anyhow::Result<()> {
    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let mut checked = 0;
    for (route, http) in tenx_proto::edge::http() {
        // A path parameter's placeholder is never reached: the policy
        // runs before the request is read.
        let path = http.path.replace(['{', '}'], "");
        let reply = send(gw.http_addr, http.method, &path, &[], Some("{}")).await?;
        let missing = reply.json["error"]["message"] == "missing bearer token";
        if route.anonymous {
            // Its service may still refuse (Stripe's webhook checks its
            // signature), never the edge for want of a credential.
            assert!(!missing, "{} {} is anonymous: {}", http.method, http.path, reply.text);
        } else {
            assert_eq!(
                (reply.status, reply.error_code().as_str(), missing),
                (401, "unauthenticated", true),
                "{} {}: {}",
                http.method,
                http.path,
                reply.text
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "{checked} routes need a credential");
    Ok(())
}

/// One rule, declared once in auth.proto, refuses the same input at both
/// doors with the same field named, and nothing is created.
#[tokio::test]
async fn a_contract_rule_refuses_the_same_request_at_the_http_and_grpc_doors() -> anyhow::Result<()> {
    use tenx_proto::auth::v1::{SignUpRequest, auth_service_client::AuthServiceClient};
    use tonic_types::StatusExt;

    let platform = Platform::start().await?;
    let gw = platform.gateway().await?;
    let email = unique_email();
    let body = serde_json::json!({ "email": email, "password": PASSWORD, "display_name": " Ada" });
    let http = send(gw.http_addr, "POST", "/v1/auth/signup", &[], Some(&body.to_string())).await?;
    assert_eq!(http.status, 400, "{}", http.text);
    assert_eq!(http.json["error"]["details"][0]["field"], "display_name", "{}", http.text);

    let mut door = AuthServiceClient::connect(format!("http://{}", gw.grpc_addr)).await?;
    let request = SignUpRequest {
        email: email.clone(),
        password: PASSWORD.into(),
        display_name: " Ada".into(),
        ..Default::default()
    };
    let status = door.sign_up(request).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let fields: Vec<String> = status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default();
    assert_eq!(fields, ["display_name"]);

    // Neither created the account: signing up properly still works.
    let (token, _, _) = sign_up(gw.http_addr, &email).await?;
    assert!(!token.is_empty());
    Ok(())
}
