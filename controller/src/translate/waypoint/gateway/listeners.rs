//! Gateway API `Gateway`s of class `istio` compiled into the gateway proxy's configuration, as
//! Istio converts them (`pilot/pkg/config/kube/gateway/conversion.go`): each listener a server
//! (HTTP; HTTPS and TLS `Terminate` with the Secret of its `certificateRefs` as credential; TLS
//! `Passthrough`; TCP), the routes attached to it (resolved by `gateway_api::ingress`)
//! compiled with the mesh's Gateway API route compiler: HTTPRoutes and GRPCRoutes per hostname
//! (the routes of every namespace for one hostname merged and ordered as the Gateway API
//! orders matches, as Istio merges them into one virtual host), TLSRoutes by SNI for
//! Passthrough, TCPRoutes (and TLSRoutes behind a terminating TLS listener) as TCP routes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use weft_proto::waypoint as wp;

use super::super::gateway_routes::{RouteGroup, weighted};
use super::super::operation;
use super::super::route::Served;
use super::super::{Compiler, age_key};
use crate::index::ConfigIndex;
use crate::model::ResourceKind;
use crate::translate::gateway_api::ingress::{
    GATEWAY_NAME_LABEL, IngressGateway, Listener, ListenerProtocol, ListenerTls,
};
use crate::translate::gateway_api::{MeshRoute, RouteKind};
use crate::translate::resolve::{self, name_of, namespace_of};
use crate::translate::{TranslateProblem, credentials};

/// The ingress Gateways whose proxy runs in `pod`: those of its namespace it names by the
/// Gateway API's `gateway.networking.k8s.io/gateway-name` label (as Istio selects the pods of
/// the Deployment it provisions).
pub(super) fn serving<'g, 'a>(
    gateways: &'g [IngressGateway<'a>],
    pod: &Pod,
) -> Vec<&'g IngressGateway<'a>> {
    let Some(name) = resolve::label(&pod.metadata, GATEWAY_NAME_LABEL) else {
        return Vec::new();
    };
    gateways
        .iter()
        .filter(|g| {
            name_of(g.meta()) == name && namespace_of(g.meta()) == namespace_of(&pod.metadata)
        })
        .collect()
}

/// Whether an ingress Gateway's proxy runs in `pod`.
pub(super) fn is_ingress_pod(index: &ConfigIndex, pod: &Pod) -> bool {
    resolve::label(&pod.metadata, GATEWAY_NAME_LABEL).is_some_and(|name| {
        crate::translate::gateway_api::ingress::ingress_gateway_objects(index).any(|g| {
            name_of(&g.metadata) == name && namespace_of(&g.metadata) == namespace_of(&pod.metadata)
        })
    })
}

impl<'a> Compiler<'a, '_> {
    /// The servers of one ingress Gateway, by port; listeners it cannot serve are reported.
    pub(super) fn listener_servers(
        &mut self,
        gateway: &IngressGateway<'a>,
        routes: &[MeshRoute<'a>],
    ) -> Vec<(u32, wp::GatewayServer)> {
        let mut out = Vec::new();
        for (i, listener) in gateway.listeners.iter().enumerate() {
            if !listener.served() {
                let reason = listener
                    .problems
                    .first()
                    .map(|p| format!("{} ({})", p.message, p.reason))
                    .unwrap_or_else(|| {
                        format!(
                            "port {} is already held by an earlier listener",
                            listener.port
                        )
                    });
                self.report(
                    ResourceKind::KubernetesGateway,
                    gateway.meta(),
                    TranslateProblem::Unsupported {
                        path: format!("spec.listeners[{i}]"),
                        reason: format!("{reason}; the listener is not served"),
                    },
                );
                continue;
            }
            out.push((
                listener.port,
                self.listener_server(gateway, listener, routes),
            ));
        }
        out
    }

    fn listener_server(
        &mut self,
        gateway: &IngressGateway<'a>,
        listener: &Listener<'_>,
        routes: &[MeshRoute<'a>],
    ) -> wp::GatewayServer {
        let namespace = namespace_of(gateway.meta());
        let (protocol, mode) = match (listener.protocol, &listener.tls) {
            (Some(ListenerProtocol::Https), _) => {
                (wp::GatewayProtocol::Https, wp::ServerTlsMode::Simple)
            }
            (Some(ListenerProtocol::Tls), ListenerTls::Passthrough) => {
                (wp::GatewayProtocol::Tls, wp::ServerTlsMode::Passthrough)
            }
            (Some(ListenerProtocol::Tls), _) => {
                (wp::GatewayProtocol::Tls, wp::ServerTlsMode::Simple)
            }
            (Some(ListenerProtocol::Tcp), _) => {
                (wp::GatewayProtocol::Tcp, wp::ServerTlsMode::Unspecified)
            }
            (Some(ListenerProtocol::Http) | None, _) => {
                (wp::GatewayProtocol::Http, wp::ServerTlsMode::Unspecified)
            }
        };
        let tls = match &listener.tls {
            ListenerTls::None => None,
            ListenerTls::Passthrough => Some(wp::ServerTls {
                mode: mode as i32,
                ..Default::default()
            }),
            ListenerTls::Terminate { secret } => Some(wp::ServerTls {
                mode: mode as i32,
                credential_resource: secret
                    .as_ref()
                    .map(|(ns, name)| credentials::gateway_api_resource(ns, name))
                    .unwrap_or_default(),
                // The Secret's name; one in another namespace (through a ReferenceGrant) keeps
                // its namespace, which a credentials directory cannot hold: refused there.
                credential_name: match secret {
                    Some((ns, name)) if ns == namespace => name.clone(),
                    Some((ns, name)) => format!("{ns}/{name}"),
                    None => String::new(),
                },
                ..Default::default()
            }),
        };
        let mut server = wp::GatewayServer {
            gateway: gateway.key(),
            name: format!(
                "{}.{}.{}",
                listener.name,
                name_of(gateway.meta()),
                namespace
            ),
            protocol: protocol as i32,
            hosts: vec![listener.hostname.unwrap_or("*").to_owned()],
            tls,
            ..Default::default()
        };
        let served = Served {
            hostname: format!("gateway {}", server.gateway),
            http_ports: vec![listener.port],
            tcp_ports: vec![listener.port],
        };
        let mut attached: Vec<(&MeshRoute<'a>, &[String])> = listener
            .routes
            .iter()
            .map(|a| (&routes[a.route], a.hosts.as_slice()))
            .collect();
        attached.sort_by(|(a, _), (b, _)| age_key(a.meta).cmp(&age_key(b.meta)));
        match (protocol, mode) {
            (wp::GatewayProtocol::Http | wp::GatewayProtocol::Https, _) => {
                let mut by_host: BTreeMap<&str, Vec<(&MeshRoute<'a>, Option<u32>)>> =
                    BTreeMap::new();
                for (route, hosts) in &attached {
                    for host in *hosts {
                        by_host.entry(host).or_default().push((route, None));
                    }
                }
                for (host, routes) in by_host {
                    let group = RouteGroup {
                        namespace: namespace.to_owned(),
                        routes,
                        route_set: Some(operation::listener_route_set(
                            namespace,
                            name_of(gateway.meta()),
                            listener.name,
                            host,
                        )),
                    };
                    let (http_routes, _) = self.gateway_routes(&served, &group);
                    if http_routes.is_empty() {
                        continue;
                    }
                    server.virtual_hosts.push(wp::GatewayVirtualHost {
                        domains: vec![host.to_owned()],
                        http_routes,
                        virtual_service: group.describe(),
                    });
                }
            }
            (wp::GatewayProtocol::Tls, wp::ServerTlsMode::Passthrough) => {
                for (route, hosts) in &attached {
                    for (i, rule) in route.spec.rules.iter().enumerate() {
                        let destinations = weighted(&rule.backend_refs)
                            .into_iter()
                            .enumerate()
                            .map(|(j, (backend, weight))| wp::RouteDestination {
                                destination: Some(self.gateway_destination(
                                    route,
                                    backend,
                                    format!("spec.rules[{i}].backendRefs[{j}]"),
                                    &served.hostname,
                                )),
                                weight,
                            })
                            .collect();
                        server.tls_routes.push(wp::GatewayTlsRoute {
                            sni_hosts: hosts.to_vec(),
                            route: destinations,
                            virtual_service: route.key(),
                        });
                    }
                }
            }
            _ => {
                for (route, _) in &attached {
                    debug_assert!(matches!(route.kind, RouteKind::Tcp | RouteKind::Tls));
                    for (i, rule) in route.spec.rules.iter().enumerate() {
                        server
                            .tcp_routes
                            .extend(self.tcp_rule(&served, route, None, i, rule));
                    }
                }
            }
        }
        server
    }
}
#[cfg(test)]
#[path = "listeners_tests.rs"]
mod tests;
