//! The configuration model: Istio's networking and security resources, the Gateway API Gateway
//! used for waypoints, and the Kubernetes kinds the mesh watches, gathered in one [`Resource`] enum.

pub mod duration;
pub mod gateway_api;
pub mod networking;
pub mod security;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use duration::{DurationError, DurationString, SignedDuration, parse_duration};
pub use gateway_api::KubernetesGateway;
pub use networking::{DestinationRule, Gateway, ServiceEntry, VirtualService};
pub use security::{AuthorizationPolicy, PeerAuthentication};

/// The kinds the controller understands, identified by API group and kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceKind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    Gateway,
    AuthorizationPolicy,
    PeerAuthentication,
    KubernetesGateway,
    Namespace,
    Pod,
    Service,
    ServiceAccount,
    EndpointSlice,
}

impl ResourceKind {
    pub const ALL: [ResourceKind; 12] = [
        Self::VirtualService,
        Self::DestinationRule,
        Self::ServiceEntry,
        Self::Gateway,
        Self::AuthorizationPolicy,
        Self::PeerAuthentication,
        Self::KubernetesGateway,
        Self::Namespace,
        Self::Pod,
        Self::Service,
        Self::ServiceAccount,
        Self::EndpointSlice,
    ];

    /// API group (`""` for the core group).
    pub fn group(self) -> &'static str {
        match self {
            Self::VirtualService | Self::DestinationRule | Self::ServiceEntry | Self::Gateway => {
                "networking.istio.io"
            }
            Self::AuthorizationPolicy | Self::PeerAuthentication => "security.istio.io",
            Self::KubernetesGateway => "gateway.networking.k8s.io",
            Self::Namespace | Self::Pod | Self::Service | Self::ServiceAccount => "",
            Self::EndpointSlice => "discovery.k8s.io",
        }
    }

    /// The `kind` field as written in YAML.
    pub fn kind(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService",
            Self::DestinationRule => "DestinationRule",
            Self::ServiceEntry => "ServiceEntry",
            Self::Gateway | Self::KubernetesGateway => "Gateway",
            Self::AuthorizationPolicy => "AuthorizationPolicy",
            Self::PeerAuthentication => "PeerAuthentication",
            Self::Namespace => "Namespace",
            Self::Pod => "Pod",
            Self::Service => "Service",
            Self::ServiceAccount => "ServiceAccount",
            Self::EndpointSlice => "EndpointSlice",
        }
    }

    /// The versions of the group this kind is accepted under. Istio serves its older versions
    /// with the same schema, so manifests written for them load unchanged.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Self::VirtualService | Self::DestinationRule | Self::ServiceEntry | Self::Gateway => {
                &["v1", "v1beta1", "v1alpha3"]
            }
            Self::AuthorizationPolicy | Self::PeerAuthentication => &["v1", "v1beta1"],
            Self::KubernetesGateway => &["v1", "v1beta1"],
            Self::Namespace | Self::Pod | Self::Service | Self::ServiceAccount => &["v1"],
            Self::EndpointSlice => &["v1"],
        }
    }

    pub fn namespaced(self) -> bool {
        !matches!(self, Self::Namespace)
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
    Gateway(Gateway),
    AuthorizationPolicy(AuthorizationPolicy),
    PeerAuthentication(PeerAuthentication),
    KubernetesGateway(KubernetesGateway),
    Namespace(Namespace),
    Pod(Pod),
    Service(Service),
    ServiceAccount(ServiceAccount),
    EndpointSlice(EndpointSlice),
}

impl Resource {
    pub fn kind(&self) -> ResourceKind {
        match self {
            Self::VirtualService(_) => ResourceKind::VirtualService,
            Self::DestinationRule(_) => ResourceKind::DestinationRule,
            Self::ServiceEntry(_) => ResourceKind::ServiceEntry,
            Self::Gateway(_) => ResourceKind::Gateway,
            Self::AuthorizationPolicy(_) => ResourceKind::AuthorizationPolicy,
            Self::PeerAuthentication(_) => ResourceKind::PeerAuthentication,
            Self::KubernetesGateway(_) => ResourceKind::KubernetesGateway,
            Self::Namespace(_) => ResourceKind::Namespace,
            Self::Pod(_) => ResourceKind::Pod,
            Self::Service(_) => ResourceKind::Service,
            Self::ServiceAccount(_) => ResourceKind::ServiceAccount,
            Self::EndpointSlice(_) => ResourceKind::EndpointSlice,
        }
    }

    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Self::VirtualService(r) => &r.metadata,
            Self::DestinationRule(r) => &r.metadata,
            Self::ServiceEntry(r) => &r.metadata,
            Self::Gateway(r) => &r.metadata,
            Self::AuthorizationPolicy(r) => &r.metadata,
            Self::PeerAuthentication(r) => &r.metadata,
            Self::KubernetesGateway(r) => &r.metadata,
            Self::Namespace(r) => &r.metadata,
            Self::Pod(r) => &r.metadata,
            Self::Service(r) => &r.metadata,
            Self::ServiceAccount(r) => &r.metadata,
            Self::EndpointSlice(r) => &r.metadata,
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
