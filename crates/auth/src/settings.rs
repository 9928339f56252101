//! `tenx-auth` settings: the shared sections plus auth's own.

use std::path::Path;

use serde::Deserialize;
use tenx_common::cache::RedisSettings;
use tenx_common::config::{ConfigError, Invalid, Loader, Secret, Validate};
use tenx_common::db::DbSettings;
use tenx_common::grpc::ServerSettings;
use tenx_common::outbox::RelaySettings;
use tenx_common::queue::AmqpSettings;
use tenx_common::retention::RetentionSettings;
use tenx_common::telemetry::TelemetrySettings;

/// Embedded, commented defaults (`src/defaults.toml`).
pub const DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub server: ServerSettings,
    pub database: DbSettings,
    pub redis: RedisSettings,
    pub amqp: AmqpSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub outbox: RelaySettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    pub password: PasswordSettings,
    pub tokens: TokenSettings,
    pub login: LoginSettings,
    pub codes: CodeSettings,
    pub avatars: AvatarSettings,
    pub api_keys: ApiKeySettings,
    pub mfa: MfaSettings,
    pub orgs: OrgSettings,
    /// Service name → the client secret it presents to IssueServiceToken.
    #[serde(default)]
    pub service_clients: std::collections::BTreeMap<String, Secret<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PasswordSettings {
    pub min_length: usize,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub max_concurrent_hashes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub access_ttl_seconds: u64,
    pub refresh_ttl_days: u32,
    pub refresh_reuse_grace_seconds: u64,
    /// 32 bytes, base64; encrypts signing keys at rest.
    pub key_encryption_key: Secret<String>,
    /// Lifetime of a service token (IssueServiceToken).
    pub service_ttl_seconds: u64,
    /// How often the signing key is replaced on schedule (0: only by
    /// `tenx-auth rotate-keys`).
    pub rotation_period_seconds: u64,
    /// How long the next key is published in the JWKS before it signs:
    /// longer than any verifier's `authn.refresh_seconds`, so none meets
    /// a token whose key it has not fetched yet.
    pub rotation_lead_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoginSettings {
    pub max_failures: i32,
    pub base_lock_seconds: u64,
    pub max_lock_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CodeSettings {
    pub verify_ttl_minutes: u32,
    pub reset_ttl_minutes: u32,
    pub max_attempts: i32,
    /// At most one reset or verification email per address this often.
    pub resend_cooldown_seconds: u64,
    /// 32 bytes, base64, shared with notification only: seals the codes
    /// in the events that carry them (`tenx_common::sealed`).
    pub seal_key: Secret<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApiKeySettings {
    pub max_per_user: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MfaSettings {
    /// The account's label in authenticator apps (`otpauth://` issuer).
    pub issuer: String,
    /// How long a login may wait for its second factor.
    pub challenge_ttl_seconds: u64,
    /// Wrong codes before a login's challenge is burnt.
    pub challenge_max_attempts: i32,
    /// Codes of this many 30-second steps before and after now are
    /// accepted too (clock drift between the phone and the server).
    pub totp_skew_steps: u64,
    /// Wrong codes, from any client, after which TOTP codes are refused
    /// until a password reset (recovery codes still work).
    pub max_failed_codes: i32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct OrgSettings {
    /// How long an invitation's link works.
    pub invitation_ttl_hours: u32,
    /// The page the invitation email links to; the token goes in its
    /// `token` query parameter.
    pub invitation_url: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AvatarSettings {
    pub max_bytes: usize,
}

impl AuthSettings {
    /// Defaults → optional file → `TENX_AUTH__…` environment, validated.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Loader::new("auth", DEFAULTS).file_if(file).load()
    }
}

impl AuthSettings {
    /// Defaults with `TENX_AUTH__…` variables taken from `vars` instead of
    /// the process environment.
    pub fn load_from(vars: std::collections::HashMap<String, String>) -> Result<Self, ConfigError> {
        Loader::new("auth", DEFAULTS).env_from(vars).load()
    }

    /// Settings for an isolated instance on loopback, as tests and
    /// benchmarks run it: the given databases, a Redis key prefix and AMQP
    /// name prefix of its own, free ports, short retry delays.
    pub fn isolated(
        primary: &str,
        replica: &str,
        redis_prefix: &str,
        amqp_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let mut settings: Self = Loader::new("auth", DEFAULTS)
            .isolated_backend([primary, replica, redis_prefix, amqp_prefix], &[("amqp.max_attempts", "2")])
            .load()?;
        settings.amqp.retry_delays_ms = vec![100, 200];
        Ok(settings)
    }
}

impl Validate for AuthSettings {
    fn validate(&self) -> Result<(), Invalid> {
        self.database.validate()?;
        self.redis.validate()?;
        self.amqp.validate()?;
        self.telemetry.validate()?;
        self.retention.validate()?;
        // The contract's floor (`string.min_len` of every new password in
        // auth.proto): configuration may raise it, never lower it.
        if self.password.min_length < 10 {
            return Err(Invalid::new("password.min_length", "must be at least 10 (the contract's minimum)"));
        }
        if self.password.max_concurrent_hashes == 0 {
            return Err(Invalid::new("password.max_concurrent_hashes", "must be at least 1"));
        }
        argon2::Params::new(
            self.password.memory_kib,
            self.password.iterations,
            self.password.parallelism,
            None,
        )
        .map_err(|e| Invalid::new("password.memory_kib", format!("invalid argon2 parameters: {e}")))?;
        // The form `keys::Kek` reads (settings are below keys: no import back).
        tenx_common::sealed::SealKey::parse(self.tokens.key_encryption_key.expose())
            .map_err(|reason| Invalid::new("tokens.key_encryption_key", reason))?;
        if self.tokens.access_ttl_seconds == 0 || self.tokens.access_ttl_seconds > 86_400 {
            return Err(Invalid::new("tokens.access_ttl_seconds", "must be between 1 and 86400"));
        }
        if self.login.max_failures < 1 {
            return Err(Invalid::new("login.max_failures", "must be at least 1"));
        }
        if self.tokens.service_ttl_seconds < 60 || self.tokens.service_ttl_seconds > 3600 {
            return Err(Invalid::new("tokens.service_ttl_seconds", "must be between 60 and 3600"));
        }
        let (period, lead) = (self.tokens.rotation_period_seconds, self.tokens.rotation_lead_seconds);
        if period > 0 && (lead == 0 || lead >= period) {
            return Err(Invalid::new(
                "tokens.rotation_lead_seconds",
                "must be at least 1 and less than tokens.rotation_period_seconds",
            ));
        }
        for (name, secret) in &self.service_clients {
            if !crate::validate::is_service_name(name) {
                return Err(Invalid::new(
                    format!("service_clients.{name}"),
                    "a service name is [a-z][a-z0-9-]*, at most 64 characters",
                ));
            }
            if !secret.expose().is_empty() && secret.expose().len() < 32 {
                return Err(Invalid::new(
                    format!("service_clients.{name}"),
                    "a client secret must be at least 32 characters (or empty: none)",
                ));
            }
        }
        if self.api_keys.max_per_user == 0 || self.api_keys.max_per_user > 10_000 {
            return Err(Invalid::new("api_keys.max_per_user", "must be between 1 and 10000"));
        }
        tenx_common::sealed::SealKey::parse(self.codes.seal_key.expose())
            .map_err(|reason| Invalid::new("codes.seal_key", reason))?;
        if self.codes.max_attempts < 1 {
            return Err(Invalid::new("codes.max_attempts", "must be at least 1"));
        }
        if self.mfa.issuer.is_empty() || self.mfa.issuer.contains(':') || self.mfa.issuer.len() > 64 {
            return Err(Invalid::new("mfa.issuer", "1–64 characters, no colon"));
        }
        if !(30..=3600).contains(&self.mfa.challenge_ttl_seconds) {
            return Err(Invalid::new("mfa.challenge_ttl_seconds", "must be between 30 and 3600"));
        }
        if self.mfa.challenge_max_attempts < 1 {
            return Err(Invalid::new("mfa.challenge_max_attempts", "must be at least 1"));
        }
        if !(1..=720).contains(&self.orgs.invitation_ttl_hours) {
            return Err(Invalid::new("orgs.invitation_ttl_hours", "must be between 1 and 720 (30 days)"));
        }
        if !(self.orgs.invitation_url.starts_with("https://")
            || self.orgs.invitation_url.starts_with("http://"))
            || self.orgs.invitation_url.contains('?')
        {
            return Err(Invalid::new("orgs.invitation_url", "an http(s) URL without a query"));
        }
        if self.mfa.max_failed_codes < 1 {
            return Err(Invalid::new("mfa.max_failed_codes", "must be at least 1"));
        }
        if self.mfa.totp_skew_steps > 10 {
            return Err(Invalid::new("mfa.totp_skew_steps", "must be at most 10 (5 minutes each way)"));
        }
        Ok(())
    }
}
