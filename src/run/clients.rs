//! The Kafka clients a worker owns besides the group consumer, and their
//! memory bounds.

use std::sync::Mutex;

use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::Producer;

use super::deliveries::{DeliveryTracker, Producer_};
use super::quiet::QuietContext;
use super::{client_config, instance_id, RunError, TIMEOUT};
use crate::config::{Config, Processing};

/// Memory bounds of the Kafka clients, chosen on purpose (librdkafka's
/// defaults suit a process that does nothing else; `[kafka.properties]`
/// overrides each). The group consumer keeps at most this much prefetched
/// (librdkafka: 64 MiB). librdkafka's bookkeeping per prefetched message
/// costs about as much as the message again, beside the fetch responses the
/// messages point into: a 16 MiB queue held ~47 MB of a 50 000-key run's
/// peak (heaptrack, 2026-12-02). A 4 MiB queue alone took 35-40 MB off it
/// but cost 15-25 % of the events/s: once the queue is full, librdkafka
/// waits `fetch.queue.backoff.ms` (1 s) before a partition's next fetch, so
/// a small queue ran dry. With that backoff at 20 ms ([`FETCH_QUEUE_BACKOFF_MS`])
/// 4 MiB ran at least as fast as 16 MiB, at 150-163 MB peak instead of
/// 160-169 MB (doc/benchmarks.md, "Memory").
pub(super) const GROUP_QUEUE_KBYTES: &str = "4096";
/// Largest fetch response of the group consumer (librdkafka: 50 MiB), in
/// line with its queue.
pub(super) const GROUP_FETCH_MAX_BYTES: &str = "4194304";
/// How long a consumer whose queue is full waits before fetching a partition
/// again (librdkafka: 1 s, long enough for a bounded queue to run dry).
pub(super) const FETCH_QUEUE_BACKOFF_MS: &str = "20";
/// The restore consumer reads only while tasks open, and as fast as it can:
/// a 16 MiB queue with the 20 ms backoff restored 1.4-1.8 times as fast as
/// librdkafka's 64 MiB, at a lower peak (`scripts/bench/restore`, 2026-12-02).
const RESTORE_QUEUE_KBYTES: &str = "16384";
/// Largest fetch response of the restore consumer, in line with its queue.
const RESTORE_FETCH_MAX_BYTES: &str = "16777216";
/// How long the broker holds a restore's fetch when nothing more is there
/// (librdkafka: 500 ms). A restore ends on the end-of-partition that such a
/// fetch reports, and under exactly-once the changelog's last record is
/// followed by a transaction marker, so every restore waited this long at
/// its end: a takeover of a few records took half a second.
const RESTORE_FETCH_WAIT_MS: &str = "10";
/// The producer's queue (librdkafka: 1 GiB). A cycle's output, changelog and
/// audit records wait here until the commit flushes them; a full queue makes
/// `send` serve delivery reports and retry, so this bounds memory, not records.
const PRODUCER_QUEUE_KBYTES: &str = "65536";

/// The clients a worker owns besides the group consumer.
pub(super) struct Clients {
    /// Reads changelog partitions into the store (`read_committed`).
    pub(super) restorer: BaseConsumer<QuietContext>,
    /// Reads the changelog's high watermarks (`read_uncommitted`).
    pub(super) watermarks: BaseConsumer<QuietContext>,
    /// The (transactional, under exactly-once) producer.
    pub(super) producer: Producer_,
}

pub(super) fn create_clients(config: &Config) -> Result<Clients, RunError> {
    let restorer: BaseConsumer<QuietContext> = client_config(
        config,
        &[
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "error"),
            ("group.id", "tributary-restore"),
            ("queued.max.messages.kbytes", RESTORE_QUEUE_KBYTES),
            ("fetch.max.bytes", RESTORE_FETCH_MAX_BYTES),
            ("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS),
            ("fetch.wait.max.ms", RESTORE_FETCH_WAIT_MS),
        ],
    )
    .create_with_context(QuietContext)
    .map_err(|e| RunError::kafka("create restore consumer", e))?;
    let watermarks: BaseConsumer<QuietContext> =
        client_config(config, &[("isolation.level", "read_uncommitted"), ("group.id", "tributary-restore")])
            .create_with_context(QuietContext)
            .map_err(|e| RunError::kafka("create watermark client", e))?;
    let exactly_once = config.runtime.processing == Processing::ExactlyOnce;
    let transactional_id = format!("{}-{}", config.kafka.group_id, instance_id(config));
    let mut producer_defaults = vec![
        ("enable.idempotence", "true"),
        ("linger.ms", "5"),
        ("compression.type", "lz4"),
        ("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES),
    ];
    if exactly_once {
        producer_defaults.extend([
            ("transactional.id", transactional_id.as_str()),
            ("transaction.timeout.ms", "10000"),
            ("message.timeout.ms", "10000"),
        ]);
    }
    let producer: Producer_ = client_config(config, &producer_defaults)
        .create_with_context(DeliveryTracker { state: Mutex::default() })
        .map_err(|e| RunError::kafka("create producer", e))?;
    if exactly_once {
        // Fences an older incarnation with the same transactional.id and
        // aborts whatever transaction it left open (e.g. after kill -9).
        producer
            .init_transactions(TIMEOUT)
            .map_err(|e| RunError::kafka(format!("init transactions (transactional.id {transactional_id})"), e))?;
    }
    Ok(Clients { restorer, watermarks, producer })
}
