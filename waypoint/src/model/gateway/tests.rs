//! How a connection and a request at the edge find their server and route table.

use super::*;

fn route_to(cluster: &str) -> proto::HttpRoute {
    proto::HttpRoute {
        route: vec![proto::HttpRouteDestination {
            destination: Some(proto::Destination {
                host: "reviews.shop.svc.cluster.local".to_owned(),
                subset: String::new(),
                port: 80,
                cluster: cluster.to_owned(),
            }),
            weight: 0,
            headers: None,
        }],
        ..Default::default()
    }
}

fn server(name: &str, hosts: &[&str], protocol: proto::GatewayProtocol) -> proto::GatewayServer {
    proto::GatewayServer {
        gateway: "shop/gw".to_owned(),
        name: name.to_owned(),
        protocol: protocol as i32,
        hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
        tls: (protocol != proto::GatewayProtocol::Http).then(|| proto::ServerTls {
            mode: proto::ServerTlsMode::Simple as i32,
            credential_name: format!("{name}-cert"),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn edge() -> Gateway {
    let mut http = server("http", &["*"], proto::GatewayProtocol::Http);
    http.virtual_hosts = vec![
        proto::GatewayVirtualHost {
            domains: vec!["*".to_owned()],
            http_routes: vec![route_to("any")],
            virtual_service: "shop/any".to_owned(),
        },
        proto::GatewayVirtualHost {
            domains: vec!["*.example.com".to_owned()],
            http_routes: vec![route_to("wildcard")],
            virtual_service: "shop/wildcard".to_owned(),
        },
        proto::GatewayVirtualHost {
            domains: vec!["shop.example.com".to_owned()],
            http_routes: vec![route_to("exact")],
            virtual_service: "shop/exact".to_owned(),
        },
    ];
    let config = proto::GatewayConfig {
        num_trusted_proxies: 0,
        listeners: vec![
            proto::GatewayListener {
                port: 80,
                servers: vec![http],
            },
            proto::GatewayListener {
                port: 443,
                servers: vec![
                    server("wild", &["*.example.com"], proto::GatewayProtocol::Https),
                    server("shop", &["shop.example.com"], proto::GatewayProtocol::Https),
                ],
            },
        ],
        workload: None,
    };
    gateway(&config, "edge").expect("a valid gateway section")
}

#[test]
fn host_patterns_rank_exact_then_longest_suffix_then_any() {
    let cases = [
        ("shop.example.com", "shop.example.com", Some(usize::MAX)),
        ("SHOP.example.com", "shop.example.com", Some(usize::MAX)),
        ("*.example.com", "shop.example.com", Some(12)),
        ("*.com", "shop.example.com", Some(4)),
        ("*", "shop.example.com", Some(0)),
        ("*.example.com", "example.com", None),
        ("other.example.com", "shop.example.com", None),
    ];
    for (pattern, host, expected) in cases {
        assert_eq!(host_match_rank(pattern, host), expected, "{pattern} {host}");
    }
}

fn target<'g>(edge: &'g Arc<Gateway>, binding: &EdgeBinding, host: &str) -> Option<Target<'g>> {
    binding.server_in(edge)?.target(None, Some(host))
}

#[test]
fn a_binding_finds_its_server_again_in_each_new_gateway() {
    let first = Arc::new(edge());
    let binding = EdgeBinding::new(443, "shop", Some("shop.example.com".to_owned()), &first);
    let found = |gateway: &Arc<Gateway>| binding.server_in(gateway).map(|s| s as *const EdgeServer);
    let server_of = |gateway: &Gateway, port: u16, name: &str| {
        let listener = gateway.listener(port).unwrap();
        let server = listener.servers.iter().find(|s| s.name == name).unwrap();
        Arc::as_ptr(server)
    };
    assert_eq!(found(&first), Some(server_of(&first, 443, "shop")));
    assert_eq!(
        found(&first),
        Some(server_of(&first, 443, "shop")),
        "remembered"
    );
    // A new configuration where the server moved: found where it now is.
    let mut moved = edge();
    moved.listeners.reverse();
    moved.listeners[0].servers.reverse();
    let moved = Arc::new(moved);
    assert_eq!(found(&moved), Some(server_of(&moved, 443, "shop")));
    // One without it: the connection is no longer served; one with it again: served again.
    let mut without = edge();
    without.listeners[1].servers.retain(|s| s.name != "shop");
    let without = Arc::new(without);
    assert_eq!(found(&without), None);
    assert_eq!(found(&first), Some(server_of(&first, 443, "shop")));
    // The configuration each request reads is the one its server is taken from.
    assert_eq!(found(&moved), Some(server_of(&moved, 443, "shop")));
}

#[test]
fn the_request_host_chooses_the_most_specific_virtual_host() {
    let edge = Arc::new(edge());
    let binding = EdgeBinding::new(80, "http", None, &edge);
    let cluster_for = |host: &str| match target(&edge, &binding, host) {
        Some(Target::Service(target)) => match &target.service.http_routes[0].action {
            super::super::RouteAction::Forward(destinations) => destinations[0].cluster.clone(),
            other => panic!("{other:?}"),
        },
        other => panic!("{host}: {other:?}"),
    };
    assert_eq!(cluster_for("shop.example.com"), "exact");
    assert_eq!(cluster_for("shop.example.com:80"), "exact");
    assert_eq!(cluster_for("cart.example.com"), "wildcard");
    assert_eq!(cluster_for("10.0.0.1:80"), "any");
    // A server that is gone serves nothing.
    let gone = EdgeBinding::new(80, "removed", None, &edge);
    assert!(target(&edge, &gone, "shop.example.com").is_none());
}

#[test]
fn the_domain_index_chooses_as_the_ranking_does() {
    let host = |domains: &[&str]| VirtualHost {
        domains: domains.iter().map(|d| (*d).to_owned()).collect(),
        table: EdgeTable {
            service: Service {
                hostname: String::new(),
                name: String::new(),
                namespace: String::new(),
                names: Arc::new(super::super::service_of_host("")),
                vips: Vec::new(),
                ports: Vec::new(),
                route_matches: Vec::new(),
                http_routes: Vec::new(),
                tcp_routes: Vec::new(),
                dynamic_dns: false,
                telemetry: None,
            },
            port: ServicePort {
                port: 80,
                name: String::new(),
                protocol: Protocol::Http,
                target_port: 80,
            },
        },
    };
    let hosts = [
        host(&["*"]),
        host(&["*.com"]),
        host(&["*.example.com", "Shop.Example.com"]),
        host(&["shop.example.com"]),
        host(&["*.example.com"]),
        host(&["cart.example.com", "*.shop.example.com"]),
    ];
    let index = DomainIndex::new(&hosts);
    let cases = [
        // The first virtual host naming the domain, whatever its case.
        ("shop.example.com", Some(2)),
        ("SHOP.example.COM", Some(2)),
        ("cart.example.com", Some(5)),
        // The longest suffix, the first among equals.
        ("a.shop.example.com", Some(5)),
        ("news.example.com", Some(2)),
        ("example.com", Some(1)),
        ("10.0.0.1", Some(0)),
    ];
    for (request_host, expected) in cases {
        let ranked = best(
            hosts
                .iter()
                .enumerate()
                .map(|(i, v)| (v.domains.as_slice(), i)),
            request_host,
        );
        assert_eq!(ranked, expected, "ranking, {request_host}");
        assert_eq!(index.find(request_host), expected, "index, {request_host}");
    }
    assert_eq!(
        DomainIndex::new(&hosts[3..4]).find("other.example.com"),
        None
    );
}

#[test]
fn the_client_hello_chooses_the_server() {
    let edge = edge();
    let listener = edge.listener(443).unwrap();
    let name = |sni: Option<&str>| listener.server_for_sni(sni).map(|s| s.name.clone());
    assert_eq!(name(Some("shop.example.com")).as_deref(), Some("shop"));
    assert_eq!(name(Some("cart.example.com")).as_deref(), Some("wild"));
    assert_eq!(name(Some("shop.test")), None);
    // Without SNI only a server for `*` answers; there is none here.
    assert_eq!(name(None), None);
}

#[test]
fn a_tls_server_without_a_credential_is_refused() {
    let mut bad = server("bad", &["*"], proto::GatewayProtocol::Https);
    bad.tls.as_mut().unwrap().credential_name.clear();
    let config = proto::GatewayConfig {
        num_trusted_proxies: 0,
        listeners: vec![proto::GatewayListener {
            port: 443,
            servers: vec![bad],
        }],
        workload: None,
    };
    let error = gateway(&config, "edge").unwrap_err().to_string();
    assert!(
        error.contains("gateway shop/gw server bad") && error.contains("credentialName"),
        "{error}"
    );
}

fn one_server(server: proto::GatewayServer) -> Result<Gateway, ConfigError> {
    let config = proto::GatewayConfig {
        num_trusted_proxies: 0,
        listeners: vec![proto::GatewayListener {
            port: 9000,
            servers: vec![server],
        }],
        workload: None,
    };
    gateway(&config, "edge")
}

#[test]
fn a_servers_limits_and_connection_rate_limit_are_converted_and_checked() {
    let seconds = |s| prost_types::Duration {
        seconds: s,
        nanos: 0,
    };
    let mut tcp = server("tcp", &["*"], proto::GatewayProtocol::Tcp);
    tcp.tls = None;
    tcp.limits = Some(proto::EdgeLimits {
        max_request_headers_kb: 2,
        idle_timeout: Some(seconds(5)),
        per_connection_buffer_limit_bytes: 100,
        request_timeout: Some(seconds(20)),
        max_request_bytes: 4096,
        max_connections: 64,
        ..Default::default()
    });
    tcp.connection_rate_limit = Some(proto::LocalRateLimit {
        key: "Gateway/shop/gw/tcp".to_owned(),
        max_tokens: 2,
        tokens_per_fill: 1,
        fill_interval: Some(seconds(60)),
        scope: proto::RateLimitScope::Client as i32,
    });
    let converted = one_server(tcp.clone()).expect("valid limits");
    let server = &converted.listeners[0].servers[0];
    assert_eq!(
        server.limits,
        EdgeLimits {
            max_request_header_bytes: Some(2048),
            request_headers_timeout: None,
            idle_timeout: Some(Duration::from_secs(5)),
            http2_max_concurrent_streams: None,
            per_connection_buffer_limit_bytes: Some(100),
            request_timeout: Some(Duration::from_secs(20)),
            max_request_bytes: Some(4096),
            max_connections: Some(64),
        }
    );
    let limit = server.connection_rate_limit.as_ref().expect("a rate limit");
    assert_eq!(limit.key, "Gateway/shop/gw/tcp");
    assert_eq!(limit.scope, crate::rate_limit::RateLimitScope::Client);

    // What the controller never sends is refused with the server it came from.
    let refused = |edit: &dyn Fn(&mut proto::GatewayServer)| {
        let mut bad = tcp.clone();
        edit(&mut bad);
        one_server(bad).unwrap_err().to_string()
    };
    let error = refused(&|s| s.limits.as_mut().unwrap().idle_timeout = Some(seconds(0)));
    assert!(
        error.contains("gateway shop/gw server tcp limits"),
        "{error}"
    );
    assert!(error.contains("positive"), "{error}");
    let error = refused(&|s| s.limits.as_mut().unwrap().request_timeout = Some(seconds(0)));
    assert!(error.contains("a timeout must be positive"), "{error}");
    let error = refused(&|s| s.limits.as_mut().unwrap().max_request_headers_kb = 9000);
    assert!(error.contains("max_request_headers_kb"), "{error}");
    let error = refused(&|s| s.connection_rate_limit.as_mut().unwrap().max_tokens = 0);
    assert!(error.contains("local_rate_limit"), "{error}");
}

#[test]
fn further_credentials_certificate_files_and_client_names_are_converted_and_checked() {
    let mut named = server("named", &["*"], proto::GatewayProtocol::Https);
    let tls = named.tls.as_mut().unwrap();
    tls.additional_credentials = vec![proto::GatewayCredential {
        name: "named-ecdsa".to_owned(),
        resource: "kubernetes://edge/named-ecdsa".to_owned(),
    }];
    tls.subject_alt_names = vec!["spiffe://example.org/ns/shop/sa/buyer".to_owned()];
    let converted = one_server(named).unwrap();
    let tls = converted.listeners[0].servers[0].tls.clone().unwrap();
    assert_eq!(
        tls.additional_credentials,
        [NamedCredential {
            name: "named-ecdsa".to_owned(),
            resource: "kubernetes://edge/named-ecdsa".to_owned(),
        }]
    );
    assert_eq!(
        tls.subject_alt_names,
        ["spiffe://example.org/ns/shop/sa/buyer"]
    );

    // Files instead of a credential name: a TLS server all the same.
    let files = |certificates: Vec<(&str, &str)>| {
        let mut s = server("files", &["*"], proto::GatewayProtocol::Https);
        let tls = s.tls.as_mut().unwrap();
        tls.credential_name.clear();
        tls.files = Some(proto::GatewayTlsFiles {
            certificates: certificates
                .into_iter()
                .map(|(chain, key)| proto::GatewayCertificateFiles {
                    certificate_chain: chain.to_owned(),
                    private_key: key.to_owned(),
                })
                .collect(),
            ca_certificates: "/etc/certs/ca.pem".to_owned(),
            ca_crl: String::new(),
        });
        one_server(s)
    };
    let converted = files(vec![("/etc/certs/cert.pem", "/etc/certs/key.pem")]).unwrap();
    let tls = converted.listeners[0].servers[0].tls.clone().unwrap();
    assert!(tls.from_files());
    assert_eq!(
        tls.files.unwrap().ca_certificates.as_deref(),
        Some("/etc/certs/ca.pem")
    );
    assert!(files(vec![("/c", "")]).is_err(), "a chain without its key");
    assert!(files(Vec::new()).is_err(), "no certificate");
    assert!(files(vec![("/a", "/a"), ("/b", "/b"), ("/c", "/c")]).is_err());
}
