//! HTTP routes: matches, destinations, redirects, direct responses, rewrites, header
//! operations, retries, faults, mirrors and CORS.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use weft_policy::StringMatch;
use weft_policy::route::{HttpMatch, HttpRoute as RouteMatches, IstioStringMatch, KeyMatch};
use weft_proto::waypoint as proto;

use super::{
    duration, header_name, header_value, nonzero_port, optional_duration, policy_error, port,
};
use crate::model::{
    AbortKind, ConfigError, CookieTemplate, CorsPolicy, DEFAULT_RETRY_ON, Fault, HeaderOps,
    Headers, Mirror, Redirect, RedirectPort, RetryOn, RetryPolicy, Rewrite, Route, RouteAction,
    StatefulSession, WeightedDestination, invalid,
};
use crate::rate_limit::{LocalRateLimit, MIN_FILL_INTERVAL, RateLimitScope};

fn istio_match(m: &proto::StringMatch) -> IstioStringMatch<'_> {
    use proto::string_match::MatchType;
    match &m.match_type {
        None => IstioStringMatch::Unset,
        Some(MatchType::Exact(s)) => IstioStringMatch::Exact(s),
        Some(MatchType::Prefix(s)) => IstioStringMatch::Prefix(s),
        Some(MatchType::Regex(s)) => IstioStringMatch::Regex(s),
    }
}

/// A `uri`/`method`/... match: an unset match type matches anything.
fn field_match(
    m: Option<&proto::StringMatch>,
    context: &str,
) -> Result<Option<StringMatch>, ConfigError> {
    use proto::string_match::MatchType;
    let Some(m) = m else { return Ok(None) };
    Ok(match &m.match_type {
        None => None,
        Some(MatchType::Exact(s)) => Some(StringMatch::Exact(s.clone())),
        Some(MatchType::Prefix(s)) => Some(StringMatch::Prefix(s.clone())),
        Some(MatchType::Regex(r)) => Some(StringMatch::regex(r).map_err(policy_error(context))?),
    })
}

fn key_matches(
    map: &BTreeMap<String, proto::StringMatch>,
    query: bool,
    context: &str,
) -> Result<Vec<KeyMatch>, ConfigError> {
    map.iter()
        .map(|(name, m)| {
            let value = istio_match(m)
                .to_value_match()
                .map_err(policy_error(context))?;
            Ok(if query {
                KeyMatch::query(name, value)
            } else {
                KeyMatch::header(name, value)
            })
        })
        .collect()
}

fn http_match(m: &proto::HttpMatchRequest, context: &str) -> Result<HttpMatch, ConfigError> {
    Ok(HttpMatch {
        name: (!m.name.is_empty()).then(|| m.name.clone()),
        uri: field_match(m.uri.as_ref(), context)?,
        scheme: field_match(m.scheme.as_ref(), context)?,
        method: field_match(m.method.as_ref(), context)?,
        authority: field_match(m.authority.as_ref(), context)?,
        headers: key_matches(&m.headers, false, context)?,
        without_headers: key_matches(&m.without_headers, false, context)?,
        query_params: key_matches(&m.query_params, true, context)?,
        port: nonzero_port(m.port, context)?,
        source_labels: m.source_labels.clone(),
        source_namespace: (!m.source_namespace.is_empty()).then(|| m.source_namespace.clone()),
        ignore_uri_case: m.ignore_uri_case,
    })
}

fn header_ops(
    ops: Option<&proto::HeaderOperations>,
    context: &str,
) -> Result<HeaderOps, ConfigError> {
    let Some(ops) = ops else {
        return Ok(HeaderOps::default());
    };
    let pairs = |map: &BTreeMap<String, String>| -> Result<Vec<_>, ConfigError> {
        map.iter()
            .map(|(n, v)| Ok((header_name(n, context)?, header_value(n, v, context)?)))
            .collect()
    };
    Ok(HeaderOps {
        set: pairs(&ops.set)?,
        add: pairs(&ops.add)?,
        remove: ops
            .remove
            .iter()
            .map(|n| header_name(n, context))
            .collect::<Result<_, _>>()?,
    })
}

fn headers(h: Option<&proto::Headers>, context: &str) -> Result<Headers, ConfigError> {
    Ok(match h {
        None => Headers::default(),
        Some(h) => Headers {
            request: header_ops(h.request.as_ref(), context)?,
            response: header_ops(h.response.as_ref(), context)?,
        },
    })
}

fn status(value: i64, context: &str) -> Result<StatusCode, ConfigError> {
    u16::try_from(value)
        .ok()
        .and_then(|v| StatusCode::from_u16(v).ok())
        .ok_or_else(|| ConfigError::Status {
            context: context.to_owned(),
            value,
        })
}

fn percent(p: Option<&proto::Percent>, context: &str) -> Result<f64, ConfigError> {
    let value = p.map_or(100.0, |p| p.value);
    if !(0.0..=100.0).contains(&value) {
        return Err(invalid(
            context,
            format!("percentage {value} outside 0..100"),
        ));
    }
    Ok(value)
}

/// gRPC status code of a name such as `UNAVAILABLE`, or a number.
fn grpc_code(name: &str) -> Option<u32> {
    name.parse::<u32>().ok().filter(|c| *c <= 16).or_else(|| {
        weft_policy::route::GRPC_STATUS_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .and_then(|p| u32::try_from(p).ok())
    })
}

fn fault(f: &proto::HttpFaultInjection, context: &str) -> Result<Fault, ConfigError> {
    use proto::http_fault_injection::abort::ErrorType;
    let delay = f
        .delay
        .as_ref()
        .map(|d| {
            let fixed = d
                .fixed_delay
                .as_ref()
                .ok_or_else(|| invalid(context, "fault delay without fixedDelay"))?;
            Ok::<_, ConfigError>((
                duration(fixed, context)?,
                percent(d.percentage.as_ref(), context)?,
            ))
        })
        .transpose()?;
    let abort = f
        .abort
        .as_ref()
        .map(|a| {
            let kind = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) => AbortKind::Http(status(i64::from(*s), context)?),
                Some(ErrorType::GrpcStatus(name)) => AbortKind::Grpc(
                    grpc_code(name)
                        .ok_or_else(|| invalid(context, format!("unknown gRPC status {name:?}")))?,
                ),
                None => return Err(invalid(context, "fault abort without a status")),
            };
            Ok((kind, percent(a.percentage.as_ref(), context)?))
        })
        .transpose()?;
    Ok(Fault { delay, abort })
}

/// A destination's cluster name and host. The cluster need not be defined: as in Envoy, a
/// route may name a cluster that does not exist (istiod does so for an undefined subset, host
/// or port), and what is routed there is answered 503 `NC` at request time.
pub(super) fn destination_cluster(
    d: Option<&proto::Destination>,
    context: &str,
) -> Result<(String, String), ConfigError> {
    let d = d.ok_or_else(|| invalid(context, "destination missing"))?;
    if d.cluster.is_empty() {
        return Err(invalid(context, "destination without a cluster name"));
    }
    Ok((d.cluster.clone(), d.host.clone()))
}

/// Turns Istio's `\1` capture references into the regex crate's `${1}`.
pub(super) fn regex_replacement(rewrite: &str) -> String {
    let mut out = String::with_capacity(rewrite.len());
    let mut chars = rewrite.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(char::is_ascii_digit) => {
                out.push_str("${");
                while let Some(d) = chars.peek().copied().filter(char::is_ascii_digit) {
                    out.push(d);
                    chars.next();
                }
                out.push('}');
            }
            '$' => out.push_str("$$"),
            other => out.push(other),
        }
    }
    out
}

pub(super) fn route(
    r: &proto::HttpRoute,
    context: &str,
) -> Result<(RouteMatches, Route), ConfigError> {
    let matches = r
        .r#match
        .iter()
        .map(|m| http_match(m, context))
        .collect::<Result<Vec<_>, _>>()?;
    if !r.operations.is_empty() && r.operations.len() != r.r#match.len().max(1) {
        return Err(invalid(
            &format!("{context} operations"),
            format!(
                "{} operations for {} matches: one per match, or one without matches",
                r.operations.len(),
                r.r#match.len()
            ),
        ));
    }
    let set_count = usize::from(!r.route.is_empty())
        + usize::from(r.redirect.is_some())
        + usize::from(r.direct_response.is_some());
    if set_count != 1 {
        return Err(invalid(
            context,
            "exactly one of route, redirect and directResponse must be set",
        ));
    }
    let action = if let Some(redirect) = &r.redirect {
        use proto::http_redirect::{RedirectPort as P, RedirectPortSelection};
        let port = match redirect.redirect_port {
            None => RedirectPort::SchemeDefault,
            Some(P::Port(p)) => RedirectPort::Explicit(port(p, context)?),
            Some(P::DerivePort(d)) => {
                if d == RedirectPortSelection::FromRequestPort as i32 {
                    RedirectPort::FromRequest
                } else {
                    RedirectPort::SchemeDefault
                }
            }
        };
        let code = if redirect.redirect_code == 0 {
            StatusCode::MOVED_PERMANENTLY
        } else {
            status(i64::from(redirect.redirect_code), context)?
        };
        if !code.is_redirection() {
            return Err(invalid(context, format!("redirect code {code} is not 3xx")));
        }
        if !redirect.uri.is_empty() && !redirect.prefix_rewrite.is_empty() {
            return Err(invalid(
                context,
                "redirect may set only one of uri and prefixRewrite",
            ));
        }
        let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
        RouteAction::Redirect(Redirect {
            uri: nonempty(&redirect.uri),
            prefix_rewrite: nonempty(&redirect.prefix_rewrite),
            authority: nonempty(&redirect.authority),
            scheme: nonempty(&redirect.scheme),
            port,
            status: code,
        })
    } else if let Some(direct) = &r.direct_response {
        use proto::http_body::Specifier;
        let body = match direct.body.as_ref().and_then(|b| b.specifier.as_ref()) {
            None => Bytes::new(),
            Some(Specifier::String(s)) => Bytes::from(s.clone()),
            Some(Specifier::Bytes(b)) => Bytes::from(b.clone()),
        };
        RouteAction::DirectResponse {
            status: status(i64::from(direct.status), context)?,
            body,
        }
    } else {
        let destinations = r
            .route
            .iter()
            .map(|d| {
                let (cluster, host) = destination_cluster(d.destination.as_ref(), context)?;
                Ok(WeightedDestination {
                    cluster,
                    host,
                    weight: u32::try_from(d.weight)
                        .map_err(|_| invalid(context, "negative weight"))?,
                    headers: headers(d.headers.as_ref(), context)?,
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;
        if destinations.len() > 1 && destinations.iter().all(|d| d.weight == 0) {
            return Err(invalid(context, "all destination weights are zero"));
        }
        RouteAction::Forward(destinations)
    };
    let rewrite = r
        .rewrite
        .as_ref()
        .map(|rw| {
            if !rw.uri.is_empty() && rw.uri_regex_rewrite.is_some() {
                return Err(invalid(
                    context,
                    "rewrite.uri and uriRegexRewrite are exclusive",
                ));
            }
            let uri_regex = rw
                .uri_regex_rewrite
                .as_ref()
                .map(|rr| {
                    regex::Regex::new(&rr.r#match)
                        .map(|re| (re, regex_replacement(&rr.rewrite)))
                        .map_err(|e| invalid(context, format!("uriRegexRewrite: {e}")))
                })
                .transpose()?;
            Ok(Rewrite {
                uri: (!rw.uri.is_empty()).then(|| rw.uri.clone()),
                uri_regex,
                authority: (!rw.authority.is_empty())
                    .then(|| header_value(":authority", &rw.authority, context))
                    .transpose()?,
            })
        })
        .transpose()?;
    let retries = match &r.retries {
        None => RetryPolicy::mesh_default(),
        Some(retry) => RetryPolicy {
            attempts: u32::try_from(retry.attempts)
                .map_err(|_| invalid(context, "negative retry attempts"))?,
            per_try_timeout: optional_duration(retry.per_try_timeout.as_ref(), context)?,
            on: if retry.retry_on.is_empty() {
                RetryOn::parse(DEFAULT_RETRY_ON, context)?
            } else {
                RetryOn::parse(&retry.retry_on, context)?
            },
            ignore_previous_hosts: retry.retry_ignore_previous_hosts,
            backoff: optional_duration(retry.backoff.as_ref(), context)?.filter(|b| !b.is_zero()),
            retry_remote_localities: retry.retry_remote_localities,
        },
    };
    let mirrors = r
        .mirrors
        .iter()
        .map(|m| {
            let (cluster, host) = destination_cluster(m.destination.as_ref(), context)?;
            Ok(Mirror {
                cluster,
                host,
                percent: percent(m.percentage.as_ref(), context)?,
                keep_host: m.disable_shadow_host_suffix,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    let cors = r
        .cors_policy
        .as_ref()
        .map(|c| {
            Ok::<_, ConfigError>(CorsPolicy {
                allow_origins: c
                    .allow_origins
                    .iter()
                    .filter_map(|m| field_match(Some(m), context).transpose())
                    .collect::<Result<_, _>>()?,
                allow_methods: c.allow_methods.join(","),
                allow_headers: c.allow_headers.join(","),
                expose_headers: c.expose_headers.join(","),
                max_age: optional_duration(c.max_age.as_ref(), context)?,
                allow_credentials: c.allow_credentials.unwrap_or(false),
                forward_unmatched_preflights: c.forward_not_matching_preflights.unwrap_or(true),
            })
        })
        .transpose()?;
    Ok((
        RouteMatches {
            name: (!r.name.is_empty()).then(|| r.name.clone()),
            matches,
        },
        Route {
            name: (!r.name.is_empty()).then(|| Arc::from(r.name.as_str())),
            action,
            rewrite,
            timeout: optional_duration(r.timeout.as_ref(), context)?.filter(|d| !d.is_zero()),
            retries,
            fault: r.fault.as_ref().map(|f| fault(f, context)).transpose()?,
            mirrors,
            cors,
            headers: headers(r.headers.as_ref(), context)?,
            virtual_service: r.virtual_service.clone(),
            cluster_not_found: cluster_not_found(r.cluster_not_found_response_code, context)?,
            rate_limit: r
                .local_rate_limit
                .as_ref()
                .map(|l| local_rate_limit(l, context))
                .transpose()?,
            operations: r.operations.iter().map(|o| Arc::from(o.as_str())).collect(),
            session: r
                .stateful_session
                .as_ref()
                .map(|s| stateful_session(s, context))
                .transpose()?,
        },
    ))
}

/// A route's stateful session; its cookie's `Set-Cookie` must be writable as a header (no
/// control character, `;` or space in the name or path).
fn stateful_session(
    s: &proto::StatefulSession,
    context: &str,
) -> Result<StatefulSession, ConfigError> {
    let context = format!("{context} stateful_session");
    match proto::StatefulSessionKind::try_from(s.kind) {
        Ok(proto::StatefulSessionKind::Header) => Ok(StatefulSession::Header {
            name: header_name(&s.name, &context)?,
        }),
        Ok(proto::StatefulSessionKind::Cookie) => {
            let template = CookieTemplate {
                max_age: s.cookie_ttl.as_ref().map_or(0, |ttl| ttl.seconds),
                path: s.cookie_path.clone(),
                attributes: Vec::new(),
            };
            let token = !s.name.is_empty()
                && s.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token
                || s.cookie_path.contains([';', ' '])
                || http::HeaderValue::try_from(template.set_cookie(&s.name, "MTI3LjAuMC4xOjgw"))
                    .is_err()
            {
                return Err(invalid(
                    &context,
                    format!(
                        "cookie {:?} with path {:?} cannot be written in a Set-Cookie header",
                        s.name, s.cookie_path
                    ),
                ));
            }
            Ok(StatefulSession::Cookie {
                name: s.name.clone(),
                template,
            })
        }
        Err(_) => Err(invalid(&context, format!("unknown kind {}", s.kind))),
    }
}

pub(in crate::model) fn local_rate_limit(
    l: &proto::LocalRateLimit,
    context: &str,
) -> Result<LocalRateLimit, ConfigError> {
    let context = format!("{context} local_rate_limit");
    let fill_interval = optional_duration(l.fill_interval.as_ref(), &context)?
        .ok_or_else(|| invalid(&context, "no fill_interval"))?;
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(invalid(&context, "fill_interval under 50ms"));
    }
    if l.max_tokens == 0 || l.tokens_per_fill == 0 {
        return Err(invalid(
            &context,
            "max_tokens and tokens_per_fill must be positive",
        ));
    }
    if l.key.is_empty() {
        return Err(invalid(&context, "no key"));
    }
    let scope = match proto::RateLimitScope::try_from(l.scope) {
        Ok(proto::RateLimitScope::Route) => RateLimitScope::Route,
        Ok(proto::RateLimitScope::Client) => RateLimitScope::Client,
        Err(_) => return Err(invalid(&context, format!("unknown scope {}", l.scope))),
    };
    Ok(LocalRateLimit {
        key: l.key.clone(),
        max_tokens: l.max_tokens,
        tokens_per_fill: l.tokens_per_fill,
        fill_interval,
        scope,
    })
}

fn cluster_not_found(value: i32, context: &str) -> Result<StatusCode, ConfigError> {
    use proto::ClusterNotFoundResponseCode as Code;
    Ok(match Code::try_from(value) {
        Ok(Code::ServiceUnavailable) => StatusCode::SERVICE_UNAVAILABLE,
        Ok(Code::NotFound) => StatusCode::NOT_FOUND,
        Ok(Code::InternalServerError) => StatusCode::INTERNAL_SERVER_ERROR,
        Err(_) => {
            return Err(invalid(
                context,
                format!("unknown cluster_not_found_response_code {value}"),
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::regex_replacement;

    #[test]
    fn regex_rewrite_references_become_regex_crate_syntax() {
        let cases = [
            (r"/v1/\1", "/v1/${1}"),
            (r"\1\2", "${1}${2}"),
            ("/cost$", "/cost$$"),
            ("/plain", "/plain"),
        ];
        for (istio, expected) in cases {
            assert_eq!(regex_replacement(istio), expected);
        }
    }
}
