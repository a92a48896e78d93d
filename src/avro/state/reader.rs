//! A cursor over one encoded key state: the Avro primitives and blocks the
//! decoder reads, each turning a short or malformed read into a
//! [`StateDecodeError`] that names the part being read and its byte offset.
//! Apart from the records (`decode.rs`) so the block rules of the
//! specification (several blocks, negative counts with a byte size) are
//! handled in one place.

use crate::avro::binary::{read_bytes, read_long, ReadError};
use crate::merge::{LazyRow, Op, Row, VersionVector};

use super::StateDecodeError;

/// A cursor over one value. Offsets in errors count from the value's first
/// byte (the marker), so they match a hex dump of the record.
pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) pos: usize,
}

/// One block of an array or map.
struct Block {
    /// Items in the block.
    count: usize,
    /// Where the block must end, when its header gave a byte size.
    end: Option<usize>,
}

pub(super) type Decoded<T> = Result<T, StateDecodeError>;

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(what: &'static str, offset: usize) -> StateDecodeError {
        StateDecodeError::Truncated { what, offset }
    }

    fn malformed(what: &'static str, offset: usize, problem: &'static str) -> StateDecodeError {
        StateDecodeError::Malformed { what, offset, problem }
    }

    /// The error for `e` met reading `what` at the current position (where
    /// the primitive started).
    fn error(&self, what: &'static str, e: ReadError) -> StateDecodeError {
        match e {
            ReadError::Truncated => Self::truncated(what, self.pos),
            ReadError::TooLong => Self::malformed(what, self.pos, "varint does not fit 64 bits"),
            ReadError::NegativeLength => Self::malformed(what, self.pos, "negative length"),
        }
    }

    /// An Avro `long`.
    pub(super) fn long(&mut self, what: &'static str) -> Decoded<i64> {
        read_long(self.bytes, &mut self.pos).map_err(|e| self.error(what, e))
    }

    /// Length-prefixed bytes, borrowed from the value.
    fn bytes(&mut self, what: &'static str) -> Decoded<&'a [u8]> {
        read_bytes(self.bytes, &mut self.pos).map_err(|e| self.error(what, e))
    }

    /// An Avro `string`, borrowed from the value.
    pub(super) fn str(&mut self, what: &'static str) -> Decoded<&'a str> {
        let start = self.pos;
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes).map_err(|_| Self::malformed(what, start, "string is not valid UTF-8"))
    }

    /// An Avro `string` holding JSON text, parsed.
    pub(super) fn json<T: serde::de::DeserializeOwned>(&mut self, what: &'static str) -> Decoded<T> {
        let start = self.pos;
        // Checked as UTF-8 once (or by serde_json while parsing, if not).
        let text = self.bytes(what)?;
        crate::json::from_bytes(text).map_err(|source| StateDecodeError::Json { what, offset: start, source })
    }

    /// An Avro `string` holding a row's JSON object, checked and kept as
    /// text ([`LazyRow`]): most stored rows are written back unread.
    pub(super) fn json_row(&mut self, what: &'static str) -> Decoded<LazyRow> {
        let start = self.pos;
        let text = self.bytes(what)?;
        let err = |source| StateDecodeError::Json { what, offset: start, source };
        match std::str::from_utf8(text) {
            Ok(text) => LazyRow::from_json(text).map_err(err),
            // Not UTF-8: serde_json's byte reader names the error, as before.
            Err(_) => serde_json::from_slice::<Row>(text).map(LazyRow::from).map_err(err),
        }
    }

    /// A union or enum index in `0..=max`.
    fn index(&mut self, what: &'static str, max: i64) -> Decoded<i64> {
        let start = self.pos;
        let index = self.long(what)?;
        if !(0..=max).contains(&index) {
            return Err(StateDecodeError::BadIndex { what, offset: start, index });
        }
        Ok(index)
    }

    /// An Avro `boolean`: one byte, 0 or 1.
    pub(super) fn boolean(&mut self, what: &'static str) -> Decoded<bool> {
        let start = self.pos;
        let Some(&byte) = self.bytes.get(self.pos) else { return Err(Self::truncated(what, start)) };
        self.pos += 1;
        match byte {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Self::malformed(what, start, "a boolean is the byte 0 or 1")),
        }
    }

    /// The branch of a `["null", T]` union: true when `T` follows.
    pub(super) fn present(&mut self, what: &'static str) -> Decoded<bool> {
        Ok(self.index(what, 1)? == 1)
    }

    /// One block header of an array or map; `None` at the terminating 0.
    /// A negative count means "this many items, and the block's size in bytes
    /// follows" (so readers can skip blocks); the size is checked, not used.
    fn block(&mut self, what: &'static str) -> Decoded<Option<Block>> {
        let start = self.pos;
        let count = self.long(what)?;
        let end = if count < 0 {
            let size_at = self.pos;
            let size = self.long(what)?;
            let size = usize::try_from(size).map_err(|_| Self::malformed(what, size_at, "negative block size"))?;
            if size > self.remaining() {
                return Err(Self::truncated(what, start));
            }
            Some(self.pos + size)
        } else {
            None
        };
        let count = usize::try_from(count.unsigned_abs()).map_err(|_| Self::malformed(what, start, "block count overflows"))?;
        // Every item takes at least one byte, so a larger count cannot be
        // complete; checking here also bounds the capacity callers reserve.
        if count > self.remaining() {
            return Err(Self::truncated(what, start));
        }
        Ok((count > 0).then_some(Block { count, end }))
    }

    /// After a block's items: a block that declared its size must end exactly there.
    fn block_end(&self, what: &'static str, block: &Block) -> Decoded<()> {
        match block.end {
            Some(end) if end != self.pos => Err(Self::malformed(what, self.pos, "block size disagrees with the block's items")),
            _ => Ok(()),
        }
    }

    /// Reads every item of a map (or an array read for its side effects),
    /// across as many blocks as there are.
    pub(super) fn blocks(&mut self, what: &'static str, mut read_item: impl FnMut(&mut Self) -> Decoded<()>) -> Decoded<()> {
        while let Some(block) = self.block(what)? {
            for _ in 0..block.count {
                read_item(self)?;
            }
            self.block_end(what, &block)?;
        }
        Ok(())
    }

    /// An Avro array into a `Vec`, across as many blocks as there are.
    pub(super) fn array<T>(&mut self, what: &'static str, mut read_item: impl FnMut(&mut Self) -> Decoded<T>) -> Decoded<Vec<T>> {
        let mut items = Vec::new();
        while let Some(block) = self.block(what)? {
            items.reserve(block.count);
            for _ in 0..block.count {
                items.push(read_item(self)?);
            }
            self.block_end(what, &block)?;
        }
        Ok(items)
    }

    /// An Avro `map<long>` into a version vector (zero counters are dropped,
    /// as everywhere else).
    pub(super) fn clock(&mut self, what: &'static str) -> Decoded<VersionVector> {
        let mut clock = VersionVector::new();
        self.blocks(what, |r| {
            let source = r.str(what)?;
            let counter = r.long(what)?;
            // Bit pattern back to the counter: see the module docs.
            clock.set(source, counter as u64);
            Ok(())
        })?;
        Ok(clock)
    }

    /// The enum `Op`.
    pub(super) fn op(&mut self, what: &'static str) -> Decoded<Op> {
        Ok(match self.index(what, 1)? {
            0 => Op::Upsert,
            _ => Op::Delete,
        })
    }
}
