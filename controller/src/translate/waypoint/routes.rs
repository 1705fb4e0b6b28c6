//! A served service's route tables: the VirtualServices and routes that route it, compiled
//! once per port, and the default route to the service itself.

use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use k8s_openapi::api::core::v1::Service;
use weft_proto::waypoint as wp;

use super::gateway_routes::RouteGroup;
use super::operation::default_operation;
use super::route::{Binding, PortContext, RouteContext, Served, default_retries};
use super::{
    ClusterKey, Compiler, age_key, exported_to, is_opaque, port_number, port_protocol,
    tcp_service_ports,
};
use crate::model::ResourceKind;
use crate::model::networking::{self as net, MESH_GATEWAY, VirtualService};
use crate::translate::TranslateProblem;
use crate::translate::gateway_api::{self, MeshRoute, Parent};
use crate::translate::resolve::{self, name_of, namespace_of, qualify_host};

impl<'a> Compiler<'a, '_> {
    pub(super) fn service(&mut self, service: &'a Service) -> wp::WaypointService {
        let ports = tcp_service_ports(service)
            .map(|port| wp::ServicePort {
                port: port_number(port),
                name: port.name.clone().unwrap_or_default(),
                protocol: port_protocol(port) as i32,
                target_port: resolve::numeric_target_port(port),
            })
            .collect();
        self.served_host(wp::WaypointService {
            hostname: resolve::hostname(service, self.settings),
            name: name_of(&service.metadata).to_owned(),
            namespace: namespace_of(&service.metadata).to_owned(),
            vips: resolve::service_vips(service)
                .iter()
                .map(ToString::to_string)
                .collect(),
            ports,
            http_routes: Vec::new(),
            tcp_routes: Vec::new(),
            dynamic_dns: false,
            // Set once every served service is known (`waypoint_config`).
            telemetry: None,
        })
    }

    /// A served host (a Service's, or a ServiceEntry's) with its route tables: its own routes,
    /// then the default route to the host itself on each port.
    pub(super) fn served_host(&mut self, mut host: wp::WaypointService) -> wp::WaypointService {
        let hostname = host.hostname.clone();
        let ports = &host.ports;
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
        let mesh_routes = Rc::clone(&self.mesh_routes);
        let groups = self.route_groups(&mesh_routes, &served);
        // Every source's routes, in order: the first that matches a request routes it.
        let mut http_routes = Vec::new();
        let mut tcp_routes = Vec::new();
        for source in self.route_sources(&served, &host.namespace, groups) {
            let (http, tcp) = match source {
                RouteSource::VirtualService(vs) => self.routes_from(&served, vs),
                RouteSource::Gateway(group) => self.gateway_routes(&served, &group),
            };
            http_routes.extend(http);
            tcp_routes.extend(tcp);
        }
        // The default: the service itself, for whatever no route matched.
        for context in contexts(&served.http_ports) {
            http_routes.push(wp::HttpRoute {
                name: "default".to_owned(),
                r#match: context.port_match(),
                route: vec![wp::HttpRouteDestination {
                    destination: Some(self.service_itself(&hostname, context.port)),
                    weight: 0,
                    headers: None,
                }],
                retries: Some(default_retries()),
                operations: vec![default_operation(&hostname, context.port)],
                ..Default::default()
            });
        }
        for context in contexts(&served.tcp_ports) {
            tcp_routes.push(wp::TcpRoute {
                r#match: context.port_match(),
                route: vec![wp::RouteDestination {
                    destination: Some(self.service_itself(&hostname, context.port)),
                    weight: 0,
                }],
                virtual_service: String::new(),
            });
        }
        host.http_routes = http_routes;
        host.tcp_routes = tcp_routes;
        host
    }

    /// The service itself on `port`, where its default routes go; its cluster is registered.
    fn service_itself(&mut self, hostname: &str, port: u32) -> wp::Destination {
        let key = ClusterKey {
            host: hostname.to_owned(),
            subset: String::new(),
            port,
        };
        let cluster = key.name();
        self.clusters.insert(key);
        wp::Destination {
            host: hostname.to_owned(),
            subset: String::new(),
            port,
            cluster,
        }
    }

    /// The Gateway API routes attached to `served`, grouped by their namespace as Istio
    /// merges them into one VirtualService per namespace and Service.
    fn route_groups<'r>(
        &self,
        routes: &'r [MeshRoute<'a>],
        served: &Served,
    ) -> Vec<RouteGroup<'r, 'a>> {
        let mut groups: BTreeMap<String, Vec<(&'r MeshRoute<'a>, Option<u32>)>> = BTreeMap::new();
        for route in routes {
            for parent_ref in &route.spec.parent_refs {
                if let Parent::Service { hostname, port, .. } =
                    gateway_api::parent(self.index, self.settings, route.namespace(), parent_ref)
                    && hostname == served.hostname
                {
                    groups
                        .entry(route.namespace().to_owned())
                        .or_default()
                        .push((route, port));
                }
            }
        }
        groups
            .into_iter()
            .map(|(namespace, mut routes)| {
                routes.sort_by(|(a, _), (b, _)| age_key(a.meta).cmp(&age_key(b.meta)));
                RouteGroup {
                    namespace,
                    routes,
                    route_set: None,
                }
            })
            .collect()
    }

    /// What routes `served`, in order, as Istio's waypoints take them since
    /// istio/istio#59484 (`buildWaypointInboundHTTPRouteConfig`): every VirtualService and
    /// Gateway API route group naming the host (Gateway API routes always name it exactly; a
    /// VirtualService bound to the mesh, visible to the waypoint by `exportTo`) whose namespace
    /// is the waypoint's or the service's (`getVirtualServiceForWaypoint`), their rules
    /// concatenated. The order is Istio's `VirtualServicesForGateway` for the waypoint's
    /// namespace: VirtualServices private to that namespace, then those exported to it by name,
    /// then the public ones with the Gateway API routes of the waypoint's own namespace first
    /// (the "consumer override"), each list by age (a group is as old as its oldest route).
    /// Routes of other namespaces naming the host are left out and reported.
    fn route_sources<'r>(
        &mut self,
        served: &Served,
        service_namespace: &str,
        groups: Vec<RouteGroup<'r, 'a>>,
    ) -> Vec<RouteSource<'r, 'a>> {
        let viewer = self.waypoint.namespace.clone();
        let dynamic_dns = self.entry_dynamic_dns(&served.hostname);
        let virtual_services = self
            .index
            .virtual_services
            .values()
            .filter(|vs| {
                exported_to(&vs.spec.export_to, namespace_of(&vs.metadata), &viewer)
                    && binds_mesh(vs)
            })
            .filter(|vs| {
                let namespace = namespace_of(&vs.metadata);
                vs.spec.hosts.iter().any(|h| {
                    let host = qualify_host(self.settings, h, namespace);
                    // A name under a `DYNAMIC_DNS` wildcard overlaps it: Istio's waypoint
                    // binds the VirtualService to the wildcard's service
                    // (`host.Name.Matches`), and its routes apply to every name under it.
                    resolve::host_covers(&host, &served.hostname)
                        || (dynamic_dns
                            && !host.starts_with('*')
                            && resolve::host_covers(&served.hostname, &host))
                })
            })
            .map(|vs| {
                let list = visibility_list(&vs.spec.export_to, namespace_of(&vs.metadata), &viewer);
                (RouteSource::VirtualService(vs), (list, 1u8))
            });
        let gateway = groups.into_iter().map(|group| {
            let own = u8::from(group.namespace != viewer);
            (RouteSource::Gateway(group), (2u8, own))
        });
        let mut candidates: Vec<_> = virtual_services.chain(gateway).collect();
        candidates.sort_by(|(a, ka), (b, kb)| {
            ka.cmp(kb)
                .then_with(|| age_key(a.meta()).cmp(&age_key(b.meta())))
        });
        let waypoint = format!("{viewer}/{}", self.waypoint.name);
        let mut sources = Vec::new();
        for (source, _) in candidates {
            let namespace = source.namespace();
            if namespace == viewer || namespace == service_namespace {
                sources.push(source);
                continue;
            }
            let outside = |path: &str| TranslateProblem::OutsideWaypointNamespaces {
                path: path.to_owned(),
                host: served.hostname.clone(),
                waypoint: waypoint.clone(),
            };
            match &source {
                RouteSource::VirtualService(vs) => self.report(
                    ResourceKind::VirtualService,
                    &vs.metadata,
                    outside("spec.hosts"),
                ),
                RouteSource::Gateway(group) => {
                    for (route, _) in &group.routes {
                        self.report(
                            route.kind.resource_kind(),
                            route.meta,
                            outside("spec.parentRefs"),
                        );
                    }
                }
            }
        }
        sources
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
        // Each rule, HTTP then TCP, for each port of its protocol, in a route context of its own.
        let rules = vs.spec.http.iter().enumerate().map(|(i, route)| {
            (
                format!("spec.http[{i}]"),
                &served.http_ports,
                Rule::Http(route),
            )
        });
        let rules = rules.chain(vs.spec.tcp.iter().enumerate().map(|(i, route)| {
            (
                format!("spec.tcp[{i}]"),
                &served.tcp_ports,
                Rule::Tcp(route),
            )
        }));
        let mut http_routes = Vec::new();
        let mut tcp_routes = Vec::new();
        for (path, ports, rule) in rules {
            if let Rule::Http(route) = rule
                && route.delegate.is_some()
            {
                notes.push(TranslateProblem::Unsupported {
                    path: format!("{path}.delegate"),
                    reason: "delegation applies to gateways only; the route is ignored".to_owned(),
                });
                continue;
            }
            for context in contexts(ports) {
                let mut route_context = RouteContext {
                    compiler: self,
                    served,
                    vs,
                    path: &path,
                    clusters: &mut *clusters,
                    notes: &mut *notes,
                    context,
                    binding: Binding::Mesh,
                };
                match rule {
                    Rule::Http(route) => {
                        if let Some(mut compiled) = route_context.http_route(route, mesh)? {
                            compiled.virtual_service = vs_key.clone();
                            http_routes.push(compiled);
                        }
                    }
                    Rule::Tcp(route) => {
                        if let Some(mut compiled) = route_context.tcp_route(route, mesh)? {
                            compiled.virtual_service = vs_key.clone();
                            tcp_routes.push(compiled);
                        }
                    }
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
}

/// One rule of a VirtualService, by protocol.
#[derive(Clone, Copy)]
enum Rule<'a> {
    Http(&'a net::HttpRoute),
    Tcp(&'a net::TcpRoute),
}

/// What routes a served service: a VirtualService, or the Gateway API routes of a namespace.
enum RouteSource<'r, 'a> {
    VirtualService(&'a VirtualService),
    Gateway(RouteGroup<'r, 'a>),
}

impl RouteSource<'_, '_> {
    fn meta(&self) -> &ObjectMeta {
        match self {
            RouteSource::VirtualService(vs) => &vs.metadata,
            RouteSource::Gateway(group) => group.oldest().meta,
        }
    }

    fn namespace(&self) -> &str {
        match self {
            RouteSource::VirtualService(vs) => namespace_of(&vs.metadata),
            RouteSource::Gateway(group) => &group.namespace,
        }
    }
}

/// Which of Istio's lists of VirtualServices visible to `viewer`'s namespace holds one with
/// `export_to` in `own` namespace (`initVirtualServices`): 0 private (exported to its own
/// namespace, the viewer's), 1 exported to the viewer by name, 2 public (`*`, or no `exportTo`).
fn visibility_list(export_to: &[String], own: &str, viewer: &str) -> u8 {
    if export_to.is_empty() || export_to.iter().any(|e| e == "*") {
        2
    } else if own == viewer {
        0
    } else {
        1
    }
}

/// The ports a route is compiled for: each one, restricted to it, when there are several.
pub(super) fn contexts(ports: &[u32]) -> Vec<PortContext> {
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
