//! The agent's side of the delta ADS stream: handlers that apply `istio.workload.Address`,
//! `istio.security.Authorization` and `weft.mesh.v1.MeshConfig` resources to the workload
//! store, and the client wiring.
//!
//! Every update is all or nothing: each resource is converted first, and if any fails the whole
//! update is NACKed with every error, and the store keeps its last good state.

use prost::Message;
use weft_proto::{
    ADDRESS_TYPE_URL, AUTHORIZATION_TYPE_URL, MESH_CONFIG_NAME, MESH_CONFIG_TYPE_URL,
    envoy::{config::core::v3::Node, service::discovery::v3::Resource},
    istio::{security, workload},
    mesh,
};
use weft_xds::{DeltaClient, Handler, Target, Update};

use crate::state::{
    AddressResource, OutboundTrafficPolicy, WorkloadStore, authorization_from_proto,
};

/// Applies `istio.workload.Address` updates. Resource names: a workload's uid, or
/// `namespace/hostname` for a service.
pub struct AddressHandler {
    store: WorkloadStore,
}

impl AddressHandler {
    pub fn new(store: WorkloadStore) -> Self {
        Self { store }
    }
}

fn decode<M: Message + Default>(resource: &Resource) -> Result<M, String> {
    let body = resource
        .resource
        .as_ref()
        .ok_or_else(|| format!("{}: no body", resource.name))?;
    M::decode(body.value.as_slice()).map_err(|e| format!("{}: undecodable: {e}", resource.name))
}

/// The name a resource must be sent under: a workload's uid, a service's `namespace/hostname`.
fn address_key(address: &AddressResource) -> String {
    match address {
        AddressResource::Workload(w) => w.uid.clone(),
        AddressResource::Service(s) => s.key().to_string(),
    }
}

/// Refuses a resource whose name is not the key it is stored under: its later removal (by
/// name) would miss the stored entry and leave it in force, a stale workload or policy.
fn named_as_keyed(name: &str, key: &str) -> Result<(), String> {
    if name == key {
        Ok(())
    } else {
        Err(format!(
            "{name}: resource name differs from its key {key:?}"
        ))
    }
}

impl Handler for AddressHandler {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        let mut converted = Vec::with_capacity(update.added.len());
        let mut errors = Vec::new();
        for resource in &update.added {
            match decode::<workload::Address>(resource)
                .and_then(|a| AddressResource::try_from(a).map_err(|e| e.to_string()))
                .and_then(|a| named_as_keyed(&resource.name, &address_key(&a)).map(|()| a))
            {
                Ok(address) => converted.push(address),
                Err(error) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            tracing::warn!(errors = %errors.join("; "), "rejecting address update");
            return Err(errors.join("; "));
        }
        // One change for the whole update: each connection sees all of it or none of it.
        self.store.apply_addresses(&update.removed, converted);
        tracing::debug!(
            added = update.added.len(),
            removed = update.removed.len(),
            full = update.full_state,
            "applied address update"
        );
        Ok(())
    }
}

/// Applies `istio.security.Authorization` updates. Resource names: `namespace/name`.
pub struct AuthorizationHandler {
    store: WorkloadStore,
}

impl AuthorizationHandler {
    pub fn new(store: WorkloadStore) -> Self {
        Self { store }
    }
}

impl Handler for AuthorizationHandler {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        let mut converted = Vec::with_capacity(update.added.len());
        let mut errors = Vec::new();
        for resource in &update.added {
            match decode::<security::Authorization>(resource)
                .and_then(|a| authorization_from_proto(a).map_err(|e| e.to_string()))
                .and_then(|p| named_as_keyed(&resource.name, &p.key()).map(|()| p))
            {
                Ok(policy) => converted.push(policy),
                Err(error) => errors.push(error),
            }
        }
        if !errors.is_empty() {
            tracing::warn!(errors = %errors.join("; "), "rejecting authorization update");
            return Err(errors.join("; "));
        }
        // Indexed once for the whole update, not once per policy.
        self.store.apply_policies(&update.removed, converted);
        Ok(())
    }
}

/// Applies the `weft.mesh.v1.MeshConfig` resource (one, named `mesh`): the mesh's outbound
/// traffic policy. Its removal restores Istio's default, `ALLOW_ANY`.
pub struct MeshConfigHandler {
    store: WorkloadStore,
}

impl MeshConfigHandler {
    pub fn new(store: WorkloadStore) -> Self {
        Self { store }
    }
}

impl Handler for MeshConfigHandler {
    fn apply(&mut self, update: Update) -> Result<(), String> {
        let mut policy = None;
        for resource in &update.added {
            named_as_keyed(&resource.name, MESH_CONFIG_NAME)?;
            let config = decode::<mesh::MeshConfig>(resource)?;
            policy = Some(
                match mesh::OutboundTrafficPolicy::try_from(config.outbound_traffic_policy) {
                    Ok(mesh::OutboundTrafficPolicy::AllowAny) => OutboundTrafficPolicy::AllowAny,
                    Ok(mesh::OutboundTrafficPolicy::RegistryOnly) => {
                        OutboundTrafficPolicy::RegistryOnly
                    }
                    Err(_) => {
                        return Err(format!(
                            "{}: unknown outbound traffic policy {}",
                            resource.name, config.outbound_traffic_policy
                        ));
                    }
                },
            );
        }
        if update.removed.iter().any(|name| name == MESH_CONFIG_NAME) {
            policy.get_or_insert(OutboundTrafficPolicy::AllowAny);
        }
        if let Some(policy) = policy {
            self.store.set_outbound_traffic_policy(policy);
            tracing::info!(outbound_traffic_policy = ?policy, "applied mesh configuration");
        }
        Ok(())
    }
}

/// The agent's ADS client: identifies as `node` and subscribes to its resource types. Every
/// address of the mesh, or `on_demand` (ztunnel's `XDS_ON_DEMAND`) only the workloads of its
/// node up front and any other address at the first connection to it (the store asks through
/// the client's [`weft_xds::Demand`]); policies and the mesh configuration always whole.
pub fn client(
    target: Target,
    node_name: &str,
    cluster: &str,
    store: &WorkloadStore,
    on_demand: bool,
) -> DeltaClient {
    let node = Node {
        id: format!("node-agent~{node_name}"),
        cluster: cluster.to_string(),
        metadata: Some(prost_types::Struct {
            fields: [("NODE_NAME", node_name), ("PROXY_KIND", "node-agent")]
                .into_iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::StringValue(v.to_string())),
                        },
                    )
                })
                .collect(),
        }),
        ..Default::default()
    };
    let addresses = if on_demand {
        vec![weft_proto::node_subscription(node_name)]
    } else {
        Vec::new()
    };
    let client = DeltaClient::new(target, node)
        .subscribe_names(
            ADDRESS_TYPE_URL,
            addresses,
            AddressHandler::new(store.clone()),
        )
        .subscribe(
            AUTHORIZATION_TYPE_URL,
            AuthorizationHandler::new(store.clone()),
        )
        .subscribe(MESH_CONFIG_TYPE_URL, MeshConfigHandler::new(store.clone()));
    if on_demand {
        store.set_demand(client.demand());
    }
    client
}

#[cfg(test)]
mod tests;
