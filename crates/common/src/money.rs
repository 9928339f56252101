//! Amounts as people read them. Every amount in the contracts is an
//! integer in the currency's minor unit; its ISO 4217 exponent (digits
//! after the decimal point: 2 for USD, 0 for JPY, 3 for BHD) says how to
//! show it. Billing, which owns the currency table, formats its events'
//! `*_display` strings with this, and consumers format the numbers the
//! events carry with the exponent they carry, so the two never differ.

/// `amount_minor` as `<code> <amount>` with the exponent's decimals and
/// `,` grouping: `USD 19.83`, `USD -5.05`, `JPY 1,490`, `BHD 1.500`.
pub fn format(currency: &str, amount_minor: i64, exponent: u32) -> String {
    // 10^19 overflows u64; no currency has more than 4 decimals.
    let exponent = exponent.min(18);
    let scale = 10_u64.pow(exponent);
    let abs = amount_minor.unsigned_abs();
    let whole = (abs / scale).to_string();
    let mut grouped = String::with_capacity(whole.len() + whole.len() / 3);
    for (i, digit) in whole.chars().enumerate() {
        if i > 0 && (whole.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    let sign = if amount_minor < 0 { "-" } else { "" };
    if exponent == 0 {
        format!("{currency} {sign}{grouped}")
    } else {
        format!("{currency} {sign}{grouped}.{:0width$}", abs % scale, width = exponent as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::format;

    #[test]
    fn amounts_are_shown_in_major_units_with_grouping() {
        assert_eq!(format("USD", 1983, 2), "USD 19.83");
        assert_eq!(format("USD", 123_456, 2), "USD 1,234.56");
        assert_eq!(format("USD", 123_456_789, 2), "USD 1,234,567.89");
        assert_eq!(format("USD", 5, 2), "USD 0.05");
        assert_eq!(format("USD", -903, 2), "USD -9.03");
        assert_eq!(format("JPY", 1490, 0), "JPY 1,490");
        assert_eq!(format("CLP", 990, 0), "CLP 990");
        assert_eq!(format("CLP", 1_234_567, 0), "CLP 1,234,567");
        assert_eq!(format("BHD", 1500, 3), "BHD 1.500");
        assert_eq!(format("USD", i64::MIN, 2), "USD -92,233,720,368,547,758.08");
    }
}
