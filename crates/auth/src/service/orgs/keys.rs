//! API keys that belong to an organization: created by a member with
//! AuthService.CreateApiKey (`organization_id`), bounded by that member's
//! role ([`authn::ORG_KEY_SCOPES`]), seen and revoked by owners and admins,
//! and revoked by themselves when their maker's membership stops holding
//! what they do. Every revocation of one is recorded in the organization's
//! audit log and published (`auth.org.api_key_revoked`), except when the
//! organization itself goes (`auth.org.deleted` says it).
//!
//! Lock order, as for every change to an organization: its row first,
//! then members, then keys.

use tenx_common::authn::{self, ORG_KEY_SCOPES, OrgMembership, OrgRole, ScopeRefusal};
use tenx_common::db::{Prepared, WalPosition};
use tenx_common::outbox::{self, NewEvent};
use tenx_proto::auth::v1 as pb;
use uuid::Uuid;

use super::{Actor, audit, mfa_required};
use crate::error::AuthError;
use crate::service::{Caller, Core};
use crate::{secrets, store};

/// Organization keys most listed.
const MAX_LISTED: i64 = 500;

/// What a membership change takes back: the old grants of the member's
/// sessions and the secrets' hashes of their revoked keys; published by
/// [`Core::withdraw`] once committed. `stale`: keys that stay but whose
/// cached answer (their maker's role) is out of date.
#[derive(Debug, Default)]
pub(super) struct Withdrawn {
    pub grants: Vec<Uuid>,
    pub keys: Vec<Vec<u8>>,
    pub stale: Vec<Vec<u8>>,
}

/// Which keys of an organization a change revokes.
pub(super) enum KeysLeft {
    /// None stay: their maker left or was removed, or the organization is gone.
    None,
    /// Those whose scopes all fit this role stay.
    Within(OrgRole),
    /// Those made in a session that showed a second factor stay.
    MadeWithMfa,
}

impl Core {
    /// Refuses unless `caller` (whose session showed a second factor:
    /// `mfa`) may give a key for `org` these `scopes`: a member now (their
    /// membership read and held in `tx`), with a second factor when the
    /// organization requires one, whose role holds what each scope needs.
    /// Locks the organization first, shared.
    pub(in crate::service) async fn may_give_org_key(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        caller: Caller,
        mfa: bool,
        scopes: &[String],
    ) -> Result<(), AuthError> {
        let require_mfa: bool = tx
            .query_opt_cached("SELECT require_mfa FROM organizations WHERE id = $1 FOR SHARE", &[&org])
            .await?
            .ok_or(AuthError::NotFound("organization"))?
            .get(0);
        let role = self.role_in(tx, org, caller.user).await?;
        if require_mfa && !mfa {
            return Err(mfa_required());
        }
        for scope in scopes {
            match authn::org_key_scope_refusal(role, scope) {
                Some(ScopeRefusal::Personal(why)) => return Err(AuthError::invalid("scopes", why)),
                Some(ScopeRefusal::BeyondRole(why)) => {
                    return Err(AuthError::from(authn::AuthnError::PermissionDenied(why)));
                }
                None => {}
            }
        }
        Ok(())
    }

    /// A new key of `org`, in its audit log and as `auth.org.api_key_created`.
    pub(in crate::service) async fn record_org_key_created(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        maker: Caller,
        key: Uuid,
        name: &str,
        scopes: &[String],
    ) -> Result<(), AuthError> {
        let detail = format!("{name} ({})", scopes.join(" "));
        audit(tx, org, Some(&maker.into()), "api_key.created", &key.to_string(), &detail).await?;
        let event = pb::OrgApiKeyCreated {
            organization_id: org.to_string(),
            api_key_id: key.to_string(),
            name: name.to_owned(),
            scopes: scopes.to_vec(),
            user_id: maker.user.to_string(),
        };
        outbox::enqueue(tx, &NewEvent::of(&org.to_string(), &event)).await?;
        Ok(())
    }

    /// A key of `org` revoked, in its audit log and as `auth.org.api_key_revoked`.
    async fn record_org_key_revoked(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        actor: &Actor,
        key: Uuid,
        maker: Uuid,
        reason: &str,
    ) -> Result<(), AuthError> {
        audit(tx, org, Some(actor), "api_key.revoked", &key.to_string(), reason).await?;
        let event = pb::OrgApiKeyRevoked {
            organization_id: org.to_string(),
            api_key_id: key.to_string(),
            user_id: maker.to_string(),
            actor_user_id: actor.user.to_string(),
            reason: reason.to_owned(),
        };
        outbox::enqueue(tx, &NewEvent::of(&org.to_string(), &event)).await?;
        Ok(())
    }

    /// Revokes the maker's key `key` (AuthService.RevokeApiKey): its
    /// secret's hash, or `None` when the maker has no such live key.
    pub(in crate::service) async fn revoke_own_key(
        &self,
        tx: &impl Prepared,
        maker: Caller,
        key: Uuid,
    ) -> Result<Option<Vec<u8>>, AuthError> {
        let org: Option<Uuid> = match tx
            .query_opt_cached(
                "SELECT org_id FROM api_keys WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                &[&key, &maker.user],
            )
            .await?
        {
            Some(row) => row.get(0),
            None => return Ok(None),
        };
        if let Some(org) = org {
            tx.query_opt_cached("SELECT 1 FROM organizations WHERE id = $1 FOR SHARE", &[&org]).await?;
        }
        let Some(row) = tx
            .query_opt_cached(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
                 RETURNING secret_hash",
                &[&key, &maker.user],
            )
            .await?
        else {
            return Ok(None);
        };
        if let Some(org) = org {
            self.record_org_key_revoked(tx, org, &maker.into(), key, maker.user, "revoked by its maker")
                .await?;
        }
        Ok(Some(row.get(0)))
    }

    /// Revokes every live key of `user` (a password reset), each
    /// organization's key recorded with `why`; their hashes.
    pub(in crate::service) async fn revoke_all_keys_of(
        &self,
        tx: &impl Prepared,
        user: Uuid,
        why: &str,
    ) -> Result<Vec<Vec<u8>>, AuthError> {
        tx.query_cached(
            "SELECT 1 FROM organizations WHERE id IN \
               (SELECT org_id FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL) ORDER BY id FOR SHARE",
            &[&user],
        )
        .await?;
        let rows = tx
            .query_cached(
                "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL \
                 RETURNING secret_hash, id, org_id",
                &[&user],
            )
            .await?;
        let actor = Actor { user, session: None };
        for row in &rows {
            if let Some(org) = row.get::<_, Option<Uuid>>(2) {
                self.record_org_key_revoked(tx, org, &actor, row.get(1), user, why).await?;
            }
        }
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Revokes in `tx` the keys of `org` (`user`'s only, when given) that
    /// `left` does not keep, each recorded (unless `actor` is `None`: the
    /// organization is going); their hashes, to publish once committed.
    pub(super) async fn revoke_org_keys(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        user: Option<Uuid>,
        left: KeysLeft,
        actor: Option<&Actor>,
        why: &str,
    ) -> Result<Vec<Vec<u8>>, AuthError> {
        let every: Vec<String> = ORG_KEY_SCOPES.iter().map(|(s, _)| (*s).to_owned()).collect();
        let (all, keep, need_mfa) = match left {
            KeysLeft::None => (true, every, false),
            KeysLeft::Within(role) => (
                false,
                ORG_KEY_SCOPES
                    .iter()
                    .filter(|(_, p)| role.permits(p))
                    .map(|(s, _)| (*s).to_owned())
                    .collect(),
                false,
            ),
            KeysLeft::MadeWithMfa => (false, every, true),
        };
        let rows = tx
            .query_cached(
                "UPDATE api_keys SET revoked_at = now() \
                 WHERE org_id = $1 AND ($2::uuid IS NULL OR user_id = $2) AND revoked_at IS NULL \
                   AND ($3 OR NOT (scopes <@ $4::text[]) OR ($5 AND NOT made_with_mfa)) \
                 RETURNING id, secret_hash, user_id",
                &[&org, &user, &all, &keep, &need_mfa],
            )
            .await?;
        if let Some(actor) = actor {
            for row in &rows {
                self.record_org_key_revoked(tx, org, actor, row.get(0), row.get(2), why).await?;
            }
        }
        Ok(rows.iter().map(|r| r.get(1)).collect())
    }

    /// The hashes of `user`'s live keys of `org`.
    pub(super) async fn live_keys_of(
        &self,
        tx: &impl Prepared,
        org: Uuid,
        user: Uuid,
    ) -> Result<Vec<Vec<u8>>, AuthError> {
        let rows = tx
            .query_cached(
                "SELECT secret_hash FROM api_keys WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL",
                &[&org, &user],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// After commit: what a membership change took back stops working
    /// everywhere, and no cached answer about a kept key outlives it.
    pub(super) async fn withdraw(&self, withdrawn: &Withdrawn, written: WalPosition) {
        self.revoke_grants(&withdrawn.grants).await;
        self.forget_api_keys(&withdrawn.keys, written).await;
        for hash in &withdrawn.stale {
            self.api_keys.invalidate_after(&secrets::hex(hash), Some(written)).await;
        }
    }

    pub(super) async fn list_org_api_keys(
        &self,
        caller: Caller,
        org: OrgMembership,
    ) -> Result<pb::ListOrganizationApiKeysResponse, AuthError> {
        let conn = self.db.write().await?;
        self.require(&*conn, org.org_id, caller.user, "org.api_keys.manage").await?;
        let sql = format!(
            "SELECT {} FROM api_keys WHERE org_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT $2",
            store::API_KEY_COLUMNS
        );
        let rows = conn.query_cached(&sql, &[&org.org_id, &MAX_LISTED]).await?;
        Ok(pb::ListOrganizationApiKeysResponse { api_keys: rows.iter().map(store::api_key_proto).collect() })
    }

    pub(super) async fn revoke_org_api_key(
        &self,
        caller: Caller,
        org: OrgMembership,
        request: pb::RevokeOrganizationApiKeyRequest,
    ) -> Result<WalPosition, AuthError> {
        let id = crate::validate::id("api_key_id", &request.api_key_id)?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        self.lock_org(&tx, org.org_id).await?;
        self.require(&tx, org.org_id, caller.user, "org.api_keys.manage").await?;
        let row = tx
            .query_opt_cached(
                "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL \
                 RETURNING secret_hash, user_id",
                &[&id, &org.org_id],
            )
            .await?
            .ok_or(AuthError::NotFound("api key"))?;
        let reason = "revoked by an owner or admin";
        self.record_org_key_revoked(&tx, org.org_id, &caller.into(), id, row.get(1), reason).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.forget_api_keys(&[row.get(0)], written).await;
        Ok(written)
    }
}
