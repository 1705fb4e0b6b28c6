use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderMap;
use prometheus_client::registry::Registry;

use super::*;
use crate::access_log::AccessLogs;
use crate::metrics::{Metrics, RequestRecord};
use crate::telemetry::export::QUEUE_CAPACITY;
use crate::testing::otlp_logs::{
    LogsReceiver, record_attribute as attribute, string_value as text,
};

/// Envoy's LogRecord: a string body, string attributes in the labels' order, the start time
/// in nanoseconds since the epoch, no trace without a span; nothing else set.
#[test]
fn a_record_is_its_body_attributes_and_time() {
    let time = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
    let record = log_record(
        "GET /ok 200\n".to_owned(),
        [("code", "200".to_owned()), ("upstream", "-".to_owned())],
        time,
        None,
    );
    assert_eq!(record.time_unix_nano, 1_700_000_000_123_000_000);
    assert_eq!(text(record.body.as_ref()), Some("GET /ok 200\n"));
    let keys: Vec<_> = record.attributes.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["code", "upstream"]);
    assert_eq!(attribute(&record, "code"), Some("200"));
    assert_eq!(attribute(&record, "upstream"), Some("-"));
    assert_eq!(record.severity_number, 0);
    assert!(record.trace_id.is_empty() && record.span_id.is_empty());
}

/// Envoy's `emitLog` sets the record's ids from the request's active span: the 16-byte trace
/// id and the span's own 8-byte id.
#[test]
fn a_record_under_a_span_carries_its_trace_and_span_ids() {
    let trace: TraceId = *b"0123456789abcdef";
    let span: SpanId = *b"spanid08";
    let record = log_record(String::new(), [], SystemTime::now(), Some((trace, span)));
    assert_eq!(record.trace_id, trace);
    assert_eq!(record.span_id, span);
}

/// A collector that does not take records: the queue fills and each record beyond it is
/// dropped and counted, without waiting.
#[test]
fn a_full_queue_drops_and_counts_records() {
    let exporter = BatchExporter::<Logs>::default();
    let mut registry = Registry::default();
    exporter.register(&mut registry);
    let collector = Arc::new(Collector {
        endpoints: vec!["127.0.0.1:9".to_owned()],
        service_name: String::new(),
        http: None,
        grpc: Default::default(),
    });
    for _ in 0..QUEUE_CAPACITY + 7 {
        exporter.submit(Arc::clone(&collector), LogRecord::default());
    }
    assert_eq!(exporter.dropped(), 7);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    assert!(
        text.contains("weft_access_log_records_dropped_total 7"),
        "{text}"
    );
}

fn otel_log(collector: &str, text: &str, filter: &str) -> proto::AccessLog {
    proto::AccessLog {
        provider: "otel".to_owned(),
        path: String::new(),
        format: Some(proto::access_log::Format::Text(text.to_owned())),
        filter: filter.to_owned(),
        otel: Some(proto::OtelAccessLog {
            collector: vec![collector.to_owned()],
            log_name: "otel_envoy_accesslog".to_owned(),
            attributes: [
                ("code", "%RESPONSE_CODE%"),
                ("path", "%REQ(:PATH)%"),
                ("upstream", "%UPSTREAM_HOST%"),
                // A label that is not text in the mesh config, as istiod sends it.
                ("count", ""),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        }),
        omit_empty_values: false,
        grpc: None,
    }
}

/// What an OpenTelemetry access log cannot be: a body that is not a text format, no
/// collector, an attribute Envoy would refuse.
#[test]
fn bad_otel_logs_are_refused_naming_the_log() {
    let mut json = otel_log("127.0.0.1:4317", "%RESPONSE_CODE%", "");
    json.format = Some(proto::access_log::Format::Json(
        proto::JsonLogFormat::default(),
    ));
    let mut no_collector = otel_log("127.0.0.1:4317", "%RESPONSE_CODE%", "");
    no_collector.otel.as_mut().unwrap().collector.clear();
    let mut bad_label = otel_log("127.0.0.1:4317", "%RESPONSE_CODE%", "");
    bad_label
        .otel
        .as_mut()
        .unwrap()
        .attributes
        .insert("x".into(), "%NOPE%".into());
    for (log, expected) in [
        (json, "body must be a text format"),
        (no_collector, "otel.collector"),
        (bad_label, "otel.attributes[x]"),
    ] {
        let message = AccessLogs::compile(&[log], "access_logs")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("access_logs[0] (provider \"otel\")") && message.contains(expected),
            "{message}"
        );
    }
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Through the waypoint's exporter to a real LogsService: only the request the filter
/// admits is exported, its body the text format with its newline, its attributes the
/// labels, its time the request's start and its ids those of the request's span; the resource carries no built-in labels (Istio's `disable_builtin_labels`).
#[tokio::test]
async fn records_reach_the_collector_where_the_filter_admits_them() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let receiver = LogsReceiver::default();
    let service = receiver.service();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    exporter().spawn();
    let logs = AccessLogs::compile(
        &[otel_log(
            &address.to_string(),
            "%REQ(:METHOD)% %REQ(:PATH)% %RESPONSE_CODE%\n",
            "response.code >= 400",
        )],
        "access_logs",
    )
    .unwrap()
    .unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    // The failing request is traced (its caller chose not to sample it: the waypoint's span
    // exists, unreported).
    let tracing = crate::telemetry::tracing_config(
        &proto::Tracing {
            provider: "otel".into(),
            collector: vec!["127.0.0.1:9".into()],
            random_sampling_percentage: 100.0,
            ..Default::default()
        },
        "waypoint",
        "shop",
        false,
        &|_| None,
    )
    .unwrap();
    let spans = crate::telemetry::SpanExporter::new("waypoint".into(), &mut Registry::default());
    let mut started = SystemTime::UNIX_EPOCH;
    let mut span_id = SpanId::default();
    for (path, status) in [("/ok", 200), ("/fails", 503)] {
        let mut record = RequestRecord::new(Arc::clone(&metrics));
        record.path = path.to_owned().into();
        record.set_access_logs(&logs, &HeaderMap::new());
        record.status = status;
        if status == 503 {
            let mut headers = HeaderMap::new();
            headers.insert(
                "traceparent",
                format!("00-{TRACE}-00f067aa0ba902b7-00").parse().unwrap(),
            );
            let span = crate::telemetry::RequestSpan::start(&tracing, &mut headers, &spans, 0.0);
            span_id = span.context.span_id;
            record.span = Some(span);
        }
        started = record.start_time();
        // The record is written when the request ends, later than it started.
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while exporter().exported() == 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(exporter().exported(), 1, "failed: {}", exporter().failed());
    let records = receiver.records();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(text(record.body.as_ref()), Some("GET /fails 503\n"));
    assert_eq!(attribute(record, "code"), Some("503"));
    assert_eq!(attribute(record, "path"), Some("/fails"));
    assert_eq!(attribute(record, "upstream"), Some("-"));
    assert_eq!(attribute(record, "count"), Some(""));
    // Envoy's record time is the request's start, not when it is written.
    assert_eq!(
        record.time_unix_nano,
        crate::telemetry::nanos(started),
        "{record:?}"
    );
    // The ids of the waypoint's span: the caller's trace, the waypoint's own span.
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(hex(&record.trace_id), TRACE);
    assert_eq!(record.span_id, span_id);
    assert_ne!(hex(&record.span_id), "00f067aa0ba902b7");
    let requests = receiver.requests();
    let resource = requests[0].resource_logs[0].resource.as_ref().unwrap();
    assert!(resource.attributes.is_empty(), "{resource:?}");
}
