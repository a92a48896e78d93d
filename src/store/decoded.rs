//! A task's decoded-state cache: committed states kept decoded for the next
//! cycles, so hot keys skip the disk read and the decode, bounded in
//! estimated bytes (the task's share of `runtime.state_cache_bytes`).
//!
//! Past its bound it lets go of the states committed longest ago, one by
//! one, until it fits again: a state is taken out when an event reads it
//! and put back when its cycle commits, so this is least-recently-used
//! order at the granularity of a cycle. (Until 2026-12-03 it let go of
//! every state at once, which left it half full on average and dropped the
//! hot keys with the cold ones.)

use std::collections::{HashMap, VecDeque};

use crate::merge::KeyState;

/// Where events found their keys' states (counts since the last
/// [`TaskStore::take_reads`](super::TaskStore::take_reads)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateReads {
    /// In the open cycle (the key changed earlier in it).
    pub cycle: u64,
    /// In the decoded-state cache (`runtime.state_cache_bytes`).
    pub cache: u64,
    /// On disk (read and decoded; a key seen for the first time too).
    pub store: u64,
}

impl StateReads {
    /// Adds `other`'s counts.
    pub fn add(&mut self, other: StateReads) {
        self.cycle += other.cycle;
        self.cache += other.cache;
        self.store += other.store;
    }
}

/// What a kept key costs in the order queue beyond its map entry.
fn order_bytes(key: &str) -> usize {
    std::mem::size_of::<(u64, String)>() + key.len() + 16
}

struct Kept {
    state: KeyState,
    /// Estimated bytes, the order queue's entry included.
    size: usize,
    /// When it was kept: its entry in the order queue carries the same
    /// number (older entries of the key are stale).
    seq: u64,
}

/// See the module documentation.
#[derive(Default)]
pub(super) struct DecodedCache {
    kept: HashMap<String, Kept>,
    /// Keys in the order they were kept, oldest first, with the number
    /// each was kept under; an entry whose number is not its key's current
    /// one (the state was taken out, or kept again since) is skipped.
    order: VecDeque<(u64, String)>,
    next_seq: u64,
    /// Estimated bytes held.
    bytes: usize,
}

impl DecodedCache {
    pub(super) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// Estimated bytes held.
    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(super) fn get(&self, key: &str) -> Option<&KeyState> {
        self.kept.get(key).map(|k| &k.state)
    }

    /// Takes `key`'s state out (an event is about to change it).
    pub(super) fn take(&mut self, key: &str) -> Option<KeyState> {
        let kept = self.kept.remove(key)?;
        self.bytes -= kept.size;
        Some(kept.state)
    }

    /// Keeps `state` (of estimated `size` bytes) as the most recent one,
    /// unless it alone exceeds `bound`.
    pub(super) fn keep(&mut self, key: String, state: KeyState, size: usize, bound: usize) {
        let size = size + order_bytes(&key);
        if size > bound {
            self.take(&key);
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.order.push_back((seq, key.clone()));
        if let Some(old) = self.kept.insert(key, Kept { state, size, seq }) {
            self.bytes -= old.size;
        }
        self.bytes += size;
    }

    /// Lets go of the states kept longest ago until at most `bound` bytes
    /// are held.
    pub(super) fn shrink_to(&mut self, bound: usize) {
        while self.bytes > bound {
            let Some((seq, key)) = self.order.pop_front() else { break };
            if self.kept.get(&key).is_some_and(|k| k.seq == seq) {
                self.take(&key);
            }
        }
        // Stale entries stay until they reach the front; past twice the
        // live ones they are swept out, so the queue stays proportional.
        if self.order.len() > 2 * self.kept.len() + 1024 {
            let kept = &self.kept;
            self.order.retain(|(seq, key)| kept.get(key).is_some_and(|k| k.seq == *seq));
        }
    }

    pub(super) fn clear(&mut self) {
        *self = Self { next_seq: self.next_seq, ..Self::default() };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Op, Version, VersionVector};

    fn state(n: u64) -> KeyState {
        let version = Version { source: "eu".into(), vv: VersionVector::single("eu", n), ts: 0, op: Op::Delete, row: None };
        KeyState { versions: vec![version], fields: None }
    }

    /// Keys `k0`… of one length, so every entry costs the same.
    fn key(i: usize) -> String {
        format!("k{i:04}")
    }

    const SIZE: usize = 100;

    /// A bound that holds exactly `n` entries.
    fn holds(n: usize) -> usize {
        n * (SIZE + order_bytes(&key(0)))
    }

    fn kept(c: &DecodedCache, keys: impl IntoIterator<Item = usize>) -> Vec<usize> {
        keys.into_iter().filter(|&i| c.get(&key(i)).is_some()).collect()
    }

    /// Commits `keys` as one cycle does: each kept, then the cache shrunk.
    fn commit(c: &mut DecodedCache, keys: impl IntoIterator<Item = usize>, bound: usize) {
        for i in keys {
            c.keep(key(i), state(i as u64), SIZE, bound);
        }
        c.shrink_to(bound);
    }

    #[test]
    fn past_its_bound_it_lets_go_of_the_states_kept_longest_ago_only() {
        let bound = holds(10);
        let mut c = DecodedCache::default();
        commit(&mut c, 0..6, bound);
        commit(&mut c, 6..12, bound);
        // Letting go of everything at once would keep none of the first cycle.
        assert_eq!(kept(&c, 0..12), (2..12).collect::<Vec<_>>());
        assert_eq!(c.bytes(), bound);
        assert_eq!(c.get(&key(7)), Some(&state(7)));
    }

    #[test]
    fn a_state_taken_and_kept_again_is_the_most_recent() {
        let bound = holds(4);
        let mut c = DecodedCache::default();
        commit(&mut c, 0..4, bound);
        let s = c.take(&key(0)).expect("kept");
        assert_eq!(c.bytes(), holds(3));
        assert_eq!(c.take(&key(0)), None);
        commit(&mut c, [0], bound); // its cycle commits it again
        commit(&mut c, [4], bound);
        // key 0's first entry in the order is stale: key 1 goes, not key 0.
        assert_eq!(kept(&c, 0..5), [0, 2, 3, 4]);
        assert_eq!(c.get(&key(0)), Some(&s));
        commit(&mut c, [5, 6, 7], bound);
        assert_eq!(kept(&c, 0..8), [4, 5, 6, 7]);
    }

    #[test]
    fn a_state_larger_than_the_bound_is_not_kept_and_stale_entries_do_not_pile_up() {
        let mut c = DecodedCache::default();
        c.keep(key(0), state(0), SIZE, holds(1) - 1);
        assert!(c.is_empty() && c.bytes() == 0);
        let bound = holds(2);
        for round in 0..10_000 {
            commit(&mut c, [round % 3], bound);
            c.take(&key((round + 1) % 3));
        }
        assert!(c.order.len() <= 2 * c.kept.len() + 1024 + 1, "{} entries for {} states", c.order.len(), c.kept.len());
        assert!(c.bytes() <= bound);
        c.clear();
        assert!(c.is_empty() && c.bytes() == 0 && c.order.is_empty());
    }
}
