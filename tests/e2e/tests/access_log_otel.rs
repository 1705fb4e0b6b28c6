//! Istio's OpenTelemetry access-log provider end to end: the mesh config declares an
//! `envoyOtelAls` provider (Istio's `EnvoyOpenTelemetryLogProvider`) whose collector is a
//! Service of the testbed, and a Telemetry attached to the waypoint selects it with the filter
//! `response.code >= 400`. The waypoint exports each admitted request as an OTLP LogRecord
//! over gRPC (`LogsService/Export`) to a real receiver this test serves in the collector's
//! pod: a request answered 503 arrives with the provider's text format as its body and its
//! labels as attributes; one answered 200 never does. Needs root.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_service};
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};

const COLLECTOR_PORT: u16 = 4317;

const OTEL_COLLECTOR: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: otel-collector, namespace: shop}
spec:
  clusterIP: 10.96.0.77
  selector: {app: otel-collector}
  ports:
  - {name: grpc-otlp, port: 4317}
"#;

/// Istio's Telemetry attached to the waypoint: the OpenTelemetry provider, failures only.
const FAILURES_TO_OTEL: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: failures, namespace: shop}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  accessLogging:
  - providers: [{name: otel-logs}]
    filter: {expression: "response.code >= 400"}
"#;

const MESH_CONFIG: &str = r#"
extensionProviders:
- name: otel-logs
  envoyOtelAls:
    service: otel-collector.shop.svc.cluster.local
    port: 4317
    logName: shop-access
    logFormat:
      text: "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %UPSTREAM_CLUSTER%"
      labels:
        code: "%RESPONSE_CODE%"
        path: "%REQ(:PATH)%"
        upstream: "%UPSTREAM_HOST%"
        flags: "%RESPONSE_FLAGS%"
"#;

/// Every export request the collector received.
#[derive(Clone, Default)]
struct Receiver {
    requests: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

#[tonic::async_trait]
impl LogsService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportLogsServiceRequest>,
    ) -> Result<tonic::Response<ExportLogsServiceResponse>, tonic::Status> {
        self.requests.lock().unwrap().push(request.into_inner());
        Ok(tonic::Response::new(ExportLogsServiceResponse::default()))
    }
}

impl Receiver {
    fn records(&self) -> Vec<LogRecord> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .flat_map(|r| &r.resource_logs)
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| s.log_records.clone())
            .collect()
    }
}

fn text(value: Option<&AnyValue>) -> Option<&str> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn attribute<'r>(record: &'r LogRecord, key: &str) -> Option<&'r str> {
    record
        .attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| text(kv.value.as_ref()))
}

#[test]
fn a_waypoint_exports_only_failing_requests_as_otlp_log_records() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            PodSpec::client("otel-collector", "node2", "shop").not_enrolled(),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{OTEL_COLLECTOR}---\n{}",
                reviews_service(false),
                waypoint_resources("shop")
            ),
            mesh_config: MESH_CONFIG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let receiver = Receiver::default();
    let _collector = mesh.serve_grpc(
        "otel-collector",
        COLLECTOR_PORT,
        tonic::service::Routes::new(LogsServiceServer::new(receiver.clone())),
    );
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    mesh.await_waypoint("waypoint", "a Telemetry selecting the OpenTelemetry provider", || {
        mesh.write_config("telemetry.yaml", FAILURES_TO_OTEL)
    })
    .expect("the waypoint applies the Telemetry");

    let ok = mesh.curl_with("client", &[&format!("http://{VIP}/fine")]);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let failed = mesh.curl_with("client", &[&format!("http://{VIP}/broken?status=503")]);
    assert_eq!(failed.status, 503, "{}", failed.body);
    assert!(
        mesh.eventually(Duration::from_secs(15), || !receiver.records().is_empty()),
        "no LogRecord reached the collector\n{}\n{}",
        mesh.waypoint_metrics("waypoint"),
        mesh.log_of("waypoint-waypoint")
    );
    // Records leave in the order their requests end: the 200, had it been admitted, would
    // have been exported with the 503 or before it.
    let records = receiver.records();
    assert_eq!(records.len(), 1, "{records:#?}");
    let record = &records[0];
    let cluster = "outbound|80||reviews.shop.svc.cluster.local";
    assert_eq!(
        text(record.body.as_ref()),
        Some(format!("GET /broken?status=503 503 {cluster}").as_str()),
        "{record:?}"
    );
    assert_eq!(attribute(record, "code"), Some("503"));
    assert_eq!(attribute(record, "path"), Some("/broken?status=503"));
    assert_eq!(attribute(record, "flags"), Some("-"));
    let upstream = attribute(record, "upstream").unwrap_or_default();
    assert_eq!(
        upstream.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()),
        Some(mesh.pod("reviews-v1").ip.into()),
        "the upstream is the reviews pod: {record:?}"
    );
    assert!(record.time_unix_nano > 0, "{record:?}");
    // Istio sets Envoy's `disable_builtin_labels`: no `log_name` or node labels.
    let requests = receiver.requests.lock().unwrap().clone();
    let resource = requests[0].resource_logs[0].resource.clone().unwrap_or_default();
    assert!(resource.attributes.is_empty(), "{resource:?}");
    let metrics = mesh.waypoint_metrics("waypoint");
    for sample in [
        "weft_access_log_records_exported_total 1",
        "weft_access_log_records_dropped_total 0",
        "weft_access_log_records_failed_total 0",
    ] {
        assert!(metrics.contains(sample), "{sample}: {metrics}");
    }
}
