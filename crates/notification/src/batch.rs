//! Work asked for one item at a time, done in one go for everyone who asks
//! at the same moment: one statement and one round trip for the lot.
//!
//! Why: at a burst of events, round trips (and the commits behind them),
//! not rows, are what the service, Postgres and the kernel spend their time
//! on. One task takes whatever is waiting (up to a maximum) and hands it to
//! the work; a lone item waits for no one, so a quiet service is as fast as
//! before.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// A handle on one batching task; cheap to clone. The task ends when the
/// last handle is dropped.
#[derive(Debug)]
pub struct Batcher<I, O> {
    queue: mpsc::Sender<(I, oneshot::Sender<O>)>,
}

impl<I, O> Clone for Batcher<I, O> {
    fn clone(&self) -> Self {
        Self { queue: self.queue.clone() }
    }
}

impl<I: Send + 'static, O: Send + 'static> Batcher<I, O> {
    /// Starts the task (needs a Tokio runtime). `work` gets up to `max`
    /// items and returns one output per item, in their order.
    pub fn spawn<F, Fut>(name: &'static str, max: usize, work: F) -> Self
    where
        F: Fn(Vec<I>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<O>> + Send + 'static,
    {
        let (queue, mut waiting) = mpsc::channel::<(I, oneshot::Sender<O>)>(max * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max);
            while waiting.recv_many(&mut batch, max).await > 0 {
                let (items, replies): (Vec<I>, Vec<_>) = batch.drain(..).unzip();
                let span = tracing::info_span!("notification.batch", work = name, items = items.len());
                // Its own task, so a panic in one batch fails only that
                // batch's callers (their replies are dropped), not the
                // batching itself.
                let Ok(outputs) = tokio::spawn(work(items).instrument(span)).await else { continue };
                debug_assert_eq!(outputs.len(), replies.len(), "{name}: one output per item");
                for (reply, output) in replies.into_iter().zip(outputs) {
                    // A caller that gave up no longer listens.
                    let _ = reply.send(output);
                }
            }
        });
        Self { queue }
    }

    /// `item`'s output, or `None` if its batch failed to finish (the work
    /// panicked) or the task has stopped.
    pub async fn call(&self, item: I) -> Option<O> {
        let (reply, output) = oneshot::channel();
        self.queue.send((item, reply)).await.ok()?;
        output.await.ok()
    }
}
