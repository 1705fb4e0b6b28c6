//! The data path: per-pod listeners inside each enrolled pod's network namespace, the outbound
//! (15001) and inbound (15006 plaintext, 15008 HBONE) proxies, and the plans they execute.
//!
//! Listeners stay thin: accept, hand the connection to a task, move on. Decisions live in
//! [`plan`] (pure functions over the store); this module only executes them.

mod connections;
mod copy;
mod error;
mod inbound;
mod outbound;
pub mod plan;
mod pods;

use std::sync::{Arc, atomic::AtomicUsize};

use weft_hbone::admission::{self, ConnectionBudget};

pub use error::ProxyError;
pub use pods::{PodProxy, ServedPods};
pub use weft_workers::Workers;

use crate::{
    certificates::CertificateSource, ebpf::OriginalDst, metrics::Metrics, state::WorkloadStore,
};

/// Outbound listener port inside each pod (`127.0.0.1:15001`).
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener port inside each pod.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// HBONE listener port inside each pod.
pub const HBONE_PORT: u16 = 15008;

/// What the agent's listeners admit: the connections of all pods together, and those of one
/// source address on one pod's HBONE port.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub budget: Arc<ConnectionBudget>,
    pub per_source: usize,
}

impl ConnectionLimits {
    /// What the process's current descriptor limit allows, with the default per-source limit.
    pub fn for_open_files_limit() -> Self {
        use nix::sys::resource::{Resource, getrlimit};
        let descriptors = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
        Self {
            budget: ConnectionBudget::new(admission::connection_budget_for(descriptors)),
            per_source: admission::DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
        }
    }
}

/// Everything the listeners share. One per agent.
pub struct ProxyContext<C> {
    pub store: WorkloadStore,
    pub certificates: Arc<C>,
    pub metrics: Arc<Metrics>,
    pub original_destination: Arc<dyn OriginalDst>,
    /// The mesh's trust domain: peers from any other are refused.
    pub trust_domain: String,
    pub pods: ServedPods,
    /// The threads that serve pods' connections.
    pub workers: Workers,
    pub connection_limits: ConnectionLimits,
    /// One HBONE pool per worker: a tunnel and the connection carrying it live on one thread.
    pools: Box<[outbound::HbonePool<C>]>,
    pub(crate) round_robin: AtomicUsize,
    /// Open connections of the served pods, decided again on every change of the store.
    pub(crate) connections: connections::PodConnections,
}

impl<C: CertificateSource> ProxyContext<C> {
    /// A context whose pods are served on the runtime this is called from.
    pub fn new(
        store: WorkloadStore,
        certificates: Arc<C>,
        metrics: Arc<Metrics>,
        original_destination: Arc<dyn OriginalDst>,
        trust_domain: String,
    ) -> Arc<Self> {
        Self::with_workers(
            store,
            certificates,
            metrics,
            original_destination,
            trust_domain,
            Workers::current_runtime(),
            ConnectionLimits::for_open_files_limit(),
        )
    }

    /// A context whose pods are served on `workers`, thread per core. Its open connections are
    /// decided again on every change of `store` by a task on the runtime this is called from
    /// (none outside a runtime).
    pub fn with_workers(
        store: WorkloadStore,
        certificates: Arc<C>,
        metrics: Arc<Metrics>,
        original_destination: Arc<dyn OriginalDst>,
        trust_domain: String,
        workers: Workers,
        connection_limits: ConnectionLimits,
    ) -> Arc<Self> {
        let pods = ServedPods::default();
        let pools = (0..workers.len().max(1))
            .map(|_| outbound::new_pool(certificates.clone(), pods.clone()))
            .collect();
        let context = Arc::new(Self {
            store,
            certificates,
            metrics,
            original_destination,
            trust_domain,
            pods,
            workers,
            connection_limits,
            pools,
            round_robin: AtomicUsize::new(0),
            connections: connections::PodConnections::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(connections::watch_store(Arc::downgrade(&context)));
        }
        context
    }

    /// Open connections of the served pods (HBONE connections, tunnels, plaintext and
    /// outbound connections).
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// The calling worker's HBONE pool.
    pub(crate) fn pool(&self) -> &outbound::HbonePool<C> {
        &self.pools[weft_workers::current_index() % self.pools.len()]
    }
}
