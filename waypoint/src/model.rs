//! The waypoint's configuration as plain domain types, converted once from the
//! `weft.waypoint.v1.WaypointConfig` resource. Everything that can fail (regexes, header names,
//! IP addresses, SPIFFE IDs, durations, weights) fails here, so a bad push is rejected whole and
//! the request path never meets an invalid value.
//!
//! The types are in this module and its `route` and `cluster` parts; their conversion from
//! protobuf is `from_proto`.

mod cluster;
mod from_proto;
pub use from_proto::LocalInstance;
pub mod gateway;
mod route;
mod sources;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use weft_identity::SpiffeId;
use weft_policy::PolicyError;
use weft_policy::l7::HttpAuthorization;
use weft_policy::route::HttpRoute as RouteMatches;

use crate::authn::{JwtProvider, TargetedAuthentication};
use crate::telemetry::Telemetry;

pub use cluster::{
    Cluster, ConnectionLimits, CookieTemplate, DEFAULT_BASE_EJECTION_TIME,
    DEFAULT_CONSECUTIVE_LOCAL_ORIGIN_FAILURE, DEFAULT_MAGLEV_TABLE_SIZE,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MINIMUM_RING_SIZE, DEFAULT_OUTLIER_INTERVAL, Endpoint,
    HashCookie, HashKey, HashTable, LoadBalancer, MAGLEV_TABLE_LIMIT, MAXIMUM_RING_SIZE,
    OutlierPolicy, ResolvedNames, RetryBudget, SlowStart, Tunnel, UpstreamProtocol,
};
pub use route::{
    AbortKind, CorsPolicy, DEFAULT_RETRIABLE_STATUS_CODES, DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_ON, Fault, HeaderOps, Headers, L4Match, Mirror, Redirect, RedirectPort, RetryOn,
    RetryPolicy, Rewrite, Route, RouteAction, StatefulSession, TcpRoute, WeightedDestination,
};
pub use sources::SourceTable;

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

pub(crate) fn invalid(context: &str, reason: impl Into<String>) -> ConfigError {
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
    /// RequestAuthentications: the JWTs requests may carry.
    pub authentications: Vec<TargetedAuthentication>,
    /// Service by `vip:port`.
    by_vip: HashMap<SocketAddr, (usize, usize)>,
    /// The cluster of each whole service (no subset), by hostname, then port: where a request
    /// that no route matches goes. Looked up per request, so by hash, as Envoy finds a virtual
    /// host, not by a scan that grows with the clusters.
    default_clusters: HashMap<String, Vec<(u16, Arc<Cluster>)>>,
    /// Workloads reached at their own address (a pod addressed directly), by IP.
    direct: HashMap<IpAddr, Arc<DirectWorkload>>,
    /// Workload facts by IP, from the endpoints, to describe request sources.
    workloads: HashMap<IpAddr, Arc<WorkloadInfo>>,
    /// The mesh's other workloads, served apart (`SourceWorkload` resources); shared by every
    /// configuration of a store, which sets it.
    pub sources: SourceTable,
    /// Set in the gateway role: the listeners at the edge and their route tables.
    pub gateway: Option<Arc<gateway::Gateway>>,
    /// Distributed tracing and access logging of the traffic addressed to no service with
    /// settings of its own (see [`WaypointConfig::telemetry_for`]).
    pub telemetry: Telemetry,
}

/// What the waypoint knows of a workload from the endpoints it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub uid: String,
    /// The workload's name as Istio computes it (the Deployment's, the CronJob's, ...): what
    /// the `source_workload` / `destination_workload` labels say; empty when unknown.
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub identity: Option<SpiffeId>,
}

impl WorkloadInfo {
    /// `app` / canonical-name label, else the workload's name, as Istio derives
    /// `canonical_service` (`CanonicalService(labels, workloadName)`).
    pub fn canonical_service(&self) -> Option<&str> {
        weft_istio::labels::CANONICAL_NAME_LABELS
            .iter()
            .find_map(|k| self.labels.get(*k).map(String::as_str))
            .or_else(|| (!self.name.is_empty()).then_some(self.name.as_str()))
    }

    /// `version` / canonical-revision label.
    pub fn canonical_revision(&self) -> Option<&str> {
        weft_istio::labels::CANONICAL_REVISION_LABELS
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
    /// Its one-endpoint clusters by port, built on first use and kept with this configuration
    /// (see [`WorkloadTarget::cluster`]).
    pub clusters: PortClusters,
}

/// How many clusters of ports no service declares a workload keeps: a client picks the port,
/// so what is kept is bounded by the configuration (its workloads, their declared ports and
/// this many more each), never by the requests.
pub const UNDECLARED_PORT_CLUSTERS: usize = 8;

/// A workload's one-endpoint clusters by port, built when a request first needs one and then
/// shared by every request to that port while the configuration is in force (a new
/// configuration has new workloads, so new clusters).
#[derive(Debug, Default)]
pub struct PortClusters(std::sync::RwLock<HashMap<u16, Arc<Cluster>>>);

impl PortClusters {
    /// How many clusters are kept.
    pub fn len(&self) -> usize {
        self.0.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
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
    /// Envoy's original-destination clusters do). Built once per port and configuration
    /// ([`PortClusters`]), so that a request only looks it up; a port no service declares,
    /// past [`UNDECLARED_PORT_CLUSTERS`] of them, has its cluster built for each request.
    pub fn cluster(&self) -> Arc<Cluster> {
        let kept = &self.workload.clusters.0;
        if let Some(cluster) = kept
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.port)
        {
            return Arc::clone(cluster);
        }
        let cluster = Arc::new(self.build_cluster());
        let mut kept = kept.write().unwrap_or_else(|p| p.into_inner());
        if let Some(built) = kept.get(&self.port) {
            // Built meanwhile by a concurrent request: one cluster per port.
            return Arc::clone(built);
        }
        let declared = |port: &u16| self.workload.ports.contains_key(port);
        let room = declared(&self.port)
            || kept.keys().filter(|p| !declared(p)).count() < UNDECLARED_PORT_CLUSTERS;
        if room {
            kept.insert(self.port, Arc::clone(&cluster));
        }
        cluster
    }

    /// A new cluster for this traffic ([`Self::cluster`] keeps it).
    pub(crate) fn build_cluster(&self) -> Cluster {
        let workload = &self.workload;
        let host = workload.address.to_string();
        Cluster {
            name: format!("inbound-pod|{}||{}", self.port, workload.address),
            service: Arc::new(service_of_host(&host)),
            host,
            subset: String::new(),
            port: self.port,
            endpoints: vec![Endpoint {
                address: SocketAddr::new(workload.address, self.port),
                identity: workload.identity.clone(),
                principal: workload.identity.as_ref().map(|i| Arc::from(i.to_string())),
                workload: Arc::clone(&workload.info),
                tunnel: workload.tunnel,
                tunnel_via: None,
                host: None,
                healthy: true,
                weight: 1,
                priority: 0,
                locality: 0,
            }],
            priorities: 1,
            locality_weights: Vec::new(),
            load_balancer: LoadBalancer::RoundRobin,
            slow_start: None,
            limits: ConnectionLimits::default(),
            outlier: None,
            destination_rule: String::new(),
            hostnames: Vec::new(),
            tls: None,
            dynamic_dns: false,
            proxy_protocol: None,
            upstream_protocol: Default::default(),
            tcp_tunneling: None,
            plan: std::sync::OnceLock::new(),
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

    /// The wildcard host of a `DYNAMIC_DNS` service: its connections name their endpoint (the
    /// request's Host, a TLS connection's SNI), which must fall under it.
    pub fn dynamic_dns_wildcard(&self) -> Option<&str> {
        match self {
            Target::Service(t) if t.service.dynamic_dns => Some(&t.service.hostname),
            _ => None,
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

    /// The tracing and access logging of traffic to `target`: the service's own when the
    /// controller gave it some (istiod builds each service's filter chain at a waypoint with
    /// the Telemetry that applies with that service), else the waypoint's. A workload
    /// addressed directly, and a gateway's route tables, take the configuration's.
    pub fn telemetry_for<'c>(&'c self, target: Option<&Target<'c>>) -> &'c Telemetry {
        match target {
            Some(Target::Service(t)) => t.service.telemetry.as_ref().unwrap_or(&self.telemetry),
            _ => &self.telemetry,
        }
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
        self.default_clusters
            .get(hostname)?
            .iter()
            .find(|(p, _)| *p == port)
            .map(|(_, cluster)| cluster)
    }

    /// What is known of the workload at `ip`: from this configuration's endpoints and direct
    /// workloads, else from the mesh's source workloads.
    pub fn workload(&self, ip: IpAddr) -> Option<Arc<WorkloadInfo>> {
        self.workloads
            .get(&ip)
            .cloned()
            .or_else(|| self.sources.get(ip))
    }

    /// Policies that apply to traffic for `target`: those of the whole waypoint and those
    /// attached to its service, or (a workload addressed directly) to any service the workload
    /// backs, so that addressing a pod never escapes its services' policies.
    pub fn policies_for<'a>(
        &'a self,
        target: &Target<'a>,
    ) -> impl Iterator<Item = &'a HttpAuthorization> + 'a {
        let services = target.services();
        self.policies
            .iter()
            .filter(move |p| applies_to(&p.target_services, services))
            .map(|p| &p.policy)
    }

    /// The JWT rules of the RequestAuthentications that apply to traffic for `target`, chosen
    /// as [`Self::policies_for`] chooses policies. Allocates only when there are some.
    pub fn jwt_providers_for<'a>(&'a self, target: &Target<'a>) -> Vec<&'a JwtProvider> {
        if self.authentications.is_empty() {
            return Vec::new();
        }
        let services = target.services();
        self.authentications
            .iter()
            .filter(|a| applies_to(&a.target_services, services))
            .flat_map(|a| a.providers.iter().map(AsRef::as_ref))
            .collect()
    }
}

/// Whether a resource scoped to `target_services` (empty: the whole waypoint) applies to
/// traffic for any of `services`.
fn applies_to(target_services: &[String], services: &[String]) -> bool {
    target_services.is_empty() || target_services.iter().any(|s| services.contains(s))
}

impl<'a> Target<'a> {
    /// The services whose policies apply: the service itself, or those a workload backs.
    fn services(&self) -> &'a [String] {
        match *self {
            Target::Service(t) => std::slice::from_ref(&t.service.hostname),
            Target::Workload(t) => &t.workload.services,
        }
    }
}

/// How request metrics and access logs name a service: its hostname, name and namespace.
/// Made once per configuration and shared by the requests that name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    pub hostname: Arc<str>,
    pub name: Arc<str>,
    pub namespace: Arc<str>,
}

/// The hostname, name and namespace request metrics give a service known by its hostname
/// (`name.namespace.svc.<domain>`; another hostname is its own name, namespace unknown).
pub fn service_of_host(host: &str) -> ServiceName {
    let mut parts = host.splitn(3, '.');
    let hostname: Arc<str> = Arc::from(host);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(name), Some(namespace), Some(rest)) if rest.starts_with("svc.") => ServiceName {
            hostname,
            name: Arc::from(name),
            namespace: Arc::from(namespace),
        },
        _ => ServiceName {
            name: Arc::clone(&hostname),
            hostname,
            namespace: Arc::from(""),
        },
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
    /// The same three names, as the records of its requests share them.
    pub names: Arc<ServiceName>,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Match conditions of `http_routes`, same indexes, in weft-policy's form.
    pub route_matches: Vec<RouteMatches>,
    pub http_routes: Vec<Route>,
    pub tcp_routes: Vec<TcpRoute>,
    /// A wildcard host with `resolution: DYNAMIC_DNS`: only requests for names under it are
    /// routed ([`Service::admits_authority`]).
    pub dynamic_dns: bool,
    /// The tracing and access logging of the traffic addressed to this service when they are
    /// not the waypoint's own (a Telemetry attached to the service); `None`: the waypoint's.
    pub telemetry: Option<Telemetry>,
}

impl Service {
    /// Whether a request for `authority` may be routed: always, but for a `DYNAMIC_DNS`
    /// wildcard, whose requests must name a host under it (Istio gives that virtual host only
    /// the wildcard as domain; anything else finds no route).
    pub fn admits_authority(&self, authority: &str) -> bool {
        !self.dynamic_dns
            || crate::upstream::dynamic_dns::under_wildcard(
                &self.hostname,
                crate::upstream::dynamic_dns::host_and_port(authority).0,
            )
    }
}

/// An L7 policy and the services it is scoped to (empty: all).
#[derive(Debug, Clone)]
pub struct TargetedAuthorization {
    pub policy: HttpAuthorization,
    pub target_services: Vec<String>,
}

#[cfg(test)]
mod tests;
