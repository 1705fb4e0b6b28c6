//! The agent assembled: the workload store, Istio's metrics, the context every listener shares
//! and the manager of the served pods, built in one place. The binary builds it from its
//! configuration (with the eBPF redirection, the worker threads and the process's connection
//! limits); tests build it from a test CA and a stand-in for the redirection, and get the same
//! agent the binary runs.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use weft_hbone::admission::ConnectionLimits;
use weft_identity::CertificateSource;
use weft_proxy_core::drain::DrainSource;
use weft_workers::Workers;

use crate::{
    dns_proxy::server::DnsSettings,
    ebpf::{Enroller, OriginalDst},
    metrics::Metrics,
    netns::PodNetns,
    pods::PodManager,
    proxy::ProxyContext,
    state::WorkloadStore,
};

/// A running agent's parts: what the xDS client fills, what the admin server reads, what the
/// enrollment server drives.
pub struct Agent {
    /// The workloads and services the controller sent.
    pub store: WorkloadStore,
    /// The served pods: enrollment adds and removes them.
    pub pods: Arc<PodManager>,
    /// Istio's metrics of every connection.
    pub registry: Arc<Registry>,
}

impl Agent {
    /// Starts building an agent that presents `certificates` and asks `original_destination`
    /// where a redirected connection was going.
    pub fn build(
        certificates: Arc<dyn CertificateSource>,
        original_destination: Arc<dyn OriginalDst>,
    ) -> AgentBuilder {
        AgentBuilder {
            certificates,
            original_destination,
            trust_domain: weft_istio::defaults::DEFAULT_TRUST_DOMAIN.to_string(),
            store: WorkloadStore::new(),
            workers: None,
            capture: None,
            drain: DrainSource::never(),
            dns: DnsSettings::default(),
        }
    }
}

/// How an [`Agent`] is put together; [`AgentBuilder::start`] makes it.
pub struct AgentBuilder {
    certificates: Arc<dyn CertificateSource>,
    original_destination: Arc<dyn OriginalDst>,
    trust_domain: String,
    store: WorkloadStore,
    workers: Option<(Workers, ConnectionLimits)>,
    capture: Option<Arc<dyn Enroller>>,
    drain: DrainSource,
    dns: DnsSettings,
}

impl AgentBuilder {
    /// The mesh's trust domain: peers from any other are refused (default `cluster.local`).
    pub fn trust_domain(mut self, trust_domain: impl Into<String>) -> Self {
        self.trust_domain = trust_domain.into();
        self
    }

    /// A store filled beforehand (tests), instead of an empty one for the xDS client to fill.
    pub fn store(mut self, store: WorkloadStore) -> Self {
        self.store = store;
        self
    }

    /// Serves pods on `workers`, within `limits`. Without this, pods are served on the runtime
    /// `start` is called from, within the limits of the open-files limit.
    pub fn workers(mut self, workers: Workers, limits: ConnectionLimits) -> Self {
        self.workers = Some((workers, limits));
        self
    }

    /// The eBPF redirection that enrolled pods are captured by. Without it, something else
    /// steers traffic (tests of the proxy alone).
    pub fn capture(mut self, capture: Arc<dyn Enroller>) -> Self {
        self.capture = Some(capture);
        self
    }

    /// Drains every pod's listeners with `drain` (the agent's, after SIGTERM).
    pub fn drain(mut self, drain: DrainSource) -> Self {
        self.drain = drain;
        self
    }

    /// The pods' DNS proxy: the cluster domain and the upstream resolver's configuration
    /// (default `cluster.local` and `/etc/resolv.conf`).
    pub fn dns(mut self, dns: DnsSettings) -> Self {
        self.dns = dns;
        self
    }

    /// Builds the agent. Its open connections are decided again on every change of the store
    /// by a task on the runtime this is called from.
    pub fn start(self) -> std::io::Result<Agent> {
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        self.store.register_on_demand_metrics(&mut registry);
        weft_proxy_core::metrics::register_process_metrics(
            &mut registry,
            weft_proxy_core::metrics::Component::NodeAgent,
        );
        weft_proxy_core::metrics::register_certificate_expiry(
            &mut registry,
            Arc::clone(&self.certificates),
        );
        let (workers, limits) = match self.workers {
            Some(chosen) => chosen,
            None => (
                Workers::current_runtime(),
                ConnectionLimits::for_open_files_limit(),
            ),
        };
        let context = ProxyContext::with_workers(
            self.store.clone(),
            self.certificates,
            metrics,
            self.original_destination,
            self.trust_domain,
            workers,
            limits,
        );
        let pods = PodManager::new(context, PodNetns::current()?, self.capture)
            .with_drain(self.drain)
            .with_dns(self.dns);
        Ok(Agent {
            store: self.store,
            pods: Arc::new(pods),
            registry: Arc::new(registry),
        })
    }
}
