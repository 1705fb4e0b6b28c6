use std::net::SocketAddr;

use super::super::plan::{hash_key, key_hash};
use super::super::tests::{endpoint, least_request};
use super::*;
use crate::model::{CookieTemplate, HashTable};
use crate::upstream::HashInput;

/// A cookie key named `name` that generates no cookie (no `ttl`).
pub(in super::super) fn key(name: &str) -> HashCookie {
    HashCookie {
        name: name.to_owned(),
        generated: None,
    }
}

fn template(max_age: i64, path: &str, attributes: &[(&str, &str)]) -> CookieTemplate {
    CookieTemplate {
        max_age,
        path: path.to_owned(),
        attributes: attributes
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn hashed_on(cookie: HashCookie) -> Cluster {
    let mut cluster = least_request(vec![endpoint(1), endpoint(2), endpoint(3)]);
    cluster.load_balancer = LoadBalancer::ConsistentHash(
        HashKey::Cookie(cookie),
        HashTable::Ring { minimum_size: 1024 },
    );
    cluster
}

fn cookies(value: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::COOKIE, value.parse().unwrap());
    headers
}

const REMOTE: &str = "10.0.0.1:40000";
const LOCAL: &str = "10.0.0.9:8080";

fn addresses() -> (SocketAddr, SocketAddr) {
    (REMOTE.parse().unwrap(), LOCAL.parse().unwrap())
}

#[test]
fn the_cookie_is_read_as_envoy_parses_it() {
    // Quotes around the value go (a generated cookie comes back quoted), leading spaces too.
    let headers = cookies("a=1;   session=\"0123abcd\"; other=x");
    assert_eq!(request_cookie(&headers, "session"), Some("0123abcd"));
    // The first pair of the name wins, across headers, even empty.
    let mut headers = cookies("session=; x=1");
    headers.append(http::header::COOKIE, "session=late".parse().unwrap());
    assert_eq!(request_cookie(&headers, "session"), Some(""));
    let mut headers = cookies("x=1");
    headers.append(http::header::COOKIE, "session=late".parse().unwrap());
    assert_eq!(request_cookie(&headers, "session"), Some("late"));
    // A pair without `=` is skipped; a name is matched whole.
    assert_eq!(
        request_cookie(&cookies("session; sessionid=2"), "session"),
        None
    );
    // A lone quote is kept.
    assert_eq!(
        request_cookie(&cookies("session=\"a"), "session"),
        Some("\"a")
    );
}

#[test]
fn the_set_cookie_reads_as_envoys() {
    let full = template(30, "/", &[("SameSite", "Lax"), ("Secure", "")]);
    assert_eq!(
        full.set_cookie("session", "00ff"),
        "session=\"00ff\"; Max-Age=30; Path=/; SameSite=Lax; Secure; HttpOnly"
    );
    // A ttl under a second is a session cookie, without Max-Age; no path, no Path.
    assert_eq!(
        template(0, "", &[]).set_cookie("session", "00ff"),
        "session=\"00ff\"; HttpOnly"
    );
}

#[test]
fn a_cookie_is_generated_only_for_a_request_without_it_and_with_a_ttl() {
    let (remote, local) = addresses();
    let generating = HashCookie {
        name: "session".to_owned(),
        generated: Some(template(30, "/app", &[("SameSite", "Strict")])),
    };
    let cluster = hashed_on(generating.clone());
    let generated = generate_cookie(&cluster, &http::HeaderMap::new(), remote, local).unwrap();
    // Envoy's value: the 16 hex digits of xxHash64 of the remote then the local address.
    assert_eq!(
        generated.value,
        format!("{:016x}", key_hash(&format!("{REMOTE}{LOCAL}")))
    );
    assert_eq!(generated.value.len(), 16);
    assert_eq!(
        generated.set_cookie,
        format!(
            "session=\"{}\"; Max-Age=30; Path=/app; SameSite=Strict; HttpOnly",
            generated.value
        )
    );
    // One connection, one cookie; another connection, another.
    let again = generate_cookie(&cluster, &cookies("other=1"), remote, local).unwrap();
    assert_eq!(again, generated);
    let elsewhere = generate_cookie(
        &cluster,
        &http::HeaderMap::new(),
        "10.0.0.1:40001".parse().unwrap(),
        local,
    )
    .unwrap();
    assert_ne!(elsewhere.value, generated.value);
    // An empty value is no cookie: one is generated.
    assert!(generate_cookie(&cluster, &cookies("session="), remote, local).is_some());
    // A request with the cookie gets none.
    assert_eq!(
        generate_cookie(&cluster, &cookies("session=abc"), remote, local),
        None
    );
    // Without a ttl, for another key, or for a cluster of hosts found by name: none.
    let no_ttl = hashed_on(key("session"));
    assert_eq!(
        generate_cookie(&no_ttl, &http::HeaderMap::new(), remote, local),
        None
    );
    let mut by_header = hashed_on(generating.clone());
    by_header.load_balancer = LoadBalancer::ConsistentHash(
        HashKey::Header(http::HeaderName::from_static("x-user")),
        HashTable::Ring { minimum_size: 1024 },
    );
    assert_eq!(
        generate_cookie(&by_header, &http::HeaderMap::new(), remote, local),
        None
    );
    let mut dynamic = hashed_on(generating);
    dynamic.dynamic_dns = true;
    assert_eq!(
        generate_cookie(&dynamic, &http::HeaderMap::new(), remote, local),
        None
    );
}

#[test]
fn the_request_is_hashed_on_its_cookie_else_the_generated_one() {
    let key = HashKey::Cookie(key("session"));
    let input = |headers, generated_cookie| HashInput {
        session_endpoint: None,
        headers,
        query: None,
        source_ip: "10.0.0.1".parse().unwrap(),
        generated_cookie,
    };
    let none = http::HeaderMap::new();
    assert_eq!(
        hash_key(&key, &input(&none, Some("00ff"))).as_deref(),
        Some("00ff")
    );
    assert_eq!(hash_key(&key, &input(&none, None)), None);
    // The cookie Set-Cookie gave back hashes as the generated value did.
    let returned = cookies("session=\"00ff\"");
    assert_eq!(
        hash_key(&key, &input(&returned, None)).as_deref(),
        Some("00ff")
    );
    let empty = cookies("session=");
    assert_eq!(hash_key(&key, &input(&empty, None)), None);
    assert_eq!(
        hash_key(&key, &input(&empty, Some("00ff"))).as_deref(),
        Some("00ff")
    );
}
