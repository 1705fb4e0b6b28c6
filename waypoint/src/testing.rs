//! Fakes for tests (this crate's and the testbed's): an in-process CA, fake endpoints (an HTTP
//! app behind a real HBONE server with its own certificate) and an HBONE client that reaches
//! the waypoint the way a node agent does. Everything listens on 127.0.0.1.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weft_hbone::{
    ConnectHandler, ConnectRequest, H2Config, HboneAcceptor, HboneDialer, HboneStream,
    PlainSocketFactory, Refusal,
};
use weft_identity::{CertificateAuthority, CertificateSource, SpiffeId};
use weft_proxy_core::certificates::{CertificateManager, LocalCa};

pub mod als;
mod jwt;
pub mod otlp_logs;
pub use jwt::TestIssuer;

/// Trust domain of test identities.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Loopback, the only address tests use.
pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A CA and helpers to issue identities.
pub struct TestMesh {
    pub ca: Arc<CertificateAuthority>,
}

impl std::fmt::Debug for TestMesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestMesh").finish_non_exhaustive()
    }
}

impl Default for TestMesh {
    fn default() -> Self {
        Self::new()
    }
}

/// A workload of the test mesh: its identity, and the certificate manager the proxies run,
/// signing with the mesh's CA in process.
#[derive(Debug, Clone)]
pub struct TestIdentity {
    identity: SpiffeId,
    certificates: CertificateManager<LocalCa>,
}

impl TestIdentity {
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// Its certificates, as a proxy takes them.
    pub fn source(&self) -> Arc<dyn CertificateSource> {
        self.certificates.source()
    }
}

impl TestMesh {
    pub fn new() -> Self {
        TestMesh {
            ca: Arc::new(CertificateAuthority::generate().expect("test CA")),
        }
    }

    pub fn spiffe(namespace: &str, service_account: &str) -> SpiffeId {
        SpiffeId::new(TRUST_DOMAIN, namespace, service_account).expect("valid test identity")
    }

    pub fn material(&self, namespace: &str, service_account: &str) -> TestIdentity {
        self.material_in(TRUST_DOMAIN, namespace, service_account)
    }

    /// An identity this mesh's root signs for another trust domain.
    pub fn material_in(
        &self,
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> TestIdentity {
        TestIdentity {
            identity: SpiffeId::new(trust_domain, namespace, service_account)
                .expect("valid test identity"),
            certificates: CertificateManager::new(
                LocalCa(Arc::clone(&self.ca)),
                Duration::from_secs(24 * 3600),
                None,
            ),
        }
    }
}

/// A request as the fake app saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How the fake app answers.
#[derive(Debug, Default)]
pub struct AppBehaviour {
    /// Answer 503 to this many requests before answering normally.
    pub fail_first: AtomicUsize,
    /// When non-zero, answer every request with this status.
    pub status: AtomicU16,
    /// Delay every answer by this many milliseconds.
    pub delay_ms: AtomicU64,
}

/// What a fake endpoint's HBONE server saw.
#[derive(Debug, Clone)]
pub struct SeenTunnel {
    pub authority: SocketAddr,
    pub forwarded_for: Option<IpAddr>,
    pub peer: SpiffeId,
}

/// An HTTP app (HTTP/1.1 and HTTP/2, WebSocket-style upgrades echoing bytes) behind a real
/// HBONE server with the endpoint's own certificate.
pub struct FakeEndpoint {
    pub name: String,
    pub identity: SpiffeId,
    /// Where the app listens: the endpoint address in the configuration.
    pub app_address: SocketAddr,
    /// Where its HBONE server listens.
    pub hbone_address: SocketAddr,
    pub requests: Arc<Mutex<Vec<SeenRequest>>>,
    pub tunnels: Arc<Mutex<Vec<SeenTunnel>>>,
    pub behaviour: Arc<AppBehaviour>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for FakeEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeEndpoint")
            .field("name", &self.name)
            .field("app_address", &self.app_address)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeEndpoint {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl FakeEndpoint {
    /// Starts an endpoint named `name` with identity `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
    pub async fn start(
        mesh: &TestMesh,
        name: &str,
        namespace: &str,
        service_account: &str,
    ) -> Self {
        let material = mesh.material(namespace, service_account);
        let identity = material.identity().clone();
        let acceptor = HboneAcceptor::new(material.source(), TRUST_DOMAIN);
        let app = TcpListener::bind((LOCALHOST, 0)).await.expect("bind app");
        let app_address = app.local_addr().expect("app address");
        let hbone = TcpListener::bind((LOCALHOST, 0)).await.expect("bind hbone");
        let hbone_address = hbone.local_addr().expect("hbone address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let tunnels = Arc::new(Mutex::new(Vec::new()));
        let behaviour = Arc::new(AppBehaviour::default());
        let app_task = tokio::spawn(run_app(
            app,
            name.to_owned(),
            Arc::clone(&requests),
            Arc::clone(&behaviour),
        ));
        let hbone_task = tokio::spawn(run_hbone(
            hbone,
            acceptor,
            identity.clone(),
            app_address,
            Arc::clone(&tunnels),
        ));
        FakeEndpoint {
            name: name.to_owned(),
            identity,
            app_address,
            hbone_address,
            requests,
            tunnels,
            behaviour,
            tasks: vec![app_task, hbone_task],
        }
    }

    pub fn request_count(&self) -> usize {
        self.requests.lock().map(|r| r.len()).unwrap_or(0)
    }

    pub fn last_request(&self) -> Option<SeenRequest> {
        self.requests.lock().ok().and_then(|r| r.last().cloned())
    }
}

/// A resolver sending each endpoint's HBONE traffic to its fake HBONE server.
pub fn resolver_for(endpoints: &[&FakeEndpoint]) -> crate::upstream::HboneAddressResolver {
    let map: HashMap<SocketAddr, SocketAddr> = endpoints
        .iter()
        .map(|e| (e.app_address, e.hbone_address))
        .collect();
    Arc::new(move |address| {
        map.get(&address)
            .copied()
            .unwrap_or(SocketAddr::new(address.ip(), weft_hbone::HBONE_PORT))
    })
}

async fn run_app(
    listener: TcpListener,
    name: String,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    behaviour: Arc<AppBehaviour>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let name = name.clone();
        let requests = Arc::clone(&requests);
        let behaviour = Arc::clone(&behaviour);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                app_answer(
                    request,
                    name.clone(),
                    Arc::clone(&requests),
                    Arc::clone(&behaviour),
                )
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn app_answer(
    mut request: Request<Incoming>,
    name: String,
    requests: Arc<Mutex<Vec<SeenRequest>>>,
    behaviour: Arc<AppBehaviour>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let upgrade = request.headers().contains_key(http::header::UPGRADE);
    let on_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let body = if upgrade {
        Bytes::new()
    } else {
        body.collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default()
    };
    if let Ok(mut seen) = requests.lock() {
        seen.push(SeenRequest {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }
    if let Some(on_upgrade) = on_upgrade {
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let mut buf = [0u8; 4096];
                for _ in 0..10_000 {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(
            http::header::UPGRADE,
            http::HeaderValue::from_static("websocket"),
        );
        headers.insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(response);
    }
    let delay = behaviour.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let forced = behaviour.status.load(Ordering::Relaxed);
    let failing = behaviour
        .fail_first
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok();
    let status = if forced != 0 {
        StatusCode::from_u16(forced).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    } else if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    let mut response = Response::new(Full::new(Bytes::from(name.clone())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        "x-served-by",
        http::HeaderValue::from_str(&name).unwrap_or(http::HeaderValue::from_static("app")),
    );
    Ok(response)
}

struct EndpointHandler {
    app: SocketAddr,
    peer: SpiffeId,
    tunnels: Arc<Mutex<Vec<SeenTunnel>>>,
}

impl ConnectHandler for EndpointHandler {
    type Upstream = TcpStream;

    async fn connect(&self, request: &ConnectRequest) -> Result<TcpStream, Refusal> {
        if let Ok(mut seen) = self.tunnels.lock() {
            seen.push(SeenTunnel {
                authority: request.authority,
                forwarded_for: request.forwarded_for,
                peer: self.peer.clone(),
            });
        }
        if request.authority != self.app {
            return Err(Refusal::BadRequest);
        }
        TcpStream::connect(self.app)
            .await
            .map_err(|_| Refusal::UpstreamUnavailable)
    }
}

async fn run_hbone(
    listener: TcpListener,
    acceptor: HboneAcceptor,
    identity: SpiffeId,
    app: SocketAddr,
    tunnels: Arc<Mutex<Vec<SeenTunnel>>>,
) {
    let acceptor = Arc::new(acceptor);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        let (acceptor, identity) = (Arc::clone(&acceptor), identity.clone());
        let tunnels = Arc::clone(&tunnels);
        tokio::spawn(async move {
            let Ok(accepted) = acceptor.accept(stream, &identity).await else {
                return;
            };
            let handler = Arc::new(EndpointHandler {
                app,
                peer: accepted.peer,
                tunnels,
            });
            let _ = weft_hbone::serve_connection(accepted.tls, handler, H2Config::default()).await;
        });
    }
}

/// Opens an HBONE tunnel to the waypoint at `waypoint` for `authority`, as a node agent would,
/// presenting `client` and expecting the waypoint's identity `expected`.
pub async fn hbone_tunnel(
    client: &TestIdentity,
    waypoint: SocketAddr,
    expected: &SpiffeId,
    authority: SocketAddr,
    source: IpAddr,
) -> Result<HboneStream, anyhow::Error> {
    let tls = HboneDialer::new(client.source())
        .dial(&PlainSocketFactory, waypoint, client.identity(), expected)
        .await?;
    let request = ConnectRequest::new(authority).with_forwarded_for(source);
    Ok(weft_hbone::connect(tls, &request, &H2Config::default()).await?)
}
