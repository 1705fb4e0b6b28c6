//! Writes the addresses allocated to ServiceEntry hosts (`translate::auto_allocate`) into each
//! entry's `status.addresses` (Kubernetes mode), as Istio's IP auto-allocation controller
//! does: `[{host, value}]`, IPv4 then IPv6 per host. An entry whose status already says so is
//! left alone (the controller's own write comes back through the watch and finds nothing to
//! do); since the allocation keeps what a status names, what is written once stays. An entry
//! that no longer gets addresses has those in its status cleared. A failed write is retried at
//! the next change of the index.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use ::kube::{
    Client,
    api::{Api, DynamicObject, Patch, PatchParams},
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::api_resource_at;
use crate::{
    index::{ConfigIndex, LiveIndex},
    model::ResourceKind,
    translate::auto_allocate,
};

/// Keeps `status.addresses` in step with the allocation until shutdown.
pub async fn keep_entry_addresses(
    client: Client,
    index: Arc<LiveIndex>,
    ranges: auto_allocate::Ranges,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = index.subscribe();
    changes.borrow_and_update();
    loop {
        let snapshot = index.snapshot();
        for ((namespace, name), addresses) in pending(&snapshot, &ranges) {
            match write(&client, &namespace, &name, &addresses).await {
                Ok(()) => {
                    tracing::info!(%namespace, %name, "ServiceEntry addresses written to its status");
                }
                Err(error) => {
                    tracing::warn!(%namespace, %name, %error, "writing ServiceEntry status failed; retrying at the next change");
                }
            }
        }
        if !crate::index::settled_change(&mut changes, &mut shutdown).await {
            return;
        }
    }
}

/// The entries whose `status.addresses` differ from their allocation, with the value to write.
pub fn pending(
    index: &ConfigIndex,
    ranges: &auto_allocate::Ranges,
) -> BTreeMap<(String, String), Value> {
    let allocated = auto_allocate::allocate(index, ranges).by_entry();
    let mut out = BTreeMap::new();
    for entry in index.service_entries.values() {
        let key = (
            entry.metadata.namespace.clone().unwrap_or_default(),
            entry.metadata.name.clone().unwrap_or_default(),
        );
        let current = entry
            .status
            .as_ref()
            .map_or(&Value::Null, |s| &s.0["addresses"]);
        let Some(hosts) = allocated.get(&key) else {
            // No longer allocated (opted out, declared addresses, resolution NONE): addresses
            // left in its status are cleared, as Istio's `clearStaleAddresses` does.
            if current.as_array().is_some_and(|a| !a.is_empty()) {
                out.insert(key, Value::Array(Vec::new()));
            }
            continue;
        };
        let wanted = addresses_json(hosts);
        if *current != wanted {
            out.insert(key, wanted);
        }
    }
    out
}

fn addresses_json(hosts: &[(String, IpAddr)]) -> Value {
    Value::Array(
        hosts
            .iter()
            .map(|(host, address)| json!({"host": host, "value": address.to_string()}))
            .collect(),
    )
}

/// Patches one entry's `status.addresses` (the rest of its status is kept). An entry that no
/// longer exists is done.
async fn write(
    client: &Client,
    namespace: &str,
    name: &str,
    addresses: &Value,
) -> Result<(), ::kube::Error> {
    let kind = ResourceKind::ServiceEntry;
    for version in kind.versions() {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), namespace, &api_resource_at(kind, version));
        match api.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => return Ok(()),
            Err(::kube::Error::Api(e)) if e.code == 404 => continue,
            Err(error) => return Err(error),
        }
        let patch = json!({"status": {"addresses": addresses}});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
