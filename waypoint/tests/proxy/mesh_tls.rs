//! DestinationRule `tls.mode: SIMPLE` toward a mesh endpoint: the waypoint originates the TLS
//! to the application inside the HBONE tunnel (Istio's waypoint wraps the rule's TLS socket in
//! the internal upstream the tunnel carries), so an application that terminates TLS itself is
//! reached with the rule's SNI and verified against the rule's CA.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{Acceptor, WebPkiClientVerifier};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::LazyConfigAcceptor;
use weft_proto::waypoint as proto;

use waypoint::testing::{LOCALHOST, TestMesh};

use crate::harness::*;

/// The name the application's certificate is valid for, and the rule's SNI.
const SERVER_NAME: &str = "reviews.tls.example";

/// What the application saw of one connection.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The first bytes were no TLS ClientHello.
    NotTls,
    /// A ClientHello with this SNI, and the handshake failed.
    Refused { sni: Option<String> },
    /// A ClientHello with this SNI, and the handshake completed.
    Handshake { sni: Option<String> },
}

/// A PEM certificate valid for `name`, self-signed, and its key.
fn certificate(name: &str) -> (String, String) {
    let certified = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
    (certified.cert.pem(), certified.signing_key.serialize_pem())
}

/// An application that terminates TLS itself with `(certificate, key)`, requiring a client
/// certificate `client_ca` signs when given, and answers `tls-app` over HTTP/1.1; what it saw
/// of each connection is sent on the channel.
async fn tls_app_requiring(
    (certificate, key): (String, String),
    client_ca: Option<&str>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let provider = weft_identity::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(ca.as_bytes()).unwrap())
                .unwrap();
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(certificate.as_bytes()).unwrap()],
            PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
        )
        .unwrap();
    let config = Arc::new(config);
    let listener = TcpListener::bind(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.local_addr().unwrap();
    let (seen, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, config) = (seen.clone(), Arc::clone(&config));
            tokio::spawn(async move {
                let Ok(start) = LazyConfigAcceptor::new(Acceptor::default(), stream).await else {
                    let _ = seen.send(Seen::NotTls);
                    return;
                };
                let sni = start.client_hello().server_name().map(str::to_owned);
                let Ok(tls) = start.into_stream(config).await else {
                    let _ = seen.send(Seen::Refused { sni });
                    return;
                };
                let _ = seen.send(Seen::Handshake { sni });
                let service = service_fn(|_request| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"tls-app"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (address, received)
}

/// [`tls_app_requiring`] without client certificates.
async fn tls_app(pair: (String, String)) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    tls_app_requiring(pair, None).await
}

/// What the application saw of the next connection, waited for 5 s at most.
async fn next(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Option<Seen> {
    tokio::time::timeout(Duration::from_secs(5), seen.recv())
        .await
        .ok()
        .flatten()
}

/// A PEM file, removed when dropped.
struct PemFile(std::path::PathBuf);

impl PemFile {
    fn new(name: &str, pem: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("weft-mesh-tls-{name}-{}.pem", std::process::id()));
        std::fs::write(&path, pem).unwrap();
        PemFile(path)
    }
}

impl PemFile {
    fn path(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for PemFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A waypoint routing every request to one mesh endpoint, the TLS application `app` behind its
/// HBONE server, with `tls` on its cluster; and how many tunnels that server accepted.
async fn waypoint_to(
    app: SocketAddr,
    tls: Option<proto::UpstreamTls>,
) -> (Harness, Arc<std::sync::atomic::AtomicUsize>) {
    let mesh = TestMesh::new();
    let (identity, hbone_address, tunnels) = hbone_front(&mesh, "reviews-tls", app).await;
    let resolve: waypoint::HboneAddressResolver = Arc::new(move |_| hbone_address);
    let harness = Harness::start_resolving(mesh, resolve, waypoint::HttpLimits::default()).await;
    let endpoint = proto::Endpoint {
        address: app.ip().to_string(),
        port: u32::from(app.port()),
        identity: identity.to_string(),
        tunnel: proto::EndpointTunnel::Hbone as i32,
        healthy: true,
        weight: 1,
        ..Default::default()
    };
    let cluster = proto::Cluster {
        endpoints: vec![endpoint],
        tls,
        ..cluster("", &[])
    };
    harness
        .waypoint
        .apply_config(config(vec![route_to("")], vec![cluster]))
        .unwrap();
    (harness, tunnels)
}

fn simple(ca: &PemFile) -> proto::UpstreamTls {
    proto::UpstreamTls {
        sni: SERVER_NAME.to_owned(),
        ca_certificates: ca.0.display().to_string(),
        ..Default::default()
    }
}

#[tokio::test]
async fn simple_tls_is_originated_to_the_application_inside_the_hbone_tunnel() {
    let pair = certificate(SERVER_NAME);
    let ca = PemFile::new("simple", &pair.0);
    let (app, mut seen) = tls_app(pair).await;
    let (harness, tunnels) = waypoint_to(app, Some(simple(&ca))).await;

    let (status, _, body) = harness.get("/").await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, b"tls-app".as_ref())
    );
    assert_eq!(
        next(&mut seen).await,
        Some(Seen::Handshake {
            sni: Some(SERVER_NAME.to_owned())
        })
    );
    assert_eq!(
        tunnels.load(Ordering::Acquire),
        1,
        "the TLS went through the endpoint's HBONE server"
    );
}

#[tokio::test]
async fn without_the_rule_the_plain_request_reaches_the_tls_application_and_fails() {
    let (app, mut seen) = tls_app(certificate(SERVER_NAME)).await;
    let (harness, tunnels) = waypoint_to(app, None).await;

    let (status, _, body) = harness.get("/").await;
    assert_ne!(status, StatusCode::OK, "{body:?}");
    assert_eq!(next(&mut seen).await, Some(Seen::NotTls));
    assert!(tunnels.load(Ordering::Acquire) >= 1);
}

#[tokio::test]
async fn an_application_certificate_the_rules_ca_does_not_sign_is_refused() {
    let other = certificate(SERVER_NAME);
    let ca = PemFile::new("wrong-ca", &other.0);
    let (app, mut seen) = tls_app(certificate(SERVER_NAME)).await;
    let (harness, _) = waypoint_to(app, Some(simple(&ca))).await;

    let (status, _, body) = harness.get("/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body:?}");
    assert_ne!(body.as_ref(), b"tls-app");
    // The waypoint began the handshake with the rule's SNI and gave it up on the certificate.
    assert_eq!(
        next(&mut seen).await,
        Some(Seen::Refused {
            sni: Some(SERVER_NAME.to_owned())
        })
    );
}

#[tokio::test]
async fn mutual_tls_presents_the_rules_client_certificate_inside_the_tunnel() {
    let pair = certificate(SERVER_NAME);
    let client = certificate("reviews-client.example");
    let ca = PemFile::new("mutual-ca", &pair.0);
    let client_certificate = PemFile::new("mutual-cert", &client.0);
    let client_key = PemFile::new("mutual-key", &client.1);
    let (app, mut seen) = tls_app_requiring(pair, Some(&client.0)).await;
    let mutual = proto::UpstreamTls {
        client_certificate: client_certificate.path(),
        private_key: client_key.path(),
        mutual: true,
        ..simple(&ca)
    };
    let (harness, tunnels) = waypoint_to(app, Some(mutual)).await;

    let (status, _, body) = harness.get("/").await;
    assert_eq!(
        (status, body.as_ref()),
        (StatusCode::OK, b"tls-app".as_ref())
    );
    // The application completes no handshake without a client certificate its CA signs.
    assert_eq!(
        next(&mut seen).await,
        Some(Seen::Handshake {
            sni: Some(SERVER_NAME.to_owned())
        })
    );
    assert_eq!(tunnels.load(Ordering::Acquire), 1);
}
