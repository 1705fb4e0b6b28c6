//! AuthorizationPolicy and PeerAuthentication to `istio.security.Authorization` (the L4 part
//! node agents enforce), following istiod (`pilot/pkg/serviceregistry/kube/controller/ambient/
//! authorization.go`). Shapes, names and scopes are istiod's; where istiod's output would make a
//! DENY rule match less than written, this translation widens it instead (see [`l4_rule`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use weft_proto::istio::security::{
    Action, Address as IpBlock, Authorization, Clause, Match, Rule, Scope, ServiceAccountMatch,
    StringMatch, string_match,
};
use weft_proto::istio::workload::{Address, address};

use super::{TranslateConfig, TranslateError, TranslateProblem, selector_matches};
use crate::index::Snapshot;
use crate::model::security::{
    AuthorizationAction, Condition, MtlsMode, MutualTls, Operation, Source,
};
use crate::model::{AuthorizationPolicy, PeerAuthentication, ResourceKind};

/// The policy istiod sends once any PeerAuthentication exists: DENY connections without a peer
/// identity. Workloads whose effective mode is STRICT list it (`<root>/istio_converted_static_strict`).
pub const STATIC_STRICT_POLICY_NAME: &str = "istio_converted_static_strict";
/// Name prefix of the policies derived from workload PeerAuthentications with port-level modes.
pub const PEER_AUTHENTICATION_POLICY_PREFIX: &str = "converted_peer_authentication_";

/// `when` keys a node agent can evaluate; any other key is an L7 attribute.
const L4_WHEN_KEYS: [&str; 5] = [
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Every Authorization resource for node agents, by name `namespace/name`.
pub(super) fn authorizations(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    errors: &mut Vec<TranslateError>,
) -> BTreeMap<String, Authorization> {
    let mut out = BTreeMap::new();
    for policy in snapshot.authorization_policies() {
        match authorization_policy(config, policy) {
            Ok(Some(auth)) => {
                out.insert(key(&auth.namespace, &auth.name), auth);
            }
            Ok(None) => {}
            Err(problem) => errors.push(TranslateError::new(
                ResourceKind::AuthorizationPolicy,
                &policy.metadata,
                problem,
            )),
        }
    }
    let peer_authentications: Vec<_> = snapshot.peer_authentications().collect();
    for pa in &peer_authentications {
        if let Some(auth) = peer_authentication(config, pa, &peer_authentications) {
            out.insert(key(&auth.namespace, &auth.name), auth);
        }
    }
    if !peer_authentications.is_empty() {
        let auth = static_strict_policy(config);
        out.insert(key(&auth.namespace, &auth.name), auth);
    }
    out
}

fn presence() -> StringMatch {
    StringMatch {
        match_type: Some(string_match::MatchType::Presence(())),
    }
}

fn unauthenticated() -> Match {
    Match {
        not_principals: vec![presence()],
        ..Default::default()
    }
}

fn static_strict_policy(config: &TranslateConfig) -> Authorization {
    Authorization {
        name: STATIC_STRICT_POLICY_NAME.to_owned(),
        namespace: config.root_namespace.clone(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![unauthenticated()],
            }],
        }],
        dry_run: false,
    }
}

fn targets_something(policy: &AuthorizationPolicy) -> bool {
    policy.spec.target_ref.is_some() || !policy.spec.target_refs.is_empty()
}

/// One AuthorizationPolicy; `Ok(None)` for policies that are not for node agents (those with
/// `targetRefs` belong to waypoints).
fn authorization_policy(
    config: &TranslateConfig,
    policy: &AuthorizationPolicy,
) -> Result<Option<Authorization>, TranslateProblem> {
    if targets_something(policy) {
        return Ok(None);
    }
    let namespace = policy.metadata.namespace.clone().unwrap_or_default();
    let scope = match (&policy.spec.selector, namespace == config.root_namespace) {
        (Some(_), _) => Scope::WorkloadSelector,
        (None, true) => Scope::Global,
        (None, false) => Scope::Namespace,
    };
    let action = match policy.spec.action.unwrap_or_default() {
        AuthorizationAction::Allow => Action::Allow,
        AuthorizationAction::Deny => Action::Deny,
        other => {
            return Err(TranslateProblem::UnsupportedAction {
                action: other.as_str(),
                proxy: "node agents",
            });
        }
    };
    let rules = policy
        .spec
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| l4_rule(action, rule, &namespace))
        .collect();
    let dry_run = policy
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DRY_RUN_ANNOTATION))
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    Ok(Some(Authorization {
        name: policy.metadata.name.clone().unwrap_or_default(),
        namespace,
        scope: scope as i32,
        action: action as i32,
        rules,
        dry_run,
    }))
}

fn operation_is_l7(op: &Operation) -> bool {
    !(op.hosts.is_empty()
        && op.not_hosts.is_empty()
        && op.methods.is_empty()
        && op.not_methods.is_empty()
        && op.paths.is_empty()
        && op.not_paths.is_empty())
}

fn source_is_l7(source: &Source) -> bool {
    !(source.request_principals.is_empty()
        && source.not_request_principals.is_empty()
        && source.remote_ip_blocks.is_empty()
        && source.not_remote_ip_blocks.is_empty())
}

fn condition_is_l7(condition: &Condition) -> bool {
    !L4_WHEN_KEYS.contains(&condition.key.as_str())
}

/// The L4 form of one rule.
///
/// ALLOW: a rule using any L7 attribute is dropped, so it can never allow at L4 (an ALLOW policy
/// left without rules then denies everything it applies to) — istiod's behaviour.
///
/// DENY: the rule keeps its L4 part so it denies more, never less. istiod emits an empty match
/// for an entry whose only conditions were L7 (and a match for a non-L4 `when` key with no
/// fields); node agents never match an empty match, which would make the DENY rule match less
/// than written. Here a clause that contains such an entry is left out instead: the entry
/// matches anything at L4, so the clause does too. A rule left without clauses matches every
/// connection.
fn l4_rule(action: Action, rule: &crate::model::security::Rule, namespace: &str) -> Option<Rule> {
    let operations: Vec<&Operation> = rule
        .to
        .iter()
        .flatten()
        .filter_map(|to| to.operation.as_ref())
        .collect();
    let sources: Vec<&Source> = rule
        .from
        .iter()
        .flatten()
        .filter_map(|from| from.source.as_ref())
        .collect();
    let has_l7 = operations.iter().any(|op| operation_is_l7(op))
        || sources.iter().any(|s| source_is_l7(s))
        || rule.when.iter().any(condition_is_l7);
    if action == Action::Allow && has_l7 {
        return None;
    }
    let mut clauses = Vec::new();
    let to_matches: Vec<Match> = operations
        .iter()
        .map(|op| Match {
            destination_ports: ports(&op.ports),
            not_destination_ports: ports(&op.not_ports),
            ..Default::default()
        })
        .collect();
    push_clause(&mut clauses, to_matches);
    let from_matches: Vec<Match> = sources
        .iter()
        .map(|s| Match {
            source_ips: ip_blocks(&s.ip_blocks),
            not_source_ips: ip_blocks(&s.not_ip_blocks),
            namespaces: string_matches(&s.namespaces),
            not_namespaces: string_matches(&s.not_namespaces),
            service_accounts: service_accounts(&s.service_accounts, namespace),
            not_service_accounts: service_accounts(&s.not_service_accounts, namespace),
            principals: string_matches(&s.principals),
            not_principals: string_matches(&s.not_principals),
            ..Default::default()
        })
        .collect();
    push_clause(&mut clauses, from_matches);
    for condition in &rule.when {
        push_clause(&mut clauses, vec![when_match(condition)]);
    }
    Some(Rule { clauses })
}

/// Adds a clause of ORed matches; an empty match (anything, at L4) makes the clause always
/// true, so the clause is omitted.
fn push_clause(clauses: &mut Vec<Clause>, matches: Vec<Match>) {
    if matches.is_empty() || matches.iter().any(|m| *m == Match::default()) {
        return;
    }
    clauses.push(Clause { matches });
}

fn when_match(condition: &Condition) -> Match {
    let values = |positive: bool| {
        if positive {
            &condition.values
        } else {
            &condition.not_values
        }
    };
    let mut m = Match::default();
    match condition.key.as_str() {
        "source.namespace" => {
            m.namespaces = string_matches(values(true));
            m.not_namespaces = string_matches(values(false));
        }
        "source.principal" => {
            m.principals = string_matches(values(true));
            m.not_principals = string_matches(values(false));
        }
        "source.ip" => {
            m.source_ips = ip_blocks(values(true));
            m.not_source_ips = ip_blocks(values(false));
        }
        "destination.ip" => {
            m.destination_ips = ip_blocks(values(true));
            m.not_destination_ips = ip_blocks(values(false));
        }
        "destination.port" => {
            m.destination_ports = ports(values(true));
            m.not_destination_ports = ports(values(false));
        }
        _ => {}
    }
    m
}

/// Istio's string syntax: `*` any non-empty, `*x` suffix, `x*` prefix, else exact.
fn string_matches(values: &[String]) -> Vec<StringMatch> {
    use string_match::MatchType;
    values
        .iter()
        .map(|v| {
            let match_type = if v == "*" {
                MatchType::Presence(())
            } else if let Some(suffix) = v.strip_prefix('*') {
                MatchType::Suffix(suffix.to_owned())
            } else if let Some(prefix) = v.strip_suffix('*') {
                MatchType::Prefix(prefix.to_owned())
            } else {
                MatchType::Exact(v.clone())
            };
            StringMatch {
                match_type: Some(match_type),
            }
        })
        .collect()
}

fn service_accounts(values: &[String], namespace: &str) -> Vec<ServiceAccountMatch> {
    values
        .iter()
        .map(|v| match v.split_once('/') {
            Some((ns, sa)) => ServiceAccountMatch {
                namespace: ns.to_owned(),
                service_account: sa.to_owned(),
            },
            None => ServiceAccountMatch {
                namespace: namespace.to_owned(),
                service_account: v.clone(),
            },
        })
        .collect()
}

/// Port strings; values that are not ports are skipped (validation refuses them earlier).
pub(super) fn ports(values: &[String]) -> Vec<u32> {
    values
        .iter()
        .filter_map(|v| v.parse::<u32>().ok().filter(|p| *p <= 65535))
        .collect()
}

/// Addresses or CIDR blocks; unparsable values are skipped (validation refuses them earlier).
fn ip_blocks(values: &[String]) -> Vec<IpBlock> {
    values
        .iter()
        .filter_map(|v| {
            let (ip, length) = match v.split_once('/') {
                Some((ip, bits)) => (ip.parse::<IpAddr>().ok()?, bits.parse::<u32>().ok()?),
                None => {
                    let ip = v.parse::<IpAddr>().ok()?;
                    (ip, if ip.is_ipv4() { 32 } else { 128 })
                }
            };
            Some(IpBlock {
                address: super::ip_bytes(ip),
                length,
            })
        })
        .collect()
}

// ---- PeerAuthentication ----

fn mode_of(mtls: Option<&MutualTls>) -> MtlsMode {
    mtls.and_then(|m| m.mode).unwrap_or(MtlsMode::Unset)
}

fn pa_mode(pa: &PeerAuthentication) -> MtlsMode {
    mode_of(pa.spec.mtls.as_ref())
}

fn pa_namespace(pa: &PeerAuthentication) -> &str {
    pa.metadata.namespace.as_deref().unwrap_or("")
}

fn pa_selector(pa: &PeerAuthentication) -> Option<&BTreeMap<String, String>> {
    pa.spec
        .selector
        .as_ref()
        .map(|s| &s.match_labels)
        .filter(|labels| !labels.is_empty())
}

/// Istio's conflict rule: the oldest policy wins. Local files carry no timestamps, so the name
/// breaks ties to keep the choice stable.
fn oldest<'a>(
    candidates: impl Iterator<Item = &'a PeerAuthentication>,
) -> Option<&'a PeerAuthentication> {
    candidates.min_by(|a, b| {
        let stamp = |p: &PeerAuthentication| p.metadata.creation_timestamp.clone().map(|t| t.0);
        (stamp(a), &a.metadata.name).cmp(&(stamp(b), &b.metadata.name))
    })
}

/// The mesh-level (root namespace, no selector) and namespace-level policies for `namespace`.
fn parent_policies<'a>(
    config: &TranslateConfig,
    all: &[&'a PeerAuthentication],
    namespace: &str,
) -> (
    Option<&'a PeerAuthentication>,
    Option<&'a PeerAuthentication>,
) {
    let mesh = oldest(
        all.iter()
            .copied()
            .filter(|p| pa_namespace(p) == config.root_namespace && pa_selector(p).is_none()),
    );
    let ns = if namespace == config.root_namespace {
        None
    } else {
        oldest(
            all.iter()
                .copied()
                .filter(|p| pa_namespace(p) == namespace && pa_selector(p).is_none()),
        )
    };
    (mesh, ns)
}

/// Whether mesh and namespace policies together make STRICT the inherited mode.
fn parent_strict(mesh: Option<&PeerAuthentication>, ns: Option<&PeerAuthentication>) -> bool {
    match ns.map(pa_mode) {
        Some(MtlsMode::Strict) => true,
        None | Some(MtlsMode::Unset) => mesh.map(pa_mode) == Some(MtlsMode::Strict),
        Some(_) => false,
    }
}

fn converted_name(pa: &PeerAuthentication) -> String {
    format!(
        "{PEER_AUTHENTICATION_POLICY_PREFIX}{}",
        pa.metadata.name.as_deref().unwrap_or("")
    )
}

/// istiod's `convertPeerAuthentication`: only workload policies (selector, outside the root
/// namespace) with port-level modes become a policy of their own; the rest is covered by the
/// static STRICT policy. Ports left STRICT under a non-STRICT workload each get a rule denying
/// unauthenticated peers on that port; ports made PERMISSIVE or DISABLE under an effective
/// STRICT mode become `notDestinationPorts` exceptions of the denial.
fn peer_authentication(
    config: &TranslateConfig,
    pa: &PeerAuthentication,
    all: &[&PeerAuthentication],
) -> Option<Authorization> {
    let namespace = pa_namespace(pa);
    let port_level = pa.spec.port_level_mtls.as_ref()?;
    if namespace == config.root_namespace || pa_selector(pa).is_none() || port_level.is_empty() {
        return None;
    }
    let (mesh, ns) = parent_policies(config, all, namespace);
    let inherited_strict = parent_strict(mesh, ns);
    let mode = pa_mode(pa);
    let mut rules = Vec::new();
    let mut clauses = Vec::new();
    if mode == MtlsMode::Strict {
        clauses.push(Clause {
            matches: vec![unauthenticated()],
        });
    }
    let mut found_non_strict = false;
    for (port, port_mtls) in port_level {
        match mode_of(Some(port_mtls)) {
            MtlsMode::Strict => {
                // Already enforced by the workload's own or inherited STRICT mode.
                if mode == MtlsMode::Strict || (mode == MtlsMode::Unset && inherited_strict) {
                    continue;
                }
                rules.push(Rule {
                    clauses: vec![Clause {
                        matches: vec![Match {
                            not_principals: vec![presence()],
                            destination_ports: vec![*port],
                            ..Default::default()
                        }],
                    }],
                });
            }
            MtlsMode::Permissive | MtlsMode::Disable => {
                let effective_strict =
                    mode == MtlsMode::Strict || (mode == MtlsMode::Unset && inherited_strict);
                if !effective_strict {
                    continue;
                }
                found_non_strict = true;
                clauses.push(Clause {
                    matches: vec![Match {
                        not_destination_ports: vec![*port],
                        ..Default::default()
                    }],
                });
            }
            MtlsMode::Unset => {}
        }
    }
    if mode == MtlsMode::Strict && !found_non_strict {
        return None;
    }
    if clauses.is_empty() && rules.is_empty() {
        return None;
    }
    // The static STRICT policy is left off such workloads, so the inherited strictness is
    // merged in here (istiod adds it even when the workload's own STRICT clause is there).
    if inherited_strict && found_non_strict {
        clauses.push(Clause {
            matches: vec![unauthenticated()],
        });
    }
    if !clauses.is_empty() {
        rules.push(Rule { clauses });
    }
    Some(Authorization {
        name: converted_name(pa),
        namespace: namespace.to_owned(),
        scope: Scope::WorkloadSelector as i32,
        action: Action::Deny as i32,
        rules,
        dry_run: false,
    })
}

/// istiod's `convertedSelectorPeerAuthentications`: the PeerAuthentication-derived policy keys
/// a workload lists.
fn peer_authentication_keys(
    config: &TranslateConfig,
    all: &[&PeerAuthentication],
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let (mesh, ns) = parent_policies(config, all, namespace);
    let workload = if namespace == config.root_namespace {
        None
    } else {
        oldest(all.iter().copied().filter(|p| {
            pa_namespace(p) == namespace
                && pa_selector(p).is_some_and(|s| selector_matches(s, labels))
        }))
    };
    let mut strict = parent_strict(mesh, ns);
    let mut port_policy = None;
    if let Some(workload) = workload {
        let mode = pa_mode(workload);
        match mode {
            MtlsMode::Strict => strict = true,
            MtlsMode::Permissive | MtlsMode::Disable => strict = false,
            MtlsMode::Unset => {}
        }
        let port_modes: Vec<MtlsMode> = workload
            .spec
            .port_level_mtls
            .iter()
            .flatten()
            .map(|(_, m)| mode_of(Some(m)))
            .collect();
        let any = |wanted: &[MtlsMode]| port_modes.iter().any(|m| wanted.contains(m));
        let relaxed = any(&[MtlsMode::Permissive, MtlsMode::Disable]);
        let tightened = any(&[MtlsMode::Strict]);
        let uses_port_policy = match mode {
            MtlsMode::Strict => relaxed,
            MtlsMode::Permissive | MtlsMode::Disable => tightened,
            MtlsMode::Unset if strict => relaxed,
            MtlsMode::Unset => tightened,
        };
        if uses_port_policy {
            port_policy = Some(key(namespace, &converted_name(workload)));
            // The converted policy carries the STRICT default itself.
            strict = false;
        }
    }
    let mut keys = Vec::new();
    if strict {
        keys.push(key(&config.root_namespace, STATIC_STRICT_POLICY_NAME));
    }
    keys.extend(port_policy);
    keys
}

/// The selector-scoped policies a workload lists in `authorization_policies`: AuthorizationPolicies
/// whose selector matches it (in its namespace or the root namespace) and the policies derived
/// from PeerAuthentication. Sorted.
pub fn policies_selecting(
    snapshot: &Snapshot,
    config: &TranslateConfig,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut keys = BTreeSet::new();
    for policy in snapshot.authorization_policies() {
        let policy_ns = policy.metadata.namespace.as_deref().unwrap_or("");
        if targets_something(policy)
            || !(policy_ns == namespace || policy_ns == config.root_namespace)
            || !matches!(
                policy.spec.action.unwrap_or_default(),
                AuthorizationAction::Allow | AuthorizationAction::Deny
            )
        {
            continue;
        }
        let Some(selector) = &policy.spec.selector else {
            continue;
        };
        if selector_matches(&selector.match_labels, labels) {
            keys.insert(key(
                policy_ns,
                policy.metadata.name.as_deref().unwrap_or(""),
            ));
        }
    }
    let all: Vec<_> = snapshot.peer_authentications().collect();
    keys.extend(peer_authentication_keys(config, &all, namespace, labels));
    keys.into_iter().collect()
}

/// Keeps the authorizations that can apply to a pod on `node`: global ones, namespace ones of
/// namespaces with a pod there, and selector ones those pods list.
pub(super) fn scope_to_node(
    _snapshot: &Snapshot,
    _config: &TranslateConfig,
    node: &str,
    addresses: &BTreeMap<String, Address>,
    authorizations: BTreeMap<String, Authorization>,
) -> BTreeMap<String, Authorization> {
    let mut namespaces = BTreeSet::new();
    let mut selected = BTreeSet::new();
    for address in addresses.values() {
        if let Some(address::Type::Workload(w)) = &address.r#type
            && w.node == node
        {
            namespaces.insert(w.namespace.clone());
            selected.extend(w.authorization_policies.iter().cloned());
        }
    }
    authorizations
        .into_iter()
        .filter(|(name, auth)| match Scope::try_from(auth.scope) {
            Ok(Scope::Global) => true,
            Ok(Scope::Namespace) => namespaces.contains(&auth.namespace),
            Ok(Scope::WorkloadSelector) => selected.contains(name),
            Err(_) => true,
        })
        .collect()
}
