//! `bench https-load`: this binary's HTTPS load client, run in the outside client's pod against
//! the ingress gateway and nginx alike (wrk and h2load cannot open a new connection per request
//! over TLS with the same client settings for both).
//!
//! `bench https-load <ip:port> <server name> <certificate PEM> <path> <connections> <seconds>
//! <keep-alive|new>` runs `connections` loops for `seconds`:
//! - `keep-alive`: each loop opens one connection before the clock starts, then sends GET
//!   `<path>` on it, one request after another (HTTP/1.1);
//! - `new`: each loop opens a connection (TCP, then a full TLS handshake), sends one GET with
//!   `Connection: close`, reads the response and drops the connection, again and again.
//!
//! It prints `<completed> <seconds> <p50 µs> <p99 µs> <errors> <version> <suite> <group>`: the
//! requests (or connections) completed, the time they took, the percentiles of each one's time
//! (request, or connection from `connect` to the response's last byte), the failures, and what
//! the first connection negotiated.
//!
//! TLS settings, the same for every server: TLS 1.3 only, one cipher suite
//! (TLS13_AES_128_GCM_SHA256) and one key exchange group (X25519) offered, ALPN `http/1.1`, no
//! resumption (every connection is a full handshake). The server's certificate is pinned (the
//! leaf must be the expected one) and its handshake signature verified; the chain is not
//! walked, so that the client spends less of the machine's CPU than the servers it measures.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        Resumption,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::{CryptoProvider, aws_lc_rs},
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::load::response_end;

/// Longest any one connect, handshake, write or read may take.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Most requests (or connections) one loop makes, whatever the time.
const MAX_PER_LOOP: usize = 2_000_000;

/// Accepts exactly one leaf certificate, and verifies the server's handshake signature with it.
#[derive(Debug)]
struct Pinned {
    certificate: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.certificate.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the expected certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The client's TLS settings (module documentation), pinning the leaf in `certificate_pem`.
fn client_config(certificate_pem: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(CryptoProvider {
        cipher_suites: vec![aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256],
        kx_groups: vec![aws_lc_rs::kx_group::X25519],
        ..aws_lc_rs::default_provider()
    });
    let certificate = CertificateDer::pem_slice_iter(certificate_pem)
        .next()
        .context("no certificate in the PEM file")??;
    let mut config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Pinned {
            certificate,
            provider,
        }))
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where and how to connect.
struct Target {
    address: SocketAddr,
    name: ServerName<'static>,
    connector: TlsConnector,
}

impl Target {
    async fn connect(&self) -> anyhow::Result<TlsStream<TcpStream>> {
        let tcp = timed(TcpStream::connect(self.address)).await?;
        tcp.set_nodelay(true)?;
        timed(self.connector.connect(self.name.clone(), tcp)).await
    }
}

async fn timed<T, E: Into<anyhow::Error>>(
    io: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(IO_TIMEOUT, io)
        .await
        .context("timed out")?
        .map_err(Into::into)
}

/// Sends `request` and reads the whole response (a 200 with `Content-Length`) into `buffer`.
async fn exchange(
    stream: &mut TlsStream<TcpStream>,
    request: &[u8],
    buffer: &mut Vec<u8>,
) -> anyhow::Result<()> {
    timed(stream.write_all(request)).await?;
    buffer.clear();
    loop {
        if let Some(end) = response_end(buffer)?
            && buffer.len() >= end
        {
            return Ok(());
        }
        let read = timed(stream.read_buf(buffer)).await?;
        anyhow::ensure!(read > 0, "connection closed mid-response");
    }
}

/// What one loop did: each completed request's (or connection's) time in µs, and its failures.
#[derive(Default)]
struct LoopResult {
    micros: Vec<u32>,
    errors: u32,
}

fn elapsed_micros(since: Instant) -> u32 {
    u32::try_from(since.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Requests until `deadline`: on `stream` while it lasts (keep-alive), or each on a connection
/// of its own when there is none and `keep_alive` is false. A failure is counted; in keep-alive
/// the next request opens a connection again (its time counts that).
async fn load_loop(
    target: Arc<Target>,
    mut stream: Option<TlsStream<TcpStream>>,
    keep_alive: bool,
    request: Arc<Vec<u8>>,
    deadline: Instant,
) -> LoopResult {
    let mut result = LoopResult::default();
    let mut buffer = Vec::with_capacity(16 * 1024);
    while Instant::now() < deadline && result.micros.len() < MAX_PER_LOOP {
        let started = Instant::now();
        let outcome = async {
            let mut open = match stream.take() {
                Some(open) => open,
                None => target.connect().await?,
            };
            exchange(&mut open, &request, &mut buffer).await?;
            anyhow::Ok(keep_alive.then_some(open))
        };
        match outcome.await {
            Ok(kept) => {
                result.micros.push(elapsed_micros(started));
                stream = kept;
            }
            Err(_) => result.errors += 1,
        }
    }
    result
}

/// `bench https-load ...` (module documentation).
pub(crate) fn https_load_client(args: &[String]) -> anyhow::Result<()> {
    let [address, name, certificate, path, connections, seconds, mode] = args else {
        anyhow::bail!(
            "https-load <ip:port> <server name> <certificate PEM> <path> <connections> \
             <seconds> <keep-alive|new>"
        );
    };
    let new_per_request = match mode.as_str() {
        "new" => true,
        "keep-alive" => false,
        other => anyhow::bail!("https-load mode {other:?}: expected keep-alive or new"),
    };
    let connections: usize = connections.parse()?;
    let seconds: u64 = seconds.parse()?;
    anyhow::ensure!(
        connections > 0 && seconds > 0,
        "connections and seconds must be >= 1"
    );
    let pem = std::fs::read(certificate).with_context(|| format!("reading {certificate}"))?;
    let target = Arc::new(Target {
        address: address.parse()?,
        name: ServerName::try_from(name.clone())?,
        connector: TlsConnector::from(client_config(&pem)?),
    });
    let close = if new_per_request {
        "Connection: close\r\n"
    } else {
        ""
    };
    let request =
        Arc::new(format!("GET {path} HTTP/1.1\r\nHost: {name}\r\n{close}\r\n").into_bytes());
    let runtime = if connections == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
    .enable_all()
    .build()?;
    runtime.block_on(async move {
        // What the servers negotiate, from a connection of its own.
        let probe = target.connect().await.context("the first connection")?;
        let (_, session) = probe.get_ref();
        let negotiated = format!(
            "{:?} {:?} {:?}",
            session.protocol_version().context("no protocol version")?,
            session
                .negotiated_cipher_suite()
                .context("no cipher suite")?
                .suite(),
            session
                .negotiated_key_exchange_group()
                .context("no key exchange group")?
                .name(),
        );
        drop(probe);
        let mut streams = Vec::new();
        if !new_per_request {
            for _ in 0..connections {
                streams.push(target.connect().await?);
            }
        }
        let started = Instant::now();
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..connections {
            tasks.push(tokio::spawn(load_loop(
                Arc::clone(&target),
                streams.pop(),
                !new_per_request,
                Arc::clone(&request),
                deadline,
            )));
        }
        let mut micros = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let result = task.await?;
            micros.extend(result.micros);
            errors += result.errors;
        }
        let elapsed = started.elapsed().as_secs_f64();
        anyhow::ensure!(!micros.is_empty(), "no request completed ({errors} failed)");
        micros.sort_unstable();
        let at = |q: f64| micros[((micros.len() as f64 * q) as usize).min(micros.len() - 1)];
        println!(
            "{} {elapsed:.3} {} {} {errors} {negotiated}",
            micros.len(),
            at(0.50),
            at(0.99)
        );
        Ok(())
    })
}
