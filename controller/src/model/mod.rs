//! The configuration model: Istio's networking, security and telemetry resources (every field of Istio's
//! API), the Gateway API kinds, and the Kubernetes kinds the mesh watches, gathered in one
//! [`Resource`] enum. What the model knows is not what the mesh applies: see
//! [`crate::validation::not_applied`].

pub mod credential;
pub mod decode;
pub mod duration;
pub mod edge;
pub mod gateway_api;
pub mod networking;
pub mod schema;
pub mod security;
pub mod tag_expression;
pub mod telemetry;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use duration::{DurationError, DurationString, SignedDuration, parse_duration};
pub use gateway_api::{
    GRPCRoute, GatewayClass, HTTPRoute, KubernetesGateway, ReferenceGrant, TCPRoute, TLSRoute,
};
pub use networking::{DestinationRule, Gateway, ServiceEntry, VirtualService, WorkloadEntry};
pub use security::{AuthorizationPolicy, PeerAuthentication, RequestAuthentication};
pub use telemetry::Telemetry;

/// One problem in one field of a resource (a schema error from decoding, or a rule
/// [`crate::validation`] checks): the resource is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

/// The kinds the controller understands, identified by API group and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Gateway,
    AuthorizationPolicy,
    PeerAuthentication,
    RequestAuthentication,
    Telemetry,
    KubernetesGateway,
    GatewayClass,
    HTTPRoute,
    GRPCRoute,
    TCPRoute,
    TLSRoute,
    ReferenceGrant,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    EndpointSlice,
    Node,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 22] = [
        Self::VirtualService,
        Self::DestinationRule,
        Self::ServiceEntry,
        Self::WorkloadEntry,
        Self::Gateway,
        Self::AuthorizationPolicy,
        Self::PeerAuthentication,
        Self::RequestAuthentication,
        Self::Telemetry,
        Self::KubernetesGateway,
        Self::GatewayClass,
        Self::HTTPRoute,
        Self::GRPCRoute,
        Self::TCPRoute,
        Self::TLSRoute,
        Self::ReferenceGrant,
        Self::Namespace,
        Self::Pod,
        Self::Service,
        Self::ServiceAccount,
        Self::EndpointSlice,
        Self::Node,
    ];

    /// API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Self::VirtualService
            | Self::DestinationRule
            | Self::ServiceEntry
            | Self::WorkloadEntry
            | Self::Gateway => NETWORKING_GROUP,
            Self::AuthorizationPolicy | Self::PeerAuthentication | Self::RequestAuthentication => {
                SECURITY_GROUP
            }
            Self::Telemetry => TELEMETRY_GROUP,
            Self::KubernetesGateway
            | Self::GatewayClass
            | Self::HTTPRoute
            | Self::GRPCRoute
            | Self::TCPRoute
            | Self::TLSRoute
            | Self::ReferenceGrant => GATEWAY_API_GROUP,
            Self::Namespace | Self::Pod | Self::Service | Self::ServiceAccount | Self::Node => "",
            Self::EndpointSlice => "discovery.k8s.io",
        }
    }

    /// The `kind` field as written in YAML.
    pub fn kind(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::ServiceEntry => "ServiceEntry",
            Self::WorkloadEntry => "WorkloadEntry",
            Self::Gateway | Self::KubernetesGateway => "Gateway",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::RequestAuthentication => "RequestAuthentication",
            Self::Telemetry => "Telemetry",
            Self::GatewayClass => "GatewayClass",
            Self::HTTPRoute => "HTTPRoute",
            Self::GRPCRoute => "GRPCRoute",
            Self::TCPRoute => "TCPRoute",
            Self::TLSRoute => "TLSRoute",
            Self::ReferenceGrant => "ReferenceGrant",
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::ServiceAccount => "ServiceAccount",
            Self::EndpointSlice => "EndpointSlice",
            Self::Node => "Node",
        }
    }

    /// The versions of the group this kind is served and accepted under, the stored (and
    /// watched) one first. Istio serves its older versions with the same schema, so manifests
    /// written for them load unchanged.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Self::VirtualService
            | Self::DestinationRule
            | Self::ServiceEntry
            | Self::WorkloadEntry
            | Self::Gateway => &["v1", "v1beta1", "v1alpha3"],
            Self::AuthorizationPolicy | Self::PeerAuthentication | Self::RequestAuthentication => {
                &["v1", "v1beta1"]
            }
            // Istio serves both and still stores v1alpha1.
            Self::Telemetry => &["v1alpha1", "v1"],
            Self::KubernetesGateway | Self::GatewayClass | Self::HTTPRoute => &["v1", "v1beta1"],
            Self::GRPCRoute => &["v1", "v1alpha2"],
            Self::TCPRoute => &["v1alpha2"],
            // Istio serves v1alpha2; the Gateway API's newer CRDs add v1alpha3 with the same shape.
            Self::TLSRoute => &["v1alpha2", "v1alpha3"],
            Self::ReferenceGrant => &["v1beta1", "v1alpha2"],
            Self::Namespace | Self::Pod | Self::Service | Self::ServiceAccount | Self::Node => {
                &["v1"]
            }
            Self::EndpointSlice => &["v1"],
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Namespace | Self::GatewayClass | Self::Node)
    }

    /// Istio's own kinds (`*.istio.io`), whose documents Istio's rules validate.
    pub fn is_istio(self) -> bool {
        self.group().ends_with(ISTIO_GROUP_SUFFIX)
    }

    /// The Gateway API's kinds.
    pub fn is_gateway_api(self) -> bool {
        self.group() == GATEWAY_API_GROUP
    }

    /// Finds the kind of a document from its `apiVersion` and `kind`.
    pub fn from_type_meta(api_version: &str, kind: &str) -> Option<Self> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        Self::ALL
            .into_iter()
            .find(|k| k.kind() == kind && k.group() == group && k.versions().contains(&version))
    }

    /// Kind as printed in messages: `kind` alone, or `kind.group` where the kind name is ambiguous.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::KubernetesGateway => "Gateway.gateway.networking.k8s.io",
            other => other.kind(),
        }
    }
}

pub const NETWORKING_GROUP: &str = "networking.istio.io";
pub const SECURITY_GROUP: &str = "security.istio.io";
pub const TELEMETRY_GROUP: &str = "telemetry.istio.io";
pub const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";
/// Every Istio API group ends so (`networking.istio.io`, `telemetry.istio.io`, ...).
pub const ISTIO_GROUP_SUFFIX: &str = ".istio.io";

/// Kinds Istio serves that the mesh does not read: documents of these kinds are accepted and
/// reported as not applied (neither validated nor used), as `(group, kind)`.
pub const UNREAD_ISTIO_KINDS: &[(&str, &str)] = &[
    (NETWORKING_GROUP, "Sidecar"),
    (NETWORKING_GROUP, "EnvoyFilter"),
    (NETWORKING_GROUP, "WorkloadGroup"),
    (NETWORKING_GROUP, "ProxyConfig"),
    ("extensions.istio.io", "WasmPlugin"),
    ("extensions.istio.io", "TrafficExtension"),
];

impl std::fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.display_name())
    }
}

/// One configuration object of any supported kind.
// Kubernetes objects differ widely in size; resources are few enough that boxing buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    VirtualService(VirtualService),
    DestinationRule(DestinationRule),
    ServiceEntry(ServiceEntry),
    WorkloadEntry(WorkloadEntry),
    Gateway(Gateway),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    RequestAuthentication(RequestAuthentication),
    Telemetry(Telemetry),
    KubernetesGateway(KubernetesGateway),
    GatewayClass(GatewayClass),
    HTTPRoute(HTTPRoute),
    GRPCRoute(GRPCRoute),
    TCPRoute(TCPRoute),
    TLSRoute(TLSRoute),
    ReferenceGrant(ReferenceGrant),
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    ServiceAccount(ServiceAccount),
    EndpointSlice(EndpointSlice),
    /// Only its name and labels: see [`decode::decode`].
    Node(Node),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::VirtualService(_) => ResourceKind::VirtualService,
            Self::DestinationRule(_) => ResourceKind::DestinationRule,
            Self::ServiceEntry(_) => ResourceKind::ServiceEntry,
            Self::WorkloadEntry(_) => ResourceKind::WorkloadEntry,
            Self::Gateway(_) => ResourceKind::Gateway,
            Self::AuthorizationPolicy(_) => ResourceKind::AuthorizationPolicy,
            Self::PeerAuthentication(_) => ResourceKind::PeerAuthentication,
            Self::RequestAuthentication(_) => ResourceKind::RequestAuthentication,
            Self::Telemetry(_) => ResourceKind::Telemetry,
            Self::KubernetesGateway(_) => ResourceKind::KubernetesGateway,
            Self::GatewayClass(_) => ResourceKind::GatewayClass,
            Self::HTTPRoute(_) => ResourceKind::HTTPRoute,
            Self::GRPCRoute(_) => ResourceKind::GRPCRoute,
            Self::TCPRoute(_) => ResourceKind::TCPRoute,
            Self::TLSRoute(_) => ResourceKind::TLSRoute,
            Self::ReferenceGrant(_) => ResourceKind::ReferenceGrant,
            Self::Namespace(_) => ResourceKind::Namespace,
            Self::Pod(_) => ResourceKind::Pod,
            Self::Service(_) => ResourceKind::Service,
            Self::ServiceAccount(_) => ResourceKind::ServiceAccount,
            Self::EndpointSlice(_) => ResourceKind::EndpointSlice,
            Self::Node(_) => ResourceKind::Node,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::VirtualService(r) => &r.metadata,
            Self::DestinationRule(r) => &r.metadata,
            Self::ServiceEntry(r) => &r.metadata,
            Self::WorkloadEntry(r) => &r.metadata,
            Self::Gateway(r) => &r.metadata,
            Self::AuthorizationPolicy(r) => &r.metadata,
            Self::PeerAuthentication(r) => &r.metadata,
            Self::RequestAuthentication(r) => &r.metadata,
            Self::Telemetry(r) => &r.metadata,
            Self::KubernetesGateway(r) => &r.metadata,
            Self::GatewayClass(r) => &r.metadata,
            Self::HTTPRoute(r) => &r.metadata,
            Self::GRPCRoute(r) => &r.metadata,
            Self::TCPRoute(r) => &r.metadata,
            Self::TLSRoute(r) => &r.metadata,
            Self::ReferenceGrant(r) => &r.metadata,
            Self::Namespace(r) => &r.metadata,
            Self::Pod(r) => &r.metadata,
            Self::Service(r) => &r.metadata,
            Self::ServiceAccount(r) => &r.metadata,
            Self::EndpointSlice(r) => &r.metadata,
            Self::Node(r) => &r.metadata,
        }
    }

    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        match self {
            Self::VirtualService(r) => &mut r.metadata,
            Self::DestinationRule(r) => &mut r.metadata,
            Self::ServiceEntry(r) => &mut r.metadata,
            Self::WorkloadEntry(r) => &mut r.metadata,
            Self::Gateway(r) => &mut r.metadata,
            Self::AuthorizationPolicy(r) => &mut r.metadata,
            Self::PeerAuthentication(r) => &mut r.metadata,
            Self::RequestAuthentication(r) => &mut r.metadata,
            Self::Telemetry(r) => &mut r.metadata,
            Self::KubernetesGateway(r) => &mut r.metadata,
            Self::GatewayClass(r) => &mut r.metadata,
            Self::HTTPRoute(r) => &mut r.metadata,
            Self::GRPCRoute(r) => &mut r.metadata,
            Self::TCPRoute(r) => &mut r.metadata,
            Self::TLSRoute(r) => &mut r.metadata,
            Self::ReferenceGrant(r) => &mut r.metadata,
            Self::Namespace(r) => &mut r.metadata,
            Self::Pod(r) => &mut r.metadata,
            Self::Service(r) => &mut r.metadata,
            Self::ServiceAccount(r) => &mut r.metadata,
            Self::EndpointSlice(r) => &mut r.metadata,
            Self::Node(r) => &mut r.metadata,
        }
    }

    pub fn name(&self) -> &str {
        self.metadata().name.as_deref().unwrap_or("")
    }

    /// The namespace; empty for cluster-scoped kinds.
    pub fn namespace(&self) -> &str {
        self.metadata().namespace.as_deref().unwrap_or("")
    }
}
