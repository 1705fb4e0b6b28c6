//! Gateway API routes (HTTPRoute, GRPCRoute, TCPRoute) attached to a served Service, compiled
//! into its route tables as Istio converts them (`pilot/pkg/config/kube/gateway/conversion.go`):
//! the routes of one namespace for one Service form one group (Istio's merged VirtualService,
//! created when its oldest route was), each rule is split into one route per match, and the
//! matches are ordered as the Gateway API orders them (exact path, longest prefix, method, most
//! headers, most query parameters, then the oldest route, then namespace/name, then rule order).
//!
//! A `PathPrefix` matches whole path segments (Envoy's `path_separated_prefix`, which Istio
//! uses for these routes): `/foo` becomes two routes, the path `/foo` exactly and the prefix
//! `/foo/`, so that `/foobar` does not match and `ReplacePrefixMatch` keeps the separator.

use std::cmp::Reverse;

use weft_proto::waypoint as wp;

use super::operation;
use super::route::{PortContext, Served, default_retries, retry_conditions};
use super::routes::contexts;
use super::{ClusterKey, Compiler, duration, port_number, tcp_service_ports};
use crate::model::DurationString;
use crate::translate::TranslateProblem;
use crate::translate::gateway_api::{
    self as gw, BackendRef, Match, MeshRoute, MethodMatch, RouteKind, Rule,
};
use crate::translate::resolve::{name_of, namespace_of};

mod filters;
mod session;

use filters::{
    APPLIED_BACKEND_FILTERS, APPLIED_FILTERS, cors, filter_headers, internal_error, key_matches,
    redirect, rewrite,
};

/// The Gateway API routes of one namespace attached to one served Service: what Istio merges
/// into one VirtualService for it.
pub(super) struct RouteGroup<'r, 'a> {
    pub(super) namespace: String,
    /// Each route with the port its parentRef names (if any), oldest first.
    pub(super) routes: Vec<(&'r MeshRoute<'a>, Option<u32>)>,
    /// The name of the VirtualService istiod makes of them on a Gateway's listener
    /// ([`operation::listener_route_set`]); `None` for routes attached to a Service, whose
    /// name depends on each route's parentRef port ([`operation::mesh_route_set`]).
    pub(super) route_set: Option<String>,
}

impl<'r, 'a> RouteGroup<'r, 'a> {
    /// The oldest route, whose age the group takes in the choice among VirtualServices.
    pub(super) fn oldest(&self) -> &'r MeshRoute<'a> {
        self.routes[0].0
    }

    /// `HTTPRoute ns/name, ...`, for messages.
    pub(super) fn describe(&self) -> String {
        self.routes
            .iter()
            .map(|(r, _)| format!("{} {}", r.kind.name(), r.key()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Where a path-prefix match stands after the split into segment-exact and segment-prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrefixForm {
    /// Not a path prefix (exact, regex, gRPC, or the prefix `/`).
    None,
    /// The prefix itself, matched exactly.
    Bare,
    /// The prefix followed by `/`.
    Slash,
}

/// One match of one rule of one route, in the order the Gateway API gives it.
struct Entry<'r, 'a> {
    route: &'r MeshRoute<'a>,
    parent_port: Option<u32>,
    rule_index: usize,
    rule: &'r Rule,
    matched: Option<&'r Match>,
}

/// How the Gateway API ranks a match: Istio's `sortHTTPRoutes` over the converted match.
fn precedence(kind: RouteKind, m: Option<&Match>) -> (bool, u8, usize, bool, usize, usize) {
    let Some(m) = m else {
        // A rule without matches comes after every match.
        return (false, 0, 0, false, 0, 0);
    };
    let (rank, length) = match uri_match(kind, m) {
        Ok(Some((wp_match, _))) => match wp_match.match_type {
            Some(wp::string_match::MatchType::Exact(p)) => (3, p.len()),
            Some(wp::string_match::MatchType::Prefix(p)) => (2, p.len()),
            Some(wp::string_match::MatchType::Regex(p)) => (1, p.len()),
            None => (0, 0),
        },
        _ => (0, 0),
    };
    let has_method = matches!(m.method, Some(MethodMatch::Http(_)));
    (
        true,
        rank,
        length,
        has_method,
        m.headers.len(),
        m.query_params.len(),
    )
}

/// A match's path as the waypoint compares it, and whether it was a segment prefix (before
/// the split into exact and `/`-prefix).
fn uri_match(kind: RouteKind, m: &Match) -> Result<Option<(wp::StringMatch, bool)>, String> {
    use wp::string_match::MatchType;
    let string = |t| {
        Some((
            wp::StringMatch {
                match_type: Some(t),
            },
            false,
        ))
    };
    if kind == RouteKind::Grpc {
        let Some(MethodMatch::Grpc(method)) = &m.method else {
            return Ok(None);
        };
        let regex = method.match_type.as_deref() == Some("RegularExpression");
        return Ok(match (&method.service, &method.method, regex) {
            (None, None, _) => {
                return Err("a gRPC method match names neither service nor method".to_owned());
            }
            (Some(s), None, false) => string(MatchType::Prefix(format!("/{s}/"))),
            (Some(s), None, true) => string(MatchType::Regex(format!("/{s}/.+"))),
            (None, Some(m), _) => string(MatchType::Regex(format!("/[^/]+/{m}"))),
            (Some(s), Some(m), false) => string(MatchType::Exact(format!("/{s}/{m}"))),
            (Some(s), Some(m), true) => string(MatchType::Regex(format!("/{s}/{m}"))),
        });
    }
    // The CRD defaults a match's path to the prefix `/` (Istio relies on that default).
    let (match_type, value) = match &m.path {
        Some(path) => (
            path.match_type.as_deref().unwrap_or("PathPrefix"),
            path.value.clone().unwrap_or_else(|| "/".to_owned()),
        ),
        None => ("PathPrefix", "/".to_owned()),
    };
    Ok(match match_type {
        "PathPrefix" => {
            let trimmed = if value == "/" {
                value
            } else {
                value.trim_end_matches('/').to_owned()
            };
            let segment = trimmed != "/";
            Some((
                wp::StringMatch {
                    match_type: Some(MatchType::Prefix(trimmed)),
                },
                segment,
            ))
        }
        "Exact" => string(MatchType::Exact(value)),
        "RegularExpression" => string(MatchType::Regex(value)),
        other => return Err(format!("path match type {other:?} is not supported")),
    })
}

/// A backend's share as Istio gives it: weight 1 by default, zero weights dropped, a single
/// destination unweighted.
pub(super) fn weighted(backends: &[BackendRef]) -> Vec<(&BackendRef, i32)> {
    let kept: Vec<(&BackendRef, i32)> = backends
        .iter()
        .map(|b| (b, b.weight.unwrap_or(1)))
        .filter(|(_, w)| *w > 0)
        .collect();
    if kept.len() == 1 {
        return vec![(kept[0].0, 0)];
    }
    kept
}

impl<'a> Compiler<'a, '_> {
    /// The destination of a resolved backend, its cluster registered when the Service has that
    /// port; an unresolved backend or port keeps a cluster name nothing serves, and its weight:
    /// HTTP requests routed there are answered 500 `NC` (TCP connections are refused).
    pub(super) fn gateway_destination(
        &mut self,
        route: &MeshRoute<'a>,
        backend: &BackendRef,
        path: String,
        service: &str,
    ) -> wp::Destination {
        match gw::backend(
            self.index,
            self.settings,
            route.kind,
            route.namespace(),
            backend,
        ) {
            Ok(resolved) => {
                let key = ClusterKey {
                    host: resolved.hostname.clone(),
                    subset: String::new(),
                    port: resolved.port,
                };
                let cluster = key.name();
                let has_port = self.services.get(&resolved.hostname).is_some_and(|s| {
                    tcp_service_ports(s)
                        .map(port_number)
                        .any(|p| p == resolved.port)
                });
                if has_port {
                    self.clusters.insert(key);
                } else {
                    self.report_route(
                        route,
                        TranslateProblem::UnknownPort {
                            path: format!("{path}.port"),
                            host: resolved.hostname.clone(),
                            subset: String::new(),
                            port: resolved.port,
                            service: service.to_owned(),
                        },
                    );
                }
                wp::Destination {
                    host: resolved.hostname,
                    subset: String::new(),
                    port: resolved.port,
                    cluster,
                }
            }
            Err(problem) => {
                self.report_route(
                    route,
                    TranslateProblem::Unsupported {
                        path,
                        reason: format!(
                            "{} ({}): its share of the requests is answered 500 (of the connections, refused)",
                            problem.message(),
                            problem.reason()
                        ),
                    },
                );
                wp::Destination {
                    host: String::new(),
                    subset: String::new(),
                    port: 0,
                    cluster: format!("outbound|0||{}.{}.invalid", backend.name, route.namespace()),
                }
            }
        }
    }

    fn report_route(&mut self, route: &MeshRoute<'a>, problem: TranslateProblem) {
        self.report(route.kind.resource_kind(), route.meta, problem);
    }

    fn gateway_duration(
        &mut self,
        route: &MeshRoute<'a>,
        path: String,
        value: &str,
    ) -> Option<prost_types::Duration> {
        match duration(&DurationString::from(value)) {
            Ok(d) => (d != prost_types::Duration::default()).then_some(d),
            Err(reason) => {
                self.report_route(
                    route,
                    TranslateProblem::Unsupported {
                        path,
                        reason: format!(
                            "{value:?} is not a duration ({reason}); the field is not applied"
                        ),
                    },
                );
                None
            }
        }
    }

    /// The HTTP and TCP routes of a group for one served service.
    pub(super) fn gateway_routes(
        &mut self,
        served: &Served,
        group: &RouteGroup<'_, 'a>,
    ) -> (Vec<wp::HttpRoute>, Vec<wp::TcpRoute>) {
        let mut entries: Vec<Entry<'_, 'a>> = Vec::new();
        let mut tcp_routes = Vec::new();
        for &(route, parent_port) in &group.routes {
            if route.kind == RouteKind::Tcp {
                for (i, rule) in route.spec.rules.iter().enumerate() {
                    tcp_routes.extend(self.tcp_rule(served, route, parent_port, i, rule));
                }
                continue;
            }
            for (rule_index, rule) in route.spec.rules.iter().enumerate() {
                let matches: Vec<Option<&Match>> = if rule.matches.is_empty() {
                    vec![None]
                } else {
                    rule.matches.iter().map(Some).collect()
                };
                entries.extend(matches.into_iter().map(|matched| Entry {
                    route,
                    parent_port,
                    rule_index,
                    rule,
                    matched,
                }));
            }
        }
        // Routes are in age order already; a stable sort keeps it among equal matches.
        entries.sort_by_cached_key(|e| Reverse(precedence(e.route.kind, e.matched)));
        let mut http_routes = Vec::new();
        for entry in &entries {
            for context in route_contexts(&served.http_ports, entry.parent_port) {
                let route_set = group.route_set.clone().unwrap_or_else(|| {
                    operation::mesh_route_set(
                        namespace_of(entry.route.meta),
                        entry.parent_port,
                        &served.hostname,
                    )
                });
                http_routes.extend(self.http_entry(served, entry, context, &route_set));
            }
        }
        (http_routes, tcp_routes)
    }

    pub(super) fn tcp_rule(
        &mut self,
        served: &Served,
        route: &MeshRoute<'a>,
        parent_port: Option<u32>,
        rule_index: usize,
        rule: &Rule,
    ) -> Vec<wp::TcpRoute> {
        let mut out = Vec::new();
        for context in route_contexts(&served.tcp_ports, parent_port) {
            let destinations = weighted(&rule.backend_refs)
                .into_iter()
                .enumerate()
                .map(|(j, (backend, weight))| wp::RouteDestination {
                    destination: Some(self.gateway_destination(
                        route,
                        backend,
                        format!("spec.rules[{rule_index}].backendRefs[{j}]"),
                        &served.hostname,
                    )),
                    weight,
                })
                .collect();
            out.push(wp::TcpRoute {
                r#match: context.port_match(),
                route: destinations,
                virtual_service: route.key(),
            });
        }
        out
    }

    /// One match of one rule, for one port: one route, or two for a segment prefix.
    fn http_entry(
        &mut self,
        served: &Served,
        entry: &Entry<'_, 'a>,
        context: PortContext,
        route_set: &str,
    ) -> Vec<wp::HttpRoute> {
        let route = entry.route;
        let rule = entry.rule;
        let path = format!("spec.rules[{}]", entry.rule_index);
        let base = match entry.matched {
            None => vec![(wp::HttpMatchRequest::default(), PrefixForm::None)],
            Some(m) => match self.http_matches(route, m, &path) {
                Some(matches) => matches,
                None => return Vec::new(),
            },
        };
        let mut out = Vec::new();
        for (mut matched, form) in base {
            if context.restrict {
                matched.port = context.port;
            }
            let mut compiled = self.http_rule(served, route, rule, &path, form);
            // istiod names the spans before it splits a segment prefix in two: `/*`.
            let span_path = match form {
                PrefixForm::None => operation::operation_path(matched.uri.as_ref(), true),
                PrefixForm::Bare | PrefixForm::Slash => "/*".to_owned(),
            };
            compiled.operations = vec![operation::operation(
                &compiled,
                &span_path,
                route_set,
                context.port,
            )];
            compiled.r#match = if matched == wp::HttpMatchRequest::default() {
                Vec::new()
            } else {
                vec![matched]
            };
            out.push(compiled);
        }
        out
    }

    /// The waypoint's matches for one Gateway API match, with the prefix form each stands for;
    /// `None` (reported) when the match cannot be compiled.
    fn http_matches(
        &mut self,
        route: &MeshRoute<'a>,
        m: &Match,
        path: &str,
    ) -> Option<Vec<(wp::HttpMatchRequest, PrefixForm)>> {
        use wp::string_match::MatchType;
        let uri = match uri_match(route.kind, m) {
            Ok(uri) => uri,
            Err(reason) => {
                self.report_route(
                    route,
                    TranslateProblem::Unsupported {
                        path: format!("{path}.matches"),
                        reason: format!("{reason}; the match is ignored"),
                    },
                );
                return None;
            }
        };
        let template = wp::HttpMatchRequest {
            method: match &m.method {
                Some(MethodMatch::Http(method)) => Some(wp::StringMatch {
                    match_type: Some(MatchType::Exact(method.clone())),
                }),
                _ => None,
            },
            headers: key_matches(&m.headers, str::to_ascii_lowercase),
            query_params: key_matches(&m.query_params, str::to_owned),
            ..Default::default()
        };
        let with_uri = |uri: wp::StringMatch| wp::HttpMatchRequest {
            uri: Some(uri),
            ..template.clone()
        };
        Some(match uri {
            None => vec![(template.clone(), PrefixForm::None)],
            Some((
                wp::StringMatch {
                    match_type: Some(MatchType::Prefix(prefix)),
                },
                true,
            )) => vec![
                (
                    with_uri(wp::StringMatch {
                        match_type: Some(MatchType::Exact(prefix.clone())),
                    }),
                    PrefixForm::Bare,
                ),
                (
                    with_uri(wp::StringMatch {
                        match_type: Some(MatchType::Prefix(format!("{prefix}/"))),
                    }),
                    PrefixForm::Slash,
                ),
            ],
            Some((uri, _)) => vec![(with_uri(uri), PrefixForm::None)],
        })
    }

    /// What a rule does with a request it matched (everything but the match).
    fn http_rule(
        &mut self,
        served: &Served,
        route: &MeshRoute<'a>,
        rule: &Rule,
        path: &str,
        form: PrefixForm,
    ) -> wp::HttpRoute {
        let mut compiled = wp::HttpRoute {
            name: rule.name.clone().unwrap_or_else(|| {
                format!(
                    "{}.{}.{}",
                    route.namespace(),
                    name_of(route.meta),
                    path.trim_start_matches("spec.rules[").trim_end_matches(']')
                )
            }),
            headers: filter_headers(&rule.filters),
            virtual_service: route.key(),
            // Istio's Envoy route for Gateway API routes: an invalid backend is a cluster that
            // does not exist, and its share of the requests is answered 500.
            cluster_not_found_response_code: wp::ClusterNotFoundResponseCode::InternalServerError
                as i32,
            local_rate_limit: super::route::local_rate_limit(
                route.kind.resource_kind(),
                route.meta,
                path,
            ),
            ..Default::default()
        };
        let unapplied = rule
            .filters
            .iter()
            .enumerate()
            .find(|(_, f)| !APPLIED_FILTERS.contains(&f.filter_type.as_str()))
            .map(|(i, f)| (format!("{path}.filters[{i}]"), f.filter_type.clone()))
            .or_else(|| {
                rule.backend_refs.iter().enumerate().find_map(|(j, b)| {
                    b.filters
                        .iter()
                        .enumerate()
                        .find(|(_, f)| !APPLIED_BACKEND_FILTERS.contains(&f.filter_type.as_str()))
                        .map(|(i, f)| {
                            (
                                format!("{path}.backendRefs[{j}].filters[{i}]"),
                                f.filter_type.clone(),
                            )
                        })
                })
            });
        if let Some((filter_path, filter_type)) = unapplied {
            self.report_route(
                route,
                TranslateProblem::Unsupported {
                    path: filter_path,
                    reason: format!(
                        "filter {filter_type:?} is not applied by waypoints: requests this rule matches are answered 500"
                    ),
                },
            );
            compiled.direct_response = Some(internal_error());
            return compiled;
        }
        for (i, filter) in rule.filters.iter().enumerate() {
            if let Some(mirror) = &filter.request_mirror {
                let filter_path = format!("{path}.filters[{i}].requestMirror.backendRef");
                if gw::backend(
                    self.index,
                    self.settings,
                    route.kind,
                    route.namespace(),
                    &mirror.backend_ref,
                )
                .is_err()
                {
                    // Istio drops a mirror whose backend does not resolve.
                    let _ = self.gateway_destination(
                        route,
                        &mirror.backend_ref,
                        filter_path,
                        &served.hostname,
                    );
                    continue;
                }
                let value = match (&mirror.fraction, mirror.percent) {
                    (Some(f), _) => {
                        100.0 * f64::from(f.numerator)
                            / f64::from(f.denominator.unwrap_or(100).max(1))
                    }
                    (None, Some(p)) => f64::from(p),
                    (None, None) => 100.0,
                };
                compiled.mirrors.push(wp::HttpMirrorPolicy {
                    destination: Some(self.gateway_destination(
                        route,
                        &mirror.backend_ref,
                        filter_path,
                        &served.hostname,
                    )),
                    percentage: Some(wp::Percent { value }),
                    disable_shadow_host_suffix: self.settings.disable_shadow_host_suffix,
                });
            }
            if let Some(filter) = &filter.url_rewrite {
                compiled.rewrite = Some(rewrite(filter, form));
            }
            if let Some(filter) = &filter.request_redirect {
                compiled.redirect = Some(redirect(filter, form));
            }
            if let Some(filter) = &filter.cors {
                compiled.cors_policy = Some(cors(filter));
            }
        }
        if compiled.redirect.is_some() {
            return compiled;
        }
        let backends = weighted(&rule.backend_refs);
        if backends.is_empty() {
            // The Gateway API: no backend with a weight above zero answers 500.
            compiled.direct_response = Some(internal_error());
            return compiled;
        }
        let valid = backends.iter().any(|(b, _)| {
            gw::backend(self.index, self.settings, route.kind, route.namespace(), b).is_ok()
        });
        compiled.route = backends
            .into_iter()
            .enumerate()
            .map(|(j, (backend, weight))| wp::HttpRouteDestination {
                destination: Some(self.gateway_destination(
                    route,
                    backend,
                    format!("{path}.backendRefs[{j}]"),
                    &served.hostname,
                )),
                weight,
                headers: filter_headers(&backend.filters),
            })
            .collect();
        if !valid {
            // Nothing resolves: 500 for all, as the Gateway API requires for invalid backends.
            compiled.route.clear();
            compiled.direct_response = Some(internal_error());
            return compiled;
        }
        self.timeouts_and_retries(route, rule, path, &mut compiled);
        if let Some(session) = &rule.session_persistence {
            let name = compiled.name.clone();
            compiled.stateful_session = self.stateful_session(route, session, path, &name);
        }
        compiled
    }

    /// Istio's conversion: `request` is the route timeout; `backendRequest` is the per-try
    /// timeout when `retry` is set, else the route timeout; `retry` retries connection errors
    /// and the listed codes, 2 attempts by default; no `retry` keeps the mesh default.
    fn timeouts_and_retries(
        &mut self,
        route: &MeshRoute<'a>,
        rule: &Rule,
        path: &str,
        compiled: &mut wp::HttpRoute,
    ) {
        let timeouts = rule.timeouts.clone().unwrap_or_default();
        compiled.timeout = timeouts
            .request
            .as_deref()
            .and_then(|t| self.gateway_duration(route, format!("{path}.timeouts.request"), t));
        let backend_request = timeouts.backend_request.as_deref().and_then(|t| {
            self.gateway_duration(route, format!("{path}.timeouts.backendRequest"), t)
        });
        let Some(retry) = &rule.retry else {
            compiled.retries = Some(default_retries());
            if backend_request.is_some() {
                compiled.timeout = backend_request;
            }
            return;
        };
        // Istio's conversion carries `backoff` over as the retries' base interval.
        let backoff = retry
            .backoff
            .as_deref()
            .and_then(|b| self.gateway_duration(route, format!("{path}.retry.backoff"), b));
        let attempts = i32::try_from(retry.attempts.unwrap_or(2))
            .unwrap_or(i32::MAX)
            .max(0);
        let mut conditions = "connect-failure,refused-stream,unavailable,cancelled".to_owned();
        for code in &retry.codes {
            conditions.push_str(&format!(",{code}"));
        }
        compiled.retries = Some(wp::HttpRetry {
            attempts,
            per_try_timeout: backend_request,
            retry_on: if attempts == 0 {
                String::new()
            } else {
                retry_conditions(&conditions).unwrap_or_default()
            },
            // Istio's conversion sets no host predicate of its own: the mesh default.
            retry_ignore_previous_hosts: None,
            backoff,
            retry_remote_localities: false,
        });
    }
}

/// The ports a rule is compiled for: a parentRef's port restricts it to that port (always
/// matched, as Istio's `augmentPortMatch`), else every port, restricted when there are several.
fn route_contexts(ports: &[u32], parent_port: Option<u32>) -> Vec<PortContext> {
    match parent_port {
        Some(port) => ports
            .iter()
            .filter(|&&p| p == port)
            .map(|&port| PortContext {
                port,
                restrict: true,
            })
            .collect(),
        None => contexts(ports),
    }
}

#[cfg(test)]
mod tests;
