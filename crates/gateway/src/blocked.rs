//! Clients over their failed-authentication budget, as this instance
//! knows them, and until when. Every authenticated call asks; while no
//! client is blocked (nearly always) one atomic answers, without spelling
//! the client's address or looking anything up.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::future::Cache;

pub struct BlockedClients {
    cache: Cache<String, Instant>,
    base: Instant,
    /// The latest end of any block so far, in ms after `base` (rounded
    /// up); 0 before the first.
    latest_ms: AtomicU64,
}

impl std::fmt::Debug for BlockedClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockedClients").finish_non_exhaustive()
    }
}

impl Default for BlockedClients {
    fn default() -> Self {
        Self {
            cache: Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(3600)).build(),
            base: Instant::now(),
            latest_ms: AtomicU64::new(0),
        }
    }
}

impl BlockedClients {
    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether any client may still be blocked: `false` means none is.
    pub fn any(&self) -> bool {
        self.ms(Instant::now()) < self.latest_ms.load(Ordering::Relaxed)
    }

    /// How long the client `named` must still wait, if it is blocked; its
    /// name is spelled only when some client is.
    pub fn wait(&self, named: impl FnOnce() -> String) -> Option<Duration> {
        if !self.any() {
            return None;
        }
        let until = futures_util::FutureExt::now_or_never(self.cache.get(&named())).flatten()?;
        until.checked_duration_since(Instant::now())
    }

    /// Blocks `client` until `until`.
    pub async fn block(&self, client: String, until: Instant) {
        // Raised first: a call that sees it and then misses the entry
        // (not in yet) is one that would have missed it anyway.
        self.latest_ms.fetch_max(self.ms(until).saturating_add(1), Ordering::Relaxed);
        self.cache.insert(client, until).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_blocked_client_waits_until_its_end_and_others_never() {
        let blocked = BlockedClients::default();
        assert!(!blocked.any(), "nobody blocked yet");
        let spelled = std::cell::Cell::new(0);
        let client = |address: &'static str| {
            || {
                spelled.set(spelled.get() + 1);
                address.to_owned()
            }
        };
        assert_eq!(blocked.wait(client("198.51.100.1")), None);
        assert_eq!(spelled.get(), 0, "nobody blocked: no address spelled");
        blocked.block("198.51.100.1".into(), Instant::now() + Duration::from_secs(30)).await;
        assert!(blocked.any());
        let wait = blocked.wait(client("198.51.100.1")).unwrap_or_default();
        assert!(wait > Duration::from_secs(29) && wait <= Duration::from_secs(30), "{wait:?}");
        assert_eq!(blocked.wait(client("198.51.100.2")), None, "another client is not blocked");
        blocked.block("198.51.100.3".into(), Instant::now() + Duration::from_millis(20)).await;
        assert!(blocked.wait(client("198.51.100.3")).is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(blocked.wait(client("198.51.100.3")), None, "a block ends");
        assert!(blocked.any(), "the longer block still stands");
    }

    #[tokio::test]
    async fn once_every_block_has_ended_nobody_is_looked_up() {
        let blocked = BlockedClients::default();
        blocked.block("198.51.100.4".into(), Instant::now() + Duration::from_millis(20)).await;
        assert!(blocked.any());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!blocked.any());
    }
}
