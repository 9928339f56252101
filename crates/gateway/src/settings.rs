//! `tenx-gateway` settings: listeners, upstreams, JWKS, limits.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use tenx_common::cache::RedisSettings;
use tenx_common::config::{ConfigError, Invalid, Loader, Validate};
use tenx_common::grpc::{ClientSettings, ServerSettings};
use tenx_common::telemetry::TelemetrySettings;

use crate::routes::Route;

pub const DEFAULTS: &str = include_str!("defaults.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct GatewaySettings {
    pub server: ServerSettings,
    pub http: HttpSettings,
    pub upstreams: Upstreams,
    pub redis: RedisSettings,
    #[serde(default)]
    pub telemetry: TelemetrySettings,
    pub authn: tenx_common::authn::AuthnSettings,
    pub limits: LimitSettings,
    pub breaker: BreakerSettings,
    #[serde(default)]
    pub routes: HashMap<String, RouteOverride>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HttpSettings {
    pub listen: String,
    pub body_limit_bytes: usize,
    pub max_in_flight: usize,
    pub forwarded_hops: usize,
    pub cors_allowed_origins: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Upstreams {
    pub auth: ClientSettings,
    pub notification: ClientSettings,
    pub billing: ClientSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    pub anonymous_requests: u32,
    pub anonymous_period_seconds: u32,
    pub user_requests: u32,
    pub user_period_seconds: u32,
    pub timeout_ms: u64,
    /// Deadline of the billing calls that reach the payment provider
    /// (routes declared `waits_on_provider` in the protos); set above billing's `provider.timeout_ms`, so a
    /// slow provider's answer still reaches the caller.
    pub payment_timeout_ms: u64,
    /// Failed authentications (a bad token or API key) per client address
    /// (IPv6: per /64) and period; past it, 429 without asking auth.
    pub failed_auth_requests: u32,
    pub failed_auth_period_seconds: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BreakerSettings {
    pub failure_threshold: u32,
    pub open_seconds: u64,
}

/// The routes whose billing call may wait on the payment provider.
/// Overrides for one route; unset fields keep the defaults of `limits`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteOverride {
    pub requests: Option<u32>,
    pub period_seconds: Option<u32>,
    pub timeout_ms: Option<u64>,
}

/// The effective policy of one route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoutePolicy {
    pub requests: u32,
    pub period: Duration,
    pub timeout: Duration,
}

impl GatewaySettings {
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Loader::new("gateway", DEFAULTS).file_if(file).load()
    }

    pub fn load_from(vars: HashMap<String, String>) -> Result<Self, ConfigError> {
        Loader::new("gateway", DEFAULTS).env_from(vars).load()
    }

    /// Settings for an isolated instance on loopback (tests, benchmarks).
    pub fn isolated(
        auth_url: &str,
        notification_url: &str,
        billing_url: &str,
        redis_prefix: &str,
    ) -> Result<Self, ConfigError> {
        Loader::new("gateway", DEFAULTS)
            .isolated(&[
                ("upstreams.auth.url", auth_url),
                ("upstreams.notification.url", notification_url),
                ("upstreams.billing.url", billing_url),
                ("redis.key_prefix", redis_prefix),
                ("http.listen", "127.0.0.1:0"),
            ])
            .load()
    }

    /// The failed-authentication budget of one client.
    pub fn failed_auth_policy(&self) -> RoutePolicy {
        RoutePolicy {
            requests: self.limits.failed_auth_requests,
            period: Duration::from_secs(u64::from(self.limits.failed_auth_period_seconds)),
            timeout: Duration::from_millis(self.limits.timeout_ms),
        }
    }

    /// The limit and deadline of a route: its `routes.<operation_id>`
    /// overrides over the defaults its declaration picks.
    pub fn policy(&self, route: &Route) -> RoutePolicy {
        let o = self.routes.get(route.operation_id).cloned().unwrap_or_default();
        let timeout =
            if route.waits_on_provider { self.limits.payment_timeout_ms } else { self.limits.timeout_ms };
        let (requests, period) = if route.anonymous {
            (self.limits.anonymous_requests, self.limits.anonymous_period_seconds)
        } else {
            (self.limits.user_requests, self.limits.user_period_seconds)
        };
        RoutePolicy {
            requests: o.requests.unwrap_or(requests),
            period: Duration::from_secs(u64::from(o.period_seconds.unwrap_or(period))),
            timeout: Duration::from_millis(o.timeout_ms.unwrap_or(timeout)),
        }
    }

    /// Origins allowed by CORS; `None` = any.
    pub fn cors_origins(&self) -> Option<Vec<String>> {
        let raw = self.http.cors_allowed_origins.trim();
        if raw == "*" {
            return None;
        }
        Some(raw.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect())
    }
}

impl Validate for GatewaySettings {
    fn validate(&self) -> Result<(), Invalid> {
        self.redis.validate()?;
        self.telemetry.validate()?;
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new("http.listen", "must be an address like 0.0.0.0:8080"));
        }
        if self.http.body_limit_bytes == 0 || self.http.max_in_flight == 0 {
            return Err(Invalid::new("http", "body_limit_bytes and max_in_flight must be positive"));
        }
        for (key, upstream) in [
            ("upstreams.auth.url", &self.upstreams.auth),
            ("upstreams.notification.url", &self.upstreams.notification),
            ("upstreams.billing.url", &self.upstreams.billing),
        ] {
            let mut urls = upstream.urls().peekable();
            if urls.peek().is_none()
                || !urls.all(|url| url.starts_with("http://") || url.starts_with("https://"))
            {
                return Err(Invalid::new(key, "must be http:// or https:// URLs, comma-separated"));
            }
        }
        let l = &self.limits;
        if l.anonymous_requests == 0
            || l.user_requests == 0
            || l.anonymous_period_seconds == 0
            || l.user_period_seconds == 0
            || l.timeout_ms == 0
        {
            return Err(Invalid::new("limits", "requests, periods and timeout_ms must be positive"));
        }
        if l.payment_timeout_ms < l.timeout_ms {
            return Err(Invalid::new(
                "limits.payment_timeout_ms",
                "must be at least limits.timeout_ms (and above billing's provider.timeout_ms)",
            ));
        }
        if self.upstreams.billing.request_timeout_ms < l.payment_timeout_ms {
            return Err(Invalid::new(
                "upstreams.billing.request_timeout_ms",
                "must be at least limits.payment_timeout_ms, or the channel cuts payments short",
            ));
        }
        if self.breaker.failure_threshold == 0 {
            return Err(Invalid::new("breaker.failure_threshold", "must be positive"));
        }
        for (op, o) in &self.routes {
            if tenx_proto::edge::by_operation(op).is_none() {
                return Err(Invalid::new("routes", format!("no route has the operation id `{op}`")));
            }
            if o.requests == Some(0) || o.period_seconds == Some(0) || o.timeout_ms == Some(0) {
                return Err(Invalid::new("routes", format!("{op}: values must be positive")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<GatewaySettings, ConfigError> {
        GatewaySettings::load_from(vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    #[test]
    fn calls_that_wait_on_the_payment_provider_get_the_longer_payment_deadline() -> anyhow::Result<()> {
        let settings = load(&[])?;
        let route = |op| tenx_proto::edge::by_operation(op).unwrap_or_else(|| panic!("{op} is public"));
        let waiting: Vec<_> =
            tenx_proto::edge::PUBLIC.iter().filter(|r| r.waits_on_provider).map(|r| r.operation_id).collect();
        assert_eq!(
            waiting,
            [
                "billing_payment_methods_add",
                "billing_subscriptions_change",
                "billing_subscriptions_create",
                "billing_invoices_pay"
            ]
        );
        for op in waiting {
            assert_eq!(settings.policy(route(op)).timeout, Duration::from_millis(15_000), "{op}");
        }
        assert_eq!(settings.policy(route("billing_invoices_list")).timeout, Duration::from_millis(5_000));
        let tuned = load(&[("TENX_GATEWAY__ROUTES__BILLING_INVOICES_PAY__TIMEOUT_MS", "20000")])?;
        assert_eq!(tuned.policy(route("billing_invoices_pay")).timeout, Duration::from_millis(20_000));
        let short = load(&[("TENX_GATEWAY__LIMITS__PAYMENT_TIMEOUT_MS", "1000")])
            .map(|_| ())
            .expect_err("shorter than limits.timeout_ms");
        assert!(short.to_string().contains("limits.payment_timeout_ms"), "{short}");
        Ok(())
    }
}
