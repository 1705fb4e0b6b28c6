//! What node agents receive: `istio.workload.Address` (a Workload per pod, a Service per
//! Kubernetes Service) and `istio.security.Authorization` (the L4 part of AuthorizationPolicy,
//! and PeerAuthentication STRICT as the DENY rule istiod generates).

use std::{collections::BTreeMap, net::IpAddr};

use weft_proto::istio::workload;

pub use super::MeshSettings;
use super::resolve::{
    self, destination_waypoint, enrolled, hostname, ip_bytes, is_waypoint_pod, labels,
    namespace_of, pod_ips, pod_uid, selects, service_selects, service_vips, service_waypoint,
    target_port, waypoint_address,
};
use crate::index::ConfigIndex;
use weft_istio::labels::{CANONICAL_NAME_LABELS, CANONICAL_REVISION_LABELS};

/// Every `istio.workload.Address`, keyed by resource name (uid for workloads,
/// `namespace/hostname` for services).
pub fn addresses(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, workload::Address> {
    let mut out = BTreeMap::new();
    let policies_by_pod = selected_policies(index, settings);
    let slice_endpoints = endpoints_of_selectorless_services(index, settings);
    let entries = service_entries::service_entry_addresses(index, settings, |namespace, labels| {
        policies_selecting(index, settings, namespace, labels)
    });
    let entry_workloads =
        workload_entries::workload_entry_workloads(index, settings, |namespace, labels| {
            policies_selecting(index, settings, namespace, labels)
        });
    for (key, pod) in &index.pods {
        let ips = pod_ips(pod);
        if ips.is_empty() || resolve::pod_terminated(pod) {
            continue;
        }
        let namespace = namespace_of(&pod.metadata).to_owned();
        let pod_labels = labels(&pod.metadata);
        let mut services = BTreeMap::new();
        for service in crate::index::in_namespace(&index.services, &namespace)
            .filter(|s| service_selects(s, pod))
        {
            let ports = resolve::service_ports(service)
                .iter()
                .filter_map(|p| {
                    Some(workload::Port {
                        service_port: u32::try_from(p.port).ok()?,
                        target_port: target_port(p, pod)?,
                    })
                })
                .collect();
            services.insert(
                format!(
                    "{}/{}",
                    namespace_of(&service.metadata),
                    hostname(service, settings)
                ),
                workload::PortList { ports },
            );
        }
        for (service_key, ports) in slice_endpoints
            .pod_services
            .get(key)
            .into_iter()
            .chain(entries.pod_services.get(key))
            .flatten()
        {
            services.insert(service_key.clone(), ports.clone());
        }
        let uid = pod_uid(&settings.cluster_id, pod);
        let workload_name = resolve::workload_name(pod);
        let workload = workload::Workload {
            uid: uid.clone(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            addresses: ips.iter().map(|ip| ip_bytes(*ip)).collect(),
            // As istiod: the pod's `spec.hostname`, by which the agents' DNS proxies answer
            // `<hostname>.<headless service>.<namespace>.svc.<domain>`.
            hostname: pod
                .spec
                .as_ref()
                .and_then(|s| s.hostname.clone())
                .unwrap_or_default(),
            network: String::new(),
            tunnel_protocol: if enrolled(index, pod) || is_waypoint_pod(index, pod) {
                workload::TunnelProtocol::Hbone as i32
            } else {
                workload::TunnelProtocol::None as i32
            },
            trust_domain: settings.trust_domain.clone(),
            service_account: resolve::service_account(pod).to_owned(),
            // Istio puts only a workload waypoint here; the waypoint of the services the pod
            // backs goes here too, so that the pod's agent accepts that traffic only from the
            // waypoint (addressing the pod directly cannot skip it).
            waypoint: destination_waypoint(index, pod)
                .map(|waypoint| waypoint_address(index, settings, &waypoint)),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            // Istio's `CanonicalService(labels, workloadName)`: without a label, the workload.
            canonical_name: CANONICAL_NAME_LABELS
                .iter()
                .find_map(|k| pod_labels.get(*k))
                .cloned()
                .unwrap_or_else(|| workload_name.clone()),
            canonical_revision: CANONICAL_REVISION_LABELS
                .iter()
                .find_map(|k| pod_labels.get(*k))
                .cloned()
                .unwrap_or_else(|| "latest".into()),
            workload_type: workload::WorkloadType::Pod as i32,
            workload_name,
            cluster_id: settings.cluster_id.clone(),
            services,
            authorization_policies: policies_by_pod.get(key).cloned().unwrap_or_default(),
            status: if pod_ready(pod) {
                workload::WorkloadStatus::Healthy as i32
            } else {
                workload::WorkloadStatus::Unhealthy as i32
            },
            locality: locality::pod_locality(index, pod),
            ..Default::default()
        };
        out.insert(
            uid,
            workload::Address {
                r#type: Some(workload::address::Type::Workload(workload)),
            },
        );
    }
    for workload in slice_endpoints
        .workloads
        .into_iter()
        .chain(entries.workloads)
        .chain(entry_workloads)
    {
        out.insert(
            workload.uid.clone(),
            workload::Address {
                r#type: Some(workload::address::Type::Workload(workload)),
            },
        );
    }
    for service in index.services.values() {
        let namespace = namespace_of(&service.metadata).to_owned();
        let host = hostname(service, settings);
        let record = workload::Service {
            name: service.metadata.name.clone().unwrap_or_default(),
            namespace: namespace.clone(),
            hostname: host.clone(),
            addresses: service_vips(service)
                .into_iter()
                .map(|ip| workload::NetworkAddress {
                    network: String::new(),
                    address: ip_bytes(ip),
                })
                .collect(),
            ports: resolve::service_ports(service)
                .iter()
                .filter_map(|p| {
                    Some(workload::Port {
                        service_port: u32::try_from(p.port).ok()?,
                        // Named target ports are resolved per workload.
                        target_port: resolve::numeric_target_port(p),
                    })
                })
                .collect(),
            waypoint: service_waypoint(index, service)
                .map(|waypoint| waypoint_address(index, settings, &waypoint)),
            load_balancing: locality::service_load_balancing(index, service),
            ..Default::default()
        };
        out.insert(
            format!("{namespace}/{host}"),
            workload::Address {
                r#type: Some(workload::address::Type::Service(record)),
            },
        );
    }
    for (key, service) in entries.services {
        out.insert(
            key,
            workload::Address {
                r#type: Some(workload::address::Type::Service(service)),
            },
        );
    }
    out
}

pub use super::resolve::pod_healthy as pod_ready;

/// Label the EndpointSlice controller puts on a slice: the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// What the EndpointSlices of Services *without* a selector add: such a Service's endpoints are
/// whatever its slices list, so they are the only source of them.
#[derive(Debug, Default)]
struct SliceEndpoints {
    /// Pods a slice names (by `targetRef`, at one of the pod's addresses): services to add to
    /// those pods' workloads, keyed by pod key.
    pod_services: BTreeMap<String, Vec<(String, workload::PortList)>>,
    /// Endpoints that are no known pod (a VM, an external address): one workload each, outside
    /// the mesh (no HBONE), healthy as the slice's `ready` condition says.
    workloads: Vec<workload::Workload>,
}

/// For Services with a selector, pods and the selector are the endpoints, as in istiod: the
/// EndpointSlice controller derives those slices from the same pods (their addresses and Ready
/// condition), so reading them again would add nothing the pods do not say.
fn endpoints_of_selectorless_services(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> SliceEndpoints {
    let mut out = SliceEndpoints::default();
    for (slice_key, slice) in &index.endpoint_slices {
        let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
        let Some(service_name) = labels(&slice.metadata).get(SERVICE_NAME_LABEL).cloned() else {
            continue;
        };
        let Some(service) = index.services.get(&format!("{namespace}/{service_name}")) else {
            continue;
        };
        let has_selector = service
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .is_some_and(|selector| !selector.is_empty());
        if has_selector {
            continue;
        }
        let service_key = format!("{namespace}/{}", hostname(service, settings));
        let ports = slice_ports(service, slice);
        let slice_name = slice.metadata.name.as_deref().unwrap_or_default();
        for endpoint in &slice.endpoints {
            let addresses: Vec<IpAddr> = endpoint
                .addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect();
            let Some(first) = addresses.first() else {
                continue;
            };
            let pod_key = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| {
                    let pod_namespace = r.namespace.as_deref().unwrap_or(namespace);
                    Some(format!("{pod_namespace}/{}", r.name.as_deref()?))
                })
                .filter(|key| {
                    index
                        .pods
                        .get(key)
                        .is_some_and(|pod| pod_ips(pod).iter().any(|ip| addresses.contains(ip)))
                });
            if let Some(pod_key) = pod_key {
                out.pod_services
                    .entry(pod_key)
                    .or_default()
                    .push((service_key.clone(), ports.clone()));
                continue;
            }
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                // The API: an unset `ready` is to be read as ready.
                .unwrap_or(true);
            let name = endpoint
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .or_else(|| endpoint.hostname.clone())
                .unwrap_or_else(|| slice_name.to_owned());
            out.workloads.push(workload::Workload {
                uid: format!(
                    "{}/discovery.k8s.io/EndpointSlice/{slice_key}/{first}",
                    settings.cluster_id
                ),
                name: name.clone(),
                namespace: namespace.to_owned(),
                addresses: addresses.iter().map(|ip| ip_bytes(*ip)).collect(),
                tunnel_protocol: workload::TunnelProtocol::None as i32,
                trust_domain: settings.trust_domain.clone(),
                service_account: "default".into(),
                node: endpoint.node_name.clone().unwrap_or_default(),
                canonical_name: service_name.clone(),
                canonical_revision: "latest".into(),
                workload_type: workload::WorkloadType::Pod as i32,
                workload_name: name,
                cluster_id: settings.cluster_id.clone(),
                services: [(service_key.clone(), ports.clone())].into(),
                status: if ready {
                    workload::WorkloadStatus::Healthy as i32
                } else {
                    workload::WorkloadStatus::Unhealthy as i32
                },
                ..Default::default()
            });
        }
    }
    out
}

/// The service's ports mapped to the slice's: the slice lists target ports under the service
/// port's name.
fn slice_ports(
    service: &k8s_openapi::api::core::v1::Service,
    slice: &k8s_openapi::api::discovery::v1::EndpointSlice,
) -> workload::PortList {
    let service_ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .into_iter()
        .flatten();
    let ports = service_ports
        .filter_map(|service_port| {
            let wanted = service_port.name.as_deref().unwrap_or_default();
            let slice_port = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or_default() == wanted)?;
            Some(workload::Port {
                service_port: service_port.port as u32,
                target_port: slice_port.port? as u32,
            })
        })
        .collect();
    workload::PortList { ports }
}

/// For each pod key, the keys (`namespace/name`) of the selector-scoped policies selecting it.
fn selected_policies(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (pod_key, pod) in &index.pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let selected = policies_selecting(index, settings, namespace, &labels(&pod.metadata));
        if !selected.is_empty() {
            out.insert(pod_key.clone(), selected);
        }
    }
    out
}

/// The keys of the selector-scoped policies selecting a workload of `namespace` with `labels`.
fn policies_selecting(
    index: &ConfigIndex,
    settings: &MeshSettings,
    namespace: &str,
    workload_labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    // Only the workload's namespace and the root namespace can select it: their ranges of the
    // map, merged back into key order.
    let policies = &index.authorization_policies;
    let mut candidates: Vec<_> = crate::index::entries_in_namespace(policies, namespace).collect();
    if settings.root_namespace != namespace {
        candidates.extend(crate::index::entries_in_namespace(
            policies,
            &settings.root_namespace,
        ));
        candidates.sort_by(|a, b| a.0.cmp(b.0));
    }
    for (key, policy) in candidates {
        let spec = &policy.spec;
        if !spec.target_refs.is_empty() || spec.target_ref.is_some() {
            continue;
        }
        let policy_namespace = policy.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(selector) = &spec.selector
            && (policy_namespace == namespace || policy_namespace == settings.root_namespace)
            && selects(&selector.match_labels, workload_labels)
        {
            out.push(key.clone());
        }
    }
    for (key, pa) in &index.peer_authentications {
        let pa_namespace = pa.metadata.namespace.as_deref().unwrap_or("default");
        if let Some(selector) = &pa.spec.selector
            && pa_namespace == namespace
            && selects(&selector.match_labels, workload_labels)
        {
            let name = key.split_once('/').map_or(key.as_str(), |(_, n)| n);
            out.push(format!("{pa_namespace}/{}", converted_name(name)));
        }
    }
    out
}

fn converted_name(name: &str) -> String {
    format!(
        "{}{name}",
        weft_policy::l4::PEER_AUTHENTICATION_POLICY_PREFIX
    )
}

mod authorization;
pub mod locality;
mod service_entries;
mod workload_entries;
pub use authorization::{authorization_problems, authorizations};
pub use service_entries::endpoint_uid;
pub use workload_entries::workload_entry_uid;

#[cfg(test)]
mod tests;
