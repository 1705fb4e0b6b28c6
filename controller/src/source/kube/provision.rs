//! Keeps the ServiceAccount, Deployment and Service of every Gateway of class `istio` and
//! `istio-waypoint` in the API server (Kubernetes mode, with a proxy image configured), as
//! Istio's deployment controller does: created when missing, replaced when what this
//! controller owns in them (labels, owner references, the spec it sets) differs; a Service
//! keeps what the API server assigned (`clusterIP`, node ports). They are owner-referenced to
//! their Gateway, so Kubernetes' garbage collector removes them with it. A failed write is
//! logged and retried at the next change of the index.

use std::collections::BTreeMap;
use std::sync::Arc;

use ::kube::Client;
use ::kube::api::{Api, ApiResource, DynamicObject, PostParams};
use serde_json::Value;
use tokio::sync::watch;

use crate::index::LiveIndex;
use crate::translate::provision::{ProvisionSettings, gateway_objects};

/// `(kind, namespace, name)` of a provisioned object.
type ObjectKey = (String, String, String);

/// Keeps the provisioned objects in step with the Gateways until shutdown.
pub async fn keep_provisioned(
    client: Client,
    index: Arc<LiveIndex>,
    settings: ProvisionSettings,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut written: BTreeMap<ObjectKey, Value> = BTreeMap::new();
    let mut changes = index.subscribe();
    changes.borrow_and_update();
    loop {
        let snapshot = index.snapshot();
        let wanted: Vec<Value> = snapshot
            .gateways
            .values()
            .filter_map(|g| gateway_objects(g, &settings))
            .flatten()
            .collect();
        for object in wanted {
            let key = key_of(&object);
            if written.get(&key) == Some(&object) {
                continue;
            }
            match apply(&client, &object).await {
                Ok(()) => {
                    tracing::info!(kind = %key.0, namespace = %key.1, name = %key.2, "gateway object provisioned");
                    written.insert(key, object);
                }
                Err(error) => {
                    tracing::warn!(kind = %key.0, namespace = %key.1, name = %key.2, %error, "provisioning a gateway object failed; retrying at the next change");
                }
            }
        }
        if !crate::index::settled_change(&mut changes, &mut shutdown).await {
            return;
        }
    }
}

fn key_of(object: &Value) -> ObjectKey {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    (
        text(&object["kind"]),
        text(&object["metadata"]["namespace"]),
        text(&object["metadata"]["name"]),
    )
}

fn api_resource(object: &Value) -> ApiResource {
    let (group, version) = match object["apiVersion"]
        .as_str()
        .unwrap_or("v1")
        .split_once('/')
    {
        Some((group, version)) => (group.to_owned(), version.to_owned()),
        None => (
            String::new(),
            object["apiVersion"].as_str().unwrap_or("v1").to_owned(),
        ),
    };
    let kind = object["kind"].as_str().unwrap_or_default().to_owned();
    let plural = format!("{}s", kind.to_ascii_lowercase());
    ApiResource {
        api_version: if group.is_empty() {
            version.clone()
        } else {
            format!("{group}/{version}")
        },
        group,
        version,
        kind,
        plural,
    }
}

/// Creates `object`, or replaces the existing one with what this controller owns in it
/// when that differs.
async fn apply(client: &Client, object: &Value) -> Result<(), ::kube::Error> {
    let (_, namespace, name) = key_of(object);
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &namespace, &api_resource(object));
    let wanted: DynamicObject =
        serde_json::from_value(object.clone()).map_err(::kube::Error::SerdeError)?;
    let Some(existing) = api.get_opt(&name).await? else {
        api.create(&PostParams::default(), &wanted).await?;
        return Ok(());
    };
    let mut merged = existing.clone();
    merged.metadata.labels = wanted.metadata.labels.clone();
    merged.metadata.owner_references = wanted.metadata.owner_references.clone();
    let Some(mut spec) = wanted.data.get("spec").cloned() else {
        if merged.metadata.labels == existing.metadata.labels
            && merged.metadata.owner_references == existing.metadata.owner_references
        {
            return Ok(());
        }
        api.replace(&name, &PostParams::default(), &merged).await?;
        return Ok(());
    };
    if let (Some(old), Some(new)) = (existing.data.get("spec"), spec.as_object_mut()) {
        // What the API server assigned to a Service stays.
        for field in ["clusterIP", "clusterIPs", "ipFamilies", "ipFamilyPolicy"] {
            if let Some(value) = old.get(field) {
                new.insert(field.to_owned(), value.clone());
            }
        }
    }
    if merged.data.get("spec") == Some(&spec)
        && merged.metadata.labels == existing.metadata.labels
        && merged.metadata.owner_references == existing.metadata.owner_references
    {
        return Ok(());
    }
    if let Some(data) = merged.data.as_object_mut() {
        data.insert("spec".to_owned(), spec);
    }
    api.replace(&name, &PostParams::default(), &merged).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
