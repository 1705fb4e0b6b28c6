//! One HTTP route, as Istio's `validateHTTPRoute` (`virtualservice.go`) checks it.

use base64::Engine;

use super::{check_destination, check_gateway_names, check_weights, is_jwt_claim_route};
use crate::model::networking::*;
use crate::validation::Findings;
use crate::validation::common::{
    EmptyPrefix, check_duration, check_headers, check_labels, check_percentage, check_port,
    check_string_match, duration_at_least_ms, is_authority_header,
};
use crate::validation::names::is_dns1123_label;

/// Retry conditions Envoy understands in `x-envoy-retry-on` and `x-envoy-retry-grpc-on`
/// (Istio's `supportedRetryOnPolicies`).
const RETRY_ON_POLICIES: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Go's `net/http` methods, and `*` (Istio's `supportedCORSMethods`).
const CORS_METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
];

/// HTTP status codes Go's `http.StatusText` knows: a number in `retryOn` must be one.
const HTTP_STATUS_CODES: &[u16] = &[
    100, 101, 102, 103, 200, 201, 202, 203, 204, 205, 206, 207, 208, 226, 300, 301, 302, 303, 304,
    305, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415,
    416, 417, 418, 421, 422, 423, 424, 425, 426, 428, 429, 431, 451, 500, 501, 502, 503, 504, 505,
    506, 507, 508, 510, 511,
];

const KB: usize = 1024;
const MB: usize = 1024 * KB;

/// RFC 7230 token characters: what a CORS header name may hold.
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Istio's `ValidateHTTPHeaderNameOrJwtClaimRoute`.
fn match_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_owned());
    }
    if is_jwt_claim_route(name)
        || matches!(
            name,
            ":method" | ":scheme" | ":authority" | ":path" | ":status"
        )
    {
        return Ok(());
    }
    if !is_token(name) {
        return Err(format!("header name {name} is not a valid header name"));
    }
    Ok(())
}

pub fn http_route(findings: &mut Findings, path: &str, route: &HttpRoute, delegate: bool) {
    route_conflicts(findings, path, route, delegate);
    for (j, m) in route.matches.iter().enumerate() {
        http_match(findings, &format!("{path}.match[{j}]"), m);
    }
    if let Some(headers) = &route.headers {
        check_headers(findings, &format!("{path}.headers"), headers);
    }
    if let Some(cors) = &route.cors_policy {
        cors_policy(findings, &format!("{path}.corsPolicy"), cors);
    }
    if let Some(fault) = &route.fault {
        fault_injection(findings, &format!("{path}.fault"), fault);
    }
    if let Some(percent) = route.mirror_percent() {
        if percent > 100 {
            findings.error(
                format!("{path}.mirrorPercent"),
                format!("mirror_percent must have a max value of 100 (it has {percent})"),
            );
        }
        findings.warn(
            format!("{path}.mirrorPercent"),
            "using deprecated setting \"mirrorPercent\", use \"mirrorPercentage\" instead",
        );
    }
    if let Some(percentage) = &route.mirror_percentage {
        mirror_percentage(
            findings,
            &format!("{path}.mirrorPercentage.value"),
            percentage,
        );
    }
    if let Some(mirror) = &route.mirror {
        check_destination(findings, &format!("{path}.mirror"), mirror);
    }
    for (j, mirror) in route.mirrors.iter().enumerate() {
        let mirror_path = format!("{path}.mirrors[{j}]");
        let Some(destination) = &mirror.destination else {
            findings.error(
                format!("{mirror_path}.destination"),
                "destination is required for mirrors",
            );
            continue;
        };
        check_destination(findings, &format!("{mirror_path}.destination"), destination);
        if let Some(percentage) = &mirror.percentage {
            mirror_percentage(
                findings,
                &format!("{mirror_path}.percentage.value"),
                percentage,
            );
        }
    }
    if let Some(redirect) = &route.redirect {
        findings.check(
            format!("{path}.redirect"),
            http_redirect(redirect, &route.matches),
        );
    }
    if let Some(response) = &route.direct_response {
        direct_response(findings, &format!("{path}.directResponse"), response);
    }
    if let Some(retries) = &route.retries {
        http_retry(findings, &format!("{path}.retries"), retries);
    }
    if let Some(rewrite) = &route.rewrite {
        findings.check(format!("{path}.rewrite"), http_rewrite(rewrite));
    }
    authority_rewrite(findings, path, route);
    check_weights(
        findings,
        &format!("{path}.route"),
        route
            .route
            .iter()
            .map(|r| (r.destination.as_ref(), r.weight)),
    );
    for (j, destination) in route.route.iter().enumerate() {
        if let Some(headers) = &destination.headers {
            check_headers(findings, &format!("{path}.route[{j}].headers"), headers);
        }
    }
    if let Some(timeout) = &route.timeout {
        check_duration(findings, format!("{path}.timeout"), timeout);
    }
}

/// Istio's `validateHTTPRouteConflict`: which action a route takes (route, redirect,
/// directResponse or, in a root VirtualService, delegate).
fn route_conflicts(findings: &mut Findings, path: &str, route: &HttpRoute, delegate: bool) {
    let has_route = !route.route.is_empty();
    let name = route.name.as_deref().unwrap_or("");
    if !delegate && route.delegate.is_some() {
        if route.redirect.is_some() {
            findings.error(
                format!("{path}.redirect"),
                format!("root HTTP route {name} must not specify redirect"),
            );
        }
        if has_route {
            findings.error(
                format!("{path}.route"),
                format!("root HTTP route {name} must not specify route"),
            );
        }
        return;
    }
    if delegate && route.delegate.is_some() {
        findings.error(
            format!("{path}.delegate"),
            "delegate HTTP route cannot contain delegate",
        );
    }
    let conflict = |findings: &mut Findings, field: &str, reason: &str| {
        findings.error(format!("{path}.{field}"), reason.to_owned());
    };
    if route.redirect.is_some() {
        if has_route {
            conflict(
                findings,
                "redirect",
                "HTTP route cannot contain both route and redirect",
            );
        }
        if route.fault.is_some() {
            conflict(
                findings,
                "redirect",
                "HTTP route cannot contain both fault and redirect",
            );
        }
        if route.rewrite.is_some() {
            conflict(
                findings,
                "redirect",
                "HTTP route rule cannot contain both rewrite and redirect",
            );
        }
        if route.direct_response.is_some() {
            conflict(
                findings,
                "directResponse",
                "HTTP route rule cannot contain both direct_response and redirect",
            );
        }
    } else if route.direct_response.is_some() {
        if has_route {
            conflict(
                findings,
                "directResponse",
                "HTTP route cannot contain both route and direct_response",
            );
        }
        if route.fault.is_some() {
            conflict(
                findings,
                "directResponse",
                "HTTP route cannot contain both fault and direct_response",
            );
        }
        if route.rewrite.is_some() {
            conflict(
                findings,
                "directResponse",
                "HTTP route rule cannot contain both rewrite and direct_response",
            );
        }
    } else if !has_route {
        findings.error(path, "HTTP route, redirect or direct_response is required");
    }
    if route.mirror.is_some() && !route.mirrors.is_empty() {
        conflict(
            findings,
            "mirrors",
            "HTTP route cannot contain both mirror and mirrors",
        );
    }
}

/// Istio's `validateHTTPRouteMatchRequest`.
fn http_match(findings: &mut Findings, path: &str, m: &HttpMatchRequest) {
    for (name, value) in &m.headers {
        let entry = format!("{path}.headers.{name}");
        findings.check(&entry, match_header_name(name));
        check_string_match(findings, &entry, value, EmptyPrefix::Refused);
    }
    for (name, value) in &m.without_headers {
        let entry = format!("{path}.withoutHeaders.{name}");
        findings.check(&entry, match_header_name(name));
        // `*` is no regex there: it means "present".
        if value.regex.as_deref() != Some("*") {
            check_string_match(findings, &entry, value, EmptyPrefix::Refused);
        }
    }
    // Envoy matches every path with an empty prefix; the other matches refuse one.
    if let Some(uri) = &m.uri {
        check_string_match(findings, &format!("{path}.uri"), uri, EmptyPrefix::Allowed);
    }
    for (field, value) in [
        ("scheme", &m.scheme),
        ("method", &m.method),
        ("authority", &m.authority),
    ] {
        if let Some(value) = value {
            check_string_match(
                findings,
                &format!("{path}.{field}"),
                value,
                EmptyPrefix::Refused,
            );
        }
    }
    for (name, value) in &m.query_params {
        check_string_match(
            findings,
            &format!("{path}.queryParams.{name}"),
            value,
            EmptyPrefix::Refused,
        );
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        check_port(findings, format!("{path}.port"), u64::from(port));
    }
    check_labels(findings, &format!("{path}.sourceLabels"), &m.source_labels);
    check_gateway_names(findings, &format!("{path}.gateways"), &m.gateways);
    if let Some(ns) = m.source_namespace.as_deref().filter(|ns| !ns.is_empty())
        && !is_dns1123_label(ns)
    {
        findings.error(
            format!("{path}.sourceNamespace"),
            format!("sourceNamespace match {ns} is invalid"),
        );
    }
}

fn mirror_percentage(findings: &mut Findings, path: &str, percentage: &Percent) {
    let value = percentage.value;
    if value > 100.0 {
        findings.error(
            path,
            format!("mirror percentage must have a max value of 100 (it has {value})"),
        );
    }
    if value < 0.0 {
        findings.error(
            path,
            format!("mirror percentage must have a min value of 0 (it has {value})"),
        );
    }
}

/// Istio's `validateCORSPolicy`.
fn cors_policy(findings: &mut Findings, path: &str, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let entry = format!("{path}.allowOrigins[{i}]");
        let value = origin
            .exact
            .as_deref()
            .or(origin.prefix.as_deref())
            .or(origin.regex.as_deref())
            .unwrap_or("");
        if value.is_empty() {
            findings.error(
                &entry,
                "'' is not a valid match type for CORS allow origins",
            );
        } else {
            check_string_match(findings, &entry, origin, EmptyPrefix::Allowed);
        }
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            findings.error(
                format!("{path}.allowMethods[{i}]"),
                format!("{method:?} is not a supported HTTP method"),
            );
        }
    }
    for (field, list) in [
        ("allowHeaders", &cors.allow_headers),
        ("exposeHeaders", &cors.expose_headers),
    ] {
        for (i, name) in list.iter().enumerate() {
            let reason = if name.is_empty() {
                Some("header name cannot be empty".to_owned())
            } else if name != "*" && !is_token(name) {
                Some(format!("header name {name} is not a valid header name"))
            } else {
                None
            };
            if let Some(reason) = reason {
                findings.error(format!("{path}.{field}[{i}]"), reason);
            }
        }
    }
    if let Some(max_age) = &cors.max_age {
        match duration_at_least_ms(max_age) {
            Ok(d) if d.subsec_nanos() != 0 => findings.error(
                format!("{path}.maxAge"),
                "max_age duration is accurate only to seconds precision",
            ),
            Ok(_) => {}
            Err(reason) => findings.error(format!("{path}.maxAge"), reason),
        }
    }
}

/// Istio's `validateHTTPFaultInjection`.
fn fault_injection(findings: &mut Findings, path: &str, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        findings.error(
            path,
            "HTTP fault injection must have an abort and/or a delay",
        );
    }
    if let Some(abort) = &fault.abort {
        let abort_path = format!("{path}.abort");
        if let Some(percentage) = &abort.percentage {
            check_percentage(
                findings,
                format!("{abort_path}.percentage.value"),
                percentage,
            );
        }
        let kinds = [
            abort.http_status.is_some(),
            abort.grpc_status.is_some(),
            abort.http2_error.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() > 1 {
            findings.error(
                &abort_path,
                "abort may specify only one of httpStatus, grpcStatus or http2Error",
            );
        }
        if let Some(status) = &abort.grpc_status {
            if !weft_policy::route::GRPC_STATUS_NAMES.contains(&status.as_str()) {
                findings.error(
                    format!("{abort_path}.grpcStatus"),
                    format!(
                        "gRPC status {status:?} is not supported. See https://github.com/grpc/grpc/blob/master/doc/statuscodes.md for a list of supported codes, for example 'NOT_FOUND'"
                    ),
                );
            }
        } else if abort.http2_error.is_some() {
            findings.error(
                format!("{abort_path}.http2Error"),
                "HTTP/2 abort fault injection not supported yet",
            );
        } else if let Some(status) = abort.http_status {
            if !(200..=600).contains(&status) {
                findings.error(
                    format!("{abort_path}.httpStatus"),
                    format!("HTTP status {status} is not in range 200-599"),
                );
            }
        } else {
            findings.warn(&abort_path, "abort configured, but error type not set");
        }
    }
    if let Some(delay) = &fault.delay {
        let delay_path = format!("{path}.delay");
        if let Some(percentage) = &delay.percentage {
            check_percentage(
                findings,
                format!("{delay_path}.percentage.value"),
                percentage,
            );
        }
        if delay.fixed_delay.is_some() && delay.exponential_delay.is_some() {
            findings.error(
                &delay_path,
                "delay may specify only one of fixedDelay or exponentialDelay",
            );
        }
        if let Some(fixed) = &delay.fixed_delay {
            check_duration(findings, format!("{delay_path}.fixedDelay"), fixed);
        } else if let Some(exponential) = &delay.exponential_delay {
            check_duration(
                findings,
                format!("{delay_path}.exponentialDelay"),
                exponential,
            );
            findings.error(
                format!("{delay_path}.exponentialDelay"),
                "exponentialDelay not supported yet",
            );
        }
    }
}

/// Istio's `validateHTTPRedirect` (which reports its first problem only).
fn http_redirect(redirect: &HttpRedirect, matches: &[HttpMatchRequest]) -> Result<(), String> {
    let uri = redirect.uri.as_deref().unwrap_or("");
    let prefix_rewrite = redirect.prefix_rewrite.as_deref().unwrap_or("");
    if !uri.is_empty() && !prefix_rewrite.is_empty() {
        return Err("redirect may only specify one of uri or prefix_rewrite".to_owned());
    }
    if !prefix_rewrite.is_empty()
        && matches
            .iter()
            .any(|m| m.uri.as_ref().is_some_and(|u| u.prefix.is_none()))
    {
        return Err(
            "redirect prefix_rewrite requires all URI matches to use prefix match type".to_owned(),
        );
    }
    if redirect.port.is_some() && redirect.derive_port.is_some() {
        return Err("redirect may specify only one of port or derivePort".to_owned());
    }
    let has_port = redirect.port.is_some() || redirect.derive_port.is_some();
    if uri.is_empty()
        && prefix_rewrite.is_empty()
        && redirect.authority.as_deref().unwrap_or("").is_empty()
        && !has_port
        && redirect.scheme.as_deref().unwrap_or("").is_empty()
    {
        return Err("redirect must specify URI, authority, scheme, or port".to_owned());
    }
    if let Some(code) = redirect.redirect_code.filter(|c| *c != 0)
        && !(300..=399).contains(&code)
    {
        return Err(format!("{code} is not a valid redirect code, must be 3xx"));
    }
    if let Some(scheme) = redirect.scheme.as_deref()
        && !scheme.is_empty()
        && scheme != "http"
        && scheme != "https"
    {
        return Err("invalid redirect scheme, must be \"http\" or \"https\"".to_owned());
    }
    if let Some(port) = redirect.port.filter(|p| *p > 0)
        && port > 65535
    {
        return Err(format!("port number {port} must be in the range 1..65535"));
    }
    Ok(())
}

/// Proto JSON takes standard or URL-safe base64, padded or not.
fn decoded_len(bytes: &str) -> Option<usize> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(bytes).ok())
        .map(|decoded| decoded.len())
}

/// Istio's `validateHTTPDirectResponse`.
fn direct_response(findings: &mut Findings, path: &str, response: &HttpDirectResponse) {
    if let Some(body) = &response.body {
        if body.string.is_some() && body.bytes.is_some() {
            findings.error(
                format!("{path}.body"),
                "body may specify only one of string or bytes",
            );
        }
        let size = match (&body.string, &body.bytes) {
            (Some(text), _) => Some(text.len()),
            (None, Some(bytes)) => match decoded_len(bytes) {
                Some(len) => Some(len),
                None => {
                    findings.error(format!("{path}.body.bytes"), "bytes must be base64 encoded");
                    None
                }
            },
            (None, None) => Some(0),
        };
        match size {
            Some(size) if size > MB => findings.error(
                format!("{path}.body"),
                "large direct_responses may impact control plane performance, must be less than 1MB",
            ),
            Some(size) if size > 100 * KB => findings.warn(
                format!("{path}.body"),
                "large direct_responses may impact control plane performance",
            ),
            _ => {}
        }
    }
    if !(200..=600).contains(&response.status) {
        findings.error(
            format!("{path}.status"),
            format!("HTTP status {} is not in range 200-599", response.status),
        );
    }
}

/// Istio's `ValidateHTTPRetry`.
fn http_retry(findings: &mut Findings, path: &str, retries: &HttpRetry) {
    if retries.attempts < 0 {
        findings.error(format!("{path}.attempts"), "attempts cannot be negative");
    }
    let retry_on = retries.retry_on.as_deref().unwrap_or("");
    if retries.attempts == 0
        && (retries.per_try_timeout.is_some()
            || !retry_on.is_empty()
            || retries.retry_remote_localities.is_some())
    {
        findings.error(
            format!("{path}.attempts"),
            "http retry policy configured when attempts are set to 0 (disabled)",
        );
    }
    if let Some(timeout) = &retries.per_try_timeout {
        check_duration(findings, format!("{path}.perTryTimeout"), timeout);
    }
    if !retry_on.is_empty() {
        for policy in retry_on.split(',') {
            let status = policy
                .parse::<u16>()
                .is_ok_and(|code| HTTP_STATUS_CODES.contains(&code));
            if !status && !RETRY_ON_POLICIES.contains(&policy) {
                findings.error(
                    format!("{path}.retryOn"),
                    format!("{policy:?} is not a valid retryOn policy"),
                );
            }
        }
    }
    if let Some(backoff) = &retries.backoff {
        check_duration(findings, format!("{path}.backoff"), backoff);
    }
}

/// Istio's `validateHTTPRewrite` (its first problem only).
fn http_rewrite(rewrite: &HttpRewrite) -> Result<(), String> {
    let uri = rewrite.uri.as_deref().unwrap_or("");
    if !uri.is_empty() && rewrite.uri_regex_rewrite.is_some() {
        return Err("rewrite may only contain one of URI or UriRegexRewrite".to_owned());
    }
    if uri.is_empty()
        && rewrite.uri_regex_rewrite.is_none()
        && rewrite.authority.as_deref().unwrap_or("").is_empty()
    {
        return Err("rewrite must specify at least one of URI, UriRegexRewrite, or authority. Only one of URI or UriRegexRewrite may be specified".to_owned());
    }
    if let Some(regex_rewrite) = &rewrite.uri_regex_rewrite {
        if regex_rewrite.pattern.is_empty() || regex_rewrite.rewrite.is_empty() {
            return Err("UriRegexRewrite has errors: UriRegexRewrite requires both Rewrite and Match fields to be specified".to_owned());
        }
        super::super::common::compile_regex(&regex_rewrite.pattern)
            .map_err(|e| format!("UriRegexRewrite has errors: {e}"))?;
    }
    Ok(())
}

/// Istio's `validateAuthorityRewrite`: the authority is rewritten in one place only.
fn authority_rewrite(findings: &mut Findings, path: &str, route: &HttpRoute) {
    let mut current = route
        .rewrite
        .as_ref()
        .and_then(|r| r.authority.clone())
        .filter(|a| !a.is_empty());
    let request = route.headers.as_ref().and_then(|h| h.request.as_ref());
    let sets = request.into_iter().flat_map(|r| r.set.iter().chain(&r.add));
    for (name, value) in sets {
        if !is_authority_header(name) {
            continue;
        }
        if let Some(have) = &current {
            findings.error(
                format!("{path}.headers.request"),
                format!("authority header cannot be set multiple times: have {have:?}, attempting to set {value:?}"),
            );
            return;
        }
        current = Some(value.clone());
    }
}
