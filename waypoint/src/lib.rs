//! The waypoint: an L7 proxy that receives the traffic of the services that use it over HBONE,
//! applies their VirtualService, DestinationRule and L7 AuthorizationPolicy configuration, and
//! sends each request on over HBONE. It owns request-level behaviour (routing, authorization,
//! retries, timeouts, faults, mirrors, circuit breaking, outlier detection, request metrics);
//! its decisions come from weft-policy, its tunnels (dialed and accepted) from weft-hbone, and
//! what it shares with the node agent (certificates, admin server, configuration kit, Istio's
//! metric labels) from weft-proxy-core. It never loads eBPF and never decides L4 policy for the
//! node.
//!
//! Layout: [`model`] turns the `WaypointConfig` resource into domain types, [`store`] holds the
//! last good one, [`listener`] accepts HBONE and runs HTTP inside tunnels, [`proxy`] is the
//! per-request pipeline ([`authn`] validates its JWTs), [`tcp`] forwards what is carried at L4, [`upstream`] picks endpoints
//! and carries requests to them ([`dns`] resolves the endpoints given by name), the threads connections are served on are `weft_workers`,
//! [`metrics`] and [`dump`] report (on `weft_proxy_core::admin`'s server). In the gateway
//! role ([`gateway`]) the same engine serves clients outside the mesh on plain ports.

pub mod access_log;
pub mod authn;
pub mod config;
pub mod conformance;
pub mod dns;
pub mod dump;
pub mod gateway;
mod head;
mod idle;
pub mod listener;
pub mod metrics;
pub mod model;
pub mod proxy;
pub mod rate_limit;
mod smuggling;
pub mod store;
pub mod tcp;
pub mod telemetry;
pub mod upstream;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// The HTTP/1.1 framing guard, for the fuzz targets (tests/fuzz-targets) only: not an API.
#[doc(hidden)]
pub use smuggling::FramingGuard;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;
use weft_hbone::HboneAcceptor;
use weft_hbone::admission::{ConnectionLimits, SourceLimit};
use weft_identity::{CertificateSource, SpiffeId};
use weft_proto::waypoint as proto;
use weft_proxy_core::admin::{
    AdminServer, READINESS_PATH, combine, config_dump_endpoints, metrics_endpoints,
    readiness_endpoints,
};
use weft_proxy_core::drain::DrainStatus;
use weft_xds::ConnectionState;

pub use listener::{HboneListener, HttpLimits, ListenerError};
pub use model::{ConfigError, WaypointConfig};
pub use store::{ConfigStore, WaypointConfigHandler};
pub use upstream::{HboneAddressResolver, Upstream, default_hbone_address};
pub use weft_workers::Workers;

use crate::metrics::Metrics;
use crate::proxy::{DEFAULT_RETRY_BUFFER_LIMIT, ProxyShared};

/// Everything the waypoint needs that is not configuration pushed over xDS.
pub struct WaypointOptions {
    /// Who the waypoint is: the identity of its certificate.
    pub identity: SpiffeId,
    /// Where its certificate comes from (a manager of that one identity).
    pub certificates: Arc<dyn CertificateSource>,
    /// Where to dial endpoints' HBONE listeners (default `<ip>:15008`).
    pub hbone_address: HboneAddressResolver,
    pub limits: HttpLimits,
    pub retry_buffer_limit: usize,
    /// The threads HBONE connections are served on; `None`: the runtime the listener runs on.
    pub workers: Option<Workers>,
    /// Protocol upgrades forwarded (lower case); [`conformance`] refuses the others.
    pub upgrades: Vec<String>,
    /// HBONE connections open at once, and per source address.
    pub connection_limits: ConnectionLimits,
    /// Whether the waypoint is draining (after SIGTERM): readiness then fails.
    pub drain: DrainStatus,
    /// The xDS node id, a tag on every span (`node_id`).
    pub node_id: String,
    /// The pod's IP: the instance of the configuration this proxy is, whose locality its
    /// clusters' locality priorities are relative to. `None`: no locality.
    pub instance_ip: Option<std::net::IpAddr>,
    /// Where TLS origination credentials named by a DestinationRule's `credentialName` are
    /// found: local mode's `CREDENTIALS_DIR`, and what the controller delivers over xDS
    /// (Kubernetes mode); neither: such a cluster fails closed.
    pub origination_credentials: upstream::OriginationCredentials,
    /// The resolver configuration `DYNAMIC_DNS` hosts are resolved with; `None`: the
    /// system's (`/etc/resolv.conf`).
    pub dns_resolv_conf: Option<std::path::PathBuf>,
}

impl WaypointOptions {
    pub fn new(identity: SpiffeId, certificates: Arc<dyn CertificateSource>) -> Self {
        WaypointOptions {
            identity,
            certificates,
            hbone_address: default_hbone_address(),
            limits: HttpLimits::default(),
            retry_buffer_limit: DEFAULT_RETRY_BUFFER_LIMIT,
            workers: None,
            upgrades: conformance::DEFAULT_UPGRADES
                .iter()
                .map(|u| (*u).to_owned())
                .collect(),
            connection_limits: ConnectionLimits::for_open_files_limit(),
            drain: DrainStatus::default(),
            node_id: String::new(),
            instance_ip: None,
            origination_credentials: upstream::OriginationCredentials::default(),
            dns_resolv_conf: None,
        }
    }
}

/// The waypoint proxy: configuration store, metrics and the shared request pipeline.
pub struct Waypoint {
    shared: Arc<ProxyShared>,
    identity: SpiffeId,
    certificates: Arc<dyn CertificateSource>,
    acceptor: Arc<HboneAcceptor>,
    limits: HttpLimits,
    sources: Arc<SourceLimit>,
    workers: Option<Workers>,
    registry: Arc<Registry>,
    drain: DrainStatus,
}

impl std::fmt::Debug for Waypoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waypoint")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Waypoint {
    pub fn new(options: WaypointOptions) -> Self {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let upstream = Upstream::with_workers(
            options.identity.clone(),
            Arc::clone(&options.certificates),
            options.hbone_address,
            options.workers.as_ref().map_or(1, Workers::len),
            upstream::dynamic_dns::DynamicDnsCache::system(options.dns_resolv_conf.clone()),
        );
        weft_proxy_core::metrics::register_process_metrics(
            &mut registry,
            weft_proxy_core::metrics::Component::Waypoint,
        );
        weft_proxy_core::metrics::register_certificate_expiry(
            &mut registry,
            Arc::clone(&options.certificates),
        );
        access_log::grpc::stream::set_node_id(options.node_id.clone());
        access_log::grpc::stream::register(&mut registry);
        let spans = telemetry::SpanExporter::new(options.node_id, &mut registry);
        // Spans queue until a runtime sends them; the waypoint is built on one in practice.
        let access_log_records = access_log::otel::exporter();
        access_log_records.register(&mut registry);
        if tokio::runtime::Handle::try_current().is_ok() {
            spans.spawn();
            access_log_records.spawn();
        }
        let store = ConfigStore::default()
            .with_origination_credentials(options.origination_credentials)
            .with_instance(options.instance_ip);
        let pruned = upstream.clone();
        store.on_apply(Arc::new(move |config| pruned.retain(config)));
        let tcp_connections = tcp::TcpConnections::default();
        let revalidated = tcp_connections.clone();
        store.on_apply(Arc::new(move |config| {
            tcp::revalidate(&revalidated, config);
        }));
        // The waypoint's own trust domain is the mesh's: the root may sign for others too.
        let acceptor = Arc::new(HboneAcceptor::new(
            Arc::clone(&options.certificates),
            options.identity.trust_domain(),
        ));
        Waypoint {
            shared: Arc::new(ProxyShared {
                store,
                upstream,
                tcp_connections,
                metrics,
                spans,
                retry_buffer_limit: options.retry_buffer_limit,
                upgrades: options.upgrades,
                rate_limiter: rate_limit::RateLimiter::default(),
            }),
            identity: options.identity,
            certificates: options.certificates,
            acceptor,
            limits: options.limits,
            sources: options.connection_limits.sources(),
            workers: options.workers,
            registry: Arc::new(registry),
            drain: options.drain,
        }
    }

    /// Validates and applies a configuration; on error the previous one stays in force.
    pub fn apply_config(&self, config: proto::WaypointConfig) -> Result<(), String> {
        self.shared.store.apply(config).map_err(|e| e.to_string())
    }

    /// The configuration store (its xDS handler, snapshots, change notifications).
    pub fn store(&self) -> &ConfigStore {
        &self.shared.store
    }

    pub fn upstream(&self) -> &Upstream {
        &self.shared.upstream
    }

    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The connections forwarded at L4 that are open, each with the tunnel it arrived on.
    pub fn tcp_connections(&self) -> &tcp::TcpConnections {
        &self.shared.tcp_connections
    }

    /// The Prometheus registry holding the waypoint's metrics.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Binds the HBONE listener; its connections are served on the workers, if there are any.
    pub async fn bind_hbone(&self, address: SocketAddr) -> Result<HboneListener, ListenerError> {
        let listener = HboneListener::bind(
            address,
            Arc::clone(&self.shared),
            Arc::clone(&self.acceptor),
            self.identity.clone(),
            self.limits,
            Arc::clone(&self.sources),
        )?;
        Ok(match &self.workers {
            Some(workers) => listener.with_workers(workers.clone()),
            None => listener,
        })
    }

    /// The ports of the gateway role, opened on `address` as configurations name them, TLS
    /// terminated with the credentials of `credentials`; their connections are served on the
    /// workers, if there are any, as the HBONE listener's.
    pub fn edge_listeners(
        &self,
        credentials: gateway::credentials::CredentialSource,
        address: std::net::IpAddr,
    ) -> gateway::EdgeListeners {
        gateway::EdgeListeners::new(
            Arc::clone(&self.shared),
            Arc::new(
                gateway::credentials::CredentialStore::new(credentials)
                    .with_mesh_identity(self.identity.clone(), Arc::clone(&self.certificates)),
            ),
            self.limits,
            Arc::clone(&self.sources),
            address,
            self.workers.clone(),
        )
    }

    /// Ready once a configuration was applied.
    fn readiness(&self) -> weft_proxy_core::admin::Endpoints {
        let store = self.shared.store.clone();
        let drain = self.drain.clone();
        readiness_endpoints(READINESS_PATH, move || {
            if drain.is_draining() {
                // Load balancers stop sending before the listener is gone.
                Err("draining".to_owned())
            } else if *store.version().borrow() > 0 {
                Ok(())
            } else {
                Err("waiting for configuration".to_owned())
            }
        })
    }

    /// Binds the metrics endpoint (15020: metrics, and readiness as Istio's proxies answer it
    /// there).
    pub async fn bind_metrics(&self, address: SocketAddr) -> Result<AdminServer, ListenerError> {
        let endpoints = combine([metrics_endpoints(self.registry()), self.readiness()]);
        Ok(AdminServer::bind(address, endpoints).await?)
    }

    /// Binds the admin endpoint (127.0.0.1:15000): `/config_dump` shows the configuration in
    /// force, the upstream's endpoint state, the certificate (never its key), `xds` (the
    /// client's connection state, when there is a controller) with the last version applied
    /// and rejected, and `settings` (the binary's settings).
    pub async fn bind_admin(
        &self,
        address: SocketAddr,
        xds: Option<watch::Receiver<ConnectionState>>,
        settings: serde_json::Value,
    ) -> Result<AdminServer, ListenerError> {
        let shared = Arc::clone(&self.shared);
        let certificates = Arc::clone(&self.certificates);
        let identity = self.identity.clone();
        let endpoints = config_dump_endpoints(move || {
            let state = xds.as_ref().map(|rx| rx.borrow().clone());
            dump::config_dump(
                &shared.store.snapshot(),
                &shared.upstream,
                certificates.current(&identity).map(|c| c.describe()),
                state.as_ref(),
                shared.store.xds_history(),
                settings.clone(),
            )
        });
        Ok(AdminServer::bind(address, endpoints).await?)
    }

    /// Binds the readiness endpoint (15021): ready once a configuration was applied, unready
    /// from the start of the drain.
    pub async fn bind_readiness(&self, address: SocketAddr) -> Result<AdminServer, ListenerError> {
        Ok(AdminServer::bind(address, self.readiness()).await?)
    }
}
