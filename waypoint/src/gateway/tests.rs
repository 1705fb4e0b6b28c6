//! The gateway's connection bounds: the cap per port and the default connection rate limit.

use std::time::Instant;

use weft_proto::waypoint as proto;

use super::*;
use crate::rate_limit::RateLimiter;

fn server(name: &str, max_connections: u32) -> proto::GatewayServer {
    proto::GatewayServer {
        gateway: "shop/gw".to_owned(),
        name: name.to_owned(),
        protocol: proto::GatewayProtocol::Http as i32,
        hosts: vec!["*".to_owned()],
        limits: (max_connections > 0).then(|| proto::EdgeLimits {
            max_connections,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Ports and their servers.
type Listeners = Vec<(u32, Vec<proto::GatewayServer>)>;

fn gateway(listeners: Listeners) -> Gateway {
    let config = proto::GatewayConfig {
        num_trusted_proxies: 0,
        listeners: listeners
            .into_iter()
            .map(|(port, servers)| proto::GatewayListener { port, servers })
            .collect(),
        workload: None,
    };
    crate::model::gateway::gateway(&config, "edge").expect("a valid gateway section")
}

#[test]
fn a_port_is_capped_by_the_smallest_cap_its_servers_set_else_the_default() {
    let default = DEFAULT_MAX_CONNECTIONS_PER_LISTENER as usize;
    let cases: &[(&str, Listeners, u16, usize)] = &[
        (
            "no server sets one",
            vec![(80, vec![server("a", 0)])],
            80,
            default,
        ),
        ("one server", vec![(80, vec![server("a", 10)])], 80, 10),
        (
            "the smallest of the port's servers",
            vec![(443, vec![server("a", 0), server("b", 7), server("c", 9)])],
            443,
            7,
        ),
        (
            "another port's cap does not apply",
            vec![(80, vec![server("a", 3)]), (81, vec![server("b", 0)])],
            81,
            default,
        ),
        (
            "a port no server uses",
            vec![(80, vec![server("a", 3)])],
            82,
            default,
        ),
    ];
    for (name, listeners, port, expected) in cases {
        let gateway = gateway(listeners.clone());
        assert_eq!(
            listener_connection_cap(&gateway, *port),
            *expected,
            "{name}"
        );
    }
}

#[test]
fn a_port_holds_at_most_its_cap_and_a_closed_connection_frees_its_place() {
    let connections = Arc::new(ListenerConnections::default());
    let first = connections.admit(2).expect("room for one");
    let second = connections.admit(2).expect("room for two");
    assert!(connections.admit(2).is_none(), "the third is over the cap");
    drop(first);
    let third = connections
        .admit(2)
        .expect("a closed connection freed its place");
    // A lowered cap refuses new connections and leaves the open ones be.
    assert!(connections.admit(1).is_none());
    drop((second, third));
    assert_eq!(connections.open.load(Ordering::Acquire), 0);
    assert!(connections.admit(1).is_some());
}

#[test]
fn the_default_connection_rate_limit_bounds_each_client_of_a_port_on_its_own() {
    let limiter = RateLimiter::default();
    let limit = default_connection_rate_limit(443);
    assert_eq!(limit.scope, RateLimitScope::Client);
    let now = Instant::now();
    let a: IpAddr = [192, 0, 2, 1].into();
    let b: IpAddr = [192, 0, 2, 2].into();
    for _ in 0..DEFAULT_CONNECTIONS_PER_CLIENT_PER_SECOND {
        assert!(limiter.admit(&limit, a, now));
    }
    assert!(
        !limiter.admit(&limit, a, now),
        "a's second's worth is spent"
    );
    assert!(limiter.admit(&limit, b, now), "b has a bucket of its own");
    assert!(
        limiter.admit(&default_connection_rate_limit(80), a, now),
        "each port has its own buckets"
    );
    assert!(
        limiter.admit(&limit, a, now + Duration::from_secs(1)),
        "refilled after a second"
    );
}
