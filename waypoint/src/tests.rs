//! End-to-end tests through the real proxy: HBONE client -> waypoint (TLS 1.3, HTTP/2 CONNECT)
//! -> HTTP inside the tunnel -> HBONE to fake endpoints with their own certificates.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use weft_proto::waypoint as proto;

use crate::testing::{FakeEndpoint, LOCALHOST, TestIdentity, TestMesh, hbone_tunnel, resolver_for};
use crate::{Waypoint, WaypointOptions};

mod live;

const HOST: &str = "reviews.default.svc.cluster.local";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const PORT: u16 = 9080;
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

fn service_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP), PORT)
}

fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn proto_endpoint(e: &FakeEndpoint) -> proto::Endpoint {
    proto::Endpoint {
        address: e.app_address.ip().to_string(),
        port: u32::from(e.app_address.port()),
        identity: e.identity.to_string(),
        labels: BTreeMap::from([
            ("app".to_owned(), "reviews".to_owned()),
            ("version".to_owned(), e.name.clone()),
        ]),
        workload_uid: format!("uid-{}", e.name),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        healthy: true,
        weight: 1,
    }
}

fn cluster(subset: &str, endpoints: &[&FakeEndpoint]) -> proto::Cluster {
    proto::Cluster {
        name: format!("outbound|{PORT}|{subset}|{HOST}"),
        host: HOST.to_owned(),
        subset: subset.to_owned(),
        port: u32::from(PORT),
        endpoints: endpoints.iter().map(|e| proto_endpoint(e)).collect(),
        load_balancer: Some(proto::LoadBalancerSettings {
            lb_policy: Some(proto::load_balancer_settings::LbPolicy::Simple(
                proto::load_balancer_settings::SimpleLb::RoundRobin as i32,
            )),
        }),
        ..Default::default()
    }
}

fn destination(subset: &str, weight: i32) -> proto::HttpRouteDestination {
    proto::HttpRouteDestination {
        destination: Some(proto::Destination {
            host: HOST.to_owned(),
            subset: subset.to_owned(),
            port: 0,
            cluster: format!("outbound|{PORT}|{subset}|{HOST}"),
        }),
        weight,
        headers: None,
    }
}

fn route_to(subset: &str) -> proto::HttpRoute {
    proto::HttpRoute {
        route: vec![destination(subset, 0)],
        virtual_service: "default/reviews".to_owned(),
        ..Default::default()
    }
}

fn config(routes: Vec<proto::HttpRoute>, clusters: Vec<proto::Cluster>) -> proto::WaypointConfig {
    proto::WaypointConfig {
        name: "waypoint".to_owned(),
        namespace: "default".to_owned(),
        services: vec![proto::WaypointService {
            hostname: HOST.to_owned(),
            name: "reviews".to_owned(),
            namespace: "default".to_owned(),
            vips: vec![VIP.to_string()],
            ports: vec![proto::ServicePort {
                port: u32::from(PORT),
                name: "http".to_owned(),
                protocol: proto::Protocol::Http as i32,
                target_port: u32::from(PORT),
            }],
            http_routes: routes,
            tcp_routes: Vec::new(),
        }],
        clusters,
        authorization_policies: Vec::new(),
        source_workloads: Vec::new(),
        workloads: Vec::new(),
    }
}

struct Harness {
    _mesh: TestMesh,
    waypoint: Waypoint,
    address: SocketAddr,
    client: TestIdentity,
    waypoint_identity: weft_identity::SpiffeId,
    _drain: watch::Sender<bool>,
}

impl Harness {
    async fn start(mesh: TestMesh, endpoints: &[&FakeEndpoint]) -> Self {
        let material = mesh.material("default", "waypoint");
        let waypoint_identity = material.identity().clone();
        let mut options = WaypointOptions::new(waypoint_identity.clone(), material.source());
        options.hbone_address = resolver_for(endpoints);
        let waypoint = Waypoint::new(options);
        let listener = waypoint
            .bind_hbone(SocketAddr::new(LOCALHOST, 0))
            .await
            .unwrap();
        let address = listener.address().unwrap();
        let (drain, drained) = watch::channel(false);
        tokio::spawn(listener.run(drained));
        let client = mesh.material("default", "sleep");
        Harness {
            _mesh: mesh,
            waypoint,
            address,
            client,
            waypoint_identity,
            _drain: drain,
        }
    }

    async fn tunnel(&self) -> weft_hbone::HboneStream {
        self.tunnel_to(service_addr()).await
    }

    /// A tunnel for `authority`, as an agent opens one for the address its client dialled.
    async fn tunnel_to(&self, authority: SocketAddr) -> weft_hbone::HboneStream {
        hbone_tunnel(
            &self.client,
            self.address,
            &self.waypoint_identity,
            authority,
            CLIENT_IP,
        )
        .await
        .unwrap()
    }

    async fn http1(&self) -> http1::SendRequest<Full<Bytes>> {
        self.http1_to(service_addr()).await
    }

    async fn http1_to(&self, authority: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(self.tunnel_to(authority).await))
            .await
            .unwrap();
        tokio::spawn(connection.with_upgrades());
        sender
    }

    /// The waypoint's Prometheus text, from its metrics endpoint.
    async fn metrics(&self) -> String {
        let metrics = self
            .waypoint
            .bind_metrics(SocketAddr::new(LOCALHOST, 0))
            .await
            .unwrap();
        let address = metrics.address().unwrap();
        tokio::spawn(metrics.run());
        let (status, text) = http_get(address, "/metrics").await;
        assert_eq!(status, StatusCode::OK, "{text}");
        text
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut sender = self.http1().await;
        send_on(&mut sender, request).await
    }

    async fn get(&self, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        self.send(get(path)).await
    }
}

/// A plain HTTP/1.1 GET to a local admin-style endpoint: status and body.
async fn http_get(address: SocketAddr, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::builder()
                .uri(path)
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn send_on(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    sender.ready().await.unwrap();
    let response: Response<hyper::body::Incoming> = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

async fn two_endpoints() -> (TestMesh, FakeEndpoint, FakeEndpoint) {
    let mesh = TestMesh::new();
    let v1 = FakeEndpoint::start(&mesh, "v1", "default", "reviews-v1").await;
    let v2 = FakeEndpoint::start(&mesh, "v2", "default", "reviews-v2").await;
    (mesh, v1, v2)
}

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

/// A deny on `/admin` attached to the service only.
fn deny_admin_for_the_service() -> proto::L7Authorization {
    proto::L7Authorization {
        name: "deny-admin".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Deny as i32,
        rules: vec![proto::Rule {
            from: Vec::new(),
            to: vec![proto::rule::To {
                operation: Some(proto::Operation {
                    paths: vec!["/admin".to_owned()],
                    ..Default::default()
                }),
            }],
            when: Vec::new(),
        }],
        dry_run: false,
        target_services: vec![HOST.to_owned()],
    }
}

#[tokio::test]
async fn a_claimed_source_address_does_not_escape_an_ip_block_rule() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.authorization_policies.push(proto::L7Authorization {
        name: "deny-loopback".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Deny as i32,
        rules: vec![proto::Rule {
            from: vec![proto::rule::From {
                source: Some(proto::Source {
                    ip_blocks: vec!["127.0.0.0/8".to_owned()],
                    ..Default::default()
                }),
            }],
            to: Vec::new(),
            when: Vec::new(),
        }],
        dry_run: false,
        target_services: vec![HOST.to_owned()],
    });
    harness.waypoint.apply_config(cfg).unwrap();
    // The client connects from 127.0.0.1 and claims `forwarded: for=10.0.0.7`.
    let (status, _, _) = harness.get("/from-loopback").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(v1.request_count(), 0);
}

#[tokio::test]
async fn a_client_of_another_trust_domain_is_refused() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let foreign = mesh.material_in("evil.example", "default", "sleep");
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let refused = hbone_tunnel(
        &foreign,
        harness.address,
        &harness.waypoint_identity,
        service_addr(),
        CLIENT_IP,
    )
    .await;
    assert!(refused.is_err(), "a foreign trust domain got a tunnel");
    let (status, _, _) = harness.get("/still-served").await;
    assert_eq!(status, StatusCode::OK);
}

/// The fake endpoint `e` as a workload the waypoint serves at its own address.
fn direct_workload(e: &FakeEndpoint) -> proto::WaypointWorkload {
    proto::WaypointWorkload {
        address: e.app_address.ip().to_string(),
        identity: e.identity.to_string(),
        labels: BTreeMap::from([("app".to_owned(), "reviews".to_owned())]),
        workload_uid: format!("uid-{}", e.name),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        namespace: "default".to_owned(),
        services: vec![HOST.to_owned()],
        ports: vec![proto::WorkloadPort {
            port: u32::from(e.app_address.port()),
            protocol: proto::Protocol::Http as i32,
        }],
    }
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
    let undefined = proto::HttpRoute {
        name: "to-v9".to_owned(),
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix("/v9".to_owned())),
            }),
            ..Default::default()
        }],
        // No cluster by this name: what istiod sends for a subset no DestinationRule defines.
        ..route_to("v9")
    };
    harness
        .waypoint
        .apply_config(config(
            vec![undefined, route_to("v1")],
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

/// A route to `subset` whose every request is aborted with `status`.
fn aborted_route_to(subset: &str, status: i32) -> proto::HttpRoute {
    proto::HttpRoute {
        fault: Some(proto::HttpFaultInjection {
            delay: None,
            abort: Some(proto::http_fault_injection::Abort {
                error_type: Some(proto::http_fault_injection::abort::ErrorType::HttpStatus(
                    status,
                )),
                percentage: Some(proto::Percent { value: 100.0 }),
            }),
        }),
        ..route_to(subset)
    }
}

#[tokio::test]
async fn fault_abort_answers_without_reaching_the_endpoint() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = aborted_route_to("v1", 418);
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    for _ in 0..5 {
        let (status, _, body) = harness.get("/").await;
        assert_eq!(status, StatusCode::IM_A_TEAPOT);
        assert_eq!(body, "fault filter abort");
    }
    assert_eq!(v1.request_count(), 0);
}

#[tokio::test]
async fn fault_delay_holds_the_request() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = proto::HttpRoute {
        fault: Some(proto::HttpFaultInjection {
            delay: Some(proto::http_fault_injection::Delay {
                fixed_delay: Some(duration(Duration::from_millis(600))),
                percentage: None,
            }),
            abort: None,
        }),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let started = Instant::now();
    let (status, _, body) = harness.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn retries_recover_from_an_endpoint_failing_twice() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 3,
            per_try_timeout: None,
            retry_on: "5xx".to_owned(),
        }),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    v1.behaviour.fail_first.store(2, Ordering::Relaxed);
    let (status, _, body) = harness.get("/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");
    assert_eq!(v1.request_count(), 3, "two failures, then success");

    // Without retries the first failure reaches the client.
    let no_retry = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 0,
            per_try_timeout: None,
            retry_on: "5xx".to_owned(),
        }),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![no_retry], vec![cluster("v1", &[&v1])]))
        .unwrap();
    v1.behaviour.fail_first.store(1, Ordering::Relaxed);
    let (status, _, _) = harness.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn route_timeout_answers_504_near_the_limit() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let route = proto::HttpRoute {
        timeout: Some(duration(Duration::from_millis(200))),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![cluster("v1", &[&v1])]))
        .unwrap();
    v1.behaviour.delay_ms.store(3000, Ordering::Relaxed);
    let started = Instant::now();
    let (status, _, body) = harness.get("/").await;
    let elapsed = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(body, "upstream request timeout");
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_millis(1000),
        "{elapsed:?}"
    );
}

#[tokio::test]
async fn deny_policy_on_a_path_also_covers_its_encoded_and_doubled_forms() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.authorization_policies.push(proto::L7Authorization {
        name: "deny-admin".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Deny as i32,
        rules: vec![proto::Rule {
            from: Vec::new(),
            to: vec![proto::rule::To {
                operation: Some(proto::Operation {
                    paths: vec!["/admin".to_owned(), "/admin/*".to_owned()],
                    ..Default::default()
                }),
            }],
            when: Vec::new(),
        }],
        dry_run: false,
        target_services: Vec::new(),
    });
    harness.waypoint.apply_config(cfg).unwrap();
    for path in [
        "/admin",
        "//admin",
        "/%2Fadmin",
        "/x/..%2Fadmin",
        "/admin/users",
        "/%61dmin",
    ] {
        let (status, _, body) = harness.get(path).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert_eq!(body, weft_policy::ACCESS_DENIED_BODY, "{path}");
    }
    assert_eq!(v1.request_count(), 0);
    let (status, _, _) = harness.get("/productpage").await;
    assert_eq!(status, StatusCode::OK);
}

/// A route to `subset` with every request mirrored to `mirror`.
fn mirrored_route_to(subset: &str, mirror: &str) -> proto::HttpRoute {
    proto::HttpRoute {
        mirrors: vec![proto::HttpMirrorPolicy {
            destination: destination(mirror, 0).destination,
            percentage: None,
        }],
        ..route_to(subset)
    }
}

#[tokio::test]
async fn mirror_delivers_a_copy_and_the_primary_answers() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let route = mirrored_route_to("v1", "v2");
    harness
        .waypoint
        .apply_config(config(
            vec![route],
            vec![cluster("v1", &[&v1]), cluster("v2", &[&v2])],
        ))
        .unwrap();
    let request = Request::builder()
        .method("POST")
        .uri("/ratings")
        .header("host", HOST)
        .body(Full::new(Bytes::from_static(b"payload")))
        .unwrap();
    let (status, _, body) = harness.send(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "v1");
    for _ in 0..100 {
        if v2.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = v2.last_request().expect("mirror copy delivered");
    assert_eq!(copy.method, "POST");
    assert_eq!(copy.path, "/ratings");
    assert_eq!(copy.body, "payload");
    assert_eq!(copy.headers["host"], format!("{HOST}-shadow"));
}

#[tokio::test]
async fn outlier_detection_ejects_a_failing_endpoint_and_lets_it_back() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut both = cluster("", &[&v1, &v2]);
    both.outlier_detection = Some(proto::OutlierDetection {
        consecutive_5xx_errors: Some(2),
        interval: Some(duration(Duration::from_millis(100))),
        base_ejection_time: Some(duration(Duration::from_millis(400))),
        max_ejection_percent: 50,
        ..Default::default()
    });
    let route = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 0,
            ..Default::default()
        }),
        ..route_to("")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![both]))
        .unwrap();
    v1.behaviour.status.store(500, Ordering::Relaxed);
    let mut sender = harness.http1().await;
    for _ in 0..4 {
        send_on(&mut sender, get("/")).await;
    }
    assert_eq!(v1.request_count(), 2, "two 5xx, then ejected");
    let before = v2.request_count();
    for _ in 0..10 {
        let (status, _, body) = send_on(&mut sender, get("/")).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v2".as_ref()));
    }
    assert_eq!(v2.request_count(), before + 10);
    assert_eq!(v1.request_count(), 2);

    v1.behaviour.status.store(0, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..10 {
        let (status, _, _) = send_on(&mut sender, get("/")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        v1.request_count() >= 6,
        "v1 back in rotation: {}",
        v1.request_count()
    );
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded_as_http2() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
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
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let mut sender = harness.http1().await;
    let request = Request::builder()
        .uri("/ws")
        .header("host", HOST)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let upgraded = hyper::upgrade::on(response).await.unwrap();
    let mut io = TokioIo::new(upgraded);
    for message in [&b"\x81\x05hello"[..], &b"\x81\x05world"[..]] {
        io.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message);
    }
    let seen = v1.last_request().unwrap();
    assert_eq!(seen.headers["upgrade"], "websocket");
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_others_still_work() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let mut tunnel = harness.tunnel().await;
    tunnel
        .write_all(
            format!(
                "POST /smuggle HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(v1.request_count(), 0);

    let (status, _, body) = harness.get("/fine").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
}

#[tokio::test]
async fn rapid_reset_burst_is_survived() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let tunnel = harness.tunnel().await;
    let (client, connection) = h2::client::handshake(tunnel).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client;
    let mut sent = 0;
    for i in 0..1000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let request = Request::builder()
            .uri(format!("http://{HOST}/reset/{i}"))
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    assert!(sent > 0);
    // The server closes the abusive connection with GOAWAY(ENHANCE_YOUR_CALM) (hyper's bound
    // on pending-accept resets) instead of working through every stream.
    let outcome = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("connection closed by the server")
        .unwrap();
    let error = outcome.expect_err("rapid reset must end the connection");
    assert!(error.is_go_away() && error.is_remote(), "{error:?}");
    assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    let (status, _, body) = harness.get("/after-reset").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
}

#[tokio::test]
async fn curl_over_a_local_bridge_gets_routed() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Arc::new(Harness::start(mesh, &[&v1]).await);
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
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

#[tokio::test]
async fn invalid_config_is_rejected_and_the_last_good_one_kept() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let bad_route = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Regex(
                    "(unclosed".to_owned(),
                )),
            }),
            ..Default::default()
        }],
        ..route_to("v1")
    };
    let error = harness
        .waypoint
        .apply_config(config(vec![bad_route], vec![cluster("v1", &[&v1])]))
        .unwrap_err();
    assert!(error.contains("http route 0"), "{error}");
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
}

#[tokio::test]
async fn requests_are_counted_with_istio_labels() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    for _ in 0..3 {
        harness.get("/").await;
    }
    let text = harness.metrics().await;
    let line = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{") && l.contains("response_code=\"200\""))
        .unwrap_or_else(|| panic!("{text}"));
    for label in [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/default/sa/sleep\"",
        "destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews-v1\"",
        "destination_service=\"reviews.default.svc.cluster.local\"",
        "destination_service_name=\"reviews\"",
        "destination_version=\"v1\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ] {
        assert!(line.contains(label), "{label} missing in {line}");
    }
    assert!(line.ends_with(" 3"), "{line}");
    assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
    assert!(text.contains("le=\"0.5\""));
}

#[tokio::test]
async fn connection_pool_overflow_answers_503_uo() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Arc::new(Harness::start(mesh, &[&v1]).await);
    let mut limited = cluster("v1", &[&v1]);
    limited.connection_pool = Some(proto::ConnectionPoolSettings {
        tcp: Some(proto::connection_pool_settings::TcpSettings {
            max_connections: 1,
            ..Default::default()
        }),
        http: Some(proto::connection_pool_settings::HttpSettings {
            http1_max_pending_requests: 1,
            ..Default::default()
        }),
    });
    let route = proto::HttpRoute {
        retries: Some(proto::HttpRetry {
            attempts: 0,
            ..Default::default()
        }),
        ..route_to("v1")
    };
    harness
        .waypoint
        .apply_config(config(vec![route], vec![limited]))
        .unwrap();
    v1.behaviour.delay_ms.store(300, Ordering::Relaxed);
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move { harness.get("/").await }));
    }
    let mut ok = 0;
    let mut overflow = 0;
    for task in tasks {
        let (status, _, body) = task.await.unwrap();
        match status {
            StatusCode::OK => ok += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(
                    String::from_utf8_lossy(&body).contains("overflow"),
                    "{body:?}"
                );
                overflow += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // One in flight and one pending succeed; the other three overflow.
    assert_eq!((ok, overflow), (2, 3));
    assert!(
        harness
            .waypoint
            .upstream()
            .open_connections("outbound|9080|v1|reviews.default.svc.cluster.local")
            <= 1
    );
}

async fn serve_grpc(router: tonic::transport::server::Router) -> (SocketAddr, watch::Sender<bool>) {
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, mut stopped) = watch::channel(false);
    tokio::spawn(router.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async move {
            let _ = stopped.wait_for(|s| *s).await;
        },
    ));
    (address, stop)
}

#[tokio::test]
async fn configuration_arrives_over_delta_ads_and_a_bad_push_is_nacked() {
    use prost_types::Any;
    use weft_xds::{DeltaAdsServer, ResourceStore, XdsCounters};

    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut resources = ResourceStore::new();
    let type_url = weft_proto::WAYPOINT_CONFIG_TYPE_URL;
    resources.set(
        type_url,
        "default/waypoint",
        Any::from_msg(&config(vec![route_to("v1")], vec![cluster("v1", &[&v1])])).unwrap(),
    );
    let counters = Arc::new(XdsCounters::default());
    let server = DeltaAdsServer::new(resources.reader()).with_metrics(counters.clone());
    let (address, _stop) =
        serve_grpc(tonic::transport::Server::builder().add_service(server.into_service())).await;
    let client = weft_xds::DeltaClient::new(
        weft_xds::Target::address(&format!("http://{address}")).unwrap(),
        weft_proto::envoy::config::core::v3::Node {
            id: "waypoint~127.0.0.1~waypoint.default~default.svc.cluster.local".to_owned(),
            ..Default::default()
        },
    )
    .subscribe_names(
        type_url,
        vec!["default/waypoint".to_owned()],
        harness.waypoint.store().xds_handler(),
    );
    let (_shutdown, mut shutdown_rx) = watch::channel(false);
    tokio::spawn(client.run_until(async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    }));
    let mut version = harness.waypoint.store().version();
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v >= 1))
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));

    // A push the waypoint cannot apply is NACKed and traffic keeps the last good routes.
    let mut bad = config(vec![route_to("v2")], vec![cluster("v2", &[&v2])]);
    bad.services[0].vips[0] = "not-an-ip".to_owned();
    resources.set(type_url, "default/waypoint", Any::from_msg(&bad).unwrap());
    for _ in 0..200 {
        if counters.rejects() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(counters.rejects(), 1);
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));

    // The next good push applies.
    resources.set(
        type_url,
        "default/waypoint",
        Any::from_msg(&config(vec![route_to("v2")], vec![cluster("v2", &[&v2])])).unwrap(),
    );
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v >= 2))
        .await
        .unwrap()
        .unwrap();
    let (status, _, body) = harness.get("/").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v2".as_ref()));
}

#[tokio::test]
async fn admin_config_dump_shows_config_endpoint_state_certificate_and_xds_never_the_key() {
    use prost_types::Any;
    use weft_xds::{DeltaAdsServer, ResourceStore};

    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut both = cluster("", &[&v1, &v2]);
    both.outlier_detection = Some(proto::OutlierDetection {
        consecutive_5xx_errors: Some(2),
        base_ejection_time: Some(duration(Duration::from_secs(30))),
        max_ejection_percent: 50,
        ..Default::default()
    });
    let default = proto::HttpRoute {
        name: "default".to_owned(),
        retries: Some(proto::HttpRetry {
            attempts: 0,
            ..Default::default()
        }),
        ..route_to("")
    };
    let undefined = proto::HttpRoute {
        name: "to-v9".to_owned(),
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix("/v9".to_owned())),
            }),
            ..Default::default()
        }],
        ..route_to("v9")
    };
    let mut good = config(vec![undefined, default], vec![both]);
    good.workloads = vec![direct_workload(&v2)];
    good.authorization_policies
        .push(deny_admin_for_the_service());

    // Over delta ADS, with one push the waypoint must refuse.
    let mut resources = ResourceStore::new();
    let type_url = weft_proto::WAYPOINT_CONFIG_TYPE_URL;
    resources.set(type_url, "default/waypoint", Any::from_msg(&good).unwrap());
    let server = DeltaAdsServer::new(resources.reader());
    let (address, _stop) =
        serve_grpc(tonic::transport::Server::builder().add_service(server.into_service())).await;
    let client = weft_xds::DeltaClient::new(
        weft_xds::Target::address(&format!("http://{address}")).unwrap(),
        weft_proto::envoy::config::core::v3::Node {
            id: "waypoint~127.0.0.1~waypoint.default~default.svc.cluster.local".to_owned(),
            ..Default::default()
        },
    )
    .subscribe_names(
        type_url,
        vec!["default/waypoint".to_owned()],
        harness.waypoint.store().xds_handler(),
    );
    let state = client.state();
    let (_shutdown, mut shutdown_rx) = watch::channel(false);
    tokio::spawn(client.run_until(async move {
        let _ = shutdown_rx.wait_for(|s| *s).await;
    }));
    let mut version = harness.waypoint.store().version();
    tokio::time::timeout(Duration::from_secs(10), version.wait_for(|v| *v >= 1))
        .await
        .unwrap()
        .unwrap();
    let mut bad = good.clone();
    bad.services[0].vips[0] = "not-an-ip".to_owned();
    resources.set(type_url, "default/waypoint", Any::from_msg(&bad).unwrap());
    for _ in 0..200 {
        if harness
            .waypoint
            .store()
            .xds_history()
            .last_rejected
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    // v1 fails twice and is ejected.
    v1.behaviour.status.store(500, Ordering::Relaxed);
    let mut sender = harness.http1().await;
    for _ in 0..4 {
        send_on(&mut sender, get("/")).await;
    }

    let admin = harness
        .waypoint
        .bind_admin(
            SocketAddr::new(LOCALHOST, 0),
            Some(state),
            serde_json::json!({"adminAddress": "127.0.0.1:15000"}),
        )
        .await
        .unwrap();
    let admin_address = admin.address().unwrap();
    tokio::spawn(admin.run());
    let (status, text) = http_get(admin_address, "/config_dump").await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert!(
        !text.contains("PRIVATE KEY") && !text.contains("BEGIN"),
        "{text}"
    );
    let dump: serde_json::Value = serde_json::from_str(&text).unwrap();

    assert_eq!(dump["waypoint"], "default/waypoint");
    assert_eq!(dump["settings"]["adminAddress"], "127.0.0.1:15000");
    let certificate = &dump["certificate"];
    assert_eq!(
        certificate["identity"],
        harness.waypoint_identity.to_string()
    );
    assert!(
        certificate["serial"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{certificate}"
    );
    assert!(
        certificate["not_after"]
            .as_str()
            .is_some_and(|s| s.ends_with('Z')),
        "{certificate}"
    );
    assert_eq!(certificate.as_object().unwrap().len(), 7, "{certificate}");

    let xds = &dump["xds"];
    assert_eq!(xds["connected"], true, "{xds}");
    assert_eq!(xds["last_applied"]["resource"], "default/waypoint", "{xds}");
    assert!(
        xds["last_applied"]["version"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{xds}"
    );
    assert!(
        xds["last_rejected"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not-an-ip")),
        "{xds}"
    );
    assert_ne!(
        xds["last_rejected"]["version"],
        xds["last_applied"]["version"]
    );

    let service = &dump["services"][0];
    assert_eq!(service["hostname"], HOST);
    assert_eq!(service["ports"][0]["protocol"], "http");
    let routes = service["http_routes"].as_array().unwrap();
    assert_eq!(routes[0]["name"], "to-v9");
    assert_eq!(
        routes[0]["action"]["forward"][0]["missing"], true,
        "{service}"
    );
    assert_eq!(
        routes[1]["action"]["forward"][0]["missing"], false,
        "{service}"
    );
    assert_eq!(routes[1]["retries"]["attempts"], 0);

    let cluster = &dump["clusters"][0];
    assert!(
        cluster["outlier_detection"]
            .as_str()
            .unwrap()
            .contains("consecutive5xxErrors 2")
    );
    let endpoint = |e: &FakeEndpoint| {
        cluster["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == e.app_address.to_string())
            .unwrap_or_else(|| panic!("{cluster}"))
            .clone()
    };
    let ejected = endpoint(&v1);
    assert_eq!(ejected["outlier"]["ejected"], true, "{ejected}");
    assert_eq!(ejected["outlier"]["ejections"], 1, "{ejected}");
    assert!(
        ejected["outlier"]["ejection_remaining_ms"]
            .as_u64()
            .unwrap()
            > 20_000
    );
    assert_eq!(ejected["identity"], v1.identity.to_string());
    assert_eq!(endpoint(&v2)["outlier"]["ejected"], false);

    assert_eq!(
        dump["workloads"][0]["address"],
        v2.app_address.ip().to_string()
    );
    assert_eq!(dump["workloads"][0]["services"][0], HOST);
    let policy = &dump["policies"][0];
    assert_eq!(
        (policy["name"].as_str(), policy["action"].as_str()),
        (Some("deny-admin"), Some("DENY"))
    );
    assert_eq!(policy["target_services"][0], HOST);

    // Nothing else is served there.
    let (status, _) = http_get(admin_address, "/metrics").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

mod fake_ca {
    use weft_identity::{CertificateAuthority, SpiffeId};
    use weft_proto::istio::ca::istio_certificate_service_server::IstioCertificateService;
    use weft_proto::istio::ca::{IstioCertificateRequest, IstioCertificateResponse};

    /// Signs for one identity, for callers presenting one token.
    pub struct FakeCa {
        pub ca: std::sync::Arc<CertificateAuthority>,
        pub token: String,
        pub identity: SpiffeId,
    }

    #[tonic::async_trait]
    impl IstioCertificateService for FakeCa {
        async fn create_certificate(
            &self,
            request: tonic::Request<IstioCertificateRequest>,
        ) -> Result<tonic::Response<IstioCertificateResponse>, tonic::Status> {
            let expected = format!("Bearer {}", self.token);
            if request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                != Some(expected.as_str())
            {
                return Err(tonic::Status::unauthenticated("bad token"));
            }
            let chain = self
                .ca
                .sign_csr(
                    &request.get_ref().csr,
                    &self.identity,
                    std::time::Duration::from_secs(3600),
                )
                .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
            let mut cert_chain = chain.to_pem_list();
            cert_chain.push(self.ca.root_cert_pem().to_owned());
            Ok(tonic::Response::new(IstioCertificateResponse {
                cert_chain,
                root_cert: None,
            }))
        }
    }
}

#[tokio::test]
async fn certificate_comes_from_the_ca_with_the_bootstrap_token() {
    use weft_identity::CertificateSource;
    use weft_proto::istio::ca::istio_certificate_service_server::IstioCertificateServiceServer;
    use weft_proxy_core::certificates::CaClient;

    let identity = TestMesh::spiffe("default", "waypoint");
    let mesh = TestMesh::new();
    let root = mesh.ca.root_cert_pem().to_owned();
    let service = fake_ca::FakeCa {
        ca: mesh.ca,
        token: "bootstrap-token-0123456789".to_owned(),
        identity: identity.clone(),
    };
    let (address, _stop) = serve_grpc(
        tonic::transport::Server::builder()
            .add_service(IstioCertificateServiceServer::new(service)),
    )
    .await;
    // The waypoint is a manager of its one identity, with the node agent's CA client.
    let client = |token: &str| {
        weft_proxy_core::certificates::GrpcCaClient::connect(
            &format!("http://{address}"),
            None,
            weft_identity::CaToken::Fixed(token.to_owned()),
            Some("node-1".to_owned()),
        )
        .unwrap()
    };
    let manager = weft_proxy_core::certificates::CertificateManager::new(
        client("bootstrap-token-0123456789"),
        std::time::Duration::from_secs(24 * 3600),
        None,
    );
    let certificate = manager.fetch(&identity).await.unwrap();
    let roots = manager.trust_roots().unwrap();
    assert_eq!(certificate.identity(), &identity);
    assert!(!roots.is_empty());
    assert!(certificate.not_after() > std::time::SystemTime::now());
    assert_eq!(
        weft_identity::TrustRoots::from_pem(&root).unwrap().len(),
        roots.len()
    );

    let csr = weft_identity::WorkloadKey::generate()
        .unwrap()
        .csr_for(&identity)
        .unwrap();
    let error = client("wrong-token-0123456789")
        .sign(&identity, csr, std::time::Duration::from_secs(3600))
        .await
        .unwrap_err();
    assert!(error.contains("Unauthenticated"), "{error}");
}

#[tokio::test]
async fn malformed_and_oversized_heads_are_refused() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let huge = "a".repeat(80 * 1024);
    let cases = [
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nBad Name: x\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Ctl: a\x01b\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {huge}\r\n\r\n"),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            "HTTP/1.1 400",
        ),
    ];
    for (request, expected) in cases {
        let mut tunnel = harness.tunnel().await;
        tunnel.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with(expected),
            "{expected} for {:.60}: {answer}",
            request
        );
    }
    assert_eq!(v1.request_count(), 0);
}

/// The service's port declared TCP, its one TCP route to `v1`.
fn tcp_config(v1: &FakeEndpoint) -> proto::WaypointConfig {
    let mut cfg = config(Vec::new(), vec![cluster("v1", &[v1])]);
    cfg.services[0].ports[0].protocol = proto::Protocol::Tcp as i32;
    cfg.services[0].tcp_routes.push(proto::TcpRoute {
        r#match: Vec::new(),
        route: vec![proto::RouteDestination {
            destination: destination("v1", 0).destination,
            weight: 0,
        }],
        virtual_service: "default/reviews".to_owned(),
    });
    cfg
}

#[tokio::test]
async fn tcp_ports_are_forwarded_at_l4_and_unknown_protocols_sniffed() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut cfg = tcp_config(&v1);
    harness.waypoint.apply_config(cfg.clone()).unwrap();

    // An HTTP request on a TCP port reaches the app byte for byte: no x-request-id added.
    let raw = format!("GET /raw HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let mut tunnel = harness.tunnel().await;
    tunnel.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
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
    tunnel
        .write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut answer)).await;
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
    tunnel.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    drop(tunnel);
    // The carried connection's label set names the endpoint it reached.
    const TO_V1: &str = "destination_principal=\"spiffe://cluster.local/ns/default/sa/reviews-v1\"";
    let count_where = |text: &str, name: &str, label: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
            .and_then(|l| l.rsplit_once(' '))
            .and_then(|(_, n)| n.parse().ok())
    };
    let counted = |text: &str, name: &str| count_where(text, name, TO_V1);
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
    assert_eq!(
        count_where(&text, closed, "destination_principal=\"unknown\""),
        Some(2),
        "{text}"
    );
    assert_eq!(counted(&text, closed), Some(2), "{text}");
}

#[tokio::test]
async fn upstream_connections_are_reused_up_to_max_requests_per_connection() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut limited = cluster("v2", &[&v2]);
    limited.connection_pool = Some(proto::ConnectionPoolSettings {
        tcp: None,
        http: Some(proto::connection_pool_settings::HttpSettings {
            max_requests_per_connection: 2,
            ..Default::default()
        }),
    });
    let to_v2 = proto::HttpRoute {
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix("/v2".to_owned())),
            }),
            ..Default::default()
        }],
        ..route_to("v2")
    };
    harness
        .waypoint
        .apply_config(config(
            vec![to_v2, route_to("v1")],
            vec![cluster("v1", &[&v1]), limited],
        ))
        .unwrap();
    let mut sender = harness.http1().await;
    for _ in 0..6 {
        assert_eq!(send_on(&mut sender, get("/v1")).await.0, StatusCode::OK);
        assert_eq!(send_on(&mut sender, get("/v2")).await.0, StatusCode::OK);
    }
    assert_eq!(
        v1.tunnels.lock().unwrap().len(),
        1,
        "one pooled connection serves all"
    );
    assert_eq!(
        v2.tunnels.lock().unwrap().len(),
        3,
        "a new connection every two requests"
    );
}
