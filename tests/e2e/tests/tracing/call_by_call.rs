//! One bookinfo request through productpage -> reviews -> ratings yields one trace whose
//! spans nest call by call.

use super::*;

/// Istio's `destination-rule-reviews.yaml` and `virtual-service-reviews-v2` as the samples
/// write them.
const BOOKINFO_TRACING: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: default}
spec:
  clusterIP: 10.96.1.77
  selector: {app: otel-collector}
  ports:
  - {name: grpc-otlp, port: 4317}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
spec:
  host: reviews
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
  - name: v3
    labels:
      version: v3
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: reviews
spec:
  hosts:
  - reviews
  http:
  - name: reviews-v2
    match:
    - uri: {prefix: /reviews/}
    route:
    - destination:
        host: reviews
        subset: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings-split
spec:
  hosts:
  - ratings
  http:
  - route:
    - destination: {host: ratings}
      weight: 100
    - destination: {host: ratings}
      weight: 0
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  tracing:
  - customTags:
      mesh: {literal: {value: root}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bookinfo-tags, namespace: default}
spec:
  tracing:
  - customTags:
      team: {literal: {value: bookinfo}}
      user: {header: {name: end-user, defaultValue: anonymous}}
      plan: {header: {name: x-plan, defaultValue: free}}
      rack: {environment: {name: WEFT_E2E_UNSET_RACK, defaultValue: no-rack}}
"#;

const BOOKINFO_MESH_CONFIG: &str = r#"
enableTracing: true
defaultConfig:
  tracing: {sampling: 100}
defaultProviders:
  tracing: [otel]
extensionProviders:
- name: otel
  opentelemetry: {service: otel-collector.default.svc.cluster.local, port: 4317}
"#;

fn identity(service_account: &str) -> String {
    format!("spiffe://cluster.local/ns/default/sa/{service_account}")
}

#[test]
fn a_bookinfo_request_yields_one_trace_whose_spans_nest_call_by_call() {
    let mut pods = bookinfo::pods();
    pods.push(PodSpec::client("otel-collector", "node2", "default").not_enrolled());
    let mesh = Mesh::start(
        pods,
        MeshOptions {
            config: format!("{}---{BOOKINFO_TRACING}", bookinfo::config(true)),
            mesh_config: BOOKINFO_MESH_CONFIG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start bookinfo");
    let (receiver, _runtime) = start_receiver(&mesh, "otel-collector");
    let page_url = format!("http://{PRODUCTPAGE}/productpage");
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            let page = mesh.curl_with("curl", &[&page_url]);
            page.status == 200 && ratings(&page.json()).status == 200
        }),
        "productpage -> reviews v2 -> ratings does not answer\n{}",
        mesh.logs()
    );

    // One request from the client, with no trace context: the waypoint starts the trace at
    // productpage, and each app passes on what it received.
    let traced_url = format!("http://{PRODUCTPAGE}/productpage?trace=bookinfo");
    let page = mesh.curl_with("curl", &["-H", "end-user: jason", &traced_url]);
    assert_eq!(page.status, 200, "{}", page.body);
    let reply = page.json();
    assert_eq!(ratings(&reply).status, 200, "{reply}");
    let root = || {
        receiver
            .all()
            .into_iter()
            .find(|(_, s)| tag(s, "http.url").as_deref() == Some(traced_url.as_str()))
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || root().is_some()),
        "no span for productpage's request reached the collector: {:?}\n{}",
        receiver.all(),
        mesh.log_of("waypoint-waypoint")
    );
    let (_, productpage) = root().unwrap();
    let trace = hex(&productpage.trace_id);
    // Spans leave in the order their requests end: the calls productpage made ended before it.
    assert!(
        mesh.eventually(Duration::from_secs(15), || receiver
            .with_trace(&trace)
            .len()
            >= 4),
        "trace {trace} lacks spans: {:?}",
        receiver.with_trace(&trace)
    );
    let spans: Vec<Span> = receiver
        .with_trace(&trace)
        .into_iter()
        .map(|(service, span)| {
            assert_eq!(service, "waypoint.default", "{span:?}");
            span
        })
        .collect();
    let by_cluster = |cluster: &str| {
        let found: Vec<&Span> = spans
            .iter()
            .filter(|s| tag(s, "upstream_cluster").as_deref() == Some(cluster))
            .collect();
        assert_eq!(found.len(), 1, "one span to {cluster} in {spans:#?}");
        found[0].clone()
    };
    let productpage_span = by_cluster("outbound|9080||productpage.default.svc.cluster.local");
    let details = by_cluster("outbound|9080||details.default.svc.cluster.local");
    let reviews = by_cluster("outbound|9080|v2|reviews.default.svc.cluster.local");
    let ratings_span = by_cluster("outbound|9080||ratings.default.svc.cluster.local");
    assert_eq!(spans.len(), 4, "{spans:#?}");
    assert_eq!(productpage_span.span_id, productpage.span_id);

    // The nesting: productpage's span is the root; details and reviews are its children;
    // ratings is reviews' child.
    assert!(
        productpage_span.parent_span_id.is_empty(),
        "{productpage_span:?}"
    );
    assert_eq!(details.parent_span_id, productpage_span.span_id);
    assert_eq!(reviews.parent_span_id, productpage_span.span_id);
    assert_eq!(ratings_span.parent_span_id, reviews.span_id);

    // Istio's tags: who called whom, by identity, and one request id through the trace (the
    // waypoint made it at productpage; the apps passed it on).
    // Span names as istiod's route decorators give them: a service's default route
    // (`host:port/*`), the one destination of a route and its match's prefix (not the
    // route's name), and a VirtualService's name for a route of several destinations.
    for (span, name) in [
        (
            &productpage_span,
            "productpage.default.svc.cluster.local:9080/*",
        ),
        (&details, "details.default.svc.cluster.local:9080/*"),
        (&reviews, "reviews.default.svc.cluster.local:9080/reviews/*"),
        (&ratings_span, "ratings-split:9080/*"),
    ] {
        assert_eq!(span.name, name, "{span:?}");
        // Telemetry's custom tags: the default namespace's replace the root namespace's
        // whole; a header the apps pass on, a header's default, an unset variable's default.
        for (key, value) in [
            ("team", Some("bookinfo")),
            ("user", Some("jason")),
            ("plan", Some("free")),
            ("rack", Some("no-rack")),
            ("mesh", None),
        ] {
            assert_eq!(tag(span, key).as_deref(), value, "{key}: {span:?}");
        }
    }
    for (span, source, destination, url) in [
        (
            &productpage_span,
            "curl",
            "bookinfo-productpage",
            traced_url.as_str(),
        ),
        (
            &details,
            "bookinfo-productpage",
            "bookinfo-details",
            "http://10.96.1.20:9080/details/0",
        ),
        (
            &reviews,
            "bookinfo-productpage",
            "bookinfo-reviews",
            "http://10.96.1.40:9080/reviews/0",
        ),
        (
            &ratings_span,
            "bookinfo-reviews",
            "bookinfo-ratings",
            "http://10.96.1.30:9080/ratings/0",
        ),
    ] {
        assert_eq!(tag(span, "http.url").as_deref(), Some(url), "{span:?}");
        assert_eq!(
            tag(span, "http.status_code").as_deref(),
            Some("200"),
            "{span:?}"
        );
        assert_eq!(
            tag(span, "source.principal"),
            Some(identity(source)),
            "{span:?}"
        );
        assert_eq!(
            tag(span, "destination.principal"),
            Some(identity(destination)),
            "{span:?}"
        );
        assert_eq!(tag(span, "istio.namespace").as_deref(), Some("default"));
        assert_eq!(
            tag(span, "guid:x-request-id"),
            tag(&productpage_span, "guid:x-request-id"),
            "{span:?}"
        );
    }
    assert!(
        tag(&productpage_span, "guid:x-request-id").is_some_and(|id| id.len() == 36),
        "{productpage_span:?}"
    );
}
