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

/// An access token of a user auth made an admin.
async fn admin_token(auth: &TestAuth, client: &mut crate::support::Client) -> anyhow::Result<String> {
    let email = unique_email();
    sign_up(client, &email).await?;
    tenx_auth::set_role(&auth.settings, &email, "admin", true).await?;
    let login = pb::LoginRequest { email, password: PASSWORD.into(), device_name: String::new() };
    Ok(client.login(login).await?.into_inner().tokens.unwrap_or_default().access_token)
}

#[tokio::test]
async fn an_operator_looks_a_user_up_by_email_or_id_and_sees_sessions_keys_and_locks() -> anyhow::Result<()> {
    use crate::support::authed;
    use tonic::Code;
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let admin = admin_token(&auth, &mut client).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    let user_id = created.user.clone().unwrap_or_default().id;
    let key = pb::CreateApiKeyRequest {
        name: "ci".into(),
        current_password: PASSWORD.into(),
        ..Default::default()
    };
    client.create_api_key(authed(&access(&created), key)).await?;
    // Five wrong passwords (login.max_failures) lock this client out.
    for _ in 0..5 {
        let wrong = pb::LoginRequest {
            email: email.clone(),
            password: "not it at all".into(),
            device_name: String::new(),
        };
        assert!(client.login(wrong).await.is_err());
    }

    let lookup = |request: pb::LookupUserRequest| {
        let (mut client, admin) = (client.clone(), admin.clone());
        async move { client.lookup_user(authed(&admin, request)).await }
    };
    let by_email = lookup(pb::LookupUserRequest { email: email.to_uppercase(), ..Default::default() })
        .await?
        .into_inner();
    let by_id =
        lookup(pb::LookupUserRequest { user_id: user_id.clone(), ..Default::default() }).await?.into_inner();
    assert_eq!(by_email, by_id);
    let user = by_email.user.clone().unwrap_or_default();
    assert_eq!((user.id.as_str(), user.email.as_str()), (user_id.as_str(), email.as_str()));
    assert!(by_email.roles.is_empty());
    assert_eq!((by_email.active_sessions, by_email.active_api_keys, by_email.locked_clients), (1, 1, 1));
    assert!(by_email.last_login_at.is_some() && by_email.locked_until.is_some(), "{by_email:?}");

    // Mistakes name the field; nobody else may look.
    for (request, field, code) in [
        (pb::LookupUserRequest::default(), "email", Code::InvalidArgument),
        (
            pb::LookupUserRequest { email: email.clone(), user_id: user_id.clone() },
            "email",
            Code::InvalidArgument,
        ),
        (
            pb::LookupUserRequest { user_id: "x".into(), ..Default::default() },
            "user_id",
            Code::InvalidArgument,
        ),
        (
            pb::LookupUserRequest { email: "not an email".into(), ..Default::default() },
            "email",
            Code::InvalidArgument,
        ),
        (pb::LookupUserRequest { email: unique_email(), ..Default::default() }, "user", Code::NotFound),
    ] {
        let refused = lookup(request.clone()).await.expect_err("refused");
        assert_eq!(refused.code(), code, "{request:?}: {refused:?}");
        assert!(refused.message().contains(field), "{request:?}: {refused:?}");
    }
    let own = pb::LookupUserRequest { user_id: user_id.clone(), ..Default::default() };
    let refused = client.lookup_user(authed(&access(&created), own)).await.expect_err("a user");
    assert_eq!(refused.code(), Code::PermissionDenied);
    Ok(())
}
