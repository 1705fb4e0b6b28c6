//! Upstream side: endpoint choice (load balancing, outlier ejection) and circuit breaking
//! (DestinationRule `connectionPool`) in [`balancing`]; HBONE tunnels to endpoints through a
//! shared [`weft_hbone::Pool`] and plain TCP to endpoints outside the mesh in [`connections`];
//! here, the HTTP/1.1 or HTTP/2 client connections over those streams, pooled per endpoint and
//! worker (and per downstream connection where a cluster writes a PROXY header first:
//! [`proxy_protocol`]).
//!
//! Runtime state (counters, ejections, slow-start clocks, connections) is keyed by cluster name
//! and endpoint address and survives configuration pushes, so an ejected endpoint stays ejected
//! and a warming one keeps warming when an unrelated resource changes; what a push removes is
//! forgotten ([`Upstream::retain`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{Instrument, debug, debug_span};
use weft_hbone::{HboneDialer, Pool, PoolConfig};
use weft_identity::{CertificateSource, SpiffeId};

use crate::model::{Cluster, Endpoint, WaypointConfig};

/// A byte stream to an endpoint's application: an HBONE tunnel or a plain TCP connection.
pub trait UpstreamIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> UpstreamIo for T {}

/// A boxed upstream stream.
pub type BoxedIo = Box<dyn UpstreamIo>;

/// Why an upstream attempt failed; `proxy::reply` maps each to its response flag and status.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cluster {0} has no healthy endpoint")]
    NoHealthyUpstream(String),
    #[error("cluster {0} is over its connection pool limits")]
    Overflow(String),
    #[error("connecting to {endpoint} failed: {reason}")]
    ConnectFailure {
        endpoint: SocketAddr,
        reason: String,
    },
    #[error("{endpoint} refused the stream")]
    RefusedStream { endpoint: SocketAddr },
    #[error("{endpoint} reset the request: {reason}")]
    Reset {
        endpoint: SocketAddr,
        /// What the response flag and details are drawn from.
        cause: ResetReason,
        reason: String,
    },
    /// A `DYNAMIC_DNS` cluster's name gave no address, or there was no room to resolve it.
    #[error(transparent)]
    Dns(#[from] dynamic_dns::DnsError),
}

/// Where the waypoint dials an endpoint's HBONE listener. Production: `<endpoint ip>:15008`;
/// tests map each fake endpoint to its own loopback port.
pub type HboneAddressResolver = Arc<dyn Fn(SocketAddr) -> SocketAddr + Send + Sync>;

/// The default resolver: the endpoint's IP on port 15008.
pub fn default_hbone_address() -> HboneAddressResolver {
    Arc::new(|endpoint: SocketAddr| SocketAddr::new(endpoint.ip(), weft_hbone::HBONE_PORT))
}

mod balancing;
mod body;
mod connections;
pub mod dynamic_dns;
pub mod proxy_protocol;
mod reset;
mod tls;
#[cfg(test)]
pub(crate) use tls::Unverified;
mod tunneling;

use balancing::ClusterRuntime;
pub use balancing::{
    ActiveRequest, Admission, BalancingPlan, BuiltTable, ClusterState, EndpointStatus,
    GeneratedCookie, HashInput, Outcome, RetryPermit, Tried, generate_cookie, request_cookie,
    session_endpoint, session_update, slow_start_factor,
};
pub use body::{Ending, Replayable, RequestBody};
use connections::{EndpointDialer, TunnelKey};
use proxy_protocol::DownstreamKey;
pub use proxy_protocol::{Downstream, ProxyProtocolVersion};
pub use reset::ResetReason;
pub use tls::{OriginatedTls, OriginationCredentials};
pub use tunneling::TcpTunneling;

/// What the waypoint knows of an endpoint found by name at request time: nothing.
static OUTSIDE_THE_MESH: std::sync::LazyLock<Arc<crate::model::WorkloadInfo>> =
    std::sync::LazyLock::new(|| {
        Arc::new(crate::model::WorkloadInfo {
            uid: String::new(),
            name: String::new(),
            labels: Default::default(),
            identity: None,
        })
    });

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

struct H1Connection {
    sender: http1::SendRequest<RequestBody>,
    uses: usize,
    /// The downstream connection that used it last, when its cluster writes a PROXY header
    /// ([`proxy_protocol::Owner`]).
    owner: Weak<proxy_protocol::Owner>,
}

struct H2Connection {
    sender: http2::SendRequest<RequestBody>,
    /// As [`H1Connection::owner`].
    owner: Weak<proxy_protocol::Owner>,
}

/// The upstream half of the waypoint. Cheap to clone.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<UpstreamInner>,
}

struct UpstreamInner {
    /// One set of connection pools per worker ([`weft_workers`]): a request goes out on its
    /// own worker's connections, whose tasks run on its own thread.
    pools: Box<[WorkerPools]>,
    resolve: HboneAddressResolver,
    clusters: Mutex<HashMap<String, Arc<ClusterRuntime>>>,
    connections: Mutex<HashMap<String, Arc<AtomicUsize>>>,
    /// The names `DYNAMIC_DNS` clusters resolved.
    dynamic_dns: dynamic_dns::DynamicDnsCache,
    /// What the last configuration keeps pooled ([`Upstream::retain`]); `None` before the
    /// first: everything.
    pooled: Mutex<Option<Arc<Pooled>>>,
    /// Bumped by every [`Upstream::retain`]: a connection that was out of its pool across one
    /// is checked against [`UpstreamInner::pooled`] before it goes back.
    generation: AtomicU64,
}

/// The endpoints whose connections a configuration keeps pooled: its healthy endpoints and the
/// pods it serves at their own address (unless unhealthy), over the TLS settings it uses.
struct Pooled {
    endpoints: HashSet<SocketAddr>,
    direct: HashSet<IpAddr>,
    tls: HashSet<u64>,
}

impl Pooled {
    fn of(config: &WaypointConfig) -> Self {
        let (healthy, unhealthy): (Vec<&Endpoint>, Vec<&Endpoint>) = config
            .clusters
            .values()
            .flat_map(|c| c.endpoints.iter())
            .partition(|e| e.healthy);
        let unhealthy: HashSet<IpAddr> = unhealthy.iter().map(|e| e.address.ip()).collect();
        Pooled {
            endpoints: healthy.iter().map(|e| e.address).collect(),
            direct: config
                .direct_workloads()
                .map(|w| w.address)
                .filter(|ip| !unhealthy.contains(ip))
                .collect(),
            tls: config
                .clusters
                .values()
                .filter_map(|c| c.tls.as_ref().map(OriginatedTls::id))
                .collect(),
        }
    }

    fn keeps(&self, key: &PoolKey) -> bool {
        (self.endpoints.contains(&key.address) || self.direct.contains(&key.address.ip()))
            && key.tls.is_none_or(|id| self.tls.contains(&id))
    }
}

/// The upstream connections of one worker.
struct WorkerPools {
    tunnels: Pool<TunnelKey, EndpointDialer>,
    http1: Mutex<HashMap<PoolKey, Vec<H1Connection>>>,
    http2: Mutex<HashMap<PoolKey, H2Connection>>,
}

impl WorkerPools {
    /// Lets go of the idle connections of `key` (a PROXY-header pool) whose downstream
    /// connection is gone ([`proxy_protocol::Owner`]): O(the connections of that key).
    fn forget_gone(&self, key: &PoolKey) {
        let gone = |owner: &Weak<proxy_protocol::Owner>| {
            #[cfg(test)]
            owner_tests::LOOKED_AT.with(|n| n.set(n.get() + 1));
            owner.strong_count() == 0
        };
        let mut http1 = lock(&self.http1);
        if let Some(list) = http1.get_mut(key) {
            list.retain(|c| !gone(&c.owner));
            if list.is_empty() {
                http1.remove(key);
            }
        }
        drop(http1);
        let mut http2 = lock(&self.http2);
        if http2.get(key).is_some_and(|c| gone(&c.owner)) {
            http2.remove(key);
        }
    }
}

/// What a pooled application connection goes to: the endpoint, the TLS settings this proxy
/// wrapped it in, if any ([`OriginatedTls::id`]), and the host it presented when that is the
/// endpoint's own (`DYNAMIC_DNS`), so that a connection made for one host's SNI and CA never
/// carries another's requests to the same address; and, when it began with a PROXY header,
/// the downstream addresses the header carries, so that it carries only their requests (as
/// Envoy keys its pools by the header's addresses).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    address: SocketAddr,
    tls: Option<u64>,
    host: Option<Arc<str>>,
    downstream: Option<DownstreamKey>,
}

impl PoolKey {
    fn new(cluster: &Cluster, endpoint: &Endpoint, downstream: &Downstream) -> Self {
        PoolKey {
            downstream: cluster.proxy_protocol.map(|_| downstream.key()),
            ..Self::of(endpoint, cluster.tls.as_ref())
        }
    }

    fn of(endpoint: &Endpoint, tls: Option<&OriginatedTls>) -> Self {
        PoolKey {
            address: endpoint.address,
            tls: tls.map(OriginatedTls::id),
            host: endpoint
                .host
                .clone()
                .filter(|_| tls.is_some_and(OriginatedTls::names_endpoint_hosts)),
            downstream: None,
        }
    }
}

/// Counts one upstream application connection of a cluster while it lives.
struct ConnectionCount(Arc<AtomicUsize>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

/// How long an HTTP/2 upstream connection may take to answer the handshake.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl Upstream {
    /// An upstream with one set of connection pools, presenting `identity`'s certificate.
    pub fn new(
        identity: SpiffeId,
        certificates: Arc<dyn CertificateSource>,
        resolve: HboneAddressResolver,
    ) -> Self {
        Self::with_workers(
            identity,
            certificates,
            resolve,
            1,
            dynamic_dns::DynamicDnsCache::system(None),
        )
    }

    /// An upstream with connection pools for each of `workers` workers; the cluster state
    /// (limits, outlier detection, load-balancing position) is one for all.
    pub fn with_workers(
        identity: SpiffeId,
        certificates: Arc<dyn CertificateSource>,
        resolve: HboneAddressResolver,
        workers: usize,
        dynamic_dns: dynamic_dns::DynamicDnsCache,
    ) -> Self {
        let dialer = HboneDialer::new(certificates);
        let pools = (0..workers.max(1))
            .map(|_| WorkerPools {
                tunnels: Pool::new(
                    EndpointDialer::new(dialer.clone(), identity.clone()),
                    PoolConfig::default(),
                ),
                http1: Mutex::new(HashMap::new()),
                http2: Mutex::new(HashMap::new()),
            })
            .collect();
        Upstream {
            inner: Arc::new(UpstreamInner {
                pools,
                resolve,
                clusters: Mutex::new(HashMap::new()),
                connections: Mutex::new(HashMap::new()),
                dynamic_dns,
                pooled: Mutex::new(None),
                generation: AtomicU64::new(0),
            }),
        }
    }

    /// The endpoint of a `DYNAMIC_DNS` cluster for a request to `authority`: its host resolved
    /// ([`dynamic_dns`]), on its port, else 80 (443 when the cluster originates TLS), as
    /// Envoy's dynamic forward proxy cluster takes it; outside the mesh, reached in plain TCP
    /// or the cluster's TLS.
    pub async fn dynamic_endpoint(
        &self,
        cluster: &Cluster,
        authority: &str,
    ) -> Result<Endpoint, UpstreamError> {
        let (host, port) = dynamic_dns::host_and_port(authority);
        let default_port = if cluster.tls.is_some() { 443 } else { 80 };
        let address = self.inner.dynamic_dns.resolve(host).await?;
        // The name as resolved (case and a final dot do not make another server).
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        Ok(Endpoint {
            address: SocketAddr::new(address, port.unwrap_or(default_port)),
            identity: None,
            principal: None,
            workload: Arc::clone(&OUTSIDE_THE_MESH),
            tunnel: crate::model::Tunnel::Plain,
            tunnel_via: None,
            host: Some(Arc::from(host)),
            healthy: true,
            weight: 1,
            priority: 0,
            locality: 0,
        })
    }

    /// The calling worker's connection pools.
    fn pools(&self) -> &WorkerPools {
        &self.inner.pools[self.worker()]
    }

    /// The index of the calling worker's connection pools.
    fn worker(&self) -> usize {
        weft_workers::current_index() % self.inner.pools.len()
    }

    /// What a connection of `key` pooled for `downstream` keeps of it: where `cluster` writes
    /// a PROXY header (its pools are per downstream connection), the handle by which the
    /// downstream connection's end lets the connection go; nothing otherwise, so that the
    /// requests of other clusters touch no shared count.
    fn owner(
        &self,
        cluster: &Cluster,
        downstream: &Downstream,
        key: &PoolKey,
    ) -> Weak<proxy_protocol::Owner> {
        if cluster.proxy_protocol.is_none() {
            return Weak::new();
        }
        downstream
            .owner()
            .pooled_in(&self.inner, self.worker(), key)
    }

    /// Forgets the runtime state (counters, ejections) of clusters `config` no longer has and
    /// the idle connections to endpoints it no longer names, so that clusters and pods that
    /// come and go (a pod addressed directly has a cluster of its own) leave nothing behind.
    /// What is still configured keeps its state; an endpoint a push adds to a cluster with slow
    /// start starts warming up now ([`Upstream::track_warm_up`]). An endpoint that is no longer healthy (its
    /// pod terminating or not ready) loses its idle connections too, as Envoy's pool drains a
    /// host istiod stops sending (istiod leaves unhealthy endpoints out of EDS): its pod can
    /// end without an idle connection to it racing a request; requests in flight finish.
    pub fn retain(&self, config: &WaypointConfig) {
        let keep_cluster = |name: &str| config.has_cluster(name);
        lock(&self.inner.clusters).retain(|name, _| keep_cluster(name));
        self.track_warm_up(config);
        lock(&self.inner.connections)
            .retain(|name, open| keep_cluster(name) || open.load(Ordering::Acquire) > 0);
        let pooled = Arc::new(Pooled::of(config));
        *lock(&self.inner.pooled) = Some(Arc::clone(&pooled));
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
        let keep = |key: &PoolKey| pooled.keeps(key);
        for pools in &self.inner.pools {
            lock(&pools.http1).retain(|key, _| keep(key));
            lock(&pools.http2).retain(|key, _| keep(key));
        }
    }

    /// Whether a connection to `key` taken out of its pool at `generation` may go back: yes,
    /// unless a configuration applied since no longer keeps its endpoint.
    fn still_pooled(&self, key: &PoolKey, generation: u64) -> bool {
        self.inner.generation.load(Ordering::Acquire) == generation
            || lock(&self.inner.pooled)
                .as_ref()
                .is_none_or(|pooled| pooled.keeps(key))
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
        request: Request<RequestBody>,
        http2: bool,
        downstream: &Downstream,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let active = self.state(cluster).track_request(endpoint.address);
        self.send_on(active, cluster, endpoint, request, http2, downstream)
            .await
    }

    /// [`Self::send`] for a request already counted in flight to `endpoint` (when it was
    /// chosen: [`ClusterState::choose_and_track`]).
    pub async fn send_on(
        &self,
        active: ActiveRequest,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        http2: bool,
        downstream: &Downstream,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let _active = active;
        if http2 {
            self.send_http2(cluster, endpoint, request, downstream)
                .await
        } else {
            self.send_http1(cluster, endpoint, request, downstream)
                .await
        }
    }

    async fn send_http1(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        downstream: &Downstream,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut request = request;
        let key = PoolKey::new(cluster, endpoint, downstream);
        let generation = self.inner.generation.load(Ordering::Acquire);
        // A pooled connection the app closed while idle fails before the request is written;
        // the request comes back and goes out again on a fresh connection (bounded: the
        // second pass always opens one).
        for pass in 0..2 {
            let reused = if pass == 0 {
                let mut idle = lock(&self.pools().http1);
                let list = idle.entry(key.clone()).or_default();
                list.retain(|c| !c.sender.is_closed());
                list.iter()
                    .position(|c| c.sender.is_ready())
                    .map(|i| list.swap_remove(i))
            } else {
                None
            };
            let (mut connection, fresh) = match reused {
                Some(c) => (c, false),
                None => (self.open_http1(cluster, endpoint, downstream).await?, true),
            };
            connection.owner = self.owner(cluster, downstream, &key);
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
            // Back to the pool, unless it served its share or its endpoint left meanwhile (a
            // terminating pod: its connections drain as their requests end).
            let keep = cluster
                .limits
                .max_requests_per_connection
                .is_none_or(|max| connection.uses < max)
                && self.still_pooled(&key, generation);
            if keep {
                self.idle_http1(key, connection);
            }
            return Ok(response);
        }
        Err(UpstreamError::Reset {
            endpoint: endpoint.address,
            cause: ResetReason::ConnectionTermination,
            reason: "connection closed before the request was sent".to_owned(),
        })
    }

    /// Puts an HTTP/1.1 connection back in the calling worker's pool of `key`, idle.
    fn idle_http1(&self, key: PoolKey, connection: H1Connection) {
        lock(&self.pools().http1)
            .entry(key)
            .or_default()
            .push(connection);
    }

    async fn open_http1(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        downstream: &Downstream,
    ) -> Result<H1Connection, UpstreamError> {
        let io = self.open_stream(cluster, endpoint, downstream).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(connect_failure(endpoint))?;
        self.drive(cluster, endpoint, "http/1.1", connection);
        Ok(H1Connection {
            sender,
            uses: 0,
            // Set by the request it is opened for.
            owner: Weak::new(),
        })
    }

    async fn send_http2(
        &self,
        cluster: &Cluster,
        endpoint: &Endpoint,
        request: Request<RequestBody>,
        downstream: &Downstream,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let key = PoolKey::new(cluster, endpoint, downstream);
        let generation = self.inner.generation.load(Ordering::Acquire);
        let existing = lock(&self.pools().http2)
            .get_mut(&key)
            .filter(|c| !c.sender.is_closed())
            .map(|c| {
                c.owner = self.owner(cluster, downstream, &key);
                c.sender.clone()
            });
        let (mut sender, fresh) = match existing {
            Some(s) => (s, false),
            None => {
                let io = self.open_stream(cluster, endpoint, downstream).await?;
                let mut builder = http2::Builder::new(TokioExecutor::new());
                builder.max_concurrent_reset_streams(64);
                if let Some((interval, timeout)) = cluster.limits.http2_keepalive {
                    // Envoy's `connection_keepalive`: pings on busy and idle connections alike.
                    builder
                        .timer(TokioTimer::new())
                        .keep_alive_interval(interval)
                        .keep_alive_timeout(timeout)
                        .keep_alive_while_idle(true);
                }
                let handshake = builder.handshake(TokioIo::new(io));
                let (sender, connection) = tokio::time::timeout(DEFAULT_CONNECT_TIMEOUT, handshake)
                    .await
                    .map_err(|_| UpstreamError::ConnectFailure {
                        endpoint: endpoint.address,
                        reason: "http/2 handshake timeout".to_owned(),
                    })?
                    .map_err(connect_failure(endpoint))?;
                self.drive(cluster, endpoint, "http/2", connection);
                if self.still_pooled(&key, generation) {
                    let pooled = H2Connection {
                        sender: sender.clone(),
                        owner: self.owner(cluster, downstream, &key),
                    };
                    lock(&self.pools().http2).insert(key, pooled);
                }
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
        downstream: &Downstream,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let io = self.open_stream(cluster, endpoint, downstream).await?;
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
        cause: ResetReason::of(error, false),
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

#[cfg(test)]
mod owner_tests;
#[cfg(test)]
mod pool_tests {
    use super::*;

    #[test]
    fn connections_in_other_tls_settings_to_one_address_are_pooled_apart() {
        let endpoint = |host: Option<&str>| Endpoint {
            address: "192.0.2.1:443".parse().unwrap(),
            identity: None,
            principal: None,
            workload: Arc::clone(&OUTSIDE_THE_MESH),
            tunnel: crate::model::Tunnel::Plain,
            tunnel_via: None,
            host: host.map(Arc::from),
            healthy: true,
            weight: 1,
            priority: 0,
            locality: 0,
        };
        let tls = |sni: &str| {
            let settings = weft_proto::waypoint::UpstreamTls {
                sni: sni.to_owned(),
                ..Default::default()
            };
            OriginatedTls::new(
                &settings,
                "api.example.com",
                &OriginationCredentials::default(),
            )
            .unwrap()
        };
        let address = endpoint(None);
        let (a, b) = (tls("a.example.com"), tls("b.example.com"));
        assert_eq!(
            PoolKey::of(&address, Some(&a)),
            PoolKey::of(&address, Some(&a.clone()))
        );
        assert_ne!(
            PoolKey::of(&address, Some(&a)),
            PoolKey::of(&address, Some(&b))
        );
        assert_ne!(PoolKey::of(&address, Some(&a)), PoolKey::of(&address, None));
        // The same settings built again (a configuration update) do not reuse the old ones'.
        assert_ne!(
            PoolKey::of(&address, Some(&a)),
            PoolKey::of(&address, Some(&tls("a.example.com")))
        );

        // Two names of a wildcard at one address: apart when each presents its own name, as
        // when the settings name none; one pool when the settings' name is every connection's.
        let (one, two) = (
            endpoint(Some("a.wild.example")),
            endpoint(Some("b.wild.example")),
        );
        let auto = tls("");
        assert_ne!(
            PoolKey::of(&one, Some(&auto)),
            PoolKey::of(&two, Some(&auto))
        );
        assert_eq!(
            PoolKey::of(&one, Some(&auto)),
            PoolKey::of(&endpoint(Some("a.wild.example")), Some(&auto))
        );
        assert_eq!(PoolKey::of(&one, Some(&a)), PoolKey::of(&two, Some(&a)));
        // Plain text presents no name.
        assert_eq!(PoolKey::of(&one, None), PoolKey::of(&two, None));
    }
}
