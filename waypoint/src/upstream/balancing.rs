//! The runtime state of each cluster, one for all workers: admission under the
//! DestinationRule's `connectionPool` limits (circuit breaking), the retry budget, endpoint
//! choice (load balancing, with consistent hashing) and outlier detection. Keyed by cluster name
//! and endpoint address, so it survives configuration pushes (see [`Upstream::retain`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::info;

use super::{Upstream, UpstreamError, lock};
use crate::model::{Cluster, Endpoint, OutlierPolicy};

/// What the admin page shows of an endpoint's runtime state.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStatus {
    pub active_requests: usize,
    pub consecutive_5xx: u32,
    pub consecutive_gateway_errors: u32,
    /// Consecutive local-origin failures, counted apart when the policy splits them.
    pub consecutive_local_origin_failures: u32,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    pub ejection_remaining_ms: Option<u64>,
    /// Times ejected so far (each ejection lasts this many base ejection times).
    pub ejections: u32,
    /// When it joined the cluster ready, while slow start keeps its clock (the dump shows the
    /// weight that gives, [`slow_start_factor`]).
    #[serde(skip)]
    pub warming_since: Option<Instant>,
}

#[derive(Debug, Default)]
struct EndpointState {
    /// Requests in flight, counted down by their [`ActiveRequest`] without the lock.
    active: Arc<AtomicUsize>,
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    consecutive_local_origin: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    /// When the endpoint joined the cluster healthy, for slow start ([`slow_start`]); `None`
    /// when the cluster has none.
    warming_since: Option<Instant>,
}

/// The runtime states of a cluster's endpoints, by address, and what the choice of an endpoint
/// needs to know of them at once, without looking at each.
#[derive(Debug, Default)]
struct EndpointStates {
    by_address: HashMap<SocketAddr, EndpointState>,
    /// When the last ejection so far ends: from then on, no endpoint is ejected.
    ejections_end: Option<Instant>,
    /// When the last warm-up ends, as [`Upstream::track_warm_up`] last worked it out (from then
    /// on, no endpoint warms up); `None`: not known.
    warm_from: Option<Instant>,
    /// The stamp of the last ejection ([`plan::next_ejection_stamp`]; 0: none yet), by which a
    /// consistent hash knows its tables over the endpoints not ejected are still those of the
    /// ejected set ([`BalancingPlan::hashed_available`]).
    ejection_stamp: u64,
}

impl Deref for EndpointStates {
    type Target = HashMap<SocketAddr, EndpointState>;

    fn deref(&self) -> &Self::Target {
        &self.by_address
    }
}

impl DerefMut for EndpointStates {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.by_address
    }
}

/// Per-cluster runtime state.
pub(super) struct ClusterRuntime {
    active_requests: AtomicUsize,
    pending: AtomicUsize,
    active_retries: AtomicUsize,
    connection_slots: Option<Arc<Semaphore>>,
    slot_count: Option<usize>,
    next: AtomicUsize,
    endpoints: Mutex<EndpointStates>,
}

/// A cluster's runtime state, looked up once (under the lock every worker shares) and then
/// used for each decision about a request: endpoint choice, requests in flight, outcomes and
/// retries.
#[derive(Clone)]
pub struct ClusterState(Arc<ClusterRuntime>);

/// Holds one admitted request's place in the cluster's counters, and the cluster's state for
/// the rest of the request.
pub struct Admission {
    state: ClusterState,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// The state of the cluster the request was admitted to.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.state.0.active_requests.fetch_sub(1, Ordering::AcqRel);
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

/// Counts one request in flight to an endpoint (least-request balancing, the admin page)
/// while it lives. It holds the endpoint's counter itself, which moves with the endpoint's
/// state to a cluster's next runtime, so that ending the request needs no lock.
#[derive(Debug)]
pub struct ActiveRequest(Arc<AtomicUsize>);

impl ActiveRequest {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::AcqRel);
        ActiveRequest(Arc::clone(active))
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a load-balancing decision may hash on.
#[derive(Debug, Clone, Copy)]
pub struct HashInput<'a> {
    pub headers: &'a http::HeaderMap,
    pub query: Option<&'a str>,
    pub source_ip: IpAddr,
    /// The value of the cookie generated for a request without the cluster's hash cookie
    /// ([`generate_cookie`]).
    pub generated_cookie: Option<&'a str>,
    /// The endpoint the request's stateful session names, chosen before any balancing when
    /// the cluster holds it and it may take the request ([`session_endpoint`]).
    pub session_endpoint: Option<SocketAddr>,
}

impl Upstream {
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

    /// The runtime state of `cluster`, for a request's decisions ([`ClusterState`]).
    pub fn state(&self, cluster: &Cluster) -> ClusterState {
        ClusterState(self.runtime(cluster))
    }

    /// Admits a request to `cluster` under its limits: `http2MaxRequests` caps concurrent
    /// requests; `maxConnections` bounds requests in flight (one per HTTP/1.1 connection), the
    /// others wait, at most `http1MaxPendingRequests` of them.
    pub async fn admit(&self, cluster: &Cluster) -> Result<Admission, UpstreamError> {
        let runtime = self.runtime(cluster);
        let active = runtime.active_requests.fetch_add(1, Ordering::AcqRel);
        let slots = runtime.connection_slots.clone();
        let mut admission = Admission {
            state: ClusterState(runtime),
            _slot: None,
        };
        if cluster.limits.max_requests.is_some_and(|max| active >= max) {
            return Err(UpstreamError::Overflow(cluster.name.clone()));
        }
        let Some(slots) = slots else {
            return Ok(admission);
        };
        if let Ok(slot) = Arc::clone(&slots).try_acquire_owned() {
            admission._slot = Some(slot);
            return Ok(admission);
        }
        let pending = &admission.state.0.pending;
        let waiting = pending.fetch_add(1, Ordering::AcqRel);
        // Envoy's default for an unset http1MaxPendingRequests is 1024 (2^32-1 in Istio);
        // unset here means no bound beyond memory.
        if cluster
            .limits
            .max_pending_requests
            .is_some_and(|max| waiting >= max)
        {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(UpstreamError::Overflow(cluster.name.clone()));
        }
        let slot = slots.acquire_owned().await;
        pending.fetch_sub(1, Ordering::AcqRel);
        match slot {
            Ok(slot) => {
                admission._slot = Some(slot);
                Ok(admission)
            }
            Err(_) => Err(UpstreamError::Overflow(cluster.name.clone())),
        }
    }

    /// Takes a place in the cluster's retry budget, or `None` when `maxRetries` is reached.
    pub fn retry_permit(&self, cluster: &Cluster) -> Option<RetryPermit> {
        self.state(cluster).retry_permit(cluster)
    }

    /// [`ClusterState::choose_endpoint`], for one decision about `cluster`.
    pub fn choose_endpoint<'c>(
        &self,
        cluster: &'c Cluster,
        hash: &HashInput<'_>,
        exclude: &[SocketAddr],
    ) -> Result<&'c Endpoint, UpstreamError> {
        self.state(cluster).choose_endpoint(cluster, hash, exclude)
    }

    /// [`ClusterState::record_outcome`], for one outcome at `cluster`.
    pub fn record_outcome(&self, cluster: &Cluster, endpoint: SocketAddr, outcome: Outcome) {
        self.state(cluster)
            .record_outcome(cluster, endpoint, outcome);
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
                        active_requests: state.active.load(Ordering::Acquire),
                        consecutive_5xx: state.consecutive_5xx,
                        consecutive_gateway_errors: state.consecutive_gateway,
                        consecutive_local_origin_failures: state.consecutive_local_origin,
                        ejected: ejected_for.is_some(),
                        ejection_remaining_ms: ejected_for
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        ejections: state.ejections,
                        warming_since: state.warming_since,
                    },
                )
            })
            .collect()
    }

    /// Starts the slow-start clocks of the endpoints that `config` adds to its clusters and
    /// stops those of the endpoints it removes ([`slow_start::track`]); endpoints it keeps
    /// keep warming from when they joined.
    pub(super) fn track_warm_up(&self, config: &crate::model::WaypointConfig) {
        let now = Instant::now();
        for cluster in config.clusters.values() {
            let runtime = if cluster.slow_start.is_some() {
                Some(self.runtime(cluster))
            } else {
                lock(&self.inner.clusters).get(&cluster.name).cloned()
            };
            if let Some(runtime) = runtime {
                let mut states = lock(&runtime.endpoints);
                slow_start::track(&mut states, cluster, now);
                states.warm_from = cluster.slow_start.map(|slow| {
                    states
                        .values()
                        .filter_map(|s| s.warming_since)
                        .max()
                        .map_or(now, |latest| latest + slow.window)
                });
            }
        }
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
}

impl ClusterState {
    /// Takes a place among the cluster's retries in flight, or `None` when they are at the
    /// limit: the DestinationRule's `retryBudget` when set (Envoy's `RetryBudgetImpl` then
    /// ignores `maxRetries`), with the cluster's admitted requests (pending ones included) as
    /// its active requests; else `maxRetries`.
    pub fn retry_permit(&self, cluster: &Cluster) -> Option<RetryPermit> {
        let active = self.0.active_retries.fetch_add(1, Ordering::AcqRel);
        let permit = RetryPermit {
            runtime: Arc::clone(&self.0),
        };
        let limit = match &cluster.limits.retry_budget {
            Some(budget) => {
                Some(budget.max_retries(self.0.active_requests.load(Ordering::Acquire)))
            }
            None => cluster.limits.max_retries,
        };
        if limit.is_some_and(|max| active >= max) {
            drop(permit);
            return None;
        }
        Some(permit)
    }

    /// Chooses an endpoint of `cluster` (whose state this is): in one locality priority
    /// ([`locality::priority_level`]) and, when localities are weighed, one locality
    /// ([`locality::weighted_locality`]), healthy and not ejected (all healthy ones of that priority below
    /// `minHealthPercent`, as Envoy's panic mode does; none, `NoHealthyUpstream`, when every
    /// one is ejected and there is no such threshold), then by the
    /// cluster's load balancer. `exclude` holds endpoints already tried by earlier attempts,
    /// avoided when others remain. While nothing of the moment narrows the pool, the choice
    /// reads the cluster's [`BalancingPlan`] and costs the same whatever the number of
    /// endpoints; when ejections, priorities, weighed localities or a retry narrow it, the
    /// choice reads pools built once per configuration and per change of the ejected set, at
    /// the same cost (a retry draws again from its pool, a few times, while it falls on a tried
    /// endpoint); only while endpoints warm up, or when a retry's draws all fell on tried
    /// endpoints, are the candidates walked in the cluster's order (see `choice.rs`). A cluster
    /// of one endpoint (a workload's own, built for each request to it) needs no plan at all.
    pub fn choose_endpoint<'c>(
        &self,
        cluster: &'c Cluster,
        hash: &HashInput<'_>,
        exclude: &[SocketAddr],
    ) -> Result<&'c Endpoint, UpstreamError> {
        let tried = Tried {
            endpoints: exclude,
            priorities: &[],
        };
        choose(
            &lock(&self.0.endpoints),
            &self.0.next,
            cluster,
            hash,
            &tried,
        )
    }

    /// [`Self::choose_endpoint`] for an attempt after those in `tried`, and the chosen
    /// endpoint's request counted in flight while the returned guard lives: one lock for both.
    pub fn choose_and_track<'c>(
        &self,
        cluster: &'c Cluster,
        hash: &HashInput<'_>,
        tried: &Tried<'_>,
    ) -> Result<(&'c Endpoint, ActiveRequest), UpstreamError> {
        let mut states = lock(&self.0.endpoints);
        let endpoint = choose(&states, &self.0.next, cluster, hash, tried)?;
        let active = ActiveRequest::new(&states.entry(endpoint.address).or_default().active);
        Ok((endpoint, active))
    }

    /// Records an attempt's outcome for outlier detection, as Envoy's detector counts it
    /// (`source/common/upstream/outlier_detection_impl.cc`): a response by the status
    /// [`OutlierPolicy::response_as_counted`] makes of it, a 5xx counting toward
    /// `consecutive5xxErrors` and a 502, 503 or 504 toward `consecutiveGatewayErrors`, any
    /// other status resetting both; a local-origin failure as a 503 (a try's timeout as a
    /// 504), or, when the policy splits them, toward its own threshold alone, which any
    /// response resets (the connection was made).
    pub fn record_outcome(&self, cluster: &Cluster, endpoint: SocketAddr, outcome: Outcome) {
        let Some(policy) = &cluster.outlier else {
            return;
        };
        let mut states = lock(&self.0.endpoints);
        let now = Instant::now();
        let total = cluster.endpoints.len();
        let ejected = states
            .values()
            .filter(|s| s.ejected_until.is_some_and(|u| u > now))
            .count();
        let state = states.entry(endpoint).or_default();
        let tripped = match (outcome, policy.local_origin_failures) {
            (Outcome::ConnectFailed | Outcome::Timeout, Some(threshold)) => {
                state.consecutive_local_origin += 1;
                state.consecutive_local_origin >= threshold
            }
            (Outcome::Response(status), split) => {
                if split.is_some() {
                    state.consecutive_local_origin = 0;
                }
                count_status(policy, state, policy.response_as_counted(status))
            }
            (Outcome::ConnectFailed, None) => count_status(policy, state, 503),
            (Outcome::Timeout, None) => count_status(policy, state, 504),
        };
        let already = state.ejected_until.is_some_and(|u| u > now);
        if tripped && !already && ejection_allowed(policy, ejected, total) {
            state.ejections += 1;
            let time = policy.base_ejection_time * state.ejections;
            let until = now + time;
            state.ejected_until = Some(until);
            state.consecutive_5xx = 0;
            state.consecutive_gateway = 0;
            state.consecutive_local_origin = 0;
            states.ejections_end = states.ejections_end.max(Some(until));
            states.ejection_stamp = plan::next_ejection_stamp();
            info!(cluster = %cluster.name, %endpoint, ejection_ms = time.as_millis() as u64, "endpoint ejected");
        }
    }

    /// Counts a request in flight to `endpoint` (least-request balancing) while the guard lives.
    pub fn track_request(&self, endpoint: SocketAddr) -> ActiveRequest {
        ActiveRequest::new(&lock(&self.0.endpoints).entry(endpoint).or_default().active)
    }
}

/// What an attempt at an endpoint came to, for outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status (a TCP connection opened counts as a 200).
    Response(u16),
    /// The connection failed or was reset before a response (Envoy's
    /// `LocalOriginConnectFailed`).
    ConnectFailed,
    /// The try's timeout passed before a response (Envoy's `LocalOriginTimeout`).
    Timeout,
}

/// Counts `status` toward the 5xx and gateway thresholds (Envoy's `putHttpResponseCode`);
/// whether one of them is reached.
fn count_status(policy: &OutlierPolicy, state: &mut EndpointState, status: u16) -> bool {
    if status < 500 {
        state.consecutive_5xx = 0;
        state.consecutive_gateway = 0;
        return false;
    }
    state.consecutive_5xx += 1;
    if matches!(status, 502..=504) {
        state.consecutive_gateway += 1;
    } else {
        state.consecutive_gateway = 0;
    }
    policy
        .consecutive_5xx
        .is_some_and(|n| state.consecutive_5xx >= n)
        || policy
            .consecutive_gateway_errors
            .is_some_and(|n| state.consecutive_gateway >= n)
}

/// What the earlier attempts of a request leave its next one to avoid.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried<'a> {
    /// Endpoints avoided while others remain in the chosen pool (Envoy's `previous_hosts`).
    pub endpoints: &'a [SocketAddr],
    /// Locality priorities left out of the priority load while others have available
    /// endpoints (Envoy's `previous_priorities`).
    pub priorities: &'a [u32],
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

mod choice;
mod cookie;
mod edf;
mod locality;
mod plan;
mod pools;
mod session;
mod slow_start;
mod worker;
use choice::choose;
pub use cookie::{GeneratedCookie, generate_cookie, request_cookie};
pub use plan::{BalancingPlan, BuiltTable};
pub use session::{session_endpoint, session_update};
pub use slow_start::factor as slow_start_factor;
#[cfg(test)]
use {
    crate::model::LoadBalancer,
    locality::{priority_level, weighted_locality},
    plan::hash_key,
};
#[cfg(test)]
mod outcome_tests;
#[cfg(test)]
mod retry_tests;
#[cfg(test)]
mod tests;
