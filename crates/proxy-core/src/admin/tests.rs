use http_body_util::{BodyExt, Empty};
use prometheus_client::metrics::counter::Counter;

use super::*;

async fn request(address: SocketAddr, method: http::Method, path: &str) -> (StatusCode, String) {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            Request::builder()
                .method(method)
                .uri(path)
                .header("host", "admin")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn get(address: SocketAddr, path: &str) -> (StatusCode, String) {
    request(address, http::Method::GET, path).await
}

async fn serve(endpoints: Endpoints) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let server = AdminServer::bind("127.0.0.1:0".parse().unwrap(), endpoints)
        .await
        .unwrap();
    let address = server.address().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    (address, stop)
}

#[tokio::test]
async fn serves_what_the_endpoints_answer() {
    let endpoints: Endpoints = Arc::new(|path| match path {
        "/healthz/ready" => Some((
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        )),
        "/metrics" => Some((
            StatusCode::OK,
            "text/plain",
            "istio_tcp_connections_opened_total 1\n".into(),
        )),
        _ => None,
    });
    let (address, _stop) = serve(endpoints).await;
    assert_eq!(
        get(address, "/healthz/ready").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("istio_tcp_connections_opened_total"));
    assert_eq!(get(address, "/nope").await.0, StatusCode::NOT_FOUND);
    // Read-only: nothing but GET.
    assert_eq!(
        request(address, http::Method::POST, "/metrics").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn metrics_are_the_registry_in_openmetrics_text_on_both_paths() {
    let mut registry = Registry::default();
    let counter = Counter::<u64>::default();
    registry.register("istio_tcp_connections_opened", "opened", counter.clone());
    counter.inc_by(3);
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = ready.clone();
    let (address, _stop) = serve(combine([
        metrics_endpoints(Arc::new(registry)),
        readiness_endpoints(READINESS_PATH, move || {
            if flag.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err("waiting for configuration".into())
            }
        }),
    ]))
    .await;
    let (status, body) = get(address, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("istio_tcp_connections_opened_total 3"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
    assert_eq!(get(address, "/stats/prometheus").await.1, body);
    // Istio's 15020 answers readiness too.
    assert_eq!(get(address, READINESS_PATH).await.0, StatusCode::OK);
}

#[tokio::test]
async fn readiness_follows_its_condition() {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = ready.clone();
    let (address, _stop) = serve(readiness_endpoints(READINESS_PATH, move || {
        if flag.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(())
        } else {
            Err("waiting for configuration".into())
        }
    }))
    .await;
    let (status, body) = get(address, READINESS_PATH).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("waiting for configuration"));
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(get(address, READINESS_PATH).await.0, StatusCode::OK);
}

#[tokio::test]
async fn config_dump_is_pretty_json_and_the_server_stops_on_shutdown() {
    let (address, stop) = serve(config_dump_endpoints(
        || serde_json::json!({"certificates": [{"identity": "spiffe://cluster.local/ns/a/sa/b"}]}),
    ))
    .await;
    let (status, body) = get(address, "/config_dump").await;
    assert_eq!(status, StatusCode::OK);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        json["certificates"][0]["identity"],
        "spiffe://cluster.local/ns/a/sa/b"
    );
    assert!(body.contains("\n  "), "pretty: {body}");
    assert_eq!(get(address, "/healthz").await.0, StatusCode::OK);

    // After shutdown the listener is closed.
    stop.send(()).unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::net::TcpStream::connect(address).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still listening");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
