//! Records that cannot be processed go to the dead-letter topic, with the
//! reason and their position, inside the open cycle.

use crate::events::{At, DeadLettered};
use crate::pipeline::DeadLetter;
use rdkafka::message::{BorrowedMessage, Header, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use super::{RunError, Worker, TABLE_HEADER};

impl Worker {
    pub(super) fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, e: &DeadLetter, table: usize) -> Result<(), RunError> {
        let table = self.tables[table].name.clone();
        let (partition, offset, mut error) = (msg.partition().to_string(), msg.offset().to_string(), e.to_string());
        // A value too large to go out again (a record near the size limit,
        // plus the error and headers) is left out rather than failing the
        // cycle on every retry; the source offset still finds it.
        // The same for a key too large to go out with the error (the error
        // text itself is bounded: `MAX_ERROR_TEXT`).
        let key = msg.key().filter(|k| k.len() + error.len() + 2048 <= self.record_limit);
        let key_omitted = msg.key().filter(|_| key.is_none()).map(|k| k.len().to_string());
        let key_len = key.map_or(0, <[u8]>::len);
        let value = msg.payload().filter(|v| key_len + v.len() + error.len() + 2048 <= self.record_limit);
        let omitted = msg.payload().filter(|_| value.is_none()).map(|v| v.len().to_string());
        if let Some(n) = &key_omitted {
            error.push_str(&format!(
                " (the {n}-byte key is too large for the dead-letter topic and is left out; read it at the source offset)"
            ));
        }
        if let Some(n) = &omitted {
            error.push_str(&format!(
                " (the {n}-byte value is too large for the dead-letter topic and is left out; read it at the source offset)"
            ));
        }
        let mut headers = OwnedHeaders::new_with_capacity(8)
            .insert(Header { key: TABLE_HEADER, value: Some(table.as_bytes()) })
            .insert(Header { key: "tributary.error", value: Some(error.as_bytes()) })
            .insert(Header { key: "tributary.error.reason", value: Some(e.reason.reason().as_bytes()) })
            .insert(Header { key: "tributary.source.topic", value: Some(msg.topic().as_bytes()) })
            .insert(Header { key: "tributary.source.partition", value: Some(partition.as_bytes()) })
            .insert(Header { key: "tributary.source.offset", value: Some(offset.as_bytes()) });
        if let Some(n) = &key_omitted {
            headers = headers.insert(Header { key: "tributary.key.omitted.bytes", value: Some(n.as_bytes()) });
        }
        if let Some(n) = &omitted {
            headers = headers.insert(Header { key: "tributary.value.omitted.bytes", value: Some(n.as_bytes()) });
        }
        let mut record = BaseRecord::to(&self.dlq).partition(msg.partition() % self.shared_partitions).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        // Avro output: the dead letter is a `schemas/dead-letter.avsc`
        // envelope holding the raw bytes, so every topic Tributary writes
        // has a registered schema.
        let envelope = self.avro_records.map(|ids| {
            let body = crate::avro::records::encode_dead_letter(&crate::avro::records::DeadLetter {
                error: &error,
                reason: e.reason.reason(),
                source: e.source_name.as_deref(),
                topic: msg.topic(),
                partition: msg.partition(),
                offset: msg.offset(),
                timestamp: msg.timestamp().to_millis(),
                key,
                value,
            });
            crate::avro::registry::frame(ids.dead_letter, &body)
        });
        match (&envelope, value) {
            (Some(env), _) => record = record.payload(env.as_slice()),
            (None, Some(v)) => record = record.payload(v),
            (None, None) => {}
        }
        self.send(record)?;
        let event = DeadLettered {
            table: &table,
            source: e.source_name.as_deref(),
            at: At::of(msg),
            reason: e.reason.reason(),
            error: e,
        };
        event.emit(&self.metrics, &mut self.counters);
        Ok(())
    }
}
