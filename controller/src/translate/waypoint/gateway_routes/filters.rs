//! The Gateway API's filters (header modifiers, URL rewrites, redirects) and matches of
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

/// The route filter types the waypoint applies; any other (CORS, ExtensionRef, ExternalAuth)
/// makes the rule answer 500, as the Gateway API requires of a filter that is not applied.
pub(super) const APPLIED_FILTERS: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
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
