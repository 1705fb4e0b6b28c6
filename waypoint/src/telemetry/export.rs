//! The OTLP exporters: a bounded queue between the request path and one task that sends
//! batches over OTLP/gRPC, for spans (`opentelemetry.proto.collector.trace.v1.TraceService/
//! Export`, [`SpanExporter`]) and for access-log records (`LogsService/Export`, the
//! [`Signal`] of `crate::access_log::otel`), or over OTLP/HTTP when the collector says so
//! ([`HttpExport`]: the same request, protobuf-encoded, in a `POST`, as Envoy's
//! `OpenTelemetryConfig.http_service` sends it). A gRPC export carries the collector's
//! metadata and is bounded by its deadline ([`GrpcExport`], Envoy's `grpc_service.timeout` and
//! `initial_metadata`).
//!
//! Requests never wait for it: an item that finds the queue full is dropped and counted
//! (`weft_tracing_spans_dropped_total`, `weft_access_log_records_dropped_total`), so a slow or
//! dead collector costs at most the queue's memory and never delays traffic. A batch that
//! fails to send is dropped and counted too (`..._failed_total`); there is no retry, as a
//! collector that is down would only fill the queue again.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use prost::Message;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info_span};

/// Items waiting to be sent, at most (Envoy's batch limit is of the same order).
pub const QUEUE_CAPACITY: usize = 2048;
/// Items in one export request, at most.
pub const MAX_BATCH: usize = 512;
/// How long the first item of a batch waits for others.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// One export's deadline, connecting included, when the collector sets none.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Collectors the exporter keeps a channel to (configuration rarely names more than one).
const MAX_CHANNELS: usize = 16;

/// An OTLP collector and the resource the waypoint's items are reported as there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Collector {
    /// `ip:port` or `host:port` of each endpoint; exports go round the list.
    pub endpoints: Vec<String>,
    /// The resource's `service.name`; empty: none.
    pub service_name: String,
    /// `Some`: export over OTLP/HTTP; `None`: over OTLP/gRPC.
    pub http: Option<HttpExport>,
    /// How an OTLP/gRPC export is made (unused over HTTP).
    pub grpc: GrpcExport,
}

/// How a collector takes OTLP/gRPC (Istio's `opentelemetry.grpc`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct GrpcExport {
    /// One export call's deadline, connecting included, also sent as `grpc-timeout`; `None`:
    /// [`EXPORT_TIMEOUT`].
    pub timeout: Option<Duration>,
    /// Sent on each export call, in order (a repeated name is sent as many times, as Envoy
    /// adds each of its `initial_metadata`).
    pub metadata: Vec<(HeaderName, HeaderValue)>,
}

/// How a collector takes OTLP/HTTP (Istio's `opentelemetry.http`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpExport {
    /// The request's path, `/`-rooted (`/v1/traces` for a standard collector).
    pub path: String,
    /// One export's deadline, connecting and reading the answer included.
    pub timeout: Duration,
    /// Set on each request after `content-type`, in order, each replacing one of its name.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// Why one export failed (the batch is then dropped and counted).
#[derive(Debug, thiserror::Error)]
enum ExportError {
    #[error("invalid collector address {0:?}")]
    Address(String),
    #[error(transparent)]
    Grpc(#[from] tonic::Status),
    #[error(transparent)]
    Http(#[from] hyper_util::client::legacy::Error),
    #[error("reading the answer: {0}")]
    Body(#[from] hyper::Error),
    #[error("the collector answered {0}")]
    Status(StatusCode),
    #[error("export timed out")]
    Timeout,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What an exporter sends: the queued item, the export request of a batch of them and the RPC
/// that sends it over gRPC (over HTTP, the request is `POST`ed, protobuf-encoded).
pub trait Signal: Send + Sync + 'static {
    type Item: Send + 'static;
    type Request: prost::Message + Send + 'static;
    /// Names the exporter's task and counters (`weft_{NAME}_exported_total`, ...).
    const NAME: &'static str;
    /// What the counters count, for their help text.
    const ITEMS: &'static str;

    /// One export request of `items`, all for `collector`.
    fn request(collector: &Collector, items: Vec<Self::Item>) -> Self::Request;

    /// Sends `request` (with its metadata and deadline) on `channel`.
    fn export(
        channel: Channel,
        request: tonic::Request<Self::Request>,
    ) -> impl Future<Output = Result<(), tonic::Status>> + Send;
}

struct Queued<T> {
    collector: Arc<Collector>,
    item: T,
}

#[derive(Clone, Default)]
struct ExportMetrics {
    exported: Counter,
    dropped: Counter,
    failed: Counter,
}

/// The queue and sending task of one [`Signal`].
pub struct BatchExporter<S: Signal> {
    queue: mpsc::Sender<Queued<S::Item>>,
    /// Taken by the task that sends.
    pending: Mutex<Option<mpsc::Receiver<Queued<S::Item>>>>,
    metrics: ExportMetrics,
}

impl<S: Signal> Default for BatchExporter<S> {
    fn default() -> Self {
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        BatchExporter {
            queue,
            pending: Mutex::new(Some(pending)),
            metrics: ExportMetrics::default(),
        }
    }
}

impl<S: Signal> BatchExporter<S> {
    /// Registers the exporter's counters in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let name = S::NAME;
        let items = S::ITEMS;
        registry.register(
            format!("weft_{name}_exported"),
            format!("{items} the collector accepted"),
            self.metrics.exported.clone(),
        );
        registry.register(
            format!("weft_{name}_dropped"),
            format!("{items} dropped because the export queue was full"),
            self.metrics.dropped.clone(),
        );
        registry.register(
            format!("weft_{name}_failed"),
            format!("{items} dropped because their export failed"),
            self.metrics.failed.clone(),
        );
    }

    /// Starts the sending task on the current runtime (once; later calls do nothing). Items
    /// submitted before wait in the queue.
    pub fn spawn(&self) {
        let Some(receiver) = self.pending.lock().unwrap().take() else {
            return;
        };
        tokio::spawn(
            run::<S>(receiver, self.metrics.clone())
                .instrument(info_span!("otlp_exporter", signal = S::NAME)),
        );
    }

    /// Queues `item` for `collector`, or drops and counts it when the queue is full.
    pub fn submit(&self, collector: Arc<Collector>, item: S::Item) {
        if self.queue.try_send(Queued { collector, item }).is_err() {
            self.metrics.dropped.inc();
        }
    }

    pub fn exported(&self) -> u64 {
        self.metrics.exported.get()
    }

    pub fn dropped(&self) -> u64 {
        self.metrics.dropped.get()
    }

    pub fn failed(&self) -> u64 {
        self.metrics.failed.get()
    }
}

async fn run<S: Signal>(mut receiver: mpsc::Receiver<Queued<S::Item>>, metrics: ExportMetrics) {
    let mut channels: HashMap<String, Channel> = HashMap::new();
    let client = http_client();
    let turn = AtomicUsize::new(0);
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(queued)) => batch.push(queued),
                Ok(None) | Err(_) => break,
            }
        }
        let mut by_collector: HashMap<Arc<Collector>, Vec<S::Item>> = HashMap::new();
        for queued in batch {
            by_collector
                .entry(queued.collector)
                .or_default()
                .push(queued.item);
        }
        for (collector, items) in by_collector {
            let count = items.len() as u64;
            let index = turn.fetch_add(1, Ordering::Relaxed) % collector.endpoints.len().max(1);
            let Some(endpoint) = collector.endpoints.get(index) else {
                metrics.failed.inc_by(count);
                continue;
            };
            let request = S::request(&collector, items);
            let sent = match &collector.http {
                Some(http) => post(&client, endpoint, http, request.encode_to_vec()).await,
                None => grpc::<S>(&mut channels, endpoint, &collector.grpc, request).await,
            };
            match sent {
                Ok(()) => {
                    metrics.exported.inc_by(count);
                }
                Err(error) => {
                    debug!(%endpoint, %error, count, signal = S::NAME, "export failed");
                    metrics.failed.inc_by(count);
                }
            }
        }
    }
}

/// Sends `request` over gRPC on the channel to `endpoint`, opened on first use, with the
/// collector's metadata; a collector that does not answer within the deadline fails the
/// export (the waypoint stops waiting whether or not the collector honours `grpc-timeout`).
async fn grpc<S: Signal>(
    channels: &mut HashMap<String, Channel>,
    endpoint: &str,
    settings: &GrpcExport,
    request: S::Request,
) -> Result<(), ExportError> {
    if channels.len() >= MAX_CHANNELS && !channels.contains_key(endpoint) {
        channels.clear();
    }
    let channel = match channels.get(endpoint) {
        Some(channel) => channel.clone(),
        None => {
            let channel =
                connect(endpoint).map_err(|_| ExportError::Address(endpoint.to_owned()))?;
            channels.insert(endpoint.to_owned(), channel.clone());
            channel
        }
    };
    let timeout = settings.timeout.unwrap_or(EXPORT_TIMEOUT);
    let mut metadata = http::HeaderMap::with_capacity(settings.metadata.len());
    for (name, value) in &settings.metadata {
        metadata.append(name.clone(), value.clone());
    }
    let mut call = tonic::Request::new(request);
    *call.metadata_mut() = tonic::metadata::MetadataMap::from_headers(metadata);
    call.set_timeout(timeout);
    tokio::time::timeout(timeout, S::export(channel, call))
        .await
        .map_err(|_| ExportError::Timeout)?
        .map_err(ExportError::from)
}

/// The client of every OTLP/HTTP export (it keeps connections to each collector).
fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// `POST`s `body` (a protobuf export request) to `endpoint` as `http` says; any 2xx answer is
/// success, as for Envoy's OTLP/HTTP exporter. The answer is read to its end so that the
/// connection is kept for the next export.
async fn post(
    client: &HttpClient,
    endpoint: &str,
    http: &HttpExport,
    body: Vec<u8>,
) -> Result<(), ExportError> {
    let mut request = http::Request::post(format!("http://{endpoint}{}", http.path))
        .header(http::header::CONTENT_TYPE, "application/x-protobuf")
        .body(Full::new(Bytes::from(body)))
        .map_err(|_| ExportError::Address(endpoint.to_owned()))?;
    for (name, value) in &http.headers {
        request.headers_mut().insert(name.clone(), value.clone());
    }
    let exchange = async {
        let response = client.request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(ExportError::Status(status))
        }
    };
    tokio::time::timeout(http.timeout, exchange)
        .await
        .map_err(|_| ExportError::Timeout)?
}

fn connect(endpoint: &str) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect_lazy())
}

/// The scope every item is reported under.
pub fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: "weft-waypoint".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

/// Spans, over `TraceService/Export`.
pub struct Spans;

impl Signal for Spans {
    type Item = Span;
    type Request = ExportTraceServiceRequest;
    const NAME: &'static str = "tracing_spans";
    const ITEMS: &'static str = "Spans";

    fn request(collector: &Collector, spans: Vec<Span>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![super::attribute(
                        "service.name",
                        collector.service_name.as_str(),
                    )],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
    }

    async fn export(
        channel: Channel,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<(), tonic::Status> {
        TraceServiceClient::new(channel)
            .export(request)
            .await
            .map(drop)
    }
}

/// The waypoint's span exporter (one per process).
pub struct SpanExporter {
    batches: BatchExporter<Spans>,
    node_id: String,
}

impl std::fmt::Debug for SpanExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanExporter")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

impl SpanExporter {
    /// An exporter whose counters are registered in `registry`; [`SpanExporter::spawn`] starts
    /// its sending task. `node_id` is the proxy's xDS node id, a tag on every span.
    pub fn new(node_id: String, registry: &mut Registry) -> Arc<Self> {
        let batches = BatchExporter::default();
        batches.register(registry);
        Arc::new(SpanExporter { batches, node_id })
    }

    /// Starts the sending task on the current runtime (once).
    pub fn spawn(&self) {
        self.batches.spawn();
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Queues `span` for `collector`, or drops and counts it when the queue is full.
    pub fn submit(&self, collector: Arc<Collector>, span: Span) {
        self.batches.submit(collector, span);
    }

    pub fn exported(&self) -> u64 {
        self.batches.exported()
    }

    pub fn dropped(&self) -> u64 {
        self.batches.dropped()
    }
}

#[cfg(test)]
mod tests;
