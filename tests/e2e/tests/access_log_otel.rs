//! Istio's OpenTelemetry access-log provider end to end: the mesh config declares an
//! `envoyOtelAls` provider (Istio's `EnvoyOpenTelemetryLogProvider`) whose collector is a
//! Service of the testbed, and a Telemetry attached to the waypoint selects it with the filter
//! `response.code >= 400`. The waypoint exports each admitted request as an OTLP LogRecord
//! over gRPC (`LogsService/Export`) to a real receiver this test serves in the collector's
//! pod: a request answered 503 arrives with the provider's text format as its body and its
//! labels as attributes (those that are not text as empty strings, as istiod sends them); one
//! answered 200 never does. With tracing on (an OpenTelemetry tracing provider, 0% sampling),
//! the record carries the trace id of the `traceparent` the request came with and the id of
//! the waypoint's span (the parent the app saw), as Envoy's OpenTelemetry access logger takes
//! them from the active span; its time is the request's start, before the app's delay, not
//! when the record was written. Needs root.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use waypoint::testing::otlp_logs::{
    LogsReceiver, record_attribute as attribute, string_value as text,
};
use weft_e2e::Mesh;
use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_with_collector};

const COLLECTOR_PORT: u16 = 4317;

/// Istio's Telemetry attached to the waypoint: the OpenTelemetry provider, failures only.
const FAILURES_TO_OTEL: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: failures, namespace: shop}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  accessLogging:
  - providers: [{name: otel-logs}]
    filter: {expression: "response.code >= 400"}
"#;

/// The caller's trace, not sampled (so no span is exported), and its span.
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// What the app waits before answering the failing request.
const DELAY: Duration = Duration::from_millis(400);

const MESH_CONFIG: &str = r#"
defaultConfig:
  tracing: {sampling: 0}
defaultProviders:
  tracing: [otel-traces]
extensionProviders:
- name: otel-traces
  opentelemetry: {service: otel-collector.shop.svc.cluster.local, port: 4317}
- name: otel-logs
  envoyOtelAls:
    service: otel-collector.shop.svc.cluster.local
    port: 4317
    logName: shop-access
    logFormat:
      text: "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%"
      labels:
        code: "%RESPONSE_CODE%"
        path: "%REQ(:PATH)%"
        upstream: "%UPSTREAM_HOST%"
        flags: "%RESPONSE_FLAGS%"
        retries: 3
        nested: {a: b}
"#;

#[test]
fn a_waypoint_exports_only_failing_requests_as_otlp_log_records() {
    let (pods, options) = reviews_with_collector(MESH_CONFIG);
    let mesh = Mesh::start(pods, options).expect("start the mesh");
    let receiver = LogsReceiver::default();
    let _collector = mesh.serve_grpc(
        "otel-collector",
        COLLECTOR_PORT,
        tonic::service::Routes::new(receiver.service()),
    );
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    mesh.await_waypoint(
        "waypoint",
        "a Telemetry selecting the OpenTelemetry provider",
        || mesh.write_config("telemetry.yaml", FAILURES_TO_OTEL),
    )
    .expect("the waypoint applies the Telemetry");

    let ok = mesh.curl_with("client", &[&format!("http://{VIP}/fine")]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let path = format!("/broken?status=503&delay_ms={}", DELAY.as_millis());
    let sent = SystemTime::now();
    let failed = mesh.curl_with(
        "client",
        &[
            "-H",
            &format!("traceparent: 00-{TRACE}-{CALLER_SPAN}-00"),
            &format!("http://{VIP}{path}"),
        ],
    );
    let returned = SystemTime::now();
    assert_eq!(failed.status, 503, "{}", failed.body);
    let forwarded: serde_json::Value = serde_json::from_str(&failed.body).unwrap();
    let parent = forwarded["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        mesh.eventually(Duration::from_secs(15), || !receiver.records().is_empty()),
        "no LogRecord reached the collector\n{}\n{}",
        mesh.waypoint_metrics("waypoint"),
        mesh.log_of("waypoint-waypoint")
    );
    // Records leave in the order their requests end: the 200, had it been admitted, would
    // have been exported with the 503 or before it.
    let records = receiver.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    let cluster = "outbound|80||reviews.shop.svc.cluster.local";
    assert_eq!(
        text(record.body.as_ref()),
        Some(format!("GET {path} 503 {cluster}").as_str()),
        "{record:?}"
    );
    assert_eq!(attribute(record, "code"), Some("503"));
    assert_eq!(attribute(record, "path"), Some(path.as_str()));
    // Retried under Istio's default policy until its retries ran out: Envoy's `URX`.
    assert_eq!(attribute(record, "flags"), Some("URX"));
    // Labels that are not text are empty strings, as istiod sends them
    // (`ConvertStructToAttributeKeyValues`: `GetStringValue()`).
    assert_eq!(attribute(record, "retries"), Some(""));
    assert_eq!(attribute(record, "nested"), Some(""));
    let upstream = attribute(record, "upstream").unwrap_or_default();
    assert_eq!(
        upstream
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip()),
        Some(mesh.pod("reviews-v1").ip.into()),
        "the upstream is the reviews pod: {record:?}"
    );
    // The active span's ids (envoy `access_log_impl.cc` `emitLog`): the caller's trace, and
    // the waypoint's span, which the app saw as its parent.
    assert_eq!(hex(&record.trace_id), TRACE, "{record:?}");
    assert_eq!(
        parent,
        format!("00-{TRACE}-{}-00", hex(&record.span_id)),
        "the record's span is the waypoint's, the app's parent: {record:?}"
    );
    // Envoy's time is the request's start (`stream_info.startTime()`): after the request was
    // sent, and at least the app's delay before its answer returned.
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
    assert!(
        nanos(sent) <= record.time_unix_nano
            && record.time_unix_nano + DELAY.as_nanos() as u64 <= nanos(returned),
        "record time {} not within [{}, {} - {DELAY:?}]",
        record.time_unix_nano,
        nanos(sent),
        nanos(returned)
    );
    // Istio sets Envoy's `disable_builtin_labels`: no `log_name` or node labels.
    let requests = receiver.requests();
    let resource = requests[0].resource_logs[0]
        .resource
        .clone()
        .unwrap_or_default();
    assert!(resource.attributes.is_empty(), "{resource:?}");
    // The collector holds the record before its answer reaches the exporter, which counts
    // the record exported only then.
    let exported = "weft_access_log_records_exported_total 1";
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh
            .waypoint_metrics("waypoint")
            .contains(exported)),
        "{exported}: {}",
        mesh.waypoint_metrics("waypoint")
    );
    let metrics = mesh.waypoint_metrics("waypoint");
    for sample in [
        "weft_access_log_records_dropped_total 0",
        "weft_access_log_records_failed_total 0",
    ] {
        assert!(metrics.contains(sample), "{sample}: {metrics}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
