//! The mesh configuration from the ConfigMap `istio` (key `mesh`) of the controller's
//! namespace, as istiod reads it when no mesh file is mounted (Kubernetes mode without
//! `--mesh-config`). Read once at start, where an invalid document stops the start as an
//! invalid file does, then watched: each change is handed to
//! [`MeshConfigWatch::apply`], so an invalid one is logged naming the ConfigMap, the field and
//! the reason, and the last good configuration stays in force. A missing ConfigMap, or one
//! without the `mesh` key, is Istio's defaults, as it is for istiod.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;

use crate::mesh_config::{MeshConfigError, MeshConfigWatch, report_refusal};

/// Istio's name of the ConfigMap (without a revision).
pub const CONFIG_MAP: &str = "istio";
/// The key holding the `MeshConfig` document.
pub const MESH_KEY: &str = "mesh";

/// How a ConfigMap's mesh configuration is named in errors: `ConfigMap ns/istio (key mesh)`.
pub fn origin(namespace: &str) -> String {
    format!("ConfigMap {namespace}/{CONFIG_MAP} (key {MESH_KEY})")
}

/// The `MeshConfig` document a ConfigMap holds (`None`: no ConfigMap): empty, Istio's
/// defaults, when there is none.
pub fn document(config_map: Option<&ConfigMap>) -> String {
    config_map
        .and_then(|map| map.data.as_ref())
        .and_then(|data| data.get(MESH_KEY))
        .cloned()
        .unwrap_or_default()
}

/// What the watch of the ConfigMap does to the configuration in force, one event at a time.
#[derive(Debug)]
pub struct MeshConfigMap {
    origin: String,
    /// A (re)list in progress: the ConfigMap it found so far.
    listing: Option<Option<ConfigMap>>,
}

impl MeshConfigMap {
    pub fn new(namespace: &str) -> Self {
        Self {
            origin: origin(namespace),
            listing: None,
        }
    }

    /// Applies one watch event; `None` when the event decides nothing yet (a list in
    /// progress).
    pub fn handle(
        &mut self,
        event: Event<ConfigMap>,
        mesh: &MeshConfigWatch,
    ) -> Option<Result<bool, MeshConfigError>> {
        let config_map = match event {
            Event::Init => {
                self.listing = Some(None);
                return None;
            }
            Event::InitApply(map) => {
                self.listing = Some(Some(map));
                return None;
            }
            Event::InitDone => self.listing.take().flatten(),
            Event::Apply(map) => Some(map),
            Event::Delete(_) => None,
        };
        Some(mesh.apply(&self.origin, document(config_map.as_ref())))
    }
}

/// Reads the ConfigMap now into `mesh`: an invalid document (or an API server that cannot be
/// read) is the error that stops the start.
pub async fn load(
    client: Client,
    namespace: &str,
    mesh: &MeshConfigWatch,
) -> Result<(), MeshConfigError> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let config_map = api
        .get_opt(CONFIG_MAP)
        .await
        .map_err(|e| MeshConfigError::Read {
            path: origin(namespace),
            reason: e.to_string(),
        })?;
    mesh.apply(&origin(namespace), document(config_map.as_ref()))
        .map(|_| ())
}

/// Follows the ConfigMap until `shutdown`.
pub async fn keep_mesh_config(
    client: Client,
    namespace: String,
    mesh: Arc<MeshConfigWatch>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_MAP}"));
    let events = watcher::watcher(api, config).default_backoff();
    let mut events = std::pin::pin!(events);
    let mut keeper = MeshConfigMap::new(&namespace);
    let mut last_error = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(event)) => {
                    if let Some(outcome) = keeper.handle(event, &mesh) {
                        report_refusal(outcome, &mut last_error);
                    }
                }
                Some(Err(error)) => {
                    tracing::warn!(%error, config_map = %keeper.origin, "watch of the mesh ConfigMap failed; retrying");
                }
                None => return,
            },
            () = async { let _ = shutdown.wait_for(|s| *s).await; } => return,
        }
    }
}

#[cfg(test)]
mod tests;
