//! What every service binary does the same way when it serves: telemetry
//! for its name, a shutdown on SIGTERM or SIGINT, build, bind and run the
//! service until it has drained, flush the pending spans, and report a
//! failure with every cause, not just the outermost one.
//!
//! A service is its crate's `App` implementing [`Service`] (one line:
//! [`hosted!`]); its `main` is then `host::serve::<App>(settings)` beside
//! its own commands (`migrate`, …).

use std::error::Error;
use std::future::Future;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

/// A tenx service, as the host runs it. Implemented with [`hosted!`]
/// for an `App` with the usual `build`, `spawn` and `Running { task }`.
pub trait Service: Sized + Send + 'static {
    /// The binary's name (`tenx-auth`): logs, traces, error lines.
    const NAME: &'static str;
    type Settings: Send + 'static;
    type Error: Error + Send + Sync + 'static;

    /// Where its traces and logs go.
    fn telemetry(settings: &Self::Settings) -> &TelemetrySettings;

    /// Connects what it needs (pools, Redis, the broker lazily), serving
    /// nothing yet.
    fn build(
        settings: Self::Settings,
        metrics: Metrics,
    ) -> impl Future<Output = Result<Self, Self::Error>> + Send;

    /// Binds its ports and starts serving; the task ends once `shutdown`
    /// has drained it.
    fn spawn(self, shutdown: Shutdown)
    -> impl Future<Output = Result<Task<Self::Error>, Self::Error>> + Send;
}

/// A running service: its task, which answers how it ended.
pub type Task<E> = tokio::task::JoinHandle<Result<(), E>>;

/// Implements [`Service`] for a service's `App`: `hosted!(App, "tenx-auth",
/// AuthSettings, AuthError)`, given `App::build(settings, metrics)`,
/// `App::spawn(shutdown) -> Running { task, .. }` and `settings.telemetry`.
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

            async fn build(settings: $settings, metrics: $crate::metrics::Metrics) -> Result<Self, $error> {
                <$app>::build(settings, metrics).await
            }

            async fn spawn(
                self,
                shutdown: $crate::shutdown::Shutdown,
            ) -> Result<$crate::host::Task<$error>, $error> {
                Ok(<$app>::spawn(self, shutdown).await?.task)
            }
        }
    };
}

/// The `serve` command of service `S`.
pub async fn serve<S: Service>(settings: S::Settings) -> Result<(), String> {
    let telemetry = S::telemetry(&settings).clone();
    crate::cli::serve(S::NAME, &telemetry, |shutdown| async move {
        let service = S::build(settings, Metrics::default()).await.map_err(|e| report(&e))?;
        let task = service.spawn(shutdown).await.map_err(|e| report(&e))?;
        match task.await {
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
