//! Endpoint choice: which endpoint of a cluster a request (or its retry) goes to, by locality
//! priority, locality, outlier detection, the endpoints tried before and the load balancer.
//! Three ways to the same choices: the plan alone while nothing narrows the pool
//! ([`plain_choice`]); the pools built once per configuration and per change of the ejected set
//! ([`pooled_choice`], O(priorities + localities) to find the pool, O(1) or O(log n) to draw
//! from it); and the walk of the endpoints ([`walk`]) while endpoints warm up, or for a retry
//! whose redraws all fell on endpoints tried before.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use super::locality::{self, priority_level, weighted_locality};
use super::plan::{self, hash_key};
use super::pools::Pools;
use super::{EndpointStates, HashInput, Tried, UpstreamError, slow_start, worker};
use crate::model::{Cluster, Endpoint, LoadBalancer};

/// How many times a retry draws again from its pool when a draw falls on an endpoint it tried
/// before, as Envoy's router re-picks a host its retry host predicate (`previous_hosts`)
/// rejects, up to `host_selection_retry_max_attempts`, which Istio sets to 5
/// (`retry.DefaultPolicy`, pilot/pkg/networking/core/route/retry/retry.go). Past them Envoy
/// keeps the last host drawn, tried or not; here the untried endpoints are then worked out
/// ([`walk`]), so that a retry never goes back to a tried endpoint while the pool has another.
const REDRAWS: usize = 5;

/// A key's hash looked up in a locality priority's consistent-hash table, passing over the
/// endpoints not accepted.
type TableLookup<'a> = dyn Fn(u64, u32, &dyn Fn(usize) -> bool) -> Option<usize> + 'a;

/// One request's choice: what it is made of, for the functions that make it.
#[derive(Clone, Copy)]
struct Request<'r, 'c> {
    states: &'r EndpointStates,
    next: &'r AtomicUsize,
    cluster: &'c Cluster,
    hash: &'r HashInput<'r>,
    tried: &'r Tried<'r>,
    now: Instant,
}

/// When endpoint `i` of `cluster` comes back, if it is ejected at `now`.
fn ejection_end<'a>(
    states: &'a EndpointStates,
    cluster: &'a Cluster,
    now: Instant,
) -> impl Fn(usize) -> Option<Instant> + 'a {
    move |i| {
        states
            .get(&cluster.endpoints[i].address)
            .and_then(|s| s.ejected_until)
            .filter(|until| *until > now)
    }
}

/// The choice in the pools of the ejected set in force (see the module comment): the pools
/// with nothing ejected, kept with the plan, or the worker's of the ejected set, taken from the
/// plan when the set changes ([`worker::with_available`]), read without a lock.
fn pooled_choice<'c>(request: &Request<'_, 'c>) -> Result<&'c Endpoint, UpstreamError> {
    let Request {
        states,
        cluster,
        now,
        ..
    } = *request;
    let plan = cluster.plan();
    let ejecting = states.ejection_stamp != 0 && states.ejections_end.is_some_and(|end| end > now);
    if !ejecting {
        let hashed =
            |h: u64, level: u32, accept: &dyn Fn(usize) -> bool| plan.hashed(h, level, accept);
        return from_pools(request, plan.pools(cluster), &hashed)
            .transpose()
            .unwrap_or_else(|| walk(request));
    }
    let ejected_until = ejection_end(states, cluster, now);
    let ejections = plan::Ejections {
        stamp: states.ejection_stamp,
        now,
        ejected_until: &ejected_until,
    };
    worker::with_available(plan, &cluster.endpoints, &ejections, |available| {
        let hashed =
            |h: u64, level: u32, accept: &dyn Fn(usize) -> bool| available.hashed(h, level, accept);
        from_pools(request, available.pools(cluster), &hashed)
    })
    .transpose()
    // The walk after the worker's tables are let go: it reads them too.
    .unwrap_or_else(|| walk(request))
}

/// [`pooled_choice`] in `pools`, where `hashed` looks a key's hash up in the tables over the
/// endpoints not ejected ([`plan::BalancingPlan::hashed_available`]). The same steps as the
/// walk ([`walk`]) takes, each read from the pools: the priority from their counts, panic,
/// the locality from their counts, then one draw by the balancer from the pool, drawn again
/// (at most [`REDRAWS`] times) while it falls on an endpoint the request tried. `Ok(None)`:
/// every draw fell on a tried endpoint, the endpoints are to be walked.
fn from_pools<'c>(
    request: &Request<'_, 'c>,
    pools: &Pools,
    hashed: &TableLookup<'_>,
) -> Result<Option<&'c Endpoint>, UpstreamError> {
    let Request {
        states,
        next,
        cluster,
        hash,
        tried,
        ..
    } = *request;
    let none = || UpstreamError::NoHealthyUpstream(cluster.name.clone());
    let min_health = min_health_percent(cluster);
    let key_hash = match &cluster.load_balancer {
        LoadBalancer::ConsistentHash(key, _) => hash_key(key, hash).map(|k| plan::key_hash(&k)),
        _ => None,
    };
    let level = (cluster.priorities > 1).then(|| {
        locality::level_of(
            &pools.priority_counts,
            tried.priorities,
            min_health,
            key_hash.map_or_else(|| rand::random_range(0..100), |h| (h % 100) as usize),
        )
    });
    let table_level = level.unwrap_or(0);
    let Some(in_level) = pools.levels.get(table_level as usize) else {
        return Err(none());
    };
    let (healthy, available) = (in_level.healthy.len(), in_level.available.len());
    if available == 0 && min_health == 0 {
        return Err(none());
    }
    let panic = min_health > 0
        && locality::in_panic(available, healthy, min_health, pools.total_availability);
    let hashing = matches!(cluster.load_balancer, LoadBalancer::ConsistentHash(..));
    let locality = (!cluster.locality_weights.is_empty() && !panic && !hashing)
        .then(|| {
            locality::locality_of(
                &in_level.locality_counts,
                &cluster.locality_weights,
                rand::random::<f64>(),
            )
        })
        .flatten();
    let pool = match locality {
        Some(l) => in_level.localities.get(l as usize).ok_or_else(none)?,
        None if panic => &in_level.healthy,
        None => &in_level.available,
    };
    if pool.is_empty() {
        return Err(none());
    }
    let retrying = pool.len() > 1 && !tried.endpoints.is_empty();
    let untried = |i: usize| !tried.endpoints.contains(&cluster.endpoints[i].address);
    let redraw = |draw: &dyn Fn() -> Option<usize>| {
        (0..=REDRAWS).find_map(|_| draw().filter(|i| !retrying || untried(*i)))
    };
    let active = |i: usize| {
        states
            .get(&cluster.endpoints[i].address)
            .map_or(0, |s| s.active.load(Ordering::Acquire))
    };
    let uniform = || pool.members.get(rand::random_range(0..pool.len())).copied();
    let found = match &cluster.load_balancer {
        LoadBalancer::RoundRobin if pool.equal_weights => {
            redraw(&|| Some(pool.members[next.fetch_add(1, Ordering::Relaxed) % pool.len()]))
        }
        LoadBalancer::RoundRobin => {
            redraw(&|| pool.weighted(round_robin_roll(next.fetch_add(1, Ordering::Relaxed))))
        }
        LoadBalancer::Random => redraw(&uniform),
        LoadBalancer::LeastRequest if pool.equal_weights => redraw(&uniform)
            .zip(redraw(&uniform))
            .map(|(a, b)| if active(b) < active(a) { b } else { a }),
        // Envoy's weighted least request: the worker's EDF schedule of the pool.
        LoadBalancer::LeastRequest => redraw(&|| {
            worker::scheduled(pool.id, &pool.alive, &pool.members, |i| {
                f64::from(cluster.endpoints[i].weight.max(1)) / (active(i) + 1) as f64
            })
        }),
        // In panic, the priority's table over its healthy endpoints, ejected or not; out of
        // it, the table over those not ejected. A retry passes over the endpoints it tried.
        LoadBalancer::ConsistentHash(..) => match key_hash {
            Some(h) => {
                let accept =
                    |i: usize| (panic || !pools.is_ejected(i)) && (!retrying || untried(i));
                if panic {
                    cluster.plan().hashed(h, table_level, accept)
                } else {
                    hashed(h, table_level, &accept)
                }
            }
            None => redraw(&uniform),
        },
    };
    Ok(found.map(|i| &cluster.endpoints[i]))
}

/// The choice when nothing of the moment narrows the pool (one locality priority, localities
/// not weighed, a first attempt, no endpoint ejected or warming up): the pool is the cluster's
/// healthy endpoints, known from its [`BalancingPlan`], and a choice costs the same whatever
/// their number (but least request over unequal weights: O(log n)). The same choices as
/// [`choose`] makes of that pool, but for least request over unequal weights, which walks
/// Envoy's EDF schedule here and draws in the same proportions there. `None`: the pool must be
/// worked out.
fn plain_choice<'c>(request: &Request<'_, 'c>) -> Option<Result<&'c Endpoint, UpstreamError>> {
    let Request {
        states,
        next,
        cluster,
        hash,
        tried,
        now,
    } = *request;
    let hashing = matches!(cluster.load_balancer, LoadBalancer::ConsistentHash(..));
    // A consistent hash weighs localities inside its table (see `choose`).
    let plain = cluster.priorities <= 1
        && (cluster.locality_weights.is_empty() || hashing)
        && tried.endpoints.is_empty()
        && states.ejections_end.is_none_or(|end| end <= now)
        && (cluster.slow_start.is_none() || states.warm_from.is_some_and(|from| from <= now));
    if !plain {
        return None;
    }
    let plan = cluster.plan();
    let healthy = plan.healthy();
    if healthy.is_empty() {
        return Some(Err(UpstreamError::NoHealthyUpstream(cluster.name.clone())));
    }
    let at = |n: usize| &cluster.endpoints[healthy[n]];
    let count = healthy.len();
    let active = |e: &Endpoint| {
        states
            .get(&e.address)
            .map_or(0, |s| s.active.load(Ordering::Acquire))
    };
    let endpoint = match &cluster.load_balancer {
        LoadBalancer::RoundRobin if plan.equal_weights() => {
            at(next.fetch_add(1, Ordering::Relaxed) % count)
        }
        // The roll the weighted walk of `choose` takes, found by binary search of the running
        // weights.
        LoadBalancer::RoundRobin => {
            let roll = round_robin_roll(next.fetch_add(1, Ordering::Relaxed));
            &cluster.endpoints[plan.weighted(roll)?]
        }
        LoadBalancer::LeastRequest if plan.equal_weights() => {
            let a = at(rand::random_range(0..count));
            let b = at(rand::random_range(0..count));
            if active(b) < active(a) { b } else { a }
        }
        LoadBalancer::LeastRequest => {
            &cluster.endpoints[plan.scheduled(|i| {
                let e = &cluster.endpoints[i];
                f64::from(e.weight.max(1)) / (active(e) + 1) as f64
            })?]
        }
        LoadBalancer::Random => at(rand::random_range(0..count)),
        LoadBalancer::ConsistentHash(key, _) => match hash_key(key, hash) {
            Some(key) => &cluster.endpoints[plan.hashed(plan::key_hash(&key), 0, |_| true)?],
            None => at(rand::random_range(0..count)),
        },
    };
    Some(Ok(endpoint))
}

/// The cluster's panic threshold, Envoy's `healthy_panic_threshold`: Istio sets it from the
/// DestinationRule's `outlierDetection.minHealthPercent` (0 when not given; Istio's
/// `applyOutlierDetection`). Without outlier detection nothing is ejected, so it never matters.
fn min_health_percent(cluster: &Cluster) -> usize {
    cluster
        .outlier
        .as_ref()
        .map_or(0, |o| o.min_health_percent as usize)
}

/// The choice [`ClusterState::choose_endpoint`] describes, with the endpoints' states locked.
pub(super) fn choose<'c>(
    states: &EndpointStates,
    next: &AtomicUsize,
    cluster: &'c Cluster,
    hash: &HashInput<'_>,
    tried: &Tried<'_>,
) -> Result<&'c Endpoint, UpstreamError> {
    let now = Instant::now();
    if let Some(address) = hash.session_endpoint
        && let Some(endpoint) = super::session::session_choice(states, cluster, address, tried, now)
    {
        return Ok(endpoint);
    }
    let min_health = min_health_percent(cluster);
    // One endpoint: every balancer, priority, locality, panic mode and retry comes to it
    // when it is healthy and not ejected, or ejected with a panic threshold (where Envoy's
    // panic mode takes it anyway), and to nothing otherwise; answered without the plan, which
    // a workload's own cluster (one per port it is addressed at) would otherwise build.
    if let [only] = cluster.endpoints.as_slice() {
        let ejected = || {
            states.ejections_end.is_some_and(|end| end > now)
                && states
                    .get(&only.address)
                    .and_then(|s| s.ejected_until)
                    .is_some_and(|until| until > now)
        };
        return if only.healthy && (min_health > 0 || !ejected()) {
            Ok(only)
        } else {
            Err(UpstreamError::NoHealthyUpstream(cluster.name.clone()))
        };
    }
    let request = Request {
        states,
        next,
        cluster,
        hash,
        tried,
        now,
    };
    if let Some(choice) = plain_choice(&request) {
        return choice;
    }
    if cluster.plan().healthy().is_empty() {
        return Err(UpstreamError::NoHealthyUpstream(cluster.name.clone()));
    }
    // While an endpoint may be warming up, each endpoint's weight is its own of the moment:
    // the pool is walked.
    let warm = cluster.slow_start.is_none() || states.warm_from.is_some_and(|from| from <= now);
    if !warm {
        return walk(&request);
    }
    pooled_choice(&request)
}

/// The choice [`choose`] describes, worked out endpoint by endpoint: for a pool of endpoints
/// warming up, and for a retry whose redraws from its pool all fell on endpoints tried before
/// ([`REDRAWS`]), the exact choice among those untried (or, when none is left, among them all).
fn walk<'c>(request: &Request<'_, 'c>) -> Result<&'c Endpoint, UpstreamError> {
    let Request {
        states,
        next,
        cluster,
        hash,
        tried,
        now,
    } = *request;
    let min_health = min_health_percent(cluster);
    let exclude = tried.endpoints;
    if !cluster.endpoints.iter().any(|e| e.healthy) {
        return Err(UpstreamError::NoHealthyUpstream(cluster.name.clone()));
    }
    let not_ejected = |e: &Endpoint| {
        states
            .get(&e.address)
            .and_then(|s| s.ejected_until)
            .is_none_or(|until| until <= now)
    };
    let key_hash = match &cluster.load_balancer {
        LoadBalancer::ConsistentHash(key, _) => hash_key(key, hash).map(|k| plan::key_hash(&k)),
        _ => None,
    };
    // Locality priorities: the choice is made within one, drawn by Envoy's priority load; a
    // consistent hash draws it with the key's hash, as Envoy's hashing balancers do
    // (`ThreadAwareLoadBalancerBase`: `choosePriority(hash)`), so a key keeps its priority.
    let level = (cluster.priorities > 1).then(|| {
        priority_level(
            cluster,
            |e| e.healthy && not_ejected(e),
            tried.priorities,
            min_health,
            key_hash.map_or_else(|| rand::random_range(0..100), |h| (h % 100) as usize),
        )
    });
    let in_level = |e: &Endpoint| level.is_none_or(|level| e.priority == level);
    let healthy = cluster
        .endpoints
        .iter()
        .filter(|e| e.healthy && in_level(e))
        .count();
    let available = cluster
        .endpoints
        .iter()
        .filter(|e| e.healthy && in_level(e) && not_ejected(e))
        .count();
    // Below minHealthPercent outlier detection stands aside and all healthy endpoints take
    // traffic, as Envoy's panic mode does. With no threshold (Istio's default: it sets
    // Envoy's `healthy_panic_threshold` to `minHealthPercent`, 0 unless given) there is no
    // panic mode, and with every endpoint ejected nothing is chosen: 503 `UH`, "no healthy
    // upstream" (`LoadBalancerBase::recalculatePerPriorityPanic`: "panic is disabled and
    // there is no hosts available ... no traffic will be routed",
    // source/common/upstream/load_balancer_impl.cc).
    if available == 0 && min_health == 0 {
        return Err(UpstreamError::NoHealthyUpstream(cluster.name.clone()));
    }
    // The priority's panic, unless the cluster's normalised total availability is 100%, where
    // Envoy puts no priority in panic (`recalculatePerPriorityPanic`).
    let panic = min_health > 0
        && locality::in_panic(
            available,
            healthy,
            min_health,
            locality::total_availability(cluster, |e| e.healthy && not_ejected(e)),
        );
    // Weighed localities (`distribute`): out of panic, one is drawn by Envoy's effective
    // locality weights, and the endpoint is chosen within it. Not under a consistent hash:
    // Envoy's hashing balancers draw no locality, their tables weigh the localities
    // (`normalizeLocalityWeights`, [`BalancingPlan`]), so that a key keeps its endpoint.
    let hashing = matches!(cluster.load_balancer, LoadBalancer::ConsistentHash(..));
    let locality = (!cluster.locality_weights.is_empty() && !panic && !hashing)
        .then(|| {
            weighted_locality(
                cluster,
                in_level,
                |e| e.healthy && not_ejected(e),
                rand::random::<f64>(),
            )
        })
        .flatten();
    let in_locality = |e: &Endpoint| locality.is_none_or(|l| e.locality == l);
    let in_pool =
        |e: &Endpoint| e.healthy && in_level(e) && in_locality(e) && (panic || not_ejected(e));
    let pooled = match locality {
        Some(_) => cluster.endpoints.iter().filter(|e| in_pool(e)).count(),
        None if panic => healthy,
        None => available,
    };
    let untried = |e: &Endpoint| !exclude.contains(&e.address);
    let fresh = if pooled > 1 && !exclude.is_empty() {
        cluster
            .endpoints
            .iter()
            .filter(|e| in_pool(e) && untried(e))
            .count()
    } else {
        0
    };
    let (count, skip_tried) = if fresh > 0 {
        (fresh, true)
    } else {
        (pooled, false)
    };
    let candidate = |e: &Endpoint| in_pool(e) && (!skip_tried || untried(e));
    let candidates = || cluster.endpoints.iter().filter(move |e| candidate(e));
    let nth = |index: usize| {
        candidates()
            .nth(index)
            .ok_or_else(|| UpstreamError::NoHealthyUpstream(cluster.name.clone()))
    };
    let active = |e: &Endpoint| {
        states
            .get(&e.address)
            .map_or(0, |s| s.active.load(Ordering::Acquire))
    };
    // Endpoint weights (Envoy's `load_balancing_weight`, which istiod takes from a
    // WorkloadEntry's or ServiceEntry endpoint's `weight`: `LbWeight` in
    // pilot/pkg/serviceregistry/serviceentry/conversion.go) and slow start: round robin and
    // least request balance by weight once the pool's weights differ, or while an endpoint of
    // it warms up (Envoy's `EdfLoadBalancerBase`); with equal weights they keep their plain
    // algorithms. Random ignores endpoint weights, as Envoy's `RandomLoadBalancer` does.
    let factor = |e: &Endpoint| {
        cluster.slow_start.as_ref().map_or(1.0, |slow| {
            let since = states.get(&e.address).and_then(|s| s.warming_since);
            slow_start::factor(slow, since, now)
        })
    };
    let warming = cluster.slow_start.is_some() && candidates().any(|e| factor(e) < 1.0);
    let weighs_endpoints = matches!(
        cluster.load_balancer,
        LoadBalancer::RoundRobin | LoadBalancer::LeastRequest
    );
    let equal = cluster.plan().equal_weights() || equal_weights(candidates());
    if warming || (weighs_endpoints && !equal) {
        let least_request = cluster.load_balancer == LoadBalancer::LeastRequest;
        let weight = |e: &Endpoint| {
            let capacity = if weighs_endpoints {
                f64::from(e.weight.max(1))
            } else {
                1.0
            };
            // Least request: the weight over the requests in flight plus one (Envoy's
            // `active_request_bias` of 1).
            let load = if least_request {
                (active(e) + 1) as f64
            } else {
                1.0
            };
            capacity * factor(e) / load
        };
        // Round robin walks the weights in a fixed low-discrepancy order (each endpoint's
        // share exact within a few requests, as Envoy's EDF schedule keeps it); the others draw.
        let roll = if cluster.load_balancer == LoadBalancer::RoundRobin {
            round_robin_roll(next.fetch_add(1, Ordering::Relaxed))
        } else {
            rand::random::<f64>()
        };
        return slow_start::weighted(candidates, weight, roll)
            .ok_or_else(|| UpstreamError::NoHealthyUpstream(cluster.name.clone()));
    }
    match &cluster.load_balancer {
        LoadBalancer::RoundRobin => nth(next.fetch_add(1, Ordering::Relaxed) % count),
        LoadBalancer::Random => nth(rand::random_range(0..count)),
        LoadBalancer::LeastRequest => {
            let a = nth(rand::random_range(0..count))?;
            let b = nth(rand::random_range(0..count))?;
            Ok(if active(b) < active(a) { b } else { a })
        }
        // In panic, the priority's table over its healthy endpoints, ejected or not; out of
        // it, the table over those not ejected, as Envoy rebuilds its tables over the healthy
        // hosts when outlier detection ejects one or lets it back. Endpoints outside the pool
        // (tried before) are passed over.
        LoadBalancer::ConsistentHash(..) => {
            let accept = |i: usize| candidate(&cluster.endpoints[i]);
            let level = level.unwrap_or(0);
            let plan = cluster.plan();
            let found = match key_hash {
                Some(h) if panic => plan.hashed(h, level, accept),
                Some(h) => {
                    let ejected_until = ejection_end(states, cluster, now);
                    let ejections = plan::Ejections {
                        stamp: states.ejection_stamp,
                        now,
                        ejected_until: &ejected_until,
                    };
                    plan.hashed_available(&cluster.endpoints, &ejections, h, level, accept)
                }
                None => None,
            };
            match found {
                Some(i) => Ok(&cluster.endpoints[i]),
                None => nth(rand::random_range(0..count)),
            }
        }
    }
}

/// Whether every endpoint has the same weight (0 counts as 1, as the model reads it), the case
/// where Envoy keeps plain round robin and least request's power of two choices. For a pool
/// narrower than the healthy endpoints, whose weights differ ([`BalancingPlan::equal_weights`]).
fn equal_weights<'c>(mut endpoints: impl Iterator<Item = &'c Endpoint>) -> bool {
    let Some(first) = endpoints.next().map(|e| e.weight.max(1)) else {
        return true;
    };
    endpoints.all(|e| e.weight.max(1) == first)
}

/// The `turn`th point (0 to 1) of the golden-ratio sequence: consecutive points spread evenly
/// over the interval, so that weighted round robin gives each endpoint its share in every
/// short run of requests, in an order that interleaves the endpoints.
fn round_robin_roll(turn: usize) -> f64 {
    const GOLDEN_RATIO_CONJUGATE: f64 = 0.618_033_988_749_894_9;
    // The turn modulo 2^32 keeps the product exact enough in an f64.
    ((turn as u32) as f64 * GOLDEN_RATIO_CONJUGATE).fract()
}
