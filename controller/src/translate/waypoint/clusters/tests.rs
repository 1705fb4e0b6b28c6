//! Slow start as Istio translates it (`cluster_traffic_policy.go`): `setWarmup` with its
//! defaults, the deprecated `setSlowStartConfig`, only for round robin and least request.

use super::*;
use wp::load_balancer_settings::{LbPolicy, SimpleLb, SlowStart};

/// The waypoint's load balancer for `yaml` (a trafficPolicy), and the paths of the notes.
fn compile(yaml: &str) -> (Option<wp::LoadBalancerSettings>, Vec<String>) {
    let policy: TrafficPolicy = serde_yaml::from_str(yaml).unwrap();
    let ((lb, _, _), notes) = EffectivePolicy::of(&policy).compile();
    let notes = notes
        .into_iter()
        .map(|n| match n {
            TranslateProblem::Unsupported { path, .. } => path,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    (lb, notes)
}

fn slow_start(seconds: i64, min_weight_percent: f64, aggression: f64) -> Option<SlowStart> {
    Some(SlowStart {
        window: Some(prost_types::Duration { seconds, nanos: 0 }),
        min_weight_percent,
        aggression,
    })
}

fn simple(lb: &Option<wp::LoadBalancerSettings>) -> Option<SimpleLb> {
    match lb.as_ref()?.lb_policy.as_ref()? {
        LbPolicy::Simple(s) => SimpleLb::try_from(*s).ok(),
        LbPolicy::ConsistentHash(_) => None,
    }
}

#[test]
fn warmup_becomes_slow_start_as_istio_sets_it() {
    // (trafficPolicy, balancer, slow start): Istio's `applyRoundRobinLoadBalancer`,
    // `applyLeastRequestLoadBalancer` and `applySimpleDefaultLoadBalancer`.
    let cases = [
        (
            "{loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 60s, minimumPercent: 20, aggression: 1.5}}}",
            SimpleLb::RoundRobin,
            slow_start(60, 20.0, 1.5),
        ),
        // `setWarmup`'s defaults: a 10% minimum, aggression 1.
        (
            "{loadBalancer: {simple: LEAST_REQUEST, warmup: {duration: 30s}}}",
            SimpleLb::LeastRequest,
            slow_start(30, 10.0, 1.0),
        ),
        (
            "{loadBalancer: {simple: LEAST_CONN, warmup: {duration: 30s}}}",
            SimpleLb::LeastConn,
            slow_start(30, 10.0, 1.0),
        ),
        // No `simple`: Istio's default, least request, with slow start.
        (
            "{loadBalancer: {warmup: {duration: 45s, aggression: 2}}}",
            SimpleLb::Unspecified,
            slow_start(45, 10.0, 2.0),
        ),
        // The deprecated `warmupDurationSecs` (`setSlowStartConfig`): a window, Envoy's defaults.
        (
            "{loadBalancer: {warmupDurationSecs: 90s}}",
            SimpleLb::Unspecified,
            slow_start(90, 10.0, 1.0),
        ),
        // `warmup` takes precedence over it.
        (
            "{loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 90s, warmup: {duration: 15s, minimumPercent: 0}}}",
            SimpleLb::RoundRobin,
            slow_start(15, 0.0, 1.0),
        ),
        (
            "{loadBalancer: {simple: ROUND_ROBIN}}",
            SimpleLb::RoundRobin,
            None,
        ),
    ];
    for (yaml, balancer, expected) in cases {
        let (lb, notes) = compile(yaml);
        assert_eq!(simple(&lb), Some(balancer), "{yaml}");
        assert_eq!(lb.unwrap().slow_start, expected, "{yaml}");
        assert_eq!(notes, Vec::<String>::new(), "{yaml}");
    }
}

#[test]
fn warmup_with_other_balancers_is_reported_ignored() {
    // Istio gives Envoy no slow start with RANDOM, PASSTHROUGH or a consistent hash.
    for (yaml, note) in [
        (
            "{loadBalancer: {simple: RANDOM, warmup: {duration: 60s}}}",
            "spec.trafficPolicy.loadBalancer.warmup",
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true}, warmupDurationSecs: 60s}}",
            "spec.trafficPolicy.loadBalancer.warmupDurationSecs",
        ),
    ] {
        let (lb, notes) = compile(yaml);
        assert_eq!(lb.unwrap().slow_start, None, "{yaml}");
        assert_eq!(notes, [note], "{yaml}");
    }
    let (lb, notes) = compile("{loadBalancer: {simple: PASSTHROUGH, warmup: {duration: 60s}}}");
    assert!(lb.is_none());
    assert_eq!(
        notes,
        [
            "spec.trafficPolicy.loadBalancer.warmup",
            "spec.trafficPolicy.loadBalancer.simple"
        ]
    );
}

#[test]
fn port_level_and_subset_warmup_reach_their_clusters() {
    let top: TrafficPolicy = serde_yaml::from_str(
        "{loadBalancer: {simple: ROUND_ROBIN}, portLevelSettings: [{port: {number: 8080}, loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 20s}}}]}",
    )
    .unwrap();
    let subset: TrafficPolicy =
        serde_yaml::from_str("{loadBalancer: {warmup: {duration: 40s}}}").unwrap();
    let slow = |p: EffectivePolicy| p.compile().0.0.and_then(|lb| lb.slow_start);
    assert_eq!(slow(effective_policy(Some(&top), None, 80)), None);
    assert_eq!(
        slow(effective_policy(Some(&top), None, 8080)),
        slow_start(20, 10.0, 1.0)
    );
    assert_eq!(
        slow(effective_policy(Some(&top), Some(&subset), 80)),
        slow_start(40, 10.0, 1.0)
    );
}

#[test]
fn consistent_hash_tables_are_chosen_as_istio_chooses_them() {
    use wp::load_balancer_settings::consistent_hash_lb::{Maglev, RingHash, Table};
    // Istio's `ApplyRingHashLoadBalancer`: maglev first, then ringHash, then the deprecated
    // minimumRingSize; 0 stands for the waypoint's defaults (1024 points, 65537 entries).
    let cases = [
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true}}}",
            Table::RingHash(RingHash {
                minimum_ring_size: 0,
            }),
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true, minimumRingSize: 64}}}",
            Table::RingHash(RingHash {
                minimum_ring_size: 64,
            }),
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true, ringHash: {minimumRingSize: 2048}}}}",
            Table::RingHash(RingHash {
                minimum_ring_size: 2048,
            }),
        ),
        (
            "{loadBalancer: {consistentHash: {useSourceIp: true, maglev: {tableSize: 251}}}}",
            Table::Maglev(Maglev { table_size: 251 }),
        ),
    ];
    for (yaml, expected) in cases {
        let (lb, notes) = compile(yaml);
        let Some(LbPolicy::ConsistentHash(hash)) = lb.and_then(|lb| lb.lb_policy) else {
            panic!("no consistent hash for {yaml}");
        };
        assert_eq!(hash.table, Some(expected), "{yaml}");
        assert_eq!(notes, Vec::<String>::new(), "{yaml}");
    }
}

#[test]
fn retry_budget_takes_istios_defaults_and_survives_port_level_settings() {
    let parse = |yaml: &str| -> TrafficPolicy { serde_yaml::from_str(yaml).unwrap() };
    let budget = |p: EffectivePolicy| p.retry_budget.as_ref().map(retry_budget);
    let expected = |percent, min_retry_concurrency| {
        Some(wp::RetryBudget {
            percent,
            min_retry_concurrency,
        })
    };
    // Istio's `applyRetryBudget`: percent 20 and minRetryConcurrency 3 when unset (or 0).
    let top = parse(
        "{retryBudget: {}, portLevelSettings: [{port: {number: 8080}, loadBalancer: {simple: RANDOM}}]}",
    );
    assert_eq!(
        budget(effective_policy(Some(&top), None, 80)),
        expected(20.0, 3)
    );
    // Port-level settings have no retryBudget: the rule's stays (`MergeTrafficPolicy`).
    assert_eq!(
        budget(effective_policy(Some(&top), None, 8080)),
        expected(20.0, 3)
    );
    let zero = parse("{retryBudget: {percent: 50, minRetryConcurrency: 0}}");
    assert_eq!(
        budget(effective_policy(Some(&zero), None, 80)),
        expected(50.0, 3)
    );
    // A subset's replaces the rule's; none, none.
    let subset = parse("{retryBudget: {percent: 5, minRetryConcurrency: 1}}");
    assert_eq!(
        budget(effective_policy(Some(&top), Some(&subset), 80)),
        expected(5.0, 1)
    );
    assert_eq!(budget(effective_policy(None, None, 80)), None);
}

#[test]
fn proxy_protocol_merges_as_istio_merges_it() {
    use wp::upstream_proxy_protocol::Version;
    let parse = |yaml: &str| -> TrafficPolicy { serde_yaml::from_str(yaml).unwrap() };
    let version = |p: EffectivePolicy| {
        p.proxy_protocol
            .as_ref()
            .map(|s| proxy_protocol(s).version())
    };
    let top = parse(
        "{proxyProtocol: {version: V2}, portLevelSettings: [{port: {number: 8080}, loadBalancer: {simple: RANDOM}}]}",
    );
    assert_eq!(
        version(effective_policy(Some(&top), None, 80)),
        Some(Version::V2)
    );
    // Port-level settings have no proxyProtocol: the rule's stays (`MergeTrafficPolicy`).
    assert_eq!(
        version(effective_policy(Some(&top), None, 8080)),
        Some(Version::V2)
    );
    // A subset's replaces the rule's; unset, the version is V1 (Envoy's default).
    let subset = parse("{proxyProtocol: {}}");
    assert_eq!(
        version(effective_policy(Some(&top), Some(&subset), 80)),
        Some(Version::V1)
    );
    let other = parse("{loadBalancer: {simple: RANDOM}}");
    assert_eq!(
        version(effective_policy(Some(&top), Some(&other), 8080)),
        Some(Version::V2)
    );
    assert_eq!(version(effective_policy(None, Some(&other), 80)), None);
}

/// Istio's `tunnelingconfig.Apply`: the whole service's cluster takes the rule's tunnel, a
/// subset's cluster its subset's own only (not the rule's), port-level settings have none.
#[test]
fn a_subset_cluster_tunnels_by_its_own_settings_only() {
    use wp::tcp_tunneling::Method;
    let rule: DestinationRule = serde_yaml::from_str(
        "{apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: db, namespace: shop}, spec: {host: db, trafficPolicy: {tunnel: {targetHost: db.example.com, targetPort: 5432}, portLevelSettings: [{port: {number: 80}, loadBalancer: {simple: RANDOM}}]}, subsets: [{name: post, trafficPolicy: {tunnel: {protocol: POST, targetHost: 10.0.0.9, targetPort: 8443}}}, {name: plain, labels: {version: v1}}]}}",
    )
    .unwrap();
    let merged = MergedRule {
        first: &rule,
        traffic_policy: rule.spec.traffic_policy.as_ref(),
        subsets: rule.spec.subsets.iter().collect(),
    };
    let tunnel = |method: Method, host: &str, port| wp::TcpTunneling {
        method: method as i32,
        target_host: host.to_owned(),
        target_port: port,
    };
    assert_eq!(
        tunnel::tcp_tunneling(&merged, ""),
        Some(tunnel(Method::Connect, "db.example.com", 5432))
    );
    assert_eq!(
        tunnel::tcp_tunneling(&merged, "post"),
        Some(tunnel(Method::Post, "10.0.0.9", 8443))
    );
    assert_eq!(tunnel::tcp_tunneling(&merged, "plain"), None);
    assert_eq!(tunnel::tcp_tunneling(&merged, "undefined"), None);
}
