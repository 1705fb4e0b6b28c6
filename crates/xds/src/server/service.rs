//! The gRPC service `envoy.service.discovery.v3.AggregatedDiscoveryService` around a
//! [`DeltaAdsServer`]: the routing tonic's generated server does, with the stream's own codec so
//! its responses are [`DeltaResponse`]s sharing the store's resources.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};
use weft_proto::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use super::DeltaAdsServer;
use super::wire::{AdsCodec, DeltaResponse};

/// The service's full name, as tonic's generated server has it.
pub const SERVICE_NAME: &str = "envoy.service.discovery.v3.AggregatedDiscoveryService";

/// The one method served; every other path is answered `UNIMPLEMENTED`.
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// The tonic service of a [`DeltaAdsServer`], for `Server::builder().add_service(..)`.
#[derive(Debug, Clone)]
pub struct AdsService {
    server: Arc<DeltaAdsServer>,
}

impl AdsService {
    pub(super) fn new(server: DeltaAdsServer) -> Self {
        Self {
            server: Arc::new(server),
        }
    }
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() != DELTA_PATH {
            return Box::pin(async {
                let mut response = http::Response::new(tonic::body::Body::default());
                let headers = response.headers_mut();
                headers.insert(
                    Status::GRPC_STATUS,
                    (tonic::Code::Unimplemented as i32).into(),
                );
                headers.insert(
                    http::header::CONTENT_TYPE,
                    tonic::metadata::GRPC_CONTENT_TYPE,
                );
                Ok(response)
            });
        }
        let method = DeltaMethod(self.server.clone());
        Box::pin(async move { Ok(Grpc::new(AdsCodec).streaming(method, request).await) })
    }
}

/// `DeltaAggregatedResources`, as tonic's streaming handler.
struct DeltaMethod(Arc<DeltaAdsServer>);

impl StreamingService<DeltaDiscoveryRequest> for DeltaMethod {
    type Response = DeltaResponse;
    type ResponseStream = ReceiverStream<Result<DeltaResponse, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move { Ok(server.delta_aggregated_resources(request)) })
    }
}
