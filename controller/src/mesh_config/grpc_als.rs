//! `extensionProviders[].envoyHttpAls` and `envoyTcpAls`: Istio's providers for Envoy's gRPC
//! access-log service (`MeshConfig.ExtensionProvider.EnvoyHttpGrpcV3LogProvider` and
//! `EnvoyTcpGrpcV3LogProvider`: `service`, `port`, `logName`, `filterStateObjectsToLog` and,
//! for HTTP, `additionalRequestHeadersToLog`, `additionalResponseHeadersToLog`,
//! `additionalResponseTrailersToLog`), resolved as istiod's `httpGrpcAccessLogFromTelemetry`
//! and `tcpGrpcAccessLogFromTelemetry` resolve them (istio/istio
//! `pilot/pkg/model/telemetry_logging.go`): no `logName` is `http_envoy_accesslog` or
//! `tcp_envoy_accesslog`. Validated as `ValidateExtensionProviderEnvoyHttpAls` and
//! `ValidateExtensionProviderEnvoyTcpAls` validate them (a port, a service).

use serde::Deserialize;

use super::MeshConfigError;

/// istiod's `HTTPEnvoyAccessLogFriendlyName`.
pub const HTTP_LOG_NAME: &str = "http_envoy_accesslog";
/// istiod's `TCPEnvoyAccessLogFriendlyName`.
pub const TCP_LOG_NAME: &str = "tcp_envoy_accesslog";

/// The kind of a gRPC access-log service provider, by its field in the mesh config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcAls {
    Http,
    Tcp,
}

impl GrpcAls {
    /// The provider's field in `extensionProviders[]`.
    pub fn field(self) -> &'static str {
        match self {
            GrpcAls::Http => "envoyHttpAls",
            GrpcAls::Tcp => "envoyTcpAls",
        }
    }
}

/// An `envoyHttpAls` or `envoyTcpAls` provider, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcAlsProvider {
    pub kind: GrpcAls,
    /// Where it is declared (`extensionProviders[i].envoyHttpAls`), for warnings.
    pub field: String,
    /// `[namespace/]hostname` of the access-log service.
    pub service: String,
    pub port: u16,
    pub log_name: String,
    /// `additionalRequestHeadersToLog` (HTTP only, as Envoy's TCP logger has no headers).
    pub request_headers: Vec<String>,
    pub response_headers: Vec<String>,
    pub response_trailers: Vec<String>,
}

/// The provider as written (the HTTP one; the TCP one has no header lists).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(super) struct EnvoyGrpcAls {
    service: String,
    port: i64,
    log_name: String,
    // `filterStateObjectsToLog` is not read: Istio's default objects are the Wasm peer
    // metadata, which Weft's waypoint has none of, so nothing would be sent.
    additional_request_headers_to_log: Vec<String>,
    additional_response_headers_to_log: Vec<String>,
    additional_response_trailers_to_log: Vec<String>,
}

impl EnvoyGrpcAls {
    /// Resolves the provider; `path` is its field (`extensionProviders[i].envoyHttpAls`).
    pub(super) fn resolve(
        self,
        kind: GrpcAls,
        path: &str,
        field: &impl Fn(&str, String) -> MeshConfigError,
    ) -> Result<GrpcAlsProvider, MeshConfigError> {
        let (service, port) = super::trace::service_port(&self.service, self.port, path, field)?;
        // Envoy looks each header up by its lowercase name (`Http::LowerCaseString`).
        let lower = |names: Vec<String>| -> Vec<String> {
            names.iter().map(|n| n.to_ascii_lowercase()).collect()
        };
        let (request_headers, response_headers, response_trailers) = match kind {
            GrpcAls::Http => (
                lower(self.additional_request_headers_to_log),
                lower(self.additional_response_headers_to_log),
                lower(self.additional_response_trailers_to_log),
            ),
            GrpcAls::Tcp => Default::default(),
        };
        let log_name = match (self.log_name.is_empty(), kind) {
            (false, _) => self.log_name,
            (true, GrpcAls::Http) => HTTP_LOG_NAME.to_owned(),
            (true, GrpcAls::Tcp) => TCP_LOG_NAME.to_owned(),
        };
        Ok(GrpcAlsProvider {
            kind,
            field: path.to_owned(),
            service: service.to_owned(),
            port,
            log_name,
            request_headers,
            response_headers,
            response_trailers,
        })
    }
}
