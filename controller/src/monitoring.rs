//! The controller's monitoring port: Prometheus text with Istio's `pilot_*` names and the
//! translation's own gauge, and `/ready` (istiod's readiness path), which answers 200 only once
//! every gRPC port accepts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

use weft_xds::{XdsCounters, metrics::names};

/// AuthorizationPolicies the node agents enforce without the attributes only a request carries
/// (a DENY refusing more than written, an ALLOW rule allowing nothing).
pub const POLICIES_WITHOUT_HTTP_ATTRIBUTES: &str =
    "weft_authorization_policies_enforced_without_http_attributes";

/// What the last translation found, set by the publisher after each one.
#[derive(Debug, Default)]
pub struct TranslationGauges {
    pub policies_without_http_attributes: AtomicU64,
}

/// The metrics text for `counters` and `gauges`.
pub fn render(counters: &XdsCounters, gauges: &TranslationGauges) -> String {
    format!(
        "# TYPE {pushes} counter\n{pushes} {}\n\
         # TYPE {rejects} counter\n{rejects} {}\n\
         # TYPE {connected} gauge\n{connected} {}\n\
         # TYPE {push_time}_sum counter\n{push_time}_sum {}\n\
         # TYPE {without_http} gauge\n{without_http} {}\n",
        counters.pushes(),
        counters.rejects(),
        counters.connected(),
        counters.push_time_total().as_secs_f64(),
        gauges
            .policies_without_http_attributes
            .load(Ordering::Relaxed),
        pushes = names::PUSHES,
        rejects = names::REJECTS,
        connected = names::CONNECTED,
        push_time = names::PUSH_TIME,
        without_http = POLICIES_WITHOUT_HTTP_ATTRIBUTES,
    )
}

/// Serves `/metrics` and `/ready` on `listener` until the task is dropped. `ready` turns true
/// when the controller's gRPC listeners are bound, so a probe never sees a ready controller
/// whose ports refuse.
pub async fn serve(
    listener: tokio::net::TcpListener,
    counters: Arc<XdsCounters>,
    gauges: Arc<TranslationGauges>,
    ready: watch::Receiver<bool>,
) {
    use http_body_util::Full;
    use hyper_util::rt::TokioIo;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (counters, gauges) = (counters.clone(), gauges.clone());
        let ready = ready.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (counters, gauges) = (counters.clone(), gauges.clone());
                    let ready = *ready.borrow();
                    async move {
                        let (status, body) = match request.uri().path() {
                            "/metrics" => (http::StatusCode::OK, render(&counters, &gauges)),
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
