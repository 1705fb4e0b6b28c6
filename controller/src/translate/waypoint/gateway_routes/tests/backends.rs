//! Weighted backends, ReferenceGrant, invalid backends, timeouts and retries, and a filter the
//! waypoint does not apply.

use super::*;

#[test]
fn backends_are_weighted_as_istio_weighs_them() {
    let routes = routes_of(&http_route(
        "split",
        r#"  - matches: [{path: {type: Exact, value: /split}}]
    backendRefs: [{name: reviews, port: 9080, weight: 90}, {name: reviews-v2, port: 9080, weight: 10}]
  - matches: [{path: {type: Exact, value: /default-weight}}]
    backendRefs: [{name: reviews, port: 9080}, {name: reviews-v2, port: 9080}]
  - matches: [{path: {type: Exact, value: /zero}}]
    backendRefs: [{name: reviews, port: 9080, weight: 0}, {name: reviews-v2, port: 9080, weight: 3}]
  - matches: [{path: {type: Exact, value: /none}}]
    backendRefs: [{name: reviews, port: 9080, weight: 0}]"#,
    ));
    let v1 = "outbound|9080||reviews.shop.svc.cluster.local".to_owned();
    let v2 = "outbound|9080||reviews-v2.shop.svc.cluster.local".to_owned();
    let by_path = |path: &str| {
        routes
            .iter()
            .find(|r| r.r#match.first().and_then(|m| m.uri.clone()) == exact(path))
            .unwrap()
            .clone()
    };
    assert_eq!(
        clusters(&by_path("/split")),
        vec![(v1.clone(), 90), (v2.clone(), 10)]
    );
    assert_eq!(
        clusters(&by_path("/default-weight")),
        vec![(v1, 1), (v2.clone(), 1)]
    );
    assert_eq!(
        clusters(&by_path("/zero")),
        vec![(v2, 0)],
        "a single backend is unweighted"
    );
    let none = by_path("/none");
    assert!(none.route.is_empty());
    assert_eq!(
        none.direct_response.unwrap().status,
        500,
        "no backend with weight: 500"
    );
}

#[test]
fn cross_namespace_backends_need_a_reference_grant() {
    let route = http_route(
        "cross",
        r#"  - backendRefs: [{name: ratings, namespace: other, port: 8080, weight: 50}, {name: reviews, port: 9080, weight: 50}]"#,
    );
    let (routes, problems) = reviews(&route);
    let ratings = "outbound|8080||ratings.other.svc.cluster.local";
    assert_ne!(
        clusters(&routes[0])[0].0,
        ratings,
        "not granted: no cluster of it"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.kind == crate::model::ResourceKind::HTTPRoute
                && p.to_string().contains("RefNotPermitted")),
        "{problems:#?}"
    );
    let grant = r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: from-shop, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: shop}]
  to: [{group: "", kind: Service, name: ratings}]
"#;
    let translation = translate(
        &index(&format!("{route}---\n{grant}")),
        &MeshSettings::default(),
    );
    assert!(
        translation.problems.is_empty(),
        "{:#?}",
        translation.problems
    );
    let config = &translation.waypoints["shop/waypoint"];
    let service = config
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .unwrap();
    assert_eq!(
        clusters(&service.http_routes[0])[0],
        (ratings.to_owned(), 50)
    );
    assert!(
        config.clusters.iter().any(|c| c.name == ratings),
        "its cluster is built"
    );
}

#[test]
fn every_backend_invalid_answers_500() {
    let (routes, problems) = reviews(&http_route(
        "missing",
        "  - backendRefs: [{name: nowhere, port: 80}]",
    ));
    assert!(routes[0].route.is_empty());
    assert_eq!(routes[0].direct_response.as_ref().unwrap().status, 500);
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("BackendNotFound"))
    );
}

#[test]
fn an_invalid_backend_beside_valid_ones_keeps_its_share_answered_500() {
    // The Gateway API: "500 status MUST be returned for requests that would have otherwise
    // been routed to an invalid backend". Istio keeps the backend's weight on a cluster that
    // does not exist and sets Envoy's cluster_not_found_response_code to 500 for these routes.
    let translation = translate(
        &index(&http_route(
            "mixed",
            "  - backendRefs: [{name: reviews, port: 9080, weight: 3}, {name: nowhere, port: 80, weight: 1}]",
        )),
        &MeshSettings::default(),
    );
    let config = &translation.waypoints["shop/waypoint"];
    let routes = &config
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .unwrap()
        .http_routes;
    let split = clusters(&routes[0]);
    assert_eq!(split.len(), 2, "{split:?}");
    assert_eq!(split[0], (format!("outbound|9080||{REVIEWS}"), 3));
    assert_eq!(split[1].1, 1, "the invalid backend keeps its share");
    assert!(routes[0].direct_response.is_none());
    assert_eq!(
        routes[0].cluster_not_found_response_code,
        wp::ClusterNotFoundResponseCode::InternalServerError as i32
    );
    assert!(
        !config.clusters.iter().any(|c| c.name == split[1].0),
        "nothing serves the invalid backend's cluster"
    );
    assert!(
        translation
            .problems
            .iter()
            .any(|p| p.to_string().contains("BackendNotFound")),
        "{:#?}",
        translation.problems
    );
}

#[test]
fn timeouts_and_retries_convert_as_istio_converts_them() {
    let routes = routes_of(&http_route(
        "timeouts",
        &format!(
            r#"  - matches: [{{path: {{type: Exact, value: /a}}}}]
    timeouts: {{request: 10s, backendRequest: 2s}}
    retry: {{attempts: 3, codes: [503, 504], backoff: 2s}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /b}}}}]
    timeouts: {{request: 10s, backendRequest: 2s}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /c}}}}]
    retry: {{attempts: 0}}
{TO_REVIEWS}"#
        ),
    ));
    let secs = |s| {
        Some(prost_types::Duration {
            seconds: s,
            nanos: 0,
        })
    };
    assert_eq!(routes[0].timeout, secs(10));
    let retry = routes[0].retries.as_ref().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.per_try_timeout, secs(2));
    assert_eq!(retry.backoff, secs(2));
    assert_eq!(
        retry.retry_on,
        "connect-failure,refused-stream,unavailable,cancelled,503,504"
    );
    // Without `retry`, backendRequest is the route timeout and the mesh default retries.
    assert_eq!(routes[1].timeout, secs(2));
    assert_eq!(
        routes[1].retries,
        Some(crate::translate::waypoint::route::default_retries())
    );
    assert_eq!(routes[2].retries.as_ref().unwrap().attempts, 0);
}

#[test]
fn a_filter_the_waypoint_does_not_apply_fails_closed() {
    let (routes, problems) = reviews(&http_route(
        "auth",
        &format!(
            r#"  - filters: [{{type: ExtensionRef, extensionRef: {{group: example.com, kind: Auth, name: a}}}}]
{TO_REVIEWS}"#
        ),
    ));
    assert_eq!(routes[0].direct_response.as_ref().unwrap().status, 500);
    assert!(routes[0].route.is_empty());
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("ExtensionRef"))
    );
}
