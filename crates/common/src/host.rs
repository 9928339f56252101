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
//! `host::serve::<App>(settings)` beside its own commands (`migrate`, …);
//! tests and `tenx-dev` start it with [`start`].

mod parts;
mod run;

pub use parts::{Backend, Parts};
pub use run::{HostError, Running, spawn};

use std::error::Error;
use std::future::Future;

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

    /// Where its traces and logs go.
    fn telemetry(settings: &Self::Settings) -> &TelemetrySettings;

    /// Its gRPC and admin ports (moved by tests and `tenx-dev`).
    fn server(settings: &mut Self::Settings) -> &mut ServerSettings;

    /// Connects what it needs (pools, Redis, the broker lazily), serving
    /// nothing yet.
    fn build(
        settings: Self::Settings,
        metrics: Metrics,
    ) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// What it serves.
    fn parts(self) -> Parts;
}

/// Implements [`Service`] for a service's `App`: `hosted!(App,
/// "tenx-auth", AuthSettings, AuthError)`, given `App::build(settings,
/// metrics)`, `App::parts(self) -> Parts` and the settings' `telemetry`
/// and `server`.
#[macro_export]
macro_rules! hosted {
    ($app:ty, $name:literal, $settings:ty, $error:ty) => {
        impl $crate::host::Service for $app {
            const NAME: &'static str = $name;
            type Settings = $settings;
            type Error = $error;

            fn telemetry(settings: &$settings) -> &$crate::telemetry::TelemetrySettings {
                &settings.telemetry
            }

            fn server(settings: &mut $settings) -> &mut $crate::grpc::ServerSettings {
                &mut settings.server
            }

            async fn build(settings: $settings, metrics: $crate::metrics::Metrics) -> Result<Self, $error> {
                <$app>::build(settings, metrics).await
            }

            fn parts(self) -> $crate::host::Parts {
                <$app>::parts(self)
            }
        }
    };
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
            Err(e) => Err(format!("the service task: {e}")),
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
