//! API keys: shown once, stored hashed, authenticated (cached), revoked.

use tenx_proto::auth::v1 as pb;
use tonic::Code;

use crate::support::{TestAuth, access, authed, sign_up, unique_email};

#[tokio::test]
async fn an_api_key_authenticates_until_revoked_and_its_secret_is_never_stored() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let created = sign_up(&mut client, &unique_email()).await?;
    let token = access(&created);
    let request = pb::CreateApiKeyRequest {
        name: "ci".into(),
        scopes: vec!["billing:read".into(), "billing:read".into()],
        expires_in_days: 30,
    };
    let made = client.create_api_key(authed(&token, request)).await?.into_inner();
    assert!(made.secret.starts_with("tenx_sk_"));
    let key = made.api_key.ok_or_else(|| anyhow::anyhow!("no key"))?;
    assert!(made.secret.starts_with(&key.prefix));
    assert_eq!(key.scopes, vec!["billing:read".to_owned()]);
    assert!(key.expires_at.is_some());
    let stored: Vec<u8> = auth.sql().await?.query_one("SELECT secret_hash FROM api_keys", &[]).await?.get(0);
    assert_ne!(stored, made.secret.as_bytes());

    for _ in 0..2 {
        let who = client
            .authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: made.secret.clone() })
            .await?
            .into_inner();
        assert_eq!(Some(who.user_id), created.user.as_ref().map(|u| u.id.clone()));
        assert_eq!(who.api_key_id, key.id);
    }
    let listed = client.list_api_keys(authed(&token, pb::ListApiKeysRequest {})).await?.into_inner().api_keys;
    assert_eq!(listed.len(), 1);
    assert!(listed.iter().all(|k| k.prefix.len() == 12));

    client.revoke_api_key(authed(&token, pb::RevokeApiKeyRequest { api_key_id: key.id.clone() })).await?;
    let refused =
        client.authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: made.secret.clone() }).await;
    assert_eq!(refused.expect_err("revoked").code(), Code::Unauthenticated);
    let guessed =
        client.authenticate_api_key(pb::AuthenticateApiKeyRequest { secret: "tenx_sk_guess".into() }).await;
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
