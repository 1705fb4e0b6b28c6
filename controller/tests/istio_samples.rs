//! Istio's own samples (`testdata/istio-samples`, copied unchanged from istio/istio) pass
//! `controller validate` as they are: the real binary, on every file alone and on every sample's
//! directory at once, exits 0 with no error, and reports what Weft accepts without applying.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/istio-samples")
}

/// Runs `controller validate <path>`: (exit status success, stdout).
fn validate(path: &Path) -> (bool, String) {
    validate_together(&[path.to_path_buf()])
}

fn validate_together(paths: &[PathBuf]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("validate")
        .args(paths)
        .output()
        .expect("run controller validate");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    (output.status.success(), stdout)
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("read sample directory")
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            yaml_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
}

/// The mesh documents of a file (Istio and Gateway API kinds): each must come out valid.
fn mesh_documents(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).expect("read sample");
    serde_yaml::Deserializer::from_str(&text)
        .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
        .filter(|value| {
            value
                .get("apiVersion")
                .and_then(|v| v.as_str())
                .is_some_and(|v| {
                    v.starts_with("networking.istio.io/")
                        || v.starts_with("security.istio.io/")
                        || v.starts_with("gateway.networking.k8s.io/")
                })
        })
        .filter(|value| value.get("kind").and_then(|k| k.as_str()) != Some("EnvoyFilter"))
        .count()
}

/// The summary line, e.g. "3 file(s), 7 document(s): 6 valid, 0 with errors, 1 skipped; ...".
fn summary(stdout: &str) -> &str {
    stdout
        .lines()
        .last()
        .expect("validate prints a summary line")
}

#[test]
fn every_sample_file_passes_validation_unchanged() {
    let mut files = Vec::new();
    yaml_files(&samples(), &mut files);
    assert!(files.len() >= 45, "samples present: {}", files.len());
    let mut mesh_total = 0;
    for file in &files {
        let (ok, stdout) = validate(file);
        let summary = summary(&stdout);
        assert!(ok, "{} refused:\n{stdout}", file.display());
        assert!(
            summary.contains(", 0 with errors,") && summary.contains("; 0 error(s)"),
            "{}: {summary}",
            file.display()
        );
        // No mesh document is lost: every Istio / Gateway API document counts as valid.
        let mesh = mesh_documents(file);
        mesh_total += mesh;
        let valid: usize = summary
            .split(": ")
            .nth(1)
            .and_then(|rest| rest.split(" valid").next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no valid count in {summary}"));
        // Kubernetes Services (and ServiceAccounts) are read too, so at least the mesh ones.
        assert!(valid >= mesh, "{}: {summary}", file.display());
    }
    assert!(mesh_total >= 60, "Istio documents checked: {mesh_total}");
}

#[test]
fn every_sample_directory_passes_validation_as_a_whole() {
    for sample in ["bookinfo", "helloworld", "httpbin", "tcp-echo"] {
        let (ok, stdout) = validate(&samples().join(sample));
        assert!(ok, "{sample} refused:\n{stdout}");
        assert!(
            summary(&stdout).contains("; 0 error(s)"),
            "{sample}: {}",
            summary(&stdout)
        );
    }
}

#[test]
fn what_the_samples_use_that_weft_does_not_apply_is_reported() {
    let bookinfo = samples().join("bookinfo");
    let expect = |file: &str, needles: &[&str]| {
        let (ok, stdout) = validate(&bookinfo.join(file));
        assert!(ok, "{file}:\n{stdout}");
        for needle in needles {
            assert!(
                stdout.contains(needle),
                "{file}: no {needle:?} in\n{stdout}"
            );
        }
    };
    // A kind Weft does not read is skipped and said so, never silently dropped.
    expect(
        "policy/productpage_envoy_ratelimit.yaml",
        &[
            "EnvoyFilter istio-system/filter-ratelimit: warning: skipped: Weft does not read EnvoyFilter",
        ],
    );
    // Gateway-bound routes apply at the gateway proxies the Gateway selects: nothing to say.
    let (ok, stdout) = validate(&bookinfo.join("networking/bookinfo-gateway.yaml"));
    assert!(ok, "{stdout}");
    assert!(
        !stdout.contains("accepted but not applied"),
        "bookinfo-gateway.yaml:\n{stdout}"
    );
    // TLS origination toward an external host (its DNS ServiceEntry) is applied as Istio
    // applies it: nothing to say.
    let (ok, stdout) = validate(&bookinfo.join("networking/egress-rule-google-apis.yaml"));
    assert!(ok, "{stdout}");
    assert!(
        !stdout.contains("accepted but not applied"),
        "egress-rule-google-apis.yaml:
{stdout}"
    );
    // Istio's own warning for this sample (its second rule is shadowed by the first).
    expect(
        "networking/fault-injection-details-v1.yaml",
        &[
            "spec.http[1]: virtualService rule #1 not used (only the last rule can have no matches) [IST0130 VirtualServiceUnreachableRule]",
        ],
    );
    // A route to a host no file defines, and (with bookinfo's Services and the DestinationRule
    // of the fault-injection sample, which has only v1) to a subset none defines, as
    // `istioctl analyze` says them.
    expect(
        "networking/virtual-service-details-v2.yaml",
        &[
            "spec.http[0].route[0].destination.host: Referenced host not found: \"details\" [IST0101 ReferencedResourceNotFound]",
        ],
    );
    let (ok, stdout) = validate_together(
        &[
            "platform/kube/bookinfo.yaml",
            "networking/fault-injection-details-v1.yaml",
            "networking/virtual-service-details-v2.yaml",
        ]
        .map(|file| bookinfo.join(file)),
    );
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains("spec.http[0].route[0].destination.subset: Referenced host+subset in destinationrule not found: \"details+v2\" [IST0101 ReferencedResourceNotFound]"),
        "{stdout}"
    );
    // Gateway API routes attached to a Service are applied at its waypoint: no warning.
    let (ok, stdout) = validate(&bookinfo.join("gateway-api/route-reviews-90-10.yaml"));
    assert!(ok, "{stdout}");
    assert!(
        summary(&stdout).contains("0 error(s), 0 warning(s)") && !stdout.contains("not applied"),
        "{stdout}"
    );
}

#[test]
fn a_directory_defining_a_resource_twice_names_the_definition_that_wins() {
    // The bookinfo networking samples are alternatives for the same names, as `kubectl apply`
    // of them one after the other would be: the later file's definition replaces the earlier.
    let (ok, stdout) = validate(&samples().join("bookinfo/networking"));
    assert!(ok, "{stdout}");
    assert!(
        stdout.contains(
            "virtual-service-reviews-v2-v3.yaml[doc 0] VirtualService default/reviews: warning: defined again at "
        ),
        "{stdout}"
    );
}
