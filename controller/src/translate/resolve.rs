//! How the translators read the index, as Istio reads it: labels and selectors, enrollment, pod
//! addresses and health, service hostnames, VIPs and ports, SPIFFE identities, and which waypoint
//! a service or workload uses. Shared by [`super::agent`], [`super::waypoint`] and the CA's view
//! of which identities run where, so each rule exists once.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_istio::labels::{
    AMBIENT_REDIRECTION, DATAPLANE_MODE, DATAPLANE_MODE_AMBIENT, GATEWAY_NAME,
    INGRESS_USE_WAYPOINT, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR,
};
use weft_istio::ports::HBONE_PORT;
use weft_proto::istio::workload;

use super::{MeshSettings, TranslateError, TranslateProblem};
use crate::index::ConfigIndex;
use crate::model::gateway_api::{RouteNamespaces, RouteNamespacesFrom, WAYPOINT_GATEWAY_CLASS};
use crate::model::networking::WorkloadEntrySpec;
use crate::model::{KubernetesGateway, ResourceKind, WorkloadEntry};

pub use super::workload_name::workload_name;

pub fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

pub fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// Every pair of `selector` is in `labels`.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The object's namespace; `default` when absent, as the API server would fill it.
pub fn namespace_of(meta: &ObjectMeta) -> &str {
    meta.namespace.as_deref().unwrap_or("default")
}

pub fn name_of(meta: &ObjectMeta) -> &str {
    meta.name.as_deref().unwrap_or_default()
}

/// Whether the pod is in the mesh (ambient): its label, else its namespace's.
pub fn enrolled(index: &ConfigIndex, pod: &Pod) -> bool {
    match label(&pod.metadata, DATAPLANE_MODE) {
        Some(DATAPLANE_MODE_AMBIENT) => true,
        Some(_) => false,
        None => {
            index
                .namespace_labels(namespace_of(&pod.metadata))
                .get(DATAPLANE_MODE)
                .map(String::as_str)
                == Some(DATAPLANE_MODE_AMBIENT)
        }
    }
}

/// The uid a pod is known by (Kubernetes' uid, or a stable name-based one in local mode).
pub fn pod_uid(cluster_id: &str, pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_else(|| {
        format!(
            "{cluster_id}//Pod/{}/{}",
            namespace_of(&pod.metadata),
            name_of(&pod.metadata)
        )
    })
}

/// `status.podIPs`, else `status.podIP`; unparsable entries are left out (validation refuses
/// them before they reach the index).
pub fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for ip in status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.ip.parse().ok())
    {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.as_deref().and_then(|ip| ip.parse().ok())
    {
        ips.push(ip);
    }
    ips
}

pub fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Succeeded or Failed: the pod no longer runs and is no endpoint of anything.
pub fn pod_terminated(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether a pod takes traffic: not terminating, and Ready when it reports conditions at all.
///
/// A pod read from the API server always reports conditions once it runs; pods written by hand
/// for local mode usually carry none, and count as ready.
pub fn pod_healthy(pod: &Pod) -> bool {
    if pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    match conditions {
        None => true,
        Some(conditions) if conditions.is_empty() => true,
        Some(conditions) => conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
    }
}

pub fn service_account(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|s| !s.is_empty())
        .unwrap_or("default")
}

/// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
pub fn spiffe_id(settings: &MeshSettings, namespace: &str, service_account: &str) -> String {
    format!(
        "spiffe://{}/ns/{namespace}/sa/{service_account}",
        settings.trust_domain
    )
}

/// A principal as policies compare it: `<trust domain>/ns/<namespace>/sa/<account>`, with any
/// `spiffe://` written before it dropped.
pub fn principal(value: &str) -> String {
    value.strip_prefix("spiffe://").unwrap_or(value).to_string()
}

pub fn service_hostname(settings: &MeshSettings, namespace: &str, name: &str) -> String {
    format!("{name}.{namespace}.svc.{}", settings.domain_suffix)
}

pub fn hostname(service: &Service, settings: &MeshSettings) -> String {
    service_hostname(
        settings,
        namespace_of(&service.metadata),
        name_of(&service.metadata),
    )
}

/// A host as written in a VirtualService or DestinationRule of `namespace`, qualified as Istio
/// does (`ResolveShortnameToFQDN`): a name without dots is a service of that namespace
/// (`reviews` is `reviews.<namespace>.svc.<suffix>`); anything with a dot, `*` and IP addresses
/// are taken as written (`reviews.other` is not expanded).
pub fn qualify_host(settings: &MeshSettings, host: &str, namespace: &str) -> String {
    if host == "*" || host.contains('.') || host.contains(':') {
        return host.to_owned();
    }
    service_hostname(settings, namespace, host)
}

/// A VirtualService or DestinationRule host (possibly `*.suffix` or `*`) covers `hostname`.
pub fn host_covers(pattern: &str, hostname: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => hostname.ends_with(suffix),
        None => pattern.eq_ignore_ascii_case(hostname),
    }
}

/// Cluster IPs, without duplicates (none for headless services).
pub fn service_vips(service: &Service) -> Vec<IpAddr> {
    let Some(spec) = &service.spec else {
        return Vec::new();
    };
    let mut vips: Vec<IpAddr> = Vec::new();
    for ip in spec
        .cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
    {
        if !vips.contains(&ip) {
            vips.push(ip);
        }
    }
    vips
}

pub fn service_ports(service: &Service) -> &[ServicePort] {
    service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or(&[])
}

/// The service selects the pod: same namespace and a non-empty selector it satisfies.
pub fn service_selects(service: &Service, pod: &Pod) -> bool {
    service_selects_labels(service, namespace_of(&pod.metadata), &labels(&pod.metadata))
}

/// The service selects a workload of `namespace` with `workload_labels` (a pod, a
/// WorkloadEntry): same namespace and a non-empty selector they satisfy (istiod's
/// `FilterSelectsNonEmpty`).
pub fn service_selects_labels(
    service: &Service,
    namespace: &str,
    workload_labels: &BTreeMap<String, String>,
) -> bool {
    if namespace_of(&service.metadata) != namespace {
        return false;
    }
    match service.spec.as_ref().and_then(|s| s.selector.as_ref()) {
        Some(selector) if !selector.is_empty() => selects(selector, workload_labels),
        _ => false,
    }
}

/// The target port of `port` on `pod`: numeric, a named container port, or the service port
/// when absent. `None` when the pod does not declare the named port (it then serves no traffic
/// for that service port, as in Kubernetes).
pub fn target_port(port: &ServicePort, pod: &Pod) -> Option<u32> {
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

/// The target port every pod shares: numeric or absent; 0 for a named port, which each pod
/// resolves itself.
pub fn numeric_target_port(port: &ServicePort) -> u32 {
    match &port.target_port {
        None => u32::try_from(port.port).unwrap_or(0),
        Some(IntOrString::Int(n)) => u32::try_from(*n).unwrap_or(0),
        Some(IntOrString::String(s)) => s.parse().unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Waypoints.

/// A waypoint as a namespace and a Gateway name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
}

impl WaypointRef {
    pub fn of(gateway: &KubernetesGateway) -> Self {
        Self {
            namespace: namespace_of(&gateway.metadata).to_owned(),
            name: name_of(&gateway.metadata).to_owned(),
        }
    }
}

impl std::fmt::Display for WaypointRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Which traffic a waypoint takes (`istio.io/waypoint-for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WaypointFor {
    Service,
    Workload,
    All,
    None,
}

impl WaypointFor {
    pub fn of(gateway: &KubernetesGateway) -> Self {
        match label(&gateway.metadata, WAYPOINT_FOR) {
            Some("workload") => Self::Workload,
            Some("all") => Self::All,
            Some("none") => Self::None,
            _ => Self::Service,
        }
    }

    pub fn takes_services(self) -> bool {
        matches!(self, Self::Service | Self::All)
    }

    pub fn takes_workloads(self) -> bool {
        matches!(self, Self::Workload | Self::All)
    }

    /// The label's value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Service => "service",
            Self::Workload => "workload",
            Self::All => "all",
            Self::None => "no",
        }
    }
}

/// Gateways of class `istio-waypoint`, in key order.
pub fn waypoint_gateways(index: &ConfigIndex) -> impl Iterator<Item = &KubernetesGateway> {
    index
        .gateways
        .values()
        .filter(|gw| gw.spec.gateway_class_name == WAYPOINT_GATEWAY_CLASS)
}

pub fn waypoint_gateway<'a>(
    index: &'a ConfigIndex,
    waypoint: &WaypointRef,
) -> Option<&'a KubernetesGateway> {
    index
        .gateways
        .get(&format!("{}/{}", waypoint.namespace, waypoint.name))
        .filter(|gw| gw.spec.gateway_class_name == WAYPOINT_GATEWAY_CLASS)
}

/// The waypoint whose pod or Service this object is, if any: such objects never use a waypoint.
pub fn waypoint_owning(index: &ConfigIndex, meta: &ObjectMeta) -> Option<WaypointRef> {
    let waypoint = WaypointRef {
        namespace: namespace_of(meta).to_owned(),
        name: label(meta, GATEWAY_NAME)?.to_owned(),
    };
    waypoint_gateway(index, &waypoint).map(|_| waypoint)
}

/// Where a waypoint request came from, for the messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestedBy {
    /// The object's own label.
    Object,
    /// Its namespace's label.
    Namespace,
}

/// The waypoint an object asks for: its own `istio.io/use-waypoint` (with
/// `istio.io/use-waypoint-namespace`), else its namespace's; `none` on the object opts out even
/// when the namespace names one. A waypoint's own pods and Service never ask.
pub fn requested_waypoint(
    index: &ConfigIndex,
    meta: &ObjectMeta,
) -> Option<(WaypointRef, RequestedBy)> {
    if label(meta, GATEWAY_NAME).is_some() {
        return None;
    }
    let namespace = namespace_of(meta);
    let from = |labels: &BTreeMap<String, String>| -> Option<Option<WaypointRef>> {
        let name = labels.get(USE_WAYPOINT)?;
        if name.is_empty() || name == "none" {
            return Some(None);
        }
        Some(Some(WaypointRef {
            namespace: labels
                .get(USE_WAYPOINT_NAMESPACE)
                .cloned()
                .unwrap_or_else(|| namespace.to_owned()),
            name: name.clone(),
        }))
    };
    if let Some(choice) = from(&labels(meta)) {
        return choice.map(|w| (w, RequestedBy::Object));
    }
    from(&index.namespace_labels(namespace))
        .flatten()
        .map(|w| (w, RequestedBy::Namespace))
}

/// Which kind of traffic asks for a waypoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Traffic {
    Service,
    Workload,
}

/// The waypoint `meta` asks for, if it exists and takes `traffic`. A problem is returned for an
/// unknown waypoint, and for a waypoint of the wrong kind named by the object itself (a
/// namespace's label applies to services and workloads alike, so a mismatch there is normal).
fn assigned_waypoint(
    index: &ConfigIndex,
    meta: &ObjectMeta,
    traffic: Traffic,
) -> Result<Option<WaypointRef>, (RequestedBy, TranslateProblem)> {
    let Some((waypoint, by)) = requested_waypoint(index, meta) else {
        return Ok(None);
    };
    let Some(gateway) = waypoint_gateway(index, &waypoint) else {
        return Err((
            by,
            TranslateProblem::UnknownWaypoint {
                namespace: waypoint.namespace,
                name: waypoint.name,
            },
        ));
    };
    if !admits(index, gateway, namespace_of(meta)) {
        return Err((
            by,
            TranslateProblem::WaypointNotAllowed {
                namespace: waypoint.namespace,
                name: waypoint.name,
                from: namespace_of(meta).to_owned(),
            },
        ));
    }
    let takes = WaypointFor::of(gateway);
    let accepted = match traffic {
        Traffic::Service => takes.takes_services(),
        Traffic::Workload => takes.takes_workloads(),
    };
    if accepted {
        return Ok(Some(waypoint));
    }
    if by == RequestedBy::Namespace {
        return Ok(None);
    }
    Err((
        by,
        TranslateProblem::WaypointNotFor {
            namespace: waypoint.namespace,
            name: waypoint.name,
            takes: takes.name(),
            asked: match traffic {
                Traffic::Service => "service",
                Traffic::Workload => "workload",
            },
        },
    ))
}

/// Whether a waypoint may be used from `namespace`: its HBONE listener's `allowedRoutes`
/// (`Same`, the Gateway API's default, `All`, or a `Selector` over namespace labels, which
/// include `kubernetes.io/metadata.name` as the API server sets it).
pub fn admits(index: &ConfigIndex, gateway: &KubernetesGateway, namespace: &str) -> bool {
    let own = namespace_of(&gateway.metadata) == namespace;
    let hbone = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| l.protocol.eq_ignore_ascii_case("HBONE"));
    let mut any_listener = false;
    for listener in hbone {
        any_listener = true;
        let namespaces = listener
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        let allowed = route_namespace_allowed(index, namespaces, own, namespace);
        if allowed {
            return true;
        }
    }
    // A waypoint Gateway without an HBONE listener is still one; it admits its own namespace.
    !any_listener && own
}

/// Whether a listener's `allowedRoutes.namespaces` admits routes from `namespace` (`own`: the
/// Gateway's namespace): `Same`, the Gateway API's default, `All`, or a `Selector` over the
/// namespace's labels (with `kubernetes.io/metadata.name`, as the API server sets it).
pub fn route_namespace_allowed(
    index: &ConfigIndex,
    namespaces: Option<&RouteNamespaces>,
    own: bool,
    namespace: &str,
) -> bool {
    match namespaces.and_then(|n| n.from.as_ref()) {
        None | Some(RouteNamespacesFrom::Same) => own,
        Some(RouteNamespacesFrom::All) => true,
        Some(RouteNamespacesFrom::Selector) => {
            let mut labels = index.namespace_labels(namespace);
            labels.insert(
                "kubernetes.io/metadata.name".to_owned(),
                namespace.to_owned(),
            );
            // The Gateway API's selector is Kubernetes' LabelSelector, in its own type.
            namespaces
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|s| serde_json::from_value(s).ok())
                .is_some_and(|s| label_selector_matches(&s, &labels))
        }
    }
}

/// A Kubernetes label selector: every `matchLabels` pair and every expression holds. An empty
/// selector selects everything.
pub fn label_selector_matches(
    selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let pairs = selector
        .match_labels
        .as_ref()
        .is_none_or(|m| selects(m, labels));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

/// The waypoint a Service's traffic goes through (Istio: the service's or its namespace's
/// label, for a waypoint that takes service traffic).
pub fn service_waypoint(index: &ConfigIndex, service: &Service) -> Option<WaypointRef> {
    assigned_waypoint(index, &service.metadata, Traffic::Service)
        .ok()
        .flatten()
}

/// The waypoint a ServiceEntry's hosts go through: its `istio.io/use-waypoint` label or its
/// namespace's, as for a Service (Istio's `fetchWaypointForService` reads both kinds alike).
pub fn service_entry_waypoint(index: &ConfigIndex, meta: &ObjectMeta) -> Option<WaypointRef> {
    assigned_waypoint(index, meta, Traffic::Service)
        .ok()
        .flatten()
}

/// The waypoint a pod's own traffic goes through in Istio's terms: the pod's or its namespace's
/// label, for a waypoint that takes workload traffic, and only for pods in the mesh.
pub fn pod_waypoint(index: &ConfigIndex, pod: &Pod) -> Option<WaypointRef> {
    if !enrolled(index, pod) {
        return None;
    }
    assigned_waypoint(index, &pod.metadata, Traffic::Workload)
        .ok()
        .flatten()
}

/// A WorkloadEntry's labels as istiod reads them (`ConvertClientWorkloadEntry`, a
/// `maps.MergeCopy` of `spec.labels` then the object's labels): the object's own labels win over
/// `spec.labels` of the same key.
pub fn workload_entry_labels(entry: &WorkloadEntry) -> BTreeMap<String, String> {
    let mut merged = entry.spec.labels.clone();
    merged.extend(labels(&entry.metadata));
    merged
}

/// The entry's metadata with [`workload_entry_labels`], for the rules that read an object's
/// labels (waypoints).
pub fn workload_entry_meta(entry: &WorkloadEntry) -> ObjectMeta {
    ObjectMeta {
        labels: Some(workload_entry_labels(entry)),
        ..entry.metadata.clone()
    }
}

/// Whether a WorkloadEntry is reached over HBONE, and whether as a native tunnel (istiod's
/// `setTunnelProtocol`): labelled `networking.istio.io/tunnel: http` (native), or annotated
/// `ambient.istio.io/redirection: enabled`; else plain TCP.
pub fn workload_entry_tunnel(entry: &WorkloadEntry) -> (bool, bool) {
    let native = workload_entry_labels(entry)
        .get(TUNNEL_LABEL.0)
        .map(String::as_str)
        == Some(TUNNEL_LABEL.1);
    let redirected = annotation(&entry.metadata, AMBIENT_REDIRECTION) == Some("enabled");
    (native || redirected, native)
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The label by which a workload outside Kubernetes says it speaks HBONE itself (Istio's
/// `model.TunnelLabel` with `TunnelHTTP`).
const TUNNEL_LABEL: (&str, &str) = ("networking.istio.io/tunnel", "http");

/// A Kubernetes Service port's target on a WorkloadEntry (istiod's
/// `constructServicesFromWorkloadEntry` for a Service): a named `targetPort` is the entry's port
/// of that name, `None` (the port left out) when the entry has none; a numeric one is taken as
/// it is (the entry's ports are not consulted, unlike for a ServiceEntry); an absent one is the
/// service port, as the API server defaults it.
pub fn workload_entry_target_port(port: &ServicePort, entry: &WorkloadEntrySpec) -> Option<u32> {
    match &port.target_port {
        Some(IntOrString::String(name)) => entry.ports.as_ref()?.get(name).copied(),
        _ => Some(numeric_target_port(port)),
    }
}

/// The waypoint a WorkloadEntry's traffic goes through, as istiod's
/// `workloadEntryWorkloadBuilder` finds it (`fetchWaypointForWorkload`): the entry's
/// `istio.io/use-waypoint` label (of `meta`, its labels with `spec.labels` merged in), else its
/// namespace's, for a waypoint that takes workload traffic; `none` opts out. There is no
/// enrollment to check: an entry is in the mesh by being declared.
pub fn workload_entry_waypoint(index: &ConfigIndex, meta: &ObjectMeta) -> Option<WaypointRef> {
    assigned_waypoint(index, meta, Traffic::Workload)
        .ok()
        .flatten()
}

/// The services selecting `pod` that use a waypoint, in key order, with that waypoint.
pub fn backing_waypoints<'a>(
    index: &'a ConfigIndex,
    pod: &Pod,
) -> Vec<(&'a Service, Option<WaypointRef>)> {
    crate::index::in_namespace(&index.services, namespace_of(&pod.metadata))
        .filter(|s| service_selects(s, pod))
        .map(|s| (s, service_waypoint(index, s)))
        .collect()
}

/// The waypoint that must carry all traffic to `pod`: its own (workload) waypoint, else the
/// waypoint of the services it backs. The node agent serving the pod accepts only that
/// waypoint's identity, so a service's waypoint cannot be bypassed by addressing its pods.
pub fn destination_waypoint(index: &ConfigIndex, pod: &Pod) -> Option<WaypointRef> {
    if !enrolled(index, pod) || waypoint_owning(index, &pod.metadata).is_some() {
        return None;
    }
    pod_waypoint(index, pod).or_else(|| {
        backing_waypoints(index, pod)
            .into_iter()
            .find_map(|(_, waypoint)| waypoint)
    })
}

/// Whether gateways reach `service` through its waypoint: `istio.io/ingress-use-waypoint` is
/// `"true"` on the Service, else on its namespace (the Service's own label wins).
pub fn ingress_uses_waypoint(index: &ConfigIndex, service: &Service) -> bool {
    let value = label(&service.metadata, INGRESS_USE_WAYPOINT)
        .map(str::to_owned)
        .or_else(|| {
            index
                .namespace_labels(namespace_of(&service.metadata))
                .get(INGRESS_USE_WAYPOINT)
                .cloned()
        });
    value.as_deref() == Some("true")
}

/// Pods of a waypoint, in key order.
pub fn waypoint_pods<'a>(
    index: &'a ConfigIndex,
    waypoint: &'a WaypointRef,
) -> impl Iterator<Item = &'a Pod> + 'a {
    crate::index::in_namespace(&index.pods, &waypoint.namespace).filter(move |pod| {
        namespace_of(&pod.metadata) == waypoint.namespace
            && label(&pod.metadata, GATEWAY_NAME) == Some(waypoint.name.as_str())
    })
}

/// The waypoint's Service: the one labelled with its gateway name in its namespace.
pub fn waypoint_service<'a>(index: &'a ConfigIndex, waypoint: &WaypointRef) -> Option<&'a Service> {
    crate::index::in_namespace(&index.services, &waypoint.namespace).find(|s| {
        namespace_of(&s.metadata) == waypoint.namespace
            && label(&s.metadata, GATEWAY_NAME) == Some(waypoint.name.as_str())
    })
}

/// How services and workloads point at their waypoint: its Service by hostname (agents pick
/// one of its healthy pods), else the IP of its first pod. A waypoint with neither is named by
/// the hostname its Service will have, which agents cannot resolve yet: traffic that must go
/// through it fails rather than going around it.
pub fn waypoint_address(
    index: &ConfigIndex,
    settings: &MeshSettings,
    waypoint: &WaypointRef,
) -> workload::GatewayAddress {
    use workload::gateway_address::Destination;
    let hostname = |name: &str| workload::NamespacedHostname {
        namespace: waypoint.namespace.clone(),
        hostname: service_hostname(settings, &waypoint.namespace, name),
    };
    let destination = if let Some(service) = waypoint_service(index, waypoint) {
        Destination::Hostname(hostname(name_of(&service.metadata)))
    } else if let Some(ip) =
        waypoint_pods(index, waypoint).find_map(|p| pod_ips(p).first().copied())
    {
        Destination::Address(workload::NetworkAddress {
            network: String::new(),
            address: ip_bytes(ip),
        })
    } else {
        Destination::Hostname(hostname(&waypoint.name))
    };
    workload::GatewayAddress {
        destination: Some(destination),
        hbone_mtls_port: u32::from(HBONE_PORT),
    }
}

/// Whether `pod` is a waypoint's pod (of an existing `istio-waypoint` Gateway).
pub fn is_waypoint_pod(index: &ConfigIndex, pod: &Pod) -> bool {
    waypoint_owning(index, &pod.metadata).is_some()
}

/// Problems with waypoint assignment: unknown waypoints, waypoints of the wrong kind,
/// waypoints without an address, pods behind services with different waypoints.
pub fn assignment_problems(index: &ConfigIndex) -> Vec<TranslateError> {
    let mut problems = Vec::new();
    let mut report = |by: RequestedBy, kind: ResourceKind, meta: &ObjectMeta, problem| {
        let error = match by {
            RequestedBy::Object => TranslateError::new(kind, meta, problem),
            RequestedBy::Namespace => TranslateError {
                kind: ResourceKind::Namespace,
                namespace: String::new(),
                name: namespace_of(meta).to_owned(),
                problem,
            },
        };
        problems.push(error);
    };
    for service in index.services.values() {
        if let Err((by, problem)) = assigned_waypoint(index, &service.metadata, Traffic::Service) {
            report(by, ResourceKind::Service, &service.metadata, problem);
        }
    }
    for pod in index.pods.values().filter(|p| enrolled(index, p)) {
        if let Err((by, problem)) = assigned_waypoint(index, &pod.metadata, Traffic::Workload) {
            report(by, ResourceKind::Pod, &pod.metadata, problem);
        }
        if pod_waypoint(index, pod).is_some() || is_waypoint_pod(index, pod) {
            continue;
        }
        let backing = backing_waypoints(index, pod);
        let distinct: BTreeSet<Option<&WaypointRef>> =
            backing.iter().map(|(_, w)| w.as_ref()).collect();
        // The one `destination_waypoint` picks.
        let first = backing
            .iter()
            .find_map(|(_, w)| w.as_ref())
            .map(ToString::to_string);
        if let Some(waypoint) = first
            && distinct.len() > 1
        {
            let services = backing
                .iter()
                .map(|(s, w)| {
                    format!(
                        "{} uses {}",
                        name_of(&s.metadata),
                        w.as_ref().map_or("none".to_owned(), ToString::to_string)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            report(
                RequestedBy::Object,
                ResourceKind::Pod,
                &pod.metadata,
                TranslateProblem::ConflictingWaypoints { services, waypoint },
            );
        }
    }
    for entry in index.workload_entries.values() {
        let meta = workload_entry_meta(entry);
        if let Err((by, problem)) = assigned_waypoint(index, &meta, Traffic::Workload) {
            report(by, ResourceKind::WorkloadEntry, &entry.metadata, problem);
        }
    }
    for gateway in waypoint_gateways(index) {
        let waypoint = WaypointRef::of(gateway);
        let has_address = waypoint_service(index, &waypoint).is_some()
            || waypoint_pods(index, &waypoint).any(|p| !pod_ips(p).is_empty());
        if !has_address {
            report(
                RequestedBy::Object,
                ResourceKind::KubernetesGateway,
                &gateway.metadata,
                TranslateProblem::WaypointWithoutAddress,
            );
        }
    }
    problems
}
