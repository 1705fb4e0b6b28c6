//! The mesh root in every namespace, as istiod's namespace controller publishes it: the
//! `istio-ca-root-cert` ConfigMap (labelled `istio.io/config: "true"`) in each namespace that
//! is not terminating, except Kubernetes' own `kube-public`, `kube-node-lease` and
//! `local-path-storage` (`kube-system` is served: ztunnel may run there), so that a proxy in any
//! namespace (a provisioned gateway, a waypoint) mounts the root it verifies the controller by.
//!
//! A namespace is published to when it first appears and again after a failure; a ConfigMap
//! edited or deleted afterwards is restored at the next start (istiod also watches the
//! ConfigMaps; not done here).

use std::collections::BTreeSet;
use std::sync::Arc;

use kube::Client;
use tokio::sync::watch;

use super::publish_root;
use crate::index::{ConfigIndex, LiveIndex};

/// Namespaces istiod never publishes to (its injector's ignored ones, less `kube-system`).
pub const IGNORED_NAMESPACES: [&str; 3] = ["kube-public", "kube-node-lease", "local-path-storage"];

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

/// Publishes `root_pem` into every namespace as they appear, until `shutdown`.
pub async fn keep_root_published(
    client: Client,
    index: Arc<LiveIndex>,
    root_pem: String,
    mut shutdown: watch::Receiver<bool>,
) {
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
                // Tried again at the next change of the index.
                Err(error) => tracing::warn!(%namespace, %error, "cannot publish the mesh root"),
            }
        }
        if !crate::index::settled_change(&mut changes, &mut shutdown).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Namespace, NamespaceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

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
