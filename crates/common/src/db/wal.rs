//! A position in the primary's write-ahead log (a Postgres `pg_lsn`).

use std::fmt;
use std::str::FromStr;

/// An LSN such as `16/B374D848`: the point a replica must have replayed
/// to show a given commit. Ordered; travels as its text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalPosition(u64);

impl WalPosition {
    /// Greater than any real position.
    pub const MAX: WalPosition = WalPosition(u64::MAX);

    /// Bytes of WAL from `earlier` to here (0 if `earlier` is not earlier).
    pub fn bytes_after(self, earlier: WalPosition) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("not a WAL position (expected `HI/LO` in hex): {0:?}")]
pub struct ParseWalError(String);

impl FromStr for WalPosition {
    type Err = ParseWalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseWalError(s.to_owned());
        let (hi, lo) = s.split_once('/').ok_or_else(bad)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(WalPosition((u64::from(hi) << 32) | u64::from(lo)))
    }
}

impl fmt::Display for WalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_postgres_lsn_text() {
        let pos: WalPosition = "16/B374D848".parse().expect("valid lsn");
        assert_eq!(pos.to_string(), "16/B374D848");
        assert_eq!(pos, WalPosition((0x16 << 32) | 0xB374_D848));
    }

    #[test]
    fn orders_by_high_word_first() {
        let a: WalPosition = "1/FFFFFFFF".parse().expect("valid lsn");
        let b: WalPosition = "2/0".parse().expect("valid lsn");
        assert!(a < b);
    }

    #[test]
    fn rejects_garbage() {
        assert!("16B374D848".parse::<WalPosition>().is_err());
        assert!("x/1".parse::<WalPosition>().is_err());
    }
}

/// The gRPC metadata key (and, at the gateway, the HTTP header) carrying a
/// WAL position: on a mutation's response, the primary's position past its
/// write; on a later read's request, the position the caller must see, so
/// the read goes to the replica only once it has replayed that far
/// (read-your-writes across calls and instances).
pub const METADATA: &str = "x-tenx-wal-position";

/// The position a caller sent in [`METADATA`], if any. `Err` is the
/// reason to give back, against the field [`METADATA`].
pub fn requested(metadata: &tonic::metadata::MetadataMap) -> Result<Option<WalPosition>, &'static str> {
    match metadata.get(METADATA).map(|v| v.to_str()) {
        None => Ok(None),
        Some(Ok(text)) => text.parse().map(Some).map_err(|_| "must be a WAL position like 16/B374D848"),
        Some(Err(_)) => Err("must be ASCII"),
    }
}

/// Puts `position` on a response's metadata as [`METADATA`].
pub fn stamp(metadata: &mut tonic::metadata::MetadataMap, position: WalPosition) {
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(position.to_string()) {
        metadata.insert(METADATA, value);
    }
}

#[cfg(test)]
mod metadata_tests {
    use tonic::metadata::{MetadataMap, MetadataValue};

    use super::*;

    #[test]
    fn a_position_travels_in_metadata_and_a_bad_one_is_refused() {
        let mut metadata = MetadataMap::new();
        assert_eq!(requested(&metadata), Ok(None));
        let position: WalPosition = "16/B374D848".parse().expect("valid");
        stamp(&mut metadata, position);
        assert_eq!(requested(&metadata), Ok(Some(position)));
        metadata.insert(METADATA, MetadataValue::from_static("16/B374D848; drop"));
        assert_eq!(requested(&metadata), Err("must be a WAL position like 16/B374D848"));
    }
}
