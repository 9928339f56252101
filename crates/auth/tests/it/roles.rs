//! Roles: stored in auth, granted by the operator command, carried in the
//! next access token, never taken from anywhere else.

use base64::Engine;
use tenx_proto::auth::v1 as pb;

use crate::support::{PASSWORD, TestAuth, access, sign_up, unique_email};

fn roles_in(token: &str) -> anyhow::Result<Vec<String>> {
    let payload = token.split('.').nth(1).ok_or_else(|| anyhow::anyhow!("not a JWT"))?;
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload)?)?;
    Ok(claims["roles"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

#[tokio::test]
async fn an_operator_grants_admin_and_the_next_token_carries_it_until_revoked() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    assert!(roles_in(&access(&created))?.is_empty(), "nobody is born an admin");

    let roles = tenx_auth::set_role(&auth.settings, &email.to_uppercase(), "admin", true).await?;
    assert_eq!(roles, vec!["admin".to_owned()]);
    tenx_auth::set_role(&auth.settings, &email, "admin", true).await?;
    let login =
        || pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    let tokens = client.login(login()).await?.into_inner().tokens.unwrap_or_default();
    assert_eq!(roles_in(&tokens.access_token)?, vec!["admin".to_owned()], "once, however often granted");

    assert!(tenx_auth::set_role(&auth.settings, &email, "superuser", true).await.is_err(), "no such role");
    assert!(
        tenx_auth::set_role(&auth.settings, &unique_email(), "admin", true).await.is_err(),
        "no such user"
    );
    tenx_auth::set_role(&auth.settings, &email, "admin", false).await?;
    let tokens = client.login(login()).await?.into_inner().tokens.unwrap_or_default();
    assert!(roles_in(&tokens.access_token)?.is_empty());
    Ok(())
}
