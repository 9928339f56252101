//! gRPC's `grpc-timeout` header: a call's deadline as at most 8 digits and
//! a unit (H, M, S, m, u, n), read by the gateway's door and written by
//! it and by every upstream link.

use std::time::Duration;

/// The header's name.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The deadline a `grpc-timeout` value says; `None` when it is not one.
pub fn parse(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The deadline of a call's headers, if it has a valid one.
pub fn of(headers: &http::HeaderMap) -> Option<Duration> {
    headers.get(GRPC_TIMEOUT)?.to_str().ok().and_then(parse)
}

/// `deadline` as a `grpc-timeout` value, in whole milliseconds (at least
/// 1, at most the 8 digits allowed).
pub fn header(deadline: Duration) -> http::HeaderValue {
    // Spelled on the stack: this is on every proxied call.
    let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX).clamp(1, 99_999_999);
    let mut digits = [0u8; 9];
    let mut at = digits.len() - 1;
    digits[at] = b'm';
    let mut n = ms;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    http::HeaderValue::from_bytes(&digits[at..]).unwrap_or(http::HeaderValue::from_static("1m"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_is_sent_in_whole_milliseconds_within_eight_digits() {
        for (deadline, sent) in [
            (Duration::from_secs(5), "5000m"),
            (Duration::from_millis(1), "1m"),
            (Duration::from_micros(300), "1m"),
            (Duration::ZERO, "1m"),
            (Duration::from_millis(1234), "1234m"),
            (Duration::from_secs(10 * 86_400), "99999999m"),
        ] {
            let value = header(deadline);
            assert_eq!(value, sent, "{deadline:?}");
            let back = value.to_str().ok().and_then(parse);
            assert_eq!(back, Some(Duration::from_millis(sent.trim_end_matches('m').parse().unwrap_or(0))));
        }
    }

    #[test]
    fn every_unit_is_read_and_anything_else_is_not_a_deadline() {
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["123456789m", "m", "", "10x", "-1m", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
        let mut headers = http::HeaderMap::new();
        assert_eq!(of(&headers), None);
        headers.insert(GRPC_TIMEOUT, http::HeaderValue::from_static("40m"));
        assert_eq!(of(&headers), Some(Duration::from_millis(40)));
    }
}
