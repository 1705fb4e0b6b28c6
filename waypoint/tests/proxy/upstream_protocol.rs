//! The HTTP version requests reach endpoints in (DestinationRule `h2UpgradePolicy` and
//! `useClientProtocol`, as the controller sets a cluster's `upstream_protocol`), seen by a real
//! HTTP/1.1 and HTTP/2 endpoint that records the version each request arrived in.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_proto::waypoint as proto;

use waypoint::testing::FakeEndpoint;

use crate::harness::*;

/// A waypoint routing every request to `v1`, whose cluster goes upstream in `protocol`, on a
/// port declared `port`.
async fn routed_in(
    protocol: proto::UpstreamHttpProtocol,
    port: proto::Protocol,
) -> (Harness, FakeEndpoint, FakeEndpoint) {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut v1_cluster = cluster("v1", &[&v1]);
    v1_cluster.set_upstream_protocol(protocol);
    let mut cfg = config(vec![route_to("v1")], vec![v1_cluster]);
    cfg.services[0].ports[0].protocol = port as i32;
    harness.waypoint.apply_config(cfg).unwrap();
    (harness, v1, v2)
}

/// The version `v1` saw a GET from an HTTP/1.1 client arrive in.
async fn version_of_an_http1_request(harness: &Harness, v1: &FakeEndpoint) -> Version {
    let (status, _, body) = harness.get("/version").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
    v1.last_request().expect("the request reached v1").version
}

/// The version `v1` saw a GET from an HTTP/2 client arrive in.
async fn version_of_an_http2_request(harness: &Harness, v1: &FakeEndpoint) -> Version {
    let (mut sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(harness.tunnel().await))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("http://{HOST}/version"))
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "v1"
    );
    v1.last_request().expect("the request reached v1").version
}

#[tokio::test]
async fn upgrade_sends_http1_clients_upstream_over_http2() {
    // Without it, an HTTP/1.1 client's request goes upstream over HTTP/1.1, an HTTP/2 one's
    // over HTTP/2...
    let (harness, v1, _v2) =
        routed_in(proto::UpstreamHttpProtocol::Default, proto::Protocol::Http).await;
    assert_eq!(
        version_of_an_http1_request(&harness, &v1).await,
        Version::HTTP_11
    );
    assert_eq!(
        version_of_an_http2_request(&harness, &v1).await,
        Version::HTTP_2
    );
    // ...and with it, both over HTTP/2: twice, the second on the pooled connection.
    let (harness, v1, _v2) =
        routed_in(proto::UpstreamHttpProtocol::Http2, proto::Protocol::Http).await;
    for _ in 0..2 {
        assert_eq!(
            version_of_an_http1_request(&harness, &v1).await,
            Version::HTTP_2
        );
    }
    assert_eq!(
        version_of_an_http2_request(&harness, &v1).await,
        Version::HTTP_2
    );
    let seen = v1.last_request().unwrap();
    assert_eq!(seen.path, "/version");
}

#[tokio::test]
async fn client_protocol_keeps_each_clients_version_on_a_port_declared_grpc() {
    // A port declared GRPC goes upstream over HTTP/2 by default, whatever the client spoke...
    let (harness, v1, _v2) =
        routed_in(proto::UpstreamHttpProtocol::Default, proto::Protocol::Grpc).await;
    assert_eq!(
        version_of_an_http1_request(&harness, &v1).await,
        Version::HTTP_2
    );
    // ...and in the client's own version with `useClientProtocol`.
    let (harness, v1, _v2) =
        routed_in(proto::UpstreamHttpProtocol::Client, proto::Protocol::Grpc).await;
    assert_eq!(
        version_of_an_http1_request(&harness, &v1).await,
        Version::HTTP_11
    );
    assert_eq!(
        version_of_an_http2_request(&harness, &v1).await,
        Version::HTTP_2
    );
}

#[tokio::test]
async fn a_websocket_upgrade_stays_on_http1_under_upgrade() {
    let (harness, v1, _v2) =
        routed_in(proto::UpstreamHttpProtocol::Http2, proto::Protocol::Http).await;
    // Plain requests are upgraded...
    assert_eq!(
        version_of_an_http1_request(&harness, &v1).await,
        Version::HTTP_2
    );
    // ...a protocol upgrade is not: Envoy would send it as an HTTP/2 extended CONNECT, which
    // it does not allow without `allow_connect`.
    let mut io = websocket(&harness).await;
    for message in [&b"\x81\x05hello"[..], &b"\x81\x05world"[..]] {
        assert_eq!(websocket_echo(&mut io, message).await, message);
    }
    let seen = v1.last_request().unwrap();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.headers["upgrade"], "websocket");
}

#[tokio::test]
async fn a_mirror_goes_in_its_own_clusters_version() {
    let (mesh, v1, v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1, &v2]).await;
    let mut v2_cluster = cluster("v2", &[&v2]);
    v2_cluster.set_upstream_protocol(proto::UpstreamHttpProtocol::Http2);
    harness
        .waypoint
        .apply_config(config(
            vec![mirrored_route_to("v1", "v2")],
            vec![cluster("v1", &[&v1]), v2_cluster],
        ))
        .unwrap();
    assert_eq!(
        version_of_an_http1_request(&harness, &v1).await,
        Version::HTTP_11
    );
    for _ in 0..250 {
        if v2.request_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let copy = v2.last_request().expect("mirror copy delivered");
    assert_eq!(copy.version, Version::HTTP_2);
    assert_eq!(copy.path, "/version");
}
