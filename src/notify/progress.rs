//! Which alert-topic offset may be stored, per partition.
//!
//! Invariant: the offset to store (the next one to read after a restart)
//! never passes an alert with a delivery that has neither succeeded nor
//! been dead-lettered. It is the lowest unfinished offset, or one past the
//! highest offset read when every alert read is finished. Deliveries finish
//! in any order; a slow destination holds back the stored offset, never the
//! deliveries of later alerts.

use std::collections::{BTreeMap, HashMap};

/// Unfinished alerts of one partition.
#[derive(Debug, Default, Clone)]
struct Partition {
    /// Offset -> deliveries not yet finished.
    open: BTreeMap<i64, usize>,
    /// The highest offset read.
    highest: Option<i64>,
    /// The offset last handed out for storing.
    stored: Option<i64>,
}

impl Partition {
    fn next(&self) -> Option<i64> {
        self.open.keys().next().copied().or(self.highest.map(|h| h + 1))
    }
}

/// Progress of every partition read.
#[derive(Debug, Default, Clone)]
pub struct Progress {
    partitions: HashMap<i32, Partition>,
    open_alerts: usize,
}

impl Progress {
    /// An alert at `offset` was read and handed to `deliveries` destinations
    /// (0 when no route takes it). A re-read offset adds its deliveries to
    /// those still open.
    pub fn begin(&mut self, partition: i32, offset: i64, deliveries: usize) {
        let p = self.partitions.entry(partition).or_default();
        p.highest = Some(p.highest.map_or(offset, |h| h.max(offset)));
        if deliveries > 0 {
            let open = p.open.entry(offset).or_insert(0);
            if *open == 0 {
                self.open_alerts += 1;
            }
            *open += deliveries;
        }
    }

    /// One delivery of the alert at `offset` succeeded or was dead-lettered.
    pub fn finish(&mut self, partition: i32, offset: i64) {
        let Some(p) = self.partitions.get_mut(&partition) else { return };
        if let Some(open) = p.open.get_mut(&offset) {
            *open -= 1;
            if *open == 0 {
                p.open.remove(&offset);
                self.open_alerts -= 1;
            }
        }
    }

    /// The next offset to read of `partition` after a restart, given what
    /// is finished.
    pub fn storable(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition)?.next()
    }

    /// The partitions whose storable offset changed since the last call,
    /// with that offset.
    pub fn take_changes(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (&partition, p) in self.partitions.iter_mut() {
            let next = p.next();
            if next.is_some() && next != p.stored {
                p.stored = next;
                out.extend(next.map(|n| (partition, n)));
            }
        }
        out.sort_unstable();
        out
    }

    /// Alerts with at least one delivery open.
    pub fn open_alerts(&self) -> usize {
        self.open_alerts
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_slow_delivery_holds_back_only_the_stored_offset() {
        let mut p = Progress::default();
        p.begin(0, 10, 2);
        p.begin(0, 11, 1);
        p.begin(0, 12, 0);
        assert_eq!(p.storable(0), Some(10));
        p.finish(0, 11);
        p.finish(0, 10);
        assert_eq!(p.storable(0), Some(10), "one of two destinations still open");
        assert_eq!(p.open_alerts(), 1);
        p.finish(0, 10);
        assert_eq!(p.storable(0), Some(13));
        assert_eq!(p.take_changes(), vec![(0, 13)]);
        assert_eq!(p.take_changes(), vec![], "reported once");
        assert_eq!(p.storable(1), None);
    }

    proptest! {
        /// Whatever order deliveries finish in, the storable offset never
        /// passes an open alert, and reaches one past the last when all finish.
        #[test]
        fn never_passes_an_open_alert(
            fanout in proptest::collection::vec(0usize..4, 1..60),
            order in proptest::collection::vec(any::<u32>(), 0..240),
        ) {
            let mut p = Progress::default();
            let mut open: Vec<i64> = Vec::new();
            for (i, n) in fanout.iter().enumerate() {
                p.begin(3, i as i64 + 100, *n);
                open.extend(std::iter::repeat_n(i as i64 + 100, *n));
            }
            let mut order = order.into_iter();
            while !open.is_empty() {
                let k = order.next().unwrap_or(0) as usize % open.len();
                let offset = open.swap_remove(k);
                p.finish(3, offset);
                let s = p.storable(3).unwrap();
                prop_assert!(open.iter().all(|o| s <= *o), "stored {s} passes an open alert in {open:?}");
            }
            prop_assert_eq!(p.storable(3), Some(fanout.len() as i64 + 100));
            prop_assert_eq!(p.open_alerts(), 0);
        }
    }
}
