//! Endpoints given by name (a ServiceEntry host with `resolution: DNS` that uses the waypoint):
//! the waypoint resolves the names its clusters hold with the system's resolver and hands the
//! answers to the store, which converts the configuration again with them; a request only
//! reads the configuration in force, nothing is resolved on its path. A failed or empty answer
//! keeps the last good addresses; a name no cluster holds any more is forgotten.

use std::collections::BTreeSet;

use tracing::warn;
use weft_proxy_core::dns::{MAX_HOSTNAMES, REFRESH, lookup};

use crate::model::ResolvedNames;
use crate::store::ConfigStore;

/// Resolves the names of `store`'s clusters until the task is dropped: at once when a
/// configuration brings names, and every [`REFRESH`].
pub async fn run(store: ConfigStore) {
    let mut changes = store.version();
    loop {
        let names: BTreeSet<String> = store
            .snapshot()
            .clusters
            .values()
            .flat_map(|c| c.hostnames.iter().cloned())
            .collect();
        if names.len() > MAX_HOSTNAMES {
            warn!(
                names = names.len(),
                limit = MAX_HOSTNAMES,
                "too many endpoint names to resolve; the rest stay unresolved"
            );
        }
        let known = store.resolved_names();
        let mut resolved = ResolvedNames::new();
        for name in names.into_iter().take(MAX_HOSTNAMES) {
            match lookup(&name).await {
                Ok(addresses) => {
                    resolved.insert(name, addresses);
                }
                Err(error) => {
                    warn!(hostname = %name, %error, "endpoint name not resolved; keeping the last addresses");
                    if let Some(last) = known.get(&name) {
                        resolved.insert(name, last.clone());
                    }
                }
            }
        }
        if resolved != known {
            store.set_resolved_names(resolved);
        }
        // Our own conversion wakes the watch too: only another configuration cuts the wait.
        changes.borrow_and_update();
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(REFRESH) => {}
        }
    }
}
