//! Table-driven tests, one file per kind as Istio's `pkg/config/validation` has them. Each case
//! is a document (loaded as `controller validate` loads it), what must come of it (valid, an
//! error or a warning at a field path with a reason), and the Istio rule it follows: the Go
//! function of istio/istio `pkg/config/validation` or the CEL rule of Istio's CRD.

mod authorization_policy;
mod destination_rule;
mod edge;
mod gateway;
mod kubernetes;
mod peer_authentication;
mod request_authentication;
mod service_entry;
mod telemetry;
mod virtual_service;

use std::path::Path;

use crate::loader::{LoadError, load_str};

pub const NET: &str = "networking.istio.io/v1";
pub const SEC: &str = "security.istio.io/v1";

pub fn doc(api_version: &str, kind: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: t, namespace: ns}}\nspec: {spec}\n"
    )
}

/// What a case must produce.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// No error (warnings allowed).
    Valid,
    /// An error at this path whose reason contains this.
    Error(&'static str, &'static str),
    /// No error, and a warning at this path whose reason contains this.
    Warning(&'static str, &'static str),
    /// No error, and no warning that Weft does not apply a field (the fields are served).
    Applied,
}

pub struct Case {
    pub name: &'static str,
    /// The Istio rule the case follows.
    pub istio: &'static str,
    pub yaml: String,
    pub expect: Expect,
}

fn case(name: &'static str, istio: &'static str, yaml: String, expect: Expect) -> Case {
    Case {
        name,
        istio,
        yaml,
        expect,
    }
}

pub fn ok(name: &'static str, istio: &'static str, yaml: String) -> Case {
    case(name, istio, yaml, Expect::Valid)
}

/// Valid, and applied: no error and no "not applied" warning.
pub fn applied(name: &'static str, istio: &'static str, yaml: String) -> Case {
    case(name, istio, yaml, Expect::Applied)
}

pub fn bad(
    name: &'static str,
    istio: &'static str,
    yaml: String,
    path: &'static str,
    reason: &'static str,
) -> Case {
    case(name, istio, yaml, Expect::Error(path, reason))
}

pub fn warns(
    name: &'static str,
    istio: &'static str,
    yaml: String,
    path: &'static str,
    reason: &'static str,
) -> Case {
    case(name, istio, yaml, Expect::Warning(path, reason))
}

/// (path, reason) pairs.
pub type Found = Vec<(String, String)>;

/// Every (path, reason) of the errors, and of the warnings, of one document.
pub fn findings(yaml: &str) -> (Found, Found) {
    let report = load_str(Path::new("case.yaml"), yaml);
    let mut errors: Vec<(String, String)> = report
        .errors
        .into_iter()
        .map(|e| match e {
            LoadError::Document { path, problem, .. } => (path, problem.to_string()),
            LoadError::Read { path, source } => (path.display().to_string(), source.to_string()),
        })
        .collect();
    let mut warnings = Vec::new();
    for loaded in report.resources {
        let result = super::validate(&loaded.resource);
        errors.extend(result.errors.into_iter().map(|e| (e.path, e.reason)));
        warnings.extend(
            loaded
                .warnings
                .into_iter()
                .chain(result.warnings)
                .map(|w| (w.path, w.reason)),
        );
    }
    (errors, warnings)
}

/// Runs a table; every failing case is reported with the rule it follows.
pub fn run(cases: &[Case]) {
    let mut failures = Vec::new();
    for case in cases {
        assert!(!case.istio.is_empty(), "{}: no Istio rule cited", case.name);
        let (errors, warnings) = findings(&case.yaml);
        let hit = |list: &[(String, String)], path: &str, reason: &str| {
            list.iter().any(|(p, r)| p == path && r.contains(reason))
        };
        let failure = match case.expect {
            Expect::Valid if !errors.is_empty() => Some(format!("expected valid, got {errors:?}")),
            Expect::Valid => None,
            Expect::Error(path, reason) if !hit(&errors, path, reason) => Some(format!(
                "expected error {path}: ...{reason}..., got {errors:?}"
            )),
            Expect::Error(..) => None,
            Expect::Warning(path, reason)
                if !errors.is_empty() || !hit(&warnings, path, reason) =>
            {
                Some(format!(
                    "expected only warning {path}: ...{reason}..., got errors {errors:?} warnings {warnings:?}"
                ))
            }
            Expect::Warning(..) => None,
            Expect::Applied => {
                let not_applied: Vec<_> = warnings
                    .iter()
                    .filter(|(_, r)| r.contains(crate::validation::NOT_APPLIED))
                    .collect();
                (!errors.is_empty() || !not_applied.is_empty()).then(|| {
                    format!("expected valid and applied, got errors {errors:?} not applied {not_applied:?}")
                })
            }
        };
        if let Some(failure) = failure {
            failures.push(format!("{} ({}): {failure}", case.name, case.istio));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} case(s) failing:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn every_finding_names_a_path_and_a_reason() {
    let documents = [
        doc(NET, "VirtualService", "{hosts: ['*'], http: [{}]}"),
        doc(
            SEC,
            "AuthorizationPolicy",
            "{action: DENY, rules: [{from: [{source: {}}], to: [{}]}]}",
        ),
        doc(NET, "DestinationRule", "{host: 'a.*', trafficPolicy: {}}"),
    ];
    for document in documents {
        let (errors, warnings) = findings(&document);
        assert!(!errors.is_empty(), "{document}");
        for (path, reason) in errors.iter().chain(&warnings) {
            assert!(
                !path.is_empty() && !reason.is_empty(),
                "{document}: {path:?} {reason:?}"
            );
        }
    }
}
