//! One shutdown signal for a process, passed down explicitly (no global).
//!
//! Servers, relays and consumers take a [`Shutdown`] and stop taking new
//! work when it fires; the owner then waits for them to drain.

use tokio_util::sync::CancellationToken;

/// A cloneable shutdown signal. Cancelling any clone fires all of them.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the signal for every holder.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// True once the signal has fired.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the signal fires.
    pub async fn wait(&self) {
        self.token.cancelled().await;
    }

    /// Completes `delay` after the signal fired: when a listener stops
    /// accepting. Until then it serves as usual while its readiness says
    /// it is going (gRPC health NOT_SERVING, `/readyz` 503), so load
    /// balancers stop sending before connections are refused.
    pub async fn after(&self, delay: std::time::Duration) {
        self.wait().await;
        tokio::time::sleep(delay).await;
    }

    /// A child signal: fires with this one, and can also be fired alone
    /// (to stop one component without stopping the process).
    pub fn child(&self) -> Self {
        Self { token: self.token.child_token() }
    }

    /// Fires this signal on the first SIGTERM or SIGINT, from a background
    /// task. Kubernetes sends SIGTERM; a developer presses Ctrl-C.
    pub fn on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let this = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
                _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
                _ = this.wait() => return,
            }
            this.trigger();
        });
        Ok(())
    }
}
