//! Billing's customer-facing events as template data: the receipt of a
//! paid invoice (`billing.invoice.paid`), the notice of a failed payment
//! (`billing.payment.failed`) and of a refund (`billing.payment.refunded`). Everything a template shows is
//! computed here (dates, amounts, human wording of codes), so templates
//! only place strings.

use prost_types::Timestamp;
use serde_json::{Value, json};
use tenx_common::money;
use tenx_proto::billing::v1::{CardBrand, InvoicePaid, PaymentFailed, PaymentFailureCode, PaymentRefunded};

/// `YYYY-MM-DD` (UTC) of a timestamp.
pub fn iso_date(t: &Timestamp) -> String {
    let (year, month, day) = civil_from_days(t.seconds.div_euclid(86_400));
    format!("{year:04}-{month:02}-{day:02}")
}

/// The civil date of a day number since 1970-01-01 (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn date_or_null(t: Option<&Timestamp>) -> Value {
    t.map_or(Value::Null, |t| Value::String(iso_date(t)))
}

/// The exponent of an event from a billing that did not send
/// `currency_exponent` yet, read back from its display string
/// (`USD 20.00` → 2, `JPY 1,490` → 0).
fn exponent_of(display: &str) -> Option<u32> {
    let amount = display.split_once(' ')?.1;
    match amount.split_once('.') {
        Some((_, decimals)) if decimals.bytes().all(|b| b.is_ascii_digit()) => {
            u32::try_from(decimals.len()).ok()
        }
        Some(_) => None,
        None => amount.bytes().all(|b| b.is_ascii_digit() || b == b',' || b == b'-').then_some(0),
    }
}

/// Formats every amount of one event alike, from the numbers it carries
/// and its `currency_exponent`.
struct Money<'a> {
    currency: &'a str,
    exponent: Option<u32>,
}

impl<'a> Money<'a> {
    fn new(currency: &'a str, exponent: Option<u32>, display: &str) -> Self {
        Self { currency, exponent: exponent.or_else(|| exponent_of(display)) }
    }

    /// The amount; the event's own display string when the exponent is
    /// unknown (an old event whose display string is unreadable).
    fn of(&self, amount: i64, display: &str) -> String {
        match self.exponent {
            Some(exponent) => money::format(self.currency, amount, exponent),
            None => display.to_owned(),
        }
    }

    fn line(&self, amount: i64) -> String {
        money::format(self.currency, amount, self.exponent.unwrap_or(2))
    }
}

fn brand(brand: i32) -> &'static str {
    match CardBrand::try_from(brand) {
        Ok(CardBrand::Visa) => "Visa",
        Ok(CardBrand::Mastercard) => "Mastercard",
        Ok(CardBrand::Amex) => "American Express",
        _ => "Card",
    }
}

/// Data of the `billing_receipt` template.
pub fn receipt(e: &InvoicePaid) -> Value {
    let invoice = e.invoice.clone().unwrap_or_default();
    let money = Money::new(&invoice.currency, e.currency_exponent, &e.amount_paid_display);
    let lines: Vec<Value> = invoice
        .lines
        .iter()
        .map(|l| json!({ "description": l.description, "amount": money.line(l.amount_minor) }))
        .collect();
    json!({
        "email": e.email,
        "invoice_number": invoice.number,
        "amount_paid": money.of(invoice.amount_paid_minor, &e.amount_paid_display),
        "paid_on": date_or_null(invoice.paid_at.as_ref()),
        "plan_name": e.plan_name,
        "period_start": date_or_null(invoice.period_start.as_ref()),
        "period_end": date_or_null(invoice.period_end.as_ref()),
        "lines": lines,
        "card": if e.card_last4.is_empty() { Value::Null } else {
            json!({ "brand": brand(e.card_brand), "last4": e.card_last4 })
        },
    })
}

/// Why a payment failed, in words for the customer.
fn reason(e: &PaymentFailed) -> String {
    match PaymentFailureCode::try_from(e.failure_code) {
        Ok(PaymentFailureCode::CardDeclined) => "your card was declined".into(),
        Ok(PaymentFailureCode::InsufficientFunds) => "your card has insufficient funds".into(),
        Ok(PaymentFailureCode::NoPaymentMethod) => "there is no payment method on your account".into(),
        _ if !e.failure_message.is_empty() => e.failure_message.clone(),
        _ => "the payment could not be completed".into(),
    }
}

/// Data of the `billing_payment_failed` template.
pub fn payment_failed(e: &PaymentFailed) -> Value {
    let money = Money::new(&e.currency, e.currency_exponent, &e.amount_due_display);
    json!({
        "email": e.email,
        "invoice_number": e.invoice_number,
        "amount_due": money.of(e.amount_due_minor, &e.amount_due_display),
        "reason": reason(e),
        "plan_name": e.plan_name,
        "card_last4": e.card_last4,
        "attempt_count": e.attempt_count,
        "next_retry": date_or_null(e.next_retry_at.as_ref()),
        "final": e.r#final,
    })
}

/// Data of the `billing_refund` template.
pub fn refund(e: &PaymentRefunded) -> Value {
    let refund = e.refund.clone().unwrap_or_default();
    let money = Money::new(&refund.currency, e.currency_exponent, &e.amount_display);
    json!({
        "email": e.email,
        "invoice_number": e.invoice_number,
        "amount_refunded": money.of(refund.amount_minor, &e.amount_display),
        "card_last4": e.card_last4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_iso_days_in_utc() {
        let at = |seconds| iso_date(&Timestamp { seconds, nanos: 0 });
        assert_eq!(at(0), "1970-01-01");
        assert_eq!(at(1_772_323_200), "2026-03-01"); // 2026-03-01T00:00:00Z
        assert_eq!(at(1_772_323_199), "2026-02-28");
        assert_eq!(at(1_709_164_800), "2024-02-29");
        assert_eq!(at(-1), "1969-12-31");
    }

    #[test]
    fn amounts_use_the_events_exponent_and_old_events_their_display_string() {
        let usd = Money::new("USD", Some(2), "USD 20.00");
        assert_eq!(usd.of(2000, "USD 20.00"), "USD 20.00");
        assert_eq!(usd.line(123_456_789), "USD 1,234,567.89");
        // The carried exponent wins over anything a display string says.
        assert_eq!(Money::new("BHD", Some(3), "BHD 1.5").of(1500, "BHD 1.5"), "BHD 1.500");
        // An event from before `currency_exponent`: read from the display.
        assert_eq!(Money::new("JPY", None, "JPY 1,490").line(990), "JPY 990");
        assert_eq!(Money::new("USD", None, "USD 19.83").line(505), "USD 5.05");
        // Neither: the display string as it came.
        assert_eq!(Money::new("XXX", None, "garbled").of(1, "garbled"), "garbled");
        assert_eq!(exponent_of("BHD 1.500"), Some(3));
        assert_eq!(exponent_of(""), None);
    }
}
