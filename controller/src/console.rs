//! The service-graph console (Kiali's job): a page and the JSON API behind it, served by the
//! controller on its own port (`--console-address`, off unless given). Traffic comes only from
//! Prometheus (`--prometheus-url`), through the queries Kiali runs on Istio's metrics
//! ([`queries`]); the configuration as applied (routes, waypoint, policies, pods) from the
//! controller's own index, which is why the console lives here rather than in a process of its
//! own that would have to ask the controller for it.
//!
//! - `GET /`: the page (HTML, JavaScript and SVG shipped in this crate, nothing fetched);
//! - `GET /api/namespaces`;
//! - `GET /api/graph?namespace=NS[&window=1m]`: [`graph::Graph`];
//! - `GET /api/service?namespace=NS&service=S[&window=1m]`: routes, waypoint, policies, the
//!   per-version split and the request rate over the last ten minutes;
//! - `GET /api/workload?namespace=NS&workload=W[&window=1m]`: pods, nodes, identities,
//!   enrollment, certificate expiry (by identity, from the proxies' metric) and the
//!   workload's request rates.
//!
//! The port is read-only (GET only) and answers each request with at most a handful of
//! Prometheus queries, each bounded in time and size.

pub mod graph;
pub mod pages;
pub mod prometheus;
pub mod queries;

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tracing::Instrument as _;

use crate::index::LiveIndex;
use prometheus::{Prometheus, PrometheusError};

/// The page: one file of HTML with its script and styles inline.
const PAGE: &str = include_str!("console/page.html");
/// The rate window unless the request names one (Kiali's default graph duration is 1m).
const DEFAULT_WINDOW: &str = "1m";
/// How far back the service page's chart goes, and its resolution.
const CHART_RANGE: Duration = Duration::from_secs(600);
// 120 points over the range: at 15 s, a mesh (or a response code) younger than half a minute
// had one sample per series, and the chart drew nothing.
const CHART_STEP: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;
/// How long a connection may stay open.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the console needs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub address: SocketAddr,
    /// Prometheus' base URL (`http://host:9090`).
    pub prometheus_url: String,
}

#[derive(Debug)]
struct Console {
    prometheus: Prometheus,
    index: Arc<LiveIndex>,
    trust_domain: String,
    root_namespace: String,
}

/// A request the console refuses or cannot answer, as a status and a message.
#[derive(Debug, thiserror::Error)]
enum ConsoleError {
    #[error("{0}")]
    BadRequest(String),
    #[error(transparent)]
    Prometheus(#[from] PrometheusError),
}

impl ConsoleError {
    fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Prometheus(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// The console could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleStartError {
    #[error("the console's Prometheus: {0}")]
    Prometheus(#[from] PrometheusError),
    #[error("binding the console at {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// Binds the console; the returned future serves it until dropped.
pub async fn bind(
    config: &ConsoleConfig,
    index: Arc<LiveIndex>,
    settings: &crate::translate::MeshSettings,
) -> Result<impl Future<Output = ()> + use<>, ConsoleStartError> {
    let prometheus = Prometheus::new(&config.prometheus_url)?;
    let listener = tokio::net::TcpListener::bind(config.address)
        .await
        .map_err(|e| ConsoleStartError::Bind(config.address, e))?;
    tracing::info!(address = %config.address, prometheus = %prometheus.url(), "console listening");
    let console = Arc::new(Console {
        prometheus,
        index,
        trust_domain: settings.trust_domain.clone(),
        root_namespace: settings.root_namespace.clone(),
    });
    Ok(serve(listener, console))
}

async fn serve(listener: tokio::net::TcpListener, console: Arc<Console>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "console accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let console = console.clone();
        tokio::spawn(
            async move {
                let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                    let console = console.clone();
                    async move { Ok::<_, Infallible>(console.answer(&request).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                if let Ok(Err(error)) = tokio::time::timeout(CONNECTION_LIFETIME, connection).await
                {
                    tracing::debug!(%error, "console connection failed");
                }
                drop(permit);
            }
            .instrument(tracing::debug_span!("console", %peer)),
        );
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// The query string's parameters.
fn parameters(request: &Request<Incoming>) -> BTreeMap<String, String> {
    form_urlencoded::parse(request.uri().query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// A required name parameter, checked so it cannot escape a PromQL string.
fn name<'a>(params: &'a BTreeMap<String, String>, field: &str) -> Result<&'a str, ConsoleError> {
    let value = params
        .get(field)
        .ok_or_else(|| ConsoleError::BadRequest(format!("the parameter {field} is required")))?;
    queries::check_name(field, value).map_err(ConsoleError::BadRequest)?;
    Ok(value)
}

fn window(params: &BTreeMap<String, String>) -> Result<&str, ConsoleError> {
    let value = params.get("window").map_or(DEFAULT_WINDOW, String::as_str);
    queries::check_window(value).map_err(ConsoleError::BadRequest)?;
    Ok(value)
}

impl Console {
    async fn answer(&self, request: &Request<Incoming>) -> Response<Full<Bytes>> {
        if request.method() != http::Method::GET {
            return respond(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "GET only\n".into(),
            );
        }
        let params = parameters(request);
        let answer = match request.uri().path() {
            "/" | "/index.html" => {
                return respond(StatusCode::OK, "text/html; charset=utf-8", PAGE.to_owned());
            }
            "/api/namespaces" => Ok(json!(pages::namespaces(&self.index.snapshot()))),
            "/api/graph" => self.graph(&params).await,
            "/api/service" => self.service(&params).await,
            "/api/workload" => self.workload(&params).await,
            _ => return respond(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        match answer {
            Ok(value) => respond(StatusCode::OK, "application/json", value.to_string()),
            Err(error) => {
                tracing::debug!(%error, path = request.uri().path(), "console request failed");
                respond(
                    error.status(),
                    "application/json",
                    json!({ "error": error.to_string() }).to_string(),
                )
            }
        }
    }

    async fn graph(&self, params: &BTreeMap<String, String>) -> Result<Value, ConsoleError> {
        let namespace = name(params, "namespace")?;
        let window = window(params)?;
        let p = &self.prometheus;
        let texts = [
            queries::http_requests(namespace, window),
            queries::http_p99_by_source(namespace, window),
            queries::http_p99_by_workload(namespace, window),
            queries::tcp("istio_tcp_sent_bytes_total", namespace, window),
            queries::tcp("istio_tcp_connections_opened_total", namespace, window),
        ];
        let (requests, p99_by_source, p99_by_workload, tcp_bytes, tcp_connections) = tokio::try_join!(
            p.query(&texts[0]),
            p.query(&texts[1]),
            p.query(&texts[2]),
            p.query(&texts[3]),
            p.query(&texts[4]),
        )?;
        let answers = graph::Answers {
            requests,
            p99_by_source,
            p99_by_workload,
            tcp_bytes,
            tcp_connections,
        };
        let hidden = pages::waypoints(&self.index.snapshot());
        Ok(json!(graph::build(namespace, window, &answers, hidden)))
    }

    async fn service(&self, params: &BTreeMap<String, String>) -> Result<Value, ConsoleError> {
        let namespace = name(params, "namespace")?;
        let service = name(params, "service")?;
        let window = window(params)?;
        let config = pages::service(
            &self.index.snapshot(),
            namespace,
            service,
            &self.root_namespace,
        );
        let p = &self.prometheus;
        let split_query = queries::service_split(namespace, service, window);
        let traffic_query = queries::service_traffic(namespace, service, window);
        let (split, traffic) = tokio::try_join!(
            p.query(&split_query),
            p.query_range(&traffic_query, CHART_RANGE, CHART_STEP),
        )?;
        let total: f64 = split
            .iter()
            .map(|s| s.value)
            .filter(|v| v.is_finite())
            .sum();
        let split: Vec<Value> = split
            .iter()
            .map(|s| {
                json!({
                    "workload": s.label("destination_workload"),
                    "version": s.label("destination_canonical_revision"),
                    "request_rate": s.value,
                    "share": if total > 0.0 { s.value / total } else { 0.0 },
                })
            })
            .collect();
        let traffic: Vec<Value> = traffic
            .iter()
            .map(|s| {
                json!({
                    "response_code": s.labels.get("response_code").cloned().unwrap_or_default(),
                    "points": s.points,
                })
            })
            .collect();
        Ok(
            json!({ "config": config, "window": window, "request_rate": total, "split": split, "traffic": traffic }),
        )
    }

    async fn workload(&self, params: &BTreeMap<String, String>) -> Result<Value, ConsoleError> {
        let namespace = name(params, "namespace")?;
        let workload = name(params, "workload")?;
        let window = window(params)?;
        let config = pages::workload(
            &self.index.snapshot(),
            namespace,
            workload,
            &self.trust_domain,
        );
        let [inbound, outbound] = queries::workload_requests(namespace, workload, window);
        let p = &self.prometheus;
        let expiry = queries::certificate_expiry(namespace);
        let (inbound, outbound, expiry) =
            tokio::try_join!(p.query(&inbound), p.query(&outbound), p.query(&expiry))?;
        // Seconds since the epoch by identity, for the identities of this workload's pods.
        let certificate_expiry: serde_json::Map<String, Value> = expiry
            .iter()
            .filter(|s| {
                config
                    .pods
                    .iter()
                    .any(|pod| pod.identity == s.label("identity"))
            })
            .map(|s| (s.label("identity").to_owned(), json!(s.value)))
            .collect();
        let rows = |samples: &[prometheus::Sample], peer: &str| -> Vec<Value> {
            samples
                .iter()
                .map(|s| json!({ "peer": s.label(peer), "response_code": s.label("response_code"), "request_rate": s.value }))
                .collect()
        };
        Ok(json!({
            "config": config,
            "window": window,
            "certificate_expiry": certificate_expiry,
            "inbound": rows(&inbound, "source_workload"),
            "outbound": rows(&outbound, "destination_service_name"),
        }))
    }
}
