//! The gateway role: the waypoint's engine at the edge of the mesh, for clients outside it. The
//! ports come from the configuration (`WaypointConfig.gateway`, compiled from Istio's `Gateway`
//! servers): each is opened when a configuration names it and closed when none does. Plain
//! ports, not HBONE: a connection's server is the port's only plain one (HTTP, TCP) or, for
//! TLS, the one its ClientHello's SNI names ([`client_hello`]), whose credential terminates it
//! ([`credentials`]) or whose SNI routes carry it untouched (PASSTHROUGH). Behind the listener
//! everything is the waypoint's: requests go through the same pipeline (routes, retries,
//! timeouts, faults, CORS, L7 authorization, metrics reported as `reporter="source"`) and reach
//! the mesh over HBONE with the gateway's own identity.

pub mod client_hello;
pub mod credentials;

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tracing::{debug, debug_span, info, warn};
use weft_hbone::admission::{Permit, SourceLimit, accept_loop};
use weft_hbone::{PlainSocketFactory, SocketFactory};
use weft_proxy_core::drain::{DrainSource, DrainWatch};
use weft_workers::Workers;

use crate::listener::{HttpLimits, PrefixedIo, serve_http, spawn_connection};
use crate::model::gateway::{EdgeBinding, EdgeServer, Gateway};
use crate::proxy::{ProxyShared, TunnelContext};
use crate::rate_limit::{LocalRateLimit, RateLimitScope};
use crate::tcp::open_tcp_upstream;
use client_hello::read_client_hello;
use credentials::CredentialStore;

/// How long a client has to complete the TLS handshake after its ClientHello.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections one gateway port holds open at once unless its servers set a smaller
/// `maxConnections`: far above what the process's descriptors usually allow, so that the
/// default changes nothing a client saw before; a Gateway lowers it.
pub const DEFAULT_MAX_CONNECTIONS_PER_LISTENER: u32 = 65_536;

/// New connections one client address may open per second on a gateway port whose server sets
/// no `connectionRateLimit` (a burst of as many): generous (a single client doing a full TLS
/// handshake per request stays under it), it still bounds how fast one address can churn
/// connections.
pub const DEFAULT_CONNECTIONS_PER_CLIENT_PER_SECOND: u32 = 10_000;

/// The connection rate limit of a server on `port` that sets none.
pub fn default_connection_rate_limit(port: u16) -> LocalRateLimit {
    LocalRateLimit {
        key: format!("gateway-default/{port}"),
        max_tokens: DEFAULT_CONNECTIONS_PER_CLIENT_PER_SECOND,
        tokens_per_fill: DEFAULT_CONNECTIONS_PER_CLIENT_PER_SECOND,
        fill_interval: Duration::from_secs(1),
        scope: RateLimitScope::Client,
    }
}

/// The cap on the connections `port` holds open at once: the smallest its servers set, else
/// [`DEFAULT_MAX_CONNECTIONS_PER_LISTENER`]. Read from the configuration in force at each
/// accept, so a change applies to the next connection.
pub fn listener_connection_cap(gateway: &Gateway, port: u16) -> usize {
    let cap = gateway
        .listener(port)
        .into_iter()
        .flat_map(|l| &l.servers)
        .filter_map(|s| s.limits.max_connections)
        .min()
        .unwrap_or(DEFAULT_MAX_CONNECTIONS_PER_LISTENER);
    usize::try_from(cap).unwrap_or(usize::MAX)
}

/// The connections one gateway port holds open.
#[derive(Debug, Default)]
struct ListenerConnections {
    open: AtomicUsize,
}

/// A place among a port's open connections, given back when dropped.
struct ListenerPermit(Arc<ListenerConnections>);

impl ListenerConnections {
    /// A place for one more connection if fewer than `cap` are open.
    fn admit(self: &Arc<Self>, cap: usize) -> Option<ListenerPermit> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < cap).then_some(open + 1)
            })
            .ok()
            .map(|_| ListenerPermit(Arc::clone(self)))
    }
}

impl Drop for ListenerPermit {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The ports a gateway proxy listens on, following its configuration.
pub struct EdgeListeners {
    shared: Arc<ProxyShared>,
    credentials: Arc<CredentialStore>,
    limits: HttpLimits,
    sources: Arc<SourceLimit>,
    /// The address the ports are opened on (every address of the pod: `0.0.0.0`).
    address: IpAddr,
    /// Where accepted connections are served, round robin (the ports accept on the control
    /// thread); `None`: on the listeners' own runtime.
    workers: Option<Workers>,
}

impl std::fmt::Debug for EdgeListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeListeners")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Everything one accepted connection needs.
#[derive(Clone)]
struct EdgeContext {
    shared: Arc<ProxyShared>,
    credentials: Arc<CredentialStore>,
    limits: HttpLimits,
    /// The connection rate limit of the port's servers that set none.
    default_rate_limit: Arc<LocalRateLimit>,
}

impl EdgeListeners {
    pub fn new(
        shared: Arc<ProxyShared>,
        credentials: Arc<CredentialStore>,
        limits: HttpLimits,
        sources: Arc<SourceLimit>,
        address: IpAddr,
        workers: Option<Workers>,
    ) -> Self {
        EdgeListeners {
            shared,
            credentials,
            limits,
            sources,
            address,
            workers,
        }
    }

    /// Opens and closes ports as configurations are applied, for as long as the process
    /// lives, the drain included: as Envoy's listeners during its graceful drain, the ports
    /// keep accepting, and every connection, old or new, is told to go away (each holds a
    /// watch from `drain` until it has finished).
    pub async fn run(self, drain: DrainSource) {
        let store = self.shared.store.clone();
        let mut versions = store.version();
        let mut open: HashMap<u16, JoinHandle<()>> = HashMap::new();
        loop {
            let wanted: BTreeSet<u16> = store
                .snapshot()
                .gateway
                .as_ref()
                .map(|g| g.listeners.iter().map(|l| l.port).collect())
                .unwrap_or_default();
            open.retain(|port, task| {
                let keep = wanted.contains(port) && !task.is_finished();
                if !keep {
                    info!(port, "gateway port closed: no server uses it");
                    task.abort();
                }
                keep
            });
            for port in wanted {
                if open.contains_key(&port) {
                    continue;
                }
                match self.open(port, drain.clone()) {
                    Ok(task) => {
                        info!(port, "gateway port listening");
                        open.insert(port, task);
                    }
                    // Tried again with the next configuration.
                    Err(error) => warn!(port, %error, "cannot open the gateway port"),
                }
            }
            if versions.changed().await.is_err() {
                break;
            }
        }
        for (_, task) in open {
            task.abort();
        }
        info!("gateway ports closed");
    }

    fn open(&self, port: u16, drain: DrainSource) -> std::io::Result<JoinHandle<()>> {
        let address = SocketAddr::new(self.address, port);
        let listener = PlainSocketFactory
            .listen(address, false)
            .and_then(TcpListener::from_std)?;
        let sources = Arc::clone(&self.sources);
        let workers = self.workers.clone();
        let context = EdgeContext {
            shared: Arc::clone(&self.shared),
            credentials: Arc::clone(&self.credentials),
            limits: self.limits,
            default_rate_limit: Arc::new(default_connection_rate_limit(port)),
        };
        let connections = Arc::new(ListenerConnections::default());
        Ok(tokio::spawn(async move {
            accept_loop(
                &listener,
                |peer| sources.admit(peer.ip()),
                |stream, peer, permit| {
                    let cap = context
                        .shared
                        .store
                        .snapshot()
                        .gateway
                        .as_ref()
                        .map_or(usize::MAX, |g| listener_connection_cap(g, port));
                    let Some(listener_permit) = connections.admit(cap) else {
                        // Closed at once (dropped): its descriptor is freed now.
                        debug!(%peer, port, cap, "gateway port at its connection cap: closing the connection");
                        context.shared.metrics.connection_over_listener_cap(port);
                        return;
                    };
                    let context = context.clone();
                    let drain = drain.watch();
                    spawn_connection(
                        workers.as_ref(),
                        stream,
                        debug_span!("edge_connection", %peer, port),
                        move |stream| async move {
                            serve_connection(context, stream, peer, port, drain).await;
                            drop::<Permit>(permit);
                            drop(listener_permit);
                        },
                    );
                },
                std::future::pending(),
            )
            .await;
        }))
    }
}

/// The connection's context: the client as the source, the listener's address as the
/// destination, the server it is bound to.
fn tunnel(stream: &TcpStream, peer: SocketAddr, binding: EdgeBinding) -> Arc<TunnelContext> {
    let destination = stream
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(IpAddr::from([0, 0, 0, 0]), binding.port));
    Arc::new(TunnelContext::new(None, peer, destination, Some(binding)))
}

async fn serve_connection(
    cx: EdgeContext,
    mut stream: TcpStream,
    peer: SocketAddr,
    port: u16,
    drain: DrainWatch,
) {
    // TCP_NODELAY (as Envoy and nginx set on downstream connections: a response written in
    // more than one piece must not wait for the client's ACK) and keepalive probes.
    if let Err(error) = weft_hbone::tune_tcp(&stream) {
        debug!(%error, "cannot tune the edge connection");
    }
    let config = cx.shared.store.snapshot();
    let Some(gateway) = config.gateway.as_ref() else {
        return;
    };
    let Some(listener) = gateway.listener(port) else {
        return;
    };
    let Some(first) = listener.servers.first() else {
        return;
    };
    if !first.is_tls() {
        let binding = EdgeBinding::new(port, &first.name, None, gateway);
        let context = tunnel(&stream, peer, binding);
        let http = first.carries_http();
        let admitted = admit_connection(&cx, first, &context);
        drop(config);
        if !admitted {
            return;
        }
        if http {
            serve_http(cx.shared, context, cx.limits, stream, drain).await;
        } else {
            forward(&cx.shared, &context, stream, drain).await;
        }
        return;
    }
    let hello = match read_client_hello(&mut stream).await {
        Ok(hello) => hello,
        Err(error) => {
            debug!(%error, "no usable ClientHello");
            return;
        }
    };
    let Some(server) = listener.server_for_sni(hello.sni.as_deref()).cloned() else {
        debug!(sni = ?hello.sni, "no server for this server name");
        return;
    };
    let binding = EdgeBinding::new(port, &server.name, hello.sni.clone(), gateway);
    drop(config);
    let context = tunnel(&stream, peer, binding);
    if !admit_connection(&cx, &server, &context) {
        return;
    }
    let io = PrefixedIo::new(hello.bytes, stream);
    if !server.terminates_tls() {
        // PASSTHROUGH: the client's TLS goes to the route's endpoint untouched.
        forward(&cx.shared, &context, io, drain).await;
        return;
    }
    terminate(cx, &server, context, io, drain).await;
}

/// Whether the server's connection rate limit, else the gateway's default one (Envoy's network
/// `local_ratelimit`, before any other filter: ahead of the TLS handshake, routing and
/// authorization) lets the connection in; one it refuses is counted and logged with `RL`, and
/// closed at once.
fn admit_connection(cx: &EdgeContext, server: &EdgeServer, context: &TunnelContext) -> bool {
    let shared = &cx.shared;
    let limit = server
        .connection_rate_limit
        .as_ref()
        .unwrap_or(&cx.default_rate_limit);
    if shared
        .rate_limiter
        .admit(limit, context.source_ip, std::time::Instant::now())
    {
        return true;
    }
    debug!(server = %server.name, "connection rate limited: closing it");
    crate::tcp::rate_limited(shared, context);
    false
}

/// TLS terminated with the server's credential, then HTTP or TCP as the server carries.
async fn terminate(
    cx: EdgeContext,
    server: &EdgeServer,
    context: Arc<TunnelContext>,
    io: PrefixedIo<TcpStream>,
    drain: DrainWatch,
) {
    // A credential that cannot be used refuses this server's handshakes only.
    let Ok(config) = cx.credentials.terminating_config(server).await else {
        return;
    };
    let accept = tokio_rustls::TlsAcceptor::from(config).accept(io);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            debug!(%error, server = %server.name, "tls handshake failed");
            return;
        }
        Err(_) => {
            debug!(server = %server.name, "tls handshake timed out");
            return;
        }
    };
    let context = match cx.credentials.client_identity(server, tls.get_ref().1) {
        Ok(None) => context,
        Ok(Some(identity)) => Arc::new(context.with_peer(identity)),
        Err(error) => {
            debug!(%error, server = %server.name, "client identity refused");
            return;
        }
    };
    if server.carries_http() {
        serve_http(cx.shared, context, cx.limits, tls, drain).await;
    } else {
        forward(&cx.shared, &context, tls, drain).await;
    }
}

/// Carries a connection at L4 to the endpoint its server's routes choose, over HBONE.
async fn forward<IO>(
    shared: &ProxyShared,
    context: &Arc<TunnelContext>,
    mut io: IO,
    drain: DrainWatch,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // Bytes are carried until either side closes or the drain's deadline ends the process.
    let _drain = drain;
    let Ok(mut upstream) = open_tcp_upstream(shared, context, None).await else {
        let _ = io.shutdown().await;
        return;
    };
    if let Err(error) = tokio::io::copy_bidirectional(&mut io, &mut upstream).await {
        debug!(%error, "edge tcp stream ended");
    }
}

#[cfg(test)]
mod tests;
