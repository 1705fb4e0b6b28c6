//! The `CORS` filter (Istio's `createCorsFilter`) and a rule's `sessionPersistence` (Envoy's
//! stateful session).

use super::*;

#[test]
fn a_cors_filter_is_the_corspolicy_istio_converts_it_into() {
    let routes = routes_of(&http_route(
        "cors",
        &format!(
            r#"  - matches: [{{path: {{type: Exact, value: /a}}}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://app.example", "*", "https://*", "https://*.example.com", ""]
        allowMethods: [GET, POST]
        allowHeaders: [x-a]
        exposeHeaders: [x-b]
        allowCredentials: true
        maxAge: 60
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /b}}}}]
    filters:
    - {{type: CORS, cors: {{allowOrigins: ["https://b.example"], allowCredentials: false}}}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /c}}}}]
    filters:
    - {{type: CORS, cors: {{allowOrigins: ["https://c.example"], maxAge: 0}}}}
{TO_REVIEWS}"#
        ),
    ));
    let cors = |path: &str| {
        routes
            .iter()
            .find(|r| r.r#match.first().and_then(|m| m.uri.clone()) == exact(path))
            .unwrap_or_else(|| panic!("{path}"))
            .clone()
    };
    let a = cors("/a");
    assert!(a.direct_response.is_none(), "applied, not answered 500");
    assert_eq!(clusters(&a).len(), 1);
    assert_eq!(
        a.cors_policy,
        Some(wp::CorsPolicy {
            allow_origins: vec![
                exact("https://app.example").unwrap(),
                regex(r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+$").unwrap(),
                prefix("https://").unwrap(),
                regex(r"^https://.*\.example\.com$").unwrap(),
            ],
            allow_methods: vec!["GET".to_owned(), "POST".to_owned()],
            allow_headers: vec!["x-a".to_owned()],
            expose_headers: vec!["x-b".to_owned()],
            max_age: Some(prost_types::Duration {
                seconds: 60,
                nanos: 0
            }),
            allow_credentials: Some(true),
            forward_not_matching_preflights: Some(false),
        })
    );
    let b = cors("/b").cors_policy.unwrap();
    // The CRD's default maxAge; credentials false is left unset, as Istio leaves it.
    assert_eq!(
        (b.max_age.map(|d| d.seconds), b.allow_credentials),
        (Some(5), None)
    );
    assert_eq!(cors("/c").cors_policy.unwrap().max_age, None);
}

#[test]
fn session_persistence_becomes_the_rules_stateful_session() {
    let (routes, problems) = reviews(&http_route(
        "sticky",
        &format!(
            r#"  - matches: [{{path: {{type: Exact, value: /cookie}}}}]
    sessionPersistence: {{}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /permanent}}}}]
    sessionPersistence: {{sessionName: shop-session, absoluteTimeout: 1h, cookieConfig: {{lifetimeType: Permanent}}}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /header}}}}]
    sessionPersistence: {{sessionName: X-Session, type: Header}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /session-timeout}}}}]
    sessionPersistence: {{sessionName: s, absoluteTimeout: 1h}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /bad-name}}}}]
    sessionPersistence: {{sessionName: "a b"}}
{TO_REVIEWS}
  - matches: [{{path: {{type: Exact, value: /none}}}}]
{TO_REVIEWS}"#
        ),
    ));
    let session = |path: &str| {
        routes
            .iter()
            .find(|r| r.r#match.first().and_then(|m| m.uri.clone()) == exact(path))
            .unwrap_or_else(|| panic!("{path}"))
            .stateful_session
            .clone()
    };
    let cookie = wp::StatefulSessionKind::Cookie as i32;
    let header = wp::StatefulSessionKind::Header as i32;
    let expected = [
        (
            "/cookie",
            Some(wp::StatefulSession {
                kind: cookie,
                name: "shop.sticky.0".to_owned(),
                cookie_path: "/".to_owned(),
                cookie_ttl: None,
            }),
        ),
        (
            "/permanent",
            Some(wp::StatefulSession {
                kind: cookie,
                name: "shop-session".to_owned(),
                cookie_path: "/".to_owned(),
                cookie_ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
            }),
        ),
        (
            "/header",
            Some(wp::StatefulSession {
                kind: header,
                name: "x-session".to_owned(),
                cookie_path: String::new(),
                cookie_ttl: None,
            }),
        ),
        (
            "/session-timeout",
            Some(wp::StatefulSession {
                kind: cookie,
                name: "s".to_owned(),
                cookie_path: "/".to_owned(),
                cookie_ttl: None,
            }),
        ),
        ("/bad-name", None),
        ("/none", None),
    ];
    for (path, want) in expected {
        assert_eq!(session(path), want, "{path}");
    }
    let reported: Vec<String> = problems.iter().map(|p| p.problem.to_string()).collect();
    assert_eq!(reported.len(), 2, "{reported:#?}");
    assert!(
        reported[0].contains("spec.rules[3].sessionPersistence.absoluteTimeout")
            && reported[0].contains("Permanent"),
        "{reported:#?}"
    );
    assert!(
        reported[1].contains("spec.rules[4].sessionPersistence.sessionName")
            && reported[1].contains("not a valid cookie name"),
        "{reported:#?}"
    );
}
