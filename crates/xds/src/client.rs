//! The proxy end of the delta ADS stream: subscribe, hand each response to the type's
//! [`Handler`], ACK or NACK it, and reconnect forever with backoff.
//!
//! After every (re)connect the server's first response per type is its full state: the client
//! then tells the handler, in [`Update::removed`], which resources it had accepted before but the
//! server no longer has, so the handler never keeps a resource that vanished while disconnected.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tracing::{debug, info, warn};
use weft_proto::envoy::config::core::v3::Node;
use weft_proto::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use weft_proto::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};
use weft_proto::google::rpc;

use crate::backoff::Backoff;

/// `google.rpc.Code.INVALID_ARGUMENT`, the code of every NACK this client sends.
const NACK_CODE: i32 = 3;

/// Bound on establishing the TCP/HTTP/2 connection of one attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Demands waiting for the client's task; beyond that, a demand fails at once.
const DEMAND_QUEUE: usize = 256;

/// Names subscribed on demand per type, at most: each is a resource the proxy keeps receiving,
/// and whoever makes the proxy ask (an application connecting anywhere) must not grow it
/// without bound.
pub const MAX_DEMANDED_NAMES: usize = 16_384;

/// Demands waiting for the answer for one name, at most: each is a connection the proxy holds
/// open while it waits, and one application opening thousands of connections to one unknown
/// address must not grow the list without bound. Beyond it a demand fails at once
/// ([`DemandError::Crowded`]).
pub const MAX_WAITERS_PER_NAME: usize = 1_024;

/// HTTP/2 pings detect a control plane that vanished without closing the connection.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// One response's worth of changes for one type.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// Resources added or changed.
    pub added: Vec<Resource>,
    /// Names of resources to drop. On a `full_state` update this also lists every resource the
    /// handler accepted earlier (before a reconnect) that the server no longer has.
    pub removed: Vec<String>,
    /// The first update accepted on a new connection: after applying it the handler holds exactly
    /// the server's state.
    pub full_state: bool,
}

/// Applies the resources of one type. Called on the client's task, so it must not block for long
/// (hand heavy work to another task).
///
/// Returning `Err` NACKs the whole response with the message. The handler must then keep its
/// last good state unchanged: the server does not resend a rejected version, and only sends the
/// resource again once it changes.
pub trait Handler: Send + 'static {
    /// Applies one update; `Err(message)` rejects it.
    fn apply(&mut self, update: Update) -> Result<(), String>;
}

impl<F> Handler for F
where
    F: FnMut(Update) -> Result<(), String> + Send + 'static,
{
    fn apply(&mut self, update: Update) -> Result<(), String> {
        self(update)
    }
}

/// Where the client connects.
#[derive(Debug, Clone)]
pub enum Target {
    /// A channel made by the caller (for TLS, or one shared with other clients).
    Channel(Channel),
    /// An endpoint connected anew on every attempt.
    Endpoint(Box<Endpoint>),
}

impl Target {
    /// A plaintext endpoint from a URI such as `http://127.0.0.1:15010`.
    pub fn address(uri: &str) -> Result<Self, ClientError> {
        Ok(Self::Endpoint(Box::new(Self::endpoint(uri)?)))
    }

    fn endpoint(uri: &str) -> Result<Endpoint, ClientError> {
        let endpoint = Endpoint::from_shared(uri.to_string())
            .map_err(|source| ClientError::InvalidUri {
                uri: uri.to_string(),
                source,
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        Ok(endpoint)
    }

    /// An endpoint over TLS (`https://host:15012`) whose certificate must chain to `roots_pem`
    /// and name the URI's host (the controller's serving certificate names istiod's DNS names).
    pub fn tls(uri: &str, roots_pem: &str) -> Result<Self, ClientError> {
        let endpoint = Self::endpoint(uri)?;
        weft_identity::install_default_provider();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(roots_pem));
        let endpoint = endpoint
            .tls_config(tls)
            .map_err(|source| ClientError::InvalidUri {
                uri: uri.to_string(),
                source,
            })?;
        Ok(Self::Endpoint(Box::new(endpoint)))
    }

    /// [`Self::tls`] for `https://` URIs (with `roots_pem`, required), [`Self::address`] for
    /// `http://` ones.
    pub fn for_uri(uri: &str, roots_pem: Option<&str>) -> Result<Self, ClientError> {
        if uri.starts_with("https://") {
            let roots = roots_pem.ok_or_else(|| ClientError::MissingRoots {
                uri: uri.to_string(),
            })?;
            Self::tls(uri, roots)
        } else {
            Self::address(uri)
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Channel(_) => "caller channel".to_string(),
            Self::Endpoint(endpoint) => endpoint.uri().to_string(),
        }
    }
}

/// The stream's state, for readiness checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionState {
    /// A stream is open.
    pub connected: bool,
    /// Every subscribed type has received its first response on the open stream.
    pub synced: bool,
    /// Why the last stream (or attempt) ended.
    pub last_error: Option<String>,
    /// Streams opened so far.
    pub connections: u64,
}

/// Errors of the client; all but the configuration ones end one connection and are retried.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The address is not a valid URI.
    #[error("invalid discovery server uri {uri:?}")]
    InvalidUri {
        /// The rejected address.
        uri: String,
        /// Why it was rejected.
        #[source]
        source: tonic::transport::Error,
    },
    /// An `https://` address without roots to verify the server with.
    #[error("{uri} is TLS: the roots that verify the server are needed")]
    MissingRoots {
        /// The address.
        uri: String,
    },
    /// The client was run without any subscription.
    #[error("no resource type subscribed")]
    NoSubscriptions,
    /// The connection to the server could not be made.
    #[error("connecting to discovery server {target}")]
    Connect {
        /// The server.
        target: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The server refused or failed the stream.
    #[error("discovery stream failed: {0}")]
    Stream(tonic::Status),
    /// The server ended the stream.
    #[error("discovery server closed the stream")]
    StreamClosed,
    /// The request half of the stream is gone.
    #[error("discovery stream no longer accepts requests")]
    RequestsClosed,
    /// The bearer token to send could not be read, or is not a valid header value.
    #[error("discovery stream credential: {0}")]
    Credential(String),
}

/// Where a client's bearer token comes from: called for every connection, so a token that
/// rotates in place (a projected service-account token) is read fresh.
pub type TokenSource = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Why a demand was not answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DemandError {
    /// Too many demands are already waiting for the client.
    #[error("too many demands waiting")]
    Busy,
    /// The type was not subscribed by name, or holds [`MAX_DEMANDED_NAMES`] names already.
    #[error("{type_url} takes no more names on demand")]
    Refused {
        /// The type asked for.
        type_url: String,
    },
    /// [`MAX_WAITERS_PER_NAME`] demands already wait for the answer for this name.
    #[error("too many demands waiting for {name}")]
    Crowded {
        /// The name asked for.
        name: String,
    },
    /// The client is gone.
    #[error("discovery client stopped")]
    Stopped,
}

/// What a [`Demand`] hands the client's task.
enum DemandMessage {
    /// Subscribe to a name and answer once the server has.
    Subscribe {
        type_url: String,
        name: String,
        answered: oneshot::Sender<Result<(), DemandError>>,
        /// Whether the name stays subscribed when the server finds nothing for it.
        watch_absent: bool,
    },
    /// Unsubscribe names asked for earlier.
    Release {
        type_url: String,
        names: Vec<String>,
    },
}

/// Asks a running [`DeltaClient`] for resources by name (Envoy's on-demand delta xDS, as
/// ztunnel's `XDS_ON_DEMAND`): the name is added to the type's subscription (and stays, so a
/// reconnect asks again) and [`Demand::request`] returns once the server has answered it,
/// with the resources it covers or with the name as removed (nothing there). Concurrent
/// demands for one name share one request. Cheap to clone; usable from any runtime.
#[derive(Debug, Clone)]
pub struct Demand {
    requests: mpsc::Sender<DemandMessage>,
}

impl Demand {
    /// Subscribes to `name` of `type_url` and waits for the server's answer (callers bound
    /// the wait).
    pub async fn request(&self, type_url: &str, name: &str) -> Result<(), DemandError> {
        self.subscribe(type_url, name, false).await
    }

    /// As [`Demand::request`], but a name the server found nothing for stays subscribed, so
    /// what later appears under it is pushed at once; the caller [`Demand::release`]s it
    /// when it no longer cares (a cache of misses that expire). A demand given up before
    /// the answer (its future dropped) does not keep the name.
    pub async fn request_watching_absent(
        &self,
        type_url: &str,
        name: &str,
    ) -> Result<(), DemandError> {
        self.subscribe(type_url, name, true).await
    }

    async fn subscribe(
        &self,
        type_url: &str,
        name: &str,
        watch_absent: bool,
    ) -> Result<(), DemandError> {
        let (answered, answer) = oneshot::channel();
        self.send(DemandMessage::Subscribe {
            type_url: type_url.to_string(),
            name: name.to_string(),
            answered,
            watch_absent,
        })?;
        answer.await.unwrap_or(Err(DemandError::Stopped))
    }

    /// Unsubscribes `names` of `type_url` asked for earlier (the delta protocol's
    /// `resource_names_unsubscribe`): the server then removes what no other name of the
    /// subscription covers. Names the subscription was built with, and names still waiting
    /// for an answer, stay. Queued like a demand; fails when the queue is full (try again
    /// later).
    pub fn release(&self, type_url: &str, names: Vec<String>) -> Result<(), DemandError> {
        self.send(DemandMessage::Release {
            type_url: type_url.to_string(),
            names,
        })
    }

    fn send(&self, message: DemandMessage) -> Result<(), DemandError> {
        self.requests
            .try_send(message)
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => DemandError::Busy,
                mpsc::error::TrySendError::Closed(_) => DemandError::Stopped,
            })
    }
}

/// The names a response answers: those it carries (as names or aliases), those it removes.
struct Answers {
    found: Vec<String>,
    removed: Vec<String>,
}

impl Answers {
    fn of(resources: &[Resource], removed: &[String]) -> Self {
        Self {
            found: resources
                .iter()
                .flat_map(|r| std::iter::once(&r.name).chain(&r.aliases))
                .cloned()
                .collect(),
            removed: removed.to_vec(),
        }
    }
}

/// Demands sent and not yet answered, by type and name: their waiters.
type PendingDemands = HashMap<(String, String), Vec<oneshot::Sender<Result<(), DemandError>>>>;

/// One type URL's subscription and the handler state the client tracks for it.
struct TypeSubscription {
    type_url: String,
    /// Empty for a wildcard subscription.
    names: Vec<String>,
    /// The names it was built with: never released.
    initial: BTreeSet<String>,
    handler: Box<dyn Handler>,
    /// Names the handler accepted and still holds.
    accepted: BTreeSet<String>,
}

/// A delta ADS client. Build it, then [`DeltaClient::run_until`] it on a task of its own.
pub struct DeltaClient {
    target: Target,
    node: Node,
    backoff: Backoff,
    subscriptions: Vec<TypeSubscription>,
    token: Option<TokenSource>,
    state: watch::Sender<ConnectionState>,
    demands: mpsc::Receiver<DemandMessage>,
    demand_sender: mpsc::Sender<DemandMessage>,
    pending: PendingDemands,
    /// Pending names to keep subscribed if the server finds nothing for them.
    watching_absent: HashSet<(String, String)>,
}

impl std::fmt::Debug for DeltaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeltaClient")
            .field("target", &self.target.describe())
            .field("node", &self.node.id)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}

impl DeltaClient {
    /// A client identifying itself as `node`, with no subscriptions yet.
    pub fn new(target: Target, node: Node) -> Self {
        let (state, _) = watch::channel(ConnectionState::default());
        let (demand_sender, demands) = mpsc::channel(DEMAND_QUEUE);
        Self {
            target,
            node,
            backoff: Backoff::default(),
            subscriptions: Vec::new(),
            token: None,
            state,
            demands,
            demand_sender,
            pending: HashMap::new(),
            watching_absent: HashSet::new(),
        }
    }

    /// A handle to ask for resources by name on the types subscribed by name
    /// ([`Self::subscribe_names`]).
    pub fn demand(&self) -> Demand {
        Demand {
            requests: self.demand_sender.clone(),
        }
    }

    /// Subscribes to every resource of `type_url` (wildcard).
    pub fn subscribe(self, type_url: impl Into<String>, handler: impl Handler) -> Self {
        self.subscribe_names(type_url, Vec::new(), handler)
    }

    /// Subscribes to the named resources of `type_url`; no names means every resource.
    pub fn subscribe_names(
        mut self,
        type_url: impl Into<String>,
        names: Vec<String>,
        handler: impl Handler,
    ) -> Self {
        self.subscriptions.push(TypeSubscription {
            type_url: type_url.into(),
            initial: names.iter().cloned().collect(),
            names,
            handler: Box::new(handler),
            accepted: BTreeSet::new(),
        });
        self
    }

    /// Sends `authorization: Bearer <token>` on every stream, the token read from `token` for
    /// each connection.
    pub fn with_bearer_token(mut self, token: TokenSource) -> Self {
        self.token = Some(token);
        self
    }

    /// Replaces the reconnect backoff.
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The connection state, updated as streams open and end.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// Keeps a stream open until `shutdown` completes, reconnecting with backoff whenever it
    /// ends. Returns an error only for a client that cannot work at all.
    pub async fn run_until(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), ClientError> {
        if self.subscriptions.is_empty() {
            return Err(ClientError::NoSubscriptions);
        }
        tokio::pin!(shutdown);
        let mut attempt = 0u32;
        loop {
            let ended = tokio::select! {
                ended = self.run_connection() => ended,
                () = &mut shutdown => return Ok(()),
            };
            if ended.received_response {
                attempt = 0;
            }
            let delay = self.backoff.next_delay(attempt);
            attempt = attempt.saturating_add(1);
            warn!(
                target_uri = %self.target.describe(),
                error = %ended.error,
                retry_in_ms = delay.as_millis() as u64,
                "discovery stream ended"
            );
            self.state.send_modify(|state| {
                state.connected = false;
                state.synced = false;
                state.last_error = Some(ended.error.to_string());
            });
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = &mut shutdown => return Ok(()),
            }
        }
    }

    async fn run_connection(&mut self) -> ConnectionEnd {
        let mut received_response = false;
        let error = match self.stream(&mut received_response).await {
            Ok(never) => match never {},
            Err(error) => error,
        };
        ConnectionEnd {
            received_response,
            error,
        }
    }

    /// One connection: returns only by failing.
    async fn stream(
        &mut self,
        received_response: &mut bool,
    ) -> Result<std::convert::Infallible, ClientError> {
        let channel = match &self.target {
            Target::Channel(channel) => channel.clone(),
            Target::Endpoint(endpoint) => {
                endpoint
                    .connect()
                    .await
                    .map_err(|source| ClientError::Connect {
                        target: endpoint.uri().to_string(),
                        source,
                    })?
            }
        };
        let (requests, request_stream) = mpsc::channel(self.subscriptions.len() + 16);
        // Built before any await: the handlers are `Send` but not `Sync`.
        let subscribe_requests: Vec<DeltaDiscoveryRequest> = self
            .subscriptions
            .iter()
            .enumerate()
            .map(|(index, subscription)| DeltaDiscoveryRequest {
                node: (index == 0).then(|| self.node.clone()),
                type_url: subscription.type_url.clone(),
                resource_names_subscribe: subscription.names.clone(),
                ..DeltaDiscoveryRequest::default()
            })
            .collect();
        for request in subscribe_requests {
            requests
                .send(request)
                .await
                .map_err(|_| ClientError::RequestsClosed)?;
        }
        let mut request = tonic::Request::new(ReceiverStream::new(request_stream));
        if let Some(token) = &self.token {
            let value = token()
                .and_then(|token| {
                    format!("Bearer {token}")
                        .parse()
                        .map_err(|_| "the token is not a valid header value".to_string())
                })
                .map_err(ClientError::Credential)?;
            request.metadata_mut().insert("authorization", value);
        }
        let mut responses = AggregatedDiscoveryServiceClient::new(channel)
            .delta_aggregated_resources(request)
            .await
            .map_err(ClientError::Stream)?
            .into_inner();
        self.state.send_modify(|state| {
            state.connected = true;
            state.synced = false;
            state.connections += 1;
        });
        info!(target_uri = %self.target.describe(), node = %self.node.id, "discovery stream open");

        let mut connection = ConnectionTypes::new(&self.subscriptions);
        loop {
            let response = tokio::select! {
                response = responses.message() => response
                    .map_err(ClientError::Stream)?
                    .ok_or(ClientError::StreamClosed)?,
                Some(demand) = self.demands.recv() => {
                    if let Some(request) = self.take_demand(demand) {
                        requests
                            .send(request)
                            .await
                            .map_err(|_| ClientError::RequestsClosed)?;
                    }
                    continue;
                }
            };
            *received_response = true;
            let (reply, unresolved) = self.handle_response(&mut connection, response);
            requests
                .send(reply)
                .await
                .map_err(|_| ClientError::RequestsClosed)?;
            if let Some(unresolved) = unresolved {
                requests
                    .send(unresolved)
                    .await
                    .map_err(|_| ClientError::RequestsClosed)?;
            }
            if connection.all_synced() && !self.state.borrow().synced {
                self.state.send_modify(|state| state.synced = true);
            }
        }
    }

    /// Records a demand; the subscription request to send, unless the name is already asked
    /// for on this connection (its waiter then shares that request's answer).
    fn take_demand(&mut self, demand: DemandMessage) -> Option<DeltaDiscoveryRequest> {
        let (type_url, name, answered, watch_absent) = match demand {
            DemandMessage::Subscribe {
                type_url,
                name,
                answered,
                watch_absent,
            } => (type_url, name, answered, watch_absent),
            DemandMessage::Release { type_url, names } => return self.release(type_url, names),
        };
        let key = (type_url, name);
        if let Some(waiters) = self.pending.get_mut(&key) {
            // Waiters that gave up (their connection waited out its bound) hold no place.
            waiters.retain(|waiter| !waiter.is_closed());
            if waiters.len() >= MAX_WAITERS_PER_NAME {
                let _ = answered.send(Err(DemandError::Crowded { name: key.1 }));
                return None;
            }
            waiters.push(answered);
            if watch_absent {
                self.watching_absent.insert(key);
            }
            return None;
        }
        let (type_url, name) = key;
        let Some(subscription) = self
            .subscriptions
            .iter_mut()
            .find(|s| s.type_url == type_url && !s.names.is_empty())
        else {
            let _ = answered.send(Err(DemandError::Refused { type_url }));
            return None;
        };
        if !subscription.names.contains(&name) {
            if subscription.names.len() >= MAX_DEMANDED_NAMES {
                warn!(type_url = %type_url, %name, "too many names subscribed on demand");
                let _ = answered.send(Err(DemandError::Refused { type_url }));
                return None;
            }
            subscription.names.push(name.clone());
        }
        debug!(type_url = %type_url, %name, "subscribing on demand");
        let request = DeltaDiscoveryRequest {
            type_url: type_url.clone(),
            resource_names_subscribe: vec![name.clone()],
            ..DeltaDiscoveryRequest::default()
        };
        if watch_absent {
            self.watching_absent
                .insert((type_url.clone(), name.clone()));
        }
        self.pending.insert((type_url, name), vec![answered]);
        Some(request)
    }

    /// Drops `names` from the type's subscription, except those it was built with and those
    /// still waiting for an answer, and the resources named by them; the unsubscribe request
    /// to send, if any name goes.
    fn release(&mut self, type_url: String, names: Vec<String>) -> Option<DeltaDiscoveryRequest> {
        let subscription = self
            .subscriptions
            .iter_mut()
            .find(|s| s.type_url == type_url && !s.names.is_empty())?;
        let pending = &self.pending;
        let mut asked: std::collections::HashSet<String> = names
            .into_iter()
            .filter(|name| {
                !subscription.initial.contains(name)
                    && !pending.contains_key(&(type_url.clone(), name.clone()))
            })
            .collect();
        let mut released = Vec::new();
        subscription.names.retain(|name| {
            let goes = asked.remove(name);
            if goes {
                released.push(name.clone());
            }
            !goes
        });
        if released.is_empty() {
            return None;
        }
        // A resource unsubscribed by its own name is the client's to drop (the server forgets
        // having sent it, and sends it again if another name still covers it); what the
        // released names covered as aliases, the server removes.
        let dropped: Vec<String> = released
            .iter()
            .filter(|name| subscription.accepted.contains(*name))
            .cloned()
            .collect();
        if !dropped.is_empty() {
            let update = Update {
                added: Vec::new(),
                removed: dropped.clone(),
                full_state: false,
            };
            match subscription.handler.apply(update) {
                Ok(()) => {
                    for name in &dropped {
                        subscription.accepted.remove(name);
                    }
                }
                Err(error) => warn!(type_url = %type_url, %error, "dropping released resources"),
            }
        }
        debug!(type_url = %type_url, names = released.len(), "unsubscribing on demand");
        Some(DeltaDiscoveryRequest {
            type_url,
            resource_names_unsubscribe: released,
            ..DeltaDiscoveryRequest::default()
        })
    }

    /// Answers the demands a response settles (a name it carries, as a resource or an alias,
    /// or lists as removed); names that covered nothing are unsubscribed (the request doing
    /// so is returned), so a name asked for in vain holds no place.
    fn settle_demands(
        &mut self,
        type_url: &str,
        answers: Answers,
    ) -> Option<DeltaDiscoveryRequest> {
        let mut unresolved = Vec::new();
        let mut settle = |name: &str, found: bool| {
            let key = (type_url.to_string(), name.to_string());
            if let Some(waiters) = self.pending.remove(&key) {
                // Kept only while someone waits for the answer: a watcher that gave up
                // would never release it.
                let waited = waiters.iter().any(|waiter| !waiter.is_closed());
                for waiter in waiters {
                    let _ = waiter.send(Ok(()));
                }
                let watched = self.watching_absent.remove(&key) && waited;
                if !found && !watched {
                    unresolved.push(name.to_string());
                }
            }
        };
        for name in &answers.found {
            settle(name, true);
        }
        for name in &answers.removed {
            settle(name, false);
        }
        if unresolved.is_empty() {
            return None;
        }
        if let Some(subscription) = self
            .subscriptions
            .iter_mut()
            .find(|s| s.type_url == type_url)
        {
            subscription.names.retain(|name| !unresolved.contains(name));
        }
        Some(DeltaDiscoveryRequest {
            type_url: type_url.to_string(),
            resource_names_unsubscribe: unresolved,
            ..DeltaDiscoveryRequest::default()
        })
    }

    /// Applies one response and returns its ACK or NACK, and the request unsubscribing the
    /// demanded names it found nothing for.
    fn handle_response(
        &mut self,
        connection: &mut ConnectionTypes,
        response: DeltaDiscoveryResponse,
    ) -> (DeltaDiscoveryRequest, Option<DeltaDiscoveryRequest>) {
        let DeltaDiscoveryResponse {
            resources,
            type_url,
            removed_resources,
            nonce,
            ..
        } = response;
        let Some(index) = self
            .subscriptions
            .iter()
            .position(|subscription| subscription.type_url == type_url)
        else {
            warn!(type_url = %type_url, nonce = %nonce, "response for a type not subscribed");
            return (
                nack(type_url, nonce, "type not subscribed".to_string()),
                None,
            );
        };
        let subscription = &mut self.subscriptions[index];
        let per_type = &mut connection.types[index];
        per_type.synced = true;
        for resource in &resources {
            per_type.server_names.insert(resource.name.clone());
        }
        for name in &removed_resources {
            per_type.server_names.remove(name);
        }

        let full_state = per_type.reset_pending;
        let mut removed = removed_resources;
        if full_state {
            let vanished = subscription
                .accepted
                .iter()
                .filter(|name| !per_type.server_names.contains(*name) && !removed.contains(name))
                .cloned()
                .collect::<Vec<_>>();
            removed.extend(vanished);
        }
        let added_names: Vec<String> = resources.iter().map(|r| r.name.clone()).collect();
        let (added_count, removed_count) = (added_names.len(), removed.len());
        // What this response answers, settled once it is applied (or refused: the waiter
        // then finds nothing, as without an answer).
        let answers = (!self.pending.is_empty()).then(|| Answers::of(&resources, &removed));
        let answered_type = type_url.clone();
        let subscription = &mut self.subscriptions[index];
        let update = Update {
            added: resources,
            removed: removed.clone(),
            full_state,
        };
        let reply = match subscription.handler.apply(update) {
            Ok(()) => {
                for name in &removed {
                    subscription.accepted.remove(name);
                }
                subscription.accepted.extend(added_names);
                per_type.reset_pending = false;
                debug!(
                    type_url = %type_url,
                    nonce = %nonce,
                    added = added_count,
                    removed = removed_count,
                    full_state,
                    "applied resources"
                );
                DeltaDiscoveryRequest {
                    type_url,
                    response_nonce: nonce,
                    ..DeltaDiscoveryRequest::default()
                }
            }
            Err(message) => {
                warn!(type_url = %type_url, nonce = %nonce, error = %message, "rejected resources");
                nack(type_url, nonce, message)
            }
        };
        let unresolved = answers.and_then(|answers| self.settle_demands(&answered_type, answers));
        (reply, unresolved)
    }
}

fn nack(type_url: String, nonce: String, message: String) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url,
        response_nonce: nonce,
        error_detail: Some(rpc::Status {
            code: NACK_CODE,
            message,
            details: Vec::new(),
        }),
        ..DeltaDiscoveryRequest::default()
    }
}

struct ConnectionEnd {
    received_response: bool,
    error: ClientError,
}

/// Per-connection state of one subscribed type, in subscription order.
struct ConnectionType {
    /// Names the server has announced on this connection (accepted or not).
    server_names: BTreeSet<String>,
    /// No update accepted yet on this connection: the next accepted one settles the full state.
    reset_pending: bool,
    /// A response arrived on this connection.
    synced: bool,
}

struct ConnectionTypes {
    types: Vec<ConnectionType>,
}

impl ConnectionTypes {
    fn new(subscriptions: &[TypeSubscription]) -> Self {
        Self {
            types: subscriptions
                .iter()
                .map(|_| ConnectionType {
                    server_names: BTreeSet::new(),
                    reset_pending: true,
                    synced: false,
                })
                .collect(),
        }
    }

    fn all_synced(&self) -> bool {
        self.types.iter().all(|per_type| per_type.synced)
    }
}

#[cfg(test)]
mod tests;
