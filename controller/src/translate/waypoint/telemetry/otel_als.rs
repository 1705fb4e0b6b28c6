//! The access logs of `envoyOtelAls` providers: the record's body and attributes as istiod
//! writes Envoy's OpenTelemetry access logger (`buildOpenTelemetryAccessLogConfig`), and the
//! collector's Service resolved to its endpoints as the tracing collector's is.

use weft_proto::waypoint as wp;

use super::Compiler;
use crate::mesh_config::{AccessLogProvider, MeshAccessLogging, OtelAlsProvider};

/// The access log of an `envoyOtelAls` provider, its collector not yet resolved
/// ([`Compiler::resolve_otel_collectors`]).
pub(super) fn access_log(
    provider: &AccessLogProvider,
    otel: &OtelAlsProvider,
    filter: Option<String>,
) -> wp::AccessLog {
    wp::AccessLog {
        provider: provider.name.clone(),
        path: String::new(),
        format: Some(wp::access_log::Format::Text(otel.body.clone())),
        filter: filter.unwrap_or_default(),
        otel: Some(wp::OtelAccessLog {
            collector: Vec::new(),
            log_name: otel.log_name.clone(),
            attributes: otel.attributes.clone(),
        }),
        // Istio's OpenTelemetry provider has no `omitEmptyValues` (istiod's
        // `openTelemetryLog` sets none).
        omit_empty_values: false,
    }
}

impl Compiler<'_, '_> {
    /// Fills in the collector of each OpenTelemetry access log: the endpoints of its
    /// provider's Service.
    pub(super) fn resolve_otel_collectors(
        &self,
        mesh: &MeshAccessLogging,
        logs: &mut [wp::AccessLog],
    ) {
        for log in logs {
            let Some(otel) = &mut log.otel else {
                continue;
            };
            if let Some(provider) = mesh
                .provider_named(&log.provider)
                .and_then(|p| p.otel.as_ref())
            {
                otel.collector = self.collector_endpoints(&provider.service, provider.port);
            }
        }
    }
}

#[cfg(test)]
mod tests;
