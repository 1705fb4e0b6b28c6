//! Translation of the index into what proxies consume: pure functions over a [`Snapshot`], no I/O.
//!
//! - Node agents get `istio.workload.Address` resources (a Workload per pod, a Service per
//!   Kubernetes Service) and `istio.security.Authorization` resources (the L4 part of
//!   AuthorizationPolicies plus the policies derived from PeerAuthentication), named as istiod
//!   names them: the workload uid, `namespace/hostname` for services, `namespace/name` for
//!   policies. See [`for_agent`].
//! - Waypoints get one `weft.waypoint.v1.WaypointConfig` each, named `namespace/name`, holding
//!   exactly the services that use the waypoint with their compiled routes, clusters and L7
//!   policies. See [`for_waypoints`] and [`for_waypoint`].
//!
//! A resource that cannot be translated is reported as a [`TranslateError`] naming it and is
//! skipped; translation never panics and never fails as a whole.

mod authorization;
mod waypoint;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_proto::istio::security::Authorization;
use weft_proto::istio::workload::Address;
use weft_proto::waypoint::WaypointConfig;

use crate::index::Snapshot;
use crate::model::gateway_api::WAYPOINT_GATEWAY_CLASS;
use crate::model::{KubernetesGateway, ResourceKind};

pub use authorization::{
    PEER_AUTHENTICATION_POLICY_PREFIX, STATIC_STRICT_POLICY_NAME, policies_selecting,
};
pub use workload::{pod_uid, service_resource_name};

/// Label that enrolls a namespace or pod in the ambient mesh (`ambient`) or opts a pod out
/// (`none`).
pub const DATAPLANE_MODE_LABEL: &str = "istio.io/dataplane-mode";
/// Label naming the waypoint a service, pod or namespace uses (`none` opts out).
pub const USE_WAYPOINT_LABEL: &str = "istio.io/use-waypoint";
/// Label naming the namespace of that waypoint when it is not the object's own.
pub const USE_WAYPOINT_NAMESPACE_LABEL: &str = "istio.io/use-waypoint-namespace";
/// Label on a waypoint saying which traffic it takes: `service` (default), `workload`, `all`,
/// `none`.
pub const WAYPOINT_FOR_LABEL: &str = "istio.io/waypoint-for";
/// Label Kubernetes Gateway controllers put on a gateway's pods and service.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";
/// Port waypoints and node agents accept HBONE on.
pub const HBONE_PORT: u32 = 15008;

/// Mesh-wide settings translation depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranslateConfig {
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
    /// Namespace whose selector-less policies apply mesh-wide.
    pub root_namespace: String,
    /// Cluster name, part of every workload uid (istiod's default is `Kubernetes`).
    pub cluster_id: String,
    /// DNS suffix of service hostnames.
    pub domain_suffix: String,
}

impl Default for TranslateConfig {
    fn default() -> Self {
        Self {
            trust_domain: "cluster.local".to_owned(),
            root_namespace: "istio-system".to_owned(),
            cluster_id: "Kubernetes".to_owned(),
            domain_suffix: "cluster.local".to_owned(),
        }
    }
}

impl TranslateConfig {
    pub fn service_hostname(&self, namespace: &str, name: &str) -> String {
        format!("{name}.{namespace}.svc.{}", self.domain_suffix)
    }

    pub fn spiffe_id(&self, namespace: &str, service_account: &str) -> String {
        format!(
            "spiffe://{}/ns/{namespace}/sa/{service_account}",
            self.trust_domain
        )
    }

    /// Resolves a host as written in a VirtualService or DestinationRule of `namespace`: short
    /// names are relative to that namespace (`reviews` -> `reviews.ns.svc.cluster.local`,
    /// `reviews.other` -> `reviews.other.svc.cluster.local`); others are taken as written.
    pub fn qualify_host(&self, host: &str, namespace: &str) -> String {
        if host.starts_with('*') || host.contains(".svc.") || host.ends_with(".svc") {
            return host.to_owned();
        }
        match host.matches('.').count() {
            0 => self.service_hostname(namespace, host),
            1 => format!("{host}.svc.{}", self.domain_suffix),
            _ => host.to_owned(),
        }
    }
}

/// Why one resource could not be translated (fully).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind} {namespace}/{name}: {problem}")]
pub struct TranslateError {
    pub kind: ResourceKind,
    pub namespace: String,
    pub name: String,
    pub problem: TranslateProblem,
}

impl TranslateError {
    pub(crate) fn new(kind: ResourceKind, meta: &ObjectMeta, problem: TranslateProblem) -> Self {
        Self {
            kind,
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            problem,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranslateProblem {
    #[error("pod has no status.podIP; it gets no workload address")]
    PodWithoutIp,
    #[error("invalid IP address {0:?}")]
    InvalidIp(String),
    #[error("waypoint {namespace}/{name} does not exist (no Gateway of class istio-waypoint)")]
    UnknownWaypoint { namespace: String, name: String },
    #[error("the {action} action is not supported by {proxy}")]
    UnsupportedAction {
        action: &'static str,
        proxy: &'static str,
    },
    #[error("destination host {0:?} is not a known service; its cluster has no endpoints")]
    UnknownHost(String),
    #[error(
        "subset {subset:?} of {host} is not defined by its DestinationRule; the cluster has no endpoints"
    )]
    UnknownSubset { host: String, subset: String },
    #[error("invalid duration {value:?} at {path}")]
    InvalidDuration { path: String, value: String },
    #[error("{path}: {reason}")]
    Unsupported { path: String, reason: String },
}

/// Which node agent a translation is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentScope {
    /// Everything (istiod's behaviour: every agent receives every address and policy).
    All,
    /// An agent on this node: addresses stay complete (any pod may be a destination), while
    /// authorizations are limited to those that can apply to the pods scheduled on the node.
    Node(String),
}

/// What a node agent receives, keyed by resource name.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AgentResources {
    /// `istio.workload.Address` resources, by name (workload uid, or `namespace/hostname`).
    pub addresses: BTreeMap<String, Address>,
    /// `istio.security.Authorization` resources, by name (`namespace/name`).
    pub authorizations: BTreeMap<String, Authorization>,
    pub errors: Vec<TranslateError>,
}

/// Translates a snapshot for node agents.
pub fn for_agent(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    scope: &AgentScope,
) -> AgentResources {
    let mut errors = Vec::new();
    let authorizations = authorization::authorizations(snapshot, config, &mut errors);
    let addresses = workload::addresses(snapshot, config, &mut errors);
    let authorizations = match scope {
        AgentScope::All => authorizations,
        AgentScope::Node(node) => {
            authorization::scope_to_node(snapshot, config, node, &addresses, authorizations)
        }
    };
    AgentResources {
        addresses,
        authorizations,
        errors,
    }
}

/// What the waypoints receive, keyed by resource name `namespace/name`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct WaypointResources {
    pub configs: BTreeMap<String, WaypointConfig>,
    pub errors: Vec<TranslateError>,
}

/// Translates a snapshot for every waypoint in it.
pub fn for_waypoints(snapshot: &Snapshot, config: &TranslateConfig) -> WaypointResources {
    let mut resources = WaypointResources::default();
    for gateway in waypoint_gateways(snapshot) {
        let (namespace, name) = meta_key(&gateway.metadata);
        let compiled = waypoint::compile(snapshot, config, gateway, &mut resources.errors);
        resources
            .configs
            .insert(format!("{namespace}/{name}"), compiled);
    }
    resources
}

/// Translates for one waypoint; `None` when no waypoint Gateway of that name exists.
pub fn for_waypoint(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    namespace: &str,
    name: &str,
) -> Option<(WaypointConfig, Vec<TranslateError>)> {
    let gateway = find_waypoint(snapshot, namespace, name)?;
    let mut errors = Vec::new();
    let compiled = waypoint::compile(snapshot, config, gateway, &mut errors);
    Some((compiled, errors))
}

// ---- helpers shared by the translators ----

fn meta_key(meta: &ObjectMeta) -> (&str, &str) {
    (
        meta.namespace.as_deref().unwrap_or(""),
        meta.name.as_deref().unwrap_or(""),
    )
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

/// `selector` (non-empty) is a subset of `labels`.
fn selector_matches(
    selector: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn waypoint_gateways(snapshot: &Snapshot) -> impl Iterator<Item = &KubernetesGateway> {
    snapshot
        .kubernetes_gateways()
        .filter(|gw| gw.spec.gateway_class_name == WAYPOINT_GATEWAY_CLASS)
}

fn find_waypoint<'a>(
    snapshot: &'a Snapshot,
    namespace: &str,
    name: &str,
) -> Option<&'a KubernetesGateway> {
    waypoint_gateways(snapshot).find(|gw| meta_key(&gw.metadata) == (namespace, name))
}

/// What a waypoint accepts traffic for (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

impl WaypointFor {
    fn of(gateway: &KubernetesGateway) -> Self {
        match label(&gateway.metadata, WAYPOINT_FOR_LABEL) {
            Some("workload") => Self::Workload,
            Some("all") => Self::All,
            Some("none") => Self::None,
            _ => Self::Service,
        }
    }

    fn serves_services(self) -> bool {
        matches!(self, Self::Service | Self::All)
    }

    fn serves_workloads(self) -> bool {
        matches!(self, Self::Workload | Self::All)
    }
}

/// A waypoint named by `istio.io/use-waypoint`, as (namespace, name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct WaypointRef {
    namespace: String,
    name: String,
}

/// The waypoint an object asks for: its own label, else its namespace's. `none` on the object
/// opts out even when the namespace names one.
/// A waypoint's own pods and Service never send their traffic through a waypoint.
fn requested_waypoint(snapshot: &Snapshot, meta: &ObjectMeta) -> Option<WaypointRef> {
    if label(meta, GATEWAY_NAME_LABEL).is_some() {
        return None;
    }
    let own_namespace = meta.namespace.as_deref().unwrap_or("");
    let from = |m: &ObjectMeta| -> Option<Option<WaypointRef>> {
        let name = label(m, USE_WAYPOINT_LABEL)?;
        if name == "none" || name.is_empty() {
            return Some(None);
        }
        let namespace = label(m, USE_WAYPOINT_NAMESPACE_LABEL).unwrap_or(own_namespace);
        Some(Some(WaypointRef {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }))
    };
    if let Some(choice) = from(meta) {
        return choice;
    }
    let namespace = snapshot.namespace(own_namespace)?;
    let mut ns_meta = namespace.metadata.clone();
    // A namespace's use-waypoint-namespace label is relative to the namespace itself.
    ns_meta.namespace = Some(own_namespace.to_owned());
    from(&ns_meta).flatten()
}

/// IPs of a pod: `status.podIPs`, else `status.podIP`.
fn pod_ips(pod: &Pod) -> Result<Vec<IpAddr>, TranslateProblem> {
    let status = pod.status.as_ref();
    let mut texts: Vec<&str> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|ip| ip.ip.as_str()).collect())
        .unwrap_or_default();
    if texts.is_empty()
        && let Some(ip) = status.and_then(|s| s.pod_ip.as_deref())
    {
        texts.push(ip);
    }
    if texts.is_empty() {
        return Err(TranslateProblem::PodWithoutIp);
    }
    let mut seen = BTreeSet::new();
    let mut ips = Vec::new();
    for text in texts {
        let ip: IpAddr = text
            .parse()
            .map_err(|_| TranslateProblem::InvalidIp(text.to_owned()))?;
        if seen.insert(ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Cluster IPs of a service (none for headless services).
fn service_vips(service: &Service) -> Result<Vec<IpAddr>, TranslateProblem> {
    let spec = service.spec.as_ref();
    let mut texts: Vec<&str> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .map(|ips| ips.iter().map(String::as_str).collect())
        .unwrap_or_default();
    if texts.is_empty()
        && let Some(ip) = spec.and_then(|s| s.cluster_ip.as_deref())
    {
        texts.push(ip);
    }
    let mut ips = Vec::new();
    for text in texts {
        if text.is_empty() || text.eq_ignore_ascii_case("none") {
            continue;
        }
        let ip: IpAddr = text
            .parse()
            .map_err(|_| TranslateProblem::InvalidIp(text.to_owned()))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    Ok(ips)
}

fn service_selector(service: &Service) -> BTreeMap<String, String> {
    service
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default()
}

/// The port a pod listens on for a service port's `targetPort`: numeric as is, named resolved
/// against the pod's container ports, absent meaning the service port. `None` when a named port
/// is not declared by the pod (istiod then leaves the port out for that pod).
fn resolve_target_port(port: &k8s_openapi::api::core::v1::ServicePort, pod: &Pod) -> Option<u32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &port.target_port {
        None => u32::try_from(port.port).ok(),
        Some(IntOrString::Int(n)) => u32::try_from(*n).ok(),
        Some(IntOrString::String(name)) => {
            if let Ok(n) = name.parse::<u32>() {
                return Some(n);
            }
            pod.spec.as_ref()?.containers.iter().find_map(|c| {
                c.ports.as_ref()?.iter().find_map(|p| {
                    (p.name.as_deref() == Some(name.as_str()))
                        .then(|| u32::try_from(p.container_port).ok())
                        .flatten()
                })
            })
        }
    }
}

/// Whether a pod is part of the ambient mesh: pod label, else namespace label.
fn pod_enrolled(snapshot: &Snapshot, pod: &Pod) -> bool {
    match label(&pod.metadata, DATAPLANE_MODE_LABEL) {
        Some("none") => false,
        Some("ambient") => true,
        _ => {
            let ns = pod.metadata.namespace.as_deref().unwrap_or("");
            snapshot
                .namespace(ns)
                .and_then(|n| label(&n.metadata, DATAPLANE_MODE_LABEL))
                == Some("ambient")
        }
    }
}

fn pod_service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

fn pod_healthy(pod: &Pod) -> bool {
    // Local-mode pods usually carry no conditions: only an explicit Ready=False marks them down.
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    !conditions.is_some_and(|cs| {
        cs.iter()
            .any(|c| c.type_ == "Ready" && c.status.eq_ignore_ascii_case("false"))
    })
}

fn pod_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests;
