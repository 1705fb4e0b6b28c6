use std::path::PathBuf;

use super::*;

fn crd_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

#[test]
fn committed_crds_match_generated_output() {
    let crds = crds();
    assert_eq!(crds.len(), 9);
    for crd in &crds {
        let path = crd_dir().join(file_name(crd));
        let committed = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}; run `cargo xtask crdgen`", path.display()));
        let generated = to_yaml(crd).unwrap();
        assert_eq!(
            committed,
            generated,
            "{} is stale; run `cargo xtask crdgen`",
            path.display()
        );
    }
}

/// Kubernetes' structural schema rules: every node typed, no `patternProperties`, no
/// `additionalProperties` beside `properties`, nothing but `required`/`not` in `oneOf`/`allOf`
/// branches, and no defaults.
fn walk(schema: &JSONSchemaProps, path: &str, problems: &mut Vec<String>) {
    if schema.pattern_properties.is_some() {
        problems.push(format!("{path}: patternProperties"));
    }
    if schema.properties.is_some() && schema.additional_properties.is_some() {
        problems.push(format!("{path}: properties with additionalProperties"));
    }
    if schema.default.is_some() {
        problems.push(format!("{path}: default"));
    }
    if schema.any_of.is_some() {
        problems.push(format!("{path}: anyOf"));
    }
    if schema.type_.is_none()
        && schema.x_kubernetes_preserve_unknown_fields != Some(true)
        && schema.x_kubernetes_int_or_string != Some(true)
    {
        problems.push(format!("{path}: no type"));
    }
    if schema.enum_.iter().flatten().any(|value| value.0.is_null()) {
        problems.push(format!("{path}: null in enum"));
    }
    let branches = schema.one_of.iter().flatten().chain(
        schema
            .all_of
            .iter()
            .flatten()
            .flat_map(|b| b.one_of.iter().flatten()),
    );
    for branch in branches {
        if branch.type_.is_some() || branch.properties.is_some() || branch.nullable.is_some() {
            problems.push(format!("{path}: oneOf branch with more than required/not"));
        }
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

fn rules(schema: &JSONSchemaProps, out: &mut Vec<String>) {
    out.extend(
        schema
            .x_kubernetes_validations
            .iter()
            .flatten()
            .map(|r| r.rule.clone()),
    );
    for child in schema.properties.iter().flat_map(|p| p.values()) {
        rules(child, out);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &schema.items {
        rules(items, out);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
        rules(values, out);
    }
}

#[test]
fn crds_serve_what_istio_serves() {
    let expected = [
        (
            "virtualservices.networking.istio.io",
            "VirtualService",
            "vs",
            3,
            3,
        ),
        (
            "destinationrules.networking.istio.io",
            "DestinationRule",
            "dr",
            3,
            2,
        ),
        (
            "serviceentries.networking.istio.io",
            "ServiceEntry",
            "se",
            3,
            4,
        ),
        (
            "workloadentries.networking.istio.io",
            "WorkloadEntry",
            "we",
            3,
            2,
        ),
        ("gateways.networking.istio.io", "Gateway", "gw", 3, 0),
        (
            "authorizationpolicies.security.istio.io",
            "AuthorizationPolicy",
            "ap",
            2,
            2,
        ),
        (
            "peerauthentications.security.istio.io",
            "PeerAuthentication",
            "pa",
            2,
            2,
        ),
        (
            "requestauthentications.security.istio.io",
            "RequestAuthentication",
            "ra",
            2,
            0,
        ),
        (
            "telemetries.telemetry.istio.io",
            "Telemetry",
            "telemetry",
            1,
            1,
        ),
    ];
    for (crd, (name, kind, short, versions, columns)) in crds().iter().zip(expected) {
        assert_eq!(crd.metadata.name.as_deref(), Some(name));
        assert_eq!(crd.spec.names.kind, kind);
        assert_eq!(
            crd.spec.names.list_kind.as_deref(),
            Some(&*format!("{kind}List"))
        );
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&[short.to_owned()][..])
        );
        let group = name.split_once('.').unwrap().1;
        assert_eq!(
            crd.spec.names.categories.as_deref(),
            Some(&["istio-io".to_owned(), group.replace('.', "-")][..])
        );
        assert_eq!(crd.spec.scope, "Namespaced");
        let names: Vec<&str> = crd.spec.versions.iter().map(|v| v.name.as_str()).collect();
        // Istio still stores Telemetry as v1alpha1.
        let want: &[&str] = match versions {
            3 => &["v1", "v1beta1", "v1alpha3"],
            2 => &["v1", "v1beta1"],
            _ => &["v1alpha1", "v1"],
        };
        assert_eq!(names, want, "{kind}");
        let stored: Vec<&str> = crd
            .spec
            .versions
            .iter()
            .filter(|v| v.storage)
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(stored, [want[0]], "{kind}: the first version is stored");
        for version in &crd.spec.versions {
            assert!(version.served, "{kind} {}", version.name);
            assert_eq!(
                version.schema, crd.spec.versions[0].schema,
                "{kind}: one schema for every version"
            );
            assert!(
                version
                    .subresources
                    .as_ref()
                    .is_some_and(|s| s.status.is_some()),
                "{kind} {}: status subresource",
                version.name
            );
            assert_eq!(
                version
                    .additional_printer_columns
                    .as_ref()
                    .map_or(0, Vec::len),
                columns,
                "{kind}: printer columns"
            );
        }
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .unwrap();
        let mut problems = Vec::new();
        walk(schema, kind, &mut problems);
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
        let properties = schema.properties.as_ref().unwrap();
        assert!(properties.contains_key("spec"));
        assert_eq!(
            properties["status"].x_kubernetes_preserve_unknown_fields,
            Some(true),
            "{kind}: status is Istio's free-form status"
        );
    }
}

#[test]
fn istio_cel_rules_come_from_the_model() {
    let all: Vec<(String, Vec<String>)> = crds()
        .iter()
        .map(|crd| {
            let mut out = Vec::new();
            let schema = crd.spec.versions[0]
                .schema
                .as_ref()
                .and_then(|s| s.open_api_v3_schema.as_ref())
                .unwrap();
            rules(schema, &mut out);
            (crd.spec.names.kind.clone(), out)
        })
        .collect();
    let has = |kind: &str, rule: &str| {
        all.iter()
            .any(|(k, rules)| k == kind && rules.iter().any(|r| r.contains(rule)))
    };
    for (kind, rule) in [
        ("VirtualService", "duration(self) >= duration('1ms')"),
        ("DestinationRule", "self.all(key, !key.contains(\"*\"))"),
        ("ServiceEntry", "DNS_ROUND_ROBIN"),
        (
            "ServiceEntry",
            "self.all(l1, self.exists_one(l2, l1.number == l2.number))",
        ),
        ("WorkloadEntry", "has(self.address) || has(self.network)"),
        (
            "Gateway",
            "(has(self.credentialName) ? 1 : 0) + (has(self.credentialNames) ? 1 : 0) <= 1",
        ),
        (
            "AuthorizationPolicy",
            "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0)",
        ),
        ("PeerAuthentication", "portLevelMtls"),
        ("RequestAuthentication", "url(self).getScheme()"),
        ("Telemetry", r#"self.operation : "") == "UPSERT""#),
        ("Telemetry", "duration(self) >= duration('1ms')"),
    ] {
        assert!(has(kind, rule), "{kind}: no rule {rule}");
    }
    // The one whose `spec` is optional in Istio is optional here: a `spec`-less
    // AuthorizationPolicy is valid; a ServiceEntry needs one.
    for crd in crds() {
        let schema = crd.spec.versions[0]
            .schema
            .clone()
            .and_then(|s| s.open_api_v3_schema)
            .unwrap();
        let spec_required = schema
            .required
            .is_some_and(|r| r.contains(&"spec".to_owned()));
        let kind = crd.spec.names.kind;
        assert_eq!(
            spec_required,
            kind == "ServiceEntry" || kind == "WorkloadEntry",
            "{kind}"
        );
    }
}
