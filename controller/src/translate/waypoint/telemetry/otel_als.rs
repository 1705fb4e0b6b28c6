//! The access logs of `envoyOtelAls` providers: the record's body and attributes as istiod
//! writes Envoy's OpenTelemetry access logger (`buildOpenTelemetryAccessLogConfig`), sent to
//! the collector's Service resolved to its endpoints as the tracing collector's is (a
//! provider whose Service the registry does not have writes no log: [`super::collector`]).

use weft_proto::waypoint as wp;

use crate::mesh_config::{AccessLogProvider, OtelAlsProvider};

/// The access log of an `envoyOtelAls` provider, exported to `collector`.
pub(super) fn access_log(
    provider: &AccessLogProvider,
    otel: &OtelAlsProvider,
    filter: Option<String>,
    collector: Vec<String>,
) -> wp::AccessLog {
    wp::AccessLog {
        provider: provider.name.clone(),
        path: String::new(),
        format: Some(wp::access_log::Format::Text(otel.body.clone())),
        filter: filter.unwrap_or_default(),
        otel: Some(wp::OtelAccessLog {
            collector,
            log_name: otel.log_name.clone(),
            attributes: otel.attributes.clone(),
        }),
        // Istio's OpenTelemetry provider has no `omitEmptyValues` (istiod's
        // `openTelemetryLog` sets none).
        omit_empty_values: false,
        grpc: None,
    }
}

#[cfg(test)]
mod tests;
