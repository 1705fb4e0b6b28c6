//! The admin (127.0.0.1:15000, `/config_dump`), metrics (15020, `/metrics` and
//! `/stats/prometheus`) and readiness (15021, `/healthz/ready`) endpoints: one small HTTP/1.1
//! server, each instance serving what it is given.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{Instrument, debug, debug_span, warn};

use crate::listener::ListenerError;

/// Decides readiness: the waypoint is ready once it holds a configuration.
pub type ReadinessCheck = Arc<dyn Fn() -> bool + Send + Sync>;
/// Produces the `/config_dump` JSON.
pub type ConfigDumpSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// A small HTTP/1.1 server for the admin page, metrics or readiness.
pub struct AdminServer {
    listener: TcpListener,
    registry: Option<Arc<Mutex<Registry>>>,
    ready: ReadinessCheck,
    dump: Option<ConfigDumpSource>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("address", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Serves `/metrics` from `registry` (when given) and `/healthz/ready` from `ready`.
    pub async fn bind(
        address: SocketAddr,
        registry: Option<Arc<Mutex<Registry>>>,
        ready: ReadinessCheck,
    ) -> Result<Self, ListenerError> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| ListenerError::Bind(address, e))?;
        Ok(AdminServer {
            listener,
            registry,
            ready,
            dump: None,
        })
    }

    /// Also serves `/config_dump` from `dump`.
    pub fn with_config_dump(mut self, dump: ConfigDumpSource) -> Self {
        self.dump = Some(dump);
        self
    }

    pub fn address(&self) -> Result<SocketAddr, ListenerError> {
        self.listener
            .local_addr()
            .map_err(ListenerError::LocalAddress)
    }

    pub async fn run(self, mut drain: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                accepted = self.listener.accept() => {
                    let Ok((stream, peer)) = accepted else { continue };
                    let registry = self.registry.clone();
                    let ready = Arc::clone(&self.ready);
                    let dump = self.dump.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| {
                            let registry = registry.clone();
                            let ready = Arc::clone(&ready);
                            let dump = dump.clone();
                            async move {
                                Ok::<_, Infallible>(answer(&req, registry.as_deref(), &ready, dump.as_ref()))
                            }
                        });
                        if let Err(error) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await
                        {
                            debug!(%error, "admin connection failed");
                        }
                    }.instrument(debug_span!("admin", %peer)));
                }
                changed = drain.changed() => {
                    if changed.is_err() || *drain.borrow() {
                        return;
                    }
                }
            }
        }
    }
}

fn answer(
    request: &Request<Incoming>,
    registry: Option<&Mutex<Registry>>,
    ready: &ReadinessCheck,
    dump: Option<&ConfigDumpSource>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(content_type),
        );
        response
    };
    if let ("/config_dump", Some(dump)) = (request.uri().path(), dump) {
        return match dump() {
            Ok(json) => reply(StatusCode::OK, "application/json", json),
            Err(error) => {
                warn!(%error, "config dump failed");
                reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("config dump: {error}\n"),
                )
            }
        };
    }
    match (request.uri().path(), registry) {
        ("/metrics" | "/stats/prometheus", Some(registry)) => {
            let mut text = String::new();
            let registry = registry.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
                warn!(%error, "encoding metrics failed");
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    String::new(),
                );
            }
            reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        ("/healthz/ready", _) => {
            if ready() {
                reply(StatusCode::OK, "text/plain", "ready\n".to_owned())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "not ready\n".to_owned(),
                )
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", String::new()),
    }
}
