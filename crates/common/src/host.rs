//! What every service binary does the same way when it serves: telemetry
//! for its name, a shutdown on SIGTERM or SIGINT, build, bind and run the
//! service until it has drained, flush the pending spans, and report a
//! failure with every cause, not just the outermost one.
//!
//! A service is its crate's `App` implementing [`Service`]; its `main`
//! is then `host::serve::<App>(settings)` beside its own commands
//! (`migrate`, …).

use std::error::Error;
use std::future::Future;

use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::telemetry::TelemetrySettings;

/// A tenx service, as the host runs it.
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

    /// Binds its ports and serves until `shutdown` has drained it.
    fn run(self, shutdown: Shutdown) -> impl Future<Output = Result<(), Self::Error>> + Send;
}

/// The `serve` command of service `S`.
pub async fn serve<S: Service>(settings: S::Settings) -> Result<(), String> {
    let telemetry = S::telemetry(&settings).clone();
    crate::cli::serve(S::NAME, &telemetry, |shutdown| async move {
        let service = S::build(settings, Metrics::default()).await.map_err(|e| report(&e))?;
        service.run(shutdown).await.map_err(|e| report(&e))
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
