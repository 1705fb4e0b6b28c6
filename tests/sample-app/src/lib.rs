//! The sample application: a small versioned service for the demo, the end-to-end tests and the
//! benchmarks. It answers HTTP/1.1 and HTTP/2 (cleartext, detected per connection) with who it
//! is (service, version, pod) and what it received, and a gRPC echo service on a second port.
//! It can misbehave on request, which the retry, timeout and outlier tests need:
//!
//! - `?status=503` (or `/status/503`) answers with that status;
//! - `?delay_ms=500` waits before answering;
//! - `x-fail-attempts: N` with an `x-request-id` fails the first N attempts of that request id
//!   with 503, then succeeds (a retry policy must recover);
//! - `?body_bytes=N` answers with N bytes (throughput);
//! - `POST /control/fail?status=500` makes every later request answer that status until
//!   `POST /control/recover` (an endpoint that fails until told otherwise, for outlier detection);
//! - `GET /control/requests` answers how many requests it read whole (`completed`), how many
//!   broke off in their body (`broken`), and the most body bytes one of them delivered
//!   (`largest_body`): what a proxy in front let through.
//!
//! Every answer says how many body bytes the request carried (`body_bytes`, when any).
//!
//! A request with `Upgrade: websocket` becomes a WebSocket echo. With upstreams configured
//! (`--upstream reviews=http://10.96.0.3:9080`), every request also calls each upstream in turn,
//! passing on `end-user`, `x-request-id` and the trace context (`traceparent`, `tracestate`, B3),
//! as Istio asks of applications, and reports what each answered and on which of
//! its pooled keep-alive connections: the fan-out of Istio's bookinfo, where productpage calls
//! details and reviews, and reviews calls ratings.
//!
//! It knows nothing of the mesh.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    str::FromStr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU16, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Method, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, HttpInfo},
    },
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{Message, handshake::derive_accept_key, protocol::Role},
};
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
/// How long one upstream call may take (bookinfo's reviews waits 10 s for ratings).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Request headers passed on to upstreams: bookinfo's `end-user`, and what Istio requires of an
/// application for its proxies' spans to join one trace (the request id, W3C trace context and
/// B3 in both encodings).
const PROPAGATED: [&str; 10] = [
    "end-user",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
];
/// How much of a non-JSON upstream answer is reported.
const MAX_REPORTED_BODY: usize = 200;

/// A service this app calls on every request: `name=http://host:port[/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub url: Uri,
}

impl FromStr for Upstream {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (name, url) = text
            .split_once('=')
            .ok_or_else(|| format!("upstream {text:?}: expected name=http://host:port"))?;
        let url: Uri = url
            .parse()
            .map_err(|e| format!("upstream {name}: url {url:?}: {e}"))?;
        if url.scheme_str() != Some("http") || url.authority().is_none() {
            return Err(format!(
                "upstream {name}: url {url} must be http://host:port"
            ));
        }
        Ok(Self {
            name: name.to_string(),
            url,
        })
    }
}

/// A file served at a path: `/path=FILE` (a JWKS document for RequestAuthentication's
/// `jwksUri`, say). Read on every request, so the test can rewrite it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFile {
    pub path: String,
    pub file: std::path::PathBuf,
}

impl FromStr for StaticFile {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.split_once('=') {
            Some((path, file)) if path.starts_with('/') && !file.is_empty() => Ok(Self {
                path: path.to_string(),
                file: file.into(),
            }),
            _ => Err(format!("file {text:?}: expected /path=FILE")),
        }
    }
}

/// What an upstream answered, as reported to the caller.
#[derive(Debug, Serialize)]
struct UpstreamReply {
    name: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<String>,
    /// The upstream's own upstreams (reviews reports ratings).
    #[serde(skip_serializing_if = "Option::is_none")]
    upstreams: Option<serde_json::Value>,
    /// A body that was not the sample app's JSON, or why the call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// The local address of the pooled connection the call went out on: the same address
    /// call after call means one long-lived connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    connection: Option<String>,
}

/// Shared state: identity, per-request-id attempt counts, the forced status, upstreams.
#[derive(Debug)]
pub struct App {
    identity: Identity,
    attempts: Mutex<HashMap<String, u32>>,
    /// Answered by every request while non-zero (`/control/fail`).
    forced_status: AtomicU16,
    upstreams: Vec<Upstream>,
    client: Client<HttpConnector, Empty<Bytes>>,
    log_requests: bool,
    files: Vec<StaticFile>,
    tally: Mutex<Tally>,
}

/// The requests the app has read (`GET /control/requests`).
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Tally {
    /// Read to the end of their body.
    completed: u64,
    /// Whose body broke off before its end.
    broken: u64,
    /// The most body bytes one request delivered, whole or not.
    largest_body: u64,
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
    /// The address the connection came from, as this app's socket sees it (httpbin's
    /// `origin`): the client's, when the mesh keeps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    upstreams: Vec<UpstreamReply>,
    #[serde(skip_serializing_if = "is_zero")]
    body_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The TCP peer of the connection a request arrived on (a request extension).
#[derive(Debug, Clone, Copy)]
struct Peer(std::net::SocketAddr);

impl App {
    pub fn new(identity: Identity) -> Arc<Self> {
        Self::with_upstreams(identity, Vec::new(), false)
    }

    /// An app that calls `upstreams` on every request and, with `log_requests`, logs one line
    /// per request (method, path, host, request id, status).
    pub fn with_upstreams(
        identity: Identity,
        upstreams: Vec<Upstream>,
        log_requests: bool,
    ) -> Arc<Self> {
        Self::with_files(identity, upstreams, log_requests, Vec::new())
    }

    /// [`App::with_upstreams`] that also serves `files` (as JSON) to GET requests.
    pub fn with_files(
        identity: Identity,
        upstreams: Vec<Upstream>,
        log_requests: bool,
        files: Vec<StaticFile>,
    ) -> Arc<Self> {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(UPSTREAM_TIMEOUT));
        Arc::new(Self {
            identity,
            attempts: Mutex::default(),
            forced_status: AtomicU16::new(0),
            upstreams,
            client: Client::builder(TokioExecutor::new()).build(connector),
            log_requests,
            files,
            tally: Mutex::default(),
        })
    }

    /// Serves HTTP/1.1 and HTTP/2 on `listener` until the task is dropped.
    pub async fn serve_http(self: Arc<Self>, listener: TcpListener) -> std::io::Result<()> {
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let app = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
                    request.extensions_mut().insert(Peer(peer));
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
        let method = request.method().clone();
        let path = request.uri().to_string();
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string();
        let request_id = request
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let response = self.respond(request).await;
        if self.log_requests {
            tracing::info!(%method, %path, %host, %request_id, status = response.status().as_u16(), "request");
        }
        response
    }

    async fn respond(&self, mut request: Request<Incoming>) -> Response<Full<Bytes>> {
        if let Some(response) = self.control(&request) {
            return response;
        }
        if is_websocket(&request) {
            return self.websocket(&mut request);
        }
        if let Some(file) = self.files.iter().find(|f| f.path == request.uri().path()) {
            return serve_file(file).await;
        }
        let uri = request.uri().clone();
        let query = parse_query(uri.query().unwrap_or(""));
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
        let forced = self.forced_status.load(Ordering::Relaxed);
        if let Some(forced) = (forced != 0)
            .then(|| StatusCode::from_u16(forced).ok())
            .flatten()
        {
            status = forced;
        }
        let upstreams = self.call_upstreams(&request).await;
        // The request body is read whole before answering (keep-alive connections stay
        // usable); one that breaks off is counted, not answered.
        let body_bytes = match self.read_body(request.body_mut()).await {
            Ok(length) => length,
            Err(()) => {
                return Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(Full::new(Bytes::new()))
                    .expect("a valid response");
            }
        };
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
                    peer: request.extensions().get::<Peer>().map(|p| p.0.to_string()),
                    upstreams,
                    body_bytes,
                };
                let mut json = serde_json::to_vec(&reply).expect("replies serialize");
                json.push(b'\n');
                Bytes::from(json)
            }
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-weft-service", &self.identity.service)
            .header("x-weft-version", &self.identity.version)
            .header("x-weft-pod", &self.identity.pod)
            .body(Full::new(body))
            .expect("a valid response")
    }

    /// Reads a request body to its end, counting it: its length, or `Err` if it broke off.
    async fn read_body(&self, body: &mut Incoming) -> Result<u64, ()> {
        let mut length = 0u64;
        let outcome = loop {
            match body.frame().await {
                None => break Ok(length),
                Some(Ok(frame)) => {
                    length += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Some(Err(_)) => break Err(()),
            }
        };
        let mut tally = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        tally.largest_body = tally.largest_body.max(length);
        match outcome {
            Ok(_) => tally.completed += 1,
            Err(()) => tally.broken += 1,
        }
        outcome
    }

    /// `POST /control/fail?status=N`, `POST /control/recover` and `GET /control/requests`.
    fn control(&self, request: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        if request.method() == Method::GET && request.uri().path() == "/control/requests" {
            let tally = *self.tally.lock().unwrap_or_else(|p| p.into_inner());
            let json = serde_json::to_vec(&tally).expect("a tally serializes");
            return Some(
                Response::builder()
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(json)))
                    .expect("a valid response"),
            );
        }
        if request.method() != Method::POST {
            return None;
        }
        let forced = match request.uri().path() {
            "/control/fail" => parse_query(request.uri().query().unwrap_or(""))
                .get("status")
                .and_then(|s| s.parse::<u16>().ok())
                .filter(|s| StatusCode::from_u16(*s).is_ok())
                .unwrap_or(500),
            "/control/recover" => 0,
            _ => return None,
        };
        self.forced_status.store(forced, Ordering::Relaxed);
        tracing::info!(forced_status = forced, "behaviour changed");
        Some(
            Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .header("x-weft-pod", &self.identity.pod)
                .body(Full::new(Bytes::from(format!(
                    "{{\"pod\":{:?},\"forced_status\":{forced}}}\n",
                    self.identity.pod
                ))))
                .expect("a valid response"),
        )
    }

    /// Answers the WebSocket handshake and echoes every text and binary message.
    fn websocket(&self, request: &mut Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .body(Full::new(Bytes::from_static(
                    b"missing sec-websocket-key\n",
                )))
                .expect("a valid response");
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else {
                return;
            };
            let socket =
                WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
            let (mut sink, mut stream) = socket.split();
            while let Some(Ok(message)) = stream.next().await {
                match message {
                    Message::Text(_) | Message::Binary(_) => {
                        if sink.send(message).await.is_err() {
                            return;
                        }
                    }
                    Message::Close(_) => {
                        let _ = sink.close().await;
                        return;
                    }
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                }
            }
        });
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .header(header::SEC_WEBSOCKET_ACCEPT, accept)
            .header("x-weft-service", &self.identity.service)
            .header("x-weft-version", &self.identity.version)
            .header("x-weft-pod", &self.identity.pod)
            .body(Full::new(Bytes::new()))
            .expect("a valid response")
    }

    /// Calls every upstream in turn with the propagated headers.
    async fn call_upstreams(&self, request: &Request<Incoming>) -> Vec<UpstreamReply> {
        let mut replies = Vec::with_capacity(self.upstreams.len());
        for upstream in &self.upstreams {
            let mut call = Request::get(upstream.url.clone());
            for name in PROPAGATED {
                if let Some(value) = request.headers().get(name) {
                    call = call.header(name, value);
                }
            }
            let reply = match call.body(Empty::new()) {
                Ok(call) => self.call(upstream, call).await,
                Err(error) => upstream_error(upstream, 0, error.to_string()),
            };
            replies.push(reply);
        }
        replies
    }

    async fn call(&self, upstream: &Upstream, call: Request<Empty<Bytes>>) -> UpstreamReply {
        let exchange = async {
            let response = self.client.request(call).await.map_err(|e| e.to_string())?;
            let status = response.status().as_u16();
            let connection = response
                .extensions()
                .get::<HttpInfo>()
                .map(|info| info.local_addr().to_string());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, body, connection))
        };
        let (status, body, connection) =
            match tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(error)) => return upstream_error(upstream, 0, error),
                Err(_) => return upstream_error(upstream, 0, "timed out".into()),
            };
        match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(json) if json.get("service").is_some() => {
                let text = |key: &str| json.get(key).and_then(|v| v.as_str()).map(String::from);
                UpstreamReply {
                    name: upstream.name.clone(),
                    status,
                    service: text("service"),
                    version: text("version"),
                    pod: text("pod"),
                    upstreams: json.get("upstreams").cloned(),
                    error: None,
                    connection,
                }
            }
            _ => {
                let text = String::from_utf8_lossy(&body);
                let text: String = text.trim().chars().take(MAX_REPORTED_BODY).collect();
                UpstreamReply {
                    connection,
                    ..upstream_error(upstream, status, text)
                }
            }
        }
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

fn upstream_error(upstream: &Upstream, status: u16, error: String) -> UpstreamReply {
    UpstreamReply {
        name: upstream.name.clone(),
        status,
        service: None,
        version: None,
        pod: None,
        upstreams: None,
        error: Some(error),
        connection: None,
    }
}

/// The file's content as JSON, or 404 while it cannot be read.
async fn serve_file(file: &StaticFile) -> Response<Full<Bytes>> {
    match tokio::fs::read(&file.file).await {
        Ok(content) => Response::builder()
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(content))),
        Err(error) => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Full::new(Bytes::from(format!(
                "{}: {error}",
                file.file.display()
            )))),
    }
    .expect("a valid response")
}

fn is_websocket(request: &Request<Incoming>) -> bool {
    request
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
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

impl GrpcEcho {
    /// One answer, as `Echo` gives it: after the delay asked for, the failure asked for or the
    /// message with the serving pod's identity.
    async fn answer(&self, request: EchoRequest) -> Result<EchoResponse, tonic::Status> {
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
        Ok(EchoResponse {
            message: request.message,
            service: identity.service.clone(),
            version: identity.version.clone(),
            pod: identity.pod.clone(),
        })
    }
}

/// The answers of one `EchoStream` call, in the order of its requests.
type EchoAnswers =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<EchoResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Echo for GrpcEcho {
    async fn echo(
        &self,
        request: tonic::Request<EchoRequest>,
    ) -> Result<tonic::Response<EchoResponse>, tonic::Status> {
        self.answer(request.into_inner())
            .await
            .map(tonic::Response::new)
    }

    type EchoStreamStream = EchoAnswers;

    async fn echo_stream(
        &self,
        requests: tonic::Request<tonic::Streaming<EchoRequest>>,
    ) -> Result<tonic::Response<EchoAnswers>, tonic::Status> {
        let echo = GrpcEcho(self.0.clone());
        // `then` answers one request at a time: the answers keep the requests' order, and a
        // client that stops reading stops the server reading (no unbounded queue).
        let answers = requests.into_inner().then(move |request| {
            let echo = GrpcEcho(echo.0.clone());
            async move { echo.answer(request?).await }
        });
        Ok(tonic::Response::new(Box::pin(answers)))
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
    start_app(App::new(identity), http, grpc).await
}

/// [`start`] for an app built with [`App::with_upstreams`].
pub async fn start_app(
    app: Arc<App>,
    http: SocketAddr,
    grpc: SocketAddr,
) -> std::io::Result<(SocketAddr, SocketAddr, tokio::task::JoinHandle<()>)> {
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
