//! Spans over OTLP/HTTP (Istio's `opentelemetry.http`): the waypoint `POST`s a protobuf
//! `ExportTraceServiceRequest` to the collector at the configured path, with the configured
//! headers, instead of calling its gRPC service.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use tokio::sync::mpsc;
use weft_proto::waypoint as proto;

use crate::harness::*;

/// One export an OTLP/HTTP receiver took.
struct Export {
    path: String,
    headers: http::HeaderMap,
    request: ExportTraceServiceRequest,
}

/// An OTLP/HTTP receiver on loopback: every `POST` whose body decodes as an
/// `ExportTraceServiceRequest` is answered 200 and handed on; another is answered 400.
async fn otlp_http_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<Export>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (exports, received) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let exports = exports.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let exports = exports.clone();
                async move {
                    let (parts, body) = request.into_parts();
                    let body = body.collect().await?.to_bytes();
                    let status = match ExportTraceServiceRequest::decode(body) {
                        Ok(request) if parts.method == http::Method::POST => {
                            let _ = exports.send(Export {
                                path: parts.uri.path().to_owned(),
                                headers: parts.headers,
                                request,
                            });
                            StatusCode::OK
                        }
                        _ => StatusCode::BAD_REQUEST,
                    };
                    Ok::<_, hyper::Error>(
                        Response::builder()
                            .status(status)
                            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
                            .body(Full::new(Bytes::new()))
                            .unwrap(),
                    )
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (address, received)
}

#[tokio::test]
async fn a_requests_span_is_posted_to_the_otlp_http_path_with_the_configured_headers() {
    let (harness, v1, _v2) = routed_to_v1().await;
    let (collector, mut exports) = otlp_http_receiver().await;
    let mut traced = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    traced.tracing = Some(proto::Tracing {
        provider: "otel-http".to_owned(),
        collector: vec![collector.to_string()],
        random_sampling_percentage: 100.0,
        http: Some(proto::OtlpHttp {
            path: "/otlp/v1/traces".to_owned(),
            timeout: Some(duration(Duration::from_secs(5))),
            headers: vec![proto::OtlpHttpHeader {
                name: "x-tenant".to_owned(),
                value: "team-a".to_owned(),
            }],
        }),
        ..Default::default()
    });
    harness.waypoint.apply_config(traced).unwrap();

    let (status, _, _) = harness.get("/reviews/7").await;
    assert_eq!(status, StatusCode::OK);

    let export = tokio::time::timeout(Duration::from_secs(10), exports.recv())
        .await
        .expect("no export reached the OTLP/HTTP receiver within 10 s")
        .unwrap();
    assert_eq!(export.path, "/otlp/v1/traces");
    assert_eq!(export.headers["content-type"], "application/x-protobuf");
    assert_eq!(export.headers["x-tenant"], "team-a");
    let spans: Vec<_> = export
        .request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    assert_eq!(spans.len(), 1, "{spans:?}");
    let url = spans[0]
        .attributes
        .iter()
        .find(|a| a.key == "http.url")
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            any_value::Value::StringValue(s) => s.clone(),
            other => format!("{other:?}"),
        });
    assert!(
        url.as_deref().is_some_and(|u| u.ends_with("/reviews/7")),
        "{url:?}"
    );
}
