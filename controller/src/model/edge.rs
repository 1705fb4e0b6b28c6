//! The annotations that configure protections at the edge, where Istio needs an EnvoyFilter
//! (which Weft does not have) or reads the gateway pod's proxy configuration:
//!
//! - [`LOCAL_RATE_LIMIT`] on a VirtualService or an HTTPRoute: a token bucket (Envoy's
//!   `local_ratelimit` filter) for each of its HTTP route rules, shared by the rule's requests
//!   or one per client address;
//! - [`EDGE_LIMITS`] on an Istio `Gateway` or a Gateway API `Gateway`: the limits of its
//!   servers' connections and requests (Envoy's `HttpConnectionManager` and listener settings,
//!   by Envoy's names) and a connection rate limit for its TCP and TLS servers (Envoy's network
//!   `local_ratelimit` filter);
//! - Istio's [`PROXY_CONFIG`] on a gateway's pod: its `gatewayTopology.numTrustedProxies`.
//!
//! Parsed here once, for validation (which names the annotation's field and the reason) and
//! for translation alike.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::duration::parse_duration;

/// The local rate limit of every HTTP route rule of the resource.
pub const LOCAL_RATE_LIMIT: &str = "weft.dev/local-rate-limit";
/// Istio's per-pod proxy configuration (`ProxyConfig` as YAML).
pub const PROXY_CONFIG: &str = "proxy.istio.io/config";

/// Envoy's shortest `fill_interval`.
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// Whose requests draw on one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitPer {
    /// All the rule's requests.
    #[default]
    Route,
    /// Each client address (at a gateway, the trusted client address).
    Client,
}

/// A local rate limit, as the annotation's YAML value writes it (Envoy's `token_bucket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalRateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub per: RateLimitPer,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RateLimitYaml {
    max_tokens: Option<i64>,
    tokens_per_fill: Option<i64>,
    fill_interval: Option<String>,
    #[serde(default)]
    per: RateLimitPer,
}

/// Why an annotation is refused: the field (under the annotation's path) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationError {
    /// `metadata.annotations.<key>[.<field>]`.
    pub path: String,
    pub reason: String,
}

fn error(key: &str, field: Option<&str>, reason: impl Into<String>) -> AnnotationError {
    let path = match field {
        Some(field) => format!("metadata.annotations.{key}.{field}"),
        None => format!("metadata.annotations.{key}"),
    };
    AnnotationError {
        path,
        reason: reason.into(),
    }
}

/// Where a token bucket is written: the annotation, and the field path of the bucket within it
/// (empty: the annotation's value itself).
#[derive(Clone, Copy)]
struct BucketAt<'a> {
    key: &'a str,
    prefix: &'a str,
}

impl BucketAt<'_> {
    fn error(self, field: &str, reason: impl Into<String>) -> AnnotationError {
        error(self.key, Some(&format!("{}{field}", self.prefix)), reason)
    }
}

/// A token count: a positive 32-bit number.
fn tokens(
    at: BucketAt<'_>,
    value: Option<i64>,
    field: &str,
    default: Option<u32>,
) -> Result<u32, AnnotationError> {
    let Some(value) = value else {
        return default.ok_or_else(|| at.error(field, "required"));
    };
    u32::try_from(value).ok().filter(|v| *v > 0).ok_or_else(|| {
        at.error(
            field,
            format!("must be a positive number of tokens, found {value}"),
        )
    })
}

/// Envoy's `token_bucket`, checked field by field.
fn token_bucket(
    at: BucketAt<'_>,
    max_tokens: Option<i64>,
    tokens_per_fill: Option<i64>,
    fill_interval: Option<String>,
) -> Result<(u32, u32, Duration), AnnotationError> {
    let max_tokens = tokens(at, max_tokens, "maxTokens", None)?;
    // Envoy's default: one token per fill.
    let tokens_per_fill = tokens(at, tokens_per_fill, "tokensPerFill", Some(1))?;
    let interval = fill_interval.ok_or_else(|| at.error("fillInterval", "required"))?;
    let parsed = parse_duration(&interval).map_err(|e| at.error("fillInterval", e.to_string()))?;
    if parsed.negative || parsed.magnitude < MIN_FILL_INTERVAL {
        return Err(at.error(
            "fillInterval",
            format!("must be at least 50ms (Envoy's minimum), found {interval:?}"),
        ));
    }
    Ok((max_tokens, tokens_per_fill, parsed.magnitude))
}

/// Parses the [`LOCAL_RATE_LIMIT`] annotation's value.
pub fn parse_local_rate_limit(value: &str) -> Result<LocalRateLimit, AnnotationError> {
    let yaml: RateLimitYaml = serde_yaml::from_str(value).map_err(|e| {
        error(
            LOCAL_RATE_LIMIT,
            None,
            format!("not a rate limit ({e}); expected YAML with maxTokens, tokensPerFill, fillInterval and per (route or client)"),
        )
    })?;
    let at = BucketAt {
        key: LOCAL_RATE_LIMIT,
        prefix: "",
    };
    let (max_tokens, tokens_per_fill, fill_interval) = token_bucket(
        at,
        yaml.max_tokens,
        yaml.tokens_per_fill,
        yaml.fill_interval,
    )?;
    Ok(LocalRateLimit {
        max_tokens,
        tokens_per_fill,
        fill_interval,
        per: yaml.per,
    })
}

/// The resource's local rate limit, if it has the annotation.
pub fn local_rate_limit(
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<Result<LocalRateLimit, AnnotationError>> {
    annotations?
        .get(LOCAL_RATE_LIMIT)
        .map(|v| parse_local_rate_limit(v))
}

/// The limits of a Gateway's servers (Envoy's settings, by Envoy's names, as Istio has none:
/// Istio sets them with an EnvoyFilter). Unset fields keep the proxy's defaults.
pub const EDGE_LIMITS: &str = "weft.dev/edge-limits";

/// Envoy's largest `max_request_headers_kb`.
pub const MAX_REQUEST_HEADERS_KB: u32 = 8192;
/// Envoy's largest `max_concurrent_streams`.
pub const MAX_CONCURRENT_STREAMS: u32 = 2_147_483_647;

/// Whose connections draw on one bucket of a connection rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionRateLimitPer {
    /// All the server's connections (Envoy's filter, one per filter chain).
    #[default]
    Server,
    /// Each client address.
    Client,
}

/// A connection rate limit (Envoy's network `local_ratelimit` `token_bucket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionRateLimit {
    pub max_tokens: u32,
    pub tokens_per_fill: u32,
    pub fill_interval: Duration,
    pub per: ConnectionRateLimitPer,
}

/// The [`EDGE_LIMITS`] annotation: what it sets, `None` where the proxy's default stays.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EdgeLimits {
    pub max_request_headers_kb: Option<u32>,
    pub request_headers_timeout: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub http2_max_concurrent_streams: Option<u32>,
    pub per_connection_buffer_limit_bytes: Option<u32>,
    /// The whole request, head and body (Envoy's HCM `request_timeout`).
    pub request_timeout: Option<Duration>,
    /// The largest request body (Envoy's buffer filter `max_request_bytes`).
    pub max_request_bytes: Option<u32>,
    /// Connections the server's port holds open at once (Envoy's `connection_limit` filter).
    pub max_connections: Option<u32>,
    pub connection_rate_limit: Option<ConnectionRateLimit>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EdgeLimitsYaml {
    max_request_headers_kb: Option<i64>,
    request_headers_timeout: Option<String>,
    idle_timeout: Option<String>,
    http2_max_concurrent_streams: Option<i64>,
    per_connection_buffer_limit_bytes: Option<i64>,
    request_timeout: Option<String>,
    max_request_bytes: Option<i64>,
    max_connections: Option<i64>,
    connection_rate_limit: Option<ConnectionRateLimitYaml>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConnectionRateLimitYaml {
    max_tokens: Option<i64>,
    tokens_per_fill: Option<i64>,
    fill_interval: Option<String>,
    #[serde(default)]
    per: ConnectionRateLimitPer,
}

/// A number of `unit` within `1..=max`.
fn bounded(
    value: Option<i64>,
    field: &str,
    max: u32,
    unit: &str,
) -> Result<Option<u32>, AnnotationError> {
    let Some(value) = value else {
        return Ok(None);
    };
    u32::try_from(value)
        .ok()
        .filter(|v| (1..=max).contains(v))
        .map(Some)
        .ok_or_else(|| {
            error(
                EDGE_LIMITS,
                Some(field),
                format!("must be from 1 to {max} {unit}, found {value}"),
            )
        })
}

/// A timeout: positive. Deliberately stricter than Envoy, where 0 turns the timeout off: at
/// the edge these bound what an unauthenticated client holds.
fn timeout(value: Option<String>, field: &str) -> Result<Option<Duration>, AnnotationError> {
    let Some(value) = value else {
        return Ok(None);
    };
    let parsed =
        parse_duration(&value).map_err(|e| error(EDGE_LIMITS, Some(field), e.to_string()))?;
    if parsed.negative || parsed.magnitude < Duration::from_millis(1) {
        return Err(error(
            EDGE_LIMITS,
            Some(field),
            format!(
                "must be at least 1ms (a timeout at the edge cannot be turned off), found {value:?}"
            ),
        ));
    }
    Ok(Some(parsed.magnitude))
}

/// Parses the [`EDGE_LIMITS`] annotation's value.
pub fn parse_edge_limits(value: &str) -> Result<EdgeLimits, AnnotationError> {
    let yaml: EdgeLimitsYaml = serde_yaml::from_str(value).map_err(|e| {
        error(
            EDGE_LIMITS,
            None,
            format!("not edge limits ({e}); expected YAML with maxRequestHeadersKb, requestHeadersTimeout, idleTimeout, http2MaxConcurrentStreams, perConnectionBufferLimitBytes, requestTimeout, maxRequestBytes, maxConnections and connectionRateLimit"),
        )
    })?;
    let connection_rate_limit = match yaml.connection_rate_limit {
        None => None,
        Some(limit) => {
            let at = BucketAt {
                key: EDGE_LIMITS,
                prefix: "connectionRateLimit.",
            };
            let (max_tokens, tokens_per_fill, fill_interval) = token_bucket(
                at,
                limit.max_tokens,
                limit.tokens_per_fill,
                limit.fill_interval,
            )?;
            Some(ConnectionRateLimit {
                max_tokens,
                tokens_per_fill,
                fill_interval,
                per: limit.per,
            })
        }
    };
    Ok(EdgeLimits {
        max_request_headers_kb: bounded(
            yaml.max_request_headers_kb,
            "maxRequestHeadersKb",
            MAX_REQUEST_HEADERS_KB,
            "KiB",
        )?,
        request_headers_timeout: timeout(yaml.request_headers_timeout, "requestHeadersTimeout")?,
        idle_timeout: timeout(yaml.idle_timeout, "idleTimeout")?,
        http2_max_concurrent_streams: bounded(
            yaml.http2_max_concurrent_streams,
            "http2MaxConcurrentStreams",
            MAX_CONCURRENT_STREAMS,
            "streams",
        )?,
        per_connection_buffer_limit_bytes: bounded(
            yaml.per_connection_buffer_limit_bytes,
            "perConnectionBufferLimitBytes",
            u32::MAX,
            "bytes",
        )?,
        request_timeout: timeout(yaml.request_timeout, "requestTimeout")?,
        // Envoy's bounds: a positive 32-bit count.
        max_request_bytes: bounded(yaml.max_request_bytes, "maxRequestBytes", u32::MAX, "bytes")?,
        // Envoy's `connection_limit` filter: a positive 64-bit count; the proto carries 32.
        max_connections: bounded(
            yaml.max_connections,
            "maxConnections",
            u32::MAX,
            "connections",
        )?,
        connection_rate_limit,
    })
}

/// The Gateway's edge limits, if it has the annotation.
pub fn edge_limits(
    annotations: Option<&BTreeMap<String, String>>,
) -> Option<Result<EdgeLimits, AnnotationError>> {
    annotations?.get(EDGE_LIMITS).map(|v| parse_edge_limits(v))
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct ProxyConfigYaml {
    gateway_topology: Option<GatewayTopologyYaml>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct GatewayTopologyYaml {
    num_trusted_proxies: Option<i64>,
}

/// `gatewayTopology.numTrustedProxies` of a `ProxyConfig` (the [`PROXY_CONFIG`] annotation, or
/// the mesh config's `defaultConfig`); `None` when it is not set. Other fields are ignored. An
/// error names the field within the `ProxyConfig`.
pub fn num_trusted_proxies(
    proxy_config: &serde_yaml::Value,
) -> Result<Option<u32>, (&'static str, String)> {
    let parsed: ProxyConfigYaml = serde_yaml::from_value(proxy_config.clone())
        .map_err(|e| ("gatewayTopology", e.to_string()))?;
    let Some(value) = parsed.gateway_topology.and_then(|t| t.num_trusted_proxies) else {
        return Ok(None);
    };
    u32::try_from(value).map(Some).map_err(|_| {
        (
            "gatewayTopology.numTrustedProxies",
            format!("must be a number of proxies from 0, found {value}"),
        )
    })
}

/// The [`PROXY_CONFIG`] annotation's `numTrustedProxies`, if the pod sets it.
pub fn pod_num_trusted_proxies(
    annotations: Option<&BTreeMap<String, String>>,
) -> Result<Option<u32>, AnnotationError> {
    let Some(value) = annotations.and_then(|a| a.get(PROXY_CONFIG)) else {
        return Ok(None);
    };
    let yaml: serde_yaml::Value = serde_yaml::from_str(value)
        .map_err(|e| error(PROXY_CONFIG, None, format!("not YAML: {e}")))?;
    if yaml.is_null() {
        return Ok(None);
    }
    num_trusted_proxies(&yaml).map_err(|(field, reason)| error(PROXY_CONFIG, Some(field), reason))
}

#[cfg(test)]
mod tests;
