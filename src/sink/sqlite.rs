//! SQLite target (the embedded default).

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};

use rusqlite::types::{ToSqlOutput, Value as SqliteValue};
use rusqlite::{params_from_iter, Connection, OptionalExtension, ToSql};

use super::{
    chunk_sizes, create_sql, delete_sql, live_delete_sql, live_insert_sql, live_keys_ddl, offset_upsert_sql, rows_per_statement,
    sweep_select_sql, upsert_sql, Batch, Change, DbError, SinkError, SqlValue, StoredOffset, Sweep, TableSpec, Target, DEAD_DDL,
    LIVE_KEYS, OFFSETS_DDL, OFFSETS_TS_COLUMN, RESYNC_DDL,
};

/// An SQLite database file.
pub struct Sqlite {
    conn: Connection,
    path: String,
    /// Held (flock) for as long as this sink runs; see [`lock`].
    _lock: Option<File>,
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
            SqlValue::Bytes(b) => SqliteValue::Blob(b.clone()),
        }))
    }
}

impl Sqlite {
    /// Takes the single-writer lock, then opens (or creates) the database file.
    pub fn open(path: &str) -> Result<Sqlite, SinkError> {
        let lock = lock(path)?;
        let conn = Connection::open(path).map_err(|e| err(path, "open", e))?;
        // Room for every statement a batch uses (see `chunk_sizes`), so none is prepared twice.
        conn.set_prepared_statement_cache_capacity(64);
        // WAL: readers (a user's `sqlite3`) do not block the sink.
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| err(path, "open", e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| err(path, "open", e))?;
        Ok(Sqlite { conn, path: path.to_string(), _lock: lock })
    }
}

/// One sink per SQLite file: two would interleave their batches and offsets,
/// and a resync of one would delete rows the other just wrote.
///
/// An exclusive `flock` on `<file>.lock`, not SQLite's
/// `locking_mode=EXCLUSIVE`: in WAL mode that mode keeps every other
/// connection out, readers included (users query the table while the sink
/// runs), and it is only taken at the first write, so a second sink would
/// get as far as reading offsets before failing. The kernel drops a flock
/// when the process dies, even by `kill -9`, so a crash never leaves a stale
/// lock behind; the lock file itself stays (removing it on exit would race
/// with a sink that is just opening it).
fn lock(path: &str) -> Result<Option<File>, SinkError> {
    if path.is_empty() || path == ":memory:" || path.starts_with("file:") {
        // Nothing on disk to share (or a URI whose file we cannot name).
        return Ok(None);
    }
    let lock_path = std::path::PathBuf::from(format!("{path}.lock"));
    let fail = |source| SinkError::Db { target: "sqlite", url: path.to_string(), doing: "take the single-writer lock", source };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| fail(DbError::LockFile { path: lock_path.clone(), source }))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Err(fail(DbError::SqliteBusy { lock_file: lock_path })),
        Err(TryLockError::Error(source)) => Err(fail(DbError::Lock { path: lock_path, source })),
    }
}

/// A stored key value, to bind again (SQLite compares by storage class, and
/// the sink stores each type in one class).
fn from_sqlite(v: SqliteValue) -> SqlValue {
    match v {
        SqliteValue::Null => SqlValue::Null,
        SqliteValue::Integer(i) => SqlValue::Int(i),
        SqliteValue::Real(f) => SqlValue::Float(f),
        SqliteValue::Text(s) => SqlValue::Text(s),
        SqliteValue::Blob(b) => SqlValue::Bytes(b),
    }
}

fn err(path: &str, doing: &'static str, e: rusqlite::Error) -> SinkError {
    SinkError::Db { target: "sqlite", url: path.to_string(), doing, source: DbError::Sqlite(e) }
}

/// Parameters per statement that SQLite allows.
const MAX_PARAMS: usize = 32_766;

impl Target for Sqlite {
    fn prepare(&mut self, spec: &TableSpec) -> Result<(), SinkError> {
        for sql in [create_sql(spec, false), OFFSETS_DDL.to_string(), DEAD_DDL.to_string(), RESYNC_DDL.to_string()] {
            self.conn.execute(&sql, []).map_err(|e| err(&self.path, "create the tables", e))?;
        }
        let has_ts: bool = self
            .conn
            .query_row(
                "SELECT count(*) > 0 FROM pragma_table_info('tributary_sink_offsets') WHERE name = ?1",
                [OFFSETS_TS_COLUMN],
                |r| r.get(0),
            )
            .map_err(|e| err(&self.path, "create the tables", e))?;
        if !has_ts {
            self.conn
                .execute(&format!("ALTER TABLE tributary_sink_offsets ADD COLUMN {OFFSETS_TS_COLUMN} BIGINT"), [])
                .map_err(|e| err(&self.path, "create the tables", e))?;
            tracing::info!(path = %self.path, "sink offsets table migrated: added {OFFSETS_TS_COLUMN}");
        }
        Ok(())
    }

    fn offsets(&mut self, group: &str, topic: &str) -> Result<HashMap<i32, StoredOffset>, SinkError> {
        let mut stmt = self
            .conn
            .prepare("SELECT partition_id, next_offset, last_record_ts FROM tributary_sink_offsets WHERE consumer_group = ?1 AND topic = ?2")
            .map_err(|e| err(&self.path, "read the stored offsets", e))?;
        let rows = stmt
            .query_map([group, topic], |r| Ok((r.get::<_, i32>(0)?, StoredOffset { next: r.get(1)?, record_ts: r.get(2)? })))
            .map_err(|e| err(&self.path, "read the stored offsets", e))?;
        rows.collect::<Result<HashMap<_, _>, _>>().map_err(|e| err(&self.path, "read the stored offsets", e))
    }

    fn apply(&mut self, spec: &TableSpec, group: &str, batch: &Batch) -> Result<(), SinkError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, "apply a batch", e))?;
        let upserts: Vec<&Vec<SqlValue>> =
            batch.changes.iter().filter_map(|c| if let Change::Upsert(v) = c { Some(v) } else { None }).collect();
        // Statements are cached by the connection across batches; the sizes
        // come from a handful (see `chunk_sizes`).
        let mut rest = &upserts[..];
        for rows in chunk_sizes(upserts.len(), rows_per_statement(spec.columns.len(), MAX_PARAMS)) {
            let (chunk, tail) = rest.split_at(rows);
            rest = tail;
            let mut upsert = tx.prepare_cached(&upsert_sql(spec, rows, '?')).map_err(|e| err(&path, "apply a batch", e))?;
            upsert.execute(params_from_iter(chunk.iter().flat_map(|r| r.iter()))).map_err(|e| err(&path, "apply a batch", e))?;
        }
        let deletes: Vec<&Vec<SqlValue>> =
            batch.changes.iter().filter_map(|c| if let Change::Delete(k) = c { Some(k) } else { None }).collect();
        let mut rest = &deletes[..];
        for rows in chunk_sizes(deletes.len(), rows_per_statement(spec.key.len(), MAX_PARAMS)) {
            let (chunk, tail) = rest.split_at(rows);
            rest = tail;
            let mut delete = tx.prepare_cached(&delete_sql(spec, rows, '?')).map_err(|e| err(&path, "apply a batch", e))?;
            delete.execute(params_from_iter(chunk.iter().flat_map(|k| k.iter()))).map_err(|e| err(&path, "apply a batch", e))?;
        }
        {
            let mut dead = tx
                .prepare_cached("INSERT OR REPLACE INTO tributary_sink_dead_letters (topic, partition_id, record_offset, record_key, record_value, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")
                .map_err(|e| err(&path, "apply a batch", e))?;
            for d in &batch.dead {
                dead.execute(rusqlite::params![d.topic, d.partition, d.offset, d.key, d.value, d.error])
                    .map_err(|e| err(&path, "apply a batch", e))?;
            }
            let mut off = tx.prepare_cached(&offset_upsert_sql('?')).map_err(|e| err(&path, "apply a batch", e))?;
            for o in &batch.offsets {
                off.execute(rusqlite::params![group, o.topic, o.partition, o.next, o.record_ts])
                    .map_err(|e| err(&path, "apply a batch", e))?;
            }
            if !batch.live.is_empty() {
                let mut live = tx.prepare_cached(&live_insert_sql(spec, '?')).map_err(|e| err(&path, "apply a batch", e))?;
                for key in &batch.live {
                    live.execute(params_from_iter(key.iter())).map_err(|e| err(&path, "apply a batch", e))?;
                }
            }
            if !batch.gone.is_empty() {
                let mut gone = tx.prepare_cached(&live_delete_sql(spec, '?')).map_err(|e| err(&path, "apply a batch", e))?;
                for key in &batch.gone {
                    gone.execute(params_from_iter(key.iter())).map_err(|e| err(&path, "apply a batch", e))?;
                }
            }
        }
        tx.commit().map_err(|e| err(&path, "apply a batch", e))
    }

    fn resync_started(&mut self, group: &str, topic: &str) -> Result<Option<i64>, SinkError> {
        self.conn
            .query_row(
                "SELECT started_at_ms FROM tributary_sink_resync WHERE consumer_group = ?1 AND topic = ?2",
                [group, topic],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| err(&self.path, "read the resync state", e))
    }

    fn begin_resync(&mut self, spec: &TableSpec, group: &str, topic: &str, reset: &[i32]) -> Result<(), SinkError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, "begin a resync", e))?;
        // A resync that starts over keeps its first start time.
        tx.execute(
            "INSERT INTO tributary_sink_resync (consumer_group, topic, started_at_ms) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
            rusqlite::params![group, topic, crate::time::now_ms()],
        )
        .map_err(|e| err(&path, "begin a resync", e))?;
        for p in reset {
            tx.execute(
                "DELETE FROM tributary_sink_offsets WHERE consumer_group = ?1 AND topic = ?2 AND partition_id = ?3",
                rusqlite::params![group, topic, p],
            )
            .map_err(|e| err(&path, "begin a resync", e))?;
        }
        tx.execute(&live_keys_ddl(spec, false), []).map_err(|e| err(&path, "begin a resync", e))?;
        tx.execute(&format!("DELETE FROM {LIVE_KEYS}"), []).map_err(|e| err(&path, "begin a resync", e))?;
        tx.commit().map_err(|e| err(&path, "begin a resync", e))
    }

    fn sweep(&mut self, spec: &TableSpec, after: Option<&[SqlValue]>, limit: usize) -> Result<Sweep, SinkError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
        let n = spec.key.len();
        let mut examined = 0;
        let mut last = None;
        let mut dead = Vec::new();
        {
            let mut select = tx
                .prepare(&sweep_select_sql(spec, after.is_some(), limit, '?'))
                .map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
            let mut rows = select
                .query(params_from_iter(after.unwrap_or_default().iter()))
                .map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
            while let Some(row) = rows.next().map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))? {
                let key = (0..n)
                    .map(|i| row.get::<_, SqliteValue>(i).map(from_sqlite))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
                let live: bool = row.get(n).map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
                examined += 1;
                if !live {
                    dead.push(key.clone());
                }
                last = Some(key);
            }
        }
        {
            let mut del = tx
                .prepare_cached(&delete_sql(spec, 1, '?'))
                .map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
            for key in &dead {
                del.execute(params_from_iter(key.iter()))
                    .map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
            }
        }
        tx.commit().map_err(|e| err(&path, "sweep the rows the topic no longer holds", e))?;
        Ok(Sweep { examined, deleted: dead.len(), last })
    }

    fn finish_resync(&mut self, group: &str, topic: &str) -> Result<(), SinkError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| err(&path, "finish a resync", e))?;
        tx.execute("DELETE FROM tributary_sink_resync WHERE consumer_group = ?1 AND topic = ?2", [group, topic])
            .map_err(|e| err(&path, "finish a resync", e))?;
        tx.execute(&format!("DROP TABLE IF EXISTS {LIVE_KEYS}"), []).map_err(|e| err(&path, "finish a resync", e))?;
        tx.commit().map_err(|e| err(&path, "finish a resync", e))
    }
}
