//! Which loads raced an invalidation.
//!
//! A load that began before an invalidation may return what was there
//! before the write. If it were stored after the invalidation dropped the
//! key, every later read would be served the old value until the TTL.
//! Each invalidation bumps a counter for its key's stripe; a value read
//! is stored with the counter noted when its read began, and served only
//! while the counter has not moved. Keys share stripes (16,384 per cache,
//! more than the default L1 holds), so an unrelated invalidation may cost
//! an entry of another key a reload from L2, never a stale read.

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

const STRIPES: usize = 16_384;

pub(super) struct Epochs {
    stripes: Box<[AtomicU64]>,
    hasher: std::collections::hash_map::RandomState,
}

impl Default for Epochs {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Epochs {
    /// The count of invalidations seen for `key`'s stripe.
    pub(super) fn of(&self, key: &str) -> u64 {
        self.stripe(key).load(Ordering::SeqCst)
    }

    /// Call before dropping `key` from L1.
    pub(super) fn bump(&self, key: &str) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
    }

    /// Call before dropping every key from L1.
    pub(super) fn bump_all(&self) {
        for stripe in &self.stripes {
            stripe.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn stripe(&self, key: &str) -> &AtomicU64 {
        let index = (self.hasher.hash_one(key) % STRIPES as u64) as usize;
        &self.stripes[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bump_moves_its_keys_epoch_and_bump_all_moves_every_one() {
        let epochs = Epochs::default();
        let (a, b) = (epochs.of("a"), epochs.of("b"));
        epochs.bump("a");
        assert_ne!(epochs.of("a"), a);
        let (a, b2) = (epochs.of("a"), epochs.of("b"));
        assert!(b2 == b || b2 == b + 1, "b moves only if it shares a's stripe");
        epochs.bump_all();
        assert_ne!(epochs.of("a"), a);
        assert_ne!(epochs.of("b"), b2);
    }
}
