//! Endpoints given by name (a ServiceEntry host with `resolution: DNS` that uses the waypoint):
//! the waypoint resolves the names its clusters hold ([`weft_proxy_core::dns`], TTL-driven) and
//! hands each round's answers to the store at once, which converts the configuration again
//! with them; a request only reads the configuration in force, nothing is resolved on its path.
//! A failed or empty answer keeps the last good addresses; a name no cluster holds any more is
//! forgotten.

use std::net::IpAddr;
use std::sync::Mutex;

use weft_proxy_core::dns::NameTable;

use crate::model::ResolvedNames;
use crate::store::ConfigStore;

/// The store's names, with this round's answers gathered before they are applied together.
struct Names {
    store: ConfigStore,
    round: Mutex<ResolvedNames>,
}

impl Names {
    fn round(&self) -> std::sync::MutexGuard<'_, ResolvedNames> {
        self.round.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl NameTable for Names {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .store
            .snapshot()
            .clusters
            .values()
            .flat_map(|c| c.hostnames.iter().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn retain(&self, names: &[String]) {
        let mut round = self.round();
        *round = self.store.resolved_names();
        round.retain(|name, _| names.contains(name));
    }

    fn set(&self, name: &str, addresses: Vec<IpAddr>) {
        self.round().insert(name.to_owned(), addresses);
    }

    fn round_done(&self) {
        let round = self.round().clone();
        if round != self.store.resolved_names() {
            self.store.set_resolved_names(round);
        }
    }
}

/// Resolves the names of `store`'s clusters until the task is dropped: at once when a
/// configuration brings names, and again as their answers expire.
pub async fn run(store: ConfigStore, resolv_conf: Option<std::path::PathBuf>) {
    let changes = store.version();
    let names = Names {
        store,
        round: Mutex::default(),
    };
    weft_proxy_core::dns::run_configured(names, changes, resolv_conf).await;
}
