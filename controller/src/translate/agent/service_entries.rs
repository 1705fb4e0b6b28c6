//! ServiceEntries as node agents receive them, the way istiod's ambient index hands them to
//! ztunnel: one `istio.workload.Service` per host (named by the ServiceEntry, keyed
//! `namespace/host`, its VIPs `spec.addresses` or else the addresses allocated to it), one `Workload` per endpoint (`resolution: STATIC` or `DNS`, an implicit
//! endpoint per host for `DNS` without endpoints), and, with a `workloadSelector`, the host's
//! ports added to the selected pods' `services` (and to the selected WorkloadEntries', see
//! `workload_entries.rs`): they are then its endpoints, over HBONE when they are in the mesh.
//! `exportTo` is not applied here, as istiod does not apply it to ztunnel's view either: every
//! agent sees every ServiceEntry.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::core::v1::Pod;
use weft_istio::labels::CANONICAL_NAME_LABELS;
use weft_proto::istio::workload;

use super::super::{
    auto_allocate,
    resolve::{
        ip_bytes, labels, name_of, namespace_of, selects, service_entry_waypoint, waypoint_address,
    },
};
use super::MeshSettings;
use super::locality::split_locality as locality;
use crate::{
    index::ConfigIndex,
    model::networking::{ServiceEntry, ServiceEntryResolution, ServicePort, WorkloadEntrySpec},
};

/// What the ServiceEntries add to the agents' `Address` resources.
#[derive(Debug, Default)]
pub(super) struct ServiceEntryAddresses {
    /// One per host, keyed `namespace/host`.
    pub services: Vec<(String, workload::Service)>,
    /// One per endpoint (STATIC or DNS), outside the mesh.
    pub workloads: Vec<workload::Workload>,
    /// For each pod key a `workloadSelector` selects: the hosts it backs, with their ports.
    pub pod_services: BTreeMap<String, Vec<(String, workload::PortList)>>,
}

/// Istio's workload uid for a ServiceEntry endpoint (`generateServiceEntryUID`).
pub fn endpoint_uid(cluster_id: &str, namespace: &str, name: &str, address: &str) -> String {
    format!("{cluster_id}/networking.istio.io/ServiceEntry/{namespace}/{name}/{address}")
}

/// One per endpoint (STATIC or DNS), outside the mesh.
pub(super) fn service_entry_addresses(
    index: &ConfigIndex,
    settings: &MeshSettings,
    policies_for: impl Fn(&str, &BTreeMap<String, String>) -> Vec<String>,
) -> ServiceEntryAddresses {
    let mut out = ServiceEntryAddresses::default();
    let allocation = auto_allocate::allocate_if_enabled(index, settings.auto_allocate.as_ref());
    for entry in index.service_entries.values() {
        let namespace = namespace_of(&entry.metadata);
        let keys: Vec<String> = entry
            .spec
            .hosts
            .iter()
            .map(|host| format!("{namespace}/{host}"))
            .collect();
        for (key, host) in keys.iter().zip(&entry.spec.hosts) {
            out.services.push((
                key.clone(),
                service(index, settings, &allocation, entry, host),
            ));
        }
        if let Some(selector) = &entry.spec.workload_selector {
            for (pod_key, pod) in &index.pods {
                if selects_pod(&selector.labels, namespace, pod) {
                    let ports = workload::PortList {
                        ports: entry.spec.ports.iter().map(pod_port).collect(),
                    };
                    out.pod_services
                        .entry(pod_key.clone())
                        .or_default()
                        .extend(keys.iter().map(|k| (k.clone(), ports.clone())));
                }
            }
            continue;
        }
        let entry_labels = labels(&entry.metadata);
        let policies = policies_for(namespace, &entry_labels);
        let resolution = entry
            .spec
            .resolution
            .unwrap_or(ServiceEntryResolution::None);
        let endpoints = entry.spec.endpoints.as_deref().unwrap_or_default();
        let dns = matches!(
            resolution,
            ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin
        );
        if endpoints.is_empty() && dns {
            // No endpoints: each host is resolved itself, an implicit endpoint per host.
            for (key, host) in keys.iter().zip(&entry.spec.hosts) {
                let implicit = WorkloadEntrySpec {
                    address: Some(host.clone()),
                    ..Default::default()
                };
                out.workloads.push(endpoint_workload(
                    settings,
                    entry,
                    &implicit,
                    std::slice::from_ref(key),
                    &policies,
                ));
            }
            continue;
        }
        if resolution == ServiceEntryResolution::None {
            // Validation refuses endpoints with NONE; nothing to add.
            continue;
        }
        for endpoint in endpoints {
            out.workloads.push(endpoint_workload(
                settings, entry, endpoint, &keys, &policies,
            ));
        }
    }
    out
}

/// The selector picks pods of the ServiceEntry's own namespace; an empty one picks none
/// (istiod fetches the services of a workload with `FilterSelectsNonEmpty`).
fn selects_pod(selector: &BTreeMap<String, String>, namespace: &str, pod: &Pod) -> bool {
    selects_in(
        selector,
        namespace,
        namespace_of(&pod.metadata),
        &labels(&pod.metadata),
    )
}

pub(super) fn selects_in(
    selector: &BTreeMap<String, String>,
    namespace: &str,
    workload_namespace: &str,
    workload_labels: &BTreeMap<String, String>,
) -> bool {
    !selector.is_empty() && workload_namespace == namespace && selects(selector, workload_labels)
}

/// A ServiceEntry port on a selected pod: its `targetPort`, else its number (ServiceEntry
/// target ports are never named).
fn pod_port(port: &ServicePort) -> workload::Port {
    workload::Port {
        service_port: port.number,
        target_port: port.target_port.filter(|p| *p != 0).unwrap_or(port.number),
    }
}

fn service(
    index: &ConfigIndex,
    settings: &MeshSettings,
    allocation: &auto_allocate::Allocation,
    entry: &ServiceEntry,
    host: &str,
) -> workload::Service {
    let spec = &entry.spec;
    let resolution = spec.resolution.unwrap_or(ServiceEntryResolution::None);
    // NONE without a selector has no endpoints to choose from: the connection goes where the
    // application sent it, as a sidecar's ORIGINAL_DST cluster does.
    let load_balancing =
        if resolution == ServiceEntryResolution::None && spec.workload_selector.is_none() {
            Some(workload::LoadBalancing {
                mode: workload::load_balancing::Mode::Passthrough as i32,
                ..Default::default()
            })
        } else {
            // As istiod's `constructServiceEntries`: a ServiceEntry has no `trafficDistribution`
            // field, only the annotation (its own, else its namespace's).
            super::locality::distribution_load_balancing(super::locality::traffic_distribution(
                None,
                entry.metadata.annotations.as_ref(),
                super::locality::namespace_annotations(index, &entry.metadata),
            ))
        };
    workload::Service {
        name: name_of(&entry.metadata).to_owned(),
        namespace: namespace_of(&entry.metadata).to_owned(),
        hostname: host.to_owned(),
        addresses: auto_allocate::entry_vips(entry, host, allocation)
            .into_iter()
            .map(|ip| workload::NetworkAddress {
                network: String::new(),
                address: ip_bytes(ip),
            })
            .collect(),
        ports: spec.ports.iter().map(pod_port).collect(),
        subject_alt_names: spec.subject_alt_names.clone(),
        waypoint: service_entry_waypoint(index, &entry.metadata)
            .map(|waypoint| waypoint_address(index, settings, &waypoint)),
        load_balancing,
        ..Default::default()
    }
}

/// Who an endpoint outside Kubernetes belongs to: a ServiceEntry (its inline endpoints) or a
/// WorkloadEntry.
pub(super) struct EndpointOwner<'a> {
    pub uid: String,
    pub name: &'a str,
    pub namespace: &'a str,
    pub workload_name: String,
    pub canonical_name: String,
    pub canonical_revision: String,
    pub tunnel: workload::TunnelProtocol,
}

fn endpoint_workload(
    settings: &MeshSettings,
    entry: &ServiceEntry,
    endpoint: &WorkloadEntrySpec,
    keys: &[String],
    policies: &[String],
) -> workload::Workload {
    let namespace = namespace_of(&entry.metadata);
    let name = name_of(&entry.metadata);
    let address = endpoint.address.clone().unwrap_or_default();
    let entry_labels = labels(&entry.metadata);
    let owner = EndpointOwner {
        uid: endpoint_uid(&settings.cluster_id, namespace, name, &address),
        name,
        namespace,
        // istiod: the ServiceEntry's name, as a pod's (`XXX ... HACK to impersonate pod`).
        workload_name: name.to_owned(),
        canonical_name: CANONICAL_NAME_LABELS
            .iter()
            .find_map(|k| entry_labels.get(*k))
            .cloned()
            .unwrap_or_else(|| name.to_owned()),
        canonical_revision: "latest".into(),
        tunnel: workload::TunnelProtocol::None,
    };
    let ports = endpoint_ports(&entry.spec.ports, endpoint);
    let services = keys.iter().map(|k| (k.clone(), ports.clone())).collect();
    outside_workload(settings, &owner, endpoint, services, policies.to_vec())
}

/// A ServiceEntry's ports on an endpoint outside Kubernetes: the endpoint's port of the same
/// name wins, else the `targetPort`, else the number (istiod's
/// `constructServicesFromWorkloadEntry` for a ServiceEntry).
pub(super) fn endpoint_ports(
    ports: &[ServicePort],
    endpoint: &WorkloadEntrySpec,
) -> workload::PortList {
    workload::PortList {
        ports: ports
            .iter()
            .map(|port| workload::Port {
                service_port: port.number,
                target_port: endpoint
                    .ports
                    .as_ref()
                    .and_then(|p| p.get(&port.name).copied())
                    .unwrap_or_else(|| pod_port(port).target_port),
            })
            .collect(),
    }
}

/// A workload outside Kubernetes (a ServiceEntry endpoint, a WorkloadEntry), healthy as istiod
/// always sends it.
pub(super) fn outside_workload(
    settings: &MeshSettings,
    owner: &EndpointOwner<'_>,
    endpoint: &WorkloadEntrySpec,
    services: BTreeMap<String, workload::PortList>,
    policies: Vec<String>,
) -> workload::Workload {
    let address = endpoint.address.clone().unwrap_or_default();
    let (addresses, hostname) = match address.parse::<IpAddr>() {
        Ok(ip) => (vec![ip_bytes(ip)], String::new()),
        Err(_) => (Vec::new(), address),
    };
    workload::Workload {
        uid: owner.uid.clone(),
        name: owner.name.to_owned(),
        namespace: owner.namespace.to_owned(),
        addresses,
        hostname,
        network: endpoint.network.clone().unwrap_or_default(),
        tunnel_protocol: owner.tunnel as i32,
        trust_domain: settings.trust_domain.clone(),
        service_account: endpoint.service_account.clone().unwrap_or_default(),
        canonical_name: owner.canonical_name.clone(),
        canonical_revision: owner.canonical_revision.clone(),
        // istiod sends POD for both kinds (`XXX(shashankram): HACK to impersonate pod`).
        workload_type: workload::WorkloadType::Pod as i32,
        workload_name: owner.workload_name.clone(),
        cluster_id: settings.cluster_id.clone(),
        services,
        authorization_policies: policies,
        status: workload::WorkloadStatus::Healthy as i32,
        capacity: endpoint.weight.filter(|w| *w > 0),
        locality: locality(endpoint.locality.as_deref()),
        ..Default::default()
    }
}
