//! A small bounded cache with a time-to-live, for token, license-key and
//! session look-ups: a seat operation makes no database round trip before
//! the appender once its credentials are warm.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
    ttl: Duration,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            ttl,
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match entries.get(key) {
            Some((value, at)) if at.elapsed() < self.ttl => Some(value.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, key: K, value: V) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            if entries.len() >= self.capacity {
                // Still full of live entries: drop the oldest tenth rather
                // than everything, so a full cache keeps serving most
                // look-ups (one O(n) pass per tenth of the capacity).
                let mut ages: Vec<(Instant, K)> = entries
                    .iter()
                    .map(|(key, (_, at))| (*at, key.clone()))
                    .collect();
                let evict = (self.capacity / 10).clamp(1, ages.len());
                ages.select_nth_unstable_by_key(evict - 1, |(at, _)| *at);
                for (_, key) in &ages[..evict] {
                    entries.remove(key);
                }
            }
        }
        entries.insert(key, (value, Instant::now()));
    }

    /// Drops every entry whose value fails `keep`.
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|_, (value, _)| keep(value));
    }

    pub fn remove(&self, key: &K) {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let cache = TtlCache::new(2, Duration::from_millis(0));
        cache.insert(1, "a");
        assert_eq!(cache.get(&1), None, "zero TTL: already expired");
        let cache = TtlCache::new(2, Duration::from_secs(60));
        cache.insert(1, "a");
        cache.insert(2, "b");
        cache.insert(3, "c");
        assert_eq!(cache.get(&3), Some("c"));
        assert!(cache.entries.lock().unwrap().len() <= 2);
        cache.remove(&3);
        assert_eq!(cache.get(&3), None);
    }

    #[test]
    fn a_full_cache_of_live_entries_evicts_its_oldest_not_everything() {
        let cache = TtlCache::new(100, Duration::from_secs(60));
        for key in 0..100 {
            cache.insert(key, key);
        }
        cache.insert(100, 100);
        assert_eq!(cache.entries.lock().unwrap().len(), 91, "10 of 100 evicted");
        assert_eq!(cache.get(&0), None, "the oldest went");
        assert_eq!(cache.get(&99), Some(99), "recent ones stay");
        assert_eq!(cache.get(&100), Some(100));
        // Refreshing a key that is already there evicts nothing.
        let before = cache.entries.lock().unwrap().len();
        cache.insert(99, 990);
        assert_eq!(cache.entries.lock().unwrap().len(), before);
    }
}
