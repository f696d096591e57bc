//! A small least-recently-used cache keyed by SHA-256 content keys and bounded by a total cost
//! (entries for the DMS signal cache, bytes for the image embedding cache).

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};

/// The identity of content (an image's pixels, a chunk of it, a signal-cache entry): a SHA-256
/// digest, so that two different inputs never share cached embeddings, KV or signals.
pub type ContentKey = [u8; 32];

/// The [`ContentKey`] of `parts`, each length-prefixed (so `["ab", "c"]` and `["a", "bc"]`
/// differ).
pub fn content_key(parts: &[&[u8]]) -> ContentKey {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finalize().into()
}

/// Entries by content key; the least recently used are evicted once their costs exceed the
/// budget.
pub struct Lru<V> {
    entries: HashMap<ContentKey, (V, usize)>,
    order: VecDeque<ContentKey>,
    budget: usize,
    used: usize,
}

impl<V> Lru<V> {
    /// An empty cache whose entries may cost `budget` in total (0 keeps nothing).
    pub fn new(budget: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: VecDeque::new(),
            budget,
            used: 0,
        }
    }

    /// The entry for `key`, marking it as the most recently used.
    pub fn get(&mut self, key: ContentKey) -> Option<&V> {
        if !self.entries.contains_key(&key) {
            return None;
        }
        self.touch(key);
        self.entries.get(&key).map(|(v, _)| v)
    }

    /// Stores `value` under `key`; a value costing more than the whole budget is not kept.
    pub fn put(&mut self, key: ContentKey, value: V, cost: usize) {
        if cost > self.budget {
            return;
        }
        if let Some((_, old)) = self.entries.insert(key, (value, cost)) {
            self.used -= old;
        }
        self.used += cost;
        self.touch(key);
        while self.used > self.budget {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            if let Some((_, c)) = self.entries.remove(&oldest) {
                self.used -= c;
            }
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the cache holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn touch(&mut self, key: ContentKey) {
        self.order.retain(|k| *k != key);
        self.order.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u8) -> ContentKey {
        content_key(&[&[n]])
    }

    #[test]
    fn content_keys_separate_their_parts() {
        assert_ne!(content_key(&[b"ab", b"c"]), content_key(&[b"a", b"bc"]));
        assert_eq!(content_key(&[b"x"]), content_key(&[b"x"]));
    }

    #[test]
    fn evicts_the_least_recently_used_within_the_budget() {
        let mut lru = Lru::new(10);
        lru.put(k(1), "a", 4);
        lru.put(k(2), "b", 4);
        assert_eq!(lru.get(k(1)), Some(&"a")); // 2 is now the oldest
        lru.put(k(3), "c", 4);
        assert_eq!(lru.get(k(2)), None);
        assert_eq!(lru.get(k(1)), Some(&"a"));
        assert_eq!(lru.get(k(3)), Some(&"c"));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn replacing_an_entry_updates_its_cost_and_oversized_values_are_skipped() {
        let mut lru = Lru::new(10);
        lru.put(k(1), 1, 8);
        lru.put(k(1), 2, 2);
        lru.put(k(2), 3, 8);
        assert_eq!(lru.get(k(1)), Some(&2));
        assert_eq!(lru.get(k(2)), Some(&3));
        lru.put(k(3), 4, 11);
        assert_eq!(lru.get(k(3)), None);
        let mut none = Lru::new(0);
        none.put(k(1), 1, 1);
        assert!(none.is_empty());
    }
}
