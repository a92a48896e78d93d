//! How much memory a decoded state holds: the estimate that bounds the
//! decoded-state cache in bytes (`runtime.state_cache_bytes`).

use crate::merge::KeyState;

/// Heap bytes an allocation costs beyond what was asked for: the
/// allocator's size-class rounding and bookkeeping, on average.
const ALLOCATION_OVERHEAD: usize = 16;
/// Entries a B-tree node of std's `BTreeMap` holds at most.
const BTREE_CAPACITY: usize = 11;
/// Memory per encoded byte of the column-level part of a state
/// (`field-lww`: column writes, stamps, sets, counters and the rendered
/// row), measured by `tests/state_memory.rs` on the merge bench's rows.
const FIELD_STATE_PER_ENCODED_BYTE: usize = 4;

/// Estimated memory a decoded state holds in a task's cache: its map entry,
/// the key, and what the state allocates (versions, clocks, rows, and for
/// column-level policies a share proportional to `encoded_len`). It bounds
/// the decoded-state cache (`runtime.state_cache_bytes`) in bytes; an
/// estimate that counted only the encoding undercounted by more than two
/// times, so the cache held over twice its budget.
pub fn decoded_bytes(key: &str, state: &KeyState, encoded_len: usize) -> usize {
    // The cache's hash-map slot (key, state, size) at hashbrown's 7/8 load,
    // plus the key's own allocation.
    let slot = (std::mem::size_of::<(String, (KeyState, usize))>() + 1) * 8 / 7;
    let mut bytes = slot + heap(key.len());
    bytes += heap(state.versions.capacity() * std::mem::size_of::<crate::merge::Version>());
    for v in &state.versions {
        bytes += heap(v.source.capacity()) + clock_bytes(&v.vv);
        if let Some(row) = &v.row {
            // A decoded row stays text until it is used (`LazyRow`).
            bytes += row.json_text().map_or(0, |t| heap(t.len()));
            if row.is_parsed() {
                bytes += map_bytes(row);
            }
        }
    }
    if state.fields.is_some() {
        bytes += encoded_len * FIELD_STATE_PER_ENCODED_BYTE;
    }
    bytes
}

fn heap(requested: usize) -> usize {
    if requested == 0 {
        0
    } else {
        requested + ALLOCATION_OVERHEAD
    }
}

/// The nodes of a `BTreeMap` of `len` entries whose leaf node is
/// `leaf` bytes: one leaf up to its capacity, then (as maps filled in key
/// order leave them) about half-full leaves and their parents.
fn btree_nodes(len: usize, leaf: usize) -> usize {
    match len {
        0 => 0,
        n if n <= BTREE_CAPACITY => heap(leaf),
        n => {
            let leaves = n.div_ceil(BTREE_CAPACITY / 2 + 1);
            let internal = leaves.div_ceil(BTREE_CAPACITY / 2 + 1);
            leaves * heap(leaf) + internal * heap(leaf + (BTREE_CAPACITY + 1) * 8)
        }
    }
}

fn btree_leaf<K, V>() -> usize {
    // Parent pointer, parent index and length, then the keys and values.
    16 + BTREE_CAPACITY * (std::mem::size_of::<K>() + std::mem::size_of::<V>())
}

fn clock_bytes(vv: &crate::merge::VersionVector) -> usize {
    heap(vv.entries_heap_bytes()) + vv.heap_name_lengths().map(heap).sum::<usize>()
}

fn map_bytes(map: &serde_json::Map<String, serde_json::Value>) -> usize {
    let mut bytes = btree_nodes(map.len(), btree_leaf::<String, serde_json::Value>());
    for (k, v) in map {
        bytes += heap(k.capacity()) + value_bytes(v);
    }
    bytes
}

fn value_bytes(value: &serde_json::Value) -> usize {
    use serde_json::Value;
    match value {
        Value::String(s) => heap(s.capacity()),
        Value::Array(items) => {
            heap(items.capacity() * std::mem::size_of::<Value>()) + items.iter().map(value_bytes).sum::<usize>()
        }
        Value::Object(map) => map_bytes(map),
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
    }
}
