//! Distributed tracing at the waypoint, as Envoy's OpenTelemetry tracer does it under Istio: one
//! server span per request, joined to the trace the request carries (W3C `traceparent`, else
//! B3) or starting one, sampled by the caller's decision when it made one and otherwise by the
//! configured percentage, named after the route's decorator operation (compiled by the
//! controller as istiod writes it), tagged with Envoy's and Istio's span attributes and
//! Telemetry's custom tags, and exported over OTLP/gRPC or OTLP/HTTP by [`export`]. The context of the
//! waypoint's span is written on what goes upstream, so the next hop's span is its child.
//!
//! The settings ([`TracingConfig`]) are part of the configuration snapshot, read per request: a
//! Telemetry change applies to the next request. Without them the waypoint leaves trace headers
//! as they are, as Envoy does with tracing off.

pub mod export;
mod propagation;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span, status};
use weft_proto::waypoint as proto;

pub use export::{Collector, GrpcExport, HttpExport, SpanExporter};
pub use propagation::{B3Style, IncomingContext, OutgoingContext, SpanId, TraceId};

use crate::access_log::{Captured, HeaderCapture, RequestEntry};
use crate::metrics::{RequestRecord, ResponseFlag};
use crate::model::{ConfigError, invalid};

/// The tracing, access logging and metric overrides in force for some traffic: the waypoint's
/// own (`WaypointConfig.tracing`, `access_log_disabled`, `metric_overrides`) or a service's
/// (`WaypointService.telemetry`), chosen for each request and connection by where it is
/// addressed ([`crate::model::WaypointConfig::telemetry_for`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    /// `None`: no span, and trace headers pass untouched.
    pub tracing: Option<Arc<TracingConfig>>,
    /// Telemetry's `accessLogging[].disabled`: no access-log line (metrics are unchanged).
    pub access_log_disabled: bool,
    /// The access logs Telemetry and the mesh config select; `None`: the default line.
    pub access_logs: Option<Arc<crate::access_log::AccessLogs>>,
    /// Telemetry's `metrics[].overrides` of the request and TCP metrics; `None`: Istio's
    /// standard metrics.
    pub metrics: Option<Arc<crate::metrics::MetricOverrides>>,
}

/// Where spans go and which requests are sampled (`WaypointConfig.tracing`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// The collector and the resource its spans are reported as; `None` with
    /// `disableSpanReporting` (context is still propagated).
    pub collector: Option<Arc<Collector>>,
    /// Percentage of the requests without an incoming decision that are sampled, 0 to 100.
    pub sampling_percentage: f64,
    /// The waypoint itself, as Istio's custom tags name the proxy.
    pub canonical_service: String,
    pub namespace: String,
    /// SERVER at a waypoint; CLIENT at a gateway, whose listeners Istio marks outbound so that
    /// Envoy's tracer reports its spans as egress.
    pub span_kind: span::SpanKind,
    /// Telemetry's `customTags`, added to every span (shared with each sampled span, which
    /// reads its header tags again as the request is forwarded).
    pub custom_tags: Arc<[SpanTag]>,
    /// The request and response headers the formatter tags read beyond the request's record.
    pub format_headers: Arc<HeaderCapture>,
}

/// One custom tag (Telemetry `customTags`): a literal (environment variables are read when
/// the configuration is applied, as Envoy reads them when it loads its own), a request
/// header's value, or a substitution format evaluated when the span ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanTag {
    pub tag: String,
    pub value: SpanTagValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpanTagValue {
    Literal(String),
    /// The request's header, else the default; neither: no tag.
    Header {
        name: http::HeaderName,
        default: Option<String>,
    },
    /// Istio's `formatter` (Envoy's `CustomTag.value`): the access log's substitution format,
    /// parsed when the configuration is applied and evaluated on the request's record when
    /// the span ends. An absent operator reads `-`, as in a text access log.
    Format(weft_access_log::Format),
}

/// The request header with which a proxy names the span of the next one (Envoy's
/// `x-envoy-decorator-operation`): a gateway sends its route's operation, a waypoint names
/// its span with what it receives and does not pass it on.
pub const DECORATOR_OPERATION: http::HeaderName =
    http::HeaderName::from_static("x-envoy-decorator-operation");

/// Checks and converts the tracing section; `waypoint` and `namespace` name the proxy, `edge`
/// says it is a gateway, `environment` reads the proxy's environment variables.
pub(crate) fn tracing_config(
    tracing: &proto::Tracing,
    waypoint: &str,
    namespace: &str,
    edge: bool,
    environment: &dyn Fn(&str) -> Option<String>,
) -> Result<TracingConfig, ConfigError> {
    let percentage = tracing.random_sampling_percentage;
    if !(0.0..=100.0).contains(&percentage) {
        return Err(invalid(
            "tracing.random_sampling_percentage",
            format!("{percentage} is not a percentage between 0 and 100"),
        ));
    }
    let collector = if tracing.disable_span_reporting {
        None
    } else {
        if tracing.collector.is_empty() {
            return Err(invalid(
                "tracing.collector",
                format!("provider {:?} has no collector address", tracing.provider),
            ));
        }
        for (i, address) in tracing.collector.iter().enumerate() {
            let valid = address.parse::<SocketAddr>().is_ok()
                || address
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(invalid(
                    &format!("tracing.collector[{i}]"),
                    format!("{address:?} is not host:port"),
                ));
            }
        }
        Some(Arc::new(Collector {
            endpoints: tracing.collector.clone(),
            service_name: if tracing.service_name.is_empty() {
                format!("{waypoint}.{namespace}")
            } else {
                tracing.service_name.clone()
            },
            http: tracing.http.as_ref().map(http_export).transpose()?,
            grpc: tracing
                .grpc
                .as_ref()
                .map(grpc_export)
                .transpose()?
                .unwrap_or_default(),
        }))
    };
    let custom_tags = tracing
        .custom_tags
        .iter()
        .map(|t| span_tag(t, environment))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect::<Arc<[SpanTag]>>();
    let mut format_headers = HeaderCapture::default();
    for tag in custom_tags.iter() {
        if let SpanTagValue::Format(format) = &tag.value {
            format_headers.read_by(format);
        }
    }
    Ok(TracingConfig {
        custom_tags,
        format_headers: Arc::new(format_headers),
        collector,
        sampling_percentage: percentage,
        canonical_service: if tracing.canonical_service.is_empty() {
            waypoint.to_owned()
        } else {
            tracing.canonical_service.clone()
        },
        namespace: namespace.to_owned(),
        span_kind: if edge {
            span::SpanKind::Client
        } else {
            span::SpanKind::Server
        },
    })
}

/// `tracing.http` checked: a `/`-rooted path, a positive timeout and valid headers.
fn http_export(http: &proto::OtlpHttp) -> Result<HttpExport, ConfigError> {
    if !http.path.starts_with('/') || http.path.parse::<http::uri::PathAndQuery>().is_err() {
        return Err(invalid(
            "tracing.http.path",
            format!("{:?} is not a /-rooted path", http.path),
        ));
    }
    let timeout = http
        .timeout
        .and_then(|t| std::time::Duration::try_from(t).ok())
        .filter(|t| !t.is_zero())
        .ok_or_else(|| invalid("tracing.http.timeout", "must be a positive duration"))?;
    Ok(HttpExport {
        path: http.path.clone(),
        timeout,
        headers: export_headers(&http.headers, "tracing.http.headers")?,
    })
}

/// `tracing.grpc` checked: a positive timeout when one is set and valid metadata.
fn grpc_export(grpc: &proto::OtlpGrpc) -> Result<GrpcExport, ConfigError> {
    let timeout = grpc
        .timeout
        .map(|t| {
            std::time::Duration::try_from(t)
                .ok()
                .filter(|t| !t.is_zero())
                .ok_or_else(|| invalid("tracing.grpc.timeout", "must be a positive duration"))
        })
        .transpose()?;
    Ok(GrpcExport {
        timeout,
        metadata: export_headers(&grpc.initial_metadata, "tracing.grpc.initial_metadata")?,
    })
}

/// The headers (or gRPC metadata) of an export, each name and value checked; `field` names
/// the list.
fn export_headers(
    headers: &[proto::OtlpHttpHeader],
    field: &str,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    headers
        .iter()
        .enumerate()
        .map(|(i, header)| {
            let name = http::HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                invalid(
                    &format!("{field}[{i}].name"),
                    format!("{:?} is not an HTTP header name", header.name),
                )
            })?;
            let value = http::HeaderValue::from_str(&header.value).map_err(|_| {
                invalid(
                    &format!("{field}[{i}].value"),
                    format!("the value of {:?} is not an HTTP header value", header.name),
                )
            })?;
            Ok((name, value))
        })
        .collect()
}

/// One custom tag as the spans carry it; `None` for an environment variable that is not set
/// and has no default (Envoy then adds no tag).
fn span_tag(
    tag: &proto::CustomTag,
    environment: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SpanTag>, ConfigError> {
    use proto::custom_tag::Type;
    let field = format!("tracing.custom_tags[{}]", tag.tag);
    if tag.tag.is_empty() {
        return Err(invalid("tracing.custom_tags", "a tag has no name"));
    }
    let value = match &tag.r#type {
        None => {
            return Err(invalid(
                &field,
                "no literal, environment, header or formatter",
            ));
        }
        Some(Type::Literal(value)) => SpanTagValue::Literal(value.clone()),
        Some(Type::Environment(env)) => {
            match environment(&env.name).or_else(|| env.default_value.clone()) {
                Some(value) => SpanTagValue::Literal(value),
                None => return Ok(None),
            }
        }
        Some(Type::Header(header)) => SpanTagValue::Header {
            name: http::HeaderName::from_bytes(header.name.as_bytes()).map_err(|_| {
                invalid(
                    &format!("{field}.header.name"),
                    format!("{:?} is not a header name", header.name),
                )
            })?,
            default: header.default_value.clone(),
        },
        Some(Type::Formatter(format)) => SpanTagValue::Format(
            weft_access_log::Format::text(format)
                .map_err(|e| invalid(&format!("{field}.formatter"), format!("{format:?}: {e}")))?,
        ),
    };
    Ok(Some(SpanTag {
        tag: tag.tag.clone(),
        value,
    }))
}

/// The waypoint's span of one request: its context (propagated upstream whether sampled or
/// not) and, when sampled and reported, where it is sent when the request ends.
#[derive(Debug)]
pub struct RequestSpan {
    pub context: OutgoingContext,
    start: SystemTime,
    report: Option<Report>,
}

#[derive(Debug)]
struct Report {
    exporter: Arc<SpanExporter>,
    collector: Arc<Collector>,
    canonical_service: String,
    namespace: String,
    kind: span::SpanKind,
    /// The custom tags' values for this request.
    tags: Vec<(String, String)>,
    /// The configuration's custom tags: those taken from request headers are read again from
    /// the request as it is forwarded ([`RequestSpan::retag`]); formatter tags are evaluated
    /// when the span ends.
    custom_tags: Arc<[SpanTag]>,
    /// The headers the formatter tags read, and what was captured of them.
    format_headers: Arc<HeaderCapture>,
    captured: Captured,
    /// The name the request gave the span (`x-envoy-decorator-operation`, at a waypoint).
    operation: Option<String>,
}

impl RequestSpan {
    /// Starts the span of a request with `headers` under `config`. `roll` is a uniform draw in
    /// [0, 1) deciding random sampling when the caller made no decision. At a waypoint (Envoy's
    /// ingress), a non-empty `x-envoy-decorator-operation` names the span and is taken off the
    /// request, as Envoy does; a gateway (egress) leaves it to be overwritten.
    pub fn start(
        config: &TracingConfig,
        headers: &mut HeaderMap,
        exporter: &Arc<SpanExporter>,
        roll: f64,
    ) -> Self {
        let operation = if config.span_kind == span::SpanKind::Server {
            headers
                .remove(DECORATOR_OPERATION)
                .and_then(|v| v.to_str().ok().map(str::to_owned))
                .filter(|v| !v.is_empty())
        } else {
            None
        };
        let headers = &*headers;
        let incoming = IncomingContext::read(headers);
        // A caller's decision is honoured either way (Envoy keeps the parent's sampled flag);
        // without one, the configured percentage decides.
        let sampled = incoming
            .sampled
            .unwrap_or(roll * 100.0 < config.sampling_percentage);
        let (trace_id, parent_span_id) = match incoming.parent {
            Some((trace, span)) => (trace, Some(span)),
            None => (random_id::<16>(), None),
        };
        let report = match (&config.collector, sampled) {
            (Some(collector), true) => Some(Report {
                exporter: Arc::clone(exporter),
                collector: Arc::clone(collector),
                canonical_service: config.canonical_service.clone(),
                namespace: config.namespace.clone(),
                kind: config.span_kind,
                tags: tag_values(config.custom_tags.iter(), headers),
                custom_tags: Arc::clone(&config.custom_tags),
                format_headers: Arc::clone(&config.format_headers),
                captured: if config.format_headers.is_empty() {
                    Captured::default()
                } else {
                    config.format_headers.capture_request(headers)
                },
                operation,
            }),
            _ => None,
        };
        RequestSpan {
            context: OutgoingContext {
                trace_id,
                span_id: random_id::<8>(),
                parent_span_id,
                sampled,
                b3: incoming.b3,
            },
            start: SystemTime::now(),
            report,
        }
    }

    /// Reads the custom tags taken from request headers again from `headers`, the request as
    /// it is forwarded: Envoy's tracer tags the span when the stream ends, from the request
    /// headers its router changed (the route's and the destination's header operations). A
    /// request answered without being forwarded keeps the values it arrived with.
    pub fn retag(&mut self, headers: &HeaderMap) {
        let Some(report) = &mut self.report else {
            return;
        };
        let from_headers = |t: &&SpanTag| matches!(t.value, SpanTagValue::Header { .. });
        if !report.custom_tags.iter().any(|t| from_headers(&t)) {
            return;
        }
        let fresh = tag_values(report.custom_tags.iter().filter(from_headers), headers);
        let custom_tags = &report.custom_tags;
        report.tags.retain(|(tag, _)| {
            !custom_tags
                .iter()
                .any(|t| from_headers(&t) && t.tag == *tag)
        });
        report.tags.extend(fresh);
    }

    /// Keeps what the formatter tags read of the response's `headers`.
    pub fn capture_response(&mut self, headers: &HeaderMap) {
        if let Some(report) = &mut self.report
            && !report.format_headers.is_empty()
        {
            report
                .format_headers
                .capture_response(&mut report.captured, headers);
        }
    }

    /// Sends the span, described by the request's `record`, if it is sampled and reported.
    pub fn finish(self, record: &RequestRecord) {
        if let Some((report, span)) = self.end(record) {
            report.exporter.submit(report.collector, span);
        }
    }

    /// The span as it is sent, if it is sampled and reported. The formatter tags are
    /// evaluated now, on the record the access log reads (Envoy's tracer applies its custom
    /// tags when the stream ends).
    fn end(self, record: &RequestRecord) -> Option<(Report, Span)> {
        let mut report = self.report?;
        let entry = RequestEntry {
            headers: &report.format_headers,
            captured: &report.captured,
            record,
        };
        let formatted: Vec<(String, String)> = report
            .custom_tags
            .iter()
            .filter_map(|t| match &t.value {
                SpanTagValue::Format(format) => {
                    let mut value = String::new();
                    format.render(&entry, &mut value);
                    value.truncate(value.trim_end_matches('\n').len());
                    Some((t.tag.clone(), value))
                }
                _ => None,
            })
            .collect();
        report.tags.extend(formatted);
        let span = build_span(
            &self.context,
            self.start,
            record,
            &report,
            report.exporter.node_id(),
        );
        Some((report, span))
    }
}

/// The custom tags' values for a request with `headers`: a header's first value, else its
/// default, else no tag.
fn tag_values<'a>(
    tags: impl IntoIterator<Item = &'a SpanTag>,
    headers: &HeaderMap,
) -> Vec<(String, String)> {
    tags.into_iter()
        .filter_map(|t| {
            let value = match &t.value {
                SpanTagValue::Literal(value) => value.clone(),
                // Evaluated when the span ends ([`RequestSpan::finish`]).
                SpanTagValue::Format(_) => return None,
                SpanTagValue::Header { name, default } => headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| default.clone())?,
            };
            Some((t.tag.clone(), value))
        })
        .collect()
}

/// The span's name: the one the request gave it at a waypoint, else its route's operation;
/// a request no route took has Envoy's name for a span without a decorator, `ingress` at a
/// waypoint and `egress <authority>` at a gateway; else `<service host>:<port>/*`.
fn span_name(record: &RequestRecord, report: &Report, host: &str, port: u16) -> String {
    if let Some(operation) = &report.operation {
        return operation.clone();
    }
    if let Some(operation) = &record.operation {
        return operation.to_string();
    }
    if record.response_flags.contains(ResponseFlag::NoRoute) && record.upstream_cluster.is_none() {
        return match report.kind {
            span::SpanKind::Client => format!("egress {}", record.authority),
            _ => "ingress".to_owned(),
        };
    }
    format!("{host}:{port}/*")
}

fn random_id<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
}

pub(crate) fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn attribute(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..Default::default()
    }
}

/// The span as Envoy's HTTP tracer tags it (`http.method`, `http.url`, `http.status_code`,
/// `upstream_cluster`, `response_flags`, ...) with Istio's custom tags for the proxy
/// (`istio.canonical_service`, `istio.namespace`, ...) and the peers' identities.
fn build_span(
    context: &OutgoingContext,
    start: SystemTime,
    record: &RequestRecord,
    report: &Report,
    node_id: &str,
) -> Span {
    let host = record
        .destination_service
        .as_ref()
        .map(|service| &*service.hostname)
        .unwrap_or_else(|| {
            record
                .authority
                .rsplit_once(':')
                .map_or(record.authority.as_str(), |(h, _)| h)
        });
    let port = record.downstream_local.map_or(0, |a| a.port());
    let dash = |v: &str| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.to_owned()
        }
    };
    let mut attributes = vec![
        attribute("node_id", node_id),
        attribute("component", "proxy"),
        attribute("guid:x-request-id", record.request_id.as_str()),
        attribute("http.method", record.method.as_str()),
        attribute(
            "http.url",
            format!("http://{}{}", record.authority, record.path),
        ),
        attribute("http.protocol", record.protocol),
        attribute("http.status_code", record.status.to_string()),
        attribute("user_agent", dash(&record.user_agent)),
        attribute("downstream_cluster", "-"),
        attribute(
            "peer.address",
            record
                .downstream_remote
                .map_or_else(String::new, |a| a.ip().to_string()),
        ),
        attribute("request_size", record.bytes_received.to_string()),
        attribute("response_size", record.bytes_sent.to_string()),
        attribute("response_flags", record.flags().to_string()),
        attribute(
            "upstream_cluster",
            record.upstream_cluster.as_deref().unwrap_or("-"),
        ),
        attribute(
            "upstream_cluster.name",
            record.upstream_cluster.as_deref().unwrap_or("-"),
        ),
        attribute(
            "upstream_address",
            record
                .upstream_host
                .map_or_else(|| "-".to_owned(), |a| a.to_string()),
        ),
        attribute("istio.canonical_service", report.canonical_service.as_str()),
        attribute("istio.canonical_revision", "latest"),
        attribute("istio.namespace", report.namespace.as_str()),
        attribute("istio.mesh_id", weft_istio::defaults::DEFAULT_TRUST_DOMAIN),
        attribute("istio.cluster_id", weft_istio::defaults::DEFAULT_CLUSTER_ID),
    ];
    for (tag, value) in &report.tags {
        attributes.push(attribute(tag, value.as_str()));
    }
    if let Some(principal) = &record.source.principal {
        attributes.push(attribute("source.principal", principal.as_str()));
    }
    if let Some(principal) = &record.destination.principal {
        attributes.push(attribute("destination.principal", principal.as_str()));
    }
    let failed = record.status >= 500 || record.status == 0;
    if failed {
        attributes.push(attribute("error", "true"));
    }
    Span {
        trace_id: context.trace_id.to_vec(),
        span_id: context.span_id.to_vec(),
        parent_span_id: context.parent_span_id.map_or_else(Vec::new, |p| p.to_vec()),
        // Sampled (bit 0 of the W3C flags).
        flags: 1,
        name: span_name(record, report, host, port),
        kind: report.kind as i32,
        start_time_unix_nano: nanos(start),
        end_time_unix_nano: nanos(SystemTime::now()),
        attributes,
        status: Some(Status {
            message: String::new(),
            code: if failed {
                status::StatusCode::Error
            } else {
                status::StatusCode::Unset
            } as i32,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
