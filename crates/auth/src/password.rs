//! Password hashing: argon2id PHC strings, computed off the async runtime
//! with a bounded number at once (each takes `memory_kib` of RAM and tens
//! of milliseconds of CPU, so unbounded concurrency is a memory bomb).

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::error::AuthError;
use crate::settings::PasswordSettings;

/// Longest password accepted, in bytes: hashing cost must not be
/// attacker-controlled.
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The outcome of checking a password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    pub ok: bool,
    /// The stored hash used older parameters: store a new one.
    pub needs_rehash: bool,
}

#[derive(Clone)]
pub struct Passwords {
    params: Params,
    min_length: usize,
    permits: Arc<Semaphore>,
    /// Verified against when the account does not exist, so that a login
    /// for an unknown email takes as long as one for a known email.
    dummy_hash: Arc<str>,
}

impl std::fmt::Debug for Passwords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passwords").field("min_length", &self.min_length).finish_non_exhaustive()
    }
}

impl Passwords {
    pub fn new(settings: &PasswordSettings) -> Result<Self, AuthError> {
        let params = Params::new(settings.memory_kib, settings.iterations, settings.parallelism, None)
            .map_err(|e| AuthError::Internal(format!("argon2 parameters: {e}")))?;
        let dummy_hash = hash_blocking(&params, "tenx-dummy-password-for-timing")?;
        Ok(Self {
            params,
            min_length: settings.min_length,
            permits: Arc::new(Semaphore::new(settings.max_concurrent_hashes)),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// Rejects a new password that is too short or too long.
    pub fn check_new(&self, field: &'static str, password: &str) -> Result<(), AuthError> {
        if password.chars().count() < self.min_length {
            return Err(AuthError::invalid(
                field,
                format!("must be at least {} characters", self.min_length),
            ));
        }
        if password.len() > MAX_PASSWORD_BYTES {
            return Err(AuthError::invalid(field, format!("must be at most {MAX_PASSWORD_BYTES} bytes")));
        }
        Ok(())
    }

    pub async fn hash(&self, password: &str) -> Result<String, AuthError> {
        let _permit = self.permits.acquire().await.map_err(|e| AuthError::Internal(e.to_string()))?;
        let (params, password) = (self.params.clone(), password.to_owned());
        tokio::task::spawn_blocking(move || hash_blocking(&params, &password))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))?
    }

    /// Checks `password` against `stored`, or against a dummy hash when
    /// there is no account (then `ok` is always false).
    pub async fn verify(&self, password: &str, stored: Option<&str>) -> Result<Verified, AuthError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(Verified { ok: false, needs_rehash: false });
        }
        let exists = stored.is_some();
        let hash = stored.map_or_else(|| self.dummy_hash.to_string(), str::to_owned);
        let (params, password) = (self.params.clone(), password.to_owned());
        let _permit = self.permits.acquire().await.map_err(|e| AuthError::Internal(e.to_string()))?;
        let verified = tokio::task::spawn_blocking(move || {
            let Ok(parsed) = PasswordHash::new(&hash) else {
                return Verified { ok: false, needs_rehash: false };
            };
            let ok = Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok();
            let current = Params::try_from(&parsed).ok();
            let needs_rehash = parsed.algorithm.as_str() != "argon2id"
                || current.is_none_or(|p| {
                    p.m_cost() != params.m_cost()
                        || p.t_cost() != params.t_cost()
                        || p.p_cost() != params.p_cost()
                });
            Verified { ok, needs_rehash }
        })
        .await
        .map_err(|e| AuthError::Internal(e.to_string()))?;
        Ok(Verified { ok: verified.ok && exists, needs_rehash: verified.needs_rehash && exists })
    }
}

fn hash_blocking(params: &Params, password: &str) -> Result<String, AuthError> {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AuthError::Internal(format!("hashing failed: {e}")))
}
