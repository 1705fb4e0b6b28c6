use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use weft_policy::{
    PolicyAction, WildcardMatch,
    l4::{Authorization, Clause, ConnectionMatch, PolicyScope, Rule},
};

use super::*;
use crate::state::{NamespacedHostname, OutboundTrafficPolicy, Service};

const NODE1: &str = "node1";
const NODE2: &str = "node2";

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 251, a, b))
}

fn addr(a: u8, b: u8, port: u16) -> SocketAddr {
    SocketAddr::new(ip(a, b), port)
}

fn vip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 96, 0, last))
}

fn key(name: &str) -> NamespacedHostname {
    NamespacedHostname {
        namespace: "shop".into(),
        hostname: format!("{name}.shop.svc.cluster.local"),
    }
}

fn workload(uid: &str, sa: &str, node: &str, address: IpAddr) -> Workload {
    Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "shop".into(),
        addresses: vec![address],
        trust_domain: "cluster.local".into(),
        service_account: sa.into(),
        node: node.into(),
        tunnel: TunnelProtocol::Hbone,
        waypoint: None,
        canonical_name: uid.into(),
        canonical_revision: "v1".into(),
        workload_name: uid.into(),
        cluster_id: "c1".into(),
        healthy: true,
        services: BTreeMap::new(),
        authorization_policies: vec![],
        capacity: 1,
        hostname: String::new(),
        locality: Default::default(),
    }
}

fn backing(mut w: Workload, service: &str, port: u16, target: u16) -> Workload {
    w.services.insert(key(service), [(port, target)].into());
    w
}

fn service(name: &str, vip_last: u8, port: u16, target: u16) -> Service {
    Service {
        name: name.into(),
        namespace: "shop".into(),
        hostname: format!("{name}.shop.svc.cluster.local"),
        vips: vec![vip(vip_last)],
        ports: [(port, target)].into(),
        subject_alt_names: vec![],
        waypoint: None,
        load_balancing: LoadBalancingMode::Standard,
        routing_preferences: vec![],
        allow_unhealthy: false,
    }
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", sa).unwrap()
}

/// client (node1) -> cart (2 endpoints: node1, node2) and a plaintext legacy pod; pay behind a
/// waypoint; local pod `neighbor` on node1.
fn mesh() -> WorkloadStore {
    let store = WorkloadStore::new();
    store.insert_workload(workload("client", "client", NODE1, ip(1, 10)));
    store.insert_workload(backing(
        workload("cart-1", "cart", NODE1, ip(1, 11)),
        "cart",
        80,
        8080,
    ));
    store.insert_workload(backing(
        workload("cart-2", "cart", NODE2, ip(2, 11)),
        "cart",
        80,
        8080,
    ));
    let mut legacy = workload("legacy", "legacy", NODE2, ip(2, 30));
    legacy.tunnel = TunnelProtocol::None;
    store.insert_workload(legacy);
    store.insert_workload(workload("waypoint", "waypoint", NODE2, ip(2, 40)));
    let mut pay_pod = backing(workload("pay-1", "pay", NODE2, ip(2, 50)), "pay", 443, 8443);
    pay_pod.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(ip(2, 40)),
        hbone_port: 15008,
    });
    store.insert_workload(pay_pod);
    let mut sick = backing(
        workload("cart-3", "cart", NODE2, ip(2, 12)),
        "cart",
        80,
        8080,
    );
    sick.healthy = false;
    store.insert_workload(sick);
    store.insert_service(service("cart", 1, 80, 8080));
    let mut pay = service("pay", 2, 443, 8443);
    pay.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(ip(2, 40)),
        hbone_port: 15008,
    });
    store.insert_service(pay);
    store
}

fn local_on_node1(uid: &str) -> bool {
    ["client", "cart-1", "neighbor"].contains(&uid)
}

fn plan(
    store: &WorkloadStore,
    from: &str,
    to: SocketAddr,
    roll: usize,
) -> Result<OutboundPlan, OutboundError> {
    let source = store.workload_by_uid(from).unwrap();
    plan_outbound(store, &source, to, local_on_node1, roll)
}

#[test]
fn endpoints_share_connections_by_capacity() {
    // A ServiceEntry's endpoint weights arrive as capacity: 3 and 1 take 3/4 and 1/4 of the
    // connections, as ztunnel weighs them.
    let store = WorkloadStore::new();
    store.insert_workload(workload("client", "client", NODE1, ip(1, 10)));
    for (uid, last, capacity) in [("api-1", 61, 3), ("api-2", 62, 1)] {
        let mut endpoint = backing(workload(uid, "api", NODE2, ip(2, last)), "api", 80, 8080);
        endpoint.capacity = capacity;
        store.insert_workload(endpoint);
    }
    store.insert_service(service("api", 6, 80, 8080));
    let mut picks = BTreeMap::new();
    for roll in 0..400 {
        let OutboundPlan::Hbone { target, .. } =
            plan(&store, "client", SocketAddr::new(vip(6), 80), roll).unwrap()
        else {
            panic!("an HBONE plan");
        };
        *picks.entry(target.ip()).or_insert(0) += 1;
    }
    assert_eq!(picks[&ip(2, 61)], 300, "{picks:?}");
    assert_eq!(picks[&ip(2, 62)], 100, "{picks:?}");
}

#[test]
fn outbound_plans() {
    let store = mesh();
    let cart_vip = SocketAddr::new(vip(1), 80);
    // Round robin over the two healthy endpoints: the unhealthy cart-3 is never chosen.
    let picks: Vec<_> = (0..4)
        .map(
            |roll| match plan(&store, "client", cart_vip, roll).unwrap() {
                OutboundPlan::Local { target, .. } => ("local", target),
                OutboundPlan::Hbone {
                    target,
                    gateway,
                    expected_identity,
                    via_waypoint,
                    ..
                } => {
                    assert_eq!(gateway, addr(2, 11, 15008));
                    assert_eq!(expected_identity, id("cart"));
                    assert!(!via_waypoint);
                    ("hbone", target)
                }
                other => panic!("unexpected {other:?}"),
            },
        )
        .collect();
    assert_eq!(
        picks,
        [
            ("local", addr(1, 11, 8080)),
            ("hbone", addr(2, 11, 8080)),
            ("local", addr(1, 11, 8080)),
            ("hbone", addr(2, 11, 8080)),
        ]
    );

    // A pod IP directly: HBONE to that pod, authority as dialed.
    match plan(&store, "client", addr(2, 11, 9000), 0).unwrap() {
        OutboundPlan::Hbone {
            gateway, target, ..
        } => {
            assert_eq!((gateway, target), (addr(2, 11, 15008), addr(2, 11, 9000)));
        }
        other => panic!("unexpected {other:?}"),
    }
    // Outside the mesh, and a pod not in the mesh: plain TCP.
    let outside = SocketAddr::from(([10, 250, 0, 2], 15012));
    assert_eq!(
        plan(&store, "client", outside, 0).unwrap(),
        OutboundPlan::Passthrough { target: outside }
    );
    assert_eq!(
        plan(&store, "client", addr(2, 30, 80), 0).unwrap(),
        OutboundPlan::Passthrough {
            target: addr(2, 30, 80)
        }
    );
    // A service with a waypoint goes to the waypoint, authority the VIP, waypoint identity.
    let pay_vip = SocketAddr::new(vip(2), 443);
    match plan(&store, "client", pay_vip, 0).unwrap() {
        OutboundPlan::Hbone {
            gateway,
            target,
            expected_identity,
            via_waypoint,
            ..
        } => {
            assert_eq!(gateway, addr(2, 40, 15008));
            assert_eq!(target, pay_vip);
            assert_eq!(expected_identity, id("waypoint"));
            assert!(via_waypoint);
        }
        other => panic!("unexpected {other:?}"),
    }
    // ... and so does the pod behind it addressed directly (authority: the pod's own address,
    // which the waypoint serves as that workload), except from the waypoint itself.
    match plan(&store, "client", addr(2, 50, 8443), 0).unwrap() {
        OutboundPlan::Hbone {
            gateway,
            target,
            expected_identity,
            via_waypoint,
            ..
        } => {
            assert_eq!(
                (gateway, target, via_waypoint),
                (addr(2, 40, 15008), addr(2, 50, 8443), true)
            );
            assert_eq!(expected_identity, id("waypoint"));
        }
        other => panic!("unexpected {other:?}"),
    }
    match plan(&store, "waypoint", pay_vip, 0).unwrap() {
        OutboundPlan::Hbone {
            gateway,
            target,
            via_waypoint,
            ..
        } => {
            assert_eq!(
                (gateway, target, via_waypoint),
                (addr(2, 50, 15008), addr(2, 50, 8443), false)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Refusals.
    assert_eq!(
        plan(&store, "client", SocketAddr::new(vip(1), 81), 0).unwrap_err(),
        OutboundError::NoHealthyEndpoint {
            service: "shop/cart.shop.svc.cluster.local".into(),
            port: 81
        }
    );
    assert_eq!(
        plan(&store, "client", addr(1, 10, 15001), 0).unwrap_err(),
        OutboundError::AgentPort(addr(1, 10, 15001))
    );
}

/// The endpoint at `address` of the ServiceEntry `shop/payments`, outside the mesh.
fn service_entry_endpoint(address: IpAddr) -> Workload {
    let mut endpoint = workload(
        &format!("c1/networking.istio.io/ServiceEntry/shop/payments/{address}"),
        "default",
        "",
        address,
    );
    endpoint.tunnel = TunnelProtocol::None;
    endpoint
}

#[test]
fn registry_only_refuses_what_the_mesh_does_not_know_and_nothing_else() {
    let store = mesh();
    let outside = SocketAddr::from(([10, 250, 0, 2], 443));
    store.set_outbound_traffic_policy(OutboundTrafficPolicy::RegistryOnly);
    assert_eq!(
        plan(&store, "client", outside, 0).unwrap(),
        OutboundPlan::BlackHole { target: outside }
    );
    // A service, a pod, and a known workload outside the mesh stay reachable.
    assert!(matches!(
        plan(&store, "client", SocketAddr::new(vip(1), 80), 0).unwrap(),
        OutboundPlan::Hbone { .. } | OutboundPlan::Local { .. }
    ));
    assert!(matches!(
        plan(&store, "client", addr(2, 11, 9000), 0).unwrap(),
        OutboundPlan::Hbone { .. }
    ));
    assert_eq!(
        plan(&store, "client", addr(2, 30, 80), 0).unwrap(),
        OutboundPlan::Passthrough {
            target: addr(2, 30, 80)
        }
    );
    // A ServiceEntry's endpoint addressed directly, not by its host's addresses.
    let external = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
    store.insert_workload(service_entry_endpoint(external));
    let direct = SocketAddr::new(external, 8443);
    assert_eq!(
        plan(&store, "client", direct, 0).unwrap(),
        OutboundPlan::BlackHole { target: direct }
    );
    // Read per connection: back to ALLOW_ANY, the next connections pass through.
    store.set_outbound_traffic_policy(OutboundTrafficPolicy::AllowAny);
    assert_eq!(
        plan(&store, "client", outside, 0).unwrap(),
        OutboundPlan::Passthrough { target: outside }
    );
    assert_eq!(
        plan(&store, "client", direct, 0).unwrap(),
        OutboundPlan::Passthrough { target: direct }
    );
}

#[test]
fn load_balancing_modes() {
    let store = mesh();
    let cart_vip = SocketAddr::new(vip(1), 80);
    let mut cart = service("cart", 1, 80, 8080);
    cart.load_balancing = LoadBalancingMode::Failover;
    cart.routing_preferences = vec![RoutingPreference::Node];
    store.insert_service(cart.clone());
    // Failover with a node preference: always the endpoint on the client's node.
    for roll in 0..4 {
        assert!(matches!(
            plan(&store, "client", cart_vip, roll).unwrap(),
            OutboundPlan::Local { .. }
        ));
    }
    // Strict: a client on node2 with no cart endpoint... the waypoint pod on node2 has cart-2.
    assert!(matches!(
        plan(&store, "waypoint", cart_vip, 0).unwrap(),
        OutboundPlan::Hbone { gateway, .. } if gateway == addr(2, 11, 15008)
    ));
    cart.load_balancing = LoadBalancingMode::Passthrough;
    store.insert_service(cart.clone());
    // Passthrough: the original destination, still reported under the service.
    assert!(matches!(
        plan(&store, "client", cart_vip, 0).unwrap(),
        OutboundPlan::External { target, destination: None, service }
            if target == cart_vip && service.hostname == "cart.shop.svc.cluster.local"
    ));
    // Unhealthy endpoints become eligible when the service allows them.
    cart.load_balancing = LoadBalancingMode::Standard;
    cart.allow_unhealthy = true;
    store.insert_service(cart);
    let targets: std::collections::BTreeSet<_> = (0..3)
        .map(
            |roll| match plan(&store, "client", cart_vip, roll).unwrap() {
                OutboundPlan::Local { target, .. } | OutboundPlan::Hbone { target, .. } => target,
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert!(targets.contains(&addr(2, 12, 8080)));
}

fn policy(name: &str, action: PolicyAction, matches: Vec<ConnectionMatch>) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: PolicyScope::Namespace,
        action,
        rules: if matches.is_empty() {
            vec![]
        } else {
            vec![Rule {
                clauses: vec![Clause { matches }],
            }]
        },
        dry_run: false,
    }
}

#[test]
fn inbound_checks() {
    let store = mesh();
    let cart = store.workload_by_uid("cart-2").unwrap();
    let pay = store.workload_by_uid("pay-1").unwrap();
    let client = id("client");
    let from = ip(1, 10);
    let check = |w: &Workload, peer: Option<&SpiffeId>, target| {
        authorize_inbound(&store, w, peer, from, target)
    };

    assert_eq!(check(&cart, Some(&client), addr(2, 11, 8080)), Ok(()));
    assert_eq!(
        check(&cart, None, addr(2, 11, 8080)),
        Ok(()),
        "no policy: plaintext allowed"
    );
    assert_eq!(
        check(&cart, Some(&client), addr(2, 50, 8080)),
        Err(InboundRefusal::NotServedHere(addr(2, 50, 8080)))
    );
    // The agent's ports inside a pod are refused; Istio's other numbers are the application's.
    for port in [15001, 15006, 15008] {
        assert_eq!(
            check(&cart, Some(&client), addr(2, 11, port)),
            Err(InboundRefusal::AgentPort(addr(2, 11, port)))
        );
    }
    for port in [15000, 15020, 15021] {
        assert_eq!(
            check(&cart, Some(&client), addr(2, 11, port)),
            Ok(()),
            "{port}"
        );
    }
    // A workload behind a waypoint accepts only the waypoint.
    assert!(matches!(
        check(&pay, Some(&client), addr(2, 50, 8443)),
        Err(InboundRefusal::WaypointBypass { .. })
    ));
    assert_eq!(
        check(&pay, Some(&id("waypoint")), addr(2, 50, 8443)),
        Ok(())
    );
    assert!(matches!(
        check(&pay, None, addr(2, 50, 8443)),
        Err(InboundRefusal::WaypointBypass { .. })
    ));
    // A waypoint that cannot be resolved accepts nobody in its place: not its would-be
    // identity, not the client.
    let mut orphan = (*pay).clone();
    orphan.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Service(key("gone")),
        hbone_port: 15008,
    });
    for peer in [Some(id("waypoint")), Some(client.clone()), None] {
        assert!(
            matches!(
                check(&orphan, peer.as_ref(), addr(2, 50, 8443)),
                Err(InboundRefusal::WaypointBypass { ref waypoint, .. }) if waypoint.contains("no endpoints")
            ),
            "{peer:?}"
        );
    }

    // ALLOW only the client service account, and DENY port 9999 for everyone.
    store.insert_policy(policy(
        "allow-client",
        PolicyAction::Allow,
        vec![ConnectionMatch {
            principals: vec![WildcardMatch::Exact(
                "cluster.local/ns/shop/sa/client".into(),
            )],
            ..Default::default()
        }],
    ));
    store.insert_policy(policy(
        "deny-9999",
        PolicyAction::Deny,
        vec![ConnectionMatch {
            destination_ports: vec![9999],
            ..Default::default()
        }],
    ));
    assert_eq!(check(&cart, Some(&client), addr(2, 11, 8080)), Ok(()));
    assert!(matches!(
        check(&cart, Some(&id("other")), addr(2, 11, 8080)),
        Err(InboundRefusal::Denied(reason)) if reason.contains("none matched")
    ));
    assert!(matches!(
        check(&cart, None, addr(2, 11, 8080)),
        Err(InboundRefusal::Denied(_))
    ));
    assert!(matches!(
        check(&cart, Some(&client), addr(2, 11, 9999)),
        Err(InboundRefusal::Denied(reason)) if reason.contains("shop/deny-9999")
    ));
}

#[test]
fn inbound_service_guesses() {
    let store = mesh();
    let mut both = backing(workload("both", "both", NODE1, ip(1, 60)), "cart", 80, 8080);
    both.services.insert(key("admin"), [(9000, 0)].into());
    store.insert_workload(both);
    store.insert_service(service("admin", 3, 9000, 0));
    let guess = |uid: &str, port: u16| {
        let workload = store.workload_by_uid(uid).unwrap();
        inbound_service(&store, &workload, port).map(|s| s.name.clone())
    };
    let cases: [(&str, u16, Option<&str>); 6] = [
        // The target port names the service the connection came through.
        ("cart-1", 8080, Some("cart")),
        // The service port is not what reaches the pod.
        ("cart-1", 80, None),
        // A pod that backs no service.
        ("client", 8080, None),
        // Several services: the one mapping the port.
        ("both", 8080, Some("cart")),
        // A service port without a target port of its own maps itself.
        ("both", 9000, Some("admin")),
        ("both", 7000, None),
    ];
    for (uid, port, expected) in cases {
        assert_eq!(guess(uid, port).as_deref(), expected, "{uid}:{port}");
    }
}

#[test]
fn only_the_destination_waypoint_may_claim_a_source_address() {
    let store = mesh();
    let pay = store.workload_by_uid("pay-1").unwrap();
    let cart = store.workload_by_uid("cart-2").unwrap();
    let connection_peer = ip(1, 10);
    let claimed = Some(ip(9, 9));
    let cases = [
        // The waypoint forwards the client's traffic: its claim stands.
        (&pay, id("waypoint"), claimed, ip(9, 9)),
        (&pay, id("waypoint"), None, connection_peer),
        // Anyone else is taken at its connection's address, whatever it claims: passing for
        // the pod itself would skip the waypoint, passing for elsewhere would escape ipBlocks.
        (&pay, id("client"), Some(ip(2, 50)), connection_peer),
        (&pay, id("client"), claimed, connection_peer),
        // Without a waypoint nobody may claim anything, the waypoint's identity included.
        (&cart, id("client"), claimed, connection_peer),
        (&cart, id("waypoint"), claimed, connection_peer),
    ];
    for (destination, peer, claimed, expected) in cases {
        assert_eq!(
            inbound_source(&store, destination, &peer, claimed, connection_peer),
            expected,
            "{} claiming {claimed:?} to {}",
            peer,
            destination.uid
        );
    }
}

#[test]
fn service_entry_endpoints_are_reached_in_plain_tcp_under_their_host() {
    let store = mesh();
    let external = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 5));
    let host = NamespacedHostname {
        namespace: "shop".into(),
        hostname: "api.payments.example".into(),
    };
    let mut endpoint = service_entry_endpoint(external);
    endpoint.services.insert(host.clone(), [(80, 9090)].into());
    store.insert_workload(endpoint);
    let mut entry = service("payments", 9, 80, 80);
    entry.hostname = host.hostname.clone();
    store.insert_service(entry);
    // By the host's VIP: the endpoint's own target port, in plain TCP, with the host and the
    // endpoint to report (and the endpoint's policy to enforce).
    match plan(&store, "client", SocketAddr::new(vip(9), 80), 0).unwrap() {
        OutboundPlan::External {
            target,
            destination: Some(destination),
            service,
        } => {
            assert_eq!(target, SocketAddr::new(external, 9090));
            assert!(destination.is_service_entry_endpoint());
            assert_eq!(service.hostname, "api.payments.example");
        }
        other => panic!("{other:?}"),
    }
    // Without a service in between, a plaintext workload stays a bare passthrough.
    assert_eq!(
        plan(&store, "client", addr(2, 30, 80), 0).unwrap(),
        OutboundPlan::Passthrough {
            target: addr(2, 30, 80)
        }
    );
    assert!(
        !store
            .workload_by_uid("legacy")
            .unwrap()
            .is_service_entry_endpoint()
    );

    // An endpoint by name (DNS): its address is what the name last resolved to, none before.
    let mut named = workload(
        "c1/networking.istio.io/ServiceEntry/shop/db/db.example",
        "default",
        "",
        external,
    );
    named.addresses.clear();
    named.hostname = "db.example".into();
    named.tunnel = TunnelProtocol::None;
    let db = NamespacedHostname {
        namespace: "shop".into(),
        hostname: "db.example".into(),
    };
    named.services.insert(db.clone(), [(5432, 5432)].into());
    store.insert_workload(named);
    let mut entry = service("db", 8, 5432, 5432);
    entry.hostname = db.hostname.clone();
    store.insert_service(entry);
    let db_vip = SocketAddr::new(vip(8), 5432);
    assert!(matches!(
        plan(&store, "client", db_vip, 0),
        Err(OutboundError::NoHealthyEndpoint { .. })
    ));
    let resolved = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9));
    store.set_resolved("db.example", vec![resolved]);
    assert!(matches!(
        plan(&store, "client", db_vip, 0).unwrap(),
        OutboundPlan::External { target, .. } if target == SocketAddr::new(resolved, 5432)
    ));
}

#[test]
fn a_service_without_endpoints_is_carried_to_its_waypoint_as_ztunnel_carries_it() {
    // A DYNAMIC_DNS ServiceEntry host: no endpoint of its own, the waypoint resolves the name
    // each request gives.
    let store = mesh();
    let mut wild = service("*.wild.example", 3, 80, 80);
    wild.waypoint = Some(GatewayAddress {
        destination: GatewayDestination::Address(ip(2, 40)),
        hbone_port: 15008,
    });
    store.insert_service(wild);
    let wild_vip = SocketAddr::new(vip(3), 80);
    match plan(&store, "client", wild_vip, 0).unwrap() {
        OutboundPlan::Hbone {
            gateway,
            target,
            destination,
            via_waypoint,
            ..
        } => {
            assert_eq!((gateway, target), (addr(2, 40, 15008), wild_vip));
            assert!(destination.is_none());
            assert!(via_waypoint);
        }
        other => panic!("unexpected {other:?}"),
    }
    // Without a waypoint, no endpoint is still no endpoint.
    store.insert_service(service("empty", 4, 80, 80));
    assert!(matches!(
        plan(&store, "client", SocketAddr::new(vip(4), 80), 0),
        Err(OutboundError::NoHealthyEndpoint { .. })
    ));
}

mod locality;
