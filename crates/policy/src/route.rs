//! VirtualService HTTP route selection, weighted destination choice and percentage sampling.
//!
//! Semantics are those of the Envoy routes istiod generates from `HTTPMatchRequest`:
//! - fields of one match are ANDed, the matches of a route ORed, a route without matches matches
//!   every request, and the first matching route wins;
//! - `uri` is matched against the path without query string or fragment; `ignoreUriCase` folds
//!   ASCII case for `exact` and `prefix` only (Istio leaves `regex` alone);
//! - `scheme`, `method` and `authority` are header matches on `:scheme`, `:method` and
//!   `:authority` (`Host` in HTTP/1.1), case-sensitive, against the value as received: Envoy does
//!   not strip the port, so `authority: {exact: example.com}` does not match `example.com:8080`
//!   (use `prefix` or a regex such as `example\.com(:\d+)?`);
//! - header names are case-insensitive; repeated headers are joined with `,`; a header match
//!   without a value (`{}`) checks presence;
//! - `withoutHeaders` inverts each header match the way Envoy's `invert_match` does: a presence
//!   check becomes an absence check, but a value check (`exact`, `prefix`, `regex`) on a header
//!   the request does not carry is *not* satisfied (Envoy's default, without
//!   `treat_missing_header_as_empty`; see istio/istio#50988);
//! - `queryParams` compare against the first value of the parameter, percent-decoded (`+` as
//!   space); a parameter without a value match checks presence. Istio documents only `exact` and
//!   `regex`; `prefix` is accepted here too;
//! - `port` is the destination port the request arrived on; `sourceLabels` (a subset of the
//!   source workload's labels) and `sourceNamespace` are evaluated per request, since a waypoint
//!   serves many clients.
//!
//! The waypoint passes the path normalized by [`crate::path::normalize_path`], as Envoy routes on
//! the normalized path, so that routing and authorization see the same request.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::PolicyError;
use crate::string_match::StringMatch;

/// gRPC status names, each at the index of its code (Istio's `grpc.SupportedGRPCStatus`).
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Header lookup for a request. `lowercase_name` is already lowercased; implementations compare
/// names case-insensitively and join repeated headers with `,`.
pub trait HeaderSource {
    fn header(&self, lowercase_name: &str) -> Option<Cow<'_, str>>;
}

fn lookup_pairs<'a>(
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
    lowercase_name: &str,
) -> Option<Cow<'a, str>> {
    let mut found: Option<Cow<'a, str>> = None;
    for (name, value) in pairs {
        if name.eq_ignore_ascii_case(lowercase_name) {
            found = Some(match found {
                None => Cow::Borrowed(value),
                Some(previous) => Cow::Owned(format!("{previous},{value}")),
            });
        }
    }
    found
}

impl<N: AsRef<str>, V: AsRef<str>> HeaderSource for [(N, V)] {
    fn header(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        lookup_pairs(
            self.iter().map(|(n, v)| (n.as_ref(), v.as_ref())),
            lowercase_name,
        )
    }
}

impl<N: AsRef<str>, V: AsRef<str>> HeaderSource for Vec<(N, V)> {
    fn header(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().header(lowercase_name)
    }
}

impl<N: AsRef<str>, V: AsRef<str>, const LEN: usize> HeaderSource for [(N, V); LEN] {
    fn header(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        self.as_slice().header(lowercase_name)
    }
}

impl HeaderSource for BTreeMap<String, String> {
    fn header(&self, lowercase_name: &str) -> Option<Cow<'_, str>> {
        lookup_pairs(
            self.iter().map(|(n, v)| (n.as_str(), v.as_str())),
            lowercase_name,
        )
    }
}

/// A borrowed view of what routing looks at in a request.
#[derive(Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// `:authority`, or `Host` for HTTP/1.1, as received (port included if sent).
    pub authority: &'a str,
    /// The path; anything from the first `?` or `#` on is ignored for path matching.
    pub path: &'a str,
    /// The raw query string without `?`; when `None` it is taken from `path`.
    pub query: Option<&'a str>,
    pub headers: &'a dyn HeaderSource,
    /// Destination port the request arrived on.
    pub port: u16,
    /// Labels of the source workload, when known.
    pub source_labels: Option<&'a BTreeMap<String, String>>,
    pub source_namespace: Option<&'a str>,
}

impl std::fmt::Debug for RequestView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestView")
            .field("method", &self.method)
            .field("scheme", &self.scheme)
            .field("authority", &self.authority)
            .field("path", &self.path)
            .field("query", &self.query)
            .field("port", &self.port)
            .field("source_namespace", &self.source_namespace)
            .finish_non_exhaustive()
    }
}

/// Splits a `:path` into the path proper and the query string (fragment dropped).
pub fn split_path_and_query(raw: &str) -> (&str, Option<&str>) {
    let without_fragment = raw.split_once('#').map_or(raw, |(p, _)| p);
    match without_fragment.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (without_fragment, None),
    }
}

impl RequestView<'_> {
    fn path_only(&self) -> &str {
        split_path_and_query(self.path).0
    }

    fn query_string(&self) -> Option<&str> {
        self.query.or_else(|| split_path_and_query(self.path).1)
    }
}

/// A header (or query parameter) to check: `value: None` checks presence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyMatch {
    /// Lowercased by [`KeyMatch::header`]; query parameter names ([`KeyMatch::query`]) are
    /// case-sensitive.
    pub name: String,
    #[serde(default)]
    pub value: Option<StringMatch>,
}

impl KeyMatch {
    pub fn header(name: &str, value: Option<StringMatch>) -> Self {
        KeyMatch {
            name: name.to_ascii_lowercase(),
            value,
        }
    }

    pub fn query(name: &str, value: Option<StringMatch>) -> Self {
        KeyMatch {
            name: name.to_owned(),
            value,
        }
    }

    fn matches_value(&self, found: Option<&str>) -> bool {
        match (found, &self.value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(m)) => m.matches(v),
        }
    }

    /// Envoy `invert_match`: a missing header satisfies an inverted presence check only.
    fn matches_inverted(&self, found: Option<&str>) -> bool {
        match (found, &self.value) {
            (None, None) => true,
            (None, Some(_)) => false,
            (Some(_), None) => false,
            (Some(v), Some(m)) => !m.matches(v),
        }
    }
}

/// The kind of an Istio `StringMatch` as written in a resource, before translation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IstioStringMatch<'a> {
    /// `{}`: no match type set.
    Unset,
    Exact(&'a str),
    Prefix(&'a str),
    Regex(&'a str),
}

impl IstioStringMatch<'_> {
    /// Translates a `headers` / `withoutHeaders` / `queryParams` value the way istiod does: an
    /// empty match and the catch-all `regex: "*"` become a presence check (`None`); a regex is
    /// compiled (full match).
    pub fn to_value_match(self) -> Result<Option<StringMatch>, PolicyError> {
        Ok(match self {
            IstioStringMatch::Unset | IstioStringMatch::Regex("*") => None,
            IstioStringMatch::Exact(s) => Some(StringMatch::Exact(s.to_owned())),
            IstioStringMatch::Prefix(s) => Some(StringMatch::Prefix(s.to_owned())),
            IstioStringMatch::Regex(r) => Some(StringMatch::regex(r)?),
        })
    }
}

/// One `HTTPMatchRequest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpMatch {
    pub name: Option<String>,
    pub uri: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub headers: Vec<KeyMatch>,
    pub without_headers: Vec<KeyMatch>,
    pub query_params: Vec<KeyMatch>,
    pub port: Option<u16>,
    pub source_labels: BTreeMap<String, String>,
    pub source_namespace: Option<String>,
    pub ignore_uri_case: bool,
}

fn optional_match(m: &Option<StringMatch>, candidate: &str) -> bool {
    m.as_ref().is_none_or(|m| m.matches(candidate))
}

impl HttpMatch {
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        let uri_ok = self.uri.as_ref().is_none_or(|m| {
            if self.ignore_uri_case {
                m.matches_ignore_ascii_case(req.path_only())
            } else {
                m.matches(req.path_only())
            }
        });
        uri_ok
            && optional_match(&self.scheme, req.scheme)
            && optional_match(&self.method, req.method)
            && optional_match(&self.authority, req.authority)
            && self.port.is_none_or(|p| p == req.port)
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| req.source_namespace == Some(ns))
            && (self.source_labels.is_empty()
                || req.source_labels.is_some_and(|labels| {
                    self.source_labels
                        .iter()
                        .all(|(k, v)| labels.get(k) == Some(v))
                }))
            && self
                .headers
                .iter()
                .all(|h| h.matches_value(req.headers.header(&h.name).as_deref()))
            && self
                .without_headers
                .iter()
                .all(|h| h.matches_inverted(req.headers.header(&h.name).as_deref()))
            && (self.query_params.is_empty() || {
                let query = req.query_string().unwrap_or("");
                self.query_params
                    .iter()
                    .all(|q| q.matches_value(first_query_value(query, &q.name).as_deref()))
            })
    }
}

/// A route: its matches (ORed; empty matches everything). Destinations, retries and the rest
/// live beside it in the waypoint's own types, indexed the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRoute {
    pub name: Option<String>,
    pub matches: Vec<HttpMatch>,
}

/// Which route matched, and through which of its matches (`None`: the route has no matches).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSelection {
    pub route_index: usize,
    pub match_index: Option<usize>,
}

/// First route whose matches accept the request.
pub fn select_route(routes: &[HttpRoute], req: &RequestView<'_>) -> Option<RouteSelection> {
    routes.iter().enumerate().find_map(|(route_index, route)| {
        if route.matches.is_empty() {
            return Some(RouteSelection {
                route_index,
                match_index: None,
            });
        }
        route
            .matches
            .iter()
            .position(|m| m.matches(req))
            .map(|i| RouteSelection {
                route_index,
                match_index: Some(i),
            })
    })
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes a query component, `+` as space; malformed escapes are kept literally and
/// invalid UTF-8 is replaced, so a hostile query cannot make matching fail open or panic.
pub fn decode_query_component(raw: &str) -> Cow<'_, str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                push_percent_escape(&mut out, bytes, &mut i);
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

fn push_percent_escape(out: &mut Vec<u8>, bytes: &[u8], i: &mut usize) {
    let decoded = bytes
        .get(*i + 1)
        .and_then(|h| hex_value(*h))
        .zip(bytes.get(*i + 2).and_then(|l| hex_value(*l)));
    match decoded {
        Some((hi, lo)) => {
            out.push(hi << 4 | lo);
            *i += 3;
        }
        None => {
            out.push(b'%');
            *i += 1;
        }
    }
}

/// Value of the first occurrence of `name` in a query string (decoded); `Some("")` for `?name`.
pub fn first_query_value<'q>(query: &'q str, name: &str) -> Option<Cow<'q, str>> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .find_map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode_query_component(key) == name).then(|| decode_query_component(value))
        })
}

/// Index of the destination a `roll` (any uniformly distributed `u32`) selects among relative
/// `weights`, as Envoy's weighted clusters do: `roll % total` walks the cumulative weights, so a
/// zero weight is never chosen and weights need not sum to 100. A single destination receives
/// all traffic whatever its weight (Istio's rule); `None` when there is no destination or every
/// weight of several is zero (which Istio's validation rejects).
pub fn pick_weighted(weights: &[u32], roll: u32) -> Option<usize> {
    if weights.len() == 1 {
        return Some(0);
    }
    let total: u64 = weights.iter().map(|w| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let point = u64::from(roll) % total;
    let mut end = 0u64;
    weights.iter().position(|w| {
        end += u64::from(*w);
        point < end
    })
}

/// Denominator Istio uses when it turns a percentage into Envoy's `FractionalPercent` (MILLION).
pub const PERCENT_DENOMINATOR: u32 = 1_000_000;

/// Whether a `roll` falls within `percent` (0.0 to 100.0), for fault injection and mirroring:
/// Istio sends `percent * 10000` per million and Envoy compares `roll % 1_000_000` below it.
/// Values outside the range are clamped; NaN never hits.
pub fn percentage_hit(percent: f64, roll: u32) -> bool {
    let per_million = if percent.is_nan() {
        0
    } else {
        // Clamped to [0, 1_000_000] first, so the cast cannot truncate.
        (percent.clamp(0.0, 100.0) * 10_000.0) as u32
    };
    roll % PERCENT_DENOMINATOR < per_million
}

#[cfg(test)]
mod tests;
