//! Which waypoint a service or workload uses, as Istio decides it: `istio.io/use-waypoint`
//! (with `istio.io/use-waypoint-namespace`) on the object or its namespace, what the waypoint
//! takes (`istio.io/waypoint-for`) and admits (its HBONE listener's `allowedRoutes`), how
//! services and workloads address it, and the problems an assignment can have.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_istio::labels::{
    GATEWAY_NAME, INGRESS_USE_WAYPOINT, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR,
};
use weft_istio::ports::HBONE_PORT;
use weft_proto::istio::workload;

use super::{
    enrolled, ip_bytes, label, labels, name_of, namespace_of, pod_ips, selects, service_hostname,
    service_selects, workload_entry_meta,
};
use crate::index::ConfigIndex;
use crate::model::gateway_api::{RouteNamespaces, RouteNamespacesFrom, WAYPOINT_GATEWAY_CLASS};
use crate::model::{KubernetesGateway, ResourceKind};
use crate::translate::{MeshSettings, TranslateError, TranslateProblem};

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
