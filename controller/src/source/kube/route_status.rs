//! Writes the status of Gateway API routes and ingress Gateways back to the API server
//! (Kubernetes mode), as Istio does: for each HTTPRoute, GRPCRoute, TCPRoute and TLSRoute with
//! a parent that is ours, the `status.parents` entries of controller `istio.io/mesh-controller`
//! (a Service or a waypoint) or `istio.io/gateway-controller` (a Gateway of class `istio`),
//! with the conditions [`route_statuses`] computes; and the `status` of each Gateway of class
//! `istio` ([`gateway_statuses`]), and the `Accepted` condition of the GatewayClasses of
//! Istio's controllers ([`gateway_class_statuses`]). Other controllers' entries are kept; an entry is written
//! only when it changed (the controller's own write comes back through the watch and finds
//! nothing to do). A failed write is retried at the next change of the index.

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
use crate::translate::gateway_api::ingress::GATEWAY_CONTROLLER;
use crate::translate::gateway_api::{
    GatewayClassStatus, GatewayStatus, MESH_CONTROLLER, ParentStatus, RouteStatus,
    gateway_class_statuses, gateway_statuses, route_statuses,
};

type RouteKey = (crate::model::ResourceKind, String, String);

/// Keeps route status in step with the index until shutdown.
pub async fn keep_route_statuses(
    client: Client,
    index: Arc<LiveIndex>,
    settings: MeshSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: BTreeMap<RouteKey, Vec<ParentStatus>> = BTreeMap::new();
    let mut written_gateways: BTreeMap<(String, String), GatewayStatus> = BTreeMap::new();
    let mut written_classes: BTreeMap<String, GatewayClassStatus> = BTreeMap::new();
    let mut changes = index.subscribe();
    changes.borrow_and_update();
    loop {
        let snapshot = index.snapshot();
        for status in gateway_class_statuses(&snapshot) {
            if written_classes.get(&status.name) == Some(&status) {
                continue;
            }
            match write_gateway_class(&client, &status).await {
                Ok(()) => {
                    tracing::info!(name = %status.name, "gateway class status written");
                    written_classes.insert(status.name.clone(), status);
                }
                Err(error) => {
                    tracing::warn!(name = %status.name, %error, "writing gateway class status failed; retrying at the next change");
                }
            }
        }
        for status in gateway_statuses(&snapshot, &settings) {
            let key = (status.namespace.clone(), status.name.clone());
            if written_gateways.get(&key) == Some(&status) {
                continue;
            }
            match write_gateway(&client, &status).await {
                Ok(()) => {
                    tracing::info!(namespace = %key.0, name = %key.1, "gateway status written");
                    written_gateways.insert(key, status);
                }
                Err(error) => {
                    tracing::warn!(namespace = %key.0, name = %key.1, %error, "writing gateway status failed; retrying at the next change");
                }
            }
        }
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
        K::TLSRoute => R::Tls,
        _ => R::Http,
    }
}

/// Merges the status `patch` makes from the previous `status` into the object `name` of `kind`,
/// at the first served version that knows it, with the API `api_at` gives for a version. An
/// object that no longer exists (or whose kind is not served) is done.
async fn patch_status(
    kind: crate::model::ResourceKind,
    name: &str,
    api_at: impl Fn(&::kube::api::ApiResource) -> Api<DynamicObject>,
    patch: impl Fn(&Value) -> Value,
) -> Result<(), ::kube::Error> {
    for version in kind.versions() {
        let api = api_at(&api_resource_at(kind, version));
        let object = match api.get_opt(name).await {
            Ok(object) => object,
            Err(::kube::Error::Api(e)) if e.code == 404 => continue,
            Err(error) => return Err(error),
        };
        let Some(object) = object else {
            return Ok(());
        };
        let previous = object.data.get("status").cloned().unwrap_or(Value::Null);
        let patch = json!({ "status": patch(&previous) });
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        return Ok(());
    }
    Ok(())
}

/// Patches one route's `status.parents`: the entries of other controllers as they are, this
/// controller's replaced.
async fn write(client: &Client, status: &RouteStatus) -> Result<(), ::kube::Error> {
    let api_at = |resource: &_| Api::namespaced_with(client.clone(), &status.namespace, resource);
    patch_status(
        status.kind.resource_kind(),
        &status.name,
        api_at,
        |previous| {
            let now = now();
            let mut parents: Vec<Value> = previous
                .get("parents")
                .and_then(Value::as_array)
                .map(|parents| {
                    parents
                        .iter()
                        .filter(|p| {
                            let controller = p.get("controllerName").and_then(Value::as_str);
                            controller != Some(MESH_CONTROLLER)
                                && controller != Some(GATEWAY_CONTROLLER)
                        })
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            parents.extend(status.parents_json(previous, &now));
            json!({ "parents": parents })
        },
    )
    .await
}

/// Replaces one Gateway's `status` (every field of it is this controller's).
async fn write_gateway(client: &Client, status: &GatewayStatus) -> Result<(), ::kube::Error> {
    let api_at = |resource: &_| Api::namespaced_with(client.clone(), &status.namespace, resource);
    patch_status(
        crate::model::ResourceKind::KubernetesGateway,
        &status.name,
        api_at,
        |previous| status.to_json(previous, &now()),
    )
    .await
}

/// Replaces one GatewayClass's `status` (cluster-scoped).
async fn write_gateway_class(
    client: &Client,
    status: &GatewayClassStatus,
) -> Result<(), ::kube::Error> {
    patch_status(
        crate::model::ResourceKind::GatewayClass,
        &status.name,
        |resource| Api::all_with(client.clone(), resource),
        |previous| status.to_json(previous, &now()),
    )
    .await
}

/// The current time as the API writes it.
fn now() -> String {
    serde_json::to_value(Time(Utc::now()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
