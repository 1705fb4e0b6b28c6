//! Writes the status of Gateway API mesh routes back to the API server (Kubernetes mode), as
//! Istio does: for each HTTPRoute, GRPCRoute and TCPRoute with a parent that is ours (a Service
//! or a waypoint), the `status.parents` entries of controller `istio.io/mesh-controller`, with
//! the conditions [`route_statuses`] computes. Other controllers' entries are kept; an entry is
//! written only when it changed (the controller's own write comes back through the watch and
//! finds nothing to do). A failed write is retried at the next change of the index.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::kube::Client;
use ::kube::api::{Api, DynamicObject, Patch, PatchParams};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::chrono::Utc;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::api_resource_at;
use crate::index::LiveIndex;
use crate::translate::MeshSettings;
use crate::translate::gateway_api::{MESH_CONTROLLER, ParentStatus, RouteStatus, route_statuses};

type RouteKey = (crate::model::ResourceKind, String, String);

/// Keeps route status in step with the index until shutdown.
pub async fn keep_route_statuses(
    client: Client,
    index: Arc<LiveIndex>,
    settings: MeshSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: BTreeMap<RouteKey, Vec<ParentStatus>> = BTreeMap::new();
    let mut changes = index.subscribe();
    changes.borrow_and_update();
    loop {
        let snapshot = index.snapshot();
        let statuses = route_statuses(&snapshot, &settings);
        let mut current: BTreeMap<RouteKey, RouteStatus> = statuses
            .into_iter()
            .map(|s| {
                (
                    (s.kind.resource_kind(), s.namespace.clone(), s.name.clone()),
                    s,
                )
            })
            .collect();
        // Routes that no longer have a parent of ours lose this controller's entries.
        let gone: Vec<RouteKey> = written
            .keys()
            .filter(|k| !current.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            let empty = RouteStatus {
                kind: route_kind(key.0),
                namespace: key.1.clone(),
                name: key.2.clone(),
                generation: None,
                parents: Vec::new(),
            };
            current.insert(key, empty);
        }
        for (key, status) in current {
            if written.get(&key) == Some(&status.parents) {
                continue;
            }
            match write(&client, &status).await {
                Ok(()) if status.parents.is_empty() => {
                    written.remove(&key);
                }
                Ok(()) => {
                    tracing::info!(kind = %key.0, namespace = %key.1, name = %key.2, "route status written");
                    written.insert(key, status.parents);
                }
                Err(error) => {
                    tracing::warn!(kind = %key.0, namespace = %key.1, name = %key.2, %error, "writing route status failed; retrying at the next change");
                }
            }
        }
        if !crate::index::settled_change(&mut changes, &mut shutdown).await {
            return;
        }
    }
}

fn route_kind(kind: crate::model::ResourceKind) -> crate::translate::gateway_api::RouteKind {
    use crate::model::ResourceKind as K;
    use crate::translate::gateway_api::RouteKind as R;
    match kind {
        K::GRPCRoute => R::Grpc,
        K::TCPRoute => R::Tcp,
        _ => R::Http,
    }
}

/// Patches one route's `status.parents`: the entries of other controllers as they are, this
/// controller's replaced. A route that no longer exists (or whose kind is not served) is done.
async fn write(client: &Client, status: &RouteStatus) -> Result<(), ::kube::Error> {
    let kind = status.kind.resource_kind();
    for version in kind.versions() {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            &status.namespace,
            &api_resource_at(kind, version),
        );
        let object = match api.get_opt(&status.name).await {
            Ok(object) => object,
            Err(::kube::Error::Api(e)) if e.code == 404 => continue,
            Err(error) => return Err(error),
        };
        let Some(object) = object else {
            return Ok(());
        };
        let previous = object.data.get("status").cloned().unwrap_or(Value::Null);
        let now = serde_json::to_value(Time(Utc::now()))
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut parents: Vec<Value> = previous
            .get("parents")
            .and_then(Value::as_array)
            .map(|parents| {
                parents
                    .iter()
                    .filter(|p| {
                        p.get("controllerName").and_then(Value::as_str) != Some(MESH_CONTROLLER)
                    })
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        parents.extend(status.parents_json(&previous, &now));
        let patch = json!({"status": {"parents": parents}});
        api.patch_status(&status.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
