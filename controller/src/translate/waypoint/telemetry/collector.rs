//! Where an extension provider's collector is: its `service`, `[namespace/]hostname`, looked up
//! in the service registry (Kubernetes Services and ServiceEntry hosts) as istiod's
//! `LookupCluster` does (istio/istio `pilot/pkg/model/telemetry_logging.go`). A provider whose
//! service is not found is skipped, as in istiod: no tracer for it (`configureFromProviderConfig`
//! fails, "Not able to configure requested tracing provider", and the listener gets no
//! tracing) and no access log (`openTelemetryLog` returns nil, so `Telemetries.AccessLogging`
//! keeps the other selected providers, and the mesh's `accessLogFile` applies when none is
//! left). The lookup runs at every translation, so a collector's Service that appears later
//! makes its provider take effect with the next push.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;

use super::super::super::resolve::{self, namespace_of};
use crate::index::ConfigIndex;
use crate::model::networking::ServiceEntry;
use crate::translate::MeshSettings;

/// istiod's `type` label of a provider's kind when its lookup fails
/// (`IncLookupClusterFailures` in `pilot/pkg/networking/core/tracing.go` and
/// `pilot/pkg/model/telemetry_logging.go`).
pub(super) const OPENTELEMETRY: &str = "opentelemetry";
pub(super) const ENVOY_OTEL_ALS: &str = "envoyOtelAls";
pub(super) const ENVOY_HTTP_ALS: &str = "envoyHTTPAls";
pub(super) const ENVOY_TCP_ALS: &str = "envoyTCPAls";

/// What a provider's `service` names in the registry.
#[derive(Debug, Clone, Copy)]
pub(super) enum CollectorHost<'a> {
    /// A Kubernetes Service: its ready pods are the collector.
    Service(&'a Service),
    /// A ServiceEntry host: the waypoint resolves it.
    Entry(&'a str),
}

/// Why a provider's `service` names no collector (istiod's `LookupCluster` errors).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CollectorLookupError {
    #[error(
        "service {0:?} is not in the service registry (no Kubernetes Service nor ServiceEntry host of that name)"
    )]
    NotFound(String),
    #[error(
        "service {service:?} is found in several namespaces ({namespaces}): name one as <namespace>/<hostname>"
    )]
    Ambiguous { service: String, namespaces: String },
}

/// Finds `service` as istiod's `LookupCluster` does: `namespace/hostname` in that namespace;
/// a bare hostname when exactly one namespace has it. `services` is every Service by hostname.
pub(super) fn lookup<'a>(
    services: &BTreeMap<String, &'a Service>,
    entries: impl Iterator<Item = &'a ServiceEntry>,
    service: &str,
) -> Result<CollectorHost<'a>, CollectorLookupError> {
    let (namespace, host) = match service.split('/').collect::<Vec<_>>()[..] {
        [namespace, host] => (Some(namespace), host),
        _ => (None, service),
    };
    // istiod's `ServiceIndex.HostnameAndNamespace[host]`: one service per namespace.
    let mut by_namespace: BTreeMap<&str, CollectorHost<'a>> = BTreeMap::new();
    for entry in entries {
        if let Some(declared) = entry.spec.hosts.iter().find(|h| *h == host) {
            by_namespace
                .entry(namespace_of(&entry.metadata))
                .or_insert(CollectorHost::Entry(declared));
        }
    }
    if let Some(service) = services.get(host) {
        // A Kubernetes Service wins over a ServiceEntry of the same host in its namespace.
        by_namespace.insert(
            namespace_of(&service.metadata),
            CollectorHost::Service(service),
        );
    }
    let not_found = || CollectorLookupError::NotFound(service.to_owned());
    match namespace {
        Some(namespace) => by_namespace.get(namespace).copied().ok_or_else(not_found),
        None if by_namespace.len() > 1 => Err(CollectorLookupError::Ambiguous {
            service: service.to_owned(),
            namespaces: by_namespace.keys().copied().collect::<Vec<_>>().join(", "),
        }),
        None => by_namespace.into_values().next().ok_or_else(not_found),
    }
}

/// A warning for each extension provider of the mesh config whose collector the registry does
/// not have, naming the provider and its service: proxies get no exporter for it until it
/// appears. Logged by the controller and printed by `controller validate`.
pub fn collector_warnings(index: &ConfigIndex, settings: &MeshSettings) -> Vec<String> {
    let services: BTreeMap<String, &Service> = index
        .services
        .values()
        .map(|s| (resolve::hostname(s, settings), s))
        .collect();
    let missing = |service: &str| lookup(&services, index.service_entries.values(), service).err();
    let mut warnings = Vec::new();
    for provider in settings.mesh.tracing().providers {
        if let Some(error) = missing(&provider.service) {
            warnings.push(format!(
                "{} (provider {:?}): {error}: proxies selecting it export no spans (no tracer is configured) until it exists",
                provider.field, provider.name
            ));
        }
    }
    for provider in settings.mesh.access_logging().providers {
        let declared = match (&provider.otel, &provider.grpc_als) {
            (Some(otel), _) => (&otel.field, &otel.service),
            (None, Some(als)) => (&als.field, &als.service),
            (None, None) => continue,
        };
        if let Some(error) = missing(declared.1) {
            warnings.push(format!(
                "{} (provider {:?}): {error}: proxies selecting it write no access log for it (the mesh's accessLogFile applies where no other provider is left) until it exists",
                declared.0, provider.name
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests;
