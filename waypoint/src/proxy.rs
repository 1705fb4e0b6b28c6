//! The per-request pipeline. A request arrives on a tunnel ([`TunnelContext`]: what the
//! connection knows, fixed while it is open) and gets a room of its own (`context`: the
//! tunnel, the configuration snapshot in force when it arrived, the target that snapshot makes
//! of the tunnel's `:authority`, and the record the access log and metrics are written from;
//! one snapshot load per request, in [`handle`]). Then:
//! - `pipeline`: conformance, path normalization, authorization and route selection;
//! - `actions`: what a route does besides forwarding (CORS, faults, direct responses,
//!   redirects, rewrites);
//! - `forward`: the upstream exchange (header operations, mirrors, retries, timeouts);
//! - `upgrade`: protocol upgrades (WebSocket) carried after a `101`;
//! - `request_limits`: at the edge, the whole request's deadline and its body's cap;
//! - `reply`: every answer the waypoint gives itself, typed, and the one function that turns it
//!   into status, body, `response_flags` and details.
//!
//! Decisions come from weft-policy; this module applies them to real requests.

mod actions;
mod context;
mod forward;
mod forwarded;
mod pipeline;
mod reply;
mod request_limits;
mod upgrade;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tracing::{Instrument, debug_span};
use weft_identity::SpiffeId;

use crate::metrics::{Metrics, RecordText, RequestRecord};
use crate::model::gateway::{EdgeBinding, EdgeLimits, EdgeServer};
use crate::model::{Target, WaypointConfig};
use crate::store::ConfigStore;
use crate::tcp::TcpConnections;
use crate::telemetry::DECORATOR_OPERATION;
use crate::upstream::Upstream;

pub(crate) use reply::{LocalReply, VIA_UPSTREAM, rbac_details};

use context::RequestContext;

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the waypoint sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// How much of a request body is kept for retries and mirrors (Envoy's default retry and shadow
/// buffer, its `per_connection_buffer_limit_bytes`); a larger body streams on, without them.
pub const DEFAULT_RETRY_BUFFER_LIMIT: usize = 1024 * 1024;

/// Shared by every tunnel and request.
pub struct ProxyShared {
    pub store: ConfigStore,
    pub upstream: Upstream,
    /// Connections forwarded at L4, decided again on every configuration applied.
    pub tcp_connections: TcpConnections,
    pub metrics: Arc<Metrics>,
    /// Where sampled requests' spans are queued for export.
    pub spans: Arc<crate::telemetry::SpanExporter>,
    pub retry_buffer_limit: usize,
    /// Protocol upgrades forwarded, lower case (see [`crate::conformance`]).
    pub upgrades: Vec<String>,
    /// The token buckets of routes' local rate limits, kept across configurations.
    pub rate_limiter: crate::rate_limit::RateLimiter,
}

impl std::fmt::Debug for ProxyShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyShared").finish_non_exhaustive()
    }
}

/// What is known about the tunnel a request arrived on: what cannot change while it is open.
/// What its destination is (a service and its routes, or a workload) is configuration, looked
/// up again for every request (see [`handle`]).
#[derive(Debug, Clone)]
pub struct TunnelContext {
    /// Verified SPIFFE identity of the HBONE client.
    pub peer: Option<SpiffeId>,
    /// `peer` as the records of the connection's requests name it, written once for them all.
    pub peer_names: Option<PeerNames>,
    /// The client's address: the HBONE peer's (agents connect from inside the client's pod).
    /// A `forwarded: for=` claim is not believed.
    pub source_ip: IpAddr,
    /// The HBONE peer's socket address.
    pub peer_address: SocketAddr,
    /// The CONNECT `:authority`; at the edge, the listener's own address.
    pub destination: SocketAddr,
    /// `peer_address` and `destination` as the upstream takes them (a PROXY header's).
    pub downstream: crate::upstream::Downstream,
    /// Set for a connection a gateway listener accepted: its port, server and SNI, which name
    /// its route tables instead of `destination`.
    pub edge: Option<EdgeBinding>,
}

/// A peer identity's text for records and labels: its `spiffe://` principal and namespace.
#[derive(Debug, Clone)]
pub struct PeerNames {
    pub principal: Arc<str>,
    pub namespace: Arc<str>,
}

impl PeerNames {
    pub fn of(identity: &SpiffeId) -> Self {
        PeerNames {
            principal: Arc::from(identity.to_string()),
            namespace: Arc::from(identity.namespace()),
        }
    }
}

impl TunnelContext {
    /// A connection from `peer_address`, authenticated as `peer` when it is, to `destination`.
    pub fn new(
        peer: Option<SpiffeId>,
        peer_address: SocketAddr,
        destination: SocketAddr,
        edge: Option<EdgeBinding>,
    ) -> Self {
        TunnelContext {
            peer_names: peer.as_ref().map(PeerNames::of),
            peer,
            source_ip: peer_address.ip(),
            peer_address,
            destination,
            downstream: crate::upstream::Downstream::new(peer_address, destination),
            edge,
        }
    }

    /// This connection, its client authenticated as `identity`.
    pub fn with_peer(&self, identity: SpiffeId) -> Self {
        TunnelContext {
            peer_names: Some(PeerNames::of(&identity)),
            peer: Some(identity),
            ..self.clone()
        }
    }

    /// What `config` makes of this connection: the service or workload its `:authority` names
    /// or, at the edge, the route table of its server for `host` (a request's Host; `None` for
    /// a connection carried at L4).
    pub fn target<'c>(&self, config: &'c WaypointConfig, host: Option<&str>) -> Option<Target<'c>> {
        match &self.edge {
            None => config.target_for(self.destination),
            Some(edge) => self.edge_server(config)?.target(edge.sni.as_deref(), host),
        }
    }

    /// At the edge, the connection's server in `config`.
    pub fn edge_server<'c>(&self, config: &'c WaypointConfig) -> Option<&'c EdgeServer> {
        self.edge.as_ref()?.server_in(config.gateway.as_ref()?)
    }

    /// At the edge, the limits of the connection's server in `config`.
    pub fn edge_limits<'c>(&self, config: &'c WaypointConfig) -> Option<&'c EdgeLimits> {
        self.edge_server(config).map(|server| &server.limits)
    }

    /// Whether `config` still serves this connection: its destination, or its edge server.
    pub fn still_served(&self, config: &WaypointConfig) -> bool {
        match &self.edge {
            None => config.target_for(self.destination).is_some(),
            Some(_) => self.edge_server(config).is_some(),
        }
    }

    /// The gateway proxy as the source of what it sends into the mesh.
    pub fn edge_source(config: &WaypointConfig) -> crate::metrics::Peer {
        let namespace = match &config.gateway {
            Some(gateway) => RecordText::Shared(Arc::clone(&gateway.namespace)),
            None => RecordText::Owned(config.namespace.clone()),
        };
        crate::metrics::Peer {
            workload: config.gateway.as_ref().and_then(|g| g.workload.clone()),
            principal: None,
            namespace: Some(namespace),
        }
    }
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Serves one request that arrived on a tunnel. Never fails: every error becomes a response.
pub async fn handle(
    shared: Arc<ProxyShared>,
    tunnel: Arc<TunnelContext>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Configuration is read per request: a route, policy or cluster change reaches the next
    // request of a keep-alive connection, as in Envoy.
    let config = shared.store.snapshot();
    // At the edge, the connection's server, found once for the request: its routes, its
    // limits and its redirect.
    let edge_server = tunnel.edge_server(&config);
    let target = match (&tunnel.edge, edge_server) {
        (None, _) => config.target_for(tunnel.destination),
        (Some(edge), Some(server)) => {
            server.target(edge.sni.as_deref(), Some(context::authority_of(&request)))
        }
        (Some(_), None) => None,
    };
    let mut record = RequestRecord::new(Arc::clone(&shared.metrics));
    if tunnel.edge.is_some() {
        // A client's name for the next proxy's span never passes the edge, traced or not:
        // Envoy cleans `x-envoy-*` headers off a request from an external client.
        request.headers_mut().remove(DECORATOR_OPERATION);
    }
    // The service the request is addressed to decides, with the configuration in force for
    // this request: a Telemetry change reaches established connections.
    let telemetry = config.telemetry_for(target.as_ref());
    record.access_log_disabled = telemetry.access_log_disabled;
    if let Some(logs) = telemetry
        .access_logs
        .as_ref()
        .filter(|_| !record.access_log_disabled)
    {
        record.set_access_logs(logs, request.headers());
    }
    if let Some(overrides) = telemetry.metrics.as_ref().filter(|o| o.changes_requests()) {
        record.set_metric_overrides(overrides, request.headers());
    }
    context::describe_request(&mut record, &config, &tunnel, target.as_ref(), &request);
    if let Some(tracing) = &telemetry.tracing {
        record.span = Some(crate::telemetry::RequestSpan::start(
            tracing,
            request.headers_mut(),
            &shared.spans,
            rand::random(),
        ));
    }
    if tunnel.edge.is_some() {
        // A gateway reports what it sends into the mesh as its source, as Istio's gateways do;
        // the destination service is the one the route chooses.
        record.at_edge = true;
        record.destination_service = None;
        record.source = TunnelContext::edge_source(&config);
        if let Some(redirect) = edge_server.and_then(|server| edge_https_redirect(server, &record))
        {
            let response = redirect.respond(&mut record);
            return Ok(context::finish(response, record));
        }
    }
    let Some(target) = target else {
        if tunnel.edge.is_some() {
            // No virtual host for this Host: Envoy's 404 `NR`.
            let response = LocalReply::RouteNotFound.respond(&mut record);
            return Ok(context::finish(response, record));
        }
        // Its service stopped using the waypoint while the connection was open; the listener
        // also drains such connections as soon as the configuration changes.
        let reply = LocalReply::NotServed {
            close_connection: request.version() < http::Version::HTTP_2,
        };
        let response = reply.respond(&mut record);
        return Ok(context::finish(response, record));
    };
    let span = debug_span!("request", method = %request.method(), path = %record.path, request_id = %record.request_id);
    let mut context = RequestContext::new(&shared, &config, &tunnel, target, record);
    if let Some(server) = edge_server {
        context.edge_limits = server.limits;
    }
    let response = pipeline::run(&mut context, request).instrument(span).await;
    Ok(context.finish(response))
}

/// A request to an HTTP server with `httpsRedirect`: answered 301 to `https://` with the same
/// Host and path, as Envoy answers for Istio's `require_tls` virtual hosts, before routing.
fn edge_https_redirect(server: &EdgeServer, record: &RequestRecord) -> Option<LocalReply> {
    if server.is_tls() || !server.tls.as_ref().is_some_and(|t| t.https_redirect) {
        return None;
    }
    let location = format!("https://{}{}", record.authority, record.path);
    Some(LocalReply::Redirect {
        status: http::StatusCode::MOVED_PERMANENTLY,
        location: http::HeaderValue::from_str(&location).ok(),
    })
}
