//! DestinationRule `proxyProtocol`: the waypoint writes a PROXY protocol header first on each
//! new connection to an endpoint, carrying the client's connection (its address, the address it
//! connected to), and pools such connections per client connection, as Envoy does.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::mpsc;
use weft_hbone::{ConnectRequest, H2Config, HboneDialer, SocketFactory};
use weft_proto::waypoint as proto;

use waypoint::testing::{LOCALHOST, TestMesh};

use crate::harness::*;

/// What one upstream connection began with: the v2 header's source and destination.
type Header = (SocketAddr, SocketAddr);

/// Reads a PROXY protocol v2 header (PROXY command, TCP over IPv4 or IPv6, no TLVs) exactly,
/// leaving the stream at the first byte after it.
async fn read_v2_header(stream: &mut tokio::net::TcpStream) -> Result<Header, String> {
    let mut fixed = [0u8; 16];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(|e| e.to_string())?;
    if fixed[..12] != *b"\r\n\r\n\0\r\nQUIT\n" {
        return Err(format!("no v2 signature: {fixed:02x?}"));
    }
    let length = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let mut rest = vec![0u8; length];
    stream
        .read_exact(&mut rest)
        .await
        .map_err(|e| e.to_string())?;
    let address = |ip: std::net::IpAddr, port: &[u8]| {
        SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]))
    };
    match (fixed[12], fixed[13], length) {
        (0x21, 0x11, 12) => {
            let ip = |b: &[u8]| std::net::IpAddr::from(<[u8; 4]>::try_from(b).unwrap());
            Ok((
                address(ip(&rest[0..4]), &rest[8..10]),
                address(ip(&rest[4..8]), &rest[10..12]),
            ))
        }
        (0x21, 0x21, 36) => {
            let ip = |b: &[u8]| std::net::IpAddr::from(<[u8; 16]>::try_from(b).unwrap());
            Ok((
                address(ip(&rest[0..16]), &rest[32..34]),
                address(ip(&rest[16..32]), &rest[34..36]),
            ))
        }
        other => Err(format!("not a v2 PROXY TCP header: {other:02x?}")),
    }
}

/// An application outside the mesh that takes a PROXY v2 header on each connection, records
/// it, and serves HTTP/1.1 after it (a connection without a valid header is closed).
async fn proxy_protocol_app() -> (SocketAddr, mpsc::UnboundedReceiver<Result<Header, String>>) {
    proxy_protocol_app_with(None).await
}

/// [`proxy_protocol_app`], serving HTTP under TLS after the header when `tls` is set.
async fn proxy_protocol_app_with(
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<Header, String>>) {
    let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let (headers, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let headers = headers.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let header = read_v2_header(&mut stream).await;
                let valid = header.is_ok();
                let _ = headers.send(header);
                if !valid {
                    return;
                }
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let server = hyper::server::conn::http1::Builder::new();
                match tls {
                    None => drop(server.serve_connection(TokioIo::new(stream), service).await),
                    Some(tls) => {
                        if let Ok(stream) = tls.accept(stream).await {
                            drop(server.serve_connection(TokioIo::new(stream), service).await);
                        }
                    }
                }
            });
        }
    });
    (address, received)
}

/// Sockets bound before they connect, so the test knows the address the waypoint sees.
#[derive(Default)]
struct RecordingSockets {
    bound: Mutex<Vec<SocketAddr>>,
}

impl SocketFactory for RecordingSockets {
    fn new_tcp(&self, _target: SocketAddr) -> std::io::Result<TcpSocket> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(LOCALHOST, 0))?;
        self.bound.lock().unwrap().push(socket.local_addr()?);
        Ok(socket)
    }

    fn listen(&self, _: SocketAddr, _: bool) -> std::io::Result<std::net::TcpListener> {
        unreachable!("the client only connects")
    }
}

/// An HTTP/1.1 client over its own HBONE connection to the waypoint, and the address that
/// connection comes from.
async fn client(harness: &Harness) -> (http1::SendRequest<Full<Bytes>>, SocketAddr) {
    let sockets = RecordingSockets::default();
    let tls = HboneDialer::new(harness.client.source())
        .dial(
            &sockets,
            harness.address,
            harness.client.identity(),
            &harness.waypoint_identity,
        )
        .await
        .unwrap();
    let from = sockets.bound.lock().unwrap()[0];
    let request = ConnectRequest::new(service_addr()).with_forwarded_for(CLIENT_IP);
    let tunnel = weft_hbone::connect(tls, &request, &H2Config::default())
        .await
        .unwrap();
    let (sender, connection) = http1::handshake(TokioIo::new(tunnel)).await.unwrap();
    tokio::spawn(connection);
    (sender, from)
}

/// The header of the next upstream connection, waited for 5 s at most.
async fn next(
    headers: &mut mpsc::UnboundedReceiver<Result<Header, String>>,
) -> Result<Header, String> {
    tokio::time::timeout(std::time::Duration::from_secs(5), headers.recv())
        .await
        .map_err(|_| "no new upstream connection within 5 s".to_owned())?
        .ok_or_else(|| "the application stopped".to_owned())?
}

/// Applies one route to a cluster of one endpoint at `app` (reached through `tunnel`, as
/// `identity` when tunnelled) with a PROXY protocol v2 header, and `tls` when given.
fn apply_v2_cluster(
    harness: &Harness,
    app: SocketAddr,
    tunnel: proto::EndpointTunnel,
    identity: &str,
    tls: Option<proto::UpstreamTls>,
) {
    let endpoint = proto::Endpoint {
        address: app.ip().to_string(),
        port: u32::from(app.port()),
        identity: identity.to_owned(),
        tunnel: tunnel as i32,
        healthy: true,
        weight: 1,
        ..Default::default()
    };
    let cluster = proto::Cluster {
        endpoints: vec![endpoint],
        tls,
        proxy_protocol: Some(proto::UpstreamProxyProtocol {
            version: proto::upstream_proxy_protocol::Version::V2 as i32,
        }),
        ..cluster("", &[])
    };
    harness
        .waypoint
        .apply_config(config(vec![route_to("")], vec![cluster]))
        .unwrap();
}

#[tokio::test]
async fn each_upstream_connection_begins_with_the_clients_v2_header() {
    let (app, mut headers) = proxy_protocol_app().await;
    let harness = Harness::start(TestMesh::new(), &[]).await;
    apply_v2_cluster(&harness, app, proto::EndpointTunnel::None, "", None);

    // Two requests of one client connection: one upstream connection, one header, carrying
    // the client's address and the service address it connected to.
    let (mut first, first_from) = client(&harness).await;
    for _ in 0..2 {
        let (status, _, body) = send_on(&mut first, get("/")).await;
        assert_eq!((status, body.as_ref()), (StatusCode::OK, b"ok".as_ref()));
    }
    assert_eq!(next(&mut headers).await, Ok((first_from, service_addr())));
    assert!(
        headers.try_recv().is_err(),
        "the pooled connection was reused"
    );

    // Another client connection does not reuse it: a connection of its own, with its header.
    let (mut second, second_from) = client(&harness).await;
    assert_ne!(first_from, second_from);
    let (status, _, _) = send_on(&mut second, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(next(&mut headers).await, Ok((second_from, service_addr())));
    // The first client's connection is still its own.
    let (status, _, _) = send_on(&mut first, get("/")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers.try_recv().is_err(),
        "no connection beyond one per client"
    );
}

/// A mesh endpoint is reached over HBONE, and the header goes inside the tunnel, to the
/// application, as Istio's waypoint writes it (its PROXY socket wraps the internal upstream the
/// tunnel carries).
#[tokio::test]
async fn the_header_goes_inside_the_hbone_tunnel_to_a_mesh_endpoint() {
    let (app, mut headers) = proxy_protocol_app().await;
    let mesh = TestMesh::new();
    let (identity, hbone_address, _) = hbone_front(&mesh, "reviews-pp", app).await;
    let resolve: waypoint::HboneAddressResolver = Arc::new(move |_| hbone_address);
    let harness = Harness::start_resolving(mesh, resolve, waypoint::HttpLimits::default()).await;
    let identity = identity.to_string();
    apply_v2_cluster(&harness, app, proto::EndpointTunnel::Hbone, &identity, None);

    let (mut sender, from) = client(&harness).await;
    let (status, _, body) = send_on(&mut sender, get("/")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"ok".as_ref()));
    assert_eq!(next(&mut headers).await, Ok((from, service_addr())));
}

/// With TLS originated too, the header comes first, in the clear, and the handshake after it,
/// as Envoy's PROXY socket wraps the TLS one.
#[tokio::test]
async fn the_header_goes_before_the_tls_the_waypoint_originates() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let certified = rcgen::generate_simple_self_signed(vec!["api.example.com".to_owned()]).unwrap();
    let (certificate, key) = (certified.cert.pem(), certified.signing_key.serialize_pem());
    let server = rustls::ServerConfig::builder_with_provider(weft_identity::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let (app, mut headers) =
        proxy_protocol_app_with(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server)))).await;
    let ca = std::env::temp_dir().join(format!("weft-proxy-protocol-{}.pem", std::process::id()));
    std::fs::write(&ca, &certificate).unwrap();
    let harness = Harness::start(TestMesh::new(), &[]).await;
    let tls = proto::UpstreamTls {
        sni: "api.example.com".to_owned(),
        ca_certificates: ca.display().to_string(),
        ..Default::default()
    };
    apply_v2_cluster(&harness, app, proto::EndpointTunnel::None, "", Some(tls));

    let (mut sender, from) = client(&harness).await;
    let (status, _, body) = send_on(&mut sender, get("/")).await;
    let _ = std::fs::remove_file(&ca);
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"ok".as_ref()));
    assert_eq!(next(&mut headers).await, Ok((from, service_addr())));
}
