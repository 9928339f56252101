//! API keys that belong to an organization: bounded by their creator's
//! role when made and on every use, and refused within a second once that
//! role no longer holds what they do.

use std::time::Duration;

use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::organization_service_client::OrganizationServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{Client, PASSWORD, TestAuth, access, authed, eventually, sign_up, unique_email};

type Orgs = OrganizationServiceClient<Channel>;

async fn switch(orgs: &mut Orgs, token: &str, org: &str) -> anyhow::Result<String> {
    let request = pb::SwitchOrganizationRequest { organization_id: org.into() };
    Ok(orgs.switch_organization(authed(token, request)).await?.into_inner().access_token)
}

/// A new account invited with `role` by `owner` and joined: its user id
/// and its token acting in `org`.
async fn join(
    auth: &TestAuth,
    orgs: &mut Orgs,
    owner: &str,
    org: &str,
    role: pb::OrgRole,
) -> anyhow::Result<(String, String)> {
    let email = unique_email();
    orgs.invite_member(authed(owner, pb::InviteMemberRequest { email: email.clone(), role: role.into() }))
        .await?;
    let token = auth.invitation_token().await?;
    let joined = sign_up(&mut auth.client(0).await?, &email).await?;
    orgs.accept_invitation(authed(&access(&joined), pb::AcceptInvitationRequest { token })).await?;
    let acting = switch(orgs, &access(&joined), org).await?;
    Ok((joined.user.map(|u| u.id).unwrap_or_default(), acting))
}

fn org_key(org: &str, scopes: &[&str]) -> pb::CreateApiKeyRequest {
    pb::CreateApiKeyRequest {
        name: "books".into(),
        scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        current_password: PASSWORD.into(),
        organization_id: org.into(),
        ..Default::default()
    }
}

/// What auth tells a service the key is; `Err` with the code when refused.
async fn resolve(
    client: &mut Client,
    service: &str,
    secret: &str,
) -> Result<pb::AuthenticateApiKeyResponse, Code> {
    let request = authed(service, pb::AuthenticateApiKeyRequest { secret: secret.into() });
    client.authenticate_api_key(request).await.map(|r| r.into_inner()).map_err(|s| s.code())
}

async fn refused_within_a_second(
    client: &Client,
    service: &str,
    secret: &str,
    what: &str,
) -> anyhow::Result<()> {
    eventually(Duration::from_secs(1), what, || {
        let (mut client, service, secret) = (client.clone(), service.to_owned(), secret.to_owned());
        async move { Ok(resolve(&mut client, &service, &secret).await == Err(Code::Unauthenticated)) }
    })
    .await
}

#[tokio::test]
async fn an_organizations_key_does_no_more_than_its_creators_role_and_dies_with_it() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let url = format!("http://{}", auth.instances[0].grpc_addr);
    let mut orgs = OrganizationServiceClient::new(Channel::from_shared(url)?.connect().await?);
    let service = auth.service_token().await?;
    let founder = access(&sign_up(&mut client, &unique_email()).await?);
    let created =
        orgs.create_organization(authed(&founder, pb::CreateOrganizationRequest { name: "Acme".into() }));
    let org = created.await?.into_inner().organization.map(|o| o.organization_id).unwrap_or_default();
    let owner = switch(&mut orgs, &founder, &org).await?;
    let (payer, billing) = join(&auth, &mut orgs, &owner, &org, pb::OrgRole::Billing).await?;
    let (_, member) = join(&auth, &mut orgs, &owner, &org, pb::OrgRole::Member).await?;

    // Made within the role: it acts for the organization, as its maker's role.
    let made = client.create_api_key(authed(&billing, org_key(&org, &["billing:write"]))).await?.into_inner();
    let key = made.api_key.clone().unwrap_or_default();
    assert_eq!((key.organization_id.as_str(), key.user_id.as_str()), (org.as_str(), payer.as_str()));
    let announced: pb::OrgApiKeyCreated = auth.last_event("auth.org.api_key_created").await?;
    assert_eq!(
        (announced.api_key_id.as_str(), announced.user_id.as_str()),
        (key.id.as_str(), payer.as_str())
    );
    assert_eq!(announced.scopes, ["billing:write"]);
    let said = resolve(&mut client, &service, &made.secret).await.map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(
        (said.organization_id.as_str(), said.organization_role.as_str(), said.user_id.as_str()),
        (org.as_str(), "billing", payer.as_str())
    );

    // Beyond the role, or a scope that acts for a person, or another
    // organization: refused, and nothing is made.
    let beyond = client.create_api_key(authed(&member, org_key(&org, &["billing:read"]))).await;
    assert_eq!(beyond.map(drop).expect_err("a member sees no billing").code(), Code::PermissionDenied);
    let personal = client.create_api_key(authed(&billing, org_key(&org, &["notifications:read"]))).await;
    let personal = personal.map(drop).expect_err("a person's scope");
    assert_eq!(personal.code(), Code::InvalidArgument);
    assert!(personal.message().contains("scopes"), "{}", personal.message());
    let outsider = access(&sign_up(&mut client, &unique_email()).await?);
    let foreign = client.create_api_key(authed(&outsider, org_key(&org, &[]))).await;
    assert_eq!(foreign.map(drop).expect_err("not a member").code(), Code::NotFound);
    let listed =
        orgs.list_organization_api_keys(authed(&owner, pb::ListOrganizationApiKeysRequest {})).await?;
    let ids: Vec<String> = listed.into_inner().api_keys.into_iter().map(|k| k.id).collect();
    assert_eq!(ids, [key.id.as_str()], "the owner sees the one key made");

    // A new role without org.billing.manage: the key stops working
    // everywhere within a second; one that still fits the role stays.
    let read = client.create_api_key(authed(&billing, org_key(&org, &["billing:read"]))).await?.into_inner();
    let change = pb::ChangeMemberRoleRequest { user_id: payer.clone(), role: pb::OrgRole::Admin.into() };
    orgs.change_member_role(authed(&owner, change)).await?;
    refused_within_a_second(&client, &service, &made.secret, "the billing:write key after the demotion")
        .await?;
    let kept = resolve(&mut client, &service, &read.secret).await.map_err(|c| anyhow::anyhow!("{c:?}"))?;
    assert_eq!(kept.organization_role, "admin", "its maker's role now");
    let log = orgs.list_audit_log(authed(&owner, pb::ListAuditLogRequest::default())).await?.into_inner();
    let revoked = log.entries.iter().find(|e| e.action == "api_key.revoked").map(|e| e.detail.clone());
    assert!(revoked.is_some_and(|d| d.contains("admin")), "{:?}", log.entries);
    let announced: pb::OrgApiKeyRevoked = auth.last_event("auth.org.api_key_revoked").await?;
    assert_eq!(announced.api_key_id, key.id);
    assert!(announced.reason.contains("new role (admin)"), "{}", announced.reason);

    // Its maker removed: their other key goes too.
    orgs.remove_member(authed(&owner, pb::RemoveMemberRequest { user_id: payer })).await?;
    refused_within_a_second(&client, &service, &read.secret, "the key of a removed member").await?;

    // The organization deleted: every key of it goes.
    let last = client.create_api_key(authed(&owner, org_key(&org, &["billing:read"]))).await?.into_inner();
    orgs.delete_organization(authed(&owner, pb::DeleteOrganizationRequest {})).await?;
    refused_within_a_second(&client, &service, &last.secret, "a deleted organization's key").await?;
    Ok(())
}

#[tokio::test]
async fn keys_made_without_a_second_factor_stop_when_the_organization_requires_one() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut client = auth.client(0).await?;
    let url = format!("http://{}", auth.instances[0].grpc_addr);
    let mut orgs = OrganizationServiceClient::new(Channel::from_shared(url)?.connect().await?);
    let service = auth.service_token().await?;
    let signed_up = sign_up(&mut client, &unique_email()).await?;
    let founder = access(&signed_up);
    let created =
        orgs.create_organization(authed(&founder, pb::CreateOrganizationRequest { name: "Acme".into() }));
    let org = created.await?.into_inner().organization.map(|o| o.organization_id).unwrap_or_default();
    let owner = switch(&mut orgs, &founder, &org).await?;
    let plain = client.create_api_key(authed(&owner, org_key(&org, &["billing:read"]))).await?.into_inner();

    // The owner's session shows a second factor from here on (how it
    // got one is the MFA tests' business).
    let user = uuid::Uuid::parse_str(&signed_up.user.map(|u| u.id).unwrap_or_default())?;
    auth.sql().await?.execute("UPDATE sessions SET mfa = true WHERE user_id = $1", &[&user]).await?;
    let proved = client.create_api_key(authed(&owner, org_key(&org, &["billing:read"]))).await?.into_inner();
    orgs.set_mfa_requirement(authed(&owner, pb::SetMfaRequirementRequest { require_mfa: true })).await?;
    refused_within_a_second(&client, &service, &plain.secret, "the key made without a second factor").await?;
    assert!(resolve(&mut client, &service, &proved.secret).await.is_ok(), "made with one: kept");
    let announced: pb::OrgApiKeyRevoked = auth.last_event("auth.org.api_key_revoked").await?;
    assert!(announced.reason.contains("second factor"), "{}", announced.reason);

    // Its maker revokes the other one: recorded for the organization too.
    let id = proved.api_key.map(|k| k.id).unwrap_or_default();
    client.revoke_api_key(authed(&owner, pb::RevokeApiKeyRequest { api_key_id: id.clone() })).await?;
    refused_within_a_second(&client, &service, &proved.secret, "the key its maker revoked").await?;
    let announced: pb::OrgApiKeyRevoked = auth.last_event("auth.org.api_key_revoked").await?;
    assert_eq!(
        (announced.api_key_id.as_str(), announced.reason.as_str()),
        (id.as_str(), "revoked by its maker")
    );
    Ok(())
}
