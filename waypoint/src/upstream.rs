//! Upstream side: endpoint choice (load balancing, outlier ejection), circuit breaking
//! (DestinationRule `connectionPool`), HBONE tunnels to endpoints through a shared
//! [`weft_hbone::Pool`], and HTTP/1.1 or HTTP/2 client connections over those tunnels, pooled
//! per endpoint.
//!
//! Runtime state (counters, ejections, connections) is keyed by cluster name and endpoint
//! address and survives configuration pushes, so an ejected endpoint stays ejected when an
//! unrelated resource changes; what a push removes is forgotten ([`Upstream::retain`]).

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{Instrument, debug, debug_span, info};
use weft_hbone::{ConnectRequest, Connector, Pool, PoolConfig};
use weft_identity::{SpiffeId, client_config, hbone_server_name};

use crate::identity::CertificateSource;
use crate::model::{
    Cluster, Endpoint, HashKey, LoadBalancer, OutlierPolicy, Tunnel, WaypointConfig,
};

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
        reason: String,
    },
}

/// Where the waypoint dials an endpoint's HBONE listener. Production: `<endpoint ip>:15008`;
/// tests map each fake endpoint to its own loopback port.
pub type HboneAddressResolver = Arc<dyn Fn(SocketAddr) -> SocketAddr + Send + Sync>;

/// The default resolver: the endpoint's IP on port 15008.
pub fn default_hbone_address() -> HboneAddressResolver {
    Arc::new(|endpoint: SocketAddr| SocketAddr::new(endpoint.ip(), weft_hbone::HBONE_PORT))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TunnelKey {
    dial: SocketAddr,
    identity: SpiffeId,
}

struct MeshConnector {
    certificates: Arc<dyn CertificateSource>,
}

impl Connector<TunnelKey> for MeshConnector {
    type Io = tokio_rustls::client::TlsStream<TcpStream>;

    fn connect(&self, key: &TunnelKey) -> impl Future<Output = io::Result<Self::Io>> + Send {
        let material = self.certificates.current();
        let key = key.clone();
        async move {
            let config = client_config(
                &material.certificate,
                &material.roots,
                vec![key.identity.clone()],
            )
            .map_err(io::Error::other)?;
            let tcp = TcpStream::connect(key.dial).await?;
            let _ = weft_hbone::tune_tcp(&tcp);
            tokio_rustls::TlsConnector::from(config)
                .connect(hbone_server_name(key.dial.ip()), tcp)
                .await
        }
    }
}

/// What the admin page shows of an endpoint's runtime state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStatus {
    pub active_requests: usize,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    pub ejection_remaining_ms: Option<u64>,
    /// Times ejected so far (each ejection lasts this many base ejection times).
    pub ejections: u32,
}

#[derive(Debug, Default)]
struct EndpointState {
    active: usize,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
}

/// Per-cluster runtime state.
struct ClusterRuntime {
    active_requests: AtomicUsize,
    pending: AtomicUsize,
    active_retries: AtomicUsize,
    connection_slots: Option<Arc<Semaphore>>,
    slot_count: Option<usize>,
    next: AtomicUsize,
    endpoints: Mutex<HashMap<SocketAddr, EndpointState>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Holds one admitted request's place in the cluster's counters.
pub struct Admission {
    runtime: Arc<ClusterRuntime>,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.runtime.active_requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Holds a retry's place in the cluster's `maxRetries` budget.
pub struct RetryPermit {
    runtime: Arc<ClusterRuntime>,
}

impl Drop for RetryPermit {
    fn drop(&mut self) {
        self.runtime.active_retries.fetch_sub(1, Ordering::AcqRel);
    }
}

struct ActiveRequest {
    runtime: Arc<ClusterRuntime>,
    endpoint: SocketAddr,
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        if let Some(state) = lock(&self.runtime.endpoints).get_mut(&self.endpoint) {
            state.active = state.active.saturating_sub(1);
        }
    }
}

struct H1Connection {
    sender: http1::SendRequest<Full<Bytes>>,
    uses: usize,
}

/// What a load-balancing decision may hash on.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    pub source_ip: IpAddr,
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
}

/// The upstream connections of one worker.
struct WorkerPools {
    tunnels: Pool<TunnelKey, MeshConnector>,
    http1: Mutex<HashMap<SocketAddr, Vec<H1Connection>>>,
    http2: Mutex<HashMap<SocketAddr, http2::SendRequest<Full<Bytes>>>>,
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
    /// An upstream with one set of connection pools.
    pub fn new(certificates: Arc<dyn CertificateSource>, resolve: HboneAddressResolver) -> Self {
        Self::with_workers(certificates, resolve, 1)
    }

    /// An upstream with connection pools for each of `workers` workers; the cluster state
    /// (limits, outlier detection, load-balancing position) is one for all.
    pub fn with_workers(
        certificates: Arc<dyn CertificateSource>,
        resolve: HboneAddressResolver,
        workers: usize,
    ) -> Self {
        let pools = (0..workers.max(1))
            .map(|_| WorkerPools {
                tunnels: Pool::new(
                    MeshConnector {
                        certificates: Arc::clone(&certificates),
                    },
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
            }),
        }
    }

    /// The calling worker's connection pools.
    fn pools(&self) -> &WorkerPools {
        &self.inner.pools[weft_workers::current_index() % self.inner.pools.len()]
    }

    fn runtime(&self, cluster: &Cluster) -> Arc<ClusterRuntime> {
        let mut clusters = lock(&self.inner.clusters);
        let wanted = cluster.limits.max_connections;
        if let Some(existing) = clusters.get(&cluster.name)
            && existing.slot_count == wanted
        {
            return Arc::clone(existing);
        }
        let previous = clusters.remove(&cluster.name);
        let runtime = Arc::new(ClusterRuntime {
            active_requests: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            active_retries: AtomicUsize::new(0),
            connection_slots: wanted.map(|n| Arc::new(Semaphore::new(n))),
            slot_count: wanted,
            next: AtomicUsize::new(0),
            endpoints: Mutex::new(
                previous
                    .map(|p| std::mem::take(&mut *lock(&p.endpoints)))
                    .unwrap_or_default(),
            ),
        });
        clusters.insert(cluster.name.clone(), Arc::clone(&runtime));
        runtime
    }

    /// Admits a request to `cluster` under its limits: `http2MaxRequests` caps concurrent
    /// requests; `maxConnections` bounds requests in flight (one per HTTP/1.1 connection), the
    /// others wait, at most `http1MaxPendingRequests` of them.
    pub async fn admit(&self, cluster: &Cluster) -> Result<Admission, UpstreamError> {
        let runtime = self.runtime(cluster);
        let active = runtime.active_requests.fetch_add(1, Ordering::AcqRel);
        let admission = |slot| Admission {
            runtime: Arc::clone(&runtime),
            _slot: slot,
        };
        if cluster.limits.max_requests.is_some_and(|max| active >= max) {
            drop(admission(None));
            return Err(UpstreamError::Overflow(cluster.name.clone()));
        }
        let Some(slots) = runtime.connection_slots.clone() else {
            return Ok(admission(None));
        };
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            return Ok(admission(Some(slot)));
        }
        let pending = runtime.pending.fetch_add(1, Ordering::AcqRel);
        // Envoy's default for an unset http1MaxPendingRequests is 1024 (2^32-1 in Istio);
        // unset here means no bound beyond memory.
        if cluster
            .limits
            .max_pending_requests
            .is_some_and(|max| pending >= max)
        {
            runtime.pending.fetch_sub(1, Ordering::AcqRel);
            drop(admission(None));
            return Err(UpstreamError::Overflow(cluster.name.clone()));
        }
        let slot = slots.acquire_owned().await;
        runtime.pending.fetch_sub(1, Ordering::AcqRel);
        match slot {
            Ok(slot) => Ok(admission(Some(slot))),
            Err(_) => Err(UpstreamError::Overflow(cluster.name.clone())),
        }
    }

    /// Takes a place in the cluster's retry budget, or `None` when `maxRetries` is reached.
    pub fn retry_permit(&self, cluster: &Cluster) -> Option<RetryPermit> {
        let runtime = self.runtime(cluster);
        let active = runtime.active_retries.fetch_add(1, Ordering::AcqRel);
        let permit = RetryPermit {
            runtime: Arc::clone(&runtime),
        };
        if cluster.limits.max_retries.is_some_and(|max| active >= max) {
            drop(permit);
            return None;
        }
        Some(permit)
    }

    /// Chooses an endpoint: healthy and not ejected (all healthy ones when every one is
    /// ejected, as Envoy's panic mode does), then by the cluster's load balancer. `exclude`
    /// holds endpoints already tried by earlier attempts, avoided when others remain.
    pub fn choose_endpoint(
        &self,
        cluster: &Cluster,
        hash: &HashInput<'_>,
        exclude: &[SocketAddr],
    ) -> Result<Endpoint, UpstreamError> {
        let runtime = self.runtime(cluster);
        let now = Instant::now();
        let healthy: Vec<&Endpoint> = cluster.endpoints.iter().filter(|e| e.healthy).collect();
        if healthy.is_empty() {
            return Err(UpstreamError::NoHealthyUpstream(cluster.name.clone()));
        }
        let states = lock(&runtime.endpoints);
        let mut candidates: Vec<&Endpoint> = healthy
            .iter()
            .copied()
            .filter(|e| {
                states
                    .get(&e.address)
                    .and_then(|s| s.ejected_until)
                    .is_none_or(|until| until <= now)
            })
            .collect();
        // Below minHealthPercent (or with every endpoint ejected) outlier detection stands
        // aside and all healthy endpoints take traffic, as Envoy's panic mode does.
        let min_health = cluster
            .outlier
            .as_ref()
            .map_or(0, |o| o.min_health_percent as usize);
        if candidates.is_empty() || candidates.len() * 100 < healthy.len() * min_health {
            candidates = healthy;
        }
        if candidates.len() > 1 && !exclude.is_empty() {
            let fresh: Vec<&Endpoint> = candidates
                .iter()
                .copied()
                .filter(|e| !exclude.contains(&e.address))
                .collect();
            if !fresh.is_empty() {
                candidates = fresh;
            }
        }
        let active = |e: &Endpoint| states.get(&e.address).map_or(0, |s| s.active);
        let chosen = match &cluster.load_balancer {
            LoadBalancer::RoundRobin => {
                candidates[runtime.next.fetch_add(1, Ordering::Relaxed) % candidates.len()]
            }
            LoadBalancer::Random => candidates[rand::random_range(0..candidates.len())],
            LoadBalancer::LeastRequest => {
                let a = candidates[rand::random_range(0..candidates.len())];
                let b = candidates[rand::random_range(0..candidates.len())];
                if active(b) < active(a) { b } else { a }
            }
            LoadBalancer::ConsistentHash(key) => match hash_key(key, hash) {
                Some(key) => rendezvous(&candidates, &key),
                None => candidates[rand::random_range(0..candidates.len())],
            },
        };
        Ok(chosen.clone())
    }

    /// Records an attempt's outcome for outlier detection: `Some(status)` for a response,
    /// `None` for a connect failure, reset or timeout.
    pub fn record_outcome(&self, cluster: &Cluster, endpoint: SocketAddr, status: Option<u16>) {
        let Some(policy) = &cluster.outlier else {
            return;
        };
        let runtime = self.runtime(cluster);
        let mut states = lock(&runtime.endpoints);
        let now = Instant::now();
        let total = cluster.endpoints.len();
        let ejected = states
            .values()
            .filter(|s| s.ejected_until.is_some_and(|u| u > now))
            .count();
        let state = states.entry(endpoint).or_default();
        let is_5xx = status.is_none_or(|s| s >= 500);
        let is_gateway = status.is_none_or(|s| matches!(s, 502..=504));
        if !is_5xx {
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            // Envoy forgets the ejection multiplier once an endpoint has been healthy a while.
            return;
        }
        state.consecutive_5xx += 1;
        if is_gateway {
            state.consecutive_gateway += 1;
        } else {
            state.consecutive_gateway = 0;
        }
        let tripped = policy
            .consecutive_5xx
            .is_some_and(|n| state.consecutive_5xx >= n)
            || policy
                .consecutive_gateway_errors
                .is_some_and(|n| state.consecutive_gateway >= n);
        let already = state.ejected_until.is_some_and(|u| u > now);
        if tripped && !already && ejection_allowed(policy, ejected, total) {
            state.ejections += 1;
            let time = policy.base_ejection_time * state.ejections;
            state.ejected_until = Some(now + time);
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            info!(cluster = %cluster.name, %endpoint, ejection_ms = time.as_millis() as u64, "endpoint ejected");
        }
    }

    /// Forgets the runtime state (counters, ejections) of clusters `config` no longer has and
    /// the idle connections to endpoints it no longer names, so that clusters and pods that
    /// come and go (a pod addressed directly has a cluster of its own) leave nothing behind.
    /// What is still configured keeps its state.
    pub fn retain(&self, config: &WaypointConfig) {
        let keep_cluster = |name: &str| config.has_cluster(name);
        lock(&self.inner.clusters).retain(|name, _| keep_cluster(name));
        lock(&self.inner.connections)
            .retain(|name, open| keep_cluster(name) || open.load(Ordering::Acquire) > 0);
        let endpoints: HashSet<SocketAddr> = config
            .clusters
            .values()
            .flat_map(|c| c.endpoints.iter().map(|e| e.address))
            .collect();
        let direct: HashSet<IpAddr> = config.direct_workloads().map(|w| w.address).collect();
        let keep_endpoint = |a: &SocketAddr| endpoints.contains(a) || direct.contains(&a.ip());
        for pools in &self.inner.pools {
            lock(&pools.http1).retain(|address, _| keep_endpoint(address));
            lock(&pools.http2).retain(|address, _| keep_endpoint(address));
        }
    }

    /// The runtime state of each endpoint of the cluster named `cluster` that has any (load,
    /// failures, ejection), for the admin page; nothing is created by looking.
    pub fn endpoint_status(&self, cluster: &str) -> HashMap<SocketAddr, EndpointStatus> {
        let Some(runtime) = lock(&self.inner.clusters).get(cluster).cloned() else {
            return HashMap::new();
        };
        let now = Instant::now();
        lock(&runtime.endpoints)
            .iter()
            .map(|(address, state)| {
                let ejected_for = state
                    .ejected_until
                    .and_then(|until| until.checked_duration_since(now))
                    .filter(|left| !left.is_zero());
                (
                    *address,
                    EndpointStatus {
                        active_requests: state.active,
                        consecutive_5xx: state.consecutive_5xx,
                        consecutive_gateway_errors: state.consecutive_gateway,
                        ejected: ejected_for.is_some(),
                        ejection_remaining_ms: ejected_for
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        ejections: state.ejections,
                    },
                )
            })
            .collect()
    }

    /// Whether `endpoint` of `cluster` is ejected now.
    pub fn is_ejected(&self, cluster: &Cluster, endpoint: SocketAddr) -> bool {
        let runtime = self.runtime(cluster);
        let now = Instant::now();
        lock(&runtime.endpoints)
            .get(&endpoint)
            .and_then(|s| s.ejected_until)
            .is_some_and(|u| u > now)
    }

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
            .map_err(|e| UpstreamError::ConnectFailure {
                endpoint: endpoint.address,
                reason: e.to_string(),
            })?;
        let count = self.connection_count(cluster);
        tokio::spawn(
            async move {
                let _count = count;
                if let Err(error) = connection.await {
                    debug!(%error, "upstream http/1.1 connection ended");
                }
            }
            .instrument(debug_span!("upstream_http1", endpoint = %endpoint.address)),
        );
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
                    .map_err(|e| UpstreamError::ConnectFailure {
                        endpoint: endpoint.address,
                        reason: e.to_string(),
                    })?;
                let count = self.connection_count(cluster);
                tokio::spawn(
                    async move {
                        let _count = count;
                        if let Err(error) = connection.await {
                            debug!(%error, "upstream http/2 connection ended");
                        }
                    }
                    .instrument(debug_span!("upstream_http2", endpoint = %endpoint.address)),
                );
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
            .map_err(|e| UpstreamError::ConnectFailure {
                endpoint: endpoint.address,
                reason: e.to_string(),
            })?;
        let count = self.connection_count(cluster);
        tokio::spawn(async move {
            let _count = count;
            if let Err(error) = connection.with_upgrades().await {
                debug!(%error, "upstream upgraded connection ended");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|e| classify(endpoint, &e, true))
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

fn ejection_allowed(policy: &OutlierPolicy, ejected: usize, total: usize) -> bool {
    if total == 0 {
        return false;
    }
    // Envoy always allows one ejection, whatever the percentage, so that small clusters are
    // protected too.
    let after = ejected + 1;
    ejected == 0 || after * 100 <= total * policy.max_ejection_percent as usize
}

fn hash_key(key: &HashKey, input: &HashInput<'_>) -> Option<String> {
    match key {
        HashKey::Header(name) => input
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        HashKey::Cookie(name) => input
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                (k == name).then(|| v.to_owned())
            }),
        HashKey::SourceIp => Some(input.source_ip.to_string()),
        HashKey::QueryParameter(name) => input
            .query
            .and_then(|q| weft_policy::route::first_query_value(q, name))
            .map(|v| v.into_owned()),
    }
}

/// Highest-random-weight choice: stable for a key, and only the keys of a removed endpoint
/// move when the set changes.
fn rendezvous<'a>(candidates: &[&'a Endpoint], key: &str) -> &'a Endpoint {
    let score = |e: &Endpoint| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        e.address.hash(&mut hasher);
        hasher.finish()
    };
    candidates
        .iter()
        .copied()
        .max_by_key(|e| score(e))
        .unwrap_or(candidates[0])
}

#[cfg(test)]
mod tests;
