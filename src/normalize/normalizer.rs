//! [`SourceNormalizer`]: the steps every format shares once its envelope is
//! parsed, in order: the `where` filter, the transform, the canonical key,
//! the timestamp fallback and the clock (derived from the offset or a
//! sequence field, or carried in a column). Apart from the format adapters
//! and the record types, so the order of the steps reads top to bottom.

use serde_json::Value;

use super::key::{record_key, within_limit};
use super::{
    json_kind, origin, DebeziumAvro, DebeziumJson, FilterCounts, FlatJson, Format, InputRecord, NormalizeError,
    NormalizeErrorKind, Normalized, Parsed, RawChange, RawOp,
};
use crate::config::{SourceConfig, SourceFormat};
use crate::merge::{ChangeEvent, Op, Policy, Row, VersionVector};
use crate::transform::{Filter, Image, Transform};

/// `debezium-avro` without a registry: every record is an error saying so.
#[derive(Debug)]
struct NoRegistry;

impl Format for NoRegistry {
    fn name(&self) -> &'static str {
        "debezium-avro"
    }
    fn decodes_key(&self) -> bool {
        true
    }
    fn parse(&self, _: &InputRecord<'_>, _: Option<&[String]>) -> Result<Option<RawChange>, NormalizeErrorKind> {
        Err(NormalizeErrorKind::BadValue {
            format: "debezium-avro",
            detail: "no schema registry is available here ([schema_registry] is required; `replay` reads JSON sources only)"
                .into(),
        })
    }
}

/// Normalizes the records of one configured source.
#[derive(Debug)]
pub struct SourceNormalizer {
    name: String,
    format: Box<dyn Format>,
    sequence: Option<(String, Vec<String>)>,
    clock_field: Option<String>,
    key_fields: Option<Vec<String>>,
    /// Whether upserts need their `before` image: only `field-lww` reads it
    /// (changed-column detection). Deletes always keep theirs (key fields,
    /// carried clocks).
    upsert_before: bool,
    /// `[sources.transform]`, compiled.
    transform: Option<Transform>,
    /// `[sources.where]`, compiled, with its counts.
    filter: Option<(Filter, FilterCounts)>,
    /// The source is read from its repartition topic: each record stands
    /// for the original named by its origin headers (see [`origin`]).
    repartitioned: bool,
    /// Updates carry their whole `before` image, not only what changed
    /// ([`Format::parse_changes`]): for showing the images as they came.
    whole_before: bool,
}

impl SourceNormalizer {
    /// Builds the normalizer of a configured source for the merge `policy`
    /// in force. Events are the same under every policy except that row-level
    /// policies (`lww`, `source-priority`), which never read an upsert's
    /// `before` image, get upserts without it ([`ChangeEvent::full_image`]
    /// still reflects whether the record had one).
    pub fn new(config: &SourceConfig, policy: Policy) -> Self {
        Self::with_avro(config, policy, None)
    }

    /// [`new`](Self::new), with the registry and schema catalog that
    /// `debezium-avro` sources need. Without them such a source dead-letters
    /// every record, naming the missing `[schema_registry]`.
    pub fn with_avro(config: &SourceConfig, policy: Policy, avro: Option<&crate::avro::AvroContext>) -> Self {
        let format: Box<dyn Format> = match (config.format, avro) {
            (SourceFormat::DebeziumJson, _) => Box::new(DebeziumJson),
            (SourceFormat::Json, _) => Box::new(FlatJson::new(config.ts_field.as_deref(), &config.deleted_field)),
            (SourceFormat::DebeziumAvro, Some(ctx)) => {
                Box::new(DebeziumAvro::new(&config.name, ctx.registry.clone(), ctx.catalog.clone()))
            }
            (SourceFormat::DebeziumAvro, None) => Box::new(NoRegistry),
        };
        Self {
            name: config.name.clone(),
            format,
            sequence: config.sequence.as_ref().map(|p| (p.clone(), p.split('.').map(String::from).collect())),
            clock_field: config.clock_field.clone(),
            key_fields: config.key_fields.clone(),
            upsert_before: policy == Policy::FieldLww,
            // The configuration's checks compiled both already and listed
            // every problem; a configuration that skipped them fails here.
            transform: config.transform.as_ref().map(|spec| {
                Transform::compile(spec).unwrap_or_else(|p| panic!("source {}: invalid transform: {p:?}", config.name))
            }),
            filter: config.filter.as_ref().map(|spec| {
                let filter = Filter::compile(spec).unwrap_or_else(|p| panic!("source {}: invalid where: {p:?}", config.name));
                (filter, FilterCounts::default())
            }),
            repartitioned: false,
            whole_before: false,
        }
    }

    /// Gives every update its whole `before` image, where the merge needs
    /// only the before values of the columns it changed
    /// ([`ChangeEvent::changed`]): for showing the images (`replay`'s
    /// transform preview).
    pub fn whole_before(mut self) -> Self {
        self.whole_before = true;
        self
    }

    /// Reads the source from its repartition topic: a record's origin
    /// headers give the offset for the derived clock and the key that key
    /// extraction sees, so the event is the one the original record gives.
    /// Only a source marked so honours those headers; on any other topic
    /// they are just headers.
    pub fn repartitioned(mut self) -> Self {
        self.repartitioned = true;
        self
    }

    /// True when the source is read from its repartition topic.
    pub fn is_repartitioned(&self) -> bool {
        self.repartitioned
    }

    /// The counts of the source's `where` filter, when it has one.
    pub fn filter_counts(&self) -> Option<&FilterCounts> {
        self.filter.as_ref().map(|(_, counts)| counts)
    }

    /// The source's compiled transformation, when it has one.
    pub fn transform(&self) -> Option<&Transform> {
        self.transform.as_ref()
    }

    /// The source name.
    pub fn source(&self) -> &str {
        &self.name
    }

    /// Normalizes one record. A repartitioned source's errors name the
    /// original record's position: the repartition record is deleted once
    /// consumed, the original stays where the user can find it.
    pub fn normalize(&self, record: &InputRecord<'_>) -> Result<Normalized, NormalizeError> {
        let error =
            |at: &InputRecord<'_>, kind| NormalizeError { position: at.into(), source_name: Some(self.name.clone()), kind };
        if self.repartitioned {
            let original = origin::original(record).map_err(|kind| error(record, kind))?;
            return self.normalize_inner(&original, true).map_err(|kind| error(&original, kind));
        }
        self.normalize_inner(record, true).map_err(|kind| error(record, kind))
    }

    /// The canonical key `record` merges under, for re-keying it: what
    /// [`normalize`](Self::normalize) would put in the event's `key`, or
    /// the error it would give. `Ok(None)`: the record merges nothing (a
    /// tombstone, or dropped by the `where` filter), so any key will do.
    /// Filter counts are left alone: the record is counted where it is
    /// normalized.
    pub fn canonical_key(&self, record: &InputRecord<'_>) -> Result<Option<String>, NormalizeErrorKind> {
        // Without key_fields, a JSON format's key is the record key alone:
        // no need to parse the value. Errors take the long way, which
        // reports what normalizing would (a filtered record is no error).
        if self.key_fields.is_none() && !self.format.decodes_key() {
            if let Ok(key) = self.record_key_image(record).and_then(within_limit) {
                return Ok(Some(key));
            }
        }
        match self.normalize_inner(record, false)? {
            Normalized::Event(e) => Ok(Some(e.key)),
            Normalized::Tombstone | Normalized::Filtered => Ok(None),
        }
    }

    /// The record key, canonical, through the transform's key steps.
    fn record_key_image(&self, record: &InputRecord<'_>) -> Result<String, NormalizeErrorKind> {
        let key = record_key(record)?;
        if self.transform.is_none() {
            return Ok(key);
        }
        let row = serde_json::from_str::<Row>(&key).map_err(|e| NormalizeErrorKind::BadKey(e.to_string()))?;
        Ok(Value::Object(self.key_image(row)?).to_string())
    }

    /// True when nothing here reads or changes the `after` image's columns
    /// (no filter, transform, carried clock or key fields) and the policy
    /// merges whole rows: the format may then give the image as its
    /// canonical text, which the state and the output hold it as anyway.
    /// (Only a matter of speed: a map is made from the text when read.)
    fn after_as_text(&self) -> bool {
        !self.upsert_before
            && self.filter.is_none()
            && self.transform.is_none()
            && self.clock_field.is_none()
            && self.key_fields.is_none()
    }

    /// `count`: whether the `where` filter's counts take the record.
    fn normalize_inner(&self, record: &InputRecord<'_>, count: bool) -> Result<Normalized, NormalizeErrorKind> {
        let seq_path = self.sequence.as_ref().map(|(_, p)| p.as_slice());
        let parsed = if self.after_as_text() {
            self.format.parse_text(record, seq_path, self.upsert_before)?
        } else if self.upsert_before && self.transform.is_none() && !self.whole_before {
            // The transform changes both images column by column: it gets maps.
            self.format.parse_changes(record, seq_path)?
        } else {
            self.format.parse_lean(record, seq_path, self.upsert_before)?
        };
        let Some(Parsed { mut raw, had_before, mut changed }) = parsed else {
            return Ok(Normalized::Tombstone);
        };
        let op = match raw.op {
            RawOp::Delete => Op::Delete,
            _ => Op::Upsert,
        };
        if op == Op::Upsert && raw.after.is_none() {
            return Err(NormalizeErrorKind::MissingAfter(format!("{:?}", raw.op).to_lowercase()));
        }
        if let Some((filter, counts)) = &self.filter {
            let row = if op == Op::Upsert { raw.after.as_deref() } else { raw.before.as_ref() };
            let keep = filter.keeps(row, op == Op::Delete);
            if count {
                let n = if keep { &counts.matched } else { &counts.dropped };
                n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            if !keep {
                return Ok(Normalized::Filtered);
            }
        }
        if let Some(t) = &self.transform {
            let failed = |error| NormalizeErrorKind::Transform { source_name: self.name.clone(), error: Box::new(error) };
            if let Some(after) = raw.after.as_mut() {
                t.apply(after, Image::After).map_err(failed)?;
            }
            if let Some(before) = raw.before.as_mut() {
                t.apply(before, Image::Before).map_err(failed)?;
            }
        }
        let key = within_limit(self.key(record, &raw)?)?;
        let ts = match raw.ts {
            Some(ts) => commit_time(self.format.ts_path(), ts)?,
            None => match record.timestamp.filter(|t| *t >= 0) {
                Some(ts) => commit_time("<kafka record timestamp>", ts)?,
                None => return Err(NormalizeErrorKind::MissingTimestamp),
            },
        };
        let vv = match &self.clock_field {
            Some(field) => {
                // Carried: the clock column is metadata. Take it out of both
                // images so it never takes part in comparisons or merges.
                if let (Some(changed), Some(after)) = (changed.as_mut(), raw.after.as_deref()) {
                    if let Some(index) = after.keys().position(|k| k == field) {
                        changed.remove(index);
                    }
                }
                let after_clock = raw.after.as_mut().and_then(|r| r.remove(field));
                let before_clock = raw.before.as_mut().and_then(|r| r.remove(field));
                match op {
                    Op::Upsert => parse_clock(field, after_clock.as_ref(), "the after image")?,
                    Op::Delete => {
                        if raw.before.is_none() {
                            return Err(NormalizeErrorKind::BadClock {
                                field: field.clone(),
                                problem:
                                    "a delete needs the before image to carry its clock (set REPLICA IDENTITY FULL on the table)"
                                        .into(),
                            });
                        }
                        let mut vv = parse_clock(
                            field,
                            before_clock.as_ref(),
                            "the before image (a delete's before image must hold every column: REPLICA IDENTITY FULL)",
                        )?;
                        let own = vv.get(&self.name).checked_add(1).ok_or_else(|| NormalizeErrorKind::BadClock {
                            field: field.clone(),
                            problem: format!("entry \"{}\" is at the largest counter and cannot be incremented", self.name),
                        })?;
                        vv.set(&self.name, own);
                        vv
                    }
                }
            }
            None => {
                let seq = match &self.sequence {
                    None => u64::try_from(record.offset).ok().map(|o| o + 1).ok_or_else(|| NormalizeErrorKind::BadSequence {
                        path: "<kafka offset>".into(),
                        problem: "negative offset".into(),
                    })?,
                    Some((path, _)) => parse_sequence(path, raw.sequence.as_ref())?,
                };
                VersionVector::single(&self.name, seq)
            }
        };
        let full_image = matches!(raw.op, RawOp::Create | RawOp::Read) || !had_before;
        Ok(Normalized::Event(ChangeEvent {
            source: self.name.clone(),
            key,
            op,
            row: if op == Op::Upsert { raw.after } else { None },
            before: raw.before,
            full_image,
            changed,
            ts,
            vv,
        }))
    }

    /// The canonical key: configured row fields, or the record key's fields,
    /// as a JSON object with sorted names and no whitespace.
    fn key(&self, record: &InputRecord<'_>, raw: &RawChange) -> Result<String, NormalizeErrorKind> {
        if let Some(fields) = &self.key_fields {
            // A delete without a before image still has the record key: pick
            // the same fields from it, so both paths give the same key.
            let from_key;
            let row = match raw.after.as_deref().or(raw.before.as_ref()) {
                Some(row) => row,
                None => {
                    let text = match &raw.key {
                        Some(k) => k.clone(),
                        None => record_key(record)?,
                    };
                    from_key = self
                        .key_image(serde_json::from_str::<Row>(&text).map_err(|e| NormalizeErrorKind::BadKey(e.to_string()))?)?;
                    &from_key
                }
            };
            let mut key = Row::new();
            for f in fields {
                let v = row.get(f).ok_or_else(|| NormalizeErrorKind::MissingKeyField(f.clone()))?;
                key.insert(f.clone(), v.clone());
            }
            return Ok(Value::Object(key).to_string());
        }
        let key = match &raw.key {
            Some(k) => k.clone(),
            None => return self.record_key_image(record),
        };
        if self.transform.is_none() {
            return Ok(key);
        }
        // The record key's fields get the row's names and types, so every
        // source's key of one entity is the same text.
        let row = serde_json::from_str::<Row>(&key).map_err(|e| NormalizeErrorKind::BadKey(e.to_string()))?;
        Ok(Value::Object(self.key_image(row)?).to_string())
    }

    /// A record key's fields through the transform's per-column steps.
    fn key_image(&self, mut row: Row) -> Result<Row, NormalizeErrorKind> {
        if let Some(t) = &self.transform {
            t.apply(&mut row, Image::Key)
                .map_err(|error| NormalizeErrorKind::Transform { source_name: self.name.clone(), error: Box::new(error) })?;
        }
        Ok(row)
    }
}

/// The earliest commit time taken: 0001-01-01T00:00:00Z, in ms.
pub(super) const MIN_TS_MS: i64 = -62_135_596_800_000;
/// The latest commit time taken: 9999-12-31T23:59:59.999Z, in ms.
pub(super) const MAX_TS_MS: i64 = 253_402_300_799_999;

/// `ts` (ms since the epoch) when it is a time between the years 1 and
/// 9999. Anything else is not a commit time in milliseconds (most often one
/// in micro- or nanoseconds: Debezium's `ts_us`, `ts_ns`); taken, it would
/// outrank every real write under `lww`, and the age arithmetic at emit
/// overflows on values near `i64::MIN`.
fn commit_time(path: &str, ts: i64) -> Result<i64, NormalizeErrorKind> {
    if (MIN_TS_MS..=MAX_TS_MS).contains(&ts) {
        return Ok(ts);
    }
    Err(NormalizeErrorKind::BadTimestamp {
        path: path.to_string(),
        problem: format!(
            "{ts} is not a time between the years 1 and 9999 in milliseconds since the epoch{}",
            if ts > MAX_TS_MS { " (micro- or nanoseconds?)" } else { "" }
        ),
    })
}

/// A carried clock: a JSON object of non-negative integers, or a string holding one.
fn parse_clock(field: &str, value: Option<&Value>, image: &str) -> Result<VersionVector, NormalizeErrorKind> {
    let bad = |problem: String| NormalizeErrorKind::BadClock { field: field.to_string(), problem };
    let value = value.ok_or_else(|| bad(format!("missing from {image}")))?;
    let parsed;
    let object = match value {
        Value::Object(o) => o,
        Value::String(s) => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| bad(format!("the string is not JSON: {e}")))?;
            parsed.as_object().ok_or_else(|| bad(format!("expected a JSON object, found {}", json_kind(&parsed))))?
        }
        other => return Err(bad(format!("expected a JSON object or a string holding one, found {}", json_kind(other)))),
    };
    let mut vv = VersionVector::new();
    for (source, counter) in object {
        let n =
            counter.as_u64().ok_or_else(|| bad(format!("entry \"{source}\" is {counter}, expected a non-negative integer")))?;
        vv.set(source, n);
    }
    if vv.is_empty() {
        return Err(bad("the clock is empty; every write must count at least itself".into()));
    }
    Ok(vv)
}

/// A sequence value: a positive integer (or a string of digits).
fn parse_sequence(path: &str, value: Option<&Value>) -> Result<u64, NormalizeErrorKind> {
    let bad = |problem: String| NormalizeErrorKind::BadSequence { path: path.to_string(), problem };
    let n = match value {
        None | Some(Value::Null) => return Err(bad("missing".into())),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(|| bad(format!("{n} is not a positive integer")))?,
        Some(Value::String(s)) => s.parse::<u64>().map_err(|_| bad(format!("\"{s}\" is not a positive integer")))?,
        Some(other) => return Err(bad(format!("expected a positive integer, found {}", json_kind(other)))),
    };
    if n == 0 {
        return Err(bad("must be positive (zero means \"nothing seen\")".into()));
    }
    Ok(n)
}
