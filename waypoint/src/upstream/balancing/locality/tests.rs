//! Panic mode across locality priorities, as Envoy's `recalculatePerPriorityPanic` and
//! `recalculateLoadInTotalPanic` decide it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use super::super::tests::{fresh_state, policy, ranked_cluster};
use super::super::{ClusterState, HashInput, Outcome, Tried};
use crate::model::{Cluster, HashKey, HashTable, LoadBalancer, OutlierPolicy};
use crate::upstream::UpstreamError;

/// `cluster` (priorities and endpoints as `ranked`) ejecting on one 5xx under
/// `minHealthPercent` `min_health`, balanced by `balancer`, with every endpoint in `ejected`
/// ejected.
fn ejected(
    ranked: &[(u8, u32)],
    balancer: LoadBalancer,
    min_health_percent: u32,
    ejected: &[u8],
) -> (Cluster, ClusterState) {
    let cluster = Cluster {
        load_balancer: balancer,
        ..ranked_cluster(
            ranked,
            Some(OutlierPolicy {
                min_health_percent,
                ..policy(100)
            }),
        )
    };
    let state = fresh_state();
    for last in ejected {
        state.record_outcome(
            &cluster,
            SocketAddr::from(([10, 0, 0, *last], 8080)),
            Outcome::Response(503),
        );
    }
    (cluster, state)
}

/// The endpoints (last byte) `picks` choices went to, by count; the request hashes on
/// `x-user`, a different user each time.
fn chosen(
    cluster: &Cluster,
    state: &ClusterState,
    picks: usize,
    tried: &Tried<'_>,
) -> Result<HashMap<u8, usize>, UpstreamError> {
    let mut counts = HashMap::new();
    for n in 0..picks {
        let mut headers = http::HeaderMap::new();
        headers.insert("x-user", format!("user-{n}").parse().unwrap());
        let input = HashInput {
            session_endpoint: None,
            generated_cookie: None,
            headers: &headers,
            query: None,
            source_ip: IpAddr::from([10, 9, 0, 1]),
        };
        let (endpoint, _active) = state.choose_and_track(cluster, &input, tried)?;
        let IpAddr::V4(ip) = endpoint.address.ip() else {
            unreachable!()
        };
        *counts.entry(ip.octets()[3]).or_default() += 1;
    }
    Ok(counts)
}

fn balancers() -> [LoadBalancer; 3] {
    [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::ConsistentHash(
            HashKey::Header(http::HeaderName::from_static("x-user")),
            HashTable::Maglev { table_size: 251 },
        ),
    ]
}

/// With no panic threshold (`minHealthPercent` 0, Istio's default) and every endpoint of every
/// priority ejected, Envoy gives the load to the first priority and finds no host in it
/// (`recalculatePerPriorityPanic`: "no traffic will be routed"): 503 `UH`, for a first attempt
/// and for a retry that leaves the first priority out alike. Under a threshold, panic mode
/// sends to them.
#[test]
fn every_priority_ejected_is_no_healthy_upstream_without_a_panic_threshold() {
    let ranked = [(1, 0), (2, 0), (3, 1), (4, 1)];
    for balancer in balancers() {
        let (cluster, state) = ejected(&ranked, balancer.clone(), 0, &[1, 2, 3, 4]);
        for tried in [
            Tried::default(),
            Tried {
                endpoints: &[SocketAddr::from(([10, 0, 0, 1], 8080))],
                priorities: &[0],
            },
        ] {
            match chosen(&cluster, &state, 50, &tried) {
                Err(UpstreamError::NoHealthyUpstream(name)) => assert_eq!(name, cluster.name),
                other => panic!("{balancer:?}, {tried:?}: {other:?}"),
            }
        }
        let (cluster, state) = ejected(&ranked, balancer.clone(), 50, &[1, 2, 3, 4]);
        assert!(
            chosen(&cluster, &state, 50, &Tried::default()).is_ok(),
            "{balancer:?}: nothing chosen in panic"
        );
    }
}

/// With every priority in panic, Envoy spreads the load by the priorities' numbers of hosts
/// (`recalculateLoadInTotalPanic`), not all to the closest one: one endpoint in the first and
/// three in the second, all ejected under a `minHealthPercent` of 50, give the second about
/// three requests in four.
#[test]
fn in_total_panic_the_load_follows_the_priorities_sizes() {
    let ranked = [(1, 0), (2, 1), (3, 1), (4, 1)];
    for balancer in balancers() {
        let (cluster, state) = ejected(&ranked, balancer.clone(), 50, &[1, 2, 3, 4]);
        let picks = 2_000;
        let counts = chosen(&cluster, &state, picks, &Tried::default()).unwrap();
        let first = counts.get(&1).copied().unwrap_or(0) as f64 / picks as f64;
        assert!(
            (0.18..=0.32).contains(&first),
            "{balancer:?}: the first priority took {first} of the requests, not about 0.25"
        );
    }
}

/// Envoy puts no priority in panic while the normalised total availability is 100%
/// (`recalculatePerPriorityPanic`): 3 of 4 endpoints available is 105% after the
/// overprovisioning factor, so under a `minHealthPercent` of 80 (above the 75% available) the
/// ejected endpoint still takes nothing.
#[test]
fn no_priority_is_in_panic_at_full_total_availability() {
    let ranked = [(1, 0), (2, 0), (3, 0), (4, 0)];
    for balancer in balancers() {
        let (cluster, state) = ejected(&ranked, balancer.clone(), 80, &[1]);
        let counts = chosen(&cluster, &state, 400, &Tried::default()).unwrap();
        assert_eq!(
            counts.get(&1),
            None,
            "{balancer:?}: the ejected endpoint took requests"
        );
        assert_eq!(counts.len(), 3, "{balancer:?}: {counts:?}");
    }
    // Two of four available (70%) is in panic under 80: the ejected ones take requests too.
    let (cluster, state) = ejected(&ranked, LoadBalancer::RoundRobin, 80, &[1, 2]);
    let counts = chosen(&cluster, &state, 400, &Tried::default()).unwrap();
    assert_eq!(counts.len(), 4, "in panic: {counts:?}");
}
