//! A waypoint's tracing and access logging: the mesh config's default OpenTelemetry provider
//! and sampling (`defaultProviders.tracing`, `defaultConfig.tracing.sampling`), overridden by
//! the Telemetry resources that apply to the waypoint in Istio's order (istiod's
//! `Telemetries.applicableTelemetries`): the root namespace's namespace-wide one (mesh-wide),
//! then the waypoint's namespace's, then those of its namespace whose targetRefs name the
//! waypoint, each by creation time. A selector never binds a waypoint (as in Istio), and a
//! Telemetry attached to a Service is not applied (`validation::not_applied`). The provider's
//! `service` is resolved to the endpoints of that Service as Envoy's cluster for it would be.

use weft_proto::waypoint as wp;

use super::super::resolve::{self, namespace_of};
use super::{Compiler, age_key};
use crate::mesh_config::{MeshTracing, TracingProvider};
use crate::model::Telemetry;
use crate::model::telemetry::{AccessLogging, Tracing, WorkloadMode};

impl<'a> Compiler<'a, '_> {
    /// The Telemetry resources that apply to this waypoint, the weakest first: each overrides
    /// what comes before it.
    fn applicable_telemetries(&self) -> Vec<&'a Telemetry> {
        let root = self.settings.root_namespace.as_str();
        let own = self.waypoint.namespace.as_str();
        let in_namespace = |namespace: &str| {
            let mut telemetries: Vec<&'a Telemetry> = self
                .index
                .telemetries
                .values()
                .filter(|t| namespace_of(&t.metadata) == namespace)
                .collect();
            telemetries.sort_by(|a, b| age_key(&a.metadata).cmp(&age_key(&b.metadata)));
            telemetries
        };
        let namespace_wide = |telemetries: &[&'a Telemetry]| {
            telemetries
                .iter()
                .copied()
                .find(|t| t.spec.is_namespace_wide())
        };
        let mut applicable = Vec::new();
        applicable.extend(namespace_wide(&in_namespace(root)));
        let own_telemetries = in_namespace(own);
        if own != root {
            applicable.extend(namespace_wide(&own_telemetries));
        }
        // Attached to the whole waypoint (its Gateway, or the waypoint GatewayClass from the
        // root namespace): `bound_services` answers an empty list for those.
        applicable.extend(own_telemetries.into_iter().filter(|t| {
            !t.spec.is_namespace_wide()
                && self
                    .bound_services(t.spec.targets(), own, &[])
                    .is_some_and(|services| services.is_empty())
        }));
        applicable
    }

    /// The tracing section of this waypoint's configuration; `None` when no provider applies
    /// (trace headers then pass untouched, as Envoy without a tracer leaves them).
    pub(super) fn tracing(&self) -> Option<wp::Tracing> {
        let mesh = self.settings.mesh.tracing();
        let telemetries = self.applicable_telemetries();
        let entries = telemetries.iter().flat_map(|t| &t.spec.tracing);
        let merged = merge_tracing(&mesh, entries);
        let provider = merged.provider?;
        Some(wp::Tracing {
            provider: provider.name.clone(),
            collector: self.collector_endpoints(provider),
            random_sampling_percentage: merged.sampling,
            disable_span_reporting: merged.disabled,
            // Istio's service name for a proxy: `<canonical service>.<namespace>`.
            service_name: format!("{}.{}", self.waypoint.name, self.waypoint.namespace),
        })
    }

    /// Whether the applicable Telemetry resources turn this waypoint's access log off.
    pub(super) fn access_log_disabled(&self) -> bool {
        let telemetries = self.applicable_telemetries();
        access_log_disabled(telemetries.iter().flat_map(|t| &t.spec.access_logging))
    }

    /// `ip:port` of each ready pod behind the provider's Service, or `host:port` for the
    /// waypoint to resolve when no Service of that name is known.
    fn collector_endpoints(&self, provider: &TracingProvider) -> Vec<String> {
        let host = provider
            .service
            .split_once('/')
            .map_or(provider.service.as_str(), |(_, host)| host);
        let Some(service) = self.services.get(host) else {
            return vec![format!("{host}:{}", provider.port)];
        };
        let Some(port) = resolve::service_ports(service)
            .iter()
            .find(|p| i64::from(p.port) == i64::from(provider.port))
        else {
            return vec![format!("{host}:{}", provider.port)];
        };
        let mut endpoints: Vec<String> = self
            .index
            .pods
            .values()
            .filter(|pod| resolve::service_selects(service, pod) && resolve::pod_healthy(pod))
            .filter_map(|pod| {
                let target = resolve::target_port(port, pod)?;
                let ip = resolve::pod_ips(pod).into_iter().next()?;
                Some(std::net::SocketAddr::new(ip, u16::try_from(target).ok()?).to_string())
            })
            .collect();
        endpoints.sort();
        if endpoints.is_empty() {
            endpoints.push(format!("{host}:{}", provider.port));
        }
        endpoints
    }
}

/// The server side's tracing after every applicable entry, as istiod's `Telemetries.Tracing`
/// merges them (a waypoint's spans are server spans).
#[derive(Debug, PartialEq)]
struct MergedTracing<'m> {
    provider: Option<&'m TracingProvider>,
    sampling: f64,
    disabled: bool,
}

/// Starts from the mesh's default provider and sampling; each entry for the server side
/// replaces what it sets: its first provider (one the mesh does not declare as OpenTelemetry
/// leaves none: no spans, as istiod disables a tracer it cannot find),
/// `randomSamplingPercentage`, `disableSpanReporting`.
fn merge_tracing<'m, 't>(
    mesh: &'m MeshTracing,
    entries: impl Iterator<Item = &'t Tracing>,
) -> MergedTracing<'m> {
    let mut merged = MergedTracing {
        provider: mesh.provider.as_ref(),
        sampling: mesh.sampling,
        disabled: false,
    };
    for entry in entries {
        if !WorkloadMode::covers_server(entry.match_.as_ref().and_then(|m| m.mode)) {
            continue;
        }
        if let Some(first) = entry.providers.first() {
            merged.provider = mesh.provider_named(&first.name);
        }
        if let Some(disabled) = entry.disable_span_reporting {
            merged.disabled = disabled;
        }
        if let Some(percentage) = entry.random_sampling_percentage {
            merged.sampling = percentage;
        }
    }
    merged
}

/// The last entry for the server side decides, as istiod's `mergeLogs` lets a narrower
/// Telemetry turn a wider one's logging off (`disabled: true`) or back on (any other entry).
fn access_log_disabled<'t>(entries: impl Iterator<Item = &'t AccessLogging>) -> bool {
    entries
        .filter(|e| WorkloadMode::covers_server(e.match_.as_ref().and_then(|m| m.mode)))
        .last()
        .is_some_and(|e| e.disabled == Some(true))
}

#[cfg(test)]
mod tests;
