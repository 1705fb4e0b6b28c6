//! What the dump shows of the gateway role.

use weft_proto::waypoint as proto;

use super::*;

fn edge_config(limits: Option<proto::EdgeLimits>) -> WaypointConfig {
    let server = proto::GatewayServer {
        gateway: "edge/edge-gateway".to_owned(),
        name: "https".to_owned(),
        protocol: proto::GatewayProtocol::Https as i32,
        hosts: vec!["shop.example.com".to_owned()],
        tls: Some(proto::ServerTls {
            mode: proto::ServerTlsMode::Simple as i32,
            credential_name: "shop-cert".to_owned(),
            ..Default::default()
        }),
        virtual_hosts: vec![proto::GatewayVirtualHost {
            domains: vec!["shop.example.com".to_owned()],
            http_routes: Vec::new(),
            virtual_service: "edge/shop".to_owned(),
        }],
        limits,
        ..Default::default()
    };
    let config = proto::WaypointConfig {
        name: "ingress".to_owned(),
        namespace: "edge".to_owned(),
        gateway: Some(proto::GatewayConfig {
            num_trusted_proxies: 1,
            listeners: vec![proto::GatewayListener {
                port: 443,
                servers: vec![server],
            }],
            workload: None,
        }),
        ..Default::default()
    };
    WaypointConfig::try_from(config).expect("a valid gateway configuration")
}

#[test]
fn the_dump_shows_each_edge_servers_limits() {
    let limits = proto::EdgeLimits {
        max_request_headers_kb: 16,
        request_headers_timeout: Some(prost_types::Duration {
            seconds: 5,
            nanos: 0,
        }),
        idle_timeout: Some(prost_types::Duration {
            seconds: 30,
            nanos: 0,
        }),
        http2_max_concurrent_streams: 50,
        per_connection_buffer_limit_bytes: 32768,
        request_timeout: Some(prost_types::Duration {
            seconds: 60,
            nanos: 0,
        }),
        max_request_bytes: 1 << 20,
        max_connections: 1000,
    };
    let config = edge_config(Some(limits));
    let dump = gateway(config.gateway.as_deref().expect("the gateway role"));
    assert_eq!(dump.num_trusted_proxies, 1);
    let server = &dump.listeners[0].servers[0];
    assert_eq!(
        (
            dump.listeners[0].port,
            server.name.as_str(),
            server.tls_mode
        ),
        (443, "https", Some("SIMPLE"))
    );
    assert_eq!(server.credential_name.as_deref(), Some("shop-cert"));
    assert_eq!(server.virtual_hosts, [["shop.example.com"]]);
    assert_eq!(
        server.limits,
        EdgeLimitsDump {
            max_request_headers_kb: Some(16),
            request_headers_timeout_ms: Some(5_000),
            idle_timeout_ms: Some(30_000),
            http2_max_concurrent_streams: Some(50),
            per_connection_buffer_limit_bytes: Some(32768),
            request_timeout_ms: Some(60_000),
            max_request_bytes: Some(1 << 20),
            max_connections: Some(1000),
        }
    );
    let json = serde_json::to_value(&dump).unwrap();
    assert_eq!(
        json["listeners"][0]["servers"][0]["limits"]["idle_timeout_ms"],
        30_000
    );

    // Without the annotation every limit is the proxy's own.
    let config = edge_config(None);
    let dump = gateway(config.gateway.as_deref().unwrap());
    assert_eq!(
        dump.listeners[0].servers[0].limits,
        EdgeLimitsDump {
            max_request_headers_kb: None,
            request_headers_timeout_ms: None,
            idle_timeout_ms: None,
            http2_max_concurrent_streams: None,
            per_connection_buffer_limit_bytes: None,
            request_timeout_ms: None,
            max_request_bytes: None,
            max_connections: None,
        }
    );
}

/// A cluster of `web.shop` with two healthy endpoints (weights 1 and 3) and one unhealthy,
/// balanced by `lb_policy`.
fn balanced_cluster(
    name: &str,
    lb_policy: proto::load_balancer_settings::LbPolicy,
) -> proto::Cluster {
    let endpoint = |last: u8, weight: u32, healthy: bool| proto::Endpoint {
        address: format!("10.0.0.{last}"),
        port: 8080,
        identity: "spiffe://cluster.local/ns/shop/sa/web".to_owned(),
        workload_uid: format!("uid-{last}"),
        workload_name: format!("web-{last}"),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        healthy,
        weight,
        ..Default::default()
    };
    proto::Cluster {
        name: name.to_owned(),
        host: "web.shop.svc.cluster.local".to_owned(),
        port: 80,
        endpoints: vec![
            endpoint(1, 1, true),
            endpoint(2, 3, true),
            endpoint(3, 1, false),
        ],
        load_balancer: Some(proto::LoadBalancerSettings {
            lb_policy: Some(lb_policy),
            slow_start: None,
        }),
        ..Default::default()
    }
}

/// The admin page shows the consistent-hash table each cluster's balancer built, as built: a
/// ring's points (Envoy's scaling of weights 1 and 3 over a minimum of 100: the light endpoint
/// gets 25 points, the heavy 75), a Maglev table's entries, no table for the other balancers.
#[test]
fn the_dump_shows_the_hash_table_each_cluster_built() {
    use proto::load_balancer_settings::consistent_hash_lb::{HashKey, Maglev, RingHash, Table};
    use proto::load_balancer_settings::{ConsistentHashLb, LbPolicy, SimpleLb};
    let hashed = |table| {
        LbPolicy::ConsistentHash(ConsistentHashLb {
            hash_key: Some(HashKey::UseSourceIp(true)),
            table: Some(table),
        })
    };
    let config = proto::WaypointConfig {
        name: "waypoint".to_owned(),
        namespace: "shop".to_owned(),
        clusters: vec![
            balanced_cluster(
                "ring",
                hashed(Table::RingHash(RingHash {
                    minimum_ring_size: 100,
                })),
            ),
            balanced_cluster("maglev", hashed(Table::Maglev(Maglev { table_size: 251 }))),
            balanced_cluster("plain", LbPolicy::Simple(SimpleLb::RoundRobin as i32)),
        ],
        ..Default::default()
    };
    let config = WaypointConfig::try_from(config).expect("a valid configuration");
    let mesh = crate::testing::TestMesh::new();
    let upstream = Upstream::new(
        crate::testing::TestMesh::spiffe("shop", "waypoint"),
        mesh.material("shop", "waypoint").source(),
        crate::upstream::default_hbone_address(),
    );
    let tables = |name: &str| cluster(&config.clusters[name], &upstream).hash_tables;
    assert_eq!(
        tables("ring"),
        [HashTableDump {
            kind: "ring_hash",
            size: 100
        }]
    );
    assert_eq!(
        tables("maglev"),
        [HashTableDump {
            kind: "maglev",
            size: 251
        }]
    );
    assert_eq!(tables("plain"), []);
    let json = serde_json::to_value(cluster(&config.clusters["ring"], &upstream)).unwrap();
    assert_eq!(
        json["hash_tables"],
        serde_json::json!([{"kind": "ring_hash", "size": 100}])
    );
}

/// The dump shows a cluster's PROXY protocol version (DestinationRule `proxyProtocol`) and each
/// route's stateful session (`sessionPersistence`), and nothing for those without.
#[test]
fn the_dump_shows_proxy_protocol_and_stateful_sessions() {
    use proto::load_balancer_settings::{LbPolicy, SimpleLb};
    let round_robin = LbPolicy::Simple(SimpleLb::RoundRobin as i32);
    let route = |session: Option<proto::StatefulSession>| proto::HttpRoute {
        route: vec![proto::HttpRouteDestination {
            destination: Some(proto::Destination {
                host: "web.shop.svc.cluster.local".to_owned(),
                cluster: "proxied".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        stateful_session: session,
        ..Default::default()
    };
    let config = proto::WaypointConfig {
        name: "waypoint".to_owned(),
        namespace: "shop".to_owned(),
        services: vec![proto::WaypointService {
            hostname: "web.shop.svc.cluster.local".to_owned(),
            name: "web".to_owned(),
            namespace: "shop".to_owned(),
            vips: vec!["10.96.0.10".to_owned()],
            ports: vec![proto::ServicePort {
                port: 80,
                name: "http".to_owned(),
                protocol: proto::Protocol::Http as i32,
                target_port: 0,
            }],
            http_routes: vec![
                route(Some(proto::StatefulSession {
                    kind: proto::StatefulSessionKind::Cookie as i32,
                    name: "sticky".to_owned(),
                    cookie_path: "/cart".to_owned(),
                    cookie_ttl: Some(prost_types::Duration {
                        seconds: 60,
                        nanos: 0,
                    }),
                })),
                route(Some(proto::StatefulSession {
                    kind: proto::StatefulSessionKind::Header as i32,
                    name: "X-Session".to_owned(),
                    ..Default::default()
                })),
                route(None),
            ],
            ..Default::default()
        }],
        clusters: vec![
            proto::Cluster {
                proxy_protocol: Some(proto::UpstreamProxyProtocol {
                    version: proto::upstream_proxy_protocol::Version::V2 as i32,
                }),
                ..balanced_cluster("proxied", round_robin.clone())
            },
            balanced_cluster("plain", round_robin),
        ],
        ..Default::default()
    };
    let config = WaypointConfig::try_from(config).expect("a valid configuration");
    let mesh = crate::testing::TestMesh::new();
    let upstream = Upstream::new(
        crate::testing::TestMesh::spiffe("shop", "waypoint"),
        mesh.material("shop", "waypoint").source(),
        crate::upstream::default_hbone_address(),
    );
    let dump = config_dump(
        &config,
        &upstream,
        None,
        None,
        XdsHistory::default(),
        serde_json::Value::Null,
    );
    let json = serde_json::to_value(&dump).unwrap();
    let proxy_protocol: Vec<_> = json["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["name"].clone(), c["proxy_protocol"].clone()))
        .collect();
    assert_eq!(
        proxy_protocol,
        [
            (serde_json::json!("plain"), serde_json::Value::Null),
            (serde_json::json!("proxied"), serde_json::json!("V2")),
        ]
    );
    let sessions: Vec<_> = json["services"][0]["http_routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["session"].clone())
        .collect();
    assert_eq!(
        sessions,
        [
            serde_json::json!("cookie sticky; Max-Age=60; Path=/cart"),
            serde_json::json!("header x-session"),
            serde_json::Value::Null,
        ]
    );
}
