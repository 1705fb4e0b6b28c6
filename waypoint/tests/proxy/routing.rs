//! Routing: header matches, weighted splits, prefix redirects, CORS preflights, undefined
//! subsets, pods addressed directly, HTTP/2 and WebSocket clients, and a real client (curl)
//! over a local bridge.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_proto::waypoint as proto;

use waypoint::testing::{LOCALHOST, hbone_tunnel};

use crate::harness::*;

#[tokio::test]
async fn header_match_routes_to_its_subset_and_others_to_the_default() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let canary = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            headers: BTreeMap::from([(
                "end-user".to_owned(),
                proto::StringMatch {
                    match_type: Some(proto::string_match::MatchType::Exact("jason".to_owned())),
                },
            )]),
            ..Default::default()
        }],
        ..route_to("v2")
    };
    harness
        .waypoint
        .apply_config(config(
            vec![canary, route_to("v1")],
            vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])],
        ))
        .unwrap();

    let mut request = get("/reviews/1");
    request
        .headers_mut()
        .insert("end-user", "jason".parse().unwrap());
    let (status, headers, body) = harness.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v2");
    assert_eq!(headers["x-served-by"], "v2");

    let (status, _, body) = harness.get("/reviews/1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");

    // The endpoint saw the tunnel the waypoint opened: its identity, the endpoint address as
    // authority and the client in `forwarded`: the address it connected from, not the one it
    // claimed.
    let tunnel = v2.tunnels.lock().unwrap()[0].clone();
    assert_eq!(tunnel.authority, v2.app_address);
    assert_eq!(tunnel.forwarded_for, Some(LOCALHOST));
    assert_eq!(tunnel.peer, harness.waypoint_identity);
    let seen = v1.last_request().unwrap();
    assert!(
        seen.headers.contains_key("x-request-id"),
        "x-request-id generated"
    );
    assert_eq!(seen.headers["host"], HOST);
}

#[tokio::test]
async fn a_pod_addressed_directly_is_reached_exactly_and_still_authorized() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    // The service routes everything to v1 and its default spreads over both: neither may
    // decide where a request for v2's own address goes.
    let mut cfg = config(
        vec![route_to("v1")],
        vec![cluster("v1", &[&v1]), cluster("", &[&v1, &v2])],
    );
    cfg.workloads = vec![direct_workload(&v2)];
    cfg.authorization_policies
        .push(deny_admin_for_the_service());
    harness.waypoint.apply_config(cfg).unwrap();

    let mut sender = harness.http1_to(v2.app_address).await;
    for _ in 0..2 {
        let (status, headers, body) = send_on(&mut sender, get("/direct")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "v2");
        assert_eq!(headers["x-served-by"], "v2");
    }
    assert_eq!(v1.request_count(), 0, "v1 got traffic addressed to v2");
    assert_eq!(v2.request_count(), 2);
    // Processed at L7 on the way (a request id added), and carried to v2's own address.
    assert!(
        v2.last_request()
            .unwrap()
            .headers
            .contains_key("x-request-id")
    );
    let tunnel = v2.tunnels.lock().unwrap()[0].clone();
    assert_eq!(tunnel.authority, v2.app_address);
    assert_eq!(tunnel.forwarded_for, Some(LOCALHOST));
    assert_eq!(tunnel.peer, harness.waypoint_identity);

    // The service's policies follow its pods: addressing a pod does not escape them.
    let (status, _, body) = send_on(&mut sender, get("/admin")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, weft_policy::ACCESS_DENIED_BODY);
    assert_eq!(v2.request_count(), 2, "a denied request reached the pod");

    // The service is still routed as before.
    let (status, _, body) = harness.get("/through-the-service").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));

    // Counted as traffic to the workload, not to a service it was not addressed through.
    let text = harness.metrics().await;
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"200\"")
                && l.contains(
                    "destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews-v2\"",
                )
        })
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("destination_service=\"unknown\""), "{line}");
    assert!(line.ends_with(" 2"), "{line}");

    // The pod's one-endpoint cluster lives as long as the configuration lists the pod; the
    // service's clusters keep their state across the push.
    let direct = format!(
        "inbound-pod|{}||{}",
        v2.app_address.port(),
        v2.app_address.ip()
    );
    let service = format!("outbound|{PORT}|v1|{HOST}");
    let upstream = harness.waypoint.upstream();
    assert!(!upstream.endpoint_status(&direct).is_empty());
    assert!(!upstream.endpoint_status(&service).is_empty());
    let mut without = config(
        vec![route_to("v1")],
        vec![cluster("v1", &[&v1]), cluster("", &[&v1, &v2])],
    );
    without
        .authorization_policies
        .push(deny_admin_for_the_service());
    harness.waypoint.apply_config(without).unwrap();
    assert!(
        upstream.endpoint_status(&direct).is_empty(),
        "{direct} kept"
    );
    assert!(
        !upstream.endpoint_status(&service).is_empty(),
        "{service} forgotten"
    );
    // Not listed any more: the waypoint no longer serves that address.
    assert!(
        hbone_tunnel(
            &harness.client,
            harness.address,
            &harness.waypoint_identity,
            v2.app_address,
            CLIENT_IP
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_route_to_an_undefined_subset_answers_503_nc_and_the_other_routes_work() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(
            vec![route_to_undefined_subset(), route_to("v1")],
            vec![cluster("v1", &[&v1])],
        ))
        .unwrap();

    let (status, _, body) = harness.get("/v9/page").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.is_empty(), "{body:?}");
    assert_eq!(v1.request_count(), 0);
    let (status, _, body) = harness.get("/other").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));

    let text = harness.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"503\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("response_flags=\"NC\""), "{line}");
    assert!(line.ends_with(" 1"), "{line}");
}

#[tokio::test]
async fn weighted_split_follows_the_weights() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let split = proto::HttpRoute {
        route: vec![destination("v1", 80), destination("v2", 20)],
        ..Default::default()
    };
    harness
        .waypoint
        .apply_config(config(
            vec![split],
            vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])],
        ))
        .unwrap();
    let mut sender = harness.http1().await;
    let mut v1_count = 0;
    for _ in 0..2000 {
        let (status, _, body) = send_on(&mut sender, get("/")).await;
        assert_eq!(status, StatusCode::OK);
        if body == "v1" {
            v1_count += 1;
        }
    }
    assert!(
        (1500..=1700).contains(&v1_count),
        "v1 got {v1_count} of 2000"
    );
    assert_eq!(v1.request_count() + v2.request_count(), 2000);
}

#[tokio::test]
async fn a_prefix_redirect_replaces_the_matched_prefix_and_keeps_the_rest() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let moved = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix("/old".to_owned())),
            }),
            ..Default::default()
        }],
        redirect: Some(proto::HttpRedirect {
            prefix_rewrite: "/new".to_owned(),
            redirect_code: 302,
            ..Default::default()
        }),
        ..Default::default()
    };
    harness
        .waypoint
        .apply_config(config(
            vec![moved, route_to("v1")],
            vec![cluster("v1", &[&v1])],
        ))
        .unwrap();
    let mut sender = harness.http1().await;
    for (path, location) in [
        ("/old/page?a=1&b=2", "/new/page?a=1&b=2"),
        ("/old", "/new"),
        ("/older/x", "/newer/x"),
    ] {
        let (status, headers, _) = send_on(&mut sender, get(path)).await;
        assert_eq!(status, StatusCode::FOUND, "{path}");
        assert_eq!(
            headers["location"],
            format!("http://{HOST}{location}").as_str(),
            "{path}"
        );
    }
    let (status, _, body) = send_on(&mut sender, get("/other/old")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
    assert_eq!(v1.request_count(), 1, "a redirected request reached v1");
}

#[tokio::test]
async fn an_ignored_unmatched_preflight_is_answered_by_the_waypoint() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let cors = |forward: Option<bool>| proto::CorsPolicy {
        allow_origins: vec![proto::StringMatch {
            match_type: Some(proto::string_match::MatchType::Exact(
                "https://a.example".to_owned(),
            )),
        }],
        allow_methods: vec!["GET".to_owned(), "POST".to_owned()],
        forward_not_matching_preflights: forward,
        ..Default::default()
    };
    let forwarding = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix(
                    "/forwarded".to_owned(),
                )),
            }),
            ..Default::default()
        }],
        cors_policy: Some(cors(None)),
        ..route_to("v1")
    };
    let ignoring = proto::HttpRoute {
        cors_policy: Some(cors(Some(false))),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(
            vec![forwarding, ignoring],
            vec![cluster("v1", &[&v1])],
        ))
        .unwrap();
    let preflight = |path: &str, origin: &str| {
        Request::builder()
            .method(http::Method::OPTIONS)
            .uri(path)
            .header("host", HOST)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut sender = harness.http1().await;

    // Not allowed, IGNORE: answered here, with nothing that allows the origin.
    let (status, headers, _) =
        send_on(&mut sender, preflight("/items", "https://evil.example")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !headers.contains_key("access-control-allow-origin"),
        "{headers:?}"
    );
    assert_eq!(headers["access-control-allow-methods"], "GET,POST");
    assert!(!headers.contains_key("x-served-by"), "{headers:?}");
    assert_eq!(v1.request_count(), 0, "an ignored preflight reached v1");

    // Allowed: answered here and allowed.
    let (status, headers, _) = send_on(&mut sender, preflight("/items", "https://a.example")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["access-control-allow-origin"], "https://a.example");
    assert_eq!(v1.request_count(), 0);

    // Not allowed, without IGNORE: forwarded, as Envoy does by default.
    let (status, headers, body) =
        send_on(&mut sender, preflight("/forwarded", "https://evil.example")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
    assert_eq!(headers["x-served-by"], "v1");
    assert_eq!(v1.request_count(), 1);
}

#[tokio::test]
async fn a_gateway_api_routes_invalid_backend_gets_its_share_answered_500() {
    // What the controller sends for an HTTPRoute whose second backend does not resolve: its
    // weight stays on a cluster nothing serves, and the route says 500 for it, as Istio's
    // Envoy route does (`cluster_not_found_response_code: INTERNAL_SERVER_ERROR`).
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let split = proto::HttpRoute {
        route: vec![destination("v1", 50), destination("v9", 50)],
        cluster_not_found_response_code: proto::ClusterNotFoundResponseCode::InternalServerError
            as i32,
        ..Default::default()
    };
    harness
        .waypoint
        .apply_config(config(vec![split], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let mut sender = harness.http1().await;
    let (mut served, mut refused) = (0, 0);
    for _ in 0..400 {
        let (status, _, body) = send_on(&mut sender, get("/")).await;
        match status {
            StatusCode::OK => served += 1,
            StatusCode::INTERNAL_SERVER_ERROR => {
                assert!(body.is_empty(), "{body:?}");
                refused += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!((140..=260).contains(&refused), "{refused} of 400 got 500");
    assert_eq!(v1.request_count(), served);
    let text = harness.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"500\""))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("response_flags=\"NC\""), "{line}");
    assert!(line.ends_with(&format!(" {refused}")), "{line}");
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded_as_http2() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(harness.tunnel().await))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut pending = Vec::new();
    for i in 0..20 {
        let request = Request::builder()
            .uri(format!("http://{HOST}/h2/{i}"))
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap();
        pending.push(sender.send_request(request));
    }
    for response in futures::future::join_all(pending).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            "v1"
        );
    }
    let seen = v1.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_2);
    assert!(seen.path.starts_with("/h2/"));
}

#[tokio::test]
async fn websocket_upgrade_passes_bytes_both_ways() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let mut io = websocket(&harness).await;
    for message in [&b"\x81\x05hello"[..], &b"\x81\x05world"[..]] {
        assert_eq!(websocket_echo(&mut io, message).await, message);
    }
    let seen = v1.last_request().unwrap();
    assert_eq!(seen.headers["upgrade"], "websocket");
}

#[tokio::test]
async fn curl_over_a_local_bridge_gets_routed() {
    let (harness, _v1, _v2) = routed_to_v1().await;
    let harness = Arc::new(harness);
    // A plain TCP port on loopback that carries each connection through an HBONE tunnel, as the
    // node agent does for an application's connection.
    let bridge = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let bridge_address = bridge.local_addr().unwrap();
    let bridge_harness = Arc::clone(&harness);
    tokio::spawn(async move {
        for _ in 0..10 {
            let Ok((mut socket, _)) = bridge.accept().await else {
                return;
            };
            let mut tunnel = bridge_harness.tunnel().await;
            tokio::spawn(async move {
                let _ = tokio::io::copy_bidirectional(&mut socket, &mut tunnel).await;
            });
        }
    });
    for flags in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
        let output = tokio::process::Command::new("curl")
            .args([
                "-s",
                "-S",
                "--max-time",
                "10",
                "-H",
                &format!("Host: {HOST}"),
                "-D",
                "-",
            ])
            .args(flags)
            .arg(format!("http://{bridge_address}/curl"))
            .output()
            .await
            .expect("curl must be installed to run this test");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "curl {flags:?}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(text.contains(" 200"), "{text}");
        assert!(text.ends_with("v1"), "{text}");
    }
    // h2load: many multiplexed HTTP/2 streams over a few connections.
    let output = tokio::process::Command::new("h2load")
        .args(["-n", "400", "-c", "4", "-m", "20", "-t", "1"])
        .arg(format!("http://{bridge_address}/load"))
        .output()
        .await
        .expect("h2load must be installed to run this test");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains("400 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 400 2xx"), "{text}");
}
