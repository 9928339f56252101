//! `tenx-notification` settings: the shared sections plus SMTP and templates.

use std::path::{Path, PathBuf};

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
pub struct NotificationSettings {
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
    pub smtp: SmtpSettings,
    #[serde(default)]
    pub templates: TemplateSettings,
    #[serde(default)]
    pub webhooks: WebhookSettings,
    pub codes: CodeSettings,
}

/// Settings under `codes.`.
#[derive(Debug, Clone, Deserialize)]
pub struct CodeSettings {
    /// 32 bytes, base64: auth's `codes.seal_key`, which opens the codes in
    /// its reset and verification events.
    pub seal_key: tenx_common::config::Secret<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SmtpSettings {
    pub from: String,
    pub relays: Vec<RelaySettingsSmtp>,
    /// PEM file of extra CAs to trust for relays behind a private CA;
    /// Mozilla's roots are always trusted.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// How a relay's connection is protected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain text: only for a relay on loopback or a trusted network.
    None,
    /// Plain connection upgraded with STARTTLS, which must succeed
    /// (port 587). A relay that does not offer it is a failed relay.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// One SMTP relay.
#[derive(Debug, Clone, Deserialize)]
pub struct RelaySettingsSmtp {
    pub host: String,
    pub port: u16,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub tls: SmtpTls,
    /// SMTP AUTH user; needs `password` and a TLS mode other than `none`.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret<String>>,
}

fn default_timeout_ms() -> u64 {
    5_000
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct TemplateSettings {
    #[serde(default)]
    pub dir: Option<PathBuf>,
}

impl NotificationSettings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Loader::new("notification", DEFAULTS).file_if(file).load()
    }

    /// Settings for an isolated instance on loopback (tests, benchmarks).
    pub fn isolated(
        primary: &str,
        replica: &str,
        redis_prefix: &str,
        amqp_prefix: &str,
    ) -> Result<Self, ConfigError> {
        let mut settings: Self = Loader::new("notification", DEFAULTS)
            .isolated_backend([primary, replica, redis_prefix, amqp_prefix], &[("amqp.max_attempts", "3")])
            .load()?;
        // Tiers far enough apart that, with jitter, each wait is longer
        // than the one before (50-100 ms, then 150-300 ms).
        settings.amqp.retry_delays_ms = vec![100, 300];
        // Test receivers listen on loopback.
        settings.webhooks.allow_private_networks = true;
        Ok(settings)
    }
}

impl Validate for NotificationSettings {
    fn validate(&self) -> Result<(), Invalid> {
        self.database.validate()?;
        self.authn.validate()?;
        tenx_common::sealed::SealKey::parse(self.codes.seal_key.expose())
            .map_err(|reason| Invalid::new("codes.seal_key", reason))?;
        self.redis.validate()?;
        self.amqp.validate()?;
        self.telemetry.validate()?;
        self.retention.validate()?;
        self.smtp
            .from
            .parse::<lettre::message::Mailbox>()
            .map_err(|e| Invalid::new("smtp.from", format!("not a mailbox: {e}")))?;
        if self.smtp.relays.is_empty() {
            return Err(Invalid::new("smtp.relays", "needs at least one relay"));
        }
        for relay in &self.smtp.relays {
            if relay.username.is_some() != relay.password.is_some() {
                return Err(Invalid::new(
                    "smtp.relays",
                    format!("{}: username and password go together", relay.host),
                ));
            }
            if relay.username.is_some() && relay.tls == SmtpTls::None {
                return Err(Invalid::new(
                    "smtp.relays",
                    format!(
                        "{}: credentials are never sent without TLS (set tls = \"starttls\" or \"tls\")",
                        relay.host
                    ),
                ));
            }
        }
        for (key, file) in
            [("smtp.ca_file", &self.smtp.ca_file), ("webhooks.ca_file", &self.webhooks.ca_file)]
        {
            if let Some(path) = file {
                crate::egress::read_ca_file(path).map_err(|reason| Invalid::new(key, reason))?;
            }
        }
        if let Some(dir) = &self.templates.dir
            && !dir.is_dir()
        {
            return Err(Invalid::new("templates.dir", format!("{} is not a folder", dir.display())));
        }
        Ok(())
    }
}

/// Signed webhook delivery (`webhooks`).
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    pub timeout_ms: u64,
    pub disable_after_seconds: u64,
    /// Endpoints on loopback, private or link-local addresses are refused
    /// unless this is set (tests, or receivers inside the cluster).
    #[serde(default)]
    pub allow_private_networks: bool,
    /// PEM file of extra CAs to trust for `https://` endpoints (receivers
    /// behind a private CA); Mozilla's roots are always trusted.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            timeout_ms: 10_000,
            disable_after_seconds: 5 * 24 * 3600,
            allow_private_networks: false,
            ca_file: None,
        }
    }
}
