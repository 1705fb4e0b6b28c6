//! The waypoint's configuration as plain domain types, converted once from the
//! `weft.waypoint.v1.WaypointConfig` resource. Everything that can fail (regexes, header names,
//! IP addresses, SPIFFE IDs, durations, weights) fails here, so a bad push is rejected whole and
//! the request path never meets an invalid value.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use weft_identity::SpiffeId;
use weft_policy::l7::{Condition, HttpAuthorization, HttpRule, Operation, PathPattern, Source};
use weft_policy::route::{HttpMatch, HttpRoute as RouteMatches, IstioStringMatch, KeyMatch};
use weft_policy::{PolicyAction, PolicyError, StringMatch, WildcardMatch};
use weft_proto::waypoint as proto;

/// Why a `WaypointConfig` was rejected; the message becomes the NACK's detail.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{context}: {source}")]
    Policy {
        context: String,
        #[source]
        source: PolicyError,
    },
    #[error("{context}: invalid header name {name:?}")]
    HeaderName { context: String, name: String },
    #[error("{context}: invalid value for header {name:?}")]
    HeaderValue { context: String, name: String },
    #[error("{context}: invalid IP address or range {value:?}")]
    Address { context: String, value: String },
    #[error("{context}: invalid port {value}")]
    Port { context: String, value: u32 },
    #[error("{context}: invalid SPIFFE identity {value:?}")]
    Identity { context: String, value: String },
    #[error("{context}: invalid duration")]
    Duration { context: String },
    #[error("{context}: invalid status code {value}")]
    Status { context: String, value: i64 },
    #[error("{context}: {reason}")]
    Invalid { context: String, reason: String },
    #[error("cluster {name:?} is defined twice")]
    DuplicateCluster { name: String },
}

fn invalid(context: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        context: context.to_owned(),
        reason: reason.into(),
    }
}

/// The whole configuration of one waypoint, indexed for the request path.
#[derive(Debug, Default)]
pub struct WaypointConfig {
    pub name: String,
    pub namespace: String,
    pub services: Vec<Arc<Service>>,
    pub clusters: HashMap<String, Arc<Cluster>>,
    pub policies: Vec<TargetedAuthorization>,
    /// Service by `vip:port`.
    by_vip: HashMap<SocketAddr, (usize, usize)>,
    /// Workloads reached at their own address (a pod addressed directly), by IP.
    direct: HashMap<IpAddr, Arc<DirectWorkload>>,
    /// Workload facts by IP, from the endpoints, to describe request sources.
    workloads: HashMap<IpAddr, Arc<WorkloadInfo>>,
}

/// What the waypoint knows of a workload from the endpoints it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub identity: Option<SpiffeId>,
}

impl WorkloadInfo {
    /// `app` / canonical-name label, as Istio derives `canonical_service`.
    pub fn canonical_service(&self) -> Option<&str> {
        [
            "service.istio.io/canonical-name",
            "app.kubernetes.io/name",
            "app",
        ]
        .iter()
        .find_map(|k| self.labels.get(*k).map(String::as_str))
    }

    /// `version` / canonical-revision label.
    pub fn canonical_revision(&self) -> Option<&str> {
        [
            "service.istio.io/canonical-revision",
            "app.kubernetes.io/version",
            "version",
        ]
        .iter()
        .find_map(|k| self.labels.get(*k).map(String::as_str))
    }
}

/// The service (and port) a tunnel's `:authority` names in one configuration.
#[derive(Debug, Clone, Copy)]
pub struct ServiceTarget<'a> {
    pub service: &'a Service,
    pub port: &'a ServicePort,
}

/// A workload the waypoint carries traffic for when it is addressed directly.
#[derive(Debug)]
pub struct DirectWorkload {
    pub address: IpAddr,
    pub namespace: String,
    pub identity: Option<SpiffeId>,
    pub tunnel: Tunnel,
    pub info: Arc<WorkloadInfo>,
    /// Hostnames of the services it backs through this waypoint: their policies apply.
    pub services: Vec<String>,
    /// Declared protocols by port; other ports are sniffed.
    pub ports: HashMap<u16, Protocol>,
}

/// A workload addressed directly, on one port: what the request goes to, exactly.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadTarget<'a> {
    pub workload: &'a Arc<DirectWorkload>,
    pub port: u16,
    pub protocol: Protocol,
}

impl WorkloadTarget<'_> {
    /// The one-endpoint cluster that carries this traffic, `inbound-pod|<port>||<ip>`: no load
    /// balancing, no traffic policy, and no health filtering (the client chose this pod, as
    /// Envoy's original-destination clusters do).
    pub fn cluster(&self) -> Cluster {
        let workload = &self.workload;
        Cluster {
            name: format!("inbound-pod|{}||{}", self.port, workload.address),
            host: workload.address.to_string(),
            subset: String::new(),
            port: self.port,
            endpoints: vec![Endpoint {
                address: SocketAddr::new(workload.address, self.port),
                identity: workload.identity.clone(),
                workload: Arc::clone(&workload.info),
                tunnel: workload.tunnel,
                healthy: true,
                weight: 1,
            }],
            load_balancer: LoadBalancer::RoundRobin,
            limits: ConnectionLimits::default(),
            outlier: None,
            destination_rule: String::new(),
        }
    }
}

/// What a tunnel's `:authority` names in one configuration: a service (VIP and port), routed
/// by its routes, or a workload's own address, carried to exactly that address. Borrowed from
/// the configuration: looked up for every request, never kept across configurations.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Service(ServiceTarget<'a>),
    Workload(WorkloadTarget<'a>),
}

impl Target<'_> {
    /// The port the traffic arrived for: the service port, or the workload's own port.
    pub fn port(&self) -> u16 {
        match self {
            Target::Service(t) => t.port.port,
            Target::Workload(t) => t.port,
        }
    }

    pub fn protocol(&self) -> Protocol {
        match self {
            Target::Service(t) => t.port.protocol,
            Target::Workload(t) => t.protocol,
        }
    }

    /// Namespace of the destination: the service's or the workload's.
    pub fn namespace(&self) -> &str {
        match self {
            Target::Service(t) => &t.service.namespace,
            Target::Workload(t) => &t.workload.namespace,
        }
    }
}

impl WaypointConfig {
    /// What a CONNECT `:authority` names: a service VIP and port, else the address of a
    /// workload this waypoint serves directly (any port).
    pub fn target_for(&self, authority: SocketAddr) -> Option<Target<'_>> {
        if let Some((service_index, port_index)) = self.by_vip.get(&authority) {
            let service = self.services.get(*service_index)?;
            let port = service.ports.get(*port_index)?;
            return Some(Target::Service(ServiceTarget { service, port }));
        }
        let workload = self.direct.get(&authority.ip())?;
        Some(Target::Workload(WorkloadTarget {
            protocol: workload
                .ports
                .get(&authority.port())
                .copied()
                .unwrap_or(Protocol::Unspecified),
            workload,
            port: authority.port(),
        }))
    }

    /// Whether `name` is a cluster of this configuration: a defined one, or the one-endpoint
    /// cluster (`inbound-pod|<port>||<ip>`) of a workload it serves directly.
    pub fn has_cluster(&self, name: &str) -> bool {
        if self.clusters.contains_key(name) {
            return true;
        }
        let Some(rest) = name.strip_prefix("inbound-pod|") else {
            return false;
        };
        let mut parts = rest.split('|');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(port), Some(""), Some(ip), None) if port.parse::<u16>().is_ok() => ip
                .parse::<IpAddr>()
                .is_ok_and(|ip| self.direct.contains_key(&ip)),
            _ => false,
        }
    }

    /// Workloads served at their own address, for the admin page.
    pub fn direct_workloads(&self) -> impl Iterator<Item = &Arc<DirectWorkload>> {
        self.direct.values()
    }

    pub fn cluster(&self, name: &str) -> Option<&Arc<Cluster>> {
        self.clusters.get(name)
    }

    /// The cluster serving the whole service on `port` (no subset): the default route.
    pub fn default_cluster(&self, hostname: &str, port: u16) -> Option<&Arc<Cluster>> {
        self.clusters
            .values()
            .find(|c| c.host == hostname && c.subset.is_empty() && c.port == port)
    }

    pub fn workload(&self, ip: IpAddr) -> Option<&Arc<WorkloadInfo>> {
        self.workloads.get(&ip)
    }

    /// Policies that apply to traffic for `target`: those of the whole waypoint and those
    /// attached to its service, or (a workload addressed directly) to any service the workload
    /// backs, so that addressing a pod never escapes its services' policies.
    pub fn policies_for<'a>(
        &'a self,
        target: &Target<'a>,
    ) -> impl Iterator<Item = &'a HttpAuthorization> + 'a {
        let services: &'a [String] = match *target {
            Target::Service(t) => std::slice::from_ref(&t.service.hostname),
            Target::Workload(t) => &t.workload.services,
        };
        self.policies
            .iter()
            .filter(move |p| {
                p.target_services.is_empty()
                    || p.target_services.iter().any(|s| services.contains(s))
            })
            .map(|p| &p.policy)
    }
}

/// Application protocol of a service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Sniffed: HTTP/1.1 or HTTP/2 prior knowledge.
    Unspecified,
    Http,
    Http2,
    Grpc,
    Tcp,
    Tls,
}

impl Protocol {
    /// Whether the port carries opaque bytes, forwarded at L4.
    pub fn is_opaque(self) -> bool {
        matches!(self, Protocol::Tcp | Protocol::Tls)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub name: String,
    pub protocol: Protocol,
    pub target_port: u16,
}

#[derive(Debug)]
pub struct Service {
    pub hostname: String,
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Match conditions of `http_routes`, same indexes, in weft-policy's form.
    pub route_matches: Vec<RouteMatches>,
    pub http_routes: Vec<Route>,
    pub tcp_routes: Vec<TcpRoute>,
}

/// What an HTTP route does with the requests it matches.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse { status: StatusCode, body: Bytes },
}

#[derive(Debug, Clone)]
pub struct Route {
    pub name: Option<String>,
    pub action: RouteAction,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<CorsPolicy>,
    pub headers: Headers,
    pub virtual_service: String,
}

#[derive(Debug, Clone)]
pub struct WeightedDestination {
    pub cluster: String,
    pub host: String,
    pub weight: u32,
    pub headers: Headers,
}

#[derive(Debug, Clone, Default)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// Header manipulations, applied set, add, remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    /// No port: the scheme's default.
    SchemeDefault,
    FromRequest,
    Explicit(u16),
}

#[derive(Debug, Clone)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: RedirectPort,
    pub status: StatusCode,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub uri_regex: Option<(regex::Regex, String)>,
    pub authority: Option<HeaderValue>,
}

/// Envoy retry conditions (`x-envoy-retry-on` / `x-envoy-retry-grpc-on` names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: Vec<u16>,
    /// gRPC status names: `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`.
    pub grpc: Vec<u32>,
}

/// Istio's default `retryOn` when a route sets none.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Istio's default number of retries.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Status codes `retriable-status-codes` covers by default (istiod sets 503).
pub const DEFAULT_RETRIABLE_STATUS_CODES: &[u16] = &[503];

impl RetryOn {
    pub fn parse(text: &str, context: &str) -> Result<Self, ConfigError> {
        let mut on = RetryOn::default();
        let mut wants_status_codes = false;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => wants_status_codes = true,
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "unavailable" => on.grpc.push(14),
                // Envoy conditions that need no action here: headers we do not set.
                "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
                code => {
                    let status: u16 = code
                        .parse()
                        .ok()
                        .filter(|c| (100..600).contains(c))
                        .ok_or_else(|| invalid(context, format!("unknown retryOn {code:?}")))?;
                    on.retriable_status_codes.push(status);
                }
            }
        }
        if wants_status_codes && on.retriable_status_codes.is_empty() {
            on.retriable_status_codes = DEFAULT_RETRIABLE_STATUS_CODES.to_vec();
        }
        Ok(on)
    }

    /// Whether a response status asks for another attempt.
    pub fn status_retriable(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.retriable_status_codes.contains(&status)
            || grpc_status.is_some_and(|g| self.grpc.contains(&g))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
}

impl RetryPolicy {
    pub fn mesh_default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout: None,
            on: RetryOn::parse(DEFAULT_RETRY_ON, "default retry policy").unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AbortKind {
    Http(StatusCode),
    /// gRPC status code.
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(AbortKind, f64)>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    pub host: String,
    pub percent: f64,
}

#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
}

impl CorsPolicy {
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|m| m.matches(origin))
    }
}

#[derive(Debug, Clone)]
pub struct TcpRoute {
    pub matches: Vec<L4Match>,
    pub destinations: Vec<(String, u32)>,
    pub virtual_service: String,
}

#[derive(Debug, Clone, Default)]
pub struct L4Match {
    pub destination_subnets: Vec<IpNet>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

impl L4Match {
    pub fn matches(
        &self,
        destination: SocketAddr,
        source_labels: Option<&BTreeMap<String, String>>,
        source_namespace: Option<&str>,
    ) -> bool {
        (self.destination_subnets.is_empty()
            || self
                .destination_subnets
                .iter()
                .any(|n| n.contains(&destination.ip())))
            && self.port.is_none_or(|p| p == destination.port())
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| source_namespace == Some(ns))
            && (self.source_labels.is_empty()
                || source_labels
                    .is_some_and(|l| self.source_labels.iter().all(|(k, v)| l.get(k) == Some(v))))
    }
}

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
    pub workload: Arc<WorkloadInfo>,
    pub tunnel: Tunnel,
    pub healthy: bool,
    pub weight: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    Header(HeaderName),
    Cookie(String),
    SourceIp,
    QueryParameter(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadBalancer {
    RoundRobin,
    LeastRequest,
    Random,
    ConsistentHash(HashKey),
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
    pub idle_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierPolicy {
    pub consecutive_gateway_errors: Option<u32>,
    pub consecutive_5xx: Option<u32>,
    pub interval: Duration,
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    pub min_health_percent: u32,
}

/// Envoy's defaults for unset outlier detection durations.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 10;

#[derive(Debug)]
pub struct Cluster {
    pub name: String,
    pub host: String,
    pub subset: String,
    pub port: u16,
    pub endpoints: Vec<Endpoint>,
    pub load_balancer: LoadBalancer,
    pub limits: ConnectionLimits,
    pub outlier: Option<OutlierPolicy>,
    pub destination_rule: String,
}

/// An L7 policy and the services it is scoped to (empty: all).
#[derive(Debug, Clone)]
pub struct TargetedAuthorization {
    pub policy: HttpAuthorization,
    pub target_services: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Conversion from protobuf.

fn duration(d: &prost_types::Duration, context: &str) -> Result<Duration, ConfigError> {
    let error = || ConfigError::Duration {
        context: context.to_owned(),
    };
    let secs = u64::try_from(d.seconds).map_err(|_| error())?;
    let nanos = u32::try_from(d.nanos).map_err(|_| error())?;
    if nanos >= 1_000_000_000 {
        return Err(error());
    }
    Ok(Duration::new(secs, nanos))
}

fn optional_duration(
    d: Option<&prost_types::Duration>,
    context: &str,
) -> Result<Option<Duration>, ConfigError> {
    d.map(|d| duration(d, context)).transpose()
}

fn port(value: u32, context: &str) -> Result<u16, ConfigError> {
    u16::try_from(value).map_err(|_| ConfigError::Port {
        context: context.to_owned(),
        value,
    })
}

fn nonzero_port(value: u32, context: &str) -> Result<Option<u16>, ConfigError> {
    Ok(if value == 0 {
        None
    } else {
        Some(port(value, context)?)
    })
}

fn ip(value: &str, context: &str) -> Result<IpAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::Address {
        context: context.to_owned(),
        value: value.to_owned(),
    })
}

fn cidr(value: &str, context: &str) -> Result<IpNet, ConfigError> {
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| ConfigError::Address {
            context: context.to_owned(),
            value: value.to_owned(),
        })
}

fn header_name(name: &str, context: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
        ConfigError::HeaderName {
            context: context.to_owned(),
            name: name.to_owned(),
        }
    })
}

fn header_value(name: &str, value: &str, context: &str) -> Result<HeaderValue, ConfigError> {
    HeaderValue::from_str(value).map_err(|_| ConfigError::HeaderValue {
        context: context.to_owned(),
        name: name.to_owned(),
    })
}

fn policy_error(context: &str) -> impl FnOnce(PolicyError) -> ConfigError + '_ {
    move |source| ConfigError::Policy {
        context: context.to_owned(),
        source,
    }
}

fn istio_match(m: &proto::StringMatch) -> IstioStringMatch<'_> {
    use proto::string_match::MatchType;
    match &m.match_type {
        None => IstioStringMatch::Unset,
        Some(MatchType::Exact(s)) => IstioStringMatch::Exact(s),
        Some(MatchType::Prefix(s)) => IstioStringMatch::Prefix(s),
        Some(MatchType::Regex(s)) => IstioStringMatch::Regex(s),
    }
}

/// A `uri`/`method`/... match: an unset match type matches anything.
fn field_match(
    m: Option<&proto::StringMatch>,
    context: &str,
) -> Result<Option<StringMatch>, ConfigError> {
    use proto::string_match::MatchType;
    let Some(m) = m else { return Ok(None) };
    Ok(match &m.match_type {
        None => None,
        Some(MatchType::Exact(s)) => Some(StringMatch::Exact(s.clone())),
        Some(MatchType::Prefix(s)) => Some(StringMatch::Prefix(s.clone())),
        Some(MatchType::Regex(r)) => Some(StringMatch::regex(r).map_err(policy_error(context))?),
    })
}

fn key_matches(
    map: &BTreeMap<String, proto::StringMatch>,
    query: bool,
    context: &str,
) -> Result<Vec<KeyMatch>, ConfigError> {
    map.iter()
        .map(|(name, m)| {
            let value = istio_match(m)
                .to_value_match()
                .map_err(policy_error(context))?;
            Ok(if query {
                KeyMatch::query(name, value)
            } else {
                KeyMatch::header(name, value)
            })
        })
        .collect()
}

fn http_match(m: &proto::HttpMatchRequest, context: &str) -> Result<HttpMatch, ConfigError> {
    Ok(HttpMatch {
        name: (!m.name.is_empty()).then(|| m.name.clone()),
        uri: field_match(m.uri.as_ref(), context)?,
        scheme: field_match(m.scheme.as_ref(), context)?,
        method: field_match(m.method.as_ref(), context)?,
        authority: field_match(m.authority.as_ref(), context)?,
        headers: key_matches(&m.headers, false, context)?,
        without_headers: key_matches(&m.without_headers, false, context)?,
        query_params: key_matches(&m.query_params, true, context)?,
        port: nonzero_port(m.port, context)?,
        source_labels: m.source_labels.clone(),
        source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
        ignore_uri_case: m.ignore_uri_case,
    })
}

fn header_ops(
    ops: Option<&proto::HeaderOperations>,
    context: &str,
) -> Result<HeaderOps, ConfigError> {
    let Some(ops) = ops else {
        return Ok(HeaderOps::default());
    };
    let pairs = |map: &BTreeMap<String, String>| -> Result<Vec<_>, ConfigError> {
        map.iter()
            .map(|(n, v)| Ok((header_name(n, context)?, header_value(n, v, context)?)))
            .collect()
    };
    Ok(HeaderOps {
        set: pairs(&ops.set)?,
        add: pairs(&ops.add)?,
        remove: ops
            .remove
            .iter()
            .map(|n| header_name(n, context))
            .collect::<Result<_, _>>()?,
    })
}

fn headers(h: Option<&proto::Headers>, context: &str) -> Result<Headers, ConfigError> {
    Ok(match h {
        None => Headers::default(),
        Some(h) => Headers {
            request: header_ops(h.request.as_ref(), context)?,
            response: header_ops(h.response.as_ref(), context)?,
        },
    })
}

fn status(value: i64, context: &str) -> Result<StatusCode, ConfigError> {
    u16::try_from(value)
        .ok()
        .and_then(|v| StatusCode::from_u16(v).ok())
        .ok_or_else(|| ConfigError::Status {
            context: context.to_owned(),
            value,
        })
}

fn percent(p: Option<&proto::Percent>, context: &str) -> Result<f64, ConfigError> {
    let value = p.map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&value) {
        return Err(invalid(
            context,
            format!("percentage {value} outside 0..100"),
        ));
    }
    Ok(value)
}

/// gRPC status code of a name such as `UNAVAILABLE`, or a number.
fn grpc_code(name: &str) -> Option<u32> {
    name.parse::<u32>().ok().filter(|c| *c <= 16).or_else(|| {
        weft_policy::route::GRPC_STATUS_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .and_then(|p| u32::try_from(p).ok())
    })
}

fn fault(f: &proto::HttpFaultInjection, context: &str) -> Result<Fault, ConfigError> {
    use proto::http_fault_injection::abort::ErrorType;
    let delay = f
        .delay
        .as_ref()
        .map(|d| {
            let fixed = d
                .fixed_delay
                .as_ref()
                .ok_or_else(|| invalid(context, "fault delay without fixedDelay"))?;
            Ok::<_, ConfigError>((
                duration(fixed, context)?,
                percent(d.percentage.as_ref(), context)?,
            ))
        })
        .transpose()?;
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let kind = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => AbortKind::Http(status(i64::from(*s), context)?),
                Some(ErrorType::GrpcStatus(name)) => AbortKind::Grpc(
                    grpc_code(name)
                        .ok_or_else(|| invalid(context, format!("unknown gRPC status {name:?}")))?,
                ),
                None => return Err(invalid(context, "fault abort without a status")),
            };
            Ok((kind, percent(a.percentage.as_ref(), context)?))
        })
        .transpose()?;
    Ok(Fault { delay, abort })
}

/// A destination's cluster name and host. The cluster need not be defined: as in Envoy, a
/// route may name a cluster that does not exist (istiod does so for an undefined subset, host
/// or port), and what is routed there is answered 503 `NC` at request time.
fn destination_cluster(
    d: Option<&proto::Destination>,
    context: &str,
) -> Result<(String, String), ConfigError> {
    let d = d.ok_or_else(|| invalid(context, "destination missing"))?;
    if d.cluster.is_empty() {
        return Err(invalid(context, "destination without a cluster name"));
    }
    Ok((d.cluster.clone(), d.host.clone()))
}

/// Turns Istio's `\1` capture references into the regex crate's `${1}`.
fn regex_replacement(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
    }
    out
}

fn route(r: &proto::HttpRoute, context: &str) -> Result<(RouteMatches, Route), ConfigError> {
    let matches = r
        .r#match
        .iter()
        .map(|m| http_match(m, context))
        .collect::<Result<Vec<_>, _>>()?;
    let set_count = usize::from(!r.route.is_empty())
        + usize::from(r.redirect.is_some())
        + usize::from(r.direct_response.is_some());
    if set_count != 1 {
        return Err(invalid(
            context,
            "exactly one of route, redirect and directResponse must be set",
        ));
    }
    let action = if let Some(redirect) = &r.redirect {
        use proto::http_redirect::{RedirectPort as P, RedirectPortSelection};
        let port = match redirect.redirect_port {
            None => RedirectPort::SchemeDefault,
            Some(P::Port(p)) => RedirectPort::Explicit(port(p, context)?),
            Some(P::DerivePort(d)) => {
                if d == RedirectPortSelection::FromRequestPort as i32 {
                    RedirectPort::FromRequest
                } else {
                    RedirectPort::SchemeDefault
                }
            }
        };
        let code = if redirect.redirect_code == 0 {
            StatusCode::MOVED_PERMANENTLY
        } else {
            status(i64::from(redirect.redirect_code), context)?
        };
        if !code.is_redirection() {
            return Err(invalid(context, format!("redirect code {code} is not 3xx")));
        }
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        RouteAction::Redirect(Redirect {
            uri: nonempty(&redirect.uri),
            authority: nonempty(&redirect.authority),
            scheme: nonempty(&redirect.scheme),
            port,
            status: code,
        })
    } else if let Some(direct) = &r.direct_response {
        use proto::http_body::Specifier;
        let body = match direct.body.as_ref().and_then(|b| b.specifier.as_ref()) {
            None => Bytes::new(),
            Some(Specifier::String(s)) => Bytes::from(s.clone()),
            Some(Specifier::Bytes(b)) => Bytes::from(b.clone()),
        };
        RouteAction::DirectResponse {
            status: status(i64::from(direct.status), context)?,
            body,
        }
    } else {
        let destinations = r
            .route
            .iter()
            .map(|d| {
                let (cluster, host) = destination_cluster(d.destination.as_ref(), context)?;
                Ok(WeightedDestination {
                    cluster,
                    host,
                    weight: u32::try_from(d.weight)
                        .map_err(|_| invalid(context, "negative weight"))?,
                    headers: headers(d.headers.as_ref(), context)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        if destinations.len() > 1 && destinations.iter().all(|d| d.weight == 0) {
            return Err(invalid(context, "all destination weights are zero"));
        }
        RouteAction::Forward(destinations)
    };
    let rewrite = r
        .rewrite
        .as_ref()
        .map(|rw| {
            if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
                return Err(invalid(
                    context,
                    "rewrite.uri and uriRegexRewrite are exclusive",
                ));
            }
            let uri_regex = rw
                .uri_regex_rewrite
                .as_ref()
                .map(|rr| {
                    regex::Regex::new(&rr.r#match)
                        .map(|re| (re, regex_replacement(&rr.rewrite)))
                        .map_err(|e| invalid(context, format!("uriRegexRewrite: {e}")))
                })
                .transpose()?;
            Ok(Rewrite {
                uri: (!rw.uri.is_empty()).then(|| rw.uri.clone()),
                uri_regex,
                authority: (!rw.authority.is_empty())
                    .then(|| header_value(":authority", &rw.authority, context))
                    .transpose()?,
            })
        })
        .transpose()?;
    let retries = match &r.retries {
        None => RetryPolicy::mesh_default(),
        Some(retry) => RetryPolicy {
            attempts: u32::try_from(retry.attempts)
                .map_err(|_| invalid(context, "negative retry attempts"))?,
            per_try_timeout: optional_duration(retry.per_try_timeout.as_ref(), context)?,
            on: if retry.retry_on.is_empty() {
                RetryOn::parse(DEFAULT_RETRY_ON, context)?
            } else {
                RetryOn::parse(&retry.retry_on, context)?
            },
        },
    };
    let mirrors = r
        .mirrors
        .iter()
        .map(|m| {
            let (cluster, host) = destination_cluster(m.destination.as_ref(), context)?;
            Ok(Mirror {
                cluster,
                host,
                percent: percent(m.percentage.as_ref(), context)?,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let cors = r
        .cors_policy
        .as_ref()
        .map(|c| {
            Ok::<_, ConfigError>(CorsPolicy {
                allow_origins: c
                    .allow_origins
                    .iter()
                    .filter_map(|m| field_match(Some(m), context).transpose())
                    .collect::<Result<_, _>>()?,
                allow_methods: c.allow_methods.join(","),
                allow_headers: c.allow_headers.join(","),
                expose_headers: c.expose_headers.join(","),
                max_age: optional_duration(c.max_age.as_ref(), context)?,
                allow_credentials: c.allow_credentials.unwrap_or(false),
            })
        })
        .transpose()?;
    Ok((
        RouteMatches {
            name: (!r.name.is_empty()).then(|| r.name.clone()),
            matches,
        },
        Route {
            name: (!r.name.is_empty()).then(|| r.name.clone()),
            action,
            rewrite,
            timeout: optional_duration(r.timeout.as_ref(), context)?.filter(|d| !d.is_zero()),
            retries,
            fault: r.fault.as_ref().map(|f| fault(f, context)).transpose()?,
            mirrors,
            cors,
            headers: headers(r.headers.as_ref(), context)?,
            virtual_service: r.virtual_service.clone(),
        },
    ))
}

fn load_balancer(
    lb: Option<&proto::LoadBalancerSettings>,
    context: &str,
) -> Result<LoadBalancer, ConfigError> {
    use proto::load_balancer_settings::consistent_hash_lb::HashKey as H;
    use proto::load_balancer_settings::{LbPolicy, SimpleLb};
    Ok(match lb.and_then(|l| l.lb_policy.as_ref()) {
        None => LoadBalancer::LeastRequest,
        Some(LbPolicy::Simple(simple)) => match SimpleLb::try_from(*simple) {
            Ok(SimpleLb::RoundRobin) => LoadBalancer::RoundRobin,
            Ok(SimpleLb::Random) => LoadBalancer::Random,
            Ok(SimpleLb::Unspecified | SimpleLb::LeastConn | SimpleLb::LeastRequest) => {
                LoadBalancer::LeastRequest
            }
            Ok(SimpleLb::Passthrough) | Err(_) => {
                return Err(invalid(
                    context,
                    format!("unsupported load balancer {simple}"),
                ));
            }
        },
        Some(LbPolicy::ConsistentHash(hash)) => {
            LoadBalancer::ConsistentHash(match &hash.hash_key {
                Some(H::HttpHeaderName(name)) => HashKey::Header(header_name(name, context)?),
                Some(H::HttpCookie(cookie)) => HashKey::Cookie(cookie.name.clone()),
                Some(H::UseSourceIp(true)) => HashKey::SourceIp,
                Some(H::HttpQueryParameterName(name)) => HashKey::QueryParameter(name.clone()),
                Some(H::UseSourceIp(false)) | None => {
                    return Err(invalid(context, "consistentHash without a hash key"));
                }
            })
        }
    })
}

fn limit(value: i32) -> Option<usize> {
    usize::try_from(value).ok().filter(|v| *v > 0)
}

fn limits(
    p: Option<&proto::ConnectionPoolSettings>,
    context: &str,
) -> Result<ConnectionLimits, ConfigError> {
    let Some(p) = p else {
        return Ok(ConnectionLimits::default());
    };
    let mut limits = ConnectionLimits::default();
    if let Some(tcp) = &p.tcp {
        limits.max_connections = limit(tcp.max_connections);
        limits.connect_timeout = optional_duration(tcp.connect_timeout.as_ref(), context)?;
    }
    if let Some(http) = &p.http {
        limits.max_pending_requests = limit(http.http1_max_pending_requests);
        limits.max_requests = limit(http.http2_max_requests);
        limits.max_requests_per_connection = limit(http.max_requests_per_connection);
        limits.max_retries = limit(http.max_retries);
        limits.idle_timeout = optional_duration(http.idle_timeout.as_ref(), context)?;
    }
    Ok(limits)
}

fn outlier(
    o: Option<&proto::OutlierDetection>,
    context: &str,
) -> Result<Option<OutlierPolicy>, ConfigError> {
    let Some(o) = o else { return Ok(None) };
    if o.consecutive_5xx_errors.is_none() && o.consecutive_gateway_errors.is_none() {
        return Ok(None);
    }
    let percent = |v: i32, name: &str| {
        u32::try_from(v)
            .ok()
            .filter(|v| *v <= 100)
            .ok_or_else(|| invalid(context, format!("{name} {v} outside 0..100")))
    };
    Ok(Some(OutlierPolicy {
        consecutive_gateway_errors: o.consecutive_gateway_errors.filter(|v| *v > 0),
        consecutive_5xx: o.consecutive_5xx_errors.filter(|v| *v > 0),
        interval: optional_duration(o.interval.as_ref(), context)?
            .unwrap_or(DEFAULT_OUTLIER_INTERVAL),
        base_ejection_time: optional_duration(o.base_ejection_time.as_ref(), context)?
            .unwrap_or(DEFAULT_BASE_EJECTION_TIME),
        max_ejection_percent: if o.max_ejection_percent == 0 {
            DEFAULT_MAX_EJECTION_PERCENT
        } else {
            percent(o.max_ejection_percent, "maxEjectionPercent")?
        },
        min_health_percent: percent(o.min_health_percent, "minHealthPercent")?,
    }))
}

fn endpoint(
    e: &proto::Endpoint,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
    context: &str,
) -> Result<Endpoint, ConfigError> {
    let address = ip(&e.address, context)?;
    let identity = if e.identity.is_empty() {
        None
    } else {
        Some(
            parse_spiffe(&e.identity).ok_or_else(|| ConfigError::Identity {
                context: context.to_owned(),
                value: e.identity.clone(),
            })?,
        )
    };
    let tunnel = match proto::EndpointTunnel::try_from(e.tunnel) {
        Ok(proto::EndpointTunnel::Hbone) => Tunnel::Hbone,
        Ok(proto::EndpointTunnel::None) => Tunnel::Plain,
        Err(_) => return Err(invalid(context, format!("unknown tunnel {}", e.tunnel))),
    };
    if tunnel == Tunnel::Hbone && identity.is_none() {
        return Err(invalid(
            context,
            format!("HBONE endpoint {} has no identity", e.address),
        ));
    }
    let workload = Arc::clone(workloads.entry(address).or_insert_with(|| {
        Arc::new(WorkloadInfo {
            uid: e.workload_uid.clone(),
            labels: e.labels.clone(),
            identity: identity.clone(),
        })
    }));
    Ok(Endpoint {
        address: SocketAddr::new(address, port(e.port, context)?),
        identity,
        workload,
        tunnel,
        healthy: e.healthy,
        weight: e.weight.max(1),
    })
}

/// A request source the controller described; an endpoint at the same address already said it.
fn source_workload(
    w: &proto::SourceWorkload,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
) -> Result<(), ConfigError> {
    let context = format!("source workload {}", w.workload_uid);
    let address = ip(&w.address, &context)?;
    let identity = if w.identity.is_empty() {
        None
    } else {
        Some(
            parse_spiffe(&w.identity).ok_or_else(|| ConfigError::Identity {
                context: context.clone(),
                value: w.identity.clone(),
            })?,
        )
    };
    workloads.entry(address).or_insert_with(|| {
        Arc::new(WorkloadInfo {
            uid: w.workload_uid.clone(),
            labels: w.labels.clone(),
            identity,
        })
    });
    Ok(())
}

/// A workload served at its own address; its facts also describe it as a request source.
fn direct_workload(
    w: &proto::WaypointWorkload,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
) -> Result<DirectWorkload, ConfigError> {
    let context = format!("workload {}", w.workload_uid);
    let context = context.as_str();
    let address = ip(&w.address, context)?;
    let identity = if w.identity.is_empty() {
        None
    } else {
        Some(
            parse_spiffe(&w.identity).ok_or_else(|| ConfigError::Identity {
                context: context.to_owned(),
                value: w.identity.clone(),
            })?,
        )
    };
    let tunnel = match proto::EndpointTunnel::try_from(w.tunnel) {
        Ok(proto::EndpointTunnel::Hbone) => Tunnel::Hbone,
        Ok(proto::EndpointTunnel::None) => Tunnel::Plain,
        Err(_) => return Err(invalid(context, format!("unknown tunnel {}", w.tunnel))),
    };
    if tunnel == Tunnel::Hbone && identity.is_none() {
        return Err(invalid(
            context,
            format!("HBONE workload {} has no identity", w.address),
        ));
    }
    let mut ports = HashMap::with_capacity(w.ports.len());
    for p in &w.ports {
        ports
            .entry(port(p.port, context)?)
            .or_insert(protocol(p.protocol, context)?);
    }
    let info = Arc::clone(workloads.entry(address).or_insert_with(|| {
        Arc::new(WorkloadInfo {
            uid: w.workload_uid.clone(),
            labels: w.labels.clone(),
            identity: identity.clone(),
        })
    }));
    Ok(DirectWorkload {
        address,
        namespace: w.namespace.clone(),
        identity,
        tunnel,
        info,
        services: w.services.clone(),
        ports,
    })
}

/// Parses `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn parse_spiffe(uri: &str) -> Option<SpiffeId> {
    let rest = uri.strip_prefix("spiffe://")?;
    let (trust_domain, path) = rest.split_once('/')?;
    let mut parts = path.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
            SpiffeId::new(trust_domain, ns, sa).ok()
        }
        _ => None,
    }
}

fn cluster(
    c: &proto::Cluster,
    workloads: &mut HashMap<IpAddr, Arc<WorkloadInfo>>,
) -> Result<Cluster, ConfigError> {
    let context = format!("cluster {}", c.name);
    let context = context.as_str();
    if c.name.is_empty() {
        return Err(invalid("cluster", "empty name"));
    }
    Ok(Cluster {
        name: c.name.clone(),
        host: c.host.clone(),
        subset: c.subset.clone(),
        port: port(c.port, context)?,
        endpoints: c
            .endpoints
            .iter()
            .map(|e| endpoint(e, workloads, context))
            .collect::<Result<_, _>>()?,
        load_balancer: load_balancer(c.load_balancer.as_ref(), context)?,
        limits: limits(c.connection_pool.as_ref(), context)?,
        outlier: outlier(c.outlier_detection.as_ref(), context)?,
        destination_rule: c.destination_rule.clone(),
    })
}

fn wildcards(values: &[String]) -> Vec<WildcardMatch> {
    values
        .iter()
        .map(|v| WildcardMatch::parse_istio(v))
        .collect()
}

fn cidrs(values: &[String], context: &str) -> Result<Vec<IpNet>, ConfigError> {
    values.iter().map(|v| cidr(v, context)).collect()
}

fn ports(values: &[u32], context: &str) -> Result<Vec<u16>, ConfigError> {
    values.iter().map(|v| port(*v, context)).collect()
}

fn paths(values: &[String], context: &str) -> Result<Vec<PathPattern>, ConfigError> {
    values
        .iter()
        .map(|v| PathPattern::parse(v).map_err(policy_error(context)))
        .collect()
}

fn authorization(a: &proto::L7Authorization) -> Result<TargetedAuthorization, ConfigError> {
    let context = format!("authorization policy {}/{}", a.namespace, a.name);
    let context = context.as_str();
    let action = match proto::l7_authorization::Action::try_from(a.action) {
        Ok(proto::l7_authorization::Action::Allow) => PolicyAction::Allow,
        Ok(proto::l7_authorization::Action::Deny) => PolicyAction::Deny,
        Ok(proto::l7_authorization::Action::Audit) | Err(_) => {
            return Err(invalid(context, format!("unsupported action {}", a.action)));
        }
    };
    let rules = a
        .rules
        .iter()
        .map(|rule| {
            let from = rule
                .from
                .iter()
                .map(|f| {
                    let s = f.source.clone().unwrap_or_default();
                    if !s.request_principals.is_empty() || !s.not_request_principals.is_empty() {
                        return Err(invalid(
                            context,
                            "requestPrincipals (JWT) are not supported",
                        ));
                    }
                    Ok(Source {
                        principals: wildcards(&s.principals),
                        not_principals: wildcards(&s.not_principals),
                        namespaces: wildcards(&s.namespaces),
                        not_namespaces: wildcards(&s.not_namespaces),
                        ip_blocks: cidrs(&s.ip_blocks, context)?,
                        not_ip_blocks: cidrs(&s.not_ip_blocks, context)?,
                        remote_ip_blocks: cidrs(&s.remote_ip_blocks, context)?,
                        not_remote_ip_blocks: cidrs(&s.not_remote_ip_blocks, context)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let to = rule
                .to
                .iter()
                .map(|t| {
                    let o = t.operation.clone().unwrap_or_default();
                    Ok(Operation {
                        hosts: wildcards(&o.hosts),
                        not_hosts: wildcards(&o.not_hosts),
                        ports: ports(&o.ports, context)?,
                        not_ports: ports(&o.not_ports, context)?,
                        methods: wildcards(&o.methods),
                        not_methods: wildcards(&o.not_methods),
                        paths: paths(&o.paths, context)?,
                        not_paths: paths(&o.not_paths, context)?,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let when = rule
                .when
                .iter()
                .map(|c| {
                    Condition::parse(&c.key, &c.values, &c.not_values)
                        .map_err(policy_error(context))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(HttpRule { from, to, when })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(TargetedAuthorization {
        policy: HttpAuthorization {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            action,
            rules,
            dry_run: a.dry_run,
        },
        target_services: a.target_services.clone(),
    })
}

fn protocol(value: i32, context: &str) -> Result<Protocol, ConfigError> {
    Ok(match proto::Protocol::try_from(value) {
        Ok(proto::Protocol::Unspecified) => Protocol::Unspecified,
        Ok(proto::Protocol::Http) => Protocol::Http,
        Ok(proto::Protocol::Http2) => Protocol::Http2,
        Ok(proto::Protocol::Grpc) => Protocol::Grpc,
        Ok(proto::Protocol::Tcp) => Protocol::Tcp,
        Ok(proto::Protocol::Tls) => Protocol::Tls,
        Err(_) => return Err(invalid(context, format!("unknown protocol {value}"))),
    })
}

fn service(s: &proto::WaypointService) -> Result<Service, ConfigError> {
    let context = format!("service {}", s.hostname);
    let context = context.as_str();
    let ports = s
        .ports
        .iter()
        .map(|p| {
            let service_port = port(p.port, context)?;
            Ok(ServicePort {
                port: service_port,
                name: p.name.clone(),
                protocol: protocol(p.protocol, context)?,
                target_port: nonzero_port(p.target_port, context)?.unwrap_or(service_port),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let mut route_matches = Vec::with_capacity(s.http_routes.len());
    let mut http_routes = Vec::with_capacity(s.http_routes.len());
    for (index, r) in s.http_routes.iter().enumerate() {
        let route_context = format!("{context} http route {index} ({})", r.virtual_service);
        let (m, r) = route(r, &route_context)?;
        route_matches.push(m);
        http_routes.push(r);
    }
    let tcp_routes = s
        .tcp_routes
        .iter()
        .map(|t| {
            let matches = t
                .r#match
                .iter()
                .map(|m| {
                    Ok(L4Match {
                        destination_subnets: cidrs(&m.destination_subnets, context)?,
                        port: nonzero_port(m.port, context)?,
                        source_labels: m.source_labels.clone(),
                        source_namespace: (!m.source_namespace.is_empty())
                            .then(|| m.source_namespace.clone()),
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let destinations = t
                .route
                .iter()
                .map(|d| {
                    let (cluster, _) = destination_cluster(d.destination.as_ref(), context)?;
                    Ok((
                        cluster,
                        u32::try_from(d.weight).map_err(|_| invalid(context, "negative weight"))?,
                    ))
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            Ok(TcpRoute {
                matches,
                destinations,
                virtual_service: t.virtual_service.clone(),
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(Service {
        hostname: s.hostname.clone(),
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        vips: s
            .vips
            .iter()
            .map(|v| ip(v, context))
            .collect::<Result<_, _>>()?,
        ports,
        route_matches,
        http_routes,
        tcp_routes,
    })
}

impl TryFrom<proto::WaypointConfig> for WaypointConfig {
    type Error = ConfigError;

    fn try_from(config: proto::WaypointConfig) -> Result<Self, Self::Error> {
        let mut workloads = HashMap::new();
        let mut clusters = HashMap::with_capacity(config.clusters.len());
        for c in &config.clusters {
            let converted = cluster(c, &mut workloads)?;
            if clusters
                .insert(converted.name.clone(), Arc::new(converted))
                .is_some()
            {
                return Err(ConfigError::DuplicateCluster {
                    name: c.name.clone(),
                });
            }
        }
        let mut direct = HashMap::with_capacity(config.workloads.len());
        for w in &config.workloads {
            let converted = direct_workload(w, &mut workloads)?;
            // An address listed twice (a pod's IP reused while the old pod terminates): the
            // first entry, which the controller lists first because it is the ready one.
            direct
                .entry(converted.address)
                .or_insert_with(|| Arc::new(converted));
        }
        for w in &config.source_workloads {
            source_workload(w, &mut workloads)?;
        }
        let services = config
            .services
            .iter()
            .map(|s| service(s).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let mut by_vip = HashMap::new();
        for (service_index, s) in services.iter().enumerate() {
            for (port_index, p) in s.ports.iter().enumerate() {
                for vip in &s.vips {
                    by_vip.insert(SocketAddr::new(*vip, p.port), (service_index, port_index));
                }
            }
        }
        let policies = config
            .authorization_policies
            .iter()
            .map(authorization)
            .collect::<Result<_, _>>()?;
        Ok(WaypointConfig {
            name: config.name,
            namespace: config.namespace,
            services,
            clusters,
            policies,
            by_vip,
            direct,
            workloads,
        })
    }
}

#[cfg(test)]
mod tests;
