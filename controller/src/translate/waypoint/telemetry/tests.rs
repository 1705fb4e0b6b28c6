//! Which Telemetry resources a waypoint applies, in Istio's order, and what they merge into.

use std::sync::Arc;

use super::super::tests::validated;
use super::super::waypoint_configs;
use weft_proto::waypoint as wp;

use crate::mesh_config::{MeshConfigWatch, parse};
use crate::translate::MeshSettings;

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

/// Two more services behind the waypoint of `shop`: `ratings` beside reviews, `payments` in
/// the namespace `billing` (its Service names shop's waypoint, which admits every namespace),
/// and the ServiceEntry `external` of `shop` with two hosts.
const SERVED_ELSEWHERE: &str = r#"
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Namespace
metadata: {name: billing, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata:
  name: payments
  namespace: billing
  labels: {istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: payments}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: external, namespace: shop}
spec:
  hosts: [api.example.com, files.example.com]
  addresses: [240.0.0.1, 240.0.0.2]
  location: MESH_EXTERNAL
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"#;

/// (provider, sampling, span reporting disabled) or none, and access log disabled.
type ServiceApplied = (Option<(String, f64, bool)>, bool);

/// Each served host's own (tracing, access log disabled), `None` for the hosts that keep the
/// waypoint's, with the waypoint's own as `"*"`.
fn applied_per_service(
    telemetries: &[String],
) -> std::collections::BTreeMap<String, Option<ServiceApplied>> {
    // The waypoint admits services of other namespaces.
    let mesh = MESH.replace(
        "protocol: HBONE}",
        "protocol: HBONE, allowedRoutes: {namespaces: {from: All}}}",
    );
    assert_ne!(mesh, MESH);
    let index = validated(&format!("{mesh}{SERVED_ELSEWHERE}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let config = waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let traced = |t: &weft_proto::waypoint::Tracing| {
        (
            t.provider.clone(),
            t.random_sampling_percentage,
            t.disable_span_reporting,
        )
    };
    let mut out: std::collections::BTreeMap<_, _> = config
        .services
        .iter()
        .map(|s| {
            (
                s.hostname.clone(),
                s.telemetry
                    .as_ref()
                    .map(|t| (t.tracing.as_ref().map(traced), t.access_log_disabled)),
            )
        })
        .collect();
    out.insert(
        "*".to_owned(),
        Some((
            config.tracing.as_ref().map(traced),
            config.access_log_disabled,
        )),
    );
    out
}

const REVIEWS: &str = "reviews.shop.svc.cluster.local";
const RATINGS: &str = "ratings.shop.svc.cluster.local";
const PAYMENTS: &str = "payments.billing.svc.cluster.local";

#[test]
fn a_telemetry_attached_to_a_service_applies_to_that_services_traffic_only() {
    // istiod's ShouldAttachPolicy at a waypoint: a targetRef of kind Service binds the filter
    // chain of the Service of that name in the policy's namespace, and nothing else.
    let services = applied_per_service(&[telemetry(
        "reviews-quiet",
        "shop",
        1,
        "{targetRefs: [{kind: Service, name: reviews}], tracing: [{randomSamplingPercentage: 0}], accessLogging: [{disabled: true}]}",
    )]);
    assert_eq!(services["*"], Some((traced("otel", 25.0, false), false)));
    assert_eq!(services[REVIEWS], Some((traced("otel", 0.0, false), true)));
    for other in [RATINGS, PAYMENTS, "api.example.com", "files.example.com"] {
        assert_eq!(services[other], None, "{other}");
    }
    // `targetRef` (singular) and a provider of its own: the provider changes too.
    let services = applied_per_service(&[telemetry(
        "ratings-other",
        "shop",
        1,
        "{targetRef: {kind: Service, name: ratings}, tracing: [{providers: [{name: other}], disableSpanReporting: true}]}",
    )]);
    assert_eq!(
        services[RATINGS],
        Some((traced("other", 25.0, true), false))
    );
    assert_eq!(services[REVIEWS], None);
    // A Zipkin provider leaves the service without a tracer, the rest traced.
    let services = applied_per_service(&[telemetry(
        "ratings-zipkin",
        "shop",
        1,
        "{targetRefs: [{kind: Service, name: ratings}], tracing: [{providers: [{name: zipkin}]}]}",
    )]);
    assert_eq!(services[RATINGS], Some((None, false)));
    assert_eq!(services["*"], Some((traced("otel", 25.0, false), false)));
}

#[test]
fn a_services_telemetry_layers_after_the_namespace_and_among_the_waypoints_by_creation() {
    // applicableTelemetries(proxy, svc): root and namespace-wide ones first, then every
    // Telemetry of the namespace that binds, the waypoint's Gateway and the Service alike, in
    // creation order, each overriding what it sets.
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
        "{tracing: [{randomSamplingPercentage: 20}]}",
    );
    let for_reviews = |created| {
        telemetry(
            "for-reviews",
            "shop",
            created,
            "{targetRefs: [{kind: Service, name: reviews}], tracing: [{randomSamplingPercentage: 40}]}",
        )
    };
    let for_waypoint = telemetry(
        "for-waypoint",
        "shop",
        4,
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{randomSamplingPercentage: 50}], accessLogging: [{}]}",
    );
    // Only the Service's: it overrides the sampling, the root's access log setting stays.
    let services = applied_per_service(&[root.clone(), namespace.clone(), for_reviews(3)]);
    assert_eq!(services["*"], Some((traced("otel", 20.0, false), true)));
    assert_eq!(services[REVIEWS], Some((traced("otel", 40.0, false), true)));
    // Newer than the waypoint's: the Service's sampling wins, the waypoint's log setting stays.
    let services = applied_per_service(&[
        root.clone(),
        namespace.clone(),
        for_waypoint.clone(),
        for_reviews(5),
    ]);
    assert_eq!(services["*"], Some((traced("otel", 50.0, false), false)));
    assert_eq!(
        services[REVIEWS],
        Some((traced("otel", 40.0, false), false))
    );
    assert_eq!(services[RATINGS], None);
    // Older than the waypoint's: the waypoint's overrides it, so reviews is like the rest.
    let services = applied_per_service(&[root, namespace, for_waypoint, for_reviews(3)]);
    assert_eq!(services[REVIEWS], None);
}

#[test]
fn a_service_of_another_namespace_takes_its_namespaces_telemetry_not_the_waypoints_own() {
    // applicableTelemetries(proxy, svc) at a waypoint for a service of another namespace: that
    // namespace's namespace-wide Telemetry joins after the waypoint's, and the binding ones are
    // looked for there, so the waypoint's Gateway-targeted Telemetry does not apply to it.
    let for_waypoint = telemetry(
        "for-waypoint",
        "shop",
        1,
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{randomSamplingPercentage: 50}]}",
    );
    let services = applied_per_service(std::slice::from_ref(&for_waypoint));
    assert_eq!(services["*"], Some((traced("otel", 50.0, false), false)));
    assert_eq!(
        services[PAYMENTS],
        Some((traced("otel", 25.0, false), false))
    );
    assert_eq!(services[REVIEWS], None);

    let billing = telemetry(
        "billing",
        "billing",
        2,
        "{accessLogging: [{disabled: true}]}",
    );
    let for_payments = telemetry(
        "for-payments",
        "billing",
        3,
        "{targetRefs: [{kind: Service, name: payments}], tracing: [{randomSamplingPercentage: 5}]}",
    );
    let services = applied_per_service(&[for_waypoint, billing, for_payments]);
    assert_eq!(services[PAYMENTS], Some((traced("otel", 5.0, false), true)));
    assert_eq!(services[REVIEWS], None);
    // The policy must be in the service's namespace: one in the waypoint's naming `payments`
    // binds nothing.
    let services = applied_per_service(&[telemetry(
        "wrong-namespace",
        "shop",
        1,
        "{targetRefs: [{kind: Service, name: payments}], tracing: [{randomSamplingPercentage: 5}]}",
    )]);
    assert_eq!(services[PAYMENTS], None);
}

#[test]
fn a_telemetry_attached_to_a_service_entry_applies_to_each_of_its_hosts() {
    // ShouldAttachPolicy: a ServiceEntry targetRef binds the services of the External registry
    // whose object is that ServiceEntry, a Service targetRef only Kubernetes Services.
    let services = applied_per_service(&[telemetry(
        "external-quiet",
        "shop",
        1,
        "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: external}], accessLogging: [{disabled: true}]}",
    )]);
    let quiet = Some((traced("otel", 25.0, false), true));
    assert_eq!(services["api.example.com"], quiet);
    assert_eq!(services["files.example.com"], quiet);
    assert_eq!(services[REVIEWS], None);
    let services = applied_per_service(&[telemetry(
        "wrong-kind",
        "shop",
        1,
        "{targetRefs: [{kind: Service, name: external}], accessLogging: [{disabled: true}]}",
    )]);
    assert_eq!(services["api.example.com"], None);
    let services = applied_per_service(&[telemetry(
        "wrong-registry",
        "shop",
        1,
        "{targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: reviews}], accessLogging: [{disabled: true}]}",
    )]);
    assert_eq!(services[REVIEWS], None);
}

/// A service's Telemetry whose entries are all for the client side leaves the waypoint's
/// tracing, and its access log on. Not the waypoint's own log, though: with every entry for
/// the other side istiod's `mergeLogs` (`pilot/pkg/model/telemetry.go`) keeps no provider, not
/// even the default `envoy`, so `AccessLogging` answers nothing and the service's chain falls
/// back to the mesh's `accessLogFile` (`pilot/pkg/networking/core/accesslog.go`), where the
/// waypoint's own chain has the default provider: the same line to the same file here, from
/// another source, so the service carries its own entry.
#[test]
fn a_services_client_side_entries_do_not_apply_at_the_waypoint() {
    let services = applied_per_service(&[telemetry(
        "reviews-client",
        "shop",
        1,
        "{targetRefs: [{kind: Service, name: reviews}], tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 0}], accessLogging: [{match: {mode: CLIENT}, disabled: true}]}",
    )]);
    assert_eq!(services["*"], Some((traced("otel", 25.0, false), false)));
    assert_eq!(
        services[REVIEWS],
        Some((traced("otel", 25.0, false), false))
    );
}

/// The waypoint's custom tags, by name: `tag=literal:value`, `tag=env:NAME|default`,
/// `tag=header:name|default`, `tag=formatter:format`.
fn custom_tags(telemetries: &[String]) -> Vec<String> {
    use weft_proto::waypoint::custom_tag::Type;
    let index = validated(&format!("{MESH}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let config = waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let tracing = config.tracing.expect("tracing");
    tracing
        .custom_tags
        .iter()
        .map(|t| {
            let source = |s: &weft_proto::waypoint::TagFromName| {
                format!("{}|{}", s.name, s.default_value.as_deref().unwrap_or("-"))
            };
            let value = match t.r#type.as_ref().expect("a source") {
                Type::Literal(v) => format!("literal:{v}"),
                Type::Environment(s) => format!("env:{}", source(s)),
                Type::Header(s) => format!("header:{}", source(s)),
                Type::Formatter(v) => format!("formatter:{v}"),
            };
            format!("{}={value}", t.tag)
        })
        .collect()
}

/// istiod's `Telemetries.Tracing`: the last applicable entry (root namespace, then the
/// proxy's namespace, then those binding it) that sets `customTags` replaces the whole set, a
/// shallow merge; an entry that sets none, or one for the other side, leaves them.
#[test]
fn custom_tags_of_the_narrowest_telemetry_replace_the_wider_ones_whole() {
    let root = telemetry(
        "mesh-default",
        "istio-system",
        1,
        "{tracing: [{customTags: {mesh: {literal: {value: root}}, cluster: {environment: {name: CLUSTER, defaultValue: c1}}}}]}",
    );
    let namespace = telemetry(
        "shop",
        "shop",
        2,
        "{tracing: [{customTags: {team: {literal: {value: shop}}, user: {header: {name: x-user}}}}]}",
    );
    let sampling_only = telemetry(
        "for-waypoint",
        "shop",
        3,
        "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], tracing: [{randomSamplingPercentage: 50}, {match: {mode: CLIENT}, customTags: {client: {literal: {value: side}}}}]}",
    );
    assert_eq!(
        custom_tags(std::slice::from_ref(&root)),
        ["cluster=env:CLUSTER|c1", "mesh=literal:root"]
    );
    let narrower = ["team=literal:shop", "user=header:x-user|-"];
    assert_eq!(custom_tags(&[root.clone(), namespace.clone()]), narrower);
    assert_eq!(custom_tags(&[root, namespace, sampling_only]), narrower);
    assert!(custom_tags(&[]).is_empty());
}

/// istiod's `buildCustomTagsFromProvider`: a `formatter` tag becomes Envoy's `value` tag, its
/// substitution format carried as written, beside the tags of the other sources.
#[test]
fn a_formatter_tag_carries_its_substitution_format_to_the_waypoint() {
    let namespace = telemetry(
        "shop",
        "shop",
        1,
        "{tracing: [{customTags: {call: {formatter: {value: '%REQ(:METHOD)% %RESPONSE_CODE%'}}, route: {formatter: {value: '%ROUTE_NAME%'}}, team: {literal: {value: shop}}}}]}",
    );
    assert_eq!(
        custom_tags(&[namespace]),
        [
            "call=formatter:%REQ(:METHOD)% %RESPONSE_CODE%",
            "route=formatter:%ROUTE_NAME%",
            "team=literal:shop",
        ]
    );
}

/// The waypoint's metric overrides and each served host's own (`None`: the waypoint's), as
/// `metric:disabled:-removed,+upserted` strings, sorted.
fn metric_overrides(
    telemetries: &[String],
) -> std::collections::BTreeMap<String, Option<Vec<String>>> {
    let index = validated(&format!("{MESH}{SERVED_ELSEWHERE}{}", telemetries.concat()));
    let settings = MeshSettings {
        mesh: Arc::new(MeshConfigWatch::fixed(parse("mesh", MESH_CONFIG).unwrap())),
        ..Default::default()
    };
    let config = waypoint_configs(&index, &settings, &mut Vec::new())
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let shown = |overrides: &[weft_proto::waypoint::MetricOverride]| {
        overrides
            .iter()
            .map(|o| {
                let metric = weft_proto::waypoint::RequestMetric::try_from(o.metric)
                    .unwrap()
                    .as_str_name();
                let mut tags: Vec<String> =
                    o.removed_tags.iter().map(|t| format!("-{t}")).collect();
                tags.extend(o.upserted_tags.iter().map(|t| format!("+{t}", t = t.tag)));
                format!("{metric}:{}:{}", o.disabled, tags.join(","))
            })
            .collect::<Vec<_>>()
    };
    let mut out: std::collections::BTreeMap<_, _> = config
        .services
        .iter()
        .map(|s| {
            (
                s.hostname.clone(),
                s.telemetry.as_ref().map(|t| shown(&t.metric_overrides)),
            )
        })
        .collect();
    out.insert("*".to_owned(), Some(shown(&config.metric_overrides)));
    out
}

#[test]
fn metric_overrides_merge_by_metric_and_tag_narrowest_last() {
    // Root: remove grpc_response_status from every metric and disable the request size;
    // namespace: upsert a tag on the request count and turn the request size back on;
    // reviews' own: disable the duration, remove the tag the namespace added.
    let services = metric_overrides(&[
        telemetry(
            "root",
            "istio-system",
            1,
            "{metrics: [{overrides: [{tagOverrides: {grpc_response_status: {operation: REMOVE}}}, {match: {metric: REQUEST_SIZE}, disabled: true}]}]}",
        ),
        telemetry(
            "namespace",
            "shop",
            2,
            "{metrics: [{providers: [{name: prometheus}], overrides: [{match: {metric: REQUEST_COUNT, mode: SERVER}, tagOverrides: {request_host: {value: request.host}}}, {match: {metric: REQUEST_SIZE}, disabled: false}]}]}",
        ),
        telemetry(
            "reviews",
            "shop",
            3,
            "{targetRefs: [{kind: Service, name: reviews}], metrics: [{overrides: [{match: {metric: REQUEST_DURATION}, disabled: true}, {match: {metric: REQUEST_COUNT}, tagOverrides: {request_host: {operation: REMOVE}}}]}]}",
        ),
    ]);
    assert_eq!(
        services["*"],
        Some(vec![
            "REQUEST_COUNT:false:-grpc_response_status,+request_host".to_owned(),
            "REQUEST_DURATION:false:-grpc_response_status".to_owned(),
            "REQUEST_SIZE:false:-grpc_response_status".to_owned(),
            "RESPONSE_SIZE:false:-grpc_response_status".to_owned(),
            "TCP_OPENED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_CLOSED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_SENT_BYTES:false:-grpc_response_status".to_owned(),
            "TCP_RECEIVED_BYTES:false:-grpc_response_status".to_owned(),
        ])
    );
    assert_eq!(
        services[REVIEWS],
        Some(vec![
            "REQUEST_COUNT:false:-grpc_response_status,-request_host".to_owned(),
            "REQUEST_DURATION:true:".to_owned(),
            "REQUEST_SIZE:false:-grpc_response_status".to_owned(),
            "RESPONSE_SIZE:false:-grpc_response_status".to_owned(),
            "TCP_OPENED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_CLOSED_CONNECTIONS:false:-grpc_response_status".to_owned(),
            "TCP_SENT_BYTES:false:-grpc_response_status".to_owned(),
            "TCP_RECEIVED_BYTES:false:-grpc_response_status".to_owned(),
        ])
    );
    assert_eq!(services[RATINGS], None);
}

#[test]
fn metric_overrides_follow_the_side_all_metrics_and_the_providers() {
    let waypoint = |spec: &str| {
        metric_overrides(&[telemetry("t", "shop", 1, spec)])
            .remove("*")
            .unwrap()
            .unwrap()
    };
    // A waypoint reports its server side: a CLIENT entry changes nothing there.
    assert!(
        waypoint("{metrics: [{overrides: [{match: {mode: CLIENT}, disabled: true}]}]}").is_empty()
    );
    // Disabled on all metrics, then one metric changed by a later entry: istiod turns the
    // side's metrics back on.
    let all_off: Vec<String> = [
        "REQUEST_COUNT",
        "REQUEST_DURATION",
        "REQUEST_SIZE",
        "RESPONSE_SIZE",
        "TCP_OPENED_CONNECTIONS",
        "TCP_CLOSED_CONNECTIONS",
        "TCP_SENT_BYTES",
        "TCP_RECEIVED_BYTES",
    ]
    .iter()
    .map(|m| format!("{m}:true:"))
    .collect();
    assert_eq!(
        waypoint("{metrics: [{overrides: [{disabled: true}]}]}"),
        all_off
    );
    assert_eq!(
        waypoint(
            "{metrics: [{overrides: [{match: {metric: ALL_METRICS, mode: SERVER}, disabled: true}, {match: {metric: RESPONSE_SIZE}, tagOverrides: {x: {value: \"'y'\"}}}]}]}"
        ),
        ["RESPONSE_SIZE:false:+x"]
    );
    // The last providers named leave Prometheus out: no metrics at all, as istiod builds no
    // stats filter; an entry for another provider changes nothing of Prometheus'.
    assert_eq!(
        waypoint("{metrics: [{providers: [{name: stackdriver}]}]}"),
        all_off
    );
    assert!(
        waypoint("{metrics: [{providers: [{name: stackdriver}], overrides: [{disabled: true}]}, {providers: [{name: prometheus}]}]}")
            .is_empty()
    );
    // An expression Weft does not evaluate, or a name Prometheus refuses, is not sent
    // (validation reported it).
    assert_eq!(
        waypoint(
            "{metrics: [{overrides: [{match: {metric: REQUEST_COUNT}, tagOverrides: {peer: {value: upstream_peer.istio_version}, bad-name: {value: request.host}, ok: {value: response.code}}}]}]}"
        ),
        ["REQUEST_COUNT:false:+ok"]
    );
}

#[test]
fn tcp_metric_overrides_follow_the_side_and_merge_as_the_request_ones() {
    let waypoint = |specs: &[&str]| {
        let telemetries: Vec<String> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| telemetry(&format!("t{i}"), "shop", i as u32 + 1, spec))
            .collect();
        metric_overrides(&telemetries).remove("*").unwrap().unwrap()
    };
    // The client side is a gateway's: nothing changes at a waypoint.
    assert!(
        waypoint(&[
            "{metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES, mode: CLIENT}, disabled: true}]}]}"
        ])
        .is_empty()
    );
    assert_eq!(
        waypoint(&[
            "{metrics: [{overrides: [{match: {metric: TCP_SENT_BYTES, mode: CLIENT_AND_SERVER}, disabled: true}, {match: {metric: TCP_OPENED_CONNECTIONS, mode: SERVER}, tagOverrides: {destination_principal: {operation: REMOVE}, peer_port: {value: source.port}}}]}]}"
        ]),
        [
            "TCP_OPENED_CONNECTIONS:false:-destination_principal,+peer_port",
            "TCP_SENT_BYTES:true:",
        ]
    );
    // A narrower Telemetry turns the metric back on and keeps the wider one's tags.
    assert_eq!(
        waypoint(&[
            "{metrics: [{overrides: [{match: {metric: TCP_RECEIVED_BYTES}, disabled: true, tagOverrides: {cluster: {value: xds.cluster_name}}}]}]}",
            "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], metrics: [{overrides: [{match: {metric: TCP_RECEIVED_BYTES}, disabled: false}]}]}",
        ]),
        ["TCP_RECEIVED_BYTES:false:+cluster"]
    );
}
