//! Consistent hashing over Envoy's weighted tables, through the balancer's choice.

use std::net::SocketAddr;

use super::super::tests::{endpoint, fresh_state, least_request};
use super::super::{ClusterState, HashInput, Outcome, Tried};
use crate::model::{Cluster, Endpoint, HashKey, HashTable, LoadBalancer};

const RING: HashTable = HashTable::Ring {
    minimum_size: crate::model::DEFAULT_MINIMUM_RING_SIZE,
};
const MAGLEV: HashTable = HashTable::Maglev {
    table_size: crate::model::DEFAULT_MAGLEV_TABLE_SIZE,
};

fn hashed(endpoints: Vec<Endpoint>, table: HashTable) -> Cluster {
    Cluster {
        load_balancer: LoadBalancer::ConsistentHash(
            HashKey::Header(http::HeaderName::from_static("x-user")),
            table,
        ),
        ..least_request(endpoints)
    }
}

fn weighted(last: u8, weight: u32) -> Endpoint {
    Endpoint {
        weight,
        ..endpoint(last)
    }
}

/// The endpoint each of `keys` goes to, avoiding `tried`.
fn choices(
    state: &ClusterState,
    cluster: &Cluster,
    keys: &[String],
    tried: &[SocketAddr],
) -> Vec<SocketAddr> {
    keys.iter()
        .map(|key| {
            let mut headers = http::HeaderMap::new();
            headers.insert("x-user", key.parse().unwrap());
            let input = HashInput {
                session_endpoint: None,
                generated_cookie: None,
                headers: &headers,
                query: None,
                source_ip: std::net::IpAddr::from([10, 9, 0, 1]),
            };
            let tried = Tried {
                endpoints: tried,
                priorities: &[],
            };
            state
                .choose_and_track(cluster, &input, &tried)
                .unwrap()
                .0
                .address
        })
        .collect()
}

/// Each endpoint `10.0.0.<last>` took its `expected` share of the keys `chosen` went to,
/// within 0.05.
fn assert_shares(table: HashTable, chosen: &[SocketAddr], expected: &[(u8, f64)]) {
    for (last, expected) in expected {
        let share = chosen
            .iter()
            .filter(|a| **a == endpoint(*last).address)
            .count() as f64
            / chosen.len() as f64;
        assert!(
            (share - expected).abs() <= 0.05,
            "{table:?}: 10.0.0.{last} took {share} of the keys, not about {expected}"
        );
    }
}

fn keys(count: usize) -> Vec<String> {
    (0..count).map(|i| format!("user-{i}")).collect()
}

/// Envoy's ring hash gives a host points in proportion to its normalised weight
/// (`RingHashLoadBalancer::Ring::Ring`) and Maglev table entries likewise
/// (`MaglevTable::constructMaglevTableInternal`): with weights 1 and 3, the heavy endpoint
/// takes three keys in four. Ignoring weights would give it half.
#[test]
fn ring_hash_and_maglev_share_keys_by_endpoint_weight() {
    let keys = keys(10_000);
    for table in [RING, MAGLEV] {
        let cluster = hashed(vec![weighted(1, 1), weighted(2, 3)], table);
        let chosen = choices(&fresh_state(), &cluster, &keys, &[]);
        let heavy = chosen.iter().filter(|a| **a == endpoint(2).address).count();
        let share = heavy as f64 / keys.len() as f64;
        assert!(
            (0.70..=0.80).contains(&share),
            "{table:?}: the weight-3 endpoint took {share} of the keys"
        );
        // Three endpoints, weights 1:2:5: each within 5 points of its share.
        let cluster = hashed(vec![weighted(1, 1), weighted(2, 2), weighted(3, 5)], table);
        let chosen = choices(&fresh_state(), &cluster, &keys, &[]);
        assert_shares(table, &chosen, &[(1, 0.125), (2, 0.25), (3, 0.625)]);
    }
}

/// A configuration applied again with the same endpoints (in any order) builds the same
/// table: every key keeps its endpoint, whatever the state the balancer kept.
#[test]
fn a_key_keeps_its_endpoint_across_a_configuration_applied_again() {
    let keys = keys(2_000);
    for table in [RING, MAGLEV] {
        let endpoints = || {
            vec![
                weighted(1, 1),
                weighted(2, 3),
                weighted(3, 2),
                weighted(4, 1),
            ]
        };
        let state = fresh_state();
        let first = hashed(endpoints(), table);
        let before = choices(&state, &first, &keys, &[]);
        let mut reordered = endpoints();
        reordered.reverse();
        let again = hashed(reordered, table);
        assert_eq!(before, choices(&state, &again, &keys, &[]), "{table:?}");
        assert_eq!(
            before,
            choices(&fresh_state(), &again, &keys, &[]),
            "{table:?}"
        );
        let distinct: std::collections::HashSet<_> = before.iter().collect();
        assert_eq!(
            distinct.len(),
            4,
            "{table:?}: keys spread over every endpoint"
        );
    }
}

/// An endpoint a retry avoids is passed over as Envoy's retry predicate passes over it: its
/// keys go elsewhere, and every other key keeps its endpoint.
#[test]
fn an_avoided_endpoint_moves_only_its_own_keys() {
    let keys = keys(2_000);
    for table in [RING, MAGLEV] {
        let cluster = hashed((1..=5).map(endpoint).collect(), table);
        let state = fresh_state();
        let before = choices(&state, &cluster, &keys, &[]);
        let avoided = endpoint(3).address;
        let after = choices(&state, &cluster, &keys, &[avoided]);
        for ((key, was), now) in keys.iter().zip(&before).zip(&after) {
            assert_ne!(
                *now, avoided,
                "{table:?}: {key} went to the avoided endpoint"
            );
            if *was != avoided {
                assert_eq!(
                    now, was,
                    "{table:?}: {key} moved although its endpoint stayed"
                );
            }
        }
    }
}

/// With an endpoint removed from the configuration, the keys of the others mostly stay (all
/// of them stay with neither table in general: the remaining hosts' shares grow).
#[test]
fn removing_an_endpoint_keeps_most_other_keys_in_place() {
    let keys = keys(5_000);
    for table in [RING, MAGLEV] {
        let before = choices(
            &fresh_state(),
            &hashed((1..=5).map(endpoint).collect(), table),
            &keys,
            &[],
        );
        let after = choices(
            &fresh_state(),
            &hashed([1, 2, 4, 5].map(endpoint).to_vec(), table),
            &keys,
            &[],
        );
        let removed = endpoint(3).address;
        let others: Vec<_> = before
            .iter()
            .zip(&after)
            .filter(|(was, _)| **was != removed)
            .collect();
        let stayed = others.iter().filter(|(was, now)| was == now).count();
        let share = stayed as f64 / others.len() as f64;
        assert!(
            share >= 0.8,
            "{table:?}: only {share} of the other keys stayed"
        );
    }
}

/// The plan's weighted draw is the walk over the weights it replaces: the endpoint whose
/// range of the running total holds the point.
#[test]
fn the_weighted_draw_follows_the_running_weights() {
    let endpoints = vec![
        weighted(1, 1),
        Endpoint {
            healthy: false,
            ..weighted(2, 7)
        },
        weighted(3, 3),
    ];
    let plan = super::BalancingPlan::new(&endpoints, &LoadBalancer::RoundRobin, &[]);
    assert_eq!(plan.healthy(), &[0, 2]);
    assert!(!plan.equal_weights());
    // Total 4: [0, 1) is the first, [1, 4) the third.
    let cases = [(0.0, 0), (0.2, 0), (0.25, 2), (0.5, 2), (0.99, 2), (1.0, 2)];
    for (roll, expected) in cases {
        assert_eq!(plan.weighted(roll), Some(expected), "roll {roll}");
    }
    // Unequal weights only among the unhealthy: the pool's weights are equal.
    let plan = super::BalancingPlan::new(
        &[
            weighted(1, 2),
            Endpoint {
                healthy: false,
                ..weighted(2, 5)
            },
            weighted(3, 2),
        ],
        &LoadBalancer::RoundRobin,
        &[],
    );
    assert!(plan.equal_weights());
}

/// The hash is Envoy's, `HashUtil::xxHash64` (xxHash64, seed 0): pinned values of the
/// reference implementation (libxxhash 0.8).
#[test]
fn the_hash_is_xxhash64_as_envoys() {
    use super::hash64;
    assert_eq!(hash64(0, b""), 0xef46_db37_51d8_e999);
    assert_eq!(hash64(0, b"abc"), 0x44bc_2cf5_ad77_0999);
    assert_eq!(hash64(0, b"alice"), 0x73a3_ea48_5f2e_6049);
}

/// A key goes to the endpoint Envoy's table of the same endpoints gives it. The expected
/// endpoints come from Envoy's ring (`"<address>_<n>"` points, ring_hash_lb.cc) and Maglev
/// table (offset and skip from the address under seeds 0 and 1, maglev_lb.cc) built outside
/// this code, with libxxhash, for `10.0.0.1:8080` (weight 1), `10.0.0.2:8080` (3) and
/// `10.0.0.3:8080` (2): a ring of 1,026 points over a minimum of 1,024, a table of 65,537.
#[test]
fn a_key_goes_to_the_endpoint_envoys_table_gives_it() {
    let endpoints = || vec![weighted(1, 1), weighted(2, 3), weighted(3, 2)];
    let keys: Vec<String> = ["alice", "bob", "carol", "dave", "user-1", "user-2"]
        .map(str::to_owned)
        .to_vec();
    let expected = |lasts: [u8; 6]| -> Vec<SocketAddr> {
        lasts.iter().map(|last| endpoint(*last).address).collect()
    };
    let ring = hashed(endpoints(), RING);
    assert_eq!(
        ring.plan().built_tables().collect::<Vec<_>>(),
        [Some(super::BuiltTable::Ring { points: 1026 })]
    );
    assert_eq!(
        choices(&fresh_state(), &ring, &keys, &[]),
        expected([3, 3, 2, 2, 2, 3]),
        "ring hash"
    );
    let maglev = hashed(endpoints(), MAGLEV);
    assert_eq!(
        choices(&fresh_state(), &maglev, &keys, &[]),
        expected([2, 3, 1, 2, 2, 1]),
        "maglev"
    );
}

/// Envoy builds a hash table per locality priority (`ThreadAwareLoadBalancerBase::refresh`),
/// over that priority's hosts alone, and draws the priority with the key's hash: the keys
/// of a priority go where a cluster of its endpoints alone sends them, and with no healthy
/// endpoint in the closest priority, where one of the next priority's endpoints alone does.
/// One table over the whole cluster, passing over the other priorities' entries, sends many
/// keys elsewhere (the ring gives each endpoint fewer points, Maglev other slots).
#[test]
fn each_locality_priority_has_its_own_table() {
    let keys = keys(2_000);
    let ranked = |healthy_closest: bool| -> Vec<Endpoint> {
        let closest = (1..=3).map(|last| Endpoint {
            healthy: healthy_closest,
            ..weighted(last, u32::from(last))
        });
        let next = (4..=5).map(|last| Endpoint {
            priority: 1,
            ..endpoint(last)
        });
        closest.chain(next).collect()
    };
    let alone = |endpoints: Vec<Endpoint>| -> Vec<Endpoint> {
        endpoints
            .into_iter()
            .filter(|e| e.healthy)
            .map(|e| Endpoint { priority: 0, ..e })
            .collect()
    };
    for table in [RING, MAGLEV] {
        let cluster = Cluster {
            priorities: 2,
            ..hashed(ranked(true), table)
        };
        let tables: Vec<_> = cluster.plan().built_tables().collect();
        let expected = match table {
            // Weights 1:2:3 over a minimum of 1,024: 171 points for the lightest, 1,026 in
            // all; weights 1:1, 512 each.
            HashTable::Ring { .. } => [
                super::BuiltTable::Ring { points: 1026 },
                super::BuiltTable::Ring { points: 1024 },
            ],
            HashTable::Maglev { table_size } => [
                super::BuiltTable::Maglev {
                    entries: table_size as usize,
                },
                super::BuiltTable::Maglev {
                    entries: table_size as usize,
                },
            ],
        };
        assert_eq!(tables, expected.map(Some), "{table:?}");
        // Every priority healthy: the closest takes every key (its health is 100%).
        let closest_alone = hashed(alone(ranked(true)[..3].to_vec()), table);
        assert_eq!(
            choices(&fresh_state(), &cluster, &keys, &[]),
            choices(&fresh_state(), &closest_alone, &keys, &[]),
            "{table:?}: the closest priority's keys"
        );
        // The closest priority without a healthy endpoint: the next takes every key.
        let failed_over = Cluster {
            priorities: 2,
            ..hashed(ranked(false), table)
        };
        let next_alone = hashed(alone(ranked(false)), table);
        assert_eq!(
            choices(&fresh_state(), &failed_over, &keys, &[]),
            choices(&fresh_state(), &next_alone, &keys, &[]),
            "{table:?}: the next priority's keys"
        );
        assert_eq!(
            failed_over.plan().built_tables().next(),
            Some(None),
            "{table:?}: no table for a priority without a healthy endpoint"
        );
    }
}

/// With a consistent hash, the key's hash draws the locality priority (Envoy's
/// `choosePriority(hash)` in `ThreadAwareLoadBalancerBase`), not a random roll: a key keeps
/// its endpoint when the load is split between priorities, and the keys split as the load.
#[test]
fn the_key_draws_the_locality_priority() {
    let keys = keys(2_000);
    // The closest priority has 1 of 3 endpoints healthy: health 140% x 1/3 = 46%, the
    // next takes the other 54%.
    let endpoints = vec![
        endpoint(1),
        Endpoint {
            healthy: false,
            ..endpoint(2)
        },
        Endpoint {
            healthy: false,
            ..endpoint(3)
        },
        Endpoint {
            priority: 1,
            ..endpoint(4)
        },
        Endpoint {
            priority: 1,
            ..endpoint(5)
        },
    ];
    for table in [RING, MAGLEV] {
        let cluster = Cluster {
            priorities: 2,
            ..hashed(endpoints.clone(), table)
        };
        let first = choices(&fresh_state(), &cluster, &keys, &[]);
        for _ in 0..3 {
            assert_eq!(
                first,
                choices(&fresh_state(), &cluster, &keys, &[]),
                "{table:?}"
            );
        }
        let closest = first.iter().filter(|a| **a == endpoint(1).address).count();
        let share = closest as f64 / keys.len() as f64;
        assert!(
            (0.40..=0.52).contains(&share),
            "{table:?}: the closest priority took {share} of the keys, not about 0.46"
        );
    }
}

/// A cluster hashed by `x-user` over endpoints `10.0.0.1` to `10.0.0.4`, ejecting on one 5xx,
/// with outlier detection's `minHealthPercent` (Envoy's `healthy_panic_threshold`).
fn ejecting(table: HashTable, min_health_percent: u32) -> Cluster {
    Cluster {
        outlier: Some(crate::model::OutlierPolicy {
            consecutive_gateway_errors: None,
            consecutive_5xx: Some(1),
            interval: std::time::Duration::from_secs(1),
            base_ejection_time: std::time::Duration::from_secs(30),
            max_ejection_percent: 100,
            min_health_percent,
            local_origin_failures: None,
            http_error_codes: Vec::new(),
        }),
        ..hashed((1..=4).map(endpoint).collect(), table)
    }
}

/// In panic (two of four endpoints ejected: 50% healthy, under a `minHealthPercent` of 60)
/// Envoy builds the priority's table over all its hosts, ejected ones included
/// (`ThreadAwareLoadBalancerBase::refresh`: `global_panic_` chooses `hostsPerLocality()` over
/// `healthyHostsPerLocality()`), so every key goes where it went before the ejections, to an
/// ejected endpoint too. Out of panic (`minHealthPercent` 0) every key goes where the table
/// over the two endpoints left sends it.
#[test]
fn in_panic_a_key_goes_to_its_endpoint_in_the_table_of_all_hosts() {
    let keys = keys(1_000);
    let ejected = [endpoint(1).address, endpoint(2).address];
    for table in [RING, MAGLEV] {
        for (min_health_percent, panic) in [(60, true), (0, false)] {
            let cluster = ejecting(table, min_health_percent);
            let state = fresh_state();
            let before = choices(&state, &cluster, &keys, &[]);
            assert!(
                ejected.iter().all(|e| before.contains(e)),
                "{table:?}: the ejected endpoints had keys"
            );
            for address in ejected {
                state.record_outcome(&cluster, address, Outcome::Response(503));
            }
            let after = choices(&state, &cluster, &keys, &[]);
            if panic {
                assert_eq!(after, before, "{table:?}: keys moved in panic");
            } else {
                let left = hashed(vec![endpoint(3), endpoint(4)], table);
                assert_eq!(
                    after,
                    choices(&fresh_state(), &left, &keys, &[]),
                    "{table:?}: out of panic, not the table over the endpoints left"
                );
            }
        }
    }
}

/// With weighed localities (`distribute`, for which Istio sets `locality_weighted_lb_config`)
/// Envoy weighs them inside the hash table (`normalizeLocalityWeights`): a locality's weight
/// over the sum, shared among its endpoints by their weights, and draws no locality first.
/// Localities 80 (`10.0.0.1`, `10.0.0.2`) and 20 (`10.0.0.3`): 0.4, 0.4 and 0.2 of the keys
/// within 0.05, as the other shares here (a third each with the localities ignored), and a key goes to the same endpoint every time
/// (a locality drawn per request would move it).
#[test]
fn a_consistent_hash_weighs_localities_inside_its_table() {
    let keys = keys(10_000);
    for table in [RING, MAGLEV] {
        let mut cluster = hashed((1..=3).map(endpoint).collect(), table);
        cluster.endpoints[2].locality = 1;
        cluster.locality_weights = vec![80, 20];
        let state = fresh_state();
        let first = choices(&state, &cluster, &keys, &[]);
        assert_eq!(
            first,
            choices(&state, &cluster, &keys, &[]),
            "{table:?}: keys moved between two rounds"
        );
        assert_shares(table, &first, &[(1, 0.4), (2, 0.4), (3, 0.2)]);
    }
    // Envoy's normalised weights make the ring: the lightest host (0.2) gets a whole number of
    // points, at least the minimum in all.
    let mut cluster = hashed((1..=3).map(endpoint).collect(), RING);
    cluster.endpoints[2].locality = 1;
    cluster.locality_weights = vec![80, 20];
    let built: Vec<_> = cluster.plan().built_tables().collect();
    assert_eq!(
        built,
        [Some(super::BuiltTable::Ring { points: 1025 })],
        "ceil(0.2 x 1024) / 0.2 = 1025 points"
    );
}

/// Out of panic, Envoy rebuilds a priority's table over its healthy hosts whenever their
/// health changes (`ThreadAwareLoadBalancerBase::refresh`, called back on every host set
/// update; outlier detection marks an ejected host unhealthy). With one of three endpoints
/// ejected, every key goes where a table configured over the other two sends it (with Maglev
/// and a ring alike, some keys of the endpoints left move too: passing over the ejected one in
/// the table of three would keep them). When it returns, every key goes back. The table over
/// the two is built once for the ejection, not per request, and not again for the return.
#[test]
fn an_ejection_rebuilds_the_table_over_the_endpoints_left_and_a_return_restores_it() {
    let keys = keys(2_000);
    for table in [RING, MAGLEV] {
        let cluster = Cluster {
            endpoints: (1..=3).map(endpoint).collect(),
            ..ejecting(table, 0)
        };
        let state = fresh_state();
        let before = choices(&state, &cluster, &keys, &[]);
        let ejected = endpoint(2).address;
        state.record_outcome(&cluster, ejected, Outcome::Response(503));
        let after = choices(&state, &cluster, &keys, &[]);
        let left = hashed(vec![endpoint(1), endpoint(3)], table);
        let expected = choices(&fresh_state(), &left, &keys, &[]);
        assert_eq!(
            after, expected,
            "{table:?}: not the table over the two left"
        );
        let stayed_put = before
            .iter()
            .zip(&after)
            .filter(|(was, _)| **was != ejected)
            .all(|(was, now)| was == now);
        assert!(
            !stayed_put,
            "{table:?}: no key of the endpoints left moved, as passing over would have it"
        );
        assert_eq!(
            cluster.plan().available_builds(),
            1,
            "{table:?}: built once for the ejection, over {} choices",
            keys.len()
        );
        // The return: the ejected set read again once its first ejection has ended, as a
        // choice made then reads it (nothing ejected), under the same last ejection.
        let (stamp, until) = {
            let states = state.0.endpoints.lock().unwrap();
            (
                states.ejection_stamp,
                states[&ejected].ejected_until.unwrap(),
            )
        };
        let not_ejected = |_: usize| None;
        let returned = super::Ejections {
            stamp,
            now: until,
            ejected_until: &not_ejected,
        };
        let plan = cluster.plan();
        let restored: Vec<SocketAddr> = keys
            .iter()
            .map(|key| {
                let i = plan
                    .hashed_available(
                        &cluster.endpoints,
                        &returned,
                        super::key_hash(key),
                        0,
                        |_| true,
                    )
                    .unwrap();
                cluster.endpoints[i].address
            })
            .collect();
        assert_eq!(
            restored, before,
            "{table:?}: the return did not restore the keys"
        );
        assert_eq!(
            plan.available_builds(),
            1,
            "{table:?}: a return builds nothing"
        );
        // Ejected again: one more build.
        let ejected_again =
            |i: usize| (i == 1).then_some(until + std::time::Duration::from_secs(60));
        let again = super::Ejections {
            stamp: super::next_ejection_stamp(),
            now: until,
            ejected_until: &ejected_again,
        };
        for key in &keys {
            plan.hashed_available(&cluster.endpoints, &again, super::key_hash(key), 0, |_| {
                true
            });
        }
        assert_eq!(
            plan.available_builds(),
            2,
            "{table:?}: one build per ejection"
        );
    }
}
