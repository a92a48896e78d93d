//! The conflict audit record (JSON or Avro).

use crate::config::Config;
use rdkafka::message::{BorrowedMessage, Message};

use super::AvroRecordIds;

/// What a conflicting emission merged: its output record, the winning
/// source (row-level policies) and the key's state.
pub(super) struct Merged<'a> {
    pub out: &'a crate::output::OutputRecord,
    pub winner: Option<&'a str>,
    pub state: &'a crate::merge::KeyState,
}

/// The event that made a conflicting emission, and where it belongs.
pub(super) struct AuditSource<'a> {
    pub table: &'a str,
    pub source: &'a str,
    pub msg: &'a BorrowedMessage<'a>,
}

/// The conflict audit record: every version in the set, the policy and
/// the winner, so an operator can see why a row looks the way it does.
/// Serialized from borrowed data: no copy of the version set.
pub(super) fn audit_record(
    config: &Config,
    merged: &Merged<'_>,
    event: &AuditSource<'_>,
    avro: Option<AvroRecordIds>,
    columns: &[crate::merge::ColumnWinner],
) -> Vec<u8> {
    let Merged { out, winner, state } = *merged;
    let msg = event.msg;
    let merged_vv = state.merged_clock();
    let record = crate::avro::records::AuditRecord {
        key: &out.key,
        partition: out.partition,
        policy: config.merge.policy.as_str(),
        deletes: config.merge.deletes.as_str(),
        winner,
        merged_vv: &merged_vv,
        deleted: out.value.is_none(),
        versions: &state.versions,
        event: crate::avro::records::AuditEvent {
            source: Some(event.source),
            topic: msg.topic(),
            partition: msg.partition(),
            offset: msg.offset(),
        },
        columns,
    };
    match avro {
        Some(ids) => crate::avro::registry::frame(ids.audit, &crate::avro::records::encode_audit(&record)),
        None => audit_json(&record, event.table, columns),
    }
}

/// The JSON audit record (doc/operations.md, "Conflict audit topic"): the Avro record's
/// fields, with rows as JSON objects.
pub(super) fn audit_json(
    r: &crate::avro::records::AuditRecord<'_>,
    table: &str,
    columns: &[crate::merge::ColumnWinner],
) -> Vec<u8> {
    let mut record = serde_json::json!({
        "table": table,
        "key": r.key,
        "partition": r.partition,
        "policy": r.policy,
        "deletes": r.deletes,
        "winner": r.winner,
        "merged_vv": r.merged_vv,
        "deleted": r.deleted,
        "versions": r.versions,
        "event": {"source": r.event.source, "topic": r.event.topic, "partition": r.event.partition, "offset": r.event.offset},
    });
    // field-lww: which write decided each column, and why.
    if !columns.is_empty() {
        record["columns"] = serde_json::to_value(columns).expect("column winners serialize");
    }
    serde_json::to_vec(&record).expect("audit records serialize")
}
