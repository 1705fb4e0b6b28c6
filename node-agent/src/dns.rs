//! Hostname endpoints (a ServiceEntry's `resolution: DNS`): the agent resolves the names of
//! workloads that have no address ([`weft_proxy_core::dns`], TTL-driven) and records the
//! answers in the store, where planning a connection reads them; nothing is resolved on a
//! connection's path.

use std::net::IpAddr;

use weft_proxy_core::dns::NameTable;

use crate::state::WorkloadStore;

impl NameTable for WorkloadStore {
    fn names(&self) -> Vec<String> {
        self.hostnames_to_resolve()
    }

    fn retain(&self, names: &[String]) {
        self.retain_resolved(names);
    }

    fn set(&self, name: &str, addresses: Vec<IpAddr>) {
        self.set_resolved(name, addresses);
    }
}

/// Resolves the store's hostnames until the task is dropped.
pub async fn run(store: WorkloadStore) {
    let changes = store.subscribe();
    weft_proxy_core::dns::run(store, changes).await;
}

#[cfg(test)]
mod tests;
