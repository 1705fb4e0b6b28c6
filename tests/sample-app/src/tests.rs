use http_body_util::Empty;
use hyper::client::conn::{http1, http2};
use tokio_tungstenite::tungstenite::Message;

use super::*;

async fn app() -> (SocketAddr, SocketAddr) {
    let (http, grpc, _task) = start(
        Identity {
            service: "reviews".into(),
            version: "v2".into(),
            pod: "reviews-v2-0".into(),
        },
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    (http, grpc)
}

async fn get_h1(
    address: SocketAddr,
    uri: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, serde_json::Value) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let mut request = Request::get(uri).header("host", "reviews");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = sender
        .send_request(request.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn answers_who_it_is_over_http1_and_http2() {
    let (http, _) = app().await;
    let (status, body) = get_h1(http, "/hello?x=1", &[("x-trace", "abc")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["version"], "v2");
    assert_eq!(body["pod"], "reviews-v2-0");
    assert_eq!(body["path"], "/hello?x=1");
    assert_eq!(body["headers"]["x-trace"], "abc");

    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::get("http://reviews/h2")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.headers()["x-weft-version"], "v2");
    let body: serde_json::Value =
        serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["protocol"], "HTTP/2.0");
}

#[tokio::test]
async fn fails_and_delays_on_request() {
    let (http, _) = app().await;
    assert_eq!(
        get_h1(http, "/status/503", &[]).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        get_h1(http, "/?status=418", &[]).await.0,
        StatusCode::IM_A_TEAPOT
    );
    let started = std::time::Instant::now();
    assert_eq!(get_h1(http, "/?delay_ms=300", &[]).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    // The first two attempts of one request id fail, the third succeeds.
    let headers = [("x-request-id", "r-1"), ("x-fail-attempts", "2")];
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(get_h1(http, "/", &headers).await.0.as_u16());
    }
    assert_eq!(seen, [503, 503, 200]);
}

#[tokio::test]
async fn grpc_echo_answers_and_fails_on_request() {
    let (_, grpc) = app().await;
    let mut client = weft_proto::sample::echo_client::EchoClient::connect(format!("http://{grpc}"))
        .await
        .unwrap();
    let reply = client
        .echo(EchoRequest {
            message: "hi".into(),
            fail_with_code: 0,
            delay_ms: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (reply.message.as_str(), reply.version.as_str()),
        ("hi", "v2")
    );
    let status = client
        .echo(EchoRequest {
            message: "x".into(),
            fail_with_code: tonic::Code::Unavailable as i32,
            delay_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn websocket_messages_are_echoed() {
    let (http, _) = app().await;
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut socket, response) = tokio_tungstenite::client_async(format!("ws://{http}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.headers()["x-weft-pod"], "reviews-v2-0");
    for text in ["hello", "world"] {
        socket.send(Message::text(text)).await.unwrap();
        let echoed = socket.next().await.unwrap().unwrap();
        assert_eq!(echoed, Message::text(text));
    }
    socket.send(Message::binary(vec![0u8, 1, 2])).await.unwrap();
    assert_eq!(
        socket.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2])
    );
    socket.close(None).await.unwrap();
}

#[tokio::test]
async fn control_makes_every_request_fail_until_recovered() {
    let (http, _) = app().await;
    let control = |path: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(http).await.unwrap();
        let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
        tokio::spawn(connection);
        let response = sender
            .send_request(
                Request::post(path)
                    .header("host", "reviews")
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        response.status()
    };
    assert_eq!(get_h1(http, "/", &[]).await.0, StatusCode::OK);
    assert_eq!(control("/control/fail?status=502").await, StatusCode::OK);
    for _ in 0..3 {
        assert_eq!(get_h1(http, "/", &[]).await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(control("/control/recover").await, StatusCode::OK);
    assert_eq!(get_h1(http, "/", &[]).await.0, StatusCode::OK);
}

#[tokio::test]
async fn upstreams_are_called_with_the_propagated_headers() {
    let (ratings, _) = app().await;
    let (failing, _) = app().await;
    // A raw upstream that keeps the request head it received.
    let recorder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let recorded = recorder.local_addr().unwrap();
    let head = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut stream, _) = recorder.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the end of the head");
            head.extend_from_slice(&buf[..n]);
        }
        let body = r#"{"service":"details","version":"v1","pod":"details-v1"}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        String::from_utf8(head).unwrap().to_lowercase()
    });
    let upstreams = vec![
        format!("ratings=http://{ratings}/ratings").parse().unwrap(),
        format!("broken=http://{failing}/status/500")
            .parse()
            .unwrap(),
        "closed=http://127.0.0.1:1/".parse().unwrap(),
        format!("details=http://{recorded}/details/0")
            .parse()
            .unwrap(),
    ];
    let front = App::with_upstreams(
        Identity {
            service: "productpage".into(),
            version: "v1".into(),
            pod: "productpage-v1".into(),
        },
        upstreams,
        false,
    );
    let (http, _, _task) = start_app(
        front,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (status, body) = get_h1(
        http,
        "/productpage",
        &[
            ("end-user", "jason"),
            ("x-request-id", "3f1c"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-parentspanid", "b7ad6b7169203331"),
            ("x-b3-sampled", "1"),
            ("x-b3-flags", "0"),
            ("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1"),
            ("x-other", "not passed on"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let upstreams = body["upstreams"].as_array().unwrap();
    assert_eq!(upstreams.len(), 4, "{body}");
    assert_eq!(upstreams[0]["name"], "ratings");
    assert_eq!(upstreams[0]["status"], 200);
    assert_eq!(upstreams[0]["version"], "v2");
    assert_eq!(upstreams[1]["status"], 500);
    assert_eq!(upstreams[2]["status"], 0);
    assert!(upstreams[2]["error"].is_string(), "{body}");
    assert_eq!(upstreams[3]["pod"], "details-v1");
    // Each call names the pooled connection it went out on; the next request reuses it.
    let connection = upstreams[0]["connection"].as_str().unwrap().to_owned();
    assert!(connection.starts_with("127.0.0.1:"), "{body}");
    let (_, again) = get_h1(http, "/productpage", &[]).await;
    assert_eq!(again["upstreams"][0]["connection"], connection.as_str());
    // What the upstream saw: its own path and the propagated headers, nothing else.
    let head = head.await.unwrap();
    assert!(head.starts_with("get /details/0 http/1.1\r\n"), "{head}");
    for line in [
        "end-user: jason",
        "x-request-id: 3f1c",
        "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "tracestate: congo=t61rcwkgmze",
        "x-b3-traceid: 4bf92f3577b34da6a3ce929d0e0e4736",
        "x-b3-spanid: 00f067aa0ba902b7",
        "x-b3-parentspanid: b7ad6b7169203331",
        "x-b3-sampled: 1",
        "x-b3-flags: 0",
        "b3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
    ] {
        assert!(head.contains(&format!("{line}\r\n")), "{line:?} in {head}");
    }
    assert!(!head.contains("x-other"), "{head}");
    assert!("bad".parse::<Upstream>().is_err());
    assert!("x=https://a:1/".parse::<Upstream>().is_err());
}

#[tokio::test]
async fn files_are_served_as_they_are_now() {
    let file = std::env::temp_dir().join(format!("weft-sample-file-{}.json", std::process::id()));
    let app = App::with_files(
        Identity {
            service: "jwks".into(),
            version: "v1".into(),
            pod: "jwks-0".into(),
        },
        Vec::new(),
        false,
        vec![format!("/keys.json={}", file.display()).parse().unwrap()],
    );
    assert!("/keys.json=".parse::<StaticFile>().is_err());
    assert!("keys.json=/tmp/x".parse::<StaticFile>().is_err());
    let (http, _grpc, _task) = start_app(
        app,
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    // Not written yet: 404.
    let _ = std::fs::remove_file(&file);
    assert_eq!(
        get_h1(http, "/keys.json", &[]).await.0,
        StatusCode::NOT_FOUND
    );
    std::fs::write(&file, r#"{"keys":[1]}"#).unwrap();
    assert_eq!(
        get_h1(http, "/keys.json", &[]).await,
        (StatusCode::OK, serde_json::json!({"keys": [1]}))
    );
    std::fs::write(&file, r#"{"keys":[2]}"#).unwrap();
    assert_eq!(get_h1(http, "/keys.json", &[]).await.1["keys"][0], 2);
    // Other paths are the app's usual answer.
    assert_eq!(get_h1(http, "/other", &[]).await.1["service"], "jwks");
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn requests_read_whole_and_broken_off_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (http, _) = app().await;
    let tally = || async { get_h1(http, "/control/requests", &[]).await.1 };
    assert_eq!(
        tally().await,
        serde_json::json!({"completed": 0, "broken": 0, "largest_body": 0})
    );
    // A whole body: counted, and its length answered.
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::post("/upload")
                .header("host", "reviews")
                .body(Full::new(Bytes::from_static(b"0123456789")))
                .unwrap(),
        )
        .await
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["body_bytes"], 10);
    // A chunked body that breaks off after 4 bytes.
    let mut raw = tokio::net::TcpStream::connect(http).await.unwrap();
    raw.write_all(
        b"POST /upload HTTP/1.1\r\nhost: reviews\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    )
    .await
    .unwrap();
    raw.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest).await;
    let expected = serde_json::json!({"completed": 1, "broken": 1, "largest_body": 10});
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tally().await != expected {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} != {expected}",
            tally().await
        );
        tokio::task::yield_now().await;
    }
}
