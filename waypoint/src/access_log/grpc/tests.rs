use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use prometheus_client::registry::Registry;
use weft_proto::envoy::config::core::v3::{RequestMethod, address, socket_address};
use weft_proto::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;

use super::stream::{BUFFER_SIZE_BYTES, MAX_QUEUED_MESSAGES};
use super::*;
use crate::access_log::AccessLogs;
use crate::metrics::{Metrics, RequestRecord};
use crate::testing::als::AlsReceiver;

fn als_log(collector: &str, kind: proto::grpc_access_log::Kind, filter: &str) -> proto::AccessLog {
    proto::AccessLog {
        provider: "als".to_owned(),
        filter: filter.to_owned(),
        grpc: Some(proto::GrpcAccessLog {
            kind: kind as i32,
            collector: vec![collector.to_owned()],
            log_name: "http_envoy_accesslog".to_owned(),
            request_headers: vec!["X-Tenant".to_owned(), "user-agent".to_owned()],
            response_headers: vec!["x-cache".to_owned()],
            response_trailers: vec!["grpc-message".to_owned()],
        }),
        ..Default::default()
    }
}

/// A request as a waypoint records it, with the headers the provider logs.
fn recorded(metrics: &Arc<Metrics>, logs: &Arc<AccessLogs>) -> RequestRecord {
    let mut record = RequestRecord::new(Arc::clone(metrics));
    record.method = http::Method::POST;
    record.path = "/cart?item=7".to_owned().into();
    record.authority = "shop.default.svc.cluster.local".to_owned().into();
    record.user_agent = "curl/8".to_owned().into();
    record.request_id = "req-1".to_owned().into();
    record.protocol = "HTTP/2";
    record.downstream_remote = Some("10.0.0.7:40000".parse().unwrap());
    record.downstream_local = Some("10.96.0.10:80".parse().unwrap());
    record.upstream_host = Some("10.0.1.5:8080".parse().unwrap());
    record.upstream_cluster = Some(
        "outbound|80||shop.default.svc.cluster.local"
            .to_owned()
            .into(),
    );
    record.route_name = Some("cart".to_owned().into());
    let mut headers = HeaderMap::new();
    headers.insert("x-tenant", HeaderValue::from_static("blue"));
    headers.insert("user-agent", HeaderValue::from_static("curl/8"));
    record.set_access_logs(logs, &headers);
    let mut response = HeaderMap::new();
    response.insert("x-cache", HeaderValue::from_static("miss"));
    record.capture_response_headers(&response);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-message", HeaderValue::from_static("done"));
    record.capture_response_trailers(&trailers);
    record.status = 503;
    record.response_flags = ResponseFlag::UpstreamConnectFailure.into();
    record
        .response_flags
        .insert(ResponseFlag::UpstreamRetryLimitExceeded);
    record.response_code_details = "upstream_reset_before_response_started".into();
    record.bytes_received = 12;
    record.bytes_sent = 34;
    record
}

fn socket(address: Option<&core::Address>) -> Option<(String, u32)> {
    match address?.address.as_ref()? {
        address::Address::SocketAddress(socket) => match socket.port_specifier? {
            socket_address::PortSpecifier::PortValue(port) => Some((socket.address.clone(), port)),
        },
    }
}

/// Envoy's HTTP gRPC access logger's entry of a request: the common properties (addresses,
/// start, time to the last byte, cluster, route, flags as Envoy's fields), the request (the
/// method as Envoy's enum, authority, path with its query, user agent, request id, the
/// headers asked for by lowercase name, a recorded one included) and the response (code,
/// details, bytes, the headers and trailers asked for).
#[test]
fn a_request_record_becomes_envoys_http_entry() {
    let log = als_log("127.0.0.1:9", proto::grpc_access_log::Kind::Http, "");
    let logs = AccessLogs::compile(std::slice::from_ref(&log), "access_logs")
        .unwrap()
        .unwrap();
    let sink = GrpcSink::compile(log.grpc.as_ref().unwrap()).unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let mut record = recorded(&metrics, &logs);
    let started = record.start_time();
    // Not written when dropped: this test reads the entry alone.
    record.access_log_disabled = true;
    let (logs_of, captured) = record.access_logs.as_ref().unwrap();
    let entry = RequestEntry {
        headers: logs_of.headers(),
        captured,
        record: &record,
    };
    let Entry::Http(entry) = request_entry(Kind::Http, &entry, &sink) else {
        panic!("an HTTP provider writes HTTP entries");
    };
    let common = entry.common_properties.as_ref().unwrap();
    assert_eq!(
        socket(common.downstream_remote_address.as_ref()),
        Some(("10.0.0.7".into(), 40000))
    );
    assert_eq!(
        socket(common.downstream_local_address.as_ref()),
        Some(("10.96.0.10".into(), 80))
    );
    assert_eq!(
        socket(common.upstream_remote_address.as_ref()),
        Some(("10.0.1.5".into(), 8080))
    );
    assert_eq!(common.start_time, Some(timestamp(started)));
    assert!(common.time_to_last_downstream_tx_byte.is_some());
    assert_eq!(
        common.upstream_cluster,
        "outbound|80||shop.default.svc.cluster.local"
    );
    assert_eq!(common.route_name, "cart");
    let flags = common.response_flags.as_ref().unwrap();
    assert!(flags.upstream_connection_failure && flags.upstream_retry_limit_exceeded);
    assert_eq!(
        *flags,
        data::ResponseFlags {
            upstream_connection_failure: true,
            upstream_retry_limit_exceeded: true,
            ..Default::default()
        }
    );
    assert_eq!(
        entry.protocol_version(),
        data::http_access_log_entry::HttpVersion::Http2
    );
    let request = entry.request.as_ref().unwrap();
    assert_eq!(request.request_method(), RequestMethod::Post);
    assert_eq!(request.authority, "shop.default.svc.cluster.local");
    assert_eq!(request.path, "/cart?item=7");
    assert_eq!(request.user_agent, "curl/8");
    assert_eq!(request.request_id, "req-1");
    assert_eq!(request.request_body_bytes, 12);
    assert_eq!(
        request.request_headers.len(),
        2,
        "{:?}",
        request.request_headers
    );
    assert_eq!(request.request_headers["x-tenant"], "blue");
    assert_eq!(request.request_headers["user-agent"], "curl/8");
    let response = entry.response.as_ref().unwrap();
    assert_eq!(response.response_code, Some(503));
    assert_eq!(
        response.response_code_details,
        "upstream_reset_before_response_started"
    );
    assert_eq!(response.response_body_bytes, 34);
    assert_eq!(response.response_headers.get("x-cache").unwrap(), "miss");
    assert_eq!(
        response.response_trailers.get("grpc-message").unwrap(),
        "done"
    );

    // A TCP provider logs the same request as a TCP entry: common properties and bytes.
    let Entry::Tcp(tcp) = request_entry(Kind::Tcp, &entry_of(&record), &sink) else {
        panic!("a TCP provider writes TCP entries");
    };
    assert_eq!(tcp.common_properties.unwrap().route_name, "cart");
    let bytes = tcp.connection_properties.unwrap();
    assert_eq!((bytes.received_bytes, bytes.sent_bytes), (12, 34));
}

/// A header that came several times is logged with its values joined by `,`, as Envoy's
/// gRPC logger logs it (`getAllOfHeaderAsString`), where `%REQ()%` keeps the first value.
#[test]
fn a_repeated_header_is_logged_with_its_values_joined() {
    let log = als_log("127.0.0.1:9", proto::grpc_access_log::Kind::Http, "");
    let logs = AccessLogs::compile(std::slice::from_ref(&log), "access_logs")
        .unwrap()
        .unwrap();
    let sink = GrpcSink::compile(log.grpc.as_ref().unwrap()).unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let mut record = recorded(&metrics, &logs);
    record.access_log_disabled = true;
    let mut headers = HeaderMap::new();
    headers.append("x-tenant", HeaderValue::from_static("blue"));
    headers.append("x-tenant", HeaderValue::from_static("green"));
    record.set_access_logs(&logs, &headers);
    let mut response = HeaderMap::new();
    response.append("x-cache", HeaderValue::from_static("miss"));
    response.append("x-cache", HeaderValue::from_static("stale"));
    record.capture_response_headers(&response);
    let mut trailers = HeaderMap::new();
    trailers.append("grpc-message", HeaderValue::from_static("a"));
    trailers.append("grpc-message", HeaderValue::from_static("b"));
    record.capture_response_trailers(&trailers);

    let Entry::Http(entry) = request_entry(Kind::Http, &entry_of(&record), &sink) else {
        panic!("an HTTP provider writes HTTP entries");
    };
    let request = entry.request.as_ref().unwrap();
    assert_eq!(request.request_headers["x-tenant"], "blue,green");
    let response = entry.response.as_ref().unwrap();
    assert_eq!(response.response_headers["x-cache"], "miss,stale");
    assert_eq!(response.response_trailers["grpc-message"], "a,b");
}

fn entry_of(record: &RequestRecord) -> RequestEntry<'_> {
    let (logs, captured) = record.access_logs.as_ref().unwrap();
    RequestEntry {
        headers: logs.headers(),
        captured,
        record,
    }
}

/// What a gRPC access log cannot be: without a service, or of no kind.
#[test]
fn bad_grpc_logs_are_refused_naming_the_log() {
    let mut no_collector = als_log("127.0.0.1:9", proto::grpc_access_log::Kind::Http, "");
    no_collector.grpc.as_mut().unwrap().collector.clear();
    let no_kind = als_log("127.0.0.1:9", proto::grpc_access_log::Kind::Unspecified, "");
    for (log, expected) in [(no_collector, "grpc.collector"), (no_kind, "grpc.kind")] {
        let message = AccessLogs::compile(&[log], "access_logs")
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("access_logs[0] (provider \"als\")") && message.contains(expected),
            "{message}"
        );
    }
}

/// Through the stream to a real AccessLogService on loopback: the first message carries the
/// identifier (the node and the log name), then the entry of the request the filter admits,
/// flushed within Envoy's 1 s interval although far below the buffer size.
#[tokio::test]
async fn entries_reach_the_access_log_service_after_the_identifier() {
    let receiver = AlsReceiver::default();
    let address = receiver.serve().await;
    stream::set_node_id("waypoint~10.0.0.9~waypoint-0.shop~shop.svc.cluster.local".into());
    let logs = AccessLogs::compile(
        &[als_log(
            &address.to_string(),
            proto::grpc_access_log::Kind::Http,
            "response.code >= 400",
        )],
        "access_logs",
    )
    .unwrap()
    .unwrap();
    let metrics = Arc::new(Metrics::new(&mut Registry::default()));
    let mut ok = recorded(&metrics, &logs);
    ok.status = 200;
    ok.path = "/ok".to_owned().into();
    drop(ok);
    drop(recorded(&metrics, &logs));
    assert!(
        receiver
            .wait_for(Duration::from_secs(10), |r| !r.http_entries().is_empty())
            .await,
        "no entry received"
    );
    let streams = receiver.streams();
    let first = &streams[0][0];
    let identifier = first
        .identifier
        .as_ref()
        .expect("the first message identifies");
    assert_eq!(identifier.log_name, "http_envoy_accesslog");
    // The waypoint's node id (another test's waypoint may have set it first).
    let node = &identifier.node.as_ref().unwrap().id;
    assert!(!node.is_empty());
    assert_eq!(*node, stream::node_id());
    let entries = receiver.http_entries();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let request = entries[0].request.as_ref().unwrap();
    assert_eq!(request.request_method(), RequestMethod::Post);
    assert_eq!(request.path, "/cart?item=7");
    assert_eq!(
        entries[0].response.as_ref().unwrap().response_code,
        Some(503)
    );
    let flags = entries[0]
        .common_properties
        .as_ref()
        .unwrap()
        .response_flags
        .unwrap();
    assert!(flags.upstream_connection_failure);
    assert!(matches!(first.log_entries, Some(LogEntries::HttpLogs(_))));
}

/// A service that accepts the connection and never reads: entries are buffered up to the
/// buffer size and at most a few messages queue; the rest is dropped and counted, and no
/// submit waits.
#[tokio::test]
async fn a_service_that_never_reads_costs_a_bounded_buffer_and_drops_are_counted() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = Arc::clone(&held);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            holder.lock().unwrap().push(socket);
        }
    });
    let stream = stream::for_test(Kind::Http, address.to_string());
    let entry = Entry::Http(Box::new(data::HttpAccessLogEntry {
        request: Some(data::HttpRequestProperties {
            path: "/".repeat(1024),
            ..Default::default()
        }),
        ..Default::default()
    }));
    // The stream connects (the service accepts) once the first entry starts it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut submitted = 0u64;
    while held.lock().unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service was never connected to"
        );
        stream.submit(entry.clone());
        submitted += 1;
        tokio::task::yield_now().await;
    }
    // Far more than the stream can take: 20,000 entries of 1 KiB.
    for _ in 0..20_000 / 64 {
        for _ in 0..64 {
            let before = std::time::Instant::now();
            stream.submit(entry.clone());
            assert!(
                before.elapsed() < Duration::from_millis(100),
                "a submit waited"
            );
            submitted += 1;
            assert!(stream.buffered_bytes() < BUFFER_SIZE_BYTES);
        }
        tokio::task::yield_now().await;
    }
    assert!(
        stream.dropped() > 0,
        "nothing dropped after {submitted} entries"
    );
    // What was handed to the stream is what its queue and the connection's flow-control
    // window (64 KiB, never opened by a service that does not read) hold, not what was
    // submitted.
    let per_message = BUFFER_SIZE_BYTES / entry.encoded_len() + 1;
    assert!(
        stream.sent() <= ((MAX_QUEUED_MESSAGES + 8) * per_message) as u64,
        "sent {} of {submitted}",
        stream.sent()
    );
    assert_eq!(
        stream.sent() + stream.dropped() + (stream.buffered_bytes() / entry.encoded_len()) as u64,
        submitted
    );
}

/// Envoy's TCP gRPC access logger's entry of a connection: the common properties (addresses,
/// start, duration to the last byte, cluster, the flag as Envoy's field, why it ended) and the
/// bytes each way; an HTTP provider logs the same connection as an HTTP entry of the common
/// properties alone.
#[test]
fn a_connection_record_becomes_envoys_tcp_entry() {
    let info = crate::metrics::ConnectionInfo {
        downstream_local: "10.96.0.10:9080".into(),
        downstream_remote: "10.0.0.7:40000".into(),
        upstream_host: Some("10.0.1.5:9080".into()),
        upstream_cluster: Some("outbound|9080||reviews".into()),
        response_flags: ResponseFlag::NoHealthyUpstream,
        termination_details: Some("rbac_access_denied_matched_policy[none]".into()),
        ..Default::default()
    };
    let labels = info.labels();
    let end = weft_proxy_core::metrics::ConnectionEnd {
        labels: &labels,
        sent: 40,
        received: 30,
        duration: Duration::from_millis(1500),
    };
    let started = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let entry = ConnectionEntry {
        info: &info,
        end: &end,
        start_time: crate::metrics::UtcTime(started),
    };
    let Entry::Tcp(tcp) = connection_entry(Kind::Tcp, &entry) else {
        panic!("a TCP provider writes TCP entries");
    };
    let common = tcp.common_properties.as_ref().unwrap();
    assert_eq!(
        socket(common.downstream_remote_address.as_ref()),
        Some(("10.0.0.7".into(), 40000))
    );
    assert_eq!(
        socket(common.upstream_remote_address.as_ref()),
        Some(("10.0.1.5".into(), 9080))
    );
    assert_eq!(common.start_time, Some(timestamp(started)));
    assert_eq!(
        common.time_to_last_downstream_tx_byte,
        Some(prost_types::Duration {
            seconds: 1,
            nanos: 500_000_000
        })
    );
    assert_eq!(common.upstream_cluster, "outbound|9080||reviews");
    assert_eq!(
        common.response_flags,
        Some(data::ResponseFlags {
            no_healthy_upstream: true,
            ..Default::default()
        })
    );
    assert_eq!(
        common.connection_termination_details,
        "rbac_access_denied_matched_policy[none]"
    );
    let bytes = tcp.connection_properties.unwrap();
    assert_eq!((bytes.received_bytes, bytes.sent_bytes), (30, 40));
    let Entry::Http(http) = connection_entry(Kind::Http, &entry) else {
        panic!("an HTTP provider writes HTTP entries");
    };
    assert_eq!(http.common_properties.as_ref(), Some(common));
    assert!(http.request.is_none() && http.response.is_none());
}
