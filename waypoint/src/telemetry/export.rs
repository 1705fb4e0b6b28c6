//! The span exporter: a bounded queue between the request path and one task that sends
//! batches over OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`).
//!
//! Requests never wait for it: a span that finds the queue full is dropped and counted
//! (`weft_tracing_spans_dropped_total`), so a slow or dead collector costs at most the queue's
//! memory and never delays traffic. A batch that fails to send is dropped and counted too
//! (`weft_tracing_spans_failed_total`); there is no retry, as a collector that is down would
//! only fill the queue again.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};
use tracing::{Instrument, debug, info_span};

/// Spans waiting to be sent, at most (Envoy's batch limit is of the same order).
pub const QUEUE_CAPACITY: usize = 2048;
/// Spans in one export request, at most.
pub const MAX_BATCH: usize = 512;
/// How long the first span of a batch waits for others.
pub const BATCH_DELAY: Duration = Duration::from_millis(200);
/// One export's deadline, connecting included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Collectors the exporter keeps a channel to (configuration rarely names more than one).
const MAX_CHANNELS: usize = 16;

/// An OTLP collector and the resource the waypoint's spans are reported as there.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Collector {
    /// `ip:port` or `host:port` of each endpoint; exports go round the list.
    pub endpoints: Vec<String>,
    /// The resource's `service.name`.
    pub service_name: String,
}

struct Queued {
    collector: Arc<Collector>,
    span: Span,
}

#[derive(Clone, Default)]
struct ExportMetrics {
    exported: Counter,
    dropped: Counter,
    failed: Counter,
}

/// The waypoint's span exporter (one per process).
pub struct SpanExporter {
    queue: mpsc::Sender<Queued>,
    /// Taken by the task that sends.
    pending: Mutex<Option<mpsc::Receiver<Queued>>>,
    metrics: ExportMetrics,
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
        let (queue, pending) = mpsc::channel(QUEUE_CAPACITY);
        let metrics = ExportMetrics::default();
        registry.register(
            "weft_tracing_spans_exported",
            "Spans the collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "weft_tracing_spans_dropped",
            "Spans dropped because the export queue was full",
            metrics.dropped.clone(),
        );
        registry.register(
            "weft_tracing_spans_failed",
            "Spans dropped because their export failed",
            metrics.failed.clone(),
        );
        Arc::new(SpanExporter {
            queue,
            pending: Mutex::new(Some(pending)),
            metrics,
            node_id,
        })
    }

    /// Starts the sending task on the current runtime (once; later calls do nothing). Spans
    /// submitted before wait in the queue.
    pub fn spawn(&self) {
        let Some(receiver) = self.pending.lock().unwrap().take() else {
            return;
        };
        tokio::spawn(run(receiver, self.metrics.clone()).instrument(info_span!("span_exporter")));
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// Queues `span` for `collector`, or drops and counts it when the queue is full.
    pub fn submit(&self, collector: Arc<Collector>, span: Span) {
        if self.queue.try_send(Queued { collector, span }).is_err() {
            self.metrics.dropped.inc();
        }
    }

    pub fn exported(&self) -> u64 {
        self.metrics.exported.get()
    }

    pub fn dropped(&self) -> u64 {
        self.metrics.dropped.get()
    }
}

async fn run(mut receiver: mpsc::Receiver<Queued>, metrics: ExportMetrics) {
    let mut channels: HashMap<String, TraceServiceClient<Channel>> = HashMap::new();
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
        let mut by_collector: HashMap<Arc<Collector>, Vec<Span>> = HashMap::new();
        for queued in batch {
            by_collector
                .entry(queued.collector)
                .or_default()
                .push(queued.span);
        }
        for (collector, spans) in by_collector {
            let count = spans.len() as u64;
            let index = turn.fetch_add(1, Ordering::Relaxed) % collector.endpoints.len().max(1);
            let Some(endpoint) = collector.endpoints.get(index) else {
                metrics.failed.inc_by(count);
                continue;
            };
            if channels.len() >= MAX_CHANNELS && !channels.contains_key(endpoint) {
                channels.clear();
            }
            let client = match channels.get(endpoint) {
                Some(client) => client.clone(),
                None => match connect(endpoint) {
                    Ok(client) => {
                        channels.insert(endpoint.clone(), client.clone());
                        client
                    }
                    Err(error) => {
                        debug!(%endpoint, %error, "invalid collector address");
                        metrics.failed.inc_by(count);
                        continue;
                    }
                },
            };
            match export(client, &collector, spans).await {
                Ok(()) => {
                    metrics.exported.inc_by(count);
                }
                Err(error) => {
                    debug!(%endpoint, %error, spans = count, "span export failed");
                    metrics.failed.inc_by(count);
                }
            }
        }
    }
}

fn connect(endpoint: &str) -> Result<TraceServiceClient<Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{endpoint}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(EXPORT_TIMEOUT)
        .connect_lazy();
    Ok(TraceServiceClient::new(channel))
}

async fn export(
    mut client: TraceServiceClient<Channel>,
    collector: &Collector,
    spans: Vec<Span>,
) -> Result<(), tonic::Status> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![super::attribute(
                    "service.name",
                    collector.service_name.as_str(),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "weft-waypoint".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    match tokio::time::timeout(EXPORT_TIMEOUT, client.export(request)).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => Err(tonic::Status::deadline_exceeded("export timed out")),
    }
}
