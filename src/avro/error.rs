//! Why Avro bytes do not decode as a shape, or a JSON value does not encode
//! as one: the error of both codecs (direct, `decode.rs`, and through
//! apache-avro's values, `value.rs`). The messages name the byte or field.

/// A codec error.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes left than a fixed-size value needs.
    #[error("truncated: {wanted} bytes wanted at byte {at} of {len}")]
    Truncated {
        /// Bytes the value needs.
        wanted: usize,
        /// Where it starts.
        at: usize,
        /// The datum's length.
        len: usize,
    },
    /// A length-prefixed value or varint runs past the end.
    #[error("truncated: the value at byte {at} runs past the end ({len} bytes)")]
    RunsPastEnd {
        /// Where it starts.
        at: usize,
        /// The datum's length.
        len: usize,
    },
    /// A varint of more than 64 bits.
    #[error("a varint longer than 64 bits at byte {at}")]
    VarintTooLong {
        /// Where it starts.
        at: usize,
    },
    /// A `bytes` or `string` length below zero.
    #[error("a negative length at byte {at}")]
    NegativeLength {
        /// Where it starts.
        at: usize,
    },
    /// A `long` where an `int` was expected.
    #[error("{0} is out of range for an int")]
    IntOutOfRange(i64),
    /// A string that is not UTF-8.
    #[error("a string is not UTF-8: {0}")]
    NotUtf8(#[source] std::str::Utf8Error),
    /// An array or map claims more items than the bytes can hold.
    #[error("{items} items with {left} bytes left")]
    TooManyItems {
        /// Items claimed so far.
        items: u64,
        /// Bytes left.
        left: usize,
    },
    /// A boolean byte other than 0 or 1.
    #[error("{0} is not a boolean")]
    NotBoolean(u8),
    /// An enum index outside the symbols.
    #[error("enum index {0} out of range")]
    EnumIndex(i64),
    /// A union branch index outside the branches.
    #[error("union branch {0} out of range")]
    UnionBranch(i64),
    /// A decoded union value whose branch the reader's schema lacks.
    #[error("union branch {0} is not in the schema")]
    UnionBranchNotInSchema(u32),
    /// A JSON value of the wrong kind for the shape.
    #[error("{found} does not fit {expected}")]
    Misfit {
        /// The value's JSON kind ("a string").
        found: &'static str,
        /// The shape, described.
        expected: String,
    },
    /// Bytes of the wrong length for a `fixed`.
    #[error("{len} bytes do not fit fixed({size})")]
    FixedSize {
        /// The value's length.
        len: usize,
        /// The fixed size.
        size: usize,
    },
    /// A string that is not one of the enum's symbols.
    #[error("\"{0}\" is not a symbol of the enum")]
    NotASymbol(String),
    /// A decimal wider than its `fixed`.
    #[error("the decimal needs {len} bytes, over fixed({size})")]
    DecimalTooWide {
        /// Bytes needed.
        len: usize,
        /// The fixed size.
        size: usize,
    },
    /// A union without branches.
    #[error("empty union")]
    EmptyUnion,
    /// A shape the direct codec leaves to apache-avro (`decoded` or `encoded`).
    #[error("{shape} is not {direction} directly")]
    NotDirect {
        /// The shape, described.
        shape: String,
        /// "decoded" or "encoded".
        direction: &'static str,
    },
    /// A type Tributary does not write.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The error of a record's field.
    #[error("{field}: {source}")]
    InField {
        /// The field's name.
        field: String,
        /// What went wrong in it.
        source: Box<CodecError>,
    },
}

impl CodecError {
    /// This error, inside field `field`.
    pub fn in_field(self, field: &str) -> Self {
        CodecError::InField { field: field.to_string(), source: Box::new(self) }
    }
}
