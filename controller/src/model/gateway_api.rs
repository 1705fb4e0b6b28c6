//! The Kubernetes Gateway API kinds the mesh reads (`gateway.networking.k8s.io`): Gateway (a
//! waypoint is a Gateway of class `istio-waypoint`), GatewayClass, HTTPRoute, GRPCRoute, TCPRoute,
//! TLSRoute and ReferenceGrant. Their types are the Gateway API project's own (the `gateway-api` crate,
//! generated from its v1.4 CRDs, experimental channel: a superset of the standard one), so every
//! field of both channels is known. The Gateway API is not ours to police: its CRDs (which Istio
//! does not ship either) carry its rules; we check what the mesh depends on.

pub use gateway_api::experimental::gatewayclasses::{GatewayClass, GatewayClassSpec};
pub use gateway_api::experimental::gateways::{
    Gateway as KubernetesGateway, GatewayListeners as Listener,
    GatewayListenersAllowedRoutesNamespaces as RouteNamespaces,
    GatewayListenersAllowedRoutesNamespacesFrom as RouteNamespacesFrom,
    GatewayListenersTlsMode as ListenerTlsMode, GatewaySpec as KubernetesGatewaySpec,
};
pub use gateway_api::experimental::grpcroutes::{GRPCRoute, GRPCRouteSpec};
pub use gateway_api::experimental::httproutes::{HTTPRoute, HTTPRouteSpec};
pub use gateway_api::experimental::referencegrants::{ReferenceGrant, ReferenceGrantSpec};
pub use gateway_api::experimental::tcproutes::{TCPRoute, TCPRouteSpec};
pub use gateway_api::experimental::tlsroutes::{TLSRoute, TLSRouteSpec};

/// The class Istio gives ingress (and egress) gateways it deploys.
pub const INGRESS_GATEWAY_CLASS: &str = "istio";

/// The class Istio gives ambient waypoints.
pub const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";
