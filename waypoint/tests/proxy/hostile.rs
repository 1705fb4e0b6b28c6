//! Clients that break the rules: request smuggling, rapid reset, malformed and oversized heads.

use std::time::Duration;

use http::{Request, StatusCode};

use crate::harness::*;

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused_and_others_still_work() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let mut tunnel = harness.tunnel().await;
    let smuggled = format!(
        "POST /smuggle HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"
    );
    let (answer, ended) = exchange_raw(&mut tunnel, smuggled.as_bytes()).await;
    assert!(ended);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(v1.request_count(), 0);

    let (status, _, body) = harness.get("/fine").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
}

#[tokio::test]
async fn rapid_reset_burst_is_survived() {
    let (harness, _v1, _v2) = routed_to_v1().await;
    let tunnel = harness.tunnel().await;
    let (client, connection) = h2::client::handshake(tunnel).await.unwrap();
    let driver = tokio::spawn(connection);
    let mut client = client;
    let mut sent = 0;
    for i in 0..1000 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let request = Request::builder()
            .uri(format!("http://{HOST}/reset/{i}"))
            .body(())
            .unwrap();
        let Ok((_, mut stream)) = client.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    assert!(sent > 0);
    // The server closes the abusive connection with GOAWAY(ENHANCE_YOUR_CALM) (hyper's bound
    // on pending-accept resets) instead of working through every stream.
    let outcome = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("connection closed by the server")
        .unwrap();
    let error = outcome.expect_err("rapid reset must end the connection");
    assert!(error.is_go_away() && error.is_remote(), "{error:?}");
    assert_eq!(error.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM));
    let (status, _, body) = harness.get("/after-reset").await;
    assert_eq!((status, body.as_ref()), (StatusCode::OK, b"v1".as_ref()));
}

#[tokio::test]
async fn malformed_and_oversized_heads_are_refused() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let huge = "a".repeat(80 * 1024);
    let cases = [
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nBad Name: x\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Ctl: a\x01b\r\n\r\n"),
            "HTTP/1.1 400",
        ),
        (
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {huge}\r\n\r\n"),
            "HTTP/1.1 431",
        ),
        (
            format!(
                "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"
            ),
            "HTTP/1.1 400",
        ),
    ];
    for (request, expected) in cases {
        let mut tunnel = harness.tunnel().await;
        let (answer, _) = exchange_raw(&mut tunnel, request.as_bytes()).await;
        assert!(
            answer.starts_with(expected),
            "{expected} for {:.60}: {answer}",
            request
        );
    }
    assert_eq!(v1.request_count(), 0);
}

/// A keep-alive connection that carries nothing for the idle timeout is closed (Envoy's
/// `idle_timeout`), so an idle client cannot hold it.
#[tokio::test]
async fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let limits = waypoint::HttpLimits {
        idle_timeout: Duration::from_millis(300),
        ..waypoint::HttpLimits::default()
    };
    let harness = Harness::start_with_limits(mesh, &[&v1], limits).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();
    let mut tunnel = harness.tunnel().await;
    // Keep-alive: only the idle timeout (not the 30 s head timeout) ends it within 5 s.
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let (answer, ended) = exchange_raw(&mut tunnel, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(ended, "the idle connection was not closed: {answer}");
    assert_eq!(v1.request_count(), 1);
}

/// A client has `header_read_timeout` to send a request head, counted from when the waypoint
/// waits for it (after the previous response on a kept-alive connection): a head left unfinished
/// closes the connection unanswered, and so does a kept-alive connection whose next head does
/// not come; a response slower than the limit is not cut, the clock stops while a request is
/// served.
#[tokio::test]
async fn a_request_head_not_sent_in_time_closes_the_connection() {
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    let (mesh, v1, _v2) = two_endpoints().await;
    let limits = waypoint::HttpLimits {
        header_read_timeout: Duration::from_millis(300),
        ..waypoint::HttpLimits::default()
    };
    let harness = Harness::start_with_limits(mesh, &[&v1], limits).await;
    harness
        .waypoint
        .apply_config(config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]))
        .unwrap();

    // Half a head, then nothing: closed unanswered (the idle timeout is an hour).
    let mut tunnel = harness.tunnel().await;
    let started = Instant::now();
    let (answer, ended) = exchange_raw(
        &mut tunnel,
        format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n").as_bytes(),
    )
    .await;
    assert!(
        ended,
        "a half-sent head kept the connection open: {answer:?}"
    );
    assert!(answer.is_empty(), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(v1.request_count(), 0);

    // A response twice as slow as the limit is answered whole; the next head, which does not
    // come, closes the connection.
    v1.behaviour.delay_ms.store(600, Ordering::Relaxed);
    let mut tunnel = harness.tunnel().await;
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let (answer, ended) = exchange_raw(&mut tunnel, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.ends_with(&format!("\r\n\r\n{}", v1.name)) && !answer.contains("connection: close"),
        "the slow response was cut short: {answer}"
    );
    assert!(ended, "the connection outlived the head timeout: {answer}");
    assert_eq!(v1.request_count(), 1);
}
