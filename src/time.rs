//! Calendar arithmetic, once for the crate and its benches: the
//! `timestamp` casts of a source's `transform` and the benches that build
//! the rows those casts would produce; and the wall clock in epoch
//! milliseconds ([`now_ms`]).
//!
//! The one timestamp form casts produce is RFC 3339 in UTC with
//! microseconds, `2024-03-01T10:00:00.000000Z`, from epoch seconds, millis,
//! micros or an ISO-8601 text. Microseconds hold every PostgreSQL timestamp
//! and every epoch-millis value without loss; a finer input is refused, not
//! rounded.

/// The wall clock in milliseconds since the Unix epoch (0 for a clock set
/// before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm: exact for every `i64` year the result fits in).
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number (inverse of [`days_from_civil`]).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Years the output form writes with four digits.
const MIN_MICROS: i64 = -62_135_596_800_000_000; // 0001-01-01T00:00:00Z
const MAX_MICROS: i64 = 253_402_300_799_999_999; // 9999-12-31T23:59:59.999999Z

/// Formats microseconds since the epoch as `2024-03-01T10:00:00.123456Z`;
/// `None` outside years 1–9999.
pub fn format_micros(micros: i64) -> Option<String> {
    format_fraction(micros, 6)
}

/// Formats milliseconds since the epoch as `2024-03-01T10:00:00.123Z` (the
/// form Debezium and most producers write); `None` outside years 1–9999.
pub fn format_millis(millis: i64) -> Option<String> {
    format_fraction(millis.checked_mul(1000)?, 3)
}

/// RFC 3339 in UTC with `digits` (1–6) of the second's fraction, truncated.
fn format_fraction(micros: i64, digits: u32) -> Option<String> {
    if !(MIN_MICROS..=MAX_MICROS).contains(&micros) {
        return None;
    }
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000) / 10i64.pow(6 - digits);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    // By hand: `format!` with seven fields costs more than the arithmetic.
    let mut out = String::with_capacity(21 + digits as usize);
    for (n, width, sep) in [
        (year, 4, '-'),
        (i64::from(month), 2, '-'),
        (i64::from(day), 2, 'T'),
        (sod / 3600, 2, ':'),
        (sod / 60 % 60, 2, ':'),
        (sod % 60, 2, '.'),
        (frac, digits, 'Z'),
    ] {
        for i in (0..width).rev() {
            out.push(char::from(b'0' + (n / 10i64.pow(i) % 10) as u8));
        }
        out.push(sep);
    }
    Some(out)
}

/// Parses an ISO-8601 / RFC 3339 date-time into microseconds since the epoch:
/// `YYYY-MM-DD`, optionally followed by `T` or a space, `HH:MM[:SS[.fraction]]`
/// and an offset (`Z`, `±HH:MM`, `±HHMM`, `±HH`). Without an offset the time
/// is taken as UTC. Errors say what is wrong.
pub(crate) fn parse_iso8601(text: &str) -> Result<i64, String> {
    let s = text.trim().as_bytes();
    let mut i = 0;
    let num = |i: &mut usize, n: usize, what: &str| -> Result<i64, String> {
        let digits =
            s.get(*i..*i + n).filter(|d| d.iter().all(u8::is_ascii_digit)).ok_or(format!("expected {n} digits of {what}"))?;
        *i += n;
        Ok(digits.iter().fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
    };
    let expect = |i: &mut usize, c: u8| -> Result<(), String> {
        if s.get(*i) == Some(&c) {
            *i += 1;
            Ok(())
        } else {
            Err(format!("expected `{}` at character {}", c as char, *i + 1))
        }
    };
    let year = num(&mut i, 4, "the year")?;
    expect(&mut i, b'-')?;
    let month = num(&mut i, 2, "the month")? as u32;
    expect(&mut i, b'-')?;
    let day = num(&mut i, 2, "the day")? as u32;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(format!("{year:04}-{month:02}-{day:02} is not a calendar date"));
    }
    let (mut hour, mut minute, mut second, mut micros, mut offset_secs) = (0, 0, 0, 0i64, 0i64);
    if matches!(s.get(i), Some(b'T' | b't' | b' ')) {
        i += 1;
        hour = num(&mut i, 2, "the hour")?;
        expect(&mut i, b':')?;
        minute = num(&mut i, 2, "the minute")?;
        if s.get(i) == Some(&b':') {
            i += 1;
            second = num(&mut i, 2, "the second")?;
            if matches!(s.get(i), Some(b'.' | b',')) {
                i += 1;
                let start = i;
                while s.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                let digits = &s[start..i];
                if digits.is_empty() {
                    return Err("expected digits after the decimal point".into());
                }
                if digits.iter().skip(6).any(|d| *d != b'0') {
                    return Err("finer than microseconds; the timestamp form keeps microseconds".into());
                }
                micros = digits.iter().take(6).fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
                    * 10i64.pow(6 - digits.len().min(6) as u32);
            }
        }
        if hour > 23 || minute > 59 || second > 59 {
            return Err(format!("{hour:02}:{minute:02}:{second:02} is not a time of day"));
        }
        match s.get(i) {
            Some(b'Z' | b'z') => i += 1,
            Some(&sign @ (b'+' | b'-')) => {
                i += 1;
                let h = num(&mut i, 2, "the offset hours")?;
                let m = match s.get(i) {
                    Some(b':') => {
                        i += 1;
                        num(&mut i, 2, "the offset minutes")?
                    }
                    Some(c) if c.is_ascii_digit() => num(&mut i, 2, "the offset minutes")?,
                    _ => 0,
                };
                if h > 23 || m > 59 {
                    return Err("the UTC offset is out of range".into());
                }
                offset_secs = (h * 3600 + m * 60) * if sign == b'-' { -1 } else { 1 };
            }
            _ => {}
        }
    }
    if i != s.len() {
        return Err(format!("unexpected text after character {i}"));
    }
    let secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * 1_000_000 + micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        assert_eq!(format_micros(0).unwrap(), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_micros(1_709_287_200_123_456).unwrap(), "2024-03-01T10:00:00.123456Z");
        assert_eq!(format_micros(-1).unwrap(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_micros(MIN_MICROS).unwrap(), "0001-01-01T00:00:00.000000Z");
        assert_eq!(format_micros(MAX_MICROS).unwrap(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(format_micros(MAX_MICROS + 1), None);
        for m in [0, 1, -1, 951_782_400_000_000, 1_709_287_200_123_456, MIN_MICROS, MAX_MICROS, 4_107_542_399_000_001] {
            assert_eq!(parse_iso8601(&format_micros(m).unwrap()), Ok(m), "{m}");
        }
    }

    #[test]
    fn day_numbers_round_trip_through_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(days_from_civil(2024, 2, 29) + 1), (2024, 3, 1));
        assert_eq!(civil_from_days(days_from_civil(1900, 2, 28) + 1), (1900, 3, 1), "1900 is not a leap year");
        assert_eq!(days_from_civil(1, 1, 1), MIN_MICROS / 86_400_000_000);
        // Every day of four centuries (one full 400-year cycle on each side of the epoch).
        let mut expected = (1800, 1, 1);
        for day in days_from_civil(1800, 1, 1)..days_from_civil(2200, 1, 1) {
            assert_eq!(civil_from_days(day), expected, "day {day}");
            assert_eq!(days_from_civil(expected.0, expected.1, expected.2), day);
            let (y, m, d) = expected;
            expected = if d < days_in_month(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn formats_millis_with_three_digits() {
        assert_eq!(format_millis(0).unwrap(), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_millis(1_714_566_896_789).unwrap(), "2024-05-01T12:34:56.789Z");
        assert_eq!(format_millis(-1).unwrap(), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_millis(MAX_MICROS / 1000).unwrap(), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_millis(MAX_MICROS / 1000 + 1), None);
        assert_eq!(format_millis(i64::MAX), None);
        for ms in [0, -1, 1_714_566_896_789, MIN_MICROS / 1000] {
            assert_eq!(parse_iso8601(&format_millis(ms).unwrap()), Ok(ms * 1000), "{ms}");
        }
    }

    #[test]
    fn parses_offsets_and_short_forms() {
        let utc = parse_iso8601("2024-03-01T10:00:00Z").unwrap();
        assert_eq!(parse_iso8601("2024-03-01T11:30:00+01:30"), Ok(utc));
        assert_eq!(parse_iso8601("2024-03-01T05:00:00-0500"), Ok(utc));
        assert_eq!(parse_iso8601("2024-03-01T12:00:00+02"), Ok(utc));
        assert_eq!(parse_iso8601("2024-03-01 10:00:00"), Ok(utc));
        assert_eq!(parse_iso8601("2024-03-01T10:00"), Ok(utc));
        assert_eq!(parse_iso8601("2024-03-01T10:00:00.5Z"), Ok(utc + 500_000));
        assert_eq!(parse_iso8601("2024-03-01T10:00:00.123456000Z"), Ok(utc + 123_456));
        assert_eq!(parse_iso8601("2024-03-01"), Ok(utc - 10 * 3_600_000_000));
        assert_eq!(parse_iso8601("2000-02-29T00:00:00Z"), Ok(951_782_400_000_000));
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for (text, needle) in [
            ("2023-02-29", "not a calendar date"),
            ("2024-13-01", "not a calendar date"),
            ("2024-03-01T24:00:00Z", "not a time of day"),
            ("2024-03-01T10:00:00.1234567Z", "finer than microseconds"),
            ("2024-03-01T10:00:00Zjunk", "unexpected text"),
            ("03/01/2024", "digits of the year"),
            ("2024-03-01T10:00:00+25:00", "offset is out of range"),
            ("", "digits of the year"),
        ] {
            let err = parse_iso8601(text).unwrap_err();
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
