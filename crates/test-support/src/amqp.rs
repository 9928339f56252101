use std::sync::Mutex;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};

use crate::{cleanup_blocking, env_or, unique_suffix};

/// An AMQP name prefix of this test's own. Queues and exchanges handed to
/// [`TestAmqp::track`] are deleted on `Drop`.
#[derive(Debug)]
pub struct TestAmqp {
    url: String,
    prefix: String,
    queues: Mutex<Vec<String>>,
    exchanges: Mutex<Vec<String>>,
}

impl TestAmqp {
    pub fn new() -> Self {
        Self {
            url: env_or("TENX_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefix: format!("{}.", unique_suffix()),
            queues: Mutex::new(Vec::new()),
            exchanges: Mutex::new(Vec::new()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Every queue and exchange name the test uses starts with this.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Deletes these queues and exchanges when the test ends.
    pub fn track(
        &self,
        queues: impl IntoIterator<Item = String>,
        exchanges: impl IntoIterator<Item = String>,
    ) {
        self.queues.lock().unwrap_or_else(|p| p.into_inner()).extend(queues);
        self.exchanges.lock().unwrap_or_else(|p| p.into_inner()).extend(exchanges);
    }
}

impl Default for TestAmqp {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestAmqp {
    fn drop(&mut self) {
        let queues = std::mem::take(&mut *self.queues.lock().unwrap_or_else(|p| p.into_inner()));
        let exchanges = std::mem::take(&mut *self.exchanges.lock().unwrap_or_else(|p| p.into_inner()));
        if queues.is_empty() && exchanges.is_empty() {
            return;
        }
        let url = self.url.clone();
        cleanup_blocking("amqp names", move || async move {
            let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
            let channel = conn.create_channel().await?;
            for q in queues {
                channel.queue_delete(q.as_str().into(), QueueDeleteOptions::default()).await?;
            }
            for e in exchanges {
                channel.exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default()).await?;
            }
            let _ = conn.close(200, "test done".into()).await;
            Ok(())
        });
    }
}
