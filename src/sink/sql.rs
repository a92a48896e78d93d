//! SQL text shared by the PostgreSQL and SQLite targets (`{n}` / `$n` / `?n`
//! placeholders by prefix).

use super::*;

/// SQL text of a value list for `columns`: `$1, $2…` (PostgreSQL) or
/// `?1, ?2…` (SQLite). PostgreSQL gets the exact types (numeric, date,
/// timestamps, uuid) as text and casts them: `$3::text::NUMERIC(12,2)`.
pub(super) fn placeholders(prefix: char, start: usize, columns: &[&Column]) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| match prefix == '$' && types::bound_as_text(c.ty) {
            true => format!("${}::text::{}", start + i, sql_type(c.ty, true)),
            false => format!("{prefix}{}", start + i),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn key_columns(spec: &TableSpec) -> Vec<&Column> {
    spec.key.iter().map(|&i| &spec.columns[i]).collect()
}

/// Splits `n` rows into statement sizes: `max` as often as it fits, then
/// powers of two, so a handful of prepared statements serve every batch.
pub(super) fn chunk_sizes(mut n: usize, max: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    while n >= max {
        sizes.push(max);
        n -= max;
    }
    let mut bit = max.next_power_of_two();
    while n > 0 {
        if n >= bit {
            sizes.push(bit);
            n -= bit;
        }
        bit /= 2;
    }
    sizes
}

/// Rows per multi-row statement: the largest power of two (at most 512)
/// whose parameters stay within `limit`.
pub(super) fn rows_per_statement(columns: usize, limit: usize) -> usize {
    let mut rows = 512;
    while rows > 1 && rows * columns.max(1) > limit {
        rows /= 2;
    }
    rows
}

/// `INSERT … ON CONFLICT (key) DO UPDATE …` for `rows` rows; both targets speak it.
pub(super) fn upsert_sql(spec: &TableSpec, rows: usize, prefix: char) -> String {
    let cols: Vec<String> = spec.columns.iter().map(|c| quote(&c.name)).collect();
    let n = cols.len();
    let all: Vec<&Column> = spec.columns.iter().collect();
    let values: Vec<String> = (0..rows).map(|r| format!("({})", placeholders(prefix, r * n + 1, &all))).collect();
    let keys: Vec<&str> = spec.key.iter().map(|&i| cols[i].as_str()).collect();
    let updates: Vec<String> =
        cols.iter().enumerate().filter(|(i, _)| !spec.key.contains(i)).map(|(_, c)| format!("{c} = excluded.{c}")).collect();
    let action = if updates.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", updates.join(", ")) };
    format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) DO {action}",
        quote(&spec.table),
        cols.join(", "),
        values.join(", "),
        keys.join(", ")
    )
}

/// One `DELETE` for `rows` keys: `WHERE (k1, k2) IN ((…), (…))`.
pub(super) fn delete_sql(spec: &TableSpec, rows: usize, prefix: char) -> String {
    delete_from_sql(&quote(&spec.table), spec, rows, prefix)
}

pub(super) fn delete_from_sql(table: &str, spec: &TableSpec, rows: usize, prefix: char) -> String {
    let keys = key_columns(spec);
    let names: Vec<String> = keys.iter().map(|c| quote(&c.name)).collect();
    let values: Vec<String> = (0..rows).map(|r| format!("({})", placeholders(prefix, r * keys.len() + 1, &keys))).collect();
    format!("DELETE FROM {table} WHERE ({}) IN ({})", names.join(", "), values.join(", "))
}

pub(super) fn create_sql(spec: &TableSpec, pg: bool) -> String {
    let cols: Vec<String> = spec.columns.iter().map(|c| format!("{} {}", quote(&c.name), sql_type(c.ty, pg))).collect();
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    format!("CREATE TABLE IF NOT EXISTS {} ({}, PRIMARY KEY ({}))", quote(&spec.table), cols.join(", "), keys.join(", "))
}

/// A quoted identifier (names are validated as plain identifiers; quoting
/// lets reserved words such as `user` or `order` be column names).
pub(super) fn quote(name: &str) -> String {
    format!("\"{name}\"")
}

pub(super) fn sql_type(ty: ColumnType, pg: bool) -> String {
    types::sql_type(ty, pg)
}

/// The set of keys a resync found live records for. A temporary table: it
/// lives on disk rather than in the sink's memory (a table can have more
/// keys than fit), and it is gone after a crash, which is right since an
/// unfinished resync starts over.
pub(super) const LIVE_KEYS: &str = "tributary_live_keys";

pub(super) fn live_keys_ddl(spec: &TableSpec, pg: bool) -> String {
    let cols: Vec<String> =
        spec.key.iter().map(|&i| format!("{} {}", quote(&spec.columns[i].name), sql_type(spec.columns[i].ty, pg))).collect();
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    format!("CREATE TEMP TABLE IF NOT EXISTS {LIVE_KEYS} ({}, PRIMARY KEY ({}))", cols.join(", "), keys.join(", "))
}

pub(super) fn live_insert_sql(spec: &TableSpec, prefix: char) -> String {
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    format!(
        "INSERT INTO {LIVE_KEYS} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        keys.join(", "),
        placeholders(prefix, 1, &key_columns(spec))
    )
}

pub(super) fn live_delete_sql(spec: &TableSpec, prefix: char) -> String {
    delete_from_sql(LIVE_KEYS, spec, 1, prefix)
}

/// The next `limit` keys of the table in key order after a key (`after`:
/// the placeholders hold it), each with whether it is in the live-key set.
/// Key order walks the primary key's index, so every step costs `limit`
/// rows however large the table is.
pub(super) fn sweep_select_sql(spec: &TableSpec, after: bool, limit: usize, prefix: char) -> String {
    let keys: Vec<String> = spec.key.iter().map(|&i| quote(&spec.columns[i].name)).collect();
    let of = |alias: &str| keys.iter().map(|k| format!("{alias}.{k}")).collect::<Vec<_>>().join(", ");
    let join: Vec<String> = keys.iter().map(|k| format!("l.{k} = t.{k}")).collect();
    let from =
        if after { format!(" WHERE ({}) > ({})", of("t"), placeholders(prefix, 1, &key_columns(spec))) } else { String::new() };
    // PostgreSQL hands the exact types back as text, to bind again as text.
    let selected: Vec<String> = key_columns(spec)
        .iter()
        .zip(&keys)
        .map(|(c, k)| match prefix == '$' && types::bound_as_text(c.ty) {
            true => format!("t.{k}::text"),
            false => format!("t.{k}"),
        })
        .collect();
    format!(
        "SELECT {selected}, l.{first} IS NOT NULL FROM {table} AS t LEFT JOIN {LIVE_KEYS} AS l ON {join}{from} ORDER BY {tcols} LIMIT {limit}",
        selected = selected.join(", "),
        tcols = of("t"),
        first = keys[0],
        table = quote(&spec.table),
        join = join.join(" AND "),
    )
}

pub(super) const OFFSETS_DDL: &str = "CREATE TABLE IF NOT EXISTS tributary_sink_offsets (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, partition_id INTEGER NOT NULL, next_offset BIGINT NOT NULL, last_record_ts BIGINT, PRIMARY KEY (consumer_group, topic, partition_id))";

/// `last_record_ts` came later: databases from before get it in place
/// (NULL: unknown, and the start-up check then reads the record at the
/// stored offset instead).
pub(super) const OFFSETS_TS_COLUMN: &str = "last_record_ts";

/// A row here means a resync of (group, topic) started and has not finished.
pub(super) const RESYNC_DDL: &str = "CREATE TABLE IF NOT EXISTS tributary_sink_resync (consumer_group TEXT NOT NULL, topic TEXT NOT NULL, started_at_ms BIGINT NOT NULL, PRIMARY KEY (consumer_group, topic))";

pub(super) const OFFSET_UPSERT: &str = "INSERT INTO tributary_sink_offsets (consumer_group, topic, partition_id, next_offset, last_record_ts) VALUES ({1}, {2}, {3}, {4}, {5}) ON CONFLICT (consumer_group, topic, partition_id) DO UPDATE SET next_offset = excluded.next_offset, last_record_ts = excluded.last_record_ts WHERE tributary_sink_offsets.next_offset < excluded.next_offset";

/// [`OFFSET_UPSERT`] with `$n` or `?n` placeholders.
pub(super) fn offset_upsert_sql(prefix: char) -> String {
    (1..=5).fold(OFFSET_UPSERT.to_string(), |sql, i| sql.replace(&format!("{{{i}}}"), &format!("{prefix}{i}")))
}

pub(super) const DEAD_DDL: &str = "CREATE TABLE IF NOT EXISTS tributary_sink_dead_letters (topic TEXT NOT NULL, partition_id INTEGER NOT NULL, record_offset BIGINT NOT NULL, record_key TEXT, record_value TEXT, error TEXT NOT NULL, PRIMARY KEY (topic, partition_id, record_offset))";
