//! AuthorizationPolicies attached to the waypoint, in weft-policy's form.

use weft_policy::l7::{Condition, HttpAuthorization, HttpRule, Operation, PathPattern, Source};
use weft_policy::{PolicyAction, WildcardMatch};
use weft_proto::waypoint as proto;

use super::{cidrs, policy_error, port};
use crate::model::{ConfigError, TargetedAuthorization, invalid};

fn wildcards(values: &[String]) -> Vec<WildcardMatch> {
    values
        .iter()
        .map(|v| WildcardMatch::parse_istio(v))
        .collect()
}

fn ports(values: &[u32], context: &str) -> Result<Vec<u16>, ConfigError> {
    values.iter().map(|v| port(*v, context)).collect()
}

fn paths(values: &[String], context: &str) -> Result<Vec<PathPattern>, ConfigError> {
    values
        .iter()
        .map(|v| PathPattern::parse(v).map_err(policy_error(context)))
        .collect()
}

pub(super) fn authorization(
    a: &proto::L7Authorization,
) -> Result<TargetedAuthorization, ConfigError> {
    let context = format!("authorization policy {}/{}", a.namespace, a.name);
    let context = context.as_str();
    let action = match proto::l7_authorization::Action::try_from(a.action) {
        Ok(proto::l7_authorization::Action::Allow) => PolicyAction::Allow,
        Ok(proto::l7_authorization::Action::Deny) => PolicyAction::Deny,
        Ok(proto::l7_authorization::Action::Audit) | Err(_) => {
            return Err(invalid(context, format!("unsupported action {}", a.action)));
        }
    };
    let rules = a
        .rules
        .iter()
        .map(|rule| {
            let from = rule
                .from
                .iter()
                .map(|f| {
                    let s = f.source.clone().unwrap_or_default();
                    Ok(Source {
                        principals: wildcards(&s.principals),
                        not_principals: wildcards(&s.not_principals),
                        request_principals: wildcards(&s.request_principals),
                        not_request_principals: wildcards(&s.not_request_principals),
                        namespaces: wildcards(&s.namespaces),
                        not_namespaces: wildcards(&s.not_namespaces),
                        trust_domains: wildcards(&s.trust_domains),
                        not_trust_domains: wildcards(&s.not_trust_domains),
                        ip_blocks: cidrs(&s.ip_blocks, context)?,
                        not_ip_blocks: cidrs(&s.not_ip_blocks, context)?,
                        remote_ip_blocks: cidrs(&s.remote_ip_blocks, context)?,
                        not_remote_ip_blocks: cidrs(&s.not_remote_ip_blocks, context)?,
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let to = rule
                .to
                .iter()
                .map(|t| {
                    let o = t.operation.clone().unwrap_or_default();
                    Ok(Operation {
                        hosts: wildcards(&o.hosts),
                        not_hosts: wildcards(&o.not_hosts),
                        ports: ports(&o.ports, context)?,
                        not_ports: ports(&o.not_ports, context)?,
                        methods: wildcards(&o.methods),
                        not_methods: wildcards(&o.not_methods),
                        paths: paths(&o.paths, context)?,
                        not_paths: paths(&o.not_paths, context)?,
                    })
                })
                .collect::<Result<Vec<_>, ConfigError>>()?;
            let when = rule
                .when
                .iter()
                .map(|c| {
                    Condition::parse(&c.key, &c.values, &c.not_values)
                        .map_err(policy_error(context))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(HttpRule { from, to, when })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    Ok(TargetedAuthorization {
        policy: HttpAuthorization {
            name: a.name.clone(),
            namespace: a.namespace.clone(),
            action,
            rules,
            dry_run: a.dry_run,
        },
        target_services: a.target_services.clone(),
    })
}
