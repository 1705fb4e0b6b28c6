use std::time::Duration;

use super::*;
use crate::model::Tunnel;

fn endpoint(last: u8) -> Endpoint {
    Endpoint {
        address: SocketAddr::from(([10, 0, 0, last], 8080)),
        identity: None,
        principal: None,
        workload: Arc::default(),
        tunnel: Tunnel::Plain,
        tunnel_via: None,
        healthy: true,
        weight: 1,
    }
}

fn policy(max_ejection_percent: u32) -> OutlierPolicy {
    OutlierPolicy {
        consecutive_gateway_errors: None,
        consecutive_5xx: Some(1),
        interval: Duration::from_secs(1),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_percent,
        min_health_percent: 0,
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
fn consistent_hash_is_stable_and_moves_only_the_removed_endpoints_keys() {
    let all: Vec<Endpoint> = (1..=5).map(endpoint).collect();
    let refs: Vec<&Endpoint> = all.iter().collect();
    let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
    let before: Vec<SocketAddr> = keys.iter().map(|k| rendezvous(&refs, k).address).collect();
    let again: Vec<SocketAddr> = keys.iter().map(|k| rendezvous(&refs, k).address).collect();
    assert_eq!(before, again);
    let removed = all[2].address;
    let fewer: Vec<&Endpoint> = refs
        .iter()
        .copied()
        .filter(|e| e.address != removed)
        .collect();
    for (key, previous) in keys.iter().zip(&before) {
        let now = rendezvous(&fewer, key).address;
        if *previous != removed {
            assert_eq!(now, *previous, "{key} moved although its endpoint stayed");
        }
    }
    let distinct: std::collections::HashSet<_> = before.iter().collect();
    assert_eq!(distinct.len(), 5, "keys spread over every endpoint");
}

#[test]
fn hash_keys_come_from_headers_cookies_query_and_source() {
    let mut headers = http::HeaderMap::new();
    headers.insert("x-user", "alice".parse().unwrap());
    headers.insert(http::header::COOKIE, "a=1; session=xyz".parse().unwrap());
    let input = HashInput {
        headers: &headers,
        query: Some("shard=7&x=1"),
        source_ip: "10.1.2.3".parse().unwrap(),
    };
    let cases = [
        (
            HashKey::Header(http::HeaderName::from_static("x-user")),
            Some("alice"),
        ),
        (HashKey::Cookie("session".to_owned()), Some("xyz")),
        (HashKey::Cookie("missing".to_owned()), None),
        (HashKey::QueryParameter("shard".to_owned()), Some("7")),
        (HashKey::SourceIp, Some("10.1.2.3")),
    ];
    for (key, expected) in cases {
        assert_eq!(hash_key(&key, &input).as_deref(), expected, "{key:?}");
    }
}

fn least_request(endpoints: Vec<Endpoint>) -> Cluster {
    Cluster {
        name: "outbound|80||web.shop.svc.cluster.local".to_owned(),
        host: "web.shop.svc.cluster.local".to_owned(),
        service: Arc::new(crate::model::service_of_host("web.shop.svc.cluster.local")),
        subset: String::new(),
        port: 80,
        endpoints,
        load_balancer: LoadBalancer::LeastRequest,
        limits: crate::model::ConnectionLimits::default(),
        outlier: None,
        destination_rule: String::new(),
        hostnames: Vec::new(),
        tls: None,
        dynamic_dns: false,
    }
}

fn fresh_state() -> ClusterState {
    ClusterState(Arc::new(ClusterRuntime {
        active_requests: AtomicUsize::new(0),
        pending: AtomicUsize::new(0),
        active_retries: AtomicUsize::new(0),
        connection_slots: None,
        slot_count: None,
        next: AtomicUsize::new(0),
        endpoints: Mutex::new(HashMap::new()),
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
        headers: &headers,
        query: None,
        source_ip: IpAddr::from([10, 0, 0, 9]),
    };
    let address = endpoint(1).address;
    let (chosen, first) = state.choose_and_track(&cluster, &hash, &[]).unwrap();
    assert_eq!(chosen.address, address);
    let (_, second) = state.choose_and_track(&cluster, &hash, &[]).unwrap();
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
