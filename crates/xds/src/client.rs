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

use tokio::sync::{mpsc, watch};
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

mod demand;

use demand::{Answers, DemandMessage, PendingDemands};
pub use demand::{Demand, DemandError};

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
