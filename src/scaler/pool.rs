//! Sharing clients between triggers: one client per key (endpoint + trust fingerprint +
//! credentials), alive as long as some trigger holds it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

/// A map from key to a shared client. Entries die with their last holder.
pub struct SharedPool<K, V> {
    map: Mutex<HashMap<K, Weak<V>>>,
}

impl<K, V> Default for SharedPool<K, V> {
    fn default() -> Self {
        SharedPool {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V> SharedPool<K, V> {
    /// The client for `key`, made by `make` if no live one exists.
    pub fn get_or_insert_with(&self, key: &K, make: impl FnOnce() -> V) -> Arc<V> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(live) = map.get(key).and_then(Weak::upgrade) {
            return live;
        }
        map.retain(|_, v| v.strong_count() > 0);
        let fresh = Arc::new(make());
        map.insert(key.clone(), Arc::downgrade(&fresh));
        fresh
    }

    /// Like [`SharedPool::get_or_insert_with`], for clients whose creation can fail.
    pub fn try_get_or_insert_with<E>(
        &self,
        key: &K,
        make: impl FnOnce() -> Result<V, E>,
    ) -> Result<Arc<V>, E> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(live) = map.get(key).and_then(Weak::upgrade) {
            return Ok(live);
        }
        map.retain(|_, v| v.strong_count() > 0);
        let fresh = Arc::new(make()?);
        map.insert(key.clone(), Arc::downgrade(&fresh));
        Ok(fresh)
    }

    /// Clients alive now.
    pub fn live(&self) -> usize {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.values().filter(|v| v.strong_count() > 0).count()
    }

    /// Every live client.
    pub fn all(&self) -> Vec<Arc<V>> {
        let map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.values().filter_map(Weak::upgrade).collect()
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
