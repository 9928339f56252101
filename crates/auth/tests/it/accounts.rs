//! Signup, login, lockout, GetUser, UpdateProfile, signing-key rotation.

use std::time::{Duration, Instant};

use tenx_proto::auth::v1 as pb;
use tonic::Code;
use tonic_types::StatusExt;

use crate::support::{PASSWORD, TestAuth, access, authed, sign_up, unique_email};

#[tokio::test]
async fn sign_up_normalises_the_email_and_a_duplicate_is_already_exists() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    // Stored lower case; spaces around it are not part of an address.
    let padded = client.sign_up(pb::SignUpRequest {
        email: format!(" {email} "),
        password: PASSWORD.into(),
        ..Default::default()
    });
    assert_eq!(padded.await.expect_err("padded").code(), Code::InvalidArgument);
    let shouting = email.to_uppercase();
    let created = sign_up(&mut client, &shouting).await?;
    let user = created.user.clone().ok_or_else(|| anyhow::anyhow!("no user"))?;
    assert_eq!(user.email, email);
    assert!(!user.email_verified);

    let me = client.get_user(authed(&access(&created), pb::GetUserRequest::default())).await?.into_inner();
    assert_eq!(me.user.map(|u| u.id), Some(user.id.clone()));

    let again = sign_up(&mut client, &email).await.expect_err("duplicate");
    let status = again.downcast_ref::<tonic::Status>().ok_or_else(|| anyhow::anyhow!("{again}"))?;
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(auth.count("users").await?, 1);
    // The signup event was written with the user, for the relay.
    let event: pb::UserSignedUp = auth.last_event("auth.user.signed_up").await?;
    assert_eq!(event.email, email);
    Ok(())
}

#[tokio::test]
async fn logins_abandoned_while_the_password_is_checked_do_not_lock_its_owner_out() -> anyhow::Result<()> {
    // An overloaded edge gives up on logins whose hash is still running
    // (the caller's deadline): each had claimed an attempt. Those never
    // answered, so they must not count: after more of them than the limit
    // allows, the owner still logs in.
    let mut auth = TestAuth::start().await?;
    let mut slow = auth.settings.clone();
    slow.password.iterations = 60;
    let i = auth.start_instance_with(slow).await?;
    let mut client = auth.client(i).await?;
    let email = unique_email();
    sign_up(&mut client, &email).await?;
    let login =
        || pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    let started = Instant::now();
    client.login(login()).await?;
    let check = started.elapsed();
    anyhow::ensure!(check >= Duration::from_millis(200), "the hash is too fast to give up on ({check:?})");
    for _ in 0..8 {
        let gave_up = tokio::time::timeout(check / 4, client.login(login())).await;
        assert!(gave_up.is_err(), "the caller gave up before the answer");
        // The server sees the caller go; the hash it started runs out.
        tokio::time::sleep(check).await;
    }
    let sql = auth.sql().await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let claimed: i32 = sql
            .query_opt("SELECT failures FROM login_attempts WHERE email = $1", &[&email])
            .await?
            .map_or(0, |row| row.get(0));
        if claimed == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{claimed} abandoned attempts still count");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    client.login(login()).await?;
    Ok(())
}

#[tokio::test]
async fn wrong_passwords_lock_the_account_with_retry_info_and_a_right_one_does_not_unlock_it()
-> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    sign_up(&mut client, &email).await?;
    let login = |password: &str| pb::LoginRequest {
        email: email.clone(),
        password: password.to_owned(),
        device_name: String::new(),
    };

    for _ in 0..5 {
        let status = client.login(login("wrong password!")).await.expect_err("wrong password");
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(status.message(), "wrong email or password");
    }
    let locked = client.login(login(PASSWORD)).await.expect_err("locked");
    assert_eq!(locked.code(), Code::ResourceExhausted);
    let retry = locked.get_details_retry_info().and_then(|r| r.retry_delay).unwrap_or_default();
    assert!(retry > Duration::from_secs(20) && retry <= Duration::from_secs(30), "{retry:?}");

    // An unknown email answers like a wrong password, and locks the same
    // way: the lockout says nothing about who has an account.
    let nobody = unique_email();
    let unknown = |password: &str| pb::LoginRequest {
        email: nobody.clone(),
        password: password.into(),
        device_name: String::new(),
    };
    for _ in 0..5 {
        let status = client.login(unknown("wrong password!")).await.expect_err("unknown");
        assert_eq!((status.code(), status.message()), (Code::Unauthenticated, "wrong email or password"));
    }
    let also_locked = client.login(unknown(PASSWORD)).await.expect_err("locked");
    assert_eq!((also_locked.code(), also_locked.message()), (locked.code(), locked.message()));

    // Unlocked (time passes), the right password works and resets the count.
    let sql = auth.sql().await?;
    sql.execute(
        "UPDATE login_attempts SET locked_until = now() - interval '1 second' WHERE email = $1",
        &[&email],
    )
    .await?;
    client.login(login(PASSWORD)).await?;
    let left = sql.query_one("SELECT count(*) FROM login_attempts WHERE email = $1", &[&email]).await?;
    assert_eq!(left.get::<_, i64>(0), 0);
    Ok(())
}

#[tokio::test]
async fn a_profile_update_is_seen_by_a_second_instance_within_100ms() -> anyhow::Result<()> {
    let mut auth = TestAuth::start().await?;
    auth.start_instance().await?;
    let (mut first, mut second) = (auth.client(0).await?, auth.client(1).await?);
    let created = sign_up(&mut first, &unique_email()).await?;
    let token = access(&created);
    let name = |r: pb::GetUserResponse| r.user.map(|u| u.display_name).unwrap_or_default();

    // Both instances have the user cached.
    for _ in 0..2 {
        assert_eq!(
            name(first.get_user(authed(&token, pb::GetUserRequest::default())).await?.into_inner()),
            "Ada"
        );
        assert_eq!(
            name(second.get_user(authed(&token, pb::GetUserRequest::default())).await?.into_inner()),
            "Ada"
        );
    }
    let updated = first
        .update_profile(authed(&token, pb::UpdateProfileRequest { display_name: "Grace".into() }))
        .await?;
    assert!(updated.metadata().get("x-tenx-wal-position").is_some(), "writes return their WAL position");
    let started = Instant::now();
    loop {
        let seen = name(second.get_user(authed(&token, pb::GetUserRequest::default())).await?.into_inner());
        if seen == "Grace" {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_millis(100),
            "second instance still says {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }

    // Read-your-writes by position: the caller's next read sees the write.
    let mut read = authed(&token, pb::GetUserRequest::default());
    if let Some(position) = updated.metadata().get("x-tenx-wal-position") {
        read.metadata_mut().insert("x-tenx-wal-position", position.clone());
    }
    assert_eq!(name(second.get_user(read).await?.into_inner()), "Grace");
    let event: pb::UserUpdated = auth.last_event("auth.user.updated").await?;
    assert_eq!(event.display_name, "Grace");
    Ok(())
}

#[tokio::test]
async fn after_key_rotation_old_tokens_still_verify_and_the_jwks_has_both_keys() -> anyhow::Result<()> {
    let mut auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let old_token = access(&created);
    let before = client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    assert_eq!(before.keys.len(), 1);

    let new_kid = tenx_auth::rotate_keys(&auth.settings, &tenx_common::metrics::Metrics::default()).await?;
    // A fresh instance signs with the new key; the old one learns it on an unknown kid.
    let fresh = auth.start_instance().await?;
    let mut fresh_client = auth.client(fresh).await?;
    let login = pb::LoginRequest {
        email: created.user.clone().map(|u| u.email).unwrap_or_default(),
        password: PASSWORD.into(),
        device_name: String::new(),
    };
    let new_token =
        fresh_client.login(login).await?.into_inner().tokens.map(|t| t.access_token).unwrap_or_default();
    let header = jsonwebtoken::decode_header(&new_token)?;
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));

    for token in [&old_token, &new_token] {
        client.get_user(authed(token, pb::GetUserRequest::default())).await?;
        fresh_client.get_user(authed(token, pb::GetUserRequest::default())).await?;
    }
    let after = fresh_client.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
    let kids: Vec<_> = after.keys.iter().map(|k| k.kid.clone()).collect();
    assert_eq!(kids.len(), 2);
    assert!(kids.contains(&new_kid) && kids.contains(&before.keys[0].kid));
    assert!(after.keys.iter().all(|k| k.kty == "OKP" && k.crv == "Ed25519" && k.alg == "EdDSA"));
    let json: serde_json::Value = serde_json::from_str(&after.jwks_json)?;
    assert_eq!(json["keys"].as_array().map(Vec::len), Some(2));

    // A token whose signature was tampered with is refused.
    let mut tampered = old_token.clone();
    tampered.pop();
    tampered.push(if old_token.ends_with('A') { 'B' } else { 'A' });
    let refused =
        client.get_user(authed(&tampered, pb::GetUserRequest::default())).await.expect_err("tampered");
    assert_eq!(refused.code(), Code::Unauthenticated);
    Ok(())
}

#[tokio::test]
async fn twenty_concurrent_wrong_guesses_get_at_most_max_failures_checked() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    sign_up(&mut client, &email).await?;
    let mut guesses = Vec::new();
    for i in 0..20 {
        let mut client = client.clone();
        let request = pb::LoginRequest {
            email: email.clone(),
            password: format!("guess number {i}"),
            device_name: String::new(),
        };
        guesses.push(tokio::spawn(async move { client.login(request).await.map(|_| ()) }));
    }
    let mut checked = 0;
    for guess in guesses {
        let status = guess.await?.expect_err("all wrong");
        match status.code() {
            Code::Unauthenticated => checked += 1,
            Code::ResourceExhausted => {}
            other => anyhow::bail!("unexpected {other:?}: {status:?}"),
        }
    }
    assert!(checked <= 5, "{checked} guesses were checked; the limit is 5");
    let locked = client
        .login(pb::LoginRequest { email, password: PASSWORD.into(), device_name: String::new() })
        .await
        .expect_err("locked");
    assert_eq!(locked.code(), Code::ResourceExhausted);
    Ok(())
}
