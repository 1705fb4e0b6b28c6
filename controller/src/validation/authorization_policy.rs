//! AuthorizationPolicy, as Istio's `ValidateAuthorizationPolicy` (`validation.go`) and its
//! `pkg/config/security` helpers check it.

use super::Findings;
use super::common::check_policy_selection;
use crate::model::security::*;

/// Istio's `security.ValidateIPs`.
fn ips(values: &[String]) -> Result<(), String> {
    for value in values {
        if value.contains('/') {
            super::names::validate_ip_or_cidr(value)
                .map_err(|_| format!("bad CIDR range ({value})"))?;
        } else if !super::names::is_ip(value) {
            return Err(format!("bad IP address ({value})"));
        }
    }
    Ok(())
}

/// Istio's `security.ValidatePorts`.
fn ports(values: &[String]) -> Result<(), String> {
    for value in values {
        if !value.parse::<u32>().is_ok_and(|p| p <= 65535) || value.starts_with('+') {
            return Err(format!("bad port ({value})"));
        }
    }
    Ok(())
}

/// Istio's `security.CheckEmptyValues`.
fn non_empty(field: &str, values: &[String]) -> Result<(), String> {
    if values.iter().any(String::is_empty) {
        return Err(format!("empty value not allowed, found in {field}"));
    }
    Ok(())
}

/// Istio's `security.CheckWildcardValues`.
fn wildcards(field: &str, values: &[String]) -> Result<(), String> {
    non_empty(field, values)?;
    for value in values {
        let count = value.matches('*').count();
        if count > 1 {
            return Err(format!(
                "at most one wildcard is allowed, found in {field}: {value:?}"
            ));
        }
        if count == 1 && value != "*" && !value.starts_with('*') && !value.ends_with('*') {
            return Err(format!(
                "wildcard is only allowed at the start or end, found in {field}: {value:?}"
            ));
        }
    }
    Ok(())
}

/// Istio's `security.CheckTrustDomainValues`.
fn trust_domains(field: &str, values: &[String]) -> Result<(), String> {
    wildcards(field, values)?;
    if let Some(value) = values.iter().find(|v| v.contains('/')) {
        return Err(format!(
            "trust domain must not contain '/', found in {field}: {value:?}"
        ));
    }
    Ok(())
}

/// Istio's `security.CheckServiceAccount`.
fn service_accounts(field: &str, values: &[String]) -> Result<(), String> {
    if values.len() > 16 {
        return Err("may not have more than 16 values".to_owned());
    }
    for value in values {
        if value.is_empty() {
            return Err(format!("empty value not allowed, found in {field}"));
        }
        if value.contains('*') {
            return Err(format!("wildcard not allowed, found in {field}"));
        }
        if value.matches('/').count() > 1 {
            return Err(format!(
                "expected format 'serviceAccount' or 'namespace/serviceAccount', found {value:?} in {field}"
            ));
        }
        if value.len() > 320 {
            return Err(format!(
                "value cannot exceed 320 characters, found {value:?} in {field}"
            ));
        }
        if let Some((namespace, account)) = value.split_once('/') {
            if namespace.is_empty() {
                return Err(format!(
                    "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty namespace {value:?} in {field}"
                ));
            }
            if account.is_empty() {
                return Err(format!(
                    "expected format 'serviceAccount' or 'namespace/serviceAccount', found empty serviceAccount {value:?} in {field}"
                ));
            }
        }
    }
    Ok(())
}

/// Istio's `security.CheckValidPathTemplate`: `{*}` and `{**}` (the latter last), and when a
/// template is used, every segment a valid literal.
fn path_templates(field: &str, paths: &[String]) -> Result<(), String> {
    for path in paths {
        let template = path.contains("{*}") || path.contains("{**}");
        let trimmed = path.trim_matches('/');
        let mut match_any = false;
        for glob in trimmed.split('/') {
            match glob {
                "{*}" if !match_any => continue,
                "{**}" if !match_any => {
                    match_any = true;
                    continue;
                }
                "{*}" | "{**}" => {
                    return Err(format!(
                        "invalid or unsupported path {trimmed}, found in {field}. {{**}} is not the last operator"
                    ));
                }
                _ => {}
            }
            if glob.contains(['{', '}']) {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {field}. Contains '{{' or '}}' beyond a supported path template"
                ));
            }
            let literal = !glob.is_empty()
                && glob
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
            if template && !literal {
                return Err(format!(
                    "invalid or unsupported path {trimmed}, found in {field}. Contains segment {glob} with invalid string literal"
                ));
            }
        }
    }
    Ok(())
}

/// Istio's `security.validateMapKey`: `name[key]`.
fn map_key(key: &str) -> Result<(), String> {
    match key.find('[') {
        Some(open) if key.ends_with(']') && open > 0 && open < key.len() - 2 => Ok(()),
        _ => Err(format!("bad key ({key}): should have format a[b]")),
    }
}

/// Istio's `security.ValidateAttribute` for a `when` condition.
pub fn attribute(key: &str, values: &[String]) -> Result<(), String> {
    non_empty(key, values)?;
    match key {
        k if k.starts_with("request.headers") => map_key(k),
        "source.ip" | "remote.ip" | "destination.ip" => ips(values),
        "source.serviceAccount" => service_accounts(key, values),
        "source.trustDomain" => wildcards(key, values),
        "source.namespace"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "connection.sni" => Ok(()),
        k if k.starts_with("request.auth.claims") => map_key(k),
        "destination.port" => ports(values),
        k if k.starts_with("experimental.envoy.filters.") => map_key(k),
        "destination.namespace" => Err(format!(
            "attribute {key} is replaced by the metadata.namespace"
        )),
        k if k.starts_with("destination.labels") => Err(format!(
            "attribute {key} is replaced by the workload selector"
        )),
        "destination.name" | "destination.user" => Err(format!(
            "deprecated attribute {key}: only supported in v1alpha1"
        )),
        _ => Err(format!("unknown attribute: {key}")),
    }
}

pub fn validate(spec: &AuthorizationPolicySpec, findings: &mut Findings) {
    check_policy_selection(
        findings,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    let action = spec.action.unwrap_or_default();
    if action == AuthorizationAction::Custom {
        custom_action(findings, spec);
    }
    if spec.provider.is_some() && action != AuthorizationAction::Custom {
        findings.error(
            "spec.provider",
            format!(
                "`provider` must not be with non CUSTOM action, found {}",
                action.as_str()
            ),
        );
    }
    if action == AuthorizationAction::Deny && spec.rules.is_none() {
        findings.error(
            "spec.rules",
            "DENY action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
        );
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        self::rule(findings, &format!("spec.rules[{i}]"), rule, i, action);
    }
    // Attributes of a policy that node agents enforce (no `targetRefs`) which only a request
    // carries: valid, but enforced without them (istiod warns alike).
    let reason = http_attributes_at_node_agents(action);
    for path in spec.http_attributes_at_node_agents() {
        findings.warn(path, reason.clone());
    }
}

fn custom_action(findings: &mut Findings, spec: &AuthorizationPolicySpec) {
    if spec.rules.is_none() {
        findings.error(
            "spec.rules",
            "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
        );
    } else if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
        findings.error("spec.provider.name", "`provider.name` must not be empty");
    }
    for (i, rule) in spec.rules.iter().flatten().enumerate() {
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let Some(source) = &from.source else { continue };
            for (field, values) in [
                ("Namespaces", &source.namespaces),
                ("NotNamespaces", &source.not_namespaces),
                ("ServiceAccounts", &source.service_accounts),
                ("NotServiceAccounts", &source.not_service_accounts),
                ("TrustDomains", &source.trust_domains),
                ("NotTrustDomains", &source.not_trust_domains),
                ("Principals", &source.principals),
                ("NotPrincipals", &source.not_principals),
                ("RequestPrincipals", &source.request_principals),
                ("NotRequestPrincipals", &source.not_request_principals),
            ] {
                if !values.is_empty() {
                    findings.error(
                        format!("spec.rules[{i}].from[{j}].source"),
                        format!("From.{field} is currently not supported with CUSTOM action"),
                    );
                }
            }
        }
        for (j, condition) in rule.when.iter().enumerate() {
            let key = &condition.key;
            if matches!(
                key.as_str(),
                "source.namespace"
                    | "source.serviceAccount"
                    | "source.trustDomain"
                    | "source.principal"
            ) || key.starts_with("request.auth.")
            {
                findings.error(
                    format!("spec.rules[{i}].when[{j}].key"),
                    format!("{key} is currently not supported with CUSTOM action"),
                );
            }
        }
    }
}

fn rule(
    findings: &mut Findings,
    path: &str,
    rule: &Rule,
    index: usize,
    action: AuthorizationAction,
) {
    if rule.from.as_ref().is_some_and(Vec::is_empty) {
        findings.error(
            format!("{path}.from"),
            format!("`from` must not be empty, found at rule {index}"),
        );
    }
    let mut tcp_in_from = false;
    let mut from_exists = false;
    for (j, from) in rule.from.iter().flatten().enumerate() {
        let from_path = format!("{path}.from[{j}].source");
        let Some(source) = &from.source else {
            findings.error(
                &from_path,
                format!("`from.source` must not be nil, found at rule {index}"),
            );
            continue;
        };
        from_exists = true;
        tcp_in_from |= self::source(findings, &from_path, source, index);
    }
    if rule.to.as_ref().is_some_and(Vec::is_empty) {
        findings.error(
            format!("{path}.to"),
            format!("`to` must not be empty, found at rule {index}"),
        );
    }
    let mut tcp_in_to = false;
    let mut to_exists = false;
    for (j, to) in rule.to.iter().flatten().enumerate() {
        let to_path = format!("{path}.to[{j}].operation");
        let Some(operation) = &to.operation else {
            findings.error(
                &to_path,
                format!("`to.operation` must not be nil, found at rule {index}"),
            );
            continue;
        };
        to_exists = true;
        tcp_in_to |= self::operation(findings, &to_path, operation, index);
    }
    for (j, condition) in rule.when.iter().enumerate() {
        let when_path = format!("{path}.when[{j}]");
        let key = &condition.key;
        if key.is_empty() {
            findings.error(format!("{when_path}.key"), "`key` must not be empty");
        } else if condition.values.is_empty() && condition.not_values.is_empty() {
            findings.error(
                &when_path,
                format!("at least one of `values` or `notValues` must be set for key {key}"),
            );
        } else {
            if let Err(reason) = attribute(key, &condition.values) {
                findings.error(
                    format!("{when_path}.values"),
                    format!("invalid `value` for `key` {key}: {reason}"),
                );
            }
            if let Err(reason) = attribute(key, &condition.not_values) {
                findings.error(
                    format!("{when_path}.notValues"),
                    format!("invalid `notValue` for `key` {key}: {reason}"),
                );
            }
        }
    }
    if action == AuthorizationAction::Deny
        && ((from_exists && !to_exists && !tcp_in_from) || (to_exists && !tcp_in_to))
    {
        findings.warn(
            path,
            "configured AuthorizationPolicy will deny all traffic to TCP ports under its scope due to the use of only HTTP attributes in a DENY rule; it is recommended to explicitly specify the port",
        );
    }
}

/// One `from.source`; whether it uses attributes TCP traffic has.
fn source(findings: &mut Findings, path: &str, source: &Source, index: usize) -> bool {
    let identity = [
        &source.principals,
        &source.not_principals,
        &source.namespaces,
        &source.not_namespaces,
    ];
    let accounts = [&source.service_accounts, &source.not_service_accounts];
    if identity.iter().any(|v| !v.is_empty()) && accounts.iter().any(|v| !v.is_empty()) {
        findings.error(
            path,
            format!(
                "cannot set serviceAccounts with namespaces or principals, found at rule {index}"
            ),
        );
    }
    let all = [
        &source.principals,
        &source.request_principals,
        &source.namespaces,
        &source.ip_blocks,
        &source.remote_ip_blocks,
        &source.not_principals,
        &source.not_request_principals,
        &source.not_namespaces,
        &source.not_ip_blocks,
        &source.not_remote_ip_blocks,
        &source.service_accounts,
        &source.not_service_accounts,
        &source.trust_domains,
        &source.not_trust_domains,
    ];
    if all.iter().all(|v| v.is_empty()) {
        findings.error(
            path,
            format!("`from.source` must not be empty, found at rule {index}"),
        );
    }
    for (field, values) in [
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
    ] {
        findings.check(format!("{path}.{field}"), ips(values));
    }
    for (field, name, values) in [
        ("principals", "Principals", &source.principals),
        (
            "requestPrincipals",
            "RequestPrincipals",
            &source.request_principals,
        ),
        ("namespaces", "Namespaces", &source.namespaces),
        ("ipBlocks", "IpBlocks", &source.ip_blocks),
        ("remoteIpBlocks", "RemoteIpBlocks", &source.remote_ip_blocks),
        ("notPrincipals", "NotPrincipals", &source.not_principals),
        (
            "notRequestPrincipals",
            "NotRequestPrincipals",
            &source.not_request_principals,
        ),
        ("notNamespaces", "NotNamespaces", &source.not_namespaces),
        ("notIpBlocks", "NotIpBlocks", &source.not_ip_blocks),
        (
            "notRemoteIpBlocks",
            "NotRemoteIpBlocks",
            &source.not_remote_ip_blocks,
        ),
    ] {
        findings.check(format!("{path}.{field}"), non_empty(name, values));
    }
    for (field, name, values) in [
        (
            "serviceAccounts",
            "ServiceAccounts",
            &source.service_accounts,
        ),
        (
            "notServiceAccounts",
            "NotServiceAccounts",
            &source.not_service_accounts,
        ),
    ] {
        findings.check(format!("{path}.{field}"), service_accounts(name, values));
    }
    for (field, name, values) in [
        ("trustDomains", "TrustDomains", &source.trust_domains),
        (
            "notTrustDomains",
            "NotTrustDomains",
            &source.not_trust_domains,
        ),
    ] {
        findings.check(format!("{path}.{field}"), trust_domains(name, values));
    }
    [
        &source.principals,
        &source.not_principals,
        &source.ip_blocks,
        &source.not_ip_blocks,
        &source.namespaces,
        &source.not_namespaces,
        &source.remote_ip_blocks,
        &source.not_remote_ip_blocks,
        &source.service_accounts,
        &source.not_service_accounts,
    ]
    .iter()
    .any(|v| !v.is_empty())
}

/// One `to.operation`; whether it names ports (which TCP traffic has).
fn operation(findings: &mut Findings, path: &str, operation: &Operation, index: usize) -> bool {
    let fields = [
        ("ports", "Ports", &operation.ports),
        ("methods", "Methods", &operation.methods),
        ("paths", "Paths", &operation.paths),
        ("hosts", "Hosts", &operation.hosts),
        ("notPorts", "NotPorts", &operation.not_ports),
        ("notMethods", "NotMethods", &operation.not_methods),
        ("notPaths", "NotPaths", &operation.not_paths),
        ("notHosts", "NotHosts", &operation.not_hosts),
    ];
    if fields.iter().all(|(_, _, v)| v.is_empty()) {
        findings.error(
            path,
            format!("`to.operation` must not be empty, found at rule {index}"),
        );
    }
    findings.check(format!("{path}.ports"), ports(&operation.ports));
    findings.check(format!("{path}.notPorts"), ports(&operation.not_ports));
    for (field, name, values) in fields {
        findings.check(format!("{path}.{field}"), non_empty(name, values));
    }
    findings.check(
        format!("{path}.paths"),
        path_templates("Paths", &operation.paths),
    );
    findings.check(
        format!("{path}.notPaths"),
        path_templates("NotPaths", &operation.not_paths),
    );
    !operation.ports.is_empty() || !operation.not_ports.is_empty()
}
