//! Metric handles resolved from the recorder once per label set rather than
//! on every event: each `counter!`/`histogram!` with labels builds a key,
//! hashes it and searches the registry, which on the request path cost more
//! than the event it records. Keys must come from closed sets (route
//! templates, status codes, actor and message names): the map only grows.
//! A handle made before the process's recorder is installed belongs to the
//! no-op recorder for good: install it first (`server::start_with` does).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{PoisonError, RwLock};

pub struct Handles<K, H>(RwLock<Option<HashMap<K, H>>>);

impl<K: Hash + Eq, H: Clone> Handles<K, H> {
    pub const fn new() -> Self {
        Handles(RwLock::new(None))
    }

    /// The handle kept for `key`, made by `make` (with the key to keep) the
    /// first time it is asked for.
    pub fn get<Q>(&self, key: &Q, make: impl FnOnce() -> (K, H)) -> H
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let known = |map: &Option<HashMap<K, H>>| map.as_ref()?.get(key).cloned();
        if let Some(h) = known(&self.0.read().unwrap_or_else(PoisonError::into_inner)) {
            return h;
        }
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(h) = known(&map) {
            return h;
        }
        let (k, h) = make();
        map.get_or_insert_default().insert(k, h.clone());
        h
    }
}

impl<K: Hash + Eq, H: Clone> Default for Handles<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

/// Adds one to the unlabelled counter `name`, its handle resolved once.
pub fn count(name: &'static str) {
    static COUNTERS: Handles<&'static str, metrics::Counter> = Handles::new();
    COUNTERS
        .get(&name, || (name, metrics::counter!(name)))
        .increment(1);
}

#[cfg(test)]
mod tests {
    use super::Handles;

    #[test]
    fn a_handle_is_made_once_per_key() {
        let handles: Handles<String, usize> = Handles::new();
        let mut made = 0;
        for key in ["a", "b", "a", "a", "b"] {
            let got = handles.get(key, || {
                made += 1;
                (key.to_string(), made)
            });
            assert_eq!(got, if key == "a" { 1 } else { 2 });
        }
        assert_eq!(made, 2);
    }
}
