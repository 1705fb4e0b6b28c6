//! The Gateway API's mesh routes (GAMMA) as Istio applies them in ambient mode: HTTPRoute,
//! GRPCRoute and TCPRoute whose `parentRefs` name a Service apply at the waypoint serving that
//! Service. This module reads the three kinds into one shape ([`RouteSpec`]), resolves their
//! parents and backends (with ReferenceGrant), and computes the status conditions each parent
//! gets; `waypoint::gateway_routes` compiles them into a waypoint's route tables.
//!
//! Istio converts no route attached to a waypoint Gateway itself (its HBONE listener takes no
//! routes: "waypoint doesn't convert routes to VirtualServices"), so such a parent is reported
//! as not accepted. Routes attached to an ingress Gateway (class `istio`, with TLSRoute besides
//! the three) are resolved by [`ingress`] and compiled by `waypoint::gateway`; parents of any
//! other class are not ours: no status is written for them.

mod gateway_status;
pub mod ingress;
mod spec;
mod status;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::MeshSettings;
use super::resolve::{self, namespace_of};
use crate::index::ConfigIndex;
use crate::model::gateway_api::WAYPOINT_GATEWAY_CLASS;
use crate::model::{KubernetesGateway, ResourceKind};

pub use gateway_status::{
    GatewayClassStatus, GatewayStatus, ListenerStatus, gateway_class_statuses, gateway_statuses,
};
pub use spec::{
    BackendRef, CookieConfig, Cors, Filter, GrpcMethod, HeaderModifier, KeyMatch, Match,
    MethodMatch, Mirror, ParentRef, PathMatch, PathModifier, Redirect, Retry, RouteSpec, Rule,
    SessionPersistence, Timeouts, UrlRewrite,
};
pub use status::{Condition, MESH_CONTROLLER, ParentStatus, RouteStatus, route_statuses};

/// The Gateway API group.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// Which route kind a route is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RouteKind {
    Http,
    Grpc,
    Tcp,
    /// TLSRoute: ingress Gateways only.
    Tls,
}

impl RouteKind {
    pub fn resource_kind(self) -> ResourceKind {
        match self {
            RouteKind::Http => ResourceKind::HTTPRoute,
            RouteKind::Grpc => ResourceKind::GRPCRoute,
            RouteKind::Tcp => ResourceKind::TCPRoute,
            RouteKind::Tls => ResourceKind::TLSRoute,
        }
    }

    /// The kind's name, as ReferenceGrants and messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
            RouteKind::Tcp => "TCPRoute",
            RouteKind::Tls => "TLSRoute",
        }
    }
}

/// One route of any of the three kinds, read into one shape.
#[derive(Debug, Clone)]
pub struct MeshRoute<'a> {
    pub kind: RouteKind,
    pub meta: &'a ObjectMeta,
    pub spec: RouteSpec,
}

impl MeshRoute<'_> {
    pub fn namespace(&self) -> &str {
        namespace_of(self.meta)
    }

    /// `namespace/name`, for messages and route names.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace(), resolve::name_of(self.meta))
    }
}

/// Every route of the index that an ingress Gateway may take (the mesh's kinds and TLSRoute),
/// in one shape, in key order per kind.
pub fn all_routes(index: &ConfigIndex) -> Vec<MeshRoute<'_>> {
    let mut routes = mesh_routes(index);
    routes.extend(index.tls_routes.values().map(|r| MeshRoute {
        kind: RouteKind::Tls,
        meta: &r.metadata,
        spec: spec::read(&r.spec),
    }));
    routes
}

/// Every HTTPRoute, GRPCRoute and TCPRoute of the index, in one shape, in key order per kind.
pub fn mesh_routes(index: &ConfigIndex) -> Vec<MeshRoute<'_>> {
    let http = index
        .http_routes
        .values()
        .map(|r| (RouteKind::Http, &r.metadata, spec::read(&r.spec)));
    let grpc = index
        .grpc_routes
        .values()
        .map(|r| (RouteKind::Grpc, &r.metadata, spec::read(&r.spec)));
    let tcp = index
        .tcp_routes
        .values()
        .map(|r| (RouteKind::Tcp, &r.metadata, spec::read(&r.spec)));
    http.chain(grpc)
        .chain(tcp)
        .map(|(kind, meta, spec)| MeshRoute { kind, meta, spec })
        .collect()
}

/// What a `parentRefs` entry names.
#[derive(Debug, Clone)]
pub enum Parent<'a> {
    /// A Service: the route applies at the waypoint that serves it, on `port` only when set.
    Service {
        service: &'a Service,
        hostname: String,
        port: Option<u32>,
    },
    /// A Service that does not exist.
    MissingService { namespace: String, name: String },
    /// A waypoint Gateway (class `istio-waypoint`): Istio applies no route attached to it.
    Waypoint,
    /// An ingress Gateway (class `istio`): see [`ingress`].
    Ingress(&'a KubernetesGateway),
    /// A parent of another controller (an ingress Gateway): not ours.
    Other,
}

impl ParentRef {
    fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), None | Some("") | Some("core"))
            && self.kind.as_deref() == Some("Service")
    }

    pub(crate) fn is_gateway(&self) -> bool {
        self.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP)
            && self.kind.as_deref().is_none_or(|k| k == "Gateway")
    }
}

/// What `parent` names, for a route in `route_namespace`.
pub fn parent<'a>(
    index: &'a ConfigIndex,
    settings: &MeshSettings,
    route_namespace: &str,
    parent: &ParentRef,
) -> Parent<'a> {
    let namespace = parent.namespace.as_deref().unwrap_or(route_namespace);
    if parent.is_service() {
        return match index.services.get(&format!("{namespace}/{}", parent.name)) {
            Some(service) => Parent::Service {
                service,
                hostname: resolve::hostname(service, settings),
                port: parent.port.and_then(|p| u32::try_from(p).ok()),
            },
            None => Parent::MissingService {
                namespace: namespace.to_owned(),
                name: parent.name.clone(),
            },
        };
    }
    if let Some(gateway) = ingress::ingress_parent(index, route_namespace, parent) {
        return Parent::Ingress(gateway);
    }
    if parent.is_gateway()
        && index
            .gateways
            .get(&format!("{namespace}/{}", parent.name))
            .is_some_and(|g| g.spec.gateway_class_name == WAYPOINT_GATEWAY_CLASS)
    {
        return Parent::Waypoint;
    }
    Parent::Other
}

/// Why a backend reference resolves to nothing, with the Gateway API's `ResolvedRefs` reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendProblem {
    /// `BackendNotFound`.
    NotFound(String),
    /// `RefNotPermitted`: another namespace, and no ReferenceGrant there allows it.
    NotPermitted(String),
    /// `InvalidKind`: not a Service.
    InvalidKind(String),
}

impl BackendProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            BackendProblem::NotFound(_) => "BackendNotFound",
            BackendProblem::NotPermitted(_) => "RefNotPermitted",
            BackendProblem::InvalidKind(_) => "InvalidKind",
        }
    }

    pub fn message(&self) -> &str {
        match self {
            BackendProblem::NotFound(m)
            | BackendProblem::NotPermitted(m)
            | BackendProblem::InvalidKind(m) => m,
        }
    }
}

/// A backend resolved to a Service's hostname and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedBackend {
    pub hostname: String,
    pub port: u32,
}

/// Resolves a `backendRefs` (or mirror) entry of a `kind` route in `route_namespace`: a Service
/// (the only backend kind the mesh routes to) that exists, with a port, in the route's namespace
/// or in one whose ReferenceGrant admits this kind from it.
pub fn backend(
    index: &ConfigIndex,
    settings: &MeshSettings,
    kind: RouteKind,
    route_namespace: &str,
    backend: &BackendRef,
) -> Result<ResolvedBackend, BackendProblem> {
    let core = matches!(backend.group.as_deref(), None | Some("") | Some("core"));
    if !core || backend.kind.as_deref().is_some_and(|k| k != "Service") {
        return Err(BackendProblem::InvalidKind(format!(
            "backendRef {}: group {:?} kind {:?} is not supported; only Services are",
            backend.name,
            backend.group.as_deref().unwrap_or(""),
            backend.kind.as_deref().unwrap_or("Service"),
        )));
    }
    let namespace = backend.namespace.as_deref().unwrap_or(route_namespace);
    if namespace != route_namespace
        && !reference_granted(
            index,
            kind.name(),
            route_namespace,
            namespace,
            "Service",
            &backend.name,
        )
    {
        return Err(BackendProblem::NotPermitted(format!(
            "backendRef {namespace}/{} is not accessible to a {} in namespace {route_namespace:?} (no ReferenceGrant in {namespace} allows it)",
            backend.name,
            kind.name(),
        )));
    }
    let Some(service) = index.services.get(&format!("{namespace}/{}", backend.name)) else {
        return Err(BackendProblem::NotFound(format!(
            "backendRef Service {namespace}/{} not found",
            backend.name
        )));
    };
    let Some(port) = backend.port.and_then(|p| u32::try_from(p).ok()) else {
        return Err(BackendProblem::NotFound(format!(
            "backendRef Service {namespace}/{}: port is required",
            backend.name
        )));
    };
    Ok(ResolvedBackend {
        hostname: resolve::hostname(service, settings),
        port,
    })
}

/// Whether a ReferenceGrant in `to_namespace` admits objects of `from_kind` (a Gateway API
/// kind) in `from_namespace` to the core object `to_kind` named `to_name` (a grant without a
/// name admits every object of the kind).
fn reference_granted(
    index: &ConfigIndex,
    from_kind: &str,
    from_namespace: &str,
    to_namespace: &str,
    to_kind: &str,
    to_name: &str,
) -> bool {
    index
        .reference_grants
        .values()
        .filter(|grant| grant.metadata.namespace.as_deref() == Some(to_namespace))
        .any(|grant| {
            grant.spec.from.iter().any(|from| {
                from.group == GATEWAY_GROUP
                    && from.kind == from_kind
                    && from.namespace == from_namespace
            }) && grant.spec.to.iter().any(|to| {
                (to.group.is_empty() || to.group == "core")
                    && to.kind == to_kind
                    && to.name.as_deref().is_none_or(|n| n == to_name)
            })
        })
}

#[cfg(test)]
mod tests;
