//! Slow start (DestinationRule `warmup`), as Envoy's round robin and least request balancers
//! apply `slow_start_config` (`EdfLoadBalancerBase::applySlowStartFactor`): an endpoint's
//! warm-up starts when it joins the cluster healthy (Envoy stamps a host without active health
//! checking the first time its load balancer sees it healthy, including the hosts present when
//! the cluster is built), and while within the window its weight is scaled down.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::EndpointState;
use crate::model::{Cluster, Endpoint, SlowStart};

/// The factor an endpoint's weight is scaled by, `since` it joined the cluster healthy
/// (`None`: not tracked, full weight): Envoy's `max(min_weight, time_factor^(1/aggression))`
/// with `time_factor = max(elapsed, 1ms) / window`, and 1 from the end of the window.
pub fn factor(slow: &SlowStart, since: Option<Instant>, now: Instant) -> f64 {
    let Some(since) = since else {
        return 1.0;
    };
    let elapsed = now.saturating_duration_since(since);
    if elapsed >= slow.window {
        return 1.0;
    }
    let time = elapsed.max(Duration::from_millis(1)).as_secs_f64() / slow.window.as_secs_f64();
    let ramp = if slow.aggression == 1.0 {
        time
    } else {
        time.powf(1.0 / slow.aggression)
    };
    ramp.max(slow.min_weight)
}

/// One of `candidates` in proportion to its `weight`, `roll` (0 to 1) drawing it: the shares
/// Envoy's EDF scheduler gives the same weights, drawn at random rather than in a fixed order.
/// Walks the candidates twice rather than collecting them, so that a choice allocates nothing.
pub(super) fn weighted<'c, I>(
    candidates: impl Fn() -> I,
    weight: impl Fn(&Endpoint) -> f64,
    roll: f64,
) -> Option<&'c Endpoint>
where
    I: Iterator<Item = &'c Endpoint>,
{
    let total: f64 = candidates().map(&weight).sum();
    if total.is_nan() || total <= 0.0 {
        return candidates().next();
    }
    let mut point = roll.clamp(0.0, 1.0) * total;
    let mut last = None;
    for endpoint in candidates() {
        let w = weight(endpoint);
        if w <= 0.0 {
            continue;
        }
        last = Some(endpoint);
        if point < w {
            return last;
        }
        point -= w;
    }
    // `roll` at 1, or rounding: the last candidate with weight.
    last
}

/// Brings the warm-up clocks of a cluster's endpoints up to date with a configuration in
/// force since `now`: an endpoint healthy in it keeps its clock, or starts one; one that left
/// the cluster or is not healthy loses it, so that it warms up again when it comes back (as
/// Envoy sees a new host: istiod leaves unready endpoints out). A cluster without slow start
/// keeps no clocks.
pub(super) fn track(
    states: &mut HashMap<SocketAddr, EndpointState>,
    cluster: &Cluster,
    now: Instant,
) {
    if cluster.slow_start.is_none() {
        for state in states.values_mut() {
            state.warming_since = None;
        }
        return;
    }
    let healthy: HashSet<SocketAddr> = cluster
        .endpoints
        .iter()
        .filter(|e| e.healthy)
        .map(|e| e.address)
        .collect();
    for (address, state) in states.iter_mut() {
        if !healthy.contains(address) {
            state.warming_since = None;
        }
    }
    for address in healthy {
        states
            .entry(address)
            .or_default()
            .warming_since
            .get_or_insert(now);
    }
}

#[cfg(test)]
mod tests;
