//! Where locality decides a request's endpoint before the load balancer does: the locality
//! priority (Envoy's priority load) and, when localities are weighed, the locality (Envoy's
//! locality-weighted load balancing).

use crate::model::{Cluster, Endpoint};

/// Envoy's overprovisioning factor (its default, which Istio keeps): a priority whose healthy
/// share is at least 1/1.4 of its endpoints takes all the load it is offered.
const OVERPROVISIONING_PERCENT: usize = 140;

/// (endpoints, available, healthy) per locality priority: a few levels, counted once per
/// choice of the walk, or once per change of the ejected set ([`super::pools::Pools`]).
pub(super) fn priority_counts(
    cluster: &Cluster,
    available: impl Fn(&Endpoint) -> bool,
) -> Vec<(usize, usize, usize)> {
    let mut counts = vec![(0usize, 0usize, 0usize); cluster.priorities as usize];
    for e in &cluster.endpoints {
        if let Some(level) = counts.get_mut(e.priority as usize) {
            level.0 += 1;
            level.1 += usize::from(available(e));
            level.2 += usize::from(e.healthy);
        }
    }
    counts
}

/// Each priority's health: its `available` share of endpoints times the overprovisioning
/// factor, at most 100%.
fn health_of(counts: &[(usize, usize, usize)]) -> Vec<usize> {
    counts
        .iter()
        .map(|(total, up, _)| {
            if *total == 0 {
                0
            } else {
                (OVERPROVISIONING_PERCENT * up / total).min(100)
            }
        })
        .collect()
}

/// Envoy's normalised total availability (`calculateNormalizedTotalAvailability`): the sum of
/// the priorities' health, at most 100%. At 100% no priority is in panic, whatever its own
/// healthy share (`recalculatePerPriorityPanic`), so that a priority at 3 of 4 available
/// (105% after overprovisioning) stays out of a `minHealthPercent` of 80.
pub(super) fn total_availability(
    cluster: &Cluster,
    available: impl Fn(&Endpoint) -> bool,
) -> usize {
    total_availability_of(&priority_counts(cluster, available))
}

/// [`total_availability`] from the [`priority_counts`].
pub(super) fn total_availability_of(counts: &[(usize, usize, usize)]) -> usize {
    health_of(counts).iter().sum::<usize>().min(100)
}

/// Whether a priority of `healthy` endpoints, `available` of them, is in panic below
/// `min_health` percent (Envoy's `isHostSetInPanic`; a priority without healthy endpoints is,
/// as Envoy's host set without hosts is), given the cluster's [`total_availability`] (at
/// 100%, none is).
pub(super) fn in_panic(available: usize, healthy: usize, min_health: usize, total: usize) -> bool {
    total < 100 && (healthy == 0 || available * 100 < healthy * min_health)
}

/// The locality priority a request goes to, as Envoy spreads load over priorities
/// (`LoadBalancerBase::recalculatePerPriorityState`): each priority's health is the share of
/// its endpoints that are `available`, times the overprovisioning factor, at most 100%; the
/// closest priority takes as much of the load as its health, the next the rest up to its own,
/// and so on, scaled up when their health together is under 100%. `roll` (0 to 99) draws the
/// priority from that load. When every priority is in panic below `min_health` percent
/// (Envoy's total panic, `recalculateLoadInTotalPanic`), the load is spread by the priorities'
/// numbers of healthy endpoints instead, whatever their availability, the rounding left to the
/// closest one with any. With no available endpoint anywhere and no panic threshold, the closest
/// priority that has healthy ones takes everything (where nothing is chosen: Envoy gives the
/// load to the first priority and finds no host). The priorities in `skipped` count as
/// without health, unless no other priority has any (then none is skipped, as Envoy's
/// `previous_priorities` starts over).
pub(super) fn priority_level(
    cluster: &Cluster,
    available: impl Fn(&Endpoint) -> bool,
    skipped: &[u32],
    min_health: usize,
    roll: usize,
) -> u32 {
    level_of(
        &priority_counts(cluster, available),
        skipped,
        min_health,
        roll,
    )
}

/// [`priority_level`] from the [`priority_counts`].
pub(super) fn level_of(
    counts: &[(usize, usize, usize)],
    skipped: &[u32],
    min_health: usize,
    roll: usize,
) -> u32 {
    let mut health = health_of(counts);
    let total = health.iter().sum::<usize>().min(100);
    let total_panic = min_health > 0
        && counts
            .iter()
            .all(|(_, up, healthy)| in_panic(*up, *healthy, min_health, total));
    if total_panic {
        // Envoy counts a priority's hosts; unready endpoints are never hosts here (istiod
        // sends Envoy none), so the healthy ones are counted.
        let hosts: usize = counts.iter().map(|(_, _, healthy)| healthy).sum();
        let mut point = roll;
        for (level, (_, _, healthy)) in counts.iter().enumerate() {
            let load = 100 * healthy / hosts.max(1);
            if point < load {
                return level as u32;
            }
            point -= load;
        }
        return counts
            .iter()
            .position(|(_, _, healthy)| *healthy > 0)
            .unwrap_or(0) as u32;
    }
    let others_have_health = health
        .iter()
        .enumerate()
        .any(|(level, h)| *h > 0 && !skipped.contains(&(level as u32)));
    if others_have_health {
        for &level in skipped {
            if let Some(h) = health.get_mut(level as usize) {
                *h = 0;
            }
        }
    }
    let total_health = health.iter().sum::<usize>().min(100);
    if total_health == 0 {
        let first = counts.iter().position(|(_, _, healthy)| *healthy > 0);
        return first.unwrap_or(0) as u32;
    }
    let mut remaining = 100usize;
    let mut point = roll;
    for (level, h) in health.iter().enumerate() {
        let load = (h * 100 / total_health).min(remaining);
        remaining -= load;
        if point < load {
            return level as u32;
        }
        point -= load;
    }
    // Rounding left some load unassigned: it goes to the closest priority with health.
    health.iter().position(|h| *h > 0).unwrap_or(0) as u32
}

/// The locality a request goes to within a priority (`in_level`), as Envoy's locality-weighted
/// load balancing chooses it (`HostSetImpl::chooseLocality` over `effectiveLocalityWeight`):
/// each locality's weight times its `available` share of endpoints times the
/// overprovisioning factor, at most its weight, so a locality keeps its whole share while at
/// least 1/1.4 of it is available and loses it in proportion below. `roll` (0 to 1) draws a
/// locality in proportion to those weights, where Envoy walks an EDF schedule of the same
/// weights: the same shares, drawn at random rather than in a fixed order. `None` when no
/// locality has an available endpoint (Envoy then chooses among the priority's hosts).
pub(super) fn weighted_locality(
    cluster: &Cluster,
    in_level: impl Fn(&Endpoint) -> bool,
    available: impl Fn(&Endpoint) -> bool,
    roll: f64,
) -> Option<u32> {
    let counts = locality_counts(cluster, in_level, available);
    locality_of(&counts, &cluster.locality_weights, roll)
}

/// (endpoints, available) per weighed locality, of the endpoints `in_level`.
pub(super) fn locality_counts(
    cluster: &Cluster,
    in_level: impl Fn(&Endpoint) -> bool,
    available: impl Fn(&Endpoint) -> bool,
) -> Vec<(usize, usize)> {
    let mut counts = vec![(0usize, 0usize); cluster.locality_weights.len()];
    for e in cluster.endpoints.iter().filter(|e| in_level(e)) {
        if let Some(locality) = counts.get_mut(e.locality as usize) {
            locality.0 += 1;
            locality.1 += usize::from(available(e));
        }
    }
    counts
}

/// [`weighted_locality`] from the [`locality_counts`] and the localities' `weights`.
pub(super) fn locality_of(counts: &[(usize, usize)], weights: &[u32], roll: f64) -> Option<u32> {
    let effective: Vec<f64> = counts
        .iter()
        .zip(weights)
        .map(|((total, up), weight)| {
            if *total == 0 {
                return 0.0;
            }
            let ratio = (OVERPROVISIONING_PERCENT as f64 / 100.0) * (*up as f64 / *total as f64);
            f64::from(*weight) * ratio.min(1.0)
        })
        .collect();
    let sum: f64 = effective.iter().sum();
    if sum <= 0.0 {
        return None;
    }
    let mut point = roll.clamp(0.0, 1.0) * sum;
    let mut last = None;
    for (locality, weight) in effective.iter().enumerate() {
        if *weight <= 0.0 {
            continue;
        }
        last = u32::try_from(locality).ok();
        if point < *weight {
            return last;
        }
        point -= weight;
    }
    // `roll` at 1, or rounding: the last locality with weight.
    last
}

#[cfg(test)]
mod tests;
