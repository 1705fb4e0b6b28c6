//! The OTLP/gRPC export against real receivers on loopback: the collector's metadata and
//! deadline arrive with each call, and a receiver slower than the deadline fails its export
//! (counted) without holding back the next one.

use std::net::SocketAddr;

use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use tokio::sync::mpsc;
use tonic::metadata::MetadataMap;

use super::*;

/// A `TraceService` that answers every call and hands on its metadata.
struct Receiver {
    calls: mpsc::UnboundedSender<MetadataMap>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.calls.send(request.metadata().clone());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// Serves a [`Receiver`] on a loopback port.
async fn receiver() -> (SocketAddr, mpsc::UnboundedReceiver<MetadataMap>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (calls, received) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Receiver { calls }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (address, received)
}

/// An HTTP/2 server on a loopback port that takes every call and never answers it, whatever
/// its `grpc-timeout` says; each call's arrival is handed on.
async fn stalled_receiver() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (arrivals, arrived) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let arrivals = arrivals.clone();
            let service = service_fn(move |_: http::Request<hyper::body::Incoming>| {
                let _ = arrivals.send(());
                std::future::pending::<Result<http::Response<Empty<Bytes>>, hyper::Error>>()
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (address, arrived)
}

fn collector(address: SocketAddr, grpc: GrpcExport) -> Arc<Collector> {
    Arc::new(Collector {
        endpoints: vec![address.to_string()],
        service_name: "waypoint.shop".to_owned(),
        http: None,
        grpc,
    })
}

/// `grpc-timeout` read back (`<digits><unit>`, gRPC's wire format).
fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// Waits until `done` holds, at most `within`; whether it did.
async fn until(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while !done() {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

#[tokio::test]
async fn each_call_carries_the_collectors_metadata_and_deadline() {
    let (address, mut calls) = receiver().await;
    let exporter = BatchExporter::<Spans>::default();
    exporter.spawn();
    let metadata = |name: &'static str, value: &'static str| {
        (
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        )
    };
    let collector = collector(
        address,
        GrpcExport {
            timeout: Some(Duration::from_secs(3)),
            metadata: vec![
                metadata("authentication", "token-xxxxx"),
                metadata("x-tenant", "a"),
                metadata("x-tenant", "b"),
            ],
        },
    );
    exporter.submit(collector, Span::default());
    let call = tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("no export reached the receiver within 10 s")
        .unwrap();
    assert_eq!(call.get("authentication").unwrap(), "token-xxxxx");
    let tenants: Vec<_> = call
        .get_all("x-tenant")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    assert_eq!(tenants, ["a", "b"]);
    let deadline = grpc_timeout(&call).expect("a grpc-timeout");
    assert!(
        deadline <= Duration::from_secs(3) && deadline > Duration::from_secs(2),
        "{deadline:?}"
    );
    assert!(until(Duration::from_secs(10), || exporter.exported() == 1).await);
    assert_eq!(exporter.failed(), 0);
}

/// The exporter sends one batch at a time: a collector that never answers holds the next
/// batch back for as long as its deadline, which the collector's `timeout` bounds (below the
/// waypoint's own [`EXPORT_TIMEOUT`], which is what it would wait otherwise).
#[tokio::test]
async fn a_collector_slower_than_its_deadline_fails_the_export_without_holding_back_the_next() {
    let (stalled, mut arrivals) = stalled_receiver().await;
    let (answering, mut calls) = receiver().await;
    let exporter = BatchExporter::<Spans>::default();
    exporter.spawn();
    let slow = collector(
        stalled,
        GrpcExport {
            timeout: Some(Duration::from_millis(300)),
            metadata: Vec::new(),
        },
    );
    exporter.submit(slow, Span::default());
    tokio::time::timeout(Duration::from_secs(10), arrivals.recv())
        .await
        .expect("the export never reached the stalled receiver")
        .unwrap();
    // The stalled export is under way: the next span waits for it to end.
    exporter.submit(collector(answering, GrpcExport::default()), Span::default());
    let bound = EXPORT_TIMEOUT - Duration::from_secs(1);
    tokio::time::timeout(bound, calls.recv())
        .await
        .unwrap_or_else(|_| panic!("the next export waited {bound:?} behind a stalled collector"))
        .unwrap();
    assert_eq!(
        exporter.failed(),
        1,
        "the stalled export is dropped and counted"
    );
    assert!(until(Duration::from_secs(10), || exporter.exported() == 1).await);
}
