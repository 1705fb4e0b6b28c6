//! ServiceEntry hosts at the waypoint, as Istio's ambient waypoints serve them: a ServiceEntry
//! that uses this waypoint (`istio.io/use-waypoint` on it or its namespace) has each of its
//! hosts served like a Service (its VirtualService routes, DestinationRules and the
//! AuthorizationPolicies targeting the ServiceEntry apply), and the clusters of its hosts reach
//! its endpoints outside the mesh in plain TCP (or by TLS origination, as the host's
//! DestinationRule says).

use std::net::IpAddr;

use weft_proto::waypoint as wp;

use super::{Compiler, exported_to};
use crate::model::networking::{
    ClientTlsMode, ClientTlsSettings, ServiceEntry, ServiceEntryResolution,
    ServicePort as EntryPort, WorkloadEntrySpec,
};
use crate::translate::agent::endpoint_uid;
use crate::translate::agent::locality::{split_locality, topology_labels, workload_network};
use crate::translate::auto_allocate;
use crate::translate::resolve::{self, labels, name_of, namespace_of};

/// Protocol of a ServiceEntry port, Istio's names (`HTTP`, `HTTP2`, `GRPC`, `TCP`, `TLS`, ...).
pub(super) fn entry_protocol(port: &EntryPort) -> wp::Protocol {
    super::protocol_named(port.protocol.as_deref().unwrap_or(""))
}

/// The port endpoints listen on for `port`: the endpoint's port of the same name, else the
/// port's `targetPort`, else its number (as istiod maps them).
fn endpoint_port(endpoint: Option<&WorkloadEntrySpec>, port: &EntryPort) -> u32 {
    endpoint
        .and_then(|e| e.ports.as_ref())
        .and_then(|p| p.get(&port.name).copied())
        .filter(|p| *p != 0)
        .or(port.target_port.filter(|p| *p != 0))
        .unwrap_or(port.number)
}

/// Whether `entry` names its endpoints by each request's Host or SNI (`resolution: DYNAMIC_DNS`,
/// wildcard hosts only, as Istio's validation requires).
pub(super) fn dynamic_dns(entry: &ServiceEntry) -> bool {
    entry.spec.resolution == Some(ServiceEntryResolution::DynamicDns)
}

impl<'a> Compiler<'a, '_> {
    /// Every ServiceEntry host visible to this waypoint (`exportTo`), by host: the oldest
    /// entry naming a host declares it, as Istio merges them.
    pub(super) fn visible_entries(&self) -> Vec<(String, &'a ServiceEntry)> {
        let viewer = self.waypoint.namespace.as_str();
        let mut entries: Vec<&'a ServiceEntry> = self
            .index
            .service_entries
            .values()
            .filter(|e| exported_to(&e.spec.export_to, namespace_of(&e.metadata), viewer))
            .collect();
        entries.sort_by(|a, b| super::age_key(&a.metadata).cmp(&super::age_key(&b.metadata)));
        let mut out: Vec<(String, &'a ServiceEntry)> = Vec::new();
        for entry in entries {
            for host in &entry.spec.hosts {
                // A wildcard is served only as `DYNAMIC_DNS` names it: the waypoint resolves
                // each request's name under it (Istio's dynamic forward proxy clusters).
                let servable = !host.starts_with('*') || dynamic_dns(entry);
                if servable && !out.iter().any(|(h, _)| h == host) {
                    out.push((host.clone(), entry));
                }
            }
        }
        out
    }

    /// The ServiceEntry hosts this waypoint serves: those of entries that use it, unless a
    /// Service of the same hostname is there (a Service wins, as in Istio's service registry).
    pub(super) fn served_entries(&mut self) -> Vec<(String, &'a ServiceEntry)> {
        let mut served = Vec::new();
        for (host, entry) in self.entries.clone() {
            if self.services.contains_key(&host)
                || resolve::service_entry_waypoint(self.index, &entry.metadata).as_ref()
                    != Some(&self.waypoint)
            {
                continue;
            }
            served.push((host, entry));
        }
        served
    }

    /// A ServiceEntry host as the waypoint serves it, with its routes.
    pub(super) fn entry_service(
        &mut self,
        host: &str,
        entry: &ServiceEntry,
    ) -> wp::WaypointService {
        let ports = entry
            .spec
            .ports
            .iter()
            .filter(|p| u16::try_from(p.number).is_ok_and(|p| p > 0))
            .map(|port| wp::ServicePort {
                port: port.number,
                name: port.name.clone(),
                protocol: entry_protocol(port) as i32,
                target_port: endpoint_port(None, port),
            })
            .collect();
        self.served_host(wp::WaypointService {
            hostname: host.to_owned(),
            name: name_of(&entry.metadata).to_owned(),
            namespace: namespace_of(&entry.metadata).to_owned(),
            // As for the agents: declared (a CIDR contributes its address) or allocated.
            vips: auto_allocate::entry_vips(entry, host, &self.allocation)
                .iter()
                .map(IpAddr::to_string)
                .collect(),
            ports,
            http_routes: Vec::new(),
            tcp_routes: Vec::new(),
            dynamic_dns: dynamic_dns(entry) && host.starts_with('*'),
            // Set once every served service is known (`waypoint_config`).
            telemetry: None,
        })
    }

    /// The ports of a ServiceEntry host, if `host` is one this waypoint sees.
    pub(super) fn entry_ports(&self, host: &str) -> Option<Vec<u32>> {
        self.entries
            .iter()
            .find(|(h, _)| h == host)
            .map(|(_, e)| e.spec.ports.iter().map(|p| p.number).collect())
    }

    /// Whether `host` is a wildcard ServiceEntry host whose endpoints the waypoint resolves per
    /// request (`resolution: DYNAMIC_DNS`).
    pub(super) fn entry_dynamic_dns(&self, host: &str) -> bool {
        host.starts_with('*')
            && self
                .entries
                .iter()
                .any(|(h, e)| h == host && dynamic_dns(e))
    }

    /// The endpoints of a ServiceEntry host's cluster on `port`, outside the mesh: STATIC
    /// addresses; names (`resolution: DNS`, or the host itself without endpoints) for the
    /// waypoint to resolve.
    pub(super) fn entry_endpoints(
        &self,
        host: &str,
        port: u32,
        subset_labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<wp::Endpoint> {
        let Some((_, entry)) = self.entries.iter().find(|(h, _)| h == host) else {
            return Vec::new();
        };
        let Some(entry_port) = entry.spec.ports.iter().find(|p| p.number == port) else {
            return Vec::new();
        };
        if let Some(selector) = &entry.spec.workload_selector {
            return self.selected_endpoints(entry, &selector.labels, entry_port, subset_labels);
        }
        let resolution = entry
            .spec
            .resolution
            .unwrap_or(ServiceEntryResolution::None);
        let dns = matches!(
            resolution,
            ServiceEntryResolution::Dns | ServiceEntryResolution::DnsRoundRobin
        );
        let endpoints = entry.spec.endpoints.as_deref().unwrap_or_default();
        let implicit;
        let endpoints: &[WorkloadEntrySpec] = if endpoints.is_empty() && dns {
            implicit = [WorkloadEntrySpec {
                address: Some(host.to_owned()),
                ..Default::default()
            }];
            &implicit
        } else if resolution == ServiceEntryResolution::None {
            &[]
        } else {
            endpoints
        };
        let namespace = namespace_of(&entry.metadata);
        let name = name_of(&entry.metadata);
        endpoints
            .iter()
            .filter(|e| resolve::selects(subset_labels, &e.labels))
            .filter_map(|e| {
                let address = e.address.clone().filter(|a| !a.is_empty())?;
                // Unix sockets are nothing a waypoint can reach.
                if address.starts_with("unix://") {
                    return None;
                }
                let mut endpoint_labels = labels(&entry.metadata);
                endpoint_labels.extend(e.labels.clone());
                let workload_uid =
                    endpoint_uid(&self.settings.cluster_id, namespace, name, &address);
                let (address, hostname) = match address.parse::<IpAddr>() {
                    Ok(_) => (address, String::new()),
                    Err(_) => (String::new(), address),
                };
                let locality = split_locality(e.locality.as_deref());
                let network = workload_network(
                    self.index,
                    &self.settings.root_namespace,
                    &entry.metadata,
                    e.network.as_deref(),
                );
                let topology_labels =
                    topology_labels(locality.as_ref(), &self.settings.cluster_id, None, network);
                Some(wp::Endpoint {
                    locality: super::locality::to_proto(locality),
                    topology_labels,
                    workload_uid,
                    // As the agents' Workload for the entry's endpoint names it.
                    workload_name: name.to_owned(),
                    address,
                    hostname,
                    port: endpoint_port(Some(e), entry_port),
                    identity: String::new(),
                    labels: endpoint_labels,
                    tunnel: wp::EndpointTunnel::None as i32,
                    healthy: true,
                    weight: e.weight.unwrap_or(0),
                    tunnel_address: String::new(),
                })
            })
            .collect()
    }
}

impl Compiler<'_, '_> {
    /// The endpoints of an entry with a `workloadSelector`: the pods and WorkloadEntries of
    /// its namespace it selects (an empty selector selects none, as istiod's
    /// `FilterSelectsNonEmpty`), as Istio's service registry makes them the entry's instances
    /// (`serviceentry/conversion.go`): a pod on the port's `targetPort`, else its number; a
    /// WorkloadEntry on its port of the port's name, else the same; each reached as the agents
    /// reach it (HBONE when enrolled), a WorkloadEntry weighted by its `weight`.
    fn selected_endpoints(
        &self,
        entry: &ServiceEntry,
        selector: &std::collections::BTreeMap<String, String>,
        port: &EntryPort,
        subset_labels: &std::collections::BTreeMap<String, String>,
    ) -> Vec<wp::Endpoint> {
        let namespace = namespace_of(&entry.metadata);
        let picks = |workload_labels: &std::collections::BTreeMap<String, String>| {
            !selector.is_empty()
                && resolve::selects(selector, workload_labels)
                && resolve::selects(subset_labels, workload_labels)
        };
        let mut endpoints: Vec<wp::Endpoint> =
            crate::index::in_namespace(&self.index.pods, namespace)
                .filter(|pod| !resolve::pod_terminated(pod) && picks(&labels(&pod.metadata)))
                .flat_map(|pod| self.pod_endpoints_on(pod, endpoint_port(None, port)))
                .collect();
        endpoints.extend(
            crate::index::in_namespace(&self.index.workload_entries, namespace).filter_map(
                |workload| {
                    let workload_labels = resolve::workload_entry_labels(workload);
                    if !picks(&workload_labels) {
                        return None;
                    }
                    let target = endpoint_port(Some(&workload.spec), port);
                    self.workload_entry_endpoint(workload, workload_labels, target)
                },
            ),
        );
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints
    }
}

/// TLS the waypoint originates to a ServiceEntry host's endpoints, from the DestinationRule
/// `tls` (SIMPLE or MUTUAL, as Envoy originates it for a sidecar); other modes: plain TCP
/// (ISTIO_MUTUAL means HBONE-style mesh TLS, which endpoints outside the mesh do not speak).
pub(super) fn upstream_tls(tls: &ClientTlsSettings) -> Option<wp::UpstreamTls> {
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    if !matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) {
        return None;
    }
    Some(wp::UpstreamTls {
        sni: tls.sni.clone().unwrap_or_default(),
        ca_certificates: tls.ca_certificates.clone().unwrap_or_default(),
        subject_alt_names: tls.subject_alt_names.clone(),
        client_certificate: if mode == ClientTlsMode::Mutual {
            tls.client_certificate.clone().unwrap_or_default()
        } else {
            String::new()
        },
        private_key: if mode == ClientTlsMode::Mutual {
            tls.private_key.clone().unwrap_or_default()
        } else {
            String::new()
        },
        credential_name: tls.credential_name.clone().unwrap_or_default(),
        ca_crl: tls.ca_crl.clone().unwrap_or_default(),
        mutual: mode == ClientTlsMode::Mutual,
        // Only when the user sets it, as Istio applies it: never a default.
        insecure_skip_verify: tls.insecure_skip_verify == Some(true),
        // Set with the proxy's namespace when the credentials are served (Kubernetes mode).
        credential_resource: String::new(),
    })
}

#[cfg(test)]
mod tests;
