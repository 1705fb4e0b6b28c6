//! The annotations that configure protections at the edge, where Istio needs an EnvoyFilter
//! (which Weft does not have) or reads the gateway pod's proxy configuration:
//!
//! - [`LOCAL_RATE_LIMIT`] on a VirtualService or an HTTPRoute: a token bucket (Envoy's
//!   `local_ratelimit` filter) for each of its HTTP route rules, shared by the rule's requests
//!   or one per client address;
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

/// A token count: a positive 32-bit number.
fn tokens(value: Option<i64>, field: &str, default: Option<u32>) -> Result<u32, AnnotationError> {
    let Some(value) = value else {
        return default.ok_or_else(|| error(LOCAL_RATE_LIMIT, Some(field), "required"));
    };
    u32::try_from(value).ok().filter(|v| *v > 0).ok_or_else(|| {
        error(
            LOCAL_RATE_LIMIT,
            Some(field),
            format!("must be a positive number of tokens, found {value}"),
        )
    })
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
    let max_tokens = tokens(yaml.max_tokens, "maxTokens", None)?;
    // Envoy's default: one token per fill.
    let tokens_per_fill = tokens(yaml.tokens_per_fill, "tokensPerFill", Some(1))?;
    let interval = yaml
        .fill_interval
        .ok_or_else(|| error(LOCAL_RATE_LIMIT, Some("fillInterval"), "required"))?;
    let parsed = parse_duration(&interval)
        .map_err(|e| error(LOCAL_RATE_LIMIT, Some("fillInterval"), e.to_string()))?;
    if parsed.negative || parsed.magnitude < MIN_FILL_INTERVAL {
        return Err(error(
            LOCAL_RATE_LIMIT,
            Some("fillInterval"),
            format!("must be at least 50ms (Envoy's minimum), found {interval:?}"),
        ));
    }
    Ok(LocalRateLimit {
        max_tokens,
        tokens_per_fill,
        fill_interval: parsed.magnitude,
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
