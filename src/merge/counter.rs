//! The `counter` column rule: concurrent deltas add up.
//!
//! A counter column's value is its initial value (the latest visible
//! create, by the `lww` order) plus every source's net delta, where a
//! source's delta is `after - before` of each of its writes that *counts*.
//! A write counts when its own clock entry is above the highest entry of
//! that source seen so far for the key. An echo of a merged record that a
//! region applied does not advance the region's own entry, so it adds
//! nothing; a region's next real write does, and its `before` already holds
//! everything it had seen, so `after - before` is exactly its own change.
//! Because each source's events arrive in their own order, which writes
//! count is fixed by that order alone, whatever the interleaving with other
//! sources. `doc/DESIGN.md` ("Counters") has the argument in full.
//!
//! A delete hides the deltas it had seen (per source: those at or below the
//! delete's entry for that source), as it hides every other column write.
//! Deltas no later delete can split are summed into one entry, so a
//! source's list stays short (see [`MergeEngine::compact_counter`]).
//!
//! Amounts are exact decimals (`i128` units and a scale), so decimal
//! columns add up without float error and integers stay integers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ChangeEvent, ColumnWrite, FieldState, FieldVersion, Insert, MergeEngine, Op, VersionVector};

/// The state of one `counter` column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    /// The counted creates (initial values), the maximal ones by clock;
    /// the value starts from the latest visible one by the `lww` order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creates: Vec<FieldVersion>,
    /// Per source, what its events did to the column.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tallies: BTreeMap<String, Tally>,
}

/// One source's part of a `counter` column.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    /// The join of the clocks of every event of this source on the key. Its
    /// own entry is the highest seen: a later write counts only above it.
    /// Its other entries bound where this source's later deletes can cut
    /// other sources' deltas (each source's clocks grow).
    pub seen: VersionVector,
    /// The source's last event on the key was a delete, so an insert from it
    /// (a full image without `before`) is a re-create.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The counted deltas no delete has hidden, ascending by the writing
    /// event's own clock entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Delta>,
}

/// A counted change of a `counter` column, or the sum of several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// The writing event's own clock entry (of the last write summed here).
    pub at: u64,
    /// The amount as exact decimal text (`-12.50`).
    pub amount: String,
}

/// Why the merge engine refuses an event: it goes to the dead-letter topic
/// with this reason, and the key's state is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// A `counter` column holds something other than a number.
    #[error(
        "column `{column}` has rule \"counter\" but the {image} image holds {value}, which is not a number (nor a string holding a decimal number) of at most 38 digits"
    )]
    CounterNotNumeric {
        /// The column.
        column: String,
        /// `after` or `before`.
        image: &'static str,
        /// The value, as JSON (its first 120 bytes or so, when longer).
        value: String,
    },
    /// An update of a `counter` column without the value it had before.
    #[error(
        "column `{column}` has rule \"counter\": {problem}, so the amount this update added is unknown; Debezium sends an update's before image with every column only when the table has REPLICA IDENTITY FULL (PostgreSQL; supplemental logging of all columns on Oracle, binlog_row_image=FULL on MySQL)"
    )]
    CounterNeedsBefore {
        /// The column.
        column: String,
        /// What is missing.
        problem: &'static str,
    },
}

impl Refusal {
    /// A short, bounded label for metrics and the `tributary.error.reason` header.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::CounterNotNumeric { .. } => "counter_not_numeric",
            Refusal::CounterNeedsBefore { .. } => "counter_needs_before",
        }
    }
}

/// An exact decimal: `units / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Amount {
    units: i128,
    scale: u32,
}

/// The most fraction digits kept; more would leave too few for the integer part.
const MAX_SCALE: u32 = 18;

impl Amount {
    pub(super) const ZERO: Amount = Amount { units: 0, scale: 0 };

    /// A column value as an amount: a JSON number, a string holding a
    /// decimal number (Debezium's `decimal.handling.mode=string`), or null (0).
    pub(super) fn of(value: &Value) -> Option<Amount> {
        match value {
            Value::Null => Some(Amount::ZERO),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Some(Amount { units: i128::from(i), scale: 0 }),
                (None, Some(u)) => Some(Amount { units: i128::from(u), scale: 0 }),
                // A float prints as the shortest text that reads back as
                // itself: `0.1` is the decimal 0.1, not its binary neighbour.
                _ => Amount::parse(&n.to_string()),
            },
            Value::String(s) => Amount::parse(s.trim()),
            _ => None,
        }
    }

    /// Decimal text: sign, digits, optional fraction, optional exponent.
    pub(super) fn parse(text: &str) -> Option<Amount> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let mut units: i128 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            units = units.checked_mul(10)?.checked_add(i128::from(b - b'0'))?;
        }
        let mut scale = i64::try_from(frac.len()).ok()? - i64::from(exponent);
        if units == 0 {
            // What the loops below give, without up to 2^31 steps of them.
            scale = scale.clamp(0, i64::from(MAX_SCALE));
        }
        while scale < 0 {
            units = units.checked_mul(10)?;
            scale += 1;
        }
        // Trailing zeros beyond what fits say nothing.
        while scale > i64::from(MAX_SCALE) {
            if units % 10 != 0 {
                return None;
            }
            units /= 10;
            scale -= 1;
        }
        Some(Amount { units: if negative { -units } else { units }, scale: u32::try_from(scale).ok()? })
    }

    fn rescaled(self, scale: u32) -> Option<i128> {
        self.units.checked_mul(10i128.checked_pow(scale - self.scale)?)
    }

    /// The exact sum; `None` beyond 38 digits.
    pub(super) fn checked_add(self, other: Amount) -> Option<Amount> {
        let scale = self.scale.max(other.scale);
        Some(Amount { units: self.rescaled(scale)?.checked_add(other.rescaled(scale)?)?, scale })
    }

    /// The exact difference; `None` beyond 38 digits.
    pub(super) fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.checked_add(Amount { units: other.units.checked_neg()?, scale: other.scale })
    }

    pub(super) fn is_zero(self) -> bool {
        self.units == 0
    }

    /// Decimal text with `scale` fraction digits (`-0.50`, `12`).
    pub(super) fn text(self) -> String {
        let digits = self.units.unsigned_abs().to_string();
        let sign = if self.units < 0 { "-" } else { "" };
        let scale = self.scale as usize;
        if scale == 0 {
            return format!("{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        format!("{sign}{int}.{frac}")
    }

    /// The column value: JSON text when the row holds the column as a
    /// string, else a number (an integer when the scale is 0, which every
    /// integer input keeps; the nearest double otherwise).
    pub(super) fn to_value(self, as_string: bool) -> Value {
        let text = self.text();
        if as_string {
            return Value::String(text);
        }
        if self.scale == 0 {
            if let Ok(i) = i64::try_from(self.units) {
                return Value::from(i);
            }
            if let Ok(u) = u64::try_from(self.units) {
                return Value::from(u);
            }
        }
        text.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map_or(Value::String(text), Value::Number)
    }
}

/// A stored amount (written by [`Amount::text`]).
fn stored(delta: &Delta) -> Amount {
    Amount::parse(&delta.amount).unwrap_or(Amount::ZERO)
}

/// What one event does to one counter column, decided before anything changes.
pub(super) enum CounterWrite {
    /// Nothing to count (the event does not write the column, or it is an
    /// echo or a redelivery).
    Nothing,
    /// An insert: a new initial value.
    Create(Value),
    /// An update that changed the column by this amount.
    Delta(Amount),
}

impl MergeEngine {
    /// Decides what `event` does to the `counter` column `column`, or why it
    /// cannot be merged. Reads the state only.
    pub(super) fn counter_write(&self, fields: &FieldState, column: &str, event: &ChangeEvent) -> Result<CounterWrite, Refusal> {
        let tally = fields.counters.get(column).and_then(|c| c.tallies.get(&event.source));
        let own = event.vv.get(&event.source);
        if event.op == Op::Delete || own <= tally.map_or(0, |t| t.seen.get(&event.source)) {
            return Ok(CounterWrite::Nothing);
        }
        let Some(after) = event.row.as_ref().and_then(|r| r.get(column)) else { return Ok(CounterWrite::Nothing) };
        let number = |value: &Value, image: &'static str| {
            Amount::of(value).ok_or_else(|| Refusal::CounterNotNumeric { column: column.to_owned(), image, value: shown(value) })
        };
        let new = number(after, "after")?;
        if event.full_image {
            // No `before`: an insert or snapshot read is a create when the
            // source has not had the row (never, or not since its own delete).
            // Otherwise it is an update whose delta cannot be known.
            if tally.is_none_or(|t| t.deleted) {
                return Ok(CounterWrite::Create(after.clone()));
            }
            return Err(Refusal::CounterNeedsBefore {
                column: column.to_owned(),
                problem: "the update has no before image (or is a repeated snapshot read of a row the source already had)",
            });
        }
        let old = match event.before_value(column) {
            Some(Some(before)) => number(before, "before")?,
            Some(None) => {
                return Err(Refusal::CounterNeedsBefore {
                    column: column.to_owned(),
                    problem: "the update's before image lacks the column",
                })
            }
            None => new, // unchanged: the decoder kept no copy
        };
        let delta = new.checked_sub(old).ok_or_else(|| Refusal::CounterNotNumeric {
            column: column.to_owned(),
            image: "after",
            value: shown(after),
        })?;
        Ok(CounterWrite::Delta(delta))
    }

    /// Applies a decided write and the event's clock to a counter column;
    /// true when the column's value may have changed.
    pub(super) fn apply_counter(&self, fields: &mut FieldState, column: &str, event: &ChangeEvent, write: CounterWrite) -> bool {
        let cut = cut(&fields.cleared, &event.source);
        let counter = match fields.counters.get_mut(column) {
            Some(c) => c,
            None => fields.counters.entry(column.to_owned()).or_default(),
        };
        let mut changed = false;
        let own = event.vv.get(&event.source);
        match write {
            CounterWrite::Nothing => {}
            CounterWrite::Create(value) => {
                let create = FieldVersion { source: event.source.clone(), vv: event.vv.clone(), ts: event.ts, value };
                changed |= self.insert(&mut counter.creates, create) == Insert::Added;
            }
            CounterWrite::Delta(amount) => {
                if !amount.is_zero() && own > cut {
                    let tally = counter.tallies.entry(event.source.clone()).or_default();
                    tally.deltas.push(Delta { at: own, amount: amount.text() });
                    changed = true;
                }
            }
        }
        let tally = match counter.tallies.get_mut(&event.source) {
            Some(t) => t,
            None => counter.tallies.entry(event.source.clone()).or_default(),
        };
        tally.seen.join(&event.vv);
        tally.deleted = event.op == Op::Delete;
        changed
    }

    /// Drops the deltas a delete has seen and sums those no later delete can
    /// split; true when a delta was dropped (the value changed).
    ///
    /// A later delete by source `t` has a clock at least `t`'s seen clock
    /// (each source's clocks grow), so it cuts source `s`'s deltas at or
    /// above `seen_t[s]`: every delta at or below the smallest such bound
    /// over the other sources goes or stays together, and one entry holds
    /// their sum. A source's own later delete cuts above all its deltas.
    /// With derived clocks no source's delete cuts another's deltas, so all
    /// of a source's deltas are summed.
    pub(super) fn compact_counter(&self, fields: &mut FieldState, column: &str) -> bool {
        let Some(counter) = fields.counters.get_mut(column) else { return false };
        let carried = self.settings.clock_field.is_some();
        let mut dropped = false;
        let floors: Vec<(String, u64)> = counter
            .tallies
            .keys()
            .map(|s| {
                let floor = if !carried {
                    u64::MAX
                } else {
                    self.settings
                        .priorities
                        .keys()
                        .chain(counter.tallies.keys())
                        .filter(|t| *t != s)
                        .map(|t| counter.tallies.get(t).map_or(0, |tally| tally.seen.get(s)))
                        .min()
                        .unwrap_or(u64::MAX)
                };
                (s.clone(), floor)
            })
            .collect();
        for (source, floor) in floors {
            let cut = cut(&fields.cleared, &source);
            let tally = counter.tallies.get_mut(&source).expect("listed above");
            let before = tally.deltas.len();
            tally.deltas.retain(|d| d.at > cut);
            dropped |= tally.deltas.len() != before;
            let mergeable = tally.deltas.iter().take_while(|d| d.at <= floor).count();
            if mergeable > 1 {
                let mut sum = Some(Amount::ZERO);
                for d in &tally.deltas[..mergeable] {
                    sum = sum.and_then(|s| s.checked_add(stored(d)));
                }
                // Beyond 38 digits the entries stay apart (the value is still exact).
                if let Some(sum) = sum {
                    let at = tally.deltas[mergeable - 1].at;
                    tally.deltas.splice(..mergeable, [Delta { at, amount: sum.text() }]);
                }
            }
        }
        dropped
    }

    /// A counter column's value: the initial value plus every visible delta,
    /// or `None` when nothing about it is visible (the row's base decides).
    pub(super) fn counter_value(&self, fields: &FieldState, column: &str, base: Option<&Value>) -> Option<Value> {
        let counter = fields.counters.get(column)?;
        let visible = |w: &&FieldVersion| !fields.cleared.iter().any(|c| w.vv.happened_before(c));
        let latest = |a: &&FieldVersion, b: &&FieldVersion| self.lww_cmp(*a, *b);
        // A counter written before the column had the rule starts from its latest plain write.
        let initial = counter.creates.iter().filter(visible).max_by(latest).map(|w| &w.value).or_else(|| {
            let writes = fields.fields.get(column)?;
            let latest = |a: &&ColumnWrite, b: &&ColumnWrite| self.lww_cmp(&fields.written(a), &fields.written(b));
            writes.iter().filter(|w| fields.visible(w)).max_by(latest).map(|w| &w.value)
        });
        let deltas: Vec<(&str, &Delta)> = counter
            .tallies
            .iter()
            .flat_map(|(s, t)| {
                let cut = cut(&fields.cleared, s);
                t.deltas.iter().filter(move |d| d.at > cut).map(move |d| (s.as_str(), d))
            })
            .collect();
        if initial.is_none() && deltas.is_empty() {
            return None;
        }
        let start = initial.and_then(Amount::of).unwrap_or(Amount::ZERO);
        let mut exact = Some(start);
        for (_, d) in &deltas {
            exact = exact.and_then(|sum| sum.checked_add(stored(d)));
        }
        let as_string = matches!(base, Some(Value::String(_)));
        Some(match exact {
            Some(sum) => sum.to_value(as_string),
            // Beyond 38 digits: the nearest double (still a function of the state).
            None => {
                let f = deltas
                    .iter()
                    .fold(start.text().parse::<f64>().unwrap_or(0.0), |acc, (_, d)| acc + d.amount.parse::<f64>().unwrap_or(0.0));
                serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
            }
        })
    }
}

/// `value`'s JSON text for a refusal, cut to its first 120 bytes or so
/// when longer: the refusal becomes the dead letter's `tributary.error`
/// header and a log line, and a whole column value there (a long text in a
/// column given the counter rule) could make the dead letter itself too
/// large for the broker, failing the cycle at every retry.
fn shown(value: &Value) -> String {
    const MAX: usize = 120;
    let text = value.to_string();
    if text.len() <= MAX {
        return text;
    }
    let mut end = MAX - 3;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes)", &text[..end], text.len())
}

/// The highest entry for `source` among the delete clocks: that source's
/// deltas at or below it were seen by a delete and are gone with the row.
fn cut(cleared: &[VersionVector], source: &str) -> u64 {
    cleared.iter().map(|c| c.get(source)).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{shown, Amount};

    #[test]
    fn a_refusal_shows_the_start_of_a_long_value() {
        assert_eq!(shown(&serde_json::json!("abc")), "\"abc\"");
        let long = serde_json::json!("é".repeat(500_000));
        let text = shown(&long);
        assert!(text.starts_with("\"éé") && text.ends_with("... (1000002 bytes)"), "{text}");
        assert!(text.len() < 150, "{}", text.len());
        // Through the engine: a megabyte of text in a counter column is
        // refused with a message of a few hundred bytes.
        use crate::merge::*;
        let engine = MergeEngine::new(MergeSettings {
            policy: Policy::FieldLww,
            deletes: DeletePolicy::Lww,
            priorities: Default::default(),
            clock_field: None,
            tombstone_retention_ms: 1000,
            columns: [("n".to_string(), ColumnRule::Counter)].into_iter().collect(),
        });
        let row = serde_json::json!({"id": 1, "n": "x".repeat(1_000_000)}).as_object().unwrap().clone();
        let event = ChangeEvent {
            source: "eu".into(),
            key: r#"{"id":1}"#.into(),
            op: Op::Upsert,
            row: Some(row.into()),
            before: None,
            full_image: true,
            changed: None,
            ts: 1,
            vv: VersionVector::single("eu", 1),
        };
        let report = engine.apply_reported(&mut KeyState::default(), event);
        let refusal = report.refused.expect("refused").to_string();
        assert!(refusal.len() < 400 && refusal.contains("... (1000002 bytes)"), "{} bytes: {}", refusal.len(), &refusal[..200]);
    }

    #[test]
    fn a_zero_with_a_huge_exponent_parses_at_once() {
        // Zero never overflows, so scaling it one digit at a time took up to
        // 2^31 steps for the exponent alone: seconds to minutes per event,
        // again at every render of a counter created with such a value.
        assert_eq!(Amount::parse("0e-2147483648"), Some(Amount { units: 0, scale: 18 }));
        assert_eq!(Amount::parse("-0.0E2147483647"), Some(Amount { units: 0, scale: 0 }));
        assert_eq!(Amount::parse("0.000e-20"), Some(Amount { units: 0, scale: 18 }));
        assert_eq!(Amount::parse("0.00"), Some(Amount { units: 0, scale: 2 }));
        assert_eq!(Amount::parse("0e5"), Some(Amount { units: 0, scale: 0 }));
        // Other values are as before: exact, or refused past 38 digits.
        assert_eq!(Amount::parse("1.50e-2"), Some(Amount { units: 150, scale: 4 }));
        assert_eq!(Amount::parse("1e-2147483648"), None);
        assert_eq!(Amount::parse("1e2147483647"), None);
        assert_eq!(Amount::parse("12e3"), Some(Amount { units: 12_000, scale: 0 }));
    }
}
