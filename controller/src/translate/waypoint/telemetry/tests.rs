//! Which Telemetry resources a waypoint applies, in Istio's order, and what they merge into.

use std::sync::Arc;

use super::super::tests::validated;
use super::super::waypoint_configs;
use crate::mesh_config::{MeshConfigWatch, parse};
use crate::translate::MeshSettings;

const MESH: &str = r#"
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
"#;

const MESH_CONFIG: &str = "defaultConfig: {tracing: {sampling: 25}}\ndefaultProviders: {tracing: [otel]}\nextensionProviders: [{name: otel, opentelemetry: {service: otel.example.com, port: 4317}}, {name: other, opentelemetry: {service: other.example.com, port: 4317}}, {name: zipkin, zipkin: {service: zipkin.example.com, port: 9411}}]";

/// A Telemetry document in `namespace`, created at second `created` of the day.
fn telemetry(name: &str, namespace: &str, created: u32, spec: &str) -> String {
    format!(
        "---\napiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {namespace}, creationTimestamp: '2026-01-01T00:00:{created:02}Z'}}\nspec: {spec}\n"
    )
}

/// The waypoint's (provider, sampling, span reporting disabled, access log disabled), `None`
/// for the tracing part when it has none.
fn applied(telemetries: &[String]) -> (Option<(String, f64, bool)>, bool) {
    let index = validated(&format!("{MESH}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let config = waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config");
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
            "attached to a Service: per waypoint only",
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

/// An Istio ingress gateway's pod in `edge` and a Gateway API Gateway's pod in `shop`.
const GATEWAYS: &str = r#"
---
apiVersion: v1
kind: Pod
metadata: {name: ingress-0, namespace: edge, labels: {istio: ingressgateway, app: istio-ingressgateway}}
spec: {nodeName: n1, serviceAccountName: ingress, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.5}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge-gateway, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: front-istio-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: front}}
spec: {nodeName: n1, serviceAccountName: front-istio, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.6}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: front, namespace: shop}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#;

/// Each gateway's (provider, sampling, span reporting disabled, service name, canonical
/// service) and access log disabled, by resource name.
type GatewayTelemetry = (Option<(String, f64, bool, String, String)>, bool);

fn applied_to_gateways(telemetries: &[String]) -> (GatewayTelemetry, GatewayTelemetry) {
    let index = validated(&format!("{MESH}{GATEWAYS}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let mut configs = super::super::gateway_configs(&index, &settings, &mut Vec::new());
    let mut of = |name: &str| {
        let config = configs.remove(name).expect("the gateway's config");
        let tracing = config.tracing.map(|t| {
            (
                t.provider,
                t.random_sampling_percentage,
                t.disable_span_reporting,
                t.service_name,
                t.canonical_service,
            )
        });
        (tracing, config.access_log_disabled)
    };
    (of("edge/ingress-0"), of("shop/front-istio-0"))
}

fn gateway_traced(sampling: f64, service: &str, canonical: &str) -> GatewayTelemetry {
    (
        Some((
            "otel".to_owned(),
            sampling,
            false,
            service.to_owned(),
            canonical.to_owned(),
        )),
        false,
    )
}

#[test]
fn gateways_get_the_mesh_default_named_by_their_canonical_service() {
    let (ingress, front) = applied_to_gateways(&[]);
    assert_eq!(
        ingress,
        gateway_traced(25.0, "istio-ingressgateway.edge", "istio-ingressgateway")
    );
    // No canonical label: the workload's name (the pod's, without a Deployment).
    assert_eq!(
        front,
        gateway_traced(25.0, "front-istio-0.shop", "front-istio-0")
    );
}

#[test]
fn a_gateway_applies_root_namespace_selector_and_target_telemetries_on_its_client_side() {
    let root = telemetry(
        "mesh-default",
        "istio-system",
        1,
        "{tracing: [{randomSamplingPercentage: 10}]}",
    );
    let edge = telemetry(
        "edge",
        "edge",
        2,
        "{tracing: [{randomSamplingPercentage: 20}]}",
    );
    let by_selector = telemetry(
        "ingress",
        "edge",
        3,
        "{selector: {matchLabels: {istio: ingressgateway}}, tracing: [{randomSamplingPercentage: 30}], accessLogging: [{disabled: true}]}",
    );
    let by_target = telemetry(
        "front",
        "shop",
        3,
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: front}], tracing: [{randomSamplingPercentage: 40}]}",
    );
    let (ingress, front) = applied_to_gateways(std::slice::from_ref(&root));
    assert_eq!(ingress.0.unwrap().1, 10.0);
    assert_eq!(front.0.unwrap().1, 10.0);
    let (ingress, front) = applied_to_gateways(&[root.clone(), edge.clone()]);
    assert_eq!(ingress.0.unwrap().1, 20.0);
    assert_eq!(front.0.unwrap().1, 10.0, "another namespace's Telemetry");
    let (ingress, front) = applied_to_gateways(&[root, edge, by_selector, by_target]);
    assert_eq!(ingress.0.unwrap().1, 30.0);
    assert!(ingress.1, "the selector's access logging applies");
    assert_eq!(front.0.unwrap().1, 40.0);
    assert!(!front.1);
}

#[test]
fn telemetries_that_do_not_bind_a_gateway_change_nothing() {
    let untouched = applied_to_gateways(&[]);
    for (what, telemetry) in [
        (
            "a selector the pod's labels do not satisfy",
            telemetry(
                "other",
                "edge",
                1,
                "{selector: {matchLabels: {istio: egressgateway}}, tracing: [{randomSamplingPercentage: 0}]}",
            ),
        ),
        (
            "another Gateway",
            telemetry(
                "other-gateway",
                "shop",
                1,
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: back}], tracing: [{randomSamplingPercentage: 0}]}",
            ),
        ),
        (
            "the waypoint's Telemetry (its Gateway), in the gateway's namespace",
            telemetry(
                "waypoint",
                "shop",
                1,
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{randomSamplingPercentage: 0}]}",
            ),
        ),
        (
            "server side only: a gateway's spans are client spans",
            telemetry(
                "server",
                "istio-system",
                1,
                "{tracing: [{match: {mode: SERVER}, randomSamplingPercentage: 0}], accessLogging: [{match: {mode: SERVER}, disabled: true}]}",
            ),
        ),
    ] {
        assert_eq!(applied_to_gateways(&[telemetry]), untouched, "{what}");
    }
}
