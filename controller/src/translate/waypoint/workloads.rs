//! The workloads a waypoint knows besides its clusters' endpoints: pods and WorkloadEntries
//! addressed directly through it, and every pod in the mesh as a possible source (one
//! `SourceWorkload` resource each, shared by every waypoint).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use weft_proto::waypoint as wp;

use super::{Compiler, port_protocol, tcp_service_ports};
use crate::index::ConfigIndex;
use crate::model::WorkloadEntry;
use crate::translate::MeshSettings;
use crate::translate::agent::workload_entry_uid;
use crate::translate::resolve::{self, labels, namespace_of};
use crate::translate::workload_name::workload_entry_workload_name;

impl Compiler<'_, '_> {
    /// The pods whose agent accepts only this waypoint (`resolve::destination_waypoint`, the
    /// rule the agents' resources follow): traffic addressed to one of them directly arrives
    /// here and goes to exactly that pod. Each lists the services it backs through this
    /// waypoint (their policies apply to it) and the declared protocols of its target ports.
    /// `pods` are those (not terminated), found for every waypoint at once.
    pub(super) fn direct_workloads(&self, pods: &[&Pod]) -> Vec<wp::WaypointWorkload> {
        let mut out: Vec<(bool, wp::WaypointWorkload)> = Vec::new();
        for &pod in pods {
            let backing = resolve::backing_waypoints(self.index, pod);
            let services: Vec<String> = backing
                .iter()
                .filter(|(_, waypoint)| waypoint.as_ref() == Some(&self.waypoint))
                .map(|(service, _)| resolve::hostname(service, self.settings))
                .collect();
            let ports = workload_ports(backing.iter().map(|(service, _)| *service), |port| {
                resolve::target_port(port, pod)
            });
            let namespace = namespace_of(&pod.metadata);
            let healthy = resolve::pod_healthy(pod);
            for ip in resolve::pod_ips(pod) {
                out.push((
                    healthy,
                    wp::WaypointWorkload {
                        address: ip.to_string(),
                        identity: self.pod_identity(pod),
                        labels: labels(&pod.metadata),
                        workload_uid: resolve::pod_uid(&self.settings.cluster_id, pod),
                        workload_name: resolve::workload_name(pod),
                        // Only pods in the mesh have a destination waypoint: always HBONE.
                        tunnel: wp::EndpointTunnel::Hbone as i32,
                        namespace: namespace.to_owned(),
                        services: services.clone(),
                        ports: ports.clone(),
                    },
                ));
            }
        }
        // One entry per address (an IP reused while the old pod terminates): the ready pod's.
        out.sort_by(|(healthy_a, a), (healthy_b, b)| {
            a.address.cmp(&b.address).then(healthy_b.cmp(healthy_a))
        });
        out.dedup_by(|(_, later), (_, first)| later.address == first.address);
        out.into_iter().map(|(_, w)| w).collect()
    }
}

impl Compiler<'_, '_> {
    /// The WorkloadEntries that use this waypoint (`resolve::workload_entry_waypoint`, as the
    /// agents' resources say): traffic addressed to one of them arrives here and goes to exactly
    /// that entry, in HBONE or plain TCP as the agents would reach it. Each lists the services
    /// selecting it that use this waypoint and the declared protocols of its target ports. An
    /// entry known by name only has no address to be addressed at and is left out.
    pub(super) fn direct_entries(&self, entries: &[&WorkloadEntry]) -> Vec<wp::WaypointWorkload> {
        let mut out = Vec::new();
        for &entry in entries {
            let Some(address) = entry
                .spec
                .address
                .as_deref()
                .and_then(|a| a.parse::<std::net::IpAddr>().ok())
            else {
                continue;
            };
            let namespace = namespace_of(&entry.metadata);
            let entry_labels = resolve::workload_entry_labels(entry);
            let selecting: Vec<&Service> =
                crate::index::in_namespace(&self.index.services, namespace)
                    .filter(|s| resolve::service_selects_labels(s, namespace, &entry_labels))
                    .collect();
            let services = selecting
                .iter()
                .filter(|s| {
                    resolve::service_waypoint(self.index, s).as_ref() == Some(&self.waypoint)
                })
                .map(|s| resolve::hostname(s, self.settings))
                .collect();
            let ports = workload_ports(selecting.iter().copied(), |port| {
                resolve::workload_entry_target_port(port, &entry.spec)
            });
            let (hbone, _) = resolve::workload_entry_tunnel(entry);
            out.push(wp::WaypointWorkload {
                address: address.to_string(),
                identity: self.entry_identity(entry),
                workload_uid: workload_entry_uid(
                    &self.settings.cluster_id,
                    namespace,
                    resolve::name_of(&entry.metadata),
                ),
                workload_name: entry_workload_name(entry, &entry_labels),
                labels: entry_labels,
                tunnel: if hbone {
                    wp::EndpointTunnel::Hbone
                } else {
                    wp::EndpointTunnel::None
                } as i32,
                namespace: namespace.to_owned(),
                services,
                ports,
            });
        }
        out
    }
}

/// A WorkloadEntry's workload name, as the agents get it.
pub(super) fn entry_workload_name(
    entry: &WorkloadEntry,
    entry_labels: &BTreeMap<String, String>,
) -> String {
    workload_entry_workload_name(
        resolve::name_of(&entry.metadata),
        &entry.metadata.annotations.clone().unwrap_or_default(),
        entry_labels,
    )
}

/// Every pod in the mesh (enrolled, not terminated, not a waypoint), by address: what a
/// waypoint knows of a request's source (`sourceLabels` matches, the source labels of its
/// metrics). Served as resources of their own rather than inside each `WaypointConfig`, so a
/// pod added or removed anywhere sends each waypoint that pod, not its whole configuration.
/// An address two pods claim (reused while one terminates) describes the first in key order.
pub fn source_workloads(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, wp::SourceWorkload> {
    let mut out = BTreeMap::new();
    for pod in index.pods.values().filter(|pod| {
        resolve::enrolled(index, pod)
            && !resolve::pod_terminated(pod)
            && !resolve::is_waypoint_pod(index, pod)
    }) {
        for ip in resolve::pod_ips(pod) {
            let address = ip.to_string();
            out.entry(address.clone())
                .or_insert_with(|| wp::SourceWorkload {
                    address,
                    identity: resolve::spiffe_id(
                        settings,
                        namespace_of(&pod.metadata),
                        resolve::service_account(pod),
                    ),
                    labels: labels(&pod.metadata),
                    workload_uid: resolve::pod_uid(&settings.cluster_id, pod),
                    workload_name: resolve::workload_name(pod),
                });
        }
    }
    out
}

/// The target ports of a workload behind `services`, each with the protocol the first service
/// (in the order given) declaring it says it carries, in port order; `target` maps a service
/// port to the workload's, if it has one.
fn workload_ports<'s>(
    services: impl Iterator<Item = &'s Service>,
    target: impl Fn(&ServicePort) -> Option<u32>,
) -> Vec<wp::WorkloadPort> {
    let mut ports: Vec<wp::WorkloadPort> = Vec::new();
    for service in services {
        for port in tcp_service_ports(service) {
            let Some(target) = target(port).filter(|p| u16::try_from(*p).is_ok_and(|p| p > 0))
            else {
                continue;
            };
            if !ports.iter().any(|p| p.port == target) {
                ports.push(wp::WorkloadPort {
                    port: target,
                    protocol: port_protocol(port) as i32,
                });
            }
        }
    }
    ports.sort_by_key(|p| p.port);
    ports
}
