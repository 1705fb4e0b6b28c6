//! Turning a document (YAML from a file, JSON from the API server or an admission review) into
//! a [`Resource`], the one way every source does it. The schema error names the field path; the
//! fields the document sets that the model does not know are returned, so each caller decides
//! what they mean (Istio's `istioctl validate` refuses them, istiod ignores them).

use serde::Deserializer;
use serde::de::DeserializeOwned;

use super::{FieldError, Resource, ResourceKind};

/// The document's root, as field paths name it when the problem is the whole document.
pub const ROOT_PATH: &str = "<document>";

/// A decoded resource and the fields it set that the model does not know (`spec.http[0].retrys`).
#[derive(Debug)]
pub struct Decoded {
    pub resource: Resource,
    pub unknown_fields: Vec<String>,
}

fn format_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", format_path(parent)),
        Path::Map { parent, key } => {
            let parent = format_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => format_path(parent),
    }
}

fn parse<'de, T: DeserializeOwned, D: Deserializer<'de>>(
    deserializer: D,
    unknown: &mut Vec<String>,
) -> Result<T, FieldError> {
    let mut track = |path: serde_ignored::Path<'_>| unknown.push(format_path(&path));
    let tracked = serde_ignored::Deserializer::new(deserializer, &mut track);
    serde_path_to_error::deserialize(tracked).map_err(|e| {
        let path = e.path().to_string();
        FieldError {
            path: if path == "." {
                ROOT_PATH.to_owned()
            } else {
                path
            },
            reason: e.into_inner().to_string(),
        }
    })
}

/// Decodes a whole object (with `apiVersion`, `kind`, `metadata`) of `kind`.
pub fn decode<'de, D: Deserializer<'de>>(
    kind: ResourceKind,
    deserializer: D,
) -> Result<Decoded, FieldError> {
    let mut unknown_fields = Vec::new();
    let unknown = &mut unknown_fields;
    macro_rules! parse {
        ($variant:ident) => {
            Resource::$variant(parse(deserializer, unknown)?)
        };
    }
    let resource = match kind {
        ResourceKind::VirtualService => parse!(VirtualService),
        ResourceKind::DestinationRule => parse!(DestinationRule),
        ResourceKind::ServiceEntry => parse!(ServiceEntry),
        ResourceKind::WorkloadEntry => parse!(WorkloadEntry),
        ResourceKind::Gateway => parse!(Gateway),
        ResourceKind::AuthorizationPolicy => parse!(AuthorizationPolicy),
        ResourceKind::PeerAuthentication => parse!(PeerAuthentication),
        ResourceKind::RequestAuthentication => parse!(RequestAuthentication),
        ResourceKind::Telemetry => parse!(Telemetry),
        ResourceKind::KubernetesGateway => parse!(KubernetesGateway),
        ResourceKind::GatewayClass => parse!(GatewayClass),
        ResourceKind::HTTPRoute => parse!(HTTPRoute),
        ResourceKind::GRPCRoute => parse!(GRPCRoute),
        ResourceKind::TCPRoute => parse!(TCPRoute),
        ResourceKind::TLSRoute => parse!(TLSRoute),
        ResourceKind::ReferenceGrant => parse!(ReferenceGrant),
        ResourceKind::Namespace => parse!(Namespace),
        ResourceKind::Pod => parse!(Pod),
        ResourceKind::Service => parse!(Service),
        ResourceKind::ServiceAccount => parse!(ServiceAccount),
        ResourceKind::EndpointSlice => parse!(EndpointSlice),
        ResourceKind::Node => Resource::Node(node_labels_only(parse(deserializer, unknown)?)),
    };
    // The type fields are read by whoever chose `kind`; a Kubernetes object's own status is
    // not ours to judge.
    unknown_fields.retain(|path| path != "apiVersion" && path != "kind");
    Ok(Decoded {
        resource,
        unknown_fields,
    })
}

/// A Node as the mesh keeps it: its name and labels (a pod's locality is read from its node's
/// topology labels), nothing of its status. A node's status changes at every heartbeat; kept
/// whole, each would look like a change of the mesh's configuration (istiod keeps only the
/// locality of a node for the same reason: `NodesCollection`).
fn node_labels_only(node: k8s_openapi::api::core::v1::Node) -> k8s_openapi::api::core::v1::Node {
    k8s_openapi::api::core::v1::Node {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: node.metadata.name,
            labels: node.metadata.labels,
            ..Default::default()
        },
        spec: None,
        status: None,
    }
}

/// What a field the model does not know means to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownFields {
    /// Refused, as `istioctl validate` (and the API server's strict field validation) does.
    Refuse,
    /// Accepted with a warning, as istiod does when it reads what the API server accepted.
    Warn,
}

/// What an unknown field of `kind` means when the caller's policy for Istio's kinds is
/// `istio`: the Gateway API's fields warn (its newer releases add fields), Kubernetes' core
/// fields are not ours to judge.
pub fn unknown_field_policy(kind: ResourceKind, istio: UnknownFields) -> Option<UnknownFields> {
    if kind.is_istio() {
        Some(istio)
    } else if kind.is_gateway_api() {
        Some(UnknownFields::Warn)
    } else {
        None
    }
}
