use std::path::PathBuf;

use super::*;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

#[test]
fn committed_crds_match_generated_output() {
    let crds = crds();
    assert_eq!(crds.len(), 6);
    for crd in &crds {
        let path = crd_dir().join(file_name(crd));
        let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run `cargo run -p controller -- crdgen`",
                path.display()
            )
        });
        let generated = to_yaml(crd).unwrap();
        assert_eq!(
            committed,
            generated,
            "{} is stale; run `cargo run -p controller -- crdgen`",
            path.display()
        );
    }
}

fn walk(schema: &JSONSchemaProps, path: &str, problems: &mut Vec<String>) {
    if schema.pattern_properties.is_some() {
        problems.push(format!("{path}: patternProperties"));
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        problems.push(format!("{path}: properties with additionalProperties"));
    }
    if schema.type_.is_none()
        && schema.x_kubernetes_preserve_unknown_fields != Some(true)
        && schema.x_kubernetes_int_or_string != Some(true)
    {
        problems.push(format!("{path}: no type"));
    }
    for (name, child) in schema.properties.iter().flatten() {
        walk(child, &format!("{path}.{name}"), problems);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        walk(items, &format!("{path}[]"), problems);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        walk(values, &format!("{path}{{}}"), problems);
    }
}

#[test]
fn crds_are_structural_and_namespaced_v1() {
    let expected = [
        ("virtualservices.networking.istio.io", "VirtualService"),
        ("destinationrules.networking.istio.io", "DestinationRule"),
        ("serviceentries.networking.istio.io", "ServiceEntry"),
        ("gateways.networking.istio.io", "Gateway"),
        (
            "authorizationpolicies.security.istio.io",
            "AuthorizationPolicy",
        ),
        (
            "peerauthentications.security.istio.io",
            "PeerAuthentication",
        ),
    ];
    for (crd, (name, kind)) in crds().iter().zip(expected) {
        assert_eq!(crd.metadata.name.as_deref(), Some(name));
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(crd.spec.scope, "Namespaced");
        assert_eq!(crd.spec.versions.len(), 1);
        assert_eq!(crd.spec.versions[0].name, "v1");
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        let mut problems = Vec::new();
        walk(schema, kind, &mut problems);
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
        assert!(schema.properties.as_ref().unwrap().contains_key("spec"));
    }
}
