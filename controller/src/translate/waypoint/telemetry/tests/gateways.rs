//! Telemetry at the gateways: the mesh default by canonical service, and what binds them.

use super::*;

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
    let mut configs =
        crate::translate::waypoint::gateway_configs(&index, &settings, &mut Vec::new());
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
