//! `istio.security.Authorization` for node agents: the L4 part of each AuthorizationPolicy, and
//! PeerAuthentication STRICT as the DENY rule istiod generates.

use std::{collections::BTreeMap, net::IpAddr};

use weft_policy::WildcardMatch;
use weft_policy::l4::{
    EffectivePeerAuthentication, MtlsMode as PolicyMtlsMode, PolicyScope,
    peer_authentication_policy,
};
use weft_proto::istio::security;

use super::MeshSettings;
use crate::translate::resolve::{ip_bytes, principal};
use crate::translate::{TranslateError, TranslateProblem};
use crate::{
    index::ConfigIndex,
    model::{
        ResourceKind,
        security::{AuthorizationAction, AuthorizationPolicy, MtlsMode, Rule},
    },
};

/// An authorization value in Istio's syntax (`exact`, `prefix*`, `*suffix`, `*`) as the agents
/// receive it.
fn string_match(value: &str) -> security::StringMatch {
    wildcard_to_proto(&WildcardMatch::parse_istio(value))
}

fn wildcard_to_proto(wildcard: &WildcardMatch) -> security::StringMatch {
    use security::string_match::MatchType;
    security::StringMatch {
        match_type: Some(match wildcard {
            WildcardMatch::Exact(s) => MatchType::Exact(s.clone()),
            WildcardMatch::Prefix(s) => MatchType::Prefix(s.clone()),
            WildcardMatch::Suffix(s) => MatchType::Suffix(s.clone()),
            WildcardMatch::Presence => MatchType::Presence(()),
        }),
    }
}

fn cidr(value: &str) -> Option<security::Address> {
    let (ip, length) = match value.split_once('/') {
        Some((ip, length)) => (ip.parse::<IpAddr>().ok()?, length.parse().ok()?),
        None => {
            let ip: IpAddr = value.parse().ok()?;
            (ip, if ip.is_ipv4() { 32 } else { 128 })
        }
    };
    Some(security::Address {
        address: ip_bytes(ip),
        length,
    })
}

/// The L4 translation of one rule: clauses ANDed, each clause's matches ORed. A node agent sees
/// no request, so the rule's HTTP attributes ([`Rule::http_attributes`]) cannot be evaluated:
/// - an ALLOW rule using one allows nothing (`None`: it must not match at all), as in Istio;
/// - a DENY rule is enforced without them and so refuses more, failing safe as Istio documents
///   for HTTP-only attributes on TCP traffic: a `from` or `to` entry whose only conditions were
///   HTTP attributes matches every connection, and so does its clause, which is left out.
///   (istiod leaves such an entry empty, which ztunnel skips, so that the DENY denies nothing;
///   deliberately stricter here.)
fn rule_to_l4(rule: &Rule, action: AuthorizationAction) -> Option<security::Rule> {
    if action == AuthorizationAction::Allow && !rule.http_attributes().is_empty() {
        return None;
    }
    let mut clauses = Vec::new();
    let mut clause = |entries: Vec<(security::Match, bool)>| {
        let unconstrained = entries
            .iter()
            .any(|(m, had_http)| *had_http && *m == security::Match::default());
        if !entries.is_empty() && !unconstrained {
            clauses.push(security::Clause {
                matches: entries.into_iter().map(|(m, _)| m).collect(),
            });
        }
    };
    if let Some(from) = &rule.from {
        clause(
            from.iter()
                .filter_map(|f| f.source.as_ref())
                .map(|source| (source_match(source), !source.http_attributes().is_empty()))
                .collect(),
        );
    }
    if let Some(to) = &rule.to {
        clause(
            to.iter()
                .filter_map(|t| t.operation.as_ref())
                .map(|operation| {
                    (
                        operation_match(operation),
                        !operation.http_attributes().is_empty(),
                    )
                })
                .collect(),
        );
    }
    // A condition on the request is left out: the rule stands without it.
    for condition in rule.when.iter().filter(|c| !c.is_http_only()) {
        let values = &condition.values;
        let not_values = &condition.not_values;
        let m = match condition.key.as_str() {
            "source.ip" | "remote.ip" => security::Match {
                source_ips: values.iter().filter_map(|c| cidr(c)).collect(),
                not_source_ips: not_values.iter().filter_map(|c| cidr(c)).collect(),
                ..Default::default()
            },
            "source.namespace" => security::Match {
                namespaces: values.iter().map(|v| string_match(v)).collect(),
                not_namespaces: not_values.iter().map(|v| string_match(v)).collect(),
                ..Default::default()
            },
            "source.principal" => security::Match {
                principals: values.iter().map(|v| string_match(&principal(v))).collect(),
                not_principals: not_values
                    .iter()
                    .map(|v| string_match(&principal(v)))
                    .collect(),
                ..Default::default()
            },
            "source.trustDomain" => security::Match {
                trust_domains: values.iter().map(|v| string_match(v)).collect(),
                not_trust_domains: not_values.iter().map(|v| string_match(v)).collect(),
                ..Default::default()
            },
            "destination.ip" => security::Match {
                destination_ips: values.iter().filter_map(|c| cidr(c)).collect(),
                not_destination_ips: not_values.iter().filter_map(|c| cidr(c)).collect(),
                ..Default::default()
            },
            "destination.port" => security::Match {
                destination_ports: values.iter().filter_map(|p| p.parse().ok()).collect(),
                not_destination_ports: not_values.iter().filter_map(|p| p.parse().ok()).collect(),
                ..Default::default()
            },
            _ => continue,
        };
        clauses.push(security::Clause { matches: vec![m] });
    }
    Some(security::Rule { clauses })
}

/// The L4 fields of a rule's `source`.
fn source_match(source: &crate::model::security::Source) -> security::Match {
    let service_accounts = |list: &[String]| {
        list.iter()
            .filter_map(|sa| sa.split_once('/'))
            .map(|(ns, sa)| security::ServiceAccountMatch {
                namespace: ns.into(),
                service_account: sa.into(),
            })
            .collect()
    };
    security::Match {
        principals: source
            .principals
            .iter()
            .map(|p| string_match(&principal(p)))
            .collect(),
        not_principals: source
            .not_principals
            .iter()
            .map(|p| string_match(&principal(p)))
            .collect(),
        namespaces: source.namespaces.iter().map(|n| string_match(n)).collect(),
        not_namespaces: source
            .not_namespaces
            .iter()
            .map(|n| string_match(n))
            .collect(),
        trust_domains: source
            .trust_domains
            .iter()
            .map(|t| string_match(t))
            .collect(),
        not_trust_domains: source
            .not_trust_domains
            .iter()
            .map(|t| string_match(t))
            .collect(),
        service_accounts: service_accounts(&source.service_accounts),
        not_service_accounts: service_accounts(&source.not_service_accounts),
        source_ips: source
            .ip_blocks
            .iter()
            .chain(&source.remote_ip_blocks)
            .filter_map(|c| cidr(c))
            .collect(),
        not_source_ips: source
            .not_ip_blocks
            .iter()
            .chain(&source.not_remote_ip_blocks)
            .filter_map(|c| cidr(c))
            .collect(),
        ..Default::default()
    }
}

/// The L4 fields of a rule's `operation`: its ports.
fn operation_match(operation: &crate::model::security::Operation) -> security::Match {
    security::Match {
        destination_ports: operation
            .ports
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        not_destination_ports: operation
            .not_ports
            .iter()
            .filter_map(|p| p.parse().ok())
            .collect(),
        ..Default::default()
    }
}

/// The policies node agents enforce without some of their attributes (those only a request
/// carries), one problem each naming every such attribute: the operator is told what a DENY now
/// refuses and an ALLOW no longer allows.
pub fn authorization_problems(index: &ConfigIndex) -> Vec<TranslateError> {
    index
        .authorization_policies
        .values()
        .filter_map(|policy| {
            let attributes = policy.spec.http_attributes_at_node_agents();
            (!attributes.is_empty()).then(|| {
                TranslateError::new(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::HttpAttributesAtNodeAgent {
                        attributes: attributes.join(", "),
                        deny: policy.spec.action == Some(AuthorizationAction::Deny),
                    },
                )
            })
        })
        .collect()
}

/// Every `istio.security.Authorization` for node agents, keyed `namespace/name`.
pub fn authorizations(
    index: &ConfigIndex,
    settings: &MeshSettings,
) -> BTreeMap<String, security::Authorization> {
    let mut out = BTreeMap::new();
    for policy in index.authorization_policies.values() {
        if let Some(translated) = authorization(policy, settings) {
            out.insert(
                format!("{}/{}", translated.namespace, translated.name),
                translated,
            );
        }
    }
    for pa in index.peer_authentications.values() {
        let namespace = pa
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pa.metadata.name.clone().unwrap_or_default();
        let mode = |m: Option<&crate::model::security::MutualTls>| match m.and_then(|m| m.mode) {
            Some(MtlsMode::Strict) => PolicyMtlsMode::Strict,
            Some(MtlsMode::Permissive) => PolicyMtlsMode::Permissive,
            Some(MtlsMode::Disable) => PolicyMtlsMode::Disable,
            Some(MtlsMode::Unset) | None => PolicyMtlsMode::Unset,
        };
        let scope = if pa.spec.selector.is_some() {
            PolicyScope::WorkloadSelector
        } else if namespace == settings.root_namespace {
            PolicyScope::Global
        } else {
            PolicyScope::Namespace
        };
        let effective = EffectivePeerAuthentication {
            name: name.clone(),
            namespace: namespace.clone(),
            scope,
            mode: mode(pa.spec.mtls.as_ref()),
            port_level: pa
                .spec
                .port_level_mtls
                .iter()
                .flatten()
                .filter_map(|(port, m)| Some((u16::try_from(*port).ok()?, mode(Some(m)))))
                .collect(),
        };
        let Some(policy) = peer_authentication_policy(&effective) else {
            continue;
        };
        out.insert(
            format!("{}/{}", policy.namespace, policy.name),
            l4_to_proto(&policy),
        );
    }
    out
}

fn authorization(
    policy: &AuthorizationPolicy,
    settings: &MeshSettings,
) -> Option<security::Authorization> {
    let spec = &policy.spec;
    // targetRef(s) policies belong to waypoints, not to node agents.
    if !spec.target_refs.is_empty() || spec.target_ref.is_some() {
        return None;
    }
    let action = spec.action.unwrap_or_default();
    let proto_action = match action {
        AuthorizationAction::Allow => security::Action::Allow,
        AuthorizationAction::Deny => security::Action::Deny,
        // AUDIT and CUSTOM are not enforced by node agents.
        AuthorizationAction::Audit | AuthorizationAction::Custom => return None,
    };
    let namespace = policy
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let scope = if spec.selector.is_some() {
        security::Scope::WorkloadSelector
    } else if namespace == settings.root_namespace {
        security::Scope::Global
    } else {
        security::Scope::Namespace
    };
    let rules = spec
        .rules
        .iter()
        .flatten()
        .filter_map(|rule| rule_to_l4(rule, action))
        .collect();
    Some(security::Authorization {
        name: policy.metadata.name.clone().unwrap_or_default(),
        namespace,
        scope: scope as i32,
        action: proto_action as i32,
        rules,
        dry_run: false,
    })
}

/// The proto form of a policy built by the policy crate (PeerAuthentication's DENY rule).
fn l4_to_proto(policy: &weft_policy::l4::Authorization) -> security::Authorization {
    let strings = |list: &[WildcardMatch]| -> Vec<security::StringMatch> {
        list.iter().map(wildcard_to_proto).collect()
    };
    security::Authorization {
        name: policy.name.clone(),
        namespace: policy.namespace.clone(),
        scope: match policy.scope {
            PolicyScope::Global => security::Scope::Global,
            PolicyScope::Namespace => security::Scope::Namespace,
            PolicyScope::WorkloadSelector => security::Scope::WorkloadSelector,
        } as i32,
        action: match policy.action {
            weft_policy::PolicyAction::Allow => security::Action::Allow,
            weft_policy::PolicyAction::Deny => security::Action::Deny,
        } as i32,
        rules: policy
            .rules
            .iter()
            .map(|rule| security::Rule {
                clauses: rule
                    .clauses
                    .iter()
                    .map(|clause| security::Clause {
                        matches: clause
                            .matches
                            .iter()
                            .map(|m| security::Match {
                                principals: strings(&m.principals),
                                not_principals: strings(&m.not_principals),
                                namespaces: strings(&m.namespaces),
                                not_namespaces: strings(&m.not_namespaces),
                                destination_ports: m
                                    .destination_ports
                                    .iter()
                                    .map(|p| u32::from(*p))
                                    .collect(),
                                not_destination_ports: m
                                    .not_destination_ports
                                    .iter()
                                    .map(|p| u32::from(*p))
                                    .collect(),
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
        dry_run: policy.dry_run,
    }
}
