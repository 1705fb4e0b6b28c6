//! `envoyHttpAls` and `envoyTcpAls` providers: selected by a Telemetry, sent to the waypoint
//! with their service resolved, `logName` and the headers Envoy's logger is asked to log.

use weft_proto::waypoint as wp;

use super::super::super::tests::OTEL_COLLECTOR as COLLECTOR;
use super::super::tests::{telemetry, waypoint_config};

const PROVIDERS: &str = "accessLogFile: /tmp/mesh.log\nextensionProviders: [{name: als, envoyHttpAls: {service: otel-collector.observability.svc.cluster.local, port: 4317, additionalRequestHeadersToLog: [X-Tenant], additionalResponseHeadersToLog: [x-cache], additionalResponseTrailersToLog: [grpc-message]}}, {name: conns, envoyTcpAls: {service: als.example.com, port: 4317, logName: conns-log}}]";

fn access_logs(telemetries: &[String]) -> (bool, Vec<wp::AccessLog>) {
    let config = waypoint_config(PROVIDERS, &format!("{COLLECTOR}{}", telemetries.concat()));
    (config.access_log_disabled, config.access_logs)
}

/// A Telemetry selecting the HTTP provider with a filter: the waypoint streams HTTP entries to
/// the Service's ready pod (its target port), under istiod's default log name, with the
/// headers and trailers to log; the mesh's `accessLogFile` is not written in its place.
#[test]
fn a_telemetry_selecting_an_http_als_provider_streams_to_its_service() {
    let selected = telemetry(
        "logs",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: als}], filter: {expression: 'response.code >= 400'}}]}",
    );
    let (disabled, logs) = access_logs(&[selected]);
    assert!(!disabled);
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = &logs[0];
    assert_eq!(log.provider, "als");
    assert_eq!(log.path, "");
    assert_eq!(log.format, None);
    assert_eq!(log.filter, "response.code >= 400");
    assert_eq!(log.otel, None);
    let grpc = log.grpc.as_ref().expect("a gRPC access-log service log");
    assert_eq!(grpc.kind(), wp::grpc_access_log::Kind::Http);
    assert_eq!(grpc.collector, ["10.0.0.50:14317"]);
    assert_eq!(grpc.log_name, "http_envoy_accesslog");
    assert_eq!(grpc.request_headers, ["x-tenant"]);
    assert_eq!(grpc.response_headers, ["x-cache"]);
    assert_eq!(grpc.response_trailers, ["grpc-message"]);
}

/// The TCP provider: `tcp_logs`, its own `logName`, a ServiceEntry host left for the waypoint
/// to resolve; both providers selected are both sent, in name order.
#[test]
fn a_tcp_als_provider_is_sent_beside_the_http_one() {
    let selected = telemetry(
        "logs",
        "shop",
        1,
        "{accessLogging: [{providers: [{name: conns}, {name: als}]}]}",
    );
    let (_, logs) = access_logs(&[selected]);
    let names: Vec<_> = logs.iter().map(|l| l.provider.as_str()).collect();
    assert_eq!(names, ["als", "conns"]);
    let grpc = logs[1].grpc.as_ref().unwrap();
    assert_eq!(grpc.kind(), wp::grpc_access_log::Kind::Tcp);
    assert_eq!(grpc.collector, ["als.example.com:4317"]);
    assert_eq!(grpc.log_name, "conns-log");
    assert!(grpc.request_headers.is_empty());
}
