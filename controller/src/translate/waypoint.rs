//! What waypoints receive: one `weft.waypoint.v1.WaypointConfig` per waypoint (a Gateway of class
//! `istio-waypoint`), named `namespace/name`, holding exactly the services that use it, their
//! routes compiled from VirtualServices, the clusters those routes name (DestinationRule subsets
//! resolved to label selectors and endpoints, traffic policies merged as Istio merges them) and
//! the AuthorizationPolicies and RequestAuthentications that target the waypoint or its
//! services. The mesh's pods as request sources are one `weft.waypoint.v1.SourceWorkload`
//! each ([`source_workloads`]), shared by every waypoint.
//!
//! Istio builds one route table per service port; the proto has one list per service, so on a
//! service with several HTTP ports each route is repeated per port with a `port` match, and a
//! destination without a port resolves to the port the request arrived on. Every list ends with
//! the default route to the service itself.
//!
//! This file holds the entry points, the `Compiler` that carries one waypoint's translation and
//! what its parts share; `routes` (a served service's route tables), `route` (one route for
//! one port), `clusters` (DestinationRules, traffic policies, endpoints), `workloads`,
//! `authorization` and `authentication` each add their part of it.

mod authentication;
mod authorization;
mod clusters;
mod entries;
mod gateway;
mod gateway_routes;
mod locality;
mod operation;
mod route;
mod routes;
mod telemetry;
mod workloads;

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_proto::waypoint as wp;

use super::resolve::{
    self, WaypointFor, WaypointRef, host_covers, service_ports, service_waypoint,
};
use super::{MeshSettings, TranslateError, TranslateProblem, auto_allocate, gateway_api};
use crate::index::ConfigIndex;
use crate::model::networking::ServiceEntry;
use crate::model::{DurationString, KubernetesGateway, ResourceKind, WorkloadEntry};
use authorization::unenforced_policies;
pub use gateway::{gateway_configs, is_gateway_pod};
pub use telemetry::collector_warnings;
use telemetry::{ServedObject, TelemetryProxy};
pub use workloads::source_workloads;

/// Every waypoint's configuration, by resource name `namespace/name`.
pub fn waypoint_configs(
    index: &ConfigIndex,
    settings: &MeshSettings,
    problems: &mut Vec<TranslateError>,
) -> BTreeMap<String, wp::WaypointConfig> {
    // Each pod's destination waypoint, found once for all waypoints: per waypoint, it cost a
    // walk of every pod and its services (waypoints x pods, the larger part of the controller's
    // time per edit at 10,000 pods and 50 waypoints in the bench's scale section).
    let mut direct_pods: BTreeMap<WaypointRef, Vec<&Pod>> = BTreeMap::new();
    for pod in index
        .pods
        .values()
        .filter(|pod| !resolve::pod_terminated(pod))
    {
        if let Some(waypoint) = resolve::destination_waypoint(index, pod) {
            direct_pods.entry(waypoint).or_default().push(pod);
        }
    }
    // WorkloadEntries that name a waypoint: traffic to their address arrives there too.
    let mut direct_entries: BTreeMap<WaypointRef, Vec<&WorkloadEntry>> = BTreeMap::new();
    for entry in index.workload_entries.values() {
        let meta = resolve::workload_entry_meta(entry);
        if let Some(waypoint) = resolve::workload_entry_waypoint(index, &meta) {
            direct_entries.entry(waypoint).or_default().push(entry);
        }
    }
    let configs = resolve::waypoint_gateways(index)
        .map(|gateway| {
            let waypoint = WaypointRef::of(gateway);
            let direct = Direct {
                pods: direct_pods.get(&waypoint).map_or(&[][..], Vec::as_slice),
                entries: direct_entries.get(&waypoint).map_or(&[][..], Vec::as_slice),
            };
            (
                waypoint.to_string(),
                waypoint_config(index, settings, gateway, direct, problems),
            )
        })
        .collect();
    problems.extend(unenforced_policies(index));
    problems.sort();
    problems.dedup();
    configs
}

/// The workloads whose traffic a waypoint takes at their own address: the pods whose
/// destination waypoint it is and the WorkloadEntries that use it.
#[derive(Clone, Copy)]
struct Direct<'a> {
    pods: &'a [&'a Pod],
    entries: &'a [&'a WorkloadEntry],
}

/// One waypoint's configuration.
fn waypoint_config(
    index: &ConfigIndex,
    settings: &MeshSettings,
    gateway: &KubernetesGateway,
    direct: Direct<'_>,
    problems: &mut Vec<TranslateError>,
) -> wp::WaypointConfig {
    let mut compiler = Compiler::new(index, settings, WaypointRef::of(gateway), problems);
    let served: Vec<&Service> = if WaypointFor::of(gateway).takes_services() {
        compiler
            .services
            .values()
            .copied()
            .filter(|s| service_waypoint(index, s).as_ref() == Some(&compiler.waypoint))
            .collect()
    } else {
        Vec::new()
    };
    let served_entries = if WaypointFor::of(gateway).takes_services() {
        compiler.served_entries()
    } else {
        Vec::new()
    };
    let mut services: Vec<wp::WaypointService> =
        served.iter().map(|s| compiler.service(s)).collect();
    services.extend(
        served_entries
            .iter()
            .map(|(host, entry)| compiler.entry_service(host, entry)),
    );
    let telemetry = compiler.telemetry(TelemetryProxy::Waypoint);
    let objects = served.iter().map(|s| ServedObject::service(s)).chain(
        served_entries
            .iter()
            .map(|(_, entry)| ServedObject::entry(entry)),
    );
    for (service, object) in services.iter_mut().zip(objects) {
        service.telemetry = compiler.service_telemetry(object, &telemetry);
    }
    compiler.served_entries = served_entries.iter().map(|(_, e)| *e).collect();
    let clusters: Vec<wp::Cluster> = std::mem::take(&mut compiler.clusters)
        .into_iter()
        .map(|key| compiler.cluster(&key))
        .collect();
    let mut workloads = compiler.direct_workloads(direct.pods);
    workloads.extend(compiler.direct_entries(direct.entries));
    let mut authorization_policies: Vec<wp::L7Authorization> = index
        .authorization_policies
        .values()
        .filter_map(|policy| compiler.policy(policy, &served))
        .collect();
    let request_authentications = index
        .request_authentications
        .values()
        .filter_map(|authentication| compiler.request_authentication(authentication, &served))
        .collect();
    // DENY before ALLOW, as the waypoint evaluates them; stable within each action.
    authorization_policies.sort_by_key(|p| p.action != wp::l7_authorization::Action::Deny as i32);
    wp::WaypointConfig {
        name: compiler.waypoint.name.clone(),
        namespace: compiler.waypoint.namespace.clone(),
        services,
        clusters,
        authorization_policies,
        // Served as `SourceWorkload` resources ([`source_workloads`]).
        source_workloads: Vec::new(),
        workloads,
        request_authentications,
        gateway: None,
        tracing: telemetry.tracing,
        access_log_disabled: telemetry.access_log_disabled,
        metric_overrides: telemetry.metric_overrides,
        access_logs: telemetry.access_logs,
        instances: compiler.instances(),
    }
}

/// A cluster some route or default needs: (host, subset, port).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ClusterKey {
    host: String,
    subset: String,
    port: u32,
}

impl ClusterKey {
    /// Istio's cluster name, `outbound|<port>|<subset>|<host>`.
    fn name(&self) -> String {
        format!("outbound|{}|{}|{}", self.port, self.subset, self.host)
    }
}

/// One waypoint's translation in progress: what it reads, the clusters its routes name so far,
/// and where problems are reported.
struct Compiler<'a, 'p> {
    index: &'a ConfigIndex,
    settings: &'a MeshSettings,
    waypoint: WaypointRef,
    /// Every service, by hostname.
    services: BTreeMap<String, &'a Service>,
    clusters: BTreeSet<ClusterKey>,
    problems: &'p mut Vec<TranslateError>,
    /// The Gateway API routes, read once per waypoint.
    mesh_routes: Rc<[gateway_api::MeshRoute<'a>]>,
    /// Every ServiceEntry host visible to the waypoint, with the entry declaring it.
    entries: Vec<(String, &'a ServiceEntry)>,
    /// The ServiceEntries whose hosts this waypoint serves (policies may target them).
    served_entries: Vec<&'a ServiceEntry>,
    /// The addresses of ServiceEntry hosts that declare none.
    allocation: auto_allocate::Allocation,
    /// Compiling for a gateway's pod rather than a waypoint: a service behind a waypoint of its
    /// own that asks for it (`istio.io/ingress-use-waypoint`) is reached through that waypoint.
    gateway: bool,
}

/// Protocol from `appProtocol`, else from the port name (`http-web`), as Istio reads them.
pub fn port_protocol(port: &ServicePort) -> wp::Protocol {
    protocol_named(
        port.app_protocol
            .as_deref()
            .or_else(|| {
                port.name
                    .as_deref()
                    .map(|n| n.split_once('-').map_or(n, |(prefix, _)| prefix))
            })
            .unwrap_or(""),
    )
}

/// A protocol by Istio's name for it (any case).
fn protocol_named(declared: &str) -> wp::Protocol {
    match declared.to_ascii_lowercase().as_str() {
        "http" | "http_proxy" | "kubernetes.io/ws" => wp::Protocol::Http,
        "http2" | "kubernetes.io/h2c" => wp::Protocol::Http2,
        "grpc" | "grpc-web" => wp::Protocol::Grpc,
        "tcp" | "mongo" | "mysql" | "redis" => wp::Protocol::Tcp,
        "tls" | "https" | "kubernetes.io/wss" => wp::Protocol::Tls,
        _ => wp::Protocol::Unspecified,
    }
}

fn is_opaque(protocol: wp::Protocol) -> bool {
    matches!(protocol, wp::Protocol::Tcp | wp::Protocol::Tls)
}

/// TCP ports of a service (UDP and SCTP ports are nothing a waypoint carries).
fn tcp_service_ports(service: &Service) -> impl Iterator<Item = &ServicePort> {
    service_ports(service)
        .iter()
        .filter(|p| p.protocol.as_deref().is_none_or(|p| p == "TCP"))
        .filter(|p| u16::try_from(p.port).is_ok_and(|p| p > 0))
}

fn port_number(port: &ServicePort) -> u32 {
    u32::try_from(port.port).unwrap_or(0)
}

/// Visible from `viewer` under `exportTo` (empty or `*`: everywhere; `.`: its own namespace).
fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|e| e == "*" || e == viewer || (e == "." && own == viewer))
}

/// Creation order, then namespace and name: Istio's precedence among equals.
fn age_key(meta: &ObjectMeta) -> impl Ord + '_ {
    (
        meta.creation_timestamp.clone(),
        meta.namespace.as_deref(),
        meta.name.as_deref(),
    )
}

/// How specifically a host pattern names `hostname`: exact beats wildcard, longer beats shorter.
fn specificity(pattern: &str, hostname: &str) -> Option<(bool, usize)> {
    host_covers(pattern, hostname).then(|| (!pattern.starts_with('*'), pattern.len()))
}

fn duration(value: &DurationString) -> Result<prost_types::Duration, String> {
    let parsed = value.parse().map_err(|e| e.to_string())?;
    if parsed.negative {
        return Err("negative duration".to_owned());
    }
    Ok(prost_types::Duration {
        seconds: i64::try_from(parsed.magnitude.as_secs()).map_err(|e| e.to_string())?,
        nanos: i32::try_from(parsed.magnitude.subsec_nanos()).map_err(|e| e.to_string())?,
    })
}

impl<'a, 'p> Compiler<'a, 'p> {
    /// A translation for the proxy `waypoint` names (a waypoint's Gateway, or a gateway's pod).
    fn new(
        index: &'a ConfigIndex,
        settings: &'a MeshSettings,
        waypoint: WaypointRef,
        problems: &'p mut Vec<TranslateError>,
    ) -> Self {
        let mut compiler = Compiler {
            index,
            settings,
            services: index
                .services
                .values()
                .map(|s| (resolve::hostname(s, settings), s))
                .collect(),
            clusters: BTreeSet::new(),
            problems,
            waypoint,
            mesh_routes: gateway_api::mesh_routes(index).into(),
            entries: Vec::new(),
            served_entries: Vec::new(),
            allocation: auto_allocate::Allocation::default(),
            gateway: false,
        };
        if index.service_entries.values().any(auto_allocate::eligible) {
            compiler.allocation =
                auto_allocate::allocate_if_enabled(index, settings.auto_allocate.as_ref());
        }
        compiler.entries = compiler.visible_entries();
        compiler
    }

    /// The ports of a host the waypoint can route to: a Service's TCP ports, or a
    /// ServiceEntry host's ports; `None` for a host it does not know.
    fn host_ports(&self, host: &str) -> Option<Vec<u32>> {
        match self.services.get(host) {
            Some(service) => Some(tcp_service_ports(service).map(port_number).collect()),
            None => self.entry_ports(host),
        }
    }

    /// The SPIFFE identity a pod's certificate carries.
    /// A WorkloadEntry's identity, from its service account (`default` when unset, as the
    /// agents read it).
    fn entry_identity(&self, entry: &WorkloadEntry) -> String {
        let account = entry
            .spec
            .service_account
            .as_deref()
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        resolve::spiffe_id(
            self.settings,
            resolve::namespace_of(&entry.metadata),
            account,
        )
    }

    fn pod_identity(&self, pod: &Pod) -> String {
        resolve::spiffe_id(
            self.settings,
            resolve::namespace_of(&pod.metadata),
            resolve::service_account(pod),
        )
    }

    fn report(&mut self, kind: ResourceKind, meta: &ObjectMeta, problem: TranslateProblem) {
        self.problems.push(TranslateError::new(kind, meta, problem));
    }
}

#[cfg(test)]
pub(crate) mod tests;
