//! Endpoint weights through the real proxy: a WorkloadEntry's or ServiceEntry endpoint's
//! `weight` reaches the waypoint as the endpoint's weight (Envoy's `load_balancing_weight` in
//! Istio), and round robin and least request split the requests by it.

use http::StatusCode;
use waypoint::testing::FakeEndpoint;
use weft_proto::waypoint as proto;

use crate::harness::*;

/// The whole service's cluster with `v1` weighted 1 and `v2` weighted 3, balanced by `lb`.
fn weighted(
    lb: proto::load_balancer_settings::SimpleLb,
    v1: &FakeEndpoint,
    v2: &FakeEndpoint,
) -> proto::Cluster {
    let mut cluster = cluster("", &[v1, v2]);
    cluster.endpoints[1].weight = 3;
    cluster.load_balancer = Some(proto::LoadBalancerSettings {
        lb_policy: Some(proto::load_balancer_settings::LbPolicy::Simple(lb as i32)),
        slow_start: None,
    });
    cluster
}

/// How many of `requests` sent one after another reach `v1` and `v2`.
async fn split(
    harness: &Harness,
    v1: &FakeEndpoint,
    v2: &FakeEndpoint,
    requests: usize,
) -> (usize, usize) {
    let before = (v1.request_count(), v2.request_count());
    for _ in 0..requests {
        let (status, _, _) = harness.get("/").await;
        assert_eq!(status, StatusCode::OK);
    }
    (v1.request_count() - before.0, v2.request_count() - before.1)
}

#[tokio::test]
async fn requests_split_one_to_three_by_endpoint_weight() {
    use proto::load_balancer_settings::SimpleLb;
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let requests = 400;

    // Round robin: Envoy's weighted round robin, exact within a few requests (equal weights
    // would give 200 each).
    harness
        .waypoint
        .apply_config(config(
            vec![route_to("")],
            vec![weighted(SimpleLb::RoundRobin, &v1, &v2)],
        ))
        .unwrap();
    let (to_v1, to_v2) = split(&harness, &v1, &v2, requests).await;
    assert_eq!(to_v1 + to_v2, requests);
    assert!(
        (295..=305).contains(&to_v2),
        "round robin: v1 {to_v1}, v2 {to_v2}"
    );

    // Least request (Istio's default), requests one at a time: each endpoint's weight over its
    // requests in flight plus one, so the weights' split; 300 of 400 with a standard deviation
    // of 8.7 (power of two choices, blind to weights, would give 200).
    harness
        .waypoint
        .apply_config(config(
            vec![route_to("")],
            vec![weighted(SimpleLb::LeastRequest, &v1, &v2)],
        ))
        .unwrap();
    let (to_v1, to_v2) = split(&harness, &v1, &v2, requests).await;
    assert_eq!(to_v1 + to_v2, requests);
    assert!(
        (260..=340).contains(&to_v2),
        "least request: v1 {to_v1}, v2 {to_v2}"
    );
}
