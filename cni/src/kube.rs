//! The API server as the CNI side uses it: a client from a kubeconfig file (the one the installer
//! wrote, or the daemon's own), pod and namespace reads, and the kubeconfig the installer writes
//! for the plugin from the daemon's service account.

use std::{collections::BTreeMap, path::Path, time::Duration};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

/// How long one API call of the plugin may take (the runtime waits for ADD).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A client from the kubeconfig at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, String> {
    let kubeconfig =
        Kubeconfig::read_from(path).map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| format!("kubeconfig {}: {e}", path.display()))?;
    config.connect_timeout = Some(REQUEST_TIMEOUT);
    config.read_timeout = Some(REQUEST_TIMEOUT);
    weft_identity::install_default_provider();
    Client::try_from(config).map_err(|e| format!("API client from {}: {e}", path.display()))
}

/// The daemon's client: from `kubeconfig` when given, else the pod's service account.
pub async fn daemon_client(kubeconfig: Option<&Path>) -> Result<Client, String> {
    match kubeconfig {
        Some(path) => client_from_kubeconfig(path).await,
        None => {
            let config =
                Config::incluster().map_err(|e| format!("in-cluster configuration: {e}"))?;
            weft_identity::install_default_provider();
            Client::try_from(config).map_err(|e| format!("API client: {e}"))
        }
    }
}

/// The plugin's view of the cluster.
pub struct ApiCluster {
    pub client: Client,
}

impl crate::plugin::Cluster for ApiCluster {
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Pod, BTreeMap<String, String>), String> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), namespace)
            .get(name)
            .await
            .map_err(|e| format!("pod {namespace}/{name}: {e}"))?;
        let labels = Api::<Namespace>::all(self.client.clone())
            .get(namespace)
            .await
            .map_err(|e| format!("namespace {namespace}: {e}"))?
            .metadata
            .labels
            .unwrap_or_default();
        Ok((pod, labels))
    }
}

/// A kubeconfig for the plugin: the API server at `server`, trusted through `ca_pem`,
/// authenticated with `token` (the node daemon's service-account token, which the installer
/// rewrites as it rotates).
pub fn plugin_kubeconfig(server: &str, ca_pem: &[u8], token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "# Written by weft-cni-node for the weft-cni plugin; removed on uninstall.\n\
         apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: local\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n\
         - name: weft-cni\n  user:\n    token: {token}\n\
         contexts:\n\
         - name: weft-cni\n  context:\n    cluster: local\n    user: weft-cni\n\
         current-context: weft-cni\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_kubeconfig_parses_as_a_kubeconfig() {
        let text = plugin_kubeconfig("https://10.96.0.1:443", b"-----BEGIN CERT-----", "tok");
        let parsed = Kubeconfig::from_yaml(&text).unwrap();
        let cluster = parsed.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://10.96.0.1:443"));
        assert_eq!(
            cluster.certificate_authority_data.as_deref(),
            Some("LS0tLS1CRUdJTiBDRVJULS0tLS0=")
        );
        let user = parsed.auth_infos[0].auth_info.as_ref().unwrap();
        assert!(user.token.is_some());
        assert_eq!(parsed.current_context.as_deref(), Some("weft-cni"));
    }
}
