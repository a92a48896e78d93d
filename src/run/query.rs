//! `/state/{table}/{key}`: a key's merged row, version set and column winners,
//! looked up in the task that owns it.

use super::Worker;

impl Worker {
    /// Answers `GET /state/{table}/{key}` (and `GET /state/{key}` when
    /// there is one table) for the admin port.
    pub(super) fn query(&mut self, table: Option<&str>, key: &str) -> (u16, String) {
        let names: Vec<&str> = self.tables.iter().map(|t| t.name.as_str()).collect();
        let found = match table {
            Some(name) if self.tables.len() == 1 && self.tables[0].name != name => {
                // One table: `/state/{key}` with a key holding a raw `/`.
                return self.query(None, &format!("{name}/{key}"));
            }
            Some(name) => self.tables.iter().position(|t| t.name == name),
            None if self.tables.len() == 1 => Some(0),
            None => {
                let body = serde_json::json!({
                    "error": "this process merges several tables: ask /state/{table}/{key}",
                    "tables": names,
                });
                return (400, body.to_string());
            }
        };
        let Some(ti) = found else {
            let body = serde_json::json!({"error": format!("no table {}", table.unwrap_or_default()), "tables": names});
            return (404, body.to_string());
        };
        let t = &self.tables[ti];
        let owned: Vec<i32> = t.tasks.keys().copied().collect();
        // Avro source keys are Confluent-framed bytes whose murmur2 hash
        // cannot be computed from the key's text: look in every owned task.
        if t.config.sources.iter().any(|s| s.format == crate::config::SourceFormat::DebeziumAvro) {
            let found = owned.iter().find(|p| t.tasks.get(p).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))));
            let Some(&partition) = found else {
                let body = serde_json::json!({
                    "error": format!("no state for key {key} in the partitions this instance owns; with Avro sources the owning partition cannot be computed from the key text, so ask the other instances"),
                    "owned_partitions": owned,
                });
                return (404, body.to_string());
            };
            return self.answer(ti, key, partition);
        }
        // Debezium's JSON converter (schemas off) writes the key as this
        // canonical JSON, and Java producers partition with murmur2. Other
        // producers (librdkafka's default: kcat, the Python and Go clients)
        // put keys elsewhere: when the murmur2 partition does not hold the
        // key, every owned partition is searched.
        let partition = crate::kafka::murmur2_partition(key.as_bytes(), t.partitions);
        if t.tasks.get(&partition).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_)))) {
            return self.answer(ti, key, partition);
        }
        if let Some(&found) = owned.iter().find(|p| t.tasks.get(p).is_some_and(|t| matches!(t.get_committed(key), Ok(Some(_))))) {
            return self.answer(ti, key, found);
        }
        let error = if t.tasks.contains_key(&partition) {
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
    pub(super) fn answer(&self, table: usize, key: &str, partition: i32) -> (u16, String) {
        let table = &self.tables[table];
        let Some(task) = table.tasks.get(&partition) else {
            return (500, serde_json::json!({"error": format!("task {partition} is not open")}).to_string());
        };
        // Committed state only: what the output topic shows, not the open cycle.
        match task.get_committed(key) {
            Ok(Some(state)) => {
                let r = table.pipeline.engine().resolve(&state);
                let body = serde_json::json!({
                    "table": table.name,
                    "key": key,
                    "partition": partition,
                    "row": r.row.as_deref(),
                    "deleted": r.row.is_none(),
                    "winner": r.winner,
                    "vv": r.vv.to_vv(),
                    "conflict": r.conflict(),
                    "siblings": r.siblings,
                    "versions": state.versions,
                    // field-lww: per column, its rule, the write that decided it, and why.
                    "columns": table.pipeline.engine().explain(&state),
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
