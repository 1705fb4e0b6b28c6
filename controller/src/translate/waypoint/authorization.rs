//! AuthorizationPolicies in the waypoint's form: which policies bind a waypoint (through
//! `targetRefs`), their rules with what waypoints cannot evaluate resolved fail-closed, and the
//! policies no waypoint enforces.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Service;
use weft_istio::labels::DRY_RUN;
use weft_proto::waypoint as wp;

use super::Compiler;
use crate::index::ConfigIndex;
use crate::model::ResourceKind;
use crate::model::gateway_api::WAYPOINT_GATEWAY_CLASS;
use crate::model::security::{AuthorizationAction, AuthorizationPolicy, PolicyTargetReference};
use crate::translate::resolve::{self, name_of, namespace_of, service_hostname, service_waypoint};
use crate::translate::{TranslateError, TranslateProblem};

impl Compiler<'_, '_> {
    /// An AuthorizationPolicy for this waypoint: `targetRefs` naming the waypoint's Gateway (all
    /// its services), the `istio-waypoint` GatewayClass from the root namespace (every
    /// waypoint), or Services and ServiceEntries it serves (their hosts only).
    pub(super) fn policy(
        &mut self,
        policy: &AuthorizationPolicy,
        served: &[&Service],
    ) -> Option<wp::L7Authorization> {
        let namespace = namespace_of(&policy.metadata);
        let targets = policy
            .spec
            .target_ref
            .iter()
            .chain(&policy.spec.target_refs);
        let target_services = self.bound_services(targets, namespace, served)?;
        self.l7_policy(policy, target_services)
    }

    /// `policy` in the waypoint's form, scoped to `target_services` (empty: every request the
    /// proxy serves); `None` when it never changes a decision (AUDIT).
    pub(super) fn l7_policy(
        &mut self,
        policy: &AuthorizationPolicy,
        target_services: Vec<String>,
    ) -> Option<wp::L7Authorization> {
        let namespace = namespace_of(&policy.metadata);
        let action = match policy.spec.action.unwrap_or_default() {
            AuthorizationAction::Allow => wp::l7_authorization::Action::Allow,
            AuthorizationAction::Deny => wp::l7_authorization::Action::Deny,
            AuthorizationAction::Audit => {
                self.report(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::Unsupported {
                        path: "spec.action".to_owned(),
                        reason: "AUDIT is not supported by waypoints; the policy is ignored (it never changes a decision)".to_owned(),
                    },
                );
                return None;
            }
            AuthorizationAction::Custom => {
                self.report(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::Unsupported {
                        path: "spec.action".to_owned(),
                        reason: "CUSTOM (external authorization) is not supported by waypoints; the requests it selects are denied".to_owned(),
                    },
                );
                wp::l7_authorization::Action::Deny
            }
        };
        let mut notes = Vec::new();
        let rules = l7_rules(
            policy.spec.rules.as_deref().unwrap_or_default(),
            action,
            &mut notes,
        );
        for note in notes {
            self.report(ResourceKind::AuthorizationPolicy, &policy.metadata, note);
        }
        Some(wp::L7Authorization {
            name: name_of(&policy.metadata).to_owned(),
            namespace: namespace.to_owned(),
            action: action as i32,
            rules,
            dry_run: policy
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(DRY_RUN))
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
            target_services,
        })
    }

    /// The services a policy bound by `targets` (its `targetRefs`) applies to at this
    /// waypoint: empty for the whole waypoint (its Gateway, or the `istio-waypoint`
    /// GatewayClass from the root namespace), else the Services it serves that are named;
    /// `None` when the policy does not bind this waypoint. A selector never binds a waypoint,
    /// as in Istio.
    pub(super) fn bound_services<'t>(
        &self,
        targets: impl Iterator<Item = &'t PolicyTargetReference>,
        namespace: &str,
        served: &[&Service],
    ) -> Option<Vec<String>> {
        let mut whole_waypoint = false;
        let mut target_services = BTreeSet::new();
        for target in targets {
            // Istio admits targets only in the policy's own namespace.
            if target
                .namespace
                .as_deref()
                .is_some_and(|ns| ns != namespace)
            {
                continue;
            }
            let group = target.group.as_deref().unwrap_or("");
            match target.kind.as_str() {
                "Gateway"
                    if group == "gateway.networking.k8s.io"
                        && namespace == self.waypoint.namespace
                        && target.name == self.waypoint.name =>
                {
                    whole_waypoint = true;
                }
                "GatewayClass"
                    if group == "gateway.networking.k8s.io"
                        && target.name == WAYPOINT_GATEWAY_CLASS
                        && namespace == self.settings.root_namespace =>
                {
                    whole_waypoint = true;
                }
                "Service"
                    if (group.is_empty() || group == "core")
                        && served.iter().any(|s| {
                            namespace_of(&s.metadata) == namespace
                                && name_of(&s.metadata) == target.name
                        }) =>
                {
                    target_services.insert(service_hostname(
                        self.settings,
                        namespace,
                        &target.name,
                    ));
                }
                // A ServiceEntry this waypoint serves: every host it declares.
                "ServiceEntry" if group == "networking.istio.io" => {
                    for entry in self.served_entries.iter().filter(|e| {
                        namespace_of(&e.metadata) == namespace
                            && name_of(&e.metadata) == target.name
                    }) {
                        target_services.extend(
                            entry
                                .spec
                                .hosts
                                .iter()
                                .filter(|h| !h.starts_with('*'))
                                .cloned(),
                        );
                    }
                }
                _ => {}
            }
        }
        if whole_waypoint {
            Some(Vec::new())
        } else if target_services.is_empty() {
            None
        } else {
            Some(target_services.into_iter().collect())
        }
    }
}

/// Rules in the waypoint's form. JWT attributes (`requestPrincipals`, `request.auth.*`) are
/// carried as they are: the waypoint reads them from the token its RequestAuthentications
/// validated. Attributes the waypoint cannot read fail closed: an ALLOW rule needing one is
/// left out, a DENY rule ignores it (and so denies more).
fn l7_rules(
    rules: &[crate::model::security::Rule],
    action: wp::l7_authorization::Action,
    notes: &mut Vec<TranslateProblem>,
) -> Vec<wp::Rule> {
    let mut out = Vec::new();
    for (i, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{i}]");
        let mut never = false;
        let mut from = Vec::new();
        if let Some(sources) = &rule.from {
            for f in sources {
                let Some(source) = &f.source else { continue };
                from.push(wp::rule::From {
                    source: Some(l7_source(source)),
                });
            }
            if !sources.is_empty() && from.is_empty() {
                never = true;
            }
        }
        let mut to = Vec::new();
        for (j, operation) in rule
            .to
            .iter()
            .flatten()
            .filter_map(|t| t.operation.as_ref())
            .enumerate()
        {
            let (ports, not_ports) =
                match (port_list(&operation.ports), port_list(&operation.not_ports)) {
                    (Ok(ports), Ok(not_ports)) => (ports, not_ports),
                    _ => {
                        // Validation admits none of these; should one get here, fail closed.
                        let consequence = if action == wp::l7_authorization::Action::Allow {
                            never = true;
                            "the ALLOW rule is left out"
                        } else {
                            "the DENY rule applies to every port"
                        };
                        notes.push(TranslateProblem::Unsupported {
                            path: format!("{path}.to[{j}].operation.ports"),
                            reason: format!("not a port number; {consequence}"),
                        });
                        (Vec::new(), Vec::new())
                    }
                };
            to.push(wp::rule::To {
                operation: Some(wp::Operation {
                    hosts: operation.hosts.clone(),
                    ports,
                    methods: operation.methods.clone(),
                    paths: operation.paths.clone(),
                    not_hosts: operation.not_hosts.clone(),
                    not_ports,
                    not_methods: operation.not_methods.clone(),
                    not_paths: operation.not_paths.clone(),
                }),
            });
        }
        let mut when = Vec::new();
        for (j, condition) in rule.when.iter().enumerate() {
            let key = condition.key.as_str();
            if key.starts_with("experimental.envoy.filters.") {
                let consequence = if action == wp::l7_authorization::Action::Allow {
                    never = true;
                    "the ALLOW rule is left out"
                } else {
                    "the DENY rule applies without it"
                };
                notes.push(TranslateProblem::Unsupported {
                    path: format!("{path}.when[{j}]"),
                    reason: format!("{key} is not available to waypoints; {consequence}"),
                });
                continue;
            }
            when.push(l7_condition(condition));
        }
        if never {
            continue;
        }
        out.push(wp::Rule { from, to, when });
    }
    out
}

fn port_list(values: &[String]) -> Result<Vec<u32>, ()> {
    values
        .iter()
        .map(|v| v.parse::<u16>().map(u32::from).map_err(|_| ()))
        .collect()
}

/// `ns/sa` as a principal pattern matching that account in any trust domain, which is what
/// `serviceAccounts` means.
fn account_principal(account: &str) -> String {
    match account.split_once('/') {
        Some((namespace, name)) => format!("*/ns/{namespace}/sa/{name}"),
        None => account.to_owned(),
    }
}

fn l7_source(s: &crate::model::security::Source) -> wp::Source {
    let principals = s
        .principals
        .iter()
        .map(|p| resolve::principal(p))
        .chain(s.service_accounts.iter().map(|a| account_principal(a)))
        .collect();
    let not_principals = s
        .not_principals
        .iter()
        .map(|p| resolve::principal(p))
        .chain(s.not_service_accounts.iter().map(|a| account_principal(a)))
        .collect();
    wp::Source {
        principals,
        request_principals: s.request_principals.clone(),
        namespaces: s.namespaces.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_principals,
        not_request_principals: s.not_request_principals.clone(),
        not_namespaces: s.not_namespaces.clone(),
        trust_domains: s.trust_domains.clone(),
        not_trust_domains: s.not_trust_domains.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
        remote_ip_blocks: s.remote_ip_blocks.clone(),
        not_remote_ip_blocks: s.not_remote_ip_blocks.clone(),
    }
}

fn l7_condition(c: &crate::model::security::Condition) -> wp::Condition {
    let inline = c
        .key
        .strip_prefix("request.experimental.inline.headers")
        .map(|rest| format!("request.headers{rest}"));
    let (key, values, not_values) = match c.key.as_str() {
        "source.serviceAccount" => (
            "source.principal".to_owned(),
            c.values.iter().map(|a| account_principal(a)).collect(),
            c.not_values.iter().map(|a| account_principal(a)).collect(),
        ),
        "source.principal" => (
            c.key.clone(),
            c.values.iter().map(|p| resolve::principal(p)).collect(),
            c.not_values.iter().map(|p| resolve::principal(p)).collect(),
        ),
        _ => (
            inline.unwrap_or_else(|| c.key.clone()),
            c.values.clone(),
            c.not_values.clone(),
        ),
    };
    wp::Condition {
        key,
        values,
        not_values,
    }
}

/// Policies that target a Service or ServiceEntry no waypoint serves: Istio enforces them
/// nowhere (the node agents see no request, and a ServiceEntry has no pod of its own).
pub(super) fn unenforced_policies(index: &ConfigIndex) -> Vec<TranslateError> {
    let mut out = Vec::new();
    for policy in index.authorization_policies.values() {
        let namespace = namespace_of(&policy.metadata);
        for target in policy
            .spec
            .target_ref
            .iter()
            .chain(&policy.spec.target_refs)
        {
            let group = target.group.as_deref().unwrap_or("");
            let key = format!("{namespace}/{}", target.name);
            let (kind, uses_waypoint) = match target.kind.as_str() {
                "Service" if group.is_empty() || group == "core" => (
                    "Service",
                    index
                        .services
                        .get(&key)
                        .and_then(|s| service_waypoint(index, s))
                        .is_some(),
                ),
                "ServiceEntry" if group == "networking.istio.io" => (
                    "ServiceEntry",
                    index
                        .service_entries
                        .get(&key)
                        .and_then(|e| resolve::service_entry_waypoint(index, &e.metadata))
                        .is_some(),
                ),
                _ => continue,
            };
            if !uses_waypoint {
                out.push(TranslateError::new(
                    ResourceKind::AuthorizationPolicy,
                    &policy.metadata,
                    TranslateProblem::UnenforcedPolicy { kind, target: key },
                ));
            }
        }
    }
    out
}
