//! The sample application: a small versioned service for the demo, the end-to-end tests and the
//! benchmarks. It answers HTTP/1.1 and HTTP/2 (cleartext, detected per connection) with who it
//! is (service, version, pod) and what it received, and a gRPC echo service on a second port.
//! It can misbehave on request, which the retry, timeout and outlier tests need:
//!
//! - `?status=503` (or `/status/503`) answers with that status;
//! - `?delay_ms=500` waits before answering;
//! - `x-fail-attempts: N` with an `x-request-id` fails the first N attempts of that request id
//!   with 503, then succeeds (a retry policy must recover);
//! - `?body_bytes=N` answers with N bytes (throughput).
//!
//! It knows nothing of the mesh.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde::Serialize;
use tokio::net::TcpListener;
use weft_proto::sample::{
    EchoRequest, EchoResponse,
    echo_server::{Echo, EchoServer},
};

/// Who this instance is.
#[derive(Debug, Clone, Serialize)]
pub struct Identity {
    pub service: String,
    pub version: String,
    pub pod: String,
}

/// The longest delay honoured, so a mistyped request cannot hold a connection for hours.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// The largest generated body.
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Request ids remembered for `x-fail-attempts`.
const MAX_TRACKED_REQUESTS: usize = 10_000;

/// Shared state: identity and per-request-id attempt counts.
#[derive(Debug)]
pub struct App {
    identity: Identity,
    attempts: Mutex<HashMap<String, u32>>,
}

/// What the app answers (JSON).
#[derive(Debug, Serialize)]
struct Reply<'a> {
    #[serde(flatten)]
    identity: &'a Identity,
    method: String,
    path: String,
    protocol: String,
    headers: std::collections::BTreeMap<String, String>,
    attempt: Option<u32>,
}

impl App {
    pub fn new(identity: Identity) -> Arc<Self> {
        Arc::new(Self {
            identity,
            attempts: Mutex::default(),
        })
    }

    /// Serves HTTP/1.1 and HTTP/2 on `listener` until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let app = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(app.handle(request).await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Serves the gRPC echo service on `listener`.
    pub async fn serve_grpc(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> Result<(), tonic::transport::Error> {
        tonic::transport::Server::builder()
            .add_service(EchoServer::new(GrpcEcho(self)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
    }

    async fn handle(&self, request: Request<Incoming>) -> Response<Full<Bytes>> {
        let query = parse_query(request.uri().query().unwrap_or(""));
        let path = request.uri().path().to_string();
        let mut status = query
            .get("status")
            .and_then(|s| s.parse::<u16>().ok())
            .or_else(|| path.strip_prefix("/status/").and_then(|s| s.parse().ok()))
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK);
        if let Some(delay) = query.get("delay_ms").and_then(|d| d.parse::<u64>().ok()) {
            tokio::time::sleep(Duration::from_millis(delay).min(MAX_DELAY)).await;
        }
        let attempt = self.count_attempt(&request);
        if let (Some(attempt), Some(failures)) = (attempt, header_u32(&request, "x-fail-attempts"))
            && attempt <= failures
        {
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
        let body = match query
            .get("body_bytes")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) => Bytes::from(vec![b'x'; n.min(MAX_BODY)]),
            None => {
                let reply = Reply {
                    identity: &self.identity,
                    method: request.method().to_string(),
                    path: request.uri().to_string(),
                    protocol: format!("{:?}", request.version()),
                    headers: request
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
                        .collect(),
                    attempt,
                };
                let mut json = serde_json::to_vec(&reply).expect("replies serialize");
                json.push(b'\n');
                Bytes::from(json)
            }
        };
        // Drain the request body so keep-alive connections stay usable.
        let _ = request.into_body().collect().await;
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-weft-service", &self.identity.service)
            .header("x-weft-version", &self.identity.version)
            .header("x-weft-pod", &self.identity.pod)
            .body(Full::new(body))
            .expect("a valid response")
    }

    /// Counts attempts per `x-request-id` for `x-fail-attempts`.
    fn count_attempt(&self, request: &Request<Incoming>) -> Option<u32> {
        let id = request
            .headers()
            .get("x-request-id")?
            .to_str()
            .ok()?
            .to_string();
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        if attempts.len() >= MAX_TRACKED_REQUESTS && !attempts.contains_key(&id) {
            attempts.clear();
        }
        let count = attempts.entry(id).or_insert(0);
        *count += 1;
        Some(*count)
    }
}

fn header_u32(request: &Request<Incoming>, name: &str) -> Option<u32> {
    request.headers().get(name)?.to_str().ok()?.parse().ok()
}

fn parse_query(query: &str) -> HashMap<&str, &str> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .collect()
}

struct GrpcEcho(Arc<App>);

#[tonic::async_trait]
impl Echo for GrpcEcho {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
        let request = request.into_inner();
        if request.delay_ms > 0 {
            tokio::time::sleep(Duration::from_millis(request.delay_ms.into()).min(MAX_DELAY)).await;
        }
        if request.fail_with_code != 0 {
            return Err(tonic::Status::new(
                tonic::Code::from_i32(request.fail_with_code),
                "failure requested",
            ));
        }
        let identity = &self.0.identity;
        Ok(tonic::Response::new(EchoResponse {
            message: request.message,
            service: identity.service.clone(),
            version: identity.version.clone(),
            pod: identity.pod.clone(),
        }))
    }
}

/// Serves a raw TCP echo on `listener` (bytes in, same bytes out) until the task is dropped.
pub async fn serve_echo(listener: TcpListener) -> std::io::Result<()> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let (mut read, mut write) = stream.split();
            let _ = tokio::io::copy(&mut read, &mut write).await;
            let _ = tokio::io::AsyncWriteExt::shutdown(&mut write).await;
        });
    }
}

/// Binds and serves both ports; returns their addresses and the serving task.
pub async fn start(
    identity: Identity,
    http: SocketAddr,
    grpc: SocketAddr,
) -> std::io::Result<(SocketAddr, SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = App::new(identity);
    let http_listener = TcpListener::bind(http).await?;
    let grpc_listener = TcpListener::bind(grpc).await?;
    let addresses = (http_listener.local_addr()?, grpc_listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = tokio::join!(
            app.clone().serve_http(http_listener),
            app.serve_grpc(grpc_listener)
        );
    });
    Ok((addresses.0, addresses.1, task))
}

#[cfg(test)]
mod tests;
