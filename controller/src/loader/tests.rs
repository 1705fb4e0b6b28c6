use std::path::{Path, PathBuf};

use super::*;
use crate::validation::validate;

const MULTI: &str = "\
---
# productpage service
apiVersion: v1
kind: Service
metadata:
  name: productpage
spec:
  ports: [{name: http, port: 9080}]
---
---
# only a comment
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
  namespace: bookinfo
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: oops
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
spec:
  mtls: {mode: STRICT}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w, namespace: x}
---
apiVersion: v1
kind: Namespace
metadata: {name: bookinfo}
";

#[test]
fn multi_document_file_loads_good_documents_and_reports_bad_ones() {
    let report = load_str(Path::new("bookinfo.yaml"), MULTI);
    let (resources, errors) = (&report.resources, &report.errors);
    let loaded: Vec<(usize, String, String)> = resources
        .iter()
        .map(|r| {
            (
                r.location.index,
                r.resource.kind().to_string(),
                r.resource.name().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        loaded,
        vec![
            (0, "Service".to_owned(), "productpage".to_owned()),
            (2, "PeerAuthentication".to_owned(), "default".to_owned()),
            (4, "Namespace".to_owned(), "bookinfo".to_owned()),
        ]
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(report.documents, 5);

    let LoadError::Document {
        location,
        identity,
        path,
        problem,
    } = &errors[0]
    else {
        panic!("{:?}", errors[0])
    };
    assert_eq!(location.file, PathBuf::from("bookinfo.yaml"));
    assert_eq!(location.index, 1);
    assert_eq!(identity.kind.as_deref(), Some("VirtualService"));
    assert_eq!(identity.namespace.as_deref(), Some("bookinfo"));
    assert_eq!(identity.name.as_deref(), Some("reviews"));
    assert_eq!(path, "spec.http[0].route[0].weight");
    assert!(problem.to_string().contains("invalid type"), "{problem}");
    assert_eq!(
        errors[0].to_string().split(": ").next(),
        Some("bookinfo.yaml[doc 1] VirtualService bookinfo/reviews")
    );

    // A kind the mesh does not read is skipped, not refused (as `istioctl validate` does).
    let [skipped] = report.skipped.as_slice() else {
        panic!("{:?}", report.skipped)
    };
    assert_eq!(skipped.location.index, 3);
    assert_eq!(skipped.identity.name.as_deref(), Some("w"));
    assert!(skipped.reason.starts_with(NOT_READ), "{}", skipped.reason);
}

#[test]
fn namespace_defaults_to_default_for_namespaced_kinds_only() {
    let report = load_str(Path::new("f.yaml"), MULTI);
    let (resources, errors) = (&report.resources, &report.errors);
    assert!(errors.len() == 1);
    assert_eq!(resources[0].resource.namespace(), "default");
    assert_eq!(resources[1].resource.namespace(), "default");
    assert_eq!(resources[2].resource.namespace(), "");
}

#[test]
fn document_problems_are_reported_with_paths() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "kind: Service\nmetadata: {name: a}\n",
            "apiVersion",
            "required field is missing",
        ),
        (
            "apiVersion: v1\nmetadata: {name: a}\n",
            "kind",
            "required field is missing",
        ),
        (
            "apiVersion: v1\nkind: Service\n",
            "metadata",
            "required field is missing",
        ),
        (
            "apiVersion: v1\nkind: Service\nmetadata: {namespace: a}\n",
            "metadata.name",
            "required field is missing",
        ),
        ("- a\n- b\n", "<document>", "not a mapping"),
        (
            "apiVersion: v1\nkind: [Service\n",
            "<document>",
            "invalid YAML",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspecs: {}\n",
            "specs",
            "unknown field",
        ),
        (
            "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: a}\n",
            "kind",
            "unknown kind",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: Sidecars\nmetadata: {name: a}\n",
            "kind",
            "unknown kind",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: a}\n",
            "spec",
            "Required value",
        ),
        (
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: a}\nspec: {hosts: [a], http: [{retrys: 1, route: [{destination: {host: a}}]}]}\n",
            "spec.http[0].retrys",
            "unknown field",
        ),
    ];
    for (yaml, want_path, want_reason) in cases {
        let report = load_str(Path::new("x.yaml"), yaml);
        let (resources, errors) = (&report.resources, &report.errors);
        assert!(resources.is_empty(), "{yaml}");
        let [LoadError::Document { path, problem, .. }] = errors.as_slice() else {
            panic!("{yaml}: {errors:?}")
        };
        assert_eq!(path, *want_path, "{yaml}");
        assert!(
            problem.to_string().contains(want_reason),
            "{yaml}: {problem}"
        );
    }
}

#[test]
fn older_istio_versions_load_as_the_same_kind() {
    let yaml = "apiVersion: networking.istio.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\nspec: {host: reviews}\n";
    let report = load_str(Path::new("x.yaml"), yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert!(matches!(
        report.resources[0].resource,
        Resource::DestinationRule(_)
    ));
}

#[test]
fn istio_kinds_the_mesh_does_not_read_are_skipped_and_reported() {
    let yaml = "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: {name: s}\nspec: {egress: [{hosts: ['./*']}]}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: t}\nspec: {}\n";
    let report = load_str(Path::new("x.yaml"), yaml);
    assert!(report.errors.is_empty() && report.resources.is_empty());
    let reasons: Vec<&str> = report.skipped.iter().map(|s| s.reason.as_str()).collect();
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0].contains("Weft does not read Sidecar"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("Weft does not read WasmPlugin"),
        "{reasons:?}"
    );
}

#[test]
fn gateway_api_fields_the_model_does_not_know_warn() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec: {gatewayClassName: istio-waypoint, futureField: 1, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}\n";
    let report = load_str(Path::new("x.yaml"), yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let warnings = &report.resources[0].warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].path, "spec.futureField");
}

#[test]
fn load_paths_recurses_and_reports_unreadable_paths() {
    let dir = weft_test_support::temp::TempDir::new("loader-test");
    let nested = dir.join("nested");
    std::fs::create_dir_all(&nested).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: a}\n",
    )
    .unwrap();
    std::fs::write(
        nested.join("b.yml"),
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: b}\n",
    )
    .unwrap();
    std::fs::write(nested.join("notes.txt"), "not yaml: [").unwrap();
    let missing = dir.join("missing");
    let report = load_paths(&[dir.path().to_owned(), missing.clone()]);

    assert_eq!(report.files, 2);
    assert_eq!(report.documents, 2);
    let names: Vec<&str> = report.resources.iter().map(|r| r.resource.name()).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(matches!(&report.errors[..], [LoadError::Read { path, .. }] if *path == missing));
}

#[test]
fn deploy_examples_validate_clean() {
    let examples = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let report = load_paths(&[&examples]);
    assert!(
        report.errors.is_empty(),
        "{:#?}",
        report
            .errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );
    assert!(
        report.resources.len() >= 20,
        "only {} resources",
        report.resources.len()
    );
    let mut problems = Vec::new();
    for loaded in &report.resources {
        for error in validate(&loaded.resource).errors {
            problems.push(format!(
                "{} {}: {error}",
                loaded.location,
                loaded.resource.name()
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let kinds: std::collections::BTreeSet<_> =
        report.resources.iter().map(|r| r.resource.kind()).collect();
    use crate::model::ResourceKind as K;
    // Every kind the mesh applies (or reports on) is shown in the examples.
    for kind in [
        K::VirtualService,
        K::DestinationRule,
        K::ServiceEntry,
        K::Gateway,
        K::AuthorizationPolicy,
        K::PeerAuthentication,
        K::KubernetesGateway,
        K::Namespace,
        K::Pod,
        K::Service,
        K::ServiceAccount,
        K::EndpointSlice,
    ] {
        assert!(kinds.contains(&kind), "examples lack a {kind}");
    }
}
