//! The upstream exchange of a routed request: the destination its weights pick, the request as
//! it goes upstream (hop-by-hop headers removed, `x-forwarded-*`, header operations, rewrites),
//! mirrors, and the attempts under the route's retries, per-try timeout and timeout.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, Uri, Version};
use http_body::{Body as _, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::{Instrument, debug, debug_span, warn};
use weft_policy::StringMatch;
use weft_policy::route::{percentage_hit, pick_weighted};

use super::context::{GRPC_STATUS, RequestContext};
use super::forwarded::{X_FORWARDED_FOR, address_value, set_external_address};
use super::request_limits::{Breach, RequestLimits, ResponseGuard};
use super::{BoxError, LocalReply, ProxyBody, VIA_UPSTREAM, actions, upgrade};
use crate::metrics::{RecordText, RequestRecord, ResponseFlag};
use crate::model::{
    Cluster, Endpoint, Headers, LoadBalancer, Mirror, Protocol, RetryPolicy, Route,
    WeightedDestination,
};
use crate::upstream::{
    ClusterState, Ending, Outcome, Replayable, RequestBody, RetryPermit, Tried, UpstreamError,
    dynamic_dns,
};

static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Where a request goes: its route, the header operations of the destination the route picked,
/// and that destination's cluster.
pub(super) struct Forwarding<'r> {
    pub route: &'r Route,
    pub destination: &'r Headers,
    pub cluster: Arc<Cluster>,
    /// The uri match that selected the route: a rewrite replaces what it matched.
    pub matched_uri: Option<&'r StringMatch>,
}

/// Picks one of the route's destinations by weight and forwards the request to its cluster.
pub(super) async fn forward(
    cx: &mut RequestContext<'_>,
    request: Request<Incoming>,
    route: &Route,
    destinations: &[WeightedDestination],
    matched_uri: Option<&StringMatch>,
) -> Result<Response<ProxyBody>, LocalReply> {
    let destination = match destinations {
        // One destination takes every request, whatever its weight (as `pick_weighted` has it).
        [only] => Some(only),
        _ => {
            let weights: Vec<u32> = destinations.iter().map(|d| d.weight).collect();
            pick_weighted(&weights, rand::random()).and_then(|i| destinations.get(i))
        }
    }
    .ok_or(LocalReply::NoDestination)?;
    let cluster = cx
        .config
        .cluster(&destination.cluster)
        .cloned()
        .ok_or(LocalReply::ClusterNotFound(route.cluster_not_found))?;
    let to = Forwarding {
        route,
        destination: &destination.headers,
        cluster,
        matched_uri,
    };
    forward_to(cx, request, to).await
}

/// Sends the request to `to.cluster`: rewrites and header operations, mirrors, then the
/// attempts under the route's retries and timeout.
pub(super) async fn forward_to(
    cx: &mut RequestContext<'_>,
    request: Request<Incoming>,
    to: Forwarding<'_>,
) -> Result<Response<ProxyBody>, LocalReply> {
    cx.record.upstream_cluster = Some(RecordText::Cluster(Arc::clone(&to.cluster)));
    if cx.tunnel.edge.is_some() {
        cx.record.destination_service = Some(Arc::clone(&to.cluster.service));
    }
    let upgrade = upgrade::requested(&request);
    let client_http2 = request.version() == Version::HTTP_2;
    let port_http2 = matches!(cx.target.protocol(), Protocol::Http2 | Protocol::Grpc);
    // An upgrade stays on HTTP/1.1, whatever the cluster's protocol.
    let http2 = !upgrade && to.cluster.upstream_protocol.http2(client_http2, port_http2);
    let (mut parts, body) = request.into_parts();
    // The downstream request keeps only what an upgrade needs of it (its extensions).
    let mut headers = std::mem::take(&mut parts.headers);
    let upgrade_headers = upgrade.then(|| {
        (
            headers.get(header::CONNECTION).cloned(),
            headers.get(header::UPGRADE).cloned(),
        )
    });
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    cx.read_session(to.route.session.as_ref(), &headers);
    append_forwarded_for(&mut headers, cx.tunnel.source_ip);
    if cx.tunnel.edge.is_some() {
        set_external_address(&mut headers, cx.remote_ip);
    }
    // The next hop's span is a child of the waypoint's.
    if let Some(span) = &cx.record.span {
        span.context.inject(&mut headers);
        // Envoy's egress side (a gateway) names the next proxy's span after its route.
        if cx.tunnel.edge.is_some()
            && let Some(value) = cx
                .record
                .operation
                .as_deref()
                .and_then(|o| HeaderValue::from_str(o).ok())
        {
            headers.insert(crate::telemetry::DECORATOR_OPERATION, value);
        }
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    }
    to.route.headers.request.apply(&mut headers);
    to.destination.request.apply(&mut headers);
    // Envoy's router changes the request its log and span read (the stats filter's and the
    // tracer's header attributes see the route's header operations).
    cx.record.recapture_metric_headers(&headers);
    if let Some(span) = &mut cx.record.span {
        span.retag(&headers);
    }
    let mut authority = cx.record.authority.clone();
    let mut rewritten = None;
    if let Some(rewrite) = &to.route.rewrite {
        rewritten = Some(actions::rewrite_path(rewrite, to.matched_uri, &cx.path));
        if let Some(new_authority) = rewrite.authority.as_ref().and_then(|a| a.to_str().ok()) {
            authority = RecordText::Owned(new_authority.to_owned());
        }
    }
    let path_and_query = upstream_path(
        rewritten.as_deref().unwrap_or(&cx.path),
        cx.query.as_deref(),
        parts.uri.path_and_query(),
    );

    if let Some((connection, upgrade_value)) = upgrade_headers {
        if let Some(v) = connection {
            headers.insert(header::CONNECTION, v);
        }
        if let Some(v) = upgrade_value {
            headers.insert(header::UPGRADE, v);
        }
        let outgoing = Outgoing {
            method: parts.method.clone(),
            path_and_query,
            authority,
            headers,
            body: None,
            http2: false,
            client_http2,
            port_http2,
        };
        let downstream = Request::from_parts(parts, body);
        return upgrade::forward(
            cx,
            &to.cluster,
            outgoing,
            downstream,
            &to.destination.response,
        )
        .await;
    }

    // The body streams upstream as it arrives; what has passed is kept for a retry or a mirror
    // while it fits in the limit (Envoy's retry and shadow buffer; at the edge, the server's
    // `perConnectionBufferLimitBytes`, read per request).
    let buffer_limit = cx
        .edge_limits
        .per_connection_buffer_limit_bytes
        .unwrap_or(cx.shared.retry_buffer_limit);
    // At the edge, the whole request's deadline and its body's cap watch the body as it passes.
    let close_connection = parts.version < Version::HTTP_2;
    let limits = if body.is_end_stream() {
        None
    } else {
        // Counted from the request's start, when its head had arrived.
        let started = tokio::time::Instant::from_std(cx.record.started());
        let deadline = cx.edge_limits.request_timeout.map(|t| started + t);
        RequestLimits::new(deadline, cx.edge_limits.max_request_bytes)
    };
    let body = (!body.is_end_stream()).then(|| match &limits {
        Some(limits) => Replayable::new(limits.guard(body), buffer_limit),
        None => Replayable::new(body, buffer_limit),
    });
    let mut outgoing = Outgoing {
        method: parts.method,
        path_and_query,
        authority,
        headers,
        body,
        http2,
        client_http2,
        port_http2,
    };
    send_mirrors(cx, &to.route.mirrors, &outgoing);
    // The attempts own the headers from here: the last one takes them, others send copies.
    let headers = std::mem::take(&mut outgoing.headers);
    cx.generate_cookie(&to.cluster, &headers);
    let attempts = send_with_retries(cx, &to.cluster, &outgoing, headers, &to.route.retries);
    let timed = async {
        match to.route.timeout {
            // As Envoy's, the route's timeout starts once the downstream request has ended.
            Some(limit) => tokio::select! {
                result = attempts => result,
                () = after_request(&outgoing, limit) => Err(LocalReply::RouteTimeout),
            },
            None => attempts.await,
        }
    };
    let result = match &limits {
        // A breach before the response answers the client and abandons the attempt; the
        // guarded body has already failed upstream. Checked first: the attempt's own failure
        // is the breach's consequence.
        Some(limits) => tokio::select! {
            biased;
            breach = limits.breach() => Err(breach_reply(breach, close_connection)),
            result = timed => result,
        },
        None => timed.await,
    };
    if let Some(body) = &outgoing.body {
        cx.record.bytes_received = cx.record.bytes_received.max(body.received());
    }
    let mut response = with_first_frame(result?).await;
    cx.record.response_code_details = Cow::Borrowed(VIA_UPSTREAM);
    cx.set_generated_cookie(response.headers_mut());
    cx.update_session(response.headers_mut());
    to.destination.response.apply(response.headers_mut());
    // Once the response has begun, a breach resets the stream (its body fails).
    if let Some(limits) = limits.filter(RequestLimits::running) {
        response = response.map(|body| ResponseGuard::new(body, &limits).boxed());
    }
    Ok(response)
}

/// The local reply to a breach of the request's limits before the response began.
fn breach_reply(breach: Breach, close_connection: bool) -> LocalReply {
    match breach {
        Breach::Timeout => LocalReply::RequestTimeout { close_connection },
        Breach::TooLarge => LocalReply::PayloadTooLarge { close_connection },
    }
}

/// Largest response body [`with_first_frame`] waits for.
const COALESCED_BODY_LIMIT: u64 = 16 * 1024;

/// A small response of known length leaves with its body: its first frame (which came with the
/// head, or right behind it) is awaited before the head is handed to the server, so that head
/// and body go downstream in one write (one TLS record, one HTTP/2 flush) instead of the head
/// alone and the body a wakeup later, as nginx sends a buffered response. Other responses (no
/// length, larger, empty) stream as they come.
async fn with_first_frame(response: Response<Incoming>) -> Response<ProxyBody> {
    let (parts, mut body) = response.into_parts();
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|length| length <= COALESCED_BODY_LIMIT);
    if !small || body.is_end_stream() {
        return Response::from_parts(parts, body.map_err(BoxError::from).boxed());
    }
    let first = body.frame().await.map(|f| f.map_err(BoxError::from));
    let body = Prefetched { first, rest: body };
    Response::from_parts(parts, body.boxed())
}

/// A body whose first frame was read ahead.
struct Prefetched {
    first: Option<Result<Frame<Bytes>, BoxError>>,
    rest: Incoming,
}

impl http_body::Body for Prefetched {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.first.take() {
            Some(first) => Poll::Ready(Some(first)),
            None => Pin::new(&mut self.rest)
                .poll_frame(cx)
                .map(|frame| frame.map(|f| f.map_err(BoxError::from))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.first.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.size_hint();
        let Some(Ok(first)) = &self.first else {
            return rest;
        };
        let length = first.data_ref().map_or(0, |data| data.len() as u64);
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + length);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + length);
        }
        hint
    }
}

/// The request sent upstream, before per-attempt details.
pub(super) struct Outgoing {
    pub method: Method,
    pub path_and_query: PathAndQuery,
    pub authority: RecordText,
    pub headers: HeaderMap,
    /// The downstream body, `None` when it is empty.
    pub body: Option<Replayable>,
    /// Whether it goes upstream over HTTP/2 (its cluster's protocol for its client).
    pub http2: bool,
    /// Whether its client spoke HTTP/2, and whether the port it arrived for is declared HTTP2
    /// or GRPC: what a mirror's cluster decides its own version from.
    pub client_http2: bool,
    pub port_http2: bool,
}

impl Outgoing {
    /// The body for one more attempt, from its beginning; `None` once it cannot be sent whole
    /// again (it outgrew what is kept, or the downstream failed).
    fn attempt_body(&self) -> Option<RequestBody> {
        match &self.body {
            None => Some(RequestBody::empty()),
            Some(body) => body.attempt(),
        }
    }

    /// Whether the body could be sent whole once more.
    fn replayable(&self) -> bool {
        self.body.as_ref().is_none_or(Replayable::replayable)
    }

    /// The request with a copy of the headers, to `authority` (a mirror's) or, `None`, to the
    /// request's own (an upgrade).
    pub fn build<B>(&self, authority: Option<&str>, body: B) -> Request<B> {
        self.build_with(authority, body, self.headers.clone())
    }

    /// The request with `headers`, which are the outgoing headers or a copy of them.
    fn build_with<B>(&self, authority: Option<&str>, body: B, headers: HeaderMap) -> Request<B> {
        self.build_in(self.http2, authority, body, headers)
    }

    /// The request with `headers`, in HTTP/2 form when `http2`.
    fn build_in<B>(
        &self,
        http2: bool,
        authority: Option<&str>,
        body: B,
        headers: HeaderMap,
    ) -> Request<B> {
        let mut request = Request::new(body);
        *request.method_mut() = self.method.clone();
        *request.headers_mut() = headers;
        if http2 {
            let uri = Uri::builder()
                .scheme("http")
                .authority(authority.unwrap_or(self.authority.as_str()))
                .path_and_query(self.path_and_query.clone())
                .build();
            *request.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
            *request.version_mut() = Version::HTTP_2;
            request.headers_mut().remove(header::HOST);
        } else {
            let uri = Uri::builder()
                .path_and_query(self.path_and_query.clone())
                .build();
            *request.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
            if let Some(host) = self.host(authority) {
                request.headers_mut().insert(header::HOST, host);
            }
        }
        request
    }

    /// The `Host` of an HTTP/1.1 request: the downstream one itself (shared, not copied) when
    /// the authority is still the one it gave.
    fn host(&self, authority: Option<&str>) -> Option<HeaderValue> {
        match (authority, &self.authority) {
            (Some(authority), _) => HeaderValue::from_str(authority).ok(),
            (None, RecordText::Header(host)) => Some(host.clone()),
            (None, authority) => HeaderValue::from_str(authority).ok(),
        }
    }
}

/// The authority of a mirrored request: the request's own when the mirror keeps it (istiod's
/// default since 1.28), else with Envoy's shadow suffix after the host and before a port
/// (`a:8080` becomes `a-shadow:8080`); an authority that does not split into one host and one
/// port at its `:` takes the suffix at its end, as Envoy's shadow writer has it.
fn shadow_authority(authority: &str, keep_host: bool) -> String {
    if keep_host {
        return authority.to_owned();
    }
    let parts: Vec<&str> = authority.split(':').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [host, port] => format!("{host}-shadow:{port}"),
        _ => format!("{authority}-shadow"),
    }
}

/// The path and query sent upstream: the request's own (shared, not copied) when
/// normalization and rewrites left them as they arrived.
fn upstream_path(path: &str, query: Option<&str>, arrived: Option<&PathAndQuery>) -> PathAndQuery {
    if let Some(arrived) = arrived
        && arrived.path() == path
        && arrived.query() == query
    {
        return arrived.clone();
    }
    let text = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    PathAndQuery::from_maybe_shared(Bytes::from(text))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// Sends a copy of the request to each mirror whose percentage hits, once its body has been read
/// whole; their answers are read and dropped. A mirror to a cluster that does not exist is not
/// sent, nor one whose body outgrew what is kept (as Envoy abandons its shadows). A mirror to a
/// `DYNAMIC_DNS` cluster goes where the copy's own host resolves to, as Envoy's dynamic forward
/// proxy cluster picks the host of a shadow by its Host; only a host under the cluster's
/// wildcard is resolved (else the copy is not sent), as for every request the waypoint routes.
fn send_mirrors(cx: &RequestContext<'_>, mirrors: &[Mirror], outgoing: &Outgoing) {
    for mirror in mirrors {
        if !percentage_hit(mirror.percent, rand::random()) {
            continue;
        }
        let Some(mirror_cluster) = cx.config.cluster(&mirror.cluster).cloned() else {
            continue;
        };
        let authority = shadow_authority(&outgoing.authority, mirror.keep_host);
        if mirror_cluster.dynamic_dns
            && !dynamic_dns::under_wildcard(
                &mirror_cluster.host,
                dynamic_dns::host_and_port(&authority).0,
            )
        {
            debug!(cluster = %mirror.cluster, %authority, "mirror host outside the wildcard: not sent");
            continue;
        }
        // The mirror's cluster decides its own HTTP version.
        let http2 = mirror_cluster
            .upstream_protocol
            .http2(outgoing.client_http2, outgoing.port_http2);
        let request = outgoing.build_in(http2, Some(&authority), (), outgoing.headers.clone());
        let copy = outgoing.body.as_ref().map(|body| body.finished(true));
        let upstream = cx.shared.upstream.clone();
        let headers = outgoing.headers.clone();
        let source = cx.tunnel.source_ip;
        // The mirrored request is the client's too: a PROXY header carries its connection.
        let downstream = cx.tunnel.downstream.shared_for(&mirror_cluster);
        let query = cx.query.clone();
        tokio::spawn(
            async move {
                let body = match copy {
                    None => RequestBody::empty(),
                    Some(mut ending) => {
                        match ending.wait_for(|e| *e != Ending::Running).await.as_deref() {
                            Ok(Ending::Complete(Some(bytes))) => RequestBody::from(bytes.clone()),
                            _ => return,
                        }
                    }
                };
                let request = request.map(|()| body);
                let resolved;
                let endpoint = if mirror_cluster.dynamic_dns {
                    resolved = match upstream.dynamic_endpoint(&mirror_cluster, &authority).await {
                        Ok(endpoint) => endpoint,
                        Err(error) => {
                            debug!(%error, "mirror host not resolved");
                            return;
                        }
                    };
                    &resolved
                } else {
                    let hash = crate::upstream::HashInput {
                        session_endpoint: None,
                        generated_cookie: None,
                        headers: &headers,
                        query: query.as_deref(),
                        source_ip: source,
                    };
                    let Ok(endpoint) = upstream.choose_endpoint(&mirror_cluster, &hash, &[]) else {
                        return;
                    };
                    endpoint
                };
                match upstream
                    .send(&mirror_cluster, endpoint, request, http2, &downstream)
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
}

fn error_retriable(error: &UpstreamError, policy: &RetryPolicy) -> bool {
    let on = &policy.on;
    match error {
        UpstreamError::ConnectFailure { .. } => {
            on.connect_failure || on.five_xx || on.gateway_error || on.reset
        }
        UpstreamError::RefusedStream { .. } => on.refused_stream || on.five_xx || on.reset,
        UpstreamError::Reset { .. } => on.reset || on.five_xx,
        UpstreamError::NoHealthyUpstream(_)
        | UpstreamError::Overflow(_)
        | UpstreamError::Dns(_) => false,
    }
}

/// Tries the request up to `1 + attempts` times, each on a fresh endpoint choice. The
/// cluster's state is looked up once, when the request is admitted; `headers` go to the last
/// attempt there can be, and an attempt that a retry may follow sends a copy.
async fn send_with_retries(
    cx: &mut RequestContext<'_>,
    cluster: &Arc<Cluster>,
    outgoing: &Outgoing,
    mut headers: HeaderMap,
    policy: &RetryPolicy,
) -> Result<Response<Incoming>, LocalReply> {
    let shared = cx.shared;
    let upstream = &shared.upstream;
    let admission = upstream.admit(cluster).await?;
    let state = admission.state();
    // Endpoints tried by attempts a retry followed, which retries avoid unless told otherwise.
    let avoid_tried = policy.avoids_tried_endpoints(matches!(
        cluster.load_balancer,
        LoadBalancer::ConsistentHash(..)
    ));
    let mut tried: Vec<SocketAddr> = Vec::new();
    // The locality priority of each attempt, for `retryRemoteLocalities`.
    let mut tried_priorities: Vec<u32> = Vec::new();
    let mut attempt: u32 = 0;
    let mut retry_permit = None;
    let mut body = outgoing
        .attempt_body()
        .ok_or(LocalReply::DownstreamDisconnect)?;
    loop {
        let resolved;
        let (endpoint, active): (&Endpoint, _) = if cluster.dynamic_dns {
            resolved = upstream
                .dynamic_endpoint(cluster, &outgoing.authority)
                .await?;
            (&resolved, state.track_request(resolved.address))
        } else {
            let skipped = policy.skipped_priorities(tried_priorities.len());
            let avoid = Tried {
                endpoints: if avoid_tried { &tried } else { &[] },
                priorities: &tried_priorities[..skipped],
            };
            state.choose_and_track(cluster, &cx.hash_input(&headers), &avoid)?
        };
        cx.record_endpoint(endpoint);
        tried_priorities.push(endpoint.priority);
        // No retry follows the last attempt the policy allows, nor a body that can no longer
        // be sent whole (it never can again).
        let last = attempt >= policy.attempts || !outgoing.replayable();
        let attempt_headers = if last {
            std::mem::take(&mut headers)
        } else {
            headers.clone()
        };
        let send = upstream.send_on(
            active,
            cluster,
            endpoint,
            outgoing.build_with(None, body, attempt_headers),
            outgoing.http2,
            &cx.tunnel.downstream,
        );
        // As Envoy's, a try's timeout starts once the downstream request has ended.
        let outcome = match policy.per_try_timeout {
            Some(limit) => tokio::select! {
                outcome = send => Some(outcome),
                () = after_request(outgoing, limit) => None,
            },
            None => Some(send.await),
        };
        // A body that can no longer be sent whole is not retried (Envoy's "retry or shadow
        // abandoned"); a retry takes the body over from the try before at once, so that try's
        // connection reads no more of it.
        let can_retry = attempt < policy.attempts && outgoing.replayable();
        // The retry this attempt was gives its `maxRetries` place back once its outcome is
        // known, before the next retry asks for one: one retry of a request holds a place at
        // a time (Envoy's `RetryStateImpl::shouldRetry` calls `resetRetry` first,
        // `source/common/router/retry_state_impl.cc`).
        drop(retry_permit.take());
        // The attempt's result as the request would end with it, and whether the policy
        // retries it; the outcome goes to outlier detection first (a try's timeout as a local-origin
        // timeout).
        let (result, retriable) = match outcome {
            Some(Ok(response)) => {
                let status = response.status().as_u16();
                state.record_outcome(cluster, endpoint.address, Outcome::Response(status));
                let grpc = response
                    .headers()
                    .get(&GRPC_STATUS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok());
                let retriable = policy.on.status_retriable(status, grpc);
                (Ok(response), retriable)
            }
            Some(Err(error)) => {
                state.record_outcome(cluster, endpoint.address, Outcome::ConnectFailed);
                warn!(%error, attempt, "upstream attempt failed");
                let retriable = error_retriable(&error, policy);
                (Err(LocalReply::from(error)), retriable)
            }
            None => {
                state.record_outcome(cluster, endpoint.address, Outcome::Timeout);
                let retriable = policy.on.five_xx
                    || policy.on.gateway_error
                    || policy.on.retriable_status_codes.contains(&504);
                (Err(LocalReply::PerTryTimeout), retriable)
            }
        };
        if can_retry
            && retriable
            && let Some(permit) = admit_retry(state, cluster, &mut cx.record)
            && let Some(next) = outgoing.attempt_body()
        {
            tried.push(endpoint.address);
            body = next;
            retry_permit = Some(permit);
            if let Ok(response) = &result {
                let status = response.status().as_u16();
                debug!(status, attempt, "retrying after a retriable status");
            }
            drop(result);
            attempt += 1;
            backoff(policy, attempt).await;
            continue;
        }
        cx.record.response_flags.set(
            ResponseFlag::UpstreamRetryLimitExceeded,
            retriable && retries_exhausted(policy, attempt, outgoing.replayable()),
        );
        return result.map(|mut response| {
            strip_hop_by_hop(response.headers_mut());
            response
        });
    }
}

/// A retry's place in the cluster's `maxRetries` (Istio's `connectionPool.http.maxRetries`),
/// asked only for a retry the policy would make. A refusal flags the request `UO` beside the
/// failure's own flag, as Envoy's router does on `RetryStatus::NoOverflow` (the retry state
/// answers it when the cluster's retry resource is full, `RetryStateImpl::shouldRetry` in
/// `source/common/router/retry_state_impl.cc`; `Filter::onUpstreamHeaders` and
/// `Filter::maybeRetryReset` set `UpstreamOverflow`, `source/common/router/router.cc`).
fn admit_retry(
    state: &ClusterState,
    cluster: &Cluster,
    record: &mut RequestRecord,
) -> Option<RetryPermit> {
    let permit = state.retry_permit(cluster);
    record
        .response_flags
        .set(ResponseFlag::UpstreamOverflow, permit.is_none());
    permit
}

/// Whether a failure the policy would retry, after `retries` retries, ends the request flagged
/// `URX` (Envoy's `UpstreamRetryLimitExceeded`): the policy's retries are all spent. Envoy's
/// retry state answers `NoRetryLimitExceeded` to a retriable failure once no retry remains
/// (`RetryStateImpl::shouldRetry`), and its router then sets the flag beside the failure's own
/// (`Filter::maybeRetryReset` for a reset or a per-try timeout, `Filter::onUpstreamHeaders` for
/// a retriable status; `source/common/router/router.cc`). A policy of no retries is no retry
/// state at all (Istio sends none for `attempts: 0`), and a body that can no longer be sent
/// whole drops it (Envoy's "retry or shadow abandoned"): no `URX` then. A retry refused by the
/// cluster's retry budget is not the limit either (Envoy's `NoOverflow`).
fn retries_exhausted(policy: &RetryPolicy, retries: u32, replayable: bool) -> bool {
    policy.attempts > 0 && retries >= policy.attempts && replayable
}

/// Resolves `limit` after the downstream request has ended (at once for a body-less request).
async fn after_request(outgoing: &Outgoing, limit: Duration) {
    if let Some(body) = &outgoing.body {
        let mut ending = body.finished(false);
        // A request dropped before its body ended reads as failed, which also ends the wait.
        let _ended = ending.wait_for(|e| *e != Ending::Running).await;
    }
    tokio::time::sleep(limit).await;
}

/// Waits before retry `retry` a random time below the policy's back-off ceiling
/// ([`RetryPolicy::backoff_ceiling`]). The route's timeout runs over the wait, as over the
/// attempts: a long back-off ends in the route's 504, never past it.
async fn backoff(policy: &RetryPolicy, retry: u32) {
    let ceiling = u64::try_from(policy.backoff_ceiling(retry).as_micros()).unwrap_or(u64::MAX);
    let wait = Duration::from_micros(rand::random_range(0..ceiling.max(1)));
    tokio::time::sleep(wait).await;
}

static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

pub(super) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names the loop below removes anyway are not collected (a `Connection: keep-alive` costs
    // nothing); `te` is, since a `te` the connection lists goes even as `te: trailers`.
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|name| {
            !HOP_BY_HOP
                .iter()
                .any(|h| *h != header::TE && h.as_str().eq_ignore_ascii_case(name))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        // `te: trailers` is allowed (and needed by gRPC) over HTTP/2.
        if name == header::TE
            && headers
                .get(header::TE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"))
        {
            continue;
        }
        headers.remove(name);
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, source: IpAddr) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => HeaderValue::from_str(&format!("{existing}, {source}")).ok(),
        None => address_value(source),
    };
    if let Some(v) = value {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
}

#[cfg(test)]
mod tests;
