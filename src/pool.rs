//! Sharing by key, for as long as someone holds the value: the one weak-keyed cache of
//! the project (TLS contexts in the factory, clients in the scalers, CA directories in the
//! Kafka scaler).
//!
//! A [`SharedPool`] maps a key to a [`Weak`] reference: the value lives as long as some
//! holder keeps its [`Arc`], and a later request for the same key gets the same value
//! while it lives. Dead entries are pruned as the map grows (amortised, never a full scan
//! per insert).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// A map from key to a shared value. Entries die with their last holder.
pub struct SharedPool<K, V: ?Sized> {
    inner: Mutex<Map<K, V>>,
}

struct Map<K, V: ?Sized> {
    map: HashMap<K, Weak<V>>,
    /// The size at which dead entries are pruned next.
    prune_at: usize,
}

impl<K, V: ?Sized> Default for SharedPool<K, V> {
    fn default() -> Self {
        SharedPool {
            inner: Mutex::new(Map {
                map: HashMap::new(),
                prune_at: 64,
            }),
        }
    }
}

impl<K, V: ?Sized> std::fmt::Debug for SharedPool<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedPool")
            .field("live", &self.live_count())
            .finish()
    }
}

impl<K, V: ?Sized> SharedPool<K, V> {
    fn lock(&self) -> MutexGuard<'_, Map<K, V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn live_count(&self) -> usize {
        self.lock()
            .map
            .values()
            .filter(|v| v.strong_count() > 0)
            .count()
    }

    /// Values alive now.
    pub fn live(&self) -> usize {
        self.live_count()
    }

    /// Every live value.
    pub fn all(&self) -> Vec<Arc<V>> {
        self.lock().map.values().filter_map(Weak::upgrade).collect()
    }
}

impl<K: Hash + Eq + Clone, V: ?Sized> SharedPool<K, V> {
    /// The live value for `key`, if any.
    pub fn get(&self, key: &K) -> Option<Arc<V>> {
        self.lock().map.get(key).and_then(Weak::upgrade)
    }

    /// Keeps `value` for `key` unless a live value is there already, which is returned
    /// instead (two threads that built the same value meanwhile end up sharing one).
    pub fn insert_or_existing(&self, key: K, value: Arc<V>) -> Arc<V> {
        let mut inner = self.lock();
        if let Some(live) = inner.map.get(&key).and_then(Weak::upgrade) {
            return live;
        }
        inner.insert(key, &value);
        value
    }

    /// Keeps `value` for `key`, in place of whatever was there.
    pub fn put(&self, key: K, value: &Arc<V>) {
        self.lock().insert(key, value);
    }

    /// Forgets `key` if it holds `value`.
    pub fn remove_if(&self, key: &K, value: &Arc<V>) {
        let mut inner = self.lock();
        if inner
            .map
            .get(key)
            .is_some_and(|w| std::ptr::addr_eq(w.as_ptr(), Arc::as_ptr(value)))
        {
            inner.map.remove(key);
        }
    }

    /// The value for `key`, made by `make` if no live one exists.
    pub fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> Arc<V>
    where
        V: Sized,
    {
        match self.try_get_or_insert_with(key, || Ok::<_, std::convert::Infallible>(make())) {
            Ok(v) => v,
            Err(never) => match never {},
        }
    }

    /// Like [`SharedPool::get_or_insert_with`], for values whose creation can fail.
    /// `make` runs under the pool's lock, so one value is made per key.
    pub fn try_get_or_insert_with<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E>
    where
        V: Sized,
    {
        let mut inner = self.lock();
        if let Some(live) = inner.map.get(key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        let fresh = Arc::new(make()?);
        inner.insert(key.clone(), &fresh);
        Ok(fresh)
    }
}

impl<K: Hash + Eq, V: ?Sized> Map<K, V> {
    fn insert(&mut self, key: K, value: &Arc<V>) {
        self.map.insert(key, Arc::downgrade(value));
        if self.map.len() > self.prune_at {
            self.map.retain(|_, v| v.strong_count() > 0);
            self.prune_at = (self.map.len() * 2).max(64);
        }
    }
}

/// Hashes a secret for use in a pool key, so keys never hold the secret itself.
#[must_use]
pub fn secret_digest(secret: Option<&str>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    match secret {
        Some(s) => Sha256::digest(s.as_bytes()).into(),
        None => [0; 32],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_while_held_and_made_again_after() {
        let pool: SharedPool<&str, u32> = SharedPool::default();
        let mut made = 0;
        let a = pool.get_or_insert_with(&"k", || {
            made += 1;
            1
        });
        let b = pool.get_or_insert_with(&"k", || {
            made += 1;
            2
        });
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!((made, pool.live()), (1, 1));
        drop((a, b));
        assert_eq!(pool.live(), 0);
        assert!(pool.get(&"k").is_none());
        let c = pool.get_or_insert_with(&"k", || 3);
        assert_eq!(*c, 3);
    }

    #[test]
    fn insert_keeps_the_live_value() {
        let pool: SharedPool<u8, u8> = SharedPool::default();
        let first = pool.insert_or_existing(1, Arc::new(10));
        let second = pool.insert_or_existing(1, Arc::new(20));
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(*second, 10);
    }

    #[test]
    fn dead_entries_are_pruned_as_the_map_grows() {
        let pool: SharedPool<u32, u32> = SharedPool::default();
        for i in 0..10_000 {
            let v = pool.get_or_insert_with(&i, || i);
            drop(v);
        }
        assert!(pool.lock().map.len() <= 130, "{}", pool.lock().map.len());
    }
}
