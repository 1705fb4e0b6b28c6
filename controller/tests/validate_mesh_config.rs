//! `controller validate --mesh-config`: the mesh config is read with the resources. A gRPC
//! access-log service provider (`envoyHttpAls`, `envoyTcpAls`) is applied: no "not applied"
//! warning, but a warning naming the field, the provider and the service while that service
//! is not among the resources (istiod skips such a provider), gone once the Service is there;
//! a mesh config Istio would refuse is an error naming the field. An OpenTelemetry provider
//! whose collector's service is missing is likewise a warning, gone once the Service is there.

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

/// The Service `als` of `shop`, the access-log service the providers name.
const ALS_SERVICE: &str = "{apiVersion: v1, kind: Service, metadata: {name: als, namespace: shop}, spec: {ports: [{name: grpc, port: 9000}], selector: {app: als}}}";

#[test]
fn grpc_access_log_service_providers_are_applied_and_warned_of_while_their_service_is_missing() {
    let dir = TempDir::new("validate-mesh-config");
    let mesh = dir.join("mesh.yaml");
    let resources = dir.join("telemetry.yaml");
    std::fs::write(&resources, TELEMETRY).unwrap();
    std::fs::write(
        &mesh,
        "accessLogFile: /dev/stdout\nextensionProviders:\n- name: als\n  envoyHttpAls: {service: als.shop.svc.cluster.local, port: 9000}\n- name: tcp-als\n  envoyTcpAls: {service: als.shop.svc.cluster.local, port: 9000}\n- name: file\n  envoyFileAccessLog: {}\n",
    )
    .unwrap();
    let (ok, stdout) = validate(&mesh, &resources);
    assert!(ok, "{stdout}");
    assert!(!stdout.contains("not applied"), "{stdout}");
    for (field, provider) in [
        ("extensionProviders[0].envoyHttpAls", "als"),
        ("extensionProviders[1].envoyTcpAls", "tcp-als"),
    ] {
        let expected = format!(
            "MeshConfig: warning: {field} (provider {provider:?}): service \"als.shop.svc.cluster.local\" is not in the service registry"
        );
        assert_eq!(
            stdout.lines().filter(|l| l.contains(&expected)).count(),
            1,
            "{expected}\n{stdout}"
        );
    }
    assert!(!stdout.contains("extensionProviders[2]"), "{stdout}");
    assert!(stdout.contains("; 0 error(s), 2 warning(s)"), "{stdout}");

    // With the Service among the resources: nothing to say.
    std::fs::write(&resources, format!("{TELEMETRY}\n---\n{ALS_SERVICE}\n")).unwrap();
    let (ok, stdout) = validate(&mesh, &resources);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("; 0 error(s), 0 warning(s)"), "{stdout}");

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

/// The collector's Service of `shop`.
const COLLECTOR: &str = "{apiVersion: v1, kind: Service, metadata: {name: otel-collector, namespace: shop}, spec: {ports: [{name: grpc, port: 4317}], selector: {app: otel-collector}}}";

#[test]
fn a_provider_whose_collector_service_is_missing_is_a_warning_naming_it() {
    let dir = TempDir::new("validate-mesh-config-collector");
    let mesh = dir.join("mesh.yaml");
    let resources = dir.join("resources");
    std::fs::create_dir(&resources).unwrap();
    std::fs::write(
        resources.join("namespace.yaml"),
        "{apiVersion: v1, kind: Namespace, metadata: {name: shop}}",
    )
    .unwrap();
    std::fs::write(
        &mesh,
        "defaultProviders: {tracing: [traces]}\nextensionProviders:\n- name: traces\n  opentelemetry: {service: otel-collector.shop.svc.cluster.local, port: 4317}\n- name: logs\n  envoyOtelAls: {service: shop/otel-collector.shop.svc.cluster.local, port: 4317}\n",
    )
    .unwrap();
    let (ok, stdout) = validate(&mesh, &resources);
    assert!(
        ok,
        "a missing collector is a warning, not an error: {stdout}"
    );
    for (field, provider, service) in [
        (
            "extensionProviders[0].opentelemetry",
            "traces",
            "otel-collector.shop.svc.cluster.local",
        ),
        (
            "extensionProviders[1].envoyOtelAls",
            "logs",
            "shop/otel-collector.shop.svc.cluster.local",
        ),
    ] {
        let expected = format!(
            "MeshConfig: warning: {field} (provider {provider:?}): service {service:?} is not in the service registry"
        );
        assert_eq!(
            stdout.lines().filter(|l| l.contains(&expected)).count(),
            1,
            "{expected}\n{stdout}"
        );
    }
    std::fs::write(resources.join("collector.yaml"), COLLECTOR).unwrap();
    let (ok, stdout) = validate(&mesh, &resources);
    assert!(ok, "{stdout}");
    assert!(!stdout.contains("service registry"), "{stdout}");
    assert!(stdout.contains("; 0 error(s), 0 warning(s)"), "{stdout}");
}
