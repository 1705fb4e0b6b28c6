//! Validation of AuthorizationPolicy and PeerAuthentication.

use super::names::{is_dns1123_label, validate_ip_or_cidr};
use super::{FieldError, Findings, check_workload_selector};
use crate::model::security::*;

/// Target kinds a policy may attach to, with the API group each must name.
const TARGET_KINDS: &[(&str, &str)] = &[
    ("Gateway", "gateway.networking.k8s.io"),
    ("GatewayClass", "gateway.networking.k8s.io"),
    ("Service", ""),
    ("ServiceEntry", "networking.istio.io"),
];

fn check_target_ref(findings: &mut Findings, path: &str, target: &PolicyTargetReference) {
    let group = target.group.as_deref().unwrap_or("");
    match TARGET_KINDS.iter().find(|(kind, _)| *kind == target.kind) {
        None => findings.error(
            format!("{path}.kind"),
            format!("targetRef kind {:?} is not supported (one of Gateway, GatewayClass, Service, ServiceEntry)", target.kind),
        ),
        Some((kind, expected)) if group != *expected => findings.error(
            format!("{path}.group"),
            format!("targetRef group {group:?} does not match kind {kind} (expected {expected:?})"),
        ),
        Some(_) => {}
    }
    if target.name.is_empty() {
        findings.error(format!("{path}.name"), "targetRef name must be set");
    }
    if target.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
        findings.error(
            format!("{path}.namespace"),
            "cross namespace referencing is not currently supported",
        );
    }
}

/// Istio matches principals and namespaces exactly, by prefix (`abc*`), by suffix (`*abc`) or
/// entirely (`*`); a `*` anywhere else would never match what the user meant.
fn check_wildcard_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty value not allowed".to_owned());
    }
    let inner = value.strip_prefix('*').unwrap_or(value);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if value.len() > 1 && value.starts_with('*') && value.ends_with('*') {
        return Err(format!(
            "{value:?}: `*` is supported only as a prefix or a suffix, not both"
        ));
    }
    if inner.contains('*') {
        return Err(format!(
            "{value:?}: `*` is supported only as a prefix or a suffix"
        ));
    }
    if value.chars().any(char::is_whitespace) {
        return Err(format!("{value:?}: must not contain whitespace"));
    }
    Ok(())
}

fn check_namespace_value(value: &str) -> Result<(), String> {
    check_wildcard_value(value)?;
    let literal = value.trim_matches('*');
    let valid_chars = literal
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid_chars || (!value.contains('*') && !is_dns1123_label(value)) {
        return Err(format!("{value:?} is not a valid namespace"));
    }
    Ok(())
}

fn check_service_account(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("empty value not allowed".to_owned());
    }
    if value.contains('*') {
        return Err(format!(
            "{value:?}: wildcard not allowed in serviceAccounts"
        ));
    }
    match value.split_once('/') {
        Some((ns, sa)) if ns.is_empty() || sa.is_empty() || sa.contains('/') => Err(format!(
            "expected format 'serviceAccount' or 'namespace/serviceAccount', found {value:?}"
        )),
        _ if value.len() > 320 => Err(format!(
            "value cannot exceed 320 characters, found {value:?}"
        )),
        _ => Ok(()),
    }
}

fn check_port_string(value: &str) -> Result<(), String> {
    match value.parse::<u32>() {
        Ok(port) if port <= 65535 => Ok(()),
        _ => Err(format!("bad port ({value})")),
    }
}

fn check_path_template(path: &str) -> Result<(), String> {
    if !path.contains("{*}") && !path.contains("{**}") {
        return if path.contains('{') || path.contains('}') {
            Err(format!(
                "invalid or unsupported path {path}: contains '{{' or '}}' beyond a supported path template"
            ))
        } else {
            Ok(())
        };
    }
    let mut seen_match_any = false;
    for segment in path.trim_matches('/').split('/') {
        match segment {
            "{*}" | "{**}" if seen_match_any => {
                return Err(format!(
                    "invalid or unsupported path {path}: {{**}} is not the last operator"
                ));
            }
            "{*}" => {}
            "{**}" => seen_match_any = true,
            literal if literal.contains('{') || literal.contains('}') => {
                return Err(format!(
                    "invalid or unsupported path {path}: contains '{{' or '}}' beyond a supported path template"
                ));
            }
            literal => {
                let valid = !literal.is_empty()
                    && literal
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()+,;:@=".contains(&b));
                if !valid {
                    return Err(format!(
                        "invalid or unsupported path {path}: segment {literal:?} is not a valid literal"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Istio's `ValidateAttribute` for `when` keys.
fn check_condition_key(key: &str) -> Result<(), String> {
    let map_key = |key: &str| {
        let open = key.find('[');
        match open {
            Some(open) if open > 0 && key.ends_with(']') && open < key.len() - 2 => Ok(()),
            _ => Err(format!("bad key ({key}): should have format a[b]")),
        }
    };
    match key {
        k if k.starts_with("request.headers")
            || k.starts_with("request.experimental.inline.headers") =>
        {
            map_key(k)
        }
        k if k.starts_with("request.auth.claims")
            || k.starts_with("experimental.envoy.filters.") =>
        {
            map_key(k)
        }
        "source.ip"
        | "remote.ip"
        | "source.namespace"
        | "source.serviceAccount"
        | "source.principal"
        | "request.auth.principal"
        | "request.auth.audiences"
        | "request.auth.presenter"
        | "destination.ip"
        | "destination.port"
        | "connection.sni" => Ok(()),
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

fn check_condition_values(key: &str, values: &[String]) -> Result<(), String> {
    for value in values {
        if value.is_empty() {
            return Err(format!("empty value not allowed, found in {key}"));
        }
        match key {
            "source.ip" | "remote.ip" | "destination.ip" => validate_ip_or_cidr(value)?,
            "destination.port" => check_port_string(value)?,
            "source.serviceAccount" => check_service_account(value)?,
            "source.namespace" => check_namespace_value(value)?,
            "source.principal" => check_wildcard_value(value)?,
            _ => {}
        }
    }
    Ok(())
}

/// Attributes of a policy that node agents enforce (no `targetRefs`) which only a request
/// carries: valid, but enforced without them (istiod warns alike).
pub(crate) fn authorization_policy_warnings(spec: &AuthorizationPolicySpec) -> Vec<FieldError> {
    let reason = http_attributes_at_node_agents(spec.action.unwrap_or_default());
    spec.http_attributes_at_node_agents()
        .into_iter()
        .map(|path| FieldError {
            path,
            reason: reason.clone(),
        })
        .collect()
}

pub(crate) fn authorization_policy(spec: &AuthorizationPolicySpec, findings: &mut Findings) {
    let selector_kinds = usize::from(spec.selector.is_some())
        + usize::from(spec.target_ref.is_some())
        + usize::from(!spec.target_refs.is_empty());
    if selector_kinds > 1 {
        findings.error(
            "spec.selector",
            "only one of targetRefs or workloadSelector can be set",
        );
    }
    if let Some(selector) = &spec.selector {
        check_workload_selector(findings, "spec.selector", selector);
    }
    if let Some(target) = &spec.target_ref {
        check_target_ref(findings, "spec.targetRef", target);
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        check_target_ref(findings, &format!("spec.targetRefs[{i}]"), target);
    }

    let action = spec.action.unwrap_or_default();
    if action == AuthorizationAction::Custom {
        if spec.rules.is_none() {
            findings.error(
                "spec.rules",
                "CUSTOM action without `rules` is meaningless as it will never be triggered, add an empty rule `{}` if you want it be triggered for every request",
            );
        } else if spec.provider.as_ref().is_none_or(|p| p.name.is_empty()) {
            findings.error("spec.provider.name", "`provider.name` must not be empty");
        }
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
        let rule_path = format!("spec.rules[{i}]");
        if rule.from.as_ref().is_some_and(Vec::is_empty) {
            findings.error(
                format!("{rule_path}.from"),
                format!("`from` must not be empty, found at rule {i}"),
            );
        }
        for (j, from) in rule.from.iter().flatten().enumerate() {
            let from_path = format!("{rule_path}.from[{j}].source");
            let Some(source) = &from.source else {
                findings.error(
                    &from_path,
                    format!("`from.source` must not be nil, found at rule {i}"),
                );
                continue;
            };
            check_source(findings, &from_path, source, i, action);
        }
        if rule.to.as_ref().is_some_and(Vec::is_empty) {
            findings.error(
                format!("{rule_path}.to"),
                format!("`to` must not be empty, found at rule {i}"),
            );
        }
        for (j, to) in rule.to.iter().flatten().enumerate() {
            let to_path = format!("{rule_path}.to[{j}].operation");
            let Some(operation) = &to.operation else {
                findings.error(
                    &to_path,
                    format!("`to.operation` must not be nil, found at rule {i}"),
                );
                continue;
            };
            check_operation(findings, &to_path, operation, i);
        }
        for (j, condition) in rule.when.iter().enumerate() {
            let when_path = format!("{rule_path}.when[{j}]");
            if condition.key.is_empty() {
                findings.error(format!("{when_path}.key"), "`key` must not be empty");
                continue;
            }
            let key = &condition.key;
            if action == AuthorizationAction::Custom
                && (matches!(
                    key.as_str(),
                    "source.namespace" | "source.serviceAccount" | "source.principal"
                ) || key.starts_with("request.auth."))
            {
                findings.error(
                    format!("{when_path}.key"),
                    format!("{key} is currently not supported with CUSTOM action"),
                );
            }
            if condition.values.is_empty() && condition.not_values.is_empty() {
                findings.error(
                    &when_path,
                    format!("at least one of `values` or `notValues` must be set for key {key}"),
                );
                continue;
            }
            if let Err(reason) = check_condition_key(key) {
                findings.error(format!("{when_path}.key"), reason);
                continue;
            }
            if let Err(reason) = check_condition_values(key, &condition.values) {
                findings.error(
                    format!("{when_path}.values"),
                    format!("invalid `value` for `key` {key}: {reason}"),
                );
            }
            if let Err(reason) = check_condition_values(key, &condition.not_values) {
                findings.error(
                    format!("{when_path}.notValues"),
                    format!("invalid `notValue` for `key` {key}: {reason}"),
                );
            }
        }
    }
}

fn check_source(
    findings: &mut Findings,
    path: &str,
    source: &Source,
    rule: usize,
    action: AuthorizationAction,
) {
    let identity_fields = [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
    ];
    let account_fields = [
        ("serviceAccounts", &source.service_accounts),
        ("notServiceAccounts", &source.not_service_accounts),
    ];
    let other_fields = [
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
        ("ipBlocks", &source.ip_blocks),
        ("notIpBlocks", &source.not_ip_blocks),
        ("remoteIpBlocks", &source.remote_ip_blocks),
        ("notRemoteIpBlocks", &source.not_remote_ip_blocks),
    ];
    let uses_identity = identity_fields.iter().any(|(_, v)| !v.is_empty());
    let uses_accounts = account_fields.iter().any(|(_, v)| !v.is_empty());
    if uses_identity && uses_accounts {
        findings.error(
            path,
            format!(
                "cannot set serviceAccounts with namespaces or principals, found at rule {rule}"
            ),
        );
    }
    let all = identity_fields
        .iter()
        .chain(account_fields.iter())
        .chain(other_fields.iter());
    if all.clone().all(|(_, v)| v.is_empty()) {
        findings.error(
            path,
            format!("`from.source` must not be empty, found at rule {rule}"),
        );
    }
    if action == AuthorizationAction::Custom {
        for (field, values) in identity_fields
            .iter()
            .chain(account_fields.iter())
            .chain(other_fields[..2].iter())
        {
            if !values.is_empty() {
                findings.error(
                    format!("{path}.{field}"),
                    format!("From.{field} is currently not supported with CUSTOM action"),
                );
            }
        }
    }
    for (field, values) in [
        ("principals", &source.principals),
        ("notPrincipals", &source.not_principals),
    ] {
        for (k, value) in values.iter().enumerate() {
            findings.check(
                format!("{path}.{field}[{k}]"),
                check_wildcard_value(value).map_err(|e| format!("invalid principal: {e}")),
            );
        }
    }
    for (field, values) in [
        ("requestPrincipals", &source.request_principals),
        ("notRequestPrincipals", &source.not_request_principals),
    ] {
        for (k, value) in values.iter().enumerate() {
            findings.check(
                format!("{path}.{field}[{k}]"),
                check_wildcard_value(value).map_err(|e| format!("invalid request principal: {e}")),
            );
        }
    }
    for (field, values) in [
        ("namespaces", &source.namespaces),
        ("notNamespaces", &source.not_namespaces),
    ] {
        for (k, value) in values.iter().enumerate() {
            findings.check(
                format!("{path}.{field}[{k}]"),
                check_namespace_value(value).map_err(|e| format!("invalid namespace: {e}")),
            );
        }
    }
    if source.service_accounts.len() > 16 || source.not_service_accounts.len() > 16 {
        findings.error(path, "serviceAccounts may not have more than 16 values");
    }
    for (field, values) in account_fields {
        for (k, value) in values.iter().enumerate() {
            findings.check(format!("{path}.{field}[{k}]"), check_service_account(value));
        }
    }
    for (field, values) in &other_fields[2..] {
        for (k, value) in values.iter().enumerate() {
            findings.check(
                format!("{path}.{field}[{k}]"),
                validate_ip_or_cidr(value)
                    .map_err(|e| format!("bad IP address or CIDR range: {e}")),
            );
        }
    }
}

fn check_operation(findings: &mut Findings, path: &str, operation: &Operation, rule: usize) {
    let fields = [
        ("hosts", &operation.hosts),
        ("notHosts", &operation.not_hosts),
        ("ports", &operation.ports),
        ("notPorts", &operation.not_ports),
        ("methods", &operation.methods),
        ("notMethods", &operation.not_methods),
        ("paths", &operation.paths),
        ("notPaths", &operation.not_paths),
    ];
    if fields.iter().all(|(_, v)| v.is_empty()) {
        findings.error(
            path,
            format!("`to.operation` must not be empty, found at rule {rule}"),
        );
    }
    for (field, values) in fields {
        for (k, value) in values.iter().enumerate() {
            let value_path = format!("{path}.{field}[{k}]");
            if value.is_empty() {
                findings.error(
                    &value_path,
                    format!("empty value not allowed, found in {field}"),
                );
                continue;
            }
            match field {
                "ports" | "notPorts" => findings.check(&value_path, check_port_string(value)),
                "paths" | "notPaths" => findings.check(&value_path, check_path_template(value)),
                _ => {}
            }
        }
    }
}

pub(crate) fn peer_authentication(spec: &PeerAuthenticationSpec, findings: &mut Findings) {
    let empty_selector = spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty());
    if let Some(port_level) = &spec.port_level_mtls {
        if empty_selector && !port_level.is_empty() {
            findings.error(
                "spec.portLevelMtls",
                "mesh/namespace peer authentication cannot have port level mTLS",
            );
        }
        if port_level.is_empty() {
            findings.error(
                "spec.portLevelMtls",
                "port level mTLS, if defined, must have at least one element",
            );
        }
        for port in port_level.keys() {
            if !(1..=65535).contains(port) {
                findings.error(
                    format!("spec.portLevelMtls.{port}"),
                    "port must be in range 1..65535",
                );
            }
        }
    }
    if let Some(selector) = &spec.selector {
        check_workload_selector(findings, "spec.selector", selector);
    }
}
