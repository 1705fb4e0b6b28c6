//! The `envoyHttpAls` and `envoyTcpAls` providers' sink: each request or connection becomes
//! an entry of Envoy's gRPC access-log service (`envoy.service.accesslog.v3.AccessLogService/
//! StreamAccessLogs`), built from the same record the other access logs format, and handed to
//! the provider's [`stream::AlsStream`] (buffered, bounded, never waited on).
//!
//! The entry is Envoy's HTTP or TCP gRPC access logger's (envoy `access_loggers/grpc/
//! http_grpc_access_log_impl.cc`, `tcp_grpc_access_log_impl.cc`, `grpc_access_log_utils.cc`
//! `extractCommonAccessLogProperties`): the common properties (downstream and upstream
//! addresses, start time, time to the last byte sent downstream, response flags, upstream
//! cluster, route name, connection termination details), then for HTTP the request (method,
//! authority, path, user agent, forwarded-for, request id, body bytes, the headers asked for)
//! and the response (code, details, body bytes, the headers and trailers asked for); for TCP
//! the bytes received and sent. As in Envoy, the kind is the provider's, whatever the
//! traffic: an HTTP provider logs a TCP connection as an HTTP entry of common properties
//! alone, a TCP provider logs a request as a TCP entry. Istio's filter state objects (the
//! Wasm peer metadata) are not sent: the waypoint has no such objects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::HeaderValue;
use weft_proto::envoy::config::core::v3 as core;
use weft_proto::envoy::data::accesslog::v3 as data;
use weft_proto::waypoint as proto;
use weft_proxy_core::metrics::{ResponseFlag, ResponseFlags};

use super::{ConnectionEntry, RequestEntry};

pub mod stream;

pub use stream::{AlsStream, Entry};

/// Which entries a provider's service receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Http,
    Tcp,
}

/// One `envoyHttpAls` or `envoyTcpAls` provider, compiled.
pub(crate) struct GrpcSink {
    kind: Kind,
    stream: Arc<AlsStream>,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    response_trailers: Vec<String>,
}

impl GrpcSink {
    pub(super) fn compile(log: &proto::GrpcAccessLog) -> Result<GrpcSink, String> {
        if log.collector.is_empty() {
            return Err("grpc.collector: must name an endpoint".to_owned());
        }
        let kind = match log.kind() {
            proto::grpc_access_log::Kind::Http => Kind::Http,
            proto::grpc_access_log::Kind::Tcp => Kind::Tcp,
            proto::grpc_access_log::Kind::Unspecified => {
                return Err("grpc.kind: must be HTTP or TCP".to_owned());
            }
        };
        let lower = |names: &[String]| -> Vec<String> {
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        };
        Ok(GrpcSink {
            kind,
            stream: AlsStream::shared(kind, log.collector.clone(), log.log_name.clone()),
            request_headers: lower(&log.request_headers),
            response_headers: lower(&log.response_headers),
            response_trailers: lower(&log.response_trailers),
        })
    }

    /// The headers and trailers the provider logs: `(request, response, trailers)`.
    pub(super) fn header_names(&self) -> (&[String], &[String], &[String]) {
        (
            &self.request_headers,
            &self.response_headers,
            &self.response_trailers,
        )
    }

    /// Buffers the entry of a request.
    pub(super) fn submit_request(&self, entry: &RequestEntry<'_>) {
        self.stream.submit(request_entry(self.kind, entry, self));
    }

    /// Buffers the entry of a TCP connection.
    pub(super) fn submit_connection(&self, entry: &ConnectionEntry<'_>) {
        self.stream.submit(connection_entry(self.kind, entry));
    }
}

/// The entry of a request, as Envoy's logger of `kind` writes it.
pub(crate) fn request_entry(kind: Kind, entry: &RequestEntry<'_>, sink: &GrpcSink) -> Entry {
    let record = entry.record;
    let elapsed = record.started().elapsed();
    let common = data::AccessLogCommon {
        downstream_remote_address: record.downstream_remote.map(address),
        downstream_local_address: record.downstream_local.map(address),
        start_time: Some(timestamp(record.start_time())),
        time_to_last_downstream_tx_byte: Some(duration(elapsed)),
        upstream_remote_address: record.upstream_host.map(address),
        upstream_cluster: record
            .upstream_cluster
            .as_deref()
            .unwrap_or_default()
            .to_owned(),
        response_flags: response_flags(record.flags()),
        // Istio's route name for a route without one, as `%ROUTE_NAME%` writes it.
        route_name: record.route_name.as_deref().unwrap_or("default").to_owned(),
        connection_termination_details: String::new(),
    };
    if kind == Kind::Tcp {
        return Entry::Tcp(Box::new(data::TcpAccessLogEntry {
            common_properties: Some(common),
            connection_properties: Some(data::ConnectionProperties {
                received_bytes: record.bytes_received,
                sent_bytes: record.bytes_sent,
            }),
        }));
    }
    let header = |name: &str| request_header(entry, name);
    let request = data::HttpRequestProperties {
        request_method: method(&record.method) as i32,
        scheme: String::new(),
        authority: record.authority.to_string(),
        path: record.path.to_string(),
        user_agent: record.user_agent.to_string(),
        forwarded_for: record.forwarded_for.to_string(),
        request_id: record.request_id.to_string(),
        request_body_bytes: record.bytes_received,
        request_headers: sink
            .request_headers
            .iter()
            .filter_map(|name| Some((name.clone(), header(name)?)))
            .collect(),
    };
    let response = data::HttpResponseProperties {
        // Envoy leaves the code out when no response was sent.
        response_code: (record.status != 0).then_some(u32::from(record.status)),
        response_body_bytes: record.bytes_sent,
        response_headers: sink
            .response_headers
            .iter()
            .filter_map(|name| {
                let value = entry.headers.response_header(entry.captured, name)?;
                Some((name.clone(), text(value.all())))
            })
            .collect(),
        response_trailers: sink
            .response_trailers
            .iter()
            .filter_map(|name| {
                let value = entry.headers.response_trailer(entry.captured, name)?;
                Some((name.clone(), text(value.all())))
            })
            .collect(),
        response_code_details: record.response_code_details.to_string(),
    };
    Entry::Http(Box::new(data::HttpAccessLogEntry {
        common_properties: Some(common),
        protocol_version: protocol(record.protocol) as i32,
        request: Some(request),
        response: Some(response),
    }))
}

/// The entry of a TCP connection, as Envoy's logger of `kind` writes it.
pub(crate) fn connection_entry(kind: Kind, entry: &ConnectionEntry<'_>) -> Entry {
    let info = entry.info;
    let parsed = |a: &str| a.parse::<SocketAddr>().ok().map(address);
    let common = data::AccessLogCommon {
        downstream_remote_address: parsed(&info.downstream_remote),
        downstream_local_address: parsed(&info.downstream_local),
        start_time: Some(timestamp(entry.start_time.0)),
        time_to_last_downstream_tx_byte: Some(duration(entry.end.duration)),
        upstream_remote_address: info.upstream_host.as_deref().and_then(parsed),
        upstream_cluster: info.upstream_cluster.clone().unwrap_or_default(),
        response_flags: response_flags(entry.end.labels.response_flags.into()),
        route_name: String::new(),
        connection_termination_details: info.termination_details.clone().unwrap_or_default(),
    };
    match kind {
        Kind::Tcp => Entry::Tcp(Box::new(data::TcpAccessLogEntry {
            common_properties: Some(common),
            connection_properties: Some(data::ConnectionProperties {
                received_bytes: entry.end.received,
                sent_bytes: entry.end.sent,
            }),
        })),
        Kind::Http => Entry::Http(Box::new(data::HttpAccessLogEntry {
            common_properties: Some(common),
            ..Default::default()
        })),
    }
}

/// A request header's value for `request_headers`: what the record holds, else what was
/// captured for the provider (every value, joined with `,`, as Envoy logs a repeated header).
fn request_header(entry: &RequestEntry<'_>, name: &str) -> Option<String> {
    let record = entry.record;
    let recorded = match name {
        ":method" => return Some(record.method.as_str().to_owned()),
        ":path" => &record.path,
        ":authority" | "host" => &record.authority,
        "user-agent" => &record.user_agent,
        "x-request-id" => &record.request_id,
        "x-forwarded-for" => &record.forwarded_for,
        name => {
            return entry
                .headers
                .request_header(entry.captured, name)
                .map(|value| text(value.all()));
        }
    };
    let value = recorded.to_string();
    (!value.is_empty()).then_some(value)
}

fn text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

fn address(address: SocketAddr) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            protocol: core::socket_address::Protocol::Tcp as i32,
            address: address.ip().to_string(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                address.port(),
            ))),
        })),
    }
}

fn timestamp(time: SystemTime) -> prost_types::Timestamp {
    let since = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or_default(),
    }
}

fn duration(elapsed: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(elapsed.subsec_nanos()).unwrap_or_default(),
    }
}

fn method(method: &http::Method) -> core::RequestMethod {
    use core::RequestMethod as M;
    match *method {
        http::Method::GET => M::Get,
        http::Method::HEAD => M::Head,
        http::Method::POST => M::Post,
        http::Method::PUT => M::Put,
        http::Method::DELETE => M::Delete,
        http::Method::CONNECT => M::Connect,
        http::Method::OPTIONS => M::Options,
        http::Method::TRACE => M::Trace,
        http::Method::PATCH => M::Patch,
        _ => M::MethodUnspecified,
    }
}

fn protocol(protocol: &str) -> data::http_access_log_entry::HttpVersion {
    use data::http_access_log_entry::HttpVersion as V;
    match protocol {
        "HTTP/1.0" => V::Http10,
        "HTTP/1.1" => V::Http11,
        "HTTP/2" => V::Http2,
        "HTTP/3" => V::Http3,
        _ => V::ProtocolUnspecified,
    }
}

/// Envoy's response flags, one field each; `None` when none is set (Envoy leaves the message
/// out then). An authorization denial has no flag of Envoy's (its RBAC filter sets none: the
/// details say why); ztunnel's `CONNECT` is Envoy's upstream connection failure.
fn response_flags(flags: ResponseFlags) -> Option<data::ResponseFlags> {
    use ResponseFlag as F;
    let mut out = data::ResponseFlags::default();
    for flag in flags.iter() {
        match flag {
            F::None | F::Denied => {}
            F::ConnectFailure | F::UpstreamConnectFailure => out.upstream_connection_failure = true,
            F::NoRoute => out.no_route_found = true,
            F::NoCluster => out.no_cluster_found = true,
            F::DelayInjected => out.delay_injected = true,
            F::FaultInjected => out.fault_injected = true,
            F::DownstreamTerminated => out.downstream_connection_termination = true,
            F::UpstreamTimeout => out.upstream_request_timeout = true,
            F::NoHealthyUpstream => out.no_healthy_upstream = true,
            F::UpstreamOverflow => out.upstream_overflow = true,
            F::UpstreamReset => out.upstream_remote_reset = true,
            F::UpstreamConnectionTermination => out.upstream_connection_termination = true,
            F::UpstreamProtocolError => out.upstream_protocol_error = true,
            F::RateLimited => out.rate_limited = true,
            F::DnsResolutionFailed => out.dns_resolution_failure = true,
            F::UpstreamRetryLimitExceeded => out.upstream_retry_limit_exceeded = true,
        }
    }
    (out != data::ResponseFlags::default()).then_some(out)
}

#[cfg(test)]
mod tests;
