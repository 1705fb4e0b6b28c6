//! Providers whose collector's service is not in the registry are skipped, as istiod's
//! `LookupCluster` failures skip them (`pilot/pkg/networking/core/tracing.go`,
//! `pilot/pkg/model/telemetry_logging.go` `openTelemetryLog`), and take effect once it exists.

use std::sync::Arc;

use weft_proto::waypoint as wp;

use super::super::super::tests::{OTEL_COLLECTOR, validated};
use super::super::tests::{MESH, waypoint_config};
use super::collector_warnings;
use crate::mesh_config::{MeshConfigWatch, parse};
use crate::translate::MeshSettings;

const SERVICE: &str = "otel-collector.observability.svc.cluster.local";

fn tracing_to(service: &str) -> String {
    format!(
        "defaultProviders: {{tracing: [otel]}}\nextensionProviders: [{{name: otel, opentelemetry: {{service: {service}, port: 4317}}}}]"
    )
}

/// The same collector host declared by a ServiceEntry in `namespace`.
fn entry(namespace: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: collector, namespace: {namespace}}}\nspec: {{hosts: [collector.corp.internal], ports: [{{number: 4317, name: grpc, protocol: GRPC}}], resolution: DNS}}\n"
    )
}

/// istiod's `configureFromProviderConfig` fails for a provider it cannot find the cluster of:
/// the listener gets no tracer (trace headers pass untouched) rather than an exporter to a
/// host nothing resolves. The Service added, the same mesh config traces to its pod.
#[test]
fn a_tracing_provider_without_its_collector_service_configures_no_tracer_until_it_exists() {
    let mesh_config = tracing_to(SERVICE);
    assert_eq!(waypoint_config(&mesh_config, "").tracing, None);
    let tracing = waypoint_config(&mesh_config, OTEL_COLLECTOR)
        .tracing
        .expect("tracing once the collector's Service exists");
    assert_eq!(tracing.provider, "otel");
    assert_eq!(tracing.collector, ["10.0.0.50:14317"]);
}

/// `LookupCluster`'s rules: `namespace/hostname` only in that namespace; a bare hostname when
/// exactly one namespace has it (a Kubernetes Service or a ServiceEntry host, which the
/// waypoint resolves), none when several do.
#[test]
fn the_collector_is_looked_up_as_istiods_lookup_cluster_finds_it() {
    let collector = |service: &str, resources: &str| {
        waypoint_config(&tracing_to(service), resources)
            .tracing
            .map(|t| t.collector)
    };
    let ten = Some(vec!["10.0.0.50:14317".to_owned()]);
    assert_eq!(
        collector(&format!("observability/{SERVICE}"), OTEL_COLLECTOR),
        ten
    );
    assert_eq!(collector(&format!("shop/{SERVICE}"), OTEL_COLLECTOR), None);
    let host = Some(vec!["collector.corp.internal:4317".to_owned()]);
    assert_eq!(
        collector("collector.corp.internal", &entry("observability")),
        host
    );
    assert_eq!(
        collector(
            "observability/collector.corp.internal",
            &entry("observability")
        ),
        host
    );
    let twice = format!("{}{}", entry("observability"), entry("tools"));
    assert_eq!(collector("collector.corp.internal", &twice), None);
    assert_eq!(collector("tools/collector.corp.internal", &twice), host);
    assert_eq!(collector("collector.corp.internal", ""), None);
}

/// istiod's `openTelemetryLog` returns no access log for a provider whose collector it
/// cannot find, so `Telemetries.AccessLogging` keeps only the other providers, and with none
/// left `setHTTPAccessLog` falls back to the mesh's `accessLogFile`.
#[test]
fn an_otel_access_log_without_its_collector_service_leaves_the_others_or_the_mesh_file() {
    let logs = |defaults: &str, resources: &str| -> Vec<(String, String, Vec<String>)> {
        let config = waypoint_config(
            &format!(
                "accessLogFile: /tmp/mesh.log\ndefaultProviders: {{accessLogging: [{defaults}]}}\nextensionProviders: [{{name: otel, envoyOtelAls: {{service: {SERVICE}, port: 4317}}}}, {{name: file, envoyFileAccessLog: {{path: /tmp/file.log}}}}]"
            ),
            resources,
        );
        config
            .access_logs
            .into_iter()
            .map(|l: wp::AccessLog| {
                (
                    l.provider,
                    l.path,
                    l.otel.map(|o| o.collector).unwrap_or_default(),
                )
            })
            .collect()
    };
    let mesh_file = vec![(String::new(), "/tmp/mesh.log".to_owned(), vec![])];
    let file = ("file".to_owned(), "/tmp/file.log".to_owned(), vec![]);
    let otel = (
        "otel".to_owned(),
        String::new(),
        vec!["10.0.0.50:14317".to_owned()],
    );
    assert_eq!(logs("otel", ""), mesh_file);
    assert_eq!(logs("otel, file", ""), std::slice::from_ref(&file));
    assert_eq!(logs("otel", OTEL_COLLECTOR), std::slice::from_ref(&otel));
    assert_eq!(logs("otel, file", OTEL_COLLECTOR), [file, otel]);
}

/// The controller's log and `controller validate` name the provider, its kind and the missing
/// service; the warning goes once the Service exists.
#[test]
fn a_missing_collector_is_a_warning_naming_the_provider_and_its_service() {
    let mesh_config = format!(
        "extensionProviders: [{{name: traces, opentelemetry: {{service: {SERVICE}, port: 4317}}}}, {{name: logs, envoyOtelAls: {{service: observability/{SERVICE}, port: 4317}}}}, {{name: file, envoyFileAccessLog: {{}}}}]"
    );
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", &mesh_config).unwrap())),
        ..Default::default()
    };
    let warnings = collector_warnings(&validated(MESH), &settings);
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "extensionProviders[0].opentelemetry (provider \"traces\"): service \"{SERVICE}\" is not in the service registry"
        )),
        "{}",
        warnings[0]
    );
    assert!(warnings[0].contains("export no spans"), "{}", warnings[0]);
    assert!(
        warnings[1].starts_with(&format!(
            "extensionProviders[1].envoyOtelAls (provider \"logs\"): service \"observability/{SERVICE}\" is not in the service registry"
        )),
        "{}",
        warnings[1]
    );
    let found = validated(&format!("{MESH}{OTEL_COLLECTOR}"));
    assert_eq!(collector_warnings(&found, &settings), Vec::<String>::new());
}

/// A gRPC access-log service provider whose service is not in the registry is dropped as
/// istiod's `httpGrpcAccessLogFromTelemetry` drops it, so the mesh's `accessLogFile` is
/// written in its place; found, it is the log, streamed to its service, in place of the file.
#[test]
fn a_grpc_access_log_service_without_its_service_leaves_the_mesh_file() {
    let applied = |service: &str| {
        let config = waypoint_config(
            &format!(
                "accessLogFile: /tmp/mesh.log\ndefaultProviders: {{accessLogging: [als]}}\nextensionProviders: [{{name: als, envoyHttpAls: {{service: {service}, port: 9000}}}}]"
            ),
            "",
        );
        let paths: Vec<String> = config.access_logs.into_iter().map(|l| l.path).collect();
        (config.access_log_disabled, paths)
    };
    assert_eq!(
        applied("als.missing.example"),
        (false, vec!["/tmp/mesh.log".to_owned()])
    );
    assert_eq!(applied("als.example.com"), (false, vec![String::new()]));
}

/// A gRPC access-log service provider whose service is missing is warned of as an
/// OpenTelemetry one is, naming its field, the provider and the service; none once it exists.
#[test]
fn a_missing_access_log_service_is_a_warning_naming_the_provider() {
    let mesh_config = format!(
        "extensionProviders: [{{name: file, envoyFileAccessLog: {{}}}}, {{name: als, envoyTcpAls: {{service: {SERVICE}, port: 4317}}}}]"
    );
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", &mesh_config).unwrap())),
        ..Default::default()
    };
    let warnings = collector_warnings(&validated(MESH), &settings);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].starts_with(&format!(
            "extensionProviders[1].envoyTcpAls (provider \"als\"): service \"{SERVICE}\" is not in the service registry"
        )),
        "{}",
        warnings[0]
    );
    let found = validated(&format!("{MESH}{OTEL_COLLECTOR}"));
    assert_eq!(collector_warnings(&found, &settings), Vec::<String>::new());
}

/// Each provider dropped for want of its service is counted under istiod's label of its kind
/// (`provider_lookup_cluster_failures{type}`), again at each translation; once the service
/// exists, its providers are no longer counted.
#[test]
fn a_dropped_provider_is_counted_under_its_kind_at_each_translation() {
    let mesh_config = format!(
        "defaultProviders: {{tracing: [otel], accessLogging: [otel-log, http-als, tcp-als]}}\nextensionProviders: [{{name: otel, opentelemetry: {{service: {SERVICE}, port: 4317}}}}, {{name: otel-log, envoyOtelAls: {{service: {SERVICE}, port: 4317}}}}, {{name: http-als, envoyHttpAls: {{service: als.missing.example, port: 9000}}}}, {{name: tcp-als, envoyTcpAls: {{service: als.missing.example, port: 9000}}}}]"
    );
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", &mesh_config).unwrap())),
        ..Default::default()
    };
    let translate = |resources: &str| {
        let index = validated(&format!("{MESH}{resources}"));
        crate::translate::waypoint::waypoint_configs(&index, &settings, &mut Vec::new());
        settings.provider_lookup_failures.counts()
    };
    let once = translate("");
    let kinds: Vec<&str> = once.keys().copied().collect();
    assert_eq!(
        kinds,
        [
            "envoyHTTPAls",
            "envoyOtelAls",
            "envoyTCPAls",
            "opentelemetry"
        ]
    );
    // One count per proxy configuration that would use the provider (the waypoint's own and
    // each service's), the same for every kind here.
    let per_translation = once["opentelemetry"];
    assert!(per_translation >= 1);
    assert!(once.values().all(|n| *n == per_translation), "{once:?}");
    let twice = translate("");
    assert!(
        twice.values().all(|n| *n == 2 * per_translation),
        "{twice:?}"
    );
    let found = translate(OTEL_COLLECTOR);
    assert_eq!(found["opentelemetry"], 2 * per_translation);
    assert_eq!(found["envoyOtelAls"], 2 * per_translation);
    assert_eq!(found["envoyHTTPAls"], 3 * per_translation);
    assert_eq!(found["envoyTCPAls"], 3 * per_translation);
}
