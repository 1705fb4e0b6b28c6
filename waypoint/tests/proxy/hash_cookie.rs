//! A DestinationRule's `consistentHash.httpCookie` through the real proxy: a request without
//! the cookie gets one generated (Envoy's `Set-Cookie`, with the rule's path, ttl and
//! attributes) and goes where that cookie's value hashes, so the client's next requests, which
//! carry it, reach the same endpoint.

use std::collections::BTreeSet;

use http::{Request, StatusCode, header};
use waypoint::testing::{FakeEndpoint, TestMesh};
use weft_proto::waypoint as proto;

use crate::harness::*;

/// The whole service's cluster over `endpoints`, hashed on cookie `session` generated for
/// 30 s on `/` with `SameSite=Lax` and `Secure`.
fn hashed_on_a_cookie(endpoints: &[&FakeEndpoint]) -> proto::Cluster {
    use proto::load_balancer_settings::consistent_hash_lb::{CookieAttribute, HashKey, HttpCookie};
    let mut cluster = cluster("", endpoints);
    let attribute = |name: &str, value: &str| CookieAttribute {
        name: name.to_owned(),
        value: value.to_owned(),
    };
    cluster.load_balancer = Some(proto::LoadBalancerSettings {
        lb_policy: Some(proto::load_balancer_settings::LbPolicy::ConsistentHash(
            proto::load_balancer_settings::ConsistentHashLb {
                hash_key: Some(HashKey::HttpCookie(HttpCookie {
                    name: "session".to_owned(),
                    path: "/".to_owned(),
                    ttl: Some(prost_types::Duration {
                        seconds: 30,
                        nanos: 0,
                    }),
                    attributes: vec![attribute("SameSite", "Lax"), attribute("Secure", "")],
                })),
                table: None,
            },
        )),
        slow_start: None,
    });
    cluster
}

fn served_by(headers: &http::HeaderMap) -> String {
    headers
        .get("x-served-by")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_generated_cookie_keeps_the_client_on_one_endpoint() {
    let mesh = TestMesh::new();
    let mut endpoints = Vec::new();
    for name in ["v1", "v2", "v3", "v4"] {
        endpoints
            .push(FakeEndpoint::start(&mesh, name, "default", &format!("reviews-{name}")).await);
    }
    let refs: Vec<&FakeEndpoint> = endpoints.iter().collect();
    let harness = Harness::start(mesh, &refs).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("")], vec![hashed_on_a_cookie(&refs)]))
        .unwrap();

    let mut values = BTreeSet::new();
    // Each client connects anew, so each gets a cookie of its own (its connection's hash).
    for client in 0..6 {
        let (status, headers, _) = harness.get("/").await;
        assert_eq!(status, StatusCode::OK);
        let first = served_by(&headers);
        assert!(!first.is_empty());
        let set_cookie: Vec<&str> = headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        let [set_cookie] = set_cookie[..] else {
            panic!("client {client}: one Set-Cookie expected, got {set_cookie:?}");
        };
        let value = set_cookie
            .strip_prefix("session=\"")
            .and_then(|rest| rest.split_once('"'))
            .map(|(value, _)| value.to_owned())
            .unwrap_or_else(|| panic!("client {client}: {set_cookie}"));
        assert_eq!(value.len(), 16, "{set_cookie}");
        assert!(value.chars().all(|c| c.is_ascii_hexdigit()), "{set_cookie}");
        assert_eq!(
            set_cookie,
            format!("session=\"{value}\"; Max-Age=30; Path=/; SameSite=Lax; Secure; HttpOnly")
        );
        values.insert(value.clone());
        // The cookie sent back, on new connections: the endpoint the first request reached,
        // and no new cookie.
        for _ in 0..5 {
            let request = Request::builder()
                .uri("/")
                .header("host", HOST)
                .header(header::COOKIE, format!("theme=dark; session=\"{value}\""))
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let (status, headers, _) = harness.send(request).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                served_by(&headers),
                first,
                "client {client}, cookie {value}"
            );
            assert!(headers.get(header::SET_COOKIE).is_none());
        }
    }
    assert_eq!(values.len(), 6, "one cookie per connection: {values:?}");
}
