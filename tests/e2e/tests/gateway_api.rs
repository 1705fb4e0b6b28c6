//! The Gateway API for the mesh end to end, with the real binaries: an HTTPRoute attached to
//! the `reviews` Service (`parentRefs` kind Service, the GAMMA pattern) is compiled by the
//! controller into the waypoint's routes; a client pod's requests reach the waypoint over HBONE
//! through its node agent and are routed to the per-version Services' pods: a header match, a
//! weighted split, a segment-prefix URL rewrite with a request header, and a mirror. Needs root.

use std::{collections::BTreeMap, time::Duration};

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_service};
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};

const WAYPOINT: &str = "waypoint";

/// `reviews` uses the waypoint; `reviews-v1`..`v3` select one version each (the backends).
fn services() -> String {
    let mut yaml = reviews_service(false);
    for (i, version) in ["v1", "v2", "v3"].iter().enumerate() {
        yaml.push_str(&format!(
            r#"---
apiVersion: v1
kind: Service
metadata: {{name: reviews-{version}, namespace: shop}}
spec:
  clusterIP: 10.96.0.{}
  selector: {{app: reviews, version: {version}}}
  ports:
  - {{name: http, port: 80, targetPort: 8080}}
"#,
            31 + i
        ));
    }
    yaml
}

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 80}]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-rewritten, value: "yes"}]}}
    backendRefs: [{name: reviews-v3, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters:
    - {type: RequestMirror, requestMirror: {backendRef: {name: reviews-v3, port: 80}}}
    backendRefs: [{name: reviews-v1, port: 80}]
  - backendRefs: [{name: reviews-v1, port: 80, weight: 80}, {name: reviews-v2, port: 80, weight: 20}]
"#;

/// `status version` of `count` answers to `path` of the Service.
fn versions(mesh: &Mesh, path: &str, count: u32, args: &[&str]) -> BTreeMap<String, u32> {
    mesh.versions(&format!("http://{VIP}{path}"), count, args)
}

#[test]
fn an_http_route_attached_to_a_service_routes_through_the_waypoint() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::app("reviews-v3", "node2", "shop", "reviews", "v3"),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: format!("{}---\n{}", services(), waypoint_resources("shop")),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    // Before the route, every version answers (the service's own balancing).
    let before = versions(&mesh, "/before", 60, &["-H", "end-user: jason"]);
    assert!(
        before.len() > 1,
        "one version only before the route: {before:?}"
    );

    mesh.write_waypoint_config(WAYPOINT, "30-reviews-route.yaml", ROUTE)
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));

    // Header match: jason goes to v2 only.
    let jason = versions(&mesh, "/header", 20, &["-H", "end-user: jason"]);
    assert_eq!(jason, BTreeMap::from([("200 v2".to_string(), 20)]));

    // URL rewrite of a whole path segment, with a request header set: v3 sees `/new/...`.
    let rewritten = mesh.curl_with("client", &[&format!("http://{VIP}/old/item?id=7")]);
    assert_eq!(rewritten.status, 200, "{}", rewritten.body);
    let body = rewritten.json();
    assert_eq!(body["version"], "v3", "{body}");
    assert_eq!(body["path"], "/new/item?id=7", "{body}");
    assert_eq!(body["headers"]["x-rewritten"], "yes", "{body}");
    // `/oldish` is not in the segment `/old`: not rewritten, routed by the split.
    let not_a_segment = mesh.curl_with("client", &[&format!("http://{VIP}/oldish")]);
    assert_eq!(not_a_segment.status, 200, "{}", not_a_segment.body);
    let body = not_a_segment.json();
    assert_eq!(body["path"], "/oldish", "{body}");
    assert_ne!(body["version"], "v3", "{body}");

    // Mirror: v1 answers, v3 receives a copy, its Host kept (istiod's default since 1.28).
    let mirrored = mesh.curl_with("client", &[&format!("http://{VIP}/mirror/check-42")]);
    assert_eq!(mirrored.status, 200, "{}", mirrored.body);
    assert_eq!(mirrored.json()["version"], "v1");
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            mesh.log_of("app-reviews-v3")
                .lines()
                .any(|l| l.contains("/mirror/check-42") && !l.contains("-shadow"))
        }),
        "the mirror target got no copy:\n{}",
        mesh.log_of("app-reviews-v3")
    );

    // The weighted split: 80/20 over 1,000 requests, within six points.
    let split = versions(&mesh, "/split", 1000, &[]);
    let v1 = split.get("200 v1").copied().unwrap_or(0);
    let v2 = split.get("200 v2").copied().unwrap_or(0);
    println!("HTTPRoute 80/20 split over 1000 requests: v1 {v1}, v2 {v2}");
    assert_eq!(v1 + v2, 1000, "{split:?}");
    assert!((740..=860).contains(&v1), "v1 {v1} of 1000: {split:?}");
}
