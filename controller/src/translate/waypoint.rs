//! What waypoints receive: one `weft.waypoint.v1.WaypointConfig` per waypoint (a Gateway of class
//! `istio-waypoint`), named `namespace/name`, holding exactly the services that use it, their
//! routes compiled from VirtualServices, the clusters those routes name (DestinationRule subsets
//! resolved to label selectors and endpoints, traffic policies merged as Istio merges them) and
//! the AuthorizationPolicies that target the waypoint or its services.
//!
//! Istio builds one route table per service port; the proto has one list per service, so on a
//! service with several HTTP ports each route is repeated per port with a `port` match, and a
//! destination without a port resolves to the port the request arrived on. Every list ends with
//! the default route to the service itself.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Pod, Service, ServicePort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use weft_proto::waypoint as wp;

use super::resolve::{
    self, WaypointFor, WaypointRef, host_covers, labels, name_of, namespace_of, qualify_host,
    selects, service_hostname, service_ports, service_selects, service_waypoint,
};
use super::{MeshSettings, TranslateError, TranslateProblem};
use crate::index::ConfigIndex;
use crate::model::gateway_api::WAYPOINT_GATEWAY_CLASS;
use crate::model::networking::{
    self as net, ConnectionPoolSettings, DestinationRule, HttpRoute, LoadBalancerSettings,
    OutlierDetection, Subset, TrafficPolicy, VirtualService,
};
use crate::model::security::{AuthorizationAction, AuthorizationPolicy};
use crate::model::{DurationString, KubernetesGateway, ResourceKind};

/// Envoy's retry conditions when a route names none (Istio's default retry policy).
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";
/// Retries after the first attempt when a route sets no policy (Istio's default).
pub const DEFAULT_RETRY_ATTEMPTS: i32 = 2;
/// Consecutive 5xx before ejection when `outlierDetection` sets no threshold (Envoy's default,
/// which Istio leaves in place).
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// The reserved gateway name that means "every proxy in the mesh".
const MESH_GATEWAY: &str = "mesh";

/// Every waypoint's configuration, by resource name `namespace/name`.
pub fn waypoint_configs(
    index: &ConfigIndex,
    settings: &MeshSettings,
    problems: &mut Vec<TranslateError>,
) -> BTreeMap<String, wp::WaypointConfig> {
    let configs = resolve::waypoint_gateways(index)
        .map(|gateway| {
            let waypoint = WaypointRef::of(gateway);
            (
                waypoint.to_string(),
                waypoint_config(index, settings, gateway, problems),
            )
        })
        .collect();
    problems.extend(unenforced_policies(index));
    problems.sort();
    problems.dedup();
    configs
}

/// One waypoint's configuration.
pub fn waypoint_config(
    index: &ConfigIndex,
    settings: &MeshSettings,
    gateway: &KubernetesGateway,
    problems: &mut Vec<TranslateError>,
) -> wp::WaypointConfig {
    let waypoint = WaypointRef::of(gateway);
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
    };
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
    let services = served.iter().map(|s| compiler.service(s)).collect();
    let clusters: Vec<wp::Cluster> = std::mem::take(&mut compiler.clusters)
        .into_iter()
        .map(|key| compiler.cluster(&key))
        .collect();
    let workloads = compiler.direct_workloads();
    let source_workloads = compiler.source_workloads(&clusters, &workloads);
    let mut authorization_policies: Vec<wp::L7Authorization> = index
        .authorization_policies
        .values()
        .filter_map(|policy| compiler.policy(policy, &served))
        .collect();
    // DENY before ALLOW, as the waypoint evaluates them; stable within each action.
    authorization_policies.sort_by_key(|p| p.action != wp::l7_authorization::Action::Deny as i32);
    wp::WaypointConfig {
        name: compiler.waypoint.name.clone(),
        namespace: compiler.waypoint.namespace.clone(),
        services,
        clusters,
        authorization_policies,
        source_workloads,
        workloads,
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

/// The DestinationRule(s) that apply to a host, merged as Istio merges rules for the same host
/// in one namespace: the first (oldest) traffic policy, subsets by first definition.
struct MergedRule<'a> {
    first: &'a DestinationRule,
    traffic_policy: Option<&'a TrafficPolicy>,
    subsets: Vec<&'a Subset>,
}

impl MergedRule<'_> {
    fn key(&self) -> String {
        format!(
            "{}/{}",
            namespace_of(&self.first.metadata),
            name_of(&self.first.metadata)
        )
    }

    fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().copied().find(|s| s.name == name)
    }
}

/// A service the waypoint serves, as routes see it.
struct Served {
    hostname: String,
    /// Ports carrying HTTP (declared, or sniffed).
    http_ports: Vec<u32>,
    /// Ports forwarded at L4 (declared opaque, or sniffed).
    tcp_ports: Vec<u32>,
}

struct Compiler<'a, 'p> {
    index: &'a ConfigIndex,
    settings: &'a MeshSettings,
    waypoint: WaypointRef,
    /// Every service, by hostname.
    services: BTreeMap<String, &'a Service>,
    clusters: BTreeSet<ClusterKey>,
    problems: &'p mut Vec<TranslateError>,
}

/// Protocol from `appProtocol`, else from the port name (`http-web`), as Istio reads them.
pub fn port_protocol(port: &ServicePort) -> wp::Protocol {
    let declared = port
        .app_protocol
        .as_deref()
        .or_else(|| {
            port.name
                .as_deref()
                .map(|n| n.split_once('-').map_or(n, |(prefix, _)| prefix))
        })
        .unwrap_or("")
        .to_ascii_lowercase();
    match declared.as_str() {
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

/// Where a VirtualService route is compiled for: the port the request arrives on, and whether
/// the route must say so (the service has several HTTP, or TCP, ports).
#[derive(Debug, Clone, Copy)]
struct PortContext {
    port: u32,
    restrict: bool,
}

impl<'a> Compiler<'a, '_> {
    fn report(&mut self, kind: ResourceKind, meta: &ObjectMeta, problem: TranslateProblem) {
        self.problems.push(TranslateError::new(kind, meta, problem));
    }

    fn service(&mut self, service: &'a Service) -> wp::WaypointService {
        let namespace = namespace_of(&service.metadata);
        let hostname = resolve::hostname(service, self.settings);
        let ports: Vec<wp::ServicePort> = tcp_service_ports(service)
            .map(|port| wp::ServicePort {
                port: port_number(port),
                name: port.name.clone().unwrap_or_default(),
                protocol: port_protocol(port) as i32,
                target_port: resolve::numeric_target_port(port),
            })
            .collect();
        let protocol_of = |p: &wp::ServicePort| {
            wp::Protocol::try_from(p.protocol).unwrap_or(wp::Protocol::Unspecified)
        };
        let served = Served {
            hostname: hostname.clone(),
            http_ports: ports
                .iter()
                .filter(|p| !is_opaque(protocol_of(p)))
                .map(|p| p.port)
                .collect(),
            tcp_ports: ports
                .iter()
                .filter(|p| {
                    is_opaque(protocol_of(p)) || protocol_of(p) == wp::Protocol::Unspecified
                })
                .map(|p| p.port)
                .collect(),
        };
        let (mut http_routes, mut tcp_routes) = match self.virtual_service_for(&served) {
            Some(vs) => self.routes_from(&served, vs),
            None => (Vec::new(), Vec::new()),
        };
        // The default: the service itself, for whatever no route matched.
        for context in contexts(&served.http_ports) {
            let cluster = self.register(&hostname, "", context.port);
            http_routes.push(wp::HttpRoute {
                name: "default".to_owned(),
                r#match: if context.restrict {
                    vec![wp::HttpMatchRequest {
                        port: context.port,
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                route: vec![wp::HttpRouteDestination {
                    destination: Some(wp::Destination {
                        host: hostname.clone(),
                        subset: String::new(),
                        port: context.port,
                        cluster,
                    }),
                    weight: 0,
                    headers: None,
                }],
                retries: Some(default_retries()),
                ..Default::default()
            });
        }
        for context in contexts(&served.tcp_ports) {
            let cluster = self.register(&hostname, "", context.port);
            tcp_routes.push(wp::TcpRoute {
                r#match: if context.restrict {
                    vec![wp::L4MatchAttributes {
                        port: context.port,
                        ..Default::default()
                    }]
                } else {
                    Vec::new()
                },
                route: vec![wp::RouteDestination {
                    destination: Some(wp::Destination {
                        host: hostname.clone(),
                        subset: String::new(),
                        port: context.port,
                        cluster,
                    }),
                    weight: 0,
                }],
                virtual_service: String::new(),
            });
        }
        wp::WaypointService {
            hostname,
            name: name_of(&service.metadata).to_owned(),
            namespace: namespace.to_owned(),
            vips: resolve::service_vips(service)
                .iter()
                .map(ToString::to_string)
                .collect(),
            ports,
            http_routes,
            tcp_routes,
        }
    }

    fn register(&mut self, host: &str, subset: &str, port: u32) -> String {
        let key = ClusterKey {
            host: host.to_owned(),
            subset: subset.to_owned(),
            port,
        };
        let name = key.name();
        self.clusters.insert(key);
        name
    }

    /// The VirtualService that routes `served`: visible to the waypoint, bound to the mesh,
    /// naming the host most specifically, the oldest among equals. The others naming it are
    /// reported as ignored for it.
    fn virtual_service_for(&mut self, served: &Served) -> Option<&'a VirtualService> {
        let viewer = self.waypoint.namespace.clone();
        let mut candidates: Vec<(&'a VirtualService, (bool, usize))> = self
            .index
            .virtual_services
            .values()
            .filter(|vs| {
                exported_to(&vs.spec.export_to, namespace_of(&vs.metadata), &viewer)
                    && binds_mesh(vs)
            })
            .filter_map(|vs| {
                let namespace = namespace_of(&vs.metadata);
                vs.spec
                    .hosts
                    .iter()
                    .filter_map(|h| {
                        specificity(&qualify_host(self.settings, h, namespace), &served.hostname)
                    })
                    .max()
                    .map(|s| (vs, s))
            })
            .collect();
        candidates.sort_by(|(a, sa), (b, sb)| {
            sb.cmp(sa)
                .then_with(|| age_key(&a.metadata).cmp(&age_key(&b.metadata)))
        });
        let (chosen, _) = *candidates.first()?;
        let by = format!(
            "{}/{}",
            namespace_of(&chosen.metadata),
            name_of(&chosen.metadata)
        );
        for (shadowed, _) in candidates.iter().skip(1) {
            self.report(
                ResourceKind::VirtualService,
                &shadowed.metadata,
                TranslateProblem::ShadowedVirtualService {
                    path: "spec.hosts".to_owned(),
                    host: served.hostname.clone(),
                    by: by.clone(),
                },
            );
        }
        Some(chosen)
    }

    /// Compiles one VirtualService for one service. A value that cannot be translated (a
    /// duration, a body) skips the whole VirtualService for that service; a destination naming
    /// an unknown host, subset or port is reported and kept (503 `NC` at request time); what the
    /// waypoint does not support is reported and left out.
    fn routes_from(
        &mut self,
        served: &Served,
        vs: &'a VirtualService,
    ) -> (Vec<wp::HttpRoute>, Vec<wp::TcpRoute>) {
        let mut clusters = BTreeSet::new();
        let mut notes = Vec::new();
        let result = self.compile_routes(served, vs, &mut clusters, &mut notes);
        for note in notes {
            self.report(ResourceKind::VirtualService, &vs.metadata, note);
        }
        match result {
            Ok(routes) => {
                self.clusters.extend(clusters);
                routes
            }
            Err(problem) => {
                self.report(ResourceKind::VirtualService, &vs.metadata, problem);
                (Vec::new(), Vec::new())
            }
        }
    }

    fn compile_routes(
        &self,
        served: &Served,
        vs: &'a VirtualService,
        clusters: &mut BTreeSet<ClusterKey>,
        notes: &mut Vec<TranslateProblem>,
    ) -> Result<(Vec<wp::HttpRoute>, Vec<wp::TcpRoute>), TranslateProblem> {
        let vs_key = format!("{}/{}", namespace_of(&vs.metadata), name_of(&vs.metadata));
        let mesh =
            vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == MESH_GATEWAY);
        let mut http_routes = Vec::new();
        for (i, route) in vs.spec.http.iter().enumerate() {
            let path = format!("spec.http[{i}]");
            if route.delegate.is_some() {
                notes.push(TranslateProblem::Unsupported {
                    path: format!("{path}.delegate"),
                    reason: "delegation applies to gateways only; the route is ignored".to_owned(),
                });
                continue;
            }
            for context in contexts(&served.http_ports) {
                let mut route_context = RouteContext {
                    compiler: self,
                    served,
                    vs,
                    path: &path,
                    clusters: &mut *clusters,
                    notes: &mut *notes,
                    context,
                };
                if let Some(mut compiled) = route_context.http_route(route, mesh)? {
                    compiled.virtual_service = vs_key.clone();
                    http_routes.push(compiled);
                }
            }
        }
        let mut tcp_routes = Vec::new();
        for (i, route) in vs.spec.tcp.iter().enumerate() {
            let path = format!("spec.tcp[{i}]");
            for context in contexts(&served.tcp_ports) {
                let mut route_context = RouteContext {
                    compiler: self,
                    served,
                    vs,
                    path: &path,
                    clusters: &mut *clusters,
                    notes: &mut *notes,
                    context,
                };
                if let Some(mut compiled) = route_context.tcp_route(route, mesh)? {
                    compiled.virtual_service = vs_key.clone();
                    tcp_routes.push(compiled);
                }
            }
        }
        if !vs.spec.tls.is_empty() {
            notes.push(TranslateProblem::Unsupported {
                path: "spec.tls".to_owned(),
                reason: "TLS routes are not applied by waypoints; ignored".to_owned(),
            });
        }
        Ok((http_routes, tcp_routes))
    }

    /// The DestinationRule(s) for `host` as the waypoint sees them: Istio looks in the
    /// waypoint's namespace, then the service's, then the root namespace (then any other that
    /// exports to it); the most specific host wins in that namespace, and rules for that exact
    /// host there are merged.
    fn destination_rule(&self, host: &str) -> Option<MergedRule<'a>> {
        let viewer = self.waypoint.namespace.as_str();
        let service_namespace = self.services.get(host).map(|s| namespace_of(&s.metadata));
        let rank = |namespace: &str| {
            if namespace == viewer {
                0
            } else if Some(namespace) == service_namespace {
                1
            } else if namespace == self.settings.root_namespace {
                2
            } else {
                3
            }
        };
        let mut candidates: Vec<(&'a DestinationRule, String)> = self
            .index
            .destination_rules
            .values()
            .filter(|dr| {
                exported_to(&dr.spec.export_to, namespace_of(&dr.metadata), viewer)
                    && dr
                        .spec
                        .workload_selector
                        .as_ref()
                        .is_none_or(|s| s.match_labels.is_empty())
            })
            .filter_map(|dr| {
                let qualified =
                    qualify_host(self.settings, &dr.spec.host, namespace_of(&dr.metadata));
                host_covers(&qualified, host).then_some((dr, qualified))
            })
            .collect();
        candidates.sort_by(|(a, ha), (b, hb)| {
            rank(namespace_of(&a.metadata))
                .cmp(&rank(namespace_of(&b.metadata)))
                .then_with(|| namespace_of(&a.metadata).cmp(namespace_of(&b.metadata)))
                .then_with(|| specificity(hb, host).cmp(&specificity(ha, host)))
                .then_with(|| age_key(&a.metadata).cmp(&age_key(&b.metadata)))
        });
        let (first, first_host) = candidates.first()?.clone();
        let mut merged = MergedRule {
            first,
            traffic_policy: None,
            subsets: Vec::new(),
        };
        for (dr, _) in candidates.iter().filter(|(dr, h)| {
            h == &first_host && namespace_of(&dr.metadata) == namespace_of(&first.metadata)
        }) {
            if merged.traffic_policy.is_none() {
                merged.traffic_policy = dr.spec.traffic_policy.as_ref();
            }
            for subset in &dr.spec.subsets {
                if merged.subset(&subset.name).is_none() {
                    merged.subsets.push(subset);
                }
            }
        }
        Some(merged)
    }

    fn cluster(&mut self, key: &ClusterKey) -> wp::Cluster {
        let mut cluster = wp::Cluster {
            name: key.name(),
            host: key.host.clone(),
            subset: key.subset.clone(),
            port: key.port,
            ..Default::default()
        };
        let rule = self.destination_rule(&key.host);
        let subset = rule.as_ref().and_then(|r| {
            (!key.subset.is_empty())
                .then(|| r.subset(&key.subset))
                .flatten()
        });
        let subset_labels = subset.map(|s| s.labels.clone()).unwrap_or_default();
        if let Some(rule) = &rule {
            cluster.destination_rule = rule.key();
            let (policy, notes) = effective_policy(
                rule.traffic_policy,
                subset.and_then(|s| s.traffic_policy.as_ref()),
                key.port,
            )
            .compile();
            cluster.load_balancer = policy.0;
            cluster.connection_pool = policy.1;
            cluster.outlier_detection = policy.2;
            let meta = rule.first.metadata.clone();
            for note in notes {
                self.report(ResourceKind::DestinationRule, &meta, note);
            }
        }
        if let Some(service) = self.services.get(&key.host).copied() {
            cluster.endpoints = self.endpoints(service, key.port, &subset_labels);
            if let Some(other) = service_waypoint(self.index, service)
                && other != self.waypoint
            {
                let problem = TranslateProblem::OtherWaypoint {
                    from: self.waypoint.to_string(),
                    to: other.to_string(),
                };
                self.report(ResourceKind::Service, &service.metadata, problem);
            }
        }
        cluster.subset_labels = subset_labels;
        cluster
    }

    fn endpoints(
        &self,
        service: &Service,
        port: u32,
        subset_labels: &BTreeMap<String, String>,
    ) -> Vec<wp::Endpoint> {
        let Some(service_port) = tcp_service_ports(service).find(|p| port_number(p) == port) else {
            return Vec::new();
        };
        let mut endpoints: Vec<wp::Endpoint> = self
            .index
            .pods
            .values()
            .filter(|pod| {
                service_selects(service, pod)
                    && !resolve::pod_terminated(pod)
                    && selects(subset_labels, &labels(&pod.metadata))
            })
            .flat_map(|pod| self.pod_endpoints(pod, service_port))
            .collect();
        endpoints.sort_by(|a, b| a.address.cmp(&b.address));
        endpoints
    }

    fn pod_endpoints(&self, pod: &Pod, port: &ServicePort) -> Vec<wp::Endpoint> {
        let Some(target) =
            resolve::target_port(port, pod).filter(|p| u16::try_from(*p).is_ok_and(|p| p > 0))
        else {
            return Vec::new();
        };
        let tunnel = if resolve::enrolled(self.index, pod) {
            wp::EndpointTunnel::Hbone
        } else {
            wp::EndpointTunnel::None
        };
        let namespace = namespace_of(&pod.metadata);
        resolve::pod_ips(pod)
            .into_iter()
            .map(|ip| wp::Endpoint {
                address: ip.to_string(),
                port: target,
                identity: resolve::spiffe_id(
                    self.settings,
                    namespace,
                    resolve::service_account(pod),
                ),
                labels: labels(&pod.metadata),
                workload_uid: resolve::pod_uid(&self.settings.cluster_id, pod),
                tunnel: tunnel as i32,
                healthy: resolve::pod_healthy(pod),
                weight: 0,
            })
            .collect()
    }

    /// The pods whose agent accepts only this waypoint (`resolve::destination_waypoint`, the
    /// rule the agents' resources follow): traffic addressed to one of them directly arrives
    /// here and goes to exactly that pod. Each lists the services it backs through this
    /// waypoint (their policies apply to it) and the declared protocols of its target ports.
    fn direct_workloads(&self) -> Vec<wp::WaypointWorkload> {
        let mut out: Vec<(bool, wp::WaypointWorkload)> = Vec::new();
        for pod in self.index.pods.values().filter(|pod| {
            !resolve::pod_terminated(pod)
                && resolve::destination_waypoint(self.index, pod).as_ref() == Some(&self.waypoint)
        }) {
            let backing = resolve::backing_waypoints(self.index, pod);
            let services: Vec<String> = backing
                .iter()
                .filter(|(_, waypoint)| waypoint.as_ref() == Some(&self.waypoint))
                .map(|(service, _)| resolve::hostname(service, self.settings))
                .collect();
            let mut ports: Vec<wp::WorkloadPort> = Vec::new();
            for (service, _) in &backing {
                for port in tcp_service_ports(service) {
                    let Some(target) = resolve::target_port(port, pod)
                        .filter(|p| u16::try_from(*p).is_ok_and(|p| p > 0))
                    else {
                        continue;
                    };
                    // The first service (in key order) declaring a port says what it carries.
                    if !ports.iter().any(|p| p.port == target) {
                        ports.push(wp::WorkloadPort {
                            port: target,
                            protocol: port_protocol(port) as i32,
                        });
                    }
                }
            }
            ports.sort_by_key(|p| p.port);
            let namespace = namespace_of(&pod.metadata);
            let healthy = resolve::pod_healthy(pod);
            for ip in resolve::pod_ips(pod) {
                out.push((
                    healthy,
                    wp::WaypointWorkload {
                        address: ip.to_string(),
                        identity: resolve::spiffe_id(
                            self.settings,
                            namespace,
                            resolve::service_account(pod),
                        ),
                        labels: labels(&pod.metadata),
                        workload_uid: resolve::pod_uid(&self.settings.cluster_id, pod),
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

    /// Every pod in the mesh the clusters and the direct workloads do not already describe:
    /// what the waypoint knows of a request's source (`sourceLabels` matches, the source
    /// labels of its metrics).
    fn source_workloads(
        &self,
        clusters: &[wp::Cluster],
        workloads: &[wp::WaypointWorkload],
    ) -> Vec<wp::SourceWorkload> {
        let known: BTreeSet<&str> = clusters
            .iter()
            .flat_map(|c| c.endpoints.iter().map(|e| e.address.as_str()))
            .chain(workloads.iter().map(|w| w.address.as_str()))
            .collect();
        let mut out = Vec::new();
        for pod in self.index.pods.values().filter(|pod| {
            resolve::enrolled(self.index, pod)
                && !resolve::pod_terminated(pod)
                && !resolve::is_waypoint_pod(self.index, pod)
        }) {
            for ip in resolve::pod_ips(pod) {
                let address = ip.to_string();
                if known.contains(address.as_str()) {
                    continue;
                }
                out.push(wp::SourceWorkload {
                    address,
                    identity: resolve::spiffe_id(
                        self.settings,
                        namespace_of(&pod.metadata),
                        resolve::service_account(pod),
                    ),
                    labels: labels(&pod.metadata),
                    workload_uid: resolve::pod_uid(&self.settings.cluster_id, pod),
                });
            }
        }
        out
    }

    /// An AuthorizationPolicy for this waypoint: `targetRefs` naming the waypoint's Gateway (all
    /// its services), the `istio-waypoint` GatewayClass from the root namespace (every
    /// waypoint), or Services it serves (those services only).
    fn policy(
        &mut self,
        policy: &AuthorizationPolicy,
        served: &[&Service],
    ) -> Option<wp::L7Authorization> {
        let namespace = namespace_of(&policy.metadata);
        let mut whole_waypoint = false;
        let mut target_services = BTreeSet::new();
        for target in policy
            .spec
            .target_ref
            .iter()
            .chain(&policy.spec.target_refs)
        {
            // Istio admits targets only in the policy's own namespace.
            if target
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != namespace)
            {
                continue;
            }
            let group = target.group.as_deref().unwrap_or("");
            match target.kind.as_str() {
                "Gateway"
                    if group == "gateway.networking.k8s.io"
                        && namespace == self.waypoint.namespace
                        && target.name == self.waypoint.name =>
                {
                    whole_waypoint = true;
                }
                "GatewayClass"
                    if group == "gateway.networking.k8s.io"
                        && target.name == WAYPOINT_GATEWAY_CLASS
                        && namespace == self.settings.root_namespace =>
                {
                    whole_waypoint = true;
                }
                "Service"
                    if (group.is_empty() || group == "core")
                        && served.iter().any(|s| {
                            namespace_of(&s.metadata) == namespace
                                && name_of(&s.metadata) == target.name
                        }) =>
                {
                    target_services.insert(service_hostname(
                        self.settings,
                        namespace,
                        &target.name,
                    ));
                }
                _ => {}
            }
        }
        if !whole_waypoint && target_services.is_empty() {
            return None;
        }
        let action = match policy.spec.action.unwrap_or_default() {
            AuthorizationAction::Allow => wp::l7_authorization::Action::Allow,
            AuthorizationAction::Deny => wp::l7_authorization::Action::Deny,
            AuthorizationAction::Audit => {
                self.report(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::Unsupported {
                        path: "spec.action".to_owned(),
                        reason: "AUDIT is not supported by waypoints; the policy is ignored (it never changes a decision)".to_owned(),
                    },
                );
                return None;
            }
            AuthorizationAction::Custom => {
                self.report(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::Unsupported {
                        path: "spec.action".to_owned(),
                        reason: "CUSTOM (external authorization) is not supported by waypoints; the requests it selects are denied".to_owned(),
                    },
                );
                wp::l7_authorization::Action::Deny
            }
        };
        let mut notes = Vec::new();
        let rules = l7_rules(
            policy.spec.rules.as_deref().unwrap_or_default(),
            action,
            &mut notes,
        );
        for note in notes {
            self.report(ResourceKind::AuthorizationPolicy, &policy.metadata, note);
        }
        Some(wp::L7Authorization {
            name: name_of(&policy.metadata).to_owned(),
            namespace: namespace.to_owned(),
            action: action as i32,
            rules,
            dry_run: policy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(resolve::DRY_RUN))
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            target_services: if whole_waypoint {
                Vec::new()
            } else {
                target_services.into_iter().collect()
            },
        })
    }
}

/// The ports a route is compiled for: each one, restricted to it, when there are several.
fn contexts(ports: &[u32]) -> Vec<PortContext> {
    let restrict = ports.len() > 1;
    ports
        .iter()
        .map(|&port| PortContext { port, restrict })
        .collect()
}

/// Whether a VirtualService routes mesh traffic anywhere: bound to the mesh, or with a match
/// that names the mesh itself.
fn binds_mesh(vs: &VirtualService) -> bool {
    let gateways = &vs.spec.gateways;
    gateways.is_empty()
        || gateways.iter().any(|g| g == MESH_GATEWAY)
        || vs
            .spec
            .http
            .iter()
            .flat_map(|r| &r.matches)
            .any(|m| m.gateways.iter().any(|g| g == MESH_GATEWAY))
        || vs
            .spec
            .tcp
            .iter()
            .flat_map(|r| &r.matches)
            .any(|m| m.gateways.iter().any(|g| g == MESH_GATEWAY))
}

/// A match applies to the mesh: its own `gateways` override the VirtualService's.
fn match_binds_mesh(gateways: &[String], vs_mesh: bool) -> bool {
    if gateways.is_empty() {
        vs_mesh
    } else {
        gateways.iter().any(|g| g == MESH_GATEWAY)
    }
}

/// One route being compiled for one port.
struct RouteContext<'c, 'a, 'p> {
    compiler: &'c Compiler<'a, 'p>,
    served: &'c Served,
    vs: &'a VirtualService,
    path: &'c str,
    clusters: &'c mut BTreeSet<ClusterKey>,
    notes: &'c mut Vec<TranslateProblem>,
    context: PortContext,
}

impl RouteContext<'_, '_, '_> {
    fn note(&mut self, path: String, reason: &str) {
        self.notes.push(TranslateProblem::Unsupported {
            path,
            reason: reason.to_owned(),
        });
    }

    fn invalid(&self, path: String, value: &str, reason: String) -> TranslateProblem {
        TranslateProblem::InvalidValue {
            path,
            value: value.to_owned(),
            reason,
            service: self.served.hostname.clone(),
        }
    }

    fn duration(
        &self,
        path: String,
        value: &DurationString,
    ) -> Result<prost_types::Duration, TranslateProblem> {
        duration(value).map_err(|reason| self.invalid(path, &value.0, reason))
    }

    /// A destination resolved to its cluster, named as Istio names it
    /// (`GetDestinationCluster`: the destination's port, else the service's only port, else the
    /// port the request arrived on). A destination that resolves to nothing Istio would build a
    /// cluster for (an unknown host, port or subset) keeps that name without a cluster behind
    /// it, as istiod does: the waypoint answers what is routed there with 503 `NC` while the
    /// other routes of the VirtualService keep working, and the problem is reported.
    fn destination(&mut self, destination: &net::Destination, path: String) -> wp::Destination {
        let service = self.served.hostname.clone();
        let host = qualify_host(
            self.compiler.settings,
            &destination.host,
            namespace_of(&self.vs.metadata),
        );
        let subset = destination.subset.clone().unwrap_or_default();
        let target = self.compiler.services.get(&host).copied();
        let ports: Vec<u32> = target
            .map(|t| tcp_service_ports(t).map(port_number).collect())
            .unwrap_or_default();
        let port = match (&destination.port, ports.as_slice()) {
            (Some(selector), _) => selector.number,
            (None, [only]) => *only,
            (None, _) => self.context.port,
        };
        let key = ClusterKey {
            host: host.clone(),
            subset: subset.clone(),
            port,
        };
        let cluster = key.name();
        let problem = if target.is_none() {
            Some(TranslateProblem::UnknownHost {
                path,
                host: host.clone(),
                subset: subset.clone(),
                port,
                service,
            })
        } else if !ports.contains(&port) {
            Some(match destination.port {
                Some(_) => TranslateProblem::UnknownPort {
                    path: format!("{path}.port.number"),
                    host: host.clone(),
                    subset: subset.clone(),
                    port,
                    service,
                },
                None => TranslateProblem::AmbiguousPort {
                    path,
                    host: host.clone(),
                    subset: subset.clone(),
                    port,
                    service,
                },
            })
        } else if !subset.is_empty()
            && self
                .compiler
                .destination_rule(&host)
                .is_none_or(|rule| rule.subset(&subset).is_none())
        {
            Some(TranslateProblem::UnknownSubset {
                path: format!("{path}.subset"),
                host: host.clone(),
                subset: subset.clone(),
                port,
                service,
            })
        } else {
            None
        };
        match problem {
            Some(problem) => self.notes.push(problem),
            None => {
                self.clusters.insert(key);
            }
        }
        wp::Destination {
            host,
            subset,
            port,
            cluster,
        }
    }

    fn http_route(
        &mut self,
        route: &HttpRoute,
        vs_mesh: bool,
    ) -> Result<Option<wp::HttpRoute>, TranslateProblem> {
        let path = self.path.to_owned();
        let mut matches = Vec::new();
        for m in &route.matches {
            if !match_binds_mesh(&m.gateways, vs_mesh)
                || (self.context.restrict && m.port.is_some_and(|p| p != self.context.port))
            {
                continue;
            }
            let mut compiled = http_match(m);
            if self.context.restrict {
                compiled.port = self.context.port;
            }
            matches.push(compiled);
        }
        if route.matches.is_empty() {
            if !vs_mesh {
                return Ok(None);
            }
            if self.context.restrict {
                matches.push(wp::HttpMatchRequest {
                    port: self.context.port,
                    ..Default::default()
                });
            }
        } else if matches.is_empty() {
            return Ok(None);
        }
        let mut destinations = Vec::new();
        for (j, d) in route.route.iter().enumerate() {
            let Some(destination) = &d.destination else {
                continue;
            };
            destinations.push(wp::HttpRouteDestination {
                destination: Some(
                    self.destination(destination, format!("{path}.route[{j}].destination")),
                ),
                weight: d.weight.unwrap_or(0).max(0),
                headers: d.headers.as_ref().map(headers),
            });
        }
        let mut mirrors = Vec::new();
        if let Some(mirror) = &route.mirror {
            let value = route
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(route.mirror_percent().map(f64::from))
                .unwrap_or(100.0);
            mirrors.push(wp::HttpMirrorPolicy {
                destination: Some(self.destination(mirror, format!("{path}.mirror"))),
                percentage: Some(wp::Percent { value }),
            });
        }
        for (j, mirror) in route.mirrors.iter().enumerate() {
            let Some(destination) = &mirror.destination else {
                continue;
            };
            mirrors.push(wp::HttpMirrorPolicy {
                destination: Some(
                    self.destination(destination, format!("{path}.mirrors[{j}].destination")),
                ),
                percentage: Some(wp::Percent {
                    value: mirror.percentage.as_ref().map_or(100.0, |p| p.value),
                }),
            });
        }
        let timeout = match &route.timeout {
            None => None,
            Some(value) => Some(self.duration(format!("{path}.timeout"), value)?)
                .filter(|d| *d != prost_types::Duration::default()),
        };
        let retries = match &route.retries {
            None => default_retries(),
            Some(retry) => {
                if retry.retry_remote_localities.is_some() {
                    self.note(
                        format!("{path}.retries.retryRemoteLocalities"),
                        "localities are not known to waypoints; ignored",
                    );
                }
                if retry.backoff.is_some() {
                    self.note(
                        format!("{path}.retries.backoff"),
                        "waypoints retry with their own backoff; ignored",
                    );
                }
                let retry_on = match retry.retry_on.as_deref() {
                    None | Some("") => Some(DEFAULT_RETRY_ON.to_owned()),
                    Some(on) => retry_conditions(on),
                };
                wp::HttpRetry {
                    // Istio: zero (or less) attempts disable retries, and so does a list of
                    // conditions that retries nothing.
                    attempts: if retry_on.is_some() {
                        retry.attempts.max(0)
                    } else {
                        0
                    },
                    per_try_timeout: retry
                        .per_try_timeout
                        .as_ref()
                        .map(|t| self.duration(format!("{path}.retries.perTryTimeout"), t))
                        .transpose()?,
                    retry_on: retry_on.unwrap_or_default(),
                }
            }
        };
        let direct_response = match &route.direct_response {
            None => None,
            Some(response) => Some(self.direct_response(response)?),
        };
        let fault = match &route.fault {
            None => None,
            Some(fault) => Some(self.fault(fault)?),
        };
        let cors_policy = match &route.cors_policy {
            None => None,
            Some(cors) => Some(self.cors(cors)?),
        };
        Ok(Some(wp::HttpRoute {
            name: route.name.clone().unwrap_or_default(),
            r#match: matches,
            route: destinations,
            redirect: route.redirect.as_ref().map(redirect),
            direct_response,
            rewrite: route.rewrite.as_ref().map(|r| wp::HttpRewrite {
                uri: r.uri.clone().unwrap_or_default(),
                authority: r.authority.clone().unwrap_or_default(),
                uri_regex_rewrite: r.uri_regex_rewrite.as_ref().map(|rr| wp::RegexRewrite {
                    r#match: rr.pattern.clone(),
                    rewrite: rr.rewrite.clone(),
                }),
            }),
            timeout,
            // Redirects and direct responses never reach an upstream to retry.
            retries: (route.redirect.is_none() && route.direct_response.is_none())
                .then_some(retries),
            fault,
            mirrors,
            cors_policy,
            headers: route.headers.as_ref().map(headers),
            virtual_service: String::new(),
        }))
    }

    fn direct_response(
        &self,
        response: &net::HttpDirectResponse,
    ) -> Result<wp::HttpDirectResponse, TranslateProblem> {
        use wp::http_body::Specifier;
        let path = format!("{}.directResponse.body", self.path);
        let body = match &response.body {
            None => None,
            Some(body) => Some(wp::HttpBody {
                specifier: Some(match (&body.string, &body.bytes) {
                    (Some(text), _) => Specifier::String(text.clone()),
                    (None, Some(bytes)) => Specifier::Bytes(
                        base64::engine::general_purpose::STANDARD
                            .decode(bytes)
                            .map_err(|e| {
                                self.invalid(format!("{path}.bytes"), bytes, e.to_string())
                            })?,
                    ),
                    (None, None) => Specifier::String(String::new()),
                }),
            }),
        };
        Ok(wp::HttpDirectResponse {
            status: response.status,
            body,
        })
    }

    fn fault(
        &mut self,
        fault: &net::HttpFaultInjection,
    ) -> Result<wp::HttpFaultInjection, TranslateProblem> {
        use wp::http_fault_injection::{Abort, Delay, abort::ErrorType};
        let path = format!("{}.fault", self.path);
        // Istio: a fault without a percentage applies to no request at all.
        let delay = match &fault.delay {
            None => None,
            Some(delay) => match &delay.fixed_delay {
                Some(fixed) => Some(Delay {
                    fixed_delay: Some(self.duration(format!("{path}.delay.fixedDelay"), fixed)?),
                    percentage: Some(wp::Percent {
                        value: delay
                            .percentage
                            .as_ref()
                            .map(|p| p.value)
                            .or(delay.percent.map(f64::from))
                            .unwrap_or(0.0),
                    }),
                }),
                None => {
                    self.note(
                        format!("{path}.delay.exponentialDelay"),
                        "exponential delays are not supported (as in Istio); the delay is ignored",
                    );
                    None
                }
            },
        };
        let abort = match &fault.abort {
            None => None,
            Some(abort) => {
                let error_type = if let Some(status) = abort.http_status {
                    Some(ErrorType::HttpStatus(status))
                } else if let Some(status) = &abort.grpc_status {
                    Some(ErrorType::GrpcStatus(status.clone()))
                } else {
                    self.note(
                        format!("{path}.abort.http2Error"),
                        "HTTP/2 error aborts are not supported (as in Istio); the abort is ignored",
                    );
                    None
                };
                error_type.map(|error_type| Abort {
                    error_type: Some(error_type),
                    percentage: Some(wp::Percent {
                        value: abort.percentage.as_ref().map_or(0.0, |p| p.value),
                    }),
                })
            }
        };
        Ok(wp::HttpFaultInjection { delay, abort })
    }

    fn cors(&mut self, cors: &net::CorsPolicy) -> Result<wp::CorsPolicy, TranslateProblem> {
        use wp::string_match::MatchType;
        let path = format!("{}.corsPolicy", self.path);
        if cors.unmatched_preflights == Some(net::UnmatchedPreflights::Ignore) {
            self.note(
                format!("{path}.unmatchedPreflights"),
                "waypoints forward unmatched preflight requests; IGNORE is not supported",
            );
        }
        let mut allow_origins: Vec<wp::StringMatch> =
            cors.allow_origins.iter().map(string_match).collect();
        // `allowOrigin` is the deprecated exact-match list.
        allow_origins.extend(cors.allow_origin.iter().map(|o| wp::StringMatch {
            match_type: Some(MatchType::Exact(o.clone())),
        }));
        Ok(wp::CorsPolicy {
            allow_origins,
            allow_methods: cors.allow_methods.clone(),
            allow_headers: cors.allow_headers.clone(),
            expose_headers: cors.expose_headers.clone(),
            max_age: cors
                .max_age
                .as_ref()
                .map(|m| self.duration(format!("{path}.maxAge"), m))
                .transpose()?,
            allow_credentials: cors.allow_credentials,
        })
    }

    fn tcp_route(
        &mut self,
        route: &net::TcpRoute,
        vs_mesh: bool,
    ) -> Result<Option<wp::TcpRoute>, TranslateProblem> {
        let path = self.path.to_owned();
        let mut matches = Vec::new();
        for m in &route.matches {
            if !match_binds_mesh(&m.gateways, vs_mesh)
                || (self.context.restrict && m.port.is_some_and(|p| p != self.context.port))
            {
                continue;
            }
            matches.push(wp::L4MatchAttributes {
                destination_subnets: m.destination_subnets.clone(),
                port: if self.context.restrict {
                    self.context.port
                } else {
                    m.port.unwrap_or(0)
                },
                source_labels: m.source_labels.clone(),
                source_namespace: m.source_namespace.clone().unwrap_or_default(),
            });
        }
        if route.matches.is_empty() {
            if !vs_mesh {
                return Ok(None);
            }
            if self.context.restrict {
                matches.push(wp::L4MatchAttributes {
                    port: self.context.port,
                    ..Default::default()
                });
            }
        } else if matches.is_empty() {
            return Ok(None);
        }
        let mut destinations = Vec::new();
        for (j, d) in route.route.iter().enumerate() {
            let Some(destination) = &d.destination else {
                continue;
            };
            destinations.push(wp::RouteDestination {
                destination: Some(
                    self.destination(destination, format!("{path}.route[{j}].destination")),
                ),
                weight: d.weight.unwrap_or(0).max(0),
            });
        }
        Ok(Some(wp::TcpRoute {
            r#match: matches,
            route: destinations,
            virtual_service: String::new(),
        }))
    }
}

/// A route's `retryOn` as Envoy receives it from Istio: numbers are status codes (retried as
/// `retriable-status-codes`); `retriable-status-codes` without any number retries no status
/// (the mesh default's 503 is replaced, not kept), so it is dropped. `None` when nothing is left.
fn retry_conditions(retry_on: &str) -> Option<String> {
    let conditions: Vec<&str> = retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let has_codes = conditions.iter().any(|c| c.parse::<u16>().is_ok());
    let kept: Vec<&str> = conditions
        .into_iter()
        .filter(|c| has_codes || *c != "retriable-status-codes")
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// Istio's retry policy for routes that set none.
fn default_retries() -> wp::HttpRetry {
    wp::HttpRetry {
        attempts: DEFAULT_RETRY_ATTEMPTS,
        per_try_timeout: None,
        retry_on: DEFAULT_RETRY_ON.to_owned(),
    }
}

fn string_match(m: &net::StringMatch) -> wp::StringMatch {
    use wp::string_match::MatchType;
    let match_type = if let Some(exact) = &m.exact {
        Some(MatchType::Exact(exact.clone()))
    } else if let Some(prefix) = &m.prefix {
        Some(MatchType::Prefix(prefix.clone()))
    } else {
        m.regex.clone().map(MatchType::Regex)
    };
    wp::StringMatch { match_type }
}

/// Header maps by lowercase name: HTTP header names are case-insensitive.
fn header_matches(map: &BTreeMap<String, net::StringMatch>) -> BTreeMap<String, wp::StringMatch> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), string_match(v)))
        .collect()
}

fn http_match(m: &net::HttpMatchRequest) -> wp::HttpMatchRequest {
    wp::HttpMatchRequest {
        name: m.name.clone().unwrap_or_default(),
        uri: m.uri.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        headers: header_matches(&m.headers),
        port: m.port.unwrap_or(0),
        source_labels: m.source_labels.clone(),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), string_match(v)))
            .collect(),
        ignore_uri_case: m.ignore_uri_case,
        without_headers: header_matches(&m.without_headers),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
    }
}

fn header_operations(ops: &net::HeaderOperations) -> wp::HeaderOperations {
    wp::HeaderOperations {
        set: ops.set.clone(),
        add: ops.add.clone(),
        remove: ops.remove.clone(),
    }
}

fn headers(h: &net::Headers) -> wp::Headers {
    wp::Headers {
        request: h.request.as_ref().map(header_operations),
        response: h.response.as_ref().map(header_operations),
    }
}

fn redirect(r: &net::HttpRedirect) -> wp::HttpRedirect {
    use wp::http_redirect::{RedirectPort, RedirectPortSelection};
    let redirect_port = match (r.port, r.derive_port) {
        (Some(port), _) => Some(RedirectPort::Port(port)),
        (None, Some(net::RedirectPortSelection::FromRequestPort)) => Some(
            RedirectPort::DerivePort(RedirectPortSelection::FromRequestPort as i32),
        ),
        (None, Some(net::RedirectPortSelection::FromProtocolDefault)) => Some(
            RedirectPort::DerivePort(RedirectPortSelection::FromProtocolDefault as i32),
        ),
        (None, None) => None,
    };
    wp::HttpRedirect {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
        redirect_port,
        scheme: r.scheme.clone().unwrap_or_default(),
        redirect_code: r.redirect_code.unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic policies.

/// A cluster's settings before translation.
#[derive(Debug, Default, Clone)]
struct EffectivePolicy {
    load_balancer: Option<LoadBalancerSettings>,
    connection_pool: Option<ConnectionPoolSettings>,
    outlier_detection: Option<OutlierDetection>,
    tls: Option<net::ClientTlsSettings>,
}

impl EffectivePolicy {
    fn of(policy: &TrafficPolicy) -> Self {
        Self {
            load_balancer: policy.load_balancer.clone(),
            connection_pool: policy.connection_pool.clone(),
            outlier_detection: policy.outlier_detection.clone(),
            tls: policy.tls.clone(),
        }
    }

    /// Port-level settings replace the destination-level ones entirely: Istio documents that
    /// they are not inherited field by field, and omitted ones fall back to the defaults.
    fn with_port_level(mut self, policy: &TrafficPolicy, port: u32) -> Self {
        if let Some(port_level) = policy
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().map(|s| s.number) == Some(port))
        {
            self = Self {
                load_balancer: port_level.load_balancer.clone(),
                connection_pool: port_level.connection_pool.clone(),
                outlier_detection: port_level.outlier_detection.clone(),
                tls: port_level.tls.clone(),
            };
        }
        self
    }
}

/// Istio's `MergeTrafficPolicy`: the rule's policy (with its port-level settings for `port`),
/// overridden field by field by the subset's, then by the subset's port-level settings.
fn effective_policy(
    top: Option<&TrafficPolicy>,
    subset: Option<&TrafficPolicy>,
    port: u32,
) -> EffectivePolicy {
    let mut merged = top
        .map(|p| EffectivePolicy::of(p).with_port_level(p, port))
        .unwrap_or_default();
    if let Some(subset) = subset {
        if subset.load_balancer.is_some() {
            merged.load_balancer = subset.load_balancer.clone();
        }
        if subset.connection_pool.is_some() {
            merged.connection_pool = subset.connection_pool.clone();
        }
        if subset.outlier_detection.is_some() {
            merged.outlier_detection = subset.outlier_detection.clone();
        }
        if subset.tls.is_some() {
            merged.tls = subset.tls.clone();
        }
        merged = merged.with_port_level(subset, port);
    }
    merged
}

type CompiledPolicy = (
    Option<wp::LoadBalancerSettings>,
    Option<wp::ConnectionPoolSettings>,
    Option<wp::OutlierDetection>,
);

impl EffectivePolicy {
    /// The proto form, with notes on what waypoints leave out.
    fn compile(&self) -> (CompiledPolicy, Vec<TranslateProblem>) {
        let mut notes = Vec::new();
        let mut note = |path: &str, reason: &str| {
            notes.push(TranslateProblem::Unsupported {
                path: format!("spec.trafficPolicy.{path}"),
                reason: reason.to_owned(),
            })
        };
        let mut optional_duration = |value: &Option<DurationString>, path: &str| {
            value.as_ref().and_then(|v| match duration(v) {
                Ok(d) => Some(d),
                Err(reason) => {
                    note(path, &format!("{:?}: {reason}; ignored", v.0));
                    None
                }
            })
        };
        let pool = self
            .connection_pool
            .as_ref()
            .map(|pool| wp::ConnectionPoolSettings {
                tcp: pool
                    .tcp
                    .as_ref()
                    .map(|tcp| wp::connection_pool_settings::TcpSettings {
                        max_connections: tcp.max_connections.unwrap_or(0),
                        connect_timeout: optional_duration(
                            &tcp.connect_timeout,
                            "connectionPool.tcp.connectTimeout",
                        ),
                        max_connection_duration: optional_duration(
                            &tcp.max_connection_duration,
                            "connectionPool.tcp.maxConnectionDuration",
                        ),
                        idle_timeout: optional_duration(
                            &tcp.idle_timeout,
                            "connectionPool.tcp.idleTimeout",
                        ),
                    }),
                http: pool
                    .http
                    .as_ref()
                    .map(|http| wp::connection_pool_settings::HttpSettings {
                        http1_max_pending_requests: http.http1_max_pending_requests.unwrap_or(0),
                        http2_max_requests: http.http2_max_requests.unwrap_or(0),
                        max_requests_per_connection: http.max_requests_per_connection.unwrap_or(0),
                        max_retries: http.max_retries.unwrap_or(0),
                        idle_timeout: optional_duration(
                            &http.idle_timeout,
                            "connectionPool.http.idleTimeout",
                        ),
                        max_concurrent_streams: http.max_concurrent_streams.unwrap_or(0),
                    }),
            });
        let outlier = self.outlier_detection.as_ref().map(|o| {
            // Istio: the deprecated `consecutiveErrors` counts gateway errors (502, 503, 504)
            // and turns the 5xx count off; without either, Envoy's default of 5 consecutive
            // 5xx applies.
            let legacy = o
                .consecutive_errors
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0);
            wp::OutlierDetection {
                consecutive_gateway_errors: o.consecutive_gateway_errors.or(legacy),
                consecutive_5xx_errors: match (o.consecutive5xx_errors, legacy) {
                    (Some(n), _) => Some(n),
                    (None, Some(_)) => Some(0),
                    (None, None) => Some(DEFAULT_CONSECUTIVE_5XX),
                },
                interval: optional_duration(&o.interval, "outlierDetection.interval"),
                base_ejection_time: optional_duration(
                    &o.base_ejection_time,
                    "outlierDetection.baseEjectionTime",
                ),
                max_ejection_percent: o.max_ejection_percent.unwrap_or(0),
                min_health_percent: o.min_health_percent.unwrap_or(0),
            }
        });
        let lb = self
            .load_balancer
            .as_ref()
            .and_then(|lb| load_balancer(lb, &mut note));
        if let Some(pool) = &self.connection_pool {
            if pool.tcp.as_ref().is_some_and(|t| t.tcp_keepalive.is_some()) {
                note(
                    "connectionPool.tcp.tcpKeepalive",
                    "not supported by waypoints; ignored",
                );
            }
            if let Some(http) = &pool.http
                && (http.h2_upgrade_policy.is_some() || http.use_client_protocol.is_some())
            {
                note(
                    "connectionPool.http",
                    "h2UpgradePolicy and useClientProtocol are not supported by waypoints (they keep the client's protocol); ignored",
                );
            }
        }
        if let Some(o) = &self.outlier_detection
            && (o.split_external_local_origin_errors.is_some()
                || o.consecutive_local_origin_failures.is_some())
        {
            note(
                "outlierDetection",
                "local-origin failures are counted with the others by waypoints; splitExternalLocalOriginErrors and consecutiveLocalOriginFailures are ignored",
            );
        }
        if let Some(tls) = &self.tls
            && matches!(
                tls.mode,
                Some(net::ClientTlsMode::Simple | net::ClientTlsMode::Mutual)
            )
        {
            note(
                "tls",
                "waypoints reach mesh endpoints over HBONE and plain endpoints over TCP; SIMPLE and MUTUAL origination is not supported and is ignored",
            );
        }
        ((lb, pool, outlier), notes)
    }
}

fn load_balancer(
    lb: &LoadBalancerSettings,
    note: &mut impl FnMut(&str, &str),
) -> Option<wp::LoadBalancerSettings> {
    use wp::load_balancer_settings::{
        ConsistentHashLb, LbPolicy, SimpleLb,
        consistent_hash_lb::{HashKey, HttpCookie},
    };
    if lb.locality_lb_setting.is_some() {
        note(
            "loadBalancer.localityLbSetting",
            "localities are not known to waypoints; ignored",
        );
    }
    if lb.warmup_duration_secs.is_some() {
        note(
            "loadBalancer.warmupDurationSecs",
            "slow start is not supported by waypoints; ignored",
        );
    }
    if let Some(hash) = &lb.consistent_hash {
        if hash.ring_hash.is_some() || hash.maglev.is_some() || hash.minimum_ring_size.is_some() {
            note(
                "loadBalancer.consistentHash",
                "waypoints hash with their own table; ringHash, maglev and minimumRingSize are ignored",
            );
        }
        let key = if let Some(header) = &hash.http_header_name {
            HashKey::HttpHeaderName(header.clone())
        } else if let Some(cookie) = &hash.http_cookie {
            HashKey::HttpCookie(HttpCookie {
                name: cookie.name.clone(),
                path: cookie.path.clone().unwrap_or_default(),
                ttl: cookie.ttl.as_ref().and_then(|t| duration(t).ok()),
            })
        } else if hash.use_source_ip == Some(true) {
            HashKey::UseSourceIp(true)
        } else if let Some(name) = &hash.http_query_parameter_name {
            HashKey::HttpQueryParameterName(name.clone())
        } else {
            note(
                "loadBalancer.consistentHash",
                "no hash key; the default load balancer is used",
            );
            return None;
        };
        return Some(wp::LoadBalancerSettings {
            lb_policy: Some(LbPolicy::ConsistentHash(ConsistentHashLb {
                hash_key: Some(key),
            })),
        });
    }
    let simple = match lb.simple? {
        net::SimpleLb::Unspecified => SimpleLb::Unspecified,
        net::SimpleLb::LeastConn => SimpleLb::LeastConn,
        net::SimpleLb::Random => SimpleLb::Random,
        net::SimpleLb::RoundRobin => SimpleLb::RoundRobin,
        net::SimpleLb::LeastRequest => SimpleLb::LeastRequest,
        net::SimpleLb::Passthrough => {
            note(
                "loadBalancer.simple",
                "PASSTHROUGH needs the original destination, which waypoints do not route to; the default load balancer is used",
            );
            return None;
        }
    };
    Some(wp::LoadBalancerSettings {
        lb_policy: Some(LbPolicy::Simple(simple as i32)),
    })
}

// ---------------------------------------------------------------------------------------------
// Authorization.

/// Rules in the waypoint's form. Attributes no request can carry here (JWT principals and
/// claims: waypoints apply no RequestAuthentication) are resolved as absent, exactly: a rule
/// that requires one never matches and is left out; a negated one always holds and is dropped.
/// Attributes the waypoint cannot read fail closed: an ALLOW rule needing one is left out, a
/// DENY rule ignores it (and so denies more).
fn l7_rules(
    rules: &[crate::model::security::Rule],
    action: wp::l7_authorization::Action,
    notes: &mut Vec<TranslateProblem>,
) -> Vec<wp::Rule> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let mut never = false;
        let mut from = Vec::new();
        if let Some(sources) = &rule.from {
            for (j, f) in sources.iter().enumerate() {
                let Some(source) = &f.source else { continue };
                if !source.request_principals.is_empty() {
                    notes.push(TranslateProblem::Unsupported {
                        path: format!("{path}.from[{j}].source.requestPrincipals"),
                        reason: "waypoints validate no JWTs, so no request has a request principal; this source never matches".to_owned(),
                    });
                    continue;
                }
                // Trust domains are not matched: fail closed. An ALLOW source needing one never
                // matches; a DENY source applies to every trust domain.
                let trust_domains =
                    !source.trust_domains.is_empty() || !source.not_trust_domains.is_empty();
                if trust_domains && action == wp::l7_authorization::Action::Allow {
                    notes.push(TranslateProblem::Unsupported {
                        path: format!("{path}.from[{j}].source.trustDomains"),
                        reason: "trust domains are not matched by waypoints; this ALLOW source never matches".to_owned(),
                    });
                    continue;
                }
                from.push(wp::rule::From {
                    source: Some(l7_source(source)),
                });
            }
            if !sources.is_empty() && from.is_empty() {
                never = true;
            }
        }
        let mut to = Vec::new();
        for (j, operation) in rule
            .to
            .iter()
            .flatten()
            .filter_map(|t| t.operation.as_ref())
            .enumerate()
        {
            let (ports, not_ports) =
                match (port_list(&operation.ports), port_list(&operation.not_ports)) {
                    (Ok(ports), Ok(not_ports)) => (ports, not_ports),
                    _ => {
                        // Validation admits none of these; should one get here, fail closed.
                        let consequence = if action == wp::l7_authorization::Action::Allow {
                            never = true;
                            "the ALLOW rule is left out"
                        } else {
                            "the DENY rule applies to every port"
                        };
                        notes.push(TranslateProblem::Unsupported {
                            path: format!("{path}.to[{j}].operation.ports"),
                            reason: format!("not a port number; {consequence}"),
                        });
                        (Vec::new(), Vec::new())
                    }
                };
            to.push(wp::rule::To {
                operation: Some(wp::Operation {
                    hosts: operation.hosts.clone(),
                    ports,
                    methods: operation.methods.clone(),
                    paths: operation.paths.clone(),
                    not_hosts: operation.not_hosts.clone(),
                    not_ports,
                    not_methods: operation.not_methods.clone(),
                    not_paths: operation.not_paths.clone(),
                }),
            });
        }
        let mut when = Vec::new();
        for (j, condition) in rule.when.iter().enumerate() {
            let key = condition.key.as_str();
            if key.starts_with("request.auth.") {
                if !condition.values.is_empty() {
                    notes.push(TranslateProblem::Unsupported {
                        path: format!("{path}.when[{j}]"),
                        reason: format!("waypoints validate no JWTs, so no request has {key}; the rule never matches"),
                    });
                    never = true;
                }
                continue;
            }
            if key.starts_with("experimental.envoy.filters.") {
                let consequence = if action == wp::l7_authorization::Action::Allow {
                    never = true;
                    "the ALLOW rule is left out"
                } else {
                    "the DENY rule applies without it"
                };
                notes.push(TranslateProblem::Unsupported {
                    path: format!("{path}.when[{j}]"),
                    reason: format!("{key} is not available to waypoints; {consequence}"),
                });
                continue;
            }
            when.push(l7_condition(condition));
        }
        if never {
            continue;
        }
        out.push(wp::Rule { from, to, when });
    }
    out
}

fn port_list(values: &[String]) -> Result<Vec<u32>, ()> {
    values
        .iter()
        .map(|v| v.parse::<u16>().map(u32::from).map_err(|_| ()))
        .collect()
}

/// `ns/sa` as a principal pattern matching that account in any trust domain, which is what
/// `serviceAccounts` means.
fn account_principal(account: &str) -> String {
    match account.split_once('/') {
        Some((namespace, name)) => format!("*/ns/{namespace}/sa/{name}"),
        None => account.to_owned(),
    }
}

fn l7_source(s: &crate::model::security::Source) -> wp::Source {
    let principals = s
        .principals
        .iter()
        .map(|p| resolve::principal(p))
        .chain(s.service_accounts.iter().map(|a| account_principal(a)))
        .collect();
    let not_principals = s
        .not_principals
        .iter()
        .map(|p| resolve::principal(p))
        .chain(s.not_service_accounts.iter().map(|a| account_principal(a)))
        .collect();
    wp::Source {
        principals,
        // Never set here: sources that need one never match (see `l7_rules`), and
        // `notRequestPrincipals` always holds.
        request_principals: Vec::new(),
        namespaces: s.namespaces.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_principals,
        not_request_principals: Vec::new(),
        not_namespaces: s.not_namespaces.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
    }
}

fn l7_condition(c: &crate::model::security::Condition) -> wp::Condition {
    let inline = c
        .key
        .strip_prefix("request.experimental.inline.headers")
        .map(|rest| format!("request.headers{rest}"));
    let (key, values, not_values) = match c.key.as_str() {
        "source.serviceAccount" => (
            "source.principal".to_owned(),
            c.values.iter().map(|a| account_principal(a)).collect(),
            c.not_values.iter().map(|a| account_principal(a)).collect(),
        ),
        "source.principal" => (
            c.key.clone(),
            c.values.iter().map(|p| resolve::principal(p)).collect(),
            c.not_values.iter().map(|p| resolve::principal(p)).collect(),
        ),
        _ => (
            inline.unwrap_or_else(|| c.key.clone()),
            c.values.clone(),
            c.not_values.clone(),
        ),
    };
    wp::Condition {
        key,
        values,
        not_values,
    }
}

/// Policies that target a Service no waypoint serves: Istio enforces them nowhere.
fn unenforced_policies(index: &ConfigIndex) -> Vec<TranslateError> {
    let mut out = Vec::new();
    for policy in index.authorization_policies.values() {
        let namespace = namespace_of(&policy.metadata);
        for target in policy
            .spec
            .target_ref
            .iter()
            .chain(&policy.spec.target_refs)
        {
            let group = target.group.as_deref().unwrap_or("");
            if target.kind != "Service" || !(group.is_empty() || group == "core") {
                continue;
            }
            let uses_waypoint = index
                .services
                .get(&format!("{namespace}/{}", target.name))
                .and_then(|s| service_waypoint(index, s))
                .is_some();
            if !uses_waypoint {
                out.push(TranslateError::new(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::UnenforcedPolicy {
                        service: format!("{namespace}/{}", target.name),
                    },
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
