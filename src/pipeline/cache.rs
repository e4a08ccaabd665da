//! The state cache: one owned partition's contacts, as last committed.
//!
//! Invariants:
//! - It belongs to one partition worker, so to one partition and one owner
//!   epoch: it lives and dies with the worker's claim.
//! - It holds only what Redis holds: a batch takes its contacts out, and
//!   their new states go back only once the commit is durable. A failed
//!   commit clears it; so does a rules reload (states scored under other
//!   rules), and a sweep forgets the contacts it changed behind it.
//! - It holds each contact once, as the bytes of its stored value (about a
//!   hundred bytes, where the decoded state takes several times that); a
//!   batch decodes the contacts it takes.
//! - It never holds an erased contact (its tombstone is read from Redis).
//! - It never holds more than its bound; beyond it, contacts are evicted
//!   and read from Redis again when next needed.

use std::collections::HashMap;
use std::sync::Arc;

use crate::rules::RuleSet;
use crate::store::{Stored, Written};
use crate::telemetry;

/// What the cache keeps of a contact: its stored value and whether its
/// sorted-set entries are known (they follow from the value when they are).
struct Kept {
    stored: bool,
    value: Option<std::sync::Arc<[u8]>>,
    entries_known: bool,
}

/// Cached contact states of one owned partition, bounded in size.
pub struct StateCache {
    rules: Option<Arc<RuleSet>>,
    contacts: HashMap<String, Kept>,
    max_contacts: usize,
}

impl StateCache {
    /// A cache holding at most `max_contacts` contacts; 0 turns it off.
    pub fn new(max_contacts: usize) -> Self {
        Self { rules: None, contacts: HashMap::new(), max_contacts }
    }

    /// Takes the cached states of `ids` (to be scored with `rules`); returns
    /// them and the ids missing (a value that does not decode is missing,
    /// and read from Redis again).
    pub fn take<'a>(&mut self, rules: &Arc<RuleSet>, ids: &[&'a str]) -> (HashMap<String, Stored>, Vec<&'a str>) {
        if self.max_contacts == 0 {
            return (HashMap::new(), ids.to_vec());
        }
        if !self.rules.as_ref().is_some_and(|r| Arc::ptr_eq(r, rules)) {
            self.clear();
            self.rules = Some(rules.clone());
        }
        let mut hits = HashMap::with_capacity(ids.len());
        let mut misses = Vec::new();
        for id in ids {
            let found = self.contacts.remove(*id).and_then(|k| {
                let entries = k.entries_known.then(Vec::new);
                Stored::from_written(
                    rules,
                    Written { stored: k.stored, legacy: false, value: k.value, entries, erased: false },
                )
                .ok()
            });
            match found {
                Some(s) => {
                    hits.insert((*id).to_string(), s);
                }
                None => misses.push(*id),
            }
        }
        telemetry::state_cache_lookups(hits.len(), misses.len());
        (hits, misses)
    }

    /// Puts what is written for committed contacts back (a commit leaves
    /// none in the text layout); evicts contacts beyond the bound.
    pub fn put(&mut self, contacts: impl IntoIterator<Item = (String, Written)>) {
        if self.max_contacts == 0 {
            return;
        }
        let before = self.contacts.len();
        // An erased contact is not kept: its tombstone is read again.
        self.contacts.extend(
            contacts
                .into_iter()
                .filter(|(_, w)| !w.erased)
                .map(|(id, w)| (id, Kept { stored: w.stored, value: w.value, entries_known: w.entries.is_some() })),
        );
        if self.contacts.len() > self.max_contacts {
            let excess = self.contacts.len() - self.max_contacts;
            let victims: Vec<String> = self.contacts.keys().take(excess).cloned().collect();
            for v in victims {
                self.contacts.remove(&v);
            }
        }
        telemetry::state_cache_size(before, self.contacts.len());
    }

    /// Forgets these contacts (changed in Redis by a sweep).
    pub fn forget<'a>(&mut self, ids: impl IntoIterator<Item = &'a String>) {
        let before = self.contacts.len();
        for id in ids {
            self.contacts.remove(id);
        }
        telemetry::state_cache_size(before, self.contacts.len());
    }

    /// Drops every entry (a failed commit, the end of the claim).
    pub fn clear(&mut self) {
        telemetry::state_cache_size(self.contacts.len(), 0);
        self.contacts.clear();
    }
}

impl Drop for StateCache {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Written;

    fn stored(rules: &RuleSet) -> Written {
        Written::nothing(rules)
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
    fn entries_live_for_one_rule_set() {
        let r = rules();
        let mut c = StateCache::new(100);
        let (hits, misses) = c.take(&r, &["a", "b"]);
        assert!(hits.is_empty());
        assert_eq!(misses, ["a", "b"]);
        c.put([("a".to_string(), stored(&r)), ("b".to_string(), stored(&r))]);
        let (hits, misses) = c.take(&r, &["a", "c"]);
        assert_eq!(hits.keys().collect::<Vec<_>>(), ["a"]);
        let entries = hits["a"].written.entries.as_ref().map(Vec::len);
        assert_eq!(entries, Some(r.models.len()), "a contact with nothing stored has every model's entries");
        assert_eq!(misses, ["c"]);
        c.put(hits.into_iter().map(|(id, s)| (id, s.written)));
        c.forget([&"a".to_string()]);
        assert!(c.take(&r, &["a"]).0.is_empty(), "a swept contact is read again");
        c.put([("b".to_string(), stored(&r))]);
        // Reloaded rules start from Redis again.
        let (hits, _) = c.take(&rules(), &["b"]);
        assert!(hits.is_empty());
    }

    #[test]
    fn the_size_bound_holds() {
        let r = rules();
        let mut c = StateCache::new(10);
        let ids: Vec<String> = (0..25).map(|i| i.to_string()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        c.take(&r, &refs);
        c.put(ids.iter().map(|i| (i.clone(), stored(&r))));
        let (hits, misses) = c.take(&r, &refs);
        assert_eq!((hits.len(), misses.len()), (10, 15));
        let mut c = StateCache::new(0);
        c.put(ids.iter().map(|i| (i.clone(), stored(&r))));
        assert_eq!(c.take(&r, &refs).0.len(), 0, "0 turns the cache off");
    }
}
