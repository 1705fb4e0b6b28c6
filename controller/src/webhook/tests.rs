use std::path::Path;

use serde_json::{Value, json};

use super::*;

fn request(operation: &str, group: &str, version: &str, kind: &str, object: Value) -> Vec<u8> {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": "x"},
            "namespace": "shop",
            "name": object["metadata"]["name"],
            "operation": operation,
            "object": object,
        }
    })
    .to_string()
    .into_bytes()
}

fn vs(spec: Value) -> Value {
    json!({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
           "metadata": {"name": "reviews", "namespace": "shop"}, "spec": spec})
}

fn answer(body: &[u8]) -> (bool, String, Vec<String>, Value) {
    let review = review(body);
    let response = &review["response"];
    (
        response["allowed"].as_bool().unwrap(),
        response["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        response["warnings"]
            .as_array()
            .map(|w| w.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default(),
        review,
    )
}

/// What `controller validate` prints for one document, without the file location.
fn validate_lines(yaml: &str) -> Vec<String> {
    let report = crate::loader::load_str(Path::new("x.yaml"), yaml);
    report
        .resources
        .iter()
        .flat_map(|loaded| {
            let prefix = format!(
                "{} {}",
                loaded.resource.kind(),
                crate::index::key(&loaded.resource)
            );
            let result = crate::validation::validate(&loaded.resource);
            result
                .errors
                .iter()
                .map(|e| format!("{prefix}: {e}"))
                .chain(result.warnings.iter().map(|w| format!("{prefix}: {w}")))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn a_valid_resource_is_allowed_and_the_review_answered_in_kind() {
    let body = request(
        "CREATE",
        "networking.istio.io",
        "v1",
        "VirtualService",
        vs(
            json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
        ),
    );
    let (allowed, message, warnings, review) = answer(&body);
    assert!(allowed, "{message}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    assert_eq!(
        review["response"]["uid"],
        "0c9a8d74-9cb7-44dd-b98e-09fd62def2f4"
    );
}

#[test]
fn an_invalid_resource_is_refused_with_the_messages_of_controller_validate() {
    let spec = json!({"hosts": ["*"], "http": [{"route": [{"destination": {"host": "reviews"}, "weight": -1}]}]});
    let (allowed, message, _, review) = answer(&request(
        "CREATE",
        "networking.istio.io",
        "v1",
        "VirtualService",
        vs(spec.clone()),
    ));
    assert!(!allowed);
    assert_eq!(review["response"]["status"]["code"], 400);
    let yaml = serde_yaml::to_string(&vs(spec)).unwrap();
    let lines = validate_lines(&yaml);
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        let (_, reason) = line.split_once(": ").unwrap();
        assert!(message.contains(reason), "{message} lacks {reason}");
    }
    assert!(
        message.starts_with("configuration is invalid: VirtualService shop/reviews: "),
        "{message}"
    );
}

#[test]
fn fields_not_applied_come_back_as_warnings() {
    let policy = json!({"apiVersion": "networking.istio.io/v1beta1", "kind": "DestinationRule",
        "metadata": {"name": "reviews", "namespace": "shop"},
        "spec": {"host": "reviews", "workloadSelector": {"matchLabels": {"app": "reviews"}}}});
    let (allowed, _, warnings, _) = answer(&request(
        "UPDATE",
        "networking.istio.io",
        "v1beta1",
        "DestinationRule",
        policy.clone(),
    ));
    assert!(allowed);
    let expected = validate_lines(&serde_yaml::to_string(&policy).unwrap());
    assert_eq!(warnings, expected);
    assert!(
        warnings[0].contains("spec.workloadSelector"),
        "{warnings:?}"
    );
}

#[test]
fn what_istio_does_not_judge_is_allowed_and_unknown_istio_types_are_refused() {
    let object = vs(json!({"hosts": ["*"]}));
    assert!(
        answer(&request(
            "DELETE",
            "networking.istio.io",
            "v1",
            "VirtualService",
            object
        ))
        .0
    );
    let sidecar = json!({"metadata": {"name": "s"}, "spec": {}});
    let (allowed, _, warnings, _) = answer(&request(
        "CREATE",
        "networking.istio.io",
        "v1",
        "Sidecar",
        sidecar.clone(),
    ));
    assert!(allowed);
    assert!(warnings[0].contains("not read by Weft"), "{warnings:?}");
    let (allowed, message, _, _) = answer(&request(
        "CREATE",
        "networking.istio.io",
        "v1",
        "Sidecars",
        sidecar,
    ));
    assert!(!allowed);
    assert!(message.contains("unrecognized type"), "{message}");
    let mut extra = vs(
        json!({"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]}),
    );
    extra["extra"] = json!(1);
    let (allowed, message, _, _) = answer(&request(
        "CREATE",
        "networking.istio.io",
        "v1",
        "VirtualService",
        extra,
    ));
    assert!(!allowed);
    assert!(message.contains("unknown field \"extra\""), "{message}");
}

#[test]
fn malformed_reviews_are_refused_not_dropped() {
    let (allowed, message, _, answered) = answer(b"{not json");
    assert!(!allowed);
    assert!(message.contains("could not decode body"), "{message}");
    assert_eq!(answered["kind"], "AdmissionReview");
    let v1beta1 = json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"});
    let answered = review(v1beta1.to_string().as_bytes());
    assert_eq!(answered["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(answered["response"]["allowed"], false);
}
