//! The attacker's side, in process: HBONE spoken by hand (any certificate, any CONNECT headers,
//! data before the answer), and TCP connections opened and held, from inside a namespace of the
//! testbed (a node's, or a pod that is not in the mesh), so the traffic stays in the testbed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use weft_testbed::Netns;

/// How long any one step of an attack may take.
const STEP: Duration = Duration::from_secs(5);
/// Silence after which a tunnel's answer is taken as complete.
const QUIET: Duration = Duration::from_millis(1500);

/// A certificate chain (leaf first) and its key.
#[derive(Debug)]
pub struct Credential {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Credential {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Runs `attack` on a current-thread runtime on a thread inside `netns`.
pub fn in_netns<F, Fut, R>(netns: &Netns, attack: F) -> R
where
    F: FnOnce() -> Fut + Send,
    Fut: Future<Output = R>,
    R: Send,
{
    netns
        .run(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime")
                .block_on(attack())
        })
        .expect("enter the namespace")
}

/// One hand-made HBONE CONNECT.
#[derive(Debug, Clone)]
pub struct Connect {
    /// Where the TCP connection goes (`<ip>:15008`).
    pub gateway: SocketAddr,
    /// The CONNECT's `:authority`.
    pub authority: String,
    /// Further request headers (`forwarded`, ...).
    pub headers: Vec<(&'static str, String)>,
    /// Sent on the stream right after the request, before any answer.
    pub early: Option<Bytes>,
    /// Sent once the answer is `200`.
    pub payload: Option<Bytes>,
}

impl Connect {
    pub fn to(gateway: IpAddr, authority: impl Into<String>) -> Self {
        Self {
            gateway: SocketAddr::new(gateway, 15008),
            authority: authority.into(),
            headers: Vec::new(),
            early: None,
            payload: None,
        }
    }

    pub fn forwarded_for(mut self, source: impl std::fmt::Display) -> Self {
        self.headers.push(("forwarded", format!("for={source}")));
        self
    }

    /// An HTTP/1.1 GET sent through the tunnel once it is open.
    pub fn get(mut self, path: &str, host: &str) -> Self {
        self.payload = Some(Bytes::from(format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        )));
        self
    }

    /// Bytes sent before the server answered the CONNECT.
    pub fn early(mut self, bytes: &str) -> Self {
        self.early = Some(Bytes::from(bytes.to_owned()));
        self
    }
}

/// What came of a [`Connect`].
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The HTTP/2 connection (TLS, then the HTTP/2 handshake) could not be established.
    pub refused: Option<String>,
    /// The CONNECT's status, when one arrived.
    pub status: Option<u16>,
    /// What came back through the tunnel after the payload.
    pub answer: String,
}

impl Outcome {
    /// The status of the HTTP response read through the tunnel, if any.
    pub fn http_status(&self) -> Option<u16> {
        self.answer
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
    }
}

/// Opens an HBONE connection presenting `credential` (without checking the server's
/// certificate: the attacker does not care who answers) and sends `connect` on it.
pub async fn hbone(credential: &Credential, connect: &Connect) -> Outcome {
    match try_hbone(credential, connect).await {
        Ok(outcome) => outcome,
        Err(refused) => Outcome {
            refused: Some(refused),
            ..Outcome::default()
        },
    }
}

/// The CONNECT's status, the stream to send on and the answer to read from.
type Tunnel = (u16, h2::SendStream<Bytes>, http::Response<h2::RecvStream>);

async fn connect_tunnel(credential: &Credential, connect: &Connect) -> Result<Tunnel, String> {
    let config = client_config(credential)?;
    let tcp = tokio::time::timeout(STEP, tokio::net::TcpStream::connect(connect.gateway))
        .await
        .map_err(|_| "tcp connect timed out".to_owned())?
        .map_err(|e| format!("tcp connect: {e}"))?;
    let name = ServerName::IpAddress(connect.gateway.ip().into());
    let tls = tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "tls handshake timed out".to_owned())?
    .map_err(|e| format!("tls: {e}"))?;
    // TLS 1.3 finishes on the client before the server has judged the client's certificate: a
    // refusal shows up as the HTTP/2 handshake failing.
    let (client, connection) = tokio::time::timeout(STEP, h2::client::handshake(tls))
        .await
        .map_err(|_| "http/2 handshake timed out".to_owned())?
        .map_err(|e| format!("http/2 handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut request = http::Request::builder()
        .method(http::Method::CONNECT)
        .uri(connect.authority.as_str());
    for (name, value) in &connect.headers {
        request = request.header(*name, value.as_str());
    }
    let request = request
        .body(())
        .map_err(|e| format!("building the request: {e}"))?;
    let mut client = tokio::time::timeout(STEP, client.ready())
        .await
        .map_err(|_| "http/2 not ready".to_owned())?
        .map_err(|e| format!("http/2: {e}"))?;
    let (response, mut send) = client
        .send_request(request, false)
        .map_err(|e| format!("sending the CONNECT: {e}"))?;
    if let Some(early) = &connect.early {
        let _ = send.send_data(early.clone(), false);
    }
    let response = match tokio::time::timeout(STEP, response).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Err(format!("no answer to the CONNECT: {e}")),
        Err(_) => return Err("no answer to the CONNECT in time".to_owned()),
    };
    Ok((response.status().as_u16(), send, response))
}

async fn try_hbone(credential: &Credential, connect: &Connect) -> Result<Outcome, String> {
    let (status, mut send, response) = connect_tunnel(credential, connect).await?;
    let mut outcome = Outcome {
        status: Some(status),
        ..Outcome::default()
    };
    if status != 200 {
        return Ok(outcome);
    }
    if let Some(payload) = &connect.payload {
        let _ = send.send_data(payload.clone(), false);
    }
    let mut body = response.into_body();
    let mut answer = Vec::new();
    while let Ok(Some(Ok(chunk))) = tokio::time::timeout(QUIET, body.data()).await {
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    outcome.answer = String::from_utf8_lossy(&answer).into_owned();
    Ok(outcome)
}

/// What a flood sent into a tunnel came to.
#[derive(Debug, Clone, Default)]
pub struct Flood {
    /// The CONNECT's status.
    pub status: Option<u16>,
    /// Frames that went into the tunnel.
    pub sent: u64,
    /// The server stopped taking the tunnel's bytes (no send capacity for a while).
    pub stalled: bool,
    /// The server reset the tunnel or closed the connection.
    pub ended: Option<String>,
}

/// Opens a tunnel as [`hbone`] does and sends an HTTP/2 connection into it: `opening`, then
/// `frames`, never reading what comes back.
pub async fn flood_tunnel(
    credential: &Credential,
    connect: &Connect,
    opening: Vec<u8>,
    frames: impl Iterator<Item = Vec<u8>>,
) -> Flood {
    let mut flood = Flood::default();
    // The answer is held, never read: what the server sends back queues up against it.
    let (status, mut send, _answer) = match connect_tunnel(credential, connect).await {
        Ok(tunnel) => tunnel,
        Err(error) => {
            flood.ended = Some(error);
            return flood;
        }
    };
    flood.status = Some(status);
    if status != 200 {
        return flood;
    }
    let mut frames = frames.peekable();
    let mut pending = Bytes::from(opening);
    loop {
        while !pending.is_empty() {
            send.reserve_capacity(pending.len());
            let capacity = std::future::poll_fn(|cx| send.poll_capacity(cx));
            match tokio::time::timeout(STEP, capacity).await {
                Err(_) => {
                    flood.stalled = true;
                    return flood;
                }
                Ok(None) => {
                    flood.ended = Some("the stream ended".to_owned());
                    return flood;
                }
                Ok(Some(Err(error))) => {
                    flood.ended = Some(error.to_string());
                    return flood;
                }
                Ok(Some(Ok(capacity))) => {
                    let chunk = pending.split_to(capacity.min(pending.len()));
                    if let Err(error) = send.send_data(chunk, false) {
                        flood.ended = Some(error.to_string());
                        return flood;
                    }
                }
            }
        }
        if frames.peek().is_none() {
            return flood;
        }
        let batch: Vec<Vec<u8>> = frames.by_ref().take(64).collect();
        flood.sent += batch.len() as u64;
        pending = Bytes::from(batch.concat());
    }
}

fn client_config(credential: &Credential) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer))
        .with_client_auth_cert(credential.chain.clone(), credential.key.clone_key())
        .map_err(|e| format!("client certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts whatever certificate the server shows.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::aws_lc_rs::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Opens `count` TCP connections to `target` and sends nothing on them (an unauthenticated peer
/// holding the server's TLS handshakes open). Blocking sockets, so they can be held across
/// threads; connections the server refused at once are counted, not returned.
pub fn hold_connections(
    netns: &Netns,
    target: SocketAddr,
    count: usize,
) -> (Vec<std::net::TcpStream>, usize) {
    netns
        .run(|| {
            let mut held = Vec::with_capacity(count);
            let mut failed = 0;
            for _ in 0..count {
                match std::net::TcpStream::connect_timeout(&target, STEP) {
                    Ok(stream) => held.push(stream),
                    Err(_) => failed += 1,
                }
            }
            (held, failed)
        })
        .expect("enter the namespace")
}

/// How many of `streams` the server has closed (end of stream or reset when read).
pub fn closed_by_server(streams: &[std::net::TcpStream]) -> usize {
    use std::io::Read;
    streams
        .iter()
        .filter(|stream| {
            let _ = stream.set_nonblocking(true);
            let mut byte = [0u8; 1];
            let closed = match (&**stream).read(&mut byte) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            };
            let _ = stream.set_nonblocking(false);
            closed
        })
        .count()
}
