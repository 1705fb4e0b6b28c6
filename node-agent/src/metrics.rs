//! The agent's metrics: Istio's TCP families with ztunnel's labels, from `weft_proxy_core`'s
//! one label set and per-connection record, built here from the store's workloads and
//! services. Connections between the same records share one resolved label set
//! ([`Metrics::connection_opened_between`]): building it costs more than policy and planning
//! together, and most connections repeat one.

use std::sync::{Arc, OnceLock};

use prometheus_client::registry::Registry;
use weft_proxy_core::metrics::{
    AccessLog, LabelKey, Peer, PeerLabels, Reporter, SecurityPolicy, Service as ServiceLabels,
    TcpConnection, TcpLabels, TcpMetrics,
};

use crate::state::{Service, Workload};

/// What Istio's sidecars name a connection to no known service: a service record named
/// after Envoy's cluster (`PassthroughCluster`, `BlackHoleCluster`), with no host and no
/// namespace (`unknown`), one per process so that their label sets are cached like any other.
fn pseudo_service(cell: &'static OnceLock<Arc<Service>>, name: &str) -> &'static Arc<Service> {
    cell.get_or_init(|| {
        Arc::new(Service {
            name: name.to_owned(),
            namespace: String::new(),
            hostname: String::new(),
            vips: Vec::new(),
            ports: Default::default(),
            subject_alt_names: Vec::new(),
            waypoint: None,
            load_balancing: crate::state::LoadBalancingMode::Passthrough,
            routing_preferences: Vec::new(),
            allow_unhealthy: false,
        })
    })
}

/// The service a passthrough connection is reported under (`ALLOW_ANY`).
pub fn passthrough_cluster() -> &'static Arc<Service> {
    static CELL: OnceLock<Arc<Service>> = OnceLock::new();
    pseudo_service(&CELL, "PassthroughCluster")
}

/// The service a connection refused by `REGISTRY_ONLY` is reported under.
pub fn black_hole_cluster() -> &'static Arc<Service> {
    static CELL: OnceLock<Arc<Service>> = OnceLock::new();
    pseudo_service(&CELL, "BlackHoleCluster")
}

/// The agent's metric families.
#[derive(Debug)]
pub struct Metrics {
    tcp: TcpMetrics,
    dns: crate::dns_proxy::metrics::DnsMetrics,
}

/// One side of a connection as ztunnel labels it: the workload's own name, and its canonical
/// name and revision as app and version.
fn peer<'a>(workload: Option<&'a Workload>, principal: &'a str) -> Peer<'a> {
    match workload {
        None => Peer::default(),
        Some(w) => Peer {
            workload: &w.workload_name,
            namespace: &w.namespace,
            principal,
            app: &w.canonical_name,
            version: &w.canonical_revision,
            canonical_service: &w.canonical_name,
            canonical_revision: &w.canonical_revision,
            cluster: &w.cluster_id,
        },
    }
}

fn principal(workload: Option<&Workload>) -> String {
    workload
        .and_then(|w| w.identity().ok())
        .map(|id| id.to_string())
        .unwrap_or_default()
}

/// Istio's TCP labels for a connection between `source` and `destination` (either may be
/// unknown) addressed to `service`.
pub fn connection_labels(
    reporter: Reporter,
    source: Option<&Workload>,
    destination: Option<&Workload>,
    service: Option<&Service>,
    security: SecurityPolicy,
) -> TcpLabels {
    let (source_principal, destination_principal) = (principal(source), principal(destination));
    let service = service.map_or_else(ServiceLabels::default, |s| ServiceLabels {
        hostname: &s.hostname,
        name: &s.name,
        namespace: &s.namespace,
    });
    TcpLabels::new(
        PeerLabels::new(
            reporter,
            &peer(source, &source_principal),
            &peer(destination, &destination_principal),
            &service,
        ),
        security,
    )
}

impl Metrics {
    /// Registers Istio's `istio_tcp_*` and `istio_dns_*` families.
    pub fn new(registry: &mut Registry) -> Self {
        Self {
            tcp: TcpMetrics::new(registry),
            dns: crate::dns_proxy::metrics::DnsMetrics::new(registry),
        }
    }

    /// The TCP families.
    pub fn tcp(&self) -> &TcpMetrics {
        &self.tcp
    }

    /// ztunnel's DNS families (`istio_dns_*`).
    pub fn dns(&self) -> &crate::dns_proxy::metrics::DnsMetrics {
        &self.dns
    }

    /// Counts a connection as opened with the labels of [`connection_labels`], resolved once
    /// per distinct (reporter, source, destination, service, security); `log` writes its
    /// access-log event when the record is dropped.
    pub fn connection_opened_between<L: AccessLog>(
        &self,
        reporter: Reporter,
        source: Option<&Arc<Workload>>,
        destination: Option<&Arc<Workload>>,
        service: Option<&Arc<Service>>,
        security: SecurityPolicy,
        log: L,
    ) -> TcpConnection<L> {
        let address = |p: Option<*const ()>| p.map_or(0, |p| p as usize);
        let key = LabelKey {
            records: [
                address(source.map(|w| Arc::as_ptr(w).cast())),
                address(destination.map(|w| Arc::as_ptr(w).cast())),
                address(service.map(|s| Arc::as_ptr(s).cast())),
            ],
            discriminant: (reporter as u64) << 8 | security as u64,
        };
        self.tcp.open_cached(
            key,
            || {
                let labels = connection_labels(
                    reporter,
                    source.map(Arc::as_ref),
                    destination.map(Arc::as_ref),
                    service.map(Arc::as_ref),
                    security,
                );
                (
                    labels,
                    (source.cloned(), destination.cloned(), service.cloned()),
                )
            },
            log,
        )
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::encoding::text::encode;
    use weft_proxy_core::metrics::{ConnectionEnd, ResponseFlag};
    use weft_test_support::prometheus::Exposition;

    use super::*;

    /// Logs nothing.
    struct Quiet;

    impl AccessLog for Quiet {
        fn revoked(&mut self, _: &str) -> Option<ResponseFlag> {
            None
        }
        fn write(&self, _: &ConnectionEnd<'_>) {}
    }

    fn workload(name: &str) -> Arc<Workload> {
        Arc::new(Workload {
            uid: format!("uid-{name}"),
            name: name.into(),
            namespace: "shop".into(),
            addresses: vec![],
            trust_domain: "cluster.local".into(),
            service_account: name.into(),
            node: "node1".into(),
            tunnel: crate::state::TunnelProtocol::Hbone,
            waypoint: None,
            canonical_name: name.into(),
            canonical_revision: "v1".into(),
            workload_name: name.into(),
            cluster_id: "Kubernetes".into(),
            healthy: true,
            services: Default::default(),
            authorization_policies: vec![],
            capacity: 1,
            hostname: String::new(),
            locality: Default::default(),
        })
    }

    #[test]
    fn connections_between_the_same_records_share_one_label_set() {
        let mut registry = Registry::default();
        let metrics = Metrics::new(&mut registry);
        let (client, server) = (workload("client"), workload("server"));
        for _ in 0..3 {
            let guard = metrics.connection_opened_between(
                Reporter::Source,
                Some(&client),
                Some(&server),
                None,
                SecurityPolicy::MutualTls,
                Quiet,
            );
            guard.add_received(10);
        }
        assert_eq!(metrics.tcp().cached_label_sets(), 1);
        // A config update replaces the record: its new labels are used, not the cached ones.
        let renamed = Arc::new(Workload {
            workload_name: "server-v2".into(),
            ..(*server).clone()
        });
        let mut failed = metrics.connection_opened_between(
            Reporter::Source,
            Some(&client),
            Some(&renamed),
            None,
            SecurityPolicy::MutualTls,
            Quiet,
        );
        failed.set_response_flags(ResponseFlag::ConnectFailure);
        assert_eq!(failed.labels().peers.destination_workload, "server-v2");
        drop(failed);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let samples = Exposition::parse(&text);
        let count = |name: &str, workload: &str| {
            samples
                .matching(name, &[("destination_workload", workload)])
                .iter()
                .map(|s| s.value)
                .collect::<Vec<_>>()
        };
        assert_eq!(count("istio_tcp_connections_opened_total", "server"), [3.0]);
        assert_eq!(count("istio_tcp_connections_closed_total", "server"), [3.0]);
        assert_eq!(count("istio_tcp_received_bytes_total", "server"), [30.0]);
        // Opened with the labels it started with, closed with the flags it ended with.
        let opened = count("istio_tcp_connections_opened_total", "server-v2");
        assert_eq!(opened, [1.0]);
        let closed = samples.matching(
            "istio_tcp_connections_closed_total",
            &[("destination_workload", "server-v2")],
        );
        assert_eq!(closed.len(), 1, "{text}");
        assert_eq!(closed[0].label("response_flags"), Some("CONNECT"), "{text}");
    }

    #[test]
    fn labels_follow_ztunnel() {
        let (client, server) = (workload("client"), workload("server"));
        let labels = connection_labels(
            Reporter::Destination,
            Some(&client),
            Some(&server),
            None,
            SecurityPolicy::Unknown,
        );
        let peers = &labels.peers;
        assert_eq!(
            peers.source_principal,
            "spiffe://cluster.local/ns/shop/sa/client"
        );
        assert_eq!(peers.source_app, "client");
        assert_eq!(peers.source_version, "v1");
        assert_eq!(peers.destination_cluster, "Kubernetes");
        assert_eq!(peers.destination_service, "unknown");
        assert_eq!(labels.connection_security_policy.as_str(), "unknown");
    }
}
