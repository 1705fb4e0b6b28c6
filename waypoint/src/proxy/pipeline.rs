//! The order a request goes through: conformance, request id, path normalization, JWT
//! authentication (RequestAuthentication), then authorization and route selection together (both are decisions over the same view of the
//! request), then the route: CORS preflight, faults, and its action (direct response, redirect
//! or forward), with the route's response headers and CORS headers on what comes back.

use std::borrow::Cow;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use tracing::debug;
use weft_identity::SpiffeId;
use weft_policy::l7::{HttpAuthzRequest, evaluate_http};
use weft_policy::path::normalize_path;
use weft_policy::request_auth::RequestAuth;
use weft_policy::route::{HeaderSource, RequestView, RouteSelection, select_route};
use weft_policy::{Decision, StringMatch};

use super::context::{RequestContext, X_REQUEST_ID, request_id};
use super::forward::{self, Forwarding};
use super::{LocalReply, ProxyBody, actions, forwarded};
use crate::metrics::RecordText;
use crate::model::{HeaderOps, Headers, RetryOn, RetryPolicy, Route, RouteAction, Target};

/// Serves the request; every refusal or failure becomes its local reply.
pub(super) async fn run(
    cx: &mut RequestContext<'_>,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    match route_request(cx, request).await {
        Ok(response) => response,
        Err(reply) => reply.respond(&mut cx.record),
    }
}

/// A request's header bytes as Envoy counts them against `max_request_headers_kb`: names and
/// values, the request line's method, path and authority included.
fn header_bytes<B>(request: &Request<B>) -> usize {
    let uri = request.uri();
    let line = request.method().as_str().len()
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    request.headers().iter().fold(line, |sum, (name, value)| {
        sum + name.as_str().len() + value.len()
    })
}

/// The request's `content-length` (the codecs have checked it is one number).
fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

async fn route_request(
    cx: &mut RequestContext<'_>,
    mut request: Request<Incoming>,
) -> Result<Response<ProxyBody>, LocalReply> {
    if let Err(refusal) = crate::conformance::admit(&mut request, &cx.shared.upgrades) {
        debug!(%refusal, "request refused before routing");
        return Err(refusal.into());
    }
    if let Some(limit) = cx.edge_limits.max_request_header_bytes
        && header_bytes(&request) > limit
    {
        return Err(LocalReply::HeadersTooLarge);
    }
    // Envoy's buffer filter refuses a declared length over its cap before reading any of it.
    if let Some(max) = cx.edge_limits.max_request_bytes
        && declared_length(&request).is_some_and(|length| length > max)
    {
        return Err(LocalReply::PayloadTooLarge {
            close_connection: request.version() < http::Version::HTTP_2,
        });
    }
    if cx.tunnel.edge.is_some() {
        let trusted = cx
            .config
            .gateway
            .as_ref()
            .map_or(0, |g| g.num_trusted_proxies);
        cx.remote_ip = forwarded::trusted_client(request.headers(), cx.tunnel.source_ip, trusted);
    }
    if cx.record.request_id.is_empty() {
        let (id, value) = request_id();
        if let Some(value) = forwarded::shared_value(value) {
            request.headers_mut().insert(X_REQUEST_ID.clone(), value);
        }
        cx.record.request_id = id;
    }
    // The record holds the path as it arrived (with the query): policies and routes see the
    // normalized path, redirects the original.
    let raw_path = cx.record.path.as_str();
    let normalized = normalize_path(raw_path).map_err(|_| LocalReply::InvalidPath)?;
    cx.query = raw_path
        .split_once('?')
        .map(|(_, q)| q.split('#').next().unwrap_or(q).to_owned());
    cx.path = normalized;

    let auth = authenticate(cx, &mut request)?;
    let (decision, selection) = decide(cx, &request, auth.as_ref());
    if let Decision::Deny(reason) = decision {
        debug!(%reason, "request denied");
        return Err(LocalReply::Denied(reason));
    }

    let service = match cx.target {
        Target::Service(target) => {
            // A DYNAMIC_DNS wildcard routes only names under it: no client makes the waypoint
            // resolve anything else.
            if !target.service.admits_authority(&cx.record.authority) {
                debug!(authority = %cx.record.authority, host = %target.service.hostname, "host outside the wildcard");
                return Err(LocalReply::RouteNotFound);
            }
            target.service
        }
        Target::Workload(target) => {
            // Exactly the address the client asked for, as Istio's waypoint carries
            // workload-addressed traffic: no VirtualService, no retries (an inbound route).
            let to = Forwarding {
                route: &DIRECT_ROUTE,
                destination: &NO_HEADERS,
                cluster: target.cluster(),
                matched_uri: None,
            };
            return forward::forward_to(cx, request, to).await;
        }
    };
    let Some(selection) = selection else {
        // No route: plain service routing to any endpoint of the service.
        let cluster = cx
            .config
            .default_cluster(&service.hostname, cx.target.port())
            .ok_or(LocalReply::RouteNotFound)?;
        let to = Forwarding {
            route: &DEFAULT_ROUTE,
            destination: &NO_HEADERS,
            cluster: Arc::clone(cluster),
            matched_uri: None,
        };
        return forward::forward_to(cx, request, to).await;
    };
    let route = &service.http_routes[selection.route_index];
    let matched_uri = selection.match_index.and_then(|i| {
        service.route_matches[selection.route_index].matches[i]
            .uri
            .as_ref()
    });
    cx.record.route_name = route.name.clone().map(RecordText::Shared);
    cx.record.operation = route
        .operation(selection.match_index)
        .cloned()
        .map(RecordText::Shared);
    Ok(follow_route(cx, request, route, matched_uri).await)
}

/// The request's JWT, validated by the RequestAuthentications that apply to its target (read
/// from this request's configuration); a token they refuse answers the request.
fn authenticate(
    cx: &RequestContext<'_>,
    request: &mut Request<Incoming>,
) -> Result<Option<RequestAuth>, LocalReply> {
    let providers = cx.config.jwt_providers_for(&cx.target);
    if providers.is_empty() {
        return Ok(None);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    crate::authn::authenticate(&providers, request.headers_mut(), cx.query.as_deref(), now).map_err(
        |error| {
            debug!(%error, "request refused by request authentication");
            let path = cx.record.path.split(['?', '#']).next().unwrap_or("");
            LocalReply::Unauthenticated {
                error,
                realm: format!("http://{}{path}", cx.record.authority),
            }
        },
    )
}

/// The authorization decision and the route selected, over one view of the request.
fn decide(
    cx: &RequestContext<'_>,
    request: &Request<Incoming>,
    auth: Option<&RequestAuth>,
) -> (Decision, Option<RouteSelection>) {
    let tunnel = cx.tunnel;
    let peer_identity = tunnel.peer.as_ref();
    // Looked up once per request, when the record was started.
    let source_workload = cx.record.source.workload.as_ref();
    let headers = HeaderMapSource(request.headers());
    let view = RequestView {
        method: request.method().as_str(),
        scheme: "http",
        authority: &cx.record.authority,
        path: &cx.path,
        query: cx.query.as_deref(),
        headers: &headers,
        port: cx.target.port(),
        source_labels: source_workload.map(|w| &w.labels),
        source_namespace: peer_identity.map(SpiffeId::namespace),
    };
    let authz = HttpAuthzRequest {
        request: view,
        source_identity: peer_identity,
        source_ip: tunnel.source_ip,
        remote_ip: cx.remote_ip,
        destination_ip: tunnel.destination.ip(),
        sni: None,
        auth,
    };
    let selection = match cx.target {
        Target::Service(target) => select_route(&target.service.route_matches, &view),
        // Routing belongs to services: a workload addressed directly gets no route.
        Target::Workload(_) => None,
    };
    (
        evaluate_http(cx.config.policies_for(&cx.target), &authz),
        selection,
    )
}

/// The route's actions: a CORS preflight or a fault may answer first; then the direct response,
/// redirect or forward, and the route's response headers and CORS headers on its answer.
async fn follow_route(
    cx: &mut RequestContext<'_>,
    request: Request<Incoming>,
    route: &Route,
    matched_uri: Option<&StringMatch>,
) -> Response<ProxyBody> {
    // Envoy's CORS filter: an empty Origin is no CORS request, and a preflight is an OPTIONS
    // with a non-empty Access-Control-Request-Method.
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| !o.is_empty())
        .map(str::to_owned);
    if let (Some(cors), Some(origin)) = (&route.cors, &origin)
        && request.method() == Method::OPTIONS
        && request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .is_some_and(|m| !m.is_empty())
    {
        if cors.origin_allowed(origin) {
            return actions::cors_preflight(cors, Some(origin)).respond(&mut cx.record);
        }
        if !cors.forward_unmatched_preflights {
            return actions::cors_preflight(cors, None).respond(&mut cx.record);
        }
    }
    if let Some(fault) = &route.fault
        && let Some(abort) = actions::apply_fault(fault, &mut cx.record).await
    {
        return abort.respond(&mut cx.record);
    }
    // Where Istio's EnvoyFilter puts the local rate limit: just before the router, after
    // authorization, CORS and faults.
    if let Some(limit) = &route.rate_limit
        && !cx
            .shared
            .rate_limiter
            .admit(limit, cx.remote_ip, std::time::Instant::now())
    {
        debug!(key = %limit.key, client = %cx.remote_ip, "request over the route's local rate limit");
        return LocalReply::RateLimited.respond(&mut cx.record);
    }
    let answer = match &route.action {
        RouteAction::DirectResponse { status, body } => Err(LocalReply::DirectResponse {
            status: *status,
            body: body.clone(),
        }),
        RouteAction::Redirect(redirect) => Err(actions::redirect(
            redirect,
            &cx.record.authority,
            &actions::RedirectPath {
                raw_path: &cx.record.path,
                path: &cx.path,
                query: cx.query.as_deref(),
                matched_uri,
            },
            cx.target.port(),
        )),
        RouteAction::Forward(destinations) => {
            forward::forward(cx, request, route, destinations, matched_uri).await
        }
    };
    let mut response = answer.unwrap_or_else(|reply| reply.respond(&mut cx.record));
    route.headers.response.apply(response.headers_mut());
    if let (Some(cors), Some(origin)) = (&route.cors, &origin)
        && cors.origin_allowed(origin)
    {
        actions::add_cors_headers(cors, origin, response.headers_mut());
    }
    response
}

/// The route of a request no route matched: to the service's default cluster, with Istio's
/// default retries.
static DEFAULT_ROUTE: LazyLock<Route> = LazyLock::new(|| Route {
    name: Some(Arc::from("default")),
    retries: RetryPolicy::mesh_default(),
    ..forward_only_route()
});

/// The route of a workload addressed directly: to its one-endpoint cluster, nothing else.
static DIRECT_ROUTE: LazyLock<Route> = LazyLock::new(|| Route {
    retries: RetryPolicy {
        attempts: 0,
        per_try_timeout: None,
        ignore_previous_hosts: None,
        backoff: None,
        retry_remote_localities: false,
        on: RetryOn::default(),
    },
    ..forward_only_route()
});

/// A route that only forwards, to the cluster the pipeline gives it.
fn forward_only_route() -> Route {
    Route {
        name: None,
        action: RouteAction::Forward(Vec::new()),
        rewrite: None,
        timeout: None,
        retries: RetryPolicy::mesh_default(),
        fault: None,
        mirrors: Vec::new(),
        cors: None,
        headers: Default::default(),
        virtual_service: String::new(),
        cluster_not_found: http::StatusCode::SERVICE_UNAVAILABLE,
        rate_limit: None,
        operations: Vec::new(),
        session: None,
    }
}

/// The header operations of the default and direct routes' destinations: none.
static NO_HEADERS: Headers = Headers {
    request: HeaderOps::NONE,
    response: HeaderOps::NONE,
};

/// Headers as route matching and authorization read them: repeated headers joined by commas.
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

#[cfg(test)]
mod tests {
    #[test]
    fn header_bytes_count_names_values_and_the_request_line_as_envoy_does() {
        let request = http::Request::get("http://shop.example.com/a?b")
            .header("x-one", "12345")
            .body(())
            .unwrap();
        // GET + /a?b + shop.example.com + x-one + 12345
        assert_eq!(super::header_bytes(&request), 3 + 4 + 16 + 5 + 5);
    }

    #[test]
    fn the_declared_length_is_the_content_length() {
        let with = |length: &str| {
            http::Request::post("/")
                .header(http::header::CONTENT_LENGTH, length)
                .body(())
                .unwrap()
        };
        assert_eq!(super::declared_length(&with("65537")), Some(65537));
        assert_eq!(super::declared_length(&with("x")), None);
        let chunked = http::Request::post("/").body(()).unwrap();
        assert_eq!(super::declared_length(&chunked), None);
    }
}
