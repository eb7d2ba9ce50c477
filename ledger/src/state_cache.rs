//! The appender's cache of stream states, bounded by what the states hold
//! (their entries: leases, remembered ended sessions, users), not only by
//! how many streams there are: ten thousand licenses of a hundred thousand
//! leases each would otherwise all stay in memory.
//!
//! A batch takes the states it works on out of the cache and puts them
//! back after its commit; making room evicts only streams outside the
//! batch, so the states just used stay (however large one is). Which other
//! streams go is arbitrary: a reload costs one snapshot plus its tail.

use std::collections::HashMap;

/// The states kept, and the entries they hold.
pub(crate) struct StateCache<V> {
    states: HashMap<String, V>,
    /// Sum of `weight` over `states`.
    entries: usize,
    weight: fn(&V) -> usize,
    max_streams: usize,
    max_entries: usize,
    /// Streams evicted to make room, since the start.
    evictions: u64,
}

impl<V> StateCache<V> {
    /// A cache of at most `max_streams` streams holding at most
    /// `max_entries` entries between them (`weight` says how many one
    /// holds; count at least 1 a stream).
    pub(crate) fn new(max_streams: usize, max_entries: usize, weight: fn(&V) -> usize) -> Self {
        StateCache {
            states: HashMap::new(),
            entries: 0,
            weight,
            max_streams: max_streams.max(1),
            max_entries: max_entries.max(1),
            evictions: 0,
        }
    }

    /// Streams held, entries they hold, and streams evicted so far.
    pub(crate) fn usage(&self) -> (usize, usize, u64) {
        (self.states.len(), self.entries, self.evictions)
    }

    pub(crate) fn get(&self, stream_id: &str) -> Option<&V> {
        self.states.get(stream_id)
    }

    /// Takes `stream_id`'s state out (a batch works on it).
    pub(crate) fn take(&mut self, stream_id: &str) -> Option<V> {
        let state = self.states.remove(stream_id)?;
        self.entries -= (self.weight)(&state);
        Some(state)
    }

    /// Puts a batch's states back, first evicting other streams until
    /// both bounds hold with them (down to three quarters of each, so a
    /// full cache does not evict on every batch).
    pub(crate) fn put_back(&mut self, batch: HashMap<String, V>) {
        let incoming_entries: usize = batch.values().map(self.weight).sum();
        let over = |cache: &Self, streams: usize, entries: usize| {
            cache.states.len() + batch.len() > streams || cache.entries + incoming_entries > entries
        };
        if over(self, self.max_streams, self.max_entries) {
            let (streams, entries) = (self.max_streams * 3 / 4, self.max_entries * 3 / 4);
            let mut victims = Vec::new();
            let (mut kept_streams, mut kept_entries) = (self.states.len(), self.entries);
            for (stream_id, state) in &self.states {
                if kept_streams + batch.len() <= streams
                    && kept_entries + incoming_entries <= entries
                {
                    break;
                }
                kept_streams -= 1;
                kept_entries -= (self.weight)(state);
                victims.push(stream_id.clone());
            }
            self.evictions += victims.len() as u64;
            for stream_id in victims {
                self.take(&stream_id);
            }
        }
        for (stream_id, state) in batch {
            self.entries += (self.weight)(&state);
            if let Some(previous) = self.states.insert(stream_id, state) {
                self.entries -= (self.weight)(&previous);
            }
        }
    }

    #[cfg(test)]
    fn check(&self) -> (usize, usize) {
        let entries: usize = self.states.values().map(self.weight).sum();
        assert_eq!(entries, self.entries, "the running count is the sum");
        (self.states.len(), self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn weight(size: &usize) -> usize {
        1 + size
    }

    proptest! {
        /// Whatever batches come and go, the cache never holds more than
        /// its bounds allow beyond the batch just put back, keeps that
        /// batch whole, and its running count of entries stays exact.
        #[test]
        fn bounded_by_entries_and_streams(
            batches in prop::collection::vec(
                prop::collection::vec((0u8..40, 0usize..300), 1..6),
                1..60,
            )
        ) {
            let mut cache = StateCache::new(16, 1_000, weight);
            for batch in batches {
                let mut taken = HashMap::new();
                for (stream, size) in batch {
                    let id = format!("s{stream}");
                    cache.take(&id);
                    taken.insert(id, size);
                }
                let batch_entries: usize = taken.values().map(weight).sum();
                let batch_streams = taken.len();
                let ids: Vec<String> = taken.keys().cloned().collect();
                cache.put_back(taken);
                let (streams, entries) = cache.check();
                prop_assert!(streams <= 16usize.max(batch_streams));
                prop_assert!(entries <= 1_000usize.max(batch_entries));
                for id in ids {
                    prop_assert!(cache.states.contains_key(&id), "the batch stays");
                }
            }
        }
    }

    #[test]
    fn a_few_large_states_evict_many_small_ones() {
        let mut cache = StateCache::new(10_000, 1_000, weight);
        cache.put_back((0..500).map(|n| (format!("small{n}"), 0)).collect());
        assert_eq!(cache.check(), (500, 500));
        cache.put_back(HashMap::from([("large".to_owned(), 699)]));
        let (streams, entries) = cache.check();
        assert!(entries <= 1_000, "{entries}");
        assert!(streams < 500, "small streams made room: {streams}");
        assert!(cache.states.contains_key("large"));
        assert_eq!(
            cache.usage(),
            (streams, entries, 500 - (streams as u64 - 1)),
            "every small stream gone was counted as evicted"
        );
    }

    #[test]
    fn nothing_is_evicted_within_the_bounds() {
        let mut cache = StateCache::new(100, 1_000, weight);
        for round in 0..10 {
            let batch: HashMap<String, usize> =
                (0..10).map(|n| (format!("s{round}-{n}"), 8)).collect();
            cache.put_back(batch);
        }
        assert_eq!(cache.usage(), (100, 900, 0));
    }
}
