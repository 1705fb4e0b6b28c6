use std::collections::BTreeMap;
use std::time::Duration;

use weft_proto::waypoint as proto;

use super::*;

const HOST: &str = "reviews.default.svc.cluster.local";
const CLUSTER: &str = "outbound|9080||reviews.default.svc.cluster.local";

fn endpoint() -> proto::Endpoint {
    proto::Endpoint {
        address: "10.0.0.5".to_owned(),
        port: 9080,
        identity: "spiffe://cluster.local/ns/default/sa/reviews".to_owned(),
        labels: BTreeMap::from([("app".to_owned(), "reviews".to_owned())]),
        workload_uid: "uid-1".to_owned(),
        workload_name: "reviews-v1".to_owned(),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        healthy: true,
        weight: 0,
        hostname: String::new(),
        tunnel_address: String::new(),
        locality: None,
        topology_labels: Default::default(),
    }
}

fn base() -> proto::WaypointConfig {
    proto::WaypointConfig {
        name: "waypoint".to_owned(),
        namespace: "default".to_owned(),
        services: vec![proto::WaypointService {
            hostname: HOST.to_owned(),
            name: "reviews".to_owned(),
            namespace: "default".to_owned(),
            vips: vec!["10.96.0.10".to_owned()],
            ports: vec![proto::ServicePort {
                port: 9080,
                name: "http".to_owned(),
                protocol: proto::Protocol::Http as i32,
                target_port: 0,
            }],
            http_routes: vec![proto::HttpRoute {
                route: vec![proto::HttpRouteDestination {
                    destination: Some(proto::Destination {
                        host: HOST.to_owned(),
                        subset: String::new(),
                        port: 0,
                        cluster: CLUSTER.to_owned(),
                    }),
                    weight: 0,
                    headers: None,
                }],
                ..Default::default()
            }],
            tcp_routes: Vec::new(),
            dynamic_dns: false,
            telemetry: None,
        }],
        clusters: vec![proto::Cluster {
            name: CLUSTER.to_owned(),
            host: HOST.to_owned(),
            port: 9080,
            endpoints: vec![endpoint()],
            ..Default::default()
        }],
        authorization_policies: Vec::new(),
        source_workloads: Vec::new(),
        workloads: Vec::new(),
        request_authentications: Vec::new(),
        gateway: None,
        tracing: None,
        access_log_disabled: false,
        metric_overrides: Vec::new(),
        instances: Vec::new(),
        access_logs: Vec::new(),
    }
}

fn direct_workload() -> proto::WaypointWorkload {
    proto::WaypointWorkload {
        address: "10.0.0.5".to_owned(),
        identity: "spiffe://cluster.local/ns/default/sa/reviews".to_owned(),
        labels: BTreeMap::from([("app".to_owned(), "reviews".to_owned())]),
        workload_uid: "uid-1".to_owned(),
        workload_name: "reviews-v1".to_owned(),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        namespace: "default".to_owned(),
        services: vec![HOST.to_owned()],
        ports: vec![proto::WorkloadPort {
            port: 9080,
            protocol: proto::Protocol::Http as i32,
        }],
    }
}

fn service_target(target: Option<Target>) -> ServiceTarget {
    match target {
        Some(Target::Service(t)) => t,
        other => panic!("expected a service target, got {other:?}"),
    }
}

#[test]
fn a_valid_config_is_indexed_by_vip() {
    let config = WaypointConfig::try_from(base()).unwrap();
    let by_vip = service_target(config.target_for("10.96.0.10:9080".parse().unwrap()));
    assert_eq!(by_vip.service.hostname, HOST);
    assert_eq!(
        by_vip.port.target_port, 9080,
        "target port defaults to the port"
    );
    assert!(
        config
            .target_for("10.96.0.10:80".parse().unwrap())
            .is_none()
    );
    // An endpoint's address is not the service: only listed workloads are served directly.
    assert!(
        config
            .target_for("10.0.0.5:9080".parse().unwrap())
            .is_none()
    );
    let cluster = config.cluster(CLUSTER).unwrap();
    assert_eq!(
        cluster.load_balancer,
        LoadBalancer::LeastRequest,
        "Istio's default"
    );
    assert_eq!(cluster.endpoints[0].weight, 1);
    assert_eq!(
        config
            .workload("10.0.0.5".parse().unwrap())
            .unwrap()
            .canonical_service(),
        Some("reviews")
    );
    let route = &config.services[0].http_routes[0];
    assert_eq!(route.retries, RetryPolicy::mesh_default());
    assert_eq!(route.retries.attempts, 2);
}

#[test]
fn a_service_port_without_a_matching_route_goes_to_its_whole_service_cluster() {
    let mut config = base();
    let cluster = |name: &str, host: &str, port: u32, subset: &str| proto::Cluster {
        name: name.to_owned(),
        host: host.to_owned(),
        port,
        subset: subset.to_owned(),
        endpoints: vec![endpoint()],
        ..Default::default()
    };
    // A subset's cluster first: never the default, wherever it is listed.
    config.clusters.insert(
        0,
        cluster(
            "outbound|9080|v1|reviews.default.svc.cluster.local",
            HOST,
            9080,
            "v1",
        ),
    );
    config.clusters.extend([
        cluster(
            "outbound|9081||reviews.default.svc.cluster.local",
            HOST,
            9081,
            "",
        ),
        cluster(
            "outbound|9080||ratings.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
            9080,
            "",
        ),
    ]);
    let config = WaypointConfig::try_from(config).unwrap();
    let default = |host: &str, port| config.default_cluster(host, port).map(|c| c.name.as_str());
    assert_eq!(default(HOST, 9080), Some(CLUSTER));
    assert_eq!(
        default(HOST, 9081),
        Some("outbound|9081||reviews.default.svc.cluster.local")
    );
    assert_eq!(
        default("ratings.default.svc.cluster.local", 9080),
        Some("outbound|9080||ratings.default.svc.cluster.local")
    );
    assert_eq!(default(HOST, 9082), None);
    assert_eq!(default("details.default.svc.cluster.local", 9080), None);
}

#[test]
fn a_route_may_name_a_cluster_that_does_not_exist() {
    // istiod names the cluster of an undefined subset without defining it; the configuration
    // stands and the route answers 503 NC at request time.
    let mut c = base();
    c.services[0].http_routes[0].route[0]
        .destination
        .as_mut()
        .unwrap()
        .cluster = "outbound|9080|v9|reviews.default.svc.cluster.local".to_owned();
    let config = WaypointConfig::try_from(c).unwrap();
    let RouteAction::Forward(destinations) = &config.services[0].http_routes[0].action else {
        panic!("not a forward");
    };
    assert_eq!(
        destinations[0].cluster,
        "outbound|9080|v9|reviews.default.svc.cluster.local"
    );
    assert!(config.cluster(&destinations[0].cluster).is_none());
}

/// A workload's own cluster is built once per port and configuration, not per request: two
/// requests to one port share it, a new configuration builds it anew (with what changed), and
/// ports no service declares are kept only up to a bound, past which each request builds its
/// own (correct, but never kept).
#[test]
fn a_workloads_cluster_is_built_once_per_port_and_configuration() {
    let workload_target = |config: &WaypointConfig, authority: &str| match config
        .target_for(authority.parse().unwrap())
    {
        Some(Target::Workload(target)) => target.cluster(),
        other => panic!("{authority}: expected a workload target, got {other:?}"),
    };
    let mut c = base();
    c.workloads = vec![direct_workload()];
    let config = WaypointConfig::try_from(c.clone()).unwrap();
    let first = workload_target(&config, "10.0.0.5:9080");
    let second = workload_target(&config, "10.0.0.5:9080");
    assert!(
        Arc::ptr_eq(&first, &second),
        "two requests to one port built two clusters"
    );
    let other_port = workload_target(&config, "10.0.0.5:9999");
    assert_eq!(other_port.name, "inbound-pod|9999||10.0.0.5");
    assert!(Arc::ptr_eq(
        &other_port,
        &workload_target(&config, "10.0.0.5:9999")
    ));

    // A new configuration: a new cluster, with the workload's new identity.
    c.workloads[0].identity = "spiffe://cluster.local/ns/default/sa/reviews-v2".to_owned();
    let changed = WaypointConfig::try_from(c).unwrap();
    let rebuilt = workload_target(&changed, "10.0.0.5:9080");
    assert!(!Arc::ptr_eq(&first, &rebuilt));
    assert_eq!(
        rebuilt.endpoints[0].principal.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/reviews-v2")
    );
    assert_eq!(
        first.endpoints[0].principal.as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/reviews")
    );

    // Undeclared ports are kept up to the bound (9999 is one already); the declared port
    // always is.
    let workload = config.direct_workloads().next().unwrap();
    for port in 20_000..20_000 + UNDECLARED_PORT_CLUSTERS as u16 + 5 {
        let authority = format!("10.0.0.5:{port}");
        let cluster = workload_target(&config, &authority);
        assert_eq!(cluster.endpoints[0].address, authority.parse().unwrap());
    }
    assert_eq!(workload.clusters.len(), 1 + UNDECLARED_PORT_CLUSTERS);
    let past = workload_target(&config, "10.0.0.5:20012");
    assert!(!Arc::ptr_eq(
        &past,
        &workload_target(&config, "10.0.0.5:20012")
    ));
    assert!(Arc::ptr_eq(
        &first,
        &workload_target(&config, "10.0.0.5:9080")
    ));
}

#[test]
fn workloads_addressed_directly_are_targets_of_their_own() {
    let mut c = base();
    c.workloads = vec![direct_workload()];
    let config = WaypointConfig::try_from(c).unwrap();
    let cases = [
        ("10.0.0.5:9080", 9080, Protocol::Http),
        // Any port of the workload, sniffed when no service declares it.
        ("10.0.0.5:9999", 9999, Protocol::Unspecified),
    ];
    for (authority, port, protocol) in cases {
        let Some(Target::Workload(target)) = config.target_for(authority.parse().unwrap()) else {
            panic!("{authority} is not a workload target");
        };
        assert_eq!(
            (target.port, target.protocol),
            (port, protocol),
            "{authority}"
        );
        let cluster = target.cluster();
        assert_eq!(cluster.name, format!("inbound-pod|{port}||10.0.0.5"));
        assert_eq!(cluster.endpoints.len(), 1);
        let endpoint = &cluster.endpoints[0];
        assert_eq!(endpoint.address, authority.parse().unwrap());
        assert_eq!(
            endpoint
                .identity
                .as_ref()
                .map(ToString::to_string)
                .as_deref(),
            Some("spiffe://cluster.local/ns/default/sa/reviews")
        );
        assert_eq!(endpoint.tunnel, Tunnel::Hbone);
    }
    // The service's VIP still selects the service.
    service_target(config.target_for("10.96.0.10:9080".parse().unwrap()));
    for (name, known) in [
        (CLUSTER, true),
        ("inbound-pod|9999||10.0.0.5", true),
        ("inbound-pod|9999||10.0.0.6", false),
        ("inbound-pod|x||10.0.0.5", false),
        ("inbound-pod|9999|v1|10.0.0.5", false),
        ("outbound|9080|v9|reviews.default.svc.cluster.local", false),
    ] {
        assert_eq!(config.has_cluster(name), known, "{name}");
    }

    type Mutation = fn(&mut proto::WaypointWorkload);
    let invalid: Vec<(Mutation, &str)> = vec![
        (|w| w.address = "10.0.0".to_owned(), "invalid IP"),
        (|w| w.identity.clear(), "has no identity"),
        (|w| w.ports[0].port = 70000, "invalid port"),
        (|w| w.tunnel = 9, "unknown tunnel"),
    ];
    for (mutate, expected) in invalid {
        let mut bad = base();
        let mut workload = direct_workload();
        mutate(&mut workload);
        bad.workloads = vec![workload];
        let error = WaypointConfig::try_from(bad).unwrap_err().to_string();
        assert!(
            error.contains("workload uid-1") && error.contains(expected),
            "{error}"
        );
    }
    // An address listed twice: the first entry serves it.
    let mut twice = base();
    let mut second = direct_workload();
    second.workload_uid = "uid-2".to_owned();
    second.identity = "spiffe://cluster.local/ns/default/sa/other".to_owned();
    twice.workloads = vec![direct_workload(), second];
    let config = WaypointConfig::try_from(twice).unwrap();
    let Some(Target::Workload(target)) = config.target_for("10.0.0.5:9080".parse().unwrap()) else {
        panic!("no workload target");
    };
    assert_eq!(
        target
            .workload
            .identity
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/reviews")
    );
}

#[test]
fn source_workloads_describe_request_sources() {
    let mut c = base();
    c.source_workloads = vec![
        proto::SourceWorkload {
            address: "10.0.0.9".to_owned(),
            identity: "spiffe://cluster.local/ns/default/sa/productpage".to_owned(),
            labels: BTreeMap::from([("app".to_owned(), "productpage".to_owned())]),
            workload_uid: "uid-9".to_owned(),
            workload_name: "productpage-v1".to_owned(),
        },
        // The endpoint at this address already describes it.
        proto::SourceWorkload {
            address: "10.0.0.5".to_owned(),
            identity: String::new(),
            labels: BTreeMap::from([("app".to_owned(), "other".to_owned())]),
            workload_uid: "uid-other".to_owned(),
            workload_name: "other".to_owned(),
        },
    ];
    let config = WaypointConfig::try_from(c).unwrap();
    let source = config.workload("10.0.0.9".parse().unwrap()).unwrap();
    assert_eq!(source.canonical_service(), Some("productpage"));
    assert_eq!(source.name, "productpage-v1");
    assert_eq!(
        source.identity.as_ref().map(ToString::to_string).as_deref(),
        Some("spiffe://cluster.local/ns/default/sa/productpage")
    );
    assert_eq!(
        config
            .workload("10.0.0.5".parse().unwrap())
            .unwrap()
            .canonical_service(),
        Some("reviews")
    );
    assert_eq!(
        config.workload("10.0.0.5".parse().unwrap()).unwrap().name,
        "reviews-v1"
    );
    for (address, identity) in [("10.0.0", ""), ("10.0.0.9", "spiffe://x/y")] {
        let mut bad = base();
        bad.source_workloads = vec![proto::SourceWorkload {
            address: address.to_owned(),
            identity: identity.to_owned(),
            ..Default::default()
        }];
        let error = WaypointConfig::try_from(bad).unwrap_err().to_string();
        assert!(error.contains("source workload"), "{error}");
    }
}

#[test]
fn invalid_configs_are_rejected_with_context() {
    type Mutation = fn(&mut proto::WaypointConfig);
    let cases: Vec<(&str, Mutation, &str)> = vec![
        (
            "bad regex",
            |c| {
                c.services[0].http_routes[0].r#match = vec![proto::HttpMatchRequest {
                    uri: Some(proto::StringMatch {
                        match_type: Some(proto::string_match::MatchType::Regex("(".to_owned())),
                    }),
                    ..Default::default()
                }]
            },
            "http route 0",
        ),
        (
            "destination without a cluster",
            |c| {
                c.services[0].http_routes[0].route[0]
                    .destination
                    .as_mut()
                    .unwrap()
                    .cluster
                    .clear()
            },
            "without a cluster name",
        ),
        (
            "bad vip",
            |c| c.services[0].vips[0] = "10.96.0".to_owned(),
            "invalid IP",
        ),
        (
            "bad identity",
            |c| c.clusters[0].endpoints[0].identity = "spiffe://x/y".to_owned(),
            "invalid SPIFFE identity",
        ),
        (
            "http2 keepalive without a timeout",
            |c| {
                c.clusters[0].connection_pool = Some(proto::ConnectionPoolSettings {
                    http: Some(proto::connection_pool_settings::HttpSettings {
                        http2_keep_alive: Some(proto::connection_pool_settings::Http2KeepAlive {
                            interval: Some(prost_types::Duration {
                                seconds: 10,
                                nanos: 0,
                            }),
                            timeout: None,
                        }),
                        ..Default::default()
                    }),
                    tcp: None,
                })
            },
            "http2 keepalive without a timeout",
        ),
        (
            "hbone endpoint without identity",
            |c| c.clusters[0].endpoints[0].identity.clear(),
            "has no identity",
        ),
        (
            "port too large",
            |c| c.services[0].ports[0].port = 70000,
            "invalid port",
        ),
        (
            "bad header name",
            |c| {
                c.services[0].http_routes[0].headers = Some(proto::Headers {
                    request: Some(proto::HeaderOperations {
                        set: BTreeMap::from([("bad header".to_owned(), "v".to_owned())]),
                        ..Default::default()
                    }),
                    response: None,
                })
            },
            "invalid header name",
        ),
        (
            "unknown retry condition",
            |c| {
                c.services[0].http_routes[0].retries = Some(proto::HttpRetry {
                    attempts: 1,
                    per_try_timeout: None,
                    retry_on: "sometimes".to_owned(),
                    ..Default::default()
                })
            },
            "unknown retryOn",
        ),
        (
            "redirect and route",
            |c| c.services[0].http_routes[0].redirect = Some(proto::HttpRedirect::default()),
            "exactly one of",
        ),
        (
            "redirect with uri and prefix rewrite",
            |c| {
                let route = &mut c.services[0].http_routes[0];
                route.route.clear();
                route.redirect = Some(proto::HttpRedirect {
                    uri: "/a".to_owned(),
                    prefix_rewrite: "/b".to_owned(),
                    ..Default::default()
                });
            },
            "only one of uri and prefixRewrite",
        ),
        (
            "fault percentage",
            |c| {
                c.services[0].http_routes[0].fault = Some(proto::HttpFaultInjection {
                    delay: None,
                    abort: Some(proto::http_fault_injection::Abort {
                        error_type: Some(
                            proto::http_fault_injection::abort::ErrorType::HttpStatus(503),
                        ),
                        percentage: Some(proto::Percent { value: 120.0 }),
                    }),
                })
            },
            "outside 0..100",
        ),
        (
            "malformed jwt claim key",
            |c| {
                c.authorization_policies.push(proto::L7Authorization {
                    name: "jwt".to_owned(),
                    namespace: "default".to_owned(),
                    rules: vec![proto::Rule {
                        when: vec![proto::Condition {
                            key: "request.auth.claims[]".to_owned(),
                            values: vec!["x".to_owned()],
                            not_values: Vec::new(),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            },
            "request.auth.claims[]",
        ),
        (
            "jwt output header",
            |c| {
                c.request_authentications
                    .push(proto::RequestAuthentication {
                        name: "jwt".to_owned(),
                        namespace: "default".to_owned(),
                        jwt_rules: vec![proto::JwtRule {
                            issuer: "issuer".to_owned(),
                            output_payload_to_header: "not a header".to_owned(),
                            ..Default::default()
                        }],
                        target_services: Vec::new(),
                    })
            },
            "request authentication default/jwt",
        ),
        (
            "duplicate cluster",
            |c| {
                let copy = c.clusters[0].clone();
                c.clusters.push(copy);
            },
            "defined twice",
        ),
    ];
    for (name, mutate, expected) in cases {
        let mut config = base();
        mutate(&mut config);
        let error = WaypointConfig::try_from(config)
            .expect_err(name)
            .to_string();
        assert!(error.contains(expected), "{name}: {error}");
    }
}

#[test]
fn spiffe_uris_parse_only_in_the_istio_shape() {
    assert!(
        "spiffe://cluster.local/ns/a/sa/b"
            .parse::<SpiffeId>()
            .is_ok()
    );
    for bad in [
        "spiffe://cluster.local/ns/a",
        "http://x/ns/a/sa/b",
        "spiffe://td/ns/a/sa/b/c",
    ] {
        assert!(bad.parse::<SpiffeId>().is_err(), "{bad}");
    }
}

#[test]
fn jwt_rules_apply_to_the_services_their_request_authentication_targets() {
    let authentication =
        |name: &str, issuer: &str, services: &[&str]| proto::RequestAuthentication {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            jwt_rules: vec![proto::JwtRule {
                issuer: issuer.to_owned(),
                ..Default::default()
            }],
            target_services: services.iter().map(|s| (*s).to_owned()).collect(),
        };
    let mut c = base();
    c.request_authentications = vec![
        authentication("whole", "https://all.example", &[]),
        authentication("reviews", "https://reviews.example", &[HOST]),
        authentication(
            "other",
            "https://other.example",
            &["other.default.svc.cluster.local"],
        ),
    ];
    let config = WaypointConfig::try_from(c).unwrap();
    let target = config
        .target_for("10.96.0.10:9080".parse().unwrap())
        .unwrap();
    let issuers: Vec<&str> = config
        .jwt_providers_for(&target)
        .iter()
        .map(|p| p.issuer.as_str())
        .collect();
    assert_eq!(issuers, ["https://all.example", "https://reviews.example"]);
    // Without any RequestAuthentication there is nothing to validate.
    let config = WaypointConfig::try_from(base()).unwrap();
    let target = config
        .target_for("10.96.0.10:9080".parse().unwrap())
        .unwrap();
    assert!(config.jwt_providers_for(&target).is_empty());
}

/// [`base`] with its cluster's one endpoint given by `name`, outside the mesh.
fn by_name(name: &str) -> proto::WaypointConfig {
    let mut config = base();
    config.clusters[0].endpoints = vec![proto::Endpoint {
        address: String::new(),
        hostname: name.to_owned(),
        identity: String::new(),
        tunnel: proto::EndpointTunnel::None as i32,
        ..endpoint()
    }];
    config
}

#[test]
fn endpoints_by_name_take_the_addresses_last_resolved() {
    let unresolved = WaypointConfig::try_from(by_name("api.example.com")).unwrap();
    let cluster = unresolved.cluster(CLUSTER).unwrap();
    assert!(cluster.endpoints.is_empty(), "no address before an answer");
    assert_eq!(cluster.hostnames, ["api.example.com"]);

    let names = ResolvedNames::from([(
        "api.example.com".to_owned(),
        vec!["192.0.2.1".parse().unwrap(), "2001:db8::1".parse().unwrap()],
    )]);
    let resolved = WaypointConfig::from_proto(by_name("api.example.com"), &names).unwrap();
    let addresses: Vec<String> = resolved
        .cluster(CLUSTER)
        .unwrap()
        .endpoints
        .iter()
        .map(|e| (e.address.to_string(), e.tunnel))
        .map(|(a, t)| {
            assert_eq!(t, Tunnel::Plain);
            a
        })
        .collect();
    assert_eq!(addresses, ["192.0.2.1:9080", "[2001:db8::1]:9080"]);

    // A name inside the mesh has no identity to verify: refused.
    let mut hbone = by_name("api.example.com");
    hbone.clusters[0].endpoints[0].tunnel = proto::EndpointTunnel::Hbone as i32;
    assert!(WaypointConfig::from_proto(hbone, &names).is_err());
}

fn tracing_at(percentage: f64) -> proto::Tracing {
    proto::Tracing {
        provider: "otel".to_owned(),
        collector: vec!["10.0.0.99:4317".to_owned()],
        random_sampling_percentage: percentage,
        ..Default::default()
    }
}

#[test]
fn a_services_own_telemetry_decides_its_traffic_and_the_waypoints_the_rest() {
    let mut proto = base();
    proto.tracing = Some(tracing_at(100.0));
    proto.workloads = vec![direct_workload()];
    proto.services[0].telemetry = Some(proto::ServiceTelemetry {
        tracing: Some(tracing_at(0.0)),
        access_log_disabled: true,
        metric_overrides: Vec::new(),
        access_logs: Vec::new(),
    });
    let mut other = proto.services[0].clone();
    other.hostname = "ratings.default.svc.cluster.local".to_owned();
    other.vips = vec!["10.96.0.11".to_owned()];
    other.telemetry = None;
    proto.services.push(other);
    let config = WaypointConfig::try_from(proto.clone()).unwrap();
    let telemetry = |authority: &str| {
        let target = config.target_for(authority.parse().unwrap());
        assert!(target.is_some(), "{authority}");
        let telemetry = config.telemetry_for(target.as_ref());
        (
            telemetry.tracing.as_ref().map(|t| t.sampling_percentage),
            telemetry.access_log_disabled,
        )
    };
    assert_eq!(telemetry("10.96.0.10:9080"), (Some(0.0), true));
    assert_eq!(telemetry("10.96.0.11:9080"), (Some(100.0), false));
    // A workload addressed directly takes the waypoint's, even one backing the service.
    assert_eq!(telemetry("10.0.0.5:9080"), (Some(100.0), false));
    assert!(!config.telemetry_for(None).access_log_disabled);

    // A service's telemetry without tracing: its requests are not traced at all.
    proto.services[0].telemetry = Some(proto::ServiceTelemetry {
        tracing: None,
        access_log_disabled: false,
        metric_overrides: Vec::new(),
        access_logs: Vec::new(),
    });
    let config = WaypointConfig::try_from(proto.clone()).unwrap();
    let target = config.target_for("10.96.0.10:9080".parse().unwrap());
    assert!(config.telemetry_for(target.as_ref()).tracing.is_none());

    // A bad percentage there rejects the configuration, naming the service.
    proto.services[0].telemetry = Some(proto::ServiceTelemetry {
        tracing: Some(tracing_at(101.0)),
        access_log_disabled: false,
        metric_overrides: Vec::new(),
        access_logs: Vec::new(),
    });
    let error = WaypointConfig::try_from(proto).unwrap_err().to_string();
    assert!(
        error.contains(HOST) && error.contains("random_sampling_percentage"),
        "{error}"
    );
}

#[test]
fn connection_pool_keepalives_are_read_for_the_upstream() {
    let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    let mut config = base();
    config.clusters[0].connection_pool = Some(proto::ConnectionPoolSettings {
        tcp: Some(proto::connection_pool_settings::TcpSettings {
            tcp_keepalive: Some(proto::connection_pool_settings::TcpKeepalive {
                probes: 0,
                time: secs(60),
                interval: None,
            }),
            ..Default::default()
        }),
        http: Some(proto::connection_pool_settings::HttpSettings {
            http2_keep_alive: Some(proto::connection_pool_settings::Http2KeepAlive {
                interval: secs(10),
                timeout: secs(2),
            }),
            ..Default::default()
        }),
    });
    let name = config.clusters[0].name.clone();
    let config = WaypointConfig::try_from(config).unwrap();
    let limits = &config.cluster(&name).unwrap().limits;
    assert_eq!(
        limits.tcp_keepalive,
        Some(weft_hbone::Keepalive {
            time: Some(Duration::from_secs(60)),
            interval: None,
            probes: None,
        })
    );
    assert_eq!(
        limits.http2_keepalive,
        Some((Duration::from_secs(10), Duration::from_secs(2)))
    );
}

mod retries;
mod session;
mod upstream_tls;
