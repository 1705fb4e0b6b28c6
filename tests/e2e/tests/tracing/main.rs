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

mod call_by_call;
mod ingress;
mod per_service;

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
