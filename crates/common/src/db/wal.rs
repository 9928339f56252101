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
