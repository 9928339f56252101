//! `tenx-billing` settings: the shared sections plus billing, idempotency
//! and the payment provider.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tenx_common::cache::RedisSettings;
use tenx_common::config::{ConfigError, Invalid, Loader, Secret, Validate};
use tenx_common::db::DbSettings;
use tenx_common::grpc::ServerSettings;
use tenx_common::outbox::RelaySettings;
use tenx_common::queue::AmqpSettings;
use tenx_common::retention::RetentionSettings;
use tenx_common::telemetry::TelemetrySettings;

pub const DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct BillingSettings {
    pub server: ServerSettings,
    pub database: DbSettings,
    pub redis: RedisSettings,
    pub upstreams: tenx_common::authn::AuthUpstream,
    pub authn: tenx_common::authn::AuthnSettings,
    pub amqp: AmqpSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub outbox: RelaySettings,
    #[serde(default)]
    pub retention: RetentionSettings,
    pub billing: BillingRules,
    pub idempotency: IdempotencySettings,
    pub deployment: DeploymentSettings,
    pub provider: ProviderSettings,
    pub dunning: DunningSettings,
    pub scheduler: SchedulerSettings,
    pub usage: UsageSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct UsageSettings {
    pub max_batch: usize,
    pub max_future_seconds: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DunningSettings {
    pub retry_days: Vec<u32>,
    pub final_action: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SchedulerSettings {
    pub enabled: bool,
    pub poll_interval_ms: u64,
    pub batch_size: u32,
    pub lease_seconds: u64,
    pub max_backoff_seconds: u64,
    pub retention_days: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BillingRules {
    pub currency_default: String,
    pub trial_days: u32,
    pub incomplete_expiry_hours: u64,
    pub proration: String,
    pub upgrade_timing: String,
    pub downgrade_timing: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct IdempotencySettings {
    pub ttl_hours: u64,
    pub lease_seconds: u64,
    pub retry_after_ms: u64,
}

impl IdempotencySettings {
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl_hours * 3600)
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DeploymentSettings {
    /// `production`, `staging`, `development` or `test`.
    pub environment: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ProviderSettings {
    pub kind: String,
    pub timeout_ms: u64,
    pub reconcile_after_seconds: u64,
    pub stripe_api_base: String,
    #[serde(default)]
    pub stripe_secret_key: Secret<String>,
    #[serde(default)]
    pub stripe_webhook_secret: Secret<String>,
    pub webhook_tolerance_seconds: u64,
}

impl BillingSettings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Loader::new("billing", DEFAULTS).file_if(file).load()
    }

    pub fn load_from(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        Loader::new("billing", DEFAULTS).env_from(vars).load()
    }

    /// A development deployment's settings (`make up`): the process
    /// environment, with `deployment.environment = "development"` and the
    /// simulated provider unless it says otherwise.
    pub fn load_development() -> Result<Self, ConfigError> {
        let mut vars: HashMap<String, String> = std::env::vars().collect();
        vars.entry("TENX_BILLING__DEPLOYMENT__ENVIRONMENT".into()).or_insert_with(|| "development".into());
        vars.entry("TENX_BILLING__PROVIDER__KIND".into()).or_insert_with(|| "simulated".into());
        Self::load_from(vars)
    }

    /// Settings for an isolated instance on loopback (tests, benchmarks).
    pub fn isolated(
        primary: &str,
        replica: &str,
        redis_prefix: &str,
        amqp_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let more =
            [("amqp.max_attempts", "3"), ("deployment.environment", "test"), ("provider.kind", "simulated")];
        Loader::new("billing", DEFAULTS)
            .isolated_backend([primary, replica, redis_prefix, amqp_prefix], &more)
            .load()
    }
}

impl Validate for BillingSettings {
    fn validate(&self) -> Result<(), Invalid> {
        self.database.validate()?;
        self.authn.validate()?;
        self.redis.validate()?;
        self.amqp.validate()?;
        self.telemetry.validate()?;
        self.retention.validate()?;
        let c = &self.billing.currency_default;
        if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(Invalid::new("billing.currency_default", "must be an ISO 4217 code like USD"));
        }
        if self.billing.trial_days > 730 {
            return Err(Invalid::new("billing.trial_days", "must be 0–730"));
        }
        let i = &self.idempotency;
        if i.ttl_hours == 0 || i.lease_seconds == 0 {
            return Err(Invalid::new("idempotency", "ttl_hours and lease_seconds must be positive"));
        }
        if i.lease_seconds * 1000 <= self.provider.timeout_ms {
            return Err(Invalid::new(
                "idempotency.lease_seconds",
                "must outlast provider.timeout_ms, or a slow charge would lose its key",
            ));
        }
        let days = &self.dunning.retry_days;
        if days.is_empty() || days.len() > 10 || days.windows(2).any(|w| w[0] >= w[1]) || days[0] == 0 {
            return Err(Invalid::new(
                "dunning.retry_days",
                "1–10 day offsets, each > 0, strictly increasing",
            ));
        }
        if !matches!(self.dunning.final_action.as_str(), "cancel" | "unpaid") {
            return Err(Invalid::new("dunning.final_action", "must be \"cancel\" or \"unpaid\""));
        }
        let s = &self.scheduler;
        if s.poll_interval_ms == 0 || s.batch_size == 0 || s.lease_seconds == 0 || s.max_backoff_seconds == 0
        {
            return Err(Invalid::new(
                "scheduler",
                "poll_interval_ms, batch_size, lease_seconds, max_backoff_seconds must be positive",
            ));
        }
        if !matches!(self.billing.proration.as_str(), "always_invoice" | "none") {
            return Err(Invalid::new("billing.proration", "must be \"always_invoice\" or \"none\""));
        }
        for (key, value) in [
            ("billing.upgrade_timing", &self.billing.upgrade_timing),
            ("billing.downgrade_timing", &self.billing.downgrade_timing),
        ] {
            if !matches!(value.as_str(), "immediately" | "period_end") {
                return Err(Invalid::new(key, "must be \"immediately\" or \"period_end\""));
            }
        }
        if !(1..=10_000).contains(&self.usage.max_batch) {
            return Err(Invalid::new("usage.max_batch", "must be 1–10000"));
        }
        if self.billing.incomplete_expiry_hours == 0 {
            return Err(Invalid::new("billing.incomplete_expiry_hours", "must be positive"));
        }
        let environment = self.deployment.environment.as_str();
        if !matches!(environment, "production" | "staging" | "development" | "test") {
            return Err(Invalid::new(
                "deployment.environment",
                "must be \"production\", \"staging\", \"development\" or \"test\"",
            ));
        }
        match self.provider.kind.as_str() {
            "simulated" if environment == "production" => {
                return Err(Invalid::new(
                    "provider.kind",
                    "the simulated provider moves no money (its test cards always pay) and is refused in \
                     production: set provider.kind = \"stripe\", or deployment.environment to \
                     \"development\", \"test\" or \"staging\" where that is what this is",
                ));
            }
            "simulated" => {}
            "stripe" => {
                let key = self.provider.stripe_secret_key.expose();
                if !(key.starts_with("sk_") || key.starts_with("rk_")) {
                    return Err(Invalid::new(
                        "provider.stripe_secret_key",
                        "a Stripe secret (sk_…) or restricted (rk_…) key is required when provider.kind is stripe",
                    ));
                }
                if environment == "production"
                    && !(key.starts_with("sk_live_") || key.starts_with("rk_live_"))
                {
                    return Err(Invalid::new(
                        "provider.stripe_secret_key",
                        "a test-mode key takes no money: production needs a live key (sk_live_… or rk_live_…)",
                    ));
                }
                if !self.provider.stripe_webhook_secret.expose().starts_with("whsec_") {
                    return Err(Invalid::new(
                        "provider.stripe_webhook_secret",
                        "the webhook endpoint's signing secret (whsec_…) is required when provider.kind is stripe",
                    ));
                }
                // The live key goes to Stripe itself only, in production.
                let base = self.provider.stripe_api_base.trim_end_matches('/');
                let allowed = if environment == "production" {
                    base == "https://api.stripe.com"
                } else {
                    base.starts_with("https://") || base.starts_with("http://")
                };
                if !allowed {
                    return Err(Invalid::new(
                        "provider.stripe_api_base",
                        "must be https://api.stripe.com in production (elsewhere an http(s):// emulator)",
                    ));
                }
            }
            _ => return Err(Invalid::new("provider.kind", "must be \"stripe\" or \"simulated\"")),
        }
        if !(1..=3600).contains(&self.provider.webhook_tolerance_seconds) {
            return Err(Invalid::new("provider.webhook_tolerance_seconds", "must be 1–3600"));
        }
        if self.provider.timeout_ms == 0 {
            return Err(Invalid::new("provider.timeout_ms", "must be positive"));
        }
        if self.provider.reconcile_after_seconds.saturating_mul(1000)
            <= self.provider.timeout_ms.saturating_mul(2)
        {
            return Err(Invalid::new(
                "provider.reconcile_after_seconds",
                "must exceed twice provider.timeout_ms, or the reconciler would look up charges still in flight",
            ));
        }
        Ok(())
    }
}
