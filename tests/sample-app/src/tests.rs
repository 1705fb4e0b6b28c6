use http_body_util::Empty;
use hyper::client::conn::{http1, http2};

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
