//! What an invoice bills: its lines, as the modules that price them
//! (subscriptions, plan changes, usage) hand them to `invoices::issue`, and
//! the ceiling on any amount. Below both `invoices` and `usage`, so usage
//! can price lines and invoices can claim usage without importing each
//! other.

use std::time::SystemTime;

use uuid::Uuid;

/// The largest amount one invoice, or one of its lines, may bill (10^15
/// minor units: sums of thousands of lines stay far inside `i64`).
pub const MAX_AMOUNT_MINOR: i64 = 1_000_000_000_000_000;

/// One line to bill.
#[derive(Debug, Clone)]
pub struct NewLine {
    /// `subscription`, `proration` or `usage`.
    pub kind: &'static str,
    pub description: String,
    pub price_id: Uuid,
    pub quantity: i64,
    pub unit_amount_minor: i64,
    pub amount_minor: i64,
    pub period: (SystemTime, SystemTime),
    /// Usage lines: the records they bill are those unbilled from before
    /// this instant (later than `period.1` for a final invoice, which bills
    /// everything accepted).
    pub claim_before: Option<SystemTime>,
}
