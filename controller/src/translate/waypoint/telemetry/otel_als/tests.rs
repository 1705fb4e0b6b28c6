//! `envoyOtelAls` providers: read from the mesh config (istiod's defaults, Istio's validation)
//! and sent to the waypoint with their collector resolved.

use weft_proto::waypoint as wp;

use super::super::super::tests::OTEL_COLLECTOR as COLLECTOR;
use super::super::tests::{telemetry, waypoint_config};
use crate::mesh_config::{DEFAULT_LOG_NAME, MeshConfigError, MeshConfigWatch, parse};

/// The waypoint's access logs under `mesh_config`, with the collector in the cluster.
fn access_logs(mesh_config: &str, telemetries: &[String]) -> Vec<wp::AccessLog> {
    waypoint_config(mesh_config, &format!("{COLLECTOR}{}", telemetries.concat())).access_logs
}

/// A provider with nothing but its collector: istiod's log name, Istio's default TEXT format
/// as the body (its newline kept, as `EnvoyTextLogFormat` ends in one), no attributes; the
/// Service resolved to its ready pod's target port, as the tracing collector is.
#[test]
fn a_default_otel_provider_sends_istios_text_format_to_the_collectors_pods() {
    let logs = access_logs(
        "defaultProviders: {accessLogging: [otel]}\nextensionProviders: [{name: otel, envoyOtelAls: {service: otel-collector.observability.svc.cluster.local, port: 4317}}]",
        &[],
    );
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = &logs[0];
    assert_eq!(log.provider, "otel");
    assert_eq!(
        log.format,
        Some(wp::access_log::Format::Text(format!(
            "{}\n",
            weft_access_log::DEFAULT_TEXT_FORMAT
        )))
    );
    let otel = log.otel.as_ref().expect("an OpenTelemetry access log");
    assert_eq!(otel.log_name, DEFAULT_LOG_NAME);
    assert_eq!(otel.log_name, "otel_envoy_accesslog");
    assert!(otel.attributes.is_empty());
    assert_eq!(otel.collector, ["10.0.0.50:14317"]);
}

/// Telemetry selects the provider with a filter; `logName`, `logFormat.text` and
/// `logFormat.labels` are the provider's; a collector no Service names is left for the
/// waypoint to resolve.
#[test]
fn a_telemetry_selected_otel_provider_carries_its_format_labels_and_filter() {
    let selected = telemetry(
        "logs",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: OTEL}], filter: {expression: 'response.code >= 400'}}]}",
    );
    let logs = access_logs(
        "extensionProviders: [{name: otel, envoyOtelAls: {service: collector.example.com, port: 4317, logName: shop-logs, logFormat: {text: '%REQ(:PATH)% %RESPONSE_CODE%', labels: {code: '%RESPONSE_CODE%', upstream: '%UPSTREAM_HOST%'}}}}]",
        &[selected],
    );
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = &logs[0];
    assert_eq!(log.filter, "response.code >= 400");
    assert_eq!(
        log.format,
        Some(wp::access_log::Format::Text(
            "%REQ(:PATH)% %RESPONSE_CODE%".into()
        ))
    );
    let otel = log.otel.as_ref().unwrap();
    assert_eq!(otel.log_name, "shop-logs");
    assert_eq!(otel.collector, ["collector.example.com:4317"]);
    assert_eq!(
        otel.attributes.iter().collect::<Vec<_>>(),
        [
            (&"code".to_owned(), &"%RESPONSE_CODE%".to_owned()),
            (&"upstream".to_owned(), &"%UPSTREAM_HOST%".to_owned())
        ]
    );
}

/// Istio's `ValidateExtensionProviderEnvoyOtelAls` (a port, a service) and Envoy's format
/// parser: a bad provider refuses the document, naming the field.
#[test]
fn a_bad_otel_provider_refuses_the_mesh_config_naming_the_field() {
    let refused = |provider: &str| -> String {
        let document = format!(
            "extensionProviders: [{{name: ok, envoyFileAccessLog: {{}}}}, {{name: otel, envoyOtelAls: {provider}}}]"
        );
        match parse("mesh", &document) {
            Err(MeshConfigError::Field { field, reason, .. }) => format!("{field}: {reason}"),
            other => panic!("{provider} was not refused: {other:?}"),
        }
    };
    let path = "extensionProviders[1].envoyOtelAls";
    for (provider, field) in [
        ("{port: 4317}", "service"),
        ("{service: '', port: 4317}", "service"),
        ("{service: 'ns/', port: 4317}", "service"),
        ("{service: c.example.com}", "port"),
        ("{service: c.example.com, port: 0}", "port"),
        ("{service: c.example.com, port: 65536}", "port"),
        ("{service: c.example.com, port: -1}", "port"),
        (
            "{service: c.example.com, port: 4317, logFormat: {text: '%NOT_A_COMMAND%'}}",
            "logFormat.text",
        ),
        (
            "{service: c.example.com, port: 4317, logFormat: {labels: {code: '%NOPE%'}}}",
            "logFormat.labels.code",
        ),
    ] {
        let message = refused(provider);
        assert!(
            message.starts_with(&format!("{path}.{field}: ")),
            "{provider}: {message}"
        );
    }
    assert!(refused("{service: c.example.com, port: 70000}").contains("70000 is not a port"));
}

/// Labels that are not text (a number, a boolean, null, a map, a list) are sent as empty
/// strings, as istiod's `ConvertStructToAttributeKeyValues`
/// (`pilot/pkg/model/telemetry_logging.go`) takes each label's `GetStringValue()`: accepted,
/// neither refused nor written as their text.
#[test]
fn labels_that_are_not_text_are_empty_attributes_as_istio_sends_them() {
    let logs = access_logs(
        "defaultProviders: {accessLogging: [otel]}\nextensionProviders: [{name: otel, envoyOtelAls: {service: c.example.com, port: 4317, logFormat: {labels: {code: '%RESPONSE_CODE%', count: 3, ratio: 0.5, on: true, none: null, nested: {a: b}, list: [a, 1]}}}}]",
        &[],
    );
    assert_eq!(logs.len(), 1, "{logs:?}");
    let attributes = &logs[0].otel.as_ref().unwrap().attributes;
    let expected: std::collections::BTreeMap<String, String> = [
        ("code", "%RESPONSE_CODE%"),
        ("count", ""),
        ("ratio", ""),
        ("on", ""),
        ("none", ""),
        ("nested", ""),
        ("list", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(attributes, &expected);
}

/// A refused change leaves the last good provider in force (what the waypoints are sent).
#[test]
fn a_refused_otel_provider_keeps_the_last_good_one() {
    let good =
        "extensionProviders: [{name: otel, envoyOtelAls: {service: c.example.com, port: 4317}}]";
    let watch = MeshConfigWatch::fixed(parse("mesh", good).unwrap());
    let bad =
        "extensionProviders: [{name: otel, envoyOtelAls: {service: c.example.com, port: 70000}}]";
    let error = watch.apply("mesh", bad.to_owned()).unwrap_err();
    assert!(
        error
            .to_string()
            .contains("extensionProviders[0].envoyOtelAls.port: 70000 is not a port"),
        "{error}"
    );
    let mesh = watch.access_logging();
    let otel = mesh.provider_named("otel").unwrap().otel.as_ref().unwrap();
    assert_eq!((otel.service.as_str(), otel.port), ("c.example.com", 4317));
}
