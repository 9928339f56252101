//! Billing periods on the UTC calendar. Period k of a subscription is
//! `[anchor + k·interval, anchor + (k+1)·interval)`, computed from the
//! anchor each time (never by chaining), with month-end clamping: an
//! anchor on Jan 31 gives Feb 28 (29), Mar 31, Apr 30. Whole seconds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: i64 = 86_400;

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    u32::try_from(days_from_civil(next_year, next_month, 1) - days_from_civil(year, month, 1)).unwrap_or(28)
}

fn seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn from_seconds(s: i64) -> SystemTime {
    if s >= 0 {
        UNIX_EPOCH + Duration::from_secs(s.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(s.unsigned_abs())
    }
}

/// `t` floored to the second.
pub fn whole_second(t: SystemTime) -> SystemTime {
    from_seconds(seconds(t))
}

/// `t` plus `months` calendar months, the day clamped to the month's end.
pub fn add_months(t: SystemTime, months: i64) -> SystemTime {
    let s = seconds(t);
    let (days, time_of_day) = (s.div_euclid(DAY), s.rem_euclid(DAY));
    let (year, month, day) = civil_from_days(days);
    let total = year * 12 + i64::from(month) - 1 + months;
    let (y, m) = (total.div_euclid(12), u32::try_from(total.rem_euclid(12) + 1).unwrap_or(1));
    let d = day.min(days_in_month(y, m));
    from_seconds(days_from_civil(y, m, d) * DAY + time_of_day)
}

/// Months in one period of a price (`month`/`year` × interval_count).
pub fn months_per_period(interval: &str, count: i32) -> i64 {
    let unit = if interval == "year" { 12 } else { 1 };
    unit * i64::from(count.max(1))
}

/// Period `k` from `anchor`.
pub fn period(anchor: SystemTime, months: i64, k: i64) -> (SystemTime, SystemTime) {
    (add_months(anchor, k * months), add_months(anchor, (k + 1) * months))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32) -> SystemTime {
        from_seconds(days_from_civil(y, m, d) * DAY + 3_600)
    }

    #[test]
    fn months_clamp_to_the_month_end_without_drifting() {
        let anchor = at(2026, 1, 31);
        let ends: Vec<_> = (1..=4).map(|k| civil_from_days(seconds(add_months(anchor, k)) / DAY)).collect();
        assert_eq!(ends, vec![(2026, 2, 28), (2026, 3, 31), (2026, 4, 30), (2026, 5, 31)]);
        assert_eq!(
            civil_from_days(seconds(add_months(at(2028, 1, 31), 1)) / DAY),
            (2028, 2, 29),
            "leap year"
        );
        assert_eq!(civil_from_days(seconds(add_months(at(2028, 2, 29), 12)) / DAY), (2029, 2, 28), "yearly");
        let (start, end) = period(anchor, 1, 2);
        assert_eq!((seconds(start) % DAY, seconds(end) % DAY), (3_600, 3_600), "time of day kept");
        assert_eq!(civil_from_days(seconds(start) / DAY), (2026, 3, 31));
    }

    #[test]
    fn civil_dates_round_trip() {
        for days in [-800_000, -1, 0, 1, 19_000, 20_454, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
