//! Connection-level authorization: the model of `istio.security.Authorization` (the resource
//! istiod sends ztunnel) and its evaluation.
//!
//! Structure, as ztunnel reads it: a policy matches when ANY of its `rules` matches; a rule
//! matches when ALL of its `clauses` match; a clause matches when ANY of its `matches` matches; a
//! match matches when ALL of its non-empty fields match, each field being "any of the positive
//! values, and none of the negative ones". Degenerate shapes keep ztunnel's meaning:
//! - a policy with no rules matches nothing (so an ALLOW policy written `spec: {}` denies all);
//! - a rule with no clauses, and a clause with no matches, match everything;
//! - a match with every field empty matches nothing.
//!
//! Peers without an identity (plaintext): a positive `principals`, `namespaces`,
//! `serviceAccounts` or `trustDomains` list never matches them, while a negative list (`notPrincipals`, ...) always
//! does, since they hold no principal that could be excluded. This is Envoy's RBAC result too
//! (`not_id` of an `authenticated` principal is true without a certificate) and is what makes
//! `notPrincipals: ["*"]` in a DENY policy mean "refuse plaintext", the shape istiod gives a
//! STRICT `PeerAuthentication` (see [`peer_authentication_policy`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::decision::{Decision, DenyReason, PolicyAction, PolicyRef};
use crate::string_match::WildcardMatch;
use weft_identity::SpiffeId;

/// Which workloads a policy applies to (`istio.security.Scope`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyScope {
    /// Defined in the root namespace without a selector: every workload in the mesh.
    Global,
    /// Defined in a namespace without a selector: every workload of that namespace.
    Namespace,
    /// Has a selector: the workloads whose `authorization_policies` list names it.
    WorkloadSelector,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Authorization {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub action: PolicyAction,
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Dry-run policies are evaluated for logs by the caller but never enforced here.
    #[serde(default)]
    pub dry_run: bool,
}

/// Clauses ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub clauses: Vec<Clause>,
}

/// Matches ORed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Clause {
    #[serde(default)]
    pub matches: Vec<ConnectionMatch>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceAccountMatch {
    pub namespace: String,
    pub service_account: String,
}

/// Fields ANDed; within a field, positive values ORed and negative values excluded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ConnectionMatch {
    pub namespaces: Vec<WildcardMatch>,
    pub not_namespaces: Vec<WildcardMatch>,
    pub service_accounts: Vec<ServiceAccountMatch>,
    pub not_service_accounts: Vec<ServiceAccountMatch>,
    /// Principals without the `spiffe://` scheme: `cluster.local/ns/x/sa/y`.
    pub principals: Vec<WildcardMatch>,
    pub not_principals: Vec<WildcardMatch>,
    /// The trust domain of the peer's identity (`cluster.local` in
    /// `spiffe://cluster.local/ns/x/sa/y`), in Istio's wildcard syntax.
    pub trust_domains: Vec<WildcardMatch>,
    pub not_trust_domains: Vec<WildcardMatch>,
    pub source_ips: Vec<IpNet>,
    pub not_source_ips: Vec<IpNet>,
    pub destination_ips: Vec<IpNet>,
    pub not_destination_ips: Vec<IpNet>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

/// What the node agent knows about a connection when it authorizes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionContext {
    /// `None` for plaintext (no verified peer certificate).
    pub src_identity: Option<SpiffeId>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// "Any positive (or no positive list), and no negative."
pub(crate) fn positive_and_negative<T>(
    positive: &[T],
    negative: &[T],
    mut predicate: impl FnMut(&T) -> bool,
) -> bool {
    (positive.is_empty() || positive.iter().any(&mut predicate))
        && !negative.iter().any(&mut predicate)
}

impl ConnectionMatch {
    fn is_empty(&self) -> bool {
        self == &ConnectionMatch::default()
    }

    fn matches(&self, ctx: &ConnectionContext, principal: Option<&str>) -> bool {
        let identity = ctx.src_identity.as_ref();
        positive_and_negative(&self.destination_ips, &self.not_destination_ips, |net| {
            net.contains(&ctx.dst_ip)
        }) && positive_and_negative(&self.source_ips, &self.not_source_ips, |net| {
            net.contains(&ctx.src_ip)
        }) && positive_and_negative(
            &self.destination_ports,
            &self.not_destination_ports,
            |port| *port == ctx.dst_port,
        ) && positive_and_negative(&self.service_accounts, &self.not_service_accounts, |sa| {
            identity.is_some_and(|id| {
                id.namespace() == sa.namespace && id.service_account() == sa.service_account
            })
        }) && positive_and_negative(&self.principals, &self.not_principals, |m| {
            principal.is_some_and(|p| m.matches(p))
        }) && positive_and_negative(&self.namespaces, &self.not_namespaces, |m| {
            identity.is_some_and(|id| m.matches(id.namespace()))
        }) && positive_and_negative(&self.trust_domains, &self.not_trust_domains, |m| {
            identity.is_some_and(|id| m.matches(id.trust_domain()))
        })
    }
}

impl Authorization {
    pub fn policy_ref(&self) -> PolicyRef {
        PolicyRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// `namespace/name`, the key workloads use to list their selector-scoped policies.
    pub fn key(&self) -> String {
        self.policy_ref().to_string()
    }

    /// Whether this policy applies to a workload in `workload_namespace` whose selector-scoped
    /// policies are `selected` (keys as returned by [`Authorization::key`]). Global policies
    /// apply everywhere.
    pub fn applies_to(&self, workload_namespace: &str, selected: &[String]) -> bool {
        match self.scope {
            PolicyScope::Global => true,
            PolicyScope::Namespace => self.namespace == workload_namespace,
            PolicyScope::WorkloadSelector => selected.iter().any(|k| *k == self.key()),
        }
    }

    pub fn matches(&self, ctx: &ConnectionContext) -> bool {
        let principal = ctx.src_identity.as_ref().map(SpiffeId::principal);
        let principal = principal.as_deref();
        self.rules.iter().any(|rule| {
            rule.clauses.iter().all(|clause| {
                clause.matches.is_empty()
                    || clause
                        .matches
                        .iter()
                        .any(|m| !m.is_empty() && m.matches(ctx, principal))
            })
        })
    }
}

/// Istio's order: any matching DENY refuses; else, if ALLOW policies apply, one must match;
/// else the connection is allowed. `policies` are those that apply to the destination workload
/// (see [`Authorization::applies_to`]); dry-run policies are skipped.
pub fn evaluate<'a>(
    policies: impl IntoIterator<Item = &'a Authorization>,
    ctx: &ConnectionContext,
) -> Decision {
    let mut any_allow = false;
    let mut allowed = false;
    for policy in policies.into_iter().filter(|p| !p.dry_run) {
        match policy.action {
            PolicyAction::Deny => {
                if policy.matches(ctx) {
                    return Decision::Deny(DenyReason::DeniedBy(policy.policy_ref()));
                }
            }
            PolicyAction::Allow => {
                any_allow = true;
                allowed = allowed || policy.matches(ctx);
            }
        }
    }
    if !any_allow || allowed {
        Decision::Allow
    } else {
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    }
}

/// `PeerAuthentication` mTLS mode. `Unset` inherits; at the top of the chain it means PERMISSIVE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// The effective `PeerAuthentication` of a workload, after the mesh -> namespace -> workload
/// precedence has been resolved (the controller's job).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectivePeerAuthentication {
    pub name: String,
    pub namespace: String,
    pub scope: PolicyScope,
    pub mode: MtlsMode,
    #[serde(default)]
    pub port_level: BTreeMap<u16, MtlsMode>,
}

/// Name prefix istiod gives the policies it derives from `PeerAuthentication`.
pub const PEER_AUTHENTICATION_POLICY_PREFIX: &str = "converted_peer_authentication_";

/// Translates an effective `PeerAuthentication` into the DENY `Authorization` that enforces it,
/// as istiod does for ztunnel: one rule whose first clause is `notPrincipals: [presence]` (no
/// identity) and whose second clause limits it to the STRICT ports (`destinationPorts`) or
/// exempts the non-STRICT ones (`notDestinationPorts`). `None` when nothing is STRICT.
pub fn peer_authentication_policy(pa: &EffectivePeerAuthentication) -> Option<Authorization> {
    let strict_default = pa.mode == MtlsMode::Strict;
    // An UNSET port inherits the workload mode, so it is never an exception.
    let exceptions: Vec<u16> = pa
        .port_level
        .iter()
        .filter(|(_, mode)| match mode {
            MtlsMode::Unset => false,
            MtlsMode::Strict => !strict_default,
            MtlsMode::Permissive | MtlsMode::Disable => strict_default,
        })
        .map(|(port, _)| *port)
        .collect();
    if !strict_default && exceptions.is_empty() {
        return None;
    }
    let unauthenticated = Clause {
        matches: vec![ConnectionMatch {
            not_principals: vec![WildcardMatch::Presence],
            ..Default::default()
        }],
    };
    let mut clauses = vec![unauthenticated];
    if !exceptions.is_empty() {
        let ports = if strict_default {
            ConnectionMatch {
                not_destination_ports: exceptions,
                ..Default::default()
            }
        } else {
            ConnectionMatch {
                destination_ports: exceptions,
                ..Default::default()
            }
        };
        clauses.push(Clause {
            matches: vec![ports],
        });
    }
    Some(Authorization {
        name: format!("{PEER_AUTHENTICATION_POLICY_PREFIX}{}", pa.name),
        namespace: pa.namespace.clone(),
        scope: pa.scope,
        action: PolicyAction::Deny,
        rules: vec![Rule { clauses }],
        dry_run: false,
    })
}

#[cfg(test)]
mod tests;
