//! What every test here shares: one waypoint in process with its HBONE listener, fake
//! endpoints behind their own HBONE listeners, configuration builders and HTTP helpers.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;
use weft_hbone::{ConnectHandler, ConnectRequest, H2Config, HboneAcceptor, Refusal};
use weft_proto::waypoint as proto;
use weft_proxy_core::drain::{self, DrainTrigger};

use waypoint::testing::{
    FakeEndpoint, LOCALHOST, TRUST_DOMAIN, TestIdentity, TestMesh, hbone_tunnel, resolver_for,
};
use waypoint::{Waypoint, WaypointOptions};

pub const HOST: &str = "reviews.default.svc.cluster.local";
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const PORT: u16 = 9080;
pub const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

pub fn service_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(VIP), PORT)
}

pub fn duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

pub fn proto_endpoint(e: &FakeEndpoint) -> proto::Endpoint {
    proto::Endpoint {
        address: e.app_address.ip().to_string(),
        port: u32::from(e.app_address.port()),
        identity: e.identity.to_string(),
        labels: BTreeMap::from([
            ("app".to_owned(), "reviews".to_owned()),
            ("version".to_owned(), e.name.clone()),
        ]),
        workload_uid: format!("uid-{}", e.name),
        workload_name: format!("reviews-{}", e.name),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        healthy: true,
        weight: 1,
        hostname: String::new(),
        tunnel_address: String::new(),
        locality: None,
        topology_labels: Default::default(),
    }
}

pub fn cluster(subset: &str, endpoints: &[&FakeEndpoint]) -> proto::Cluster {
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
            slow_start: None,
        }),
        ..Default::default()
    }
}

pub fn destination(subset: &str, weight: i32) -> proto::HttpRouteDestination {
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

pub fn route_to(subset: &str) -> proto::HttpRoute {
    proto::HttpRoute {
        route: vec![destination(subset, 0)],
        virtual_service: "default/reviews".to_owned(),
        ..Default::default()
    }
}

pub fn config(
    routes: Vec<proto::HttpRoute>,
    clusters: Vec<proto::Cluster>,
) -> proto::WaypointConfig {
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
            dynamic_dns: false,
            telemetry: None,
        }],
        clusters,
        authorization_policies: Vec::new(),
        source_workloads: Vec::new(),
        workloads: Vec::new(),
        gateway: None,
        tracing: None,
        access_log_disabled: false,
        metric_overrides: Vec::new(),
        instances: Vec::new(),
        request_authentications: Vec::new(),
        access_logs: Vec::new(),
    }
}

pub struct Harness {
    pub _mesh: TestMesh,
    pub waypoint: Waypoint,
    pub address: SocketAddr,
    pub client: TestIdentity,
    pub waypoint_identity: weft_identity::SpiffeId,
    /// Starts the waypoint's drain, as SIGTERM does in the binary (taken by the test that does).
    pub drain: Option<DrainTrigger>,
}

impl Harness {
    pub async fn start(mesh: TestMesh, endpoints: &[&FakeEndpoint]) -> Self {
        Self::start_with_limits(mesh, endpoints, waypoint::HttpLimits::default()).await
    }

    pub async fn start_with_limits(
        mesh: TestMesh,
        endpoints: &[&FakeEndpoint],
        limits: waypoint::HttpLimits,
    ) -> Self {
        Self::start_resolving(mesh, resolver_for(endpoints), limits).await
    }

    /// A waypoint that dials endpoints' HBONE servers where `resolve` says.
    pub async fn start_resolving(
        mesh: TestMesh,
        resolve: waypoint::HboneAddressResolver,
        limits: waypoint::HttpLimits,
    ) -> Self {
        let material = mesh.material("default", "waypoint");
        let waypoint_identity = material.identity().clone();
        let mut options = WaypointOptions::new(waypoint_identity.clone(), material.source());
        options.limits = limits;
        options.hbone_address = resolve;
        let (trigger, watch) = drain::channel();
        // The listener holds a source, as the binary's does: it accepts during the drain.
        drop(watch);
        options.drain = trigger.status();
        let waypoint = Waypoint::new(options);
        let listener = waypoint
            .bind_hbone(SocketAddr::new(LOCALHOST, 0))
            .await
            .unwrap();
        let address = listener.address().unwrap();
        tokio::spawn(listener.run(trigger.source()));
        let client = mesh.material("default", "sleep");
        Harness {
            _mesh: mesh,
            waypoint,
            address,
            client,
            waypoint_identity,
            drain: Some(trigger),
        }
    }

    pub async fn tunnel(&self) -> weft_hbone::HboneStream {
        self.tunnel_to(service_addr()).await
    }

    /// A tunnel for `authority`, as an agent opens one for the address its client dialled.
    pub async fn tunnel_to(&self, authority: SocketAddr) -> weft_hbone::HboneStream {
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

    pub async fn http1(&self) -> http1::SendRequest<Full<Bytes>> {
        self.http1_to(service_addr()).await
    }

    pub async fn http1_to(&self, authority: SocketAddr) -> http1::SendRequest<Full<Bytes>> {
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(self.tunnel_to(authority).await))
            .await
            .unwrap();
        tokio::spawn(connection.with_upgrades());
        sender
    }

    /// The waypoint's Prometheus text, from its metrics endpoint.
    pub async fn metrics(&self) -> String {
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

    pub async fn send(
        &self,
        request: Request<Full<Bytes>>,
    ) -> (StatusCode, http::HeaderMap, Bytes) {
        let mut sender = self.http1().await;
        send_on(&mut sender, request).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, http::HeaderMap, Bytes) {
        self.send(get(path)).await
    }
}

/// A plain HTTP/1.1 GET to a local admin-style endpoint: status and body.
pub async fn http_get(address: SocketAddr, path: &str) -> (StatusCode, String) {
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

pub fn get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", HOST)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

pub async fn send_on(
    sender: &mut http1::SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> (StatusCode, http::HeaderMap, Bytes) {
    sender.ready().await.unwrap();
    let response: Response<hyper::body::Incoming> = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts.status, parts.headers, body)
}

/// A waypoint that knows only `v1` and routes every request to it; `v2` runs beside it.
pub async fn routed_to_v1() -> (Harness, FakeEndpoint, FakeEndpoint) {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    (harness, v1, v2)
}

/// Writes `bytes` into `tunnel` and reads the answer until the waypoint closes the tunnel, for
/// 5 s at most: the answer, and whether it was read to its end by then.
pub async fn exchange_raw(tunnel: &mut weft_hbone::HboneStream, bytes: &[u8]) -> (String, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tunnel.write_all(bytes).await.unwrap();
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(5), tunnel.read_to_end(&mut answer))
        .await
        .is_ok_and(|read| read.is_ok());
    (String::from_utf8_lossy(&answer).into_owned(), ended)
}

/// A route for `/v9` to subset `v9`, whose cluster does not exist: what istiod sends for a
/// subset no DestinationRule defines.
pub fn route_to_undefined_subset() -> proto::HttpRoute {
    proto::HttpRoute {
        name: "to-v9".to_owned(),
        r#match: vec![proto::HttpMatchRequest {
            uri: Some(proto::StringMatch {
                match_type: Some(proto::string_match::MatchType::Prefix("/v9".to_owned())),
            }),
            ..Default::default()
        }],
        ..route_to("v9")
    }
}

/// An endpoint's HBONE server, as the node agent runs it, in front of `app`: each tunnel for
/// `app` gets a TCP connection to it, bytes as they come. Its identity (`service_account` in
/// `default`), its address, and the number of tunnels it accepted.
pub async fn hbone_front(
    mesh: &TestMesh,
    service_account: &str,
    app: SocketAddr,
) -> (weft_identity::SpiffeId, SocketAddr, Arc<AtomicUsize>) {
    let material = mesh.material("default", service_account);
    let identity = material.identity().clone();
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = Arc::new(HboneAcceptor::new(material.source(), TRUST_DOMAIN));
    let tunnels = Arc::new(AtomicUsize::new(0));
    let (server_identity, counted) = (identity.clone(), Arc::clone(&tunnels));
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, identity) = (Arc::clone(&acceptor), server_identity.clone());
            let tunnels = Arc::clone(&counted);
            tokio::spawn(async move {
                if let Ok(accepted) = acceptor.accept(stream, &identity).await {
                    let handler = Arc::new(ToTheApp { app, tunnels });
                    let _ =
                        weft_hbone::serve_connection(accepted.tls, handler, H2Config::default())
                            .await;
                }
            });
        }
    });
    (identity, address, tunnels)
}

/// An endpoint's HBONE server's handler: tunnels for its application only.
struct ToTheApp {
    app: SocketAddr,
    tunnels: Arc<AtomicUsize>,
}

impl ConnectHandler for ToTheApp {
    type Upstream = tokio::net::TcpStream;

    async fn connect(&self, request: &ConnectRequest) -> Result<Self::Upstream, Refusal> {
        if request.authority != self.app {
            return Err(Refusal::BadRequest);
        }
        self.tunnels.fetch_add(1, Ordering::AcqRel);
        tokio::net::TcpStream::connect(self.app)
            .await
            .map_err(|_| Refusal::UpstreamUnavailable)
    }
}

pub async fn two_endpoints() -> (TestMesh, FakeEndpoint, FakeEndpoint) {
    let mesh = TestMesh::new();
    let v1 = FakeEndpoint::start(&mesh, "v1", "default", "reviews-v1").await;
    let v2 = FakeEndpoint::start(&mesh, "v2", "default", "reviews-v2").await;
    (mesh, v1, v2)
}

/// A deny on `/admin` attached to the service only.
pub fn deny_admin_for_the_service() -> proto::L7Authorization {
    deny_paths(&["/admin"], &[HOST])
}

/// A policy `deny-admin` denying `paths`, attached to `services` (none: the whole waypoint).
pub fn deny_paths(paths: &[&str], services: &[&str]) -> proto::L7Authorization {
    proto::L7Authorization {
        name: "deny-admin".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Deny as i32,
        rules: vec![proto::Rule {
            from: Vec::new(),
            to: vec![proto::rule::To {
                operation: Some(proto::Operation {
                    paths: paths.iter().map(|p| (*p).to_owned()).collect(),
                    ..Default::default()
                }),
            }],
            when: Vec::new(),
        }],
        dry_run: false,
        target_services: services.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// The fake endpoint `e` as a workload the waypoint serves at its own address.
pub fn direct_workload(e: &FakeEndpoint) -> proto::WaypointWorkload {
    proto::WaypointWorkload {
        address: e.app_address.ip().to_string(),
        identity: e.identity.to_string(),
        labels: BTreeMap::from([("app".to_owned(), "reviews".to_owned())]),
        workload_uid: format!("uid-{}", e.name),
        workload_name: format!("reviews-{}", e.name),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        namespace: "default".to_owned(),
        services: vec![HOST.to_owned()],
        ports: vec![proto::WorkloadPort {
            port: u32::from(e.app_address.port()),
            protocol: proto::Protocol::Http as i32,
        }],
    }
}

/// A route to `subset` whose every request is aborted with `status`.
pub fn aborted_route_to(subset: &str, status: i32) -> proto::HttpRoute {
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

/// A route to `subset` with every request mirrored to `mirror`.
pub fn mirrored_route_to(subset: &str, mirror: &str) -> proto::HttpRoute {
    proto::HttpRoute {
        mirrors: vec![proto::HttpMirrorPolicy {
            destination: destination(mirror, 0).destination,
            percentage: None,
            disable_shadow_host_suffix: false,
        }],
        ..route_to(subset)
    }
}

pub async fn serve_grpc(
    router: tonic::transport::server::Router,
) -> (SocketAddr, watch::Sender<bool>) {
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

/// The service's port declared TCP, its one TCP route to `v1`.
pub fn tcp_config(v1: &FakeEndpoint) -> proto::WaypointConfig {
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

/// A WebSocket opened through the waypoint on a new HTTP/1.1 tunnel: the upgraded stream.
pub async fn websocket(harness: &Harness) -> TokioIo<hyper::upgrade::Upgraded> {
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
    TokioIo::new(hyper::upgrade::on(response).await.unwrap())
}

/// Writes `message` on an upgraded stream and reads as many bytes back (the endpoint echoes).
pub async fn websocket_echo(io: &mut TokioIo<hyper::upgrade::Upgraded>, message: &[u8]) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    io.write_all(message).await.unwrap();
    let mut echoed = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    echoed
}
