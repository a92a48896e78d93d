//! Column types beyond the JSON ones: their names in `[sink] columns`
//! (PostgreSQL's own spellings included) and the exact conversions from what
//! Debezium sends. Pure functions: each value becomes the canonical text both
//! databases read back the same way, or an error that names what is wrong
//! (the caller adds the column and dead-letters the record).

use base64::Engine;
use serde_json::Value;

use super::{ColumnType, EpochUnit};
use crate::time::{civil_from_days, days_from_civil};

/// Parses a column type, PostgreSQL spellings included
/// (`double precision`, `timestamp with time zone`, `numeric(12,2)`).
pub fn parse_type(text: &str) -> Option<ColumnType> {
    // One space between words, none around parentheses and commas.
    let t = text.split_whitespace().collect::<Vec<_>>().join(" ").to_ascii_lowercase();
    let t = t.replace(" (", "(").replace("( ", "(").replace(" )", ")").replace(", ", ",").replace(" ,", ",");
    Some(match t.as_str() {
        "text" | "varchar" | "character varying" => ColumnType::Text,
        "bigint" | "int8" => ColumnType::BigInt,
        "integer" | "int" | "int4" => ColumnType::Integer,
        "double" | "double precision" | "float8" | "float" | "real" | "float4" => ColumnType::Double,
        "boolean" | "bool" => ColumnType::Boolean,
        "json" | "jsonb" => ColumnType::Json,
        "date" => ColumnType::Date,
        "timestamp" | "timestamp without time zone" => ColumnType::Timestamp,
        "timestamptz" | "timestamp with time zone" => ColumnType::TimestampTz,
        "uuid" => ColumnType::Uuid,
        "bytea" | "blob" => ColumnType::Bytes,
        "numeric" | "decimal" => ColumnType::Numeric { precision: None, scale: 0 },
        other => {
            let args = other.strip_prefix("numeric(").or_else(|| other.strip_prefix("decimal("))?.strip_suffix(')')?;
            let (p, s) = args.split_once(',').unwrap_or((args, "0"));
            let (precision, scale) = (p.parse::<u32>().ok()?, s.parse::<u32>().ok()?);
            if !(1..=1000).contains(&precision) || scale > precision {
                return None;
            }
            ColumnType::Numeric { precision: Some(precision), scale }
        }
    })
}

/// The type as the database declares it (`numeric(12,2)`); SQLite gets TEXT
/// for the exact types, since its NUMERIC affinity would turn `12.50` into a float.
pub fn sql_type(ty: ColumnType, pg: bool) -> String {
    match (ty, pg) {
        (ColumnType::Text, _) => "TEXT".into(),
        (ColumnType::BigInt, _) => "BIGINT".into(),
        (ColumnType::Integer, _) => "INTEGER".into(),
        (ColumnType::Double, true) => "DOUBLE PRECISION".into(),
        (ColumnType::Double, false) => "REAL".into(),
        (ColumnType::Boolean, _) => "BOOLEAN".into(),
        (ColumnType::Json, true) => "JSONB".into(),
        (ColumnType::Bytes, true) => "BYTEA".into(),
        (ColumnType::Bytes, false) => "BLOB".into(),
        (ColumnType::Numeric { precision: Some(p), scale }, true) => format!("NUMERIC({p},{scale})"),
        (ColumnType::Numeric { precision: None, .. }, true) => "NUMERIC".into(),
        (ColumnType::Date, true) => "DATE".into(),
        (ColumnType::Timestamp, true) => "TIMESTAMP".into(),
        (ColumnType::TimestampTz, true) => "TIMESTAMPTZ".into(),
        (ColumnType::Uuid, true) => "UUID".into(),
        (
            ColumnType::Json
            | ColumnType::Numeric { .. }
            | ColumnType::Date
            | ColumnType::Timestamp
            | ColumnType::TimestampTz
            | ColumnType::Uuid,
            false,
        ) => "TEXT".into(),
    }
}

/// Whether PostgreSQL receives the value as text and casts it (`$1::text::numeric`).
pub fn bound_as_text(ty: ColumnType) -> bool {
    matches!(
        ty,
        ColumnType::Numeric { .. } | ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz | ColumnType::Uuid
    )
}

/// Why a value does not fit its column's type: the end of a dead row's
/// reason, after the column and the value ("column `d` (date): \"May\" is
/// not a date ...").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Misfit {
    /// Not a decimal number (`numeric`).
    #[error("is not a decimal number")]
    NotDecimal,
    /// An exponent too large to write out.
    #[error("is out of range")]
    OutOfRange,
    /// More decimal places than the column's scale, not all zero.
    #[error("has more than {scale} decimal places (it would be rounded)")]
    Rounded {
        /// The column's scale.
        scale: usize,
    },
    /// More digits before the point than `numeric(p,s)` allows.
    #[error("does not fit numeric({precision},{scale}) (at most {} digits before the point)", .precision - .scale)]
    TooManyDigits {
        /// The column's precision.
        precision: usize,
        /// The column's scale.
        scale: usize,
    },
    /// A number of days that is not whole.
    #[error("is not a whole number of days since 1970-01-01")]
    NotWholeDays,
    /// An epoch time that is not a whole number.
    #[error("is not a whole number")]
    NotWhole,
    /// Neither days since 1970-01-01 nor date text.
    #[error("is not a date (days since 1970-01-01, or YYYY-MM-DD)")]
    NotDate,
    /// Text that is not a YYYY-MM-DD date.
    #[error("is not a date (YYYY-MM-DD)")]
    NotDateText,
    /// A date or time outside what the databases store.
    #[error("is outside the years 1 to 9999")]
    YearRange,
    /// Text that is not an ISO-8601 date-time.
    #[error("is not an ISO-8601 date-time such as 2024-05-01T12:30:00Z")]
    NotIso,
    /// Neither an epoch number nor date-time text.
    #[error("is not a timestamp (epoch number or ISO-8601 text)")]
    NotTimestamp,
    /// Not a UUID.
    #[error("is not a UUID")]
    NotUuid,
    /// Not text (`bytea` takes base64 text).
    #[error("is not base64 text")]
    NotBase64Text,
    /// Text that is not base64.
    #[error("is not base64 ({0})")]
    NotBase64(#[source] base64::DecodeError),
}

/// A decimal, exactly: from Debezium's `decimal.handling.mode=string` text
/// (or a JSON number, read from its text, never through a float), scaled to
/// the column. Digits that the scale would round away are refused, not rounded.
pub fn decimal(v: &Value, precision: Option<u32>, scale: u32) -> Result<String, Misfit> {
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return Err(Misfit::NotDecimal),
    };
    let bad = || Misfit::NotDecimal;
    let (negative, rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, &text[..]),
    };
    let (mantissa, exponent) = match rest.split_once(['e', 'E']) {
        Some((m, e)) => (m, e.parse::<i64>().map_err(|_| bad())?),
        None => (rest, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if (int.is_empty() && frac.is_empty()) || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if exponent.abs() > 10_000 {
        return Err(Misfit::OutOfRange);
    }
    // digits × 10^(point - len(digits))
    let digits: String = format!("{int}{frac}");
    let point = int.len() as i64 + exponent;
    let (mut int, mut frac) = if point <= 0 {
        (String::new(), format!("{}{digits}", "0".repeat((-point) as usize)))
    } else if point as usize >= digits.len() {
        (format!("{digits}{}", "0".repeat(point as usize - digits.len())), String::new())
    } else {
        (digits[..point as usize].to_string(), digits[point as usize..].to_string())
    };
    let int_trimmed = int.trim_start_matches('0');
    int = if int_trimmed.is_empty() { "0".into() } else { int_trimmed.into() };
    match precision {
        Some(p) => {
            let scale = scale as usize;
            if frac.len() > scale {
                if frac[scale..].bytes().any(|b| b != b'0') {
                    return Err(Misfit::Rounded { scale });
                }
                frac.truncate(scale);
            }
            frac.extend(std::iter::repeat_n('0', scale - frac.len()));
            let int_digits = if int == "0" { 0 } else { int.len() };
            if int_digits > p as usize - scale {
                return Err(Misfit::TooManyDigits { precision: p as usize, scale });
            }
        }
        None => frac = frac.trim_end_matches('0').to_string(),
    }
    let zero = int == "0" && frac.bytes().all(|b| b == b'0');
    let sign = if negative && !zero { "-" } else { "" };
    Ok(if frac.is_empty() { format!("{sign}{int}") } else { format!("{sign}{int}.{frac}") })
}

/// Years both databases and ISO-8601's plain form agree on.
const YEARS: std::ops::RangeInclusive<i64> = 1..=9999;
const MICROS_PER_DAY: i64 = 86_400_000_000;

fn parse_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = s[0..4].parse().ok()?;
    let m: u32 = s[5..7].parse().ok()?;
    let d: u32 = s[8..10].parse().ok()?;
    let days = days_from_civil(y, m, d);
    // Round trip: rejects 2024-02-30 and month 13.
    (civil_from_days(days) == (y, m, d) && YEARS.contains(&y)).then_some(days)
}

/// A `date`: Debezium's days since the epoch (`io.debezium.time.Date`), or ISO `YYYY-MM-DD`.
pub fn date(v: &Value) -> Result<String, Misfit> {
    let days = match v {
        Value::Number(n) => n.as_i64().ok_or(Misfit::NotWholeDays)?,
        Value::String(s) => parse_date(s.trim()).ok_or(Misfit::NotDateText)?,
        _ => return Err(Misfit::NotDate),
    };
    let (y, m, d) = civil_from_days(days.clamp(-10_000_000, 10_000_000));
    if !YEARS.contains(&y) {
        return Err(Misfit::YearRange);
    }
    Ok(format!("{y:04}-{m:02}-{d:02}"))
}

/// Microseconds since the epoch of an epoch number. Without a unit the
/// magnitude decides: below 10^14 milliseconds (until the year 5138),
/// below 10^17 microseconds, else nanoseconds. Micro- and nanosecond values
/// before March 1973 look like milliseconds: name the unit for those.
pub fn to_micros(n: i64, unit: Option<EpochUnit>) -> i64 {
    let unit = unit.unwrap_or(match n.unsigned_abs() {
        a if a < 100_000_000_000_000 => EpochUnit::Millis,
        a if a < 100_000_000_000_000_000 => EpochUnit::Micros,
        _ => EpochUnit::Nanos,
    });
    match unit {
        EpochUnit::Millis => n.saturating_mul(1000),
        EpochUnit::Micros => n,
        // PostgreSQL keeps microseconds; the nanoseconds below are dropped.
        EpochUnit::Nanos => n.div_euclid(1000),
    }
}

/// Microseconds since the epoch (UTC) of an ISO-8601 date-time:
/// `YYYY-MM-DD[Thh:mm[:ss[.fraction]]][Z|±hh[:mm]]` (`T` or a space); no
/// offset means UTC.
fn parse_iso(s: &str) -> Option<i64> {
    let days = parse_date(s.get(..10)?)?;
    let rest = &s[10..];
    if rest.is_empty() {
        return Some(days * MICROS_PER_DAY);
    }
    let rest = rest.strip_prefix(['T', 't', ' '])?;
    let b = rest.as_bytes();
    let two = |i: usize| -> Option<i64> {
        let d = b.get(i..i + 2)?;
        d.iter().all(u8::is_ascii_digit).then(|| i64::from((d[0] - b'0') * 10 + d[1] - b'0'))
    };
    let (h, mi) = (two(0)?, two(3)?);
    if b.get(2) != Some(&b':') || h > 23 || mi > 59 {
        return None;
    }
    let mut i = 5;
    let mut sec = 0;
    let mut micros = 0;
    if b.get(i) == Some(&b':') {
        sec = two(i + 1)?;
        if sec > 59 {
            return None;
        }
        i += 3;
        if b.get(i) == Some(&b'.') || b.get(i) == Some(&b',') {
            let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 || digits > 9 {
                return None;
            }
            let f = &rest[i + 1..i + 1 + digits];
            micros = format!("{f:0<6}")[..6].parse::<i64>().ok()?;
            i += 1 + digits;
        }
    }
    let offset_minutes = match &rest[i..] {
        "" | "Z" | "z" => 0,
        tz => {
            let sign = match tz.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let tz = tz[1..].replace(':', "");
            if tz.len() != 2 && tz.len() != 4 || !tz.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            let oh: i64 = tz[..2].parse().ok()?;
            let om: i64 = if tz.len() == 4 { tz[2..].parse().ok()? } else { 0 };
            if oh > 15 || om > 59 {
                return None;
            }
            sign * (oh * 60 + om)
        }
    };
    Some(days * MICROS_PER_DAY + ((h * 60 + mi - offset_minutes) * 60 + sec) * 1_000_000 + micros)
}

/// A `timestamp` or `timestamptz`, from an epoch number (see [`to_micros`])
/// or ISO-8601 text, as `YYYY-MM-DD hh:mm:ss[.ffffff]` in UTC (`+00:00`
/// appended for `timestamptz`). An ISO value with an offset is converted to UTC.
pub fn timestamp(v: &Value, unit: Option<EpochUnit>, zoned: bool) -> Result<String, Misfit> {
    let micros = match v {
        Value::Number(n) => to_micros(n.as_i64().ok_or(Misfit::NotWhole)?, unit),
        Value::String(s) => match s.trim().parse::<i64>() {
            Ok(n) => to_micros(n, unit),
            Err(_) => parse_iso(s.trim()).ok_or(Misfit::NotIso)?,
        },
        _ => return Err(Misfit::NotTimestamp),
    };
    let days = micros.div_euclid(MICROS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    if !YEARS.contains(&y) {
        return Err(Misfit::YearRange);
    }
    let t = micros.rem_euclid(MICROS_PER_DAY);
    let (s, us) = (t / 1_000_000, t % 1_000_000);
    let mut out = format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    if us != 0 {
        out.push_str(format!(".{us:06}").trim_end_matches('0'));
    }
    if zoned {
        out.push_str("+00:00");
    }
    Ok(out)
}

/// A `uuid`, as lowercase `8-4-4-4-12` hex (hyphens optional in the input).
pub fn uuid(v: &Value) -> Result<String, Misfit> {
    let Value::String(s) = v else { return Err(Misfit::NotUuid) };
    let s = s.trim();
    let hyphens_ok = s.len() == 32 || (s.len() == 36 && [8, 13, 18, 23].iter().all(|&i| s.as_bytes()[i] == b'-'));
    let hex: String = s.chars().filter(|&c| c != '-').collect();
    if !hyphens_ok || hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Misfit::NotUuid);
    }
    let h = hex.to_ascii_lowercase();
    Ok(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
}

/// A `bytea`: Debezium's `binary.handling.mode=base64` (standard alphabet, padded).
pub fn bytes(v: &Value) -> Result<Vec<u8>, Misfit> {
    let Value::String(s) = v else { return Err(Misfit::NotBase64Text) };
    base64::engine::general_purpose::STANDARD.decode(s.trim()).map_err(Misfit::NotBase64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn postgres_type_names_parse() {
        assert_eq!(parse_type("double precision"), Some(ColumnType::Double));
        assert_eq!(parse_type("timestamp with time zone"), Some(ColumnType::TimestampTz));
        assert_eq!(parse_type("TIMESTAMP  without time zone"), Some(ColumnType::Timestamp));
        assert_eq!(parse_type("character varying"), Some(ColumnType::Text));
        assert_eq!(parse_type("numeric(12, 2)"), Some(ColumnType::Numeric { precision: Some(12), scale: 2 }));
        assert_eq!(parse_type("numeric (5)"), Some(ColumnType::Numeric { precision: Some(5), scale: 0 }));
        assert_eq!(parse_type("numeric"), Some(ColumnType::Numeric { precision: None, scale: 0 }));
        assert_eq!(parse_type("numeric(2,3)"), None);
        assert_eq!(parse_type("money"), None);
    }

    #[test]
    fn decimals_are_exact_and_refuse_what_would_be_rounded_or_overflow() {
        assert_eq!(decimal(&json!("1234.5"), Some(12), 2).unwrap(), "1234.50");
        assert_eq!(decimal(&json!("9999999999.99"), Some(12), 2).unwrap(), "9999999999.99");
        assert_eq!(decimal(&json!("0.1"), Some(3), 2).unwrap(), "0.10");
        assert_eq!(decimal(&json!(0.1), Some(3), 2).unwrap(), "0.10", "a JSON number is read from its text");
        assert_eq!(decimal(&json!("-0.00"), Some(3), 2).unwrap(), "0.00");
        assert_eq!(decimal(&json!("1.5e3"), Some(6), 1).unwrap(), "1500.0");
        assert_eq!(decimal(&json!("12345678901234567890.123456789"), None, 0).unwrap(), "12345678901234567890.123456789");
        assert_eq!(decimal(&json!("1.200"), Some(4), 1).unwrap(), "1.2");
        assert_eq!(decimal(&json!("1.234"), Some(12), 2), Err(Misfit::Rounded { scale: 2 }));
        assert_eq!(
            decimal(&json!("1.234"), Some(12), 2).unwrap_err().to_string(),
            "has more than 2 decimal places (it would be rounded)"
        );
        assert_eq!(
            decimal(&json!("10000000000"), Some(12), 2).unwrap_err().to_string(),
            "does not fit numeric(12,2) (at most 10 digits before the point)"
        );
        assert!(decimal(&json!("12a"), None, 0).is_err());
        assert!(decimal(&json!("."), None, 0).is_err());
        assert!(decimal(&json!(true), None, 0).is_err());
    }

    #[test]
    fn dates_from_days_and_iso() {
        assert_eq!(date(&json!(0)).unwrap(), "1970-01-01");
        assert_eq!(date(&json!(19_723)).unwrap(), "2024-01-01");
        assert_eq!(date(&json!(-1)).unwrap(), "1969-12-31");
        assert_eq!(date(&json!("2024-02-29")).unwrap(), "2024-02-29");
        assert!(date(&json!("2023-02-29")).is_err());
        assert!(date(&json!("2024-13-01")).is_err());
        assert_eq!(date(&json!(3_000_000)), Err(Misfit::YearRange));
        for days in [-719_162i64, -1, 0, 59, 60, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn timestamps_by_magnitude_unit_and_iso() {
        let ms = 1_714_566_600_123i64; // 2024-05-01 12:30:00.123 UTC
        assert_eq!(timestamp(&json!(ms), None, false).unwrap(), "2024-05-01 12:30:00.123");
        assert_eq!(timestamp(&json!(ms * 1000 + 456), None, false).unwrap(), "2024-05-01 12:30:00.123456");
        assert_eq!(timestamp(&json!(ms * 1_000_000 + 456_789), None, true).unwrap(), "2024-05-01 12:30:00.123456+00:00");
        assert_eq!(timestamp(&json!(1_000_000), Some(EpochUnit::Micros), false).unwrap(), "1970-01-01 00:00:01");
        assert_eq!(timestamp(&json!(1_000_000), None, false).unwrap(), "1970-01-01 00:16:40", "small numbers are millis");
        assert_eq!(timestamp(&json!(-1), None, false).unwrap(), "1969-12-31 23:59:59.999");
        assert_eq!(timestamp(&json!("2024-05-01T12:30:00Z"), None, true).unwrap(), "2024-05-01 12:30:00+00:00");
        assert_eq!(timestamp(&json!("2024-05-01T14:30:00.5+02:00"), None, true).unwrap(), "2024-05-01 12:30:00.5+00:00");
        assert_eq!(timestamp(&json!("2024-05-01 12:30"), None, false).unwrap(), "2024-05-01 12:30:00");
        assert_eq!(timestamp(&json!("2024-05-01"), None, false).unwrap(), "2024-05-01 00:00:00");
        assert_eq!(timestamp(&json!("1714566600123"), None, false).unwrap(), "2024-05-01 12:30:00.123");
        for bad in ["2024-05-01T25:00:00Z", "2024-05-01T12:30:00+2", "yesterday", "2024-05-01T12:30:61"] {
            assert!(timestamp(&json!(bad), None, true).is_err(), "{bad}");
        }
        assert!(timestamp(&json!(i64::MAX), Some(EpochUnit::Millis), false).unwrap_err().to_string().contains("years"));
    }

    #[test]
    fn uuids_and_bytes() {
        assert_eq!(uuid(&json!("A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11")).unwrap(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert_eq!(uuid(&json!("a0eebc999c0b4ef8bb6d6bb9bd380a11")).unwrap(), "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
        assert!(uuid(&json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1")).is_err());
        assert!(uuid(&json!("g0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")).is_err());
        assert_eq!(bytes(&json!("AAEC/w==")).unwrap(), vec![0, 1, 2, 255]);
        assert!(bytes(&json!("not base64!")).is_err());
    }
}
