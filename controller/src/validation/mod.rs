//! Semantic validation following Istio's rules (`pkg/config/validation`): what the schema cannot
//! say, such as weights, regexes, durations, host names, and which fields exclude each other.
//! Each finding names the field path (`spec.http[0].route[1].weight`) and the reason.

mod kubernetes;
pub mod names;
mod networking;
mod security;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::model::networking::{HeaderOperations, Percent, StringMatch, WorkloadSelector};
use crate::model::{DurationString, Resource};

/// One problem in one field of a resource.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct FieldError {
    pub path: String,
    pub reason: String,
}

/// Checks a resource against Istio's (or Kubernetes') rules; an empty result means valid.
pub fn validate(resource: &Resource) -> Vec<FieldError> {
    let mut findings = Findings::default();
    let namespace = resource.namespace();
    match resource {
        Resource::VirtualService(r) => {
            networking::virtual_service(&r.spec, namespace, &mut findings)
        }
        Resource::DestinationRule(r) => {
            networking::destination_rule(&r.spec, namespace, &mut findings)
        }
        Resource::ServiceEntry(r) => networking::service_entry(&r.spec, namespace, &mut findings),
        Resource::Gateway(r) => networking::gateway(&r.spec, resource.name(), &mut findings),
        Resource::AuthorizationPolicy(r) => security::authorization_policy(&r.spec, &mut findings),
        Resource::PeerAuthentication(r) => security::peer_authentication(&r.spec, &mut findings),
        Resource::KubernetesGateway(r) => kubernetes::gateway(&r.spec, &mut findings),
        Resource::Namespace(r) => kubernetes::namespace(r, &mut findings),
        Resource::Pod(r) => kubernetes::pod(r, &mut findings),
        Resource::Service(r) => kubernetes::service(r, &mut findings),
        Resource::ServiceAccount(_) => {}
        Resource::EndpointSlice(r) => kubernetes::endpoint_slice(r, &mut findings),
    }
    kubernetes::object_meta(resource, &mut findings);
    findings.errors
}

/// What is valid but will not do all it says (Istio's validation warnings): reported, never
/// refused.
pub fn warnings(resource: &Resource) -> Vec<FieldError> {
    match resource {
        Resource::AuthorizationPolicy(r) => security::authorization_policy_warnings(&r.spec),
        _ => Vec::new(),
    }
}

/// Collects errors as the validators walk a resource.
#[derive(Debug, Default)]
pub(crate) struct Findings {
    errors: Vec<FieldError>,
}

impl Findings {
    pub(crate) fn error(&mut self, path: impl fmt::Display, reason: impl Into<String>) {
        self.errors.push(FieldError {
            path: path.to_string(),
            reason: reason.into(),
        });
    }

    pub(crate) fn check(&mut self, path: impl fmt::Display, result: Result<(), String>) {
        if let Err(reason) = result {
            self.error(path, reason);
        }
    }
}

/// Envoy's RE2 refuses programs above a size limit; Istio approximates it by length.
pub const MAX_REGEX_LENGTH: usize = 1024;
/// Compiled-program budget for a single regex, in bytes (Rust's `regex` counts heap use).
pub const MAX_REGEX_PROGRAM_BYTES: usize = 1 << 20;

/// Compiles a regex as the data plane will (RE2 syntax, bounded program size).
pub fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.is_empty() {
        return Err("regex string match should not be empty".to_owned());
    }
    if pattern.len() > MAX_REGEX_LENGTH {
        return Err(format!(
            "regex is too large, max length allowed is {MAX_REGEX_LENGTH}"
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_PROGRAM_BYTES)
        .build()
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => {
                format!("regex program is too large (exceeds {limit} bytes when compiled)")
            }
            other => format!("invalid regex: {}", other.to_string().replace('\n', " ")),
        })
}

/// Istio's `ValidateDuration`: at least 1ms, whole milliseconds.
pub(crate) fn check_duration(
    findings: &mut Findings,
    path: impl fmt::Display,
    duration: &DurationString,
) {
    findings.check(path, duration_at_least_ms(duration).map(|_| ()));
}

pub(crate) fn duration_at_least_ms(duration: &DurationString) -> Result<Duration, String> {
    let parsed = duration.parse().map_err(|e| e.to_string())?;
    if parsed.negative || parsed.magnitude < Duration::from_millis(1) {
        return Err(format!(
            "duration {duration:?} must be greater than 1ms",
            duration = duration.0
        ));
    }
    if parsed.magnitude.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "duration {:?}: only durations to ms precision are supported",
            duration.0
        ));
    }
    Ok(parsed.magnitude)
}

/// `exact`, `prefix` and `regex` exclude each other; a regex must compile.
pub(crate) fn check_string_match(findings: &mut Findings, path: &str, value: &StringMatch) {
    let set = [
        value.exact.is_some(),
        value.prefix.is_some(),
        value.regex.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        findings.error(path, "only one of exact, prefix or regex may be set");
    }
    if let Some(regex) = &value.regex {
        findings.check(format!("{path}.regex"), compile_regex(regex).map(|_| ()));
    }
}

/// Istio's `validatePercentage`: 0, or within [0.0001, 100].
pub(crate) fn check_percentage(
    findings: &mut Findings,
    path: impl fmt::Display,
    percent: &Percent,
) {
    let value = percent.value;
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) || value.is_nan() {
        findings.error(
            path,
            format!("percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"),
        );
    }
}

pub(crate) fn check_port(findings: &mut Findings, path: impl fmt::Display, port: u64) {
    if !(1..=65535).contains(&port) {
        findings.error(
            path,
            format!("port number {port} must be in the range 1..65535"),
        );
    }
}

pub(crate) fn check_labels(findings: &mut Findings, path: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        findings.check(format!("{path}.{key}"), names::validate_label_key(key));
        findings.check(format!("{path}.{key}"), names::validate_label_value(value));
    }
}

/// Istio's `validateWorkloadSelector`: no empty keys, no wildcards.
pub(crate) fn check_workload_selector(
    findings: &mut Findings,
    path: &str,
    selector: &WorkloadSelector,
) {
    for (key, value) in &selector.match_labels {
        let field = format!("{path}.matchLabels.{key}");
        if key.is_empty() {
            findings.error(
                &field,
                format!("empty key is not supported in selector: \"{key}={value}\""),
            );
        }
        if key.contains('*') || value.contains('*') {
            findings.error(
                &field,
                format!("wildcard is not supported in selector: \"{key}={value}\""),
            );
        }
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Envoy header values: `%` must be doubled or enclose a variable name.
fn check_header_value(value: &str) -> Result<(), String> {
    if !value.matches('%').count().is_multiple_of(2) {
        return Err("single % not allowed.  Escape by doubling to %% or encase Envoy variable name in pair of %".to_owned());
    }
    Ok(())
}

/// Header manipulation rules; `request_side` allows `:authority`/`host` rewrites on set/add.
pub(crate) fn check_header_operations(
    findings: &mut Findings,
    path: &str,
    operations: &HeaderOperations,
    request_side: bool,
) {
    let name_rule = |name: &str, may_set_authority: bool| -> Result<(), String> {
        if name.is_empty() {
            return Err("header name cannot be empty".to_owned());
        }
        if may_set_authority && is_authority_header(name) {
            return Ok(());
        }
        if name.eq_ignore_ascii_case("host") {
            return Err(format!("invalid header {name:?}: cannot set Host header"));
        }
        if is_internal_header(name) {
            return Err(format!(
                "invalid header {name:?}: header cannot have \":\" prefix"
            ));
        }
        Ok(())
    };
    for (field, map) in [("set", &operations.set), ("add", &operations.add)] {
        for (name, value) in map {
            let header_path = format!("{path}.{field}.{name}");
            findings.check(&header_path, name_rule(name, request_side));
            findings.check(&header_path, check_header_value(value));
        }
    }
    for (i, name) in operations.remove.iter().enumerate() {
        findings.check(format!("{path}.remove[{i}]"), name_rule(name, false));
    }
}

/// `exportTo`: `.`, `*`, `~` (ServiceEntry only) or namespace names, without duplicates.
pub(crate) fn check_export_to(
    findings: &mut Findings,
    namespace: &str,
    export_to: &[String],
    allow_none: bool,
) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, entry) in export_to.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if entry == "." {
            namespace
        } else {
            entry.as_str()
        };
        let valid = entry == "."
            || entry == "*"
            || (allow_none && entry == "~")
            || names::is_dns1123_label(entry);
        if !valid {
            findings.error(&path, format!("only .,*, or a valid DNS 1123 label is allowed as exportTo entry, found {entry:?}"));
        } else if !seen.insert(key.to_owned()) {
            findings.error(
                &path,
                format!("duplicate entries in exportTo for entry {entry}"),
            );
        }
    }
    if export_to.len() > 1 && seen.contains("*") {
        findings.error(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if export_to.len() > 1 && seen.contains("~") {
        findings.error(
            "spec.exportTo",
            "cannot export service entry to no one (~) and someone",
        );
    }
}

#[cfg(test)]
mod tests;
