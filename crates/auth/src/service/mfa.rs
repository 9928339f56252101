//! Second factors: TOTP enrollment, recovery codes, the second step of a
//! login, and reauthentication (step-up).
//!
//! A TOTP code counts once: accepting it moves the secret's `last_step`
//! to the code's step, in the statement that checks the step is newer, so
//! a replayed code (or the same code raced twice) is refused. A recovery
//! code is spent by the statement that finds it unspent. Either way the
//! code is spent in the transaction that creates or refreshes the
//! session, so a failure half-way spends nothing.

use std::time::{Duration, SystemTime};

use tenx_common::authn::AuthnError;
use tenx_common::db::{Prepared, WalPosition};
use tenx_common::outbox::{self, NewEvent};
use tenx_proto::auth::v1 as pb;
use uuid::Uuid;

use super::{Caller, Claim, Core};
use crate::error::AuthError;
use crate::{secrets, store, totp};

/// Recovery codes handed out at a time.
const RECOVERY_CODES: usize = 10;
/// The prefix of a login's challenge.
const CHALLENGE_PREFIX: &str = "mfa_";

/// What a caller typed as their second factor.
enum Code {
    /// Six digits from the authenticator app.
    Totp(String),
    /// A recovery code, normalised (no dash, upper case).
    Recovery(String),
}

impl Code {
    fn parse(raw: &str) -> Self {
        let trimmed = raw.trim();
        if trimmed.len() == totp::DIGITS && trimmed.bytes().all(|b| b.is_ascii_digit()) {
            Code::Totp(trimmed.to_owned())
        } else {
            Code::Recovery(secrets::normalize_code(trimmed))
        }
    }
}

/// How a second factor was proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spent {
    Totp,
    /// A recovery code; this many are left.
    Recovery {
        remaining: u32,
    },
}

/// The TOTP secret of a user, sealed at rest under the key-encryption
/// key and bound to the user's id.
fn seal_context(user: Uuid) -> Vec<u8> {
    format!("totp:{user}").into_bytes()
}

/// A recovery code's stored form: SHA-256 of the owner and the code, so
/// one table of guesses does not fit every user at once.
fn recovery_hash(user: Uuid, normalized: &str) -> Vec<u8> {
    secrets::hash(&format!("{user}:{normalized}"))
}

fn already_on() -> AuthError {
    AuthError::Refused { reason: "MFA_ALREADY_ENABLED", message: "TOTP is already on" }
}

/// The step-up age of `method` (`AuthService/DisableTotp`), from its
/// access rule.
fn step_up_seconds(method: &str) -> u32 {
    tenx_proto::access::rule(&format!("/tenx.auth.v1.{method}")).map_or(0, |rule| rule.max_auth_age_seconds)
}

impl Core {
    /// Whether `user` has TOTP on, read from the primary.
    async fn totp_on(&self, conn: &impl Prepared, user: Uuid) -> Result<bool, AuthError> {
        Ok(conn
            .query_opt_cached(
                "SELECT 1 FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL",
                &[&user],
            )
            .await?
            .is_some())
    }

    /// Step-up with the second factor: on an account with TOTP on, a
    /// session whose last authentication had no code (it began before
    /// TOTP was turned on) must reauthenticate first.
    pub(super) async fn require_second_factor(&self, caller: Caller, method: &str) -> Result<(), AuthError> {
        let proved: bool = self
            .db
            .write()
            .await?
            .query_one_cached(
                "SELECT coalesce((SELECT mfa FROM sessions WHERE id = $2), false) OR NOT EXISTS \
                   (SELECT 1 FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
                &[&caller.user, &caller.session],
            )
            .await?
            .get(0);
        if proved {
            return Ok(());
        }
        Err(AuthnError::Reauthenticate { max_age_seconds: step_up_seconds(method) }.into())
    }

    /// [`Core::require_second_factor`] for an admin's session calling an
    /// operator RPC (an operator service client has no second factor).
    pub(super) async fn operator_second_factor(
        &self,
        extensions: &tonic::Extensions,
        method: &str,
    ) -> Result<(), AuthError> {
        match tenx_common::authn::principal(extensions) {
            Some(tenx_common::authn::Principal::User { user_id, session_id, .. }) => {
                self.require_second_factor(Caller { user: *user_id, session: *session_id }, method).await
            }
            _ => Ok(()),
        }
    }

    /// A login waiting for its second factor, written in `tx`.
    pub(super) async fn challenge(
        &self,
        tx: &impl Prepared,
        user: Uuid,
        device: &str,
    ) -> Result<pb::MfaChallenge, AuthError> {
        let token = format!("{CHALLENGE_PREFIX}{}", &secrets::refresh_token()[3..]);
        let ttl = Duration::from_secs(self.settings.mfa.challenge_ttl_seconds);
        let expires_at = SystemTime::now() + ttl;
        tx.execute_cached(
            "INSERT INTO mfa_challenges (token_hash, user_id, device_name, expires_at) VALUES ($1, $2, $3, $4)",
            &[&secrets::hash(&token), &user, &device, &expires_at],
        )
        .await?;
        Ok(pb::MfaChallenge { challenge: token, expires_at: Some(store::timestamp(expires_at)) })
    }

    /// Spends `code` of `user` in `tx`, or says it proves nothing
    /// (wrong, used, replayed, or TOTP is off).
    async fn spend(&self, tx: &impl Prepared, user: Uuid, code: &str) -> Result<Option<Spent>, AuthError> {
        match Code::parse(code) {
            Code::Totp(digits) => {
                let Some(row) = tx
                    .query_opt_cached(
                        "SELECT secret_enc, failed_codes FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL",
                        &[&user],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                if row.get::<_, i32>(1) >= self.settings.mfa.max_failed_codes {
                    return Err(AuthError::Refused {
                        reason: "TOTP_LOCKED",
                        message: "too many wrong codes on this account: use a recovery code, or reset the password",
                    });
                }
                let secret = self.keys.kek().open(row.get(0), &seal_context(user))?;
                let now = totp::step_at(SystemTime::now());
                let Some(step) =
                    totp::matching_step(&secret, &digits, now, self.settings.mfa.totp_skew_steps)
                else {
                    return Ok(None);
                };
                let step = i64::try_from(step).map_err(|e| AuthError::Internal(e.to_string()))?;
                let fresh = tx
                    .execute_cached(
                        "UPDATE mfa_totp SET last_step = $2, failed_codes = 0 \
                         WHERE user_id = $1 AND last_step < $2 AND confirmed_at IS NOT NULL",
                        &[&user, &step],
                    )
                    .await?;
                Ok((fresh == 1).then_some(Spent::Totp))
            }
            Code::Recovery(normalized) => {
                let row = tx
                    .query_opt_cached(
                        "WITH spent AS (UPDATE mfa_recovery_codes SET used_at = now() \
                           WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL RETURNING code_hash) \
                         SELECT count(*) FILTER (WHERE c.used_at IS NULL AND c.code_hash NOT IN (SELECT code_hash FROM spent)) \
                         FROM mfa_recovery_codes c WHERE c.user_id = $1 HAVING EXISTS (SELECT 1 FROM spent)",
                        &[&user, &recovery_hash(user, &normalized)],
                    )
                    .await?;
                Ok(row.map(|r| Spent::Recovery { remaining: u32::try_from(r.get::<_, i64>(0)).unwrap_or(0) }))
            }
        }
    }

    /// Counts a wrong code against the account, whatever the client; the
    /// one that reaches `mfa.max_failed_codes` tells the owner.
    async fn code_failed(&self, user: Uuid, email: &str) -> Result<(), AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let failed: Option<i32> = tx
            .query_opt_cached(
                "UPDATE mfa_totp SET failed_codes = failed_codes + 1 WHERE user_id = $1 RETURNING failed_codes",
                &[&user],
            )
            .await?
            .map(|r| r.get(0));
        if failed == Some(self.settings.mfa.max_failed_codes) {
            let event = pb::MfaCodesLocked { user_id: user.to_string(), email: email.to_owned() };
            outbox::enqueue(&tx, &NewEvent::of(&user.to_string(), &event)).await?;
            tracing::warn!(user_id = %user, "TOTP codes locked after too many wrong ones");
        }
        tx.commit().await?;
        Ok(())
    }

    /// Tells the owner a recovery code was used (a security email).
    async fn recovery_used(
        &self,
        tx: &impl Prepared,
        user: Uuid,
        email: &str,
        remaining: u32,
    ) -> Result<(), AuthError> {
        let event = pb::MfaRecoveryCodeUsed {
            user_id: user.to_string(),
            email: email.to_owned(),
            recovery_codes_remaining: remaining,
        };
        outbox::enqueue(tx, &NewEvent::of(&user.to_string(), &event)).await?;
        Ok(())
    }

    /// Ten new recovery codes for `user` in `tx`, replacing any others.
    async fn new_recovery_codes(&self, tx: &impl Prepared, user: Uuid) -> Result<Vec<String>, AuthError> {
        tx.execute_cached("DELETE FROM mfa_recovery_codes WHERE user_id = $1", &[&user]).await?;
        let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| secrets::recovery_code()).collect();
        let hashes: Vec<Vec<u8>> =
            codes.iter().map(|c| recovery_hash(user, &secrets::normalize_code(c))).collect();
        tx.execute_cached(
            "INSERT INTO mfa_recovery_codes (user_id, code_hash) SELECT $1, h FROM unnest($2::bytea[]) AS h",
            &[&user, &hashes],
        )
        .await?;
        Ok(codes)
    }

    pub(super) async fn complete_mfa_login(
        &self,
        request: pb::CompleteMfaLoginRequest,
        client: &str,
    ) -> Result<(pb::CompleteMfaLoginResponse, WalPosition), AuthError> {
        let expired = AuthError::Unauthenticated("invalid or expired challenge");
        let hash = secrets::hash(&request.challenge);
        // Each guess first takes a number on its challenge, in one
        // statement: however many arrive at once, a challenge takes at
        // most `challenge_max_attempts`.
        let row = self
            .db
            .write()
            .await?
            .query_opt_cached(
                "UPDATE mfa_challenges c SET attempts = c.attempts + 1 FROM users u \
                 WHERE c.token_hash = $1 AND u.id = c.user_id AND c.used_at IS NULL \
                   AND c.expires_at > now() AND c.attempts < $2 \
                 RETURNING u.id, u.email, c.attempts",
                &[&hash, &self.settings.mfa.challenge_max_attempts],
            )
            .await?;
        let Some(row) = row else { return Err(expired) };
        let (user, email, guess): (Uuid, String, i32) = (row.get(0), row.get(1), row.get(2));
        // The first code is checked on the attempt its login counted (so
        // the one guess allowed after a lock expires covers both steps);
        // every later code counts like a password guess.
        let counted = if guess == 1 { self.counted_attempt(&email, client).await? } else { None };
        let (attempt, mut claim) = match counted {
            Some(attempt) => (attempt, None),
            None => {
                let attempt = self.claim_attempt(&*self.db.write().await?, &email, client).await?;
                (attempt, Some(Claim::new(self.db.clone(), &email, client)))
            }
        };
        let settle = |claim: &mut Option<Claim>| {
            if let Some(claim) = claim {
                claim.settle();
            }
        };

        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let device: Option<String> = tx
            .query_opt_cached(
                "UPDATE mfa_challenges SET used_at = now() \
                 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING device_name",
                &[&hash],
            )
            .await?
            .map(|r| r.get(0));
        let Some(device) = device else {
            // Completed, or expired, meanwhile: this guess proved nothing.
            return Err(expired);
        };
        let Some(spent) = self.spend(&tx, user, &request.code).await? else {
            drop(tx);
            drop(conn);
            self.code_failed(user, &email).await?;
            self.fail_attempt(&email, client, attempt).await?;
            settle(&mut claim);
            return Err(AuthError::Wrong("code: wrong or already used"));
        };
        store::forget_attempts(&tx, &email, client).await?;
        let (session, refresh) = store::create_session(&tx, user, &device, true).await?;
        let remaining = match spent {
            Spent::Recovery { remaining } => {
                self.recovery_used(&tx, user, &email, remaining).await?;
                remaining
            }
            Spent::Totp => self.recovery_codes_left(&tx, user).await?,
        };
        tx.commit().await?;
        settle(&mut claim);
        let written = conn.commit_position().await?;
        drop(conn);
        let tokens = self.tokens(user, session, refresh).await?;
        let profile = self.user(user, Some(written)).await?;
        let response = pb::CompleteMfaLoginResponse {
            user: Some(profile.to_proto()),
            tokens: Some(tokens),
            recovery_codes_remaining: remaining,
        };
        Ok((response, written))
    }

    /// The number the login's password attempt took for (`email`,
    /// `client`), still counted; `None` when nothing is counted any more
    /// (the code must take a number of its own). LOCKED_OUT while a lock
    /// holds.
    async fn counted_attempt(&self, email: &str, client: &str) -> Result<Option<i32>, AuthError> {
        let row = self
            .db
            .write()
            .await?
            .query_opt_cached(
                "SELECT failures, locked_until > now(), locked_until FROM login_attempts \
                 WHERE email = $1 AND client = $2",
                &[&email, &client],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        if row.get::<_, Option<bool>>(1) == Some(true) {
            return Err(AuthError::LockedOut { retry_after: super::until_unlocked(row.get(2)) });
        }
        let failures: i32 = row.get(0);
        Ok((failures > 0).then_some(failures))
    }

    async fn recovery_codes_left(&self, conn: &impl Prepared, user: Uuid) -> Result<u32, AuthError> {
        let left: i64 = conn
            .query_one_cached(
                "SELECT count(*) FROM mfa_recovery_codes WHERE user_id = $1 AND used_at IS NULL",
                &[&user],
            )
            .await?
            .get(0);
        Ok(u32::try_from(left).unwrap_or(0))
    }

    pub(super) async fn reauthenticate(
        &self,
        caller: Caller,
        request: pb::ReauthenticateRequest,
        client: &str,
    ) -> Result<(pb::ReauthenticateResponse, WalPosition), AuthError> {
        let mfa = self.totp_on(&*self.db.write().await?, caller.user).await?;
        if mfa && request.code.trim().is_empty() {
            return Err(AuthError::invalid("code", "required: this account has a second factor"));
        }
        // Left counted until the second factor (if any) is proved too.
        let (user, attempt) =
            self.prove_password(caller, &request.password, client, "password: wrong").await?;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        if mfa {
            match self.spend(&tx, caller.user, &request.code).await? {
                None => {
                    drop(tx);
                    drop(conn);
                    self.code_failed(caller.user, &user.email).await?;
                    self.fail_attempt(&user.email, client, attempt).await?;
                    return Err(AuthError::Wrong("code: wrong or already used"));
                }
                Some(Spent::Recovery { remaining }) => {
                    self.recovery_used(&tx, caller.user, &user.email, remaining).await?;
                }
                Some(Spent::Totp) => {}
            }
        }
        let live = tx
            .execute_cached(
                "UPDATE sessions SET authenticated_at = now(), mfa = $2 WHERE id = $1 AND revoked_at IS NULL",
                &[&caller.session, &mfa],
            )
            .await?;
        if live == 0 {
            return Err(AuthError::Unauthenticated("session revoked"));
        }
        store::forget_attempts(&tx, &user.email, client).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        drop(conn);
        let tokens = self.tokens(caller.user, caller.session, String::new()).await?;
        let response = pb::ReauthenticateResponse {
            access_token: tokens.access_token,
            access_token_expires_at: tokens.access_token_expires_at,
        };
        Ok((response, written))
    }

    pub(super) async fn get_mfa_status(&self, caller: Caller) -> Result<pb::GetMfaStatusResponse, AuthError> {
        let conn = self.db.write().await?;
        let enabled_at: Option<SystemTime> = conn
            .query_opt_cached(
                "SELECT confirmed_at FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL",
                &[&caller.user],
            )
            .await?
            .map(|r| r.get(0));
        let remaining =
            if enabled_at.is_some() { self.recovery_codes_left(&*conn, caller.user).await? } else { 0 };
        Ok(pb::GetMfaStatusResponse {
            totp_enabled: enabled_at.is_some(),
            totp_enabled_at: enabled_at.map(store::timestamp),
            recovery_codes_remaining: remaining,
        })
    }

    pub(super) async fn enroll_totp(
        &self,
        caller: Caller,
    ) -> Result<(pb::EnrollTotpResponse, WalPosition), AuthError> {
        let email = self.user(caller.user, None).await?.email;
        let secret = totp::new_secret();
        let sealed = self.keys.kek().seal(&secret, &seal_context(caller.user));
        let conn = self.db.write().await?;
        let replaced = conn
            .execute_cached(
                "INSERT INTO mfa_totp AS t (user_id, secret_enc) VALUES ($1, $2) \
                 ON CONFLICT (user_id) DO UPDATE SET secret_enc = EXCLUDED.secret_enc, created_at = now(), last_step = 0 \
                 WHERE t.confirmed_at IS NULL",
                &[&caller.user, &sealed],
            )
            .await?;
        if replaced == 0 {
            return Err(already_on());
        }
        let written = conn.commit_position().await?;
        let uri = totp::otpauth_uri(&self.settings.mfa.issuer, &email, &secret);
        let qr_png = totp::qr_png(&uri).map_err(AuthError::Internal)?;
        Ok((pb::EnrollTotpResponse { secret: totp::base32(&secret), otpauth_uri: uri, qr_png }, written))
    }

    pub(super) async fn confirm_totp(
        &self,
        caller: Caller,
        request: pb::ConfirmTotpRequest,
        client: &str,
    ) -> Result<(pb::ConfirmTotpResponse, WalPosition), AuthError> {
        // A stolen session alone must not put its thief's phone between
        // the owner and their account.
        let email = self.check_current_password(caller, &request.current_password, client).await?.email;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let row = tx
            .query_opt_cached(
                "SELECT secret_enc, confirmed_at IS NOT NULL FROM mfa_totp WHERE user_id = $1 FOR UPDATE",
                &[&caller.user],
            )
            .await?;
        let Some(row) = row else {
            return Err(AuthError::Refused {
                reason: "NO_TOTP_ENROLLMENT",
                message: "call EnrollTotp first",
            });
        };
        if row.get::<_, bool>(1) {
            return Err(already_on());
        }
        let secret = self.keys.kek().open(row.get(0), &seal_context(caller.user))?;
        let now = totp::step_at(SystemTime::now());
        let step = totp::matching_step(&secret, &request.code, now, self.settings.mfa.totp_skew_steps)
            .ok_or(AuthError::Wrong("code: wrong; check the phone's clock"))?;
        let step = i64::try_from(step).map_err(|e| AuthError::Internal(e.to_string()))?;
        tx.execute_cached(
            "UPDATE mfa_totp SET confirmed_at = now(), last_step = $2 WHERE user_id = $1",
            &[&caller.user, &step],
        )
        .await?;
        let recovery_codes = self.new_recovery_codes(&tx, caller.user).await?;
        // This session just showed the second factor.
        tx.execute_cached("UPDATE sessions SET mfa = true WHERE id = $1", &[&caller.session]).await?;
        let event = pb::MfaEnabled { user_id: caller.user.to_string(), email };
        outbox::enqueue(&tx, &NewEvent::of(&caller.user.to_string(), &event)).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::ConfirmTotpResponse { recovery_codes }, written))
    }

    pub(super) async fn disable_totp(&self, caller: Caller) -> Result<WalPosition, AuthError> {
        let email = self.user(caller.user, None).await?.email;
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        // Waiting logins cannot complete without it. Locked in the order
        // a login completing locks them (challenge, secret, codes).
        tx.execute_cached("DELETE FROM mfa_challenges WHERE user_id = $1", &[&caller.user]).await?;
        let was_on: Option<bool> = tx
            .query_opt_cached(
                "DELETE FROM mfa_totp WHERE user_id = $1 RETURNING confirmed_at IS NOT NULL",
                &[&caller.user],
            )
            .await?
            .map(|r| r.get(0));
        tx.execute_cached("DELETE FROM mfa_recovery_codes WHERE user_id = $1", &[&caller.user]).await?;
        // No session has a second factor any more; those acting in an
        // organization that requires one lose it (their tokens' grant).
        let grants: Vec<Uuid> = tx
            .query_cached(
                "WITH old AS (SELECT s.id, s.grant_id, coalesce(o.require_mfa, false) AS regrant FROM sessions s \
                   LEFT JOIN organizations o ON o.id = s.active_org_id \
                   WHERE s.user_id = $1 AND s.revoked_at IS NULL FOR UPDATE OF s) \
                 UPDATE sessions s SET mfa = false, \
                   grant_id = CASE WHEN old.regrant THEN gen_random_uuid() ELSE s.grant_id END \
                 FROM old WHERE s.id = old.id AND (s.mfa OR old.regrant) RETURNING old.grant_id, old.regrant",
                &[&caller.user],
            )
            .await?
            .iter()
            .filter(|r| r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        if was_on == Some(true) {
            let event = pb::MfaDisabled { user_id: caller.user.to_string(), email };
            outbox::enqueue(&tx, &NewEvent::of(&caller.user.to_string(), &event)).await?;
        }
        tx.commit().await?;
        let written = conn.commit_position().await?;
        self.revoke_grants(&grants).await;
        Ok(written)
    }

    pub(super) async fn regenerate_recovery_codes(
        &self,
        caller: Caller,
    ) -> Result<(pb::RegenerateRecoveryCodesResponse, WalPosition), AuthError> {
        let mut conn = self.db.write().await?;
        let tx = conn.transaction().await?;
        let on = tx
            .query_opt_cached(
                "SELECT 1 FROM mfa_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL FOR UPDATE",
                &[&caller.user],
            )
            .await?
            .is_some();
        if !on {
            return Err(AuthError::Refused {
                reason: "MFA_NOT_ENABLED",
                message: "TOTP is off: no recovery codes",
            });
        }
        let recovery_codes = self.new_recovery_codes(&tx, caller.user).await?;
        tx.commit().await?;
        let written = conn.commit_position().await?;
        Ok((pb::RegenerateRecoveryCodesResponse { recovery_codes }, written))
    }
}
