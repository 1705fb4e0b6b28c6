//! What a route does besides forwarding, each a small function over the route's settings:
//! CORS (preflight answers and the headers on other answers), fault injection (delay, abort),
//! redirects and path rewrites. Direct responses need nothing but their [`LocalReply`].

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use weft_policy::StringMatch;
use weft_policy::route::percentage_hit;

use super::LocalReply;
use crate::metrics::{RequestRecord, ResponseFlag};
use crate::model::{CorsPolicy, Fault, Redirect, RedirectPort, Rewrite};

/// The answer to a preflight: from an `origin` the policy allows, or (`None`) from one it does
/// not when the policy answers those (`unmatchedPreflights: IGNORE`), as Envoy's CORS filter
/// does: without `Access-Control-Allow-Origin` or the exposed headers, which it gives allowed
/// origins only, so the browser refuses the request it was asked about.
pub(super) fn cors_preflight(cors: &CorsPolicy, origin: Option<&str>) -> LocalReply {
    let mut headers = HeaderMap::new();
    match origin {
        Some(origin) => add_cors_headers(cors, origin, &mut headers),
        None if cors.allow_credentials => {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        None => {}
    }
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
    LocalReply::CorsPreflight(headers)
}

/// The CORS headers of an answer to an allowed `origin`.
pub(super) fn add_cors_headers(cors: &CorsPolicy, origin: &str, headers: &mut HeaderMap) {
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

/// Delays the request (recorded as `DI`) when the delay's percentage hits; then the abort, if
/// its percentage hits, is the answer.
pub(super) async fn apply_fault(fault: &Fault, record: &mut RequestRecord) -> Option<LocalReply> {
    if let Some((delay, percent)) = fault.delay
        && percentage_hit(percent, rand::random())
    {
        record.response_flags.insert(ResponseFlag::DelayInjected);
        tokio::time::sleep(delay).await;
    }
    let (kind, percent) = fault.abort.as_ref()?;
    percentage_hit(*percent, rand::random()).then(|| LocalReply::FaultAbort(kind.clone()))
}

/// The path a redirect names: the request's as it arrived (`raw_path`, with its query), or
/// the route's `uri`, or the route's `prefix_rewrite` in place of what `matched_uri` (the uri
/// match that selected the route) matched of the routed path (`path`, normalized), the query
/// kept.
pub(super) struct RedirectPath<'a> {
    pub raw_path: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub matched_uri: Option<&'a StringMatch>,
}

/// The redirect of a request for `authority` and `path`, received on `request_port`.
pub(super) fn redirect(
    redirect: &Redirect,
    authority: &str,
    path: &RedirectPath<'_>,
    request_port: u16,
) -> LocalReply {
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
    let path = match (&redirect.uri, &redirect.prefix_rewrite) {
        (Some(uri), _) => uri.clone(),
        (None, Some(replacement)) => prefix_redirect_path(replacement, path),
        (None, None) => path.raw_path.to_owned(),
    };
    let location = match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    LocalReply::Redirect {
        status: redirect.status,
        location: HeaderValue::from_str(&location).ok(),
    }
}

/// Envoy's `prefix_rewrite` of a redirect: the matched part of the path replaced, the rest and
/// the query kept. Envoy matched the path against the route's own matcher: a prefix or exact
/// path is what it strips (compared without case, as an `ignoreUriCase` match is), a regex
/// the whole path, and a route without a uri match is Istio's prefix `/`.
fn prefix_redirect_path(replacement: &str, request: &RedirectPath<'_>) -> String {
    let path = request.path;
    let matched = match request.matched_uri {
        Some(StringMatch::Prefix(p) | StringMatch::Exact(p)) => p.as_str(),
        Some(StringMatch::Regex(_)) => path,
        None => "/",
    };
    let new_path = match path.get(..matched.len()) {
        Some(head) if head.eq_ignore_ascii_case(matched) => {
            format!("{replacement}{}", &path[matched.len()..])
        }
        // Not what the route matched: nothing to replace.
        _ => path.to_owned(),
    };
    match request.query {
        Some(query) => format!("{new_path}?{query}"),
        None => new_path,
    }
}

/// The path after the route's rewrite; `matched_uri` is the uri match that selected the route.
pub(super) fn rewrite_path(
    rewrite: &Rewrite,
    matched_uri: Option<&StringMatch>,
    path: &str,
) -> String {
    if let Some((regex, replacement)) = &rewrite.uri_regex {
        return regex.replace_all(path, replacement.as_str()).into_owned();
    }
    let Some(replacement) = &rewrite.uri else {
        return path.to_owned();
    };
    match matched_uri {
        Some(StringMatch::Prefix(prefix)) if path.starts_with(prefix.as_str()) => {
            format!("{replacement}{}", &path[prefix.len()..])
        }
        Some(StringMatch::Exact(_)) => replacement.clone(),
        // istiod rewrites the whole path for regex matches and a "/" prefix for no match.
        Some(_) => replacement.clone(),
        None => format!("{replacement}{}", path.strip_prefix('/').unwrap_or(path)),
    }
}

#[cfg(test)]
mod tests {
    use http::StatusCode;

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
        let rule = |uri: Option<&str>, authority: Option<&str>, port| Redirect {
            uri: uri.map(str::to_owned),
            prefix_rewrite: None,
            authority: authority.map(str::to_owned),
            scheme: None,
            port,
            status: StatusCode::MOVED_PERMANENTLY,
        };
        let cases = [
            (
                rule(Some("/v2"), None, RedirectPort::SchemeDefault),
                "a.b:9080",
                "/v1",
                "http://a.b/v2",
            ),
            (
                rule(None, Some("c.d"), RedirectPort::FromRequest),
                "a.b:9080",
                "/x?q=1",
                "http://c.d:9080/x?q=1",
            ),
            (
                rule(None, None, RedirectPort::Explicit(8443)),
                "a.b",
                "/",
                "http://a.b:8443/",
            ),
        ];
        for (rule, authority, path, expected) in cases {
            let request = RedirectPath {
                raw_path: path,
                path: path.split('?').next().unwrap(),
                query: path.split_once('?').map(|(_, q)| q),
                matched_uri: None,
            };
            let reply = redirect(&rule, authority, &request, 9080).reply();
            assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
            assert_eq!(reply.headers[header::LOCATION], expected);
        }
    }

    #[test]
    fn preflights_from_origins_not_allowed_are_answered_without_allowing_them() {
        let cors = CorsPolicy {
            allow_origins: vec![StringMatch::Exact("https://a.example".to_owned())],
            allow_methods: "GET,POST".to_owned(),
            allow_headers: "x-token".to_owned(),
            expose_headers: "x-served-by".to_owned(),
            max_age: Some(std::time::Duration::from_secs(600)),
            allow_credentials: true,
            forward_unmatched_preflights: false,
        };
        let allowed = cors_preflight(&cors, Some("https://a.example")).reply();
        let refused = cors_preflight(&cors, None).reply();
        for reply in [&allowed, &refused] {
            assert_eq!(reply.status, StatusCode::OK);
            assert_eq!(
                reply.headers[header::ACCESS_CONTROL_ALLOW_METHODS],
                "GET,POST"
            );
            assert_eq!(
                reply.headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
                "x-token"
            );
            assert_eq!(reply.headers[header::ACCESS_CONTROL_MAX_AGE], "600");
            assert_eq!(
                reply.headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
                "true"
            );
        }
        assert_eq!(
            allowed.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.example"
        );
        assert_eq!(
            allowed.headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
            "x-served-by"
        );
        assert!(
            !refused
                .headers
                .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
        );
        assert!(
            !refused
                .headers
                .contains_key(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        );
    }

    #[test]
    fn prefix_redirects_replace_what_the_route_matched() {
        let rule = Redirect {
            uri: None,
            prefix_rewrite: Some("/new".to_owned()),
            authority: None,
            scheme: None,
            port: RedirectPort::SchemeDefault,
            status: StatusCode::FOUND,
        };
        let prefix = StringMatch::Prefix("/old".to_owned());
        let slash = StringMatch::Prefix("/old/".to_owned());
        let exact = StringMatch::Exact("/old".to_owned());
        let regex = StringMatch::regex("/o.*").unwrap();
        let cases = [
            // (matched, routed path, query, location's path)
            (Some(&prefix), "/old/page", None, "/new/page"),
            (Some(&prefix), "/old/page", Some("a=1&b"), "/new/page?a=1&b"),
            (Some(&prefix), "/old", None, "/new"),
            (Some(&prefix), "/oldest", None, "/newest"),
            // Envoy strips the prefix as long as it is: `/new` and `/old/` leave no separator.
            (Some(&slash), "/old/x", None, "/newx"),
            (Some(&exact), "/old", Some("q"), "/new?q"),
            // An ignoreUriCase match holds its prefix in lower case.
            (Some(&prefix), "/OLD/Page", None, "/new/Page"),
            (Some(&regex), "/other/x", Some("q"), "/new?q"),
            // No uri match: Istio's prefix `/`.
            (None, "/x/y", None, "/newx/y"),
        ];
        for (matched, path, query, expected) in cases {
            let request = RedirectPath {
                raw_path: "/raw/is/not/used",
                path,
                query,
                matched_uri: matched,
            };
            let reply = redirect(&rule, "a.b", &request, 80).reply();
            assert_eq!(reply.status, StatusCode::FOUND);
            assert_eq!(
                reply.headers[header::LOCATION],
                format!("http://a.b{expected}").as_str(),
                "{path}"
            );
        }
    }
}
