use std::cell::Cell;
use std::net::SocketAddr;

use super::super::tests::{endpoint, fresh_state, least_request, policy};
use super::super::{HashInput, Outcome};
use super::*;
use crate::model::CookieTemplate;

thread_local! {
    /// Endpoints [`session_choice`] compared with the session's address, on this thread.
    pub(super) static LOOKED_AT: Cell<usize> = const { Cell::new(0) };
}

fn cookie_session() -> StatefulSession {
    StatefulSession::Cookie {
        name: "sticky".to_owned(),
        template: CookieTemplate {
            max_age: 0,
            path: "/".to_owned(),
            attributes: Vec::new(),
        },
    }
}

fn header_session() -> StatefulSession {
    StatefulSession::Header {
        name: HeaderName::from_static("x-session"),
    }
}

fn headers(name: &str, value: &str) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    headers.insert(
        HeaderName::from_bytes(name.as_bytes()).unwrap(),
        value.parse().unwrap(),
    );
    headers
}

#[test]
fn the_session_value_is_the_base64_of_the_address_as_envoy_writes_it() {
    // Envoy's documented example: `1.2.3.4:80` is `MS4yLjMuNDo4MA==`.
    let address: SocketAddr = "1.2.3.4:80".parse().unwrap();
    let (name, value) = session_update(&cookie_session(), None, address).unwrap();
    assert_eq!(name, http::header::SET_COOKIE);
    assert_eq!(value, "sticky=\"MS4yLjMuNDo4MA==\"; Path=/; HttpOnly");
    let cases = [
        ("cookie", "a=1; sticky=\"MS4yLjMuNDo4MA==\"", Some(address)),
        ("cookie", "sticky=MS4yLjMuNDo4MA==", Some(address)),
        ("cookie", "other=MS4yLjMuNDo4MA==", None),
        ("cookie", "sticky=not-base64!", None),
        // Valid base64 of something that is not an address.
        ("cookie", "sticky=aGVsbG8=", None),
    ];
    for (name, value, expected) in cases {
        assert_eq!(
            session_endpoint(&cookie_session(), &headers(name, value)),
            expected,
            "{value}"
        );
    }
    assert_eq!(
        session_endpoint(&header_session(), &headers("x-session", "MS4yLjMuNDo4MA==")),
        Some(address)
    );
    let (name, value) = session_update(&header_session(), None, address).unwrap();
    assert_eq!(
        (name.as_str(), value.to_str().unwrap()),
        ("x-session", "MS4yLjMuNDo4MA==")
    );
    // The request already named the endpoint that answered: nothing to update.
    assert_eq!(
        session_update(&header_session(), Some(address), address),
        None
    );
}

#[test]
fn only_an_available_endpoint_of_the_cluster_is_taken_from_a_session() {
    let mut cluster = least_request(vec![endpoint(1), endpoint(2), endpoint(3), endpoint(4)]);
    cluster.endpoints[2].healthy = false;
    cluster.outlier = Some(policy(100));
    let state = fresh_state();
    // Endpoint 2 is ejected.
    state.record_outcome(&cluster, endpoint(2).address, Outcome::Response(503));
    let empty = http::HeaderMap::new();
    let choose = |session: &str, tried: &[SocketAddr]| {
        let hash = HashInput {
            session_endpoint: session.parse().ok(),
            generated_cookie: None,
            headers: &empty,
            query: None,
            source_ip: "10.1.2.3".parse().unwrap(),
        };
        let tried = Tried {
            endpoints: tried,
            priorities: &[],
        };
        (0..20)
            .map(|_| {
                // Each request stays in flight: least request alone would alternate.
                let (endpoint, active) = state.choose_and_track(&cluster, &hash, &tried).unwrap();
                std::mem::forget(active);
                endpoint.address
            })
            .collect::<Vec<_>>()
    };
    let (one, four) = (endpoint(1).address, endpoint(4).address);
    assert!(choose("10.0.0.4:8080", &[]).iter().all(|a| *a == four));
    assert!(choose("10.0.0.1:8080", &[]).iter().all(|a| *a == one));
    // Not of the cluster (another port, another address), ejected or unhealthy: balanced as
    // without a session, over endpoints 1 and 4 only.
    for forged in [
        "10.0.0.2:8080",
        "10.0.0.3:8080",
        "10.0.0.1:9090",
        "127.0.0.1:22",
    ] {
        let chosen = choose(forged, &[]);
        assert!(
            chosen.contains(&one) && chosen.contains(&four),
            "{forged}: {chosen:?}"
        );
        assert!(
            chosen.iter().all(|a| *a == one || *a == four),
            "{forged}: {chosen:?}"
        );
    }
    // A retry that avoids the endpoint it tried leaves the session's.
    assert!(choose("10.0.0.4:8080", &[four]).iter().all(|a| *a == one));
}

/// The endpoint a session names is found by the plan's address index: the endpoints looked at
/// per lookup are the same with 10 and 1,000 endpoints (a walk of the endpoints looked at 10
/// and 1,000 for the last one).
#[test]
fn a_session_lookup_looks_at_one_endpoint_whatever_the_cluster_size() {
    let looked_at = |size: usize| {
        let endpoints = (0..size)
            .map(|i| {
                let mut e = endpoint(1);
                e.address = SocketAddr::new([10, 1, (i / 256) as u8, (i % 256) as u8].into(), 8080);
                e
            })
            .collect();
        let cluster = least_request(endpoints);
        let state = fresh_state();
        let states = super::super::lock(&state.0.endpoints);
        let tried = Tried {
            endpoints: &[],
            priorities: &[],
        };
        let now = Instant::now();
        let last = cluster.endpoints[size - 1].address;
        // The plan (with its index) is built once per configuration, before any request.
        cluster.plan();
        LOOKED_AT.with(|n| n.set(0));
        for _ in 0..10 {
            let chosen = session_choice(&states, &cluster, last, &tried, now).unwrap();
            assert_eq!(chosen.address, last);
            let absent = SocketAddr::new([192, 0, 2, 1].into(), 8080);
            assert!(session_choice(&states, &cluster, absent, &tried, now).is_none());
        }
        LOOKED_AT.with(Cell::get)
    };
    let (small, large) = (looked_at(10), looked_at(1_000));
    assert_eq!(
        (small, large),
        (10, 10),
        "endpoints looked at for 10 lookups"
    );
}
