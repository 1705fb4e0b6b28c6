//! What every listener of the agent shares: the store, certificates, metrics, the served pods,
//! the workers with their HBONE pools, the connection limits and the registry of open
//! connections, which a task started with the context decides again on every change of the
//! store.

use std::sync::{Arc, Weak, atomic::AtomicUsize};

use weft_hbone::{HboneDialer, admission::ConnectionLimits};
use weft_identity::CertificateSource;
use weft_workers::Workers;

use super::{
    connections::{PodConnections, revalidate},
    pool::{HbonePool, new_pool},
    served::ServedPods,
};
use crate::{ebpf::OriginalDst, metrics::Metrics, state::WorkloadStore};

/// Everything the listeners share. One per agent.
pub struct ProxyContext {
    pub store: WorkloadStore,
    pub certificates: Arc<dyn CertificateSource>,
    pub metrics: Arc<Metrics>,
    pub original_destination: Arc<dyn OriginalDst>,
    /// The mesh's trust domain: peers from any other are refused.
    pub trust_domain: String,
    pub pods: ServedPods,
    /// The threads that serve pods' connections.
    pub workers: Workers,
    pub connection_limits: ConnectionLimits,
    /// One HBONE pool per worker: a tunnel and the connection carrying it live on one thread.
    pools: Box<[HbonePool]>,
    pub(crate) round_robin: AtomicUsize,
    /// Open connections of the served pods, decided again on every change of the store.
    pub(crate) connections: PodConnections,
}

impl ProxyContext {
    /// A context whose pods are served on `workers`, thread per core. Its open connections are
    /// decided again on every change of `store` by a task on the runtime this is called from
    /// (none outside a runtime).
    pub fn with_workers(
        store: WorkloadStore,
        certificates: Arc<dyn CertificateSource>,
        metrics: Arc<Metrics>,
        original_destination: Arc<dyn OriginalDst>,
        trust_domain: String,
        workers: Workers,
        connection_limits: ConnectionLimits,
    ) -> Arc<Self> {
        let pods = ServedPods::default();
        let dialer = HboneDialer::new(Arc::clone(&certificates));
        let pools = (0..workers.len().max(1))
            .map(|_| new_pool(dialer.clone(), pods.clone()))
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
            connections: PodConnections::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch_store(Arc::downgrade(&context)));
        }
        context
    }

    /// Open connections of the served pods (HBONE connections, tunnels, plaintext and
    /// outbound connections).
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// The calling worker's HBONE pool.
    pub(crate) fn pool(&self) -> &HbonePool {
        &self.pools[weft_workers::current_index() % self.pools.len()]
    }
}

/// Runs [`revalidate`] on every change of the store until the context is gone. Started with
/// the context, on the runtime that creates it (the agent's control-plane thread, where the
/// xDS handlers apply whole updates, so a check never sees half of one).
async fn watch_store(context: Weak<ProxyContext>) {
    let mut generation = match context.upgrade() {
        Some(context) => context.store.subscribe(),
        None => return,
    };
    while generation.changed().await.is_ok() {
        let Some(context) = context.upgrade() else {
            return;
        };
        revalidate(&context.store, &context.connections);
    }
}
