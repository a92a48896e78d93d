//! Avro's binary primitives, once for both hand-written codecs: the
//! schema-guided row codec ([`super::decode`]) and the changelog state codec
//! ([`super::state`]). Each codec keeps its own cursor and error type; what
//! a `long`, a length and a string look like on the wire is decided here.

/// An Avro `long` (also `int`, lengths, counts, union and enum indexes):
/// zig-zag, then little-endian base-128 varint.
pub(crate) fn write_long(buf: &mut Vec<u8>, n: i64) {
    let mut v = ((n << 1) ^ (n >> 63)) as u64;
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// A length or count. `Vec` and slice lengths never exceed `isize::MAX`, so
/// they fit a `long`.
pub(crate) fn write_len(buf: &mut Vec<u8>, len: usize) {
    write_long(buf, len as i64);
}

/// Avro `bytes`: the length, then the bytes.
pub(crate) fn write_bytes(buf: &mut Vec<u8>, bytes: &[u8]) {
    write_len(buf, bytes.len());
    buf.extend_from_slice(bytes);
}

/// An Avro `string`: the length, then the UTF-8 bytes.
pub(crate) fn write_str(buf: &mut Vec<u8>, s: &str) {
    write_bytes(buf, s.as_bytes());
}

/// Why a primitive could not be read. The reader's position is then where
/// the primitive started, so the caller can say where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// The bytes end inside the value.
    Truncated,
    /// A varint of more than 64 bits: an eleventh byte, or a tenth carrying
    /// more than the 64th bit. Refused rather than wrapped, so every
    /// accepted encoding denotes exactly one `i64`.
    TooLong,
    /// A `bytes` or `string` length below zero.
    NegativeLength,
}

/// Reads the `long` at `*pos` of `buf` and moves `*pos` past it.
pub(crate) fn read_long(buf: &[u8], pos: &mut usize) -> Result<i64, ReadError> {
    let mut at = *pos;
    let mut raw: u64 = 0;
    let mut shift = 0;
    loop {
        let &byte = buf.get(at).ok_or(ReadError::Truncated)?;
        at += 1;
        if shift == 63 && byte > 1 {
            return Err(ReadError::TooLong);
        }
        raw |= u64::from(byte & 0x7F) << shift;
        if byte & 0x80 == 0 {
            *pos = at;
            return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
        }
        shift += 7;
    }
}

/// Reads the `bytes` (or `string`) at `*pos` of `buf`, borrowed, and moves
/// `*pos` past it. The length is checked against what is left before
/// anything is taken, so a forged length costs nothing.
pub(crate) fn read_bytes<'a>(buf: &'a [u8], pos: &mut usize) -> Result<&'a [u8], ReadError> {
    let mut at = *pos;
    let len = read_long(buf, &mut at)?;
    let len = usize::try_from(len).map_err(|_| ReadError::NegativeLength)?;
    let bytes = buf.get(at..).and_then(|rest| rest.get(..len)).ok_or(ReadError::Truncated)?;
    *pos = at + len;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use apache_avro::types::Value;
    use apache_avro::writer::datum::GenericDatumWriter;
    use apache_avro::Schema;
    use proptest::prelude::*;

    use super::*;

    fn long(n: i64) -> Vec<u8> {
        let mut buf = Vec::new();
        write_long(&mut buf, n);
        buf
    }

    #[test]
    fn longs_have_the_spec_encodings() {
        // The Avro specification's zig-zag table, and the extremes.
        for (n, bytes) in [
            (0, &[0x00][..]),
            (-1, &[0x01]),
            (1, &[0x02]),
            (-2, &[0x03]),
            (2, &[0x04]),
            (-64, &[0x7F]),
            (64, &[0x80, 0x01]),
            (i64::MAX, &[0xFE, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
            (i64::MIN, &[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]),
        ] {
            assert_eq!(long(n), bytes, "{n}");
            let mut pos = 0;
            assert_eq!(read_long(bytes, &mut pos), Ok(n));
            assert_eq!(pos, bytes.len());
        }
    }

    #[test]
    fn strings_and_bytes_are_length_prefixed() {
        let mut buf = Vec::new();
        write_str(&mut buf, "Zoë");
        write_bytes(&mut buf, &[]);
        assert_eq!(buf, [0x08, b'Z', b'o', 0xC3, 0xAB, 0x00]);
    }

    #[test]
    fn bad_varints_are_refused_where_they_start() {
        let mut pos = 1;
        assert_eq!(read_long(&[0x00, 0x80, 0x80], &mut pos), Err(ReadError::Truncated));
        assert_eq!(pos, 1);
        // Ten bytes whose last carries more than the 64th bit, and eleven.
        let mut ten = vec![0xFF; 9];
        ten.push(0x02);
        assert_eq!(read_long(&ten, &mut 0), Err(ReadError::TooLong));
        assert_eq!(read_long(&[0xFF; 11], &mut 0), Err(ReadError::TooLong));
        assert_eq!(read_long(&[], &mut 0), Err(ReadError::Truncated));
    }

    #[test]
    fn bytes_are_borrowed_and_bad_lengths_refused_where_they_start() {
        let mut buf = vec![0x07];
        write_str(&mut buf, "Zoë");
        write_bytes(&mut buf, &[]);
        let mut pos = 1;
        assert_eq!(read_bytes(&buf, &mut pos), Ok("Zoë".as_bytes()));
        assert_eq!(read_bytes(&buf, &mut pos), Ok(&[][..]));
        assert_eq!(pos, buf.len());
        // Length 3 with two bytes left; length -1; a length cut short.
        for (bad, error) in [
            (&[0x06, b'a', b'b'][..], ReadError::Truncated),
            (&[0x01, b'a'], ReadError::NegativeLength),
            (&[0x80], ReadError::Truncated),
        ] {
            let mut pos = 0;
            assert_eq!(read_bytes(bad, &mut pos), Err(error), "{bad:?}");
            assert_eq!(pos, 0);
        }
        // A length near usize::MAX does not overflow.
        let mut huge = Vec::new();
        write_long(&mut huge, i64::MAX);
        assert_eq!(read_bytes(&huge, &mut 0), Err(ReadError::Truncated));
    }

    proptest! {
        #[test]
        fn longs_are_what_apache_avro_writes_and_read_back(n in any::<i64>(), tail in any::<u8>()) {
            let schema = Schema::parse_str(r#""long""#).unwrap();
            let mut theirs = Vec::new();
            GenericDatumWriter::builder(&schema).build().unwrap().write_value_ref(&mut theirs, &Value::Long(n)).unwrap();
            let mut ours = long(n);
            prop_assert_eq!(&ours, &theirs);
            let len = ours.len();
            ours.push(tail);
            let mut pos = 0;
            prop_assert_eq!(read_long(&ours, &mut pos), Ok(n));
            prop_assert_eq!(pos, len);
        }
    }
}
