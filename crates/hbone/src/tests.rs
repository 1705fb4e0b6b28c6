//! End-to-end tests: real TLS 1.3 mutual TLS over 127.0.0.1 sockets, real HTTP/2.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_util::sync::CancellationToken;

use crate::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(60);
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs a test body with a deadline so no test can hang the suite.
async fn bounded<F: Future<Output = Result<()>>>(body: F) -> Result<()> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .context("test exceeded its deadline")?
}

// ---------------------------------------------------------------------------------------------
// Certificates and TLS configs

struct TestPki {
    roots: rustls::RootCertStore,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivatePkcs8KeyDer<'static>,
    client_chain: Vec<CertificateDer<'static>>,
    client_key: PrivatePkcs8KeyDer<'static>,
}

fn leaf(
    issuer: &Issuer<'_, KeyPair>,
    spiffe_id: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivatePkcs8KeyDer<'static>)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![
        SanType::IpAddress(LOCALHOST),
        SanType::URI(spiffe_id.try_into()?),
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((
        vec![cert.der().clone()],
        PrivatePkcs8KeyDer::from(key.serialize_der()),
    ))
}

fn test_pki() -> Result<TestPki> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "weft test root");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone())?;
    let (server_chain, server_key) = leaf(&issuer, "spiffe://cluster.local/ns/default/sa/server")?;
    let (client_chain, client_key) = leaf(&issuer, "spiffe://cluster.local/ns/default/sa/client")?;
    Ok(TestPki {
        roots,
        server_chain,
        server_key,
        client_chain,
        client_key,
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_tls(pki: &TestPki) -> Result<Arc<rustls::ServerConfig>> {
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(pki.roots.clone()),
        provider(),
    )
    .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            pki.server_chain.clone(),
            PrivateKeyDer::Pkcs8(pki.server_key.clone_key()),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

fn client_tls(pki: &TestPki) -> Result<Arc<rustls::ClientConfig>> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(pki.roots.clone())
        .with_client_auth_cert(
            pki.client_chain.clone(),
            PrivateKeyDer::Pkcs8(pki.client_key.clone_key()),
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn dial(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tune_tcp(&tcp)?;
    let stream = TlsConnector::from(tls)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await?;
    let (_, session) = stream.get_ref();
    if session.alpn_protocol() != Some(b"h2")
        || session.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3)
    {
        return Err(std::io::Error::other("expected TLS 1.3 with ALPN h2"));
    }
    Ok(stream)
}

// ---------------------------------------------------------------------------------------------
// Servers

/// An HBONE server on 127.0.0.1 that counts accepted TCP connections and can drop them all.
struct TestServer {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    kill_connections: Mutex<CancellationToken>,
    connection_ended: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
}

impl TestServer {
    async fn start<H: ConnectHandler>(
        handler: Arc<H>,
        tls: Arc<rustls::ServerConfig>,
        config: H2Config,
    ) -> Result<Arc<Self>> {
        Self::start_serving(handler, tls, config, false).await
    }

    /// A server whose every connection is served draining from its start, as a waypoint's
    /// during its graceful drain.
    async fn start_draining<H: ConnectHandler>(
        handler: Arc<H>,
        tls: Arc<rustls::ServerConfig>,
    ) -> Result<Arc<Self>> {
        Self::start_serving(handler, tls, H2Config::default(), true).await
    }

    async fn start_serving<H: ConnectHandler>(
        handler: Arc<H>,
        tls: Arc<rustls::ServerConfig>,
        config: H2Config,
        draining: bool,
    ) -> Result<Arc<Self>> {
        let listener = TcpListener::bind((LOCALHOST, 0)).await?;
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let server = Arc::new(TestServer {
            addr: listener.local_addr()?,
            accepted: Arc::new(AtomicUsize::new(0)),
            kill_connections: Mutex::new(CancellationToken::new()),
            connection_ended: tokio::sync::Mutex::new(ended_rx),
        });
        let acceptor = TlsAcceptor::from(tls);
        let weak = Arc::downgrade(&server);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Some(server) = weak.upgrade() else { return };
                server.accepted.fetch_add(1, Ordering::SeqCst);
                let kill = {
                    let token = server.kill_connections.lock().unwrap();
                    token.clone()
                };
                let (acceptor, handler, ended_tx) =
                    (acceptor.clone(), Arc::clone(&handler), ended_tx.clone());
                tokio::spawn(async move {
                    let _ = tune_tcp(&tcp);
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let drain = async move {
                        if !draining {
                            std::future::pending::<()>().await;
                        }
                    };
                    tokio::select! {
                        _ = serve_connection_until(tls, handler, config, drain) => {}
                        _ = kill.cancelled() => {}
                    }
                    let _ = ended_tx.send(());
                });
            }
        });
        Ok(server)
    }

    /// Drops every open connection and waits until `count` of them have ended.
    async fn kill_connections(&self, count: usize) {
        let token = std::mem::take(&mut *self.kill_connections.lock().unwrap());
        token.cancel();
        let mut ended = self.connection_ended.lock().await;
        for _ in 0..count {
            ended.recv().await;
        }
    }
}

/// A TCP echo server: writes back everything, then closes its write side on EOF.
async fn start_echo() -> Result<SocketAddr> {
    let listener = TcpListener::bind((LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = tcp.split();
                if tokio::io::copy(&mut read, &mut write).await.is_ok() {
                    let _ = write.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// A server that answers only after its peer half-closed: `received <n>` then EOF.
async fn start_reply_after_eof() -> Result<SocketAddr> {
    let listener = TcpListener::bind((LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut received = Vec::new();
                if tcp.read_to_end(&mut received).await.is_ok() {
                    let _ = tcp
                        .write_all(format!("received {}", received.len()).as_bytes())
                        .await;
                    let _ = tcp.shutdown().await;
                }
            });
        }
    });
    Ok(addr)
}

/// Connects each tunnel to its `:authority`, as the node agent's inbound path does.
#[derive(Default)]
struct ForwardingHandler {
    calls: AtomicUsize,
    requests: Mutex<Vec<ConnectRequest>>,
    closed: Mutex<Vec<TunnelStats>>,
}

impl ConnectHandler for ForwardingHandler {
    type Upstream = TcpStream;

    async fn connect(&self, request: &ConnectRequest) -> Result<TcpStream, Refusal> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.requests.lock().unwrap().push(request.clone());
        let upstream = TcpStream::connect(request.authority)
            .await
            .map_err(|_| Refusal::UpstreamUnavailable)?;
        upstream
            .set_nodelay(true)
            .map_err(|_| Refusal::UpstreamUnavailable)?;
        Ok(upstream)
    }

    fn tunnel_closed(&self, _request: &ConnectRequest, outcome: &Result<TunnelStats, CopyError>) {
        if let Ok(stats) = outcome {
            self.closed.lock().unwrap().push(*stats);
        }
    }
}

/// Refuses every tunnel with a fixed reason.
struct RefusingHandler {
    refusal: Refusal,
    calls: AtomicUsize,
}

impl ConnectHandler for RefusingHandler {
    type Upstream = TcpStream;

    async fn connect(&self, _request: &ConnectRequest) -> Result<TcpStream, Refusal> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Err(self.refusal)
    }
}

struct Harness {
    server: Arc<TestServer>,
    client_tls: Arc<rustls::ClientConfig>,
}

async fn harness<H: ConnectHandler>(handler: Arc<H>) -> Result<Harness> {
    harness_with(handler, H2Config::default()).await
}

async fn harness_with<H: ConnectHandler>(
    handler: Arc<H>,
    server_config: H2Config,
) -> Result<Harness> {
    let pki = test_pki()?;
    let server = TestServer::start(handler, server_tls(&pki)?, server_config).await?;
    Ok(Harness {
        server,
        client_tls: client_tls(&pki)?,
    })
}

type TestKey = (&'static str, &'static str, SocketAddr);

impl Harness {
    fn pool(&self) -> Pool<TestKey, impl Connector<TestKey>> {
        self.pool_with(PoolConfig::default())
    }

    fn pool_with(&self, config: PoolConfig) -> Pool<TestKey, impl Connector<TestKey>> {
        let tls = Arc::clone(&self.client_tls);
        let connector = move |key: &TestKey| {
            let (addr, tls) = (key.2, Arc::clone(&tls));
            async move { dial(addr, tls).await }
        };
        Pool::new(connector, config)
    }

    fn key(&self) -> TestKey {
        (
            "spiffe://cluster.local/ns/default/sa/client",
            "spiffe://cluster.local/ns/default/sa/server",
            self.server.addr,
        )
    }

    /// A raw h2 client on a fresh TLS connection, for requests HBONE clients never send.
    async fn raw_h2(&self) -> Result<h2::client::SendRequest<Bytes>> {
        let tls = dial(self.server.addr, Arc::clone(&self.client_tls)).await?;
        let (sender, connection) = h2::client::handshake(tls).await?;
        tokio::spawn(connection);
        Ok(sender.ready().await?)
    }
}

/// Deterministic, non-repeating test data.
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

fn sha256(data: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_through_single_tunnel_carries_headers_and_stats() -> Result<()> {
    bounded(async {
        let echo = start_echo().await?;
        let handler = Arc::new(ForwardingHandler::default());
        let h = harness(Arc::clone(&handler)).await?;
        let source: IpAddr = "2001:db8::7".parse()?;
        let request = ConnectRequest::new(echo)
            .with_forwarded_for(source)
            .with_header(BAGGAGE, HeaderValue::from_static("k8s.pod.name=client-0"))
            .with_header(
                TRACEPARENT,
                HeaderValue::from_static("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            );
        let tls = dial(h.server.addr, Arc::clone(&h.client_tls)).await?;
        let mut tunnel = connect(tls, &request, &H2Config::default()).await?;

        tunnel.write_all(b"hello through hbone").await?;
        let mut reply = [0u8; 19];
        tunnel.read_exact(&mut reply).await?;
        assert_eq!(&reply, b"hello through hbone");
        tunnel.shutdown().await?;
        let mut rest = Vec::new();
        tunnel.read_to_end(&mut rest).await?;
        assert!(rest.is_empty(), "echo sent extra bytes: {rest:?}");
        drop(tunnel);

        let seen = handler.requests.lock().unwrap().clone();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].authority, echo);
        assert_eq!(seen[0].forwarded_for, Some(source));
        assert_eq!(seen[0].headers["forwarded"], "for=\"[2001:db8::7]\"");
        assert_eq!(
            seen[0].baggage().map(|v| v.as_bytes()),
            Some(&b"k8s.pod.name=client-0"[..])
        );
        assert!(seen[0].traceparent().is_some());

        // The server reports stats once both directions finished.
        for _ in 0..200 {
            if !handler.closed.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            handler.closed.lock().unwrap().as_slice(),
            &[TunnelStats {
                from_tunnel: 19,
                to_tunnel: 19
            }]
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_multiplexes_fifty_concurrent_tunnels_on_one_connection() -> Result<()> {
    bounded(async {
        const TUNNELS: usize = 50;
        let echo = start_echo().await?;
        let handler = Arc::new(ForwardingHandler::default());
        let h = harness(Arc::clone(&handler)).await?;
        let pool = h.pool();
        let key = h.key();
        // Every tunnel is open before any data flows, so all 50 are live at once.
        let all_open = Arc::new(tokio::sync::Barrier::new(TUNNELS));
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..TUNNELS {
            let (pool, all_open) = (pool.clone(), Arc::clone(&all_open));
            tasks.spawn(async move {
                let request = ConnectRequest::new(echo).with_forwarded_for(LOCALHOST);
                let mut tunnel = pool.connect(&key, &request).await?;
                all_open.wait().await;
                let data = pattern(i as u64, 64 * 1024 + i);
                tunnel.write_all(&data).await?;
                tunnel.shutdown().await?;
                let mut back = Vec::new();
                tunnel.read_to_end(&mut back).await?;
                if back != data {
                    bail!(
                        "tunnel {i} got {} bytes back, not its own {} bytes",
                        back.len(),
                        data.len()
                    );
                }
                Ok(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        assert_eq!(
            h.server.accepted.load(Ordering::SeqCst),
            1,
            "all tunnels must share one TLS connection"
        );
        assert_eq!(pool.connection_count(&key), 1);
        assert_eq!(handler.calls.load(Ordering::SeqCst), TUNNELS);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_through_copy_helpers_arrives_intact_both_ways() -> Result<()> {
    bounded(async {
        const SIZE: usize = 32 * 1024 * 1024;
        let echo = start_echo().await?;
        let handler = Arc::new(ForwardingHandler::default());
        let h = harness(Arc::clone(&handler)).await?;
        let pool = h.pool();
        let key = h.key();

        // The application side: a plain TCP connection that an outbound proxy copies into a
        // tunnel, as the node agent does.
        let app_listener = TcpListener::bind((LOCALHOST, 0)).await?;
        let app_addr = app_listener.local_addr()?;
        let proxy = tokio::spawn(async move {
            let (mut app, _) = app_listener.accept().await?;
            let mut tunnel = pool.connect(&key, &ConnectRequest::new(echo)).await?;
            let stats = copy_bidirectional(&mut tunnel, &mut app).await?;
            anyhow::Ok(stats)
        });

        let data = pattern(42, SIZE);
        let sent_hash = sha256(&data);
        let app = TcpStream::connect(app_addr).await?;
        let (mut read, mut write) = app.into_split();
        let writer = tokio::spawn(async move {
            write.write_all(&data).await?;
            write.shutdown().await?;
            anyhow::Ok(())
        });
        let mut back = Vec::with_capacity(SIZE);
        read.read_to_end(&mut back).await?;
        writer.await??;
        assert_eq!(back.len(), SIZE);
        assert_eq!(sha256(&back), sent_hash, "data changed in transit");

        // Client-side copy: app -> tunnel is to_tunnel, tunnel -> app is from_tunnel.
        let client_stats = proxy.await??;
        assert_eq!(
            client_stats,
            TunnelStats {
                from_tunnel: SIZE as u64,
                to_tunnel: SIZE as u64
            }
        );
        for _ in 0..200 {
            if !handler.closed.lock().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(handler.closed.lock().unwrap().as_slice(), &[client_stats]);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_reaches_upstream_and_response_still_arrives() -> Result<()> {
    bounded(async {
        let upstream = start_reply_after_eof().await?;
        let h = harness(Arc::new(ForwardingHandler::default())).await?;
        let pool = h.pool();
        let mut tunnel = pool
            .connect(&h.key(), &ConnectRequest::new(upstream))
            .await?;
        let data = pattern(7, 100_000);
        tunnel.write_all(&data).await?;
        // The upstream answers only once it sees EOF, so a reply proves END_STREAM became a
        // TCP half-close, and that the other direction stayed open.
        tunnel.shutdown().await?;
        let mut reply = String::new();
        tunnel.read_to_string(&mut reply).await?;
        assert_eq!(reply, "received 100000");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_refusal_reaches_client_as_status_error() -> Result<()> {
    bounded(async {
        let cases = [
            (Refusal::Forbidden, StatusCode::FORBIDDEN),
            (Refusal::Unauthorized, StatusCode::UNAUTHORIZED),
            (Refusal::PolicyDenied, StatusCode::UNAUTHORIZED),
            (Refusal::BadRequest, StatusCode::BAD_REQUEST),
            (
                Refusal::UpstreamUnavailable,
                StatusCode::SERVICE_UNAVAILABLE,
            ),
        ];
        for (refusal, status) in cases {
            let handler = Arc::new(RefusingHandler {
                refusal,
                calls: AtomicUsize::new(0),
            });
            let h = harness(Arc::clone(&handler)).await?;
            let pool = h.pool();
            let target: SocketAddr = "127.0.0.1:9".parse()?;
            let error = pool
                .connect(&h.key(), &ConnectRequest::new(target))
                .await
                .expect_err("refused tunnel must fail");
            assert_eq!(error.status(), Some(status), "{refusal:?}: {error}");
            assert!(matches!(error, ClientError::Status { authority, .. } if authority == target));
            assert_eq!(handler.calls.load(Ordering::SeqCst), 1);
        }
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_upstream_answers_503() -> Result<()> {
    bounded(async {
        // A port nothing listens on: bind, note the address, close.
        let closed_port = TcpListener::bind((LOCALHOST, 0)).await?.local_addr()?;
        let h = harness(Arc::new(ForwardingHandler::default())).await?;
        let tls = dial(h.server.addr, Arc::clone(&h.client_tls)).await?;
        let error = connect(tls, &ConnectRequest::new(closed_port), &H2Config::default())
            .await
            .expect_err("tunnel to a closed port must fail");
        assert_eq!(error.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_answered_without_the_handler() -> Result<()> {
    bounded(async {
        let handler = Arc::new(ForwardingHandler::default());
        let h = harness(Arc::clone(&handler)).await?;
        let cases = [
            (
                Method::GET,
                "https://127.0.0.1:8080/",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::POST,
                "https://127.0.0.1:8080/upload",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Method::CONNECT, "example.com:80", StatusCode::BAD_REQUEST),
            (Method::CONNECT, "127.0.0.1:0", StatusCode::BAD_REQUEST),
        ];
        let mut sender = h.raw_h2().await?;
        for (method, uri, expected) in cases {
            let mut request = Request::new(());
            *request.method_mut() = method.clone();
            *request.uri_mut() = uri.parse()?;
            let end_of_stream = method != Method::CONNECT;
            let (response, _send) = sender.send_request(request, end_of_stream)?;
            let response = response.await?;
            assert_eq!(response.status(), expected, "{method} {uri}");
            sender = sender.ready().await?;
        }
        assert_eq!(
            handler.calls.load(Ordering::SeqCst),
            0,
            "the handler must not see malformed requests"
        );
        Ok(())
    })
    .await
}

mod connections;
