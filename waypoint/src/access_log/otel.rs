//! The `envoyOtelAls` provider's sink: each record becomes an OTLP LogRecord, exported over
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export` by the waypoint's
//! [`BatchExporter`] (bounded, never waited on: a full queue drops and counts the record,
//! `weft_access_log_records_dropped_total`).
//!
//! The record is Envoy's OpenTelemetry access logger's as istiod configures it (istio/istio
//! `pilot/pkg/model/telemetry_logging.go` `buildOpenTelemetryAccessLogConfig`): the body is
//! the text format (Istio's default TEXT format, newline included, when none is given), the
//! attributes are `logFormat.labels`, each a format rendered as text, the time is when the
//! request (or connection) started, and the trace and span ids are those of the waypoint's
//! span of the request, when tracing gave it one (envoy `access_loggers/open_telemetry/
//! access_log_impl.cc` `emitLog`: `stream_info.startTime()` and the active span's ids; a TCP
//! connection, or a request with tracing off, has no span and no ids). Istio sets `disable_builtin_labels`, so the resource carries none of Envoy's
//! `log_name`, `zone_name`, `cluster_name`, `node_name` (envoy `access_loggers/open_telemetry/
//! otlp_log_utils.cc` `initOtlpMessageRoot`): the request's resource is empty, as there.

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tonic::transport::Channel;
use weft_access_log::{Format, Record};
use weft_proto::waypoint as proto;

use super::LogContext;
use crate::telemetry::export::{BatchExporter, Collector, Signal};
use crate::telemetry::{SpanId, TraceId};

/// Access-log records, over `LogsService/Export`.
pub struct Logs;

impl Signal for Logs {
    type Item = LogRecord;
    type Request = ExportLogsServiceRequest;
    const NAME: &'static str = "access_log_records";
    const ITEMS: &'static str = "Access-log records sent to an OpenTelemetry collector";

    fn request(_: &Collector, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource::default()),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        }
    }

    async fn export(
        channel: Channel,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<(), tonic::Status> {
        LogsServiceClient::new(channel)
            .export(request)
            .await
            .map(drop)
    }
}

/// The process's access-log exporter. One per process, as the records of every
/// configuration share its queue; a configuration is compiled from its protobuf alone, so
/// its sinks find the exporter here rather than being handed it.
pub fn exporter() -> &'static BatchExporter<Logs> {
    static EXPORTER: OnceLock<BatchExporter<Logs>> = OnceLock::new();
    EXPORTER.get_or_init(BatchExporter::default)
}

/// One `envoyOtelAls` provider, compiled: where its records go and what they hold beyond the
/// body.
pub(super) struct OtelSink {
    collector: Arc<Collector>,
    /// `logFormat.labels`, by name.
    attributes: Vec<(String, Format)>,
    /// The text format ended in a newline, which Envoy keeps in the body.
    newline: bool,
}

impl OtelSink {
    pub(super) fn compile(otel: &proto::OtelAccessLog, text: &str) -> Result<OtelSink, String> {
        if otel.collector.is_empty() {
            return Err("otel.collector: must name an endpoint".to_owned());
        }
        let attributes = otel
            .attributes
            .iter()
            .map(|(name, format)| {
                Format::text(format)
                    .map(|f| (name.clone(), f))
                    .map_err(|e| format!("otel.attributes[{name}]: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(OtelSink {
            collector: Arc::new(Collector {
                endpoints: otel.collector.clone(),
                service_name: String::new(),
                http: None,
                grpc: Default::default(),
            }),
            attributes,
            newline: text.ends_with('\n'),
        })
    }

    /// Queues the record whose body `line` is (the text format, rendered).
    pub(super) fn submit(&self, mut line: String, entry: &(impl Record + LogContext)) {
        line.truncate(line.trim_end_matches('\n').len());
        if self.newline {
            line.push('\n');
        }
        let attributes = self
            .attributes
            .iter()
            .map(|(name, format)| {
                let mut value = String::new();
                format.render(entry, &mut value);
                // A rendered format is a line; an attribute is its text alone.
                value.truncate(value.trim_end_matches('\n').len());
                (name.as_str(), value)
            })
            .collect::<Vec<_>>();
        let record = log_record(line, attributes, entry.start_time(), entry.span());
        exporter().submit(Arc::clone(&self.collector), record);
    }
}

/// The LogRecord of one access-log entry: `body` and `attributes` already rendered, `start`
/// the entry's start, `span` the ids of the span it was served under.
pub(super) fn log_record<'a>(
    body: String,
    attributes: impl IntoIterator<Item = (&'a str, String)>,
    start: SystemTime,
    span: Option<(TraceId, SpanId)>,
) -> LogRecord {
    let (trace_id, span_id) = span.map_or_else(Default::default, |(trace, span)| {
        (trace.to_vec(), span.to_vec())
    });
    LogRecord {
        time_unix_nano: crate::telemetry::nanos(start),
        trace_id,
        span_id,
        body: Some(string(body)),
        attributes: attributes
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.to_owned(),
                value: Some(string(value)),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn string(value: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value)),
    }
}

#[cfg(test)]
mod tests;
