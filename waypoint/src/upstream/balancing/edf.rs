//! Envoy's earliest-deadline-first schedule (`EdfScheduler`,
//! source/common/upstream/edf_scheduler.h), by which its weighted least request balancer picks
//! a host in O(log n): each entry is due at the schedule's time plus the inverse of its weight;
//! the entry due first is picked, the time moves to its deadline, and it goes back in with the
//! weight it has then (ties by the order of entry, as Envoy's `order_offset_`).

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// A schedule of endpoint indices (see the module comment).
#[derive(Debug, Default)]
pub(super) struct EdfSchedule {
    queue: BinaryHeap<Reverse<Entry>>,
    current: f64,
    order: u64,
}

#[derive(Debug)]
struct Entry {
    deadline: f64,
    order: u64,
    index: usize,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.deadline
            .total_cmp(&other.deadline)
            .then(self.order.cmp(&other.order))
    }
}

impl EdfSchedule {
    /// A schedule of the endpoints at `indices` by their `weight`, then `picks` picks made and
    /// put back, as Envoy's `createWithPicks` does with a random number of picks so that
    /// proxies started together do not pick in step.
    pub(super) fn new(indices: &[usize], weight: impl Fn(usize) -> f64, picks: usize) -> Self {
        let mut schedule = EdfSchedule::default();
        for index in indices {
            schedule.add(*index, weight(*index));
        }
        for _ in 0..picks {
            schedule.pick_and_add(&weight);
        }
        schedule
    }

    fn add(&mut self, index: usize, weight: f64) {
        // A weight of 0 (or less) is never due; Envoy's weights are positive.
        let deadline = self.current + 1.0 / weight.max(f64::MIN_POSITIVE);
        self.order += 1;
        self.queue.push(Reverse(Entry {
            deadline,
            order: self.order,
            index,
        }));
    }

    /// The entry due first, put back with its `weight` now (Envoy's `pickAndAdd`).
    pub(super) fn pick_and_add(&mut self, weight: impl Fn(usize) -> f64) -> Option<usize> {
        let Reverse(entry) = self.queue.pop()?;
        self.current = entry.deadline;
        self.add(entry.index, weight(entry.index));
        Some(entry.index)
    }
}

#[cfg(test)]
mod tests {
    use super::EdfSchedule;

    /// Weights 1 and 3: in every cycle of four picks, the heavy entry three times and the light
    /// one once (Envoy's schedule is exact per cycle); a weight that changes applies from the
    /// entry's next turn.
    #[test]
    fn each_entry_is_picked_in_proportion_to_its_weight() {
        let weights = [1.0, 3.0];
        let mut schedule = EdfSchedule::new(&[0, 1], |i| weights[i], 0);
        for cycle in 0..100 {
            let picks: Vec<usize> = (0..4)
                .map(|_| schedule.pick_and_add(|i| weights[i]).unwrap())
                .collect();
            let heavy = picks.iter().filter(|i| **i == 1).count();
            assert_eq!(heavy, 3, "cycle {cycle}: {picks:?}");
        }
        let equal = [1.0, 1.0];
        let picks: Vec<usize> = (0..100)
            .map(|_| schedule.pick_and_add(|i| equal[i]).unwrap())
            .collect();
        let heavy = picks[10..].iter().filter(|i| **i == 1).count();
        assert!((44..=46).contains(&heavy), "{heavy} of 90 once equal");
        assert_eq!(EdfSchedule::default().pick_and_add(|_| 1.0), None);
    }
}
