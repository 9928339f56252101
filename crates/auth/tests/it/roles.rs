//! Roles: stored in auth, granted by auth's own command (the first
//! operator) or an operator's RPC, carried in the next access token, never
//! taken from anywhere else; taking one away ends the sessions carrying it.

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
async fn the_first_admin_is_made_from_auth_configuration_and_carried_in_the_next_token() -> anyhow::Result<()>
{
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    assert!(roles_in(&access(&created))?.is_empty(), "nobody is born an admin");

    let roles = tenx_auth::grant_role(&auth.settings, &email.to_uppercase(), "admin").await?;
    assert_eq!(roles, vec!["admin".to_owned()]);
    tenx_auth::grant_role(&auth.settings, &email, "admin").await?;
    let login =
        pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    let tokens = client.login(login).await?.into_inner().tokens.unwrap_or_default();
    assert_eq!(roles_in(&tokens.access_token)?, vec!["admin".to_owned()], "once, however often granted");

    assert!(tenx_auth::grant_role(&auth.settings, &email, "superuser").await.is_err(), "no such role");
    assert!(tenx_auth::grant_role(&auth.settings, &unique_email(), "admin").await.is_err(), "no such user");
    Ok(())
}

/// An operator grants admin over gRPC; taking it away ends every session
/// of the account at once, so the admin token it already holds is refused
/// and its refresh token too; a user can neither grant nor take roles.
#[tokio::test]
async fn an_operator_grants_and_revokes_admin_and_a_revoked_admin_token_stops_working_at_once()
-> anyhow::Result<()> {
    use crate::support::{authed, refresh};
    use tonic::Code;
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let operator = admin_token(&auth, &mut client).await?;
    let email = unique_email();
    let created = sign_up(&mut client, &email).await?;
    let user_id = created.user.clone().unwrap_or_default().id;

    // A user may not make themselves an admin, with any credential.
    let own = pb::GrantRoleRequest { user_id: user_id.clone(), role: "admin".into(), ..Default::default() };
    let refused = client.grant_role(authed(&access(&created), own.clone())).await.expect_err("a user");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(client.grant_role(own.clone()).await.expect_err("nobody").code(), Code::Unauthenticated);

    let granted = client.grant_role(authed(&operator, own.clone())).await?.into_inner();
    assert_eq!((granted.roles.clone(), granted.changed), (vec!["admin".to_owned()], true));
    let again = client.grant_role(authed(&operator, own.clone())).await?.into_inner();
    assert_eq!((again.roles, again.changed), (vec!["admin".to_owned()], false), "granted once");

    // The next token carries it and opens operator RPCs.
    let login =
        || pb::LoginRequest { email: email.clone(), password: PASSWORD.into(), device_name: String::new() };
    let tokens = client.login(login()).await?.into_inner().tokens;
    let admin = tokens.as_ref().map(|t| t.access_token.clone()).unwrap_or_default();
    assert_eq!(roles_in(&admin)?, vec!["admin".to_owned()]);
    let lookup = pb::LookupUserRequest { user_id: user_id.clone(), ..Default::default() };
    client.lookup_user(authed(&admin, lookup.clone())).await?;

    let revoke =
        pb::RevokeRoleRequest { email: email.to_uppercase(), role: "admin".into(), ..Default::default() };
    let revoked = client.revoke_role(authed(&operator, revoke.clone())).await?.into_inner();
    assert!(revoked.roles.is_empty() && revoked.changed, "{revoked:?}");
    assert_eq!(revoked.sessions_revoked, 2, "the sign-up's session and the login's");
    // The admin token still unexpired is refused now, not at its expiry,
    // and its session cannot be refreshed into a new one.
    let refused = client.lookup_user(authed(&admin, lookup)).await.expect_err("revoked");
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    let refreshed = client.refresh(pb::RefreshRequest { refresh_token: refresh(&tokens) }).await;
    assert_eq!(refreshed.expect_err("session revoked").code(), Code::Unauthenticated);
    let tokens = client.login(login()).await?.into_inner().tokens.unwrap_or_default();
    assert!(roles_in(&tokens.access_token)?.is_empty());
    let lookup = pb::LookupUserRequest { email: email.clone(), ..Default::default() };
    let fresh = client.lookup_user(authed(&operator, lookup)).await?.into_inner();
    assert_eq!((fresh.roles.len(), fresh.active_sessions), (0, 1), "only the new login's session");
    // Taking away a role the account lacks changes nothing, revokes nothing.
    let again = client.revoke_role(authed(&operator, revoke)).await?.into_inner();
    assert_eq!((again.changed, again.sessions_revoked), (false, 0));
    let fresh = client
        .lookup_user(authed(&operator, pb::LookupUserRequest { email: email.clone(), ..Default::default() }))
        .await?
        .into_inner();
    assert_eq!(fresh.active_sessions, 1);

    // Mistakes name the field and change nothing.
    for (request, field, code) in [
        (pb::GrantRoleRequest { role: "superuser".into(), ..own.clone() }, "role", Code::InvalidArgument),
        (pb::GrantRoleRequest { role: String::new(), ..own.clone() }, "role", Code::InvalidArgument),
        (pb::GrantRoleRequest { email: email.clone(), ..own.clone() }, "email", Code::InvalidArgument),
        (pb::GrantRoleRequest { user_id: "x".into(), ..own.clone() }, "user_id", Code::InvalidArgument),
        (
            pb::GrantRoleRequest { user_id: uuid::Uuid::now_v7().to_string(), ..own.clone() },
            "user",
            Code::NotFound,
        ),
    ] {
        let refused = client.grant_role(authed(&operator, request.clone())).await.expect_err("refused");
        assert_eq!(refused.code(), code, "{request:?}: {refused:?}");
        assert!(refused.message().contains(field), "{request:?}: {refused:?}");
    }
    let lookup = pb::LookupUserRequest { user_id, ..Default::default() };
    assert!(client.lookup_user(authed(&operator, lookup)).await?.into_inner().roles.is_empty());
    Ok(())
}

/// An access token of a user auth made an admin.
async fn admin_token(auth: &TestAuth, client: &mut crate::support::Client) -> anyhow::Result<String> {
    let email = unique_email();
    sign_up(client, &email).await?;
    tenx_auth::grant_role(&auth.settings, &email, "admin").await?;
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
