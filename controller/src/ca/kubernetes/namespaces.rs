//! The mesh root in every namespace, as istiod's namespace controller publishes it: the
//! `istio-ca-root-cert` ConfigMap (labelled `istio.io/config: "true"`) in each namespace that
//! is not terminating, except Kubernetes' own `kube-public`, `kube-node-lease` and
//! `local-path-storage` (`kube-system` is served: ztunnel may run there), so that a proxy in any
//! namespace (a provisioned gateway, a waypoint) mounts the root it verifies the controller by.
//!
//! A namespace is published to when it first appears. The ConfigMaps of that name are watched
//! in every namespace, as istiod watches them: one edited to hold anything but the root, or
//! deleted, is written again at once. A write that fails is tried again at the next change, or
//! after [`RETRY`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;

use super::{ROOT_CERT_KEY, ROOT_CONFIG_MAP, publish_root};
use crate::index::{ConfigIndex, LiveIndex};

/// Namespaces istiod never publishes to (its injector's ignored ones, less `kube-system`).
pub const IGNORED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];

/// How long a namespace whose write failed waits for its next try when nothing else changes.
pub const RETRY: Duration = Duration::from_secs(5);

/// The namespaces that should hold the root ConfigMap.
pub fn namespaces_to_publish(index: &ConfigIndex) -> BTreeSet<String> {
    index
        .namespaces
        .iter()
        .filter(|(name, _)| !IGNORED_NAMESPACES.contains(&name.as_str()))
        .filter(|(_, namespace)| {
            namespace.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// The namespace of a root ConfigMap that no longer holds exactly `root_pem` (an edit or a
/// delete), so that it is written again.
fn spoiled(event: watcher::Event<ConfigMap>, root_pem: &str) -> Option<String> {
    match event {
        watcher::Event::Apply(map) | watcher::Event::InitApply(map) => {
            let data = map.data.as_ref();
            let intact = data.is_some_and(|d| {
                d.len() == 1 && d.get(ROOT_CERT_KEY).map(String::as_str) == Some(root_pem)
            });
            (!intact).then(|| map.namespace()).flatten()
        }
        watcher::Event::Delete(map) => map.namespace(),
        watcher::Event::Init | watcher::Event::InitDone => None,
    }
}

/// Publishes `root_pem` into every namespace as they appear, and again wherever it is edited
/// or deleted, until `shutdown`.
pub async fn keep_root_published(
    client: Client,
    index: Arc<LiveIndex>,
    root_pem: String,
    mut shutdown: watch::Receiver<bool>,
) {
    let maps: Api<ConfigMap> = Api::all(client.clone());
    let by_name = watcher::Config::default().fields(&format!("metadata.name={ROOT_CONFIG_MAP}"));
    let mut events = std::pin::pin!(watcher::watcher(maps, by_name).default_backoff());
    let mut published: BTreeSet<String> = BTreeSet::new();
    let mut changes = index.subscribe();
    loop {
        let wanted = namespaces_to_publish(&index.snapshot());
        published.retain(|ns| wanted.contains(ns));
        for namespace in wanted.difference(&published.clone()) {
            match publish_root(client.clone(), namespace, &root_pem).await {
                Ok(()) => {
                    published.insert(namespace.clone());
                }
                Err(error) => tracing::warn!(%namespace, %error, "cannot publish the mesh root"),
            }
        }
        let failed = published.len() < wanted.len();
        tokio::select! {
            settled = crate::index::settled_change(&mut changes, &mut shutdown) => {
                if !settled {
                    return;
                }
            }
            event = events.next() => match event {
                None => return,
                Some(Ok(event)) => {
                    if let Some(namespace) = spoiled(event, &root_pem)
                        && published.remove(&namespace)
                    {
                        tracing::info!(%namespace, config_map = ROOT_CONFIG_MAP, "the published root was edited or deleted; restoring it");
                    }
                }
                Some(Err(error)) => {
                    tracing::debug!(%error, "watch of the root ConfigMaps failed; retrying");
                }
            },
            () = tokio::time::sleep(RETRY), if failed => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, NamespaceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::{Value, json};
    use weft_fake_apiserver::FakeApiServer;

    use super::*;
    use crate::model::Resource;
    use crate::source::kube::ResourceSink;
    use crate::source::kube::test_support::eventually;

    const ROOT: &str = "-----BEGIN CERTIFICATE-----\nroot\n-----END CERTIFICATE-----\n";

    fn root_in(fake: &FakeApiServer, namespace: &str) -> Option<Value> {
        fake.get("v1", "ConfigMap", namespace, ROOT_CONFIG_MAP)
            .map(|map| map["data"].clone())
    }

    /// istiod's namespace controller restores a root ConfigMap that was edited or deleted; so
    /// does the controller, without a restart and without touching an intact one.
    #[tokio::test]
    async fn an_edited_or_deleted_root_is_restored() {
        let fake = FakeApiServer::start().await.unwrap();
        let index = Arc::new(LiveIndex::default());
        for name in ["shop", "kube-public"] {
            index.apply(
                Resource::Namespace(
                    serde_json::from_value(json!({"metadata": {"name": name}})).unwrap(),
                ),
                Vec::new(),
            );
        }
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(keep_root_published(
            fake.client().unwrap(),
            index.clone(),
            ROOT.to_owned(),
            shutdown,
        ));
        let intact = json!({ROOT_CERT_KEY: ROOT});
        eventually("the root in shop", || {
            root_in(&fake, "shop") == Some(intact.clone())
        })
        .await;
        assert_eq!(root_in(&fake, "kube-public"), None);

        // Edited: the data is written back.
        let mut edited = fake
            .get("v1", "ConfigMap", "shop", ROOT_CONFIG_MAP)
            .unwrap();
        edited["data"] = json!({ROOT_CERT_KEY: "forged", "extra": "x"});
        fake.update(edited).unwrap();
        eventually("the edited root restored", || {
            root_in(&fake, "shop") == Some(intact.clone())
        })
        .await;

        // Deleted: created again.
        fake.delete("v1", "ConfigMap", "shop", ROOT_CONFIG_MAP)
            .unwrap();
        eventually("the deleted root restored", || {
            root_in(&fake, "shop") == Some(intact.clone())
        })
        .await;

        // A namespace that appears later is published to; the intact ones are not rewritten.
        let version = fake
            .get("v1", "ConfigMap", "shop", ROOT_CONFIG_MAP)
            .unwrap()["metadata"]["resourceVersion"]
            .clone();
        index.apply(
            Resource::Namespace(
                serde_json::from_value(json!({"metadata": {"name": "cart"}})).unwrap(),
            ),
            Vec::new(),
        );
        eventually("the root in cart", || {
            root_in(&fake, "cart") == Some(intact.clone())
        })
        .await;
        assert_eq!(
            fake.get("v1", "ConfigMap", "shop", ROOT_CONFIG_MAP)
                .unwrap()["metadata"]["resourceVersion"],
            version
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[test]
    fn every_namespace_but_kubernetes_own_and_terminating_ones() {
        let mut index = ConfigIndex::default();
        for (name, phase) in [
            ("shop", "Active"),
            ("kube-system", "Active"),
            ("kube-public", "Active"),
            ("kube-node-lease", "Active"),
            ("local-path-storage", "Active"),
            ("leaving", "Terminating"),
        ] {
            index.namespaces.insert(
                name.to_owned(),
                Namespace {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        ..Default::default()
                    },
                    status: Some(NamespaceStatus {
                        phase: Some(phase.to_owned()),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            );
        }
        assert_eq!(
            namespaces_to_publish(&index)
                .into_iter()
                .collect::<Vec<_>>(),
            ["kube-system", "shop"]
        );
    }
}
