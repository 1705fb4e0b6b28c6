//! Gateway API `Gateway`s of class `istio` (ingress), read as Istio's gateway controller reads
//! them (`pilot/pkg/config/kube/gateway`): each listener's protocol, hostname, TLS (Terminate
//! with a Secret from `certificateRefs`, or Passthrough) and `allowedRoutes`, and which routes
//! attach to it through their `parentRefs` (`sectionName`, `port`, the listener's kinds and
//! namespaces, and the intersection of hostnames). One pure function of the index serves both
//! the compilation into the gateway proxies' configuration and the status written back.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{GATEWAY_GROUP, MeshRoute, ParentRef, RouteKind, reference_granted};
use crate::index::ConfigIndex;
use crate::model::KubernetesGateway;
use crate::model::gateway_api::{INGRESS_GATEWAY_CLASS, ListenerTlsMode};
use crate::translate::resolve::{self, host_covers, name_of, namespace_of};

/// The controller name Istio writes for its Gateway API gateways.
pub const GATEWAY_CONTROLLER: &str = "istio.io/gateway-controller";

/// The label the Gateway API (and Istio's deployment controller) puts on a Gateway's pods.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// A listener's protocol, as the gateway proxy serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerProtocol {
    Http,
    Https,
    Tls,
    Tcp,
}

/// A listener's TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTls {
    /// Plain HTTP or TCP.
    None,
    /// The bytes go through untouched, by SNI.
    Passthrough,
    /// TLS ends here with the certificate of the Secret `secret` (in the Gateway's namespace,
    /// or in another that a ReferenceGrant opens); `None` when no usable reference was given.
    Terminate { secret: Option<(String, String)> },
}

/// A condition of a listener that is not as it should be: `(type, reason, message)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerProblem {
    pub condition_type: &'static str,
    pub reason: &'static str,
    pub message: String,
}

/// One route attached to one listener, with the hostnames it serves there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// Index into the routes the listeners were resolved against.
    pub route: usize,
    pub hosts: Vec<String>,
}

/// One listener, resolved.
#[derive(Debug, Clone)]
pub struct Listener<'a> {
    pub name: &'a str,
    pub port: u32,
    /// `None`: a protocol the gateway cannot serve (the listener is not accepted).
    pub protocol: Option<ListenerProtocol>,
    pub hostname: Option<&'a str>,
    pub tls: ListenerTls,
    /// The route kinds it takes.
    pub kinds: Vec<RouteKind>,
    pub problems: Vec<ListenerProblem>,
    /// Whether an earlier listener holds its port with a protocol it cannot share.
    pub conflicted: bool,
    pub routes: Vec<Attached>,
}

impl Listener<'_> {
    /// Whether the gateway proxy serves it: accepted, references resolved, no conflict.
    pub fn served(&self) -> bool {
        self.protocol.is_some() && self.problems.is_empty() && !self.conflicted
    }
}

/// One Gateway of class `istio`, resolved.
#[derive(Debug, Clone)]
pub struct IngressGateway<'a> {
    pub gateway: &'a KubernetesGateway,
    pub listeners: Vec<Listener<'a>>,
}

impl IngressGateway<'_> {
    pub fn meta(&self) -> &ObjectMeta {
        &self.gateway.metadata
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            namespace_of(self.meta()),
            name_of(&self.gateway.metadata)
        )
    }
}

/// Why a `parentRefs` entry naming an ingress Gateway does not attach the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAttached {
    pub reason: &'static str,
    pub message: String,
}

/// Every Gateway of class `istio`, in key order.
pub fn ingress_gateway_objects(index: &ConfigIndex) -> impl Iterator<Item = &KubernetesGateway> {
    index
        .gateways
        .values()
        .filter(|g| g.spec.gateway_class_name == INGRESS_GATEWAY_CLASS)
}

/// The ingress Gateway `parent` names, for a route in `route_namespace`.
pub fn ingress_parent<'a>(
    index: &'a ConfigIndex,
    route_namespace: &str,
    parent: &ParentRef,
) -> Option<&'a KubernetesGateway> {
    if !parent.is_gateway() {
        return None;
    }
    let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
    index
        .gateways
        .get(&format!("{namespace}/{}", parent.name))
        .filter(|g| g.spec.gateway_class_name == INGRESS_GATEWAY_CLASS)
}

/// Every ingress Gateway, its listeners resolved and `routes` attached.
pub fn ingress_gateways<'a>(
    index: &'a ConfigIndex,
    routes: &[MeshRoute<'_>],
) -> Vec<IngressGateway<'a>> {
    ingress_gateway_objects(index)
        .map(|gateway| resolve_gateway(index, gateway, routes))
        .collect()
}

/// One ingress Gateway, its listeners resolved and `routes` attached.
pub fn resolve_gateway<'a>(
    index: &ConfigIndex,
    gateway: &'a KubernetesGateway,
    routes: &[MeshRoute<'_>],
) -> IngressGateway<'a> {
    let mut listeners: Vec<Listener<'a>> = Vec::new();
    for listener in &gateway.spec.listeners {
        let mut resolved = listener_of(index, gateway, listener);
        let terminates_here = |p: Option<ListenerProtocol>| {
            matches!(p, Some(ListenerProtocol::Http | ListenerProtocol::Tcp))
        };
        resolved.conflicted = listeners.iter().any(|l| {
            l.port == resolved.port
                && l.protocol.is_some()
                && (terminates_here(l.protocol) != terminates_here(resolved.protocol)
                    || (l.protocol == resolved.protocol && l.hostname == resolved.hostname))
        });
        listeners.push(resolved);
    }
    let mut resolved = IngressGateway { gateway, listeners };
    for (i, route) in routes.iter().enumerate() {
        for parent in &route.spec.parent_refs {
            if ingress_parent(index, route.namespace(), parent)
                .is_none_or(|g| !std::ptr::eq(g, gateway))
            {
                continue;
            }
            if let Ok(attachments) = attach(index, &resolved, route, parent) {
                for (listener, hosts) in attachments {
                    let routes = &mut resolved.listeners[listener].routes;
                    match routes.iter_mut().find(|a| a.route == i) {
                        Some(existing) => {
                            let all: BTreeSet<String> =
                                existing.hosts.drain(..).chain(hosts).collect();
                            existing.hosts = all.into_iter().collect();
                        }
                        None => routes.push(Attached { route: i, hosts }),
                    }
                }
            }
        }
    }
    resolved
}

fn listener_of<'a>(
    index: &ConfigIndex,
    gateway: &KubernetesGateway,
    listener: &'a crate::model::gateway_api::Listener,
) -> Listener<'a> {
    let mut problems = Vec::new();
    let tls_mode = listener
        .tls
        .as_ref()
        .map(|t| t.mode.clone().unwrap_or(ListenerTlsMode::Terminate));
    let protocol = match (listener.protocol.as_str(), &tls_mode) {
        ("HTTP", _) => Some(ListenerProtocol::Http),
        ("HTTPS", Some(ListenerTlsMode::Passthrough)) => {
            problems.push(ListenerProblem {
                condition_type: "Accepted",
                reason: "UnsupportedProtocol",
                message: "an HTTPS listener terminates TLS (use protocol TLS for Passthrough)"
                    .to_owned(),
            });
            None
        }
        ("HTTPS", _) => Some(ListenerProtocol::Https),
        ("TLS", _) => Some(ListenerProtocol::Tls),
        ("TCP", _) => Some(ListenerProtocol::Tcp),
        (other, _) => {
            problems.push(ListenerProblem {
                condition_type: "Accepted",
                reason: "UnsupportedProtocol",
                message: format!("protocol {other:?} is not supported by gateways"),
            });
            None
        }
    };
    let tls = match (protocol, tls_mode) {
        (Some(ListenerProtocol::Http | ListenerProtocol::Tcp) | None, _) => ListenerTls::None,
        (Some(_), Some(ListenerTlsMode::Passthrough)) => ListenerTls::Passthrough,
        (Some(_), _) => ListenerTls::Terminate {
            secret: certificate(index, gateway, listener, &mut problems),
        },
    };
    let kinds = route_kinds(listener, protocol, &tls, &mut problems);
    Listener {
        name: &listener.name,
        port: u32::try_from(listener.port).unwrap_or(0),
        protocol,
        hostname: listener.hostname.as_deref(),
        tls,
        kinds,
        problems,
        conflicted: false,
        routes: Vec::new(),
    }
}

/// The Secret a terminating listener's `certificateRefs` names (the first; Istio serves one
/// certificate per listener), as `(namespace, name)`.
fn certificate(
    index: &ConfigIndex,
    gateway: &KubernetesGateway,
    listener: &crate::model::gateway_api::Listener,
    problems: &mut Vec<ListenerProblem>,
) -> Option<(String, String)> {
    let own = namespace_of(&gateway.metadata);
    let mut invalid = |reason: &'static str, message: String| {
        problems.push(ListenerProblem {
            condition_type: "ResolvedRefs",
            reason,
            message,
        });
        None
    };
    let Some(reference) = listener
        .tls
        .as_ref()
        .and_then(|t| t.certificate_refs.as_ref())
        .and_then(|refs| refs.first())
    else {
        return invalid(
            "InvalidCertificateRef",
            "a listener terminating TLS needs tls.certificateRefs".to_owned(),
        );
    };
    let core = matches!(reference.group.as_deref(), None | Some("") | Some("core"));
    if !core || reference.kind.as_deref().is_some_and(|k| k != "Secret") {
        return invalid(
            "InvalidCertificateRef",
            format!(
                "certificateRef {}: only Secrets are supported (group {:?}, kind {:?})",
                reference.name,
                reference.group.as_deref().unwrap_or(""),
                reference.kind.as_deref().unwrap_or("Secret")
            ),
        );
    }
    let namespace = reference.namespace.as_deref().unwrap_or(own);
    if namespace != own
        && !reference_granted(index, "Gateway", own, namespace, "Secret", &reference.name)
    {
        return invalid(
            "RefNotPermitted",
            format!(
                "certificateRef {namespace}/{} is not accessible to a Gateway in namespace {own:?} (no ReferenceGrant in {namespace} allows it)",
                reference.name
            ),
        );
    }
    Some((namespace.to_owned(), reference.name.clone()))
}

/// The route kinds a listener takes: its `allowedRoutes.kinds`, or its protocol's (HTTPRoute
/// and GRPCRoute for HTTP and HTTPS, TLSRoute for TLS, TCPRoute for TCP), as Istio defaults.
fn route_kinds(
    listener: &crate::model::gateway_api::Listener,
    protocol: Option<ListenerProtocol>,
    tls: &ListenerTls,
    problems: &mut Vec<ListenerProblem>,
) -> Vec<RouteKind> {
    let supported: &[RouteKind] = match (protocol, tls) {
        (Some(ListenerProtocol::Http | ListenerProtocol::Https), _) => {
            &[RouteKind::Http, RouteKind::Grpc]
        }
        (Some(ListenerProtocol::Tls), ListenerTls::Terminate { .. }) => {
            &[RouteKind::Tls, RouteKind::Tcp]
        }
        (Some(ListenerProtocol::Tls), _) => &[RouteKind::Tls],
        (Some(ListenerProtocol::Tcp), _) => &[RouteKind::Tcp],
        (None, _) => &[],
    };
    let Some(listed) = listener
        .allowed_routes
        .as_ref()
        .and_then(|a| a.kinds.as_ref())
    else {
        return match (protocol, tls) {
            // A terminating TLS listener takes TLSRoutes by default; TCPRoutes when listed.
            (Some(ListenerProtocol::Tls), _) => vec![RouteKind::Tls],
            _ => supported.to_vec(),
        };
    };
    let mut kinds = Vec::new();
    for kind in listed {
        let group_ok = kind.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP);
        match supported.iter().find(|k| k.name() == kind.kind) {
            Some(k) if group_ok => kinds.push(*k),
            _ => problems.push(ListenerProblem {
                condition_type: "ResolvedRefs",
                reason: "InvalidRouteKinds",
                message: format!(
                    "route kind {}/{} is not supported on a {} listener",
                    kind.group.as_deref().unwrap_or(GATEWAY_GROUP),
                    kind.kind,
                    listener.protocol
                ),
            }),
        }
    }
    kinds
}

/// The hostnames a route serves on a listener: the Gateway API's intersection of the
/// listener's hostname with the route's (a wildcard on either side yields the narrower name).
pub fn listener_hosts(listener: Option<&str>, route: &[String]) -> Vec<String> {
    let hosts: BTreeSet<String> = match listener {
        None if route.is_empty() => ["*".to_owned()].into(),
        None => route.iter().cloned().collect(),
        Some(l) if route.is_empty() => [l.to_owned()].into(),
        Some(l) => route
            .iter()
            .filter_map(|r| {
                if host_covers(l, r) {
                    Some(r.clone())
                } else if host_covers(r, l) {
                    Some(l.to_owned())
                } else {
                    None
                }
            })
            .collect(),
    };
    hosts.into_iter().collect()
}

/// The listeners `parent` attaches `route` to, with its hostnames on each; or why none.
pub fn attach(
    index: &ConfigIndex,
    gateway: &IngressGateway<'_>,
    route: &MeshRoute<'_>,
    parent: &ParentRef,
) -> Result<Vec<(usize, Vec<String>)>, NotAttached> {
    let gateway_namespace = namespace_of(gateway.meta());
    let candidates: Vec<(usize, &Listener<'_>)> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent.section_name.as_deref().is_none_or(|s| s == l.name))
        .filter(|(_, l)| {
            parent
                .port
                .is_none_or(|p| u32::try_from(p).is_ok_and(|p| p == l.port))
        })
        .collect();
    if candidates.is_empty() {
        return Err(NotAttached {
            reason: "NoMatchingParent",
            message: format!(
                "Gateway {} has no listener{}{}",
                gateway.key(),
                parent
                    .section_name
                    .as_deref()
                    .map(|s| format!(" named {s:?}"))
                    .unwrap_or_default(),
                parent
                    .port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default(),
            ),
        });
    }
    let mut attached = Vec::new();
    let mut not_allowed = None;
    for (i, listener) in candidates {
        if !listener.kinds.contains(&route.kind) {
            not_allowed.get_or_insert_with(|| {
                format!(
                    "listener {:?} does not take {}s",
                    listener.name,
                    route.kind.name()
                )
            });
            continue;
        }
        let listener_spec = &gateway.gateway.spec.listeners[i];
        let namespaces = listener_spec
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref());
        if !resolve::route_namespace_allowed(
            index,
            namespaces,
            route.namespace() == gateway_namespace,
            route.namespace(),
        ) {
            not_allowed.get_or_insert_with(|| {
                format!(
                    "listener {:?} does not take routes from namespace {:?} (allowedRoutes.namespaces)",
                    listener.name,
                    route.namespace()
                )
            });
            continue;
        }
        let hosts = listener_hosts(listener.hostname, &route.spec.hostnames);
        if hosts.is_empty() {
            continue;
        }
        attached.push((i, hosts));
    }
    if !attached.is_empty() {
        return Ok(attached);
    }
    Err(match not_allowed {
        Some(message) => NotAttached {
            reason: "NotAllowedByListeners",
            message,
        },
        None => NotAttached {
            reason: "NoMatchingListenerHostname",
            message: format!(
                "no hostname of the route matches a listener of Gateway {}",
                gateway.key()
            ),
        },
    })
}

#[cfg(test)]
#[path = "ingress_tests.rs"]
mod tests;
