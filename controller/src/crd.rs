//! CustomResourceDefinitions of the Istio kinds the mesh reads, generated from the model so the
//! definitions we install and the types we parse cannot disagree. They serve what Istio's serve:
//! `networking.istio.io` as `v1` (stored), `v1beta1` and `v1alpha3`, `security.istio.io` as `v1`
//! (stored) and `v1beta1`, `telemetry.istio.io` as `v1alpha1` (stored) and `v1`, one schema for all versions (so the API server converts between them
//! by relabelling), each with a `status` subresource, Istio's categories, short names and
//! printer columns, and its CEL rules (carried by the model, see [`crate::model::schema`]).
//!
//! The Gateway API's CRDs are not among them: Istio does not ship them either; they come from
//! the Gateway API project's release, installed before the chart.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

use crate::model::{
    AuthorizationPolicy, DestinationRule, Gateway, PeerAuthentication, RequestAuthentication,
    ResourceKind, ServiceEntry, Telemetry, VirtualService, WorkloadEntry,
};

/// The kinds whose CRDs we generate, with their CRD as kube derives it (one version).
fn generated() -> Vec<(ResourceKind, CustomResourceDefinition)> {
    vec![
        (ResourceKind::VirtualService, VirtualService::crd()),
        (ResourceKind::DestinationRule, DestinationRule::crd()),
        (ResourceKind::ServiceEntry, ServiceEntry::crd()),
        (ResourceKind::WorkloadEntry, WorkloadEntry::crd()),
        (ResourceKind::Gateway, Gateway::crd()),
        (
            ResourceKind::AuthorizationPolicy,
            AuthorizationPolicy::crd(),
        ),
        (ResourceKind::PeerAuthentication, PeerAuthentication::crd()),
        (
            ResourceKind::RequestAuthentication,
            RequestAuthentication::crd(),
        ),
        (ResourceKind::Telemetry, Telemetry::crd()),
    ]
}

/// The CRDs, in the order of [`generated`].
pub fn crds() -> Vec<CustomResourceDefinition> {
    generated()
        .into_iter()
        .map(|(kind, crd)| istio_crd(kind, crd))
        .collect()
}

fn istio_crd(kind: ResourceKind, mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    // Istio's own annotation: uninstalling the chart keeps the users' configuration.
    crd.metadata.annotations = Some(
        [("helm.sh/resource-policy".to_owned(), "keep".to_owned())]
            .into_iter()
            .collect(),
    );
    crd.spec.names.list_kind = Some(format!("{}List", crd.spec.names.kind));
    let mut stored = crd.spec.versions.remove(0);
    if let Some(schema) = stored
        .schema
        .as_mut()
        .and_then(|s| s.open_api_v3_schema.as_mut())
    {
        schema.description = None;
        // `spec` may be left out, except where Istio's CRDs require it.
        if !matches!(
            kind,
            ResourceKind::ServiceEntry | ResourceKind::WorkloadEntry
        ) {
            schema.required = None;
        }
        istio_schema(schema);
    }
    let versions = kind.versions();
    stored.name = versions[0].to_owned();
    stored.served = true;
    stored.storage = true;
    crd.spec.versions = versions
        .iter()
        .enumerate()
        .map(|(i, version)| {
            let mut served = stored.clone();
            served.name = (*version).to_owned();
            served.storage = i == 0;
            served
        })
        .collect();
    crd
}

/// Turns the model's schema into the structural schema Kubernetes takes, in Istio's form:
/// no defaults (the API server would write them into stored objects), no `additionalProperties`
/// beside `properties`.
fn istio_schema(schema: &mut JSONSchemaProps) {
    schema.default = None;
    // An optional field is `nullable`, never an `anyOf` with a null branch or a null enum value
    // (neither is structural); what else the `anyOf` held (a oneof) belongs to the field.
    if let Some(any_of) = schema.any_of.take() {
        let mut rest: Vec<JSONSchemaProps> = Vec::new();
        for branch in any_of {
            let only_null = branch
                .enum_
                .as_ref()
                .is_some_and(|values| values.iter().all(|v| v.0.is_null()));
            if only_null {
                schema.nullable = Some(true);
            } else {
                rest.push(branch);
            }
        }
        match rest.as_slice() {
            [] => {}
            [single] if single.properties.is_none() && single.type_.is_none() => {
                schema.one_of = single.one_of.clone().or(schema.one_of.take());
                schema.all_of = single.all_of.clone().or(schema.all_of.take());
            }
            _ => schema.any_of = Some(rest),
        }
    }
    if let Some(values) = schema.enum_.as_mut() {
        values.retain(|v| !v.0.is_null());
    }
    // Rust's integer widths are no OpenAPI formats; Istio's CRDs give ranges instead.
    if matches!(
        schema.format.as_deref(),
        Some("uint32" | "uint64" | "uint" | "int64")
    ) {
        schema.format = None;
    }
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
        istio_schema(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = schema.items.as_mut() {
        istio_schema(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = schema.additional_properties.as_mut() {
        istio_schema(values);
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
