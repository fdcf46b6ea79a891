use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// Entries are swept lazily: on read, and on write once the map has doubled
/// since the last sweep, so memory stays bounded by the live set.
#[derive(Clone, Debug, Default)]
pub(crate) struct MemoryCache {
    inner: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<String, (Bytes, Instant)>,
    sweep_at: usize,
}

impl MemoryCache {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every mutation below is a single map operation, so a panic cannot
        // leave the map inconsistent; recover from poisoning.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, key: &str) -> Option<Bytes> {
        let mut state = self.lock();
        match state.entries.get(key) {
            Some((value, expires)) if *expires > Instant::now() => Some(value.clone()),
            Some(_) => {
                state.entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(crate) fn set(&self, key: &str, value: Bytes, ttl: Duration) {
        let now = Instant::now();
        insert(&mut self.lock(), key, value, now, ttl);
    }

    pub(crate) fn set_if_newer(&self, key: &str, version: i64, value: Bytes, ttl: Duration) -> bool {
        let now = Instant::now();
        // Compare and store under one lock: atomic like the Redis script.
        let mut state = self.lock();
        if let Some((current, expires)) = state.entries.get(key)
            && *expires > now
            && super::split_version(current).is_some_and(|(stored, _)| stored >= version)
        {
            return false;
        }
        let mut tagged = Vec::with_capacity(value.len() + 21);
        tagged.extend_from_slice(version.to_string().as_bytes());
        tagged.push(b':');
        tagged.extend_from_slice(&value);
        insert(&mut state, key, Bytes::from(tagged), now, ttl);
        true
    }

    pub(crate) fn delete(&self, key: &str) {
        self.lock().entries.remove(key);
    }
}

/// Inserts, sweeping expired entries once the map has doubled since the
/// last sweep.
fn insert(state: &mut State, key: &str, value: Bytes, now: Instant, ttl: Duration) {
    state.entries.insert(key.to_owned(), (value, now + ttl));
    if state.entries.len() > state.sweep_at {
        state.entries.retain(|_, (_, expires)| *expires > now);
        state.sweep_at = (state.entries.len() * 2).max(1024);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_their_ttl() {
        let cache = MemoryCache::default();
        cache.set("a", Bytes::from_static(b"1"), Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(cache.get("a").as_deref(), Some(&b"1"[..]));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(cache.get("a"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn expired_entries_are_swept_on_growth() {
        let cache = MemoryCache::default();
        for i in 0..2000 {
            cache.set(&format!("k{i}"), Bytes::new(), Duration::from_secs(1));
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for i in 0..1100 {
            cache.set(&format!("n{i}"), Bytes::new(), Duration::from_secs(60));
        }
        assert!(cache.lock().entries.len() <= 2048, "{}", cache.lock().entries.len());
        cache.delete("n0");
        assert_eq!(cache.get("n0"), None);
        assert!(cache.get("n1").is_some());
    }
}
