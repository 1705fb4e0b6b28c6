//! Status conditions of mesh routes, one reason per case, as the Gateway API names them.

use std::path::Path;

use serde_json::json;

use super::*;
use crate::loader;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec:
  clusterIP: 10.96.0.30
  ports: [{name: http, port: 8080}]
"#;

fn statuses(route_yaml: &str) -> Vec<RouteStatus> {
    let text = format!("{MESH}---\n{route_yaml}");
    let report = loader::load_str(Path::new("test.yaml"), &text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    route_statuses(&index, &MeshSettings::default())
}

fn route(parents: &str, backends: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: shop, generation: 3}}
spec:
  parentRefs: {parents}
  rules:
  - backendRefs: {backends}
"#
    )
}

/// (type, status, reason) of one condition.
type Expected = (&'static str, bool, &'static str);

/// (type, status, reason) of each parent's conditions.
fn conditions(status: &RouteStatus) -> Vec<Vec<Expected>> {
    status
        .parents
        .iter()
        .map(|p| {
            p.conditions
                .iter()
                .map(|c| (c.condition_type, c.status, c.reason))
                .collect()
        })
        .collect()
}

#[test]
fn conditions_carry_the_gateway_api_reasons() {
    let accepted = ("Accepted", true, "Accepted");
    let resolved = ("ResolvedRefs", true, "ResolvedRefs");
    let cases: [(&str, &str, &str, Vec<Vec<Expected>>); 6] = [
        (
            "a Service parent with a backend that resolves",
            "[{kind: Service, name: reviews}]",
            "[{name: reviews, port: 9080}]",
            vec![vec![accepted, resolved]],
        ),
        (
            "BackendNotFound: no such Service",
            "[{kind: Service, name: reviews}]",
            "[{name: nowhere, port: 80}]",
            vec![vec![accepted, ("ResolvedRefs", false, "BackendNotFound")]],
        ),
        (
            "RefNotPermitted: another namespace without a ReferenceGrant",
            "[{kind: Service, name: reviews}]",
            "[{name: ratings, namespace: other, port: 8080}]",
            vec![vec![accepted, ("ResolvedRefs", false, "RefNotPermitted")]],
        ),
        (
            "InvalidKind: a backend that is not a Service",
            "[{kind: Service, name: reviews}]",
            "[{group: example.com, kind: Bucket, name: b}]",
            vec![vec![accepted, ("ResolvedRefs", false, "InvalidKind")]],
        ),
        (
            "NoMatchingParent: the parent Service does not exist",
            "[{kind: Service, name: gone}]",
            "[{name: reviews, port: 9080}]",
            vec![vec![("Accepted", false, "NoMatchingParent"), resolved]],
        ),
        (
            "a waypoint Gateway takes no routes (Istio); an ingress Gateway is not ours",
            "[{name: waypoint}, {name: ingress}]",
            "[{name: reviews, port: 9080}]",
            vec![vec![("Accepted", false, "NotAllowedByListeners"), resolved]],
        ),
    ];
    for (case, parents, backends, expected) in cases {
        let statuses = statuses(&route(parents, backends));
        assert_eq!(statuses.len(), 1, "{case}");
        assert_eq!(conditions(&statuses[0]), expected, "{case}");
    }
}

#[test]
fn only_routes_with_parents_of_ours_get_a_status() {
    assert!(statuses(&route("[{name: ingress}]", "[{name: reviews, port: 9080}]")).is_empty());
}

#[test]
fn status_json_keeps_transition_times_of_unchanged_conditions() {
    let status = statuses(&route(
        "[{kind: Service, name: reviews}]",
        "[{name: nowhere, port: 80}]",
    ))
    .remove(0);
    let previous = json!({"parents": [{
        "parentRef": {"kind": "Service", "name": "reviews"},
        "controllerName": MESH_CONTROLLER,
        "conditions": [
            {"type": "Accepted", "status": "True", "lastTransitionTime": "2030-01-01T00:00:00Z"},
            {"type": "ResolvedRefs", "status": "True", "lastTransitionTime": "2030-01-01T00:00:00Z"},
        ],
    }]});
    let parents = status.parents_json(&previous, "2031-01-01T00:00:00Z");
    assert_eq!(parents.len(), 1);
    assert_eq!(parents[0]["controllerName"], MESH_CONTROLLER);
    assert_eq!(
        parents[0]["parentRef"],
        json!({"kind": "Service", "name": "reviews"})
    );
    let conditions = parents[0]["conditions"].as_array().unwrap();
    assert_eq!(
        conditions[0]["lastTransitionTime"], "2030-01-01T00:00:00Z",
        "unchanged"
    );
    assert_eq!(conditions[1]["status"], "False");
    assert_eq!(conditions[1]["reason"], "BackendNotFound");
    assert_eq!(
        conditions[1]["lastTransitionTime"], "2031-01-01T00:00:00Z",
        "changed"
    );
    assert_eq!(conditions[1]["observedGeneration"], 3);
}
