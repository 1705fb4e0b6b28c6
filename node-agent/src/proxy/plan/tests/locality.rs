//! Locality-aware routing: ztunnel's ranking of endpoints by the client's locality, and the
//! `NODE` preference that keeps traffic on the client's node.

use super::*;

/// ztunnel's endpoint ranking with localities (`rank` in its `src/state.rs`): the leading
/// preferences an endpoint shares with the client, compared part by part (an unset part matches
/// only an unset one).
#[test]
fn routing_preferences_compare_localities() {
    use crate::state::Locality;
    let at = |region: &str, zone: &str| Locality {
        region: region.into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    let endpoints = [
        ("same-zone", 21, at("eu", "eu-1")),
        ("same-region", 22, at("eu", "eu-2")),
        ("far", 23, at("us", "eu-1")),
        ("unknown", 24, Locality::default()),
    ];
    use LoadBalancingMode::{Failover, Standard, Strict};
    use RoutingPreference::{Region, Subzone, Zone};
    // (rule, mode, preferences, endpoints left out, last octets of the endpoints picked)
    type Case = (
        &'static str,
        LoadBalancingMode,
        Vec<RoutingPreference>,
        &'static [&'static str],
        &'static [u8],
    );
    let cases: Vec<Case> = vec![
        (
            "Failover prefers the endpoints sharing region and zone",
            Failover,
            vec![Region, Zone],
            &[],
            &[21],
        ),
        (
            "without them, those sharing the region",
            Failover,
            vec![Region, Zone],
            &["same-zone"],
            &[22],
        ),
        (
            "without any in the region, every endpoint (rank 0 for all)",
            Failover,
            vec![Region, Zone],
            &["same-zone", "same-region"],
            &[23, 24],
        ),
        (
            "ranks stop at the first preference not shared: zone alone does not count",
            Failover,
            vec![Region, Zone],
            &["same-zone", "same-region", "unknown"],
            &[23],
        ),
        (
            "a region preference alone takes the whole region",
            Failover,
            vec![Region],
            &[],
            &[21, 22],
        ),
        (
            "an unset subzone matches an unset subzone",
            Strict,
            vec![Region, Zone, Subzone],
            &[],
            &[21],
        ),
        (
            "Strict never leaves the client's locality",
            Strict,
            vec![Region, Zone],
            &["same-zone"],
            &[],
        ),
        (
            "Standard ignores the preferences",
            Standard,
            vec![Region, Zone],
            &[],
            &[21, 22, 23, 24],
        ),
    ];
    for (rule, mode, preferences, absent, expected) in cases {
        let store = WorkloadStore::new();
        let mut client = workload("client", "client", NODE1, ip(1, 10));
        client.locality = Box::new(at("eu", "eu-1"));
        store.insert_workload(client);
        for (name, last, locality) in &endpoints {
            if absent.contains(name) {
                continue;
            }
            let mut endpoint = backing(workload(name, "near", NODE2, ip(2, *last)), "near", 80, 80);
            endpoint.locality = Box::new(locality.clone());
            store.insert_workload(endpoint);
        }
        let mut near = service("near", 9, 80, 80);
        near.load_balancing = mode;
        near.routing_preferences = preferences;
        store.insert_service(near);
        let picked: std::collections::BTreeSet<u8> = (0..16)
            .filter_map(
                |roll| match plan(&store, "client", SocketAddr::new(vip(9), 80), roll) {
                    Ok(OutboundPlan::Hbone { target, .. }) => match target.ip() {
                        IpAddr::V4(v4) => Some(v4.octets()[3]),
                        IpAddr::V6(_) => None,
                    },
                    Ok(other) => panic!("{rule}: {other:?}"),
                    Err(OutboundError::NoHealthyEndpoint { .. }) => None,
                    Err(other) => panic!("{rule}: {other:?}"),
                },
            )
            .collect();
        let expected: std::collections::BTreeSet<u8> = expected.iter().copied().collect();
        assert_eq!(picked, expected, "{rule}");
    }
}

/// `internalTrafficPolicy: Local` as istiod sends it (`[NODE]`, `STRICT`): only endpoints on
/// the client's node, and none there fails the connection, as ztunnel does, rather than
/// leaving the node.
#[test]
fn node_strict_keeps_traffic_on_the_clients_node_or_fails() {
    let store = WorkloadStore::new();
    store.insert_workload(workload("client", "client", NODE1, ip(1, 10)));
    store.insert_workload(backing(
        workload("remote", "near", NODE2, ip(2, 21)),
        "near",
        80,
        80,
    ));
    let mut near = service("near", 9, 80, 80);
    near.load_balancing = LoadBalancingMode::Strict;
    near.routing_preferences = vec![RoutingPreference::Node];
    store.insert_service(near);
    let near_vip = SocketAddr::new(vip(9), 80);
    assert!(
        matches!(
            plan(&store, "client", near_vip, 0),
            Err(OutboundError::NoHealthyEndpoint { .. })
        ),
        "no endpoint on the client's node: no connection"
    );
    store.insert_workload(backing(
        workload("neighbor", "near", NODE1, ip(1, 21)),
        "near",
        80,
        80,
    ));
    for roll in 0..4 {
        assert!(
            matches!(
                plan(&store, "client", near_vip, roll).unwrap(),
                OutboundPlan::Local { target, .. } if target == SocketAddr::new(ip(1, 21), 80)
            ),
            "only the endpoint on the client's node"
        );
    }
}

/// The waypoint is a service like any other (ztunnel's `load_balance` for a waypoint's
/// service): its routing preferences rank its replicas for the client, so a `PreferClose`
/// waypoint Service sends a client to the replica in its zone, and to another only when that
/// one is gone; without preferences, every replica takes its turn.
#[test]
fn a_waypoints_routing_preferences_pick_the_replica_close_to_the_client() {
    use crate::state::Locality;
    let at = |zone: &str| Locality {
        region: "eu".into(),
        zone: zone.into(),
        subzone: String::new(),
    };
    let mesh = |preferences: bool, close_replica: bool| {
        let store = WorkloadStore::new();
        let mut client = workload("client", "client", NODE1, ip(1, 10));
        client.locality = Box::new(at("eu-1"));
        store.insert_workload(client);
        for (name, last, zone) in [("waypoint-near", 40, "eu-1"), ("waypoint-far", 41, "eu-2")] {
            if name == "waypoint-near" && !close_replica {
                continue;
            }
            let mut replica = backing(
                workload(name, "waypoint", NODE2, ip(2, last)),
                "waypoint",
                15008,
                15008,
            );
            replica.locality = Box::new(at(zone));
            store.insert_workload(replica);
        }
        let mut waypoint = service("waypoint", 2, 15008, 15008);
        if preferences {
            waypoint.load_balancing = LoadBalancingMode::Failover;
            waypoint.routing_preferences = vec![RoutingPreference::Region, RoutingPreference::Zone];
        }
        store.insert_service(waypoint);
        let mut cart = service("cart", 9, 80, 80);
        cart.waypoint = Some(GatewayAddress {
            destination: GatewayDestination::Service(key("waypoint")),
            hbone_port: 15008,
        });
        store.insert_service(cart);
        let gateways: std::collections::BTreeSet<u8> = (0..8)
            .map(
                |roll| match plan(&store, "client", SocketAddr::new(vip(9), 80), roll) {
                    Ok(OutboundPlan::Hbone { gateway, .. }) => match gateway.ip() {
                        IpAddr::V4(v4) => v4.octets()[3],
                        IpAddr::V6(_) => panic!("{gateway}"),
                    },
                    other => panic!("{other:?}"),
                },
            )
            .collect();
        gateways
    };
    assert_eq!(
        mesh(true, true),
        [40].into(),
        "the replica in the client's zone"
    );
    assert_eq!(mesh(true, false), [41].into(), "failover to the other zone");
    assert_eq!(
        mesh(false, true),
        [40, 41].into(),
        "no preference: every replica"
    );
}
