//! The HBONE listener (15008): mutual TLS with the waypoint's certificate, the peer's SPIFFE
//! identity from the handshake, one HBONE server per connection, and per tunnel either an
//! HTTP server (HTTP/1.1 or HTTP/2, detected from the preface) feeding the request pipeline or,
//! for TCP ports, an L4 forward to an endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::{Instrument, debug, debug_span, info, warn};
use weft_hbone::{ConnectHandler, ConnectRequest, H2Config, Refusal};
use weft_identity::{SpiffeId, peer_identity};
use weft_policy::route::pick_weighted;

use crate::identity::CertificateSource;
use crate::proxy::{ProxyShared, TunnelContext, handle};
use crate::smuggling::FramingGuard;
use crate::upstream::{BoxedIo, HashInput};

/// Errors of the listener itself.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("reading the local address: {0}")]
    LocalAddress(#[source] std::io::Error),
}

/// Limits of the HTTP servers inside tunnels.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest HTTP/1.1 request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// HTTP/2 concurrent streams per tunnel.
    pub max_concurrent_streams: u32,
    /// HTTP/2 streams reset by the client before the server accepted them (rapid reset).
    pub max_pending_accept_reset_streams: usize,
    /// HTTP/2 streams the server may reset because of client errors before it closes the
    /// connection.
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 header list size.
    pub max_header_list_size: u32,
    /// Time a client has to send a complete HTTP/1.1 request head.
    pub header_read_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: 60 * 1024,
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 100,
            max_header_list_size: 60 * 1024,
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// The waypoint's HBONE listener.
pub struct HboneListener {
    listener: TcpListener,
    shared: Arc<ProxyShared>,
    certificates: Arc<dyn CertificateSource>,
    limits: HttpLimits,
}

impl std::fmt::Debug for HboneListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneListener")
            .field("address", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl HboneListener {
    pub async fn bind(
        address: SocketAddr,
        shared: Arc<ProxyShared>,
        certificates: Arc<dyn CertificateSource>,
        limits: HttpLimits,
    ) -> Result<Self, ListenerError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| ListenerError::Bind(address, e))?;
        Ok(HboneListener {
            listener,
            shared,
            certificates,
            limits,
        })
    }

    pub fn address(&self) -> Result<SocketAddr, ListenerError> {
        self.listener
            .local_addr()
            .map_err(ListenerError::LocalAddress)
    }

    /// Accepts connections until `drain` turns true.
    pub async fn run(self, mut drain: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let shared = Arc::clone(&self.shared);
                        let certificates = Arc::clone(&self.certificates);
                        let limits = self.limits;
                        tokio::spawn(
                            serve_tcp(stream, peer, shared, certificates, limits)
                                .instrument(debug_span!("hbone_connection", %peer)),
                        );
                    }
                    Err(error) => {
                        warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                changed = drain.changed() => {
                    if changed.is_err() || *drain.borrow() {
                        info!("hbone listener draining");
                        return;
                    }
                }
            }
        }
    }
}

/// Bound on the TLS handshake of a new connection.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_tcp(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ProxyShared>,
    certificates: Arc<dyn CertificateSource>,
    limits: HttpLimits,
) {
    let _ = weft_hbone::tune_tcp(&stream);
    let material = certificates.current();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&material.server));
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%error, "tls handshake failed");
            return;
        }
        Err(_) => {
            debug!("tls handshake timed out");
            return;
        }
    };
    let identity = match peer_identity(tls.get_ref().1) {
        Ok(id) => id,
        Err(error) => {
            warn!(%error, "hbone peer without a usable identity");
            return;
        }
    };
    debug!(peer_identity = %identity, "hbone connection established");
    let handler = Arc::new(TunnelHandler {
        shared,
        peer: identity,
        peer_address: peer,
        limits,
    });
    let h2 = H2Config {
        max_concurrent_streams: limits.max_concurrent_streams,
        ..H2Config::default()
    };
    match weft_hbone::serve_connection(tls, handler, h2).await {
        Ok(summary) => debug!(tunnels = summary.tunnels, "hbone connection closed"),
        Err(error) => debug!(%error, "hbone connection failed"),
    }
}

/// Per-connection CONNECT handler: it knows the peer's identity.
struct TunnelHandler {
    shared: Arc<ProxyShared>,
    peer: SpiffeId,
    peer_address: SocketAddr,
    limits: HttpLimits,
}

/// Buffer between the tunnel and the HTTP server running on it.
const TUNNEL_BUFFER: usize = 256 * 1024;

impl ConnectHandler for TunnelHandler {
    type Upstream = BoxedIo;

    async fn connect(&self, request: &ConnectRequest) -> Result<BoxedIo, Refusal> {
        let config = self.shared.store.snapshot();
        let Some(target) = config.service_for(request.authority) else {
            debug!(authority = %request.authority, "tunnel for a destination this waypoint does not serve");
            return Err(Refusal::BadRequest);
        };
        let context = Arc::new(TunnelContext {
            peer: Some(self.peer.clone()),
            source_ip: request.forwarded_for.unwrap_or(self.peer_address.ip()),
            peer_address: self.peer_address,
            destination: request.authority,
            target,
        });
        if context.target.port.protocol.is_opaque() {
            return self.forward_tcp(&context).await;
        }
        let (inside, outside) = tokio::io::duplex(TUNNEL_BUFFER);
        let shared = Arc::clone(&self.shared);
        let limits = self.limits;
        tokio::spawn(
            async move {
                let service =
                    service_fn(move |req| handle(Arc::clone(&shared), Arc::clone(&context), req));
                let mut builder = auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_read_timeout)
                    .max_buf_size(limits.max_header_bytes.max(8192));
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(limits.max_concurrent_streams)
                    .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
                    .max_local_error_reset_streams(limits.max_local_error_reset_streams)
                    .max_header_list_size(limits.max_header_list_size);
                let io = TokioIo::new(FramingGuard::new(inside));
                if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
                    debug!(%error, "http connection in tunnel ended with an error");
                }
            }
            .instrument(debug_span!("tunnel_http", authority = %request.authority)),
        );
        Ok(Box::new(outside))
    }
}

impl TunnelHandler {
    /// L4: the first TCP route that matches picks a weighted cluster; else the service's
    /// default cluster.
    async fn forward_tcp(&self, context: &TunnelContext) -> Result<BoxedIo, Refusal> {
        let config = self.shared.store.snapshot();
        let service = &context.target.service;
        let source = config.workload(context.source_ip);
        let namespace = self.peer.namespace();
        let route = service.tcp_routes.iter().find(|r| {
            r.matches.is_empty()
                || r.matches.iter().any(|m| {
                    m.matches(
                        context.destination,
                        source.map(|w| &w.labels),
                        Some(namespace),
                    )
                })
        });
        let cluster = match route {
            Some(route) => {
                let weights: Vec<u32> = route.destinations.iter().map(|d| d.1).collect();
                pick_weighted(&weights, rand::random())
                    .and_then(|i| route.destinations.get(i))
                    .and_then(|(name, _)| config.cluster(name))
            }
            None => config.default_cluster(&service.hostname, context.target.port.port),
        };
        let Some(cluster) = cluster else {
            return Err(Refusal::UpstreamUnavailable);
        };
        let headers = http::HeaderMap::new();
        let hash = HashInput {
            headers: &headers,
            query: None,
            source_ip: context.source_ip,
        };
        let upstream = &self.shared.upstream;
        let endpoint = upstream
            .choose_endpoint(cluster, &hash, &[])
            .map_err(|_| Refusal::UpstreamUnavailable)?;
        match upstream
            .open_stream(cluster, &endpoint, context.source_ip)
            .await
        {
            Ok(stream) => {
                upstream.record_outcome(cluster, endpoint.address, Some(200));
                Ok(stream)
            }
            Err(error) => {
                upstream.record_outcome(cluster, endpoint.address, None);
                debug!(%error, "tcp forward failed");
                Err(Refusal::UpstreamUnavailable)
            }
        }
    }
}
