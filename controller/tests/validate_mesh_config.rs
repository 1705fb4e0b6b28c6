//! `controller validate --mesh-config`: the mesh config is read with the resources. A gRPC
//! access-log service provider (`envoyHttpAls`, `envoyTcpAls`) is reported as accepted but not
//! applied, naming the field and the provider, without failing; a mesh config Istio would
//! refuse is an error naming the field.

use std::path::Path;
use std::process::Command;

use weft_test_support::temp::TempDir;

/// A Telemetry selecting the gRPC access-log service provider `als`.
const TELEMETRY: &str = "{apiVersion: telemetry.istio.io/v1, kind: Telemetry, metadata: {name: logs, namespace: shop}, spec: {accessLogging: [{providers: [{name: als}]}]}}";

/// Runs `controller validate --mesh-config <mesh> <resources>`: (success, stdout).
fn validate(mesh: &Path, resources: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_controller"))
        .arg("validate")
        .arg("--mesh-config")
        .arg(mesh)
        .arg(resources)
        .output()
        .expect("run controller validate");
    let stdout = String::from_utf8(output.stdout).expect("utf-8 output");
    (output.status.success(), stdout)
}

#[test]
fn grpc_access_log_service_providers_are_reported_as_not_applied() {
    let dir = TempDir::new("validate-mesh-config");
    let mesh = dir.join("mesh.yaml");
    let resources = dir.join("telemetry.yaml");
    std::fs::write(&resources, TELEMETRY).unwrap();
    std::fs::write(
        &mesh,
        "accessLogFile: /dev/stdout\nextensionProviders:\n- name: als\n  envoyHttpAls: {service: als.example.com, port: 9000}\n- name: tcp-als\n  envoyTcpAls: {service: als.example.com, port: 9000}\n- name: file\n  envoyFileAccessLog: {}\n",
    )
    .unwrap();
    let (ok, stdout) = validate(&mesh, &resources);
    assert!(ok, "{stdout}");
    for (field, provider) in [
        ("extensionProviders[0].envoyHttpAls", "als"),
        ("extensionProviders[1].envoyTcpAls", "tcp-als"),
    ] {
        let expected = format!(
            "MeshConfig: warning: {field} (provider {provider:?}): accepted but not applied by Weft: "
        );
        assert_eq!(
            stdout.lines().filter(|l| l.contains(&expected)).count(),
            1,
            "{expected}\n{stdout}"
        );
    }
    assert!(!stdout.contains("extensionProviders[2]"), "{stdout}");
    assert!(stdout.contains("; 0 error(s), "), "{stdout}");

    std::fs::write(
        &mesh,
        "extensionProviders:\n- name: otel\n  envoyOtelAls: {service: c.example.com, port: 70000}\n",
    )
    .unwrap();
    let (ok, stdout) = validate(&mesh, &resources);
    assert!(!ok, "{stdout}");
    assert!(
        stdout.contains("extensionProviders[0].envoyOtelAls.port: 70000 is not a port"),
        "{stdout}"
    );
}
