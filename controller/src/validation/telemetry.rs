//! Telemetry, as Istio's `ValidateTelemetry` (`validation.go`: `validateTelemetryTracing`,
//! `validateTelemetryMetrics`, `validateTelemetryAccessLogging`, `validateTelemetryProviders`;
//! `validation_istiod.go`: `validateTelemetryFilter`) and the CEL and schema rules of its CRD
//! check it.

use std::time::Duration;

use weft_proxy_core::metrics::is_label_name;

use super::Findings;
use super::cel::check_expression;
use super::common::check_policy_selection;
use crate::model::schema::DURATION_MESSAGE;
use crate::model::tag_expression;
use crate::model::telemetry::*;

/// The one metrics provider Weft reports to (Istio's default `defaultProviders.metrics`).
const PROMETHEUS: &str = "prometheus";

pub fn validate(spec: &TelemetrySpec, findings: &mut Findings) {
    check_policy_selection(
        findings,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    if spec.target_refs.len() > 16 {
        findings.error("spec.targetRefs", "must have at most 16 items");
    }
    for (i, metrics) in spec.metrics.iter().enumerate() {
        let path = format!("spec.metrics[{i}]");
        check_metrics(findings, &path, metrics);
        check_metrics_applied(findings, &path, metrics);
    }
    if spec.tracing.len() > 1 {
        findings.warn(
            "spec.tracing",
            "multiple tracing is not currently supported",
        );
    }
    for (i, tracing) in spec.tracing.iter().enumerate() {
        check_tracing(findings, &format!("spec.tracing[{i}]"), tracing);
    }
    for (i, logging) in spec.access_logging.iter().enumerate() {
        let path = format!("spec.accessLogging[{i}]");
        if let Some(expression) = logging.filter.as_ref().and_then(|f| f.expression.as_ref()) {
            let field = format!("{path}.filter.expression");
            match cel_expression(expression) {
                Err(reason) => findings.error(field, reason),
                Ok(None) => {}
                Ok(Some(unknown)) => findings.warn(
                    field,
                    format!(
                        "'{unknown}' is none of the attributes the proxies offer ({}): evaluating it fails and no line is written",
                        weft_access_log::ATTRIBUTES.join(", ")
                    ),
                ),
            }
        }
        check_providers(findings, &path, &logging.providers);
    }
}

/// Istio's `validateTelemetryProviders`: every provider is named.
fn check_providers(findings: &mut Findings, path: &str, providers: &[ProviderRef]) {
    if let Some(i) = providers.iter().position(|p| p.name.is_empty()) {
        findings.error(
            format!("{path}.providers[{i}].name"),
            "providers.name may not be empty",
        );
    }
}

/// Istio's `validateTelemetryTracing` for one entry, and the CRD's `customTags` oneof.
fn check_tracing(findings: &mut Findings, path: &str, tracing: &Tracing) {
    if tracing.providers.len() > 1 {
        findings.warn(
            format!("{path}.providers"),
            "multiple providers is not currently supported",
        );
    }
    check_providers(findings, path, &tracing.providers);
    if let Some(percentage) = tracing.random_sampling_percentage
        && !(0.0..=100.0).contains(&percentage)
    {
        findings.error(
            format!("{path}.randomSamplingPercentage"),
            "randomSamplingPercentage must be in range [0.0, 100.0]",
        );
    }
    for (name, tag) in &tracing.custom_tags {
        let tag_path = format!("{path}.customTags.{name}");
        if name.is_empty() {
            findings.error(&tag_path, "tag name may not be empty");
        }
        let Some(tag) = tag else {
            findings.error(&tag_path, format!("tag '{name}' may not have a nil value"));
            continue;
        };
        let sources = [
            tag.literal.is_some(),
            tag.environment.is_some(),
            tag.header.is_some(),
            tag.formatter.is_some(),
        ];
        if sources.iter().filter(|set| **set).count() > 1 {
            findings.error(
                &tag_path,
                "only one of literal, environment, header or formatter may be set",
            );
        }
        if tag.literal.as_ref().is_some_and(|l| l.value.is_empty()) {
            findings.error(
                format!("{tag_path}.literal.value"),
                "literal tag value may not be empty",
            );
        }
        if tag.header.as_ref().is_some_and(|h| h.name.is_empty()) {
            findings.error(
                format!("{tag_path}.header.name"),
                "header tag name may not be empty",
            );
        }
        if tag.environment.as_ref().is_some_and(|e| e.name.is_empty()) {
            findings.error(
                format!("{tag_path}.environment.name"),
                "environment tag name may not be empty",
            );
        }
        if tag.formatter.as_ref().is_some_and(|f| f.value.is_empty()) {
            findings.error(
                format!("{tag_path}.formatter.value"),
                "formatter tag value may not be empty",
            );
        }
    }
}

/// Istio's `validateTelemetryMetrics` for one entry, and the CRD's rules for its overrides and
/// `reportingInterval`.
fn check_metrics(findings: &mut Findings, path: &str, metrics: &Metrics) {
    check_providers(findings, path, &metrics.providers);
    for (i, entry) in metrics.overrides.iter().enumerate() {
        let override_path = format!("{path}.overrides[{i}]");
        for (name, tag) in &entry.tag_overrides {
            let tag_path = format!("{override_path}.tagOverrides.{name}");
            if name.is_empty() {
                findings.warn(&tag_path, "tagOverrides.name may not be empty");
            }
            // An unset operation is UPSERT, protobuf's zero value, as Istio's check reads it.
            let value = tag.value.as_deref().unwrap_or("");
            match tag.operation.unwrap_or(TagOperation::Upsert) {
                TagOperation::Upsert if value.is_empty() => findings.error(
                    format!("{tag_path}.value"),
                    "tagOverrides.value must be set when operation is UPSERT",
                ),
                TagOperation::Remove if tag.value.is_some() => findings.error(
                    format!("{tag_path}.value"),
                    "tagOverrides.value may only be set when operation is UPSERT",
                ),
                _ => {}
            }
        }
        if let Some(selector) = &entry.match_ {
            if selector.metric.is_some() && selector.custom_metric.is_some() {
                findings.error(
                    format!("{override_path}.match"),
                    "only one of metric or customMetric may be set",
                );
            }
            if selector.custom_metric.as_deref() == Some("") {
                findings.error(
                    format!("{override_path}.match.customMetric"),
                    "customMetric may not be empty",
                );
            }
        }
    }
    if let Some(interval) = &metrics.reporting_interval {
        let valid = interval
            .parse()
            .is_ok_and(|d| !d.negative && d.magnitude >= Duration::from_millis(1));
        if !valid {
            findings.error(format!("{path}.reportingInterval"), DURATION_MESSAGE);
        }
    }
}

/// What of a `metrics` entry Weft does not apply, with the reason: a provider other than
/// Prometheus, a tag name Prometheus refuses, and a value expression outside the subset the
/// proxies evaluate.
fn check_metrics_applied(findings: &mut Findings, path: &str, metrics: &Metrics) {
    for (i, provider) in metrics.providers.iter().enumerate() {
        if !provider.name.is_empty() && !provider.name.eq_ignore_ascii_case(PROMETHEUS) {
            findings.not_applied(
                format!("{path}.providers[{i}]"),
                format!(
                    "Weft reports metrics to Prometheus only: {:?} gets none, and an entry naming no Prometheus provider changes nothing",
                    provider.name
                ),
            );
        }
    }
    for (i, entry) in metrics.overrides.iter().enumerate() {
        let override_path = format!("{path}.overrides[{i}]");
        for (name, tag) in &entry.tag_overrides {
            let tag_path = format!("{override_path}.tagOverrides.{name}");
            if !name.is_empty() && !is_label_name(name) {
                findings.not_applied(
                    &tag_path,
                    format!("{name:?} is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not `le`, not `__`-prefixed): the tag is not changed"),
                );
                continue;
            }
            if tag.operation.unwrap_or(TagOperation::Upsert) != TagOperation::Upsert {
                continue;
            }
            if let Some(value) = tag.value.as_deref().filter(|v| !v.is_empty())
                && let Err(reason) = tag_expression::parse(value)
            {
                findings.not_applied(
                    format!("{tag_path}.value"),
                    format!("the expression {value:?} is not one Weft evaluates ({reason}): the tag is not changed"),
                );
            }
        }
    }
}

/// Istio's `validateTelemetryFilter`: the access-log filter parses as a CEL expression.
/// Istio's check (cel-go's parser), then the waypoint's own compilation of the filter, so that
/// a filter the waypoint could not evaluate is refused here rather than NACKed there. Returns
/// a variable the filter reads that the proxies do not offer, if any.
fn cel_expression(expression: &str) -> Result<Option<String>, String> {
    check_expression(expression).map_err(|e| format!("must be a valid CEL expression, {e}"))?;
    weft_access_log::Filter::compile(expression)
        .map(|filter| filter.unknown_attribute())
        .map_err(|e| format!("must be a valid CEL expression, {e}"))
}
