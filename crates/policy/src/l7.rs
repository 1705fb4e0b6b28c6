//! Request-level authorization in the waypoint: Istio `AuthorizationPolicy` rules with `from`,
//! `to` and `when`, evaluated DENY first, then ALLOW.
//!
//! - A policy matches when ANY rule matches; a rule matches when ANY of its `from` sources (or
//!   none listed), ANY of its `to` operations (or none listed) and ALL of its `when` conditions
//!   match. A policy without rules matches nothing; a rule `{}` matches everything.
//! - Within a source, operation or condition, every set field must match, each as "any of the
//!   values, none of the not-values". Without a peer identity, `principals`, `namespaces` and
//!   `trustDomains` never match and their `not` forms always do (see [`crate::l4`]).
//! - `trustDomains` compare with the trust domain of the peer's identity (`cluster.local` in
//!   `spiffe://cluster.local/ns/x/sa/y`), as Istio's `srcTrustDomainGenerator` does.
//! - `paths` / `notPaths` compare against the normalized path ([`crate::path`]); a request whose
//!   path cannot be normalized is denied. Patterns are Istio's `exact`, `prefix*`, `*suffix`, `*`,
//!   or an Envoy URI template: `{*}` is one non-empty segment, `{**}` the rest of the path (zero
//!   or more segments, last operator only); operators must span a whole segment.
//! - `hosts` compare ASCII case-insensitively with the `:authority` exactly as received, port
//!   included, as Istio's generated `:authority` matcher does: `example.com` does not match
//!   `example.com:8080`; list `example.com:*` as well to accept any port.
//! - `methods` are case-sensitive; `ports` compare with the destination port.
//! - `when` supports `request.headers[<name>]`, `source.ip`, `remote.ip`, `destination.ip`,
//!   `destination.port`, `source.namespace`, `source.principal`, `source.trustDomain`,
//!   `connection.sni` and the JWT
//!   attributes `request.auth.principal`, `request.auth.audiences`, `request.auth.presenter`
//!   and `request.auth.claims[<name>]` (nested: `[a][b]`; see [`crate::request_auth`]). Any
//!   other key is refused: a policy we cannot enforce faithfully is rejected (NACK) rather than
//!   silently weakened.
//! - `requestPrincipals` and the `request.auth.*` keys read the request's validated JWT; a
//!   request without one has no request principal and no claims: they never match, and their
//!   `not` forms always hold, as in Istio.
//! - TCP traffic through the waypoint ([`evaluate_tcp`]) has no request: as Istio builds RBAC
//!   for TCP, an ALLOW rule that uses an HTTP-only attribute (`hosts`, `methods`, `paths`, their
//!   `not` forms, `request.headers[...]`, request principals, `request.auth.*`) never matches,
//!   and a DENY rule is applied without its HTTP-only attributes, so it denies more rather than
//!   less.

use std::borrow::Cow;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, DenyReason, PolicyAction, PolicyRef};
use crate::error::PolicyError;
use crate::l4::positive_and_negative;
use crate::path::{is_normalized, normalize_path};
use crate::request_auth::{RequestAuth, parse_claim_path};
use crate::route::RequestView;
use crate::string_match::WildcardMatch;
use weft_identity::SpiffeId;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpAuthorization {
    pub name: String,
    pub namespace: String,
    pub action: PolicyAction,
    #[serde(default)]
    pub rules: Vec<HttpRule>,
    #[serde(default)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct HttpRule {
    pub from: Vec<Source>,
    pub to: Vec<Operation>,
    pub when: Vec<Condition>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Source {
    pub principals: Vec<WildcardMatch>,
    pub not_principals: Vec<WildcardMatch>,
    /// Against the validated JWT's `iss/sub`.
    pub request_principals: Vec<WildcardMatch>,
    pub not_request_principals: Vec<WildcardMatch>,
    pub namespaces: Vec<WildcardMatch>,
    pub not_namespaces: Vec<WildcardMatch>,
    /// Against the trust domain of the peer's identity.
    pub trust_domains: Vec<WildcardMatch>,
    pub not_trust_domains: Vec<WildcardMatch>,
    /// Against the direct peer address.
    pub ip_blocks: Vec<IpNet>,
    pub not_ip_blocks: Vec<IpNet>,
    /// Against the original client address (`X-Forwarded-For` / PROXY), when known.
    pub remote_ip_blocks: Vec<IpNet>,
    pub not_remote_ip_blocks: Vec<IpNet>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Operation {
    pub hosts: Vec<WildcardMatch>,
    pub not_hosts: Vec<WildcardMatch>,
    pub ports: Vec<u16>,
    pub not_ports: Vec<u16>,
    pub methods: Vec<WildcardMatch>,
    pub not_methods: Vec<WildcardMatch>,
    pub paths: Vec<PathPattern>,
    pub not_paths: Vec<PathPattern>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TemplateSegment {
    /// `{*}`: exactly one non-empty segment.
    AnySegment,
    /// `{**}`: everything after this point, zero or more segments.
    AnyRest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathSegment {
    Literal(String),
    Operator(TemplateSegment),
}

/// A `paths` entry: Istio wildcard syntax, or an Envoy URI template when it holds `{*}`/`{**}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathPattern {
    Wildcard(WildcardMatch),
    Template(Vec<PathSegment>),
}

impl PathPattern {
    pub fn parse(pattern: &str) -> Result<Self, PolicyError> {
        if !pattern.contains("{*}") && !pattern.contains("{**}") {
            return Ok(PathPattern::Wildcard(WildcardMatch::parse_istio(pattern)));
        }
        let invalid = |reason| PolicyError::InvalidPathTemplate {
            template: pattern.to_owned(),
            reason,
        };
        let rest = pattern
            .strip_prefix('/')
            .ok_or_else(|| invalid("must start with '/'"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => PathSegment::Operator(TemplateSegment::AnySegment),
                "{**}" if index + 1 == parts.len() => {
                    PathSegment::Operator(TemplateSegment::AnyRest)
                }
                "{**}" => return Err(invalid("{**} must be the last segment")),
                literal
                    if literal.contains('{') || literal.contains('}') || literal.contains('*') =>
                {
                    return Err(invalid("an operator must span a whole path segment"));
                }
                literal => PathSegment::Literal(literal.to_owned()),
            };
            segments.push(segment);
        }
        Ok(PathPattern::Template(segments))
    }

    /// `path` must be normalized (no query, no `.` segments, no repeated `/`).
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Wildcard(m) => m.matches(path),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for segment in segments {
                    match segment {
                        PathSegment::Operator(TemplateSegment::AnyRest) => {
                            // The separator before `{**}` must be present: `/a/{**}` matches `/a/`
                            // but not `/a`.
                            return parts.next().is_some();
                        }
                        PathSegment::Operator(TemplateSegment::AnySegment) => {
                            if parts.next().is_none_or(str::is_empty) {
                                return false;
                            }
                        }
                        PathSegment::Literal(literal) => {
                            if parts.next() != Some(literal.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// The attribute a `when` condition reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionKey {
    /// Lowercased header name.
    RequestHeader(String),
    SourceIp,
    RemoteIp,
    DestinationIp,
    DestinationPort,
    SourceNamespace,
    SourcePrincipal,
    /// `source.trustDomain`: the trust domain of the peer's identity.
    SourceTrustDomain,
    ConnectionSni,
    /// `request.auth.principal`: the JWT's `iss/sub`.
    RequestPrincipal,
    /// `request.auth.audiences`.
    RequestAudiences,
    /// `request.auth.presenter`: the JWT's `azp`.
    RequestPresenter,
    /// `request.auth.claims[a][b]`: the claim's names, outermost first.
    RequestClaim(Vec<String>),
}

impl ConditionKey {
    pub fn parse(key: &str) -> Result<Self, PolicyError> {
        if let Some(name) = key
            .strip_prefix("request.headers[")
            .and_then(|rest| rest.strip_suffix(']'))
            .filter(|name| !name.is_empty())
        {
            return Ok(ConditionKey::RequestHeader(name.to_ascii_lowercase()));
        }
        if let Some(brackets) = key.strip_prefix("request.auth.claims") {
            return parse_claim_path(brackets)
                .map(ConditionKey::RequestClaim)
                .ok_or_else(|| PolicyError::UnsupportedConditionKey {
                    key: key.to_owned(),
                });
        }
        Ok(match key {
            "source.ip" => ConditionKey::SourceIp,
            "remote.ip" => ConditionKey::RemoteIp,
            "destination.ip" => ConditionKey::DestinationIp,
            "destination.port" => ConditionKey::DestinationPort,
            "source.namespace" => ConditionKey::SourceNamespace,
            "source.principal" => ConditionKey::SourcePrincipal,
            "source.trustDomain" => ConditionKey::SourceTrustDomain,
            "connection.sni" => ConditionKey::ConnectionSni,
            "request.auth.principal" => ConditionKey::RequestPrincipal,
            "request.auth.audiences" => ConditionKey::RequestAudiences,
            "request.auth.presenter" => ConditionKey::RequestPresenter,
            _ => {
                return Err(PolicyError::UnsupportedConditionKey {
                    key: key.to_owned(),
                });
            }
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ConditionValue {
    Text(WildcardMatch),
    Cidr(IpNet),
    Port(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    pub key: ConditionKey,
    #[serde(default)]
    pub values: Vec<ConditionValue>,
    #[serde(default)]
    pub not_values: Vec<ConditionValue>,
}

fn parse_ip_or_cidr(value: &str) -> Option<IpNet> {
    value
        .parse::<IpNet>()
        .ok()
        .or_else(|| value.parse::<IpAddr>().ok().map(IpNet::from))
}

impl Condition {
    /// Builds a condition from Istio's `key`, `values`, `notValues`, checking each value against
    /// the key's type.
    pub fn parse(key: &str, values: &[String], not_values: &[String]) -> Result<Self, PolicyError> {
        let parsed_key = ConditionKey::parse(key)?;
        if values.is_empty() && not_values.is_empty() {
            return Err(PolicyError::EmptyCondition {
                key: key.to_owned(),
            });
        }
        let convert = |value: &String| -> Result<ConditionValue, PolicyError> {
            let invalid = |reason| PolicyError::InvalidConditionValue {
                key: key.to_owned(),
                value: value.clone(),
                reason,
            };
            match parsed_key {
                ConditionKey::SourceIp | ConditionKey::RemoteIp | ConditionKey::DestinationIp => {
                    parse_ip_or_cidr(value)
                        .map(ConditionValue::Cidr)
                        .ok_or_else(|| invalid("expected an IP address or CIDR"))
                }
                ConditionKey::DestinationPort => value
                    .parse::<u16>()
                    .map(ConditionValue::Port)
                    .map_err(|_| invalid("expected a port number")),
                _ => Ok(ConditionValue::Text(WildcardMatch::parse_istio(value))),
            }
        };
        let values = values.iter().map(convert).collect::<Result<_, _>>()?;
        let not_values = not_values.iter().map(convert).collect::<Result<_, _>>()?;
        Ok(Condition {
            key: parsed_key,
            values,
            not_values,
        })
    }

    /// Reads only what HTTP requests have: a header or the request's JWT.
    fn is_http(&self) -> bool {
        matches!(
            self.key,
            ConditionKey::RequestHeader(_)
                | ConditionKey::RequestPrincipal
                | ConditionKey::RequestAudiences
                | ConditionKey::RequestPresenter
                | ConditionKey::RequestClaim(_)
        )
    }

    fn matches(&self, req: &HttpAuthzRequest<'_>, principal: Option<&str>) -> bool {
        let auth = req.auth;
        let header = match &self.key {
            ConditionKey::RequestHeader(name) => req.request.headers.header(name),
            _ => None,
        };
        positive_and_negative(&self.values, &self.not_values, |value| {
            match (&self.key, value) {
                // `*` on a header means "present", even with an empty value (Envoy present_match).
                (ConditionKey::RequestHeader(_), ConditionValue::Text(WildcardMatch::Presence)) => {
                    header.is_some()
                }
                (ConditionKey::RequestHeader(_), ConditionValue::Text(m)) => {
                    header.as_deref().is_some_and(|h| m.matches(h))
                }
                (ConditionKey::SourceIp, ConditionValue::Cidr(net)) => net.contains(&req.source_ip),
                (ConditionKey::RemoteIp, ConditionValue::Cidr(net)) => net.contains(&req.remote_ip),
                (ConditionKey::DestinationIp, ConditionValue::Cidr(net)) => {
                    net.contains(&req.destination_ip)
                }
                (ConditionKey::DestinationPort, ConditionValue::Port(port)) => {
                    *port == req.request.port
                }
                (ConditionKey::SourceNamespace, ConditionValue::Text(m)) => req
                    .source_identity
                    .is_some_and(|id| m.matches(id.namespace())),
                (ConditionKey::SourcePrincipal, ConditionValue::Text(m)) => {
                    principal.is_some_and(|p| m.matches(p))
                }
                (ConditionKey::SourceTrustDomain, ConditionValue::Text(m)) => req
                    .source_identity
                    .is_some_and(|id| m.matches(id.trust_domain())),
                (ConditionKey::ConnectionSni, ConditionValue::Text(m)) => {
                    req.sni.is_some_and(|sni| m.matches(sni))
                }
                (ConditionKey::RequestPrincipal, ConditionValue::Text(m)) => {
                    auth.is_some_and(|a| m.matches(&a.principal))
                }
                (ConditionKey::RequestAudiences, ConditionValue::Text(m)) => {
                    auth.is_some_and(|a| a.audiences.iter().any(|aud| m.matches(aud)))
                }
                (ConditionKey::RequestPresenter, ConditionValue::Text(m)) => auth
                    .and_then(|a| a.presenter.as_deref())
                    .is_some_and(|p| m.matches(p)),
                (ConditionKey::RequestClaim(path), ConditionValue::Text(m)) => {
                    auth.is_some_and(|a| a.claim_matches(path, m))
                }
                // A value of the wrong type (only possible when built by hand) never matches.
                _ => false,
            }
        })
    }
}

/// Everything L7 authorization reads about a request.
#[derive(Debug, Clone, Copy)]
pub struct HttpAuthzRequest<'a> {
    pub request: RequestView<'a>,
    /// Verified peer identity of the connection the request came on; `None` for plaintext.
    pub source_identity: Option<&'a SpiffeId>,
    /// Direct peer address.
    pub source_ip: IpAddr,
    /// Original client address; equal to `source_ip` when nothing says otherwise.
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub sni: Option<&'a str>,
    /// The request's validated JWT; `None` when it carried none.
    pub auth: Option<&'a RequestAuth>,
}

impl Source {
    fn has_request_principals(&self) -> bool {
        !(self.request_principals.is_empty() && self.not_request_principals.is_empty())
    }

    fn matches(&self, req: &HttpAuthzRequest<'_>, principal: Option<&str>) -> bool {
        positive_and_negative(
            &self.request_principals,
            &self.not_request_principals,
            |m| req.auth.is_some_and(|a| m.matches(&a.principal)),
        ) && self.matches_connection(req, principal)
    }

    /// The source without its HTTP-only attribute (the request principal).
    fn matches_connection(&self, req: &HttpAuthzRequest<'_>, principal: Option<&str>) -> bool {
        positive_and_negative(&self.principals, &self.not_principals, |m| {
            principal.is_some_and(|p| m.matches(p))
        }) && positive_and_negative(&self.namespaces, &self.not_namespaces, |m| {
            req.source_identity
                .is_some_and(|id| m.matches(id.namespace()))
        }) && positive_and_negative(&self.trust_domains, &self.not_trust_domains, |m| {
            req.source_identity
                .is_some_and(|id| m.matches(id.trust_domain()))
        }) && positive_and_negative(&self.ip_blocks, &self.not_ip_blocks, |net| {
            net.contains(&req.source_ip)
        }) && positive_and_negative(&self.remote_ip_blocks, &self.not_remote_ip_blocks, |net| {
            net.contains(&req.remote_ip)
        })
    }
}

impl Operation {
    /// Uses an attribute only HTTP requests have.
    fn is_http(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
    }

    /// The operation without its HTTP-only attributes: only the ports are left to compare.
    fn matches_connection(&self, port: u16) -> bool {
        positive_and_negative(&self.ports, &self.not_ports, |p| *p == port)
    }

    fn matches(&self, req: &HttpAuthzRequest<'_>, normalized_path: &str) -> bool {
        positive_and_negative(&self.hosts, &self.not_hosts, |m| {
            m.matches_ignore_ascii_case(req.request.authority)
        }) && positive_and_negative(&self.ports, &self.not_ports, |p| *p == req.request.port)
            && positive_and_negative(&self.methods, &self.not_methods, |m| {
                m.matches(req.request.method)
            })
            && positive_and_negative(&self.paths, &self.not_paths, |p| p.matches(normalized_path))
    }
}

impl HttpRule {
    /// Uses an attribute only HTTP requests have.
    fn is_http(&self) -> bool {
        self.to.iter().any(Operation::is_http)
            || self.from.iter().any(Source::has_request_principals)
            || self.when.iter().any(Condition::is_http)
    }

    /// Whether this rule matches a connection: `from` and the non-HTTP parts of `to` and
    /// `when` (HTTP-only conditions are left out).
    fn matches_connection(&self, req: &HttpAuthzRequest<'_>, principal: Option<&str>) -> bool {
        (self.from.is_empty()
            || self
                .from
                .iter()
                .any(|s| s.matches_connection(req, principal)))
            && (self.to.is_empty()
                || self
                    .to
                    .iter()
                    .any(|o| o.matches_connection(req.request.port)))
            && self
                .when
                .iter()
                .filter(|c| !c.is_http())
                .all(|c| c.matches(req, principal))
    }
}

impl HttpAuthorization {
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `normalized_path` as returned by [`normalize_path`].
    pub fn matches(&self, req: &HttpAuthzRequest<'_>, normalized_path: &str) -> bool {
        let principal = req.source_identity.map(SpiffeId::principal);
        let principal = principal.as_deref();
        self.rules.iter().any(|rule| {
            (rule.from.is_empty() || rule.from.iter().any(|s| s.matches(req, principal)))
                && (rule.to.is_empty() || rule.to.iter().any(|o| o.matches(req, normalized_path)))
                && rule.when.iter().all(|c| c.matches(req, principal))
        })
    }
}

/// Whether `policy` matches a TCP connection, as Istio's RBAC for TCP decides: an ALLOW rule
/// with HTTP-only attributes is ignored, a DENY rule loses them.
fn matches_connection(policy: &HttpAuthorization, req: &HttpAuthzRequest<'_>) -> bool {
    let principal = req.source_identity.map(SpiffeId::principal);
    let principal = principal.as_deref();
    policy.rules.iter().any(|rule| {
        (policy.action == PolicyAction::Deny || !rule.is_http())
            && rule.matches_connection(req, principal)
    })
}

/// What connection-level authorization reads about a TCP connection through the waypoint.
#[derive(Debug, Clone, Copy)]
pub struct TcpAuthzRequest<'a> {
    /// Verified peer identity of the tunnel; `None` for plaintext.
    pub source_identity: Option<&'a SpiffeId>,
    /// Direct peer address.
    pub source_ip: IpAddr,
    /// Original client address; equal to `source_ip` when nothing says otherwise.
    pub remote_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// Destination port the connection arrived for.
    pub port: u16,
}

/// A header source with no headers: a connection has none.
struct NoHeaders;

impl crate::route::HeaderSource for NoHeaders {
    fn header(&self, _lowercase_name: &str) -> Option<std::borrow::Cow<'_, str>> {
        None
    }
}

/// The same policies for a TCP connection (no HTTP request): DENY first, then ALLOW, with
/// HTTP-only attributes handled as Istio handles them for TCP (see the module's notes).
pub fn evaluate_tcp<'a>(
    policies: impl IntoIterator<Item = &'a HttpAuthorization>,
    req: &TcpAuthzRequest<'_>,
) -> Decision {
    let view = RequestView {
        method: "",
        scheme: "",
        authority: "",
        path: "/",
        query: None,
        headers: &NoHeaders,
        port: req.port,
        source_labels: None,
        source_namespace: req.source_identity.map(SpiffeId::namespace),
    };
    let connection = HttpAuthzRequest {
        request: view,
        source_identity: req.source_identity,
        source_ip: req.source_ip,
        remote_ip: req.remote_ip,
        destination_ip: req.destination_ip,
        sni: None,
        auth: None,
    };
    let mut any_allow = false;
    let mut allowed = false;
    for policy in policies.into_iter().filter(|p| !p.dry_run) {
        match policy.action {
            PolicyAction::Deny => {
                if matches_connection(policy, &connection) {
                    return Decision::Deny(DenyReason::DeniedBy(policy.policy_ref()));
                }
            }
            PolicyAction::Allow => {
                any_allow = true;
                allowed = allowed || matches_connection(policy, &connection);
            }
        }
    }
    if !any_allow || allowed {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    }
}

/// DENY policies first, then ALLOW (see [`crate::l4::evaluate`]); dry-run policies are skipped.
/// A path that cannot be normalized is denied before any policy is looked at, since no rule on
/// it could be trusted.
pub fn evaluate_http<'a>(
    policies: impl IntoIterator<Item = &'a HttpAuthorization>,
    req: &HttpAuthzRequest<'_>,
) -> Decision {
    // The waypoint passes the path it normalized already: then it is used as it is.
    let path = if is_normalized(req.request.path) {
        Cow::Borrowed(req.request.path)
    } else {
        match normalize_path(req.request.path) {
            Ok(path) => Cow::Owned(path),
            Err(_) => return Decision::Deny(DenyReason::InvalidPath),
        }
    };
    let mut any_allow = false;
    let mut allowed = false;
    for policy in policies.into_iter().filter(|p| !p.dry_run) {
        match policy.action {
            PolicyAction::Deny => {
                if policy.matches(req, &path) {
                    return Decision::Deny(DenyReason::DeniedBy(policy.policy_ref()));
                }
            }
            PolicyAction::Allow => {
                any_allow = true;
                allowed = allowed || policy.matches(req, &path);
            }
        }
    }
    if !any_allow || allowed {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    }
}

#[cfg(test)]
mod tests;
