//! WorkloadEntries as node agents receive them, the way istiod's ambient index hands them to
//! ztunnel (`workloadEntryWorkloadBuilder` in `pilot/pkg/serviceregistry/kube/controller/ambient/
//! workloads.go`): every entry is a `Workload` of its own, backing the Kubernetes Services and
//! the ServiceEntries (`workloadSelector`) of its namespace that select its labels, with the
//! waypoint its `istio.io/use-waypoint` label (or its namespace's) names, its locality, and the
//! workload name of the group it was registered from.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use weft_istio::labels::{CANONICAL_NAME_LABELS, CANONICAL_REVISION_LABELS};
use weft_proto::istio::workload;

use super::super::resolve::{
    self, hostname, labels, name_of, namespace_of, service_selects_labels, waypoint_address,
    workload_entry_waypoint,
};
use super::MeshSettings;
use super::service_entries::{EndpointOwner, endpoint_ports, outside_workload, selects_in};
use crate::translate::workload_name::workload_entry_workload_name;
use crate::{index::ConfigIndex, model::networking::WorkloadEntrySpec};

/// Istio's workload uid for a WorkloadEntry (`generateWorkloadEntryUID`).
pub fn workload_entry_uid(cluster_id: &str, namespace: &str, name: &str) -> String {
    format!("{cluster_id}/networking.istio.io/WorkloadEntry/{namespace}/{name}")
}

/// Every WorkloadEntry's workload. Its labels are the object's with `spec.labels` under them
/// (istiod's `ConvertClientWorkloadEntry`); they decide which services select it, its waypoint,
/// its policies and its canonical service. HBONE when it says it speaks it (the tunnel label,
/// then also `native_tunnel`) or is redirected into the mesh (`ambient.istio.io/redirection:
/// enabled`), else plain TCP (istiod's `setTunnelProtocol`).
pub(super) fn workload_entry_workloads(
    index: &ConfigIndex,
    settings: &MeshSettings,
    policies_for: impl Fn(&str, &BTreeMap<String, String>) -> Vec<String>,
) -> Vec<workload::Workload> {
    let mut out = Vec::new();
    for entry in index.workload_entries.values() {
        let namespace = namespace_of(&entry.metadata);
        let name = name_of(&entry.metadata);
        let meta = resolve::workload_entry_meta(entry);
        let entry_labels = labels(&meta);
        let mut services = BTreeMap::new();
        // Kubernetes Services select WorkloadEntries as they select pods (istiod's
        // `ENABLE_K8S_SERVICE_SELECT_WORKLOAD_ENTRIES`, on by default).
        for service in crate::index::in_namespace(&index.services, namespace)
            .filter(|s| service_selects_labels(s, namespace, &entry_labels))
        {
            services.insert(
                format!("{namespace}/{}", hostname(service, settings)),
                service_ports_on_entry(service, &entry.spec),
            );
        }
        for service_entry in index.service_entries.values() {
            let Some(selector) = &service_entry.spec.workload_selector else {
                continue;
            };
            let service_namespace = namespace_of(&service_entry.metadata);
            if !selects_in(
                &selector.labels,
                service_namespace,
                namespace,
                &entry_labels,
            ) {
                continue;
            }
            let ports = endpoint_ports(&service_entry.spec.ports, &entry.spec);
            for host in &service_entry.spec.hosts {
                services.insert(format!("{service_namespace}/{host}"), ports.clone());
            }
        }
        let annotations = entry.metadata.annotations.clone().unwrap_or_default();
        let workload_name = workload_entry_workload_name(name, &annotations, &entry_labels);
        let (hbone, native_tunnel) = resolve::workload_entry_tunnel(entry);
        let owner = EndpointOwner {
            uid: workload_entry_uid(&settings.cluster_id, namespace, name),
            name,
            namespace,
            // istiod's `CanonicalService(labels, workloadName)`.
            canonical_name: CANONICAL_NAME_LABELS
                .iter()
                .find_map(|k| entry_labels.get(*k))
                .cloned()
                .unwrap_or_else(|| workload_name.clone()),
            canonical_revision: CANONICAL_REVISION_LABELS
                .iter()
                .find_map(|k| entry_labels.get(*k))
                .cloned()
                .unwrap_or_else(|| "latest".into()),
            workload_name,
            tunnel: if hbone {
                workload::TunnelProtocol::Hbone
            } else {
                workload::TunnelProtocol::None
            },
        };
        let policies = policies_for(namespace, &entry_labels);
        let mut workload = outside_workload(settings, &owner, &entry.spec, services, policies);
        workload.native_tunnel = native_tunnel;
        workload.waypoint = workload_entry_waypoint(index, &meta)
            .map(|waypoint| waypoint_address(index, settings, &waypoint));
        out.push(workload);
    }
    out
}

/// A Kubernetes Service's ports on a WorkloadEntry (istiod's `constructServicesFromWorkloadEntry`
/// for a Service, [`resolve::workload_entry_target_port`]).
fn service_ports_on_entry(service: &Service, entry: &WorkloadEntrySpec) -> workload::PortList {
    let ports = resolve::service_ports(service)
        .iter()
        .filter_map(|port| {
            Some(workload::Port {
                service_port: u32::try_from(port.port).ok()?,
                target_port: resolve::workload_entry_target_port(port, entry)?,
            })
        })
        .collect();
    workload::PortList { ports }
}
