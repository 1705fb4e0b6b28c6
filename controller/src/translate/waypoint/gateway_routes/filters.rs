//! The Gateway API's filters (header modifiers, URL rewrites, redirects, CORS) and matches of
//! headers and query parameters, in the waypoint's route terms.

use std::collections::BTreeMap;

use weft_proto::waypoint as wp;

use super::PrefixForm;
use crate::translate::gateway_api::{self as gw, Filter, HeaderModifier, PathModifier};

pub(super) fn key_match(m: &gw::KeyMatch) -> wp::StringMatch {
    use wp::string_match::MatchType;
    let value = m.value.clone();
    wp::StringMatch {
        match_type: Some(if m.match_type.as_deref() == Some("RegularExpression") {
            MatchType::Regex(value)
        } else {
            MatchType::Exact(value)
        }),
    }
}

/// The first entry per name counts (the Gateway API's rule for repeated names).
pub(super) fn key_matches(
    matches: &[gw::KeyMatch],
    name: impl Fn(&str) -> String,
) -> BTreeMap<String, wp::StringMatch> {
    let mut out = BTreeMap::new();
    for m in matches {
        out.entry(name(&m.name)).or_insert_with(|| key_match(m));
    }
    out
}

pub(super) fn header_operations(modifier: &HeaderModifier) -> wp::HeaderOperations {
    wp::HeaderOperations {
        set: modifier
            .set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: modifier
            .add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: modifier
            .remove
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}

/// The header operations of `filters` (route or backend level), `None` when there are none.
pub(super) fn filter_headers(filters: &[Filter]) -> Option<wp::Headers> {
    let request = filters
        .iter()
        .find_map(|f| f.request_header_modifier.as_ref())
        .map(header_operations);
    let response = filters
        .iter()
        .find_map(|f| f.response_header_modifier.as_ref())
        .map(header_operations);
    (request.is_some() || response.is_some()).then_some(wp::Headers { request, response })
}

/// A `ReplacePrefixMatch` value as Istio writes it (`/` removes the prefix), for the form of
/// the match it rewrites.
pub(super) fn prefix_replacement(replacement: &str, form: PrefixForm) -> String {
    let trimmed = replacement.trim_end_matches('/');
    match form {
        PrefixForm::Slash => format!("{trimmed}/"),
        PrefixForm::None | PrefixForm::Bare if trimmed.is_empty() => "/".to_owned(),
        PrefixForm::None | PrefixForm::Bare => trimmed.to_owned(),
    }
}

pub(super) fn rewrite(filter: &gw::UrlRewrite, form: PrefixForm) -> wp::HttpRewrite {
    let mut out = wp::HttpRewrite {
        authority: filter.hostname.clone().unwrap_or_default(),
        ..Default::default()
    };
    match filter.path.as_ref() {
        Some(PathModifier {
            replace_full_path: Some(full),
            ..
        }) => {
            out.uri_regex_rewrite = Some(wp::RegexRewrite {
                r#match: "/.*".to_owned(),
                rewrite: full.clone(),
            });
        }
        Some(PathModifier {
            replace_prefix_match: Some(prefix),
            ..
        }) => out.uri = prefix_replacement(prefix, form),
        _ => {}
    }
    out
}

const REQUEST_PORT: i32 = wp::http_redirect::RedirectPortSelection::FromRequestPort as i32;
const SCHEME_PORT: i32 = wp::http_redirect::RedirectPortSelection::FromProtocolDefault as i32;

/// Istio's `createRedirectFilter`: without a port, the scheme's default port when the scheme
/// changes, else the request's port; without a status, Istio's (and Envoy's) 301.
/// `ReplacePrefixMatch` is Istio's `prefixRewrite`, as written (a redirect's is not trimmed),
/// in place of Envoy's path-separated prefix: the segment-prefix form matched the separator
/// too, so it is put back after the replacement.
pub(super) fn redirect(filter: &gw::Redirect, form: PrefixForm) -> wp::HttpRedirect {
    use wp::http_redirect::RedirectPort;
    let (uri, prefix_rewrite) = match filter.path.as_ref() {
        Some(PathModifier {
            replace_full_path: Some(full),
            ..
        }) => (full.clone(), String::new()),
        Some(PathModifier {
            replace_prefix_match: Some(prefix),
            ..
        }) if !prefix.is_empty() => match form {
            PrefixForm::Slash => (String::new(), format!("{prefix}/")),
            PrefixForm::None | PrefixForm::Bare => (String::new(), prefix.clone()),
        },
        _ => (String::new(), String::new()),
    };
    wp::HttpRedirect {
        uri,
        prefix_rewrite,
        authority: filter.hostname.clone().unwrap_or_default(),
        redirect_port: Some(match (filter.port, &filter.scheme) {
            (Some(port), _) => RedirectPort::Port(u32::try_from(port).unwrap_or(0)),
            (None, Some(_)) => RedirectPort::DerivePort(SCHEME_PORT),
            (None, None) => RedirectPort::DerivePort(REQUEST_PORT),
        }),
        scheme: filter.scheme.clone().unwrap_or_default(),
        redirect_code: filter
            .status_code
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0),
    }
}

/// Istio's `createCorsFilter`: the CORS filter as a VirtualService `corsPolicy` with
/// `unmatchedPreflights: IGNORE`. An origin without `*` matches exactly; `*` alone matches any
/// well-formed origin (`scheme://host[:port]`); a single trailing `*` is a prefix; any other
/// `*` stands for any characters, the rest matched literally. `maxAge` is in seconds (the CRD's
/// default is 5; 0 sets none).
pub(super) fn cors(filter: &gw::Cors) -> wp::CorsPolicy {
    use wp::string_match::MatchType;
    let allow_origins = filter
        .allow_origins
        .iter()
        .filter(|o| !o.is_empty())
        .map(|origin| {
            let match_type = if origin == "*" {
                MatchType::Regex(ANY_ORIGIN.to_owned())
            } else if !origin.contains('*') {
                MatchType::Exact(origin.clone())
            } else if origin.matches('*').count() == 1 && origin.ends_with('*') {
                MatchType::Prefix(origin.trim_end_matches('*').to_owned())
            } else {
                MatchType::Regex(format!("^{}$", regex::escape(origin).replace(r"\*", ".*")))
            };
            wp::StringMatch {
                match_type: Some(match_type),
            }
        })
        .collect();
    let max_age = filter.max_age.unwrap_or(5);
    wp::CorsPolicy {
        allow_origins,
        allow_methods: filter.allow_methods.clone(),
        allow_headers: filter.allow_headers.clone(),
        expose_headers: filter.expose_headers.clone(),
        max_age: (max_age > 0).then_some(prost_types::Duration {
            seconds: max_age,
            nanos: 0,
        }),
        allow_credentials: (filter.allow_credentials == Some(true)).then_some(true),
        forward_not_matching_preflights: Some(false),
    }
}

/// Istio's pattern for the origin `*`: a valid origin (RFC 6454), `scheme://host[:port]`.
const ANY_ORIGIN: &str = r"^[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s?#]+$";

/// The route filter types the waypoint applies; any other (ExtensionRef, ExternalAuth) makes
/// the rule answer 500, as the Gateway API requires of a filter that is not applied.
pub(super) const APPLIED_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "CORS",
];

/// Backend filters the waypoint applies: header modifiers, per destination.
pub(super) const APPLIED_BACKEND_FILTERS: &[&str] =
    &["RequestHeaderModifier", "ResponseHeaderModifier"];

pub(super) fn internal_error() -> wp::HttpDirectResponse {
    wp::HttpDirectResponse {
        status: 500,
        body: None,
    }
}
