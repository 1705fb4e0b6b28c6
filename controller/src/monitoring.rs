//! The controller's monitoring port: Prometheus text with Istio's `pilot_*` names.

use std::sync::Arc;

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

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, counters: Arc<XdsCounters>) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let counters = counters.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let counters = counters.clone();
                    async move {
                        let (status, body) = if request.uri().path() == "/metrics" {
                            (http::StatusCode::OK, render(&counters))
                        } else {
                            (http::StatusCode::NOT_FOUND, "not found\n".to_string())
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
