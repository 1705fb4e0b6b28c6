//! Access logs sent to a collector from requests through the waypoint.

use std::time::Duration;

use http::StatusCode;
use waypoint::testing::als::AlsReceiver;
use weft_proto::envoy::config::core::v3::RequestMethod;
use weft_proto::waypoint as proto;

use crate::harness::*;

/// An `envoyHttpAls` provider: a request through the waypoint reaches a real
/// AccessLogService on loopback as Envoy's HTTP entry, after the stream's identifier; an
/// aborted request carries Envoy's `fault_injected` flag and its code.
#[tokio::test]
async fn a_request_through_the_waypoint_is_streamed_to_the_access_log_service() {
    let receiver = AlsReceiver::default();
    let address = receiver.serve().await;
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let mut config = config(
        vec![
            proto::HttpRoute {
                name: "teapot".to_owned(),
                r#match: vec![proto::HttpMatchRequest {
                    uri: Some(proto::StringMatch {
                        match_type: Some(proto::string_match::MatchType::Prefix(
                            "/teapot".to_owned(),
                        )),
                    }),
                    ..Default::default()
                }],
                ..aborted_route_to("v1", 418)
            },
            route_to("v1"),
        ],
        vec![cluster("v1", &[&v1])],
    );
    config.access_logs = vec![proto::AccessLog {
        provider: "als".to_owned(),
        grpc: Some(proto::GrpcAccessLog {
            kind: proto::grpc_access_log::Kind::Http as i32,
            collector: vec![address.to_string()],
            log_name: "http_envoy_accesslog".to_owned(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    harness.waypoint.apply_config(config).unwrap();

    assert_eq!(harness.get("/hello?x=1").await.0, StatusCode::OK);
    assert_eq!(harness.get("/teapot").await.0, StatusCode::IM_A_TEAPOT);
    assert!(
        receiver
            .wait_for(Duration::from_secs(10), |r| r.http_entries().len() >= 2)
            .await,
        "entries received: {:?}",
        receiver.http_entries()
    );
    let streams = receiver.streams();
    let identifier = streams[0][0]
        .identifier
        .as_ref()
        .expect("an identifier first");
    assert_eq!(identifier.log_name, "http_envoy_accesslog");
    let entries = receiver.http_entries();
    let summary: Vec<_> = entries
        .iter()
        .map(|e| {
            let request = e.request.as_ref().unwrap();
            let flags = e
                .common_properties
                .as_ref()
                .and_then(|c| c.response_flags)
                .unwrap_or_default();
            (
                request.request_method(),
                request.path.clone(),
                e.response.as_ref().unwrap().response_code,
                flags.fault_injected,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (
                RequestMethod::Get,
                "/hello?x=1".to_owned(),
                Some(200),
                false
            ),
            (RequestMethod::Get, "/teapot".to_owned(), Some(418), true),
        ]
    );
    let common = entries[0].common_properties.as_ref().unwrap();
    assert!(common.upstream_remote_address.is_some(), "{common:?}");
    assert!(!common.upstream_cluster.is_empty(), "{common:?}");
    assert_eq!(entries[0].request.as_ref().unwrap().authority, HOST);
}
