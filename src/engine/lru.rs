//! A small least-recently-used cache keyed by 64-bit hashes and bounded by a total cost
//! (entries for the DMS signal cache, bytes for the image embedding cache).

use std::collections::{HashMap, VecDeque};

/// Entries keyed by hash; the least recently used are evicted once their costs exceed the budget.
pub struct Lru<V> {
    entries: HashMap<u64, (V, usize)>,
    order: VecDeque<u64>,
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
    pub fn get(&mut self, key: u64) -> Option<&V> {
        if !self.entries.contains_key(&key) {
            return None;
        }
        self.touch(key);
        self.entries.get(&key).map(|(v, _)| v)
    }

    /// Stores `value` under `key`; a value costing more than the whole budget is not kept.
    pub fn put(&mut self, key: u64, value: V, cost: usize) {
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

    fn touch(&mut self, key: u64) {
        self.order.retain(|k| *k != key);
        self.order.push_back(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used_within_the_budget() {
        let mut lru = Lru::new(10);
        lru.put(1, "a", 4);
        lru.put(2, "b", 4);
        assert_eq!(lru.get(1), Some(&"a")); // 2 is now the oldest
        lru.put(3, "c", 4);
        assert_eq!(lru.get(2), None);
        assert_eq!(lru.get(1), Some(&"a"));
        assert_eq!(lru.get(3), Some(&"c"));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn replacing_an_entry_updates_its_cost_and_oversized_values_are_skipped() {
        let mut lru = Lru::new(10);
        lru.put(1, 1, 8);
        lru.put(1, 2, 2);
        lru.put(2, 3, 8);
        assert_eq!(lru.get(1), Some(&2));
        assert_eq!(lru.get(2), Some(&3));
        lru.put(3, 4, 11);
        assert_eq!(lru.get(3), None);
        let mut none = Lru::new(0);
        none.put(1, 1, 1);
        assert!(none.is_empty());
    }
}
