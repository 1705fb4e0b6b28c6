//! Load balancing from the proto: slow start kept only with the balancers Envoy applies it to,
//! within Envoy's bounds; consistent-hash tables and cookie keys.

use std::time::Duration;

use weft_proto::waypoint as proto;

use super::*;

fn settings(simple: proto::load_balancer_settings::SimpleLb, window_ms: i32) -> proto::Cluster {
    proto::Cluster {
        name: "outbound|80||web.shop.svc.cluster.local".to_owned(),
        host: "web.shop.svc.cluster.local".to_owned(),
        port: 80,
        load_balancer: Some(proto::LoadBalancerSettings {
            lb_policy: Some(proto::load_balancer_settings::LbPolicy::Simple(
                simple as i32,
            )),
            slow_start: Some(proto::load_balancer_settings::SlowStart {
                window: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: window_ms * 1_000_000,
                }),
                min_weight_percent: 25.0,
                aggression: 2.0,
            }),
        }),
        ..Default::default()
    }
}

fn convert(c: &proto::Cluster) -> Result<Cluster, ConfigError> {
    cluster(
        c,
        &mut HashMap::new(),
        &ResolvedNames::default(),
        &OriginationCredentials::default(),
        None,
    )
}

#[test]
fn slow_start_is_kept_with_round_robin_and_least_request_only() {
    use proto::load_balancer_settings::SimpleLb as S;
    let expected = Some(SlowStart {
        window: Duration::from_millis(500),
        min_weight: 0.25,
        aggression: 2.0,
    });
    for (simple, kept) in [
        (S::RoundRobin, true),
        (S::LeastRequest, true),
        (S::LeastConn, true),
        (S::Unspecified, true),
        (S::Random, false),
    ] {
        let cluster = convert(&settings(simple, 500)).unwrap();
        assert_eq!(
            cluster.slow_start,
            if kept { expected } else { None },
            "{simple:?}"
        );
    }
}

#[test]
fn slow_start_outside_envoys_bounds_is_refused() {
    type Mutation = fn(&mut proto::load_balancer_settings::SlowStart);
    let cases: [(Mutation, &str); 5] = [
        (|s| s.window = None, "without a window"),
        (|s| s.min_weight_percent = 101.0, "not between 0 and 100"),
        (|s| s.min_weight_percent = f64::NAN, "not between 0 and 100"),
        (|s| s.aggression = 0.0, "not above 0"),
        (|s| s.aggression = f64::INFINITY, "not above 0"),
    ];
    for (mutate, expected) in cases {
        let mut c = settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 500);
        let slow = c
            .load_balancer
            .as_mut()
            .and_then(|lb| lb.slow_start.as_mut())
            .unwrap();
        mutate(slow);
        let error = convert(&c).unwrap_err().to_string();
        assert!(error.contains(expected), "{error}");
    }
}

/// The consistent hash's table (`ConsistentHashLB.table`), with Envoy's defaults for sizes
/// left 0 and refused where Envoy refuses the cluster (`MaglevLoadBalancer`: the table size
/// must be prime; `RingHashLoadBalancer`: minimum above maximum).
#[test]
fn consistent_hash_tables_take_envoys_defaults_and_bounds() {
    use proto::load_balancer_settings::consistent_hash_lb::{
        HashKey as H, Maglev, RingHash, Table,
    };
    let with = |table: Option<Table>| proto::Cluster {
        load_balancer: Some(proto::LoadBalancerSettings {
            lb_policy: Some(proto::load_balancer_settings::LbPolicy::ConsistentHash(
                proto::load_balancer_settings::ConsistentHashLb {
                    hash_key: Some(H::UseSourceIp(true)),
                    table,
                },
            )),
            slow_start: None,
        }),
        ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
    };
    let ring = |minimum_ring_size| Some(Table::RingHash(RingHash { minimum_ring_size }));
    let maglev = |table_size| Some(Table::Maglev(Maglev { table_size }));
    let cases = [
        (None, HashTable::Ring { minimum_size: 1024 }),
        (ring(0), HashTable::Ring { minimum_size: 1024 }),
        (ring(64), HashTable::Ring { minimum_size: 64 }),
        (maglev(0), HashTable::Maglev { table_size: 65537 }),
        (maglev(251), HashTable::Maglev { table_size: 251 }),
    ];
    for (table, expected) in cases {
        let cluster = convert(&with(table)).unwrap();
        assert_eq!(
            cluster.load_balancer,
            LoadBalancer::ConsistentHash(HashKey::SourceIp, expected),
            "{table:?}"
        );
    }
    for (table, reason) in [
        (
            maglev(1000),
            "maglev.tableSize 1000 must be a prime number below 5000011",
        ),
        (
            maglev(5_000_011),
            "maglev.tableSize 5000011 must be a prime number below 5000011",
        ),
        (
            ring(MAXIMUM_RING_SIZE + 1),
            "ringHash.minimumRingSize 8388609 is above the maximum ring size 8388608",
        ),
    ] {
        let error = convert(&with(table)).unwrap_err().to_string();
        assert!(error.ends_with(reason), "{table:?}: {error}");
    }
}

#[test]
fn a_cookie_key_generates_with_a_ttl_and_its_set_cookie_must_be_a_header() {
    use proto::load_balancer_settings::consistent_hash_lb::{CookieAttribute, HashKey as H};
    let with =
        |cookie: proto::load_balancer_settings::consistent_hash_lb::HttpCookie| proto::Cluster {
            load_balancer: Some(proto::LoadBalancerSettings {
                lb_policy: Some(proto::load_balancer_settings::LbPolicy::ConsistentHash(
                    proto::load_balancer_settings::ConsistentHashLb {
                        hash_key: Some(H::HttpCookie(cookie)),
                        table: None,
                    },
                )),
                slow_start: None,
            }),
            ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
        };
    let cookie = |ttl: Option<prost_types::Duration>, value: &str| {
        proto::load_balancer_settings::consistent_hash_lb::HttpCookie {
            name: "session".to_owned(),
            path: "/".to_owned(),
            ttl,
            attributes: vec![
                CookieAttribute {
                    name: "SameSite".to_owned(),
                    value: value.to_owned(),
                },
                CookieAttribute {
                    name: "Secure".to_owned(),
                    value: String::new(),
                },
            ],
        }
    };
    let key = |cluster: Cluster| match cluster.load_balancer {
        LoadBalancer::ConsistentHash(HashKey::Cookie(cookie), _) => cookie,
        other => panic!("{other:?}"),
    };
    // A ttl, whole seconds kept: a cookie is generated with the rule's path and attributes.
    let ttl = prost_types::Duration {
        seconds: 30,
        nanos: 500_000_000,
    };
    let generating = key(convert(&with(cookie(Some(ttl), "Lax"))).unwrap());
    assert_eq!(
        generating.generated,
        Some(crate::model::CookieTemplate {
            max_age: 30,
            path: "/".to_owned(),
            attributes: vec![
                ("SameSite".to_owned(), "Lax".to_owned()),
                ("Secure".to_owned(), String::new()),
            ],
        })
    );
    // A ttl of 0 still generates (a session cookie); none, never.
    let session = key(convert(&with(cookie(Some(Default::default()), "Lax"))).unwrap());
    assert_eq!(session.generated.map(|t| t.max_age), Some(0));
    assert_eq!(
        key(convert(&with(cookie(None, "Lax"))).unwrap()).generated,
        None
    );
    // A Set-Cookie that cannot be a header is refused, naming the cookie.
    let error = convert(&with(cookie(Some(ttl), "Lax\r\nX: y")))
        .unwrap_err()
        .to_string();
    assert!(error.contains("httpCookie \"session\""), "{error}");
}

#[test]
fn a_retry_budget_is_read_within_its_bounds() {
    let with = |percent| proto::Cluster {
        retry_budget: Some(proto::RetryBudget {
            percent,
            min_retry_concurrency: 3,
        }),
        load_balancer: None,
        ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
    };
    assert_eq!(
        convert(&with(20.0)).unwrap().limits.retry_budget,
        Some(crate::model::RetryBudget {
            percent: 20.0,
            min_retry_concurrency: 3,
        })
    );
    for percent in [-1.0, 100.5, f64::NAN] {
        let error = convert(&with(percent)).unwrap_err().to_string();
        assert!(error.contains("retryBudget percent"), "{error}");
    }
}

#[test]
fn outlier_detection_takes_the_split_and_error_codes() {
    let with = |outlier: proto::OutlierDetection| {
        let c = proto::Cluster {
            name: "outbound|80||web.shop.svc.cluster.local".to_owned(),
            host: "web.shop.svc.cluster.local".to_owned(),
            port: 80,
            outlier_detection: Some(proto::OutlierDetection {
                consecutive_5xx_errors: Some(5),
                ..outlier
            }),
            ..Default::default()
        };
        convert(&c).map(|c| c.outlier.unwrap())
    };
    let plain = with(proto::OutlierDetection::default()).unwrap();
    assert_eq!(
        (plain.local_origin_failures, plain.http_error_codes),
        (None, vec![])
    );
    for (threshold, expected) in [(None, 5), (Some(0), 5), (Some(3), 3)] {
        let split = with(proto::OutlierDetection {
            split_external_local_origin_errors: true,
            consecutive_local_origin_failures: threshold,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(split.local_origin_failures, Some(expected), "{threshold:?}");
    }
    let codes = with(proto::OutlierDetection {
        http_error_codes: vec![429, 503],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(codes.http_error_codes, vec![429, 503]);
    let error = with(proto::OutlierDetection {
        http_error_codes: vec![429, 600],
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("outlierDetectionHttpErrorCodes 600 outside 100..599"),
        "{error}"
    );
}

#[test]
fn a_proxy_protocol_version_is_one_envoy_knows() {
    let with = |version| proto::Cluster {
        proxy_protocol: Some(proto::UpstreamProxyProtocol { version }),
        load_balancer: None,
        ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
    };
    assert_eq!(
        convert(&with(0)).unwrap().proxy_protocol,
        Some(ProxyProtocolVersion::V1)
    );
    assert_eq!(
        convert(&with(1)).unwrap().proxy_protocol,
        Some(ProxyProtocolVersion::V2)
    );
    let unset = proto::Cluster {
        load_balancer: None,
        ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
    };
    assert_eq!(convert(&unset).unwrap().proxy_protocol, None);
    let error = convert(&with(2)).unwrap_err().to_string();
    assert!(
        error.contains("outbound|80||web.shop.svc.cluster.local")
            && error.contains("proxy_protocol version 2 is not V1 or V2"),
        "{error}"
    );
}

#[test]
fn an_upstream_protocol_is_one_the_waypoint_knows() {
    let with = |upstream_protocol| proto::Cluster {
        upstream_protocol,
        load_balancer: None,
        ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
    };
    for (value, expected) in [
        (0, UpstreamProtocol::Default),
        (1, UpstreamProtocol::Http2),
        (2, UpstreamProtocol::Client),
    ] {
        assert_eq!(convert(&with(value)).unwrap().upstream_protocol, expected);
    }
    let error = convert(&with(3)).unwrap_err().to_string();
    assert!(
        error.contains("outbound|80||web.shop.svc.cluster.local")
            && error.contains("upstream_protocol 3 is not DEFAULT, HTTP2 or CLIENT"),
        "{error}"
    );
}

#[test]
fn an_upstream_protocol_decides_http2_from_the_client_and_the_port() {
    // (protocol, client over HTTP/2, port declared HTTP2 or GRPC, upstream over HTTP/2)
    let cases = [
        (UpstreamProtocol::Default, false, false, false),
        (UpstreamProtocol::Default, true, false, true),
        (UpstreamProtocol::Default, false, true, true),
        (UpstreamProtocol::Http2, false, false, true),
        (UpstreamProtocol::Http2, true, true, true),
        (UpstreamProtocol::Client, false, true, false),
        (UpstreamProtocol::Client, true, false, true),
    ];
    for (protocol, client, port, expected) in cases {
        assert_eq!(
            protocol.http2(client, port),
            expected,
            "{protocol:?} {client} {port}"
        );
    }
}

#[test]
fn a_tunnel_has_a_target_and_a_method_envoy_knows() {
    let with = |method, target_host: &str, target_port| proto::Cluster {
        tcp_tunneling: Some(proto::TcpTunneling {
            method,
            target_host: target_host.to_owned(),
            target_port,
        }),
        load_balancer: None,
        ..settings(proto::load_balancer_settings::SimpleLb::RoundRobin, 0)
    };
    let tunneling = |cluster| convert(&cluster).unwrap().tcp_tunneling;
    assert_eq!(
        tunneling(with(0, "db.example.com", 5432)),
        Some(crate::upstream::TcpTunneling {
            authority: "db.example.com:5432".to_owned(),
            use_post: false,
        })
    );
    assert_eq!(
        tunneling(with(1, "10.0.0.1", 443)),
        Some(crate::upstream::TcpTunneling {
            authority: "10.0.0.1:443".to_owned(),
            use_post: true,
        })
    );
    for (cluster, reason) in [
        (
            with(2, "db.example.com", 5432),
            "method 2 is not CONNECT or POST",
        ),
        (with(0, "", 5432), "target_host is empty"),
        (
            with(0, "db.example.com", 0),
            "target_port 0 is not in 1..65535",
        ),
    ] {
        let error = convert(&cluster).unwrap_err().to_string();
        assert!(error.contains(reason), "{error}");
    }
}
