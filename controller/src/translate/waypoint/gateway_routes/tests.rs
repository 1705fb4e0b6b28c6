//! Gateway API routes at the waypoint, one feature per case: each asserts the compiled route
//! table of the `reviews` Service (what the waypoint's own model then evaluates).

use std::path::Path;

use weft_proto::waypoint as wp;
use wp::string_match::MatchType;

use crate::index::ConfigIndex;
use crate::loader;
use crate::translate::{MeshSettings, TranslateError, TranslateProblem, translate};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
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
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec:
  clusterIP: 10.96.0.30
  selector: {app: ratings}
  ports: [{name: http, port: 8080}]
"#;

const REVIEWS: &str = "reviews.shop.svc.cluster.local";

fn index(extra: &str) -> ConfigIndex {
    let text = format!("{MESH}---\n{extra}");
    let report = loader::load_str(Path::new("test.yaml"), &text);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    index
}

/// The `reviews` routes at the waypoint and every translation problem.
fn reviews(extra: &str) -> (Vec<wp::HttpRoute>, Vec<TranslateError>) {
    let translation = translate(&index(extra), &MeshSettings::default());
    let config = &translation.waypoints["shop/waypoint"];
    let service = config
        .services
        .iter()
        .find(|s| s.hostname == REVIEWS)
        .expect("reviews is served");
    (service.http_routes.clone(), translation.problems)
}

fn routes_of(extra: &str) -> Vec<wp::HttpRoute> {
    let (routes, problems) = reviews(extra);
    assert!(problems.is_empty(), "{problems:#?}");
    routes
}

fn exact(s: &str) -> Option<wp::StringMatch> {
    Some(wp::StringMatch {
        match_type: Some(MatchType::Exact(s.to_owned())),
    })
}

fn prefix(s: &str) -> Option<wp::StringMatch> {
    Some(wp::StringMatch {
        match_type: Some(MatchType::Prefix(s.to_owned())),
    })
}

fn regex(s: &str) -> Option<wp::StringMatch> {
    Some(wp::StringMatch {
        match_type: Some(MatchType::Regex(s.to_owned())),
    })
}

fn uris(routes: &[wp::HttpRoute]) -> Vec<Option<wp::StringMatch>> {
    routes
        .iter()
        .map(|r| r.r#match.first().and_then(|m| m.uri.clone()))
        .collect()
}

fn clusters(route: &wp::HttpRoute) -> Vec<(String, i32)> {
    route
        .route
        .iter()
        .map(|d| (d.destination.as_ref().unwrap().cluster.clone(), d.weight))
        .collect()
}

fn http_route(name: &str, rules: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: reviews}}]
  rules:
{rules}
"#
    )
}

const TO_REVIEWS: &str = "    backendRefs: [{name: reviews, port: 9080}]";

#[test]
fn matches_compile_as_istio_converts_them_with_segment_prefixes() {
    let routes = routes_of(&http_route(
        "matches",
        &format!(
            r#"  - matches:
    - path: {{type: PathPrefix, value: /api/}}
      headers: [{{name: X-User, value: jason}}, {{name: x-user, value: ignored}}, {{type: RegularExpression, name: x-v, value: "v[0-9]"}}]
      queryParams: [{{name: Debug, value: "1"}}]
      method: GET
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /health}}}}, {{path: {{type: RegularExpression, value: "/item/[0-9]+"}}}}]
{TO_REVIEWS}"#
        ),
    ));
    // Exact, then the two halves of the segment prefix, then the regex, then the default.
    assert_eq!(
        uris(&routes),
        vec![
            exact("/health"),
            exact("/api"),
            prefix("/api/"),
            regex("/item/[0-9]+"),
            None
        ]
    );
    let api = &routes[1].r#match[0];
    assert_eq!(api.method, exact("GET"));
    assert_eq!(
        api.headers.keys().collect::<Vec<_>>(),
        vec!["x-user", "x-v"],
        "header names are lowercase"
    );
    assert_eq!(
        api.headers["x-user"],
        exact("jason").unwrap(),
        "first entry per name counts"
    );
    assert_eq!(api.headers["x-v"], regex("v[0-9]").unwrap());
    assert_eq!(
        api.query_params["Debug"],
        exact("1").unwrap(),
        "query names keep their case"
    );
    assert_eq!(routes[1].name, "shop.matches.0");
    assert_eq!(routes[1].virtual_service, "shop/matches");
    assert_eq!(routes.last().unwrap().name, "default");
}

#[test]
fn matches_are_ordered_as_the_gateway_api_orders_them() {
    let older = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: z-older, namespace: shop, creationTimestamp: "2030-01-01T00:00:00Z"}
spec:
  parentRefs: [{kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: h, value: "1"}]}]
    backendRefs: [{name: reviews-v2, port: 9080}]
"#;
    let newer = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a-newer, namespace: shop, creationTimestamp: "2030-01-02T00:00:00Z"}
spec:
  parentRefs: [{kind: Service, name: reviews}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}, headers: [{name: h, value: "1"}]}]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /a}, method: POST}]
    backendRefs: [{name: reviews, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /a/longer}}]
    backendRefs: [{name: reviews, port: 9080}]
  - backendRefs: [{name: reviews, port: 9080}]
"#;
    let routes = routes_of(&format!("{newer}---\n{older}"));
    let order: Vec<(String, Option<wp::StringMatch>)> = routes
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.r#match.first().and_then(|m| m.uri.clone()),
            )
        })
        .collect();
    let expected = [
        // The longest prefix first (its exact half, then its `/` half).
        ("shop.a-newer.2", exact("/a/longer")),
        ("shop.a-newer.2", prefix("/a/longer/")),
        // Equal prefixes: the method match, then the header match of the older route, then
        // the same match of the newer route (each split into its exact and `/` halves, which
        // no request matches both of, so the order between matches is kept for every path).
        ("shop.a-newer.1", exact("/a")),
        ("shop.a-newer.1", prefix("/a/")),
        ("shop.z-older.0", exact("/a")),
        ("shop.z-older.0", prefix("/a/")),
        ("shop.a-newer.0", exact("/a")),
        ("shop.a-newer.0", prefix("/a/")),
        // A rule without matches, then the default.
        ("shop.a-newer.3", None),
        ("default", None),
    ];
    let expected: Vec<(String, Option<wp::StringMatch>)> = expected
        .into_iter()
        .map(|(n, u)| (n.to_owned(), u))
        .collect();
    assert_eq!(order, expected);
    assert_eq!(
        clusters(&routes[4]),
        vec![(
            "outbound|9080||reviews-v2.shop.svc.cluster.local".to_owned(),
            0
        )]
    );
}

#[test]
fn header_modifiers_apply_to_the_route_and_to_each_backend() {
    let routes = routes_of(&http_route(
        "headers",
        r#"  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Set, value: a}], add: [{name: x-add, value: b}], remove: [X-Gone]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: x-resp, value: c}]}
    backendRefs:
    - name: reviews
      port: 9080
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-backend, value: d}]}}]"#,
    ));
    let headers = routes[0].headers.as_ref().unwrap();
    let request = headers.request.as_ref().unwrap();
    assert_eq!(request.set["x-set"], "a");
    assert_eq!(request.add["x-add"], "b");
    assert_eq!(request.remove, vec!["x-gone"]);
    assert_eq!(headers.response.as_ref().unwrap().set["x-resp"], "c");
    let backend = routes[0].route[0].headers.as_ref().unwrap();
    assert_eq!(backend.request.as_ref().unwrap().set["x-backend"], "d");
}

#[test]
fn url_rewrites_replace_the_full_path_or_the_matched_prefix() {
    let routes = routes_of(&http_route(
        "rewrite",
        &format!(
            r#"  - matches: [{{path: {{type: PathPrefix, value: /old}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{hostname: new.example, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /new}}}}}}]
{TO_REVIEWS}
  - matches: [{{path: {{type: PathPrefix, value: /strip}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}}}]
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /full}}}}]
    filters: [{{type: URLRewrite, urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /replaced}}}}}}]
{TO_REVIEWS}"#
        ),
    ));
    let rewrites: Vec<(Option<wp::StringMatch>, wp::HttpRewrite)> = routes
        .iter()
        .filter_map(|r| Some((r.r#match.first()?.uri.clone(), r.rewrite.clone()?)))
        .collect();
    let uri = |uri: &str, authority: &str| wp::HttpRewrite {
        uri: uri.to_owned(),
        authority: authority.to_owned(),
        uri_regex_rewrite: None,
    };
    assert_eq!(
        rewrites,
        vec![
            (
                exact("/full"),
                wp::HttpRewrite {
                    uri: String::new(),
                    authority: String::new(),
                    uri_regex_rewrite: Some(wp::RegexRewrite {
                        r#match: "/.*".to_owned(),
                        rewrite: "/replaced".to_owned()
                    }),
                }
            ),
            // `/old` -> `/new`, `/old/x` -> `/new/x` (the waypoint replaces the matched prefix).
            (exact("/strip"), uri("/", "")),
            (prefix("/strip/"), uri("/", "")),
            (exact("/old"), uri("/new", "new.example")),
            (prefix("/old/"), uri("/new/", "new.example")),
        ]
    );
}

#[test]
fn redirects_follow_istio_port_and_status_rules() {
    let routes = routes_of(&http_route(
        "redirect",
        r#"  - matches: [{path: {type: Exact, value: /a}}]
    filters: [{type: RequestRedirect, requestRedirect: {scheme: https, hostname: secure.example, statusCode: 302}}]
  - matches: [{path: {type: Exact, value: /b}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /c}, port: 8443}}]
  - matches: [{path: {type: Exact, value: /d}}]
    filters: [{type: RequestRedirect, requestRedirect: {hostname: other.example}}]"#,
    ));
    use wp::http_redirect::{RedirectPort, RedirectPortSelection};
    let redirects: Vec<wp::HttpRedirect> =
        routes.iter().filter_map(|r| r.redirect.clone()).collect();
    assert_eq!(
        redirects,
        vec![
            wp::HttpRedirect {
                uri: String::new(),
                authority: "secure.example".to_owned(),
                redirect_port: Some(RedirectPort::DerivePort(
                    RedirectPortSelection::FromProtocolDefault as i32
                )),
                scheme: "https".to_owned(),
                redirect_code: 302,
            },
            wp::HttpRedirect {
                uri: "/c".to_owned(),
                authority: String::new(),
                redirect_port: Some(RedirectPort::Port(8443)),
                scheme: String::new(),
                redirect_code: 0,
            },
            wp::HttpRedirect {
                uri: String::new(),
                authority: "other.example".to_owned(),
                redirect_port: Some(RedirectPort::DerivePort(
                    RedirectPortSelection::FromRequestPort as i32
                )),
                scheme: String::new(),
                redirect_code: 0,
            },
        ]
    );
    assert!(
        routes[..3]
            .iter()
            .all(|r| r.route.is_empty() && r.retries.is_none())
    );
}

#[test]
fn mirrors_take_percent_or_fraction() {
    let routes = routes_of(&http_route(
        "mirror",
        &format!(
            r#"  - matches: [{{path: {{type: Exact, value: /a}}}}]
    filters:
    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: reviews-v2, port: 9080}}, percent: 25}}}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /b}}}}]
    filters:
    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: reviews-v2, port: 9080}}, fraction: {{numerator: 1, denominator: 8}}}}}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /c}}}}]
    filters:
    - {{type: RequestMirror, requestMirror: {{backendRef: {{name: reviews-v2, port: 9080}}}}}}
{TO_REVIEWS}"#
        ),
    ));
    let mirrors: Vec<(String, f64)> = routes
        .iter()
        .flat_map(|r| &r.mirrors)
        .map(|m| {
            (
                m.destination.as_ref().unwrap().cluster.clone(),
                m.percentage.as_ref().unwrap().value,
            )
        })
        .collect();
    let v2 = "outbound|9080||reviews-v2.shop.svc.cluster.local".to_owned();
    assert_eq!(
        mirrors,
        vec![(v2.clone(), 25.0), (v2.clone(), 12.5), (v2, 100.0)]
    );
}

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
