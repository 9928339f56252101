//! Rows auth reads and writes, and the SQL that does it. Queries run on
//! connections whose `search_path` is the auth schema.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tenx_common::db::Prepared;
use tenx_proto::auth::v1 as pb;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::error::AuthError;

/// A user as cached (L1/L2) and returned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserRecord {
    pub id: Uuid,
    pub email: String,
    pub email_verified: bool,
    pub display_name: String,
    pub avatar_64_id: Option<Uuid>,
    pub avatar_256_id: Option<Uuid>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

pub const USER_COLUMNS: &str =
    "id, email, email_verified, display_name, avatar_64_id, avatar_256_id, created_at, updated_at";

impl UserRecord {
    pub fn from_row(row: &Row) -> Self {
        Self {
            id: row.get("id"),
            email: row.get("email"),
            email_verified: row.get("email_verified"),
            display_name: row.get("display_name"),
            avatar_64_id: row.get("avatar_64_id"),
            avatar_256_id: row.get("avatar_256_id"),
            created_at_ms: millis(row.get("created_at")),
            updated_at_ms: millis(row.get("updated_at")),
        }
    }

    pub fn to_proto(&self) -> pb::User {
        self.clone().into_proto()
    }

    /// [`UserRecord::to_proto`] that moves the strings (a read's cached
    /// copy is its own).
    pub fn into_proto(self) -> pb::User {
        let text = |id: Uuid| id.hyphenated().encode_lower(&mut Uuid::encode_buffer()).to_owned();
        pb::User {
            id: text(self.id),
            email: self.email,
            email_verified: self.email_verified,
            display_name: self.display_name,
            avatar_64_id: self.avatar_64_id.map(text).unwrap_or_default(),
            avatar_256_id: self.avatar_256_id.map(text).unwrap_or_default(),
            created_at: Some(timestamp_ms(self.created_at_ms)),
            updated_at: Some(timestamp_ms(self.updated_at_ms)),
        }
    }
}

pub fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

pub fn timestamp_ms(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: ms.div_euclid(1000), nanos: (ms.rem_euclid(1000) * 1_000_000) as i32 }
}

pub fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    t.into()
}

pub async fn user_by_id<C: Prepared>(db: &C, id: Uuid) -> Result<Option<UserRecord>, AuthError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    Ok(db.query_opt_cached(&sql, &[&id]).await?.as_ref().map(UserRecord::from_row))
}

/// Credentials row for login.
pub struct LoginRow {
    pub user: UserRecord,
    pub password_hash: String,
    /// TOTP is on: a right password gets a challenge, not a session.
    pub mfa: bool,
}

impl std::fmt::Debug for LoginRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRow").field("user", &self.user).finish()
    }
}

pub async fn login_row<C: Prepared>(db: &C, email: &str) -> Result<Option<LoginRow>, AuthError> {
    let sql = format!(
        "SELECT {USER_COLUMNS}, password_hash, \
           EXISTS (SELECT 1 FROM mfa_totp t WHERE t.user_id = users.id AND t.confirmed_at IS NOT NULL) AS mfa \
         FROM users WHERE email = $1"
    );
    Ok(db.query_opt_cached(&sql, &[&email]).await?.map(|row| LoginRow {
        user: UserRecord::from_row(&row),
        password_hash: row.get("password_hash"),
        mfa: row.get("mfa"),
    }))
}

/// (`email`, `client`) proved itself: its failed attempts are forgotten.
pub async fn forget_attempts<C: Prepared>(conn: &C, email: &str, client: &str) -> Result<(), AuthError> {
    conn.execute_cached("DELETE FROM login_attempts WHERE email = $1 AND client = $2", &[&email, &client])
        .await?;
    Ok(())
}

/// One counted attempt of (`email`, `client`) given back (not below
/// zero, and never while a lock holds).
pub async fn give_back_attempt<C: Prepared>(conn: &C, email: &str, client: &str) -> Result<(), AuthError> {
    conn.execute_cached(
        "UPDATE login_attempts SET failures = failures - 1, updated_at = now() \
         WHERE email = $1 AND client = $2 AND failures > 0 \
           AND (locked_until IS NULL OR locked_until <= now())",
        &[&email, &client],
    )
    .await?;
    Ok(())
}

/// Starts a session, authenticated now (`mfa`: with a second factor),
/// with its first refresh token; returns the token.
pub async fn create_session<C: Prepared>(
    tx: &C,
    user: Uuid,
    device: &str,
    mfa: bool,
) -> Result<(Uuid, String), AuthError> {
    let session = Uuid::now_v7();
    tx.execute_cached(
        "INSERT INTO sessions (id, user_id, device_name, mfa) VALUES ($1, $2, $3, $4)",
        &[&session, &user, &device, &mfa],
    )
    .await?;
    let token = insert_refresh_token(tx, session).await?;
    Ok((session, token))
}

pub async fn insert_refresh_token<C: Prepared>(tx: &C, session: Uuid) -> Result<String, AuthError> {
    let token = crate::secrets::refresh_token();
    tx.execute_cached(
        "INSERT INTO refresh_tokens (token_hash, session_id) VALUES ($1, $2)",
        &[&crate::secrets::hash(&token), &session],
    )
    .await?;
    Ok(token)
}

/// Revokes sessions of `user` (all, or all but `keep`); returns their ids.
pub async fn revoke_user_sessions<C: Prepared>(
    tx: &C,
    user: Uuid,
    keep: Option<Uuid>,
    reason: &str,
) -> Result<Vec<Uuid>, AuthError> {
    let rows = tx
        .query_cached(
            "UPDATE sessions SET revoked_at = now(), revoke_reason = $3 \
             WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR id <> $2) RETURNING id",
            &[&user, &keep, &reason],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub async fn revoke_session<C: Prepared>(tx: &C, session: Uuid, reason: &str) -> Result<bool, AuthError> {
    let n = tx
        .execute_cached(
            "UPDATE sessions SET revoked_at = now(), revoke_reason = $2 WHERE id = $1 AND revoked_at IS NULL",
            &[&session, &reason],
        )
        .await?;
    Ok(n == 1)
}

/// Whether a session may still be used (the cached answer behind every
/// access-token check).
pub async fn session_active<C: Prepared>(db: &C, session: Uuid) -> Result<bool, AuthError> {
    let row =
        db.query_opt_cached("SELECT revoked_at IS NULL FROM sessions WHERE id = $1", &[&session]).await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Whether a session's last authentication showed a second factor.
pub async fn session_showed_mfa<C: Prepared>(db: &C, session: Uuid) -> Result<bool, AuthError> {
    let row = db.query_opt_cached("SELECT mfa FROM sessions WHERE id = $1", &[&session]).await?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Purposes of one-time codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodePurpose {
    VerifyEmail,
    ResetPassword,
}

impl CodePurpose {
    fn as_str(self) -> &'static str {
        match self {
            Self::VerifyEmail => "verify_email",
            Self::ResetPassword => "reset_password",
        }
    }
}

/// Replaces any unused code of this purpose with a new one; returns it.
/// Whether the user was sent a code of this purpose within `cooldown`.
/// Locks the user's row first, so concurrent requests see each other's
/// codes: one email per cooldown, however many ask at once.
pub async fn code_sent_within<C: Prepared>(
    tx: &C,
    user: Uuid,
    purpose: CodePurpose,
    cooldown: Duration,
) -> Result<bool, AuthError> {
    tx.execute_cached("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user]).await?;
    Ok(tx
        .query_opt_cached(
            "SELECT 1 FROM one_time_codes WHERE user_id = $1 AND purpose = $2 \
             AND created_at > now() - make_interval(secs => $3) LIMIT 1",
            &[&user, &purpose.as_str(), &cooldown.as_secs_f64()],
        )
        .await?
        .is_some())
}

pub async fn new_code<C: Prepared>(
    tx: &C,
    user: Uuid,
    purpose: CodePurpose,
    ttl: Duration,
) -> Result<String, AuthError> {
    tx.execute_cached(
        "UPDATE one_time_codes SET used_at = now() WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        &[&user, &purpose.as_str()],
    )
    .await?;
    let code = crate::secrets::code();
    tx.execute_cached(
        "INSERT INTO one_time_codes (id, user_id, purpose, code_hash, expires_at) \
         VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        &[&Uuid::now_v7(), &user, &purpose.as_str(), &crate::secrets::hash(&code), &ttl.as_secs_f64()],
    )
    .await?;
    Ok(code)
}

/// Spends `code` if it is the user's live code of this purpose. A wrong
/// guess counts against the code, which is burnt after `max_attempts`.
/// Either way the caller must commit (the attempt count must stick).
pub async fn spend_code<C: Prepared>(
    tx: &C,
    user: Uuid,
    purpose: CodePurpose,
    code: &str,
    max_attempts: i32,
) -> Result<bool, AuthError> {
    let row = tx
        .query_opt_cached(
            "SELECT id, code_hash FROM one_time_codes \
             WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > now() \
             ORDER BY created_at DESC LIMIT 1 FOR UPDATE",
            &[&user, &purpose.as_str()],
        )
        .await?;
    let Some(row) = row else { return Ok(false) };
    let id: Uuid = row.get(0);
    let stored: Vec<u8> = row.get(1);
    if stored == crate::secrets::hash(&crate::secrets::normalize_code(code)) {
        tx.execute_cached("UPDATE one_time_codes SET used_at = now() WHERE id = $1", &[&id]).await?;
        return Ok(true);
    }
    tx.execute_cached(
        "UPDATE one_time_codes SET attempts = attempts + 1, \
         used_at = CASE WHEN attempts + 1 >= $2 THEN now() END WHERE id = $1",
        &[&id, &max_attempts],
    )
    .await?;
    Ok(false)
}

/// What `AuthenticateApiKey` answers, cached by key hash.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ApiKeyAuth {
    pub key_id: Uuid,
    pub user_id: Uuid,
    pub scopes: Vec<String>,
    pub expires_at_ms: Option<i64>,
    /// An organization's key: the organization and its creator's role
    /// there (answers cached before organizations had none).
    #[serde(default)]
    pub org: Option<(Uuid, String)>,
}

/// A live key by the hash of its secret. An organization's key whose
/// creator is no longer a member is none (its revocation, made when they
/// left, may not have been seen yet).
pub async fn api_key_by_hash<C: Prepared>(db: &C, hash: &[u8]) -> Result<Option<ApiKeyAuth>, AuthError> {
    let row = db
        .query_opt_cached(
            "SELECT k.id, k.user_id, k.scopes, k.expires_at, k.org_id, m.role FROM api_keys k \
             LEFT JOIN org_members m ON m.org_id = k.org_id AND m.user_id = k.user_id \
             WHERE k.secret_hash = $1 AND k.revoked_at IS NULL",
            &[&hash],
        )
        .await?;
    let Some(r) = row else { return Ok(None) };
    let org = match (r.get::<_, Option<Uuid>>(4), r.get::<_, Option<String>>(5)) {
        (None, _) => None,
        (Some(org), Some(role)) => Some((org, role)),
        (Some(_), None) => return Ok(None),
    };
    Ok(Some(ApiKeyAuth {
        key_id: r.get(0),
        user_id: r.get(1),
        scopes: r.get(2),
        expires_at_ms: r.get::<_, Option<SystemTime>>(3).map(millis),
        org,
    }))
}

/// The columns [`api_key_proto`] reads.
pub const API_KEY_COLUMNS: &str =
    "id, name, prefix, scopes, created_at, expires_at, last_used_at, org_id, user_id";

pub fn api_key_proto(row: &Row) -> pb::ApiKey {
    pb::ApiKey {
        id: row.get::<_, Uuid>("id").to_string(),
        name: row.get("name"),
        prefix: row.get("prefix"),
        scopes: row.get("scopes"),
        created_at: Some(timestamp(row.get("created_at"))),
        expires_at: row.get::<_, Option<SystemTime>>("expires_at").map(timestamp),
        last_used_at: row.get::<_, Option<SystemTime>>("last_used_at").map(timestamp),
        organization_id: row.get::<_, Option<Uuid>>("org_id").map(|o| o.to_string()).unwrap_or_default(),
        user_id: row.get::<_, Uuid>("user_id").to_string(),
    }
}
