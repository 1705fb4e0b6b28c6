//! Telemetry: Istio's `ValidateTelemetry` (`validation.go`: `validateTelemetryTracing`,
//! `validateTelemetryMetrics`, `validateTelemetryAccessLogging`, `validateTelemetryProviders`,
//! `validation_istiod.go`: `validateTelemetryFilter`), the cases of its `TestValidateTelemetry`
//! and `TestValidateTelemetryFilter`, and the CRD's rules.

use super::*;
use crate::validation::NOT_APPLIED;

pub const TEL: &str = "telemetry.istio.io/v1";

fn tel(spec: &str) -> String {
    doc(TEL, "Telemetry", spec)
}

#[test]
fn telemetry_rules() {
    run(&[
        ok("empty", "TestValidateTelemetry: empty", tel("{}")),
        ok(
            "served as v1alpha1 too",
            "CRD: versions v1alpha1 (stored) and v1",
            doc(
                "telemetry.istio.io/v1alpha1",
                "Telemetry",
                "{tracing: [{randomSamplingPercentage: 10}]}",
            ),
        ),
        ok(
            "what waypoints apply",
            "ValidateTelemetry",
            tel(
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{providers: [{name: otel}], randomSamplingPercentage: 0, disableSpanReporting: false, match: {mode: SERVER}}], accessLogging: [{disabled: true, match: {mode: CLIENT_AND_SERVER}}]}",
            ),
        ),
        warns(
            "multiple providers",
            "TestValidateTelemetry: multiple providers",
            tel("{tracing: [{providers: [{name: foo}, {name: bar}]}]}"),
            "spec.tracing[0].providers",
            "multiple providers is not currently supported",
        ),
        warns(
            "multiple tracers",
            "TestValidateTelemetry: multiple tracers",
            tel("{tracing: [{}, {}]}"),
            "spec.tracing",
            "multiple tracing is not currently supported",
        ),
        bad(
            "sampling over 100",
            "TestValidateTelemetry: bad randomSamplingPercentage; CRD maximum 100",
            tel("{tracing: [{randomSamplingPercentage: 101}]}"),
            "spec.tracing[0].randomSamplingPercentage",
            "randomSamplingPercentage must be in range [0.0, 100.0]",
        ),
        bad(
            "negative sampling",
            "validateTelemetryTracing; CRD minimum 0",
            tel("{tracing: [{randomSamplingPercentage: -1}]}"),
            "spec.tracing[0].randomSamplingPercentage",
            "randomSamplingPercentage must be in range [0.0, 100.0]",
        ),
        ok(
            "good custom tags are applied",
            "TestValidateTelemetry: tracing with a good custom tag",
            tel(
                "{tracing: [{customTags: {clusterID: {environment: {name: FOO}}, team: {literal: {value: checkout}}, user: {header: {name: x-user, defaultValue: anonymous}}}}]}",
            ),
        ),
        ok(
            "a formatter tag is applied",
            "Istio's Tracing.CustomTag.formatter (CRD: value minLength 1; no other check)",
            tel("{tracing: [{customTags: {route: {formatter: {value: '%ROUTE_NAME%'}}}}]}"),
        ),
        bad(
            "a nil custom tag",
            "TestValidateTelemetry: tracing with a nil custom tag",
            tel("{tracing: [{customTags: {clusterID: null}}]}"),
            "spec.tracing[0].customTags.clusterID",
            "tag 'clusterID' may not have a nil value",
        ),
        bad(
            "an empty literal",
            "validateTelemetryTracing: literal tag value may not be empty; CRD minLength 1",
            tel("{tracing: [{customTags: {a: {literal: {value: ''}}}}]}"),
            "spec.tracing[0].customTags.a.literal.value",
            "literal tag value may not be empty",
        ),
        bad(
            "an empty header name",
            "validateTelemetryTracing: header tag name may not be empty",
            tel("{tracing: [{customTags: {a: {header: {name: ''}}}}]}"),
            "spec.tracing[0].customTags.a.header.name",
            "header tag name may not be empty",
        ),
        bad(
            "an empty environment name",
            "validateTelemetryTracing: environment tag name may not be empty",
            tel("{tracing: [{customTags: {a: {environment: {name: ''}}}}]}"),
            "spec.tracing[0].customTags.a.environment.name",
            "environment tag name may not be empty",
        ),
        bad(
            "two sources for one tag",
            "CRD: customTags oneOf literal, environment, header, formatter",
            tel("{tracing: [{customTags: {a: {literal: {value: x}, header: {name: y}}}}]}"),
            "spec.tracing[0].customTags.a",
            "only one of",
        ),
        bad(
            "an unnamed provider",
            "validateTelemetryProviders: providers.name may not be empty",
            tel("{tracing: [{providers: [{name: ''}]}]}"),
            "spec.tracing[0].providers[0].name",
            "providers.name may not be empty",
        ),
        bad(
            "an unnamed access-log provider",
            "validateTelemetryAccessLogging -> validateTelemetryProviders",
            tel("{accessLogging: [{providers: [{name: ''}]}]}"),
            "spec.accessLogging[0].providers[0].name",
            "providers.name may not be empty",
        ),
        bad(
            "upsert without a value",
            "TestValidateTelemetry: bad metrics operation; CRD: value must be set when operation is UPSERT",
            tel(
                "{metrics: [{overrides: [{tagOverrides: {my-tag: {operation: UPSERT, value: ''}}}]}]}",
            ),
            "spec.metrics[0].overrides[0].tagOverrides.my-tag.value",
            "tagOverrides.value must be set when operation is UPSERT",
        ),
        bad(
            "an unset operation is UPSERT",
            "validateTelemetryMetrics: operation's zero value is UPSERT",
            tel("{metrics: [{overrides: [{tagOverrides: {my-tag: {}}}]}]}"),
            "spec.metrics[0].overrides[0].tagOverrides.my-tag.value",
            "must be set when operation is UPSERT",
        ),
        bad(
            "remove with a value",
            "validateTelemetryMetrics; CRD: value must not be set when operation is REMOVE",
            tel(
                "{metrics: [{overrides: [{tagOverrides: {my-tag: {operation: REMOVE, value: x}}}]}]}",
            ),
            "spec.metrics[0].overrides[0].tagOverrides.my-tag.value",
            "may only be set when operation is UPSERT",
        ),
        warns(
            "good metrics operation",
            "TestValidateTelemetry: good metrics operation",
            tel(
                "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT, mode: CLIENT}, tagOverrides: {my-tag: {operation: UPSERT, value: some-cel-expression}}}], reportingInterval: 15s}]}",
            ),
            "spec.metrics[0].reportingInterval",
            NOT_APPLIED,
        ),
        warns(
            "an empty tag override name",
            "validateTelemetryMetrics: tagOverrides.name may not be empty (a warning)",
            tel("{metrics: [{overrides: [{tagOverrides: {'': {value: x}}}]}]}"),
            "spec.metrics[0].overrides[0].tagOverrides.",
            "tagOverrides.name may not be empty",
        ),
        bad(
            "an empty custom metric",
            "validateTelemetryMetrics: customMetric may not be empty; CRD minLength 1",
            tel("{metrics: [{overrides: [{match: {customMetric: ''}}]}]}"),
            "spec.metrics[0].overrides[0].match.customMetric",
            "customMetric may not be empty",
        ),
        bad(
            "metric and custom metric",
            "CRD: match oneOf metric, customMetric",
            tel("{metrics: [{overrides: [{match: {metric: REQUEST_COUNT, customMetric: x}}]}]}"),
            "spec.metrics[0].overrides[0].match",
            "only one of metric or customMetric",
        ),
        bad(
            "an unknown metric",
            "CRD enum IstioMetric",
            tel("{metrics: [{overrides: [{match: {metric: REQUEST_COUNTS}}]}]}"),
            "spec.metrics[0].overrides[0].match.metric",
            "unknown variant `REQUEST_COUNTS`",
        ),
        bad(
            "a reporting interval under 1ms",
            "CRD: reportingInterval duration(self) >= duration('1ms')",
            tel("{metrics: [{reportingInterval: 0s}]}"),
            "spec.metrics[0].reportingInterval",
            "must be a valid duration greater than 1ms",
        ),
        ok(
            "multi access loggings",
            "TestValidateTelemetry: multi-accessloggings",
            tel(
                "{accessLogging: [{providers: [{name: envoy}]}, {providers: [{name: otel}], disabled: true}]}",
            ),
        ),
        ok(
            "a valid filter",
            "TestValidateTelemetryFilter: response.code >= 400",
            tel("{accessLogging: [{filter: {expression: 'response.code >= 400'}}]}"),
        ),
        warns(
            "a filter reading an attribute the proxies do not offer",
            "Envoy's CEL filter: an evaluation error logs nothing",
            tel("{accessLogging: [{filter: {expression: \"xds.cluster_name == 'a'\"}}]}"),
            "spec.accessLogging[0].filter.expression",
            "'xds' is none of the attributes the proxies offer",
        ),
        ok(
            "a filter with a method call",
            "TestValidateTelemetryFilter: connection.mtls && request.url_path.contains('v1beta3')",
            tel(
                "{accessLogging: [{filter: {expression: \"connection.mtls && request.url_path.contains('v1beta3')\"}}]}",
            ),
        ),
        bad(
            "a filter that is no CEL",
            "TestValidateTelemetryFilter: )++++",
            tel("{accessLogging: [{filter: {expression: ')++++'}}]}"),
            "spec.accessLogging[0].filter.expression",
            "must be a valid CEL expression",
        ),
        bad(
            "an unknown mode",
            "CRD enum WorkloadMode",
            tel("{accessLogging: [{match: {mode: BOTH}}]}"),
            "spec.accessLogging[0].match.mode",
            "unknown variant `BOTH`",
        ),
        ok(
            "good targetRef",
            "TestValidateTelemetry: good targetRef",
            tel(
                "{targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: foo}, tracing: [{randomSamplingPercentage: 5}]}",
            ),
        ),
        bad(
            "targetRef without a name",
            "TestValidateTelemetry: bad targetRef - empty name",
            tel("{targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: ''}}"),
            "spec.targetRef.name",
            "targetRef name must be set",
        ),
        bad(
            "targetRef in another namespace",
            "TestValidateTelemetry: bad targetRef - non-empty namespace",
            tel(
                "{targetRef: {group: gateway.networking.k8s.io, kind: Gateway, name: foo, namespace: bar}}",
            ),
            "spec.targetRef.namespace",
            "targetRef namespace must not be set",
        ),
        bad(
            "targetRef to a wrong group",
            "TestValidateTelemetry: bad targetRef - wrong group",
            tel("{targetRef: {group: wrong-group, kind: Gateway, name: foo}}"),
            "spec.targetRef",
            "targetRef must be to one of",
        ),
        bad(
            "targetRef to a wrong kind",
            "TestValidateTelemetry: bad targetRef - wrong kind",
            tel("{targetRef: {group: gateway.networking.k8s.io, kind: wrong-kind, name: foo}}"),
            "spec.targetRef",
            "targetRef must be to one of",
        ),
        bad(
            "selector and targetRefs",
            "validateOneOfSelectorType; CRD: only one of targetRefs or selector can be set",
            tel(
                "{selector: {matchLabels: {app: a}}, targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: foo}]}",
            ),
            "spec",
            "only one of targetRefs or workloadSelector can be set",
        ),
        warns(
            "a selector",
            "validateWorkloadSelector; selectors never bind a waypoint (PolicyMatcherForProxy)",
            tel("{selector: {matchLabels: {app: a}}, tracing: [{randomSamplingPercentage: 1}]}"),
            "spec.selector",
            NOT_APPLIED,
        ),
        ok(
            "attached to a Service",
            "validatePolicyTargetReference allows Service",
            tel(
                "{targetRefs: [{kind: Service, name: reviews}], tracing: [{randomSamplingPercentage: 1}]}",
            ),
        ),
        ok(
            "attached to a ServiceEntry",
            "validatePolicyTargetReference allows ServiceEntry",
            tel(
                "{targetRef: {kind: ServiceEntry, group: networking.istio.io, name: external}, accessLogging: [{disabled: true}]}",
            ),
        ),
        warns(
            "fields the waypoint does not apply",
            "ValidateTelemetry",
            tel(
                "{tracing: [{useRequestIdForTraceSampling: false, enableIstioTags: true, disableContextPropagation: true}]}",
            ),
            "spec.tracing[0].disableContextPropagation",
            NOT_APPLIED,
        ),
        bad(
            "an unknown field",
            "istioctl validate: unknown field",
            tel("{tracing: [{sampling: 5}]}"),
            "spec.tracing[0].sampling",
            "",
        ),
    ]);
}

/// A Telemetry attached to a Service or a ServiceEntry is applied at the waypoint that serves
/// it (istiod's `ShouldAttachPolicy` for a waypoint with the service): nothing to warn about.
#[test]
fn telemetry_attached_to_a_service_is_applied_without_a_warning() {
    for spec in [
        "{targetRefs: [{kind: Service, name: reviews}], tracing: [{randomSamplingPercentage: 1}]}",
        "{targetRef: {kind: Service, name: reviews}, accessLogging: [{disabled: true}]}",
        "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: external}], tracing: [{randomSamplingPercentage: 1}]}",
    ] {
        let (errors, warnings) = findings(&tel(spec));
        assert!(errors.is_empty(), "{spec}: {errors:?}");
        assert!(warnings.is_empty(), "{spec}: {warnings:?}");
    }
}

/// Metric overrides Weft applies need no warning; what it does not apply is reported with the
/// Telemetry's field and, for a value expression, the expression.
#[test]
fn metric_overrides_report_what_is_not_applied() {
    let applied = [
        "{metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, disabled: true}]}]}",
        "{metrics: [{overrides: [{match: {metric: REQUEST_DURATION}, tagOverrides: {request_protocol: {operation: REMOVE}, request_host: {value: request.host}, user: {value: \"has(request.headers['x-user']) ? request.headers['x-user'] : 'anonymous'\"}}}]}]}",
        "{metrics: [{overrides: [{disabled: true}]}]}",
        "{metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES, mode: CLIENT_AND_SERVER}, disabled: true}]}]}",
        "{metrics: [{overrides: [{match: {metric: TCP_OPENED_CONNECTIONS}, tagOverrides: {destination_principal: {operation: REMOVE}, peer_port: {value: source.port}}}]}]}",
        // Envoy evaluates a request attribute on a connection as absent: accepted, as Istio does.
        "{metrics: [{overrides: [{match: {metric: TCP_CLOSED_CONNECTIONS}, tagOverrides: {host: {value: \"has(request.host) ? request.host : 'none'\"}}}]}]}",
    ];
    for spec in applied {
        let (errors, warnings) = findings(&tel(spec));
        assert!(errors.is_empty(), "{spec}: {errors:?}");
        assert!(warnings.is_empty(), "{spec}: {warnings:?}");
    }
    let not_applied = [
        (
            "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {peer: {value: upstream_peer.istio_version}}}]}]}",
            "spec.metrics[0].overrides[0].tagOverrides.peer.value",
            "\"upstream_peer.istio_version\"",
        ),
        (
            "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {my-tag: {value: request.host}}}]}]}",
            "spec.metrics[0].overrides[0].tagOverrides.my-tag",
            "not a Prometheus label name",
        ),
        (
            "{metrics: [{providers: [{name: stackdriver}]}]}",
            "spec.metrics[0].providers[0]",
            "Prometheus only",
        ),
        (
            "{metrics: [{overrides: [{match: {customMetric: my_metric}, disabled: true}]}]}",
            "spec.metrics[0].overrides[0].match.customMetric",
            "no custom metrics",
        ),
    ];
    for (spec, path, reason) in not_applied {
        let (errors, warnings) = findings(&tel(spec));
        assert!(errors.is_empty(), "{spec}: {errors:?}");
        assert!(
            warnings
                .iter()
                .any(|(p, r)| p == path && r.starts_with(NOT_APPLIED) && r.contains(reason)),
            "{spec}: {warnings:?}"
        );
    }
}
