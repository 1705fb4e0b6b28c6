//! The `weft-cni` CNI plugin, run by the container runtime for every pod sandbox (chained after
//! the node's network plugin). Reads the command from the environment and the configuration
//! from stdin, prints the result or a CNI error on stdout. Never panics on bad input: every
//! failure is a CNI error result.

use std::{collections::BTreeMap, io::Read, path::PathBuf, process::ExitCode, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use tokio::sync::OnceCell;
use weft_cni::{
    kube::{ApiCluster, client_from_kubeconfig},
    plugin::{self, Cluster, NodeDaemon},
    protocol::{self, Reply, Request},
    spec::{self, CniError, Invocation, NetConf, codes},
};

/// Where the installer writes the plugin's kubeconfig, unless the configuration says otherwise.
const DEFAULT_KUBECONFIG: &str = "/etc/cni/net.d/weft-cni-kubeconfig";
/// The node daemon's socket, unless the configuration says otherwise.
const DEFAULT_NODE_SOCKET: &str = "/var/run/weft/cni.sock";
/// How long ADD waits for the node daemon (which may be reconnecting to the agent).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(20);

/// Builds the API client on first use: pods outside Kubernetes never need it.
struct LazyCluster {
    kubeconfig: PathBuf,
    cluster: OnceCell<ApiCluster>,
}

impl Cluster for LazyCluster {
    async fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(Pod, BTreeMap<String, String>), String> {
        let cluster = self
            .cluster
            .get_or_try_init(|| async {
                client_from_kubeconfig(&self.kubeconfig)
                    .await
                    .map(|client| ApiCluster { client })
            })
            .await?;
        cluster.pod(namespace, name).await
    }
}

struct SocketDaemon {
    socket: PathBuf,
}

impl NodeDaemon for SocketDaemon {
    async fn send(&self, request: Request) -> Result<Reply, String> {
        protocol::send(&self.socket, &request, DAEMON_TIMEOUT)
            .await
            .map_err(|e| e.to_string())
    }
}

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let version = |stdin: &[u8]| spec::requested_version(stdin).unwrap_or_else(|| "1.0.0".into());
    if let Err(error) = std::io::stdin().read_to_end(&mut stdin) {
        let error = CniError::new(codes::IO_FAILURE, "reading stdin", error.to_string());
        return fail(&error, &version(&stdin));
    }
    let invocation = match Invocation::from_env(|name| std::env::var(name).ok()) {
        Ok(invocation) => invocation,
        Err(error) => return fail(&error, &version(&stdin)),
    };
    // Paths from the configuration when it parses; the command itself reports a bad one.
    let conf = serde_json::from_slice::<NetConf>(&stdin).ok();
    let cluster = LazyCluster {
        kubeconfig: conf
            .as_ref()
            .and_then(|c| c.kubeconfig.clone())
            .unwrap_or_else(|| DEFAULT_KUBECONFIG.into()),
        cluster: OnceCell::new(),
    };
    let daemon = SocketDaemon {
        socket: conf
            .as_ref()
            .and_then(|c| c.node_socket.clone())
            .unwrap_or_else(|| DEFAULT_NODE_SOCKET.into()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let error = CniError::new(codes::IO_FAILURE, "starting the runtime", error.to_string());
            return fail(&error, &version(&stdin));
        }
    };
    match runtime.block_on(plugin::run(&invocation, &stdin, &cluster, &daemon)) {
        Ok(Some(result)) => {
            println!("{result}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => fail(&error, &version(&stdin)),
    }
}

fn fail(error: &CniError, version: &str) -> ExitCode {
    println!("{}", error.to_json(version));
    eprintln!("weft-cni: {error}");
    ExitCode::FAILURE
}
