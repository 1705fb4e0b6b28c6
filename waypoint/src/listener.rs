//! The HBONE listener (15008): mutual TLS with the waypoint's certificate, the peer's SPIFFE
//! identity from the handshake, one HBONE server per connection, and per tunnel either an
//! HTTP server (HTTP/1.1 or HTTP/2, detected from the preface) feeding the request pipeline or,
//! for TCP ports, an L4 forward to an endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use std::pin::Pin;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tracing::{Instrument, debug, debug_span, warn};
use weft_hbone::admission::{Permit, SourceLimit, accept_loop};
use weft_hbone::{
    ConnectHandler, ConnectRequest, H2Config, HboneAcceptor, PlainSocketFactory, Refusal,
    SocketFactory, TlsError,
};
use weft_identity::SpiffeId;
use weft_proxy_core::drain::{DrainSource, DrainWatch};

use crate::head::{HeadAlarm, HeadClock};
use crate::model::gateway::EdgeLimits;
use crate::model::{Protocol, WaypointConfig};
use crate::proxy::{ProxyShared, TunnelContext, handle};
use crate::smuggling::FramingGuard;
use crate::tcp::open_tcp_upstream;
use crate::upstream::BoxedIo;
use weft_workers::Workers;

mod sniff;

pub(crate) use sniff::PrefixedIo;
use sniff::{HttpVersion, Sniffed, read_http_version, sniff_protocol};

/// Errors of the listener itself.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
    #[error("reading the local address: {0}")]
    LocalAddress(#[source] std::io::Error),
    #[error(transparent)]
    Admin(#[from] weft_proxy_core::admin::AdminError),
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
    /// A connection that carried no byte for this long is closed (drained: HTTP/2 gets a
    /// GOAWAY): Envoy's `idle_timeout`.
    pub idle_timeout: Duration,
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
            idle_timeout: Duration::from_secs(3600),
        }
    }
}

impl HttpLimits {
    /// These limits with a gateway server's own (its Gateway's `weft.dev/edge-limits`).
    pub fn with(self, edge: &EdgeLimits) -> HttpLimits {
        HttpLimits {
            max_header_bytes: edge
                .max_request_header_bytes
                .unwrap_or(self.max_header_bytes),
            max_header_list_size: edge
                .max_request_header_bytes
                .and_then(|b| u32::try_from(b).ok())
                .unwrap_or(self.max_header_list_size),
            max_concurrent_streams: edge
                .http2_max_concurrent_streams
                .unwrap_or(self.max_concurrent_streams),
            header_read_timeout: edge
                .request_headers_timeout
                .unwrap_or(self.header_read_timeout),
            idle_timeout: edge.idle_timeout.unwrap_or(self.idle_timeout),
            ..self
        }
    }

    /// The limits in force for a connection under `config`: at the edge, with its server's.
    pub(crate) fn for_connection(self, context: &TunnelContext, config: &WaypointConfig) -> Self {
        match context.edge_limits(config) {
            Some(edge) => self.with(edge),
            None => self,
        }
    }
}

/// The waypoint's HBONE listener.
pub struct HboneListener {
    listener: TcpListener,
    shared: Arc<ProxyShared>,
    /// Mutual TLS with the waypoint's certificate, peers of its trust domain only.
    acceptor: Arc<HboneAcceptor>,
    identity: SpiffeId,
    limits: HttpLimits,
    /// Connections per source address, drawing on the process's budget.
    sources: Arc<SourceLimit>,
    /// Where accepted connections are served; `None`: on the listener's own runtime.
    workers: Option<Workers>,
}

impl std::fmt::Debug for HboneListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HboneListener")
            .field("address", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl HboneListener {
    /// Binds `address`; must be called on a runtime.
    pub fn bind(
        address: SocketAddr,
        shared: Arc<ProxyShared>,
        acceptor: Arc<HboneAcceptor>,
        identity: SpiffeId,
        limits: HttpLimits,
        sources: Arc<SourceLimit>,
    ) -> Result<Self, ListenerError> {
        let listener = PlainSocketFactory
            .listen(address, false)
            .and_then(TcpListener::from_std)
            .map_err(|e| ListenerError::Bind(address, e))?;
        Ok(HboneListener {
            listener,
            shared,
            acceptor,
            identity,
            limits,
            sources,
            workers: None,
        })
    }

    /// Serves each accepted connection on the next of `workers`, where it stays.
    pub fn with_workers(mut self, workers: Workers) -> Self {
        self.workers = Some(workers);
        self
    }

    pub fn address(&self) -> Result<SocketAddr, ListenerError> {
        self.listener
            .local_addr()
            .map_err(ListenerError::LocalAddress)
    }

    /// Accepts connections for as long as the process lives, the drain included, as Envoy's
    /// listeners accept during its graceful drain: each connection holds a watch from `drain`
    /// until it has finished draining, and one accepted once the drain started is told to go
    /// away at once (a GOAWAY after its first tunnels). A source past its limit, or any past
    /// the process's, is closed at once, draining or not.
    pub async fn run(self, drain: DrainSource) {
        let sources = Arc::clone(&self.sources);
        accept_loop(
            &self.listener,
            |peer| sources.admit(peer.ip()),
            |stream, peer, permit| self.dispatch(stream, peer, permit, drain.watch()),
            std::future::pending(),
        )
        .await;
    }
}

impl HboneListener {
    /// Starts serving an accepted connection: on the next worker, or here.
    fn dispatch(&self, stream: TcpStream, peer: SocketAddr, permit: Permit, drain: DrainWatch) {
        let shared = Arc::clone(&self.shared);
        let acceptor = Arc::clone(&self.acceptor);
        let identity = self.identity.clone();
        let limits = self.limits;
        spawn_connection(
            self.workers.as_ref(),
            stream,
            debug_span!("hbone_connection", %peer),
            move |stream| async move {
                serve_connection(stream, peer, shared, &acceptor, &identity, limits, drain).await;
                drop(permit);
            },
        );
    }
}

/// Serves an accepted connection with `serve` on the next of `workers`, where it stays (the
/// socket moves to that worker's reactor), or on the calling runtime when there are none.
pub(crate) fn spawn_connection<F, S>(
    workers: Option<&Workers>,
    stream: TcpStream,
    span: tracing::Span,
    serve: S,
) where
    S: FnOnce(TcpStream) -> F + Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let Some(workers) = workers else {
        tokio::spawn(serve(stream).instrument(span));
        return;
    };
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(error) => {
            warn!(%error, "cannot hand the connection to a worker");
            return;
        }
    };
    workers.next().spawn(
        async move {
            match TcpStream::from_std(stream) {
                Ok(stream) => serve(stream).await,
                Err(error) => warn!(%error, "cannot register the connection on its worker"),
            }
        }
        .instrument(span),
    );
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: &HboneAcceptor,
    local: &SpiffeId,
    limits: HttpLimits,
    drain: DrainWatch,
) {
    let (tls, identity) = match acceptor.accept(stream, local).await {
        Ok(accepted) => (accepted.tls, accepted.peer),
        Err(error @ TlsError::PeerIdentity(_)) => {
            warn!(%error, "hbone peer refused");
            return;
        }
        Err(error) => {
            debug!(%error, "tls handshake failed");
            return;
        }
    };
    debug!(peer_identity = %identity, "hbone connection established");
    let handler = Arc::new(TunnelHandler {
        shared,
        peer: identity,
        peer_address: peer,
        limits,
        drain: drain.clone(),
    });
    let h2 = H2Config {
        max_concurrent_streams: limits.max_concurrent_streams,
        ..H2Config::default()
    };
    match weft_hbone::serve_connection_until(tls, handler, h2, drain.signaled()).await {
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
    /// Held by every HTTP server in a tunnel of the connection until it has drained.
    drain: DrainWatch,
}

/// Buffer between the tunnel and the HTTP server running on it.
const TUNNEL_BUFFER: usize = 256 * 1024;

impl ConnectHandler for TunnelHandler {
    type Upstream = BoxedIo;

    async fn connect(&self, request: &ConnectRequest) -> Result<BoxedIo, Refusal> {
        // Whether the tunnel carries HTTP or bytes is decided once, as the bytes start to flow;
        // everything else about its destination is looked up again per request (HTTP) or on
        // every configuration change (TCP).
        let Some((protocol, by_server_name)) = self
            .shared
            .store
            .snapshot()
            .target_for(request.authority)
            .map(|target| (target.protocol(), target.dynamic_dns_wildcard().is_some()))
        else {
            debug!(authority = %request.authority, "tunnel for a destination this waypoint does not serve");
            return Err(Refusal::BadRequest);
        };
        // Agents open their tunnels from inside the source pod, so the connection's peer is the
        // client: a `forwarded: for=` claim is never believed (any holder of a mesh
        // certificate could name an address outside an ipBlocks rule).
        let context = Arc::new(TunnelContext::new(
            Some(self.peer.clone()),
            self.peer_address,
            request.authority,
            None,
        ));
        if protocol.is_opaque() && by_server_name {
            // A DYNAMIC_DNS host's TLS: the ClientHello names the endpoint, so the tunnel is
            // accepted first and the upstream chosen once the hello is read.
            let (inside, outside) = tokio::io::duplex(TUNNEL_BUFFER);
            let shared = Arc::clone(&self.shared);
            let drain = self.drain.clone();
            tokio::spawn(
                async move {
                    let _drain = drain;
                    crate::tcp::carry_by_server_name(&shared, &context, inside).await;
                }
                .instrument(debug_span!("tls_by_server_name")),
            );
            return Ok(Box::new(outside));
        }
        if protocol.is_opaque() {
            return open_tcp_upstream(&self.shared, &context, None).await;
        }
        let (inside, outside) = tokio::io::duplex(TUNNEL_BUFFER);
        let shared = Arc::clone(&self.shared);
        let limits = self.limits;
        let drain = self.drain.clone();
        let sniff = protocol == Protocol::Unspecified;
        tokio::spawn(
            async move {
                if !sniff {
                    serve_http(shared, context, limits, inside, drain).await;
                    return;
                }
                let (kind, inside) = sniff_protocol(inside).await;
                match kind {
                    Sniffed::Http => serve_http(shared, context, limits, inside, drain).await,
                    Sniffed::Opaque => {
                        // Bytes are carried until either side closes or the drain's deadline
                        // ends the process, as ztunnel carries TCP.
                        let _drain = drain;
                        let Ok(mut upstream) = open_tcp_upstream(&shared, &context, None).await
                        else {
                            return;
                        };
                        let mut inside = inside;
                        if let Err(error) =
                            tokio::io::copy_bidirectional(&mut inside, &mut upstream).await
                        {
                            debug!(%error, "sniffed tcp stream ended");
                        }
                    }
                }
            }
            .instrument(debug_span!("tunnel", authority = %request.authority)),
        );
        Ok(Box::new(outside))
    }
}

/// Serves HTTP/1.1 or HTTP/2 on `io` (a tunnel, or a connection at the edge) until the client
/// closes, the drain starts, or the configuration no longer serves the connection.
pub(crate) async fn serve_http<IO>(
    shared: Arc<ProxyShared>,
    context: Arc<TunnelContext>,
    limits: HttpLimits,
    io: IO,
    drain: DrainWatch,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let destination = context.destination;
    let (requested, first_request) = tokio::sync::watch::channel(false);
    // `limits` are the listener's; at the edge, the server's own apply from the configuration
    // in force now (what is fixed per connection: buffers, HTTP/2 settings) and as it changes
    // (the idle timeout here, the header size per request).
    let base = limits;
    let limits = base.for_connection(&context, &shared.store.snapshot());
    let watch = ConnectionWatch {
        store: shared.store.clone(),
        served: Arc::clone(&context),
        activity: crate::idle::Activity::default(),
        base,
        idle_timeout: limits.idle_timeout,
        drain,
        first_request,
    };
    let io = FramingGuard::new(watch.activity.watch(io));
    // The version is read before the server starts, so that a connection accepted during the
    // drain (or whose first bytes come after it started) has its first request served and
    // answered with `Connection: close` or a GOAWAY: hyper's automatic detection, told to shut
    // down before it read the preface, drops the connection unanswered.
    let Some((version, io)) = read_http_version(io, limits.header_read_timeout).await else {
        debug!(%destination, "no http request on the connection");
        return;
    };
    let service = service_fn(move |req| {
        requested.send_replace(true);
        handle(Arc::clone(&shared), Arc::clone(&context), req)
    });
    let io = TokioIo::new(io);
    let served = match version {
        HttpVersion::Http1 => {
            // hyper's header read timeout, kept by the connection's loop (`head`).
            let clock = HeadClock::default();
            let connection = http1::Builder::new()
                .timer(clock.timer())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_header_bytes.max(8192))
                .serve_connection(io, service)
                .with_upgrades();
            tokio::pin!(connection);
            watch
                .drive(connection.as_mut(), clock.alarm(), |c| {
                    c.graceful_shutdown()
                })
                .await
        }
        HttpVersion::Http2 => {
            let connection = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(limits.max_concurrent_streams)
                .max_pending_accept_reset_streams(limits.max_pending_accept_reset_streams)
                .max_local_error_reset_streams(limits.max_local_error_reset_streams)
                .max_header_list_size(limits.max_header_list_size)
                .serve_connection(io, service);
            tokio::pin!(connection);
            watch
                .drive(connection.as_mut(), HeadAlarm::none(), |c| {
                    c.graceful_shutdown()
                })
                .await
        }
    };
    if let Err(error) = served {
        debug!(%error, "http connection in tunnel ended with an error");
    }
}

/// What ends an HTTP connection early: idleness, the drain, the configuration leaving it.
struct ConnectionWatch {
    store: crate::store::ConfigStore,
    served: Arc<TunnelContext>,
    activity: crate::idle::Activity,
    /// The listener's limits, before a gateway server's own.
    base: HttpLimits,
    /// Followed as the configuration changes: a changed limit applies to a kept-alive
    /// connection.
    idle_timeout: Duration,
    drain: DrainWatch,
    /// Turns true when the connection's first request reached the pipeline.
    first_request: tokio::sync::watch::Receiver<bool>,
}

impl ConnectionWatch {
    /// Runs `connection` to its end, shutting it down gracefully with `shut_down` (HTTP/1.1:
    /// `Connection: close` on the response in flight, an idle connection closed now; HTTP/2:
    /// a GOAWAY, its streams in flight finishing) once it is idle for its limit, the drain
    /// started, or its destination is no longer served; and closes it at once, unanswered (as
    /// hyper's own header read timeout), when `head` says a request head is late.
    async fn drive<C>(
        mut self,
        mut connection: Pin<&mut C>,
        mut head: HeadAlarm,
        shut_down: fn(Pin<&mut C>),
    ) -> hyper::Result<()>
    where
        C: Future<Output = hyper::Result<()>>,
    {
        let destination = self.served.destination;
        let mut versions = self.store.version();
        let draining = self.drain.signaled();
        tokio::pin!(draining);
        // hyper closes a connection shut down before it read anything, unanswered: one that
        // comes during the drain is told to go away with the answer to its first request.
        let mut first_request = self.first_request.clone();
        let first_request = first_request.wait_for(|requested| *requested);
        tokio::pin!(first_request);
        let mut drain_pending = false;
        loop {
            tokio::select! {
                // The connection first: the head alarm sees a head it started to await.
                biased;
                served = connection.as_mut() => return served,
                () = std::future::poll_fn(|cx| head.poll_late(cx)) => {
                    debug!(%destination, "request head not complete in time: closing the connection");
                    return Ok(());
                }
                () = tokio::time::sleep_until(self.activity.deadline(self.idle_timeout)) => {
                    if self.activity.idle_for(self.idle_timeout) {
                        debug!(%destination, "connection idle: closing it");
                        break;
                    }
                }
                () = &mut draining, if !drain_pending => {
                    // SIGTERM: the request in flight finishes and its response carries
                    // `Connection: close` (HTTP/1.1; an idle connection closes now), HTTP/2 gets
                    // a GOAWAY, as Envoy drains with `--drain-strategy immediate`. A connection
                    // accepted during the drain gets the same with its first request.
                    if *self.first_request.borrow() {
                        debug!(%destination, "draining the connection");
                        break;
                    }
                    drain_pending = true;
                }
                _ = &mut first_request, if drain_pending => {
                    debug!(%destination, "draining the connection after its first request");
                    break;
                }
                changed = versions.changed() => {
                    let config = self.store.snapshot();
                    let gone = !self.served.still_served(&config);
                    self.idle_timeout = self.base.for_connection(&self.served, &config).idle_timeout;
                    drop(config);
                    if changed.is_err() || gone {
                        // The destination left this waypoint: drain as Envoy drains a removed
                        // filter chain. Requests in flight finish, an idle HTTP/1.1 connection
                        // closes now and a busy one after its response, HTTP/2 gets a GOAWAY;
                        // the client's agent carries the next connection as the mesh now says.
                        debug!(%destination, "destination no longer served: draining the connection");
                        break;
                    }
                }
            }
        }
        shut_down(connection.as_mut());
        connection.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_servers_limits_replace_the_listeners_where_set() {
        let base = HttpLimits::default();
        assert_eq!(
            format!("{:?}", base.with(&EdgeLimits::default())),
            format!("{base:?}")
        );
        let edge = EdgeLimits {
            max_request_header_bytes: Some(4096),
            request_headers_timeout: Some(Duration::from_secs(2)),
            idle_timeout: Some(Duration::from_secs(7)),
            http2_max_concurrent_streams: Some(3),
            per_connection_buffer_limit_bytes: Some(10),
            request_timeout: Some(Duration::from_secs(9)),
            max_request_bytes: Some(11),
            max_connections: None,
        };
        let limits = base.with(&edge);
        assert_eq!(limits.max_header_bytes, 4096);
        assert_eq!(limits.max_header_list_size, 4096);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(limits.idle_timeout, Duration::from_secs(7));
        assert_eq!(limits.max_concurrent_streams, 3);
        // What no field names stays the listener's.
        assert_eq!(
            limits.max_pending_accept_reset_streams,
            base.max_pending_accept_reset_streams
        );
    }

    /// Accepted connections are served on the workers, round robin, each wholly on its
    /// worker's thread (the gateway's edge ports and the HBONE port dispatch this way).
    #[test]
    fn accepted_connections_are_served_round_robin_on_the_workers() {
        let workers = Workers::start(2, "listener-test").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let served = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
            let mut clients = Vec::new();
            for _ in 0..4 {
                clients.push(TcpStream::connect(address).await.unwrap());
                let (stream, _) = listener.accept().await.unwrap();
                let sender = sender.clone();
                spawn_connection(
                    Some(&workers),
                    stream,
                    debug_span!("test"),
                    move |stream| async move {
                        let thread = std::thread::current().name().map(str::to_owned);
                        // The stream is usable on the worker's reactor.
                        let local = stream.local_addr().ok();
                        let _ = sender.send((weft_workers::current_index(), thread, local));
                    },
                );
            }
            let mut served = Vec::new();
            for _ in 0..4 {
                let next = tokio::time::timeout(Duration::from_secs(10), receiver.recv());
                served.push(next.await.unwrap().unwrap());
            }
            served
        });
        let mut indexes: Vec<usize> = served.iter().map(|(index, _, _)| *index).collect();
        indexes.sort_unstable();
        assert_eq!(indexes, [0, 0, 1, 1], "{served:?}");
        for (index, thread, local) in &served {
            assert_eq!(
                thread.as_deref(),
                Some(format!("listener-test-{index}").as_str())
            );
            assert!(local.is_some(), "the stream works on its worker");
        }
    }
}
