//! The server end of the delta ADS stream: one task per proxy stream, holding that proxy's
//! subscriptions and what it was sent, diffing each new store snapshot against it.
//!
//! Per stream: the first request must carry the proxy's `Node`; each type URL is subscribed
//! either as a wildcard (empty `resource_names_subscribe` on its first request, or `"*"`) or by
//! explicit names; the first response of a type carries the full scoped state (even when empty),
//! later ones only the changes. Store changes are debounced: a push waits for `debounce` of quiet,
//! but never more than `debounce_max` after the first change it carries.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};
use weft_proto::envoy::config::core::v3::{ControlPlane, Node};
use weft_proto::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use weft_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use crate::metrics::{NoMetrics, Rejection, XdsMetrics};
use crate::store::{Snapshot, SnapshotReader, StoredResource, TypeResources};

/// The subscription name that means "every resource of the type".
pub const WILDCARD: &str = "*";

/// Responses buffered per stream before the stream task waits for the proxy to read.
const RESPONSE_BUFFER: usize = 16;

/// Who is on the other end of a stream, from the `Node` of its first request.
#[derive(Debug, Clone)]
pub struct ProxyIdentity {
    /// `Node.id`, e.g. `ztunnel~10.0.0.1~ztunnel-abc.istio-system~istio-system.svc.cluster.local`.
    pub id: String,
    /// The whole node, including `metadata`.
    pub node: Node,
    /// Number of this stream on this server, to tell reconnects apart in logs.
    pub connection: u64,
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
    /// `Ok` to serve the stream; the `Status` refusing it otherwise, which the proxy receives.
    fn admit(
        &self,
        metadata: MetadataMap,
        proxy: ProxyIdentity,
    ) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send + '_>>;
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
    /// The proxy stopped reading responses (the stream is gone).
    #[error("proxy {proxy_id} is no longer reading responses")]
    ResponsesClosed {
        /// The proxy's node id.
        proxy_id: String,
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
    pub fn into_service(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for DeltaAdsServer {
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
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
        Ok(Response::new(ReceiverStream::new(stream)))
    }
}

type ResponseSender = mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>;

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
        let proxy = ProxyIdentity {
            id: node.id.clone(),
            node,
            connection,
        };
        tracing::Span::current().record("proxy", proxy.id.as_str());
        if let Some(admission) = &self.admission
            && let Err(status) = admission.admit(metadata, proxy.clone()).await
        {
            warn!(proxy = %proxy.id, code = ?status.code(), reason = status.message(), "refused a discovery stream");
            let _ = responses.send(Err(status.clone())).await;
            return Err(StreamError::Refused {
                proxy_id: proxy.id,
                status,
            });
        }
        info!(proxy = %proxy.id, "proxy connected");
        let _connected = ConnectedGuard::new(self.metrics.clone(), proxy.id.clone());

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

/// Keeps the connected-proxies gauge right however the stream task ends.
struct ConnectedGuard {
    metrics: Arc<dyn XdsMetrics>,
    proxy_id: String,
}

impl ConnectedGuard {
    fn new(metrics: Arc<dyn XdsMetrics>, proxy_id: String) -> Self {
        metrics.proxy_connected(&proxy_id);
        Self { metrics, proxy_id }
    }
}

impl Drop for ConnectedGuard {
    fn drop(&mut self) {
        self.metrics.proxy_disconnected(&self.proxy_id);
        info!(proxy = %self.proxy_id, "proxy disconnected");
    }
}

/// One type URL's subscription on one stream.
#[derive(Debug, Default)]
struct TypeSubscription {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the proxy was last sent (or said it had), by name: the version. A NACKed version stays
    /// here, so it is not sent again; only a newer one is.
    sent: HashMap<String, String>,
    /// The type's resources at the last evaluation; an identical map needs no new diff.
    evaluated: Option<Arc<TypeResources>>,
}

impl TypeSubscription {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

/// A push waiting for the debounce to settle.
#[derive(Debug, Clone, Copy)]
struct PendingPush {
    first_change: Instant,
    deadline: Instant,
}

impl PendingPush {
    /// The push after a change seen at `now`: each change restarts the quiet period, but the
    /// first change of the burst never waits longer than `debounce_max`.
    fn after_change(pending: Option<Self>, now: Instant, config: &ServerConfig) -> Self {
        let first_change = pending.map_or(now, |push| push.first_change);
        let deadline = (now + config.debounce).min(first_change + config.debounce_max);
        Self {
            first_change,
            deadline,
        }
    }
}

struct ProxyStream {
    proxy: ProxyIdentity,
    reader: SnapshotReader,
    scope: Arc<dyn Scope>,
    metrics: Arc<dyn XdsMetrics>,
    config: ServerConfig,
    subscriptions: BTreeMap<String, TypeSubscription>,
    next_nonce: u64,
    responses: ResponseSender,
}

impl ProxyStream {
    async fn run(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut requests: Streaming<DeltaDiscoveryRequest>,
    ) -> Result<(), StreamError> {
        // Everything published so far is covered by the full state sent on subscription.
        self.reader.latest();
        self.handle_request(first).await?;
        let mut pending: Option<PendingPush> = None;
        loop {
            let deadline = pending.map(|push| push.deadline);
            tokio::select! {
                request = requests.next() => match request {
                    Some(Ok(request)) => self.handle_request(request).await?,
                    Some(Err(status)) => {
                        debug!(proxy = %self.proxy.id, %status, "request stream failed");
                        return Ok(());
                    }
                    None => return Ok(()),
                },
                alive = self.reader.changed() => {
                    if !alive {
                        info!(proxy = %self.proxy.id, "resource store closed, ending stream");
                        return Ok(());
                    }
                    pending = Some(PendingPush::after_change(pending, Instant::now(), &self.config));
                },
                () = sleep_until_or_forever(deadline) => {
                    if let Some(push) = pending.take() {
                        let snapshot = self.reader.latest();
                        self.push_changes(&snapshot, push.first_change).await?;
                    }
                },
            }
        }
    }

    async fn handle_request(&mut self, request: DeltaDiscoveryRequest) -> Result<(), StreamError> {
        let type_url = request.type_url;
        if !request.response_nonce.is_empty() {
            match &request.error_detail {
                Some(error) => {
                    warn!(
                        proxy = %self.proxy.id,
                        type_url = %type_url,
                        nonce = %request.response_nonce,
                        code = error.code,
                        message = %error.message,
                        "proxy rejected configuration"
                    );
                    self.metrics.rejected(&Rejection {
                        proxy_id: self.proxy.id.clone(),
                        type_url: type_url.clone(),
                        nonce: request.response_nonce.clone(),
                        message: error.message.clone(),
                    });
                }
                None => debug!(
                    proxy = %self.proxy.id,
                    type_url = %type_url,
                    nonce = %request.response_nonce,
                    "proxy acknowledged configuration"
                ),
            }
        }

        let is_new = !self.subscriptions.contains_key(&type_url);
        let changes_subscription = is_new
            || !request.resource_names_subscribe.is_empty()
            || !request.resource_names_unsubscribe.is_empty();
        if !changes_subscription {
            return Ok(());
        }
        let subscription = self.subscriptions.entry(type_url.clone()).or_default();
        if is_new {
            subscription.wildcard = request.resource_names_subscribe.is_empty();
            subscription.sent = request.initial_resource_versions;
        }
        for name in request.resource_names_subscribe {
            if name == WILDCARD {
                subscription.wildcard = true;
            } else {
                subscription.names.insert(name);
            }
        }
        for name in request.resource_names_unsubscribe {
            if name == WILDCARD {
                subscription.wildcard = false;
            } else {
                subscription.names.remove(&name);
                subscription.sent.remove(&name);
            }
        }
        subscription.evaluated = None;
        debug!(
            proxy = %self.proxy.id,
            type_url = %type_url,
            wildcard = subscription.wildcard,
            names = subscription.names.len(),
            "subscription changed"
        );
        // `current`, not `latest`: a change not yet pushed must still wake the debounce loop.
        let snapshot = self.reader.current();
        self.push_type(&snapshot, &type_url, is_new, Instant::now())
            .await
    }

    async fn push_changes(
        &mut self,
        snapshot: &Snapshot,
        since: Instant,
    ) -> Result<(), StreamError> {
        let type_urls: Vec<String> = self.subscriptions.keys().cloned().collect();
        for type_url in type_urls {
            self.push_type(snapshot, &type_url, false, since).await?;
        }
        Ok(())
    }

    /// Diffs one type against what the proxy was sent and sends the difference; with
    /// `respond_if_empty`, sends a response even when there is nothing to say (the first
    /// response of a subscription, which tells the proxy its full state).
    async fn push_type(
        &mut self,
        snapshot: &Snapshot,
        type_url: &str,
        respond_if_empty: bool,
        since: Instant,
    ) -> Result<(), StreamError> {
        let Some(subscription) = self.subscriptions.get_mut(type_url) else {
            return Ok(());
        };
        let empty = Arc::new(TypeResources::new());
        let current = snapshot.resources(type_url).unwrap_or(&empty);
        if !respond_if_empty
            && subscription
                .evaluated
                .as_ref()
                .is_some_and(|evaluated| Arc::ptr_eq(evaluated, current))
        {
            return Ok(());
        }
        let delta = diff_type(subscription, current, |resource| {
            self.scope.visible(&self.proxy, type_url, resource)
        });
        subscription.evaluated = Some(current.clone());
        if delta.is_empty() && !respond_if_empty {
            return Ok(());
        }
        for resource in &delta.added {
            subscription
                .sent
                .insert(resource.name.clone(), resource.version.clone());
        }
        for name in &delta.removed {
            subscription.sent.remove(name);
        }

        self.next_nonce += 1;
        let nonce = self.next_nonce.to_string();
        let (added, removed) = (delta.added.len(), delta.removed.len());
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.generation().to_string(),
            resources: delta.added,
            type_url: type_url.to_string(),
            removed_resources: delta.removed,
            nonce: nonce.clone(),
            control_plane: Some(ControlPlane {
                identifier: self.config.control_plane_id.clone(),
            }),
        };
        if self.responses.send(Ok(response)).await.is_err() {
            return Err(StreamError::ResponsesClosed {
                proxy_id: self.proxy.id.clone(),
            });
        }
        self.metrics.pushed(type_url, since.elapsed());
        debug!(
            proxy = %self.proxy.id,
            type_url = %type_url,
            nonce = %nonce,
            added,
            removed,
            "pushed resources"
        );
        Ok(())
    }
}

/// What one type's next response carries.
#[derive(Debug, Default, PartialEq)]
struct TypeDelta {
    added: Vec<Resource>,
    removed: Vec<String>,
}

impl TypeDelta {
    fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// The difference between what a proxy was sent and what it should have now.
fn diff_type(
    subscription: &TypeSubscription,
    current: &TypeResources,
    visible: impl Fn(&StoredResource) -> bool,
) -> TypeDelta {
    let mut delta = TypeDelta::default();
    let mut should_have = BTreeSet::new();
    for (name, resource) in current {
        if !subscription.wants(name) || !visible(resource) {
            continue;
        }
        should_have.insert(name.as_str());
        if subscription.sent.get(name) != Some(&resource.version) {
            delta.added.push(Resource {
                name: name.clone(),
                version: resource.version.clone(),
                resource: Some(resource.body.clone()),
                ..Resource::default()
            });
        }
    }
    let mut removed: Vec<String> = subscription
        .sent
        .keys()
        .filter(|name| !should_have.contains(name.as_str()))
        .cloned()
        .collect();
    removed.sort();
    delta.removed = removed;
    delta
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

async fn sleep_until_or_forever(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use prost_types::Any;

    use super::*;

    fn resource(name: &str, value: &[u8]) -> Arc<StoredResource> {
        Arc::new(StoredResource::new(
            name,
            Any {
                type_url: "type.googleapis.com/test.Thing".into(),
                value: value.to_vec(),
            },
        ))
    }

    fn resources(entries: &[(&str, &[u8])]) -> TypeResources {
        entries
            .iter()
            .map(|(name, value)| (name.to_string(), resource(name, value)))
            .collect()
    }

    fn subscription(wildcard: bool, names: &[&str], sent: &[(&str, &[u8])]) -> TypeSubscription {
        TypeSubscription {
            wildcard,
            names: names.iter().map(|name| name.to_string()).collect(),
            sent: sent
                .iter()
                .map(|(name, value)| (name.to_string(), resource(name, value).version.clone()))
                .collect(),
            evaluated: None,
        }
    }

    #[test]
    fn node_metadata_strings_are_read_and_other_kinds_ignored() {
        use prost_types::value::Kind;
        use prost_types::{Struct, Value};
        let field = |kind| Value { kind: Some(kind) };
        let proxy = ProxyIdentity {
            id: "node-a".to_string(),
            node: Node {
                id: "node-a".to_string(),
                metadata: Some(Struct {
                    fields: [
                        (
                            "NAMESPACE".to_string(),
                            field(Kind::StringValue("default".into())),
                        ),
                        ("CAPACITY".to_string(), field(Kind::NumberValue(2.0))),
                    ]
                    .into(),
                }),
                ..Node::default()
            },
            connection: 1,
        };
        let cases = [
            ("NAMESPACE", Some("default")),
            ("CAPACITY", None),
            ("MISSING", None),
        ];
        for (key, expected) in cases {
            assert_eq!(proxy.metadata_string(key), expected, "{key}");
        }
    }

    #[test]
    fn debounce_waits_for_quiet_but_not_beyond_the_maximum() {
        let config = ServerConfig {
            debounce: Duration::from_millis(100),
            debounce_max: Duration::from_millis(250),
            ..ServerConfig::default()
        };
        let start = Instant::now();
        let ms = Duration::from_millis;
        // (changes seen at these offsets, expected deadline offset)
        let cases: [(&[u64], u64); 5] = [
            (&[0], 100),
            (&[0, 50], 150),
            (&[0, 50, 120], 220),
            (&[0, 50, 120, 200], 250),
            (&[0, 240], 250),
        ];
        for (changes, expected) in cases {
            let mut pending = None;
            for offset in changes {
                pending = Some(PendingPush::after_change(
                    pending,
                    start + ms(*offset),
                    &config,
                ));
            }
            let push = pending.unwrap();
            assert_eq!(push.first_change, start, "{changes:?}");
            assert_eq!(push.deadline, start + ms(expected), "{changes:?}");
        }
    }

    #[test]
    fn diff_sends_only_what_changed_for_what_is_wanted() {
        struct Case {
            name: &'static str,
            subscription: TypeSubscription,
            current: TypeResources,
            hidden: &'static [&'static str],
            added: &'static [&'static str],
            removed: &'static [&'static str],
        }
        let cases = [
            Case {
                name: "wildcard full state",
                subscription: subscription(true, &[], &[]),
                current: resources(&[("a", b"1"), ("b", b"1")]),
                hidden: &[],
                added: &["a", "b"],
                removed: &[],
            },
            Case {
                name: "only the updated resource",
                subscription: subscription(true, &[], &[("a", b"1"), ("b", b"1")]),
                current: resources(&[("a", b"1"), ("b", b"2")]),
                hidden: &[],
                added: &["b"],
                removed: &[],
            },
            Case {
                name: "removal",
                subscription: subscription(true, &[], &[("a", b"1"), ("b", b"1")]),
                current: resources(&[("a", b"1")]),
                hidden: &[],
                added: &[],
                removed: &["b"],
            },
            Case {
                name: "explicit names only",
                subscription: subscription(false, &["b", "missing"], &[]),
                current: resources(&[("a", b"1"), ("b", b"1")]),
                hidden: &[],
                added: &["b"],
                removed: &[],
            },
            Case {
                name: "scope hides, and removes what became hidden",
                subscription: subscription(true, &[], &[("a", b"1")]),
                current: resources(&[("a", b"1"), ("b", b"1"), ("c", b"1")]),
                hidden: &["a", "c"],
                added: &["b"],
                removed: &["a"],
            },
            Case {
                name: "initial versions already current",
                subscription: subscription(true, &[], &[("a", b"1"), ("gone", b"1")]),
                current: resources(&[("a", b"1")]),
                hidden: &[],
                added: &[],
                removed: &["gone"],
            },
        ];
        for case in cases {
            let delta = diff_type(&case.subscription, &case.current, |resource| {
                !case.hidden.contains(&resource.name.as_str())
            });
            let added: Vec<&str> = delta.added.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(added, case.added, "{}: added", case.name);
            assert_eq!(delta.removed, case.removed, "{}: removed", case.name);
        }
    }
}
