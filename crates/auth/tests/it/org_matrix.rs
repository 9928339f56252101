//! The authorization matrix of organizations: every role × every
//! organization RPC that names a permission, against the real service,
//! expected from the one role table (`tenx_common::authn::PERMISSIONS`
//! through each RPC's access rule); and no reach into another
//! organization.

use std::future::Future;
use std::pin::Pin;

use tenx_common::authn::OrgRole;
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::organization_service_client::OrganizationServiceClient;
use tonic::Code;
use tonic::transport::Channel;

use crate::support::{PASSWORD, TestAuth, access, authed, sign_up, unique_email};

type Orgs = OrganizationServiceClient<Channel>;
type Answer = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// An organization with one member of each role, and what the calls need.
struct Org {
    id: String,
    /// Acting tokens by role: owner, admin, billing, member.
    tokens: Vec<(OrgRole, String)>,
}

impl Org {
    fn token(&self, role: OrgRole) -> String {
        self.tokens.iter().find(|(r, _)| *r == role).map(|(_, t)| t.clone()).unwrap_or_default()
    }
}

async fn client(auth: &TestAuth) -> anyhow::Result<Orgs> {
    let url = format!("http://{}", auth.instances[0].grpc_addr);
    Ok(OrganizationServiceClient::new(Channel::from_shared(url)?.connect().await?))
}

async fn switch(orgs: &mut Orgs, token: &str, org: &str) -> anyhow::Result<String> {
    let request = pb::SwitchOrganizationRequest { organization_id: org.into() };
    Ok(orgs.switch_organization(authed(token, request)).await?.into_inner().access_token)
}

fn proto_role(role: OrgRole) -> pb::OrgRole {
    match role {
        OrgRole::Owner => pb::OrgRole::Owner,
        OrgRole::Admin => pb::OrgRole::Admin,
        OrgRole::Billing => pb::OrgRole::Billing,
        OrgRole::Member => pb::OrgRole::Member,
    }
}

/// A new account invited with `role` by `owner`, joined; its user id and
/// its token acting in `org`.
async fn join(
    auth: &TestAuth,
    orgs: &mut Orgs,
    owner: &str,
    org: &str,
    role: OrgRole,
) -> anyhow::Result<(String, String)> {
    let email = unique_email();
    let invite = pb::InviteMemberRequest { email: email.clone(), role: proto_role(role).into() };
    orgs.invite_member(authed(owner, invite)).await?;
    let token = auth.invitation_token().await?;
    let joined = sign_up(&mut auth.client(0).await?, &email).await?;
    let request = pb::AcceptInvitationRequest { token };
    orgs.accept_invitation(authed(&access(&joined), request)).await?;
    let acting = switch(orgs, &access(&joined), org).await?;
    Ok((joined.user.map(|u| u.id).unwrap_or_default(), acting))
}

/// An organization and a member of every role.
async fn organization(auth: &TestAuth, orgs: &mut Orgs) -> anyhow::Result<Org> {
    let founder = access(&sign_up(&mut auth.client(0).await?, &unique_email()).await?);
    let created = orgs
        .create_organization(authed(&founder, pb::CreateOrganizationRequest { name: "Acme".into() }))
        .await?;
    let id = created.into_inner().organization.map(|o| o.organization_id).unwrap_or_default();
    let owner = switch(orgs, &founder, &id).await?;
    let mut tokens = vec![(OrgRole::Owner, owner.clone())];
    for role in [OrgRole::Admin, OrgRole::Billing, OrgRole::Member] {
        tokens.push((role, join(auth, orgs, &owner, &id, role).await?.1));
    }
    Ok(Org { id, tokens })
}

#[tokio::test]
async fn every_role_may_call_exactly_the_organization_rpcs_its_permissions_allow() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut orgs = client(&auth).await?;
    let org = organization(&auth, &mut orgs).await?;
    let owner = org.token(OrgRole::Owner);

    let mut checked = Vec::new();
    for (role, token) in org.tokens.clone() {
        // What each call needs, made fresh by the owner so an allowed call
        // succeeds and changes nothing the next one needs.
        let (target, _) = join(&auth, &mut orgs, &owner, &org.id, OrgRole::Member).await?;
        let (removable, _) = join(&auth, &mut orgs, &owner, &org.id, OrgRole::Member).await?;
        let invite = pb::InviteMemberRequest { email: unique_email(), role: pb::OrgRole::Member.into() };
        let invitation = orgs.invite_member(authed(&owner, invite)).await?.into_inner().invitation;
        let invitation_id = invitation.map(|i| i.invitation_id).unwrap_or_default();
        let key = pb::CreateApiKeyRequest {
            name: "books".into(),
            scopes: vec!["billing:read".into()],
            current_password: PASSWORD.into(),
            organization_id: org.id.clone(),
            ..Default::default()
        };
        let made = auth.client(0).await?.create_api_key(authed(&owner, key)).await?.into_inner();
        let api_key_id = made.api_key.map(|k| k.id).unwrap_or_default();

        let o = orgs.clone();
        let t = token.clone();
        let calls: Vec<(&str, Answer)> = vec![
            ("GetOrganization", {
                let (mut o, t) = (o.clone(), t.clone());
                Box::pin(async move {
                    o.get_organization(authed(&t, pb::GetOrganizationRequest {})).await.map(drop)
                })
            }),
            ("SetMfaRequirement", {
                let (mut o, t) = (o.clone(), t.clone());
                let request = pb::SetMfaRequirementRequest { require_mfa: false };
                Box::pin(async move { o.set_mfa_requirement(authed(&t, request)).await.map(drop) })
            }),
            ("ListMembers", {
                let (mut o, t) = (o.clone(), t.clone());
                Box::pin(async move { o.list_members(authed(&t, pb::ListMembersRequest {})).await.map(drop) })
            }),
            ("RenameOrganization", {
                let (mut o, t) = (o.clone(), t.clone());
                let request = pb::RenameOrganizationRequest { name: "Acme".into() };
                Box::pin(async move { o.rename_organization(authed(&t, request)).await.map(drop) })
            }),
            ("ListAuditLog", {
                let (mut o, t) = (o.clone(), t.clone());
                Box::pin(async move {
                    o.list_audit_log(authed(&t, pb::ListAuditLogRequest::default())).await.map(drop)
                })
            }),
            ("InviteMember", {
                let (mut o, t) = (o.clone(), t.clone());
                let request =
                    pb::InviteMemberRequest { email: unique_email(), role: pb::OrgRole::Member.into() };
                Box::pin(async move { o.invite_member(authed(&t, request)).await.map(drop) })
            }),
            ("ListInvitations", {
                let (mut o, t) = (o.clone(), t.clone());
                Box::pin(async move {
                    o.list_invitations(authed(&t, pb::ListInvitationsRequest {})).await.map(drop)
                })
            }),
            ("RevokeInvitation", {
                let (mut o, t) = (o.clone(), t.clone());
                let request = pb::RevokeInvitationRequest { invitation_id };
                Box::pin(async move { o.revoke_invitation(authed(&t, request)).await.map(drop) })
            }),
            ("ChangeMemberRole", {
                let (mut o, t) = (o.clone(), t.clone());
                let request =
                    pb::ChangeMemberRoleRequest { user_id: target, role: pb::OrgRole::Billing.into() };
                Box::pin(async move { o.change_member_role(authed(&t, request)).await.map(drop) })
            }),
            ("ListOrganizationApiKeys", {
                let (mut o, t) = (o.clone(), t.clone());
                Box::pin(async move {
                    o.list_organization_api_keys(authed(&t, pb::ListOrganizationApiKeysRequest {}))
                        .await
                        .map(drop)
                })
            }),
            ("RevokeOrganizationApiKey", {
                let (mut o, t) = (o.clone(), t.clone());
                let request = pb::RevokeOrganizationApiKeyRequest { api_key_id };
                Box::pin(async move { o.revoke_organization_api_key(authed(&t, request)).await.map(drop) })
            }),
            ("RemoveMember", {
                let (mut o, t) = (o.clone(), t.clone());
                let request = pb::RemoveMemberRequest { user_id: removable };
                Box::pin(async move { o.remove_member(authed(&t, request)).await.map(drop) })
            }),
        ];
        for (method, call) in calls {
            let rule = tenx_proto::access::rule(&format!("/tenx.auth.v1.OrganizationService/{method}"))
                .ok_or_else(|| anyhow::anyhow!("{method} has no rule"))?;
            let allowed = role.permits(rule.permission);
            match call.await {
                Ok(()) => {
                    assert!(allowed, "{} may not {method} ({}) but did", role.as_str(), rule.permission)
                }
                Err(status) => {
                    assert!(
                        !allowed,
                        "{} may {method} ({}) but got {status:?}",
                        role.as_str(),
                        rule.permission
                    );
                    assert_eq!(
                        status.code(),
                        Code::PermissionDenied,
                        "{} {method}: {status:?}",
                        role.as_str()
                    );
                }
            }
            checked.push((role, method));
        }
    }
    // Every organization RPC that names a permission is in the matrix.
    let named: Vec<&str> = tenx_proto::access::METHODS
        .iter()
        .filter(|(path, rule)| {
            path.starts_with("/tenx.auth.v1.OrganizationService/") && !rule.permission.is_empty()
        })
        .filter_map(|(path, _)| path.rsplit('/').next())
        // Leaving and deleting end what the matrix runs in: orgs.rs tests them.
        .filter(|m| !matches!(*m, "LeaveOrganization" | "DeleteOrganization"))
        .collect();
    for method in named {
        assert_eq!(checked.iter().filter(|(_, m)| *m == method).count(), 4, "{method} × every role");
    }
    Ok(())
}

#[tokio::test]
async fn no_role_reaches_into_another_organization() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let mut orgs = client(&auth).await?;
    let ours = organization(&auth, &mut orgs).await?;
    let theirs = organization(&auth, &mut orgs).await?;
    let (their_member, _) =
        join(&auth, &mut orgs, &theirs.token(OrgRole::Owner), &theirs.id, OrgRole::Member).await?;
    let invite = pb::InviteMemberRequest { email: unique_email(), role: pb::OrgRole::Member.into() };
    let their_invitation = orgs
        .invite_member(authed(&theirs.token(OrgRole::Owner), invite))
        .await?
        .into_inner()
        .invitation
        .map(|i| i.invitation_id)
        .unwrap_or_default();

    // Even our owner: their members and invitations are not found, and
    // their organization cannot be entered.
    let owner = ours.token(OrgRole::Owner);
    let remove = pb::RemoveMemberRequest { user_id: their_member.clone() };
    assert_eq!(
        orgs.remove_member(authed(&owner, remove))
            .await
            .map(drop)
            .expect_err("another organization's")
            .code(),
        Code::NotFound
    );
    let change = pb::ChangeMemberRoleRequest { user_id: their_member, role: pb::OrgRole::Owner.into() };
    assert_eq!(
        orgs.change_member_role(authed(&owner, change))
            .await
            .map(drop)
            .expect_err("another organization's")
            .code(),
        Code::NotFound
    );
    let key = pb::CreateApiKeyRequest {
        name: "theirs".into(),
        current_password: PASSWORD.into(),
        organization_id: theirs.id.clone(),
        ..Default::default()
    };
    let their_key =
        auth.client(0).await?.create_api_key(authed(&theirs.token(OrgRole::Owner), key.clone())).await?;
    let their_key = their_key.into_inner().api_key.map(|k| k.id).unwrap_or_default();
    let revoke = pb::RevokeOrganizationApiKeyRequest { api_key_id: their_key };
    assert_eq!(
        orgs.revoke_organization_api_key(authed(&owner, revoke))
            .await
            .map(drop)
            .expect_err("another organization's")
            .code(),
        Code::NotFound
    );
    // Nor can our owner make a key for their organization.
    let mint = auth.client(0).await?.create_api_key(authed(&owner, key)).await;
    assert_eq!(mint.map(drop).expect_err("not a member").code(), Code::NotFound);
    let revoke = pb::RevokeInvitationRequest { invitation_id: their_invitation };
    assert_eq!(
        orgs.revoke_invitation(authed(&owner, revoke))
            .await
            .map(drop)
            .expect_err("another organization's")
            .code(),
        Code::NotFound
    );
    let enter = pb::SwitchOrganizationRequest { organization_id: theirs.id.clone() };
    assert_eq!(
        orgs.switch_organization(authed(&owner, enter))
            .await
            .map(drop)
            .expect_err("another organization's")
            .code(),
        Code::NotFound
    );
    let members = orgs.list_members(authed(&theirs.token(OrgRole::Owner), pb::ListMembersRequest {})).await?;
    assert_eq!(members.into_inner().members.len(), 5, "theirs untouched");
    let pending =
        orgs.list_invitations(authed(&theirs.token(OrgRole::Owner), pb::ListInvitationsRequest {})).await?;
    assert_eq!(pending.into_inner().invitations.len(), 1, "their invitation still pending");
    Ok(())
}
