//! Which Telemetry resources a waypoint applies, in Istio's order, and what they merge into.

use std::sync::Arc;

use super::super::tests::validated;
use super::super::waypoint_configs;
use weft_proto::waypoint as wp;

use crate::mesh_config::{MeshConfigWatch, parse};
use crate::translate::MeshSettings;

mod gateways;
mod per_service;
mod tags_and_metrics;

pub(super) const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: example-collectors, namespace: observability}
spec:
  hosts: [otel.example.com, other.example.com, collector.example.com, c.example.com, als.example.com]
  ports: [{number: 4317, name: grpc-otlp, protocol: GRPC}]
  resolution: DNS
"#;

/// The access log on (the built-in provider by default, so that `disabled` entries show, and
/// the mesh file where no entry applies).
const MESH_CONFIG: &str = "defaultConfig: {tracing: {sampling: 25}}\naccessLogFile: /dev/stdout\ndefaultProviders: {tracing: [otel], accessLogging: [envoy]}\nextensionProviders: [{name: otel, opentelemetry: {service: otel.example.com, port: 4317}}, {name: other, opentelemetry: {service: other.example.com, port: 4317}}, {name: zipkin, zipkin: {service: zipkin.example.com, port: 9411}}]";

/// A Telemetry document in `namespace`, created at second `created` of the day.
pub(super) fn telemetry(name: &str, namespace: &str, created: u32, spec: &str) -> String {
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}, creationTimestamp: '2026-01-01T00:00:{created:02}Z'}}\nspec: {spec}\n"
    )
}

/// The configuration of the waypoint `shop/waypoint` under the mesh config `mesh_config`, with
/// `resources` (documents, each opening with `---`) added to [`MESH`].
pub(super) fn waypoint_config(mesh_config: &str, resources: &str) -> wp::WaypointConfig {
    let index = validated(&format!("{MESH}{resources}"));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", mesh_config).unwrap())),
        ..Default::default()
    };
    waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config")
}

/// The waypoint's (provider, sampling, span reporting disabled, access log disabled), `None`
/// for the tracing part when it has none.
fn applied(telemetries: &[String]) -> (Option<(String, f64, bool)>, bool) {
    let config = waypoint_config(MESH_CONFIG, &telemetries.concat());
    let tracing = config.tracing.map(|t| {
        (
            t.provider,
            t.random_sampling_percentage,
            t.disable_span_reporting,
        )
    });
    (tracing, config.access_log_disabled)
}

fn traced(provider: &str, sampling: f64, disabled: bool) -> Option<(String, f64, bool)> {
    Some((provider.to_owned(), sampling, disabled))
}

#[test]
fn root_then_namespace_then_waypoint_targets_each_override_the_one_before() {
    let root = telemetry(
        "mesh-default",
        "istio-system",
        1,
        "{tracing: [{randomSamplingPercentage: 10}], accessLogging: [{disabled: true}]}",
    );
    let namespace = telemetry(
        "shop",
        "shop",
        2,
        "{tracing: [{randomSamplingPercentage: 0}]}",
    );
    let waypoint = telemetry(
        "for-waypoint",
        "shop",
        3,
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{randomSamplingPercentage: 50, disableSpanReporting: true}], accessLogging: [{}]}",
    );
    assert_eq!(applied(&[]), (traced("otel", 25.0, false), false));
    assert_eq!(
        applied(std::slice::from_ref(&root)),
        (traced("otel", 10.0, false), true)
    );
    assert_eq!(
        applied(&[root.clone(), namespace.clone()]),
        (traced("otel", 0.0, false), true)
    );
    // The waypoint's own Telemetry wins, whatever the order of creation; an entry without
    // `disabled` turns the access log back on, as istiod's mergeLogs does.
    let older_waypoint = telemetry(
        "for-waypoint",
        "shop",
        0,
        "{targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}, tracing: [{randomSamplingPercentage: 50, disableSpanReporting: true}], accessLogging: [{}]}",
    );
    for third in [waypoint, older_waypoint] {
        assert_eq!(
            applied(&[root.clone(), namespace.clone(), third]),
            (traced("otel", 50.0, true), false)
        );
    }
}

#[test]
fn telemetries_that_do_not_bind_the_waypoint_change_nothing() {
    let untouched = (traced("otel", 25.0, false), false);
    for (what, telemetry) in [
        (
            "a selector never binds a waypoint",
            telemetry(
                "by-selector",
                "shop",
                1,
                "{selector: {matchLabels: {gateway.networking.k8s.io/gateway-name: waypoint}}, tracing: [{randomSamplingPercentage: 0}]}",
            ),
        ),
        (
            "attached to a Service: that service's traffic only (tested below)",
            telemetry(
                "by-service",
                "shop",
                1,
                "{targetRefs: [{kind: Service, name: reviews}], tracing: [{randomSamplingPercentage: 0}]}",
            ),
        ),
        (
            "another waypoint",
            telemetry(
                "other",
                "shop",
                1,
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}], tracing: [{randomSamplingPercentage: 0}]}",
            ),
        ),
        (
            "another namespace",
            telemetry(
                "elsewhere",
                "billing",
                1,
                "{tracing: [{randomSamplingPercentage: 0}], accessLogging: [{disabled: true}]}",
            ),
        ),
        (
            "client side only",
            telemetry(
                "client",
                "shop",
                1,
                "{tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 0}], accessLogging: [{match: {mode: CLIENT}, disabled: true}]}",
            ),
        ),
    ] {
        assert_eq!(applied(&[telemetry]), untouched, "{what}");
    }
}

#[test]
fn the_oldest_namespace_wide_telemetry_is_the_one_applied() {
    let older = telemetry("b", "shop", 1, "{tracing: [{randomSamplingPercentage: 5}]}");
    let newer = telemetry("a", "shop", 2, "{tracing: [{randomSamplingPercentage: 7}]}");
    assert_eq!(applied(&[newer, older]).0, traced("otel", 5.0, false));
}

#[test]
fn providers_name_the_mesh_configs_opentelemetry_collectors() {
    let named = |provider: &str| {
        telemetry(
            "p",
            "shop",
            1,
            &format!("{{tracing: [{{providers: [{{name: {provider}}}]}}]}}"),
        )
    };
    assert_eq!(applied(&[named("OTHER")]).0, traced("other", 25.0, false));
    // Not an OpenTelemetry provider, or not declared: istiod finds no tracer, no spans.
    assert_eq!(applied(&[named("zipkin")]).0, None);
    assert_eq!(applied(&[named("missing")]).0, None);
}
