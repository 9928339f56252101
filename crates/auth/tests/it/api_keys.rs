//! API keys: shown once, stored hashed, authenticated (cached), revoked.

use tenx_proto::auth::v1 as pb;
use tonic::Code;

use crate::support::{PASSWORD, TestAuth, access, authed, sign_up, unique_email};

#[tokio::test]
async fn an_api_key_authenticates_until_revoked_and_its_secret_is_never_stored() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let token = access(&created);
    // A stolen access token alone mints no key: the password is asked.
    let without = pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec![],
        expires_in_days: 0,
        ..Default::default()
    };
    let refused = client.create_api_key(authed(&token, without)).await.expect_err("no password");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let wrong = pb::CreateApiKeyRequest {
        name: "ci".into(),
        current_password: "not it at all".into(),
        ..Default::default()
    };
    assert_eq!(
        client.create_api_key(authed(&token, wrong)).await.expect_err("wrong").code(),
        Code::PermissionDenied
    );
    let request = pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec!["billing:read".into(), "billing:read".into()],
        expires_in_days: 30,
        current_password: PASSWORD.into(),
        organization_id: String::new(),
    };
    let made = client.create_api_key(authed(&token, request)).await?.into_inner();
    assert!(made.secret.starts_with("tenx_sk_"));
    let key = made.api_key.ok_or_else(|| anyhow::anyhow!("no key"))?;
    assert!(made.secret.starts_with(&key.prefix));
    assert_eq!(key.scopes, vec!["billing:read".to_owned()]);
    assert!(key.expires_at.is_some());
    let stored: Vec<u8> = auth.sql().await?.query_one("SELECT secret_hash FROM api_keys", &[]).await?.get(0);
    assert_ne!(stored, made.secret.as_bytes());

    // Resolving keys is for services (whose shared authentication layer
    // asks): a user, or the key itself, may not use it as an oracle.
    let service = auth.service_token().await?;
    let resolve = |secret: &str, credential: &str| {
        authed(credential, pb::AuthenticateApiKeyRequest { secret: secret.to_owned() })
    };
    let by_user = client.authenticate_api_key(resolve(&made.secret, &token)).await;
    assert_eq!(by_user.expect_err("a user").code(), Code::PermissionDenied);
    let by_key = client.authenticate_api_key(resolve(&made.secret, &made.secret)).await;
    assert_eq!(by_key.expect_err("a key").code(), Code::PermissionDenied);
    let anonymous =
        client.authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: made.secret.clone() });
    assert_eq!(anonymous.await.expect_err("no credential").code(), Code::Unauthenticated);
    for _ in 0..2 {
        let who = client.authenticate_api_key(resolve(&made.secret, &service)).await?.into_inner();
        assert_eq!(Some(who.user_id), created.user.as_ref().map(|u| u.id.clone()));
        assert_eq!(who.api_key_id, key.id);
    }
    let listed = client.list_api_keys(authed(&token, pb::ListApiKeysRequest {})).await?.into_inner().api_keys;
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|k| k.prefix.len() == 12));

    client.revoke_api_key(authed(&token, pb::RevokeApiKeyRequest { api_key_id: key.id.clone() })).await?;
    let refused = client.authenticate_api_key(resolve(&made.secret, &service)).await;
    assert_eq!(refused.expect_err("revoked").code(), Code::Unauthenticated);
    let guessed = client.authenticate_api_key(resolve("tenx_sk_guess", &service)).await;
    assert_eq!(guessed.expect_err("unknown").code(), Code::Unauthenticated);
    assert!(
        client
            .list_api_keys(authed(&token, pb::ListApiKeysRequest {}))
            .await?
            .into_inner()
            .api_keys
            .is_empty()
    );
    Ok(())
}

#[tokio::test]
async fn a_user_holds_at_most_max_per_user_live_keys_even_when_creating_them_at_once() -> anyhow::Result<()> {
    let mut auth = TestAuth::start().await?;
    let mut settings = auth.settings.clone();
    settings.api_keys.max_per_user = 3;
    let capped = auth.start_instance_with(settings).await?;
    let mut client = auth.client(capped).await?;
    let token = access(&sign_up(&mut client, &unique_email()).await?);
    let create = || pb::CreateApiKeyRequest {
        name: "k".into(),
        scopes: vec![],
        expires_in_days: 0,
        current_password: PASSWORD.into(),
        organization_id: String::new(),
    };
    // Five at once: as many password checks as the lockout lets one
    // client run concurrently.
    let attempts = (0..5).map(|_| {
        let (mut client, token) = (client.clone(), token.clone());
        async move { client.create_api_key(authed(&token, create())).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let made: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(made.len(), 3, "three of five concurrent creations");
    for refused in results.iter().filter_map(|r| r.as_ref().err()) {
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    }
    // Revoking one frees a place.
    let id = made[0].get_ref().api_key.as_ref().map(|k| k.id.clone()).unwrap_or_default();
    client.revoke_api_key(authed(&token, pb::RevokeApiKeyRequest { api_key_id: id })).await?;
    client.create_api_key(authed(&token, create())).await?;
    assert_eq!(auth.count("api_keys WHERE revoked_at IS NULL").await?, 3);
    Ok(())
}
