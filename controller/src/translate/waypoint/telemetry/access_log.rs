//! Which access logs a proxy writes: the providers the applicable Telemetry resources'
//! `accessLogging[]` entries select, merged as istiod's `mergeLogs` merges them
//! (istio/istio `pilot/pkg/model/telemetry.go`), resolved against the mesh's providers
//! (`Telemetries.AccessLogging`), with the mesh's `accessLogFile` when nothing selects a
//! provider that writes an access log (`pilot/pkg/networking/core/accesslog.go`: "fall back
//! to legacy mesh config setting"). A selected `envoyOtelAls`, `envoyHttpAls` or `envoyTcpAls`
//! provider whose collector's service is not in the registry is dropped as istiod drops it
//! ([`super::collector`]).

use std::collections::{BTreeMap, BTreeSet};

use weft_proto::waypoint as wp;

use crate::mesh_config::{GrpcAls, LogFormat, MeshAccessLogging};
use crate::model::telemetry::{AccessLogging, WorkloadMode};

/// What one provider does after the merge (istiod's `loggingSpec`).
#[derive(Debug, Clone, Default, PartialEq)]
struct LoggingSpec {
    filter: Option<String>,
    disabled: bool,
}

/// The access logs of the proxy: `(access_log_disabled, access_logs)` of its configuration.
/// `telemetries` holds the entries of each applicable Telemetry that has any, the weakest
/// first; `covers` says
/// whether an entry's `match.mode` applies to the proxy's side; `collector` finds a
/// provider's collector by istiod's label of its kind, its `service` and its `port`, `None`
/// when the registry does not have the service.
pub(super) fn access_logs(
    mesh: &MeshAccessLogging,
    telemetries: &[&[AccessLogging]],
    covers: impl Fn(Option<WorkloadMode>) -> bool,
    collector: impl Fn(&'static str, &str, u16) -> Option<Vec<String>>,
) -> (bool, Vec<wp::AccessLog>) {
    let defaults = mesh.defaults();
    // Without an `accessLogFile` nothing is written: Istio's proxies write no access log
    // unless the mesh config or a Telemetry asks for one (istio/istio
    // `pilot/pkg/networking/core/accesslog.go`: `if mesh.AccessLogFile != ""`).
    let legacy = || match &mesh.file {
        Some(path) => (
            false,
            vec![access_log(
                String::new(),
                path.clone(),
                &mesh.format,
                false,
                None,
            )],
        ),
        None => (true, Vec::new()),
    };
    if telemetries.is_empty() && defaults.is_empty() {
        return legacy();
    }
    let merged = merge_logs(telemetries, &defaults, covers);
    // istiod's `Telemetries.AccessLogging` keeps only the providers it finds and builds an
    // access log for (`telemetryAccessLog`: none for a tracing or metrics provider); with none
    // kept, `setHTTPAccessLog` falls back to the mesh's `accessLogFile`. A disabled provider
    // is kept: it writes nothing and the file is not written either. An OpenTelemetry or gRPC
    // access-log service provider whose service is not found is not kept (istiod's
    // `openTelemetryLog` and `httpGrpcAccessLogFromTelemetry` return nil for it), disabled
    // or not.
    let mut found: Vec<_> = merged
        .iter()
        .filter_map(|(name, spec)| Some((mesh.provider_named(name)?, spec)))
        .filter(|(provider, _)| provider.writes_access_log())
        .filter_map(|(provider, spec)| {
            let endpoints = match (&provider.otel, &provider.grpc_als) {
                (Some(otel), _) => Some(collector(
                    super::collector::ENVOY_OTEL_ALS,
                    &otel.service,
                    otel.port,
                )?),
                (None, Some(als)) => {
                    let kind = match als.kind {
                        GrpcAls::Http => super::collector::ENVOY_HTTP_ALS,
                        GrpcAls::Tcp => super::collector::ENVOY_TCP_ALS,
                    };
                    Some(collector(kind, &als.service, als.port)?)
                }
                (None, None) => None,
            };
            Some((provider, spec, endpoints))
        })
        .collect();
    if found.is_empty() {
        return legacy();
    }
    found.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    let logs: Vec<wp::AccessLog> = found
        .into_iter()
        .filter(|(_, spec, _)| !spec.disabled)
        .filter_map(|(provider, spec, collector)| {
            match (&provider.otel, &provider.grpc_als, collector) {
                (Some(otel), _, Some(collector)) => {
                    return Some(super::otel_als::access_log(
                        provider,
                        otel,
                        spec.filter.clone(),
                        collector,
                    ));
                }
                (None, Some(als), Some(collector)) => {
                    return Some(super::grpc_als::access_log(
                        provider,
                        als,
                        spec.filter.clone(),
                        collector,
                    ));
                }
                _ => {}
            }
            let file = provider.file.as_ref()?;
            Some(access_log(
                provider.name.clone(),
                file.path.clone(),
                &file.format,
                file.omit_empty_values,
                spec.filter.clone(),
            ))
        })
        .collect();
    (logs.is_empty(), logs)
}

fn access_log(
    provider: String,
    path: String,
    format: &LogFormat,
    omit_empty_values: bool,
    filter: Option<String>,
) -> wp::AccessLog {
    wp::AccessLog {
        provider,
        path,
        format: Some(match format {
            LogFormat::Text(text) => wp::access_log::Format::Text(text.clone()),
            LogFormat::Json(labels) => wp::access_log::Format::Json(wp::JsonLogFormat {
                labels: labels.clone(),
            }),
        }),
        filter: filter.unwrap_or_default(),
        otel: None,
        grpc: None,
        omit_empty_values,
    }
}

/// istiod's `mergeLogs`, line by line: the providers in scope are the last Telemetry's that
/// names any (else the defaults); each entry then sets what its providers (or, naming none,
/// the previous entry's, first the defaults) do: off with `disabled: true`, else on with the
/// filter last given with that provider's name.
fn merge_logs(
    telemetries: &[&[AccessLogging]],
    defaults: &[String],
    covers: impl Fn(Option<WorkloadMode>) -> bool,
) -> BTreeMap<String, LoggingSpec> {
    let mut providers = BTreeMap::new();
    if telemetries.is_empty() {
        for name in defaults {
            providers.insert(name.clone(), LoggingSpec::default());
        }
        return providers;
    }
    let names_of = |entry: &AccessLogging| -> Vec<String> {
        entry.providers.iter().map(|p| p.name.clone()).collect()
    };
    let mode = |entry: &AccessLogging| entry.match_.as_ref().and_then(|m| m.mode);
    let mut in_scope: BTreeSet<String> = defaults.iter().cloned().collect();
    let mut filters: BTreeMap<String, LoggingSpec> = BTreeMap::new();
    for entries in telemetries {
        let mut names = BTreeSet::new();
        for entry in entries.iter().filter(|e| covers(mode(e))) {
            for name in names_of(entry) {
                let filter = entry
                    .filter
                    .as_ref()
                    .and_then(|f| f.expression.clone())
                    .filter(|e| !e.is_empty());
                filters.insert(
                    name.clone(),
                    LoggingSpec {
                        filter,
                        disabled: false,
                    },
                );
                names.insert(name);
            }
        }
        if !names.is_empty() {
            in_scope = names;
        }
    }
    let mut parent: Vec<String> = defaults.to_vec();
    for entries in telemetries {
        for entry in entries.iter() {
            let mut names = names_of(entry);
            if names.is_empty() {
                names = parent.clone();
            }
            parent = names.clone();
            for name in names {
                if !in_scope.contains(&name) || !covers(mode(entry)) {
                    continue;
                }
                let spec = if entry.disabled == Some(true) {
                    LoggingSpec {
                        filter: None,
                        disabled: true,
                    }
                } else {
                    filters.get(&name).cloned().unwrap_or_default()
                };
                providers.insert(name, spec);
            }
        }
    }
    providers
}

#[cfg(test)]
mod tests;
