//! Records read back from a repartition topic. Re-keying writes each record
//! of a source that is not co-partitioned with its table to the table's
//! repartition topic for the source, with its value and headers as they
//! were and headers naming where it came from. Normalizing it as the
//! original record it stands for makes the detour invisible to the merge:
//! the derived clock counts the original offset, and key extraction sees
//! the original key.

use super::{InputRecord, NormalizeErrorKind};

/// The original record's topic (UTF-8).
pub const ORIGIN_TOPIC_HEADER: &str = "tributary.origin.topic";
/// The original record's partition (decimal text).
pub const ORIGIN_PARTITION_HEADER: &str = "tributary.origin.partition";
/// The original record's offset (decimal text).
pub const ORIGIN_OFFSET_HEADER: &str = "tributary.origin.offset";
/// The original record's key bytes; absent when the key was null.
pub const ORIGIN_KEY_HEADER: &str = "tributary.origin.key";

/// The original record `record` (read from a repartition topic) stands for:
/// its topic, partition, offset and key from the origin headers, with
/// `record`'s value, timestamp and headers. Where a header appears more than
/// once the last counts: re-keying appends its own after the original
/// record's headers, which might carry some of the same name.
pub(crate) fn original<'a>(record: &InputRecord<'a>) -> Result<InputRecord<'a>, NormalizeErrorKind> {
    let last = |name: &str| record.headers.iter().rev().find(|(n, _)| *n == name).map(|(_, v)| *v);
    let text = |name: &str| -> Result<&'a str, NormalizeErrorKind> {
        let bytes = last(name).ok_or_else(|| NormalizeErrorKind::BadOrigin(format!("header {name} is missing")))?;
        std::str::from_utf8(bytes).map_err(|_| NormalizeErrorKind::BadOrigin(format!("header {name} is not UTF-8")))
    };
    let number = |name: &str| -> Result<i64, NormalizeErrorKind> {
        let t = text(name)?;
        t.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| NormalizeErrorKind::BadOrigin(format!("header {name} is {t:?}, not a non-negative integer")))
    };
    let partition = number(ORIGIN_PARTITION_HEADER)?;
    Ok(InputRecord {
        topic: text(ORIGIN_TOPIC_HEADER)?,
        partition: i32::try_from(partition).map_err(|_| {
            NormalizeErrorKind::BadOrigin(format!("header {ORIGIN_PARTITION_HEADER} is {partition}, out of range"))
        })?,
        offset: number(ORIGIN_OFFSET_HEADER)?,
        timestamp: record.timestamp,
        key: last(ORIGIN_KEY_HEADER),
        value: record.value,
        headers: record.headers,
    })
}
