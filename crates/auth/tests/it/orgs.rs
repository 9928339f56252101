//! Organizations: creating one, acting in it, what each role may do, the
//! last owner, and a membership change reaching the member's tokens.

use std::time::Duration;

use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::organization_service_client::OrganizationServiceClient;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::support::{Client, TestAuth, access, authed, claims, eventually, refresh, sign_up, unique_email};

type Orgs = OrganizationServiceClient<Channel>;

async fn orgs(auth: &TestAuth) -> anyhow::Result<Orgs> {
    let url = format!("http://{}", auth.instances[0].grpc_addr);
    Ok(OrganizationServiceClient::new(Channel::from_shared(url)?.connect().await?))
}

async fn create(orgs: &mut Orgs, token: &str, name: &str) -> anyhow::Result<String> {
    let request = pb::CreateOrganizationRequest { name: name.into() };
    let created = orgs.create_organization(authed(token, request)).await?.into_inner();
    Ok(created.organization.map(|o| o.organization_id).unwrap_or_default())
}

async fn switch(orgs: &mut Orgs, token: &str, org: &str) -> Result<String, tonic::Status> {
    let request = pb::SwitchOrganizationRequest { organization_id: org.into() };
    Ok(orgs.switch_organization(authed(token, request)).await?.into_inner().access_token)
}

/// `inviter` (acting in an organization) invites a new account with
/// `role`; it signs up and accepts. Its sign-up and its token acting in
/// the organization.
async fn join(
    auth: &TestAuth,
    orgs: &mut Orgs,
    inviter: &str,
    role: pb::OrgRole,
) -> anyhow::Result<(pb::SignUpResponse, String)> {
    let mut client = auth.client(0).await?;
    let email = unique_email();
    let invite = pb::InviteMemberRequest { email: email.clone(), role: role.into() };
    orgs.invite_member(authed(inviter, invite)).await?;
    let token = auth.invitation_token().await?;
    let joined = sign_up(&mut client, &email).await?;
    let accepted = orgs
        .accept_invitation(authed(&access(&joined), pb::AcceptInvitationRequest { token }))
        .await?
        .into_inner()
        .membership
        .ok_or_else(|| anyhow::anyhow!("no membership"))?;
    let org = accepted.organization.map(|o| o.organization_id).unwrap_or_default();
    let acting = switch(orgs, &access(&joined), &org).await?;
    Ok((joined, acting))
}

/// `token` is refused (UNAUTHENTICATED) by auth within a second: the
/// revocation of its grant reached the service.
async fn refused_within_a_second(client: &Client, token: &str, what: &str) -> anyhow::Result<()> {
    eventually(Duration::from_secs(1), what, || {
        let (mut client, token) = (client.clone(), token.to_owned());
        async move {
            let answer = client.get_user(authed(&token, pb::GetUserRequest::default())).await;
            Ok(answer.is_err_and(|status| status.code() == Code::Unauthenticated))
        }
    })
    .await
}

fn user_id(signed_up: &pb::SignUpResponse) -> String {
    signed_up.user.as_ref().map(|u| u.id.clone()).unwrap_or_default()
}

#[tokio::test]
async fn the_creator_owns_the_organization_and_acts_in_it_after_switching() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let token = access(&sign_up(&mut client, &unique_email()).await?);
    let org = create(&mut orgs, &token, "Acme").await?;
    let created: pb::OrgCreated = auth.last_event("auth.org.created").await?;
    assert_eq!((created.organization_id.as_str(), created.name.as_str()), (org.as_str(), "Acme"));

    let mine =
        orgs.list_my_organizations(authed(&token, pb::ListMyOrganizationsRequest {})).await?.into_inner();
    // Their personal organization first, then the new one.
    assert_eq!(mine.memberships.len(), 2);
    let personal = mine.memberships[0].organization.clone().unwrap_or_default();
    assert!(personal.personal && personal.organization_id != org);
    let acme = &mine.memberships[1];
    assert_eq!(acme.organization.as_ref().map(|o| o.organization_id.as_str()), Some(org.as_str()));
    assert_eq!((acme.role(), acme.active), (pb::OrgRole::Owner, false));
    let none = orgs
        .get_organization(authed(&token, pb::GetOrganizationRequest {}))
        .await
        .expect_err("no active org");
    assert_eq!(none.code(), Code::PermissionDenied);

    let acting = switch(&mut orgs, &token, &org).await?;
    let said = claims(&acting)?;
    assert_eq!((said["org"].as_str(), said["org_role"].as_str()), (Some(org.as_str()), Some("owner")));
    let got = orgs.get_organization(authed(&acting, pb::GetOrganizationRequest {})).await?.into_inner();
    assert_eq!(got.role(), pb::OrgRole::Owner);
    let renamed = pb::RenameOrganizationRequest { name: "Acme Inc".into() };
    orgs.rename_organization(authed(&acting, renamed)).await?;
    let log = orgs.list_audit_log(authed(&acting, pb::ListAuditLogRequest::default())).await?.into_inner();
    let actions: Vec<&str> = log.entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["org.renamed", "org.created"]);
    assert_eq!(log.entries[0].detail, "Acme → Acme Inc");
    assert!(log.entries.iter().all(|e| !e.actor_session_id.is_empty()), "from which session");

    // A session speaks for one organization at a time: the token from
    // before the switch is refused everywhere.
    let old =
        client.get_user(authed(&token, pb::GetUserRequest::default())).await.expect_err("switched away");
    assert_eq!(old.code(), Code::Unauthenticated);

    // Someone else's organization cannot be entered, nor told apart from none.
    let other = access(&sign_up(&mut client, &unique_email()).await?);
    let foreign = switch(&mut orgs, &other, &org).await.expect_err("not a member");
    assert_eq!(foreign.code(), Code::NotFound);
    let unknown = switch(&mut orgs, &other, &Uuid::now_v7().to_string()).await.expect_err("no such org");
    assert_eq!(unknown.code(), Code::NotFound);
    Ok(())
}

#[tokio::test]
async fn a_member_reads_but_does_not_manage_and_leaving_ends_its_organization_tokens() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let owner = access(&sign_up(&mut client, &unique_email()).await?);
    let org = create(&mut orgs, &owner, "Acme").await?;
    let owner = switch(&mut orgs, &owner, &org).await?;
    let (joined, member) = join(&auth, &mut orgs, &owner, pb::OrgRole::Member).await?;

    let members = orgs.list_members(authed(&member, pb::ListMembersRequest {})).await?.into_inner().members;
    assert_eq!(
        members.iter().map(|m| m.role()).collect::<Vec<_>>(),
        [pb::OrgRole::Owner, pb::OrgRole::Member]
    );
    let rename = pb::RenameOrganizationRequest { name: "Mine now".into() };
    let refused = orgs.rename_organization(authed(&member, rename)).await.expect_err("a member");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let refused =
        orgs.list_audit_log(authed(&member, pb::ListAuditLogRequest::default())).await.expect_err("a member");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let last = orgs
        .leave_organization(authed(&owner, pb::LeaveOrganizationRequest {}))
        .await
        .expect_err("last owner");
    assert_eq!(last.code(), Code::FailedPrecondition);
    assert_eq!(last.get_details_error_info().map(|i| i.reason).as_deref(), Some("LAST_OWNER"));

    orgs.leave_organization(authed(&member, pb::LeaveOrganizationRequest {})).await?;
    let removed: pb::OrgMemberRemoved = auth.last_event("auth.org.member_removed").await?;
    assert_eq!(removed.user_id, user_id(&joined));
    // Its token for the organization stops working (every service follows
    // the same revocation feed); its session does not.
    refused_within_a_second(&client, &member, "the member's organization token refused").await?;
    let again =
        client.refresh(pb::RefreshRequest { refresh_token: refresh(&joined.tokens) }).await?.into_inner();
    let token = again.tokens.map(|t| t.access_token).unwrap_or_default();
    assert!(claims(&token)?.get("org").is_none(), "no organization any more");
    client.get_user(authed(&token, pb::GetUserRequest::default())).await?;
    let log = orgs.list_audit_log(authed(&owner, pb::ListAuditLogRequest::default())).await?.into_inner();
    assert_eq!(log.entries[0].action, "member.left");
    assert_eq!(log.entries[1].action, "member.joined");
    Ok(())
}

#[tokio::test]
async fn auth_checks_the_role_itself_and_two_owners_leaving_at_once_leave_one() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let first = sign_up(&mut client, &unique_email()).await?;
    let org = create(&mut orgs, &access(&first), "Acme").await?;
    let first = switch(&mut orgs, &access(&first), &org).await?;
    let (_, second) = join(&auth, &mut orgs, &first, pb::OrgRole::Owner).await?;
    let acme = Uuid::parse_str(&org)?;

    // A demotion written behind auth's back: the token still says owner,
    // auth's own check says no.
    auth.sql()
        .await?
        .execute(
            "UPDATE org_members SET role = 'member' WHERE org_id = $2 AND role = 'owner' AND user_id <> $1",
            &[&Uuid::parse_str(claims(&first)?["sub"].as_str().unwrap_or_default())?, &acme],
        )
        .await?;
    let rename = pb::RenameOrganizationRequest { name: "Taken".into() };
    let refused = orgs.rename_organization(authed(&second, rename)).await.expect_err("no longer an owner");
    assert_eq!(refused.code(), Code::PermissionDenied);
    auth.sql().await?.execute("UPDATE org_members SET role = 'owner' WHERE org_id = $1", &[&acme]).await?;

    let (mut a, mut b) = (orgs.clone(), orgs.clone());
    let (ra, rb) = tokio::join!(
        a.leave_organization(authed(&first, pb::LeaveOrganizationRequest {})),
        b.leave_organization(authed(&second, pb::LeaveOrganizationRequest {})),
    );
    assert_eq!(u8::from(ra.is_ok()) + u8::from(rb.is_ok()), 1, "{ra:?} {rb:?}");
    let loser = ra.err().or(rb.err()).ok_or_else(|| anyhow::anyhow!("both left"))?;
    assert_eq!(loser.get_details_error_info().map(|i| i.reason).as_deref(), Some("LAST_OWNER"), "{loser:?}");
    let owners: i64 = auth
        .sql()
        .await?
        .query_one("SELECT count(*) FROM org_members WHERE org_id = $1 AND role = 'owner'", &[&acme])
        .await?
        .get(0);
    assert_eq!(owners, 1);
    Ok(())
}

#[tokio::test]
async fn an_invitation_is_for_its_address_once_and_only_an_owner_invites_an_owner() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let owner = access(&sign_up(&mut client, &unique_email()).await?);
    let org = create(&mut orgs, &owner, "Acme").await?;
    let owner = switch(&mut orgs, &owner, &org).await?;
    let (_, admin) = join(&auth, &mut orgs, &owner, pb::OrgRole::Admin).await?;

    let owner_invite = pb::InviteMemberRequest { email: unique_email(), role: pb::OrgRole::Owner.into() };
    let refused =
        orgs.invite_member(authed(&admin, owner_invite)).await.expect_err("an admin inviting an owner");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // The invitation is for one address: another account cannot use it.
    let invited = unique_email();
    let invite = pb::InviteMemberRequest { email: invited.clone(), role: pb::OrgRole::Billing.into() };
    orgs.invite_member(authed(&admin, invite)).await?;
    let token = auth.invitation_token().await?;
    let stranger = access(&sign_up(&mut client, &unique_email()).await?);
    let refused = orgs
        .accept_invitation(authed(&stranger, pb::AcceptInvitationRequest { token: token.clone() }))
        .await
        .expect_err("someone else's invitation");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let pending = orgs.list_invitations(authed(&admin, pb::ListInvitationsRequest {})).await?.into_inner();
    assert_eq!(pending.invitations.len(), 1, "still pending");

    let mine = access(&sign_up(&mut client, &invited).await?);
    let accepted =
        orgs.accept_invitation(authed(&mine, pb::AcceptInvitationRequest { token: token.clone() })).await?;
    assert_eq!(accepted.into_inner().membership.map(|m| m.role()), Some(pb::OrgRole::Billing));
    let again =
        orgs.accept_invitation(authed(&mine, pb::AcceptInvitationRequest { token })).await.expect_err("used");
    assert_eq!(again.code(), Code::NotFound);
    let invite = pb::InviteMemberRequest { email: invited, role: pb::OrgRole::Member.into() };
    let member = orgs.invite_member(authed(&owner, invite)).await.expect_err("already a member");
    assert_eq!(member.code(), Code::AlreadyExists);

    // Declined from the email, no account needed; revoked by an admin.
    let invite = pb::InviteMemberRequest { email: unique_email(), role: pb::OrgRole::Member.into() };
    orgs.invite_member(authed(&owner, invite)).await?;
    let declined = auth.invitation_token().await?;
    orgs.decline_invitation(pb::DeclineInvitationRequest { token: declined.clone() }).await?;
    let late =
        orgs.accept_invitation(authed(&stranger, pb::AcceptInvitationRequest { token: declined })).await;
    assert_eq!(late.expect_err("declined").code(), Code::NotFound);
    let invite = pb::InviteMemberRequest { email: unique_email(), role: pb::OrgRole::Member.into() };
    let id =
        orgs.invite_member(authed(&owner, invite)).await?.into_inner().invitation.map(|i| i.invitation_id);
    let revoked = auth.invitation_token().await?;
    let request = pb::RevokeInvitationRequest { invitation_id: id.unwrap_or_default() };
    orgs.revoke_invitation(authed(&admin, request)).await?;
    let late =
        orgs.accept_invitation(authed(&stranger, pb::AcceptInvitationRequest { token: revoked })).await;
    assert_eq!(late.expect_err("revoked").code(), Code::NotFound);
    let log = orgs.list_audit_log(authed(&owner, pb::ListAuditLogRequest::default())).await?.into_inner();
    let actions: Vec<&str> = log.entries.iter().take(4).map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["invitation.revoked", "member.invited", "invitation.declined", "member.invited"]);
    Ok(())
}

#[tokio::test]
async fn a_new_role_reaches_the_members_tokens_within_a_second_and_owners_are_kept() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let owner = access(&sign_up(&mut client, &unique_email()).await?);
    let org = create(&mut orgs, &owner, "Acme").await?;
    let owner = switch(&mut orgs, &owner, &org).await?;
    let owner_id = claims(&owner)?["sub"].as_str().unwrap_or_default().to_owned();
    let (joined, member) = join(&auth, &mut orgs, &owner, pb::OrgRole::Member).await?;
    let (_, admin) = join(&auth, &mut orgs, &owner, pb::OrgRole::Admin).await?;

    let to_billing =
        pb::ChangeMemberRoleRequest { user_id: user_id(&joined), role: pb::OrgRole::Billing.into() };
    let changed = orgs.change_member_role(authed(&admin, to_billing)).await?.into_inner();
    assert_eq!(changed.member.map(|m| m.role()), Some(pb::OrgRole::Billing));
    let told: pb::OrgMemberRoleChanged = auth.last_event("auth.org.member_role_changed").await?;
    assert_eq!((told.previous_role.as_str(), told.role.as_str()), ("member", "billing"));
    refused_within_a_second(&client, &member, "the old role's token refused").await?;
    let again =
        client.refresh(pb::RefreshRequest { refresh_token: refresh(&joined.tokens) }).await?.into_inner();
    let token = again.tokens.map(|t| t.access_token).unwrap_or_default();
    assert_eq!(claims(&token)?["org_role"], "billing");

    // Owners: made and unmade only by an owner, and never the last one.
    let promote = pb::ChangeMemberRoleRequest { user_id: user_id(&joined), role: pb::OrgRole::Owner.into() };
    let refused =
        orgs.change_member_role(authed(&admin, promote)).await.expect_err("an admin making an owner");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let demote = pb::ChangeMemberRoleRequest { user_id: owner_id.clone(), role: pb::OrgRole::Admin.into() };
    let last = orgs.change_member_role(authed(&owner, demote)).await.expect_err("the last owner");
    assert_eq!(last.get_details_error_info().map(|i| i.reason).as_deref(), Some("LAST_OWNER"));
    let remove_owner = pb::RemoveMemberRequest { user_id: owner_id };
    let refused =
        orgs.remove_member(authed(&admin, remove_owner)).await.expect_err("an admin removing an owner");
    assert_eq!(refused.code(), Code::PermissionDenied);

    let remove = pb::RemoveMemberRequest { user_id: user_id(&joined) };
    orgs.remove_member(authed(&admin, remove)).await?;
    refused_within_a_second(&client, &token, "the removed member's token refused").await?;
    let members = orgs.list_members(authed(&owner, pb::ListMembersRequest {})).await?.into_inner().members;
    assert_eq!(members.len(), 2);
    Ok(())
}

#[tokio::test]
async fn an_organization_that_requires_a_second_factor_is_entered_only_with_one() -> anyhow::Result<()> {
    let auth = TestAuth::start_with(|s| s.mfa.totp_skew_steps = 4).await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let founder = access(&sign_up(&mut client, &unique_email()).await?);
    let org = create(&mut orgs, &founder, "Acme").await?;
    let owner = switch(&mut orgs, &founder, &org).await?;
    let (joined, member) = join(&auth, &mut orgs, &owner, pb::OrgRole::Member).await?;

    // The owner cannot require what they have not shown themselves.
    let require = || pb::SetMfaRequirementRequest { require_mfa: true };
    let refused =
        orgs.set_mfa_requirement(authed(&owner, require())).await.expect_err("no second factor yet");
    assert_eq!(refused.get_details_error_info().map(|i| i.reason).as_deref(), Some("MFA_REQUIRED"));
    crate::mfa::enable_totp(&mut client, &owner).await?;
    let set = orgs.set_mfa_requirement(authed(&owner, require())).await?.into_inner();
    assert!(set.organization.is_some_and(|o| o.require_mfa));

    // The member, signed in with a password only: their token acting in
    // it stops working, a refresh comes without it, and switching back is
    // refused until they show a second factor.
    refused_within_a_second(&client, &member, "the member's token refused").await?;
    let again =
        client.refresh(pb::RefreshRequest { refresh_token: refresh(&joined.tokens) }).await?.into_inner();
    let token = again.tokens.map(|t| t.access_token).unwrap_or_default();
    assert!(claims(&token)?.get("org").is_none(), "no organization without a second factor");
    let refused = switch(&mut orgs, &token, &org).await.expect_err("no second factor");
    assert_eq!(refused.get_details_error_info().map(|i| i.reason).as_deref(), Some("MFA_REQUIRED"));
    crate::mfa::enable_totp(&mut client, &token).await?;
    let acting = switch(&mut orgs, &token, &org).await?;
    orgs.list_members(authed(&acting, pb::ListMembersRequest {})).await?;

    // Turning the second factor off again is no way around it.
    client.disable_totp(authed(&acting, pb::DisableTotpRequest {})).await?;
    refused_within_a_second(&client, &acting, "the token acting without a second factor refused").await?;
    Ok(())
}

#[tokio::test]
async fn only_an_owner_deletes_an_organization_and_its_members_tokens_stop_working() -> anyhow::Result<()> {
    let auth = TestAuth::start().await?;
    let (mut client, mut orgs) = (auth.client(0).await?, orgs(&auth).await?);
    let founder = access(&sign_up(&mut client, &unique_email()).await?);
    let org = create(&mut orgs, &founder, "Acme").await?;
    let owner = switch(&mut orgs, &founder, &org).await?;
    let (joined, admin) = join(&auth, &mut orgs, &owner, pb::OrgRole::Admin).await?;

    let refused = orgs
        .delete_organization(authed(&admin, pb::DeleteOrganizationRequest {}))
        .await
        .expect_err("an admin");
    assert_eq!(refused.code(), Code::PermissionDenied);
    orgs.delete_organization(authed(&owner, pb::DeleteOrganizationRequest {})).await?;
    let deleted: pb::OrgDeleted = auth.last_event("auth.org.deleted").await?;
    assert_eq!(deleted.organization_id, org);
    refused_within_a_second(&client, &admin, "the admin's token refused").await?;
    let again =
        client.refresh(pb::RefreshRequest { refresh_token: refresh(&joined.tokens) }).await?.into_inner();
    let token = again.tokens.map(|t| t.access_token).unwrap_or_default();
    let mine =
        orgs.list_my_organizations(authed(&token, pb::ListMyOrganizationsRequest {})).await?.into_inner();
    let kept: Vec<bool> =
        mine.memberships.iter().map(|m| m.organization.as_ref().is_some_and(|o| o.personal)).collect();
    assert_eq!(kept, [true], "only their personal organization is left");
    let members: i64 = auth
        .sql()
        .await?
        .query_one("SELECT count(*) FROM org_members WHERE org_id = $1", &[&uuid::Uuid::parse_str(&org)?])
        .await?
        .get(0);
    assert_eq!(members, 0);
    Ok(())
}
