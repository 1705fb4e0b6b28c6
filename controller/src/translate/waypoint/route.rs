//! One VirtualService route (HTTP or TCP) compiled for one port: its matches, destinations
//! (resolved to Istio's cluster names), retries, timeouts, faults, rewrites and headers.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use weft_istio::defaults::{DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_ON};
use weft_proto::waypoint as wp;

use super::{ClusterKey, Compiler, duration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::model::networking::{self as net, HttpRoute, MESH_GATEWAY, VirtualService};
use crate::model::{DurationString, ResourceKind};
use crate::translate::TranslateProblem;
use crate::translate::resolve::{name_of, namespace_of, qualify_host};

/// A service the waypoint serves, as routes see it.
pub(super) struct Served {
    pub(super) hostname: String,
    /// Ports carrying HTTP (declared, or sniffed).
    pub(super) http_ports: Vec<u32>,
    /// Ports forwarded at L4 (declared opaque, or sniffed).
    pub(super) tcp_ports: Vec<u32>,
}

/// Where a VirtualService route is compiled for: the port the request arrives on, and whether
/// the route must say so (the service has several HTTP, or TCP, ports).
#[derive(Debug, Clone, Copy)]
pub(super) struct PortContext {
    pub(super) port: u32,
    pub(super) restrict: bool,
}

impl PortContext {
    /// What a route with no match of its own matches here: the port, when the service has
    /// several.
    pub(super) fn port_match<M: PortMatch>(self) -> Vec<M> {
        if self.restrict {
            vec![M::port_only(self.port)]
        } else {
            Vec::new()
        }
    }
}

/// A route match that can name a port and nothing else.
pub(super) trait PortMatch {
    fn port_only(port: u32) -> Self;
}

impl PortMatch for wp::HttpMatchRequest {
    fn port_only(port: u32) -> Self {
        Self {
            port,
            ..Default::default()
        }
    }
}

impl PortMatch for wp::L4MatchAttributes {
    fn port_only(port: u32) -> Self {
        Self {
            port,
            ..Default::default()
        }
    }
}

/// What routes are compiled for: the mesh (a waypoint), or one Istio Gateway (a gateway proxy).
#[derive(Debug, Clone, Copy)]
pub(super) enum Binding<'b> {
    Mesh,
    Gateway { namespace: &'b str, name: &'b str },
}

impl Binding<'_> {
    /// Whether a `gateways` entry of a VirtualService in `vs_namespace` names this: `mesh`, or
    /// the Gateway as `namespace/name` or, in the VirtualService's own namespace, `name`.
    pub(super) fn named_by(self, entry: &str, vs_namespace: &str) -> bool {
        match self {
            Binding::Mesh => entry == MESH_GATEWAY,
            Binding::Gateway { namespace, name } => match entry.split_once('/') {
                Some((ns, n)) => ns == namespace && n == name,
                None => vs_namespace == namespace && entry == name,
            },
        }
    }

    /// A match applies here: its own `gateways` override the VirtualService's (`vs_bound`).
    fn binds(self, gateways: &[String], vs_bound: bool, vs_namespace: &str) -> bool {
        if gateways.is_empty() {
            vs_bound
        } else {
            gateways.iter().any(|g| self.named_by(g, vs_namespace))
        }
    }
}

/// The local rate limit the resource's annotation sets on its route rule at `path` (one key per
/// rule: the rule's requests share its buckets wherever it is compiled). Validation refuses a
/// resource whose annotation does not parse, so none is left here to report.
pub(super) fn local_rate_limit(
    kind: ResourceKind,
    meta: &ObjectMeta,
    path: &str,
) -> Option<wp::LocalRateLimit> {
    let limit = crate::model::edge::local_rate_limit(meta.annotations.as_ref())?.ok()?;
    let scope = match limit.per {
        crate::model::edge::RateLimitPer::Route => wp::RateLimitScope::Route,
        crate::model::edge::RateLimitPer::Client => wp::RateLimitScope::Client,
    };
    Some(wp::LocalRateLimit {
        key: format!(
            "{}/{}/{}/{path}",
            kind.kind(),
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        ),
        max_tokens: limit.max_tokens,
        tokens_per_fill: limit.tokens_per_fill,
        fill_interval: prost_types::Duration::try_from(limit.fill_interval).ok(),
        scope: scope as i32,
    })
}

/// One route being compiled for one port.
pub(super) struct RouteContext<'c, 'a, 'p> {
    pub(super) compiler: &'c Compiler<'a, 'p>,
    pub(super) served: &'c Served,
    pub(super) vs: &'a VirtualService,
    pub(super) path: &'c str,
    pub(super) clusters: &'c mut BTreeSet<ClusterKey>,
    pub(super) notes: &'c mut Vec<TranslateProblem>,
    pub(super) context: PortContext,
    pub(super) binding: Binding<'c>,
}

impl RouteContext<'_, '_, '_> {
    fn note(&mut self, path: String, reason: &str) {
        self.notes.push(TranslateProblem::Unsupported {
            path,
            reason: reason.to_owned(),
        });
    }

    fn invalid(&self, path: String, value: &str, reason: String) -> TranslateProblem {
        TranslateProblem::InvalidValue {
            path,
            value: value.to_owned(),
            reason,
            service: self.served.hostname.clone(),
        }
    }

    fn duration(
        &self,
        path: String,
        value: &DurationString,
    ) -> Result<prost_types::Duration, TranslateProblem> {
        duration(value).map_err(|reason| self.invalid(path, &value.0, reason))
    }

    /// A destination resolved to its cluster, named as Istio names it
    /// (`GetDestinationCluster`: the destination's port, else the service's only port, else the
    /// port the request arrived on). A destination that resolves to nothing Istio would build a
    /// cluster for (an unknown host, port or subset) keeps that name without a cluster behind
    /// it, as istiod does: the waypoint answers what is routed there with 503 `NC` while the
    /// other routes of the VirtualService keep working, and the problem is reported.
    fn destination(&mut self, destination: &net::Destination, path: String) -> wp::Destination {
        let service = self.served.hostname.clone();
        let host = qualify_host(
            self.compiler.settings,
            &destination.host,
            namespace_of(&self.vs.metadata),
        );
        let subset = destination.subset.clone().unwrap_or_default();
        let target = self.compiler.host_ports(&host);
        let ports: Vec<u32> = target.clone().unwrap_or_default();
        let port = match (&destination.port, ports.as_slice()) {
            (Some(selector), _) => selector.number,
            (None, [only]) => *only,
            (None, _) => self.context.port,
        };
        let key = ClusterKey {
            host: host.clone(),
            subset: subset.clone(),
            port,
        };
        let cluster = key.name();
        let problem = if target.is_none() {
            Some(TranslateProblem::UnknownHost {
                path,
                host: host.clone(),
                subset: subset.clone(),
                port,
                service,
            })
        } else if !ports.contains(&port) {
            Some(match destination.port {
                Some(_) => TranslateProblem::UnknownPort {
                    path: format!("{path}.port.number"),
                    host: host.clone(),
                    subset: subset.clone(),
                    port,
                    service,
                },
                None => TranslateProblem::AmbiguousPort {
                    path,
                    host: host.clone(),
                    subset: subset.clone(),
                    port,
                    service,
                },
            })
        } else if !subset.is_empty()
            && self
                .compiler
                .destination_rule(&host)
                .is_none_or(|rule| rule.subset(&subset).is_none())
        {
            Some(TranslateProblem::UnknownSubset {
                path: format!("{path}.subset"),
                host: host.clone(),
                subset: subset.clone(),
                port,
                service,
            })
        } else {
            None
        };
        match problem {
            Some(problem) => self.notes.push(problem),
            None => {
                self.clusters.insert(key);
            }
        }
        wp::Destination {
            host,
            subset,
            port,
            cluster,
        }
    }

    /// Whether a match of the route applies here: bound to the mesh, and naming this port or
    /// none when the route is compiled per port.
    fn match_applies(&self, gateways: &[String], port: Option<u32>, vs_mesh: bool) -> bool {
        self.binding
            .binds(gateways, vs_mesh, namespace_of(&self.vs.metadata))
            && !(self.context.restrict && port.is_some_and(|p| p != self.context.port))
    }

    /// The matches a route is compiled with, from those of its own that apply here (`declared`:
    /// it has some). `None` when the route does not apply: it has matches and none applies, or
    /// it has none and its VirtualService is not bound to the mesh. With none of its own, it
    /// matches on the port when the service has several.
    fn route_matches<M: PortMatch>(
        &self,
        declared: bool,
        vs_mesh: bool,
        matches: Vec<M>,
    ) -> Option<Vec<M>> {
        if !declared {
            return vs_mesh.then(|| self.context.port_match());
        }
        (!matches.is_empty()).then_some(matches)
    }

    /// The route's destinations that name one, each resolved (see `destination`) beside the
    /// entry it came from.
    pub(super) fn destinations<'d, D>(
        &mut self,
        route: &'d [D],
        destination_of: impl Fn(&D) -> Option<&net::Destination>,
    ) -> Vec<(&'d D, wp::Destination)> {
        let path = self.path.to_owned();
        route
            .iter()
            .enumerate()
            .filter_map(|(j, d)| {
                let destination = destination_of(d)?;
                Some((
                    d,
                    self.destination(destination, format!("{path}.route[{j}].destination")),
                ))
            })
            .collect()
    }

    pub(super) fn http_route(
        &mut self,
        route: &HttpRoute,
        vs_mesh: bool,
    ) -> Result<Option<wp::HttpRoute>, TranslateProblem> {
        let path = self.path.to_owned();
        let mut matches = Vec::new();
        for m in &route.matches {
            if !self.match_applies(&m.gateways, m.port, vs_mesh) {
                continue;
            }
            let mut compiled = http_match(m);
            if self.context.restrict {
                compiled.port = self.context.port;
            }
            matches.push(compiled);
        }
        let Some(matches) = self.route_matches(!route.matches.is_empty(), vs_mesh, matches) else {
            return Ok(None);
        };
        let destinations = self
            .destinations(&route.route, |d| d.destination.as_ref())
            .into_iter()
            .map(|(d, destination)| wp::HttpRouteDestination {
                destination: Some(destination),
                weight: d.weight.unwrap_or(0).max(0),
                headers: d.headers.as_ref().map(headers),
            })
            .collect();
        let mut mirrors = Vec::new();
        if let Some(mirror) = &route.mirror {
            let value = route
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(route.mirror_percent().map(f64::from))
                .unwrap_or(100.0);
            mirrors.push(wp::HttpMirrorPolicy {
                destination: Some(self.destination(mirror, format!("{path}.mirror"))),
                percentage: Some(wp::Percent { value }),
                disable_shadow_host_suffix: self.compiler.settings.disable_shadow_host_suffix,
            });
        }
        for (j, mirror) in route.mirrors.iter().enumerate() {
            let Some(destination) = &mirror.destination else {
                continue;
            };
            mirrors.push(wp::HttpMirrorPolicy {
                destination: Some(
                    self.destination(destination, format!("{path}.mirrors[{j}].destination")),
                ),
                percentage: Some(wp::Percent {
                    value: mirror.percentage.as_ref().map_or(100.0, |p| p.value),
                }),
                disable_shadow_host_suffix: self.compiler.settings.disable_shadow_host_suffix,
            });
        }
        let timeout = match &route.timeout {
            None => None,
            Some(value) => Some(self.duration(format!("{path}.timeout"), value)?)
                .filter(|d| *d != prost_types::Duration::default()),
        };
        let retries = match &route.retries {
            None => default_retries(),
            Some(retry) => {
                let retry_on = match retry.retry_on.as_deref() {
                    None | Some("") => Some(DEFAULT_RETRY_ON.to_owned()),
                    Some(on) => retry_conditions(on),
                };
                wp::HttpRetry {
                    // Istio: zero (or less) attempts disable retries, and so does a list of
                    // conditions that retries nothing.
                    attempts: if retry_on.is_some() {
                        retry.attempts.max(0)
                    } else {
                        0
                    },
                    per_try_timeout: retry
                        .per_try_timeout
                        .as_ref()
                        .map(|t| self.duration(format!("{path}.retries.perTryTimeout"), t))
                        .transpose()?,
                    retry_on: retry_on.unwrap_or_default(),
                    retry_ignore_previous_hosts: retry.retry_ignore_previous_hosts,
                    backoff: retry
                        .backoff
                        .as_ref()
                        .map(|b| self.duration(format!("{path}.retries.backoff"), b))
                        .transpose()?,
                    retry_remote_localities: retry.retry_remote_localities.unwrap_or(false),
                }
            }
        };
        let direct_response = match &route.direct_response {
            None => None,
            Some(response) => Some(self.direct_response(response)?),
        };
        let fault = match &route.fault {
            None => None,
            Some(fault) => Some(self.fault(fault)?),
        };
        let cors_policy = match &route.cors_policy {
            None => None,
            Some(cors) => Some(self.cors(cors)?),
        };
        Ok(Some(wp::HttpRoute {
            name: route.name.clone().unwrap_or_default(),
            r#match: matches,
            route: destinations,
            redirect: route.redirect.as_ref().map(redirect),
            direct_response,
            rewrite: route.rewrite.as_ref().map(|r| wp::HttpRewrite {
                uri: r.uri.clone().unwrap_or_default(),
                authority: r.authority.clone().unwrap_or_default(),
                uri_regex_rewrite: r.uri_regex_rewrite.as_ref().map(|rr| wp::RegexRewrite {
                    r#match: rr.pattern.clone(),
                    rewrite: rr.rewrite.clone(),
                }),
            }),
            timeout,
            // Redirects and direct responses never reach an upstream to retry.
            retries: (route.redirect.is_none() && route.direct_response.is_none())
                .then_some(retries),
            fault,
            mirrors,
            cors_policy,
            headers: route.headers.as_ref().map(headers),
            virtual_service: String::new(),
            // A VirtualService's unknown host or subset: Envoy's default, 503 `NC`.
            cluster_not_found_response_code: wp::ClusterNotFoundResponseCode::ServiceUnavailable
                as i32,
            local_rate_limit: local_rate_limit(
                ResourceKind::VirtualService,
                &self.vs.metadata,
                &path,
            ),
            operations: Vec::new(),
            // VirtualServices keep no stateful session (Istio's label on a Service does).
            stateful_session: None,
        })
        .map(|mut compiled| {
            compiled.operations = super::operation::route_operations(
                &compiled,
                name_of(&self.vs.metadata),
                self.context.port,
                false,
            );
            compiled
        }))
    }

    fn direct_response(
        &self,
        response: &net::HttpDirectResponse,
    ) -> Result<wp::HttpDirectResponse, TranslateProblem> {
        use wp::http_body::Specifier;
        let path = format!("{}.directResponse.body", self.path);
        let body = match &response.body {
            None => None,
            Some(body) => Some(wp::HttpBody {
                specifier: Some(match (&body.string, &body.bytes) {
                    (Some(text), _) => Specifier::String(text.clone()),
                    (None, Some(bytes)) => Specifier::Bytes(
                        base64::engine::general_purpose::STANDARD
                            .decode(bytes)
                            .map_err(|e| {
                                self.invalid(format!("{path}.bytes"), bytes, e.to_string())
                            })?,
                    ),
                    (None, None) => Specifier::String(String::new()),
                }),
            }),
        };
        Ok(wp::HttpDirectResponse {
            status: response.status,
            body,
        })
    }

    fn fault(
        &mut self,
        fault: &net::HttpFaultInjection,
    ) -> Result<wp::HttpFaultInjection, TranslateProblem> {
        use wp::http_fault_injection::{Abort, Delay, abort::ErrorType};
        let path = format!("{}.fault", self.path);
        // Istio: a fault without a percentage applies to no request at all.
        let delay = match &fault.delay {
            None => None,
            Some(delay) => match &delay.fixed_delay {
                Some(fixed) => Some(Delay {
                    fixed_delay: Some(self.duration(format!("{path}.delay.fixedDelay"), fixed)?),
                    percentage: Some(wp::Percent {
                        value: delay
                            .percentage
                            .as_ref()
                            .map(|p| p.value)
                            .or(delay.percent.map(f64::from))
                            .unwrap_or(0.0),
                    }),
                }),
                None => {
                    self.note(
                        format!("{path}.delay.exponentialDelay"),
                        "exponential delays are not supported (as in Istio); the delay is ignored",
                    );
                    None
                }
            },
        };
        let abort = match &fault.abort {
            None => None,
            Some(abort) => {
                let error_type = if let Some(status) = abort.http_status {
                    Some(ErrorType::HttpStatus(status))
                } else if let Some(status) = &abort.grpc_status {
                    Some(ErrorType::GrpcStatus(status.clone()))
                } else {
                    self.note(
                        format!("{path}.abort.http2Error"),
                        "HTTP/2 error aborts are not supported (as in Istio); the abort is ignored",
                    );
                    None
                };
                error_type.map(|error_type| Abort {
                    error_type: Some(error_type),
                    percentage: Some(wp::Percent {
                        value: abort.percentage.as_ref().map_or(0.0, |p| p.value),
                    }),
                })
            }
        };
        Ok(wp::HttpFaultInjection { delay, abort })
    }

    fn cors(&mut self, cors: &net::CorsPolicy) -> Result<wp::CorsPolicy, TranslateProblem> {
        use wp::string_match::MatchType;
        let path = format!("{}.corsPolicy", self.path);
        let mut allow_origins: Vec<wp::StringMatch> =
            cors.allow_origins.iter().map(string_match).collect();
        // `allowOrigin` is the deprecated exact-match list.
        allow_origins.extend(cors.allow_origin.iter().map(|o| wp::StringMatch {
            match_type: Some(MatchType::Exact(o.clone())),
        }));
        Ok(wp::CorsPolicy {
            allow_origins,
            allow_methods: cors.allow_methods.clone(),
            allow_headers: cors.allow_headers.clone(),
            expose_headers: cors.expose_headers.clone(),
            max_age: cors
                .max_age
                .as_ref()
                .map(|m| self.duration(format!("{path}.maxAge"), m))
                .transpose()?,
            allow_credentials: cors.allow_credentials,
            // Istio's `forwardNotMatchingPreflights`: false for IGNORE only; unset is Envoy's
            // true.
            forward_not_matching_preflights: (cors.unmatched_preflights
                == Some(net::UnmatchedPreflights::Ignore))
            .then_some(false),
        })
    }

    pub(super) fn tcp_route(
        &mut self,
        route: &net::TcpRoute,
        vs_mesh: bool,
    ) -> Result<Option<wp::TcpRoute>, TranslateProblem> {
        let mut matches = Vec::new();
        for m in &route.matches {
            if !self.match_applies(&m.gateways, m.port, vs_mesh) {
                continue;
            }
            matches.push(wp::L4MatchAttributes {
                destination_subnets: m.destination_subnets.clone(),
                port: if self.context.restrict {
                    self.context.port
                } else {
                    m.port.unwrap_or(0)
                },
                source_labels: m.source_labels.clone(),
                source_namespace: m.source_namespace.clone().unwrap_or_default(),
            });
        }
        let Some(matches) = self.route_matches(!route.matches.is_empty(), vs_mesh, matches) else {
            return Ok(None);
        };
        let destinations = self
            .destinations(&route.route, |d| d.destination.as_ref())
            .into_iter()
            .map(|(d, destination)| wp::RouteDestination {
                destination: Some(destination),
                weight: d.weight.unwrap_or(0).max(0),
            })
            .collect();
        Ok(Some(wp::TcpRoute {
            r#match: matches,
            route: destinations,
            virtual_service: String::new(),
        }))
    }
}

/// A route's `retryOn` as Envoy receives it from Istio: numbers are status codes (retried as
/// `retriable-status-codes`); `retriable-status-codes` without any number retries no status
/// (the mesh default's 503 is replaced, not kept), so it is dropped. `None` when nothing is left.
pub(super) fn retry_conditions(retry_on: &str) -> Option<String> {
    let conditions: Vec<&str> = retry_on
        .split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let has_codes = conditions.iter().any(|c| c.parse::<u16>().is_ok());
    let kept: Vec<&str> = conditions
        .into_iter()
        .filter(|c| has_codes || *c != "retriable-status-codes")
        .collect();
    (!kept.is_empty()).then(|| kept.join(","))
}

/// Istio's retry policy for routes that set none.
pub(super) fn default_retries() -> wp::HttpRetry {
    wp::HttpRetry {
        // The proto carries Istio's `int32`; the default is 2.
        attempts: DEFAULT_RETRY_ATTEMPTS as i32,
        per_try_timeout: None,
        retry_on: DEFAULT_RETRY_ON.to_owned(),
        retry_ignore_previous_hosts: None,
        backoff: None,
        retry_remote_localities: false,
    }
}

fn string_match(m: &net::StringMatch) -> wp::StringMatch {
    use wp::string_match::MatchType;
    let match_type = if let Some(exact) = &m.exact {
        Some(MatchType::Exact(exact.clone()))
    } else if let Some(prefix) = &m.prefix {
        Some(MatchType::Prefix(prefix.clone()))
    } else {
        m.regex.clone().map(MatchType::Regex)
    };
    wp::StringMatch { match_type }
}

/// Header maps by lowercase name: HTTP header names are case-insensitive.
fn header_matches(map: &BTreeMap<String, net::StringMatch>) -> BTreeMap<String, wp::StringMatch> {
    map.iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), string_match(v)))
        .collect()
}

fn http_match(m: &net::HttpMatchRequest) -> wp::HttpMatchRequest {
    wp::HttpMatchRequest {
        name: m.name.clone().unwrap_or_default(),
        uri: m.uri.as_ref().map(string_match),
        scheme: m.scheme.as_ref().map(string_match),
        method: m.method.as_ref().map(string_match),
        authority: m.authority.as_ref().map(string_match),
        headers: header_matches(&m.headers),
        port: m.port.unwrap_or(0),
        source_labels: m.source_labels.clone(),
        query_params: m
            .query_params
            .iter()
            .map(|(k, v)| (k.clone(), string_match(v)))
            .collect(),
        ignore_uri_case: m.ignore_uri_case,
        without_headers: header_matches(&m.without_headers),
        source_namespace: m.source_namespace.clone().unwrap_or_default(),
    }
}

fn header_operations(ops: &net::HeaderOperations) -> wp::HeaderOperations {
    wp::HeaderOperations {
        set: ops.set.clone(),
        add: ops.add.clone(),
        remove: ops.remove.clone(),
    }
}

fn headers(h: &net::Headers) -> wp::Headers {
    wp::Headers {
        request: h.request.as_ref().map(header_operations),
        response: h.response.as_ref().map(header_operations),
    }
}

fn redirect(r: &net::HttpRedirect) -> wp::HttpRedirect {
    use wp::http_redirect::{RedirectPort, RedirectPortSelection};
    let redirect_port = match (r.port, r.derive_port) {
        (Some(port), _) => Some(RedirectPort::Port(port)),
        (None, Some(net::RedirectPortSelection::FromRequestPort)) => Some(
            RedirectPort::DerivePort(RedirectPortSelection::FromRequestPort as i32),
        ),
        (None, Some(net::RedirectPortSelection::FromProtocolDefault)) => Some(
            RedirectPort::DerivePort(RedirectPortSelection::FromProtocolDefault as i32),
        ),
        (None, None) => None,
    };
    wp::HttpRedirect {
        uri: r.uri.clone().unwrap_or_default(),
        authority: r.authority.clone().unwrap_or_default(),
        redirect_port,
        scheme: r.scheme.clone().unwrap_or_default(),
        redirect_code: r.redirect_code.unwrap_or(0),
        prefix_rewrite: r.prefix_rewrite.clone().unwrap_or_default(),
    }
}
