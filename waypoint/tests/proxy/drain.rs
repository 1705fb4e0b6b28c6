//! SIGTERM's drain, started in process as the binary starts it (Envoy's graceful drain under
//! pilot-agent): readiness fails at once, the HBONE listener keeps accepting, requests in
//! flight finish and every connection, old or new, is told to go away (an HTTP/1.1 response
//! carries `Connection: close`, an HTTP/2 connection gets a GOAWAY); the drain runs its whole
//! period.

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

/// The drain's period here: longer than the slow requests (2 s), short for a test.
const PERIOD: Duration = Duration::from_secs(4);

/// An HTTP/2 connection in a new tunnel: its sender, and the task driving it.
async fn h2_on(
    tunnel: weft_hbone::HboneStream,
) -> (
    http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tunnel))
        .await
        .unwrap();
    (sender, tokio::spawn(connection))
}

fn h2_get(path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{HOST}{path}"))
        .version(Version::HTTP_2)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

#[tokio::test]
async fn a_drain_serves_old_and_new_connections_and_tells_each_to_go_away() {
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
    let (mut h2, h2_connection) = h2_on(harness.tunnel().await).await;
    v1.behaviour.delay_ms.store(2_000, Ordering::Relaxed);
    let slow_h1 = tokio::spawn(async move {
        let answer = send_on(&mut h1, get("/slow-h1")).await;
        (answer, h1)
    });
    let slow_h2 = h2.send_request(h2_get("/slow-h2"));
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
    let drained = tokio::spawn(trigger.drain_for(PERIOD));

    // Unready at once.
    assert_eq!(
        http_get(readiness_address, "/healthz/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    v1.behaviour.delay_ms.store(0, Ordering::Relaxed);

    // A new HBONE connection is accepted and its tunnel served: HTTP/1.1 is answered with
    // `Connection: close` and closed, HTTP/2 answered and sent a GOAWAY.
    let mut fresh = harness.http1().await;
    let (status, headers, body) = send_on(&mut fresh, get("/during-the-drain")).await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
    assert_eq!(
        headers.get(http::header::CONNECTION).map(|v| v.as_bytes()),
        Some(b"close".as_ref()),
        "{headers:?}"
    );
    assert!(
        fresh.ready().await.is_err(),
        "the new HTTP/1.1 connection stayed open"
    );
    let (mut fresh_h2, fresh_h2_connection) = h2_on(harness.tunnel().await).await;
    let response = fresh_h2
        .send_request(h2_get("/during-the-drain-h2"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(5), fresh_h2_connection)
        .await
        .expect("the new HTTP/2 connection stayed open after its GOAWAY")
        .unwrap()
        .unwrap();
    assert!(
        !slow_h1.is_finished() && !slow_h2.is_finished(),
        "the new connections were served only after the requests in flight had finished ({:?})",
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

    // Every connection ended, and the drain still runs its whole period, accepting.
    assert!(!drained.is_finished(), "the drain ended before its period");
    let (status, _, _) = send_on(&mut harness.http1().await, get("/late")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(drained.await.unwrap(), Drained::Complete);
    assert!(started.elapsed() >= PERIOD, "{:?}", started.elapsed());
    assert_eq!(v1.request_count(), 6);
}
