//! Gateway API routes at the waypoint, one feature per case: each asserts the compiled route
//! table of the `reviews` Service (what the waypoint's own model then evaluates).

use std::path::Path;

use weft_proto::waypoint as wp;
use wp::string_match::MatchType;

use crate::index::ConfigIndex;
use crate::loader;
use crate::translate::{MeshSettings, TranslateError, TranslateProblem, translate};

mod attachment;
mod backends;
mod cors_session;

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
                prefix_rewrite: String::new(),
            },
            wp::HttpRedirect {
                uri: "/c".to_owned(),
                authority: String::new(),
                redirect_port: Some(RedirectPort::Port(8443)),
                scheme: String::new(),
                redirect_code: 0,
                prefix_rewrite: String::new(),
            },
            wp::HttpRedirect {
                uri: String::new(),
                authority: "other.example".to_owned(),
                redirect_port: Some(RedirectPort::DerivePort(
                    RedirectPortSelection::FromRequestPort as i32
                )),
                scheme: String::new(),
                redirect_code: 0,
                prefix_rewrite: String::new(),
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
fn prefix_redirects_replace_the_matched_segments() {
    // No problem reported (routes_of asserts it): the filter is applied.
    let routes = routes_of(&http_route(
        "moved",
        r#"  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /new}}}]
  - matches: [{path: {type: PathPrefix, value: /}}]
    filters: [{type: RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /root}}}]"#,
    ));
    let redirects: Vec<(Option<wp::StringMatch>, String, String)> = routes
        .iter()
        .filter_map(|r| {
            let redirect = r.redirect.as_ref()?;
            Some((
                r.r#match.first()?.uri.clone(),
                redirect.uri.clone(),
                redirect.prefix_rewrite.clone(),
            ))
        })
        .collect();
    // Envoy's path-separated prefix `/old` with `prefix_rewrite: /new`: `/old` becomes `/new`
    // and `/old/page` becomes `/new/page`; the segment-prefix form matched the `/` too.
    assert_eq!(
        redirects,
        vec![
            (exact("/old"), String::new(), "/new".to_owned()),
            (prefix("/old/"), String::new(), "/new/".to_owned()),
            (prefix("/"), String::new(), "/root".to_owned()),
        ]
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
