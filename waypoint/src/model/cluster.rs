//! Clusters: the endpoints a destination resolves to and the traffic policy (load balancing,
//! connection limits, outlier detection) the DestinationRule gives them.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderName;
use weft_identity::SpiffeId;

use super::WorkloadInfo;
use crate::upstream::{BalancingPlan, OriginatedTls, ProxyProtocolVersion, TcpTunneling};

/// How the waypoint reaches an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tunnel {
    Hbone,
    Plain,
}

#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `ip:target port`: the address the application listens on.
    pub address: SocketAddr,
    pub identity: Option<SpiffeId>,
    /// `identity`'s `spiffe://` text, written once with the configuration for the records of
    /// the requests sent to the endpoint.
    pub principal: Option<Arc<str>>,
    pub workload: Arc<WorkloadInfo>,
    pub tunnel: Tunnel,
    /// Where the HBONE tunnel goes when not to `address` itself: the waypoint a gateway reaches
    /// a service's VIP through.
    pub tunnel_via: Option<IpAddr>,
    /// The host this endpoint was resolved from, when it stands for one name of its own (a
    /// `DYNAMIC_DNS` request's host): the name TLS origination presents and verifies.
    pub host: Option<Arc<str>>,
    pub healthy: bool,
    pub weight: u32,
    /// Its locality priority relative to this proxy's pod: 0 is the closest; the balancer
    /// sends to a priority only as far as the closer ones lack healthy endpoints.
    pub priority: u32,
    /// Its locality, an index into the cluster's `locality_weights` (0 when there are none).
    pub locality: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(HashCookie),
    SourceIp,
    QueryParameter(String),
}

/// Envoy's cookie hash policy (`RouteAction.HashPolicy.Cookie`), as Istio's
/// `consistentHash.httpCookie` sets it (`ConsistentHashToHashPolicy`): the key is the cookie's
/// value; with a `ttl`, a request without the cookie gets one generated
/// ([`crate::upstream::generate_cookie`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashCookie {
    pub name: String,
    /// Set when the rule sets `ttl`: how a generated cookie's `Set-Cookie` reads.
    pub generated: Option<CookieTemplate>,
}

/// What a generated cookie's `Set-Cookie` carries besides its name and value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieTemplate {
    /// `Max-Age`, the ttl's whole seconds (Envoy reads `ttl().seconds()`); 0: none, a session
    /// cookie.
    pub max_age: i64,
    /// `Path`, when not empty.
    pub path: String,
    /// The rule's `attributes` in order: `name=value`, or `name` alone for an empty value.
    pub attributes: Vec<(String, String)>,
}

impl CookieTemplate {
    /// The `Set-Cookie` of cookie `name` with `value`, as Envoy's `makeSetCookieValue` writes
    /// it (`source/common/http/utility.cc`, called with `httponly` by the router's
    /// `addDownstreamSetCookie`): `name="value"`, `; Max-Age=` unless 0, `; Path=` unless
    /// empty, each attribute, then `; HttpOnly`.
    pub fn set_cookie(&self, name: &str, value: &str) -> String {
        use std::fmt::Write;
        let mut out = format!("{name}=\"{value}\"");
        if self.max_age != 0 {
            let _ = write!(out, "; Max-Age={}", self.max_age);
        }
        if !self.path.is_empty() {
            let _ = write!(out, "; Path={}", self.path);
        }
        for (attribute, value) in &self.attributes {
            if value.is_empty() {
                let _ = write!(out, "; {attribute}");
            } else {
                let _ = write!(out, "; {attribute}={value}");
            }
        }
        out.push_str("; HttpOnly");
        out
    }
}

/// The table a consistent hash looks keys up in, as Envoy builds it for Istio's
/// `consistentHash` (`ApplyRingHashLoadBalancer`): either gives each endpoint a share of the
/// keys in proportion to its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashTable {
    /// Envoy's `RING_HASH`, with at least `minimum_size` points.
    Ring { minimum_size: u64 },
    /// Envoy's `MAGLEV`, a lookup table of `table_size` (a prime) entries.
    Maglev { table_size: u64 },
}

/// Envoy's `RingHashLbConfig` default, which Istio sets when nothing else is given.
pub const DEFAULT_MINIMUM_RING_SIZE: u64 = 1024;
/// Envoy's `MaglevLbConfig` default.
pub const DEFAULT_MAGLEV_TABLE_SIZE: u64 = 65537;
/// Envoy's `RingHashLbConfig` `maximum_ring_size` default; Istio never sets it.
pub const MAXIMUM_RING_SIZE: u64 = 8 * 1024 * 1024;
/// Istio's bound on a Maglev table (`validateLoadBalancer`).
pub const MAGLEV_TABLE_LIMIT: u64 = 5_000_011;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    ConsistentHash(HashKey, HashTable),
}

/// Slow start (DestinationRule `warmup`): Envoy's `slow_start_config`, as Istio sets it for
/// round robin and least request. An endpoint within `window` of joining the cluster has its
/// weight scaled by `max(min_weight, (time in window / window)^(1 / aggression))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowStart {
    pub window: Duration,
    /// The least share of its weight an endpoint gets in the window, as a fraction (0 to 1).
    pub min_weight: f64,
    /// Greater than 0; 1 ramps linearly.
    pub aggression: f64,
}

/// DestinationRule `connectionPool`; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_connections: Option<usize>,
    pub connect_timeout: Option<Duration>,
    pub max_pending_requests: Option<usize>,
    pub max_requests: Option<usize>,
    pub max_requests_per_connection: Option<usize>,
    pub max_retries: Option<usize>,
    /// DestinationRule `retryBudget`: when set, it bounds retries instead of `max_retries`.
    pub retry_budget: Option<RetryBudget>,
    pub idle_timeout: Option<Duration>,
    /// `tcp.tcpKeepalive`, on TCP connections to endpoints outside the mesh.
    pub tcp_keepalive: Option<weft_hbone::Keepalive>,
    /// `http.http2KeepAlive`: (interval, timeout) of PINGs on upstream HTTP/2 connections.
    pub http2_keepalive: Option<(Duration, Duration)>,
}

/// Envoy's circuit-breaker retry budget (`RetryBudgetImpl`,
/// source/common/upstream/resource_manager_impl.h), as Istio's `applyRetryBudget` sets it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    /// Percent of the cluster's active and pending requests, in [0, 100] (checked on load).
    pub percent: f64,
    pub min_retry_concurrency: usize,
}

// `percent` is never NaN (refused on load).
impl Eq for RetryBudget {}

impl RetryBudget {
    /// How many retries may be in flight with `active` requests admitted to the cluster
    /// (pending ones included): Envoy's `max()`, `max(percent / 100 * active,
    /// min_retry_concurrency)`, the product truncated to an integer as Envoy's conversion does.
    pub fn max_retries(&self, active: usize) -> usize {
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let share = (self.percent / 100.0 * active as f64) as usize;
        share.max(self.min_retry_concurrency)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_5xx: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
    /// With `splitExternalLocalOriginErrors`, the consecutive local-origin failures (connect
    /// failure, reset before a response, a try's timeout) that eject, counted apart from the
    /// responses; `None`: they count as 503 (a timeout as 504), as Envoy's do unsplit.
    pub local_origin_failures: Option<u32>,
    /// `outlierDetectionHttpErrorCodes`: the response statuses that count as errors (any
    /// other, a 5xx too, is a success); empty: 5xx. See [`OutlierPolicy::response_as_counted`].
    pub http_error_codes: Vec<u16>,
}

impl OutlierPolicy {
    /// The status a response is counted as: Envoy's router, given Istio's error matcher,
    /// reports a status in the list as itself when 5xx and as 500 otherwise (so only 502, 503
    /// and 504 count as gateway errors), and any other status as 200.
    pub fn response_as_counted(&self, status: u16) -> u16 {
        if self.http_error_codes.is_empty() {
            status
        } else if self.http_error_codes.contains(&status) {
            if status >= 500 { status } else { 500 }
        } else {
            200
        }
    }
}

pub use weft_istio::defaults::{
    DEFAULT_BASE_EJECTION_TIME, DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_OUTLIER_INTERVAL,
};

/// The HTTP version a cluster's requests go upstream in, as Istio sets a cluster's Envoy
/// protocol options (`setUpstreamProtocol`, then the DestinationRule's `useClientProtocol` and
/// `h2UpgradePolicy`). A protocol upgrade (WebSocket) goes over HTTP/1.1 whatever it says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/2 for an HTTP/2 client and on a port declared HTTP2 or GRPC, else HTTP/1.1.
    #[default]
    Default,
    /// HTTP/2 for every client (`h2UpgradePolicy: UPGRADE`, Envoy's `http2_protocol_options`).
    Http2,
    /// The client's own version, even on a port declared HTTP2 or GRPC (`useClientProtocol`,
    /// Envoy's `use_downstream_protocol_config`).
    Client,
}

impl UpstreamProtocol {
    /// Whether a request goes upstream over HTTP/2: `client_http2` when its client spoke
    /// HTTP/2, `port_http2` when the port it arrived for is declared HTTP2 or GRPC.
    pub fn http2(self, client_http2: bool, port_http2: bool) -> bool {
        match self {
            UpstreamProtocol::Default => client_http2 || port_http2,
            UpstreamProtocol::Http2 => true,
            UpstreamProtocol::Client => client_http2,
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    /// How metrics name the service `host` is ([`super::service_of_host`]), made once.
    pub service: Arc<super::ServiceName>,
    pub subset: String,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    /// How many locality priorities its endpoints fall in (1: locality plays no part).
    pub priorities: u32,
    /// The weight of each locality its endpoints are in (`distribute`), for Envoy's
    /// locality-weighted load balancing; empty: localities are not weighed.
    pub locality_weights: Vec<u32>,
    pub load_balancer: LoadBalancer,
    /// Set only with round robin and least request, the balancers it applies to.
    pub slow_start: Option<SlowStart>,
    pub limits: ConnectionLimits,
    pub outlier: Option<OutlierPolicy>,
    pub destination_rule: String,
    /// Names its endpoints are given by (resolved off the request path into `endpoints`).
    pub hostnames: Vec<String>,
    /// TLS originated to endpoints outside the mesh (DestinationRule `tls`); `None`: plain.
    pub tls: Option<OriginatedTls>,
    /// `resolution: DYNAMIC_DNS`: no endpoints; each request's Host is resolved
    /// ([`crate::upstream::dynamic_dns`]) and is the endpoint.
    pub dynamic_dns: bool,
    /// DestinationRule `proxyProtocol`: the PROXY header written first on each new connection
    /// to an endpoint ([`crate::upstream::proxy_protocol`]); `None`: none.
    pub proxy_protocol: Option<ProxyProtocolVersion>,
    /// The HTTP version its requests go to its endpoints in.
    pub upstream_protocol: UpstreamProtocol,
    /// DestinationRule `tunnel`: TCP connections carried to this cluster go through the chosen
    /// endpoint by a CONNECT (or POST) to the target ([`crate::upstream::TcpTunneling`]);
    /// requests of HTTP routes never do. `None`: none.
    pub tcp_tunneling: Option<TcpTunneling>,
    /// What endpoint choice needs that depends only on this configuration ([`Self::plan`]).
    pub plan: OnceLock<BalancingPlan>,
}

impl Cluster {
    /// What endpoint choice needs that depends only on this configuration (the healthy
    /// endpoints, their weights, the hash tables), built once, when first asked for: the
    /// configuration store asks before it puts a configuration in force, so that no request
    /// pays for it.
    pub fn plan(&self) -> &BalancingPlan {
        self.plan.get_or_init(|| {
            BalancingPlan::new(&self.endpoints, &self.load_balancer, &self.locality_weights)
        })
    }
}

/// Addresses of the endpoint names the waypoint resolved, by name.
pub type ResolvedNames = std::collections::HashMap<String, Vec<std::net::IpAddr>>;
