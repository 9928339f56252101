//! Acknowledging a channel's deliveries in groups: one `basic.ack` with
//! `multiple` for every delivery handled at about the same moment.
//!
//! Why: on a quorum queue each ack frame is a settle the broker commits
//! through its log, and at thousands of messages a second one frame per
//! message is what limits a consumer. A `multiple` ack of tag `T` settles
//! every unsettled delivery up to `T`, so it may only be sent when none of
//! those is still in a handler (or about to be retried, dead-lettered or
//! nacked on its own): those are "in hand", and the lowest of them is the
//! floor below which handled deliveries may be acked together.
//!
//! A delivery stuck in its handler must not hold back the ones after it
//! (their unacked count would fill the prefetch window): a handled delivery
//! that no group has taken within [`LINGER`] is acked alone.
//!
//! Each tag is settled exactly once (a second ack of a tag is a channel
//! error): whoever takes it out of `handled` sends its ack, and every send
//! happens under one lock, so an ack alone and a group never race.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use lapin::Acker;
use lapin::options::BasicAckOptions;
use tokio::sync::oneshot;

/// How long a handled delivery waits for a group before it is acked alone.
const LINGER: Duration = Duration::from_millis(10);

/// The ack state of one channel (delivery tags are per channel).
#[derive(Default)]
pub(super) struct Acks {
    state: Mutex<State>,
    /// Held while an ack frame is chosen and sent.
    sending: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Arrived and not yet handled, or being settled on their own.
    in_hand: BTreeSet<u64>,
    /// Handled, waiting for an ack; told whether it was sent.
    handled: BTreeMap<u64, (Acker, oneshot::Sender<bool>)>,
}

impl Acks {
    /// Notes a delivery as it arrives, in the channel's order: until it is
    /// settled, no group ack reaches it.
    pub(super) fn arrived(&self, tag: u64) {
        self.state().in_hand.insert(tag);
    }

    /// Acks handled delivery `tag`, with others or alone; `true` once the
    /// ack was sent, `false` if the channel is gone (it will be redelivered).
    pub(super) async fn ack(&self, tag: u64, acker: &Acker) -> bool {
        let sent = self.ack_in_group_or_alone(tag, acker).await;
        if !sent {
            // Back in hand while the caller nacks it: no group may reach it.
            self.state().in_hand.insert(tag);
        }
        sent
    }

    async fn ack_in_group_or_alone(&self, tag: u64, acker: &Acker) -> bool {
        let (done, mut sent) = oneshot::channel();
        {
            let mut state = self.state();
            state.in_hand.remove(&tag);
            state.handled.insert(tag, (acker.clone(), done));
        }
        self.flush().await;
        if let Ok(result) = tokio::time::timeout(LINGER, &mut sent).await {
            return result.unwrap_or(false);
        }
        // Held back by an earlier delivery still in hand: ack it alone,
        // unless a group took it meanwhile (then it is being sent).
        let sending = self.sending.lock().await;
        let mine = self.state().handled.remove(&tag);
        match mine {
            Some((acker, _)) => send(&acker, false).await,
            None => {
                drop(sending);
                sent.await.unwrap_or(false)
            }
        }
    }

    /// Delivery `tag` is settled on its own (retried, dead-lettered,
    /// nacked) or acked: it no longer holds the floor down.
    pub(super) async fn settled(&self, tag: u64) {
        let held_floor = self.state().in_hand.remove(&tag);
        if held_floor {
            self.flush().await;
        }
    }

    /// Acks, in one frame, every handled delivery below the floor.
    async fn flush(&self) {
        let _sending = self.sending.lock().await;
        let group = {
            let mut state = self.state();
            let floor = state.in_hand.first().copied().unwrap_or(u64::MAX);
            let above = state.handled.split_off(&floor);
            std::mem::replace(&mut state.handled, above)
        };
        let Some((_, (top, _))) = group.last_key_value() else { return };
        let sent = send(top, group.len() > 1).await;
        for (_, (_, done)) in group {
            // A waiter that gave up (its task ended) no longer listens.
            let _ = done.send(sent);
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `false` when lapin could not send it (the channel is gone).
async fn send(acker: &Acker, multiple: bool) -> bool {
    matches!(acker.ack(BasicAckOptions { multiple }).await, Ok(true))
}
