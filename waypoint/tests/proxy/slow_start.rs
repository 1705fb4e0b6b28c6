//! DestinationRule `warmup` (slow start) through the real proxy: an endpoint that joins a cluster
//! whose endpoints are warm takes a small share of the requests while it warms up, pushes that
//! keep it included; the admin page shows each endpoint's weight.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use http::StatusCode;
use waypoint::testing::{FakeEndpoint, LOCALHOST};
use weft_proto::waypoint as proto;

use crate::harness::*;

/// The whole service's cluster, round robin with slow start: a 6 s window and an aggression of
/// 0.02, so that a newcomer's weight, `(t / 6 s)^50`, stays at the 10% minimum for its first
/// 5.7 s (room for the 100 requests below on a loaded machine).
fn warming(endpoints: &[&FakeEndpoint]) -> proto::Cluster {
    use proto::load_balancer_settings::{LbPolicy, SimpleLb, SlowStart};
    proto::Cluster {
        load_balancer: Some(proto::LoadBalancerSettings {
            lb_policy: Some(LbPolicy::Simple(SimpleLb::RoundRobin as i32)),
            slow_start: Some(SlowStart {
                window: Some(duration(Duration::from_secs(6))),
                min_weight_percent: 10.0,
                aggression: 0.02,
            }),
        }),
        ..cluster("", endpoints)
    }
}

/// The slow-start weight (percent) the admin page shows for `endpoint`.
async fn weight(admin: SocketAddr, endpoint: &FakeEndpoint) -> f64 {
    let (status, text) = http_get(admin, "/config_dump").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();
    dump["clusters"][0]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == endpoint.app_address.to_string())
        .and_then(|e| e["slow_start_weight_percent"].as_f64())
        .unwrap_or_else(|| panic!("no slow start weight for {}: {dump}", endpoint.name))
}

#[tokio::test]
async fn a_new_endpoint_takes_a_small_share_while_it_warms_up() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let admin = harness
        .waypoint
        .bind_admin(SocketAddr::new(LOCALHOST, 0), None, serde_json::json!({}))
        .await
        .unwrap();
    let admin_address = admin.address().unwrap();
    tokio::spawn(admin.run());
    let apply = |endpoints: &[&FakeEndpoint]| {
        harness
            .waypoint
            .apply_config(config(vec![route_to("")], vec![warming(endpoints)]))
            .unwrap();
    };

    // v1 alone, until its window is over (the admin page says so), bounded.
    apply(&[&v1]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while weight(admin_address, &v1).await < 100.0 {
        assert!(Instant::now() < deadline, "v1 never warmed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // v2 joins: it starts at the minimum weight.
    apply(&[&v1, &v2]);
    assert_eq!(weight(admin_address, &v2).await, 10.0);
    let before = (v1.request_count(), v2.request_count());
    let requests = 100;
    for i in 0..requests {
        if i == requests / 2 {
            // A push that keeps both endpoints (what another resource's change brings) keeps
            // v2 warming from when it joined.
            apply(&[&v2, &v1]);
        }
        let (status, _, _) = harness.get("/").await;
        assert_eq!(status, StatusCode::OK);
    }
    // Still at its minimum, or the share below would not be the expected one.
    assert_eq!(
        weight(admin_address, &v2).await,
        10.0,
        "the requests took longer than v2's time at its minimum weight"
    );
    let to_v1 = v1.request_count() - before.0;
    let to_v2 = v2.request_count() - before.1;
    assert_eq!(to_v1 + to_v2, requests);
    // Weights 1 and 0.1: v2's expected share is 1/11, 9 of 100 (a standard deviation of 2.9);
    // round robin without slow start gives it 50.
    assert!(
        (1..=22).contains(&to_v2),
        "v2 took {to_v2} of {requests} requests"
    );
}
