//! Parent ports, GRPCRoute and TCPRoute, and where Gateway API routes stand beside
//! VirtualServices and waypoint Gateways.

use super::*;

#[test]
fn a_parent_port_restricts_the_route_to_it() {
    let routes = routes_of(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: port, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: reviews, port: 9080}, {kind: Service, name: reviews, port: 1234}]
  rules:
  - backendRefs: [{name: reviews-v2, port: 9080}]
"#,
    );
    assert_eq!(
        routes.len(),
        2,
        "one route for the port the service has, then the default"
    );
    assert_eq!(routes[0].r#match[0].port, 9080);
}

#[test]
fn grpc_routes_match_service_and_method_paths() {
    let routes = routes_of(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: reviews}]
  rules:
  - matches:
    - method: {service: reviews.Reviews, method: Get}
    - method: {service: reviews.Reviews}
    - method: {method: List}
      headers: [{name: X-Tenant, value: a}]
    backendRefs: [{name: reviews-v2, port: 9080}]
"#,
    );
    assert_eq!(
        uris(&routes),
        vec![
            exact("/reviews.Reviews/Get"),
            prefix("/reviews.Reviews/"),
            regex("/[^/]+/List"),
            None
        ]
    );
    assert!(routes[2].r#match[0].headers.contains_key("x-tenant"));
}

#[test]
fn tcp_routes_split_opaque_ports() {
    let translation = translate(
        &index(
            r#"apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec:
  clusterIP: 10.96.0.40
  ports: [{name: tcp, port: 5432}]
---
apiVersion: v1
kind: Service
metadata: {name: db-replica, namespace: shop}
spec:
  clusterIP: 10.96.0.41
  ports: [{name: tcp, port: 5432}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{kind: Service, name: db}]
  rules:
  - backendRefs: [{name: db, port: 5432, weight: 80}, {name: db-replica, port: 5432, weight: 20}]
"#,
        ),
        &MeshSettings::default(),
    );
    assert!(
        translation.problems.is_empty(),
        "{:#?}",
        translation.problems
    );
    let db = translation.waypoints["shop/waypoint"]
        .services
        .iter()
        .find(|s| s.name == "db")
        .unwrap();
    let weights: Vec<(String, i32)> = db.tcp_routes[0]
        .route
        .iter()
        .map(|d| (d.destination.as_ref().unwrap().host.clone(), d.weight))
        .collect();
    assert_eq!(
        weights,
        vec![
            ("db.shop.svc.cluster.local".to_owned(), 80),
            ("db-replica.shop.svc.cluster.local".to_owned(), 20)
        ]
    );
    assert_eq!(db.tcp_routes.len(), 2, "the route, then the default");
}

const VIRTUAL_SERVICE: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: shop, creationTimestamp: "2020-01-01T00:00:00Z"}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: reviews-v2}}]}]
"#;

#[test]
fn routes_of_the_waypoint_namespace_come_before_virtual_services() {
    // An HTTPRoute in the waypoint's namespace comes first (Istio's consumer override), then
    // the older VirtualService for the host: the waypoint applies both, in that order.
    let route = format!(
        "{}---\n{VIRTUAL_SERVICE}",
        http_route("newer", "  - backendRefs: [{name: reviews, port: 9080}]")
    );
    let (routes, problems) = reviews(&route);
    assert!(problems.is_empty(), "{problems:#?}");
    let sources: Vec<&str> = routes.iter().map(|r| r.virtual_service.as_str()).collect();
    assert_eq!(sources, ["shop/newer", "shop/vs", ""]);
}

#[test]
fn routes_of_other_namespaces_are_not_applied_by_the_waypoint() {
    // A consumer route (of a namespace that is neither the waypoint's nor the service's) is
    // left out by Istio's `getVirtualServiceForWaypoint`, however old, and reported.
    let consumer = |created: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: consumer, namespace: other, creationTimestamp: "{created}"}}
spec:
  parentRefs: [{{kind: Service, name: reviews, namespace: shop}}]
  rules:
  - backendRefs: [{{name: ratings, port: 8080}}]
---
{VIRTUAL_SERVICE}"#
        )
    };
    for created in ["2025-01-01T00:00:00Z", "2010-01-01T00:00:00Z"] {
        let (routes, problems) = reviews(&consumer(created));
        let sources: Vec<&str> = routes.iter().map(|r| r.virtual_service.as_str()).collect();
        assert_eq!(sources, ["shop/vs", ""], "created {created}");
        assert!(
            problems.iter().any(|p| p.name == "consumer"
                && matches!(&p.problem, TranslateProblem::OutsideWaypointNamespaces { waypoint, .. } if waypoint == "shop/waypoint")),
            "{problems:#?}"
        );
    }
}

#[test]
fn routes_attached_to_a_waypoint_gateway_are_not_applied() {
    let routes = routes_of(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: on-gateway, namespace: shop}
spec:
  parentRefs: [{name: waypoint}]
  rules:
  - backendRefs: [{name: reviews-v2, port: 9080}]
"#,
    );
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].name, "default");
}

#[test]
fn a_split_routes_span_is_named_after_the_virtual_service_istiod_makes_for_the_service() {
    // istiod (1.27 and later) names the VirtualService it makes of a namespace's routes for a
    // Service by their merge key: namespace, the parentRef's port if any, host. A route to
    // several backends takes it as its span's operation (`GetRouteOperation`).
    let split = |parent: &str| {
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split, namespace: shop}}
spec:
  parentRefs: [{parent}]
  rules:
  - backendRefs: [{{name: reviews, port: 9080, weight: 90}}, {{name: reviews-v2, port: 9080, weight: 10}}]
"#
        )
    };
    let routes = routes_of(&split(r#"{group: "", kind: Service, name: reviews}"#));
    assert_eq!(routes[0].operations, [format!("shop~{REVIEWS}:9080/*")]);
    let routes = routes_of(&split(
        r#"{group: "", kind: Service, name: reviews, port: 9080}"#,
    ));
    assert_eq!(
        routes[0].operations,
        [format!("shop~9080~{REVIEWS}:9080/*")]
    );
}
