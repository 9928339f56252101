//! The `tenx.auth.v1.AuthService` gRPC API.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tenx_common::authn::{self, OrgMembership, OrgRole, Principal, Revoked};
use tenx_common::cache::Cache;
use tenx_common::db::{Db, Prepared, WalPosition, wal};
use tenx_common::outbox::{self, NewEvent};
use tenx_proto::auth::v1 as pb;
use tenx_proto::auth::v1::auth_service_server::AuthService;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::error::{AuthError, root_cause};
use crate::keys::{Authenticated, Keys, SessionState};
use crate::password::Passwords;
use crate::secrets;
use crate::settings::AuthSettings;
use crate::store::{self, ApiKeyAuth, CodePurpose, UserRecord};
use crate::validate;

/// Everything the handlers share.
pub struct Core {
    pub db: Arc<Db>,
    pub keys: Arc<Keys>,
    pub passwords: Passwords,
    /// Seals codes for notification (`codes.seal_key`).
    pub seal: tenx_common::sealed::SealKey,
    pub users: Cache<UserRecord>,
    /// Session id → still active. Every access-token check reads it; a
    /// revocation invalidates it on every instance.
    pub sessions: Cache<bool>,
    /// SHA-256 of an API key (hex) → its owner, or `None` if unknown.
    pub api_keys: Cache<Option<ApiKeyAuth>>,
    pub settings: AuthSettings,
    /// API keys whose `last_used_at` was written recently (throttle).
    pub touched: moka::future::Cache<Uuid, ()>,
    /// Revoked sessions and API keys, checked before the caches.
    pub denied: crate::denylist::DenyList,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// The gRPC service; cheap to clone.
#[derive(Debug, Clone)]
pub struct AuthApi {
    core: Arc<Core>,
}

impl AuthApi {
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

mod mfa;
mod orgs;

pub use orgs::OrgApi;

/// Who is calling, from a verified access token.
#[derive(Debug, Clone, Copy)]
struct Caller {
    user: Uuid,
    session: Uuid,
}

fn respond<T>(message: T, written: Option<WalPosition>) -> Response<T> {
    let mut response = Response::new(message);
    if let Some(position) = written {
        wal::stamp(response.metadata_mut(), position);
    }
    response
}

/// Whom password attempts are counted against besides the account: the
/// client address the gateway vouched for, or one shared `direct` bucket
/// for everyone who reaches auth itself (inside the cluster).
fn client_of(extensions: &tonic::Extensions) -> String {
    authn::edge_client(extensions).unwrap_or("direct").to_owned()
}

/// How long until a lock ending at `until` ends; a second when it is
/// unknown or just past (the caller is told to wait, not to hammer).
fn until_unlocked(until: Option<SystemTime>) -> Duration {
    until.and_then(|u| u.duration_since(SystemTime::now()).ok()).unwrap_or(Duration::from_secs(1))
}

fn unshare(error: Arc<AuthError>) -> AuthError {
    Arc::try_unwrap(error).unwrap_or_else(|shared| match &*shared {
        AuthError::Pool(_) | AuthError::Db(_) => AuthError::Internal(format!("database: {shared}")),
        other => AuthError::Internal(other.to_string()),
    })
}

fn position_from(metadata: &MetadataMap) -> Result<Option<WalPosition>, AuthError> {
    wal::requested(metadata).map_err(|reason| AuthError::invalid(wal::METADATA, reason))
}

/// The account an operator names: by email or by id, exactly one.
enum Account {
    Email(String),
    Id(Uuid),
}

impl Account {
    fn named(email: &str, user_id: &str) -> Result<Self, AuthError> {
        match (email.is_empty(), user_id.is_empty()) {
            (false, true) => Ok(Account::Email(validate::canonical_email(email))),
            (true, false) => Ok(Account::Id(validate::id("user_id", user_id)?)),
            _ => Err(AuthError::invalid("email", "set exactly one of email or user_id")),
        }
    }

    /// `SELECT columns FROM users WHERE` it is this account, then `tail`.
    async fn find<C: Prepared>(
        &self,
        conn: &C,
        columns: &str,
        tail: &str,
    ) -> Result<Option<tokio_postgres::Row>, AuthError> {
        Ok(match self {
            Account::Email(email) => {
                let sql = format!("SELECT {columns} FROM users WHERE email = $1{tail}");
                conn.query_opt_cached(&sql, &[email]).await?
            }
            Account::Id(id) => {
                let sql = format!("SELECT {columns} FROM users WHERE id = $1{tail}");
                conn.query_opt_cached(&sql, &[id]).await?
            }
        })
    }
}

/// Who made an operator call, for the audit line.
fn operator_name(extensions: &tonic::Extensions) -> String {
    match authn::principal(extensions) {
        Some(Principal::User { user_id, .. }) => format!("user {user_id}"),
        Some(Principal::Service { name }) => format!("service {name}"),
        Some(Principal::ApiKey { key_id, .. }) => format!("api key {key_id}"),
        None => "nobody".to_owned(),
    }
}

impl Core {
    /// The user a call acts for, from the principal the shared
    /// authentication layer verified (signature, revocation, the RPC's
    /// rule). A session must also still be active here: auth's own word,
    /// in case a revocation has not reached Redis yet.
    async fn caller(&self, extensions: &tonic::Extensions) -> Result<Caller, AuthError> {
        let unauthenticated = AuthError::Unauthenticated("missing bearer token");
        let (user, session) = match authn::principal(extensions).ok_or(unauthenticated)? {
            // An API key belongs to no session (the nil id).
            Principal::ApiKey { user_id, .. } => return Ok(Caller { user: *user_id, session: Uuid::nil() }),
            Principal::User { user_id, session_id, .. } => (*user_id, *session_id),
            Principal::Service { .. } => return Err(AuthError::Unauthenticated("this call acts for a user")),
        };
        let db = self.db.clone();
        let mut key = Uuid::encode_buffer();
        let active = self
            .sessions
            .get_or_load_fresh(session.hyphenated().encode_lower(&mut key), None, |after| async move {
                // A replica can only be behind: "unknown" there may be a
                // session just created, so only the primary may say no.
                if store::session_active(&*db.read(after).await?, session).await? {
                    return Ok(true);
                }
                store::session_active(&*db.write().await?, session).await
            })
            .await
            .map_err(unshare)?;
        if !active {
            return Err(AuthError::Unauthenticated("session revoked"));
        }
        Ok(Caller { user, session })
    }

    async fn tokens(
        &self,
        user: Uuid,
        session: Uuid,
        refresh_token: String,
    ) -> Result<pb::Tokens, AuthError> {
        // From the primary: a role granted or removed shows in the next
        // token; so do the session's last (re)authentication and its
        // active organization (gone with the membership, or while the
        // organization requires a second factor the session has not shown).
        let row = self
            .db
            .write()
            .await?
            .query_opt_cached(
                "SELECT u.roles, s.authenticated_at, s.mfa, m.org_id, m.role, s.grant_id \
                 FROM sessions s JOIN users u ON u.id = s.user_id \
                 LEFT JOIN organizations o ON o.id = s.active_org_id AND (s.mfa OR NOT o.require_mfa) \
                 LEFT JOIN org_members m ON m.org_id = o.id AND m.user_id = s.user_id \
                 WHERE s.id = $1 AND s.user_id = $2",
                &[&session, &user],
            )
            .await?
            .ok_or(AuthError::Unauthenticated("session revoked"))?;
        let org = match (row.get::<_, Option<Uuid>>(3), row.get::<_, Option<String>>(4)) {
            (Some(org_id), Some(role)) => {
                let role = OrgRole::parse(&role)
                    .ok_or_else(|| AuthError::Internal(format!("stored role {role:?}")))?;
                Some(OrgMembership { org_id, role })
            }
            _ => None,
        };
        let state = SessionState {
            roles: row.get(0),
            authenticated: Authenticated { at: row.get(1), mfa: row.get(2) },
            org,
            grant: Some(row.get(5)),
        };
        let (access, expires) = self.keys.issue(&user.to_string(), &session.to_string(), &state)?;
        Ok(pb::Tokens {
            access_token: access,
            access_token_expires_at: Some(store::timestamp(expires)),
            refresh_token,
            session_id: session.to_string(),
        })
    }

    async fn user(&self, id: Uuid, after: Option<WalPosition>) -> Result<UserRecord, AuthError> {
        let db = self.db.clone();
        let mut key = Uuid::encode_buffer();
        self.users
            .get_or_load_fresh(id.hyphenated().encode_lower(&mut key), after, |after| async move {
                // Missing on a (lagging) replica may mean just created.
                if let Some(user) = store::user_by_id(&*db.read(after).await?, id).await? {
                    return Ok(user);
                }
                store::user_by_id(&*db.write().await?, id).await?.ok_or(AuthError::NotFound("user"))
            })
            .await
            .map_err(unshare)
    }

    /// After revoking sessions: refuse their access tokens everywhere.
    async fn forget_sessions(&self, sessions: &[Uuid], written: WalPosition) {
        for session in sessions {
            self.denied.deny(Revoked::Session, &session.to_string()).await;
            self.sessions.invalidate_after(&session.to_string(), Some(written)).await;
        }
    }

    /// After commit: API keys revoked (by the SHA-256 of their secret) are
    /// refused everywhere, and no cached answer outlives them.
    async fn forget_api_keys(&self, hashes: &[Vec<u8>], written: WalPosition) {
        for hash in hashes {
            let hash = secrets::hex(hash);
            self.denied.deny(Revoked::ApiKey, &hash).await;
            self.api_keys.invalidate_after(&hash, Some(written)).await;
        }
    }

    fn lock_delay(&self, failures: i32) -> Duration {
        let over = u32::try_from(failures - self.settings.login.max_failures).unwrap_or(0).min(20);
        let seconds = self.settings.login.base_lock_seconds.saturating_mul(1u64 << over);
        Duration::from_secs(seconds.min(self.settings.login.max_lock_seconds))
    }

    async fn sign_up(
        &self,
        request: pb::SignUpRequest,
    ) -> Result<(pb::SignUpResponse, WalPosition), AuthError> {
        let email = validate::canonical_email(&request.email);
        self.passwords.check_new("password", &request.password)?;
        let (display_name, device) = (request.display_name.clone(), request.device_name.clone());
        let hash = self.passwords.hash(&request.password).await?;

        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO users (id, email, password_hash, display_name) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (email) DO NOTHING RETURNING {}",
            store::USER_COLUMNS
        );
        let row = tx.query_opt_cached(&sql, &[&id, &email, &hash, &display_name]).await?;
        let user = UserRecord::from_row(&row.ok_or(AuthError::EmailTaken)?);
        let event = pb::UserSignedUp { user_id: id.to_string(), email: email.clone(), display_name };
        let event = NewEvent::of(&id.to_string(), &event);
        // Sent together (pipelined on the one connection): none of the three
        // needs another's row, only the account's, so the order Postgres
        // runs them in does not matter; two round trips fewer.
        let (personal, session, queued) = futures_util::join!(
            crate::personal::ensure(&tx, id),
            store::create_session(&tx, id, &device, false),
            outbox::enqueue(&tx, &event),
        );
        let (session, refresh) = match (personal, session, queued.map_err(AuthError::from)) {
            (Ok(()), Ok(session), Ok(_)) => session,
            (personal, session, queued) => {
                return Err(root_cause([personal.err(), session.err(), queued.err()]));
            }
        };
        tx.commit().await?;
        let written = conn.commit_position().await?;
        let tokens = self.tokens(id, session, refresh).await?;
        Ok((pb::SignUpResponse { user: Some(user.to_proto()), tokens: Some(tokens) }, written))
    }

    async fn login(
        self: &Arc<Self>,
        request: pb::LoginRequest,
        client: &str,
    ) -> Result<(pb::LoginResponse, WalPosition), AuthError> {
        let email = validate::canonical_email(&request.email);
        let device = request.device_name.clone();
        let wrong = AuthError::Unauthenticated("wrong email or password");

        // Claim the attempt before checking the password, in one atomic
        // step: concurrent guesses each take a number, and only the first
        // `max` of a window are ever checked. Counted per email and client,
        // whether or not the email has an account. No connection is held
        // while argon2 runs (a slow hash must not starve the pool).
        //
        // Until the caller is told how the password fared, the claim is
        // given back if this ends (the caller went away, the hashers were
        // busy, the database failed): an answer never given reveals
        // nothing, and must not count against the account's owner. The
        // claim runs as a task of its own, so a caller going away while
        // its INSERT is in flight cannot leave a count without the guard
        // that gives it back (nor give back a count that never landed).
        let (attempt, mut claim, account) = {
            let (core, email, client) = (self.clone(), email.clone(), client.to_owned());
            tokio::spawn(async move {
                let conn = core.db.write().await?;
                let attempt = core.claim_attempt(&*conn, &email, &client).await?;
                let claim = Claim::new(core.db.clone(), &email, &client);
                Ok::<_, AuthError>((attempt, claim, store::login_row(&*conn, &email).await?))
            })
            .await
            .map_err(|e| AuthError::Internal(format!("claiming a login attempt: {e}")))??
        };
        // An unknown email is as slow as a known one, and fails the same.
        let verified = self
            .passwords
            .verify(&request.password, account.as_ref().map(|a| a.password_hash.as_str()))
            .await?;
        let Some(account) = account.filter(|_| verified.ok) else {
            self.fail_attempt(&email, client, attempt).await?;
            claim.settle();
            return Err(wrong);
        };
        let (id, user, mfa) = (account.user.id, account.user, account.mfa);
        let rehash =
            if verified.needs_rehash { Some(self.passwords.hash(&request.password).await?) } else { None };
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        // A lock set meanwhile by a concurrent failed guess wins.
        if self.locked(&tx, &email, client).await? {
            claim.settle();
            return Err(AuthError::LockedOut {
                retry_after: self.lock_delay(self.settings.login.max_failures),
            });
        }
        if let Some(hash) = rehash {
            tx.execute_cached("UPDATE users SET password_hash = $2 WHERE id = $1", &[&id, &hash]).await?;
        }
        if mfa {
            // Half proved: this attempt stays counted, and the challenge's
            // first code is checked on it (see `complete_mfa_login`), so
            // wrong codes add up toward the same lockout as wrong
            // passwords until a right code clears the count. Settled
            // before the commit: a commit whose answer is lost keeps the
            // count (the safe side), and nothing is ever given back twice.
            let challenge = self.challenge(&tx, id, &device).await?;
            claim.settle();
            tx.commit().await?;
            let written = conn.commit_position().await?;
            // Nothing about the account until the second factor.
            let response = pb::LoginResponse { user: None, tokens: None, mfa_challenge: Some(challenge) };
            return Ok((response, written));
        }
        store::forget_attempts(&tx, &email, client).await?;
        let (session, refresh) = store::create_session(&tx, id, &device, false).await?;
        tx.commit().await?;
        // The attempts are gone with the commit: nothing to give back.
        claim.settle();
        let written = conn.commit_position().await?;
        let tokens = self.tokens(id, session, refresh).await?;
        Ok((
            pb::LoginResponse { user: Some(user.to_proto()), tokens: Some(tokens), mfa_challenge: None },
            written,
        ))
    }

    /// Counts one password attempt of (`email`, `client`) and returns its
    /// number in the current window; LOCKED_OUT while a lock holds, or
    /// when the attempt is past the limit (concurrent guesses past it are
    /// not even checked, and lock the client out).
    async fn claim_attempt(&self, conn: &impl Prepared, email: &str, client: &str) -> Result<i32, AuthError> {
        let row = conn
            .query_opt_cached(
                "INSERT INTO login_attempts AS a (email, client, failures) VALUES ($1, $2, 1) \
                 ON CONFLICT (email, client) DO UPDATE SET failures = a.failures + 1, \
                   was_locked = a.locked_until IS NOT NULL, locked_until = NULL, updated_at = now() \
                 WHERE a.locked_until IS NULL OR a.locked_until <= now() \
                 RETURNING failures, was_locked",
                &[&email, &client],
            )
            .await?;
        if let Some(row) = row {
            let (attempt, after_lock): (i32, bool) = (row.get(0), row.get(1));
            // The first guess after a lock expired is checked once; a
            // failure locks again for longer.
            if attempt > self.settings.login.max_failures && !after_lock {
                self.lock(conn, email, client, attempt).await?;
                return Err(AuthError::LockedOut { retry_after: self.lock_delay(attempt) });
            }
            return Ok(attempt);
        }
        let until: Option<SystemTime> = conn
            .query_opt_cached(
                "SELECT locked_until FROM login_attempts WHERE email = $1 AND client = $2",
                &[&email, &client],
            )
            .await?
            .and_then(|r| r.get(0));
        Err(AuthError::LockedOut { retry_after: until_unlocked(until) })
    }

    async fn locked(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        email: &str,
        client: &str,
    ) -> Result<bool, AuthError> {
        Ok(tx
            .query_opt_cached(
                "SELECT 1 FROM login_attempts WHERE email = $1 AND client = $2 AND locked_until > now() FOR UPDATE",
                &[&email, &client],
            )
            .await?
            .is_some())
    }

    /// A wrong password on attempt number `attempt`: the last one the
    /// limit allows locks the client out of the email.
    async fn fail_attempt(&self, email: &str, client: &str, attempt: i32) -> Result<(), AuthError> {
        if attempt >= self.settings.login.max_failures {
            self.lock(&*self.db.write().await?, email, client, attempt).await?;
        }
        Ok(())
    }

    async fn lock(
        &self,
        conn: &impl Prepared,
        email: &str,
        client: &str,
        failures: i32,
    ) -> Result<(), AuthError> {
        let delay = self.lock_delay(failures);
        conn.execute_cached(
            "UPDATE login_attempts SET locked_until = now() + make_interval(secs => $3), updated_at = now() \
                 WHERE email = $1 AND client = $2 AND (locked_until IS NULL OR locked_until <= now())",
            &[&email, &client, &delay.as_secs_f64()],
        )
        .await?;
        tracing::warn!(
            client,
            failures,
            lock_seconds = delay.as_secs(),
            "password attempts locked for a client"
        );
        Ok(())
    }

    async fn refresh(
        &self,
        request: pb::RefreshRequest,
    ) -> Result<(pb::RefreshResponse, WalPosition), AuthError> {
        let token = request.refresh_token.as_str();
        let bad = AuthError::Unauthenticated("invalid refresh token");
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_opt_cached(
                "SELECT rt.session_id, s.user_id, s.revoked_at IS NOT NULL AS revoked, \
                        rt.issued_at < now() - make_interval(days => $2) AS expired, \
                        rt.rotated_at IS NOT NULL AS rotated, \
                        rt.rotated_at > now() - make_interval(secs => $3) AS in_grace \
                 FROM refresh_tokens rt JOIN sessions s ON s.id = rt.session_id \
                 WHERE rt.token_hash = $1 FOR UPDATE OF rt, s",
                &[
                    &secrets::hash(token),
                    &i32::try_from(self.settings.tokens.refresh_ttl_days).unwrap_or(i32::MAX),
                    &(self.settings.tokens.refresh_reuse_grace_seconds as f64),
                ],
            )
            .await?;
        let Some(row) = row else { return Err(bad) };
        let (session, user): (Uuid, Uuid) = (row.get(0), row.get(1));
        if row.get::<_, bool>("revoked") || row.get::<_, bool>("expired") {
            return Err(bad);
        }
        if row.get::<_, bool>("rotated") && !row.get::<_, Option<bool>>("in_grace").unwrap_or(false) {
            // An already-exchanged token came back: someone holds a copy.
            store::revoke_session(&tx, session, "refresh_token_reuse").await?;
            tx.commit().await?;
            let written = conn.commit_position().await?;
            self.forget_sessions(&[session], written).await;
            tracing::warn!(session_id = %session, user_id = %user, "refresh token reuse; session revoked");
            return Err(bad);
        }
        tx.execute_cached(
            "UPDATE refresh_tokens SET rotated_at = COALESCE(rotated_at, now()) WHERE token_hash = $1",
            &[&secrets::hash(token)],
        )
        .await?;
        tx.execute_cached("UPDATE sessions SET last_used_at = now() WHERE id = $1", &[&session]).await?;
        let refresh = store::insert_refresh_token(&tx, session).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::RefreshResponse { tokens: Some(self.tokens(user, session, refresh).await?) }, written))
    }

    async fn logout(&self, request: pb::LogoutRequest) -> Result<WalPosition, AuthError> {
        let token = request.refresh_token.as_str();
        let conn = self.db.write().await?;
        let row = conn
            .query_opt_cached(
                "SELECT session_id FROM refresh_tokens WHERE token_hash = $1",
                &[&secrets::hash(token)],
            )
            .await?;
        let session: Uuid = row.ok_or(AuthError::Unauthenticated("invalid refresh token"))?.get(0);
        store::revoke_session(&*conn, session, "logout").await?;
        let written = conn.commit_position().await?;
        self.forget_sessions(&[session], written).await;
        Ok(written)
    }

    async fn revoke_session(
        &self,
        caller: Caller,
        request: pb::RevokeSessionRequest,
    ) -> Result<WalPosition, AuthError> {
        let session = validate::id("session_id", &request.session_id)?;
        let conn = self.db.write().await?;
        let n = conn
            .execute_cached(
                "UPDATE sessions SET revoked_at = now(), revoke_reason = 'revoked' \
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
                &[&session, &caller.user],
            )
            .await?;
        if n == 0 {
            return Err(AuthError::NotFound("session"));
        }
        let written = conn.commit_position().await?;
        self.forget_sessions(&[session], written).await;
        Ok(written)
    }

    async fn list_sessions(&self, caller: Caller) -> Result<pb::ListSessionsResponse, AuthError> {
        let conn = self.db.write().await?;
        let rows = conn
            .query_cached(
                "SELECT id, device_name, created_at, last_used_at FROM sessions \
                 WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 500",
                &[&caller.user],
            )
            .await?;
        let sessions = rows
            .iter()
            .map(|r| {
                let id: Uuid = r.get(0);
                pb::Session {
                    id: id.to_string(),
                    device_name: r.get(1),
                    created_at: Some(store::timestamp(r.get(2))),
                    last_used_at: Some(store::timestamp(r.get(3))),
                    current: id == caller.session,
                }
            })
            .collect();
        Ok(pb::ListSessionsResponse { sessions })
    }

    async fn get_user(
        &self,
        caller: Caller,
        request: pb::GetUserRequest,
        after: Option<WalPosition>,
    ) -> Result<pb::GetUserResponse, AuthError> {
        let id =
            if request.user_id.is_empty() { caller.user } else { validate::id("user_id", &request.user_id)? };
        if id != caller.user {
            // Not yours and not found look the same: ids cannot be probed.
            return Err(AuthError::NotFound("user"));
        }
        Ok(pb::GetUserResponse { user: Some(self.user(id, after).await?.into_proto()) })
    }

    /// Commits `tx`, then refreshes the user in every instance's cache.
    async fn commit_user_change(
        &self,
        conn: &tenx_common::db::Conn,
        user: Uuid,
    ) -> Result<WalPosition, AuthError> {
        let written = conn.commit_position().await?;
        self.users.invalidate_after(&user.to_string(), Some(written)).await;
        Ok(written)
    }

    async fn update_profile(
        &self,
        caller: Caller,
        request: pb::UpdateProfileRequest,
    ) -> Result<(pb::UpdateProfileResponse, WalPosition), AuthError> {
        let display_name = request.display_name.clone();
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let sql = format!(
            "UPDATE users SET display_name = $2, updated_at = now() WHERE id = $1 RETURNING {}",
            store::USER_COLUMNS
        );
        let row = tx
            .query_opt_cached(&sql, &[&caller.user, &display_name])
            .await?
            .ok_or(AuthError::NotFound("user"))?;
        let user = UserRecord::from_row(&row);
        let event = pb::UserUpdated { user_id: user.id.to_string(), email: user.email.clone(), display_name };
        outbox::enqueue(&tx, &NewEvent::of(&user.id.to_string(), &event)).await?;
        tx.commit().await?;
        let written = self.commit_user_change(&conn, caller.user).await?;
        Ok((pb::UpdateProfileResponse { user: Some(user.to_proto()) }, written))
    }

    async fn request_email_verification(&self, caller: Caller) -> Result<WalPosition, AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let user = store::user_by_id(&tx, caller.user).await?.ok_or(AuthError::NotFound("user"))?;
        let cooldown = Duration::from_secs(self.settings.codes.resend_cooldown_seconds);
        // One email per cooldown, whoever asks how often: no mail bombing
        // an address through its account.
        if !user.email_verified
            && !store::code_sent_within(&tx, user.id, CodePurpose::VerifyEmail, cooldown).await?
        {
            let ttl = self.settings.codes.verify_ttl_minutes;
            let code = store::new_code(
                &tx,
                user.id,
                CodePurpose::VerifyEmail,
                Duration::from_secs(u64::from(ttl) * 60),
            )
            .await?;
            let event = pb::EmailVerificationRequested {
                user_id: user.id.to_string(),
                email: user.email.clone(),
                expires_in_minutes: ttl,
                sealed_code: self
                    .seal
                    .seal(code.as_bytes(), format!("verify_email:{}:{}", user.id, user.email).as_bytes()),
                ..Default::default()
            };
            outbox::enqueue(&tx, &NewEvent::of(&user.id.to_string(), &event)).await?;
        }
        tx.commit().await?;
        Ok(conn.commit_position().await?)
    }

    async fn verify_email(
        &self,
        caller: Caller,
        request: pb::VerifyEmailRequest,
    ) -> Result<(pb::VerifyEmailResponse, WalPosition), AuthError> {
        let code = request.code.as_str();
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let spent = store::spend_code(
            &tx,
            caller.user,
            CodePurpose::VerifyEmail,
            code,
            self.settings.codes.max_attempts,
        )
        .await?;
        if !spent {
            tx.commit().await?; // the failed attempt counts
            return Err(AuthError::Wrong("code: wrong, used or expired"));
        }
        let sql = format!(
            "UPDATE users SET email_verified = true, updated_at = now() WHERE id = $1 RETURNING {}",
            store::USER_COLUMNS
        );
        let user = UserRecord::from_row(&tx.query_one_cached(&sql, &[&caller.user]).await?);
        let event = pb::UserUpdated {
            user_id: user.id.to_string(),
            email: user.email.clone(),
            display_name: user.display_name.clone(),
        };
        outbox::enqueue(&tx, &NewEvent::of(&user.id.to_string(), &event)).await?;
        tx.commit().await?;
        let written = self.commit_user_change(&conn, caller.user).await?;
        Ok((pb::VerifyEmailResponse { user: Some(user.to_proto()) }, written))
    }

    async fn request_password_reset(
        &self,
        request: pb::RequestPasswordResetRequest,
    ) -> Result<(), AuthError> {
        let email = validate::canonical_email(&request.email);
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let cooldown = Duration::from_secs(self.settings.codes.resend_cooldown_seconds);
        // Within the cooldown the same answer, and no second email: nobody
        // can flood a victim's mailbox with reset codes.
        let account = match store::login_row(&tx, &email).await? {
            Some(account)
                if !store::code_sent_within(&tx, account.user.id, CodePurpose::ResetPassword, cooldown)
                    .await? =>
            {
                Some(account)
            }
            _ => None,
        };
        if let Some(account) = account {
            let ttl = self.settings.codes.reset_ttl_minutes;
            let id = account.user.id;
            let code = store::new_code(
                &tx,
                id,
                CodePurpose::ResetPassword,
                Duration::from_secs(u64::from(ttl) * 60),
            )
            .await?;
            let event = pb::PasswordResetRequested {
                user_id: id.to_string(),
                sealed_code: self
                    .seal
                    .seal(code.as_bytes(), format!("password_reset:{id}:{email}").as_bytes()),
                email,
                expires_in_minutes: ttl,
                ..Default::default()
            };
            outbox::enqueue(&tx, &NewEvent::of(&id.to_string(), &event)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reset_password(&self, request: pb::ResetPasswordRequest) -> Result<WalPosition, AuthError> {
        let email = validate::canonical_email(&request.email);
        let code = request.code.as_str();
        self.passwords.check_new("new_password", &request.new_password)?;
        let wrong = || AuthError::Wrong("code: wrong, used or expired");
        // Hashed first, whether or not the account exists: the answer takes
        // as long either way, and no connection waits on argon2.
        let hash = self.passwords.hash(&request.new_password).await?;
        let mut conn = self.db.write().await?;
        let Some(account) = store::login_row(&*conn, &email).await? else { return Err(wrong()) };
        let id = account.user.id;
        let tx = conn.transaction().await?;
        if !store::spend_code(&tx, id, CodePurpose::ResetPassword, code, self.settings.codes.max_attempts)
            .await?
        {
            tx.commit().await?;
            return Err(wrong());
        }
        tx.execute_cached(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
            &[&id, &hash],
        )
        .await?;
        // The owner proved the address: every client's lock on it ends,
        // and so does the lock on its second factor's codes.
        tx.execute_cached("DELETE FROM login_attempts WHERE email = $1", &[&email]).await?;
        tx.execute_cached("UPDATE mfa_totp SET failed_codes = 0 WHERE user_id = $1", &[&id]).await?;
        let revoked = store::revoke_user_sessions(&tx, id, None, "password_reset").await?;
        // Whoever held the account before the reset (someone who signed up
        // with the victim's address first) keeps no API key either.
        let keys = self.revoke_all_keys_of(&tx, id, "its maker's password was reset").await?;
        let event = pb::PasswordChanged { user_id: id.to_string(), email };
        outbox::enqueue(&tx, &NewEvent::of(&id.to_string(), &event)).await?;
        tx.commit().await?;
        let written = self.commit_user_change(&conn, id).await?;
        self.forget_sessions(&revoked, written).await;
        self.forget_api_keys(&keys, written).await;
        Ok(written)
    }

    /// The caller's own password, checked again (a stolen session alone
    /// must not be enough to change credentials). Guesses count like
    /// failed logins, for the same email and client: no password oracle.
    async fn check_current_password(
        &self,
        caller: Caller,
        password: &str,
        client: &str,
    ) -> Result<UserRecord, AuthError> {
        let (user, _) = self.prove_password(caller, password, client, "current_password: wrong").await?;
        // Proved: this client's count starts again, as after a login.
        store::forget_attempts(&*self.db.write().await?, &user.email, client).await?;
        Ok(user)
    }

    /// The caller's password checked again, counted as a login attempt
    /// of (their email, `client`) and left counted: the account and the
    /// attempt's number. Wrong: `wrong`, and the
    /// attempt may lock the client out.
    async fn prove_password(
        &self,
        caller: Caller,
        password: &str,
        client: &str,
        wrong: &'static str,
    ) -> Result<(UserRecord, i32), AuthError> {
        let (user, account) = {
            let conn = self.db.write().await?;
            let user = store::user_by_id(&*conn, caller.user).await?.ok_or(AuthError::NotFound("user"))?;
            let account = store::login_row(&*conn, &user.email).await?.ok_or(AuthError::NotFound("user"))?;
            (user, account)
        };
        let attempt = self.claim_attempt(&*self.db.write().await?, &user.email, client).await?;
        // No connection is held while argon2 runs.
        let verified = self.passwords.verify(password, Some(&account.password_hash)).await?;
        if !verified.ok {
            self.fail_attempt(&user.email, client, attempt).await?;
            return Err(AuthError::Wrong(wrong));
        }
        Ok((user, attempt))
    }

    async fn change_password(
        &self,
        caller: Caller,
        request: pb::ChangePasswordRequest,
        client: &str,
    ) -> Result<WalPosition, AuthError> {
        self.passwords.check_new("new_password", &request.new_password)?;
        let user = self.check_current_password(caller, &request.current_password, client).await?;
        let hash = self.passwords.hash(&request.new_password).await?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        tx.execute_cached(
            "UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1",
            &[&caller.user, &hash],
        )
        .await?;
        store::forget_attempts(&tx, &user.email, client).await?;
        let revoked =
            store::revoke_user_sessions(&tx, caller.user, Some(caller.session), "password_changed").await?;
        let event = pb::PasswordChanged { user_id: caller.user.to_string(), email: user.email };
        outbox::enqueue(&tx, &NewEvent::of(&caller.user.to_string(), &event)).await?;
        tx.commit().await?;
        let written = self.commit_user_change(&conn, caller.user).await?;
        self.forget_sessions(&revoked, written).await;
        Ok(written)
    }

    async fn create_api_key(
        &self,
        caller: Caller,
        request: pb::CreateApiKeyRequest,
        client: &str,
    ) -> Result<(pb::CreateApiKeyResponse, WalPosition), AuthError> {
        let name = request.name.clone();
        let scopes = validate::scopes(&request.scopes);
        let org = match request.organization_id.as_str() {
            "" => None,
            raw => Some(validate::id("organization_id", raw)?),
        };
        // A key can outlive the session that made it: a stolen access
        // token must not be turned into a lasting credential.
        self.check_current_password(caller, &request.current_password, client).await?;
        let secret = secrets::api_key();
        let prefix: String = secret.chars().take(secrets::API_KEY_SHOWN).collect();
        let days = i32::try_from(request.expires_in_days).unwrap_or(0);
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        // Whether the session showed a second factor: a key made without
        // one stops working if its organization comes to require one.
        let mfa = store::session_showed_mfa(&tx, caller.session).await?;
        if let Some(org) = org {
            self.may_give_org_key(&tx, org, caller, mfa, &scopes).await?;
        }
        // The user's row locked: concurrent creations count one by one.
        tx.execute_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&caller.user]).await?;
        let live: i64 = tx
            .query_one_cached(
                "SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > now())",
                &[&caller.user],
            )
            .await?
            .get(0);
        let max = self.settings.api_keys.max_per_user;
        if live >= i64::from(max) {
            return Err(AuthError::TooManyKeys(max));
        }
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO api_keys (id, user_id, name, prefix, secret_hash, scopes, org_id, made_with_mfa, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $9, CASE WHEN $8 > 0 THEN now() + make_interval(days => $8) END) \
             RETURNING {}",
            store::API_KEY_COLUMNS
        );
        let row = tx
            .query_one_cached(
                &sql,
                &[&id, &caller.user, &name, &prefix, &secrets::hash(&secret), &scopes, &org, &days, &mfa],
            )
            .await?;
        if let Some(org) = org {
            self.record_org_key_created(&tx, org, caller, id, &name, &scopes).await?;
        }
        tx.commit().await?;
        let written = conn.commit_position().await?;
        // A key probed before it existed may be cached as unknown.
        self.api_keys.invalidate_after(&secrets::hex(&secrets::hash(&secret)), Some(written)).await;
        Ok((pb::CreateApiKeyResponse { api_key: Some(store::api_key_proto(&row)), secret }, written))
    }

    async fn list_api_keys(&self, caller: Caller) -> Result<pb::ListApiKeysResponse, AuthError> {
        let conn = self.db.write().await?;
        let sql = format!(
            "SELECT {} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 500",
            store::API_KEY_COLUMNS
        );
        let rows = conn.query_cached(&sql, &[&caller.user]).await?;
        Ok(pb::ListApiKeysResponse { api_keys: rows.iter().map(store::api_key_proto).collect() })
    }

    async fn revoke_api_key(
        &self,
        caller: Caller,
        request: pb::RevokeApiKeyRequest,
    ) -> Result<WalPosition, AuthError> {
        let id = validate::id("api_key_id", &request.api_key_id)?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let hash = self.revoke_own_key(&tx, caller, id).await?.ok_or(AuthError::NotFound("api key"))?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.forget_api_keys(&[hash], written).await;
        Ok(written)
    }

    pub(crate) async fn authenticate_api_key(
        &self,
        request: pb::AuthenticateApiKeyRequest,
    ) -> Result<pb::AuthenticateApiKeyResponse, AuthError> {
        let secret = request.secret.as_str();
        let bad = AuthError::Unauthenticated("invalid API key");
        if !secret.starts_with(secrets::API_KEY_PREFIX) {
            return Err(bad);
        }
        let hash = secrets::hash(secret);
        if self.denied.revocations().is_revoked(Revoked::ApiKey, &secrets::hex(&hash)).await? {
            return Err(bad);
        }
        let db = self.db.clone();
        let found = self
            .api_keys
            .get_or_load_fresh(&secrets::hex(&hash), None, |after| {
                let hash = hash.clone();
                async move {
                    if let Some(key) = store::api_key_by_hash(&*db.read(after).await?, &hash).await? {
                        return Ok(Some(key));
                    }
                    store::api_key_by_hash(&*db.write().await?, &hash).await
                }
            })
            .await
            .map_err(unshare)?;
        let Some(key) = found else { return Err(bad) };
        self.api_key_answer(key).await
    }

    async fn api_key_answer(&self, key: ApiKeyAuth) -> Result<pb::AuthenticateApiKeyResponse, AuthError> {
        if key.expires_at_ms.is_some_and(|e| e <= store::millis(SystemTime::now())) {
            return Err(AuthError::Unauthenticated("invalid API key"));
        }
        self.touch_api_key(key.key_id).await;
        let (organization_id, organization_role) =
            key.org.map(|(org, role)| (org.to_string(), role)).unwrap_or_default();
        Ok(pb::AuthenticateApiKeyResponse {
            user_id: key.user_id.to_string(),
            api_key_id: key.key_id.to_string(),
            scopes: key.scopes,
            organization_id,
            organization_role,
        })
    }

    /// Records `last_used_at` at most once a minute per key, off the
    /// request path.
    async fn touch_api_key(&self, id: Uuid) {
        if self.touched.contains_key(&id) {
            return;
        }
        self.touched.insert(id, ()).await;
        let db = self.db.clone();
        tokio::spawn(async move {
            let result = async {
                db.write()
                    .await?
                    .execute_cached("UPDATE api_keys SET last_used_at = now() WHERE id = $1", &[&id])
                    .await?;
                Ok::<_, AuthError>(())
            }
            .await;
            if let Err(error) = result {
                tracing::warn!(%error, api_key_id = %id, "recording API key use failed");
            }
        });
    }

    /// A service token for a configured service client whose secret
    /// matches. Both compared in constant time; a wrong name and a wrong
    /// secret get the same answer.
    fn issue_service_token(
        &self,
        request: pb::IssueServiceTokenRequest,
    ) -> Result<pb::IssueServiceTokenResponse, AuthError> {
        let bad = AuthError::Unauthenticated("wrong service or secret");
        if !validate::is_service_name(&request.service)
            || request.secret.is_empty()
            || request.secret.len() > 512
        {
            return Err(bad);
        }
        let configured = self.settings.service_clients.get(&request.service);
        let expected = configured.map(|s| s.expose().as_str()).unwrap_or_default();
        let matches = secrets::constant_time_eq(&secrets::hash(&request.secret), &secrets::hash(expected));
        if expected.is_empty() || !matches {
            tracing::warn!(service = %request.service, "service token refused: wrong service or secret");
            return Err(bad);
        }
        let (token, expires) =
            self.keys.issue_service(&request.service, self.settings.tokens.service_ttl_seconds)?;
        Ok(pb::IssueServiceTokenResponse { access_token: token, expires_at: Some(store::timestamp(expires)) })
    }

    /// Which of the given sessions and API keys are revoked (or unknown),
    /// from the primary.
    async fn check_revoked(
        &self,
        request: pb::CheckRevokedRequest,
    ) -> Result<pb::CheckRevokedResponse, AuthError> {
        if request.session_ids.len() + request.api_key_hashes.len() + request.grant_ids.len() > 100 {
            return Err(AuthError::invalid("session_ids", "at most 100 ids in all"));
        }
        let mut grants = Vec::new();
        for raw in &request.grant_ids {
            grants.push(validate::id("grant_ids", raw)?);
        }
        let mut sessions = Vec::new();
        for raw in &request.session_ids {
            sessions.push(validate::id("session_ids", raw)?);
        }
        let mut hashes = Vec::new();
        for raw in &request.api_key_hashes {
            hashes.push(
                secrets::unhex(raw)
                    .ok_or_else(|| AuthError::invalid("api_key_hashes", "must be hex SHA-256"))?,
            );
        }
        let conn = self.db.write().await?;
        let active: Vec<Uuid> = conn
            .query_cached("SELECT id FROM sessions WHERE id = ANY($1) AND revoked_at IS NULL", &[&sessions])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let live: Vec<Vec<u8>> = conn
            .query_cached(
                "SELECT secret_hash FROM api_keys WHERE secret_hash = ANY($1) AND revoked_at IS NULL",
                &[&hashes],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // A grant is live while a live session holds it.
        let held: Vec<Uuid> = conn
            .query_cached(
                "SELECT grant_id FROM sessions WHERE grant_id = ANY($1) AND revoked_at IS NULL",
                &[&grants],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        Ok(pb::CheckRevokedResponse {
            revoked_grant_ids: grants.iter().filter(|g| !held.contains(g)).map(Uuid::to_string).collect(),
            revoked_session_ids: sessions
                .iter()
                .filter(|s| !active.contains(s))
                .map(Uuid::to_string)
                .collect(),
            revoked_api_key_hashes: hashes
                .iter()
                .filter(|h| !live.contains(h))
                .map(|h| secrets::hex(h))
                .collect(),
        })
    }

    /// One account for operators (`LookupUser`), from the primary.
    async fn lookup_user(&self, request: pb::LookupUserRequest) -> Result<pb::LookupUserResponse, AuthError> {
        let account = Account::named(&request.email, &request.user_id)?;
        let conn = self.db.write().await?;
        let columns = format!("{}, roles", store::USER_COLUMNS);
        let row = account.find(&*conn, &columns, "").await?.ok_or(AuthError::NotFound("user"))?;
        let user = store::UserRecord::from_row(&row);
        let counts = conn
            .query_one_cached(
                "SELECT (SELECT count(*) FROM login_attempts WHERE email = $2 AND locked_until > now()), \
                        (SELECT max(locked_until) FROM login_attempts WHERE email = $2 AND locked_until > now()), \
                        (SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL), \
                        (SELECT max(created_at) FROM sessions WHERE user_id = $1), \
                        (SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL \
                           AND (expires_at IS NULL OR expires_at > now()))",
                &[&user.id, &user.email],
            )
            .await?;
        let count = |i: usize| u32::try_from(counts.get::<_, i64>(i)).unwrap_or(u32::MAX);
        Ok(pb::LookupUserResponse {
            roles: row.get("roles"),
            locked_clients: count(0),
            locked_until: counts.get::<_, Option<SystemTime>>(1).map(store::timestamp),
            active_sessions: count(2),
            last_login_at: counts.get::<_, Option<SystemTime>>(3).map(store::timestamp),
            active_api_keys: count(4),
            user: Some(user.to_proto()),
        })
    }

    /// Gives `account` the role or takes it away (`GrantRole`,
    /// `RevokeRole`), on the primary, the account's row locked. Taking it
    /// away revokes every live session of the account in the same
    /// transaction, then everywhere (the revocation feed), so no access
    /// token still carrying the role is honoured. Returns the roles now,
    /// whether anything changed, and the sessions revoked.
    async fn set_role(
        &self,
        operator: &str,
        account: Account,
        role: &str,
        grant: bool,
    ) -> Result<(Vec<String>, bool, Vec<Uuid>), AuthError> {
        if role != authn::ADMIN_ROLE {
            return Err(AuthError::invalid("role", "the one role is `admin`"));
        }
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let row = account.find(&tx, "id, roles", " FOR UPDATE").await?.ok_or(AuthError::NotFound("user"))?;
        let (user, mut roles): (Uuid, Vec<String>) = (row.get(0), row.get(1));
        let changed = grant != roles.iter().any(|r| r == role);
        let mut revoked = Vec::new();
        if changed {
            let sql = if grant {
                "UPDATE users SET roles = array_append(roles, $2), updated_at = now() WHERE id = $1 RETURNING roles"
            } else {
                "UPDATE users SET roles = array_remove(roles, $2), updated_at = now() WHERE id = $1 RETURNING roles"
            };
            roles = tx.query_one_cached(sql, &[&user, &role]).await?.get(0);
            if !grant {
                revoked = store::revoke_user_sessions(&tx, user, None, "role_revoked").await?;
            }
        }
        tx.commit().await?;
        if changed {
            let written = self.commit_user_change(&conn, user).await?;
            self.forget_sessions(&revoked, written).await;
            tracing::info!(%user, role, granted = grant, sessions_revoked = revoked.len(), by = operator, "role changed");
        }
        Ok((roles, changed, revoked))
    }

    /// The published keys and the schedule (`ListSigningKeys`).
    async fn list_signing_keys(&self) -> Result<pb::ListSigningKeysResponse, AuthError> {
        use pb::signing_key::State;
        let tokens = &self.settings.tokens;
        let keys = crate::keys::list(&self.db, tokens).await?;
        let now = SystemTime::now();
        // The first unretired key whose activation has passed signs.
        let current =
            keys.iter().find(|k| k.retired_at.is_none() && k.activates_at <= now).map(|k| k.kid.clone());
        let has_next = keys.iter().any(|k| k.retired_at.is_none() && k.activates_at > now);
        let period = Duration::from_secs(tokens.rotation_period_seconds);
        let lead = Duration::from_secs(tokens.rotation_lead_seconds);
        let next_key_due_at = match (&current, has_next, tokens.rotation_period_seconds) {
            (Some(kid), false, 1..) => keys.iter().find(|k| &k.kid == kid).map(|k| {
                crate::store::timestamp((k.activates_at + period).checked_sub(lead).unwrap_or(k.activates_at))
            }),
            _ => None,
        };
        Ok(pb::ListSigningKeysResponse {
            keys: keys
                .iter()
                .map(|k| pb::SigningKey {
                    kid: k.kid.clone(),
                    state: match () {
                        () if k.retired_at.is_some() => State::Retired,
                        () if current.as_deref() == Some(k.kid.as_str()) => State::Current,
                        () if k.activates_at > now => State::Next,
                        // Active but older than the current one, not yet
                        // retired by the schedule's next step.
                        () => State::Retired,
                    } as i32,
                    created_at: Some(crate::store::timestamp(k.created_at)),
                    activates_at: Some(crate::store::timestamp(k.activates_at)),
                    retired_at: k.retired_at.map(crate::store::timestamp),
                    published_until: k.published_until.map(crate::store::timestamp),
                })
                .collect(),
            rotation_period_seconds: tokens.rotation_period_seconds,
            next_key_due_at,
        })
    }

    fn jwks(&self) -> pb::GetJwksResponse {
        let keys = self.keys.jwks();
        let json = serde_json::json!({
            "keys": keys.iter().map(|k| serde_json::json!({
                "kid": k.kid, "kty": k.kty, "crv": k.crv, "x": k.x, "alg": k.alg, "use": k.r#use,
            })).collect::<Vec<_>>()
        });
        pb::GetJwksResponse { keys, jwks_json: json.to_string() }
    }

    async fn upload_avatar(
        &self,
        caller: Caller,
        request: pb::UploadAvatarRequest,
    ) -> Result<(pb::UploadAvatarResponse, WalPosition), AuthError> {
        if !matches!(request.content_type.as_str(), "image/png" | "image/jpeg") {
            return Err(AuthError::invalid("content_type", "must be image/png or image/jpeg"));
        }
        if request.data.is_empty() {
            return Err(AuthError::invalid("data", "is required"));
        }
        if request.data.len() > self.settings.avatars.max_bytes {
            return Err(AuthError::invalid(
                "data",
                format!("must be at most {} bytes", self.settings.avatars.max_bytes),
            ));
        }
        let id = Uuid::now_v7();
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        tx.execute_cached(
            "INSERT INTO avatars (id, user_id, content_type, original) VALUES ($1, $2, $3, $4)",
            &[&id, &caller.user, &request.content_type, &request.data],
        )
        .await?;
        let event = pb::AvatarUploaded { user_id: caller.user.to_string(), avatar_id: id.to_string() };
        outbox::enqueue(&tx, &NewEvent::of(&caller.user.to_string(), &event)).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::UploadAvatarResponse { avatar_id: id.to_string() }, written))
    }

    /// A thumbnail's PNG. It never changes under its id, so any copy is
    /// right: the replica's, or the primary's while the replica has not
    /// replayed a thumbnail just made.
    async fn get_avatar(&self, request: pb::GetAvatarRequest) -> Result<pb::GetAvatarResponse, AuthError> {
        const SQL: &str = "SELECT png FROM avatar_thumbnails WHERE id = $1";
        let id = validate::id("avatar_id", &request.avatar_id)?;
        let mut row = self.db.read(None).await?.query_opt_cached(SQL, &[&id]).await?;
        if row.is_none() {
            row = self.db.write().await?.query_opt_cached(SQL, &[&id]).await?;
        }
        let data: Vec<u8> = row.ok_or(AuthError::NotFound("avatar"))?.get(0);
        Ok(pb::GetAvatarResponse { content_type: "image/png".into(), data })
    }
}

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn sign_up(
        &self,
        request: Request<pb::SignUpRequest>,
    ) -> Result<Response<pb::SignUpResponse>, Status> {
        let (reply, written) = self.core.sign_up(request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn login(&self, request: Request<pb::LoginRequest>) -> Result<Response<pb::LoginResponse>, Status> {
        let client = client_of(request.extensions());
        let (reply, written) = self.core.login(request.into_inner(), &client).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::RefreshResponse>, Status> {
        let (reply, written) = self.core.refresh(request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let written = self.core.logout(request.into_inner()).await?;
        Ok(respond(pb::LogoutResponse {}, Some(written)))
    }

    async fn revoke_session(
        &self,
        request: Request<pb::RevokeSessionRequest>,
    ) -> Result<Response<pb::RevokeSessionResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let written = self.core.revoke_session(caller, request.into_inner()).await?;
        Ok(respond(pb::RevokeSessionResponse {}, Some(written)))
    }

    async fn list_sessions(
        &self,
        request: Request<pb::ListSessionsRequest>,
    ) -> Result<Response<pb::ListSessionsResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        Ok(Response::new(self.core.list_sessions(caller).await?))
    }

    async fn get_user(
        &self,
        request: Request<pb::GetUserRequest>,
    ) -> Result<Response<pb::GetUserResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let after = position_from(request.metadata())?;
        Ok(Response::new(self.core.get_user(caller, request.into_inner(), after).await?))
    }

    async fn update_profile(
        &self,
        request: Request<pb::UpdateProfileRequest>,
    ) -> Result<Response<pb::UpdateProfileResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.update_profile(caller, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn request_email_verification(
        &self,
        request: Request<pb::RequestEmailVerificationRequest>,
    ) -> Result<Response<pb::RequestEmailVerificationResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let written = self.core.request_email_verification(caller).await?;
        Ok(respond(pb::RequestEmailVerificationResponse {}, Some(written)))
    }

    async fn verify_email(
        &self,
        request: Request<pb::VerifyEmailRequest>,
    ) -> Result<Response<pb::VerifyEmailResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.verify_email(caller, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn request_password_reset(
        &self,
        request: Request<pb::RequestPasswordResetRequest>,
    ) -> Result<Response<pb::RequestPasswordResetResponse>, Status> {
        self.core.request_password_reset(request.into_inner()).await?;
        Ok(Response::new(pb::RequestPasswordResetResponse {}))
    }

    async fn reset_password(
        &self,
        request: Request<pb::ResetPasswordRequest>,
    ) -> Result<Response<pb::ResetPasswordResponse>, Status> {
        let written = self.core.reset_password(request.into_inner()).await?;
        Ok(respond(pb::ResetPasswordResponse {}, Some(written)))
    }

    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "AuthService/ChangePassword").await?;
        let client = client_of(request.extensions());
        let written = self.core.change_password(caller, request.into_inner(), &client).await?;
        Ok(respond(pb::ChangePasswordResponse {}, Some(written)))
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "AuthService/CreateApiKey").await?;
        let client = client_of(request.extensions());
        let (reply, written) = self.core.create_api_key(caller, request.into_inner(), &client).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn list_api_keys(
        &self,
        request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        Ok(Response::new(self.core.list_api_keys(caller).await?))
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let written = self.core.revoke_api_key(caller, request.into_inner()).await?;
        Ok(respond(pb::RevokeApiKeyResponse {}, Some(written)))
    }

    async fn authenticate_api_key(
        &self,
        request: Request<pb::AuthenticateApiKeyRequest>,
    ) -> Result<Response<pb::AuthenticateApiKeyResponse>, Status> {
        Ok(Response::new(self.core.authenticate_api_key(request.into_inner()).await?))
    }

    async fn get_jwks(
        &self,
        _request: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        // Verifiers ask when they meet an unknown kid, right after a
        // rotation this instance may not have loaded yet: read the key set
        // again, but at most ten times a second whoever asks (the RPC is
        // open to anyone, and must not be a way to load the primary).
        if let Err(error) = self.core.keys.reload_at_most_every(std::time::Duration::from_millis(100)).await {
            tracing::warn!(%error, "signing key reload failed; serving the last key set");
        }
        Ok(Response::new(self.core.jwks()))
    }

    async fn issue_service_token(
        &self,
        request: Request<pb::IssueServiceTokenRequest>,
    ) -> Result<Response<pb::IssueServiceTokenResponse>, Status> {
        Ok(Response::new(self.core.issue_service_token(request.into_inner())?))
    }

    async fn check_revoked(
        &self,
        request: Request<pb::CheckRevokedRequest>,
    ) -> Result<Response<pb::CheckRevokedResponse>, Status> {
        Ok(Response::new(self.core.check_revoked(request.into_inner()).await?))
    }

    async fn lookup_user(
        &self,
        request: Request<pb::LookupUserRequest>,
    ) -> Result<Response<pb::LookupUserResponse>, Status> {
        Ok(Response::new(self.core.lookup_user(request.into_inner()).await?))
    }

    async fn grant_role(
        &self,
        request: Request<pb::GrantRoleRequest>,
    ) -> Result<Response<pb::GrantRoleResponse>, Status> {
        self.core.operator_second_factor(request.extensions(), "AuthService/GrantRole").await?;
        let operator = operator_name(request.extensions());
        let request = request.into_inner();
        let account = Account::named(&request.email, &request.user_id)?;
        let (roles, changed, _) = self.core.set_role(&operator, account, &request.role, true).await?;
        Ok(Response::new(pb::GrantRoleResponse { roles, changed }))
    }

    async fn revoke_role(
        &self,
        request: Request<pb::RevokeRoleRequest>,
    ) -> Result<Response<pb::RevokeRoleResponse>, Status> {
        self.core.operator_second_factor(request.extensions(), "AuthService/RevokeRole").await?;
        let operator = operator_name(request.extensions());
        let request = request.into_inner();
        let account = Account::named(&request.email, &request.user_id)?;
        let (roles, changed, revoked) = self.core.set_role(&operator, account, &request.role, false).await?;
        let sessions_revoked = u32::try_from(revoked.len()).unwrap_or(u32::MAX);
        Ok(Response::new(pb::RevokeRoleResponse { roles, changed, sessions_revoked }))
    }

    async fn list_signing_keys(
        &self,
        _request: Request<pb::ListSigningKeysRequest>,
    ) -> Result<Response<pb::ListSigningKeysResponse>, Status> {
        Ok(Response::new(self.core.list_signing_keys().await?))
    }

    async fn upload_avatar(
        &self,
        request: Request<pb::UploadAvatarRequest>,
    ) -> Result<Response<pb::UploadAvatarResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.upload_avatar(caller, request.into_inner()).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn get_avatar(
        &self,
        request: Request<pb::GetAvatarRequest>,
    ) -> Result<Response<pb::GetAvatarResponse>, Status> {
        Ok(Response::new(self.core.get_avatar(request.into_inner()).await?))
    }

    async fn complete_mfa_login(
        &self,
        request: Request<pb::CompleteMfaLoginRequest>,
    ) -> Result<Response<pb::CompleteMfaLoginResponse>, Status> {
        let client = client_of(request.extensions());
        let (reply, written) = self.core.complete_mfa_login(request.into_inner(), &client).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn reauthenticate(
        &self,
        request: Request<pb::ReauthenticateRequest>,
    ) -> Result<Response<pb::ReauthenticateResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let client = client_of(request.extensions());
        let (reply, written) = self.core.reauthenticate(caller, request.into_inner(), &client).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn get_mfa_status(
        &self,
        request: Request<pb::GetMfaStatusRequest>,
    ) -> Result<Response<pb::GetMfaStatusResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        Ok(Response::new(self.core.get_mfa_status(caller).await?))
    }

    async fn enroll_totp(
        &self,
        request: Request<pb::EnrollTotpRequest>,
    ) -> Result<Response<pb::EnrollTotpResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let (reply, written) = self.core.enroll_totp(caller).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn confirm_totp(
        &self,
        request: Request<pb::ConfirmTotpRequest>,
    ) -> Result<Response<pb::ConfirmTotpResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        let client = client_of(request.extensions());
        let (reply, written) = self.core.confirm_totp(caller, request.into_inner(), &client).await?;
        Ok(respond(reply, Some(written)))
    }

    async fn disable_totp(
        &self,
        request: Request<pb::DisableTotpRequest>,
    ) -> Result<Response<pb::DisableTotpResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "AuthService/DisableTotp").await?;
        let written = self.core.disable_totp(caller).await?;
        Ok(respond(pb::DisableTotpResponse {}, Some(written)))
    }

    async fn regenerate_recovery_codes(
        &self,
        request: Request<pb::RegenerateRecoveryCodesRequest>,
    ) -> Result<Response<pb::RegenerateRecoveryCodesResponse>, Status> {
        let caller = self.core.caller(request.extensions()).await?;
        self.core.require_second_factor(caller, "AuthService/RegenerateRecoveryCodes").await?;
        let (reply, written) = self.core.regenerate_recovery_codes(caller).await?;
        Ok(respond(reply, Some(written)))
    }
}

/// One claimed password attempt (a number in `login_attempts`) whose
/// outcome the caller has not been told yet. Dropped unsettled, it gives
/// the number back (not below zero, and never while a lock holds), so a
/// login abandoned half-way (its caller gone, the hashers busy, a database
/// error) does not bring a legitimate user closer to a lockout. An
/// attacker gains no guess by it: an abandoned attempt answers nothing.
struct Claim {
    db: Arc<Db>,
    email: String,
    client: String,
    settled: bool,
}

impl Claim {
    fn new(db: Arc<Db>, email: &str, client: &str) -> Self {
        Self { db, email: email.to_owned(), client: client.to_owned(), settled: false }
    }

    /// The caller is told (or the count was reset): the claim stands.
    fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let (db, email, client) =
            (self.db.clone(), std::mem::take(&mut self.email), std::mem::take(&mut self.client));
        runtime.spawn(async move {
            let released = async { store::give_back_attempt(&*db.write().await?, &email, &client).await };
            if let Err(error) = released.await {
                tracing::warn!(%error, "an abandoned login attempt was not given back");
            }
        });
    }
}
