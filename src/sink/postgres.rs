//! PostgreSQL target.

use std::collections::HashMap;

use postgres::types::ToSql;
use postgres::{Client, NoTls, Statement};

use super::{
    chunk_sizes, create_sql, delete_sql, live_delete_sql, live_insert_sql, live_keys_ddl, offset_upsert_sql, rows_per_statement,
    sweep_select_sql, upsert_sql, Batch, Change, ColumnType, DbError, SinkError, SqlValue, StoredOffset, Sweep, TableSpec,
    Target, DEAD_DDL, LIVE_KEYS, OFFSETS_DDL, OFFSETS_TS_COLUMN, RESYNC_DDL,
};

/// A PostgreSQL database.
pub struct Postgres {
    client: Client,
    url: String,
    /// Prepared once per session, by SQL text (a few sizes of the
    /// multi-row statements, see [`chunk_sizes`]).
    statements: HashMap<String, Statement>,
}

/// The error with its causes: `postgres::Error` shows only its kind ("error
/// connecting to server", "db error"); the cause says what happened.
pub(super) fn describe(e: &::postgres::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl Postgres {
    /// Connects (TLS is not built in: use a local socket, a sidecar or a tunnel).
    pub fn open(url: &str) -> Result<Postgres, SinkError> {
        let shown = redact(url);
        let fail = |e| db_error(&shown, "connect", e);
        let mut config: postgres::Config = url.parse().map_err(fail)?;
        if config.get_connect_timeout().is_none() {
            // A host that drops packets would otherwise hold the start for minutes.
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let mut client = config.connect(NoTls).map_err(fail)?;
        // `CREATE … IF NOT EXISTS` on an existing table sends a NOTICE, which
        // the client logs: not worth a line on every start.
        client.batch_execute("SET client_min_messages = warning").map_err(fail)?;
        Ok(Postgres { client, url: shown, statements: HashMap::new() })
    }

    fn err(&self, doing: &'static str, e: postgres::Error) -> SinkError {
        db_error(&self.url, doing, e)
    }

    fn statement(&mut self, sql: String) -> Result<Statement, SinkError> {
        if let Some(s) = self.statements.get(&sql) {
            return Ok(s.clone());
        }
        let statement = self.client.prepare(&sql).map_err(|e| self.err("prepare a statement", e))?;
        self.statements.insert(sql, statement.clone());
        Ok(statement)
    }
}

fn db_error(url: &str, doing: &'static str, e: postgres::Error) -> SinkError {
    SinkError::Db { target: "postgres", url: url.to_string(), doing, source: DbError::Postgres(e) }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// A parameter typed for its column (PostgreSQL checks parameter types).
fn param(ty: ColumnType, v: &SqlValue) -> Box<dyn ToSql + Sync> {
    match (ty, v) {
        (ColumnType::Integer, SqlValue::Int(i)) => Box::new(*i as i32),
        (ColumnType::Integer, _) => Box::new(None::<i32>),
        (ColumnType::BigInt, SqlValue::Int(i)) => Box::new(*i),
        (ColumnType::BigInt, _) => Box::new(None::<i64>),
        (ColumnType::Double, SqlValue::Float(f)) => Box::new(*f),
        (ColumnType::Double, _) => Box::new(None::<f64>),
        (ColumnType::Boolean, SqlValue::Bool(b)) => Box::new(*b),
        (ColumnType::Boolean, _) => Box::new(None::<bool>),
        (ColumnType::Json, SqlValue::Json(j)) => Box::new(j.clone()),
        (ColumnType::Json, _) => Box::new(None::<serde_json::Value>),
        (ColumnType::Bytes, SqlValue::Bytes(b)) => Box::new(b.clone()),
        (ColumnType::Bytes, _) => Box::new(None::<Vec<u8>>),
        // Text, and the types bound as text and cast in the SQL.
        (_, SqlValue::Text(s)) => Box::new(s.clone()),
        (_, _) => Box::new(None::<String>),
    }
}

/// A key value read back from a row, to bind again.
fn value(ty: ColumnType, row: &postgres::Row, i: usize) -> Result<SqlValue, postgres::Error> {
    Ok(match ty {
        ColumnType::Text => row.try_get::<_, Option<String>>(i)?.map_or(SqlValue::Null, SqlValue::Text),
        ColumnType::BigInt => row.try_get::<_, Option<i64>>(i)?.map_or(SqlValue::Null, SqlValue::Int),
        ColumnType::Integer => row.try_get::<_, Option<i32>>(i)?.map_or(SqlValue::Null, |v| SqlValue::Int(v.into())),
        ColumnType::Double => row.try_get::<_, Option<f64>>(i)?.map_or(SqlValue::Null, SqlValue::Float),
        ColumnType::Boolean => row.try_get::<_, Option<bool>>(i)?.map_or(SqlValue::Null, SqlValue::Bool),
        ColumnType::Json => row.try_get::<_, Option<serde_json::Value>>(i)?.map_or(SqlValue::Null, SqlValue::Json),
        ColumnType::Bytes => row.try_get::<_, Option<Vec<u8>>>(i)?.map_or(SqlValue::Null, SqlValue::Bytes),
        // Selected as `::text` (see `sweep_select_sql`).
        ColumnType::Numeric { .. } | ColumnType::Date | ColumnType::Timestamp | ColumnType::TimestampTz | ColumnType::Uuid => {
            row.try_get::<_, Option<String>>(i)?.map_or(SqlValue::Null, SqlValue::Text)
        }
    })
}

/// How long connecting may take unless the URL says (`connect_timeout`).
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Parameters per statement that PostgreSQL allows.
const MAX_PARAMS: usize = 65_535;

impl Target for Postgres {
    fn prepare(&mut self, spec: &TableSpec) -> Result<(), SinkError> {
        let sql = format!(
            "{};\n{OFFSETS_DDL};\nALTER TABLE tributary_sink_offsets ADD COLUMN IF NOT EXISTS {OFFSETS_TS_COLUMN} BIGINT;\n{DEAD_DDL};\n{RESYNC_DDL};",
            create_sql(spec, true)
        );
        self.client.batch_execute(&sql).map_err(|e| self.err("create the tables", e))
    }

    fn offsets(&mut self, group: &str, topic: &str) -> Result<HashMap<i32, StoredOffset>, SinkError> {
        // One sink per group and topic: a second one would interleave its
        // batches with ours. The lock lasts as long as this session, which
        // is why the sink needs a session-mode connection: behind a
        // transaction-pooling PgBouncer the session (and its lock) is not
        // ours from one transaction to the next.
        let locked: bool = self
            .client
            .query_one("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", &[&format!("tributary-sink/{group}/{topic}")])
            .map_err(|e| self.err("read the stored offsets", e))?
            .get(0);
        if !locked {
            return Err(SinkError::Db {
                target: "postgres",
                url: self.url.clone(),
                doing: "read the stored offsets",
                source: DbError::PostgresBusy { group: group.to_string(), topic: topic.to_string() },
            });
        }
        let rows = self
            .client
            .query(
                "SELECT partition_id, next_offset, last_record_ts FROM tributary_sink_offsets WHERE consumer_group = $1 AND topic = $2",
                &[&group, &topic],
            )
            .map_err(|e| self.err("read the stored offsets", e))?;
        Ok(rows.iter().map(|r| (r.get::<_, i32>(0), StoredOffset { next: r.get(1), record_ts: r.get(2) })).collect())
    }

    fn apply(&mut self, spec: &TableSpec, group: &str, batch: &Batch) -> Result<(), SinkError> {
        let upserts: Vec<&Vec<SqlValue>> =
            batch.changes.iter().filter_map(|c| if let Change::Upsert(v) = c { Some(v) } else { None }).collect();
        let deletes: Vec<&Vec<SqlValue>> =
            batch.changes.iter().filter_map(|c| if let Change::Delete(k) = c { Some(k) } else { None }).collect();
        // Statements first (prepared once per session), then the transaction.
        let mut upsert_statements = Vec::new();
        for rows in chunk_sizes(upserts.len(), rows_per_statement(spec.columns.len(), MAX_PARAMS)) {
            upsert_statements.push((rows, self.statement(upsert_sql(spec, rows, '$'))?));
        }
        let mut delete_statements = Vec::new();
        for rows in chunk_sizes(deletes.len(), rows_per_statement(spec.key.len(), MAX_PARAMS)) {
            delete_statements.push((rows, self.statement(delete_sql(spec, rows, '$'))?));
        }
        let dead_statement = self.statement("INSERT INTO tributary_sink_dead_letters (topic, partition_id, record_offset, record_key, record_value, error) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING".into())?;
        let offset_statement = self.statement(offset_upsert_sql('$'))?;
        let url = self.url.clone();
        let e = |e| db_error(&url, "apply a batch", e);
        let mut tx = self.client.transaction().map_err(e)?;
        let mut rest = &upserts[..];
        for (rows, statement) in &upsert_statements {
            let (chunk, tail) = rest.split_at(*rows);
            rest = tail;
            let params: Vec<Box<dyn ToSql + Sync>> =
                chunk.iter().flat_map(|row| row.iter().zip(&spec.columns).map(|(v, c)| param(c.ty, v))).collect();
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
            tx.execute(statement, &refs).map_err(e)?;
        }
        let mut rest = &deletes[..];
        for (rows, statement) in &delete_statements {
            let (chunk, tail) = rest.split_at(*rows);
            rest = tail;
            let params: Vec<Box<dyn ToSql + Sync>> =
                chunk.iter().flat_map(|key| key.iter().zip(&spec.key).map(|(v, &i)| param(spec.columns[i].ty, v))).collect();
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
            tx.execute(statement, &refs).map_err(e)?;
        }
        for d in &batch.dead {
            tx.execute(&dead_statement, &[&d.topic, &d.partition, &d.offset, &d.key, &d.value, &d.error]).map_err(e)?;
        }
        for o in &batch.offsets {
            tx.execute(&offset_statement, &[&group, &o.topic, &o.partition, &o.next, &o.record_ts]).map_err(e)?;
        }
        let key_params = |key: &Vec<SqlValue>| -> Vec<Box<dyn ToSql + Sync>> {
            key.iter().zip(&spec.key).map(|(v, &i)| param(spec.columns[i].ty, v)).collect()
        };
        if !batch.live.is_empty() {
            let live = tx.prepare(&live_insert_sql(spec, '$')).map_err(e)?;
            for key in &batch.live {
                let params = key_params(key);
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
                tx.execute(&live, &refs).map_err(e)?;
            }
        }
        if !batch.gone.is_empty() {
            let gone = tx.prepare(&live_delete_sql(spec, '$')).map_err(e)?;
            for key in &batch.gone {
                let params = key_params(key);
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
                tx.execute(&gone, &refs).map_err(e)?;
            }
        }
        tx.commit().map_err(e)
    }

    fn resync_started(&mut self, group: &str, topic: &str) -> Result<Option<i64>, SinkError> {
        let row = self
            .client
            .query_opt(
                "SELECT started_at_ms FROM tributary_sink_resync WHERE consumer_group = $1 AND topic = $2",
                &[&group, &topic],
            )
            .map_err(|e| self.err("read the resync state", e))?;
        Ok(row.map(|r| r.get(0)))
    }

    fn begin_resync(&mut self, spec: &TableSpec, group: &str, topic: &str, reset: &[i32]) -> Result<(), SinkError> {
        let url = self.url.clone();
        let e = |e| db_error(&url, "begin a resync", e);
        let mut tx = self.client.transaction().map_err(e)?;
        // A resync that starts over keeps its first start time.
        tx.execute(
            "INSERT INTO tributary_sink_resync (consumer_group, topic, started_at_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[&group, &topic, &crate::time::now_ms()],
        )
        .map_err(e)?;
        for p in reset {
            tx.execute(
                "DELETE FROM tributary_sink_offsets WHERE consumer_group = $1 AND topic = $2 AND partition_id = $3",
                &[&group, &topic, p],
            )
            .map_err(e)?;
        }
        tx.batch_execute(&format!("{};\nDELETE FROM {LIVE_KEYS};", live_keys_ddl(spec, true))).map_err(e)?;
        tx.commit().map_err(e)
    }

    fn sweep(&mut self, spec: &TableSpec, after: Option<&[SqlValue]>, limit: usize) -> Result<Sweep, SinkError> {
        let url = self.url.clone();
        let e = |e| db_error(&url, "sweep the rows the topic no longer holds", e);
        let mut tx = self.client.transaction().map_err(e)?;
        let params: Vec<Box<dyn ToSql + Sync>> =
            after.unwrap_or_default().iter().zip(&spec.key).map(|(v, &i)| param(spec.columns[i].ty, v)).collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
        let rows = tx.query(&sweep_select_sql(spec, after.is_some(), limit, '$'), &refs).map_err(e)?;
        let n = spec.key.len();
        let mut last = None;
        let mut deleted = 0;
        let del = tx.prepare(&delete_sql(spec, 1, '$')).map_err(e)?;
        for row in &rows {
            let key = spec
                .key
                .iter()
                .enumerate()
                .map(|(c, &i)| value(spec.columns[i].ty, row, c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(e)?;
            let live: bool = row.try_get(n).map_err(e)?;
            if !live {
                let params: Vec<Box<dyn ToSql + Sync>> =
                    key.iter().zip(&spec.key).map(|(v, &i)| param(spec.columns[i].ty, v)).collect();
                let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|b| b.as_ref()).collect();
                tx.execute(&del, &refs).map_err(e)?;
                deleted += 1;
            }
            last = Some(key);
        }
        tx.commit().map_err(e)?;
        Ok(Sweep { examined: rows.len(), deleted, last })
    }

    fn finish_resync(&mut self, group: &str, topic: &str) -> Result<(), SinkError> {
        let url = self.url.clone();
        let e = |e| db_error(&url, "finish a resync", e);
        let mut tx = self.client.transaction().map_err(e)?;
        tx.execute("DELETE FROM tributary_sink_resync WHERE consumer_group = $1 AND topic = $2", &[&group, &topic]).map_err(e)?;
        tx.batch_execute(&format!("DROP TABLE IF EXISTS {LIVE_KEYS}")).map_err(e)?;
        tx.commit().map_err(e)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_are_not_shown() {
        assert_eq!(super::redact("postgres://app:s3cret@db:5432/x"), "postgres://app:***@db:5432/x");
        assert_eq!(super::redact("postgres://app@db/x"), "postgres://app@db/x");
    }
}
