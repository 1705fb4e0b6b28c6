//! Rules of the waypoint translation, one table or case each; the goldens in
//! `translate/testdata` show whole configurations.

use std::path::Path;

use super::*;
use crate::index::ConfigIndex;
use crate::loader;
use crate::translate::resolve::qualify_host;
use crate::translate::translate;

/// An index from YAML without validation: translation must cope with whatever it holds.
fn unvalidated(text: &str) -> ConfigIndex {
    let report = loader::load_str(Path::new("test.yaml"), text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let mut index = ConfigIndex::default();
    for resource in report.resources {
        index.insert(resource.resource, Vec::new());
    }
    index
}

pub(crate) fn validated(text: &str) -> ConfigIndex {
    let report = loader::load_str(Path::new("test.yaml"), text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    index
}

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: n1, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {nodeName: n1, serviceAccountName: reviews, containers: [{name: r, image: r}]}
status: {podIP: 10.0.0.11}
"#;

fn config(index: &ConfigIndex) -> wp::WaypointConfig {
    let mut problems = Vec::new();
    let mut configs = waypoint_configs(index, &MeshSettings::default(), &mut problems);
    configs
        .remove("shop/waypoint")
        .expect("the waypoint's config")
}

#[test]
fn hosts_are_qualified_as_istio_qualifies_them() {
    let settings = MeshSettings::default();
    let cases = [
        ("reviews", "reviews.shop.svc.cluster.local"),
        // Istio expands names without dots only.
        ("reviews.other", "reviews.other"),
        (
            "reviews.other.svc.cluster.local",
            "reviews.other.svc.cluster.local",
        ),
        ("*.example.com", "*.example.com"),
        ("*", "*"),
        ("10.0.0.1", "10.0.0.1"),
        ("fd00::1", "fd00::1"),
    ];
    for (host, expected) in cases {
        assert_eq!(qualify_host(&settings, host, "shop"), expected, "{host}");
    }
    assert!(host_covers("*", "reviews.shop.svc.cluster.local"));
    assert!(host_covers(
        "*.shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local"
    ));
    assert!(!host_covers(
        "*.other.svc.cluster.local",
        "reviews.shop.svc.cluster.local"
    ));
    assert!(host_covers(
        "Reviews.Shop.svc.cluster.local",
        "reviews.shop.svc.cluster.local"
    ));
}

#[test]
fn port_protocols_follow_istio_naming() {
    use k8s_openapi::api::core::v1::ServicePort;
    let cases = [
        (Some("http"), None, wp::Protocol::Http),
        (Some("http-web"), None, wp::Protocol::Http),
        (Some("HTTP2-api"), None, wp::Protocol::Http2),
        (Some("grpc"), None, wp::Protocol::Grpc),
        (Some("grpc-web"), None, wp::Protocol::Grpc),
        (Some("tcp-db"), None, wp::Protocol::Tcp),
        (Some("mongo"), None, wp::Protocol::Tcp),
        (Some("https"), None, wp::Protocol::Tls),
        (Some("tls-x"), None, wp::Protocol::Tls),
        (Some("web"), None, wp::Protocol::Unspecified),
        (None, None, wp::Protocol::Unspecified),
        // appProtocol wins over the name.
        (Some("http"), Some("tcp"), wp::Protocol::Tcp),
        (Some("web"), Some("kubernetes.io/h2c"), wp::Protocol::Http2),
        (Some("web"), Some("kubernetes.io/ws"), wp::Protocol::Http),
    ];
    for (name, app_protocol, expected) in cases {
        let port = ServicePort {
            name: name.map(str::to_owned),
            app_protocol: app_protocol.map(str::to_owned),
            port: 80,
            ..Default::default()
        };
        assert_eq!(port_protocol(&port), expected, "{name:?} {app_protocol:?}");
    }
}

#[test]
fn virtual_services_for_a_host_merge_in_istio_order() {
    // Istio's waypoints concatenate every VirtualService for the host (istio/istio#59484) in
    // `VirtualServicesForGateway` order, keeping those of the waypoint's or the service's
    // namespace (`getVirtualServiceForWaypoint`).
    let index = validated(&format!(
        r#"{MESH}
---
apiVersion: v1
kind: Namespace
metadata: {{name: other}}
---
# Only visible in its own namespace: not to the waypoint in shop.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: private, namespace: other}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  exportTo: ["."]
  http: [{{name: private, route: [{{destination: {{host: reviews.shop.svc.cluster.local}}}}]}}]
---
# Public, a wildcard: merged in creation order with the other public ones.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: wildcard, namespace: shop, creationTimestamp: "2030-01-02T00:00:00Z"}}
spec:
  hosts: ["*.shop.svc.cluster.local"]
  http: [{{name: wildcard, route: [{{destination: {{host: reviews}}}}]}}]
---
# Public and older: before the wildcard.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: older, namespace: shop, creationTimestamp: "2030-01-01T00:00:00Z"}}
spec:
  hosts: [reviews]
  http:
  - {{name: older, match: [{{uri: {{prefix: /older}}}}], route: [{{destination: {{host: reviews}}}}]}}
---
# Private to the waypoint's namespace: Istio's first list, however young.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: own, namespace: shop, creationTimestamp: "2030-01-03T00:00:00Z"}}
spec:
  hosts: [reviews]
  exportTo: ["."]
  http:
  - {{name: own, match: [{{uri: {{prefix: /own}}}}], route: [{{destination: {{host: reviews}}}}]}}
---
# Bound to a gateway only: not the mesh's.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [reviews]
  gateways: [shop/ingress]
  http: [{{name: edge, route: [{{destination: {{host: reviews}}}}]}}]
---
# Exported to shop, but of neither the waypoint's namespace nor the service's: ignored there.
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: exported, namespace: other}}
spec:
  hosts: [reviews.shop.svc.cluster.local]
  exportTo: [shop]
  http: [{{name: exported, route: [{{destination: {{host: reviews.shop.svc.cluster.local}}}}]}}]
"#
    ));
    let mut problems = Vec::new();
    let configs = waypoint_configs(&index, &MeshSettings::default(), &mut problems);
    let reviews = &configs["shop/waypoint"].services[0];
    let names: Vec<(&str, &str)> = reviews
        .http_routes
        .iter()
        .map(|r| (r.name.as_str(), r.virtual_service.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("own", "shop/own"),
            ("older", "shop/older"),
            ("wildcard", "shop/wildcard"),
            ("default", "")
        ]
    );
    let outside: Vec<String> = problems
        .iter()
        .filter(|p| {
            matches!(
                p.problem,
                TranslateProblem::OutsideWaypointNamespaces { .. }
            )
        })
        .map(|p| format!("{}: {}", p.name, p.problem))
        .collect();
    assert_eq!(
        outside,
        [
            "exported: spec.hosts: reviews.shop.svc.cluster.local is served by waypoint \
          shop/waypoint, which applies only the routes of its own namespace and of the \
          service's; this one is ignored there"
        ],
        "{problems:#?}"
    );
}

#[test]
fn served_services_exclude_the_waypoint_and_opted_out_services() {
    let index = validated(&format!(
        r#"{MESH}
---
apiVersion: v1
kind: Service
metadata: {{name: waypoint, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}}}
spec:
  clusterIP: 10.96.0.2
  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}
  ports: [{{name: mesh, port: 15008}}]
---
apiVersion: v1
kind: Service
metadata: {{name: health, namespace: shop, labels: {{istio.io/use-waypoint: none}}}}
spec:
  clusterIP: 10.96.0.3
  selector: {{app: health}}
  ports: [{{name: http, port: 80}}]
"#
    ));
    let hosts: Vec<String> = config(&index)
        .services
        .into_iter()
        .map(|s| s.hostname)
        .collect();
    assert_eq!(hosts, ["reviews.shop.svc.cluster.local"]);
}

#[test]
fn unresolvable_destinations_keep_their_virtual_service_and_name_a_missing_cluster() {
    // Istio keeps the VirtualService: istiod names the cluster (GetDestinationCluster) and
    // builds none, so only what is routed there fails (503 NC); the other routes work.
    let index = validated(&format!(
        r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - name: to-v9
    match: [{{uri: {{prefix: /v9}}}}]
    route: [{{destination: {{host: reviews, subset: v9}}}}]
  - name: to-nowhere
    match: [{{uri: {{prefix: /nowhere}}}}]
    route: [{{destination: {{host: nowhere}}}}]
  - name: to-port-81
    match: [{{uri: {{prefix: /p81}}}}]
    route: [{{destination: {{host: reviews, port: {{number: 81}}}}}}]
  - name: mirrored
    route: [{{destination: {{host: reviews, subset: v1}}}}]
    mirror: {{host: reviews, subset: v8}}
"#
    ));
    let mut problems = Vec::new();
    let config = waypoint_configs(&index, &MeshSettings::default(), &mut problems)
        .remove("shop/waypoint")
        .unwrap();
    let reviews = &config.services[0];
    let names: Vec<&str> = reviews
        .http_routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["to-v9", "to-nowhere", "to-port-81", "mirrored", "default"]
    );
    let first_cluster =
        |route: &wp::HttpRoute| route.route[0].destination.as_ref().unwrap().cluster.clone();
    let missing = [
        "outbound|9080|v9|reviews.shop.svc.cluster.local",
        "outbound|9080||nowhere.shop.svc.cluster.local",
        "outbound|81||reviews.shop.svc.cluster.local",
    ];
    for (route, cluster) in reviews.http_routes.iter().zip(missing) {
        assert_eq!(first_cluster(route), cluster, "{}", route.name);
    }
    let mirror = reviews.http_routes[3].mirrors[0]
        .destination
        .as_ref()
        .unwrap();
    assert_eq!(
        mirror.cluster,
        "outbound|9080|v8|reviews.shop.svc.cluster.local"
    );
    let defined: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        defined,
        [
            "outbound|9080||reviews.shop.svc.cluster.local",
            "outbound|9080|v1|reviews.shop.svc.cluster.local",
        ]
    );
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    for expected in [
        "VirtualService shop/reviews: spec.http[0].route[0].destination.subset: subset \"v9\" of reviews.shop.svc.cluster.local is not defined by a DestinationRule: requests of reviews.shop.svc.cluster.local routed there are answered 503 NC (no cluster outbound|9080|v9|reviews.shop.svc.cluster.local)",
        "VirtualService shop/reviews: spec.http[1].route[0].destination: \"nowhere.shop.svc.cluster.local\" is not a known service",
        "VirtualService shop/reviews: spec.http[2].route[0].destination.port.number: reviews.shop.svc.cluster.local has no port 81",
        "VirtualService shop/reviews: spec.http[3].mirror.subset: subset \"v8\"",
    ] {
        assert!(
            messages.iter().any(|m| m.starts_with(expected)),
            "{expected}\nnot in {messages:#?}"
        );
    }
    // And the waypoint accepts it.
    assert!(::waypoint::model::WaypointConfig::try_from(config).is_ok());
}

#[test]
fn untranslatable_values_are_reported_and_translation_never_panics() {
    // Past validation, on purpose: nonsense in every field translation reads.
    let index = unvalidated(&format!(
        r#"{MESH}
---
apiVersion: v1
kind: Service
metadata: {{name: odd, namespace: shop}}
spec:
  clusterIP: not-an-ip
  selector: {{app: odd}}
  ports: [{{name: http, port: -5, targetPort: nope}}, {{port: 70000}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: odd-0, namespace: shop, labels: {{app: odd}}}}
spec: {{containers: [{{name: c, image: c}}]}}
status: {{podIP: 999.1.1.1, podIPs: [{{ip: "::zz"}}]}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - timeout: forever
    route:
    - {{destination: {{host: reviews}}, weight: -3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {{tcp: {{connectTimeout: soon}}}}
    outlierDetection: {{interval: "-1s", consecutiveErrors: -2}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: odd, namespace: shop}}
spec:
  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]
  rules:
  - to: [{{operation: {{ports: ["http", "99999999999"]}}}}]
"#
    ));
    let translation = translate(&index, &MeshSettings::default());
    let messages: Vec<String> = translation
        .problems
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with(
            "VirtualService shop/reviews: spec.http[0].timeout: \"forever\" is not valid"
        )),
        "{messages:#?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with(
            "DestinationRule shop/reviews: spec.trafficPolicy.connectionPool.tcp.connectTimeout"
        )),
        "{messages:#?}"
    );
    let config = &translation.waypoints["shop/waypoint"];
    let reviews = config
        .services
        .iter()
        .find(|s| s.name == "reviews")
        .unwrap();
    // An invalid value skips the VirtualService (validation refuses it before it gets here);
    // the default route stays.
    assert_eq!(reviews.http_routes.len(), 1);
    assert_eq!(reviews.http_routes[0].name, "default");
    // Nothing invalid reaches the wire: no port out of range, no unparsable address.
    let odd = config.services.iter().find(|s| s.name == "odd").unwrap();
    assert!(odd.vips.is_empty());
    assert!(odd.ports.iter().all(|p| p.port > 0 && p.port < 65536));
    assert!(config.clusters.iter().all(|c| {
        c.endpoints
            .iter()
            .all(|e| e.address.parse::<std::net::IpAddr>().is_ok())
    }));
    // And the waypoint accepts what is left.
    assert!(
        ::waypoint::model::WaypointConfig::try_from(config.clone()).is_ok(),
        "{config:#?}"
    );
}

#[test]
fn waypoints_admit_namespaces_by_their_listeners_allowed_routes() {
    let gateway = |allowed: &str| -> KubernetesGateway {
        serde_yaml::from_str(&format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: w, namespace: infra}}\nspec:\n  gatewayClassName: istio-waypoint\n  listeners:\n  - {{name: mesh, port: 15008, protocol: HBONE{allowed}}}\n"
        ))
        .unwrap()
    };
    let index = validated(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {team: a, tier: web}}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: billing, labels: {team: b}}\n",
    );
    let cases = [
        ("", [true, false, false]),
        (
            ", allowedRoutes: {namespaces: {from: Same}}",
            [true, false, false],
        ),
        (
            ", allowedRoutes: {namespaces: {from: All}}",
            [true, true, true],
        ),
        (
            ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}",
            [false, true, false],
        ),
        (
            ", allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: team, operator: In, values: [a, b]}]}}}",
            [false, true, true],
        ),
        (
            ", allowedRoutes: {namespaces: {from: Selector, selector: {matchExpressions: [{key: tier, operator: DoesNotExist}]}}}",
            [true, false, true],
        ),
        (
            ", allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {kubernetes.io/metadata.name: billing}}}}",
            [false, false, true],
        ),
        // A selector that is missing selects nothing.
        (
            ", allowedRoutes: {namespaces: {from: Selector}}",
            [false, false, false],
        ),
    ];
    for (allowed, expected) in cases {
        let gw = gateway(allowed);
        let admitted = ["infra", "shop", "billing"].map(|ns| resolve::admits(&index, &gw, ns));
        assert_eq!(admitted, expected, "{allowed}");
    }
}

/// An OpenTelemetry collector's Service in `observability` and its one pod (10.0.0.50,
/// target port 14317).
pub(crate) const OTEL_COLLECTOR: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: observability}
spec:
  clusterIP: 10.96.0.77
  selector: {app: otel-collector}
  ports: [{name: grpc-otlp, port: 4317, targetPort: 14317}]
---
apiVersion: v1
kind: Pod
metadata: {name: otel-collector-0, namespace: observability, labels: {app: otel-collector}}
spec: {nodeName: n1, containers: [{name: c, image: c}]}
status: {podIP: 10.0.0.50}
"#;

#[test]
fn the_mesh_default_tracing_provider_reaches_waypoints_at_its_endpoints() {
    let index = validated(&format!("{MESH}{OTEL_COLLECTOR}"));
    let translate = |mesh_config: &str| {
        let mesh = crate::mesh_config::parse("mesh", mesh_config).unwrap();
        let settings = MeshSettings {
            mesh: std::sync::Arc::new(crate::mesh_config::MeshConfigWatch::fixed(mesh)),
            ..Default::default()
        };
        waypoint_configs(&index, &settings, &mut Vec::new())
            .remove("shop/waypoint")
            .unwrap()
            .tracing
    };
    let provider = |service: &str| {
        format!(
            "defaultConfig: {{tracing: {{sampling: 25}}}}\ndefaultProviders: {{tracing: [otel]}}\nextensionProviders: [{{name: otel, opentelemetry: {{service: {service}, port: 4317}}}}]"
        )
    };
    let tracing = translate(&provider(
        "observability/otel-collector.observability.svc.cluster.local",
    ))
    .expect("tracing for the waypoint");
    assert_eq!(tracing.provider, "otel");
    assert_eq!(tracing.collector, ["10.0.0.50:14317"]);
    assert_eq!(tracing.random_sampling_percentage, 25.0);
    assert_eq!(tracing.service_name, "waypoint.shop");
    assert_eq!(tracing.http, None, "without `http`, spans go over gRPC");
    assert_eq!(tracing.grpc, None);
    // `http`: OTLP/HTTP with the provider's path, timeout and headers, as istiod fills
    // Envoy's `http_service`.
    let over_http = translate(
        "defaultProviders: {tracing: [otel]}\nextensionProviders: [{name: otel, opentelemetry: {service: observability/otel-collector.observability.svc.cluster.local, port: 4317, http: {path: /v1/traces, timeout: 1500ms, headers: [{name: x-tenant, value: team-a}]}}}]",
    )
    .expect("tracing over HTTP");
    assert_eq!(over_http.collector, ["10.0.0.50:14317"]);
    assert_eq!(
        over_http.http,
        Some(wp::OtlpHttp {
            path: "/v1/traces".into(),
            timeout: Some(prost_types::Duration {
                seconds: 1,
                nanos: 500_000_000
            }),
            headers: vec![wp::OtlpHttpHeader {
                name: "x-tenant".into(),
                value: "team-a".into()
            }],
        })
    );
    assert_eq!(over_http.grpc, None);
    // `grpc`: the gRPC export's deadline and metadata, as istiod fills Envoy's
    // `grpc_service.timeout` and `initial_metadata`.
    let over_grpc = translate(
        "defaultProviders: {tracing: [otel]}\nextensionProviders: [{name: otel, opentelemetry: {service: observability/otel-collector.observability.svc.cluster.local, port: 4317, grpc: {timeout: 2s, initialMetadata: [{name: Authentication, value: token}]}}}]",
    )
    .expect("tracing over gRPC with its settings");
    assert_eq!(over_grpc.http, None);
    assert_eq!(
        over_grpc.grpc,
        Some(wp::OtlpGrpc {
            timeout: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0
            }),
            initial_metadata: vec![wp::OtlpHttpHeader {
                name: "authentication".into(),
                value: "token".into()
            }],
        })
    );
    // A host the registry does not have configures no tracer, as istiod's `LookupCluster`
    // failing does (`pilot/pkg/networking/core/tracing.go`).
    assert_eq!(translate(&provider("collector.example.com")), None);
    // Providers declared but none the default: no tracing, as in Istio without Telemetry.
    assert_eq!(
        translate("extensionProviders: [{name: otel, opentelemetry: {service: c, port: 4317}}]"),
        None
    );
    assert_eq!(config(&index).tracing, None);
}

/// WorkloadEntries at waypoints, as the agents send their traffic there: a Service the waypoint
/// serves has the entries it selects among its endpoints (the agents list them as its
/// endpoints), and an entry that uses the waypoint is served at its own address.
#[test]
fn workload_entries_are_endpoints_and_direct_workloads_of_their_waypoint() {
    let index = validated(&format!(
        r#"{MESH}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: reviews-vm, namespace: shop, labels: {{app: reviews}}}}
spec: {{address: 192.0.2.80, serviceAccount: reviews-vm, weight: 3, labels: {{version: v2}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: vm-waypoint, namespace: shop, labels: {{istio.io/waypoint-for: workload}}}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {{name: db-vm, namespace: shop, labels: {{istio.io/use-waypoint: vm-waypoint, networking.istio.io/tunnel: http}}}}
spec: {{address: 192.0.2.81, serviceAccount: db}}
"#
    ));
    let reviews = config(&index);
    let endpoint = reviews
        .clusters
        .iter()
        .flat_map(|c| &c.endpoints)
        .find(|e| e.address == "192.0.2.80")
        .unwrap_or_else(|| panic!("no WorkloadEntry endpoint in {:?}", reviews.clusters));
    assert_eq!(endpoint.port, 9080, "no targetPort: the service port");
    assert_eq!(endpoint.tunnel, wp::EndpointTunnel::None as i32);
    assert_eq!(
        endpoint.identity,
        "spiffe://cluster.local/ns/shop/sa/reviews-vm"
    );
    assert_eq!(
        (endpoint.workload_name.as_str(), endpoint.weight),
        ("reviews-vm", 3)
    );
    assert_eq!(
        endpoint.labels.get("version").map(String::as_str),
        Some("v2")
    );
    // Not a workload of the service waypoint: the namespace's waypoint takes no workload traffic.
    assert!(
        reviews
            .workloads
            .iter()
            .all(|w| !w.address.starts_with("192.0.2."))
    );

    let mut problems = Vec::new();
    let vm_waypoint = waypoint_configs(&index, &MeshSettings::default(), &mut problems)
        .remove("shop/vm-waypoint")
        .expect("the workload waypoint's config");
    let direct: Vec<_> = vm_waypoint
        .workloads
        .iter()
        .map(|w| (w.address.as_str(), w.identity.as_str(), w.tunnel))
        .collect();
    assert_eq!(
        direct,
        [(
            "192.0.2.81",
            "spiffe://cluster.local/ns/shop/sa/db",
            wp::EndpointTunnel::Hbone as i32
        )]
    );
}

#[test]
fn keepalives_of_the_connection_pool_reach_the_waypoint() {
    let index = validated(&format!(
        r#"{MESH}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec: {{host: reviews, trafficPolicy: {{connectionPool: {{
  tcp: {{tcpKeepalive: {{time: 60s, interval: 5s, probes: 3}}}},
  http: {{http2KeepAlive: {{interval: 10s, timeout: 2s}}}}}}}}}}
"#
    ));
    let config = config(&index);
    let pool = config
        .clusters
        .iter()
        .find(|c| c.host == "reviews.shop.svc.cluster.local")
        .and_then(|c| c.connection_pool)
        .expect("the service's cluster has the rule's pool");
    let secs = |seconds| Some(prost_types::Duration { seconds, nanos: 0 });
    assert_eq!(
        pool.tcp.and_then(|t| t.tcp_keepalive),
        Some(wp::connection_pool_settings::TcpKeepalive {
            probes: 3,
            time: secs(60),
            interval: secs(5),
        })
    );
    assert_eq!(
        pool.http.and_then(|h| h.http2_keep_alive),
        Some(wp::connection_pool_settings::Http2KeepAlive {
            interval: secs(10),
            timeout: secs(2),
        })
    );
}

mod authorization;
mod retries;
mod traffic_policy;
