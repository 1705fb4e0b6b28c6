//! The server end of the delta ADS stream: one task per proxy stream, holding that proxy's
//! subscriptions and what it was sent, diffing each new store snapshot against it.
//!
//! Per stream: the first request must carry the proxy's `Node`; each type URL is subscribed
//! either as a wildcard (empty `resource_names_subscribe` on its first request, or `"*"`) or by
//! explicit names; the first response of a type carries the full scoped state (even when empty),
//! later ones only the changes. Store changes are debounced: a push waits for `debounce` of quiet,
//! but never more than `debounce_max` after the first change it carries.
//!
//! This file is the gRPC service and what happens before a stream is served (its first request,
//! admission, shutdown); `stream` is the stream once served.

mod service;
mod stand_ins;
mod stream;
mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};
use weft_identity::SpiffeId;
use weft_proto::envoy::config::core::v3::Node;
use weft_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::metrics::{NoMetrics, XdsMetrics};
use crate::store::{SnapshotReader, StoredResource};

pub use service::{AdsService, SERVICE_NAME};
pub use wire::{DeltaResponse, SentResource};

/// The subscription name that means "every resource of the type".
pub const WILDCARD: &str = "*";

/// Responses buffered per stream before the stream task waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;

/// Names one stream may hold subscribed per type, and name one request may carry: each is
/// kept for the stream's life, so whoever holds a stream must not grow it without bound. Twice
/// what a client subscribes on demand ([`crate::MAX_DEMANDED_NAMES`]), so a reconnecting proxy's
/// first request (all its names at once) always fits.
pub const MAX_NAMES: usize = 2 * crate::client::MAX_DEMANDED_NAMES;

/// Type URLs one stream may subscribe: each holds a subscription for the stream's life.
pub const MAX_TYPES: usize = 64;

/// Who is on the other end of a stream, from the `Node` of its first request.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    /// `Node.id`, e.g. `ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local`.
    pub id: String,
    /// The whole node, including `metadata`.
    pub node: Node,
    /// Number of this stream on this server, to tell reconnects apart in logs.
    pub connection: u64,
    /// The identity the stream's credential proved, as the [`Admission`] established it;
    /// `None` without admission or for a credential naming no workload identity. Everything
    /// else here is only what the proxy claims.
    pub verified: Option<SpiffeId>,
}

impl ProxyIdentity {
    /// A metadata field of the node, if it is a string.
    pub fn metadata_string(&self, key: &str) -> Option<&str> {
        use prost_types::value::Kind;
        match self
            .node
            .metadata
            .as_ref()?
            .fields
            .get(key)?
            .kind
            .as_ref()?
        {
            Kind::StringValue(value) => Some(value),
            _ => None,
        }
    }
}

/// Decides which resources of a type a proxy receives. It must be a pure function of the proxy
/// and the resource: the server re-evaluates it only when the store publishes a change, and skips
/// types whose resources did not change.
pub trait Scope: Send + Sync + 'static {
    /// Whether `proxy` receives `resource` of `type_url`.
    fn visible(&self, proxy: &ProxyIdentity, type_url: &str, resource: &StoredResource) -> bool;
}

impl<F> Scope for F
where
    F: Fn(&ProxyIdentity, &str, &StoredResource) -> bool + Send + Sync + 'static,
{
    fn visible(&self, proxy: &ProxyIdentity, type_url: &str, resource: &StoredResource) -> bool {
        self(proxy, type_url, resource)
    }
}

/// The scope that shows every resource to every proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unscoped;

impl Scope for Unscoped {
    fn visible(&self, _: &ProxyIdentity, _: &str, _: &StoredResource) -> bool {
        true
    }
}

/// Decides whether a stream may be served, from its request metadata (credentials) and the
/// `Node` of its first request, before anything is sent on it.
pub trait Admission: Send + Sync + 'static {
    /// `Ok` with the identity the credential proved (if it names one: it becomes
    /// [`ProxyIdentity::verified`]) to serve the stream; the `Status` refusing it otherwise,
    /// which the proxy receives.
    fn admit(
        &self,
        metadata: MetadataMap,
        proxy: ProxyIdentity,
    ) -> Pin<Box<dyn Future<Output = Result<Option<SpiffeId>, Status>> + Send + '_>>;
}

/// Tuning of the server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Quiet period after a store change before pushing it (Istio's `PILOT_DEBOUNCE_AFTER`).
    pub debounce: Duration,
    /// Longest a change waits while more keep arriving (Istio's `PILOT_DEBOUNCE_MAX`).
    pub debounce_max: Duration,
    /// Sent as `control_plane.identifier` in every response.
    pub control_plane_id: String,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_secs(10),
            control_plane_id: "weft-controller".to_string(),
        }
    }
}

/// Why a stream ended other than by the proxy closing it.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The first request carried no `Node`.
    #[error("first request on the stream carries no node")]
    MissingNode,
    /// The [`Admission`] refused the stream.
    #[error("stream of proxy {proxy_id} refused: {status}")]
    Refused {
        /// The proxy's node id, as it claimed it.
        proxy_id: String,
        /// What the proxy was told.
        status: Status,
    },
    /// A request would take the stream past one of its bounds; the stream was ended.
    #[error("stream of proxy {proxy_id} ended: {exceeded}")]
    Exceeded {
        /// The proxy's node id.
        proxy_id: String,
        /// Which bound, and by how much.
        exceeded: Exceeded,
    },
    /// The proxy stopped reading responses (the stream is gone).
    #[error("proxy {proxy_id} is no longer reading responses")]
    ResponsesClosed {
        /// The proxy's node id.
        proxy_id: String,
    },
}

/// A bound of a stream that a request would exceed (told to the proxy as the status ending
/// its stream, `RESOURCE_EXHAUSTED`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Exceeded {
    /// Too many type URLs subscribed.
    #[error("subscribing {type_url} would exceed {limit} type URLs on one stream")]
    Types {
        /// The type asked for.
        type_url: String,
        /// [`MAX_TYPES`].
        limit: usize,
    },
    /// Too many names in one request.
    #[error("a request for {type_url} names {names} resources, more than {limit}")]
    NamesInRequest {
        /// The type of the request.
        type_url: String,
        /// Names subscribed and unsubscribed in it.
        names: usize,
        /// [`MAX_NAMES`].
        limit: usize,
    },
    /// Too many names subscribed.
    #[error("the subscription to {type_url} would hold {names} names, more than {limit}")]
    NamesSubscribed {
        /// The type of the subscription.
        type_url: String,
        /// Names it would hold.
        names: usize,
        /// [`MAX_NAMES`].
        limit: usize,
    },
}

/// The `AggregatedDiscoveryService` serving a [`crate::ResourceStore`]. Cheap to clone.
#[derive(Clone)]
pub struct DeltaAdsServer {
    reader: SnapshotReader,
    scope: Arc<dyn Scope>,
    admission: Option<Arc<dyn Admission>>,
    metrics: Arc<dyn XdsMetrics>,
    config: ServerConfig,
    connections: Arc<AtomicU64>,
    shutdown: Option<watch::Receiver<bool>>,
}

impl std::fmt::Debug for DeltaAdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaAdsServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl DeltaAdsServer {
    /// A server of everything in the store, to every proxy, with default tuning.
    pub fn new(reader: SnapshotReader) -> Self {
        Self {
            reader,
            scope: Arc::new(Unscoped),
            admission: None,
            metrics: Arc::new(NoMetrics),
            config: ServerConfig::default(),
            connections: Arc::new(AtomicU64::new(0)),
            shutdown: None,
        }
    }

    /// Restricts what each proxy receives.
    pub fn with_scope(mut self, scope: impl Scope) -> Self {
        self.scope = Arc::new(scope);
        self
    }

    /// Serves only the streams `admission` admits (by default every stream is served).
    pub fn with_admission(mut self, admission: Arc<dyn Admission>) -> Self {
        self.admission = Some(admission);
        self
    }

    /// Reports events to `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<dyn XdsMetrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces the tuning.
    pub fn with_config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Ends every stream once `shutdown` turns `true` (or its sender is dropped), so a graceful
    /// server shutdown completes while the store lives on. Proxies reconnect with backoff and
    /// keep serving their last configuration meanwhile.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Self {
        self.shutdown = Some(shutdown);
        self
    }

    /// The tonic service, ready for `Server::builder().add_service(..)`.
    pub fn into_service(self) -> AdsService {
        AdsService::new(self)
    }

    /// Serves one `DeltaAggregatedResources` stream: a task per stream, answering on the
    /// returned stream of responses.
    fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Response<ReceiverStream<Result<DeltaResponse, Status>>> {
        let connection = self.connections.fetch_add(1, Ordering::Relaxed) + 1;
        let peer = request.remote_addr();
        let metadata = request.metadata().clone();
        let requests = request.into_inner();
        let (responses, stream) = mpsc::channel(RESPONSE_BUFFER);
        let server = self.clone();
        let span = tracing::info_span!(
            "xds_stream",
            connection,
            peer = ?peer,
            proxy = tracing::field::Empty
        );
        tokio::spawn(
            async move {
                if let Err(error) = server
                    .serve_stream(connection, metadata, requests, responses)
                    .await
                {
                    info!(%error, "discovery stream ended");
                }
            }
            .instrument(span),
        );
        Response::new(ReceiverStream::new(stream))
    }
}

use stream::{ConnectedGuard, ProxyStream};

type ResponseSender = mpsc::Sender<Result<DeltaResponse, Status>>;

impl DeltaAdsServer {
    async fn serve_stream(
        self,
        connection: u64,
        metadata: MetadataMap,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        responses: ResponseSender,
    ) -> Result<(), StreamError> {
        let first = match requests.next().await {
            Some(Ok(first)) => first,
            Some(Err(status)) => {
                debug!(%status, "stream failed before its first request");
                return Ok(());
            }
            None => return Ok(()),
        };
        let Some(node) = first.node.clone() else {
            // Best effort: the proxy learns why before the stream closes.
            let _ = responses
                .send(Err(Status::invalid_argument(
                    "the first DeltaDiscoveryRequest must carry a node",
                )))
                .await;
            return Err(StreamError::MissingNode);
        };
        let mut proxy = ProxyIdentity {
            id: node.id.clone(),
            node,
            connection,
            verified: None,
        };
        tracing::Span::current().record("proxy", proxy.id.as_str());
        if let Some(admission) = &self.admission {
            match admission.admit(metadata, proxy.clone()).await {
                Ok(verified) => proxy.verified = verified,
                Err(status) => {
                    warn!(proxy = %proxy.id, code = ?status.code(), reason = status.message(), "refused a discovery stream");
                    let _ = responses.send(Err(status.clone())).await;
                    return Err(StreamError::Refused {
                        proxy_id: proxy.id,
                        status,
                    });
                }
            }
        }
        info!(proxy = %proxy.id, "proxy connected");
        let _connected = ConnectedGuard::new(self.metrics.clone(), proxy.clone());

        let mut stream = ProxyStream {
            proxy,
            reader: self.reader.clone(),
            scope: self.scope.clone(),
            metrics: self.metrics.clone(),
            config: self.config.clone(),
            subscriptions: BTreeMap::new(),
            next_nonce: 0,
            responses,
        };
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            ended = stream.run(first, requests) => ended,
            () = shutdown_requested(&mut shutdown) => {
                info!(proxy = %stream.proxy.id, "server shutting down, ending stream");
                Ok(())
            }
        }
    }
}

async fn shutdown_requested(shutdown: &mut Option<watch::Receiver<bool>>) {
    match shutdown {
        // A dropped sender counts as a shutdown too: nobody can ever call it off.
        Some(shutdown) => {
            let _ = shutdown.wait_for(|requested| *requested).await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
