//! Telemetry attached to the services a waypoint serves: each service's own, layered as
//! istiod layers them.

use super::*;

/// Two more services behind the waypoint of `shop`: `ratings` beside reviews, `payments` in
/// the namespace `billing` (its Service names shop's waypoint, which admits every namespace),
/// and the ServiceEntry `external` of `shop` with two hosts.
pub(super) const SERVED_ELSEWHERE: &str = r#"
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

pub(super) const REVIEWS: &str = "reviews.shop.svc.cluster.local";
pub(super) const RATINGS: &str = "ratings.shop.svc.cluster.local";
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
