//! The state cache: the contacts of the owned partitions, as last committed.
//!
//! A batch takes its contacts' states from here and reads only the misses
//! from Redis; after a successful commit the new states go back. A
//! partition's entries are valid only for the owner epoch they were
//! committed under and the rules they were scored with: a new claim, a
//! failed commit, a revocation or a rules reload drops them, so Redis stays
//! the source of truth and the cache never holds what Redis does not.

use std::collections::HashMap;
use std::sync::Arc;

use crate::rules::RuleSet;
use crate::telemetry;

use super::batch::Known;

/// The contacts of one owned partition.
#[derive(Default)]
struct PartitionCache {
    epoch: i64,
    contacts: HashMap<String, Known>,
}

/// Cached contact states of the owned partitions, bounded in size.
pub struct StateCache {
    rules: Option<Arc<RuleSet>>,
    partitions: HashMap<i32, PartitionCache>,
    max_contacts: usize,
}

impl StateCache {
    /// A cache holding at most `max_contacts` contacts; 0 turns it off.
    pub fn new(max_contacts: usize) -> Self {
        Self { rules: None, partitions: HashMap::new(), max_contacts }
    }

    /// Takes the cached states of `ids` out of partition `partition` (owned
    /// under `epoch`, scored with `rules`); returns them and the ids missing.
    pub fn take<'a>(
        &mut self,
        rules: &Arc<RuleSet>,
        partition: i32,
        epoch: i64,
        ids: &[&'a str],
    ) -> (HashMap<String, Known>, Vec<&'a str>) {
        if self.max_contacts == 0 {
            return (HashMap::new(), ids.to_vec());
        }
        if !self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, rules)) {
            self.partitions.clear();
            self.rules = Some(rules.clone());
        }
        let cache = self.partitions.entry(partition).or_default();
        if cache.epoch != epoch {
            *cache = PartitionCache { epoch, contacts: HashMap::new() };
        }
        let mut hits = HashMap::with_capacity(ids.len());
        let mut misses = Vec::new();
        for id in ids {
            match cache.contacts.remove(*id) {
                Some(k) => {
                    hits.insert((*id).to_string(), k);
                }
                None => misses.push(*id),
            }
        }
        telemetry::state_cache_lookups(hits.len(), misses.len());
        (hits, misses)
    }

    /// Puts committed states back, if the partition is still cached under
    /// `epoch`; evicts contacts beyond the size bound.
    pub fn put(&mut self, partition: i32, epoch: i64, contacts: HashMap<String, Known>) {
        if self.max_contacts == 0 {
            return;
        }
        let owned = self.partitions.len().max(1);
        let Some(cache) = self.partitions.get_mut(&partition).filter(|c| c.epoch == epoch) else { return };
        cache.contacts.extend(contacts);
        let share = (self.max_contacts / owned).max(1);
        if cache.contacts.len() > share {
            let excess = cache.contacts.len() - share;
            let victims: Vec<String> = cache.contacts.keys().take(excess).cloned().collect();
            for v in victims {
                cache.contacts.remove(&v);
            }
        }
        telemetry::state_cache_size(self.partitions.values().map(|c| c.contacts.len()).sum());
    }

    /// Forgets these contacts of a partition (changed in Redis by a sweep).
    pub fn forget(&mut self, partition: i32, ids: impl IntoIterator<Item = String>) {
        if let Some(cache) = self.partitions.get_mut(&partition) {
            for id in ids {
                cache.contacts.remove(&id);
            }
        }
    }

    /// Drops a partition's entries (a failed commit, a revocation).
    pub fn drop_partition(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Drops every partition not in `owned`.
    pub fn retain_owned(&mut self, owned: impl Fn(i32) -> bool) {
        self.partitions.retain(|p, _| owned(*p));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::ContactState;

    fn known() -> Known {
        Known { account: None, state: ContactState::new(1), stored: HashMap::new(), exact: true }
    }

    fn rules() -> Arc<RuleSet> {
        Arc::new(
            RuleSet::parse(
                "models: [{name: m, half_life: 1d, rules: [{id: p, when: {kind: page_view}, points: 1}]}]",
                "t",
            )
            .unwrap(),
        )
    }

    #[test]
    fn entries_live_for_one_epoch_and_one_rule_set() {
        let r = rules();
        let mut c = StateCache::new(100);
        let (hits, misses) = c.take(&r, 0, 1, &["a", "b"]);
        assert!(hits.is_empty());
        assert_eq!(misses, ["a", "b"]);
        c.put(0, 1, HashMap::from([("a".to_string(), known()), ("b".to_string(), known())]));
        let (hits, misses) = c.take(&r, 0, 1, &["a", "c"]);
        assert_eq!(hits.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(misses, ["c"]);
        c.put(0, 1, hits);
        // A new claim of the partition starts from Redis again.
        let (hits, _) = c.take(&r, 0, 2, &["a", "b"]);
        assert!(hits.is_empty());
        c.put(0, 2, HashMap::from([("a".to_string(), known())]));
        // A put under an epoch no longer held is ignored.
        c.put(0, 1, HashMap::from([("b".to_string(), known())]));
        let (hits, _) = c.take(&r, 0, 2, &["a", "b"]);
        assert_eq!(hits.len(), 1);
        c.put(0, 2, hits);
        // Reloaded rules start from Redis again.
        let (hits, _) = c.take(&rules(), 0, 2, &["a"]);
        assert!(hits.is_empty());
    }

    #[test]
    fn the_size_bound_holds() {
        let r = rules();
        let mut c = StateCache::new(10);
        let ids: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        c.take(&r, 0, 1, &refs);
        c.put(0, 1, ids.iter().map(|i| (i.clone(), known())).collect());
        let (hits, misses) = c.take(&r, 0, 1, &refs);
        assert_eq!((hits.len(), misses.len()), (10, 15));
        let mut c = StateCache::new(0);
        c.put(0, 1, ids.iter().map(|i| (i.clone(), known())).collect());
        assert_eq!(c.take(&r, 0, 1, &refs).0.len(), 0, "0 turns the cache off");
    }
}
