use std::time::Duration;

use super::*;
use crate::model::{HashKey, Tunnel};

pub(super) fn endpoint(last: u8) -> Endpoint {
    Endpoint {
        address: SocketAddr::from(([10, 0, 0, last], 8080)),
        identity: None,
        principal: None,
        workload: Arc::default(),
        tunnel: Tunnel::Plain,
        tunnel_via: None,
        host: None,
        healthy: true,
        weight: 1,
        priority: 0,
        locality: 0,
    }
}

pub(super) fn policy(max_ejection_percent: u32) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_gateway_errors: None,
        consecutive_5xx: Some(1),
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent,
        min_health_percent: 0,
        local_origin_failures: None,
        http_error_codes: Vec::new(),
    }
}

#[test]
fn ejection_respects_the_maximum_share_but_always_allows_one() {
    let cases = [
        (10, 0, 2, true),
        (10, 1, 2, false),
        (50, 1, 4, true),
        (50, 2, 4, false),
        (100, 1, 2, true),
        (100, 0, 0, false),
    ];
    for (percent, ejected, total, expected) in cases {
        assert_eq!(
            ejection_allowed(&policy(percent), ejected, total),
            expected,
            "{percent}% with {ejected}/{total} ejected"
        );
    }
}

#[test]
fn hash_keys_come_from_headers_cookies_query_and_source() {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers.insert(http::header::COOKIE, "a=1; session=xyz".parse().unwrap());
    let input = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: Some("shard=7&x=1"),
        source_ip: "10.1.2.3".parse().unwrap(),
    };
    let cases = [
        (
            HashKey::Header(http::HeaderName::from_static("x-user")),
            Some("alice"),
        ),
        (
            HashKey::Cookie(super::cookie::tests::key("session")),
            Some("xyz"),
        ),
        (HashKey::Cookie(super::cookie::tests::key("missing")), None),
        (HashKey::QueryParameter("shard".to_owned()), Some("7")),
        (HashKey::SourceIp, Some("10.1.2.3")),
    ];
    for (key, expected) in cases {
        assert_eq!(hash_key(&key, &input).as_deref(), expected, "{key:?}");
    }
}

pub(super) fn least_request(endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        name: "outbound|80||web.shop.svc.cluster.local".to_owned(),
        host: "web.shop.svc.cluster.local".to_owned(),
        service: Arc::new(crate::model::service_of_host("web.shop.svc.cluster.local")),
        subset: String::new(),
        port: 80,
        endpoints,
        priorities: 1,
        locality_weights: Vec::new(),
        load_balancer: LoadBalancer::LeastRequest,
        slow_start: None,
        limits: crate::model::ConnectionLimits::default(),
        outlier: None,
        destination_rule: String::new(),
        hostnames: Vec::new(),
        tls: None,
        dynamic_dns: false,
        proxy_protocol: None,
        upstream_protocol: Default::default(),
        tcp_tunneling: None,
        plan: std::sync::OnceLock::new(),
    }
}

pub(super) fn fresh_state() -> ClusterState {
    ClusterState(Arc::new(ClusterRuntime {
        active_requests: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        active_retries: AtomicUsize::new(0),
        connection_slots: None,
        slot_count: None,
        next: AtomicUsize::new(0),
        endpoints: Mutex::new(EndpointStates::default()),
    }))
}

fn in_flight(state: &ClusterState) -> HashMap<SocketAddr, usize> {
    lock(&state.0.endpoints)
        .iter()
        .map(|(address, s)| (*address, s.active.load(Ordering::Acquire)))
        .collect()
}

#[test]
fn a_chosen_endpoint_counts_its_request_in_flight_until_the_guard_ends() {
    let cluster = least_request(vec![endpoint(1)]);
    let state = fresh_state();
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: None,
        source_ip: IpAddr::from([10, 0, 0, 9]),
    };
    let address = endpoint(1).address;
    let (chosen, first) = state
        .choose_and_track(&cluster, &hash, &Tried::default())
        .unwrap();
    assert_eq!(chosen.address, address);
    let (_, second) = state
        .choose_and_track(&cluster, &hash, &Tried::default())
        .unwrap();
    assert_eq!(in_flight(&state)[&address], 2);
    drop(first);
    assert_eq!(in_flight(&state)[&address], 1);
    // The count moves with the endpoint's state to a cluster's next runtime: a request that
    // ends after the move is counted down there.
    let next = fresh_state();
    *lock(&next.0.endpoints) = std::mem::take(&mut *lock(&state.0.endpoints));
    drop(second);
    assert_eq!(in_flight(&next)[&address], 0);
    drop(state.track_request(address));
    assert_eq!(in_flight(&state)[&address], 0);
}

/// A cluster whose endpoints `10.0.0.<last>` are in the given locality priorities.
pub(super) fn ranked_cluster(endpoints: &[(u8, u32)], outlier: Option<OutlierPolicy>) -> Cluster {
    let host = "reviews.shop.svc.cluster.local".to_owned();
    Cluster {
        name: format!("outbound|80||{host}"),
        service: Arc::new(crate::model::service_of_host(&host)),
        host,
        subset: String::new(),
        port: 80,
        endpoints: endpoints
            .iter()
            .map(|(last, priority)| Endpoint {
                priority: *priority,
                ..endpoint(*last)
            })
            .collect(),
        priorities: endpoints.iter().map(|(_, p)| p + 1).max().unwrap_or(1),
        locality_weights: Vec::new(),
        load_balancer: LoadBalancer::RoundRobin,
        slow_start: None,
        limits: Default::default(),
        outlier,
        destination_rule: String::new(),
        hostnames: Vec::new(),
        tls: None,
        dynamic_dns: false,
        proxy_protocol: None,
        upstream_protocol: Default::default(),
        tcp_tunneling: None,
        plan: std::sync::OnceLock::new(),
    }
}

/// Envoy's priority load, with its overprovisioning factor of 1.4: a priority takes load up
/// to its health (available share x 1.4, at most 100%), the next ones the rest; below 100% in
/// all, the loads are scaled up; with nothing available, the closest priority with healthy
/// endpoints takes it all.
#[test]
fn priority_load_is_envoys() {
    // Endpoints (last byte, priority, available), and (roll, expected priority).
    type Case<'a> = (&'a [(u8, u32, bool)], &'a [(usize, u32)]);
    let cases: &[Case<'_>] = &[
        // All up: the closest priority takes everything.
        (&[(1, 0, true), (2, 1, true)], &[(0, 0), (99, 0)]),
        // The closest has none available: all to the next.
        (&[(1, 0, false), (2, 1, true)], &[(0, 1), (99, 1)]),
        // Half of it available: health 70%, the next takes the other 30%.
        (
            &[(1, 0, true), (2, 0, false), (3, 1, true)],
            &[(0, 0), (69, 0), (70, 1), (99, 1)],
        ),
        // 5 of 7 up is 100% healthy after overprovisioning: no spill.
        (
            &[
                (1, 0, true),
                (2, 0, true),
                (3, 0, true),
                (4, 0, true),
                (5, 0, true),
                (6, 0, false),
                (7, 0, false),
                (8, 1, true),
            ],
            &[(0, 0), (99, 0)],
        ),
        // Both at 35%: together 70%, scaled to 50% each.
        (
            &[
                (1, 0, true),
                (2, 0, false),
                (3, 0, false),
                (4, 0, false),
                (5, 1, true),
                (6, 1, false),
                (7, 1, false),
                (8, 1, false),
            ],
            &[(0, 0), (49, 0), (50, 1), (99, 1)],
        ),
        // Nothing available anywhere: the closest priority.
        (&[(1, 0, false), (2, 1, false)], &[(0, 0), (99, 0)]),
    ];
    for (endpoints, rolls) in cases {
        let ranked: Vec<(u8, u32)> = endpoints.iter().map(|(l, p, _)| (*l, *p)).collect();
        let cluster = ranked_cluster(&ranked, None);
        let up = |e: &Endpoint| {
            endpoints
                .iter()
                .any(|(l, _, up)| *up && e.address.ip() == IpAddr::from([10, 0, 0, *l]))
        };
        for (roll, expected) in *rolls {
            assert_eq!(
                priority_level(&cluster, up, &[], 0, *roll),
                *expected,
                "{endpoints:?} roll {roll}"
            );
        }
    }
}

/// The closest priority takes every request while it has an endpoint; when outlier detection
/// ejects it, requests fail over to the next priority, and retries stay within a priority.
#[test]
fn requests_stay_in_the_closest_priority_and_fail_over_when_it_is_ejected() {
    let cluster = ranked_cluster(&[(1, 0), (2, 1), (3, 1)], Some(policy(100)));
    let state = fresh_state();
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: None,
        source_ip: IpAddr::from([10, 0, 0, 100]),
    };
    let chosen = |exclude: &[SocketAddr]| -> std::collections::BTreeSet<SocketAddr> {
        (0..40)
            .map(|_| {
                state
                    .choose_endpoint(&cluster, &hash, exclude)
                    .unwrap()
                    .address
            })
            .collect()
    };
    let local = cluster.endpoints[0].address;
    assert_eq!(chosen(&[]), [local].into());
    // A retry after the local endpoint failed has nowhere else to go in its priority.
    assert_eq!(chosen(&[local]), [local].into());
    // Unless its priority is left out (retryRemoteLocalities): then the next one takes it; with
    // every priority that has health left out, none is.
    let retried = |priorities: &[u32]| -> std::collections::BTreeSet<SocketAddr> {
        let tried = Tried {
            endpoints: &[local],
            priorities,
        };
        (0..40)
            .map(|_| {
                state
                    .choose_and_track(&cluster, &hash, &tried)
                    .unwrap()
                    .0
                    .address
            })
            .collect()
    };
    let remote_pair: std::collections::BTreeSet<_> =
        [cluster.endpoints[1].address, cluster.endpoints[2].address].into();
    assert_eq!(retried(&[0]), remote_pair);
    assert_eq!(retried(&[0, 1]), [local].into());
    state.record_outcome(&cluster, local, Outcome::Response(503));
    let remote: std::collections::BTreeSet<_> =
        [cluster.endpoints[1].address, cluster.endpoints[2].address].into();
    assert_eq!(chosen(&[]), remote, "ejected: over to the next priority");
    // A cluster without priorities spreads over all of them.
    let flat = ranked_cluster(&[(1, 0), (2, 0), (3, 0)], None);
    let spread: std::collections::BTreeSet<_> = {
        let state = fresh_state();
        (0..30)
            .map(|_| state.choose_endpoint(&flat, &hash, &[]).unwrap().address)
            .collect()
    };
    assert_eq!(spread.len(), 3);
}

/// A cluster whose endpoints `10.0.0.<last>` are in the given weighed localities.
fn weighed_cluster(endpoints: &[(u8, u32)], weights: &[u32]) -> Cluster {
    let mut cluster = ranked_cluster(
        &endpoints.iter().map(|(l, _)| (*l, 0)).collect::<Vec<_>>(),
        Some(policy(100)),
    );
    for (endpoint, (_, locality)) in cluster.endpoints.iter_mut().zip(endpoints) {
        endpoint.locality = *locality;
    }
    cluster.locality_weights = weights.to_vec();
    cluster
}

/// Envoy's effective locality weight: the weight times the available share times 1.4, at
/// most the weight; a locality with nothing available is never drawn, and with none available
/// anywhere no locality is chosen.
#[test]
fn locality_weights_are_envoys_effective_weights() {
    // Endpoints (last byte, locality, available), weights, and (roll, expected locality).
    type Case<'a> = (&'a [(u8, u32, bool)], &'a [u32], &'a [(f64, Option<u32>)]);
    let cases: &[Case<'_>] = &[
        // 80/20, all up.
        (
            &[(1, 0, true), (2, 1, true)],
            &[80, 20],
            &[
                (0.0, Some(0)),
                (0.79, Some(0)),
                (0.80, Some(1)),
                (0.99, Some(1)),
            ],
        ),
        // Half of locality 0 up: 80 x 0.7 = 56 against 20.
        (
            &[(1, 0, true), (2, 0, false), (3, 1, true)],
            &[80, 20],
            &[(0.73, Some(0)), (0.74, Some(1))],
        ),
        // 5 of 7 up is still the whole weight after overprovisioning.
        (
            &[
                (1, 0, true),
                (2, 0, true),
                (3, 0, true),
                (4, 0, true),
                (5, 0, true),
                (6, 0, false),
                (7, 0, false),
                (8, 1, true),
            ],
            &[80, 20],
            &[(0.79, Some(0)), (0.80, Some(1))],
        ),
        // Locality 0 down: everything to 1.
        (
            &[(1, 0, false), (2, 1, true)],
            &[80, 20],
            &[(0.0, Some(1)), (0.99, Some(1))],
        ),
        // Nothing up: no locality.
        (&[(1, 0, false), (2, 1, false)], &[80, 20], &[(0.5, None)]),
    ];
    for (endpoints, weights, rolls) in cases {
        let layout: Vec<(u8, u32)> = endpoints.iter().map(|(l, g, _)| (*l, *g)).collect();
        let cluster = weighed_cluster(&layout, weights);
        let up = |e: &Endpoint| {
            endpoints
                .iter()
                .any(|(l, _, up)| *up && e.address.ip() == IpAddr::from([10, 0, 0, *l]))
        };
        for (roll, expected) in *rolls {
            assert_eq!(
                weighted_locality(&cluster, |_| true, up, *roll),
                *expected,
                "{endpoints:?} roll {roll}"
            );
        }
    }
}

/// Requests split between localities by their weights, the endpoint chosen within the drawn
/// locality; an ejected locality's share goes to the others.
#[test]
fn requests_split_by_locality_weights() {
    // Locality 0 has two endpoints, locality 1 one: 80/20 by locality, not by endpoint.
    let cluster = weighed_cluster(&[(1, 0), (2, 0), (3, 1)], &[80, 20]);
    let state = fresh_state();
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: None,
        source_ip: IpAddr::from([10, 0, 0, 100]),
    };
    let requests = 2000;
    let mut counts: HashMap<u8, usize> = HashMap::new();
    for _ in 0..requests {
        let chosen = state.choose_endpoint(&cluster, &hash, &[]).unwrap();
        let IpAddr::V4(ip) = chosen.address.ip() else {
            unreachable!()
        };
        *counts.entry(ip.octets()[3]).or_default() += 1;
    }
    let zone_0 = counts.get(&1).copied().unwrap_or(0) + counts.get(&2).copied().unwrap_or(0);
    // 80% of 2000 is 1600, with a standard deviation of about 18: 1500 to 1700 is over 5 of
    // them either way.
    assert!((1500..=1700).contains(&zone_0), "{counts:?}");
    assert!(
        counts.contains_key(&1) && counts.contains_key(&2),
        "{counts:?}"
    );
    // The lone endpoint of locality 1 ejected: all to locality 0.
    state.record_outcome(
        &cluster,
        cluster.endpoints[2].address,
        Outcome::Response(503),
    );
    for _ in 0..200 {
        let chosen = state.choose_endpoint(&cluster, &hash, &[]).unwrap();
        assert_ne!(chosen.address, cluster.endpoints[2].address);
    }
}

/// How many of `picks` choices from a fresh state go to each endpoint `10.0.0.<last>` of
/// `cluster` (each request ends before the next is chosen).
fn choice_counts(cluster: &Cluster, picks: usize) -> HashMap<u8, usize> {
    let state = fresh_state();
    let mut counts = HashMap::new();
    for _ in 0..picks {
        let IpAddr::V4(ip) = pick(&state, cluster).ip() else {
            unreachable!()
        };
        *counts.entry(ip.octets()[3]).or_default() += 1;
    }
    counts
}

/// The endpoint `state` chooses for a request with nothing to hash on.
fn pick(state: &ClusterState, cluster: &Cluster) -> SocketAddr {
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: None,
        source_ip: IpAddr::from([10, 0, 0, 100]),
    };
    state.choose_endpoint(cluster, &hash, &[]).unwrap().address
}

/// `10.0.0.1` with weight 1 and `10.0.0.2` with weight 3, balanced by `balancer`.
fn one_to_three(balancer: LoadBalancer) -> Cluster {
    Cluster {
        load_balancer: balancer,
        ..least_request(vec![
            endpoint(1),
            Endpoint {
                weight: 3,
                ..endpoint(2)
            },
        ])
    }
}

/// Envoy's weighted round robin: an endpoint of weight 3 beside one of weight 1 takes three
/// requests of four, in every short run of them (Envoy's EDF schedule is exact per cycle);
/// plain round robin would give each half.
#[test]
fn round_robin_follows_endpoint_weights() {
    let cluster = one_to_three(LoadBalancer::RoundRobin);
    for picks in [40, 400, 4_000] {
        let counts = choice_counts(&cluster, picks);
        let heavy = counts.get(&2).copied().unwrap_or(0);
        // The golden-ratio walk strays from the exact share by a few requests at most.
        let expected = picks * 3 / 4;
        assert!(
            heavy.abs_diff(expected) <= 2,
            "{picks} picks: {counts:?}, expected {expected} to the weight-3 endpoint"
        );
    }
    // Interleaved, not in blocks: no run of four choices goes to one endpoint only.
    let state = fresh_state();
    let order: Vec<SocketAddr> = (0..100).map(|_| pick(&state, &cluster)).collect();
    assert!(
        order
            .windows(5)
            .all(|run| run.contains(&endpoint(1).address)),
        "the weight-1 endpoint waits more than four turns: {order:?}"
    );
}

/// Envoy's weighted least request: with weights that differ, each endpoint weighs
/// `weight / (requests in flight + 1)`. Idle, the split is the weights' (power of two choices
/// would give each half); with requests in flight on the heavy endpoint, it takes less.
#[test]
fn least_request_follows_endpoint_weights_over_requests_in_flight() {
    let cluster = one_to_three(LoadBalancer::LeastRequest);
    // 3 of 4 of 8000 is 6000, a standard deviation of 39: 5800 to 6200 is over 5 of them.
    let picks = 8_000;
    let counts = choice_counts(&cluster, picks);
    let heavy = counts.get(&2).copied().unwrap_or(0);
    assert!((5_800..=6_200).contains(&heavy), "{counts:?}");

    // Five requests held on the weight-3 endpoint: 3 / 6 against 1 / 1, a third of the new
    // ones (2667 of 8000, a standard deviation of 42).
    let state = fresh_state();
    let _held: Vec<ActiveRequest> = (0..5)
        .map(|_| state.track_request(endpoint(2).address))
        .collect();
    let heavy = (0..picks)
        .filter(|_| pick(&state, &cluster) == endpoint(2).address)
        .count();
    assert!((2_450..=2_900).contains(&heavy), "{heavy} of {picks}");
}

/// Envoy's random balancer picks among the hosts uniformly (`RandomLoadBalancer::peekOrChoose`
/// indexes the host list by a random number), whatever their weights.
#[test]
fn random_ignores_endpoint_weights_as_envoy_does() {
    let picks = 8_000;
    let counts = choice_counts(&one_to_three(LoadBalancer::Random), picks);
    // Half of 8000, a standard deviation of 45: 3750 to 4250 is over 5 of them.
    let heavy = counts.get(&2).copied().unwrap_or(0);
    assert!((3_750..=4_250).contains(&heavy), "{counts:?}");
}

/// Slow start applies on top of the endpoint's weight: a weight-3 endpoint at 10% of its
/// weight counts 0.3 beside a warm weight-1 endpoint.
#[test]
fn slow_start_scales_the_endpoint_weight() {
    let cluster = Cluster {
        slow_start: Some(crate::model::SlowStart {
            window: Duration::from_secs(100),
            min_weight: 0.1,
            aggression: 1.0,
        }),
        ..one_to_three(LoadBalancer::RoundRobin)
    };
    let state = fresh_state();
    {
        let mut states = lock(&state.0.endpoints);
        states.entry(endpoint(2).address).or_default().warming_since = Some(Instant::now());
    }
    // 0.3 / 1.3 of 1300 is 300.
    let heavy = (0..1_300)
        .filter(|_| pick(&state, &cluster) == endpoint(2).address)
        .count();
    assert!(heavy.abs_diff(300) <= 3, "{heavy} of 1300");
}

/// Headers whose `x-user` is `alice`, a key for the consistent hashes here.
fn alice() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers
}

/// A request with `headers`, from `10.9.0.1`.
fn keyed(headers: &http::HeaderMap) -> HashInput<'_> {
    HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers,
        query: None,
        source_ip: IpAddr::from([10, 9, 0, 1]),
    }
}

/// A choice among 1,000 healthy endpoints of equal weight costs about what one among 10
/// does, by balancer (the balancing plan makes it O(1); a walk of the endpoints per choice
/// made it 100 times dearer). The best of three rounds each, so a busy machine does not decide.
#[test]
fn pick_cost_does_not_grow_with_the_endpoints() {
    let headers = alice();
    let input = keyed(&headers);
    let balancers = [
        ("round robin", LoadBalancer::RoundRobin),
        ("least request", LoadBalancer::LeastRequest),
        ("weighted least request", LoadBalancer::LeastRequest),
        (
            "consistent hash",
            LoadBalancer::ConsistentHash(
                HashKey::Header(http::HeaderName::from_static("x-user")),
                crate::model::HashTable::Ring {
                    minimum_size: crate::model::DEFAULT_MINIMUM_RING_SIZE,
                },
            ),
        ),
    ];
    let picks = 20_000u32;
    for (name, balancer) in balancers {
        let cost = |count: u16| {
            // Weighted least request: weights 1 and 2 in turn (Envoy's EDF schedule, O(log n);
            // a weighted draw over the endpoints was O(n)).
            let weighted = name == "weighted least request";
            let endpoints: Vec<Endpoint> = (0..count)
                .map(|i| Endpoint {
                    address: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 8080)),
                    weight: if weighted { 1 + u32::from(i % 2) } else { 1 },
                    ..endpoint(0)
                })
                .collect();
            let cluster = Cluster {
                load_balancer: balancer.clone(),
                ..least_request(endpoints)
            };
            let state = fresh_state();
            std::hint::black_box(state.choose_endpoint(&cluster, &input, &[]).unwrap());
            (0..3)
                .map(|_| {
                    let start = Instant::now();
                    for _ in 0..picks {
                        std::hint::black_box(state.choose_endpoint(&cluster, &input, &[]).unwrap());
                    }
                    start.elapsed()
                })
                .min()
                .unwrap()
        };
        let (few, many) = (cost(10), cost(1_000));
        assert!(
            many < few * 20,
            "{name}: {picks} picks cost {many:?} over 1,000 endpoints, {few:?} over 10"
        );
    }
}

/// A workload addressed directly goes through a one-endpoint cluster
/// ([`crate::model::WorkloadTarget::cluster`]): its choice must not build the cluster's
/// balancing plan (two vectors, and a hash table for a consistent hash), and must still be
/// the choice every balancer makes of one endpoint: it when healthy, even when tried before,
/// and when ejected only under a panic threshold (Envoy's panic mode); none otherwise.
#[test]
fn a_one_endpoint_cluster_is_chosen_without_building_a_plan() {
    let workload = Arc::new(crate::model::DirectWorkload {
        address: IpAddr::from([10, 0, 0, 7]),
        namespace: "shop".to_owned(),
        identity: None,
        tunnel: Tunnel::Hbone,
        info: Arc::default(),
        services: Vec::new(),
        ports: HashMap::new(),
        clusters: Default::default(),
    });
    let target = crate::model::WorkloadTarget {
        workload: &workload,
        port: 8080,
        protocol: crate::model::Protocol::Http,
    };
    let headers = alice();
    let input = keyed(&headers);
    let address = SocketAddr::from(([10, 0, 0, 7], 8080));
    let hashed = LoadBalancer::ConsistentHash(
        HashKey::Header(http::HeaderName::from_static("x-user")),
        crate::model::HashTable::Maglev { table_size: 65537 },
    );
    let balancers = [
        LoadBalancer::RoundRobin,
        LoadBalancer::LeastRequest,
        LoadBalancer::Random,
        hashed,
    ];
    for (balancer, min_health_percent) in balancers
        .into_iter()
        .flat_map(|b| [(b.clone(), 50), (b, 0)])
    {
        let cluster = Cluster {
            load_balancer: balancer.clone(),
            outlier: Some(OutlierPolicy {
                min_health_percent,
                ..policy(100)
            }),
            ..target.build_cluster()
        };
        let state = fresh_state();
        let first = state.choose_endpoint(&cluster, &input, &[]).unwrap();
        assert_eq!(first.address, address, "{balancer:?}");
        // A retry after it, and after its ejection: still it in panic mode, nothing without.
        state.record_outcome(&cluster, address, Outcome::Response(503));
        assert!(lock(&state.0.endpoints)[&address].ejected_until.is_some());
        let tried = Tried {
            endpoints: &[address],
            priorities: &[0],
        };
        match state.choose_and_track(&cluster, &input, &tried) {
            Ok((retry, _active)) if min_health_percent > 0 => {
                assert_eq!(retry.address, address, "{balancer:?}")
            }
            Err(UpstreamError::NoHealthyUpstream(_)) if min_health_percent == 0 => {}
            other => panic!(
                "{balancer:?} at minHealthPercent {min_health_percent}: {:?}",
                other.map(|(e, _)| e.address)
            ),
        }
        assert!(
            cluster.plan.get().is_none(),
            "{balancer:?}: a one-endpoint choice built the balancing plan"
        );
    }
    let mut cluster = target.build_cluster();
    cluster.endpoints[0].healthy = false;
    assert!(matches!(
        fresh_state().choose_endpoint(&cluster, &input, &[]),
        Err(UpstreamError::NoHealthyUpstream(name)) if name == "inbound-pod|8080||10.0.0.7"
    ));
    assert!(cluster.plan.get().is_none());
}

/// With every endpoint ejected, Envoy's panic mode sends to them all only under a panic
/// threshold; without one (Istio's default `minHealthPercent` 0, which it passes as Envoy's
/// `healthy_panic_threshold`) nothing is chosen and the request gets 503 `UH`
/// (`LoadBalancerBase::recalculatePerPriorityPanic`).
#[test]
fn every_endpoint_ejected_is_no_healthy_upstream_without_a_panic_threshold() {
    for min_health_percent in [0, 50] {
        let cluster = Cluster {
            outlier: Some(OutlierPolicy {
                min_health_percent,
                ..policy(100)
            }),
            ..one_to_three(LoadBalancer::RoundRobin)
        };
        let state = fresh_state();
        let addresses: Vec<SocketAddr> = cluster.endpoints.iter().map(|e| e.address).collect();
        for address in &addresses {
            state.record_outcome(&cluster, *address, Outcome::Response(503));
        }
        assert!(
            addresses
                .iter()
                .all(|a| lock(&state.0.endpoints)[a].ejected_until.is_some()),
            "every endpoint ejected"
        );
        let headers = http::HeaderMap::new();
        let chosen = state.choose_endpoint(&cluster, &keyed(&headers), &[]);
        match (min_health_percent, chosen) {
            (0, Err(UpstreamError::NoHealthyUpstream(name))) => assert_eq!(name, cluster.name),
            (50, Ok(endpoint)) => assert!(addresses.contains(&endpoint.address)),
            (_, other) => panic!(
                "minHealthPercent {min_health_percent}: {:?}",
                other.map(|e| e.address)
            ),
        }
    }
}
