//! What the routes of a service do: HTTP routes (destinations, redirects, direct responses,
//! rewrites, header operations, retries, faults, mirrors, CORS) and TCP routes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use ipnet::IpNet;
use weft_policy::StringMatch;

use super::{ConfigError, invalid};

/// What an HTTP route does with the requests it matches.
#[derive(Debug, Clone)]
pub enum RouteAction {
    Forward(Vec<WeightedDestination>),
    Redirect(Redirect),
    DirectResponse { status: StatusCode, body: Bytes },
}

#[derive(Debug, Clone)]
pub struct Route {
    /// Shared with the records of the requests it routes.
    pub name: Option<Arc<str>>,
    pub action: RouteAction,
    pub rewrite: Option<Rewrite>,
    pub timeout: Option<Duration>,
    pub retries: RetryPolicy,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub cors: Option<CorsPolicy>,
    pub headers: Headers,
    pub virtual_service: String,
    /// The answer when the picked destination's cluster does not exist: 503 (Envoy's
    /// default, VirtualServices) or 500 (Gateway API routes, for their invalid backends).
    pub cluster_not_found: StatusCode,
    /// The token bucket the route's requests draw on.
    pub rate_limit: Option<crate::rate_limit::LocalRateLimit>,
    /// The name of its requests' spans, per match (one for a route without matches); empty:
    /// `<service host>:<port>/*`. Shared with the records of the requests it routes.
    pub operations: Vec<Arc<str>>,
    /// Keeps a client on one endpoint of the cluster its requests are routed to.
    pub session: Option<StatefulSession>,
}

/// Envoy's stateful session filter for a route (a Gateway API rule's `sessionPersistence`):
/// the chosen endpoint's address travels base64-encoded in a cookie or a header
/// ([`crate::upstream::session_endpoint`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatefulSession {
    /// Envoy's `envoy.http.stateful_session.cookie`: the request's cookie `name`, and the
    /// response's `Set-Cookie` as `template` writes it.
    Cookie {
        name: String,
        template: super::CookieTemplate,
    },
    /// Envoy's `envoy.http.stateful_session.header`: the same header on request and response.
    Header { name: HeaderName },
}

impl Route {
    /// The span name of a request it routed through its match `match_index`.
    pub fn operation(&self, match_index: Option<usize>) -> Option<&Arc<str>> {
        self.operations.get(match_index.unwrap_or(0))
    }
}

#[derive(Debug, Clone)]
pub struct WeightedDestination {
    pub cluster: String,
    pub host: String,
    pub weight: u32,
    pub headers: Headers,
}

#[derive(Debug, Clone, Default)]
pub struct Headers {
    pub request: HeaderOps,
    pub response: HeaderOps,
}

/// Header manipulations, applied set, add, remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderOps {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

impl HeaderOps {
    /// No operations.
    pub const NONE: HeaderOps = HeaderOps {
        set: Vec::new(),
        add: Vec::new(),
        remove: Vec::new(),
    };

    pub fn apply(&self, headers: &mut http::HeaderMap) {
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
        for name in &self.remove {
            headers.remove(name);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectPort {
    /// No port: the scheme's default.
    SchemeDefault,
    FromRequest,
    Explicit(u16),
}

#[derive(Debug, Clone)]
pub struct Redirect {
    /// The whole path (the query dropped) in the location.
    pub uri: Option<String>,
    /// The replacement of the part of the path the route's uri match matched (Envoy's
    /// `prefix_rewrite`); at most one of `uri` and `prefix_rewrite`.
    pub prefix_rewrite: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: RedirectPort,
    pub status: StatusCode,
}

#[derive(Debug, Clone)]
pub struct Rewrite {
    pub uri: Option<String>,
    pub uri_regex: Option<(regex::Regex, String)>,
    pub authority: Option<HeaderValue>,
}

/// Envoy retry conditions (`x-envoy-retry-on` / `x-envoy-retry-grpc-on` names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryOn {
    pub five_xx: bool,
    pub gateway_error: bool,
    pub reset: bool,
    pub connect_failure: bool,
    pub refused_stream: bool,
    pub retriable_4xx: bool,
    pub retriable_status_codes: Vec<u16>,
    /// gRPC status names: `cancelled`, `deadline-exceeded`, `internal`, `resource-exhausted`,
    /// `unavailable`.
    pub grpc: Vec<u32>,
}

/// How often Istio has Envoy's `previous_priorities` recompute the priority load (its
/// `update_frequency`), in attempts.
const PREVIOUS_PRIORITIES_UPDATE_FREQUENCY: usize = 2;

/// Envoy's default base interval of the retries' back-off, which Istio keeps when a route sets
/// no `backoff`.
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);

pub use weft_istio::defaults::{
    DEFAULT_RETRIABLE_STATUS_CODES, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON,
};

impl RetryOn {
    pub fn parse(text: &str, context: &str) -> Result<Self, ConfigError> {
        let mut on = RetryOn::default();
        let mut wants_status_codes = false;
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match item {
                "5xx" => on.five_xx = true,
                "gateway-error" => on.gateway_error = true,
                "reset" | "reset-before-request" => on.reset = true,
                "connect-failure" => on.connect_failure = true,
                "refused-stream" => on.refused_stream = true,
                "retriable-4xx" => on.retriable_4xx = true,
                "retriable-status-codes" => wants_status_codes = true,
                "cancelled" => on.grpc.push(1),
                "deadline-exceeded" => on.grpc.push(4),
                "resource-exhausted" => on.grpc.push(8),
                "internal" => on.grpc.push(13),
                "unavailable" => on.grpc.push(14),
                // Envoy conditions that need no action here: headers we do not set.
                "retriable-headers" | "envoy-ratelimited" | "http3-post-connect-failure" => {}
                code => {
                    let status: u16 = code
                        .parse()
                        .ok()
                        .filter(|c| (100..600).contains(c))
                        .ok_or_else(|| invalid(context, format!("unknown retryOn {code:?}")))?;
                    on.retriable_status_codes.push(status);
                }
            }
        }
        if wants_status_codes && on.retriable_status_codes.is_empty() {
            on.retriable_status_codes = DEFAULT_RETRIABLE_STATUS_CODES.to_vec();
        }
        Ok(on)
    }

    /// Whether a response status asks for another attempt.
    pub fn status_retriable(&self, status: u16, grpc_status: Option<u32>) -> bool {
        (self.five_xx && status >= 500)
            || (self.gateway_error && matches!(status, 502..=504))
            || (self.retriable_4xx && status == 409)
            || self.retriable_status_codes.contains(&status)
            || grpc_status.is_some_and(|g| self.grpc.contains(&g))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub on: RetryOn,
    /// Istio's `retryIgnorePreviousHosts`; `None`: its default, true except for a cluster that
    /// hashes requests to endpoints ([`RetryPolicy::avoids_tried_endpoints`]).
    pub ignore_previous_hosts: Option<bool>,
    /// Base interval of the back-off before each retry; `None`: Envoy's default.
    pub backoff: Option<Duration>,
    /// Istio's `retryRemoteLocalities` ([`RetryPolicy::skipped_priorities`]).
    pub retry_remote_localities: bool,
}

impl RetryPolicy {
    pub fn mesh_default() -> Self {
        RetryPolicy {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout: None,
            on: RetryOn::parse(DEFAULT_RETRY_ON, "default retry policy").unwrap_or_default(),
            ignore_previous_hosts: None,
            backoff: None,
            retry_remote_localities: false,
        }
    }

    /// How many of the earlier attempts' locality priorities attempt `attempt` (0 for the
    /// first) leaves out of the priority load: none without `retryRemoteLocalities`, else
    /// those of the attempts before the last multiple of 2 (Envoy's `previous_priorities`
    /// with Istio's `update_frequency` 2: the first retry keeps the priority load, the next two
    /// leave out where the first two went, and so on).
    pub fn skipped_priorities(&self, attempt: usize) -> usize {
        if self.retry_remote_localities {
            attempt - attempt % PREVIOUS_PRIORITIES_UPDATE_FREQUENCY
        } else {
            0
        }
    }

    /// The longest wait before retry `retry` (1 for the first), as Envoy's fully jittered
    /// exponential back-off has it (`JitteredExponentialBackOffStrategy`): the base interval
    /// (the route's `backoff`, else 25 ms), doubled for each retry before, at most ten times the
    /// base; the wait is drawn uniformly below it.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let base = self.backoff.unwrap_or(DEFAULT_RETRY_BACKOFF);
        let doubled = base.saturating_mul(2u32.saturating_pow(retry.saturating_sub(1).min(4)));
        doubled.min(base.saturating_mul(10))
    }

    /// Whether a retry goes to an endpoint no earlier attempt went to, when there is one
    /// (Envoy's `previous_hosts` predicate). Unset, as Istio has it: yes, except where requests
    /// are hashed to endpoints (Istio's `DefaultConsistentHashPolicy`), whose retries keep to
    /// the endpoint the key maps to.
    pub fn avoids_tried_endpoints(&self, hashed: bool) -> bool {
        self.ignore_previous_hosts.unwrap_or(!hashed)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AbortKind {
    Http(StatusCode),
    /// gRPC status code.
    Grpc(u32),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<(Duration, f64)>,
    pub abort: Option<(AbortKind, f64)>,
}

#[derive(Debug, Clone)]
pub struct Mirror {
    pub cluster: String,
    pub host: String,
    pub percent: f64,
    /// Copies keep the request's Host; false: Envoy's `-shadow` suffix.
    pub keep_host: bool,
}

#[derive(Debug, Clone)]
pub struct CorsPolicy {
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: String,
    pub allow_headers: String,
    pub expose_headers: String,
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
    /// A preflight from an origin not allowed goes upstream; else the waypoint answers it.
    pub forward_unmatched_preflights: bool,
}

impl CorsPolicy {
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins.iter().any(|m| m.matches(origin))
    }
}

#[derive(Debug, Clone)]
pub struct TcpRoute {
    pub matches: Vec<L4Match>,
    pub destinations: Vec<(String, u32)>,
    pub virtual_service: String,
}

#[derive(Debug, Clone, Default)]
pub struct L4Match {
    pub destination_subnets: Vec<IpNet>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
}

impl L4Match {
    pub fn matches(
        &self,
        destination: SocketAddr,
        source_labels: Option<&BTreeMap<String, String>>,
        source_namespace: Option<&str>,
    ) -> bool {
        (self.destination_subnets.is_empty()
            || self
                .destination_subnets
                .iter()
                .any(|n| n.contains(&destination.ip())))
            && self.port.is_none_or(|p| p == destination.port())
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| source_namespace == Some(ns))
            && (self.source_labels.is_empty()
                || source_labels
                    .is_some_and(|l| self.source_labels.iter().all(|(k, v)| l.get(k) == Some(v))))
    }
}
