//! The node daemon's configuration (`weft-cni-node`): every setting, its environment variable
//! and its default, in one place, parsed from any lookup function (the environment in the
//! binary, a map in tests).

use std::path::PathBuf;

use serde::Serialize;

use crate::{install::InstallSettings, netns::NetnsFinder};

pub const NODE_NAME: &str = "NODE_NAME";
pub const CNI_NET_DIR: &str = "CNI_NET_DIR";
pub const CNI_BIN_DIR: &str = "CNI_BIN_DIR";
pub const HOST_CNI_NET_DIR: &str = "HOST_CNI_NET_DIR";
pub const PLUGIN_BINARY: &str = "PLUGIN_BINARY";
pub const ENROLLMENT_SOCKET: &str = "ENROLLMENT_SOCKET";
pub const NODE_SOCKET: &str = "NODE_SOCKET";
pub const PROC_ROOT: &str = "PROC_ROOT";
pub const NETNS_DIR: &str = "NETNS_DIR";
pub const KUBECONFIG: &str = "KUBECONFIG";
pub const EXCLUDE_NAMESPACES: &str = "EXCLUDE_NAMESPACES";
pub const SERVICE_ACCOUNT_DIR: &str = "SERVICE_ACCOUNT_DIR";
pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
pub const DAEMONSET_NAME: &str = "DAEMONSET_NAME";
pub const LOG_LEVEL: &str = "LOG_LEVEL";

const DEFAULT_CNI_NET_DIR: &str = "/host/etc/cni/net.d";
const DEFAULT_CNI_BIN_DIR: &str = "/host/opt/cni/bin";
const DEFAULT_HOST_CNI_NET_DIR: &str = "/etc/cni/net.d";
const DEFAULT_ENROLLMENT_SOCKET: &str = "/var/run/weft/enroll.sock";
const DEFAULT_NODE_SOCKET: &str = "/var/run/weft/cni.sock";
const DEFAULT_PROC_ROOT: &str = "/host/proc";
const DEFAULT_NETNS_DIR: &str = "/var/run/netns";
const DEFAULT_EXCLUDE_NAMESPACES: &str = "kube-system";
const DEFAULT_SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
const DEFAULT_POD_NAMESPACE: &str = "istio-system";
const DEFAULT_DAEMONSET_NAME: &str = "weft-node-agent";
const DEFAULT_LOG_LEVEL: &str = "info";

/// Everything the node daemon runs with.
#[derive(Debug, Clone, Serialize)]
pub struct NodeConfig {
    pub node_name: String,
    /// The node's CNI configuration and binary directories, as mounted here.
    pub cni_net_dir: PathBuf,
    pub cni_bin_dir: PathBuf,
    /// The CNI configuration directory as the host sees it (written into the plugin's entry).
    pub host_cni_net_dir: PathBuf,
    /// The plugin binary to install (default: `weft-cni` beside this program).
    pub plugin_binary: PathBuf,
    /// The node agent's enrollment socket.
    pub enrollment_socket: PathBuf,
    /// This daemon's socket, for the plugin (the same path on the host).
    pub node_socket: PathBuf,
    /// The host's `/proc` and the runtime's netns directory (finding running pods' namespaces).
    pub proc_root: PathBuf,
    pub netns_dir: PathBuf,
    /// A kubeconfig for this daemon (and copied for the plugin); unset, the pod's service
    /// account (and the plugin's kubeconfig is written from its token and CA).
    pub kubeconfig: Option<PathBuf>,
    pub exclude_namespaces: Vec<String>,
    pub service_account_dir: PathBuf,
    /// Where this daemon's DaemonSet lives: on exit the plugin is uninstalled only when the
    /// DaemonSet is gone or going (a restart or upgrade leaves it, so mesh pods keep failing
    /// closed instead of starting uncaptured).
    pub pod_namespace: String,
    pub daemonset_name: String,
    pub log_level: String,
}

impl NodeConfig {
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let path =
            |name: &str, default: &str| PathBuf::from(get(name).unwrap_or_else(|| default.into()));
        let text = |name: &str, default: &str| get(name).unwrap_or_else(|| default.into());
        let node_name = get(NODE_NAME)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("{NODE_NAME} is required (the downward API's spec.nodeName)"))?;
        let plugin_binary = match get(PLUGIN_BINARY) {
            Some(path) => PathBuf::from(path),
            None => std::env::current_exe()
                .map_err(|e| format!("{PLUGIN_BINARY} unset and this program's path unknown: {e}"))?
                .with_file_name(crate::install::PLUGIN_TYPE),
        };
        Ok(Self {
            node_name,
            cni_net_dir: path(CNI_NET_DIR, DEFAULT_CNI_NET_DIR),
            cni_bin_dir: path(CNI_BIN_DIR, DEFAULT_CNI_BIN_DIR),
            host_cni_net_dir: path(HOST_CNI_NET_DIR, DEFAULT_HOST_CNI_NET_DIR),
            plugin_binary,
            enrollment_socket: path(ENROLLMENT_SOCKET, DEFAULT_ENROLLMENT_SOCKET),
            node_socket: path(NODE_SOCKET, DEFAULT_NODE_SOCKET),
            proc_root: path(PROC_ROOT, DEFAULT_PROC_ROOT),
            netns_dir: path(NETNS_DIR, DEFAULT_NETNS_DIR),
            kubeconfig: get(KUBECONFIG).filter(|k| !k.is_empty()).map(PathBuf::from),
            exclude_namespaces: text(EXCLUDE_NAMESPACES, DEFAULT_EXCLUDE_NAMESPACES)
                .split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect(),
            service_account_dir: path(SERVICE_ACCOUNT_DIR, DEFAULT_SERVICE_ACCOUNT_DIR),
            pod_namespace: text(POD_NAMESPACE, DEFAULT_POD_NAMESPACE),
            daemonset_name: text(DAEMONSET_NAME, DEFAULT_DAEMONSET_NAME),
            log_level: text(LOG_LEVEL, DEFAULT_LOG_LEVEL),
        })
    }

    pub fn install_settings(&self) -> InstallSettings {
        InstallSettings {
            net_dir: self.cni_net_dir.clone(),
            bin_dir: self.cni_bin_dir.clone(),
            plugin_binary: self.plugin_binary.clone(),
            host_net_dir: self.host_cni_net_dir.clone(),
            node_socket: self.node_socket.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
        }
    }

    pub fn finder(&self) -> NetnsFinder {
        NetnsFinder {
            proc_root: self.proc_root.clone(),
            netns_dir: self.netns_dir.clone(),
        }
    }

    /// The plugin's kubeconfig, read anew each time (a projected token rotates): a copy of
    /// [`Self::kubeconfig`], or built from the service account and `KUBERNETES_SERVICE_*`.
    pub fn plugin_kubeconfig(
        &self,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<String, String> {
        if let Some(path) = &self.kubeconfig {
            return std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()));
        }
        let host = get("KUBERNETES_SERVICE_HOST").ok_or("KUBERNETES_SERVICE_HOST is not set")?;
        let port = get("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let read = |file: &str| {
            let path = self.service_account_dir.join(file);
            std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_string();
        Ok(crate::kube::plugin_kubeconfig(
            &format!("https://{host}:{port}"),
            &read("ca.crt")?,
            &token,
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_and_overrides() {
        let config = NodeConfig::from_lookup(lookup(&[
            (NODE_NAME, "node1"),
            (PLUGIN_BINARY, "/opt/weft/weft-cni"),
            (EXCLUDE_NAMESPACES, "kube-system, istio-system,"),
        ]))
        .unwrap();
        assert_eq!(config.cni_net_dir, PathBuf::from("/host/etc/cni/net.d"));
        assert_eq!(config.node_socket, PathBuf::from("/var/run/weft/cni.sock"));
        assert_eq!(config.exclude_namespaces, ["kube-system", "istio-system"]);
        assert_eq!(config.kubeconfig, None);
        let error = NodeConfig::from_lookup(lookup(&[])).unwrap_err();
        assert!(error.contains("NODE_NAME is required"), "{error}");
    }

    #[test]
    fn the_plugin_kubeconfig_comes_from_the_service_account() {
        let dir = std::env::temp_dir().join(format!("weft-cni-sa-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("token"), "secret-token\n").unwrap();
        std::fs::write(dir.join("ca.crt"), "CA").unwrap();
        let config = NodeConfig::from_lookup(lookup(&[
            (NODE_NAME, "node1"),
            (PLUGIN_BINARY, "/p"),
            (SERVICE_ACCOUNT_DIR, dir.to_str().unwrap()),
        ]))
        .unwrap();
        let text = config
            .plugin_kubeconfig(lookup(&[
                ("KUBERNETES_SERVICE_HOST", "fd00::1"),
                ("KUBERNETES_SERVICE_PORT", "6443"),
            ]))
            .unwrap();
        assert!(text.contains("server: https://[fd00::1]:6443"), "{text}");
        assert!(text.contains("token: secret-token\n"), "{text}");
        let error = config.plugin_kubeconfig(lookup(&[])).unwrap_err();
        assert!(error.contains("KUBERNETES_SERVICE_HOST"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
