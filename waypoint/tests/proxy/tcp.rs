//! Ports carried at L4: TCP forwarding, sniffing, connection-level authorization and Istio's
//! TCP metrics.

use std::time::Duration;

use http::StatusCode;
use weft_proto::waypoint as proto;
use weft_test_support::prometheus::Exposition;

use waypoint::testing::hbone_tunnel;

use crate::harness::*;

#[tokio::test]
async fn tcp_ports_are_forwarded_at_l4_and_unknown_protocols_sniffed() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = tcp_config(&v1);
    harness.waypoint.apply_config(cfg.clone()).unwrap();

    // An HTTP request on a TCP port reaches the app byte for byte: no x-request-id added.
    let raw = format!("GET /raw HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let mut tunnel = harness.tunnel().await;
    let (answer, ended) = exchange_raw(&mut tunnel, raw.as_bytes()).await;
    assert!(ended);
    assert!(answer.starts_with("HTTP/1.1 200"));
    let seen = v1.last_request().unwrap();
    assert_eq!(seen.path, "/raw");
    assert!(
        !seen.headers.contains_key("x-request-id"),
        "not proxied at L7"
    );

    // Undeclared protocol: HTTP is served at L7, anything else goes to the endpoint at L4.
    cfg.services[0].ports[0].protocol = proto::Protocol::Unspecified as i32;
    cfg.services[0].http_routes.push(route_to("v1"));
    harness.waypoint.apply_config(cfg).unwrap();
    let (status, _, _) = harness.get("/sniffed").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        v1.last_request()
            .unwrap()
            .headers
            .contains_key("x-request-id")
    );

    let tunnels_before = v1.tunnels.lock().unwrap().len();
    let mut tunnel = harness.tunnel().await;
    exchange_raw(&mut tunnel, b"\x16\x03\x01 not http at all\r\n\r\n").await;
    assert_eq!(
        v1.tunnels.lock().unwrap().len(),
        tunnels_before + 1,
        "opaque bytes were carried to the endpoint over a new tunnel"
    );
}

#[tokio::test]
async fn tcp_connections_are_authorized_at_l4_and_counted_in_istio_tcp_metrics() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let cfg = tcp_config(&v1);
    harness.waypoint.apply_config(cfg.clone()).unwrap();

    let raw = format!("GET /tcp HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let mut tunnel = harness.tunnel().await;
    let (answer, ended) = exchange_raw(&mut tunnel, raw.as_bytes()).await;
    assert!(ended);
    assert!(answer.starts_with("HTTP/1.1 200"));
    drop(tunnel);
    // The carried connection's label set names the endpoint it reached.
    const V1: &str = "spiffe://cluster.local/ns/default/sa/reviews-v1";
    const TO_V1: &str = "destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews-v1\"";
    let count_where = |text: &str, name: &str, principal: &str| -> Option<u64> {
        Exposition::parse(text)
            .find(name, &[("destination_principal", principal)])
            .map(|sample| sample.value as u64)
    };
    let counted = |text: &str, name: &str| count_where(text, name, V1);
    // The connection closes once both sides ended: wait for it to be counted.
    let mut text = String::new();
    for _ in 0..50 {
        text = harness.metrics().await;
        if counted(&text, "istio_tcp_connections_closed_total") == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        counted(&text, "istio_tcp_connections_opened_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        counted(&text, "istio_tcp_connections_closed_total"),
        Some(1),
        "{text}"
    );
    assert_eq!(
        counted(&text, "istio_tcp_received_bytes_total"),
        Some(raw.len() as u64),
        "{text}"
    );
    assert_eq!(
        counted(&text, "istio_tcp_sent_bytes_total"),
        Some(answer.len() as u64),
        "{text}"
    );
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap();
    for label in [
        "reporter=\"waypoint\"",
        "request_protocol=\"tcp\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        TO_V1,
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }

    // Policies apply to connections: an L4-only DENY for this client on this port refuses it;
    // a DENY on paths (HTTP-only) loses its paths on TCP and refuses every connection, as in
    // Istio; the endpoint sees neither.
    let deny = |name: &str, operation: proto::Operation, from: Vec<proto::rule::From>| {
        proto::L7Authorization {
            name: name.to_owned(),
            namespace: "default".to_owned(),
            action: proto::l7_authorization::Action::Deny as i32,
            rules: vec![proto::Rule {
                from,
                to: vec![proto::rule::To {
                    operation: Some(operation),
                }],
                when: Vec::new(),
            }],
            dry_run: false,
            target_services: Vec::new(),
        }
    };
    let sleep = vec![proto::rule::From {
        source: Some(proto::Source {
            principals: vec!["cluster.local/ns/default/sa/sleep".to_owned()],
            ..Default::default()
        }),
    }];
    let on_port = proto::Operation {
        ports: vec![u32::from(PORT)],
        ..Default::default()
    };
    let on_other_port = proto::Operation {
        ports: vec![u32::from(PORT) + 1],
        ..Default::default()
    };
    let on_paths = proto::Operation {
        paths: vec!["/admin".to_owned()],
        ..Default::default()
    };
    let tunnels_before = v1.tunnels.lock().unwrap().len();
    let cases = [
        ("deny-sleep-port", on_port, sleep.clone(), false),
        ("deny-sleep-other-port", on_other_port, sleep, true),
        ("deny-paths", on_paths, Vec::new(), false),
    ];
    for (name, operation, from, allowed) in cases {
        let mut denied = cfg.clone();
        denied.authorization_policies = vec![deny(name, operation, from)];
        harness.waypoint.apply_config(denied).unwrap();
        let tunnel = hbone_tunnel(
            &harness.client,
            harness.address,
            &harness.waypoint_identity,
            service_addr(),
            CLIENT_IP,
        )
        .await;
        assert_eq!(tunnel.is_ok(), allowed, "{name}");
    }
    assert_eq!(
        v1.tunnels.lock().unwrap().len(),
        tunnels_before + 1,
        "only the allowed connection reached the endpoint"
    );
    // Refused connections are counted too, without an endpoint; the allowed one with v1.
    let text = harness.metrics().await;
    let closed = "istio_tcp_connections_closed_total";
    assert_eq!(count_where(&text, closed, "unknown"), Some(2), "{text}");
    assert_eq!(counted(&text, closed), Some(2), "{text}");
}
