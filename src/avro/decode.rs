//! Avro binary ↔ JSON rows directly, guided by a [`Shape`], without building
//! apache-avro's value tree; fields nobody reads are skipped without
//! allocating. Decoding gives exactly what [`Shape::to_json`] gives for the
//! value apache-avro would decode, and encoding writes what apache-avro
//! writes for [`Shape::to_avro`]'s value (both property-tested below), at a
//! fraction of the allocations: the per-record cost of Avro in and out.

use base64::Engine as _;
use num_bigint::BigInt;
use serde_json::{Map, Value as Json};

use super::binary::{read_bytes, read_long, write_bytes, write_long, ReadError};
use super::error::CodecError;
use super::shape::Shape;
use super::value::{base64_json, decimal_text, f32_as_f64, float_json, json_float};

/// Items an array or map may hold beyond one per byte left (items that take
/// no bytes).
const MAX_EMPTY_ITEMS: u64 = 65_536;

/// A cursor over an Avro datum.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Array and map items claimed so far in the whole datum.
    items: u64,
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0, items: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or(CodecError::Truncated {
            wanted: n,
            at: self.pos,
            len: self.buf.len(),
        })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// The error for `e` met at the current position (where the primitive started).
    fn error(&self, e: ReadError) -> CodecError {
        let (at, len) = (self.pos, self.buf.len());
        match e {
            ReadError::Truncated => CodecError::RunsPastEnd { at, len },
            ReadError::TooLong => CodecError::VarintTooLong { at },
            ReadError::NegativeLength => CodecError::NegativeLength { at },
        }
    }

    /// A zig-zag varint `long`.
    pub fn long(&mut self) -> Result<i64, CodecError> {
        read_long(self.buf, &mut self.pos).map_err(|e| self.error(e))
    }

    fn int(&mut self) -> Result<i32, CodecError> {
        let n = self.long()?;
        i32::try_from(n).map_err(|_| CodecError::IntOutOfRange(n))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        read_bytes(self.buf, &mut self.pos).map_err(|e| self.error(e))
    }

    fn str(&mut self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.bytes()?).map_err(CodecError::NotUtf8)
    }

    /// Runs `item` for every element of an array or map (block-encoded).
    /// Items may take no bytes at all (`null`, an empty record), so the
    /// count cannot be checked against the bytes left; it is capped instead,
    /// so a forged count cannot spin for ages. The cap holds for the whole
    /// datum too: nested arrays of such items (each inner array a few bytes
    /// claiming 65 536 nulls) would otherwise multiply into billions of
    /// values from a small record.
    fn blocks(&mut self, mut item: impl FnMut(&mut Self) -> Result<(), CodecError>) -> Result<(), CodecError> {
        let mut total: u64 = 0;
        loop {
            let count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                self.long()?; // the block's size in bytes: not needed here
            }
            total = total.saturating_add(count.unsigned_abs());
            self.items = self.items.saturating_add(count.unsigned_abs());
            let cap = (self.buf.len() - self.pos) as u64 + MAX_EMPTY_ITEMS;
            // Every item that takes a byte takes one of the datum's own.
            if total > cap || self.items > self.buf.len() as u64 + MAX_EMPTY_ITEMS {
                return Err(CodecError::TooManyItems { items: total.max(self.items), left: self.buf.len() - self.pos });
            }
            for _ in 0..count.unsigned_abs() {
                item(self)?;
            }
        }
    }
}

impl Shape {
    /// True when [`decode_json`](Self::decode_json) and
    /// [`encode_json`](Self::encode_json) handle every type in the shape
    /// (not `big-decimal`, `duration` or recursive types, which take
    /// apache-avro's path).
    pub fn is_direct(&self) -> bool {
        match self {
            Shape::BigDecimal | Shape::Duration | Shape::Opaque => false,
            Shape::Array(i) | Shape::Map(i) => i.is_direct(),
            Shape::Union(b) => b.iter().all(Shape::is_direct),
            Shape::Record(f) => f.iter().all(|f| f.shape.is_direct()),
            _ => true,
        }
    }

    /// Decodes one value of this shape into JSON.
    pub fn decode_json(&self, r: &mut Reader<'_>) -> Result<Json, CodecError> {
        Ok(match self {
            Shape::Null => Json::Null,
            Shape::Boolean => match r.take(1)?[0] {
                0 => Json::Bool(false),
                1 => Json::Bool(true),
                b => return Err(CodecError::NotBoolean(b)),
            },
            Shape::Int(_) => Json::from(r.int()?),
            Shape::Long(_) => Json::from(r.long()?),
            Shape::Float => float_json(f32_as_f64(f32::from_le_bytes(r.take(4)?.try_into().expect("4 bytes")))),
            Shape::Double => float_json(f64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"))),
            Shape::String | Shape::Uuid => Json::String(r.str()?.to_string()),
            Shape::Bytes => Json::String(base64::engine::general_purpose::STANDARD.encode(r.bytes()?)),
            Shape::Fixed(n) => Json::String(base64::engine::general_purpose::STANDARD.encode(r.take(*n)?)),
            Shape::Enum(symbols) => {
                let i = r.long()?;
                let s = usize::try_from(i).ok().and_then(|i| symbols.get(i)).ok_or(CodecError::EnumIndex(i))?;
                Json::String(s.clone())
            }
            Shape::Decimal { scale, fixed } => {
                let b = match fixed {
                    Some(n) => r.take(*n)?,
                    None => r.bytes()?,
                };
                Json::String(decimal_text(&BigInt::from_signed_bytes_be(b), *scale))
            }
            Shape::Array(item) => {
                let mut out = Vec::new();
                r.blocks(|r| {
                    out.push(item.decode_json(r)?);
                    Ok(())
                })?;
                Json::Array(out)
            }
            Shape::Map(values) => {
                let mut out = Map::new();
                r.blocks(|r| {
                    let k = r.str()?.to_string();
                    let v = values.decode_json(r)?;
                    out.insert(k, v);
                    Ok(())
                })?;
                Json::Object(out)
            }
            Shape::Union(branches) => {
                let i = r.long()?;
                let b = usize::try_from(i).ok().and_then(|i| branches.get(i)).ok_or(CodecError::UnionBranch(i))?;
                b.decode_json(r)?
            }
            Shape::Record(fields) => {
                let mut out = Map::new();
                for f in fields {
                    let v = f.shape.decode_json(r).map_err(|e| e.in_field(&f.name))?;
                    out.insert(f.name.clone(), v);
                }
                Json::Object(out)
            }
            Shape::BigDecimal | Shape::Duration | Shape::Opaque => {
                return Err(CodecError::NotDirect { shape: self.describe(), direction: "decoded" });
            }
        })
    }

    /// Appends the Avro encoding of `json` as a value of this shape: the
    /// bytes apache-avro writes for [`to_avro`](Self::to_avro)'s value (a
    /// union takes `null` for JSON null, else its first branch that accepts
    /// the value). On error `out` may hold a partial value: the caller
    /// discards it.
    pub fn encode_json(&self, json: &Json, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let mismatch = || CodecError::Misfit { found: crate::json::json_kind(json), expected: self.describe() };
        match self {
            Shape::Null => {
                if !json.is_null() {
                    return Err(mismatch());
                }
            }
            Shape::Boolean => out.push(u8::from(json.as_bool().ok_or_else(mismatch)?)),
            Shape::Int(_) => {
                let n = json
                    .as_i64()
                    .or_else(|| json.as_str().and_then(|s| s.parse().ok()))
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(mismatch)?;
                write_long(out, i64::from(n));
            }
            Shape::Long(_) => {
                write_long(out, json.as_i64().or_else(|| json.as_str().and_then(|s| s.parse().ok())).ok_or_else(mismatch)?)
            }
            Shape::Float => out.extend_from_slice(&(json_float(json).ok_or_else(mismatch)? as f32).to_le_bytes()),
            Shape::Double => out.extend_from_slice(&json_float(json).ok_or_else(mismatch)?.to_le_bytes()),
            Shape::String | Shape::Uuid => write_bytes(out, json.as_str().ok_or_else(mismatch)?.as_bytes()),
            Shape::Bytes => write_bytes(out, &base64_json(json).ok_or_else(mismatch)?),
            Shape::Fixed(n) => {
                let b = base64_json(json).ok_or_else(mismatch)?;
                if b.len() != *n {
                    return Err(CodecError::FixedSize { len: b.len(), size: *n });
                }
                out.extend_from_slice(&b);
            }
            Shape::Enum(symbols) => {
                let s = json.as_str().ok_or_else(mismatch)?;
                let i = symbols.iter().position(|x| x == s).ok_or_else(|| CodecError::NotASymbol(s.to_string()))?;
                write_long(out, i as i64);
            }
            Shape::Decimal { scale, fixed } => {
                let unscaled = super::value::parse_decimal(json, *scale).ok_or_else(mismatch)?;
                let bytes = unscaled.to_signed_bytes_be();
                match fixed {
                    None => write_bytes(out, &bytes),
                    Some(size) => {
                        if bytes.len() > *size {
                            return Err(CodecError::DecimalTooWide { len: bytes.len(), size: *size });
                        }
                        let fill = if unscaled.sign() == num_bigint::Sign::Minus { 0xff } else { 0 };
                        out.resize(out.len() + size - bytes.len(), fill);
                        out.extend_from_slice(&bytes);
                    }
                }
            }
            Shape::Array(item) => {
                let Json::Array(items) = json else { return Err(mismatch()) };
                if !items.is_empty() {
                    write_long(out, items.len() as i64);
                    for v in items {
                        item.encode_json(v, out)?;
                    }
                }
                out.push(0);
            }
            Shape::Map(values) => {
                let Json::Object(o) = json else { return Err(mismatch()) };
                if !o.is_empty() {
                    write_long(out, o.len() as i64);
                    for (k, v) in o {
                        write_bytes(out, k.as_bytes());
                        values.encode_json(v, out)?;
                    }
                }
                out.push(0);
            }
            Shape::Union(branches) => {
                if json.is_null() {
                    let i = branches.iter().position(|b| *b == Shape::Null).ok_or_else(mismatch)?;
                    write_long(out, i as i64);
                    return Ok(());
                }
                let start = out.len();
                let mut last = None;
                for (i, b) in branches.iter().enumerate().filter(|(_, b)| **b != Shape::Null) {
                    write_long(out, i as i64);
                    match b.encode_json(json, out) {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            out.truncate(start);
                            last = Some(e);
                        }
                    }
                }
                return Err(last.unwrap_or_else(mismatch));
            }
            Shape::Record(_) => {
                let Json::Object(o) = json else { return Err(mismatch()) };
                self.encode_record(o, out)?;
            }
            Shape::BigDecimal | Shape::Duration | Shape::Opaque => {
                return Err(CodecError::NotDirect { shape: self.describe(), direction: "encoded" });
            }
        }
        Ok(())
    }

    /// [`encode_json`](Self::encode_json) of an object as this record: a
    /// missing field takes its default, or null.
    pub fn encode_record(&self, o: &Map<String, Json>, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let Shape::Record(fields) = self else {
            return Err(CodecError::Misfit { found: "an object", expected: self.describe() });
        };
        for f in fields {
            match (o.get(&f.name), &f.default) {
                (Some(v), _) => f.shape.encode_json(v, out),
                (None, Some(d)) => f.shape.encode_default(d, out),
                (None, None) => f.shape.encode_json(&Json::Null, out),
            }
            .map_err(|e| e.in_field(&f.name))?;
        }
        Ok(())
    }

    /// A default in Avro's JSON notation: a union's is of its first branch.
    fn encode_default(&self, json: &Json, out: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            Shape::Union(branches) => {
                let first = branches.first().ok_or(CodecError::EmptyUnion)?;
                write_long(out, 0);
                first.encode_default(json, out)
            }
            Shape::Bytes => match json {
                Json::String(s) => {
                    write_bytes(out, &s.chars().map(|c| c as u32 as u8).collect::<Vec<u8>>());
                    Ok(())
                }
                _ => self.encode_json(json, out),
            },
            _ => self.encode_json(json, out),
        }
    }

    /// Steps over one value of this shape.
    pub fn skip(&self, r: &mut Reader<'_>) -> Result<(), CodecError> {
        match self {
            Shape::Null => {}
            Shape::Boolean => {
                r.take(1)?;
            }
            Shape::Int(_) | Shape::Long(_) | Shape::Enum(_) => {
                r.long()?;
            }
            Shape::Float => {
                r.take(4)?;
            }
            Shape::Double => {
                r.take(8)?;
            }
            Shape::String | Shape::Uuid | Shape::Bytes | Shape::Decimal { fixed: None, .. } => {
                r.bytes()?;
            }
            Shape::Fixed(n) | Shape::Decimal { fixed: Some(n), .. } => {
                r.take(*n)?;
            }
            Shape::Array(item) => r.blocks(|r| item.skip(r))?,
            Shape::Map(values) => r.blocks(|r| {
                r.bytes()?;
                values.skip(r)
            })?,
            Shape::Union(branches) => {
                let i = r.long()?;
                let b = usize::try_from(i).ok().and_then(|i| branches.get(i)).ok_or(CodecError::UnionBranch(i))?;
                b.skip(r)?;
            }
            Shape::Record(fields) => {
                for f in fields {
                    f.shape.skip(r)?;
                }
            }
            Shape::BigDecimal | Shape::Duration | Shape::Opaque => {
                return Err(CodecError::NotDirect { shape: self.describe(), direction: "decoded" });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::avro::value::Names;
    use apache_avro::schema::Schema;
    use apache_avro::types::Value;
    use proptest::prelude::*;

    const SCHEMA: &str = r#"{"type":"record","name":"Value","namespace":"eu.public.t","fields":[
        {"name":"id","type":"int"},
        {"name":"big","type":"long"},
        {"name":"name","type":["null","string"],"default":null},
        {"name":"balance","type":["null",{"type":"bytes","logicalType":"decimal","precision":20,"scale":3}],"default":null},
        {"name":"fixed_dec","type":{"type":"fixed","name":"F","size":6,"logicalType":"decimal","precision":12,"scale":2}},
        {"name":"ok","type":"boolean"},
        {"name":"ratio","type":"double"},
        {"name":"small","type":"float"},
        {"name":"raw","type":"bytes"},
        {"name":"tier","type":{"type":"enum","name":"Tier","symbols":["GOLD","SILVER","BRONZE"]}},
        {"name":"tags","type":{"type":"array","items":"string"}},
        {"name":"attrs","type":{"type":"map","values":["null","long"]}},
        {"name":"born","type":{"type":"int","logicalType":"date"}},
        {"name":"seen","type":{"type":"long","logicalType":"timestamp-micros"}},
        {"name":"nested","type":["null",{"type":"record","name":"N","fields":[{"name":"a","type":"string"},{"name":"b","type":"Tier"}]}],"default":null}
    ]}"#;

    fn setup() -> (Schema, Shape) {
        let schema = Schema::parse_str(SCHEMA).unwrap();
        let resolved = apache_avro::schema::ResolvedSchema::try_from(&schema).unwrap();
        let names: Names<'_> = resolved.get_names().clone();
        let shape = Shape::of(&schema, &names);
        (schema.clone(), shape)
    }

    fn union(i: u32, v: Value) -> Value {
        Value::Union(i, Box::new(v))
    }

    prop_compose! {
        fn row()(id in any::<i32>(), big in any::<i64>(), name in proptest::option::of(".{0,12}"),
                 balance in proptest::option::of(any::<i64>()), fixed_dec in -(1i64 << 46)..(1i64 << 46), ok in any::<bool>(),
                 ratio in prop_oneof![any::<f64>(), Just(f64::NAN), Just(f64::INFINITY)], small in any::<f32>(),
                 raw in proptest::collection::vec(any::<u8>(), 0..20), tier in 0u32..3,
                 tags in proptest::collection::vec("[a-z]{0,5}", 0..4),
                 attrs in proptest::collection::btree_map("[a-z]{1,4}", proptest::option::of(any::<i64>()), 0..4),
                 born in any::<i32>(), seen in any::<i64>(), nested in proptest::option::of(("[a-z]{0,4}", 0u32..3)))
                 -> Value {
            let symbols = ["GOLD", "SILVER", "BRONZE"];
            Value::Record(vec![
                ("id".into(), Value::Int(id)),
                ("big".into(), Value::Long(big)),
                ("name".into(), match name { Some(n) => union(1, Value::String(n)), None => union(0, Value::Null) }),
                ("balance".into(), match balance {
                    Some(b) => union(1, Value::Decimal(apache_avro::Decimal::from(BigInt::from(b).to_signed_bytes_be()))),
                    None => union(0, Value::Null),
                }),
                ("fixed_dec".into(), {
                    let mut b = BigInt::from(fixed_dec).to_signed_bytes_be();
                    let fill = if fixed_dec < 0 { 0xff } else { 0 };
                    let mut padded = vec![fill; 6 - b.len()];
                    padded.append(&mut b);
                    Value::Decimal(apache_avro::Decimal::from(padded))
                }),
                ("ok".into(), Value::Boolean(ok)),
                ("ratio".into(), Value::Double(ratio)),
                ("small".into(), Value::Float(small)),
                ("raw".into(), Value::Bytes(raw)),
                ("tier".into(), Value::Enum(tier, symbols[tier as usize].into())),
                ("tags".into(), Value::Array(tags.into_iter().map(Value::String).collect())),
                ("attrs".into(), Value::Map(attrs.into_iter().map(|(k, v)| (k, match v {
                    Some(n) => union(1, Value::Long(n)),
                    None => union(0, Value::Null),
                })).collect())),
                ("born".into(), Value::Date(born)),
                ("seen".into(), Value::TimestampMicros(seen)),
                ("nested".into(), match nested {
                    Some((a, b)) => union(1, Value::Record(vec![("a".into(), Value::String(a)), ("b".into(), Value::Enum(b, symbols[b as usize].into()))])),
                    None => union(0, Value::Null),
                }),
            ])
        }
    }

    proptest! {
        #[test]
        fn direct_decoding_equals_apache_avro_then_to_json(value in row()) {
            let (schema, shape) = setup();
            prop_assert!(shape.is_direct());
            let bytes = apache_avro::writer::datum::GenericDatumWriter::builder(&schema).build().unwrap().write_value_to_vec(value).unwrap();
            let via_apache = apache_avro::reader::datum::GenericDatumReader::builder(&schema).build().unwrap().read_value(&mut &bytes[..]).unwrap();
            let mut r = Reader::new(&bytes);
            let direct = shape.decode_json(&mut r).unwrap();
            prop_assert_eq!(r.position(), bytes.len());
            prop_assert_eq!(direct, shape.to_json(&via_apache).unwrap());
            let mut r = Reader::new(&bytes);
            shape.skip(&mut r).unwrap();
            prop_assert_eq!(r.position(), bytes.len(), "skip steps over exactly one value");
            // Every truncation is an error, never a panic.
            for cut in 0..bytes.len() {
                let mut r = Reader::new(&bytes[..cut]);
                prop_assert!(shape.decode_json(&mut r).is_err());
            }
        }

        #[test]
        fn direct_encoding_reads_back_as_apache_avro_writes_it(value in row()) {
            let (schema, shape) = setup();
            let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema).build().unwrap();
            let json = shape.to_json(&value).unwrap();
            let mut direct = Vec::new();
            shape.encode_json(&json, &mut direct).unwrap();
            let via_apache = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
                .build()
                .unwrap()
                .write_value_to_vec(shape.to_avro(&json).unwrap())
                .unwrap();
            let back_direct = shape.to_json(&reader.read_value(&mut &direct[..]).unwrap()).unwrap();
            let back_apache = shape.to_json(&reader.read_value(&mut &via_apache[..]).unwrap()).unwrap();
            prop_assert_eq!(&back_direct, &back_apache);
            prop_assert_eq!(&back_direct, &json);
            if !json.to_string().contains("\"attrs\":{\"") {
                // Without map entries (whose order apache-avro's HashMap
                // scrambles) the bytes are the same.
                prop_assert_eq!(direct, via_apache);
            }
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, shape) = setup();
            let _ = shape.decode_json(&mut Reader::new(&bytes));
            let _ = shape.skip(&mut Reader::new(&bytes));
        }
    }

    #[test]
    fn forged_counts_of_empty_items_are_refused() {
        let shape = Shape::Array(Box::new(Shape::Null));
        // count 2^40 of nulls in 6 bytes
        let mut bytes = Vec::new();
        super::write_long(&mut bytes, 1 << 40);
        bytes.push(0);
        let e = shape.skip(&mut Reader::new(&bytes)).unwrap_err();
        assert!(matches!(e, CodecError::TooManyItems { items: 1_099_511_627_776, left: 1 }), "{e}");
        assert_eq!(e.to_string(), "1099511627776 items with 1 bytes left");
        assert!(shape.decode_json(&mut Reader::new(&bytes)).is_err());
        // A modest array of nulls is fine.
        let mut ok = Vec::new();
        super::write_long(&mut ok, 1000);
        ok.push(0);
        assert_eq!(shape.decode_json(&mut Reader::new(&ok)).unwrap().as_array().unwrap().len(), 1000);
    }

    #[test]
    fn nested_arrays_of_empty_items_are_capped_for_the_whole_datum() {
        // array<array<null>>: 100 inner arrays of 65 536 nulls in 402 bytes
        // decoded to 6.5 million values (1 000 inner arrays: 65 million, 2 GB).
        let shape = Shape::Array(Box::new(Shape::Array(Box::new(Shape::Null))));
        let mut bytes = Vec::new();
        super::write_long(&mut bytes, 100);
        for _ in 0..100 {
            super::write_long(&mut bytes, 65_536);
            bytes.push(0);
        }
        bytes.push(0);
        match shape.decode_json(&mut Reader::new(&bytes)) {
            Err(e) => assert!(matches!(e, CodecError::TooManyItems { items: 131_172, .. }), "{e}"),
            Ok(json) => panic!("decoded {} values", json.as_array().map_or(0, |a| a.len() * 65_536)),
        }
        assert!(shape.skip(&mut Reader::new(&bytes)).is_err());
        // Within the cap, nesting decodes as before.
        let mut ok = Vec::new();
        super::write_long(&mut ok, 3);
        for _ in 0..3 {
            super::write_long(&mut ok, 1000);
            ok.push(0);
        }
        ok.push(0);
        let json = shape.decode_json(&mut Reader::new(&ok)).unwrap();
        assert_eq!(json.as_array().unwrap().iter().map(|a| a.as_array().unwrap().len()).sum::<usize>(), 3000);
    }

    #[test]
    fn floats_read_as_their_shortest_decimal() {
        let bytes = 0.1f32.to_le_bytes();
        assert_eq!(Shape::Float.decode_json(&mut Reader::new(&bytes)).unwrap(), serde_json::json!(0.1));
    }

    #[test]
    fn negative_block_counts_carry_a_size() {
        // An array of two longs written as one block with count -2 and a byte size.
        let shape = Shape::Array(Box::new(Shape::Long(crate::avro::value::LongKind::Plain)));
        let bytes = [3u8, 4, 2, 4, 0]; // count -2 (zigzag 3), size 2, 1, 2, end
        assert_eq!(shape.decode_json(&mut Reader::new(&bytes)).unwrap(), serde_json::json!([1, 2]));
    }
}
