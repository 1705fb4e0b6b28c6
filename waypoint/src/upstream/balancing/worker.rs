//! What each worker thread keeps for itself of the choices it makes, as Envoy keeps a load
//! balancer per worker (`ThreadLocalLoadBalancer`): its copy of each plan's tables and pools
//! over the endpoints not ejected (shared and immutable, taken from the plan under its lock
//! only when the ejected set has changed since), and its EDF schedules of weighted least
//! request. A choice reads them without a lock. Schedules of one pool on different workers
//! diverge, as Envoy's per-worker schedules do: each worker gives every endpoint its share of
//! that worker's picks, by weights read from the shared requests in flight.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use super::edf::EdfSchedule;
use super::plan::{AvailableTables, BalancingPlan, Ejections};
use crate::model::Endpoint;

/// A worker's entries, by plan or pool id, each with a token of what it belongs to, so that
/// the entries of plans and pools gone are dropped (on a miss, once there are twice as many
/// entries as after the last sweep).
struct Entries<T> {
    by_id: HashMap<u64, (Weak<()>, T)>,
    sweep_at: usize,
}

impl<T> Default for Entries<T> {
    fn default() -> Self {
        Entries {
            by_id: HashMap::new(),
            sweep_at: 16,
        }
    }
}

impl<T> Entries<T> {
    fn insert(&mut self, id: u64, alive: &Arc<()>, value: T) -> &mut T {
        if self.by_id.len() >= self.sweep_at {
            self.by_id.retain(|_, (alive, _)| alive.strong_count() > 0);
            self.sweep_at = (self.by_id.len() * 2).max(16);
        }
        self.by_id.insert(id, (Arc::downgrade(alive), value));
        &mut self.by_id.get_mut(&id).expect("inserted").1
    }
}

thread_local! {
    static AVAILABLE: RefCell<Entries<Arc<AvailableTables>>> = RefCell::default();
    static SCHEDULES: RefCell<Entries<EdfSchedule>> = RefCell::default();
}

/// `f` of this worker's tables and pools of `plan` over the endpoints not ejected under
/// `ejections`, taken from the plan ([`BalancingPlan::available_tables`], built there once per
/// change of the ejected set) when this worker's are out of date.
pub(super) fn with_available<R>(
    plan: &BalancingPlan,
    endpoints: &[Endpoint],
    ejections: &Ejections<'_>,
    f: impl FnOnce(&AvailableTables) -> R,
) -> R {
    AVAILABLE.with(|cell| {
        let mut entries = cell.borrow_mut();
        let current = entries
            .by_id
            .get(&plan.id())
            .map(|(_, tables)| tables)
            .filter(|tables| tables.serves(ejections));
        if let Some(tables) = current {
            return f(tables);
        }
        let tables = plan.available_tables(endpoints, ejections);
        f(entries.insert(plan.id(), plan.alive(), tables))
    })
}

/// The member of the schedule of pool `id` (of `members`, `alive` while it lasts) due first,
/// put back with its `weight` now: this worker's schedule, made on its first pick here
/// ([`EdfSchedule::new`], after a random number of picks).
pub(super) fn scheduled(
    id: u64,
    alive: &Arc<()>,
    members: &[usize],
    weight: impl Fn(usize) -> f64,
) -> Option<usize> {
    SCHEDULES.with(|cell| {
        let mut entries = cell.borrow_mut();
        if let Some((_, schedule)) = entries.by_id.get_mut(&id) {
            return schedule.pick_and_add(weight);
        }
        let picks = rand::random_range(0..members.len().max(1));
        let schedule = entries.insert(id, alive, EdfSchedule::new(members, &weight, picks));
        schedule.pick_and_add(weight)
    })
}
