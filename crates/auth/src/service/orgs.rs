//! Organizations: creating one, acting in one (the session's active
//! organization, carried by its access tokens), its members and its
//! audit log (`tenx.auth.v1.OrganizationService`).
//!
//! The shared authentication layer has already checked the permission an
//! RPC names against the role the token carries; auth checks the role
//! again in the transaction that acts (its own word, in case the token
//! predates a change that has not reached every instance yet). A change
//! to what a member's tokens say (a role, a removal, a switch) replaces
//! the grant of the sessions concerned and revokes the old one, so those
//! tokens stop working everywhere within a second.

use std::sync::Arc;
use std::time::SystemTime;

use tenx_common::authn::{self, OrgMembership, OrgRole, Principal, Revoked};
use tenx_common::db::{Prepared, WalPosition};
use tenx_common::outbox::{self, NewEvent};
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::organization_service_server::OrganizationService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{Caller, Core, respond};
use crate::error::AuthError;
use crate::{secrets, store, validate};

mod keys;

use keys::{KeysLeft, Withdrawn};

/// Organizations one user may belong to at once.
const MAX_MEMBERSHIPS: i64 = 100;
/// Members listed at most.
const MAX_MEMBERS_LISTED: i64 = 1000;

/// The gRPC service; cheap to clone.
#[derive(Debug, Clone)]
pub struct OrgApi {
    core: Arc<Core>,
}

impl OrgApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn role_proto(role: OrgRole) -> pb::OrgRole {
    match role {
        OrgRole::Owner => pb::OrgRole::Owner,
        OrgRole::Admin => pb::OrgRole::Admin,
        OrgRole::Billing => pb::OrgRole::Billing,
        OrgRole::Member => pb::OrgRole::Member,
    }
}

fn stored_role(text: &str) -> Result<OrgRole, AuthError> {
    OrgRole::parse(text).ok_or_else(|| AuthError::Internal(format!("stored organization role {text:?}")))
}

/// A member from `m.user_id, u.email, u.display_name, m.role, m.joined_at`.
fn member(row: &tokio_postgres::Row) -> Result<pb::Member, AuthError> {
    Ok(pb::Member {
        user_id: row.get::<_, Uuid>(0).to_string(),
        email: row.get(1),
        display_name: row.get(2),
        role: role_proto(stored_role(row.get(3))?).into(),
        joined_at: Some(store::timestamp(row.get::<_, SystemTime>(4))),
    })
}

fn organization(row: &tokio_postgres::Row) -> pb::Organization {
    pb::Organization {
        organization_id: row.get::<_, Uuid>("id").to_string(),
        name: row.get("name"),
        created_at: Some(store::timestamp(row.get("created_at"))),
        require_mfa: row.get("require_mfa"),
        personal: row.get("personal"),
    }
}

/// The active organization the verified token carries (the layer admits
/// a permission RPC only with one).
fn active_org(extensions: &tonic::Extensions) -> Result<OrgMembership, AuthError> {
    match authn::principal(extensions) {
        Some(Principal::User { org: Some(membership), .. }) => Ok(*membership),
        _ => Err(AuthError::Refused {
            reason: "NO_ACTIVE_ORGANIZATION",
            message: "no active organization; call SwitchOrganization first",
        }),
    }
}

/// Who did something, for the audit log.
struct Actor {
    user: Uuid,
    /// `None` when no session acted (a password reset by emailed code).
    session: Option<Uuid>,
}

impl From<Caller> for Actor {
    fn from(caller: Caller) -> Self {
        Self { user: caller.user, session: Some(caller.session) }
    }
}

/// An organization locked for a change ([`Core::lock_org`]).
struct LockedOrg {
    name: String,
    personal: bool,
}

impl LockedOrg {
    /// Refuses (`PERSONAL_ORGANIZATION`) what an organization of one
    /// cannot do.
    fn not_personal(&self, message: &'static str) -> Result<(), AuthError> {
        if self.personal {
            return Err(AuthError::Refused { reason: "PERSONAL_ORGANIZATION", message });
        }
        Ok(())
    }
}

/// One line of `org`'s audit log; `actor` `None` for someone without an
/// account (an invitation declined from its email).
async fn audit(
    tx: &impl Prepared,
    org: Uuid,
    actor: Option<&Actor>,
    action: &str,
    target: &str,
    detail: &str,
) -> Result<(), AuthError> {
    let (user, session) = (actor.map(|a| a.user), actor.and_then(|a| a.session));
    tx.execute_cached(
        "INSERT INTO org_audit (org_id, actor_user_id, actor_session_id, action, target, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&org, &user, &session, &action, &target, &detail],
    )
    .await?;
    Ok(())
}

/// The role a request names (its rules admit only defined, non-zero values).
fn requested_role(raw: i32) -> Result<OrgRole, AuthError> {
    match pb::OrgRole::try_from(raw) {
        Ok(pb::OrgRole::Owner) => Ok(OrgRole::Owner),
        Ok(pb::OrgRole::Admin) => Ok(OrgRole::Admin),
        Ok(pb::OrgRole::Billing) => Ok(OrgRole::Billing),
        Ok(pb::OrgRole::Member) => Ok(OrgRole::Member),
        _ => Err(AuthError::invalid("role", "owner, admin, billing or member")),
    }
}

fn mfa_required() -> AuthError {
    AuthError::Refused {
        reason: "MFA_REQUIRED",
        message: "this organization requires a second factor: turn TOTP on, or reauthenticate with a code",
    }
}

fn only_owners(what: &str) -> AuthError {
    AuthError::from(authn::AuthnError::PermissionDenied(format!("only an owner may {what}")))
}

fn invitation(row: &tokio_postgres::Row) -> Result<pb::Invitation, AuthError> {
    Ok(pb::Invitation {
        invitation_id: row.get::<_, Uuid>("id").to_string(),
        email: row.get("email"),
        role: role_proto(stored_role(row.get("role"))?).into(),
        invited_by_user_id: row
            .get::<_, Option<Uuid>>("invited_by")
            .map(|u| u.to_string())
            .unwrap_or_default(),
        created_at: Some(store::timestamp(row.get("created_at"))),
        expires_at: Some(store::timestamp(row.get("expires_at"))),
    })
}

const INVITATION_COLUMNS: &str = "id, email, role, invited_by, created_at, expires_at";
/// Pending invitations one organization may have at once.
const MAX_PENDING_INVITATIONS: i64 = 500;

impl Core {
    /// `user`'s role in `org` now, from the primary, the membership row
    /// locked (`FOR SHARE`) until `tx` ends; NOT_FOUND when no member.
    async fn role_in(&self, tx: &impl Prepared, org: Uuid, user: Uuid) -> Result<OrgRole, AuthError> {
        let row = tx
            .query_opt_cached(
                "SELECT role FROM org_members WHERE org_id = $1 AND user_id = $2 FOR SHARE",
                &[&org, &user],
            )
            .await?
            .ok_or(AuthError::NotFound("organization"))?;
        stored_role(row.get(0))
    }

    /// [`Core::role_in`], refused unless the role holds `permission`.
    async fn require(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        user: Uuid,
        permission: &str,
    ) -> Result<OrgRole, AuthError> {
        let role = self.role_in(tx, org, user).await?;
        if !role.permits(permission) {
            return Err(AuthError::from(authn::AuthnError::PermissionDenied(format!(
                "your role in this organization ({}) lacks {permission}",
                role.as_str()
            ))));
        }
        Ok(role)
    }

    /// Refuses (`TOO_MANY_ORGANIZATIONS`) a user who belongs to
    /// [`MAX_MEMBERSHIPS`] organizations already; their row stays locked
    /// until `tx` ends, so concurrent creations and accepts count one by one.
    async fn room_for_one_more(&self, tx: &impl Prepared, user: Uuid) -> Result<(), AuthError> {
        tx.execute_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user]).await?;
        let held: i64 = tx
            .query_one_cached("SELECT count(*) FROM org_members WHERE user_id = $1", &[&user])
            .await?
            .get(0);
        if held >= MAX_MEMBERSHIPS {
            return Err(AuthError::Refused {
                reason: "TOO_MANY_ORGANIZATIONS",
                message: "at most 100 organizations per user; leave one first",
            });
        }
        Ok(())
    }

    /// Replaces the grant of `user`'s live sessions acting in `org` (and,
    /// with `leave`, makes them act in none); the old grants, to revoke
    /// once committed.
    async fn regrant(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        user: Uuid,
        leave: bool,
    ) -> Result<Vec<Uuid>, AuthError> {
        let rows = tx
            .query_cached(
                "WITH old AS (SELECT id, grant_id FROM sessions \
                   WHERE user_id = $2 AND active_org_id = $1 AND revoked_at IS NULL FOR UPDATE) \
                 UPDATE sessions s SET grant_id = gen_random_uuid(), \
                   active_org_id = CASE WHEN $3 THEN NULL ELSE s.active_org_id END \
                 FROM old WHERE s.id = old.id RETURNING old.grant_id",
                &[&org, &user, &leave],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// After commit: the old grants' tokens are refused everywhere.
    /// In a task of its own: a caller that goes away (a deadline, a
    /// disconnect) cannot drop the revocation of what it committed.
    pub(super) async fn revoke_grants(&self, grants: &[Uuid]) {
        let (denied, grants) = (self.denied.clone(), grants.to_vec());
        let published = tokio::spawn(async move {
            for grant in grants {
                denied.deny(Revoked::Grant, &grant.to_string()).await;
            }
        });
        let _ = published.await;
    }

    async fn create_organization(
        &self,
        caller: Caller,
        request: pb::CreateOrganizationRequest,
    ) -> Result<(pb::CreateOrganizationResponse, WalPosition), AuthError> {
        let owner_email = self.user(caller.user, None).await?.email;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        self.room_for_one_more(&tx, caller.user).await?;
        let id = Uuid::now_v7();
        let row = tx
            .query_one_cached(
                "INSERT INTO organizations (id, name, created_by) VALUES ($1, $2, $3) RETURNING id, name, created_at, require_mfa, personal",
                &[&id, &request.name, &caller.user],
            )
            .await?;
        tx.execute_cached(
            "INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, 'owner')",
            &[&id, &caller.user],
        )
        .await?;
        audit(&tx, id, Some(&caller.into()), "org.created", "", &request.name).await?;
        let event = pb::OrgCreated {
            organization_id: id.to_string(),
            name: request.name,
            owner_user_id: caller.user.to_string(),
            owner_email,
        };
        outbox::enqueue(&tx, &NewEvent::of(&id.to_string(), &event)).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::CreateOrganizationResponse { organization: Some(organization(&row)) }, written))
    }

    async fn list_my_organizations(
        &self,
        caller: Caller,
    ) -> Result<pb::ListMyOrganizationsResponse, AuthError> {
        let conn = self.db.write().await?;
        let sql = "SELECT o.id, o.name, o.created_at, o.require_mfa, o.personal, m.role, \
                     coalesce(o.id = (SELECT active_org_id FROM sessions WHERE id = $2), false) AS active \
                   FROM org_members m JOIN organizations o ON o.id = m.org_id \
                   WHERE m.user_id = $1 ORDER BY o.personal DESC, m.joined_at";
        let mut rows = conn.query_cached(sql, &[&caller.user, &caller.session]).await?;
        // An account from before personal organizations not backfilled yet.
        if !rows.first().is_some_and(|r| r.get::<_, bool>("personal")) {
            crate::personal::ensure(&*conn, caller.user).await?;
            rows = conn.query_cached(sql, &[&caller.user, &caller.session]).await?;
        }
        let mut memberships = Vec::with_capacity(rows.len());
        for row in &rows {
            memberships.push(pb::Membership {
                organization: Some(organization(row)),
                role: role_proto(stored_role(row.get("role"))?).into(),
                active: row.get("active"),
            });
        }
        Ok(pb::ListMyOrganizationsResponse { memberships })
    }

    async fn switch_organization(
        &self,
        caller: Caller,
        request: pb::SwitchOrganizationRequest,
    ) -> Result<(pb::SwitchOrganizationResponse, WalPosition), AuthError> {
        let target = if request.organization_id.is_empty() {
            None
        } else {
            Some(validate::id("organization_id", &request.organization_id)?)
        };
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let membership = match target {
            None => None,
            Some(org) => {
                if org == caller.user {
                    crate::personal::ensure(&tx, caller.user).await?;
                }
                // The organization first, shared: the order every change takes.
                tx.query_opt_cached("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[&org]).await?;
                let row = tx
                    .query_opt_cached(
                        "SELECT o.id, o.name, o.created_at, o.require_mfa, o.personal, m.role, \
                           coalesce((SELECT mfa FROM sessions WHERE id = $3), false) AS session_mfa \
                         FROM org_members m JOIN organizations o ON o.id = m.org_id \
                         WHERE m.org_id = $1 AND m.user_id = $2 FOR SHARE OF m",
                        &[&org, &caller.user, &caller.session],
                    )
                    .await?
                    .ok_or(AuthError::NotFound("organization"))?;
                if row.get::<_, bool>("require_mfa") && !row.get::<_, bool>("session_mfa") {
                    return Err(mfa_required());
                }
                Some(pb::Membership {
                    organization: Some(organization(&row)),
                    role: role_proto(stored_role(row.get("role"))?).into(),
                    active: true,
                })
            }
        };
        // The session's tokens for the organization it leaves stop
        // working: a session speaks for one organization at a time.
        let old: Option<Uuid> = tx
            .query_opt_cached(
                "WITH old AS (SELECT id, grant_id FROM sessions WHERE id = $1 AND revoked_at IS NULL FOR UPDATE) \
                 UPDATE sessions s SET active_org_id = $2, grant_id = gen_random_uuid() \
                 FROM old WHERE s.id = old.id RETURNING old.grant_id",
                &[&caller.session, &target],
            )
            .await?
            .map(|r| r.get(0));
        let Some(old) = old else { return Err(AuthError::Unauthenticated("session revoked")) };
        tx.commit().await?;
        let written = conn.commit_position().await?;
        drop(conn);
        self.revoke_grants(&[old]).await;
        let tokens = self.tokens(caller.user, caller.session, String::new()).await?;
        let response = pb::SwitchOrganizationResponse {
            access_token: tokens.access_token,
            access_token_expires_at: tokens.access_token_expires_at,
            membership,
        };
        Ok((response, written))
    }

    async fn get_organization(
        &self,
        caller: Caller,
        org: OrgMembership,
    ) -> Result<pb::GetOrganizationResponse, AuthError> {
        let conn = self.db.write().await?;
        let role = self.role_in(&*conn, org.org_id, caller.user).await?;
        let row = conn
            .query_opt_cached(
                "SELECT id, name, created_at, require_mfa, personal FROM organizations WHERE id = $1",
                &[&org.org_id],
            )
            .await?
            .ok_or(AuthError::NotFound("organization"))?;
        Ok(pb::GetOrganizationResponse {
            organization: Some(organization(&row)),
            role: role_proto(role).into(),
        })
    }

    async fn rename_organization(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::RenameOrganizationRequest,
    ) -> Result<(pb::RenameOrganizationResponse, WalPosition), AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let before = self.lock_org(&tx, org.org_id).await?.name;
        self.require(&tx, org.org_id, caller.user, "org.manage").await?;
        let row = tx
            .query_one_cached(
                "UPDATE organizations SET name = $2, updated_at = now() WHERE id = $1 RETURNING id, name, created_at, require_mfa, personal",
                &[&org.org_id, &request.name],
            )
            .await?;
        if before != request.name {
            let detail = format!("{before} → {}", request.name);
            audit(&tx, org.org_id, Some(&caller.into()), "org.renamed", "", &detail).await?;
            let event = pb::OrgRenamed {
                organization_id: org.org_id.to_string(),
                name: request.name,
                actor_user_id: caller.user.to_string(),
            };
            outbox::enqueue(&tx, &NewEvent::of(&org.org_id.to_string(), &event)).await?;
        }
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::RenameOrganizationResponse { organization: Some(organization(&row)) }, written))
    }

    async fn delete_organization(
        &self,
        caller: Caller,
        org: OrgMembership,
    ) -> Result<WalPosition, AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let locked = self.lock_org(&tx, org.org_id).await?;
        self.require(&tx, org.org_id, caller.user, "org.delete").await?;
        locked.not_personal("a personal organization lasts as long as its account")?;
        // Every session acting in it acts in none, with a new grant.
        let grants: Vec<Uuid> = tx
            .query_cached(
                "WITH old AS (SELECT id, grant_id FROM sessions WHERE active_org_id = $1 FOR UPDATE) \
                 UPDATE sessions s SET grant_id = gen_random_uuid(), active_org_id = NULL FROM old \
                 WHERE s.id = old.id RETURNING old.grant_id",
                &[&org.org_id],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // Its keys revoked before the rows go, so the revocation is published.
        let keys = self.revoke_org_keys(&tx, org.org_id, None, KeysLeft::None, None, "").await?;
        tx.execute_cached("DELETE FROM organizations WHERE id = $1", &[&org.org_id]).await?;
        let event = pb::OrgDeleted {
            organization_id: org.org_id.to_string(),
            name: locked.name,
            actor_user_id: caller.user.to_string(),
        };
        outbox::enqueue(&tx, &NewEvent::of(&org.org_id.to_string(), &event)).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.withdraw(&Withdrawn { grants, keys, ..Withdrawn::default() }, written).await;
        Ok(written)
    }

    async fn set_mfa_requirement(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::SetMfaRequirementRequest,
    ) -> Result<(pb::SetMfaRequirementResponse, WalPosition), AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let locked = self.lock_org(&tx, org.org_id).await?;
        self.require(&tx, org.org_id, caller.user, "org.manage").await?;
        // Acting in no organization is acting as the person: a requirement
        // here would guard nothing. Their own TOTP does.
        locked.not_personal("a personal organization is its account: turn TOTP on instead")?;
        if request.require_mfa && !store::session_showed_mfa(&tx, caller.session).await? {
            return Err(mfa_required());
        }
        let row = tx
            .query_one_cached(
                "WITH before AS (SELECT require_mfa FROM organizations WHERE id = $1) \
                 UPDATE organizations o SET require_mfa = $2, updated_at = now() FROM before WHERE o.id = $1 \
                 RETURNING o.id, o.name, o.created_at, o.require_mfa, o.personal, before.require_mfa AS was",
                &[&org.org_id, &request.require_mfa],
            )
            .await?;
        let mut withdrawn = Withdrawn::default();
        if row.get::<_, bool>("was") != request.require_mfa {
            if request.require_mfa {
                let why = "made without a second factor; the organization now requires one";
                withdrawn.keys = self
                    .revoke_org_keys(&tx, org.org_id, None, KeysLeft::MadeWithMfa, Some(&caller.into()), why)
                    .await?;
                // Tokens acting in it without a second factor stop working;
                // their refresh comes without the organization.
                withdrawn.grants = tx
                    .query_cached(
                        "WITH old AS (SELECT id, grant_id FROM sessions \
                           WHERE active_org_id = $1 AND NOT mfa AND revoked_at IS NULL FOR UPDATE) \
                         UPDATE sessions s SET grant_id = gen_random_uuid() FROM old WHERE s.id = old.id \
                         RETURNING old.grant_id",
                        &[&org.org_id],
                    )
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
            }
            let action = if request.require_mfa { "org.mfa_required" } else { "org.mfa_not_required" };
            audit(&tx, org.org_id, Some(&caller.into()), action, "", "").await?;
        }
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.withdraw(&withdrawn, written).await;
        Ok((pb::SetMfaRequirementResponse { organization: Some(organization(&row)) }, written))
    }

    async fn list_members(
        &self,
        caller: Caller,
        org: OrgMembership,
    ) -> Result<pb::ListMembersResponse, AuthError> {
        let conn = self.db.write().await?;
        self.role_in(&*conn, org.org_id, caller.user).await?;
        let rows = conn
            .query_cached(
                "SELECT m.user_id, u.email, u.display_name, m.role, m.joined_at FROM org_members m \
                 JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 ORDER BY m.joined_at LIMIT $2",
                &[&org.org_id, &MAX_MEMBERS_LISTED],
            )
            .await?;
        let members = rows.iter().map(member).collect::<Result<_, _>>()?;
        Ok(pb::ListMembersResponse { members })
    }

    /// Locks `org` for a change to it or its members, first of all (one
    /// order for every change: two owners leaving at once cannot both see
    /// the other still there, and no two changes deadlock).
    async fn lock_org(&self, tx: &impl Prepared, org: Uuid) -> Result<LockedOrg, AuthError> {
        let row = tx
            .query_opt_cached("SELECT name, personal FROM organizations WHERE id = $1 FOR UPDATE", &[&org])
            .await?
            .ok_or(AuthError::NotFound("organization"))?;
        Ok(LockedOrg { name: row.get(0), personal: row.get(1) })
    }

    /// Takes `user` out of `org` in `tx` (locked by [`Core::lock_org`]),
    /// unless that leaves it without an owner: their sessions' grants and
    /// their keys for it, to withdraw once committed.
    async fn remove_member(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        user: Uuid,
        actor: &Actor,
        action: &str,
    ) -> Result<Withdrawn, AuthError> {
        let role = self.role_in(tx, org, user).await?;
        if role == OrgRole::Owner {
            self.keep_an_owner(tx, org).await?;
        }
        tx.execute_cached("DELETE FROM org_members WHERE org_id = $1 AND user_id = $2", &[&org, &user])
            .await?;
        self.close_invitations_by(tx, org, user).await?;
        let grants = self.regrant(tx, org, user, true).await?;
        audit(tx, org, Some(actor), action, &user.to_string(), role.as_str()).await?;
        let keys = self
            .revoke_org_keys(
                tx,
                org,
                Some(user),
                KeysLeft::None,
                Some(actor),
                "its maker is no longer a member",
            )
            .await?;
        let event = pb::OrgMemberRemoved {
            organization_id: org.to_string(),
            user_id: user.to_string(),
            actor_user_id: actor.user.to_string(),
        };
        outbox::enqueue(tx, &NewEvent::of(&org.to_string(), &event)).await?;
        Ok(Withdrawn { grants, keys, ..Withdrawn::default() })
    }

    async fn leave_organization(&self, caller: Caller, org: OrgMembership) -> Result<WalPosition, AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let locked = self.lock_org(&tx, org.org_id).await?;
        locked.not_personal("your personal organization is yours for as long as your account")?;
        let withdrawn =
            self.remove_member(&tx, org.org_id, caller.user, &caller.into(), "member.left").await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.withdraw(&withdrawn, written).await;
        Ok(written)
    }

    async fn invite_member(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::InviteMemberRequest,
    ) -> Result<(pb::InviteMemberResponse, WalPosition), AuthError> {
        let role = requested_role(request.role)?;
        let email = validate::canonical_email(&request.email);
        let inviter = self.user(caller.user, None).await?.email;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let locked = self.lock_org(&tx, org.org_id).await?;
        let actor_role = self.require(&tx, org.org_id, caller.user, "org.members.manage").await?;
        locked.not_personal(
            "a personal organization has one member; create an organization to invite colleagues",
        )?;
        let name = locked.name;
        if role == OrgRole::Owner && actor_role != OrgRole::Owner {
            return Err(only_owners("invite an owner"));
        }
        let member = tx
            .query_opt_cached(
                "SELECT 1 FROM org_members m JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND u.email = $2",
                &[&org.org_id, &email],
            )
            .await?;
        if member.is_some() {
            return Err(AuthError::AlreadyMember);
        }
        // One invitation email per address and organization per cooldown:
        // re-inviting is no way to flood a mailbox.
        let cooldown = self.settings.codes.resend_cooldown_seconds as f64;
        let recent = tx
            .query_opt_cached(
                "SELECT 1 FROM org_invitations WHERE org_id = $1 AND email = $2 \
                 AND created_at > now() - make_interval(secs => $3)",
                &[&org.org_id, &email, &cooldown],
            )
            .await?;
        if recent.is_some() {
            return Err(AuthError::Refused {
                reason: "INVITATION_RECENTLY_SENT",
                message: "this address was invited moments ago; try again in a minute",
            });
        }
        tx.execute_cached(
            "UPDATE org_invitations SET closed_at = now(), outcome = 'replaced' \
             WHERE org_id = $1 AND email = $2 AND closed_at IS NULL",
            &[&org.org_id, &email],
        )
        .await?;
        let pending: i64 = tx
            .query_one_cached(
                "SELECT count(*) FROM org_invitations WHERE org_id = $1 AND closed_at IS NULL AND expires_at > now()",
                &[&org.org_id],
            )
            .await?
            .get(0);
        if pending >= MAX_PENDING_INVITATIONS {
            return Err(AuthError::Refused {
                reason: "TOO_MANY_INVITATIONS",
                message: "at most 500 pending invitations; revoke some first",
            });
        }
        let (id, token) = (Uuid::now_v7(), format!("inv_{}", &secrets::refresh_token()[3..]));
        let hours = self.settings.orgs.invitation_ttl_hours;
        let sql = format!(
            "INSERT INTO org_invitations (id, org_id, email, role, token_hash, invited_by, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(hours => $7)) RETURNING {INVITATION_COLUMNS}"
        );
        let hours_param = i32::try_from(hours).unwrap_or(168);
        let row = tx
            .query_one_cached(
                &sql,
                &[
                    &id,
                    &org.org_id,
                    &email,
                    &role.as_str(),
                    &secrets::hash(&token),
                    &caller.user,
                    &hours_param,
                ],
            )
            .await?;
        audit(&tx, org.org_id, Some(&caller.into()), "member.invited", &email, role.as_str()).await?;
        let event = pb::OrgMemberInvited {
            organization_id: org.org_id.to_string(),
            organization_name: name,
            invitation_id: id.to_string(),
            email: email.clone(),
            role: role.as_str().to_owned(),
            inviter_email: inviter,
            expires_in_hours: hours,
            accept_url: self.settings.orgs.invitation_url.clone(),
            sealed_token: self.seal.seal(token.as_bytes(), format!("org_invitation:{id}:{email}").as_bytes()),
        };
        outbox::enqueue(&tx, &NewEvent::of(&org.org_id.to_string(), &event)).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::InviteMemberResponse { invitation: Some(invitation(&row)?) }, written))
    }

    async fn list_invitations(
        &self,
        caller: Caller,
        org: OrgMembership,
    ) -> Result<pb::ListInvitationsResponse, AuthError> {
        let conn = self.db.write().await?;
        self.require(&*conn, org.org_id, caller.user, "org.members.manage").await?;
        let sql = format!(
            "SELECT {INVITATION_COLUMNS} FROM org_invitations \
             WHERE org_id = $1 AND closed_at IS NULL AND expires_at > now() ORDER BY created_at"
        );
        let rows = conn.query_cached(&sql, &[&org.org_id]).await?;
        let invitations = rows.iter().map(invitation).collect::<Result<_, _>>()?;
        Ok(pb::ListInvitationsResponse { invitations })
    }

    async fn revoke_invitation(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::RevokeInvitationRequest,
    ) -> Result<WalPosition, AuthError> {
        let id = validate::id("invitation_id", &request.invitation_id)?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        self.lock_org(&tx, org.org_id).await?;
        self.require(&tx, org.org_id, caller.user, "org.members.manage").await?;
        let row = tx
            .query_opt_cached(
                "SELECT email, closed_at IS NULL FROM org_invitations WHERE id = $1 AND org_id = $2 FOR UPDATE",
                &[&id, &org.org_id],
            )
            .await?
            .ok_or(AuthError::NotFound("invitation"))?;
        // Revoking what is no longer pending changes nothing.
        if row.get::<_, bool>(1) {
            tx.execute_cached(
                "UPDATE org_invitations SET closed_at = now(), outcome = 'revoked' WHERE id = $1",
                &[&id],
            )
            .await?;
            let email: String = row.get(0);
            audit(&tx, org.org_id, Some(&caller.into()), "invitation.revoked", &email, "").await?;
        }
        tx.commit().await?;
        Ok(conn.commit_position().await?)
    }

    async fn accept_invitation(
        &self,
        caller: Caller,
        request: pb::AcceptInvitationRequest,
    ) -> Result<(pb::AcceptInvitationResponse, WalPosition), AuthError> {
        let hash = secrets::hash(&request.token);
        let email = self.user(caller.user, None).await?.email;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let found = tx
            .query_opt_cached(
                "SELECT id, org_id FROM org_invitations \
                 WHERE token_hash = $1 AND closed_at IS NULL AND expires_at > now()",
                &[&hash],
            )
            .await?
            .ok_or(AuthError::NotFound("invitation"))?;
        let (id, org): (Uuid, Uuid) = (found.get(0), found.get(1));
        self.lock_org(&tx, org).await?;
        // Still pending under the lock (a concurrent accept, decline or revoke).
        let row = tx
            .query_opt_cached(
                "SELECT email, role FROM org_invitations WHERE id = $1 AND closed_at IS NULL FOR UPDATE",
                &[&id],
            )
            .await?
            .ok_or(AuthError::NotFound("invitation"))?;
        let (invited, role): (String, String) = (row.get(0), row.get(1));
        if invited != email {
            return Err(AuthError::Wrong("token: this invitation is for another address"));
        }
        self.room_for_one_more(&tx, caller.user).await?;
        let joined = tx
            .execute_cached(
                "INSERT INTO org_members (org_id, user_id, role) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                &[&org, &caller.user, &role],
            )
            .await?;
        tx.execute_cached(
            "UPDATE org_invitations SET closed_at = now(), outcome = 'accepted', accepted_by = $2 WHERE id = $1",
            &[&id, &caller.user],
        )
        .await?;
        if joined == 1 {
            audit(&tx, org, Some(&caller.into()), "member.joined", &caller.user.to_string(), &role).await?;
            let event = pb::OrgMemberJoined {
                organization_id: org.to_string(),
                user_id: caller.user.to_string(),
                role,
            };
            outbox::enqueue(&tx, &NewEvent::of(&org.to_string(), &event)).await?;
        }
        let row = tx
            .query_one_cached(
                "SELECT o.id, o.name, o.created_at, o.require_mfa, o.personal, m.role FROM org_members m \
                 JOIN organizations o ON o.id = m.org_id \
                 WHERE m.org_id = $1 AND m.user_id = $2",
                &[&org, &caller.user],
            )
            .await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        let membership = pb::Membership {
            organization: Some(organization(&row)),
            role: role_proto(stored_role(row.get("role"))?).into(),
            active: false,
        };
        Ok((pb::AcceptInvitationResponse { membership: Some(membership) }, written))
    }

    async fn decline_invitation(
        &self,
        request: pb::DeclineInvitationRequest,
    ) -> Result<WalPosition, AuthError> {
        let hash = secrets::hash(&request.token);
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let org: Uuid = tx
            .query_opt_cached("SELECT org_id FROM org_invitations WHERE token_hash = $1", &[&hash])
            .await?
            .ok_or(AuthError::NotFound("invitation"))?
            .get(0);
        // The organization first: the order every change takes.
        self.lock_org(&tx, org).await?;
        let row = tx
            .query_opt_cached(
                "WITH declined AS (UPDATE org_invitations SET closed_at = now(), outcome = 'declined' \
                   WHERE token_hash = $1 AND closed_at IS NULL AND expires_at > now() RETURNING org_id, email) \
                 INSERT INTO org_audit (org_id, action, target) \
                 SELECT org_id, 'invitation.declined', email FROM declined RETURNING 1",
                &[&hash],
            )
            .await?;
        row.ok_or(AuthError::NotFound("invitation"))?;
        tx.commit().await?;
        Ok(conn.commit_position().await?)
    }

    async fn change_member_role(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::ChangeMemberRoleRequest,
    ) -> Result<(pb::ChangeMemberRoleResponse, WalPosition), AuthError> {
        let target = validate::id("user_id", &request.user_id)?;
        let role = requested_role(request.role)?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let name = self.lock_org(&tx, org.org_id).await?.name;
        let actor_role = self.require(&tx, org.org_id, caller.user, "org.members.manage").await?;
        let before = self.role_in(&tx, org.org_id, target).await?;
        if (before == OrgRole::Owner || role == OrgRole::Owner) && actor_role != OrgRole::Owner {
            return Err(only_owners("make or unmake an owner"));
        }
        let mut withdrawn = Withdrawn::default();
        if before != role {
            if before == OrgRole::Owner {
                self.keep_an_owner(&tx, org.org_id).await?;
            }
            tx.execute_cached(
                "UPDATE org_members SET role = $3 WHERE org_id = $1 AND user_id = $2",
                &[&org.org_id, &target, &role.as_str()],
            )
            .await?;
            withdrawn.grants = self.regrant(&tx, org.org_id, target, false).await?;
            // What they invited with their old role is not theirs to give now.
            self.close_invitations_by(&tx, org.org_id, target).await?;
            let detail = format!("{} → {}", before.as_str(), role.as_str());
            audit(&tx, org.org_id, Some(&caller.into()), "member.role_changed", &target.to_string(), &detail)
                .await?;
            let why = format!("its maker's new role ({}) lacks one of its scopes", role.as_str());
            withdrawn.keys = self
                .revoke_org_keys(
                    &tx,
                    org.org_id,
                    Some(target),
                    KeysLeft::Within(role),
                    Some(&caller.into()),
                    &why,
                )
                .await?;
            withdrawn.stale = self.live_keys_of(&tx, org.org_id, target).await?;
            let email: String =
                tx.query_one_cached("SELECT email FROM users WHERE id = $1", &[&target]).await?.get(0);
            let event = pb::OrgMemberRoleChanged {
                organization_id: org.org_id.to_string(),
                organization_name: name,
                user_id: target.to_string(),
                email,
                previous_role: before.as_str().to_owned(),
                role: role.as_str().to_owned(),
                actor_user_id: caller.user.to_string(),
            };
            outbox::enqueue(&tx, &NewEvent::of(&org.org_id.to_string(), &event)).await?;
        }
        let row = tx
            .query_one_cached(
                "SELECT m.user_id, u.email, u.display_name, m.role, m.joined_at FROM org_members m \
                 JOIN users u ON u.id = m.user_id WHERE m.org_id = $1 AND m.user_id = $2",
                &[&org.org_id, &target],
            )
            .await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.withdraw(&withdrawn, written).await;
        Ok((pb::ChangeMemberRoleResponse { member: Some(member(&row)?) }, written))
    }

    /// Closes the pending invitations `user` sent for `org` (they lost the
    /// role that sent them).
    async fn close_invitations_by(&self, tx: &impl Prepared, org: Uuid, user: Uuid) -> Result<(), AuthError> {
        tx.execute_cached(
            "UPDATE org_invitations SET closed_at = now(), outcome = 'revoked' \
             WHERE org_id = $1 AND invited_by = $2 AND closed_at IS NULL",
            &[&org, &user],
        )
        .await?;
        Ok(())
    }

    /// Refuses (`LAST_OWNER`) when `org` has one owner left.
    async fn keep_an_owner(&self, tx: &impl Prepared, org: Uuid) -> Result<(), AuthError> {
        let owners: i64 = tx
            .query_one_cached(
                "SELECT count(*) FROM org_members WHERE org_id = $1 AND role = 'owner'",
                &[&org],
            )
            .await?
            .get(0);
        if owners <= 1 {
            return Err(AuthError::Refused {
                reason: "LAST_OWNER",
                message: "an organization keeps at least one owner; make another member owner first",
            });
        }
        Ok(())
    }

    async fn remove_member_by(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::RemoveMemberRequest,
    ) -> Result<WalPosition, AuthError> {
        let target = validate::id("user_id", &request.user_id)?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        self.lock_org(&tx, org.org_id).await?;
        let actor_role = self.require(&tx, org.org_id, caller.user, "org.members.manage").await?;
        if self.role_in(&tx, org.org_id, target).await? == OrgRole::Owner && actor_role != OrgRole::Owner {
            return Err(only_owners("remove an owner"));
        }
        let withdrawn = self.remove_member(&tx, org.org_id, target, &caller.into(), "member.removed").await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.withdraw(&withdrawn, written).await;
        Ok(written)
    }

    async fn list_audit_log(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::ListAuditLogRequest,
    ) -> Result<pb::ListAuditLogResponse, AuthError> {
        let conn = self.db.write().await?;
        self.require(&*conn, org.org_id, caller.user, "org.audit.read").await?;
        let size = i64::from(if request.page_size == 0 { 50 } else { request.page_size });
        let before: i64 = if request.page_token.is_empty() {
            i64::MAX
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| AuthError::invalid("page_token", "not from a previous answer"))?
        };
        let rows = conn
            .query_cached(
                "SELECT id, action, actor_user_id, actor_session_id, target, detail, at FROM org_audit \
                 WHERE org_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3",
                &[&org.org_id, &before, &(size + 1)],
            )
            .await?;
        let more = rows.len() as i64 > size;
        let shown = &rows[..rows.len().min(usize::try_from(size).unwrap_or(50))];
        let id = |row: &tokio_postgres::Row, i: usize| {
            row.get::<_, Option<Uuid>>(i).map(|u| u.to_string()).unwrap_or_default()
        };
        let entries = shown
            .iter()
            .map(|row| pb::AuditEntry {
                action: row.get(1),
                actor_user_id: id(row, 2),
                actor_session_id: id(row, 3),
                target: row.get(4),
                detail: row.get(5),
                at: Some(store::timestamp(row.get(6))),
            })
            .collect();
        let next_page_token = if more {
            shown.last().map(|r| r.get::<_, i64>(0).to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListAuditLogResponse { entries, next_page_token })
    }
}

#[tonic::async_trait]
impl OrganizationService for OrgApi {
    async fn create_organization(
        &self,
        request: Request<pb::CreateOrganizationRequest>,
    ) -> Result<Response<pb::CreateOrganizationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.create_organization(caller, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn list_my_organizations(
        &self,
        request: Request<pb::ListMyOrganizationsRequest>,
    ) -> Result<Response<pb::ListMyOrganizationsResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        Ok(Response::new(self.core.list_my_organizations(caller).await?))
    }

    async fn switch_organization(
        &self,
        request: Request<pb::SwitchOrganizationRequest>,
    ) -> Result<Response<pb::SwitchOrganizationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.switch_organization(caller, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn get_organization(
        &self,
        request: Request<pb::GetOrganizationRequest>,
    ) -> Result<Response<pb::GetOrganizationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        Ok(Response::new(self.core.get_organization(caller, org).await?))
    }

    async fn rename_organization(
        &self,
        request: Request<pb::RenameOrganizationRequest>,
    ) -> Result<Response<pb::RenameOrganizationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        let (reply, written) = self.core.rename_organization(caller, org, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn delete_organization(
        &self,
        request: Request<pb::DeleteOrganizationRequest>,
    ) -> Result<Response<pb::DeleteOrganizationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "OrganizationService/DeleteOrganization").await?;
        let org = active_org(request.extensions())?;
        let written = self.core.delete_organization(caller, org).await?;
        Ok(respond(pb::DeleteOrganizationResponse {}, Some(written)))
    }

    async fn set_mfa_requirement(
        &self,
        request: Request<pb::SetMfaRequirementRequest>,
    ) -> Result<Response<pb::SetMfaRequirementResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        let (reply, written) = self.core.set_mfa_requirement(caller, org, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        Ok(Response::new(self.core.list_members(caller, org).await?))
    }

    async fn leave_organization(
        &self,
        request: Request<pb::LeaveOrganizationRequest>,
    ) -> Result<Response<pb::LeaveOrganizationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        let written = self.core.leave_organization(caller, org).await?;
        Ok(respond(pb::LeaveOrganizationResponse {}, Some(written)))
    }

    async fn invite_member(
        &self,
        request: Request<pb::InviteMemberRequest>,
    ) -> Result<Response<pb::InviteMemberResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        let (reply, written) = self.core.invite_member(caller, org, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn list_invitations(
        &self,
        request: Request<pb::ListInvitationsRequest>,
    ) -> Result<Response<pb::ListInvitationsResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        Ok(Response::new(self.core.list_invitations(caller, org).await?))
    }

    async fn revoke_invitation(
        &self,
        request: Request<pb::RevokeInvitationRequest>,
    ) -> Result<Response<pb::RevokeInvitationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        let written = self.core.revoke_invitation(caller, org, request.into_inner()).await?;
        Ok(respond(pb::RevokeInvitationResponse {}, Some(written)))
    }

    async fn accept_invitation(
        &self,
        request: Request<pb::AcceptInvitationRequest>,
    ) -> Result<Response<pb::AcceptInvitationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.accept_invitation(caller, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn decline_invitation(
        &self,
        request: Request<pb::DeclineInvitationRequest>,
    ) -> Result<Response<pb::DeclineInvitationResponse>, Status> {
        let written = self.core.decline_invitation(request.into_inner()).await?;
        Ok(respond(pb::DeclineInvitationResponse {}, Some(written)))
    }

    async fn change_member_role(
        &self,
        request: Request<pb::ChangeMemberRoleRequest>,
    ) -> Result<Response<pb::ChangeMemberRoleResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "OrganizationService/ChangeMemberRole").await?;
        let org = active_org(request.extensions())?;
        let (reply, written) = self.core.change_member_role(caller, org, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "OrganizationService/RemoveMember").await?;
        let org = active_org(request.extensions())?;
        let written = self.core.remove_member_by(caller, org, request.into_inner()).await?;
        Ok(respond(pb::RemoveMemberResponse {}, Some(written)))
    }

    async fn list_organization_api_keys(
        &self,
        request: Request<pb::ListOrganizationApiKeysRequest>,
    ) -> Result<Response<pb::ListOrganizationApiKeysResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        Ok(Response::new(self.core.list_org_api_keys(caller, org).await?))
    }

    async fn revoke_organization_api_key(
        &self,
        request: Request<pb::RevokeOrganizationApiKeyRequest>,
    ) -> Result<Response<pb::RevokeOrganizationApiKeyResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        let written = self.core.revoke_org_api_key(caller, org, request.into_inner()).await?;
        Ok(respond(pb::RevokeOrganizationApiKeyResponse {}, Some(written)))
    }

    async fn list_audit_log(
        &self,
        request: Request<pb::ListAuditLogRequest>,
    ) -> Result<Response<pb::ListAuditLogResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let org = active_org(request.extensions())?;
        Ok(Response::new(self.core.list_audit_log(caller, org, request.into_inner()).await?))
    }
}
