//! The access logs of `envoyHttpAls` and `envoyTcpAls` providers: Envoy's HTTP and TCP gRPC
//! access loggers as istiod writes them (`buildHTTPGrpcAccessLogHelper`,
//! `buildTCPGrpcAccessLogHelper`: the provider's `logName` in the common config, its
//! additional request and response headers and response trailers for HTTP), streamed to the
//! provider's Service resolved to its endpoints as the tracing collector's is (a provider
//! whose Service the registry does not have writes no log: [`super::collector`]).

use weft_proto::waypoint as wp;

use crate::mesh_config::{AccessLogProvider, GrpcAls, GrpcAlsProvider};

/// The access log of a gRPC access-log service provider, streamed to `collector`.
pub(super) fn access_log(
    provider: &AccessLogProvider,
    als: &GrpcAlsProvider,
    filter: Option<String>,
    collector: Vec<String>,
) -> wp::AccessLog {
    let kind = match als.kind {
        GrpcAls::Http => wp::grpc_access_log::Kind::Http,
        GrpcAls::Tcp => wp::grpc_access_log::Kind::Tcp,
    };
    wp::AccessLog {
        provider: provider.name.clone(),
        path: String::new(),
        // The service receives structured entries, not a formatted line.
        format: None,
        filter: filter.unwrap_or_default(),
        otel: None,
        grpc: Some(wp::GrpcAccessLog {
            kind: kind as i32,
            collector,
            log_name: als.log_name.clone(),
            request_headers: als.request_headers.clone(),
            response_headers: als.response_headers.clone(),
            response_trailers: als.response_trailers.clone(),
        }),
        omit_empty_values: false,
    }
}

#[cfg(test)]
mod tests;
