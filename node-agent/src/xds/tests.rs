use prost::Name;
use prost_types::Any;

use super::*;

fn resource<M: Message + Name>(name: &str, message: &M) -> Resource {
    Resource {
        name: name.into(),
        version: "1".into(),
        resource: Some(Any::from_msg(message).unwrap()),
        ..Default::default()
    }
}

fn workload_address(uid: &str, ip: [u8; 4]) -> workload::Address {
    workload::Address {
        r#type: Some(workload::address::Type::Workload(workload::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "shop".into(),
            addresses: vec![ip.to_vec()],
            service_account: "sa".into(),
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            ..Default::default()
        })),
    }
}

fn update(added: Vec<Resource>, removed: Vec<&str>) -> Update {
    Update {
        added,
        removed: removed.into_iter().map(String::from).collect(),
        full_state: false,
    }
}

#[test]
fn addresses_apply_all_or_nothing() {
    let store = WorkloadStore::new();
    let mut handler = AddressHandler::new(store.clone());
    handler
        .apply(update(
            vec![
                resource("w1", &workload_address("w1", [10, 0, 0, 1])),
                resource("w2", &workload_address("w2", [10, 0, 0, 2])),
            ],
            vec![],
        ))
        .unwrap();
    assert!(store.workload_by_uid("w1").is_some());

    // One bad resource: the whole update is refused, w1 is not removed, w3 not added.
    let error = handler
        .apply(update(
            vec![
                resource("w3", &workload_address("w3", [10, 0, 0, 3])),
                resource("bad", &workload_address("", [10, 0, 0, 4])),
            ],
            vec!["w1"],
        ))
        .unwrap_err();
    assert!(error.contains("field uid: empty"), "{error}");
    assert!(store.workload_by_uid("w1").is_some());
    assert!(store.workload_by_uid("w3").is_none());

    handler.apply(update(vec![], vec!["w1"])).unwrap();
    assert!(store.workload_by_uid("w1").is_none());
    assert!(store.workload_by_uid("w2").is_some());
}

#[test]
fn authorizations_convert_and_bad_ones_are_refused() {
    let store = WorkloadStore::new();
    let mut handler = AuthorizationHandler::new(store.clone());
    let policy = security::Authorization {
        name: "deny-legacy".into(),
        namespace: "shop".into(),
        scope: security::Scope::Namespace as i32,
        action: security::Action::Deny as i32,
        rules: vec![security::Rule {
            clauses: vec![security::Clause {
                matches: vec![security::Match {
                    principals: vec![security::StringMatch {
                        match_type: Some(security::string_match::MatchType::Suffix(
                            "/sa/legacy".into(),
                        )),
                    }],
                    source_ips: vec![security::Address {
                        address: vec![10, 1, 0, 0],
                        length: 16,
                    }],
                    destination_ports: vec![8080],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    };
    handler
        .apply(update(vec![resource("shop/deny-legacy", &policy)], vec![]))
        .unwrap();
    let stored = store.policy("shop/deny-legacy").unwrap();
    let m = &stored.rules[0].clauses[0].matches[0];
    assert_eq!(m.destination_ports, vec![8080]);
    assert_eq!(m.source_ips[0].to_string(), "10.1.0.0/16");

    let cases: Vec<(security::Authorization, &str)> = vec![
        (
            security::Authorization {
                action: 9,
                ..policy.clone()
            },
            "field action: unknown value 9",
        ),
        (
            security::Authorization {
                rules: vec![security::Rule {
                    clauses: vec![security::Clause {
                        matches: vec![security::Match {
                            source_ips: vec![security::Address {
                                address: vec![10, 1, 0, 0],
                                length: 40,
                            }],
                            ..Default::default()
                        }],
                    }],
                }],
                ..policy.clone()
            },
            "prefix length 40",
        ),
        (
            security::Authorization {
                rules: vec![security::Rule {
                    clauses: vec![security::Clause {
                        matches: vec![security::Match {
                            destination_ports: vec![70_000],
                            ..Default::default()
                        }],
                    }],
                }],
                ..policy.clone()
            },
            "port 70000",
        ),
    ];
    for (bad, expected) in cases {
        let error = handler
            .apply(update(vec![resource("shop/deny-legacy", &bad)], vec![]))
            .unwrap_err();
        assert!(error.contains(expected), "{error:?} lacks {expected:?}");
    }
    // The last good version stays.
    assert_eq!(store.policy("shop/deny-legacy").unwrap(), stored);
}

fn service_address(namespace: &str, hostname: &str, vip: [u8; 4]) -> workload::Address {
    workload::Address {
        r#type: Some(workload::address::Type::Service(workload::Service {
            name: hostname.split('.').next().unwrap_or_default().into(),
            namespace: namespace.into(),
            hostname: hostname.into(),
            addresses: vec![workload::NetworkAddress {
                network: String::new(),
                address: vip.to_vec(),
            }],
            ..Default::default()
        })),
    }
}

fn named_policy(namespace: &str, name: &str) -> security::Authorization {
    security::Authorization {
        name: name.into(),
        namespace: namespace.into(),
        scope: security::Scope::Namespace as i32,
        action: security::Action::Deny as i32,
        ..Default::default()
    }
}

/// A resource sent under a name other than its key could never be removed by that name: it is
/// refused, with every such error in the one NACK, and nothing of the update is applied.
#[test]
fn resources_must_be_named_by_their_key() {
    let store = WorkloadStore::new();
    let mut addresses = AddressHandler::new(store.clone());
    let hostname = "cart.shop.svc.cluster.local";
    addresses
        .apply(update(
            vec![
                resource("w1", &workload_address("w1", [10, 0, 0, 1])),
                resource(
                    &format!("shop/{hostname}"),
                    &service_address("shop", hostname, [10, 96, 0, 1]),
                ),
            ],
            vec![],
        ))
        .unwrap();
    let vip = std::net::IpAddr::from([10, 96, 0, 1]);
    assert!(store.service_by_vip(vip).is_some());

    let error = addresses
        .apply(update(
            vec![
                resource("w9", &workload_address("w2", [10, 0, 0, 2])),
                resource(
                    "shop/other",
                    &service_address("shop", hostname, [10, 96, 0, 2]),
                ),
            ],
            vec!["w1"],
        ))
        .unwrap_err();
    assert!(
        error.contains("w9: resource name differs from its key \"w2\""),
        "{error}"
    );
    assert!(
        error.contains(&format!(
            "shop/other: resource name differs from its key \"shop/{hostname}\""
        )),
        "{error}"
    );
    assert!(
        store.workload_by_uid("w1").is_some(),
        "a NACKed update removes nothing"
    );
    assert!(store.workload_by_uid("w2").is_none());

    // Removal by the service's name drops it and its VIP.
    addresses
        .apply(update(vec![], vec![&format!("shop/{hostname}")]))
        .unwrap();
    assert!(store.service_by_vip(vip).is_none());
    assert!(store.workload_by_uid("w1").is_some());

    let mut policies = AuthorizationHandler::new(store.clone());
    let error = policies
        .apply(update(
            vec![resource("shop/alias", &named_policy("shop", "deny-all"))],
            vec![],
        ))
        .unwrap_err();
    assert!(
        error.contains("differs from its key \"shop/deny-all\""),
        "{error}"
    );
    assert!(store.policies().is_empty());
    policies
        .apply(update(
            vec![resource("shop/deny-all", &named_policy("shop", "deny-all"))],
            vec![],
        ))
        .unwrap();
    policies
        .apply(update(vec![], vec!["shop/deny-all"]))
        .unwrap();
    assert!(
        store.policies().is_empty(),
        "removed by the name it was sent under"
    );
}

/// An update is one change of the store, however many resources it carries: watchers wake
/// once, and the policies are indexed once (a first update carries the mesh's every address and
/// policy; a change per resource made the agent's first sync cost the square of its policies).
#[test]
fn an_update_is_one_change_of_the_store() {
    let store = WorkloadStore::new();
    let changes = store.subscribe();
    let generation = || *changes.borrow();
    let mut addresses = AddressHandler::new(store.clone());
    let mut policies = AuthorizationHandler::new(store.clone());
    let hostname = "cart.shop.svc.cluster.local";
    let service = format!("shop/{hostname}");

    let before = generation();
    addresses
        .apply(update(
            vec![
                resource("w1", &workload_address("w1", [10, 0, 0, 1])),
                resource("w2", &workload_address("w2", [10, 0, 0, 2])),
                resource(&service, &service_address("shop", hostname, [10, 96, 0, 1])),
            ],
            vec![],
        ))
        .unwrap();
    assert_eq!(generation(), before + 1, "three addresses, one change");
    assert!(store.workload_by_uid("w2").is_some());

    let named = |name: String| resource(&format!("shop/{name}"), &named_policy("shop", &name));
    policies
        .apply(update(
            (0..40).map(|i| named(format!("p{i:02}"))).collect(),
            vec![],
        ))
        .unwrap();
    assert_eq!(generation(), before + 2, "forty policies, one change");
    let keys = |store: &WorkloadStore| -> Vec<String> {
        store
            .policies()
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect()
    };
    let expected: Vec<String> = (0..40).map(|i| format!("shop/p{i:02}")).collect();
    assert_eq!(keys(&store), expected, "indexed in evaluation order");

    // Removals and additions of one update land together.
    policies
        .apply(update(
            vec![named("a".into())],
            vec!["shop/p00", "shop/p01"],
        ))
        .unwrap();
    assert_eq!(generation(), before + 3);
    assert_eq!(keys(&store).len(), 39);
    assert_eq!(keys(&store)[0], "shop/a");
    assert!(store.policy("shop/p00").is_none());

    addresses
        .apply(update(
            vec![resource("w3", &workload_address("w3", [10, 0, 0, 3]))],
            vec!["w1", &service],
        ))
        .unwrap();
    assert_eq!(generation(), before + 4);
    assert!(store.workload_by_uid("w1").is_none());
    assert!(store.workload_by_uid("w3").is_some());
    assert!(store.service_by_vip([10, 96, 0, 1].into()).is_none());

    // Removing what is not there changes nothing and wakes nobody.
    policies.apply(update(vec![], vec!["shop/gone"])).unwrap();
    assert_eq!(generation(), before + 4);
}

#[test]
fn the_mesh_configuration_sets_the_outbound_traffic_policy_and_its_removal_restores_allow_any() {
    let store = WorkloadStore::new();
    let mut handler = MeshConfigHandler::new(store.clone());
    let registry_only = mesh::MeshConfig {
        outbound_traffic_policy: mesh::OutboundTrafficPolicy::RegistryOnly as i32,
    };
    handler
        .apply(update(vec![resource("mesh", &registry_only)], vec![]))
        .unwrap();
    assert_eq!(
        store.outbound_traffic_policy(),
        OutboundTrafficPolicy::RegistryOnly
    );
    // Another name, or a value this agent does not know, is refused and changes nothing.
    assert!(
        handler
            .apply(update(vec![resource("other", &registry_only)], vec![]))
            .is_err()
    );
    let unknown = mesh::MeshConfig {
        outbound_traffic_policy: 7,
    };
    let error = handler
        .apply(update(vec![resource("mesh", &unknown)], vec![]))
        .unwrap_err();
    assert!(
        error.contains("unknown outbound traffic policy 7"),
        "{error}"
    );
    assert_eq!(
        store.outbound_traffic_policy(),
        OutboundTrafficPolicy::RegistryOnly
    );
    handler.apply(update(vec![], vec!["mesh"])).unwrap();
    assert_eq!(
        store.outbound_traffic_policy(),
        OutboundTrafficPolicy::AllowAny
    );
}
