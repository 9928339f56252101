//! Publishing with publisher confirms: `publish` returns only after the
//! broker has taken responsibility for every message (persisted to a
//! quorum queue), so a caller may then forget them.

use lapin::Channel;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use tokio::sync::Mutex;

use super::{Amqp, Outgoing, QueueError};

/// A confirm-mode channel on the supervised connection, reopened after
/// any failure. Publishes are serialised on it, which keeps their order.
#[derive(Debug)]
pub struct Publisher {
    amqp: Amqp,
    channel: Mutex<Option<Channel>>,
}

impl Publisher {
    pub fn new(amqp: Amqp) -> Self {
        Self { amqp, channel: Mutex::new(None) }
    }

    /// Publishes `messages` in order, pipelined, then waits for every
    /// confirm. `Ok` means all were confirmed; on `Err` any of them may or
    /// may not have been delivered, so the caller publishes all again
    /// (consumers dedupe by message id).
    pub async fn publish(&self, messages: &[Outgoing]) -> Result<(), QueueError> {
        let mut guard = self.channel.lock().await;
        let channel = match guard.as_ref() {
            Some(channel) if channel.status().connected() => channel.clone(),
            _ => {
                let channel = self.amqp.channel().await?;
                channel.confirm_select(ConfirmSelectOptions::default()).await?;
                *guard = Some(channel.clone());
                channel
            }
        };
        let result = publish_on(&channel, messages).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }
}

async fn publish_on(channel: &Channel, messages: &[Outgoing]) -> Result<(), QueueError> {
    let mut confirms = Vec::with_capacity(messages.len());
    for message in messages {
        let confirm = channel
            .basic_publish(
                message.exchange.as_str().into(),
                message.routing_key.as_str().into(),
                BasicPublishOptions { mandatory: message.mandatory, ..Default::default() },
                &message.body,
                message.properties(),
            )
            .await?;
        confirms.push(confirm);
    }
    for confirm in confirms {
        match confirm.await? {
            Confirmation::Ack(None) => {}
            // Acked, but returned: no queue took it.
            Confirmation::Ack(Some(returned)) => {
                return Err(QueueError::Unroutable(returned.delivery.routing_key.as_str().to_owned()));
            }
            Confirmation::Nack(_) => return Err(QueueError::Nacked),
            Confirmation::NotRequested => {
                return Err(QueueError::Unavailable("channel not in confirm mode".into()));
            }
        }
    }
    Ok(())
}
