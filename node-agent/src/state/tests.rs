use std::net::{IpAddr, Ipv4Addr};

use weft_proto::istio::workload as proto;

use super::*;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 251, 1, last))
}

fn reviews() -> NamespacedHostname {
    NamespacedHostname {
        namespace: "bookinfo".into(),
        hostname: "reviews.bookinfo.svc.cluster.local".into(),
    }
}

fn proto_workload(uid: &str, last: u8) -> proto::Workload {
    proto::Workload {
        uid: uid.into(),
        name: uid.into(),
        namespace: "bookinfo".into(),
        addresses: vec![vec![10, 251, 1, last]],
        service_account: "bookinfo-reviews".into(),
        tunnel_protocol: proto::TunnelProtocol::Hbone as i32,
        services: [(
            "bookinfo/reviews.bookinfo.svc.cluster.local".to_string(),
            proto::PortList {
                ports: vec![proto::Port {
                    service_port: 9080,
                    target_port: 9080,
                }],
            },
        )]
        .into(),
        ..Default::default()
    }
}

#[test]
fn workload_converts_with_defaults_and_identity() {
    let w = Workload::try_from(proto_workload("r1", 10)).unwrap();
    assert_eq!(w.addresses, vec![ip(10)]);
    assert_eq!(w.trust_domain, "cluster.local");
    assert_eq!(w.tunnel, TunnelProtocol::Hbone);
    assert!(w.healthy);
    assert_eq!(
        w.identity().unwrap().to_string(),
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    );
    assert_eq!(w.services[&reviews()][&9080], 9080);
    assert_eq!(
        *w.locality,
        Locality::default(),
        "no locality: every part empty"
    );
    let mut located = proto_workload("r2", 11);
    located.locality = Some(proto::Locality {
        region: "eu".into(),
        zone: "eu-1".into(),
        subzone: String::new(),
    });
    let w = Workload::try_from(located).unwrap();
    assert_eq!(
        (w.locality.region.as_str(), w.locality.zone.as_str()),
        ("eu", "eu-1")
    );
}

#[test]
fn malformed_resources_are_refused_naming_the_field() {
    let cases: Vec<(proto::Workload, &str)> = vec![
        (
            proto::Workload {
                uid: String::new(),
                ..proto_workload("x", 1)
            },
            "field uid: empty",
        ),
        (
            proto::Workload {
                addresses: vec![vec![1, 2, 3]],
                ..proto_workload("x", 1)
            },
            "field addresses: 3 bytes is not an IP",
        ),
        (
            proto::Workload {
                tunnel_protocol: 7,
                ..proto_workload("x", 1)
            },
            "field tunnel_protocol: unknown value 7",
        ),
        (
            proto::Workload {
                services: [("no-slash".to_string(), proto::PortList::default())].into(),
                ..proto_workload("x", 1)
            },
            "field services: key \"no-slash\" is not namespace/hostname",
        ),
        (
            proto::Workload {
                services: [(
                    "a/b".to_string(),
                    proto::PortList {
                        ports: vec![proto::Port {
                            service_port: 70000,
                            target_port: 1,
                        }],
                    },
                )]
                .into(),
                ..proto_workload("x", 1)
            },
            "port 70000 > 65535",
        ),
        (
            proto::Workload {
                service_account: "Bad/SA".into(),
                ..proto_workload("x", 1)
            },
            "field service_account",
        ),
        (
            proto::Workload {
                waypoint: Some(proto::GatewayAddress {
                    destination: None,
                    hbone_mtls_port: 15008,
                }),
                ..proto_workload("x", 1)
            },
            "field waypoint: no destination",
        ),
    ];
    for (workload, expected) in cases {
        let error = Workload::try_from(workload).unwrap_err().to_string();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
    let error = AddressResource::try_from(proto::Address { r#type: None }).unwrap_err();
    assert_eq!(error, ConversionError::EmptyAddress);
}

#[test]
fn service_converts_load_balancing_and_waypoint() {
    let service = Service::try_from(proto::Service {
        name: "reviews".into(),
        namespace: "bookinfo".into(),
        hostname: "reviews.bookinfo.svc.cluster.local".into(),
        addresses: vec![proto::NetworkAddress {
            network: String::new(),
            address: vec![10, 96, 0, 5],
        }],
        ports: vec![proto::Port {
            service_port: 9080,
            target_port: 8080,
        }],
        waypoint: Some(proto::GatewayAddress {
            destination: Some(proto::gateway_address::Destination::Address(
                proto::NetworkAddress {
                    network: String::new(),
                    address: vec![10, 251, 2, 20],
                },
            )),
            hbone_mtls_port: 0,
        }),
        load_balancing: Some(proto::LoadBalancing {
            routing_preference: vec![proto::load_balancing::Scope::Node as i32],
            mode: proto::load_balancing::Mode::Failover as i32,
            health_policy: proto::load_balancing::HealthPolicy::AllowAll as i32,
            dns_connect_strategy: 0,
        }),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(service.vips, vec![IpAddr::V4(Ipv4Addr::new(10, 96, 0, 5))]);
    assert_eq!(service.ports[&9080], 8080);
    assert_eq!(service.load_balancing, LoadBalancingMode::Failover);
    assert_eq!(service.routing_preferences, vec![RoutingPreference::Node]);
    assert!(service.allow_unhealthy);
    assert_eq!(
        service.waypoint,
        Some(GatewayAddress {
            destination: GatewayDestination::Address(IpAddr::V4(Ipv4Addr::new(10, 251, 2, 20))),
            hbone_port: HBONE_PORT,
        })
    );
}

#[test]
fn store_indexes_follow_inserts_replacements_and_removals() {
    let store = WorkloadStore::new();
    let mut changes = store.subscribe();
    store.insert_workload(proto_workload("r1", 10).try_into().unwrap());
    store.insert_workload(proto_workload("r2", 11).try_into().unwrap());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();

    assert_eq!(store.workload_by_ip(ip(10)).unwrap().uid, "r1");
    let uids: Vec<_> = store
        .endpoints(&reviews())
        .iter()
        .map(|w| w.uid.clone())
        .collect();
    assert_eq!(uids, ["r1", "r2"]);

    // r1 moves to a new address: the old address no longer resolves to it.
    store.insert_workload(proto_workload("r1", 12).try_into().unwrap());
    assert!(store.workload_by_ip(ip(10)).is_none());
    assert_eq!(store.workload_by_ip(ip(12)).unwrap().uid, "r1");
    assert_eq!(
        store.endpoints(&reviews()).len(),
        2,
        "no duplicate endpoint"
    );

    store.remove_workload("r2");
    assert!(store.workload_by_ip(ip(11)).is_none());
    assert_eq!(store.endpoints(&reviews()).len(), 1);
    assert!(changes.has_changed().unwrap());

    let service = Service {
        name: "reviews".into(),
        namespace: "bookinfo".into(),
        hostname: "reviews.bookinfo.svc.cluster.local".into(),
        vips: vec![ip(200)],
        ports: [(9080, 9080)].into(),
        subject_alt_names: vec![],
        waypoint: None,
        load_balancing: LoadBalancingMode::Standard,
        routing_preferences: vec![],
        allow_unhealthy: false,
    };
    store.insert_service(service.clone());
    assert_eq!(store.service_by_vip(ip(200)).unwrap().name, "reviews");
    store.insert_service(Service {
        vips: vec![ip(201)],
        ..service
    });
    assert!(store.service_by_vip(ip(200)).is_none());
    store.remove_service(&reviews());
    assert!(store.service_by_vip(ip(201)).is_none());
    assert_eq!(store.dump().workloads.len(), 1);
    // The dump is what /config_dump serves: it must be valid JSON.
    let json = serde_json::to_value(store.dump()).unwrap();
    assert!(
        json["workloads"][0]["services"]["bookinfo/reviews.bookinfo.svc.cluster.local"].is_object()
    );
}

#[tokio::test]
async fn a_connection_waits_for_its_pods_workload_within_the_deadline() {
    let store = WorkloadStore::new();
    // Another workload arrives first: not the one waited for, the wait goes on.
    let writer = store.clone();
    let arrivals = tokio::spawn(async move {
        tokio::task::yield_now().await;
        writer.insert_workload(proto_workload("other", 11).try_into().unwrap());
        tokio::task::yield_now().await;
        writer.insert_workload(proto_workload("r1", 10).try_into().unwrap());
    });
    let found = store
        .wait_for_workload_by_uid("r1", std::time::Duration::from_secs(10))
        .await;
    assert_eq!(found.expect("the workload arrived").uid, "r1");
    arrivals.await.unwrap();

    // Known already: no wait. Never described: refused once the deadline passes.
    assert!(
        store
            .wait_for_workload_by_uid("r1", std::time::Duration::ZERO)
            .await
            .is_some()
    );
    let started = std::time::Instant::now();
    assert!(
        store
            .wait_for_workload_by_uid("unknown", std::time::Duration::from_millis(50))
            .await
            .is_none()
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(50));
}
