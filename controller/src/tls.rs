//! gRPC over TLS (Istio's 15012): a serving certificate for the controller's DNS names, issued
//! by the mesh CA itself so that every proxy holding the root can verify it, renewed at half its
//! lifetime without restarting the listener, and an accept loop that hands tonic finished TLS
//! streams (handshakes run concurrently and are bounded in time).

use std::io;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use weft_identity::{CaError, CertificateAuthority};

/// Lifetime of the serving certificate; it is renewed at half of it.
pub const SERVING_TTL: Duration = Duration::from_secs(24 * 3600);
/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the serving certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("issuing the serving certificate: {0}")]
    Issue(#[from] CaError),
    #[error("the issued serving certificate cannot be used: {0}")]
    Unusable(String),
}

/// The current serving certificate, swapped in place on renewal.
#[derive(Debug)]
pub struct ServingCertificates {
    ca: Arc<CertificateAuthority>,
    names: Vec<String>,
    current: RwLock<(Arc<CertifiedKey>, SystemTime)>,
}

fn certified_key(
    ca: &CertificateAuthority,
    names: &[String],
    ttl: Duration,
) -> Result<(Arc<CertifiedKey>, SystemTime), ServingError> {
    let issued = ca.issue_serving_certificate(names, ttl)?;
    let chain = issued
        .chain_pem
        .iter()
        .flat_map(|pem| CertificateDer::pem_slice_iter(pem.as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServingError::Unusable(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| ServingError::Unusable(e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    let certified = CertifiedKey::from_der(chain, key, &provider)
        .map_err(|e| ServingError::Unusable(e.to_string()))?;
    Ok((Arc::new(certified), issued.not_after))
}

impl ServingCertificates {
    /// Issues the first certificate for `names` (the first name is the common name).
    pub fn new(
        ca: Arc<CertificateAuthority>,
        names: Vec<String>,
    ) -> Result<Arc<Self>, ServingError> {
        let current = certified_key(&ca, &names, SERVING_TTL)?;
        Ok(Arc::new(Self {
            ca,
            names,
            current: RwLock::new(current),
        }))
    }

    /// When the current certificate should be replaced: half way through its life.
    fn refresh_at(&self) -> SystemTime {
        let (_, not_after) = *self.current.read().unwrap_or_else(|p| p.into_inner());
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        SystemTime::now() + left / 2
    }

    /// Renews the certificate at half life until `shutdown`; a failed renewal is retried in a
    /// minute while the old certificate keeps serving.
    pub async fn renew(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            let wait = self
                .refresh_at()
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                .max(Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            match certified_key(&self.ca, &self.names, SERVING_TTL) {
                Ok(next) => {
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = next;
                    tracing::info!(names = ?self.names, "serving certificate renewed");
                }
                Err(error) => {
                    tracing::warn!(%error, "serving certificate renewal failed; retrying in 60s");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(60)) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }
}

impl ResolvesServerCert for ServingCertificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .0
                .clone(),
        )
    }
}

/// ALPN of the gRPC port.
pub const GRPC_ALPN: &[&[u8]] = &[b"h2"];
/// ALPN of the webhook port: the API server speaks either.
pub const WEBHOOK_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The TLS configuration of a port: the serving certificate, `alpn`, no client certificates
/// (gRPC callers authenticate with their token; the API server is not asked for one).
pub fn server_config(
    certificates: Arc<ServingCertificates>,
    alpn: &[&[u8]],
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_cert_resolver(certificates);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Accepts on `listener` and yields TLS streams once their handshake completes. Handshakes run
/// on their own tasks, so one slow client holds up no one else.
pub fn incoming(
    listener: TcpListener,
    config: rustls::ServerConfig,
) -> ReceiverStream<Result<TlsStream<TcpStream>, io::Error>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // Ends (closing the listener) as soon as the server drops the stream.
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::debug!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let acceptor = acceptor.clone();
            let sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = sender.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => tracing::debug!(%peer, %error, "tls handshake failed"),
                    Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}
