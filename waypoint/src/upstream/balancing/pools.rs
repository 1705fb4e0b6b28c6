//! The pools a choice draws from when something narrows the cluster's healthy endpoints: by
//! locality priority, its healthy endpoints (the pool in panic), those not ejected, and those
//! of each weighed locality, with what the priority load and the locality weights are worked
//! out from. Envoy keeps such host sets per priority and rebuilds them when membership changes
//! (`HostSetImpl::updateHosts`, `healthyHostsPerLocality()`); here they are built once per
//! configuration ([`super::BalancingPlan`]) and once per change of the ejected set, so that a
//! choice finds its pool in O(priorities + localities) and draws from it in O(1) (O(log n)
//! weighted), whatever the number of endpoints.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::locality;
use crate::model::{Cluster, Endpoint};

/// Endpoints to draw from (indices into the cluster's endpoints, in the cluster's order, so
/// that round robin walks them as the walk of the endpoints does), with the running sum of
/// their weights.
pub(super) struct Pool {
    /// Distinct in the process, for the workers' EDF schedules of this pool
    /// ([`super::worker::scheduled`]).
    pub id: u64,
    /// Lives as long as the pool: a worker drops its schedule of a pool that is gone.
    pub alive: Arc<()>,
    pub members: Vec<usize>,
    cumulative_weights: Vec<u64>,
    /// Whether the members have the same weight (0 counts as 1, as the model reads it).
    pub equal_weights: bool,
}

/// A distinct id for a pool or a plan's schedule.
pub(super) fn next_id() -> u64 {
    static IDS: AtomicU64 = AtomicU64::new(1);
    IDS.fetch_add(1, Ordering::Relaxed)
}

impl Pool {
    fn new(endpoints: &[Endpoint], members: Vec<usize>) -> Pool {
        let weight = |i: usize| u64::from(endpoints[i].weight.max(1));
        let equal_weights = members
            .first()
            .is_none_or(|first| members.iter().all(|i| weight(*i) == weight(*first)));
        let cumulative_weights = members
            .iter()
            .scan(0u64, |sum, i| {
                *sum += weight(*i);
                Some(*sum)
            })
            .collect();
        Pool {
            id: next_id(),
            alive: Arc::new(()),
            members,
            cumulative_weights,
            equal_weights,
        }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The member `roll` (0 to 1) draws in proportion to the weights, by binary search of the
    /// running sum: the member the walk over the weights in order gives.
    pub fn weighted(&self, roll: f64) -> Option<usize> {
        let total = *self.cumulative_weights.last()?;
        let point = (roll.clamp(0.0, 1.0) * total as f64) as u64;
        let at = self.cumulative_weights.partition_point(|sum| *sum <= point);
        self.members.get(at.min(self.members.len() - 1)).copied()
    }
}

/// The pools of one locality priority.
pub(super) struct Level {
    /// Its healthy endpoints, ejected or not: the pool in panic.
    pub healthy: Pool,
    /// Its healthy endpoints not ejected.
    pub available: Pool,
    /// By weighed locality, its healthy endpoints there not ejected; empty when localities
    /// are not weighed.
    pub localities: Vec<Pool>,
    /// (endpoints, available) per weighed locality ([`locality::locality_counts`]).
    pub locality_counts: Vec<(usize, usize)>,
}

/// A cluster's pools for one ejected set (see the module comment).
pub(super) struct Pools {
    /// By locality priority; one level holding every endpoint when the cluster has one
    /// priority (as the walk of the endpoints takes them all then).
    pub levels: Vec<Level>,
    /// [`locality::priority_counts`] of the endpoints not ejected.
    pub priority_counts: Vec<(usize, usize, usize)>,
    /// [`locality::total_availability_of`] those counts.
    pub total_availability: usize,
    /// By endpoint index, whether it is ejected in this set.
    ejected: Vec<bool>,
}

impl Pools {
    /// The pools of `cluster` with the endpoints at `ejected` (indices) ejected.
    pub fn new(cluster: &Cluster, ejected: &[usize]) -> Pools {
        let endpoints = &cluster.endpoints;
        let mut ejected_by_index = vec![false; endpoints.len()];
        for i in ejected {
            if let Some(flag) = ejected_by_index.get_mut(*i) {
                *flag = true;
            }
        }
        let ejected_addresses: HashSet<SocketAddr> =
            ejected.iter().map(|i| endpoints[*i].address).collect();
        let available = |e: &Endpoint| e.healthy && !ejected_addresses.contains(&e.address);
        let ranked = cluster.priorities > 1;
        let level_count = if ranked { cluster.priorities } else { 1 };
        let levels = (0..level_count)
            .map(|level| {
                let in_level = |e: &Endpoint| !ranked || e.priority == level;
                let members = |keep: &dyn Fn(usize) -> bool| -> Vec<usize> {
                    (0..endpoints.len())
                        .filter(|i| endpoints[*i].healthy && in_level(&endpoints[*i]) && keep(*i))
                        .collect()
                };
                let not_ejected = |i: usize| !ejected_by_index[i];
                let localities = (0..cluster.locality_weights.len())
                    .map(|l| {
                        let in_locality = |i: usize| {
                            not_ejected(i)
                                && usize::try_from(endpoints[i].locality).is_ok_and(|e| e == l)
                        };
                        Pool::new(endpoints, members(&in_locality))
                    })
                    .collect();
                Level {
                    healthy: Pool::new(endpoints, members(&|_| true)),
                    available: Pool::new(endpoints, members(&not_ejected)),
                    localities,
                    locality_counts: locality::locality_counts(cluster, in_level, available),
                }
            })
            .collect();
        let priority_counts = locality::priority_counts(cluster, available);
        Pools {
            levels,
            total_availability: locality::total_availability_of(&priority_counts),
            priority_counts,
            ejected: ejected_by_index,
        }
    }

    /// Whether the endpoint at `index` is ejected in this set.
    pub fn is_ejected(&self, index: usize) -> bool {
        self.ejected.get(index).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests;
