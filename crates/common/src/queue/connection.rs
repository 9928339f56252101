//! A supervised AMQP connection: lapin does not reconnect by itself in a
//! way that suits manual acks, so every caller asks this for a channel and
//! gets one on a live connection, reconnecting (and re-declaring the
//! registered topology) when the old one died.

use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use super::{AmqpSettings, QueueError, Topology};

#[derive(Clone)]
pub struct Amqp {
    inner: Arc<Inner>,
}

struct Inner {
    settings: AmqpSettings,
    name: String,
    /// The connection, and how many registered topologies it has declared.
    connection: Mutex<Option<(Connection, usize)>>,
    topologies: std::sync::Mutex<Vec<Topology>>,
}

impl std::fmt::Debug for Amqp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Amqp").field("name", &self.inner.name).finish_non_exhaustive()
    }
}

/// See [`Amqp::downgrade`].
#[derive(Debug, Clone)]
pub struct WeakAmqp(std::sync::Weak<Inner>);

impl WeakAmqp {
    /// The connection handle, while a strong one exists.
    pub fn upgrade(&self) -> Option<Amqp> {
        self.0.upgrade().map(|inner| Amqp { inner })
    }
}

impl Amqp {
    /// No connection is made until the first [`Amqp::channel`]; a service
    /// starts (and its outbox fills) while the broker is down.
    pub fn new(settings: &AmqpSettings, connection_name: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                settings: settings.clone(),
                name: connection_name.to_owned(),
                connection: Mutex::new(None),
                topologies: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// A handle that does not keep the connection alive (for a metric
    /// probe that must not outlive the service's own handles).
    pub fn downgrade(&self) -> WeakAmqp {
        WeakAmqp(Arc::downgrade(&self.inner))
    }

    pub fn settings(&self) -> &AmqpSettings {
        &self.inner.settings
    }

    /// Declares `topology` with the next channel, and again on every
    /// reconnect.
    pub fn register(&self, topology: Topology) {
        self.inner.topologies.lock().unwrap_or_else(|p| p.into_inner()).push(topology);
    }

    /// A new channel on a live connection, with every registered topology
    /// declared on that connection.
    pub async fn channel(&self) -> Result<Channel, QueueError> {
        let mut guard = self.inner.connection.lock().await;
        if !guard.as_ref().is_some_and(|(conn, _)| conn.status().connected()) {
            *guard = Some((self.connect().await?, 0));
        }
        let Some((conn, declared)) = guard.as_mut() else {
            return Err(QueueError::Unavailable("no connection".into()));
        };
        // Bounded: a connection that died without lapin noticing yet (no
        // RST, a half-open socket) would otherwise hold this lock, and so
        // every publisher and consumer of the process, until the heartbeat
        // gives up. Then the connection is dropped and the next call makes
        // a new one.
        let timeout = Duration::from_millis(self.inner.settings.connect_timeout_ms);
        let opened = tokio::time::timeout(timeout, async {
            let channel = conn.create_channel().await?;
            let topologies = self.inner.topologies.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for topology in topologies.iter().skip(*declared) {
                topology.declare(&channel).await?;
            }
            *declared = topologies.len();
            Ok::<_, QueueError>(channel)
        })
        .await;
        match opened {
            Ok(opened) => opened,
            Err(_) => {
                *guard = None;
                Err(QueueError::Unavailable(format!("opening a channel timed out after {timeout:?}")))
            }
        }
    }

    /// Readiness: the broker accepts a channel.
    pub async fn ping(&self) -> Result<(), QueueError> {
        close_quietly(&self.channel().await?, "ping").await;
        Ok(())
    }

    /// Closes the connection (at shutdown).
    pub async fn close(&self) {
        if let Some((conn, _)) = self.inner.connection.lock().await.take() {
            let _ = conn.close(200, "shutdown".into()).await;
        }
    }

    async fn connect(&self) -> Result<Connection, QueueError> {
        let props = ConnectionProperties::default().with_connection_name(self.inner.name.clone().into());
        let timeout = Duration::from_millis(self.inner.settings.connect_timeout_ms);
        match tokio::time::timeout(timeout, Connection::connect(self.inner.settings.url.expose(), props))
            .await
        {
            Ok(Ok(conn)) => {
                tracing::info!(connection = %self.inner.name, "connected to RabbitMQ");
                Ok(conn)
            }
            // lapin's error text never includes the URL's password.
            Ok(Err(error)) => Err(QueueError::Unavailable(error.to_string())),
            Err(_) => Err(QueueError::Unavailable(format!("connect timed out after {timeout:?}"))),
        }
    }
}

/// Closes a channel that is no longer needed, waiting at most a second for
/// the broker's answer: on a dead connection there is none, and whoever
/// closes it (a consumer about to reconnect) must not wait for it.
pub async fn close_quietly(channel: &Channel, reason: &str) {
    let _ = tokio::time::timeout(Duration::from_secs(1), channel.close(200, reason.into())).await;
}

/// Exponential backoff with jitter, for reconnect and retry loops.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new() -> Self {
        Self { next: Duration::from_millis(100), max: Duration::from_secs(10) }
    }

    pub fn reset(&mut self) {
        self.next = Duration::from_millis(100);
    }

    /// The current delay (±25 %); doubles it for next time.
    pub fn next_delay(&mut self) -> Duration {
        let jitter = 0.75 + fastrand::f64() * 0.5;
        let delay = self.next.mul_f64(jitter);
        self.next = (self.next * 2).min(self.max);
        delay
    }

    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}
