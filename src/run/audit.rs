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
/// fields, with rows as JSON objects. Serialized straight from the borrowed
/// state: building a `serde_json::Value` first copied every version's row.
pub(super) fn audit_json(
    r: &crate::avro::records::AuditRecord<'_>,
    table: &str,
    columns: &[crate::merge::ColumnWinner],
) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Event<'a> {
        source: Option<&'a str>,
        topic: &'a str,
        partition: i32,
        offset: i64,
    }
    #[derive(serde::Serialize)]
    struct Json<'a> {
        table: &'a str,
        key: &'a str,
        partition: i32,
        policy: &'a str,
        deletes: &'a str,
        winner: Option<&'a str>,
        deleted: bool,
        merged_vv: &'a crate::merge::VersionVector,
        versions: &'a [crate::merge::Version],
        event: Event<'a>,
        // field-lww: which write decided each column, and why.
        #[serde(skip_serializing_if = "<[_]>::is_empty")]
        columns: &'a [crate::merge::ColumnWinner],
    }
    let e = &r.event;
    let record = Json {
        table,
        key: r.key,
        partition: r.partition,
        policy: r.policy,
        deletes: r.deletes,
        winner: r.winner,
        deleted: r.deleted,
        merged_vv: r.merged_vv,
        versions: r.versions,
        event: Event { source: e.source, topic: e.topic, partition: e.partition, offset: e.offset },
        columns,
    };
    let mut out = Vec::with_capacity(256 + r.versions.len() * 256);
    serde_json::to_writer(&mut out, &record).expect("audit records serialize");
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::avro::records::{AuditEvent, AuditRecord};
    use crate::merge::{KeyState, Op, Version, VersionVector};

    fn version(source: &str, n: u64, ts: i64, city: &str) -> Version {
        Version {
            source: source.into(),
            vv: VersionVector::single(source, n),
            ts,
            op: Op::Upsert,
            row: Some(serde_json::from_value(json!({"id": 1, "city": city})).unwrap()),
        }
    }

    #[test]
    fn the_json_audit_record_has_the_documented_fields() {
        let state =
            KeyState { versions: vec![version("us", 3, 2500, "London"), version("eu", 3, 2000, "Paris")], ..Default::default() };
        let merged_vv = state.merged_clock();
        let record = AuditRecord {
            key: r#"{"id":1}"#,
            partition: 0,
            policy: "lww",
            deletes: "lww",
            winner: Some("us"),
            merged_vv: &merged_vv,
            deleted: false,
            versions: &state.versions,
            event: AuditEvent { source: Some("us"), topic: "us.public.customers", partition: 0, offset: 2 },
            columns: &[],
        };
        let bytes = super::audit_json(&record, "customers", &[]);
        let got: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            got,
            json!({"table": "customers", "key": "{\"id\":1}", "partition": 0, "policy": "lww", "deletes": "lww",
                "winner": "us", "deleted": false, "merged_vv": {"eu": 3, "us": 3},
                "versions": [{"source": "us", "vv": {"us": 3}, "ts": 2500, "op": "upsert", "row": {"id": 1, "city": "London"}},
                             {"source": "eu", "vv": {"eu": 3}, "ts": 2000, "op": "upsert", "row": {"id": 1, "city": "Paris"}}],
                "event": {"source": "us", "topic": "us.public.customers", "partition": 0, "offset": 2}})
        );
        // The fields in the documented order (doc/operations.md).
        let text = String::from_utf8(bytes).unwrap();
        let order = ["table", "key", "partition", "policy", "deletes", "winner", "deleted", "merged_vv", "versions", "event"];
        let at: Vec<usize> = order.iter().map(|f| text.find(&format!("\"{f}\":")).expect(f)).collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{text}");
    }
}
