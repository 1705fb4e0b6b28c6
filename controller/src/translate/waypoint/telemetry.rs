//! A waypoint's tracing: the mesh config's default OpenTelemetry provider and sampling
//! (`defaultProviders.tracing`, `defaultConfig.tracing.sampling`), with the provider's
//! `service` resolved to the endpoints of that Service as Envoy's cluster for it would be.
//! Telemetry resources are not read yet (see `crate::validation::not_applied`).

use weft_proto::waypoint as wp;

use super::super::resolve;
use super::Compiler;
use crate::mesh_config::TracingProvider;

impl Compiler<'_, '_> {
    /// The tracing section of this waypoint's configuration; `None` without a default provider.
    pub(super) fn tracing(&self) -> Option<wp::Tracing> {
        let mesh = self.settings.mesh.tracing();
        let provider = mesh.provider.as_ref()?;
        Some(wp::Tracing {
            provider: provider.name.clone(),
            collector: self.collector_endpoints(provider),
            random_sampling_percentage: mesh.sampling,
            disable_span_reporting: false,
            // Istio's service name for a proxy: `<canonical service>.<namespace>`.
            service_name: format!("{}.{}", self.waypoint.name, self.waypoint.namespace),
        })
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
