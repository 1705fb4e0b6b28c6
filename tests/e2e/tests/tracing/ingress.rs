//! A request through the ingress gateway is one trace rooted at the gateway's span.

use super::*;

/// reviews behind its waypoint, asking gateways to go through it, and an Istio ingress gateway
/// routing `shop.example.com` to it.
const EDGE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels: {app: reviews, istio.io/use-waypoint: waypoint, istio.io/ingress-use-waypoint: "true"}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [shop-gateway]
  http:
  - name: to-reviews
    match: [{uri: {prefix: /from}}, {uri: {prefix: /}}]
    route: [{destination: {host: reviews.shop.svc.cluster.local, port: {number: 80}}}]
"#;

/// Istio's Telemetry for the gateway's pod alone, by selector in its namespace: sample nothing.
const GATEWAY_NO_SAMPLING: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ingress-no-sampling, namespace: edge}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  tracing:
  - randomSamplingPercentage: 0
"#;

#[test]
fn a_request_through_the_ingress_gateway_is_a_trace_rooted_at_the_gateway() {
    let mut gateway_pod = PodSpec::client("ingress", "node1", "edge")
        .not_enrolled()
        .with_deployment("istio-ingressgateway")
        .with_service_account("ingress");
    gateway_pod.labels = [
        ("istio".to_string(), "ingressgateway".to_string()),
        ("app".to_string(), "istio-ingressgateway".to_string()),
    ]
    .into();
    let mesh = Mesh::start(
        vec![
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            PodSpec::client("otel-collector", "node2", "shop").not_enrolled(),
            gateway_pod,
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config: format!(
                "{EDGE}---\n{OTEL_COLLECTOR}---\n{}",
                waypoint_resources("shop")
            ),
            mesh_config: MESH_CONFIG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let (receiver, _runtime) = start_receiver(&mesh, "otel-collector");
    let credentials = mesh.dir().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let gateway = mesh
        .start_gateway("ingress", &credentials)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let resolve = format!("shop.example.com:80:{}", mesh.pod(&gateway.pod).ip);
    // Each request also names the next proxy's span itself (`x-envoy-decorator-operation`),
    // as no client may: the gateway drops it at the edge.
    let outside = |path: &str| {
        mesh.curl_with(
            "outside",
            &[
                "--resolve",
                &resolve,
                "-H",
                "x-envoy-decorator-operation: chosen-by-the-client",
                &format!("http://shop.example.com{path}"),
            ],
        )
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || outside("/ready").status == 200),
        "reviews is not reachable through the gateway: {:?}\n{}",
        outside("/ready"),
        mesh.logs()
    );

    // One request from outside, with no trace context: the gateway starts the trace.
    let url = "http://shop.example.com/from-outside";
    let response = outside("/from-outside");
    assert_eq!(response.status, 200, "{}", response.body);
    let gateway_span = || {
        receiver.all().into_iter().find(|(service, s)| {
            service == "istio-ingressgateway.edge" && tag(s, "http.url").as_deref() == Some(url)
        })
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || gateway_span().is_some()),
        "no span of the gateway reached the collector: {:?}\n{}",
        receiver.all(),
        mesh.log_of("gateway-ingress")
    );
    let (_, root) = gateway_span().unwrap();
    let trace = hex(&root.trace_id);
    // Spans leave in the order their requests end: the waypoint's ended before the gateway's.
    let spans = receiver.with_trace(&trace);
    assert_eq!(
        spans.len(),
        2,
        "the gateway's and the waypoint's: {spans:#?}"
    );
    assert!(root.parent_span_id.is_empty(), "{root:?}");
    assert_eq!(
        root.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Client as i32,
        "a gateway's span is a CLIENT span, as Envoy reports an outbound listener's"
    );
    // Named by the match that took it, as istiod's decorator names the route.
    assert_eq!(root.name, "reviews.shop.svc.cluster.local:80/from*");
    for (key, value) in [
        ("istio.canonical_service", "istio-ingressgateway"),
        ("istio.namespace", "edge"),
        ("http.status_code", "200"),
        (
            "upstream_cluster",
            "outbound|80||reviews.shop.svc.cluster.local",
        ),
    ] {
        assert_eq!(tag(&root, key).as_deref(), Some(value), "{key}: {root:?}");
    }
    let (service, waypoint_span) = spans
        .iter()
        .find(|(service, _)| service != "istio-ingressgateway.edge")
        .unwrap();
    assert_eq!(service, "waypoint.shop");
    // Envoy's egress side sends its operation on (`x-envoy-decorator-operation`) and the
    // ingress side names its span with it, without passing it to the app; the client's own
    // value never got past the gateway.
    assert_eq!(waypoint_span.name, root.name, "{waypoint_span:?}");
    assert_eq!(
        waypoint_span.parent_span_id, root.span_id,
        "the waypoint's span is the gateway's child"
    );
    assert_eq!(
        tag(waypoint_span, "source.principal").as_deref(),
        Some("spiffe://cluster.local/ns/edge/sa/ingress"),
        "{waypoint_span:?}"
    );
    let forwarded: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert!(
        forwarded["headers"]["x-envoy-decorator-operation"].is_null(),
        "{forwarded}"
    );
    assert_eq!(
        forwarded["headers"]["traceparent"],
        format!("00-{trace}-{}-01", hex(&waypoint_span.span_id)).as_str(),
        "the app must see the waypoint's span as its parent"
    );

    // A Telemetry selecting the gateway's pod samples nothing there: the gateway decides not
    // to sample and the waypoint behind it keeps that decision, passing it on.
    mesh.await_waypoint(&gateway.pod, "a Telemetry selecting the gateway", || {
        mesh.write_config("gateway-telemetry.yaml", GATEWAY_NO_SAMPLING)
    })
    .expect("the gateway applies the Telemetry");
    for i in 0..5 {
        let response = outside(&format!("/unsampled-{i}"));
        assert_eq!(response.status, 200, "{}", response.body);
        let forwarded: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        let traceparent = forwarded["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default();
        assert!(
            traceparent.starts_with("00-") && traceparent.ends_with("-00"),
            "at 0% the gateway's decision not to sample reaches the app: {traceparent:?}"
        );
    }
}
