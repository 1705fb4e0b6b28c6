//! Slow start: Envoy's weight factor, the weighted draw, the warm-up clocks across pushes, and
//! the share a warming endpoint gets from [`ClusterState::choose_endpoint`].

use std::net::IpAddr;

use super::super::tests::{endpoint, fresh_state, least_request};
use super::*;
use crate::model::LoadBalancer;
use crate::upstream::balancing::{ClusterState, HashInput, lock};

fn slow(window_secs: u64, min_percent: f64, aggression: f64) -> SlowStart {
    SlowStart {
        window: Duration::from_secs(window_secs),
        min_weight: min_percent / 100.0,
        aggression,
    }
}

#[test]
fn the_factor_is_envoys_slow_start_formula() {
    let t0 = Instant::now();
    let at = |millis: u64| t0 + Duration::from_millis(millis);
    // (config, since, now, expected): Envoy's `applySlowStartFactor`
    // max(min_weight, (max(elapsed, 1ms) / window)^(1 / aggression)) inside the window.
    let cases = [
        (slow(10, 10.0, 1.0), Some(t0), t0, 0.1),
        (slow(10, 10.0, 1.0), Some(t0), at(500), 0.1),
        (slow(10, 10.0, 1.0), Some(t0), at(5_000), 0.5),
        (slow(10, 10.0, 1.0), Some(t0), at(9_000), 0.9),
        (slow(10, 10.0, 1.0), Some(t0), at(10_000), 1.0),
        (slow(10, 10.0, 1.0), Some(t0), at(60_000), 1.0),
        // Aggression 2: the square root of the time factor, a faster start.
        (slow(10, 10.0, 2.0), Some(t0), at(2_500), 0.5),
        // Aggression 0.5: the square, a slower start held up by the minimum.
        (slow(10, 10.0, 0.5), Some(t0), at(5_000), 0.25),
        (slow(10, 10.0, 0.5), Some(t0), at(2_000), 0.1),
        // No minimum: 1ms of a 10s window at least.
        (slow(10, 0.0, 1.0), Some(t0), t0, 0.0001),
        // A clock earlier than the start counts as no time.
        (slow(10, 10.0, 1.0), Some(at(1_000)), t0, 0.1),
        // An endpoint without a clock has its full weight.
        (slow(10, 10.0, 1.0), None, t0, 1.0),
    ];
    for (config, since, now, expected) in cases {
        let got = factor(&config, since, now);
        assert!(
            (got - expected).abs() < 1e-9,
            "{config:?} since {since:?} at {now:?}: {got}, expected {expected}"
        );
    }
}

#[test]
fn the_weighted_draw_gives_each_candidate_its_share() {
    let endpoints = [endpoint(1), endpoint(2), endpoint(3)];
    let weights = |e: &Endpoint| match e.address.ip() {
        IpAddr::V4(ip) if ip.octets()[3] == 3 => 0.1,
        _ => 1.0,
    };
    // Evenly spread rolls: each candidate is drawn in exact proportion to its weight.
    let rolls = 2_100;
    let mut counts = [0usize; 3];
    for i in 0..rolls {
        let roll = (i as f64 + 0.5) / rolls as f64;
        let chosen = weighted(|| endpoints.iter(), weights, roll).unwrap();
        counts[usize::from(match chosen.address.ip() {
            IpAddr::V4(ip) => ip.octets()[3],
            IpAddr::V6(_) => unreachable!(),
        }) - 1] += 1;
    }
    assert_eq!(counts, [1_000, 1_000, 100]);
    // The edges, and weights that sum to nothing.
    assert_eq!(
        weighted(|| endpoints.iter(), weights, 1.0).unwrap().address,
        endpoints[2].address
    );
    assert_eq!(
        weighted(|| endpoints.iter(), |_| 0.0, 0.7).unwrap().address,
        endpoints[0].address
    );
    assert!(weighted(|| [].iter(), weights, 0.5).is_none());
}

fn with_slow_start(endpoints: Vec<Endpoint>, config: Option<SlowStart>) -> Cluster {
    Cluster {
        slow_start: config,
        ..least_request(endpoints)
    }
}

fn clocks(states: &HashMap<SocketAddr, EndpointState>) -> Vec<(u8, Option<Instant>)> {
    let mut clocks: Vec<_> = states
        .iter()
        .map(|(address, state)| {
            let IpAddr::V4(ip) = address.ip() else {
                unreachable!()
            };
            (ip.octets()[3], state.warming_since)
        })
        .collect();
    clocks.sort_by_key(|(last, _)| *last);
    clocks
}

#[test]
fn an_endpoint_warms_up_from_when_it_joined_across_pushes() {
    let config = Some(slow(60, 10.0, 1.0));
    let t0 = Instant::now();
    let at = |secs: u64| t0 + Duration::from_secs(secs);
    let mut states = HashMap::new();
    // The endpoints present when the cluster is built start together (as Envoy stamps them).
    track(
        &mut states,
        &with_slow_start(vec![endpoint(1), endpoint(2)], config),
        t0,
    );
    assert_eq!(clocks(&states), [(1, Some(t0)), (2, Some(t0))]);
    // A push that adds an endpoint: the others keep their clocks.
    track(
        &mut states,
        &with_slow_start(vec![endpoint(1), endpoint(2), endpoint(3)], config),
        at(10),
    );
    assert_eq!(
        clocks(&states),
        [(1, Some(t0)), (2, Some(t0)), (3, Some(at(10)))]
    );
    // An unrelated push (the same endpoints) changes nothing.
    track(
        &mut states,
        &with_slow_start(vec![endpoint(3), endpoint(1), endpoint(2)], config),
        at(20),
    );
    assert_eq!(
        clocks(&states),
        [(1, Some(t0)), (2, Some(t0)), (3, Some(at(10)))]
    );
    // An endpoint that leaves, or stops being ready, warms up again when it is back.
    let unready = Endpoint {
        healthy: false,
        ..endpoint(3)
    };
    track(
        &mut states,
        &with_slow_start(vec![endpoint(1), unready], config),
        at(30),
    );
    assert_eq!(clocks(&states), [(1, Some(t0)), (2, None), (3, None)]);
    track(
        &mut states,
        &with_slow_start(vec![endpoint(1), endpoint(2), endpoint(3)], config),
        at(40),
    );
    assert_eq!(
        clocks(&states),
        [(1, Some(t0)), (2, Some(at(40))), (3, Some(at(40)))]
    );
    // Without slow start, no clocks are kept.
    track(
        &mut states,
        &with_slow_start(vec![endpoint(1), endpoint(2), endpoint(3)], None),
        at(50),
    );
    assert_eq!(clocks(&states), [(1, None), (2, None), (3, None)]);
}

/// How many of `picks` choices go to each endpoint `10.0.0.<last>` of `cluster`.
fn shares(state: &ClusterState, cluster: &Cluster, picks: usize) -> [usize; 3] {
    let headers = http::HeaderMap::new();
    let hash = HashInput {
        session_endpoint: None,
        generated_cookie: None,
        headers: &headers,
        query: None,
        source_ip: IpAddr::from([10, 0, 0, 9]),
    };
    let mut counts = [0usize; 3];
    for _ in 0..picks {
        let chosen = state.choose_endpoint(cluster, &hash, &[]).unwrap();
        let IpAddr::V4(ip) = chosen.address.ip() else {
            unreachable!()
        };
        counts[usize::from(ip.octets()[3]) - 1] += 1;
    }
    counts
}

#[test]
fn a_new_endpoint_gets_its_slow_start_share_of_the_choices() {
    // A window long enough that the new endpoint stays at its minimum (10%) while the test
    // runs; the two others joined long before it ended.
    let config = Some(slow(100, 10.0, 1.0));
    let long_ago = Instant::now()
        .checked_sub(Duration::from_secs(200))
        .expect("a monotonic clock older than 200s");
    for balancer in [LoadBalancer::RoundRobin, LoadBalancer::LeastRequest] {
        let cluster = Cluster {
            load_balancer: balancer.clone(),
            ..with_slow_start(vec![endpoint(1), endpoint(2), endpoint(3)], config)
        };
        let state = fresh_state();
        {
            let mut states = lock(&state.0.endpoints);
            track(&mut states, &cluster, long_ago);
            states.get_mut(&endpoint(3).address).unwrap().warming_since = Some(Instant::now());
        }
        // Weights 1, 1 and 0.1: the new endpoint's expected share is 0.1 / 2.1, 4.8% (952 of
        // 20,000; a standard deviation of 30).
        let picks = 20_000;
        let counts = shares(&state, &cluster, picks);
        assert!(
            (800..=1_100).contains(&counts[2]),
            "{balancer:?}: the new endpoint got {counts:?} of {picks}"
        );
        assert!(
            counts[0] > 8_500 && counts[1] > 8_500,
            "{balancer:?}: {counts:?}"
        );

        // Once its window is over it takes its full share: round robin is exact again.
        lock(&state.0.endpoints)
            .get_mut(&endpoint(3).address)
            .unwrap()
            .warming_since = Some(long_ago);
        let counts = shares(&state, &cluster, 3_000);
        if balancer == LoadBalancer::RoundRobin {
            assert_eq!(counts, [1_000, 1_000, 1_000]);
        } else {
            assert!(
                counts.iter().all(|c| (850..=1_150).contains(c)),
                "{counts:?}"
            );
        }
    }
}

#[test]
fn endpoints_that_start_together_share_equally() {
    // All in their window at once (a new deployment): equal factors, equal shares, as Envoy's
    // documentation notes slow start then has no effect.
    let cluster = Cluster {
        load_balancer: LoadBalancer::RoundRobin,
        ..with_slow_start(
            vec![endpoint(1), endpoint(2), endpoint(3)],
            Some(slow(100, 10.0, 1.0)),
        )
    };
    let state = fresh_state();
    track(&mut lock(&state.0.endpoints), &cluster, Instant::now());
    let counts = shares(&state, &cluster, 9_000);
    assert!(
        counts.iter().all(|c| (2_700..=3_300).contains(c)),
        "{counts:?}"
    );
}
