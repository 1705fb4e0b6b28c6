//! The HTTP endpoints every component serves beside its traffic, with Istio's paths: the
//! configuration dump (`/config_dump` on the loopback-only admin port 15000), Prometheus
//! metrics (`/metrics` and Istio's `/stats/prometheus` on 15020, encoded by
//! `prometheus-client`), and readiness (`/healthz/ready` on 15021 and, as Istio's proxies do,
//! on 15020; istiod's `/ready` on the controller's 15014).
//!
//! One small server, [`AdminServer`], serves whatever [`Endpoints`] it is given, so that it
//! knows nothing of the component behind it; the helpers below build the endpoints.

use std::{convert::Infallible, future::Future, io, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::Instrument;
use weft_hbone::admission::AcceptBackoff;

/// What an endpoint answers: status, content type, body.
pub type Answer = (StatusCode, &'static str, String);
/// Produces the answer for a path, or `None` for 404.
pub type Endpoints = Arc<dyn Fn(&str) -> Option<Answer> + Send + Sync>;

/// The content type of Prometheus text in the OpenMetrics format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Istio's proxies' readiness path (15021, and 15020).
pub const READINESS_PATH: &str = "/healthz/ready";

/// The admin server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("binding {0}: {1}")]
    Bind(SocketAddr, #[source] io::Error),
}

/// One HTTP listener serving `endpoints` (HTTP/1.1 and HTTP/2, GET only).
pub struct AdminServer {
    listener: TcpListener,
    endpoints: Endpoints,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("address", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    pub async fn bind(address: SocketAddr, endpoints: Endpoints) -> Result<Self, AdminError> {
        Ok(Self {
            listener: TcpListener::bind(address)
                .await
                .map_err(|e| AdminError::Bind(address, e))?,
            endpoints,
        })
    }

    /// Serves `endpoints` on a listener already bound.
    pub fn from_listener(listener: TcpListener, endpoints: Endpoints) -> Self {
        Self {
            listener,
            endpoints,
        }
    }

    pub fn address(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the task is dropped.
    pub async fn run(self) {
        self.run_until(std::future::pending()).await;
    }

    /// Serves until `shutdown` completes; connections in flight finish on their own tasks.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = AcceptBackoff::default();
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    // Out of descriptors, typically: the pending connection keeps the listener
                    // readable, so wait instead of spinning.
                    tokio::time::sleep(backoff.failed(&error)).await;
                    continue;
                }
            };
            let endpoints = Arc::clone(&self.endpoints);
            tokio::spawn(
                async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let answer = answer(&endpoints, &request);
                        async move { Ok::<_, Infallible>(answer) }
                    });
                    if let Err(error) =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                    {
                        tracing::debug!(%error, "admin connection failed");
                    }
                }
                .instrument(tracing::debug_span!("admin", %peer)),
            );
        }
    }
}

fn answer(endpoints: &Endpoints, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) = if request.method() == http::Method::GET {
        endpoints(request.uri().path()).unwrap_or((
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".into(),
        ))
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

/// Serves the first of `endpoints` that answers a path.
pub fn combine(endpoints: impl IntoIterator<Item = Endpoints>) -> Endpoints {
    let endpoints: Vec<Endpoints> = endpoints.into_iter().collect();
    Arc::new(move |path| endpoints.iter().find_map(|e| e(path)))
}

/// `/metrics` (and Istio's `/stats/prometheus`): the registry in OpenMetrics text.
pub fn metrics_endpoints(registry: Arc<Registry>) -> Endpoints {
    metrics_at(&["/metrics", "/stats/prometheus"], registry)
}

/// The registry in OpenMetrics text at each of `paths`.
pub fn metrics_at(paths: &'static [&'static str], registry: Arc<Registry>) -> Endpoints {
    Arc::new(move |path| {
        paths.contains(&path).then(|| {
            let mut text = String::new();
            match prometheus_client::encoding::text::encode(&mut text, &registry) {
                Ok(()) => (StatusCode::OK, OPENMETRICS, text),
                Err(error) => {
                    tracing::warn!(%error, "encoding metrics failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        format!("encoding metrics: {error}\n"),
                    )
                }
            }
        })
    })
}

/// `path` answers 200 when `ready` says so, else 503 with its reason.
pub fn readiness_endpoints(
    path: &'static str,
    ready: impl Fn() -> Result<(), String> + Send + Sync + 'static,
) -> Endpoints {
    Arc::new(move |requested| {
        (requested == path).then(|| match ready() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".into()),
            Err(reason) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("{reason}\n"),
            ),
        })
    })
}

/// `/config_dump` (pretty JSON of what `dump` returns) and `/healthz`.
pub fn config_dump_endpoints<D: serde::Serialize>(
    dump: impl Fn() -> D + Send + Sync + 'static,
) -> Endpoints {
    Arc::new(move |path| match path {
        "/config_dump" => Some(match serde_json::to_string_pretty(&dump()) {
            Ok(body) => (StatusCode::OK, "application/json", body),
            Err(error) => {
                tracing::warn!(%error, "config dump failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("config dump: {error}\n"),
                )
            }
        }),
        "/healthz" => Some((StatusCode::OK, "text/plain", "ok\n".into())),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
