//! The credential caches (token, license-key and session look-ups), so a
//! seat operation makes no database round trip before the appender once
//! its credentials are warm: `moka`'s concurrent cache (bounded, entries
//! live for a time-to-live from insertion), behind the few calls the
//! server makes.

use std::hash::Hash;
use std::time::Duration;

pub struct TtlCache<K, V> {
    entries: moka::sync::Cache<K, V>,
}

impl<K, V> TtlCache<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        TtlCache {
            entries: moka::sync::Cache::builder()
                .max_capacity(capacity.max(1) as u64)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.entries.get(key)
    }

    pub fn insert(&self, key: K, value: V) {
        self.entries.insert(key, value);
    }

    /// Drops every entry whose value fails `keep`, before it returns (a
    /// revoked credential is never served afterwards).
    pub fn retain(&self, mut keep: impl FnMut(&V) -> bool) {
        for (key, value) in self.entries.iter() {
            if !keep(&value) {
                self.entries.invalidate(&*key);
            }
        }
    }

    pub fn remove(&self, key: &K) {
        self.entries.invalidate(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire() {
        let cache = TtlCache::new(2, Duration::from_millis(0));
        cache.insert(1, "a");
        assert_eq!(cache.get(&1), None, "zero TTL: already expired");
        let cache = TtlCache::new(10, Duration::from_secs(60));
        cache.insert(1, "a");
        assert_eq!(cache.get(&1), Some("a"));
        cache.remove(&1);
        assert_eq!(cache.get(&1), None);
    }

    #[test]
    fn capacity_is_bounded() {
        let cache = TtlCache::new(100, Duration::from_secs(60));
        for key in 0..1_000 {
            cache.insert(key, key);
        }
        cache.entries.run_pending_tasks();
        assert!(
            cache.entries.entry_count() <= 100,
            "{}",
            cache.entries.entry_count()
        );
    }

    #[test]
    fn retain_drops_what_fails_at_once() {
        let cache = TtlCache::new(100, Duration::from_secs(60));
        for key in 0..10 {
            cache.insert(key, key);
        }
        cache.retain(|value| value % 2 == 0);
        for key in 0..10 {
            assert_eq!(cache.get(&key).is_some(), key % 2 == 0, "{key}");
        }
    }
}
