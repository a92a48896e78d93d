//! `/state/{key}`: a key's merged row, version set and column winners,
//! looked up in the task that owns it.

use super::Worker;

impl Worker {
    /// Answers `GET /state/{key}` for the admin port.
    pub(super) fn query(&mut self, key: &str) -> (u16, String) {
        let owned: Vec<i32> = self.tasks.keys().copied().collect();
        // Avro source keys are Confluent-framed bytes whose murmur2 hash
        // cannot be computed from the key's text: look in every owned task.
        if self.config.sources.iter().any(|s| s.format == crate::config::SourceFormat::DebeziumAvro) {
            let found = owned.iter().find(|p| self.tasks.get(p).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))));
            let Some(&partition) = found else {
                let body = serde_json::json!({
                    "error": format!("no state for key {key} in the partitions this instance owns; with Avro sources the owning partition cannot be computed from the key text, so ask the other instances"),
                    "owned_partitions": owned,
                });
                return (404, body.to_string());
            };
            return self.answer(key, partition);
        }
        // Debezium's JSON converter (schemas off) writes the key as this
        // canonical JSON, and Java producers partition with murmur2. Other
        // producers (librdkafka's default: kcat, the Python and Go clients)
        // put keys elsewhere: when the murmur2 partition does not hold the
        // key, every owned partition is searched.
        let partition = crate::kafka::murmur2_partition(key.as_bytes(), self.partitions);
        if self.tasks.get(&partition).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))) {
            return self.answer(key, partition);
        }
        if let Some(&found) =
            owned.iter().find(|p| self.tasks.get(p).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))))
        {
            return self.answer(key, found);
        }
        let error = if self.tasks.contains_key(&partition) {
            format!("no state for key {key} in the partitions this instance owns (murmur2, as Java producers and Debezium partition, puts it in partition {partition})")
        } else {
            format!("no state for key {key} in the partitions this instance owns; murmur2 (Java producers, Debezium) puts it in partition {partition}, which another instance owns")
        };
        let body = serde_json::json!({
            "error": error,
            "partitioner": "murmur2",
            "partition": partition,
            "owned_partitions": owned,
        });
        (404, body.to_string())
    }

    /// The state query's answer for a key of an owned `partition`.
    pub(super) fn answer(&mut self, key: &str, partition: i32) -> (u16, String) {
        let Some(task) = self.tasks.get(&partition) else {
            return (500, serde_json::json!({"error": format!("task {partition} is not open")}).to_string());
        };
        // Committed state only: what the output topic shows, not the open cycle.
        match task.get_committed(key) {
            Ok(Some(state)) => {
                let r = self.pipeline.engine().resolve(&state);
                let body = serde_json::json!({
                    "key": key,
                    "partition": partition,
                    "row": r.row.as_deref(),
                    "deleted": r.row.is_none(),
                    "winner": r.winner,
                    "vv": r.vv,
                    "conflict": r.conflict(),
                    "siblings": r.siblings,
                    "versions": state.versions,
                    // field-lww: per column, its rule, the write that decided it, and why.
                    "columns": self.pipeline.engine().explain(&state),
                });
                (200, body.to_string())
            }
            Ok(None) => {
                (404, serde_json::json!({"error": format!("no state for key {key}"), "partition": partition}).to_string())
            }
            Err(e) => (500, serde_json::json!({"error": e.to_string()}).to_string()),
        }
    }
}
