//! Rules several kinds share, as Istio's `validation.go` and `agent/validation.go` write them:
//! durations, regexes, string matches, percentages, ports, protocols, labels, selectors, header
//! operations and `exportTo`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::Findings;
use super::names::{is_dns1123_label, validate_istio_label};
use crate::model::DurationString;
use crate::model::networking::{HeaderOperations, Headers, Percent, StringMatch, WorkloadSelector};
use crate::model::security::PolicyTargetReference;

/// Envoy's RE2 refuses programs above a size limit; Istio approximates it by length.
pub const MAX_REGEX_LENGTH: usize = 1024;
/// Compiled-program budget for a single regex, in bytes (Rust's `regex` counts heap use).
pub const MAX_REGEX_PROGRAM_BYTES: usize = 1 << 20;

/// Compiles a regex as the data plane will (RE2 syntax, bounded program size); Istio's
/// `validateStringRegexp`.
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
            other => format!(
                "invalid regex: {}; Istio uses RE2 style regex-based match",
                other.to_string().replace('\n', " ")
            ),
        })
}

/// Istio's `ValidateDuration`: at least 1ms, whole milliseconds.
pub fn check_duration(findings: &mut Findings, path: impl fmt::Display, duration: &DurationString) {
    findings.check(path, duration_at_least_ms(duration).map(|_| ()));
}

pub fn duration_at_least_ms(duration: &DurationString) -> Result<Duration, String> {
    let parsed = duration.parse().map_err(|e| e.to_string())?;
    if parsed.negative || parsed.magnitude < Duration::from_millis(1) {
        return Err(format!(
            "duration {:?} must be greater than 1ms",
            duration.0
        ));
    }
    if !parsed.magnitude.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(format!(
            "duration {:?}: only durations to ms precision are supported",
            duration.0
        ));
    }
    Ok(parsed.magnitude)
}

/// Whether a duration parses and is zero (`0s`, which disables where Istio allows it).
pub fn is_zero_duration(duration: &DurationString) -> bool {
    duration.parse().is_ok_and(|d| d.magnitude.is_zero())
}

/// How an empty `prefix` is treated: `uri` takes it (Envoy matches every path), the other
/// matches do not (Istio's `validateHTTPRouteMatchRequest`).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum EmptyPrefix {
    Allowed,
    Refused,
}

/// A `StringMatch`: at most one of `exact`, `prefix` or `regex` (the CRD's oneOf), a regex that
/// compiles, and (Istio's `validateStringMatch`) no empty prefix where it is refused.
pub fn check_string_match(
    findings: &mut Findings,
    path: &str,
    value: &StringMatch,
    empty_prefix: EmptyPrefix,
) {
    let set = [
        value.exact.is_some(),
        value.prefix.is_some(),
        value.regex.is_some(),
    ];
    if set.iter().filter(|s| **s).count() > 1 {
        findings.error(path, "only one of exact, prefix or regex may be set");
    }
    if empty_prefix == EmptyPrefix::Refused && value.prefix.as_deref() == Some("") {
        findings.error(
            format!("{path}.prefix"),
            "prefix string match should not be empty",
        );
    }
    if let Some(regex) = &value.regex {
        findings.check(format!("{path}.regex"), compile_regex(regex).map(|_| ()));
    }
}

/// Istio's `validatePercentage`: 0, or within [0.0001, 100].
pub fn check_percentage(findings: &mut Findings, path: impl fmt::Display, percent: &Percent) {
    let value = percent.value;
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) || value.is_nan() {
        findings.error(
            path,
            format!("percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"),
        );
    }
}

/// Istio's `ValidatePort`.
pub fn check_port(findings: &mut Findings, path: impl fmt::Display, port: u64) {
    if !(1..=65535).contains(&port) {
        findings.error(
            path,
            format!("port number {port} must be in the range 1..65535"),
        );
    }
}

/// Istio's `ValidatePortName`.
pub fn check_port_name(findings: &mut Findings, path: impl fmt::Display, name: &str) {
    if !is_dns1123_label(name) {
        findings.error(path, format!("invalid port name: {name}"));
    }
}

/// Istio's `protocol.Instance` as `protocol.Parse` reads it (case-insensitive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
    Grpc,
    GrpcWeb,
    Http,
    HttpProxy,
    Http2,
    Https,
    Tls,
    Mongo,
    Redis,
    Mysql,
    Unsupported,
}

impl Protocol {
    pub fn parse(value: &str) -> Self {
        match value.to_ascii_lowercase().as_str() {
            "tcp" => Self::Tcp,
            "udp" => Self::Udp,
            "grpc" => Self::Grpc,
            "grpc-web" => Self::GrpcWeb,
            "http" => Self::Http,
            "http_proxy" => Self::HttpProxy,
            "http2" => Self::Http2,
            "https" => Self::Https,
            "tls" => Self::Tls,
            "mongo" => Self::Mongo,
            "redis" => Self::Redis,
            "mysql" => Self::Mysql,
            _ => Self::Unsupported,
        }
    }

    pub fn is_http(self) -> bool {
        matches!(
            self,
            Self::Http | Self::Http2 | Self::HttpProxy | Self::Grpc | Self::GrpcWeb
        )
    }

    pub fn is_tcp(self) -> bool {
        matches!(
            self,
            Self::Tcp | Self::Https | Self::Tls | Self::Mongo | Self::Redis | Self::Mysql
        )
    }

    pub fn is_tls(self) -> bool {
        matches!(self, Self::Https | Self::Tls)
    }
}

/// Istio's `ValidateProtocol`: empty means sniffing; anything else must be known.
pub fn check_protocol(findings: &mut Findings, path: impl fmt::Display, protocol: &str) {
    if !protocol.is_empty() && Protocol::parse(protocol) == Protocol::Unsupported {
        findings.error(path, format!("unsupported protocol: {protocol}"));
    }
}

/// Istio's `labels.Instance.Validate`.
pub fn check_labels(findings: &mut Findings, path: &str, labels: &BTreeMap<String, String>) {
    for (key, value) in labels {
        findings.check(format!("{path}.{key}"), validate_istio_label(key, value));
    }
}

/// Istio's `validateWorkloadSelector` (and the CRD's rules): no empty keys, no wildcards; an
/// empty selector is a warning.
pub fn check_workload_selector(findings: &mut Findings, path: &str, selector: &WorkloadSelector) {
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
        if value.len() > 63 {
            findings.error(&field, "label value may not exceed 63 characters");
        }
    }
    if selector.match_labels.is_empty() {
        findings.warn(path, "workload selector specified without labels");
    }
}

/// Istio's `validateOneOfSelectorType` and the targets of a policy (`validatePolicyTargetReference`
/// for each): at most one of `selector`, `targetRef` and `targetRefs`.
pub fn check_policy_selection(
    findings: &mut Findings,
    selector: Option<&WorkloadSelector>,
    target_ref: Option<&PolicyTargetReference>,
    target_refs: &[PolicyTargetReference],
) {
    let set = usize::from(selector.is_some())
        + usize::from(target_ref.is_some())
        + usize::from(!target_refs.is_empty());
    if set > 1 {
        findings.error(
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        );
    }
    if let Some(selector) = selector {
        check_workload_selector(findings, "spec.selector", selector);
    }
    if let Some(target) = target_ref {
        check_target_ref(findings, "spec.targetRef", target);
    }
    for (i, target) in target_refs.iter().enumerate() {
        check_target_ref(findings, &format!("spec.targetRefs[{i}]"), target);
    }
}

/// Istio's `validatePolicyTargetReference`: a name, no namespace, and one of the kinds a policy
/// attaches to (Service, ServiceEntry, the Gateway API's Gateway and GatewayClass).
pub fn check_target_ref(findings: &mut Findings, path: &str, target: &PolicyTargetReference) {
    const ALLOWED: &[(&str, &str)] = &[
        ("", "Service"),
        ("networking.istio.io", "ServiceEntry"),
        ("gateway.networking.k8s.io", "Gateway"),
        ("gateway.networking.k8s.io", "GatewayClass"),
    ];
    if target.name.is_empty() {
        findings.error(format!("{path}.name"), "targetRef name must be set");
    }
    if target.namespace.as_deref().is_some_and(|ns| !ns.is_empty()) {
        findings.error(
            format!("{path}.namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    let group = target.group.as_deref().unwrap_or("");
    let group = if group == "core" { "" } else { group };
    if !ALLOWED.contains(&(group, target.kind.as_str())) {
        findings.error(
            path,
            format!(
                "targetRef must be to one of Service, ServiceEntry, Gateway.gateway.networking.k8s.io or GatewayClass.gateway.networking.k8s.io but was {group}/{}",
                target.kind
            ),
        );
    }
}

fn is_internal_header(name: &str) -> bool {
    name.starts_with(':') || name.eq_ignore_ascii_case("host")
}

pub fn is_authority_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(":authority") || name.eq_ignore_ascii_case("host")
}

/// Istio's `ValidateHTTPHeaderWithAuthorityOperationName` (request `set`/`add`).
fn header_name_with_authority(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_owned());
    }
    if is_internal_header(name) && !is_authority_header(name) {
        return Err(format!(
            "invalid header {name:?}: header cannot have \":\" prefix"
        ));
    }
    Ok(())
}

/// Istio's `ValidateHTTPHeaderOperationName` (request `remove`, every response operation).
fn header_operation_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("header name cannot be empty".to_owned());
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
}

/// Istio's `ValidateHTTPHeaderValue`: no control characters, and Envoy's `%VARIABLE%` syntax
/// (`header_value_validator.go`, a port of Envoy's header parser).
pub fn header_value(value: &str) -> Result<(), String> {
    if value
        .chars()
        .any(|c| matches!(c, '\u{0}'..='\u{8}' | '\u{a}'..='\u{1f}' | '\u{7f}'))
    {
        return Err(format!("header value configuration {value} is invalid"));
    }
    envoy_header_format(value).map_err(|e| format!("header value configuration: {e}"))
}

fn envoy_header_format(value: &str) -> Result<(), String> {
    #[derive(PartialEq)]
    enum State {
        Literal,
        VariableName,
        ExpectArray,
        ExpectString,
        String,
        ExpectArrayDelimiterOrEnd,
        ExpectArgsEnd,
        ExpectVariableEnd,
    }
    let bytes = value.as_bytes();
    let mut state = State::Literal;
    let mut pos = 0;
    while pos < bytes.len() {
        let ch = bytes[pos];
        let has_next = pos + 1 < bytes.len();
        match state {
            State::Literal => {
                if ch == b'%' {
                    if !has_next {
                        return Err("invalid header configuration. Un-escaped %".to_owned());
                    }
                    if bytes[pos + 1] == b'%' {
                        pos += 1;
                    } else {
                        state = State::VariableName;
                    }
                }
            }
            State::VariableName => {
                if ch == b'%' {
                    state = State::Literal;
                } else if ch == b'(' {
                    state = State::ExpectArray;
                }
            }
            State::ExpectArray => {
                if ch == b'[' {
                    state = State::ExpectString;
                } else if ch != b' ' {
                    state = State::String;
                }
            }
            State::ExpectArrayDelimiterOrEnd => match ch {
                b',' => state = State::ExpectString,
                b']' => state = State::ExpectArgsEnd,
                b' ' => {}
                _ => {
                    return Err(
                        "invalid header configuration. Expecting ',', ']', or whitespace"
                            .to_owned(),
                    );
                }
            },
            State::ExpectString => {
                if ch == b'"' {
                    state = State::String;
                } else if ch != b' ' {
                    return Err("invalid header configuration. Expecting '\"'".to_owned());
                }
            }
            State::String => match ch {
                b'\\' => {
                    if !has_next {
                        return Err(
                            "invalid header configuration. Un-terminated backslash in JSON string"
                                .to_owned(),
                        );
                    }
                    pos += 1;
                }
                b')' => state = State::ExpectVariableEnd,
                b'"' => state = State::ExpectArrayDelimiterOrEnd,
                _ => {}
            },
            State::ExpectArgsEnd => {
                if ch == b')' {
                    state = State::ExpectVariableEnd;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting ')' or whitespace".to_owned()
                    );
                }
            }
            State::ExpectVariableEnd => {
                if ch == b'%' {
                    state = State::Literal;
                } else if ch != b' ' {
                    return Err(
                        "invalid header configuration. Expecting '%' or whitespace after"
                            .to_owned(),
                    );
                }
            }
        }
        pos += 1;
    }
    if state != State::Literal {
        return Err(format!(
            "invalid header configuration. Un-terminated variable expression '{value}'"
        ));
    }
    Ok(())
}

/// Header manipulations of a route or a destination, as `validateHTTPRoute` checks them.
pub fn check_headers(findings: &mut Findings, path: &str, headers: &Headers) {
    if let Some(request) = &headers.request {
        check_header_operations(findings, &format!("{path}.request"), request, true);
    }
    if let Some(response) = &headers.response {
        check_header_operations(findings, &format!("{path}.response"), response, false);
    }
}

fn check_header_operations(
    findings: &mut Findings,
    path: &str,
    operations: &HeaderOperations,
    request: bool,
) {
    let name_rule = if request {
        header_name_with_authority
    } else {
        header_operation_name
    };
    for (field, map) in [("set", &operations.set), ("add", &operations.add)] {
        for (name, value) in map {
            let header_path = format!("{path}.{field}.{name}");
            findings.check(&header_path, name_rule(name));
            findings.check(&header_path, header_value(value));
        }
    }
    for (i, name) in operations.remove.iter().enumerate() {
        findings.check(format!("{path}.remove[{i}]"), header_operation_name(name));
    }
}

/// Where `exportTo` is written: ServiceEntry allows `~`; a DestinationRule with a
/// `workloadSelector` may export only to its own namespace.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ExportKind {
    Config,
    ServiceEntry,
    SelectedDestinationRule,
}

/// Istio's `validateExportTo`.
pub fn check_export_to(
    findings: &mut Findings,
    namespace: &str,
    export_to: &[String],
    kind: ExportKind,
) {
    if export_to.is_empty() {
        return;
    }
    let mut seen = BTreeSet::new();
    for (i, entry) in export_to.iter().enumerate() {
        let path = format!("spec.exportTo[{i}]");
        let key = if entry == "." {
            namespace
        } else {
            entry.as_str()
        };
        if seen.contains(key) {
            if key != entry {
                findings.error(
                    &path,
                    format!("duplicate entries in exportTo: . and current namespace {namespace}"),
                );
            } else {
                findings.error(
                    &path,
                    format!("duplicate entries in exportTo for entry {entry}"),
                );
            }
            continue;
        }
        if kind == ExportKind::ServiceEntry && entry == "~" {
            seen.insert(key.to_owned());
            continue;
        }
        match key {
            "." | "*" => {
                seen.insert(key.to_owned());
            }
            "~" => findings.error(
                &path,
                "exportTo ~ (none) is not allowed for Istio configuration objects",
            ),
            _ if is_dns1123_label(key) => {
                seen.insert(key.to_owned());
            }
            _ => findings.error(
                &path,
                "only .,*, or a valid DNS 1123 label is allowed as exportTo entry",
            ),
        }
    }
    if kind == ExportKind::SelectedDestinationRule && !seen.is_empty() {
        if seen.contains(namespace) {
            if seen.len() > 1 {
                findings.error(
                    "spec.exportTo",
                    "destination rule with workload selector cannot have multiple entries in exportTo",
                );
            }
        } else {
            findings.error(
                "spec.exportTo",
                "destination rule with workload selector cannot have exportTo beyond current namespace",
            );
        }
    }
    if seen.contains("*") && export_to.len() > 1 {
        findings.error(
            "spec.exportTo",
            "cannot have both public (*) and non-public exportTo values for a resource",
        );
    }
    if seen.contains("~") && export_to.len() > 1 {
        findings.error(
            "spec.exportTo",
            "cannot export service entry to no one (~) and someone",
        );
    }
}
