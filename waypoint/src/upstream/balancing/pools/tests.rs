//! Choices in a narrowed pool (endpoints ejected, locality priorities, weighed localities, a
//! retry): what they cost, and that they are the choices the walk of the endpoints makes.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::super::tests::{endpoint, fresh_state, least_request, policy};
use super::super::{ClusterState, HashInput, Outcome};
use crate::model::{Cluster, Endpoint, HashKey, HashTable, LoadBalancer};

/// The balancers a narrowed pool is chosen from by, with names for the messages; weighted
/// least request is least request over weights 1 and 2 in turn.
fn balancers() -> [(&'static str, LoadBalancer); 5] {
    [
        ("round robin", LoadBalancer::RoundRobin),
        ("least request", LoadBalancer::LeastRequest),
        ("weighted least request", LoadBalancer::LeastRequest),
        ("random", LoadBalancer::Random),
        (
            "consistent hash",
            LoadBalancer::ConsistentHash(
                HashKey::Header(http::HeaderName::from_static("x-user")),
                HashTable::Ring {
                    minimum_size: crate::model::DEFAULT_MINIMUM_RING_SIZE,
                },
            ),
        ),
    ]
}

/// How a pool is narrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Narrowing {
    /// The first two endpoints ejected by outlier detection.
    Ejected,
    /// A retry after the third endpoint.
    Retry,
    /// Both.
    EjectedAndRetry,
    /// Two locality priorities, the endpoints alternating between them.
    Priorities,
    /// Two localities weighed 80/20, the endpoints alternating between them.
    Localities,
}

const NARROWINGS: [Narrowing; 5] = [
    Narrowing::Ejected,
    Narrowing::Retry,
    Narrowing::EjectedAndRetry,
    Narrowing::Priorities,
    Narrowing::Localities,
];

/// `count` endpoints `10.0.<i/256>.<i%256>`, balanced by `balancer` (weights 1 and 2 in turn
/// when `weighted`), ejecting on one 5xx up to every endpoint, laid out as `narrowing` has
/// them.
fn cluster(count: u16, balancer: &LoadBalancer, weighted: bool, narrowing: Narrowing) -> Cluster {
    let endpoints: Vec<Endpoint> = (0..count)
        .map(|i| Endpoint {
            address: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080)),
            weight: if weighted { 1 + u32::from(i % 2) } else { 1 },
            priority: u32::from(narrowing == Narrowing::Priorities) * u32::from(i % 2),
            locality: u32::from(narrowing == Narrowing::Localities) * u32::from(i % 2),
            ..endpoint(0)
        })
        .collect();
    Cluster {
        load_balancer: balancer.clone(),
        priorities: if narrowing == Narrowing::Priorities {
            2
        } else {
            1
        },
        locality_weights: if narrowing == Narrowing::Localities {
            vec![80, 20]
        } else {
            Vec::new()
        },
        outlier: Some(policy(100)),
        ..least_request(endpoints)
    }
}

/// The state of `cluster` with its first two endpoints ejected when `narrowing` says so, and
/// the endpoints a request has tried.
fn narrowed(cluster: &Cluster, narrowing: Narrowing) -> (ClusterState, Vec<SocketAddr>) {
    let state = fresh_state();
    if matches!(narrowing, Narrowing::Ejected | Narrowing::EjectedAndRetry) {
        for e in &cluster.endpoints[..2] {
            state.record_outcome(cluster, e.address, Outcome::Response(503));
        }
    }
    let tried = if matches!(narrowing, Narrowing::Retry | Narrowing::EjectedAndRetry) {
        vec![cluster.endpoints[2].address]
    } else {
        Vec::new()
    };
    (state, tried)
}

/// Headers whose `x-user` is `alice`.
fn alice() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers
}

fn keyed(headers: &http::HeaderMap) -> HashInput<'_> {
    HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers,
        query: None,
        source_ip: IpAddr::from([10, 9, 0, 1]),
    }
}

/// A choice in a narrowed pool of 1,000 endpoints costs about what one of 10 does, by
/// balancer and narrowing: the pools are built once per change of the ejected set (and once
/// per configuration), and a retry draws again from the same pool a few times rather than
/// filtering it. Walking the endpoints per choice made it about 100 times dearer. The best of
/// three rounds each, so a busy machine does not decide.
#[test]
fn narrowed_pick_cost_does_not_grow_with_the_endpoints() {
    let headers = alice();
    let input = keyed(&headers);
    let picks = 2_000u32;
    let mut failures = Vec::new();
    for (name, balancer) in balancers() {
        for narrowing in NARROWINGS {
            let cost = |count: u16| {
                let weighted = name == "weighted least request";
                let cluster = cluster(count, &balancer, weighted, narrowing);
                let (state, tried) = narrowed(&cluster, narrowing);
                std::hint::black_box(state.choose_endpoint(&cluster, &input, &tried).unwrap());
                (0..3)
                    .map(|_| {
                        let start = Instant::now();
                        for _ in 0..picks {
                            std::hint::black_box(
                                state.choose_endpoint(&cluster, &input, &tried).unwrap(),
                            );
                        }
                        start.elapsed()
                    })
                    .min()
                    .unwrap()
            };
            let (few, many) = (cost(10), cost(1_000));
            println!("{name}, {narrowing:?}: {picks} picks {few:?} over 10, {many:?} over 1,000");
            if many >= few * 20 {
                failures.push(format!(
                    "{name}, {narrowing:?}: {picks} picks cost {many:?} over 1,000 endpoints, \
                     {few:?} over 10"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The endpoints (by index) `picks` choices of `cluster` go to, for a request that tried
/// `tried`, each with its own key.
fn choices(
    cluster: &Cluster,
    state: &ClusterState,
    tried: &[SocketAddr],
    picks: usize,
) -> Vec<usize> {
    (0..picks)
        .map(|n| {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-user", format!("user-{n}").parse().unwrap());
            let chosen = state
                .choose_endpoint(cluster, &keyed(&headers), tried)
                .unwrap();
            cluster
                .endpoints
                .iter()
                .position(|e| e.address == chosen.address)
                .unwrap()
        })
        .collect()
}

/// Whatever narrows the pool, a choice never goes to an ejected endpoint (no panic threshold
/// here) nor, while its pool has others, to one the request tried: with one tried, by redraws
/// from the pool; with all but one of a priority's endpoints tried, every redraw may fall on a
/// tried one, and the walk of the endpoints then finds the one left.
#[test]
fn a_narrowed_choice_avoids_ejected_and_tried_endpoints() {
    for (name, balancer) in balancers() {
        for narrowing in NARROWINGS {
            let weighted = name == "weighted least request";
            let cluster = cluster(10, &balancer, weighted, narrowing);
            let (state, tried) = narrowed(&cluster, narrowing);
            let ejected: BTreeSet<usize> =
                if matches!(narrowing, Narrowing::Ejected | Narrowing::EjectedAndRetry) {
                    [0, 1].into()
                } else {
                    BTreeSet::new()
                };
            for i in choices(&cluster, &state, &tried, 300) {
                assert!(!ejected.contains(&i), "{name}, {narrowing:?}: ejected {i}");
                assert!(
                    !tried.contains(&cluster.endpoints[i].address),
                    "{name}, {narrowing:?}: tried {i}"
                );
            }
        }
        // Two of ten ejected, seven tried: the one left.
        let cluster = cluster(
            10,
            &balancer,
            name == "weighted least request",
            Narrowing::Ejected,
        );
        let (state, _) = narrowed(&cluster, Narrowing::Ejected);
        let tried: Vec<SocketAddr> = cluster.endpoints[3..].iter().map(|e| e.address).collect();
        let chosen: BTreeSet<usize> = choices(&cluster, &state, &tried, 200).into_iter().collect();
        assert_eq!(
            chosen,
            [2].into(),
            "{name}: the one endpoint neither ejected nor tried"
        );
        // Every endpoint not ejected tried: the pool again, ejected ones still left out.
        let tried: Vec<SocketAddr> = cluster.endpoints[2..].iter().map(|e| e.address).collect();
        let chosen: BTreeSet<usize> = choices(&cluster, &state, &tried, 200).into_iter().collect();
        assert!(chosen.iter().all(|i| *i >= 2), "{name}: {chosen:?}");
    }
}

/// Round robin in a pool narrowed by ejections or a priority goes through the pool's endpoints
/// in the order the walk of the endpoints does, with equal weights and with weights 1 and 2
/// (the walk: a cluster with slow start but no endpoint warming, whose choice walks the
/// endpoints).
#[test]
fn round_robin_in_a_narrowed_pool_is_the_walks() {
    for weighted in [false, true] {
        for narrowing in [Narrowing::Ejected, Narrowing::Priorities] {
            let pooled = cluster(10, &LoadBalancer::RoundRobin, weighted, narrowing);
            let walked = Cluster {
                slow_start: Some(crate::model::SlowStart {
                    window: std::time::Duration::from_secs(60),
                    min_weight: 0.1,
                    aggression: 1.0,
                }),
                ..cluster(10, &LoadBalancer::RoundRobin, weighted, narrowing)
            };
            let (pooled_state, _) = narrowed(&pooled, narrowing);
            let (walked_state, _) = narrowed(&walked, narrowing);
            let by_pool = choices(&pooled, &pooled_state, &[], 200);
            assert_eq!(
                by_pool,
                choices(&walked, &walked_state, &[], 200),
                "weighted {weighted}, {narrowing:?}"
            );
            let distinct: BTreeSet<usize> = by_pool.iter().copied().collect();
            assert!(
                distinct.len() >= 4,
                "weighted {weighted}, {narrowing:?}: {distinct:?}"
            );
        }
    }
}

/// Weighted least request in a pool narrowed by ejections walks the worker's EDF schedule of
/// that pool: weights 1 and 2 in turn, two ejected (one of each), idle: each endpoint left
/// takes its weight's share of the choices, exact within a cycle.
#[test]
fn weighted_least_request_in_a_narrowed_pool_keeps_the_weights() {
    let cluster = cluster(10, &LoadBalancer::LeastRequest, true, Narrowing::Ejected);
    let (state, _) = narrowed(&cluster, Narrowing::Ejected);
    // Endpoints 2..10 left: weights 1,2,1,2,1,2,1,2, 12 in all.
    let picks = 1_200;
    let mut counts: HashMap<usize, usize> = HashMap::new();
    for i in choices(&cluster, &state, &[], picks) {
        *counts.entry(i).or_default() += 1;
    }
    for i in 2..10 {
        let expected = picks * (1 + i % 2) / 12;
        let got = counts.get(&i).copied().unwrap_or(0);
        assert!(
            got.abs_diff(expected) <= 2,
            "endpoint {i}: {got}, not {expected}: {counts:?}"
        );
    }
}

/// Each worker thread keeps its own EDF schedule of a weighted least-request pool, as each of
/// Envoy's workers does: the choices of every thread, made at once with the others', give the
/// weight-3 endpoint three of every four, exact within a cycle (a schedule shared between
/// threads gives each thread's choices that share only on average).
#[test]
fn each_worker_keeps_its_own_schedule() {
    let cluster = Cluster {
        endpoints: vec![
            endpoint(1),
            Endpoint {
                weight: 3,
                ..endpoint(2)
            },
        ],
        ..least_request(Vec::new())
    };
    let state = fresh_state();
    let heavy: Vec<usize> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    choices(&cluster, &state, &[], 4_000)
                        .into_iter()
                        .filter(|i| *i == 1)
                        .count()
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for (worker, heavy) in heavy.iter().enumerate() {
        assert!(
            heavy.abs_diff(3_000) <= 2,
            "worker {worker}: {heavy} of 4,000"
        );
    }
}
