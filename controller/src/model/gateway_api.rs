//! The slice of the Kubernetes Gateway API (`gateway.networking.k8s.io/v1` Gateway) the mesh
//! reads: ambient waypoints are Gateways of class `istio-waypoint`. Only the fields the mesh uses
//! are modelled; other fields are accepted and ignored, as the Gateway API is not ours to police.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The Gateway API's Gateway (not Istio's `networking.istio.io` Gateway).
#[derive(
    kube::CustomResource, Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    plural = "gateways",
    namespaced,
    derive = "PartialEq"
)]
#[kube(root = "KubernetesGateway")]
#[serde(rename_all = "camelCase", default)]
pub struct KubernetesGatewaySpec {
    pub gateway_class_name: String,
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct Listener {
    pub name: String,
    pub hostname: Option<String>,
    pub port: i64,
    pub protocol: String,
    pub allowed_routes: Option<AllowedRoutes>,
}

/// Which namespaces may attach to a listener; for a waypoint, which namespaces' services and
/// workloads may use it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct AllowedRoutes {
    pub namespaces: Option<RouteNamespaces>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    pub from: Option<String>,
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// The class Istio gives ambient waypoints.
pub const WAYPOINT_GATEWAY_CLASS: &str = "istio-waypoint";
