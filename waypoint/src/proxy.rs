//! The per-request pipeline: authorization, route selection, then the route's actions (CORS,
//! faults, direct responses, redirects, rewrites, header operations, mirrors, weighted
//! destinations, retries and timeouts) and the upstream exchange. Decisions come from
//! weft-policy; this module applies them to real requests.

use std::borrow::Cow;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use tracing::{Instrument, debug, debug_span, warn};
use weft_identity::SpiffeId;
use weft_policy::l7::{HttpAuthzRequest, evaluate_http};
use weft_policy::path::normalize_path;
use weft_policy::route::{HeaderSource, RequestView, percentage_hit, pick_weighted, select_route};
use weft_policy::{ACCESS_DENIED_BODY, ACCESS_DENIED_STATUS, Decision, DenyReason};

use crate::metrics::{Metrics, Peer, RequestRecord, ResponseFlag};
use crate::model::{
    AbortKind, Cluster, CorsPolicy, Endpoint, Fault, HeaderOps, Redirect, RedirectPort, RetryOn,
    RetryPolicy, Rewrite, Route, RouteAction, Target, WaypointConfig, WeightedDestination,
};
use crate::store::ConfigStore;
use crate::tcp::TcpConnections;
use crate::upstream::{HashInput, Upstream, UpstreamError};

/// Error type of response bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body of every response the waypoint sends.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Largest request body buffered for retries and mirrors; larger bodies get 413.
pub const DEFAULT_MAX_REQUEST_BODY: usize = 16 * 1024 * 1024;
/// Envoy's default base interval between retries.
const RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Shared by every tunnel and request.
pub struct ProxyShared {
    pub store: ConfigStore,
    pub upstream: Upstream,
    /// Connections forwarded at L4, decided again on every configuration applied.
    pub tcp_connections: TcpConnections,
    pub metrics: Arc<Metrics>,
    pub max_request_body: usize,
    /// Protocol upgrades forwarded, lower case (see [`crate::conformance`]).
    pub upgrades: Vec<String>,
}

impl std::fmt::Debug for ProxyShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyShared").finish_non_exhaustive()
    }
}

/// What is known about the tunnel a request arrived on: what cannot change while it is open.
/// What its destination is (a service and its routes, or a workload) is configuration, looked
/// up again for every request ([`Tunnel`]).
#[derive(Debug, Clone)]
pub struct TunnelContext {
    /// Verified SPIFFE identity of the HBONE client.
    pub peer: Option<SpiffeId>,
    /// The client's address: the HBONE peer's (agents connect from inside the client's pod).
    /// A `forwarded: for=` claim is not believed.
    pub source_ip: IpAddr,
    /// The HBONE peer's socket address.
    pub peer_address: SocketAddr,
    /// The CONNECT `:authority`.
    pub destination: SocketAddr,
}

/// A request's view of its tunnel: the connection, and what the configuration in force when
/// the request arrived makes of the connection's `:authority`.
pub struct Tunnel<'a> {
    connection: &'a TunnelContext,
    pub target: Target<'a>,
}

impl std::ops::Deref for Tunnel<'_> {
    type Target = TunnelContext;

    fn deref(&self) -> &TunnelContext {
        self.connection
    }
}

struct HeaderMapSource<'a>(&'a HeaderMap);

impl HeaderSource for HeaderMapSource<'_> {
    fn header(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        let mut values = self
            .0
            .get_all(lowercase_name)
            .iter()
            .filter_map(|v| v.to_str().ok());
        let first = values.next()?;
        let rest: Vec<&str> = values.collect();
        if rest.is_empty() {
            Some(Cow::Borrowed(first))
        } else {
            let mut joined = first.to_owned();
            for v in rest {
                joined.push(',');
                joined.push_str(v);
            }
            Some(Cow::Owned(joined))
        }
    }
}

fn full(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

fn text_response(status: StatusCode, body: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    if !body.is_empty() {
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    }
    response
}

/// A response body that counts the bytes sent and releases the request's record (access log
/// and metrics) when the body ends or is dropped.
struct RecordedBody {
    inner: ProxyBody,
    record: Option<RequestRecord>,
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(record)) = (frame.data_ref(), self.record.as_mut()) {
                    record.bytes_sent += data.len() as u64;
                }
                if let (Some(trailers), Some(record)) = (frame.trailers_ref(), self.record.as_mut())
                    && let Some(status) = trailers.get(&GRPC_STATUS).and_then(|v| v.to_str().ok())
                {
                    record.grpc_status = Some(status.to_owned());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                self.record = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn finish(mut response: Response<ProxyBody>, mut record: RequestRecord) -> Response<ProxyBody> {
    record.status = response.status().as_u16();
    if let Some(grpc) = response
        .headers()
        .get(&GRPC_STATUS)
        .and_then(|v| v.to_str().ok())
    {
        record.grpc_status = Some(grpc.to_owned());
    }
    let body = std::mem::replace(response.body_mut(), full(Bytes::new()));
    if body.is_end_stream() {
        drop(record);
        *response.body_mut() = body;
        return response;
    }
    *response.body_mut() = RecordedBody {
        inner: body,
        record: Some(record),
    }
    .boxed();
    response
}

/// A random UUID v4 for `x-request-id`.
fn request_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-{:x}{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        8 | (bytes[8] & 0x3),
        &hex[17..20],
        &hex[20..32]
    )
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "http2-settings",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        // `te: trailers` is allowed (and needed by gRPC) over HTTP/2.
        if name == "te"
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        headers.remove(name);
    }
}

fn is_upgrade(request: &Request<Incoming>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Serves one request that arrived on a tunnel. Never fails: every error becomes a response.
pub async fn handle(
    shared: Arc<ProxyShared>,
    tunnel: Arc<TunnelContext>,
    request: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    // Configuration is read per request: a route, policy or cluster change reaches the next
    // request of a keep-alive connection, as in Envoy.
    let config = shared.store.snapshot();
    let target = config.target_for(tunnel.destination);
    let mut record = RequestRecord::new(Arc::clone(&shared.metrics));
    describe_request(&mut record, &config, &tunnel, target.as_ref(), &request);
    let Some(target) = target else {
        return Ok(finish(not_served(&request, &mut record), record));
    };
    let tunnel = Tunnel {
        connection: &tunnel,
        target,
    };
    let span = debug_span!("request", method = %request.method(), path = %record.path, request_id = %record.request_id);
    let response = pipeline(&shared, &config, &tunnel, request, &mut record)
        .instrument(span)
        .await;
    Ok(finish(response, record))
}

/// The answer to a request whose tunnel's destination this waypoint no longer serves (its
/// service stopped using the waypoint while the connection was open): 503, and the connection
/// closes after it (the listener also drains such connections as soon as the configuration
/// changes), so that the client's agent carries the next connection without the waypoint.
fn not_served(request: &Request<Incoming>, record: &mut RequestRecord) -> Response<ProxyBody> {
    record.response_flags = ResponseFlag::NoRoute;
    record.response_code_details = "filter_chain_not_found".to_owned();
    let mut response = text_response(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream");
    if request.version() < Version::HTTP_2 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

fn describe_request(
    record: &mut RequestRecord,
    config: &WaypointConfig,
    tunnel: &TunnelContext,
    target: Option<&Target<'_>>,
    request: &Request<Incoming>,
) {
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    record.method = request.method().to_string();
    record.path = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    record.protocol = match request.version() {
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    record.authority = authority_of(request).to_owned();
    record.request_id = header("x-request-id");
    record.user_agent = header("user-agent");
    record.forwarded_for = header("x-forwarded-for");
    record.mtls = tunnel.peer.is_some();
    record.source = Peer {
        workload: config.workload(tunnel.source_ip).cloned(),
        principal: tunnel.peer.as_ref().map(ToString::to_string),
        namespace: tunnel.peer.as_ref().map(|p| p.namespace().to_owned()),
    };
    // A workload addressed directly was not addressed through a service: its service labels
    // stay unknown, its workload labels come from the endpoint.
    if let Some(Target::Service(target)) = target {
        let service = target.service;
        record.destination_service = Some((
            service.hostname.clone(),
            service.name.clone(),
            service.namespace.clone(),
        ));
    }
    record.destination.namespace = target.map(|t| t.namespace().to_owned());
    record.downstream_local = tunnel.destination.to_string();
    record.downstream_remote = tunnel.peer_address.to_string();
    if let Some(length) = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        record.bytes_received = length;
    }
}

fn authority_of(request: &Request<Incoming>) -> &str {
    request
        .uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            request
                .headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
        })
        .unwrap_or_default()
}

async fn pipeline(
    shared: &ProxyShared,
    config: &WaypointConfig,
    tunnel: &Tunnel<'_>,
    mut request: Request<Incoming>,
    record: &mut RequestRecord,
) -> Response<ProxyBody> {
    if let Err(refusal) = crate::conformance::admit(&mut request, &shared.upgrades) {
        debug!(%refusal, "request refused before routing");
        let (status, body, details) = refusal.reply();
        record.response_code_details = details.to_owned();
        return text_response(status, body);
    }
    if record.request_id.is_empty() {
        record.request_id = request_id();
        if let Ok(value) = HeaderValue::from_str(&record.request_id) {
            request.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
    }
    let raw_path = record.path.clone();
    let Ok(normalized) = normalize_path(&raw_path) else {
        record.response_code_details = "invalid_path".to_owned();
        return text_response(StatusCode::BAD_REQUEST, "Bad Request");
    };
    let query = raw_path
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q));
    let authority = authority_of(&request).to_owned();
    let peer_identity = tunnel.peer.as_ref();
    let source_workload = config.workload(tunnel.source_ip).cloned();
    let method = request.method().as_str().to_owned();
    let (decision, selection) = {
        let headers = HeaderMapSource(request.headers());
        let view = RequestView {
            method: &method,
            scheme: "http",
            authority: &authority,
            path: &normalized,
            query,
            headers: &headers,
            port: tunnel.target.port(),
            source_labels: source_workload.as_ref().map(|w| &w.labels),
            source_namespace: peer_identity.map(SpiffeId::namespace),
        };
        let authz = HttpAuthzRequest {
            request: view,
            source_identity: peer_identity,
            source_ip: tunnel.source_ip,
            remote_ip: tunnel.source_ip,
            destination_ip: tunnel.destination.ip(),
            sni: None,
        };
        let selection = match tunnel.target {
            Target::Service(target) => select_route(&target.service.route_matches, &view),
            // Routing belongs to services: a workload addressed directly gets no route.
            Target::Workload(_) => None,
        };
        (
            evaluate_http(config.policies_for(&tunnel.target), &authz),
            selection,
        )
    };
    match decision {
        Decision::Allow => {}
        Decision::Deny(DenyReason::InvalidPath) => {
            record.response_code_details = "invalid_path".to_owned();
            return text_response(StatusCode::BAD_REQUEST, "Bad Request");
        }
        Decision::Deny(reason) => {
            debug!(%reason, "request denied");
            record.response_code_details = match &reason {
                DenyReason::DeniedBy(policy) => {
                    format!(
                        "rbac_access_denied_matched_policy[ns[{}]-policy[{}]-rule[0]]",
                        policy.namespace, policy.name
                    )
                }
                _ => "rbac_access_denied_matched_policy[none]".to_owned(),
            };
            let status =
                StatusCode::from_u16(ACCESS_DENIED_STATUS).unwrap_or(StatusCode::FORBIDDEN);
            return text_response(status, ACCESS_DENIED_BODY);
        }
    }
    let hash_query = query.map(str::to_owned);

    let service = match tunnel.target {
        Target::Service(target) => target.service,
        Target::Workload(target) => {
            // Exactly the address the client asked for, as Istio's waypoint carries
            // workload-addressed traffic: no VirtualService, no retries (an inbound route).
            let cluster = Arc::new(target.cluster());
            let (route, destination) = direct_route(&cluster);
            return forward_to(
                shared,
                config,
                tunnel,
                request,
                record,
                (&route, &destination, cluster),
                None,
                &normalized,
                hash_query.as_deref(),
            )
            .await;
        }
    };

    let (route, match_uri) = match selection {
        Some(selection) => {
            let route = &service.http_routes[selection.route_index];
            let uri = selection.match_index.and_then(|i| {
                service.route_matches[selection.route_index].matches[i]
                    .uri
                    .clone()
            });
            (Some(route), uri)
        }
        None => (None, None),
    };
    let Some(route) = route else {
        // No route: plain service routing to any endpoint of the service.
        let Some(cluster) = config.default_cluster(&service.hostname, tunnel.target.port()) else {
            record.response_flags = ResponseFlag::NoRoute;
            record.response_code_details = "route_not_found".to_owned();
            return text_response(StatusCode::NOT_FOUND, "");
        };
        let destination = WeightedDestination {
            cluster: cluster.name.clone(),
            host: service.hostname.clone(),
            weight: 0,
            headers: Default::default(),
        };
        let default_route = Route {
            name: Some("default".to_owned()),
            action: RouteAction::Forward(vec![destination]),
            rewrite: None,
            timeout: None,
            retries: RetryPolicy::mesh_default(),
            fault: None,
            mirrors: Vec::new(),
            cors: None,
            headers: Default::default(),
            virtual_service: String::new(),
        };
        return forward(
            shared,
            config,
            tunnel,
            request,
            record,
            &default_route,
            None,
            &normalized,
            hash_query.as_deref(),
        )
        .await;
    };
    record.route_name = route.name.clone();

    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let (Some(cors), Some(origin)) = (&route.cors, &origin)
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        && cors.origin_allowed(origin)
    {
        record.response_code_details = "cors_response".to_owned();
        return cors_preflight(cors, origin);
    }

    if let Some(fault) = &route.fault
        && let Some(response) = apply_fault(fault, record).await
    {
        return response;
    }

    let mut response = match &route.action {
        RouteAction::DirectResponse { status, body } => {
            record.response_code_details = "direct_response".to_owned();
            let mut response = Response::new(full(body.clone()));
            *response.status_mut() = *status;
            response
        }
        RouteAction::Redirect(redirect) => {
            record.response_code_details = "redirect".to_owned();
            redirect_response(redirect, &authority, &raw_path, tunnel.target.port())
        }
        RouteAction::Forward(_) => {
            forward(
                shared,
                config,
                tunnel,
                request,
                record,
                route,
                match_uri.as_ref(),
                &normalized,
                hash_query.as_deref(),
            )
            .await
        }
    };
    route.headers.response.apply(response.headers_mut());
    if let (Some(cors), Some(origin)) = (&route.cors, &origin)
        && cors.origin_allowed(origin)
    {
        add_cors_headers(cors, origin, response.headers_mut());
    }
    response
}

/// The route of a workload addressed directly: to its one-endpoint cluster, nothing else.
fn direct_route(cluster: &Cluster) -> (Route, WeightedDestination) {
    let destination = WeightedDestination {
        cluster: cluster.name.clone(),
        host: cluster.host.clone(),
        weight: 0,
        headers: Default::default(),
    };
    let route = Route {
        name: None,
        action: RouteAction::Forward(vec![destination.clone()]),
        rewrite: None,
        timeout: None,
        retries: RetryPolicy {
            attempts: 0,
            per_try_timeout: None,
            on: RetryOn::default(),
        },
        fault: None,
        mirrors: Vec::new(),
        cors: None,
        headers: Default::default(),
        virtual_service: String::new(),
    };
    (route, destination)
}

fn cors_preflight(cors: &CorsPolicy, origin: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    add_cors_headers(cors, origin, headers);
    let mut set = |name: HeaderName, value: &str| {
        if !value.is_empty()
            && let Ok(v) = HeaderValue::from_str(value)
        {
            headers.insert(name, v);
        }
    };
    set(header::ACCESS_CONTROL_ALLOW_METHODS, &cors.allow_methods);
    set(header::ACCESS_CONTROL_ALLOW_HEADERS, &cors.allow_headers);
    if let Some(max_age) = cors.max_age {
        set(
            header::ACCESS_CONTROL_MAX_AGE,
            &max_age.as_secs().to_string(),
        );
    }
    response
}

fn add_cors_headers(cors: &CorsPolicy, origin: &str, headers: &mut HeaderMap) {
    if let Ok(v) = HeaderValue::from_str(origin) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
    }
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    if !cors.expose_headers.is_empty()
        && let Ok(v) = HeaderValue::from_str(&cors.expose_headers)
    {
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, v);
    }
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

async fn apply_fault(fault: &Fault, record: &mut RequestRecord) -> Option<Response<ProxyBody>> {
    if let Some((delay, percent)) = fault.delay
        && percentage_hit(percent, rand::random())
    {
        record.response_flags = ResponseFlag::DelayInjected;
        tokio::time::sleep(delay).await;
    }
    let (kind, percent) = fault.abort.as_ref()?;
    if !percentage_hit(*percent, rand::random()) {
        return None;
    }
    record.response_flags = ResponseFlag::FaultInjected;
    record.response_code_details = "fault_filter_abort".to_owned();
    Some(match kind {
        AbortKind::Http(status) => text_response(*status, "fault filter abort"),
        AbortKind::Grpc(code) => {
            let mut response = Response::new(full(Bytes::new()));
            let headers = response.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            if let Ok(v) = HeaderValue::from_str(&code.to_string()) {
                headers.insert(GRPC_STATUS.clone(), v);
            }
            response
        }
    })
}

fn redirect_response(
    redirect: &Redirect,
    authority: &str,
    raw_path: &str,
    request_port: u16,
) -> Response<ProxyBody> {
    let scheme = redirect.scheme.as_deref().unwrap_or("http");
    let (host, original_port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() && !h.ends_with(']') || h.contains(']') => {
            (h.to_owned(), Some(p.to_owned()))
        }
        _ => (authority.to_owned(), None),
    };
    let host = redirect.authority.clone().unwrap_or(host);
    let port = match redirect.port {
        RedirectPort::Explicit(p) => Some(p.to_string()),
        RedirectPort::FromRequest => {
            Some(original_port.unwrap_or_else(|| request_port.to_string()))
        }
        RedirectPort::SchemeDefault => None,
    };
    let path = redirect.uri.clone().unwrap_or_else(|| raw_path.to_owned());
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = redirect.status;
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    response
}

/// The path after the route's rewrite; `matched_uri` is the uri match that selected the route.
fn rewrite_path(
    rewrite: &Rewrite,
    matched_uri: Option<&weft_policy::StringMatch>,
    path: &str,
) -> String {
    if let Some((regex, replacement)) = &rewrite.uri_regex {
        return regex.replace_all(path, replacement.as_str()).into_owned();
    }
    let Some(replacement) = &rewrite.uri else {
        return path.to_owned();
    };
    match matched_uri {
        Some(weft_policy::StringMatch::Prefix(prefix)) if path.starts_with(prefix.as_str()) => {
            format!("{replacement}{}", &path[prefix.len()..])
        }
        Some(weft_policy::StringMatch::Exact(_)) => replacement.clone(),
        // istiod rewrites the whole path for regex matches and a "/" prefix for no match.
        Some(_) => replacement.clone(),
        None => format!("{replacement}{}", path.strip_prefix('/').unwrap_or(path)),
    }
}

/// The request sent upstream, before per-attempt details.
struct Outgoing {
    method: Method,
    path_and_query: String,
    authority: String,
    headers: HeaderMap,
    body: Bytes,
    http2: bool,
}

impl Outgoing {
    fn build(&self, authority_suffix: &str) -> Request<Full<Bytes>> {
        let authority = format!("{}{authority_suffix}", self.authority);
        let uri = if self.http2 {
            Uri::builder()
                .scheme("http")
                .authority(authority.as_str())
                .path_and_query(self.path_and_query.as_str())
                .build()
        } else {
            Uri::builder()
                .path_and_query(self.path_and_query.as_str())
                .build()
        };
        let mut request = Request::new(Full::new(self.body.clone()));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
        *request.headers_mut() = self.headers.clone();
        if self.http2 {
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
        } else if let Ok(host) = HeaderValue::from_str(&authority) {
            request.headers_mut().insert(header::HOST, host);
        }
        request
    }
}

fn hash_input<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    source_ip: IpAddr,
) -> HashInput<'a> {
    HashInput {
        headers,
        query,
        source_ip,
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &ProxyShared,
    config: &WaypointConfig,
    tunnel: &Tunnel<'_>,
    request: Request<Incoming>,
    record: &mut RequestRecord,
    route: &Route,
    matched_uri: Option<&weft_policy::StringMatch>,
    normalized_path: &str,
    query: Option<&str>,
) -> Response<ProxyBody> {
    let RouteAction::Forward(destinations) = &route.action else {
        return text_response(StatusCode::INTERNAL_SERVER_ERROR, "");
    };
    let weights: Vec<u32> = destinations.iter().map(|d| d.weight).collect();
    let Some(destination) =
        pick_weighted(&weights, rand::random()).and_then(|i| destinations.get(i))
    else {
        record.response_flags = ResponseFlag::NoRoute;
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "no destination");
    };
    let Some(cluster) = config.cluster(&destination.cluster).cloned() else {
        // The route names a cluster that does not exist (an undefined subset, host or port):
        // Envoy's answer, 503 with no body.
        record.response_flags = ResponseFlag::NoCluster;
        record.response_code_details = "cluster_not_found".to_owned();
        return text_response(StatusCode::SERVICE_UNAVAILABLE, "");
    };
    forward_to(
        shared,
        config,
        tunnel,
        request,
        record,
        (route, destination, cluster),
        matched_uri,
        normalized_path,
        query,
    )
    .await
}

/// Sends the request to `cluster` (the destination the route picked): rewrites and header
/// operations, mirrors, then the attempts under the route's retries and timeout.
#[allow(clippy::too_many_arguments)]
async fn forward_to(
    shared: &ProxyShared,
    config: &WaypointConfig,
    tunnel: &Tunnel<'_>,
    request: Request<Incoming>,
    record: &mut RequestRecord,
    (route, destination, cluster): (&Route, &WeightedDestination, Arc<Cluster>),
    matched_uri: Option<&weft_policy::StringMatch>,
    normalized_path: &str,
    query: Option<&str>,
) -> Response<ProxyBody> {
    record.upstream_cluster = Some(cluster.name.clone());

    let upgrade = is_upgrade(&request);
    let mut authority = authority_of(&request).to_owned();
    let http2 = !upgrade
        && (request.version() == Version::HTTP_2
            || matches!(
                tunnel.target.protocol(),
                crate::model::Protocol::Http2 | crate::model::Protocol::Grpc
            ));
    let (parts, body) = request.into_parts();
    let mut headers = parts.headers.clone();
    let upgrade_headers = upgrade.then(|| {
        (
            headers.get(header::CONNECTION).cloned(),
            headers.get(header::UPGRADE).cloned(),
        )
    });
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    append_forwarded_for(&mut headers, tunnel.source_ip);
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    route.headers.request.apply(&mut headers);
    destination.headers.request.apply(&mut headers);
    let mut path = normalized_path.to_owned();
    if let Some(rewrite) = &route.rewrite {
        path = rewrite_path(rewrite, matched_uri, &path);
        if let Some(new_authority) = rewrite.authority.as_ref().and_then(|a| a.to_str().ok()) {
            authority = new_authority.to_owned();
        }
    }
    let path_and_query = match query {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };

    if let Some((connection, upgrade_value)) = upgrade_headers {
        let outgoing = Outgoing {
            method: parts.method.clone(),
            path_and_query,
            authority,
            headers,
            body: Bytes::new(),
            http2: false,
        };
        let downstream = Request::from_parts(parts, body);
        return forward_upgrade(
            shared,
            tunnel,
            record,
            &cluster,
            outgoing,
            downstream,
            connection,
            upgrade_value,
            &destination.headers.response,
        )
        .await;
    }

    let body = match Limited::new(body, shared.max_request_body).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                return text_response(StatusCode::PAYLOAD_TOO_LARGE, "payload too large");
            }
            record.response_flags = ResponseFlag::DownstreamTerminated;
            return text_response(StatusCode::BAD_REQUEST, "");
        }
    };
    record.bytes_received = body.len() as u64;
    let outgoing = Outgoing {
        method: parts.method,
        path_and_query,
        authority,
        headers,
        body,
        http2,
    };

    for mirror in &route.mirrors {
        if !percentage_hit(mirror.percent, rand::random()) {
            continue;
        }
        let Some(mirror_cluster) = config.cluster(&mirror.cluster).cloned() else {
            continue;
        };
        let request = outgoing.build("-shadow");
        let upstream = shared.upstream.clone();
        let headers = outgoing.headers.clone();
        let source = tunnel.source_ip;
        let query = query.map(str::to_owned);
        tokio::spawn(
            async move {
                let hash = hash_input(&headers, query.as_deref(), source);
                let Ok(endpoint) = upstream.choose_endpoint(&mirror_cluster, &hash, &[]) else {
                    return;
                };
                match upstream
                    .send(&mirror_cluster, &endpoint, request, http2, source)
                    .await
                {
                    // The mirror's answer is read and discarded so the connection is reusable.
                    Ok(response) => drop(response.into_body().collect().await),
                    Err(error) => debug!(%error, "mirror request failed"),
                }
            }
            .instrument(debug_span!("mirror", cluster = %mirror.cluster)),
        );
    }

    let attempts = send_with_retries(
        shared,
        tunnel,
        record,
        &cluster,
        &outgoing,
        &route.retries,
        query,
    );
    let result = match route.timeout {
        Some(limit) => match tokio::time::timeout(limit, attempts).await {
            Ok(result) => result,
            Err(_) => {
                record.response_flags = ResponseFlag::UpstreamTimeout;
                record.response_code_details = "upstream_response_timeout".to_owned();
                return text_response(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout");
            }
        },
        None => attempts.await,
    };
    let mut response = match result {
        Ok(response) => response,
        Err(response) => return response,
    };
    destination.headers.response.apply(response.headers_mut());
    response
}

fn append_forwarded_for(headers: &mut HeaderMap, source: IpAddr) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {source}"),
        None => source.to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

fn error_response(error: &UpstreamError, record: &mut RequestRecord) -> Response<ProxyBody> {
    record.response_flags = error.response_flag();
    let (status, body, details) = match error {
        UpstreamError::NoHealthyUpstream(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no healthy upstream",
            "no_healthy_upstream",
        ),
        UpstreamError::Overflow(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: overflow",
            "upstream_reset_before_response_started{overflow}",
        ),
        UpstreamError::ConnectFailure { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            "upstream_reset_before_response_started{connection_failure}",
        ),
        UpstreamError::RefusedStream { .. } | UpstreamError::Reset { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            "upstream_reset_before_response_started{connection_termination}",
        ),
    };
    record.response_code_details = details.to_owned();
    text_response(status, body)
}

fn error_retriable(error: &UpstreamError, policy: &RetryPolicy) -> bool {
    let on = &policy.on;
    match error {
        UpstreamError::ConnectFailure { .. } => {
            on.connect_failure || on.five_xx || on.gateway_error || on.reset
        }
        UpstreamError::RefusedStream { .. } => on.refused_stream || on.five_xx || on.reset,
        UpstreamError::Reset { .. } => on.reset || on.five_xx,
        UpstreamError::NoHealthyUpstream(_) | UpstreamError::Overflow(_) => false,
    }
}

/// Tries the request up to `1 + attempts` times, each on a fresh endpoint choice.
async fn send_with_retries(
    shared: &ProxyShared,
    tunnel: &TunnelContext,
    record: &mut RequestRecord,
    cluster: &Arc<Cluster>,
    outgoing: &Outgoing,
    policy: &RetryPolicy,
    query: Option<&str>,
) -> Result<Response<ProxyBody>, Response<ProxyBody>> {
    let upstream = &shared.upstream;
    let _admission = match upstream.admit(cluster).await {
        Ok(a) => a,
        Err(error) => return Err(error_response(&error, record)),
    };
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut attempt: u32 = 0;
    let mut retry_permit = None;
    loop {
        let hash = hash_input(&outgoing.headers, query, tunnel.source_ip);
        let endpoint: Endpoint = match upstream.choose_endpoint(cluster, &hash, &tried) {
            Ok(e) => e,
            Err(error) => return Err(error_response(&error, record)),
        };
        tried.push(endpoint.address);
        record.upstream_host = Some(endpoint.address.to_string());
        record.destination.workload = Some(Arc::clone(&endpoint.workload));
        record.destination.principal = endpoint.identity.as_ref().map(ToString::to_string);
        let send = upstream.send(
            cluster,
            &endpoint,
            outgoing.build(""),
            outgoing.http2,
            tunnel.source_ip,
        );
        let outcome = match policy.per_try_timeout {
            Some(limit) => tokio::time::timeout(limit, send).await.ok(),
            None => Some(send.await),
        };
        let can_retry = attempt < policy.attempts;
        match outcome {
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                upstream.record_outcome(cluster, endpoint.address, Some(status));
                let grpc = response
                    .headers()
                    .get(&GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                if can_retry
                    && policy.on.status_retriable(status, grpc)
                    && let Some(permit) = upstream.retry_permit(cluster)
                {
                    retry_permit = Some(permit);
                    debug!(status, attempt, "retrying after a retriable status");
                    drop(response);
                    attempt += 1;
                    backoff(attempt).await;
                    continue;
                }
                drop(retry_permit);
                let mut response = response;
                strip_hop_by_hop(response.headers_mut());
                return Ok(response.map(|b| b.map_err(BoxError::from).boxed()));
            }
            Some(Err(error)) => {
                upstream.record_outcome(cluster, endpoint.address, None);
                warn!(%error, attempt, "upstream attempt failed");
                if can_retry
                    && error_retriable(&error, policy)
                    && let Some(permit) = upstream.retry_permit(cluster)
                {
                    retry_permit = Some(permit);
                    attempt += 1;
                    backoff(attempt).await;
                    continue;
                }
                return Err(error_response(&error, record));
            }
            None => {
                upstream.record_outcome(cluster, endpoint.address, Some(504));
                let retriable = policy.on.five_xx
                    || policy.on.gateway_error
                    || policy.on.retriable_status_codes.contains(&504);
                if can_retry
                    && retriable
                    && let Some(permit) = upstream.retry_permit(cluster)
                {
                    retry_permit = Some(permit);
                    attempt += 1;
                    continue;
                }
                record.response_flags = ResponseFlag::UpstreamTimeout;
                record.response_code_details = "upstream_per_try_timeout".to_owned();
                return Err(text_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream request timeout",
                ));
            }
        }
    }
}

/// Envoy's retry back-off: a random time below `base * 2^(n-1)`, capped at ten times the base.
async fn backoff(attempt: u32) {
    let ceiling = RETRY_BASE_INTERVAL * 2u32.saturating_pow(attempt.saturating_sub(1).min(4));
    let ceiling = ceiling.min(RETRY_BASE_INTERVAL * 10);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(250).max(1);
    tokio::time::sleep(Duration::from_millis(rand::random_range(0..millis))).await;
}

#[allow(clippy::too_many_arguments)]
async fn forward_upgrade(
    shared: &ProxyShared,
    tunnel: &TunnelContext,
    record: &mut RequestRecord,
    cluster: &Arc<Cluster>,
    mut outgoing: Outgoing,
    downstream: Request<Incoming>,
    connection: Option<HeaderValue>,
    upgrade: Option<HeaderValue>,
    response_ops: &HeaderOps,
) -> Response<ProxyBody> {
    if let Some(v) = connection {
        outgoing.headers.insert(header::CONNECTION, v);
    }
    if let Some(v) = upgrade {
        outgoing.headers.insert(header::UPGRADE, v);
    }
    let hash = hash_input(&outgoing.headers, None, tunnel.source_ip);
    let endpoint = match shared.upstream.choose_endpoint(cluster, &hash, &[]) {
        Ok(e) => e,
        Err(error) => return error_response(&error, record),
    };
    record.upstream_host = Some(endpoint.address.to_string());
    record.destination.workload = Some(Arc::clone(&endpoint.workload));
    record.destination.principal = endpoint.identity.as_ref().map(ToString::to_string);
    let upstream_response = match shared
        .upstream
        .send_upgrade(cluster, &endpoint, outgoing.build(""), tunnel.source_ip)
        .await
    {
        Ok(r) => r,
        Err(error) => return error_response(&error, record),
    };
    if upstream_response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let mut response = upstream_response.map(|b| b.map_err(BoxError::from).boxed());
        response_ops.apply(response.headers_mut());
        return response;
    }
    let mut upstream_response = upstream_response;
    let upstream_upgrade = hyper::upgrade::on(&mut upstream_response);
    let (mut parts, _) = upstream_response.into_parts();
    let downstream_upgrade = hyper::upgrade::on(downstream);
    tokio::spawn(
        async move {
            let (Ok(up), Ok(down)) = (upstream_upgrade.await, downstream_upgrade.await) else {
                debug!("upgrade did not complete on both sides");
                return;
            };
            let mut up = hyper_util::rt::TokioIo::new(up);
            let mut down = hyper_util::rt::TokioIo::new(down);
            if let Err(error) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                debug!(%error, "upgraded stream ended");
            }
        }
        .instrument(debug_span!("upgrade")),
    );
    response_ops.apply(&mut parts.headers);
    Response::from_parts(parts, full(Bytes::new()))
}

#[cfg(test)]
mod tests {
    use weft_policy::StringMatch;

    use super::*;

    fn rewrite(uri: Option<&str>, regex: Option<(&str, &str)>) -> Rewrite {
        Rewrite {
            uri: uri.map(str::to_owned),
            uri_regex: regex.map(|(m, r)| (regex::Regex::new(m).unwrap(), r.to_owned())),
            authority: None,
        }
    }

    #[test]
    fn rewrites_replace_what_the_route_matched() {
        let prefix = StringMatch::Prefix("/old".to_owned());
        let exact = StringMatch::Exact("/login".to_owned());
        let cases = [
            (
                rewrite(Some("/new"), None),
                Some(&prefix),
                "/old/page",
                "/new/page",
            ),
            (rewrite(Some("/"), None), Some(&prefix), "/old", "/"),
            (
                rewrite(Some("/signin"), None),
                Some(&exact),
                "/login",
                "/signin",
            ),
            (rewrite(Some("/v2/"), None), None, "/items", "/v2/items"),
            (
                rewrite(None, Some(("^/api/v1/(.*)$", "/${1}"))),
                None,
                "/api/v1/users",
                "/users",
            ),
            (rewrite(None, None), Some(&prefix), "/old/x", "/old/x"),
        ];
        for (rule, matched, path, expected) in cases {
            assert_eq!(rewrite_path(&rule, matched, path), expected, "{path}");
        }
    }

    #[test]
    fn redirects_build_their_location() {
        let redirect = |uri: Option<&str>, authority: Option<&str>, port| Redirect {
            uri: uri.map(str::to_owned),
            authority: authority.map(str::to_owned),
            scheme: None,
            port,
            status: StatusCode::MOVED_PERMANENTLY,
        };
        let cases = [
            (
                redirect(Some("/v2"), None, RedirectPort::SchemeDefault),
                "a.b:9080",
                "/v1",
                "http://a.b/v2",
            ),
            (
                redirect(None, Some("c.d"), RedirectPort::FromRequest),
                "a.b:9080",
                "/x?q=1",
                "http://c.d:9080/x?q=1",
            ),
            (
                redirect(None, None, RedirectPort::Explicit(8443)),
                "a.b",
                "/",
                "http://a.b:8443/",
            ),
        ];
        for (rule, authority, path, expected) in cases {
            let response = redirect_response(&rule, authority, path, 9080);
            assert_eq!(response.status(), StatusCode::MOVED_PERMANENTLY);
            assert_eq!(response.headers()[header::LOCATION], expected);
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let id = request_id();
        let parts: Vec<&str> = id.split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'));
        assert!(
            matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "{id}"
        );
        assert_ne!(id, request_id());
    }

    #[test]
    fn hop_by_hop_headers_are_not_forwarded() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        headers.insert("x-private", "1".parse().unwrap());
        headers.insert("keep-alive", "timeout=5".parse().unwrap());
        headers.insert(header::TE, "trailers".parse().unwrap());
        headers.insert("traceparent", "00-abc-def-01".parse().unwrap());
        strip_hop_by_hop(&mut headers);
        assert!(!headers.contains_key("x-private"));
        assert!(!headers.contains_key(header::CONNECTION));
        assert!(!headers.contains_key("keep-alive"));
        assert_eq!(headers[header::TE], "trailers");
        assert_eq!(headers["traceparent"], "00-abc-def-01");
    }
}
