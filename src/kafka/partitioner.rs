//! Kafka's default key partitioner: murmur2 of the serialized key bytes, as
//! the Java clients (and so Debezium and Kafka Connect) place a keyed record.
//! librdkafka's default (`consistent_random`) places keys elsewhere, so
//! anything that must agree with a Java producer computes it here.

/// Murmur2 (32-bit, seed `0x9747b28c`) as Kafka's Java `Utils.murmur2`
/// computes it, including its signed result.
pub fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let blocks = data.chunks_exact(4);
    let tail = blocks.remainder();
    for block in blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]).wrapping_mul(M);
        k ^= k >> R;
        h = h.wrapping_mul(M) ^ k.wrapping_mul(M);
    }
    if !tail.is_empty() {
        // The tail's bytes in little-endian order, as Java's fall-through switch adds them.
        for (i, b) in tail.iter().enumerate() {
            h ^= u32::from(*b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition, out of `partitions`, that a Java producer's default
/// partitioner gives a record with key bytes `key`
/// (`toPositive(murmur2(key)) % partitions`).
///
/// # Panics
/// When `partitions` is not positive.
pub fn murmur2_partition(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "murmur2_partition: {partitions} partitions");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hashes of Kafka's own `UtilsTest.testMurmur2` (clients module).
    #[test]
    fn hashes_match_the_java_clients_test_vectors() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    /// Every tail length (0 to 3 bytes after the 4-byte blocks), with the
    /// Kafka 4.4 Java client's `Utils.murmur2` results; the vectors above have
    /// no 1-byte tail.
    #[test]
    fn hashes_for_every_tail_length() {
        let cases: [(&[u8], i32); 6] = [
            (b"", 275_646_681),
            (b"1", -1_993_445_489),
            (b"12", 126_087_238),
            (b"123", -267_702_483),
            (b"1234", -1_614_185_708),
            (b"12345", -1_188_365_604),
        ];
        for (key, hash) in cases {
            assert_eq!(murmur2(key), hash, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_are_the_positive_hash_modulo_the_count() {
        // A negative hash: the sign bit is cleared, not the absolute value taken.
        assert_eq!(murmur2_partition(b"21", 1 << 30), (-973_932_308i32 & 0x7fff_ffff) % (1 << 30));
        assert_eq!(murmur2_partition(b"a-little-bit-longer-string", 1 << 30), 661_178_819);
        assert_eq!(murmur2_partition(b"abc", 1 << 30), 479_470_107);
        // Canonical keys as Debezium sends them, placed by the Kafka 4.4 Java
        // client's `BuiltInPartitioner.partitionForKey` over 3, 6 and 12 partitions.
        let cases: [(&str, [i32; 3]); 5] = [
            ("", [0, 3, 9]),
            ("12", [1, 4, 10]),
            (r#"{"id":1}"#, [0, 0, 0]),
            (r#"{"id":42}"#, [1, 1, 1]),
            (r#"{"id":1000}"#, [0, 0, 6]),
        ];
        for (key, expected) in cases {
            let got = [3, 6, 12].map(|n| murmur2_partition(key.as_bytes(), n));
            assert_eq!(got, expected, "{key}");
        }
    }

    #[test]
    #[should_panic(expected = "0 partitions")]
    fn no_partitions_is_a_caller_bug() {
        murmur2_partition(b"k", 0);
    }
}
