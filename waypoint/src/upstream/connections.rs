//! The upstream's connections: HBONE tunnels to endpoints (one [`weft_hbone::Pool`] per
//! worker, dialed with the waypoint's certificate), plain TCP to endpoints outside the mesh,
//! and the HTTP/1.1 and HTTP/2 client connections over them, pooled per endpoint and worker.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tracing::{Instrument, debug, debug_span};
use weft_hbone::{ClientTls, ConnectRequest, Connector, HboneDialer, PlainSocketFactory, Pool};
use weft_identity::SpiffeId;

use super::{ActiveRequest, BoxedIo, Upstream, UpstreamError, lock};
use crate::model::{Cluster, Endpoint, Tunnel};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct TunnelKey {
    dial: SocketAddr,
    identity: SpiffeId,
}

/// Dials endpoints' HBONE ports with the waypoint's certificate, from the waypoint's own
/// network namespace.
pub(super) struct EndpointDialer {
    dialer: HboneDialer,
    identity: SpiffeId,
}

impl EndpointDialer {
    pub(super) fn new(dialer: HboneDialer, identity: SpiffeId) -> Self {
        Self { dialer, identity }
    }
}

impl Connector<TunnelKey> for EndpointDialer {
    type Io = ClientTls;

    async fn connect(&self, key: &TunnelKey) -> io::Result<ClientTls> {
        Ok(self
            .dialer
            .dial(&PlainSocketFactory, key.dial, &self.identity, &key.identity)
            .await?)
    }
}

pub(super) struct H1Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    uses: usize,
}

/// The upstream connections of one worker.
pub(super) struct WorkerPools {
    pub(super) tunnels: Pool<TunnelKey, EndpointDialer>,
    pub(super) http1: Mutex<HashMap<SocketAddr, Vec<H1Connection>>>,
    pub(super) http2: Mutex<HashMap<SocketAddr, http2::SendRequest<Full<Bytes>>>>,
}

/// Counts one upstream application connection of a cluster while it lives.
struct ConnectionCount(Arc<AtomicUsize>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How long an HTTP/2 upstream connection may take to answer the handshake.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    /// Opens a byte stream to `endpoint`'s application: an HBONE tunnel with CONNECT authority
    /// `ip:port` and `forwarded: for=<source>`, or TCP for endpoints outside the mesh.
    pub async fn open_stream(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        source: IpAddr,
    ) -> Result<BoxedIo, UpstreamError> {
        let failure = |reason: String| UpstreamError::ConnectFailure {
            endpoint: endpoint.address,
            reason,
        };
        let connect = async {
            match (endpoint.tunnel, &endpoint.identity) {
                (Tunnel::Hbone, Some(identity)) => {
                    let key = TunnelKey {
                        dial: (self.inner.resolve)(endpoint.address),
                        identity: identity.clone(),
                    };
                    let request = ConnectRequest::new(endpoint.address).with_forwarded_for(source);
                    self.pools()
                        .tunnels
                        .connect(&key, &request)
                        .await
                        .map(|s| Box::new(s) as BoxedIo)
                        .map_err(|e| failure(e.to_string()))
                }
                _ => TcpStream::connect(endpoint.address)
                    .await
                    .map(|s| Box::new(s) as BoxedIo)
                    .map_err(|e| failure(e.to_string())),
            }
        };
        match cluster.limits.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect)
                .await
                .map_err(|_| failure("connect timeout".to_owned()))?,
            None => connect.await,
        }
    }

    fn connection_count(&self, cluster: &Cluster) -> ConnectionCount {
        let counter = Arc::clone(
            lock(&self.inner.connections)
                .entry(cluster.name.clone())
                .or_default(),
        );
        counter.fetch_add(1, Ordering::AcqRel);
        ConnectionCount(counter)
    }

    /// Upstream application connections of `cluster` now open.
    pub fn open_connections(&self, cluster: &str) -> usize {
        lock(&self.inner.connections)
            .get(cluster)
            .map_or(0, |c| c.load(Ordering::Acquire))
    }

    /// Sends one request to `endpoint` over a pooled connection, HTTP/2 when `http2`.
    pub async fn send(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
        http2: bool,
        source: IpAddr,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let runtime = self.runtime(cluster);
        lock(&runtime.endpoints)
            .entry(endpoint.address)
            .or_default()
            .active += 1;
        let _active = ActiveRequest {
            runtime,
            endpoint: endpoint.address,
        };
        if http2 {
            self.send_http2(cluster, endpoint, request, source).await
        } else {
            self.send_http1(cluster, endpoint, request, source).await
        }
    }

    async fn send_http1(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
        source: IpAddr,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut request = request;
        // A pooled connection the app closed while idle fails before the request is written;
        // the request comes back and goes out again on a fresh connection (bounded: the
        // second pass always opens one).
        for pass in 0..2 {
            let reused = if pass == 0 {
                let mut idle = lock(&self.pools().http1);
                let list = idle.entry(endpoint.address).or_default();
                list.retain(|c| !c.sender.is_closed());
                list.iter()
                    .position(|c| c.sender.is_ready())
                    .map(|i| list.swap_remove(i))
            } else {
                None
            };
            let (mut connection, fresh) = match reused {
                Some(c) => (c, false),
                None => (self.open_http1(cluster, endpoint, source).await?, true),
            };
            if fresh {
                connection
                    .sender
                    .ready()
                    .await
                    .map_err(|e| reset(endpoint, &e))?;
            }
            connection.uses += 1;
            let response = match connection.sender.try_send_request(request).await {
                Ok(response) => response,
                Err(mut error) => match error.take_message() {
                    Some(unsent) if !fresh => {
                        debug!(endpoint = %endpoint.address, "pooled connection gone, resending");
                        request = unsent;
                        continue;
                    }
                    _ => return Err(classify(endpoint, error.error(), fresh)),
                },
            };
            let keep = cluster
                .limits
                .max_requests_per_connection
                .is_none_or(|max| connection.uses < max);
            if keep {
                lock(&self.pools().http1)
                    .entry(endpoint.address)
                    .or_default()
                    .push(connection);
            }
            return Ok(response);
        }
        Err(UpstreamError::Reset {
            endpoint: endpoint.address,
            reason: "connection closed before the request was sent".to_owned(),
        })
    }

    async fn open_http1(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        source: IpAddr,
    ) -> Result<H1Connection, UpstreamError> {
        let io = self.open_stream(cluster, endpoint, source).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(connect_failure(endpoint))?;
        self.drive(cluster, endpoint, "http/1.1", connection);
        Ok(H1Connection { sender, uses: 0 })
    }

    async fn send_http2(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
        source: IpAddr,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let existing = lock(&self.pools().http2)
            .get(&endpoint.address)
            .filter(|s| !s.is_closed())
            .cloned();
        let (mut sender, fresh) = match existing {
            Some(s) => (s, false),
            None => {
                let io = self.open_stream(cluster, endpoint, source).await?;
                let handshake = http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_reset_streams(64)
                    .handshake(TokioIo::new(io));
                let (sender, connection) = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| UpstreamError::ConnectFailure {
                        endpoint: endpoint.address,
                        reason: "http/2 handshake timeout".to_owned(),
                    })?
                    .map_err(connect_failure(endpoint))?;
                self.drive(cluster, endpoint, "http/2", connection);
                lock(&self.pools().http2).insert(endpoint.address, sender.clone());
                (sender, true)
            }
        };
        sender.ready().await.map_err(|e| reset(endpoint, &e))?;
        sender
            .send_request(request)
            .await
            .map_err(|e| classify(endpoint, &e, fresh))
    }

    /// Opens a dedicated HTTP/1.1 connection for an upgrade (WebSocket): the connection is
    /// handed over to the upgraded byte stream, so it never returns to the pool.
    pub async fn send_upgrade(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<Full<Bytes>>,
        source: IpAddr,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let io = self.open_stream(cluster, endpoint, source).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(connect_failure(endpoint))?;
        self.drive(cluster, endpoint, "upgraded", connection.with_upgrades());
        sender
            .send_request(request)
            .await
            .map_err(|e| classify(endpoint, &e, true))
    }

    /// Drives an upstream connection on a task of its own, counted in `cluster`'s open
    /// connections while it lives.
    fn drive(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        kind: &'static str,
        connection: impl Future<Output = Result<(), hyper::Error>> + Send + 'static,
    ) {
        let count = self.connection_count(cluster);
        tokio::spawn(
            async move {
                let _count = count;
                if let Err(error) = connection.await {
                    debug!(%error, "upstream {kind} connection ended");
                }
            }
            .instrument(debug_span!("upstream", kind, endpoint = %endpoint.address)),
        );
    }
}

/// A failed connection or handshake to `endpoint`.
fn connect_failure(endpoint: &Endpoint) -> impl Fn(hyper::Error) -> UpstreamError + '_ {
    |e| UpstreamError::ConnectFailure {
        endpoint: endpoint.address,
        reason: e.to_string(),
    }
}

fn reset(endpoint: &Endpoint, error: &hyper::Error) -> UpstreamError {
    UpstreamError::Reset {
        endpoint: endpoint.address,
        reason: error.to_string(),
    }
}

fn classify(endpoint: &Endpoint, error: &hyper::Error, fresh: bool) -> UpstreamError {
    use std::error::Error as _;
    let refused = error
        .source()
        .and_then(|s| s.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        == Some(h2::Reason::REFUSED_STREAM);
    if refused {
        return UpstreamError::RefusedStream {
            endpoint: endpoint.address,
        };
    }
    if fresh && error.is_canceled() {
        return UpstreamError::ConnectFailure {
            endpoint: endpoint.address,
            reason: error.to_string(),
        };
    }
    reset(endpoint, error)
}
