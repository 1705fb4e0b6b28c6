//! What Weft accepts but does not apply: one table, [`CATALOG`], of kinds and field paths with
//! the reason, walked over every resource so that a document setting such a field gets a warning
//! naming the field (never a silent drop). ARCHITECTURE.md lists the same table (a test keeps
//! the two in step). Policies fail closed where a field is not applied (see the reasons).

use serde::Serialize;
use serde_json::Value;

use super::Findings;
use crate::model::gateway_api::WAYPOINT_GATEWAY_CLASS;
use crate::model::{Resource, ResourceKind};

/// When an entry applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// The whole kind: every resource of it.
    Kind,
    /// The field is set (present, and not null or an empty list or map).
    Set,
    /// The field holds one of these values.
    Equals(&'static [&'static str]),
    /// The field is a string starting with this.
    StartsWith(&'static str),
}

/// One kind or field that is accepted but not applied.
#[derive(Debug, Clone, Copy)]
pub struct NotApplied {
    pub kind: ResourceKind,
    /// Field path: `.`-separated keys, `[]` for every element of a list, `**` for any depth.
    pub path: &'static str,
    pub when: When,
    pub reason: &'static str,
}

const fn entry(
    kind: ResourceKind,
    path: &'static str,
    when: When,
    reason: &'static str,
) -> NotApplied {
    NotApplied {
        kind,
        path,
        when,
        reason,
    }
}

use ResourceKind as K;
use When::{Equals, Kind, Set, StartsWith};

/// Every kind and field Weft accepts without applying.
pub const CATALOG: &[NotApplied] = &[
    // VirtualService
    entry(
        K::VirtualService,
        "spec.tls",
        Set,
        "TLS routes are applied at gateway proxies (PASSTHROUGH servers), not by waypoints",
    ),
    entry(
        K::VirtualService,
        "spec.http[].delegate",
        Set,
        "delegation applies to gateways only; the route is ignored",
    ),
    entry(
        K::VirtualService,
        "spec.http[].match[].statPrefix",
        Set,
        "waypoints keep no per-match statistics",
    ),
    entry(
        K::VirtualService,
        "spec.tcp[].match[].sourceSubnet",
        Set,
        "deprecated, and never implemented by Istio either",
    ),
    // DestinationRule
    entry(
        K::DestinationRule,
        "spec.workloadSelector",
        Set,
        "rules with a workloadSelector apply to sidecars only; this rule is ignored",
    ),
    entry(
        K::DestinationRule,
        "spec.**.loadBalancer.simple",
        Equals(&["PASSTHROUGH"]),
        "waypoints do not route to the original destination; the default load balancer is used",
    ),
    entry(
        K::DestinationRule,
        "spec.**.loadBalancer.zoneAwareLbSetting",
        Set,
        "zone-aware routing is not applied at waypoints (Istio's waypoints skip it too); no locality load balancing applies",
    ),
    entry(
        K::DestinationRule,
        "spec.**.retryBudget.budgetInterval",
        Set,
        "the budget counts the retries in flight; no interval applies",
    ),
    // ServiceEntry
    entry(
        K::ServiceEntry,
        "spec.resolution",
        Equals(&["DYNAMIC_DNS"]),
        "applied at waypoints (each request's Host, each TLS connection's SNI resolved, TLS originated to each request's host, mirrored copies sent where their own host resolves)",
    ),
    entry(
        K::ServiceEntry,
        "spec.subjectAltNames",
        Set,
        "node agents verify each mesh endpoint's own identity; endpoints outside the mesh are reached in plain TCP",
    ),
    entry(
        K::ServiceEntry,
        "spec.endpoints[].network",
        Set,
        "networks are not known to node agents: every endpoint is reached directly (waypoints' `failoverPriority` ranks by it)",
    ),
    entry(
        K::WorkloadEntry,
        "spec.network",
        Set,
        "networks are not known to node agents: every endpoint is reached directly (waypoints' `failoverPriority` ranks by it)",
    ),
    entry(
        K::Gateway,
        "spec.servers[].tls.mode",
        Equals(&["AUTO_PASSTHROUGH"]),
        "gateway proxies serve SIMPLE, MUTUAL, OPTIONAL_MUTUAL, ISTIO_MUTUAL and PASSTHROUGH only; the server is ignored",
    ),
    entry(
        K::Gateway,
        "spec.servers[].bind",
        Set,
        "gateway proxies listen on every address of their pod",
    ),
    entry(
        K::Gateway,
        "spec.servers[].defaultEndpoint",
        Set,
        "gateway proxies route by their VirtualServices only",
    ),
    entry(
        K::Gateway,
        "spec.servers[].tls.caCertCredentialName",
        Set,
        "client certificates are verified with the CA of credentialName (its ca.crt or its -cacert Secret), not with this Secret",
    ),
    // Whole kinds
    entry(
        K::GatewayClass,
        "",
        Kind,
        "GatewayClasses are not read; waypoints are Gateways of class istio-waypoint",
    ),
    // Gateway API routes (applied at waypoints for Service parents; see ARCHITECTURE.md)
    entry(
        K::HTTPRoute,
        "spec.rules[].filters[].type",
        Equals(&["ExtensionRef", "ExternalAuth"]),
        "this filter is not applied by waypoints: requests the rule matches are answered 500",
    ),
    entry(
        K::HTTPRoute,
        "spec.rules[].backendRefs[].filters[].type",
        Equals(&[
            "RequestMirror",
            "RequestRedirect",
            "URLRewrite",
            "CORS",
            "ExtensionRef",
            "ExternalAuth",
        ]),
        "waypoints apply only header modifiers per backend: requests the rule matches are answered 500",
    ),
    entry(
        K::HTTPRoute,
        "spec.rules[].sessionPersistence.idleTimeout",
        Set,
        "waypoints keep no idle timeout of a session: the session lasts as its cookie or header does",
    ),
    entry(
        K::GRPCRoute,
        "spec.rules[].filters[].type",
        Equals(&["ExtensionRef"]),
        "this filter is not applied by waypoints: requests the rule matches are answered 500",
    ),
    entry(
        K::GRPCRoute,
        "spec.rules[].backendRefs[].filters[].type",
        Equals(&["RequestMirror", "ExtensionRef"]),
        "waypoints apply only header modifiers per backend: requests the rule matches are answered 500",
    ),
    entry(
        K::GRPCRoute,
        "spec.rules[].sessionPersistence.idleTimeout",
        Set,
        "waypoints keep no idle timeout of a session: the session lasts as its cookie or header does",
    ),
    // RequestAuthentication
    entry(
        K::RequestAuthentication,
        "spec.selector",
        Set,
        "a selector never binds a waypoint (as in Istio's ambient mode) and Weft runs no sidecars: only targetRefs apply it",
    ),
    // Telemetry (what waypoints apply: `translate::waypoint::telemetry`)
    entry(
        K::Telemetry,
        "spec.selector",
        Set,
        "a selector binds a gateway's pod only: never a waypoint (as in Istio's ambient mode), and Weft runs no sidecars",
    ),
    entry(
        K::Telemetry,
        "spec.metrics[].reportingInterval",
        Set,
        "TCP metrics are counted as the bytes flow: there is no reporting interval",
    ),
    entry(
        K::Telemetry,
        "spec.metrics[].overrides[].match.customMetric",
        Set,
        "Weft defines no custom metrics: the override matches none",
    ),
    entry(
        K::Telemetry,
        "spec.metrics[].overrides[].match.metric",
        Equals(&["GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES"]),
        "Weft does not report gRPC message counts",
    ),
    entry(
        K::Telemetry,
        "spec.tracing[].useRequestIdForTraceSampling",
        Set,
        "the sampling decision is random per request",
    ),
    entry(
        K::Telemetry,
        "spec.tracing[].enableIstioTags",
        Set,
        "spans always carry Istio's tags",
    ),
    entry(
        K::Telemetry,
        "spec.tracing[].disableContextPropagation",
        Set,
        "trace context is always propagated",
    ),
    // AuthorizationPolicy (fail closed: an ALLOW rule that needs what is not applied never
    // matches; a DENY rule applies without it)
    entry(
        K::AuthorizationPolicy,
        "spec.action",
        Equals(&["AUDIT"]),
        "AUDIT policies never change a decision; the policy is ignored",
    ),
    entry(
        K::AuthorizationPolicy,
        "spec.action",
        Equals(&["CUSTOM"]),
        "no external authorizer is called: the requests its rules select are denied",
    ),
    entry(
        K::AuthorizationPolicy,
        "spec.rules[].when[].key",
        StartsWith("experimental.envoy.filters."),
        "Envoy filter metadata does not exist here: an ALLOW rule with it never matches, a DENY rule applies without it",
    ),
];

/// A non-waypoint Gateway API Gateway (`gatewayClassName` other than `istio-waypoint`).
pub const NOT_A_WAYPOINT: &str =
    "only Gateways of class istio-waypoint (waypoints) are run by Weft; this Gateway is not";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Each,
    AnyDepth,
}

fn parse(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path.split('.').filter(|p| !p.is_empty()) {
        if part == "**" {
            out.push(Segment::AnyDepth);
            continue;
        }
        match part.strip_suffix("[]") {
            Some(key) => {
                out.push(Segment::Key(key.to_owned()));
                out.push(Segment::Each);
            }
            None => out.push(Segment::Key(part.to_owned())),
        }
    }
    out
}

fn is_set(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn holds(value: &Value, when: When) -> bool {
    match when {
        When::Kind => true,
        When::Set => is_set(value),
        When::Equals(values) => value.as_str().is_some_and(|v| values.contains(&v)),
        When::StartsWith(prefix) => value.as_str().is_some_and(|v| v.starts_with(prefix)),
    }
}

/// Every concrete path under `value` that `pattern` matches and `when` holds for.
fn matches(value: &Value, pattern: &[Segment], path: String, when: When, out: &mut Vec<String>) {
    let Some((first, rest)) = pattern.split_first() else {
        if holds(value, when) {
            out.push(path);
        }
        return;
    };
    let join = |path: &str, key: &str| {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    };
    match first {
        Segment::Key(key) => {
            if let Some(child) = value.get(key) {
                matches(child, rest, join(&path, key), when, out);
            }
        }
        Segment::Each => {
            if let Value::Array(items) = value {
                for (i, item) in items.iter().enumerate() {
                    matches(item, rest, format!("{path}[{i}]"), when, out);
                }
            }
        }
        Segment::AnyDepth => {
            matches(value, rest, path.clone(), when, out);
            match value {
                Value::Object(map) => {
                    for (key, child) in map {
                        matches(child, pattern, join(&path, key), when, out);
                    }
                }
                Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        matches(item, pattern, format!("{path}[{i}]"), when, out);
                    }
                }
                _ => {}
            }
        }
    }
}

fn spec_value(resource: &Resource) -> Option<Value> {
    fn value<T: Serialize>(spec: &T) -> Option<Value> {
        serde_json::to_value(spec)
            .ok()
            .map(|spec| serde_json::json!({ "spec": spec }))
    }
    match resource {
        Resource::VirtualService(r) => value(&r.spec),
        Resource::DestinationRule(r) => value(&r.spec),
        Resource::AuthorizationPolicy(r) => value(&r.spec),
        Resource::PeerAuthentication(r) => value(&r.spec),
        Resource::Gateway(r) => value(&r.spec),
        Resource::RequestAuthentication(r) => value(&r.spec),
        Resource::HTTPRoute(r) => value(&r.spec),
        Resource::GRPCRoute(r) => value(&r.spec),
        Resource::ServiceEntry(r) => value(&r.spec),
        Resource::Telemetry(r) => value(&r.spec),
        _ => None,
    }
}

/// Reports what `resource` sets that Weft does not apply.
pub fn report(resource: &Resource, findings: &mut Findings) {
    let kind = resource.kind();
    for entry in CATALOG
        .iter()
        .filter(|e| e.kind == kind && e.when == When::Kind)
    {
        findings.not_applied("<resource>", entry.reason);
    }
    match resource {
        Resource::KubernetesGateway(gateway)
            if gateway.spec.gateway_class_name != WAYPOINT_GATEWAY_CLASS =>
        {
            findings.not_applied("spec.gatewayClassName", NOT_A_WAYPOINT);
        }
        _ => {}
    }
    let Some(value) = spec_value(resource) else {
        return;
    };
    for entry in CATALOG
        .iter()
        .filter(|e| e.kind == kind && e.when != When::Kind)
    {
        let mut paths = Vec::new();
        matches(
            &value,
            &parse(entry.path),
            String::new(),
            entry.when,
            &mut paths,
        );
        for path in paths {
            findings.not_applied(path, entry.reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_find_every_set_field_at_any_depth() {
        let value = serde_json::json!({"spec": {
            "trafficPolicy": {"loadBalancer": {"warmup": {"duration": "1s"}}, "portLevelSettings": [
                {"loadBalancer": {"warmup": null}},
                {"loadBalancer": {"warmup": {"duration": "2s"}}},
            ]},
            "subsets": [{"trafficPolicy": {"loadBalancer": {"warmup": {}}}}],
        }});
        let mut found = Vec::new();
        matches(
            &value,
            &parse("spec.**.loadBalancer.warmup"),
            String::new(),
            When::Set,
            &mut found,
        );
        found.sort();
        assert_eq!(
            found,
            [
                "spec.trafficPolicy.loadBalancer.warmup",
                "spec.trafficPolicy.portLevelSettings[1].loadBalancer.warmup",
            ]
        );
    }

    #[test]
    fn values_and_prefixes_select_entries() {
        let value = serde_json::json!({"spec": {"rules": [{"when": [
            {"key": "request.auth.claims[iss]"}, {"key": "source.ip"}
        ]}]}});
        let mut found = Vec::new();
        matches(
            &value,
            &parse("spec.rules[].when[].key"),
            String::new(),
            When::StartsWith("request.auth."),
            &mut found,
        );
        assert_eq!(found, ["spec.rules[0].when[0].key"]);
    }

    #[test]
    fn architecture_lists_every_entry() {
        let page = include_str!("../../../ARCHITECTURE.md");
        let row = |kind: &str, field: &str, when: &str, reason: &str| {
            let row = format!("| {kind} | {field} | {when} | {reason} |");
            assert!(page.contains(&row), "ARCHITECTURE.md lacks the row {row}");
        };
        for entry in CATALOG {
            let field = if entry.path.is_empty() {
                "(the whole kind)".to_owned()
            } else {
                format!("`{}`", entry.path)
            };
            let when = match entry.when {
                When::Kind => "any".to_owned(),
                When::Set => "set".to_owned(),
                When::Equals(values) => values
                    .iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(" or "),
                When::StartsWith(prefix) => format!("starts with `{prefix}`"),
            };
            row(entry.kind.display_name(), &field, &when, entry.reason);
        }
        row(
            ResourceKind::KubernetesGateway.display_name(),
            "`spec.gatewayClassName`",
            &format!("not `{WAYPOINT_GATEWAY_CLASS}`"),
            NOT_A_WAYPOINT,
        );
        // The gRPC access-log service providers are applied: no row says otherwise.
        assert!(
            !page
                .lines()
                .any(|l| l.starts_with("| MeshConfig |") && l.contains("envoyHttpAls")),
            "ARCHITECTURE.md still lists envoyHttpAls as not applied"
        );
        let unread = page
            .lines()
            .find(|l| l.starts_with("| Sidecar,"))
            .expect("a row for the kinds not read");
        for (_, kind) in crate::model::UNREAD_ISTIO_KINDS {
            assert!(unread.contains(kind), "{kind} missing from {unread}");
        }
    }

    #[test]
    fn every_catalog_path_parses_to_segments() {
        for entry in CATALOG {
            assert_eq!(
                entry.path.is_empty(),
                entry.when == When::Kind,
                "{:?} {}",
                entry.kind,
                entry.path
            );
            if !entry.path.is_empty() {
                assert_eq!(
                    parse(entry.path).first(),
                    Some(&Segment::Key("spec".into()))
                );
            }
        }
    }
}
