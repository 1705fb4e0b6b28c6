//! SIGTERM's drain, started in process as the binary starts it: readiness fails at once, the
//! HBONE listener closes, requests in flight finish (an HTTP/1.1 response carries
//! `Connection: close`, an HTTP/2 connection gets a GOAWAY) and the drain ends when they have,
//! well before its deadline.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use waypoint::testing::LOCALHOST;
use weft_proxy_core::drain::Drained;

use crate::harness::*;

/// Polls `check` every 10 ms until it holds or `limit` passes.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_drain_finishes_requests_in_flight_and_refuses_new_connections() {
    let (mut harness, v1, _v2) = routed_to_v1().await;
    let v1 = &v1;
    let readiness = harness
        .waypoint
        .bind_readiness(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let readiness_address = readiness.address().unwrap();
    tokio::spawn(readiness.run());
    assert_eq!(
        http_get(readiness_address, "/healthz/ready").await.0,
        StatusCode::OK
    );

    // A keep-alive HTTP/1.1 connection that served a request already, and an HTTP/2 one: each
    // has a slow request in flight when the drain starts.
    let mut h1 = harness.http1().await;
    assert_eq!(send_on(&mut h1, get("/first")).await.0, StatusCode::OK);
    let (mut h2, h2_connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(harness.tunnel().await))
        .await
        .unwrap();
    let h2_connection = tokio::spawn(h2_connection);
    v1.behaviour.delay_ms.store(2_000, Ordering::Relaxed);
    let slow_h1 = tokio::spawn(async move {
        let answer = send_on(&mut h1, get("/slow-h1")).await;
        (answer, h1)
    });
    let slow_h2 = h2.send_request(
        Request::builder()
            .uri(format!("http://{HOST}/slow-h2"))
            .version(Version::HTTP_2)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    );
    let slow_h2 = tokio::spawn(async move {
        let response = slow_h2.await.unwrap();
        let status = response.status();
        (
            status,
            response.into_body().collect().await.unwrap().to_bytes(),
        )
    });
    assert!(
        eventually(
            Duration::from_secs(5),
            || async move { v1.request_count() == 3 }
        )
        .await,
        "the slow requests never reached the endpoint"
    );

    let started = Instant::now();
    let trigger = harness.drain.take().expect("the drain is not started yet");
    let drained = tokio::spawn(trigger.drain(Duration::from_secs(5)));

    // Unready at once, and the listener is gone: a new connection is refused.
    assert_eq!(
        http_get(readiness_address, "/healthz/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let address = harness.address;
    assert!(
        eventually(Duration::from_secs(5), || async move {
            tokio::net::TcpStream::connect(address)
                .await
                .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionRefused)
        })
        .await,
        "the hbone listener still accepts"
    );
    assert!(
        !slow_h1.is_finished() && !slow_h2.is_finished(),
        "refused only after the requests in flight had finished ({:?})",
        started.elapsed()
    );

    // What was in flight completes: HTTP/1.1 is told to close, HTTP/2 got a GOAWAY (its
    // connection ends once its stream has) and takes no new request.
    let ((status, headers, body), mut h1) = slow_h1.await.unwrap();
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
    assert_eq!(
        headers.get(http::header::CONNECTION).map(|v| v.as_bytes()),
        Some(b"close".as_ref()),
        "{headers:?}"
    );
    assert!(
        h1.ready().await.is_err(),
        "the HTTP/1.1 connection stayed open"
    );
    let (status, body) = slow_h2.await.unwrap();
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
    tokio::time::timeout(Duration::from_secs(5), h2_connection)
        .await
        .expect("the HTTP/2 connection stayed open after its GOAWAY")
        .unwrap()
        .unwrap();

    // The drain ends with the last connection, before the deadline.
    assert_eq!(drained.await.unwrap(), Drained::Complete);
    assert_eq!(v1.request_count(), 3);
}
