//! CustomResourceDefinitions for the six Istio kinds, generated from the model's schemas so the
//! definitions we install and the types we parse cannot disagree.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::model::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, ServiceEntry, VirtualService,
};

/// The CRDs of VirtualService, DestinationRule, ServiceEntry, Gateway, AuthorizationPolicy and
/// PeerAuthentication, in that order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        VirtualService::crd(),
        DestinationRule::crd(),
        ServiceEntry::crd(),
        Gateway::crd(),
        AuthorizationPolicy::crd(),
        PeerAuthentication::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                make_structural(schema);
            }
        }
    }
    crds
}

/// Kubernetes forbids `additionalProperties` beside `properties` in a structural schema; the API
/// server prunes unknown fields anyway, so the `deny_unknown_fields` marker is dropped here.
fn make_structural(schema: &mut JSONSchemaProps) {
    // Integer-keyed maps (`portLevelMtls`) come out as `patternProperties`, which structural
    // schemas do not allow: a map is `additionalProperties: <value schema>`.
    if let Some(patterns) = schema.pattern_properties.take()
        && let Some(value_schema) = patterns.into_values().next()
    {
        schema.additional_properties = Some(JSONSchemaPropsOrBool::Schema(Box::new(value_schema)));
    }
    if schema.properties.is_some() {
        schema.additional_properties = None;
    }
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        make_structural(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        make_structural(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = schema.additional_properties.as_mut() {
        make_structural(values);
    }
}

/// File name under `deploy/crds/` for a CRD: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// The YAML written for a CRD.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

#[cfg(test)]
mod tests;
