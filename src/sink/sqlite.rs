//! SQLite target (the embedded default).

use std::collections::HashMap;

use rusqlite::types::{ToSqlOutput, Value as SqliteValue};
use rusqlite::{params_from_iter, Connection, ToSql};

use super::{
    create_sql, delete_sql, upsert_sql, Batch, Change, SinkError, SqlValue, TableSpec, Target,
    DEAD_DDL, OFFSETS_DDL,
};

/// An SQLite database file.
pub struct Sqlite {
    conn: Connection,
    path: String,
}

impl ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Owned(match self {
            SqlValue::Null => SqliteValue::Null,
            SqlValue::Int(i) => SqliteValue::Integer(*i),
            SqlValue::Float(f) => SqliteValue::Real(*f),
            SqlValue::Text(s) => SqliteValue::Text(s.clone()),
            SqlValue::Bool(b) => SqliteValue::Integer(i64::from(*b)),
            SqlValue::Json(v) => SqliteValue::Text(v.to_string()),
        }))
    }
}

impl Sqlite {
    /// Opens (or creates) the database file.
    pub fn open(path: &str) -> Result<Sqlite, SinkError> {
        let conn = Connection::open(path).map_err(|e| err(path, e))?;
        // WAL: readers (a user's `sqlite3`) do not block the sink.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| err(path, e))?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| err(path, e))?;
        Ok(Sqlite {
            conn,
            path: path.to_string(),
        })
    }
}

fn err(path: &str, e: rusqlite::Error) -> SinkError {
    SinkError::Db {
        target: "sqlite",
        url: path.to_string(),
        message: e.to_string(),
    }
}

/// Rows per multi-row upsert (SQLite allows 32766 parameters).
const CHUNK: usize = 200;

impl Target for Sqlite {
    fn prepare(&mut self, spec: &TableSpec) -> Result<(), SinkError> {
        for sql in [
            create_sql(spec, false),
            OFFSETS_DDL.to_string(),
            DEAD_DDL.to_string(),
        ] {
            self.conn
                .execute(&sql, [])
                .map_err(|e| err(&self.path, e))?;
        }
        Ok(())
    }

    fn offsets(&mut self, group: &str, topic: &str) -> Result<HashMap<i32, i64>, SinkError> {
        let mut stmt = self
            .conn
            .prepare("SELECT partition_id, next_offset FROM tributary_sink_offsets WHERE consumer_group = ?1 AND topic = ?2")
            .map_err(|e| err(&self.path, e))?;
        let rows = stmt
            .query_map([group, topic], |r| {
                Ok((r.get::<_, i32>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(|e| err(&self.path, e))?;
        rows.collect::<Result<HashMap<_, _>, _>>()
            .map_err(|e| err(&self.path, e))
    }

    fn apply(&mut self, spec: &TableSpec, group: &str, batch: &Batch) -> Result<(), SinkError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, e))?;
        let upserts: Vec<&Vec<SqlValue>> = batch
            .changes
            .iter()
            .filter_map(|c| {
                if let Change::Upsert(v) = c {
                    Some(v)
                } else {
                    None
                }
            })
            .collect();
        for chunk in upserts.chunks(CHUNK) {
            let sql = upsert_sql(spec, chunk.len(), '?');
            tx.execute(&sql, params_from_iter(chunk.iter().flat_map(|r| r.iter())))
                .map_err(|e| err(&path, e))?;
        }
        {
            let mut del = tx
                .prepare_cached(&delete_sql(spec, '?'))
                .map_err(|e| err(&path, e))?;
            for c in &batch.changes {
                if let Change::Delete(key) = c {
                    del.execute(params_from_iter(key.iter()))
                        .map_err(|e| err(&path, e))?;
                }
            }
            let mut dead = tx
                .prepare_cached("INSERT OR REPLACE INTO tributary_sink_dead_letters (topic, partition_id, record_offset, record_key, record_value, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(|e| err(&path, e))?;
            for d in &batch.dead {
                dead.execute(rusqlite::params![
                    d.topic,
                    d.partition,
                    d.offset,
                    d.key,
                    d.value,
                    d.error
                ])
                .map_err(|e| err(&path, e))?;
            }
            let mut off = tx
                .prepare_cached("INSERT INTO tributary_sink_offsets (consumer_group, topic, partition_id, next_offset) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (consumer_group, topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset WHERE tributary_sink_offsets.next_offset < excluded.next_offset")
                .map_err(|e| err(&path, e))?;
            for (topic, p, o) in &batch.offsets {
                off.execute(rusqlite::params![group, topic, p, o])
                    .map_err(|e| err(&path, e))?;
            }
        }
        tx.commit().map_err(|e| err(&path, e))
    }
}
