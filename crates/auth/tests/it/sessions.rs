//! Refresh rotation and reuse detection, revocation, logout, listing.

use std::time::Duration;

use tenx_proto::auth::v1 as pb;
use tonic::Code;

use crate::support::{PASSWORD, TestAuth, access, authed, eventually, refresh, sign_up, unique_email};

#[tokio::test]
async fn refresh_rotates_and_reusing_an_old_token_revokes_the_whole_session() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let first = refresh(&created.tokens);

    let second = client.refresh(pb::RefreshRequest { refresh_token: first.clone() }).await?.into_inner();
    let second_refresh = refresh(&second.tokens);
    assert_ne!(second_refresh, first);
    let second_access = second.tokens.as_ref().map(|t| t.access_token.clone()).unwrap_or_default();
    client.get_user(authed(&second_access, pb::GetUserRequest::default())).await?;

    // The first token, reused after the grace window: theft.
    auth.sql()
        .await?
        .execute(
            "UPDATE refresh_tokens SET rotated_at = now() - interval '1 minute' WHERE rotated_at IS NOT NULL",
            &[],
        )
        .await?;
    let reused = client.refresh(pb::RefreshRequest { refresh_token: first }).await.expect_err("reuse");
    assert_eq!(reused.code(), Code::Unauthenticated);

    // The whole family is dead: the newest refresh token and access tokens too.
    let newest =
        client.refresh(pb::RefreshRequest { refresh_token: second_refresh }).await.expect_err("revoked");
    assert_eq!(newest.code(), Code::Unauthenticated);
    let denied =
        client.get_user(authed(&second_access, pb::GetUserRequest::default())).await.expect_err("revoked");
    assert_eq!(denied.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn a_token_reused_within_the_grace_window_gets_a_pair_instead_of_revoking() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let token = refresh(&created.tokens);
    let a = client.refresh(pb::RefreshRequest { refresh_token: token.clone() }).await?.into_inner();
    let b = client.refresh(pb::RefreshRequest { refresh_token: token }).await?.into_inner();
    assert_ne!(refresh(&a.tokens), refresh(&b.tokens));
    client.refresh(pb::RefreshRequest { refresh_token: refresh(&a.tokens) }).await?;
    Ok(())
}

#[tokio::test]
async fn a_revoked_session_and_a_logged_out_one_are_refused() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    let token = access(&created);
    let login =
        pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: "phone".into() };
    let phone = client.login(login).await?.into_inner().tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))?;

    let sessions =
        client.list_sessions(authed(&token, pb::ListSessionsRequest {})).await?.into_inner().sessions;
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s.current).count(), 1);
    assert!(sessions.iter().any(|s| s.device_name == "phone"));

    client
        .revoke_session(authed(&token, pb::RevokeSessionRequest { session_id: phone.session_id.clone() }))
        .await?;
    let refused = client
        .get_user(authed(&phone.access_token, pb::GetUserRequest::default()))
        .await
        .expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let again = client
        .revoke_session(authed(&token, pb::RevokeSessionRequest { session_id: phone.session_id }))
        .await;
    assert_eq!(again.expect_err("already revoked").code(), Code::NotFound);

    client.logout(pb::LogoutRequest { refresh_token: refresh(&created.tokens) }).await?;
    let out = client.get_user(authed(&token, pb::GetUserRequest::default())).await.expect_err("logged out");
    assert_eq!(out.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn a_user_cannot_read_or_revoke_another_users_things() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let ada = sign_up(&mut client, &unique_email()).await?;
    let bob = sign_up(&mut client, &unique_email()).await?;
    let bob_id = bob.user.as_ref().map(|u| u.id.clone()).unwrap_or_default();
    let bob_session = bob.tokens.as_ref().map(|t| t.session_id.clone()).unwrap_or_default();
    let read = client.get_user(authed(&access(&ada), pb::GetUserRequest { user_id: bob_id })).await;
    assert_eq!(read.expect_err("not yours").code(), Code::NotFound);
    let revoke = client
        .revoke_session(authed(&access(&ada), pb::RevokeSessionRequest { session_id: bob_session }))
        .await;
    assert_eq!(revoke.expect_err("not yours").code(), Code::NotFound);
    client.get_user(authed(&access(&bob), pb::GetUserRequest::default())).await?;
    Ok(())
}

#[tokio::test]
async fn retention_prunes_long_dead_sessions_and_old_codes_and_a_live_session_still_refreshes()
-> anyhow::Result<()> {
    use tenx_common::db::Db;
    use tenx_common::metrics::Metrics;
    use tenx_common::retention::Retention;
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let mut user = async || -> anyhow::Result<(String, String)> {
        let created = sign_up(&mut client, &unique_email()).await?;
        Ok((created.user.map(|u| u.id).unwrap_or_default(), refresh(&created.tokens)))
    };
    let (live, live_refresh) = user().await?;
    let (revoked_long_ago, _) = user().await?;
    let (revoked_lately, _) = user().await?;
    let (idle, _) = user().await?;
    // Age them as time would (defaults: 30 days kept, refresh tokens live
    // 30 days, codes kept 7 days past expiry).
    let sql = auth.sql().await?;
    for (age, user) in [
        (
            "UPDATE sessions SET revoked_at = now() - interval '31 days' WHERE user_id = $1::text::uuid",
            &revoked_long_ago,
        ),
        (
            "UPDATE sessions SET revoked_at = now() - interval '29 days' WHERE user_id = $1::text::uuid",
            &revoked_lately,
        ),
        (
            "UPDATE sessions SET last_used_at = now() - interval '61 days' WHERE user_id = $1::text::uuid",
            &idle,
        ),
    ] {
        assert_eq!(sql.execute(age, &[user]).await?, 1);
    }
    sql.execute(
        "INSERT INTO one_time_codes (id, user_id, purpose, code_hash, expires_at) VALUES \
           (gen_random_uuid(), $1::text::uuid, 'reset_password', '\\x01', now() - interval '8 days'), \
           (gen_random_uuid(), $1::text::uuid, 'reset_password', '\\x02', now() - interval '6 days')",
        &[&live],
    )
    .await?;
    let codes_before = auth.count("one_time_codes").await?;

    let metrics = Metrics::default();
    let db = Db::connect(&auth.settings.database, "tenx-auth-test", &metrics)?;
    let rules = tenx_auth::app::retention_rules(&auth.settings);
    Retention::new(&db, &auth.settings.retention, auth.settings.outbox.retention_hours, rules, &metrics)
        .prune()
        .await?;

    let sessions_of = async |user: &String| -> anyhow::Result<i64> {
        Ok(sql
            .query_one("SELECT count(*) FROM sessions WHERE user_id = $1::text::uuid", &[user])
            .await?
            .get(0))
    };
    assert_eq!(sessions_of(&revoked_long_ago).await?, 0, "revoked 31 days ago: gone");
    assert_eq!(sessions_of(&idle).await?, 0, "idle past the refresh token's life plus 30 days: gone");
    assert_eq!(sessions_of(&revoked_lately).await?, 1, "revoked 29 days ago: kept");
    assert_eq!(sessions_of(&live).await?, 1);
    let orphans: i64 = sql
        .query_one("SELECT count(*) FROM refresh_tokens t WHERE NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = t.session_id)", &[])
        .await?
        .get(0);
    assert_eq!(orphans, 0);
    assert_eq!(
        auth.count("one_time_codes").await?,
        codes_before - 1,
        "only the code 8 days past expiry goes"
    );
    client.refresh(pb::RefreshRequest { refresh_token: live_refresh }).await?;
    Ok(())
}

/// What an auth instance leaves when it dies (or its caller goes away)
/// between committing a revocation and publishing it: the rows changed in
/// the database, nothing told to Redis. Every instance still refuses the
/// credentials within seconds (a revoked session's token, a regranted
/// session's token, a revoked key), though each had them cached as valid.
#[tokio::test]
async fn a_revocation_committed_but_never_published_is_refused_by_every_instance() -> anyhow::Result<()> {
    let mut auth = TestAuth::start().await?;
    let other = auth.start_instance().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    let token = access(&created);
    let session = created.tokens.as_ref().map(|t| t.session_id.clone()).unwrap_or_default();
    let request = pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec!["billing:read".into()],
        expires_in_days: 30,
        current_password: PASSWORD.into(),
        organization_id: String::new(),
    };
    let key = client.create_api_key(authed(&token, request)).await?.into_inner();
    let key_id = key.api_key.map(|k| k.id).unwrap_or_default();
    // A second session, whose grant (the organization and role its tokens
    // carry) is replaced: its tokens must be refused, the session not.
    let login = pb::LoginRequest { email, password: PASSWORD.into(), device_name: "phone".into() };
    let phone = client.login(login).await?.into_inner().tokens.ok_or_else(|| anyhow::anyhow!("no tokens"))?;
    let service = auth.service_token().await?;
    let clients = [client, auth.client(other).await?];

    // Both instances accept all three, and now hold them as valid.
    let refused_everywhere = || {
        let (clients, token, phone, secret, service) =
            (clients.clone(), &token, &phone.access_token, &key.secret, &service);
        async move {
            let mut refused = true;
            for mut client in clients {
                let user = client.get_user(authed(token, pb::GetUserRequest::default())).await;
                let regranted = client.get_user(authed(phone, pb::GetUserRequest::default())).await;
                let request = pb::AuthenticateApiKeyRequest { secret: secret.clone() };
                let key = client.authenticate_api_key(authed(service, request)).await;
                for answer in [user.err(), regranted.err(), key.err()] {
                    match answer {
                        None => refused = false,
                        Some(status) if status.code() == Code::Unauthenticated => {}
                        Some(status) => anyhow::bail!("refused for the wrong reason: {status:?}"),
                    }
                }
            }
            Ok(refused)
        }
    };
    for mut client in clients.clone() {
        client.get_user(authed(&token, pb::GetUserRequest::default())).await?;
        client.get_user(authed(&phone.access_token, pb::GetUserRequest::default())).await?;
        let request = pb::AuthenticateApiKeyRequest { secret: key.secret.clone() };
        client.authenticate_api_key(authed(&service, request)).await?;
    }
    assert!(!refused_everywhere().await?);

    let sql = auth.sql().await?;
    sql.execute(
        "UPDATE sessions SET revoked_at = now(), revoke_reason = 'revoked' WHERE id = $1::text::uuid",
        &[&session],
    )
    .await?;
    sql.execute("UPDATE api_keys SET revoked_at = now() WHERE id = $1::text::uuid", &[&key_id]).await?;
    sql.execute(
        "UPDATE sessions SET grant_id = gen_random_uuid() WHERE id = $1::text::uuid",
        &[&phone.session_id],
    )
    .await?;
    eventually(Duration::from_secs(5), "every instance to refuse the tokens and the key", refused_everywhere)
        .await?;
    eventually(Duration::from_secs(5), "the published revocations to leave the outbox", || async {
        Ok(auth.count("revocation_outbox").await? == 0)
    })
    .await?;
    Ok(())
}
