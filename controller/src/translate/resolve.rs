//! How the translators read the index, as Istio reads it: labels and selectors, enrollment, pod
//! addresses and health, service hostnames, VIPs and ports, SPIFFE identities, and which waypoint
//! a service or workload uses ([`waypoints`]). Shared by [`super::agent`], [`super::waypoint`]
//! and the CA's view of which identities run where, so each rule exists once.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_istio::labels::{AMBIENT_REDIRECTION, DATAPLANE_MODE, DATAPLANE_MODE_AMBIENT};

use super::MeshSettings;
use crate::index::ConfigIndex;
use crate::model::WorkloadEntry;
use crate::model::networking::WorkloadEntrySpec;

mod waypoints;

pub use super::workload_name::workload_name;
pub use waypoints::{
    RequestedBy, WaypointFor, WaypointRef, admits, assignment_problems, backing_waypoints,
    destination_waypoint, ingress_uses_waypoint, is_waypoint_pod, label_selector_matches,
    pod_waypoint, requested_waypoint, route_namespace_allowed, service_entry_waypoint,
    service_waypoint, waypoint_address, waypoint_gateway, waypoint_gateways, waypoint_owning,
    waypoint_pods, waypoint_service, workload_entry_waypoint,
};

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
