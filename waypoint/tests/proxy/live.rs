//! Configuration changes reach connections that are already open: routes, faults, mirrors and
//! policies apply to the next request of a keep-alive connection (HTTP/1.1 and HTTP/2), a
//! destination that leaves the waypoint drains its connections, and a TCP connection the
//! policies no longer allow is closed.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_proto::waypoint as proto;

use waypoint::testing::hbone_tunnel;

use crate::harness::*;

/// Polls `check` every 10 ms for up to `limit`; true once it held.
async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn http2(harness: &Harness) -> http2::SendRequest<Full<Bytes>> {
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(harness.tunnel().await))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

async fn send_h2(sender: &mut http2::SendRequest<Full<Bytes>>, path: &str) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .uri(format!("http://{HOST}{path}"))
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    sender.ready().await.unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_route_change_reaches_the_next_request_of_an_open_connection() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let both = || vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])];
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], both()))
        .unwrap();
    let mut h1 = harness.http1().await;
    let mut h2 = http2(&harness).await;
    let answers =
        |h1: (StatusCode, http::HeaderMap, Bytes), h2: (StatusCode, Bytes)| [(h1.0, h1.2), h2];
    let first = answers(
        send_on(&mut h1, get("/")).await,
        send_h2(&mut h2, "/").await,
    );
    assert_eq!(
        first,
        [(StatusCode::OK, "v1".into()), (StatusCode::OK, "v1".into())]
    );

    harness
        .waypoint
        .apply_config(config(vec![route_to("v2")], both()))
        .unwrap();
    let moved = answers(
        send_on(&mut h1, get("/")).await,
        send_h2(&mut h2, "/").await,
    );
    assert_eq!(
        moved,
        [(StatusCode::OK, "v2".into()), (StatusCode::OK, "v2".into())],
        "the open connections still follow the old route"
    );

    // The route the connections were opened under named a subset the configuration no longer
    // has: the next requests take the new route instead of failing with 503 NC.
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let back = answers(
        send_on(&mut h1, get("/")).await,
        send_h2(&mut h2, "/").await,
    );
    assert_eq!(
        back,
        [(StatusCode::OK, "v1".into()), (StatusCode::OK, "v1".into())]
    );
}

#[tokio::test]
async fn faults_and_mirrors_come_and_go_on_an_open_connection() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let both = || vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])];
    let abort = aborted_route_to("v1", 500);
    let mirrored = mirrored_route_to("v1", "v2");
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], both()))
        .unwrap();
    let mut sender = harness.http1().await;
    assert_eq!(send_on(&mut sender, get("/")).await.0, StatusCode::OK);

    harness
        .waypoint
        .apply_config(config(vec![abort], both()))
        .unwrap();
    let (status, _, body) = send_on(&mut sender, get("/")).await;
    assert_eq!(
        (status, body.as_ref()),
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            b"fault filter abort".as_ref()
        )
    );

    harness
        .waypoint
        .apply_config(config(vec![mirrored], both()))
        .unwrap();
    for _ in 0..3 {
        assert_eq!(send_on(&mut sender, get("/m")).await.2, "v1");
    }
    assert!(
        within(Duration::from_secs(5), || v2.request_count() == 3).await,
        "the mirror got {} of 3 copies",
        v2.request_count()
    );

    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], both()))
        .unwrap();
    for _ in 0..10 {
        assert_eq!(send_on(&mut sender, get("/")).await.2, "v1");
    }
    assert_eq!(v2.request_count(), 3, "the mirror outlived its route");
}

#[tokio::test]
async fn a_destination_that_leaves_the_waypoint_drains_its_open_connections() {
    let (harness, _v1, _v2) = routed_to_v1().await;
    let mut h1 = harness.http1().await;
    let mut h2 = http2(&harness).await;
    assert_eq!(send_on(&mut h1, get("/")).await.0, StatusCode::OK);
    assert_eq!(send_h2(&mut h2, "/").await.0, StatusCode::OK);

    // The service stops using the waypoint (`istio.io/use-waypoint` removed): the idle
    // connections close, so that their clients' agents reconnect without the waypoint.
    let mut gone = config(Vec::new(), Vec::new());
    gone.services.clear();
    harness.waypoint.apply_config(gone).unwrap();
    assert!(
        within(Duration::from_secs(5), || h1.is_closed() && h2.is_closed()).await,
        "open connections to a destination no longer served stay open (http/1.1 closed: {}, h2 closed: {})",
        h1.is_closed(),
        h2.is_closed()
    );
    assert!(
        hbone_tunnel(
            &harness.client,
            harness.address,
            &harness.waypoint_identity,
            service_addr(),
            CLIENT_IP,
        )
        .await
        .is_err(),
        "a new tunnel for the destination is refused"
    );
}

#[tokio::test]
async fn an_endpoint_that_turns_unhealthy_loses_its_idle_upstream_connections() {
    let (harness, v1, _v2) = routed_to_v1().await;
    // The pod is also one the waypoint serves at its own address (as every pod using it is).
    harness.waypoint.apply_config(serving_v1(&v1)).unwrap();
    let cluster_name = format!("outbound|{PORT}|v1|{HOST}");
    let mut h1 = harness.http1().await;
    assert_eq!(send_on(&mut h1, get("/")).await.0, StatusCode::OK);
    let upstream = harness.waypoint.upstream();
    assert_eq!(upstream.open_connections(&cluster_name), 1, "pooled, idle");

    // The pod terminates (istiod would stop sending it; ztunnel's view marks it unhealthy):
    // the idle connection to it is closed, so its end races no request.
    let mut leaving = cluster("v1", &[&v1]);
    leaving.endpoints[0].healthy = false;
    let mut leaving = config(vec![route_to("v1")], vec![leaving]);
    leaving.workloads = vec![direct_workload(&v1)];
    harness.waypoint.apply_config(leaving).unwrap();
    assert!(
        within(Duration::from_secs(5), || upstream
            .open_connections(&cluster_name)
            == 0)
        .await,
        "the idle connection to an unhealthy endpoint stays open"
    );

    // A connection busy with a request when its endpoint turns unhealthy finishes the request
    // and is closed after it, instead of going back to the pool.
    harness.waypoint.apply_config(serving_v1(&v1)).unwrap();
    assert_eq!(send_on(&mut h1, get("/")).await.0, StatusCode::OK);
    v1.behaviour.delay_ms.store(300, Ordering::Relaxed);
    let slow = {
        let mut h1 = harness.http1().await;
        tokio::spawn(async move { send_on(&mut h1, get("/")).await.0 })
    };
    assert!(
        within(Duration::from_secs(5), || v1.request_count() == 3).await,
        "the slow request did not arrive"
    );
    let mut leaving = cluster("v1", &[&v1]);
    leaving.endpoints[0].healthy = false;
    let mut leaving = config(vec![route_to("v1")], vec![leaving]);
    leaving.workloads = vec![direct_workload(&v1)];
    harness.waypoint.apply_config(leaving).unwrap();
    assert_eq!(
        slow.await.unwrap(),
        StatusCode::OK,
        "the request in flight finishes"
    );
    assert!(
        within(Duration::from_secs(5), || upstream
            .open_connections(&cluster_name)
            == 0)
        .await,
        "the connection of a request in flight went back to the pool of an unhealthy endpoint"
    );
}

/// Routes to `v1`, which the waypoint also serves at its own address.
fn serving_v1(v1: &waypoint::testing::FakeEndpoint) -> proto::WaypointConfig {
    let mut serving = config(vec![route_to("v1")], vec![cluster("v1", &[v1])]);
    serving.workloads = vec![direct_workload(v1)];
    serving
}

#[tokio::test]
async fn an_upgraded_connection_ends_when_its_destination_leaves_the_waypoint() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let mut io = websocket(&harness).await;
    assert_eq!(websocket_echo(&mut io, b"\x81\x02hi").await, b"\x81\x02hi");
    assert_eq!(harness.waypoint.tcp_connections().len(), 1);

    // A policy change does not end it (the request was authorized when it was upgraded, as
    // Envoy's RBAC filter decides per request) ...
    let mut policy = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    policy.authorization_policies = vec![deny_paths(&["/other"], &[])];
    harness.waypoint.apply_config(policy).unwrap();
    assert_eq!(websocket_echo(&mut io, b"\x81\x02ok").await, b"\x81\x02ok");

    // ... but once the service no longer uses the waypoint, the waypoint stops carrying it.
    let mut gone = config(Vec::new(), Vec::new());
    gone.services.clear();
    harness.waypoint.apply_config(gone).unwrap();
    let mut buf = [0u8; 16];
    let ended = tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf))
        .await
        .expect("the upgraded connection is still open a second after its destination left");
    assert!(
        matches!(ended, Ok(0) | Err(_)),
        "the upgraded connection read {ended:?}"
    );
    assert!(
        within(Duration::from_secs(5), || harness
            .waypoint
            .tcp_connections()
            .is_empty())
        .await,
        "the upgraded connection stays registered"
    );
}

/// An HTTP/1.1 request written raw into a TCP tunnel, and the start of the answer read back.
async fn exchange(tunnel: &mut weft_hbone::HboneStream) -> String {
    let raw = format!("GET /tcp HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    tunnel.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), tunnel.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn an_open_tcp_connection_the_policies_no_longer_allow_is_closed() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = tcp_config(&v1);
    harness.waypoint.apply_config(cfg.clone()).unwrap();
    let other = harness._mesh.material("default", "other");
    let mut denied = harness.tunnel().await;
    let mut kept = hbone_tunnel(
        &other,
        harness.address,
        &harness.waypoint_identity,
        service_addr(),
        CLIENT_IP,
    )
    .await
    .unwrap();
    assert!(exchange(&mut denied).await.starts_with("HTTP/1.1 200"));
    assert!(exchange(&mut kept).await.starts_with("HTTP/1.1 200"));

    // A DENY of the first client's identity: its open connection is closed at once, the other
    // client's goes on.
    cfg.authorization_policies = vec![proto::L7Authorization {
        name: "deny-sleep".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Deny as i32,
        rules: vec![proto::Rule {
            from: vec![proto::rule::From {
                source: Some(proto::Source {
                    principals: vec!["cluster.local/ns/default/sa/sleep".to_owned()],
                    ..Default::default()
                }),
            }],
            to: Vec::new(),
            when: Vec::new(),
        }],
        dry_run: false,
        target_services: Vec::new(),
    }];
    let applied = Instant::now();
    harness.waypoint.apply_config(cfg).unwrap();
    let mut buf = [0u8; 64];
    let ended = tokio::time::timeout(Duration::from_secs(1), denied.read(&mut buf))
        .await
        .expect("the denied connection is still open a second after the policy");
    assert!(
        matches!(ended, Ok(0) | Err(_)),
        "the denied connection read {ended:?}"
    );
    assert!(applied.elapsed() < Duration::from_secs(1));
    assert!(exchange(&mut kept).await.starts_with("HTTP/1.1 200"));
    assert_eq!(harness.waypoint.tcp_connections().len(), 1);
}

/// Tracing that samples `percentage` of the requests without a decision, reporting no span
/// (the sampling decision is what the app sees on `traceparent`).
fn tracing_at(percentage: f64) -> proto::Tracing {
    proto::Tracing {
        provider: "otel".to_owned(),
        collector: vec!["127.0.0.1:4317".to_owned()],
        random_sampling_percentage: percentage,
        disable_span_reporting: true,
        ..Default::default()
    }
}

/// The sampled flag of the `traceparent` the app saw on its last request.
fn sampled_flag(endpoint: &waypoint::testing::FakeEndpoint) -> String {
    let seen = endpoint.last_request().expect("a request reached the app");
    let traceparent = seen
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(traceparent.starts_with("00-"), "{traceparent:?}");
    traceparent
        .rsplit('-')
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_services_own_tracing_decides_its_requests_and_follows_a_change_on_an_open_connection() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    // reviews samples nothing (a Telemetry attached to it); ratings, behind the same waypoint
    // and routed to the same app, keeps the waypoint's 100%.
    let ratings_addr = std::net::SocketAddr::new("10.96.0.11".parse().unwrap(), PORT);
    let with_reviews_telemetry = |telemetry: Option<proto::ServiceTelemetry>| {
        let mut config = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
        config.tracing = Some(tracing_at(100.0));
        let mut ratings = config.services[0].clone();
        ratings.hostname = "ratings.default.svc.cluster.local".to_owned();
        ratings.name = "ratings".to_owned();
        ratings.vips = vec![ratings_addr.ip().to_string()];
        config.services[0].telemetry = telemetry;
        config.services.push(ratings);
        config
    };
    harness
        .waypoint
        .apply_config(with_reviews_telemetry(Some(proto::ServiceTelemetry {
            tracing: Some(tracing_at(0.0)),
            access_log_disabled: false,
            metric_overrides: Vec::new(),
            access_logs: Vec::new(),
        })))
        .unwrap();
    let mut reviews = harness.http1().await;
    let mut ratings = harness.http1_to(ratings_addr).await;
    for _ in 0..3 {
        assert_eq!(send_on(&mut reviews, get("/")).await.0, StatusCode::OK);
        assert_eq!(sampled_flag(&v1), "00", "reviews' own 0% decides");
        assert_eq!(send_on(&mut ratings, get("/")).await.0, StatusCode::OK);
        assert_eq!(sampled_flag(&v1), "01", "ratings keeps the waypoint's 100%");
    }
    // The Telemetry goes: the next request on the same connection is sampled.
    harness
        .waypoint
        .apply_config(with_reviews_telemetry(None))
        .unwrap();
    assert_eq!(send_on(&mut reviews, get("/")).await.0, StatusCode::OK);
    assert_eq!(sampled_flag(&v1), "01");
}
