//! The access logs Telemetry and the mesh config select (`WaypointConfig.access_logs`): each
//! writes one line per request or TCP connection, in its own format, where its filter holds.
//! Formats and filters are compiled when a configuration arrives, never per request; a file
//! is opened (for appending) when the configuration that names it arrives, so a new
//! configuration opens it anew (a rotated file is followed). A line is formatted in a buffer
//! of its own and written with one `write`, never queued: memory stays bounded by one line
//! per request being logged. The OpenTelemetry ([`otel`]) and gRPC access-log service
//! ([`grpc`]) providers send the same record to a collector through a bounded queue that
//! drops, and counts, what it cannot hold.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use cel::Value;
use http::{HeaderMap, HeaderName, HeaderValue};
use tracing::{info, warn};
use weft_access_log::{
    Attributes, Filter, Format, HeaderChoice, HeaderReads, Kind, Operator, Record,
};
use weft_proto::waypoint as proto;
use weft_proxy_core::config::access_writer::AccessWriter;
use weft_proxy_core::metrics::{ACCESS_LOG, LogText};

use crate::model::{ConfigError, invalid};
use crate::telemetry::{SpanId, TraceId};

/// Where one access log's lines go.
enum Output {
    /// The process log: the `access` log target.
    ProcessLog,
    /// Standard output or a file, one `write` per line.
    Writer(AccessWriter),
    /// An OpenTelemetry collector, a LogRecord per line ([`otel`]).
    Otel(otel::OtelSink),
    /// Envoy's gRPC access-log service, an entry per request or connection ([`grpc`]).
    Grpc(grpc::GrpcSink),
}

/// One access log, compiled.
struct AccessLog {
    output: Output,
    format: Format,
    filter: Option<Filter>,
}

/// The access logs in force for some traffic, with the headers their formats and filters
/// read beyond what a request's record holds anyway.
pub struct AccessLogs {
    logs: Vec<AccessLog>,
    /// The headers their `REQ` and `RESP` operators read.
    headers: HeaderCapture,
    /// The request headers filters read (`request.headers`): none, some, or all of them.
    filter_headers: Option<HeaderReads>,
    /// The configuration they were built from (what a new configuration is compared with).
    source: Vec<proto::AccessLog>,
}

impl std::fmt::Debug for AccessLogs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.source).finish()
    }
}

impl PartialEq for AccessLogs {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// The request headers a record holds already; `REQ` of these needs no capture.
const RECORDED: &[&str] = &[
    ":method",
    ":path",
    ":authority",
    "host",
    "user-agent",
    "x-request-id",
    "x-forwarded-for",
];

impl AccessLogs {
    /// Compiles `logs`; `context` names them in errors. `None` when there are none.
    pub fn compile(
        logs: &[proto::AccessLog],
        context: &str,
    ) -> Result<Option<Arc<AccessLogs>>, ConfigError> {
        if logs.is_empty() {
            return Ok(None);
        }
        let mut compiled = Vec::with_capacity(logs.len());
        let mut headers = HeaderCapture::default();
        let mut filter_headers: Option<HeaderReads> = None;
        for (i, log) in logs.iter().enumerate() {
            let context = format!("{context}[{i}] (provider {:?})", log.provider);
            let filter = compile_filter(&log.filter, &context)?;
            if let Some(reads) = filter.as_ref().and_then(Filter::request_headers) {
                filter_headers = Some(merge_reads(filter_headers.take(), reads));
            }
            let (output, format) = match &log.grpc {
                Some(grpc) => {
                    let sink = grpc::GrpcSink::compile(grpc).map_err(|e| invalid(&context, e))?;
                    headers.read_by_names(sink.header_names());
                    // The service receives entries, not lines: nothing is formatted.
                    let nothing = Format::text("").map_err(|e| invalid(&context, e.to_string()))?;
                    (Output::Grpc(sink), nothing)
                }
                None => {
                    let format = line_format(log).map_err(|e| invalid(&context, e))?;
                    headers.read_by(&format);
                    (line_output(log).map_err(|e| invalid(&context, e))?, format)
                }
            };
            compiled.push(AccessLog {
                output,
                format,
                filter,
            });
        }
        Ok(Some(Arc::new(AccessLogs {
            logs: compiled,
            headers,
            filter_headers,
            source: logs.to_vec(),
        })))
    }

    /// The request's headers these logs read: those `REQ` names, in order.
    pub fn capture_request(&self, headers: &HeaderMap) -> Captured {
        Captured {
            request: capture(&self.headers.request, headers),
            response: Vec::new(),
            trailers: Vec::new(),
            request_headers: self.filter_headers.as_ref().map(|reads| match reads {
                HeaderReads::All => Box::new(headers.clone()),
                HeaderReads::Named(names) => {
                    let mut kept = HeaderMap::new();
                    for name in names {
                        for value in headers.get_all(name.as_str()) {
                            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                                kept.append(name, value.clone());
                            }
                        }
                    }
                    Box::new(kept)
                }
            }),
        }
    }

    /// The response's headers these logs read, added to what was captured of the request.
    pub fn capture_response(&self, captured: &mut Captured, headers: &HeaderMap) {
        self.headers.capture_response(captured, headers);
    }

    /// The response's trailers these logs read.
    pub fn capture_trailers(&self, captured: &mut Captured, trailers: &HeaderMap) {
        self.headers.capture_trailers(captured, trailers);
    }

    /// Writes a line to each log whose filter admits `entry`.
    pub(crate) fn write(&self, entry: &(impl Record + Attributes + LogContext)) {
        for log in &self.logs {
            if log.filter.as_ref().is_some_and(|f| !f.admits(entry)) {
                continue;
            }
            if let Output::Grpc(sink) = &log.output {
                entry.submit_to(sink);
                continue;
            }
            let mut line = String::with_capacity(256);
            log.format.render(entry, &mut line);
            match &log.output {
                Output::ProcessLog => {
                    info!(target: ACCESS_LOG, "{}", line.trim_end_matches('\n'));
                }
                Output::Writer(writer) => {
                    if let Err(error) = writer.write_line(line.as_bytes()) {
                        warn!(%error, "access log line not written");
                    }
                }
                Output::Otel(sink) => sink.submit(line, entry),
                Output::Grpc(_) => {}
            }
        }
    }

    /// The headers the logs' operators read.
    pub(crate) fn headers(&self) -> &HeaderCapture {
        &self.headers
    }
}

/// The request and response headers some formats' `REQ` and `RESP` operators read beyond
/// what a request's record holds, kept by position in a [`Captured`].
#[derive(Debug, Default, Clone, PartialEq)]
pub struct HeaderCapture {
    /// Named by `REQ` operators, captured when the request arrives.
    request: Vec<HeaderName>,
    /// Named by `RESP` operators, captured when the response starts.
    response: Vec<HeaderName>,
    /// Response trailers a gRPC access-log service provider logs, captured when they arrive.
    trailers: Vec<HeaderName>,
}

impl HeaderCapture {
    /// Adds the headers `format` reads.
    pub(crate) fn read_by(&mut self, format: &Format) {
        for operator in format.operators() {
            let (choice, into) = match operator {
                Operator::Request(choice) => (choice, &mut self.request),
                Operator::Response(choice) => (choice, &mut self.response),
                _ => continue,
            };
            for name in header_names(choice) {
                if matches!(operator, Operator::Request(_)) && RECORDED.contains(&name) {
                    continue;
                }
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                if !into.contains(&name) {
                    into.push(name);
                }
            }
        }
    }

    /// Adds the headers and trailers a gRPC access-log service provider logs, by name:
    /// `(request, response, trailers)`.
    pub(crate) fn read_by_names(
        &mut self,
        (request, response, trailers): (&[String], &[String], &[String]),
    ) {
        let add = |names: &[String], into: &mut Vec<HeaderName>, skip_recorded: bool| {
            for name in names {
                if skip_recorded && RECORDED.contains(&name.as_str()) {
                    continue;
                }
                let Ok(name) = HeaderName::from_bytes(name.as_bytes()) else {
                    continue;
                };
                if !into.contains(&name) {
                    into.push(name);
                }
            }
        };
        add(request, &mut self.request, true);
        add(response, &mut self.response, false);
        add(trailers, &mut self.trailers, false);
    }

    /// No header to capture.
    pub(crate) fn is_empty(&self) -> bool {
        self.request.is_empty() && self.response.is_empty() && self.trailers.is_empty()
    }

    /// The response's trailers these logs read, added to what was captured.
    pub(crate) fn capture_trailers(&self, captured: &mut Captured, trailers: &HeaderMap) {
        if !self.trailers.is_empty() {
            captured.trailers = capture(&self.trailers, trailers);
        }
    }

    /// The request's headers these formats read.
    pub(crate) fn capture_request(&self, headers: &HeaderMap) -> Captured {
        Captured {
            request: capture(&self.request, headers),
            ..Captured::default()
        }
    }

    /// The response's headers these formats read, added to what was captured of the request.
    pub(crate) fn capture_response(&self, captured: &mut Captured, headers: &HeaderMap) {
        captured.response = capture(&self.response, headers);
    }

    /// The captured request header `name` (`REQ(name)` reads its first value).
    fn request_header<'c>(&self, captured: &'c Captured, name: &str) -> Option<&'c CapturedHeader> {
        let i = self.request.iter().position(|h| h == name)?;
        captured.request.get(i)?.as_ref()
    }

    fn response_header<'c>(
        &self,
        captured: &'c Captured,
        name: &str,
    ) -> Option<&'c CapturedHeader> {
        let i = self.response.iter().position(|h| h == name)?;
        captured.response.get(i)?.as_ref()
    }

    fn response_trailer<'c>(
        &self,
        captured: &'c Captured,
        name: &str,
    ) -> Option<&'c CapturedHeader> {
        let i = self.trailers.iter().position(|h| h == name)?;
        captured.trailers.get(i)?.as_ref()
    }
}

/// The format of a log written as lines.
fn line_format(log: &proto::AccessLog) -> Result<Format, String> {
    match &log.format {
        Some(proto::access_log::Format::Text(text)) => Format::text(text),
        Some(proto::access_log::Format::Json(json)) => {
            Format::json(json.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        }
        None => return Err("format: must be set".to_owned()),
    }
    .map(|f| f.omit_empty_values(log.omit_empty_values))
    .map_err(|e| format!("format: {e}"))
}

/// Where a log written as lines goes: a collector, the process log, standard output or a file.
fn line_output(log: &proto::AccessLog) -> Result<Output, String> {
    match (&log.otel, &log.format) {
        (Some(sink), Some(proto::access_log::Format::Text(text))) => {
            otel::OtelSink::compile(sink, text).map(Output::Otel)
        }
        (Some(_), _) => Err("otel: the body must be a text format".to_owned()),
        (None, _) => output(&log.path),
    }
}

fn compile_filter(expression: &str, context: &str) -> Result<Option<Filter>, ConfigError> {
    match expression {
        "" => Ok(None),
        expression => Filter::compile(expression)
            .map(Some)
            .map_err(|e| invalid(context, format!("filter: {e}"))),
    }
}

/// The request headers two sets of filters read.
fn merge_reads(reads: Option<HeaderReads>, more: &HeaderReads) -> HeaderReads {
    match (reads, more) {
        (None, more) => more.clone(),
        (Some(HeaderReads::Named(mut names)), HeaderReads::Named(more)) => {
            names.extend(more.iter().cloned());
            HeaderReads::Named(names)
        }
        _ => HeaderReads::All,
    }
}

fn header_names(choice: &HeaderChoice) -> impl Iterator<Item = &str> {
    std::iter::once(choice.name.as_str()).chain(choice.alternative.as_deref())
}

fn capture(names: &[HeaderName], headers: &HeaderMap) -> Vec<Option<CapturedHeader>> {
    names
        .iter()
        .map(|name| {
            let mut values = headers.get_all(name).iter();
            let first = values.next()?.clone();
            let mut joined: Option<Vec<u8>> = None;
            for value in values {
                let bytes = joined.get_or_insert_with(|| first.as_bytes().to_vec());
                bytes.push(b',');
                bytes.extend_from_slice(value.as_bytes());
            }
            let joined = joined.and_then(|bytes| HeaderValue::from_bytes(&bytes).ok());
            Some(CapturedHeader { first, joined })
        })
        .collect()
}

/// A header a log reads, as the request or response carried it.
#[derive(Debug, Clone)]
pub(crate) struct CapturedHeader {
    /// The first value: what `%REQ()%` and `%RESP()%` write, as Envoy's formatter does.
    first: HeaderValue,
    /// Every value joined with `,` when it came more than once: what a gRPC access-log
    /// service logs, as Envoy's `getAllOfHeaderAsString` does.
    joined: Option<HeaderValue>,
}

impl CapturedHeader {
    pub(crate) fn first(&self) -> &HeaderValue {
        &self.first
    }

    /// Every value, joined with `,`.
    pub(crate) fn all(&self) -> &HeaderValue {
        self.joined.as_ref().unwrap_or(&self.first)
    }
}

fn output(path: &str) -> Result<Output, String> {
    match path {
        "" => Ok(Output::ProcessLog),
        "/dev/stdout" => Ok(Output::Writer(AccessWriter::stdout())),
        path => OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map(|file| Output::Writer(AccessWriter::to(file)))
            .map_err(|e| format!("path {path:?}: cannot open for appending: {e}")),
    }
}

/// What a record says of its entry beyond its operators: an OpenTelemetry record's time and
/// trace context.
pub(crate) trait LogContext {
    /// When the request's head arrived, or the connection was accepted.
    fn start_time(&self) -> SystemTime;
    /// The trace and span ids of the waypoint's span of the entry, if tracing gave it one.
    fn span(&self) -> Option<(TraceId, SpanId)>;
    /// Hands the entry to a gRPC access-log service provider.
    fn submit_to(&self, sink: &grpc::GrpcSink);
}

/// What a request's record keeps of its headers for its access logs.
#[derive(Debug, Default)]
pub struct Captured {
    request: Vec<Option<CapturedHeader>>,
    response: Vec<Option<CapturedHeader>>,
    trailers: Vec<Option<CapturedHeader>>,
    request_headers: Option<Box<HeaderMap>>,
}

/// One request's values, as the access logs' operators and filters read them.
pub(crate) struct RequestEntry<'r> {
    pub(crate) headers: &'r HeaderCapture,
    pub(crate) captured: &'r Captured,
    pub(crate) record: &'r crate::metrics::RequestRecord,
}

fn text(out: &mut String, value: &str) -> Kind {
    if value.is_empty() {
        return Kind::Absent;
    }
    use std::fmt::Write as _;
    let _ = write!(out, "{}", LogText(value));
    Kind::Text
}

fn shown(out: &mut String, value: impl std::fmt::Display, kind: Kind) -> Kind {
    use std::fmt::Write as _;
    let _ = write!(out, "{value}");
    kind
}

fn address(out: &mut String, address: Option<&SocketAddr>, with_port: bool) -> Kind {
    match address {
        None => Kind::Absent,
        Some(a) if with_port => shown(out, a, Kind::Text),
        Some(a) => shown(out, a.ip(), Kind::Text),
    }
}

impl Record for RequestEntry<'_> {
    fn write(&self, operator: &Operator, out: &mut String) -> Kind {
        let record = self.record;
        match operator {
            Operator::StartTime => shown(out, record.start_time_text(), Kind::Text),
            Operator::Protocol => text(out, record.protocol),
            Operator::ResponseCode => shown(out, record.status, Kind::Number),
            Operator::ResponseFlags => shown(out, record.flags(), Kind::Text),
            Operator::ResponseCodeDetails => text(out, &record.response_code_details),
            Operator::BytesReceived => shown(out, record.bytes_received, Kind::Number),
            Operator::BytesSent => shown(out, record.bytes_sent, Kind::Number),
            Operator::Duration => shown(out, record.started().elapsed().as_millis(), Kind::Number),
            Operator::UpstreamHost => address(out, record.upstream_host.as_ref(), true),
            Operator::UpstreamCluster => {
                text(out, record.upstream_cluster.as_deref().unwrap_or(""))
            }
            Operator::DownstreamLocalAddress => {
                address(out, record.downstream_local.as_ref(), true)
            }
            Operator::DownstreamLocalAddressWithoutPort => {
                address(out, record.downstream_local.as_ref(), false)
            }
            Operator::DownstreamRemoteAddress => {
                address(out, record.downstream_remote.as_ref(), true)
            }
            Operator::DownstreamRemoteAddressWithoutPort => {
                address(out, record.downstream_remote.as_ref(), false)
            }
            Operator::DownstreamPeerUriSan => {
                text(out, record.source.principal.as_deref().unwrap_or(""))
            }
            // Istio's route name for a route without one.
            Operator::RouteName => text(out, record.route_name.as_deref().unwrap_or("default")),
            Operator::Request(_)
            | Operator::Response(_)
            | Operator::ConnectionTerminationDetails
            | Operator::UpstreamTransportFailureReason
            | Operator::UpstreamLocalAddress
            | Operator::RequestedServerName => Kind::Absent,
        }
    }

    fn request_header(&self, name: &str, out: &mut String) -> Kind {
        let record = self.record;
        match name {
            ":method" => text(out, record.method.as_str()),
            ":path" => text(out, &record.path),
            ":authority" | "host" => text(out, &record.authority),
            "user-agent" => text(out, &record.user_agent),
            "x-request-id" => text(out, &record.request_id),
            "x-forwarded-for" => text(out, &record.forwarded_for),
            name => header_text(
                out,
                self.headers
                    .request_header(self.captured, name)
                    .map(CapturedHeader::first),
            ),
        }
    }

    fn response_header(&self, name: &str, out: &mut String) -> Kind {
        header_text(
            out,
            self.headers
                .response_header(self.captured, name)
                .map(CapturedHeader::first),
        )
    }
}

fn header_text(out: &mut String, value: Option<&HeaderValue>) -> Kind {
    match value {
        Some(value) => text(out, &String::from_utf8_lossy(value.as_bytes())),
        None => Kind::Absent,
    }
}

fn string(value: &str) -> Value {
    Value::String(Arc::new(value.to_owned()))
}

fn int(value: impl TryInto<i64>) -> Value {
    Value::Int(value.try_into().unwrap_or(i64::MAX))
}

/// `address` or `port` of an endpoint, Envoy's `source`/`destination`/`upstream` attributes.
fn endpoint(address: Option<&SocketAddr>, field: &str) -> Option<Value> {
    let address = address?;
    match field {
        "address" => Some(string(&address.ip().to_string())),
        "port" => Some(int(address.port())),
        _ => None,
    }
}

impl LogContext for RequestEntry<'_> {
    fn start_time(&self) -> SystemTime {
        self.record.start_time()
    }

    fn span(&self) -> Option<(TraceId, SpanId)> {
        let context = &self.record.span.as_ref()?.context;
        Some((context.trace_id, context.span_id))
    }

    fn submit_to(&self, sink: &grpc::GrpcSink) {
        sink.submit_request(self);
    }
}

/// Envoy's attributes (its `request`, `response`, `source`, `destination`, `connection` and
/// `upstream` vocabulary) as far as a request's record holds them.
impl Attributes for RequestEntry<'_> {
    fn field(&self, attribute: &str, field: &str) -> Option<Value> {
        let record = self.record;
        match (attribute, field) {
            ("request", "path") => Some(string(&record.path)),
            ("request", "url_path") => {
                let path: &str = record.path.as_ref();
                Some(string(path.split('?').next().unwrap_or(path)))
            }
            ("request", "host") => Some(string(&record.authority)),
            ("request", "method") => Some(string(record.method.as_str())),
            ("request", "protocol") => Some(string(record.protocol)),
            ("request", "id") => Some(string(&record.request_id)),
            ("request", "useragent") => Some(string(&record.user_agent)),
            ("request", "size") => Some(int(record.bytes_received)),
            ("request", "headers") => {
                let headers = self.captured.request_headers.as_ref()?;
                let mut map: HashMap<String, Value> = HashMap::new();
                for (name, value) in headers.iter() {
                    map.entry(name.as_str().to_owned())
                        .or_insert_with(|| string(&String::from_utf8_lossy(value.as_bytes())));
                }
                Some(map.into())
            }
            ("response", "code") => Some(int(record.status)),
            ("response", "code_details") => Some(string(&record.response_code_details)),
            ("response", "size") => Some(int(record.bytes_sent)),
            ("source", field) => endpoint(record.downstream_remote.as_ref(), field),
            ("destination", field) => endpoint(record.downstream_local.as_ref(), field),
            ("upstream", field) => endpoint(record.upstream_host.as_ref(), field),
            ("connection", "mtls") => Some(Value::Bool(record.mtls)),
            _ => None,
        }
    }
}

/// One TCP connection's values: what a request has and a connection lacks (headers, a
/// status) is absent, as in Envoy's TCP proxy's log.
pub(crate) struct ConnectionEntry<'c> {
    pub(crate) info: &'c crate::metrics::ConnectionInfo,
    pub end: &'c weft_proxy_core::metrics::ConnectionEnd<'c>,
    pub start_time: crate::metrics::UtcTime,
}

impl Record for ConnectionEntry<'_> {
    fn write(&self, operator: &Operator, out: &mut String) -> Kind {
        let info = self.info;
        match operator {
            Operator::StartTime => shown(out, self.start_time, Kind::Text),
            Operator::ResponseCode => shown(out, 0, Kind::Number),
            Operator::ResponseFlags => shown(out, self.end.labels.response_flags, Kind::Text),
            Operator::ConnectionTerminationDetails => {
                text(out, info.termination_details.as_deref().unwrap_or(""))
            }
            Operator::BytesReceived => shown(out, self.end.received, Kind::Number),
            Operator::BytesSent => shown(out, self.end.sent, Kind::Number),
            Operator::Duration => shown(out, self.end.duration.as_millis(), Kind::Number),
            Operator::UpstreamHost => text(out, info.upstream_host.as_deref().unwrap_or("")),
            Operator::UpstreamCluster => text(out, info.upstream_cluster.as_deref().unwrap_or("")),
            Operator::DownstreamLocalAddress => text(out, &info.downstream_local),
            Operator::DownstreamRemoteAddress => text(out, &info.downstream_remote),
            Operator::DownstreamLocalAddressWithoutPort => {
                address(out, info.downstream_local.parse().ok().as_ref(), false)
            }
            Operator::DownstreamRemoteAddressWithoutPort => {
                address(out, info.downstream_remote.parse().ok().as_ref(), false)
            }
            Operator::DownstreamPeerUriSan => {
                text(out, info.source.principal.as_deref().unwrap_or(""))
            }
            _ => Kind::Absent,
        }
    }

    fn request_header(&self, _: &str, _: &mut String) -> Kind {
        Kind::Absent
    }

    fn response_header(&self, _: &str, _: &mut String) -> Kind {
        Kind::Absent
    }
}

/// A TCP connection has no span (Envoy's TCP proxy traces nothing).
impl LogContext for ConnectionEntry<'_> {
    fn start_time(&self) -> SystemTime {
        self.start_time.0
    }

    fn span(&self) -> Option<(TraceId, SpanId)> {
        None
    }

    fn submit_to(&self, sink: &grpc::GrpcSink) {
        sink.submit_connection(self);
    }
}

impl Attributes for ConnectionEntry<'_> {
    fn field(&self, attribute: &str, field: &str) -> Option<Value> {
        let info = self.info;
        let parsed = |a: &str| a.parse::<SocketAddr>().ok();
        match attribute {
            "source" => endpoint(parsed(&info.downstream_remote).as_ref(), field),
            "destination" => endpoint(parsed(&info.downstream_local).as_ref(), field),
            "upstream" => endpoint(
                info.upstream_host.as_deref().and_then(parsed).as_ref(),
                field,
            ),
            "connection" if field == "mtls" => Some(Value::Bool(info.mtls)),
            _ => None,
        }
    }
}

pub mod grpc;
pub mod otel;
#[cfg(test)]
mod tests;
