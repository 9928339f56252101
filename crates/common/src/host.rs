//! What every service does the same way: the binary's `serve` (telemetry
//! for its name, a shutdown on SIGTERM or SIGINT, build, serve until
//! drained, flush the pending spans, report a failure with every cause),
//! and the serving itself: binding, the background tasks, the outbox
//! relay, retention, consumers, the operator RPCs, the admin port, the
//! drain and the join ([`spawn`]).
//!
//! A service is its crate's `App`: `App::build` connects what it needs,
//! `App::parts` says what it serves ([`Parts`]), and [`hosted!`]
//! implements [`Service`] from them in one line. Its `main` is then
//! [`main`] (`serve` and `migrate`), or [`serve`] and [`migrate`] beside
//! commands of its own; tests and `tenx-dev` start it with [`start`] and
//! migrate with [`migrate`].

mod parts;
mod run;

pub use parts::{Backend, BackendSettings, Parts};
pub use run::{HostError, Running, spawn};

use std::error::Error;
use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::config::ConfigError;
use crate::grpc::ServerSettings;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

/// A tenx service, as the host runs it. Implemented with [`hosted!`].
pub trait Service: Sized + Send + 'static {
    /// The binary's name (`tenx-auth`): logs, traces, error lines.
    const NAME: &'static str;
    type Settings: Clone + Send + 'static;
    type Error: Error + Send + Sync + 'static;

    /// Its settings: embedded defaults → `file` → `TENX_<SERVICE>__…`
    /// environment, validated.
    fn load(file: Option<&Path>) -> Result<Self::Settings, ConfigError>;

    /// Where its traces and logs go.
    fn telemetry(settings: &Self::Settings) -> &TelemetrySettings;

    /// Its gRPC and admin ports and how it drains.
    fn server(settings: &Self::Settings) -> &ServerSettings;

    /// The same, to move the ports (tests and `tenx-dev`).
    fn server_mut(settings: &mut Self::Settings) -> &mut ServerSettings;

    /// Its database, cache, broker, outbox and retention settings, for a
    /// service that keeps a database ([`Backend`]).
    fn backend(settings: &Self::Settings) -> Option<BackendSettings<'_>>;

    /// What its schema gets besides `common`'s tables, for a service that
    /// keeps a database.
    fn migrations() -> Option<Runner>;

    /// Connects what it needs (pools, Redis, the broker lazily), serving
    /// nothing yet.
    fn build(
        settings: Self::Settings,
        metrics: Metrics,
    ) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// What it serves.
    fn parts(self) -> Parts;
}

/// A service's embedded migrations (`refinery::embed_migrations!`).
pub type Runner = refinery::Runner;

/// Implements [`Service`] for a service's `App`, given `App::build(settings,
/// metrics)`, `App::parts(self) -> Parts`, `Settings::load(file)` and the
/// settings' `telemetry` and `server`: `hosted!(App, "tenx-gateway",
/// GatewaySettings, EdgeError)`, or for a service with a database and
/// migrations (and settings with `database`, `redis`, `amqp`, `outbox` and
/// `retention`), `hosted!(App, "tenx-auth", AuthSettings, AuthError,
/// migrations = "migrations")` (the folder, from the crate's root).
#[macro_export]
macro_rules! hosted {
    // Inner arms (`@impl`, `@schema`) first, then the two public forms.
    (@impl $app:ty, $name:literal, $settings:ty, $error:ty $(, $runner:path)?) => {
        impl $crate::host::Service for $app {
            const NAME: &'static str = $name;
            type Settings = $settings;
            type Error = $error;

            fn load(file: Option<&std::path::Path>) -> Result<$settings, $crate::config::ConfigError> {
                <$settings>::load(file)
            }

            fn telemetry(settings: &$settings) -> &$crate::telemetry::TelemetrySettings {
                &settings.telemetry
            }

            fn server(settings: &$settings) -> &$crate::grpc::ServerSettings {
                &settings.server
            }

            fn server_mut(settings: &mut $settings) -> &mut $crate::grpc::ServerSettings {
                &mut settings.server
            }

            $crate::hosted!(@schema $settings $(, $runner)?);

            async fn build(settings: $settings, metrics: $crate::metrics::Metrics) -> Result<Self, $error> {
                <$app>::build(settings, metrics).await
            }

            fn parts(self) -> $crate::host::Parts {
                <$app>::parts(self)
            }
        }
    };
    (@schema $settings:ty) => {
        fn backend(_: &$settings) -> Option<$crate::host::BackendSettings<'_>> {
            None
        }

        fn migrations() -> Option<$crate::host::Runner> {
            None
        }
    };
    (@schema $settings:ty, $runner:path) => {
        fn backend(settings: &$settings) -> Option<$crate::host::BackendSettings<'_>> {
            Some($crate::host::BackendSettings {
                database: &settings.database,
                redis: &settings.redis,
                amqp: &settings.amqp,
                outbox: &settings.outbox,
                retention: &settings.retention,
            })
        }

        fn migrations() -> Option<$crate::host::Runner> {
            Some($runner())
        }
    };
    ($app:ty, $name:literal, $settings:ty, $error:ty) => {
        $crate::hosted!(@impl $app, $name, $settings, $error);
    };
    ($app:ty, $name:literal, $settings:ty, $error:ty, migrations = $dir:literal) => {
        /// The migrations in the crate's `migrations/` (embedded at build).
        mod hosted_migrations {
            refinery::embed_migrations!($dir);
        }
        $crate::hosted!(@impl $app, $name, $settings, $error, hosted_migrations::migrations::runner);
    };

}

/// Applies `common`'s and `S`'s migrations to `S`'s schema (on
/// `database.migrate_url`); nothing for a service without a database.
pub async fn migrate<S: Service>(settings: &S::Settings) -> Result<(), HostError> {
    let Some(BackendSettings { database, .. }) = S::backend(settings) else { return Ok(()) };
    let url = database.migrate_url().map_err(HostError::service)?;
    crate::db::migrate(url, &database.schema, S::migrations()).await.map_err(HostError::service)
}

/// A checksum of every migration `S`'s schema gets (test templates).
pub fn migrations_fingerprint<S: Service>() -> String {
    match S::migrations() {
        Some(runner) => crate::db::fingerprint(&runner),
        None => crate::db::common_fingerprint(),
    }
}

/// A service binary's whole `main`: `serve` (the default) and, for a
/// service with a database, `migrate`.
pub async fn main<S: Service>() -> ExitCode {
    let commands = if S::migrations().is_some() { "<serve|migrate>" } else { "serve" };
    let usage = format!("usage: {} [--config FILE] {commands}", S::NAME);
    let shown = usage.clone();
    crate::cli::run(S::NAME, &shown, S::load, |command, settings| async move {
        match command.as_deref() {
            Some("serve") | None => serve::<S>(settings).await,
            Some("migrate") if S::migrations().is_some() => {
                migrate::<S>(&settings).await.map_err(|e| report(&e))
            }
            Some(other) => Err(format!("unknown command `{other}`\n{usage}")),
        }
    })
    .await
}

/// Builds service `S` and serves it until `shutdown` (tests, `tenx-dev`).
pub async fn start<S: Service>(
    settings: S::Settings,
    metrics: Metrics,
    shutdown: Shutdown,
) -> Result<Running, HostError> {
    let service = S::build(settings, metrics).await.map_err(HostError::service)?;
    spawn(service.parts(), shutdown).await
}

/// The `serve` command of service `S`.
pub async fn serve<S: Service>(settings: S::Settings) -> Result<(), String> {
    let telemetry = S::telemetry(&settings).clone();
    crate::cli::serve(S::NAME, &telemetry, |shutdown| async move {
        let running = start::<S>(settings, Metrics::default(), shutdown).await.map_err(|e| report(&e))?;
        match running.task.await {
            Ok(ended) => ended.map_err(|e| report(&e)),
            Err(e) => Err(report(&HostError::Panicked(e))),
        }
    })
    .await
}

/// An error with its causes, outermost first, joined by `: `; a cause
/// whose text the outer message already ends with is not repeated
/// (`#[error("database: {0}")]` wrappers print their source themselves).
pub fn report(error: &(dyn Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("cannot start")]
        Start(#[source] Middle),
        #[error("database: {0}")]
        Database(#[source] Middle),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to the primary")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn every_cause_is_reported_once() {
        let refused = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        assert_eq!(
            report(&Outer::Start(Middle(refused()))),
            "cannot start: connecting to the primary: connection refused"
        );
        assert_eq!(
            report(&Outer::Database(Middle(refused()))),
            "database: connecting to the primary: connection refused",
            "a wrapper that prints its source is not repeated"
        );
    }
}
