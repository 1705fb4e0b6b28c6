//! The controller's monitoring port: Prometheus text with Istio's `pilot_*` names, and `/ready`
//! (istiod's readiness path), which answers 200 only once every gRPC port accepts.

use std::sync::Arc;

use tokio::sync::watch;

use weft_xds::{XdsCounters, metrics::names};

/// The metrics text for `counters`.
pub fn render(counters: &XdsCounters) -> String {
    format!(
        "# TYPE {pushes} counter\n{pushes} {}\n\
         # TYPE {rejects} counter\n{rejects} {}\n\
         # TYPE {connected} gauge\n{connected} {}\n\
         # TYPE {push_time}_sum counter\n{push_time}_sum {}\n",
        counters.pushes(),
        counters.rejects(),
        counters.connected(),
        counters.push_time_total().as_secs_f64(),
        pushes = names::PUSHES,
        rejects = names::REJECTS,
        connected = names::CONNECTED,
        push_time = names::PUSH_TIME,
    )
}

/// Serves `/metrics` and `/ready` on `listener` until the task is dropped. `ready` turns true
/// when the controller's gRPC listeners are bound, so a probe never sees a ready controller
/// whose ports refuse.
pub async fn serve(
    listener: tokio::net::TcpListener,
    counters: Arc<XdsCounters>,
    ready: watch::Receiver<bool>,
) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let counters = counters.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let counters = counters.clone();
                    let ready = *ready.borrow();
                    async move {
                        let (status, body) = match request.uri().path() {
                            "/metrics" => (http::StatusCode::OK, render(&counters)),
                            "/ready" if ready => (http::StatusCode::OK, "ready\n".to_string()),
                            "/ready" => (
                                http::StatusCode::SERVICE_UNAVAILABLE,
                                "not ready\n".to_string(),
                            ),
                            _ => (http::StatusCode::NOT_FOUND, "not found\n".to_string()),
                        };
                        Ok::<_, std::convert::Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")
                                .body(Full::new(bytes::Bytes::from(body)))
                                .expect("a valid response"),
                        )
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
