//! Tracing at the waypoint end to end: the controller reads Istio's mesh config (an
//! OpenTelemetry extension provider as the default tracing provider, 100% sampling) and sends
//! each waypoint its collector, resolved to the endpoints of the collector's Service; the
//! waypoint exports one span per sampled request over OTLP/gRPC to a real receiver this test
//! serves (the collector's `TraceService`, on tonic) in a pod of the testbed, and writes its
//! span's context on the request it forwards; Istio's Telemetry resource with
//! `randomSamplingPercentage: 0` in the waypoint's namespace stops its spans and deleting it
//! brings them back; when the mesh config changes to no default provider, the waypoint stops
//! tracing. Every change applies without a restart. On bookinfo, one request from the client
//! through productpage -> reviews -> ratings (the apps passing the trace headers on, as Istio
//! asks of applications) yields one trace whose spans nest call by call. A request from
//! outside through the ingress gateway to a service behind its waypoint yields one trace whose
//! root is the gateway's span (a CLIENT span named as Istio names the gateway), the waypoint's
//! its child; a Telemetry selecting the gateway's pod samples 0% there, and the waypoint keeps
//! that decision. A Telemetry attached to one Service samples 0% for that service's requests
//! at the waypoint while another service behind it is still traced. A provider whose
//! collector's Service does not exist yet configures no tracer, and takes effect once the
//! Service is added. Needs root.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::Span;
use weft_e2e::bookinfo::{self, PRODUCTPAGE, ratings};
use weft_e2e::fixtures::{
    OTEL_COLLECTOR, REVIEWS_VIP as VIP, reviews_service, reviews_with_collector,
};
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};

const COLLECTOR_PORT: u16 = 4317;

const MESH_CONFIG: &str = r#"
enableTracing: true
defaultConfig:
  tracing: {sampling: 100}
defaultProviders:
  tracing: [otel]
extensionProviders:
- name: otel
  opentelemetry: {service: otel-collector.shop.svc.cluster.local, port: 4317}
"#;

/// The spans a collector received, resource by resource flattened.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| string_value(kv.value.as_ref()?))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                spans.extend(scope.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn string_value(value: &opentelemetry_proto::tonic::common::v1::AnyValue) -> Option<String> {
    match value.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn tag(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| string_value(kv.value.as_ref()?))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Receiver {
    fn with_trace(&self, trace: &str) -> Vec<(String, Span)> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, s)| hex(&s.trace_id) == trace)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<(String, Span)> {
        self.spans.lock().unwrap().clone()
    }
}

/// Serves the collector's TraceService on `COLLECTOR_PORT` in the pod's network namespace, on a
/// runtime of its own that lives as long as the test.
fn start_receiver(mesh: &Mesh, pod: &str) -> (Receiver, tokio::runtime::Runtime) {
    let receiver = Receiver::default();
    let routes = tonic::service::Routes::new(TraceServiceServer::new(receiver.clone()));
    let runtime = mesh.serve_grpc(pod, COLLECTOR_PORT, routes);
    (receiver, runtime)
}

/// Istio's Telemetry for the whole namespace of the waypoint: sample nothing.
const NO_SAMPLING: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-sampling, namespace: shop}
spec:
  tracing:
  - randomSamplingPercentage: 0
"#;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

#[test]
fn the_waypoint_exports_a_span_per_sampled_request_and_propagates_its_context() {
    let (pods, options) = reviews_with_collector(MESH_CONFIG);
    let mesh = Mesh::start(pods, options).expect("start the mesh");
    let (receiver, _runtime) = start_receiver(&mesh, "otel-collector");
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");

    // An incoming sampled traceparent: the waypoint's span joins that trace as the caller's
    // child, and the app sees the waypoint's span as its parent.
    let sampled = mesh.curl_with(
        "client",
        &[
            "-H",
            &format!("traceparent: 00-{TRACE}-{PARENT}-01"),
            &format!("http://{VIP}/traced"),
        ],
    );
    assert_eq!(sampled.status, 200, "{}", sampled.body);
    assert!(
        mesh.eventually(Duration::from_secs(15), || !receiver
            .with_trace(TRACE)
            .is_empty()),
        "no span of trace {TRACE} reached the collector: {:?}\n{}",
        receiver.all(),
        mesh.log_of("waypoint-waypoint")
    );
    let spans = receiver.with_trace(TRACE);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let (service, span) = &spans[0];
    assert_eq!(service, "waypoint.shop");
    assert_eq!(hex(&span.parent_span_id), PARENT);
    assert_eq!(tag(span, "http.method").as_deref(), Some("GET"));
    assert_eq!(tag(span, "http.status_code").as_deref(), Some("200"));
    assert_eq!(
        tag(span, "http.url").as_deref(),
        Some(format!("http://{VIP}/traced").as_str())
    );
    assert_eq!(
        tag(span, "upstream_cluster").as_deref(),
        Some("outbound|80||reviews.shop.svc.cluster.local")
    );
    assert_eq!(
        tag(span, "istio.canonical_service").as_deref(),
        Some("waypoint")
    );
    assert!(
        tag(span, "node_id").is_some_and(|id| id.starts_with("waypoint~")),
        "{span:?}"
    );
    let forwarded: serde_json::Value = serde_json::from_str(&sampled.body).unwrap();
    assert_eq!(
        forwarded["headers"]["traceparent"],
        format!("00-{TRACE}-{}-01", hex(&span.span_id)).as_str(),
        "the app must see the waypoint's span as its parent"
    );

    // An incoming decision not to sample is honoured even at 100%, and still propagated.
    let traceparent = forwarded_traceparent(
        &mesh,
        &format!("00-{UNSAMPLED_TRACE}-{PARENT}-00"),
        "/unsampled",
    );
    assert!(
        traceparent.starts_with(&format!("00-{UNSAMPLED_TRACE}-")) && traceparent.ends_with("-00"),
        "{traceparent}"
    );

    // Without a decision, 100% samples: a new trace, with no parent. Spans leave in the order
    // their requests end, so once this one arrived the unsampled one would have too.
    let fresh = mesh.curl_with("client", &[&format!("http://{VIP}/fresh")]);
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    let has_fresh = || {
        receiver
            .all()
            .iter()
            .any(|(_, s)| tag(s, "http.url").is_some_and(|u| u.ends_with("/fresh")))
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), has_fresh),
        "no span for the request without trace context: {:?}",
        receiver.all()
    );
    let all = receiver.all();
    let (_, fresh_span) = all
        .iter()
        .find(|(_, s)| tag(s, "http.url").is_some_and(|u| u.ends_with("/fresh")))
        .unwrap();
    assert!(fresh_span.parent_span_id.is_empty(), "{fresh_span:?}");
    assert_ne!(hex(&fresh_span.trace_id), TRACE);
    assert!(
        receiver.with_trace(UNSAMPLED_TRACE).is_empty(),
        "a span was exported for a request its caller did not sample: {all:?}"
    );
    let metrics = mesh.waypoint_metrics("waypoint");
    assert!(
        metrics.contains("weft_tracing_spans_dropped_total 0"),
        "{metrics}"
    );

    // A Telemetry in the waypoint's namespace samples 0%: requests without a decision are
    // passed on with the flag off and no span leaves; deleting it brings the mesh config's
    // 100% back. Spans leave in the order their requests end, so once the span of the request
    // after the deletion arrived, any of the unsampled ones would have too.
    mesh.await_waypoint("waypoint", "a Telemetry sampling 0%", || {
        mesh.write_config("telemetry.yaml", NO_SAMPLING)
    })
    .expect("the waypoint applies the Telemetry");
    for i in 0..5 {
        let response = mesh.curl_with("client", &[&format!("http://{VIP}/zero-{i}")]);
        assert_eq!(response.status, 200, "{}", response.body);
        let forwarded: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        let traceparent = forwarded["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default();
        assert!(
            traceparent.starts_with("00-") && traceparent.ends_with("-00"),
            "at 0% the waypoint passes its context on unsampled: {traceparent:?}"
        );
    }
    mesh.await_waypoint("waypoint", "the Telemetry deleted", || {
        mesh.remove_config("telemetry.yaml")
    })
    .expect("the waypoint follows the deletion");
    let back = mesh.curl_with("client", &[&format!("http://{VIP}/sampled-again")]);
    assert_eq!(back.status, 200, "{}", back.body);
    let has_url = |suffix: &str| {
        receiver
            .all()
            .iter()
            .any(|(_, s)| tag(s, "http.url").is_some_and(|u| u.ends_with(suffix)))
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || has_url("/sampled-again")),
        "no span once the Telemetry was deleted: {:?}",
        receiver.all()
    );
    let zero: Vec<_> = receiver
        .all()
        .into_iter()
        .filter(|(_, s)| tag(s, "http.url").is_some_and(|u| u.contains("/zero-")))
        .collect();
    assert!(
        zero.is_empty(),
        "spans were exported while the Telemetry sampled 0%: {zero:?}"
    );

    // The mesh config changes to no default provider: the controller follows the file and the
    // waypoint, once it applied the new configuration, no longer traces and passes the
    // caller's context on untouched.
    mesh.await_waypoint("waypoint", "the mesh config without tracing", || {
        mesh.set_mesh_config("defaultConfig: {tracing: {sampling: 100}}\n")
    })
    .expect("the waypoint follows the mesh config");
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        forwarded_traceparent(&mesh, &incoming, "/untraced"),
        incoming,
        "tracing turned off in the mesh config still traces"
    );
}

/// The `traceparent` the app saw on a request from `client` to `path` of the service that
/// carried `traceparent`.
fn forwarded_traceparent(mesh: &Mesh, traceparent: &str, path: &str) -> String {
    let response = mesh.curl_with(
        "client",
        &[
            "-H",
            &format!("traceparent: {traceparent}"),
            &format!("http://{VIP}{path}"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.body);
    let forwarded: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    forwarded["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// istiod skips a tracing provider whose collector's service is not in the registry
/// (`LookupCluster` fails in `pilot/pkg/networking/core/tracing.go`): the waypoint gets no
/// tracer and passes the caller's context on untouched. The collector's Service added to the
/// configuration, the same mesh config takes effect without a restart: the waypoint joins the
/// caller's trace and its span reaches the collector.
#[test]
fn a_provider_takes_effect_once_its_collector_service_is_added() {
    let (pods, mut options) = reviews_with_collector(MESH_CONFIG);
    options.config = format!(
        "{}---\n{}",
        reviews_service(false),
        waypoint_resources("shop")
    );
    let mesh = Mesh::start(pods, options).expect("start the mesh");
    let (receiver, _runtime) = start_receiver(&mesh, "otel-collector");
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    let incoming = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        forwarded_traceparent(&mesh, &incoming, "/no-collector"),
        incoming,
        "a provider without its collector's Service still traces"
    );

    mesh.write_waypoint_config("waypoint", "collector.yaml", OTEL_COLLECTOR)
        .expect("the waypoint applies the configuration with the collector's Service");
    let traceparent = forwarded_traceparent(&mesh, &incoming, "/with-collector");
    assert!(
        traceparent.starts_with(&format!("00-{TRACE}-")) && traceparent != incoming,
        "the waypoint's span must be the app's parent: {traceparent}"
    );
    let has_span = || {
        receiver
            .all()
            .iter()
            .any(|(_, s)| tag(s, "http.url").is_some_and(|u| u.ends_with("/with-collector")))
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), has_span),
        "no span reached the collector once its Service was added: {:?}\n{}",
        receiver.all(),
        mesh.log_of("waypoint-waypoint")
    );
    assert!(
        !receiver
            .all()
            .iter()
            .any(|(_, s)| tag(s, "http.url").is_some_and(|u| u.ends_with("/no-collector"))),
        "{:?}",
        receiver.all()
    );
}

/// `ratings` beside `reviews` in `shop`, behind the same waypoint.
const RATINGS_SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: ratings
  namespace: shop
  labels: {app: ratings, istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.21
  selector: {app: ratings}
  ports:
  - {name: http, port: 80, targetPort: 8080}
"#;

const RATINGS_VIP: &str = "10.96.0.21";

/// Istio's Telemetry attached to the Service `reviews` only: sample nothing there.
const REVIEWS_NO_SAMPLING: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-no-sampling, namespace: shop}
spec:
  targetRefs:
  - {kind: Service, group: "", name: reviews}
  tracing:
  - randomSamplingPercentage: 0
"#;

#[test]
fn a_telemetry_attached_to_a_service_samples_that_service_only_at_the_waypoint() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("ratings-v1", "node2", "shop", "ratings", "v1"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            PodSpec::client("otel-collector", "node2", "shop").not_enrolled(),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{RATINGS_SERVICE}---\n{OTEL_COLLECTOR}---\n{}",
                reviews_service(false),
                waypoint_resources("shop")
            ),
            mesh_config: MESH_CONFIG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let (receiver, _runtime) = start_receiver(&mesh, "otel-collector");
    for vip in [VIP, RATINGS_VIP] {
        mesh.await_reachable("client", &format!("http://{vip}/ready"))
            .expect("the service is reachable through the waypoint");
    }
    mesh.await_waypoint("waypoint", "a Telemetry attached to reviews", || {
        mesh.write_config("reviews-telemetry.yaml", REVIEWS_NO_SAMPLING)
    })
    .expect("the waypoint applies the Telemetry");
    let flag = |vip: &str, path: &str| {
        let response = mesh.curl_with("client", &[&format!("http://{vip}{path}")]);
        assert_eq!(response.status, 200, "{}", response.body);
        let forwarded: serde_json::Value = serde_json::from_str(&response.body).unwrap();
        let traceparent = forwarded["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(traceparent.starts_with("00-"), "{traceparent:?}");
        traceparent
            .rsplit('-')
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    for i in 0..5 {
        assert_eq!(
            flag(VIP, &format!("/reviews-{i}")),
            "00",
            "reviews' own Telemetry samples 0%"
        );
        assert_eq!(
            flag(RATINGS_VIP, &format!("/ratings-{i}")),
            "01",
            "ratings keeps the mesh's 100%"
        );
    }
    // Spans leave in the order their requests end: once ratings' last span arrived, any of
    // reviews' would have too.
    let spans_with = |part: &str| -> Vec<(String, Span)> {
        receiver
            .all()
            .into_iter()
            .filter(|(_, s)| tag(s, "http.url").is_some_and(|u| u.contains(part)))
            .collect()
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || spans_with("/ratings-").len()
            == 5),
        "ratings' spans did not all reach the collector: {:?}\n{}",
        receiver.all(),
        mesh.log_of("waypoint-waypoint")
    );
    let (service, span) = &spans_with("/ratings-4")[0];
    assert_eq!(service, "waypoint.shop");
    assert_eq!(span.name, "ratings.shop.svc.cluster.local:80/*");
    assert!(
        spans_with("/reviews-").is_empty(),
        "reviews' requests were traced: {:?}",
        spans_with("/reviews-")
    );

    // Deleted: reviews is traced again, on the mesh's default.
    mesh.await_waypoint("waypoint", "the Telemetry deleted", || {
        mesh.remove_config("reviews-telemetry.yaml")
    })
    .expect("the waypoint follows the deletion");
    assert_eq!(flag(VIP, "/reviews-again"), "01");
    assert!(
        mesh.eventually(Duration::from_secs(15), || !spans_with("/reviews-again")
            .is_empty()),
        "no span for reviews once its Telemetry was deleted: {:?}",
        receiver.all()
    );
}

/// The collector's Service beside bookinfo, and reviews pinned to v2 (which calls ratings) with
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
