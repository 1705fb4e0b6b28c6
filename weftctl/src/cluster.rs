//! Cluster mode, as istioctl reaches istiod and ztunnel: the kubeconfig (`--kubeconfig`, else
//! `KUBECONFIG`, else `~/.kube/config`; `--context`) names the API server; the controller's pods
//! and the node agents' pods are found in the chart's namespace (`-i/--istio-namespace`,
//! `istio-system` by default) by the chart's labels, an agent by its node (`spec.nodeName`);
//! their ports are reached through the API server's pod port-forward (the `portforward`
//! subresource over a WebSocket), each forwarded to a local port the commands then read as
//! they read a local mesh's addresses.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The namespace the chart is installed into unless told otherwise (Istio's).
pub const DEFAULT_NAMESPACE: &str = "istio-system";
/// The labels of the chart's controller pods (deploy/charts/weft/templates/controller.yaml).
pub const CONTROLLER_LABELS: &str = "app.kubernetes.io/name=weft-controller";
/// The labels of the chart's node-agent pods (deploy/charts/weft/templates/node-agent.yaml).
pub const AGENT_LABELS: &str = "app.kubernetes.io/name=weft-node-agent";
/// The controller's monitoring port (/debug/syncz, /version).
pub const MONITORING_PORT: u16 = 15014;
/// A node agent's admin port (/config_dump), on the pod's loopback.
pub const ADMIN_PORT: u16 = 15000;
/// The controller's console port when its console is on (the chart's `controller.console`:
/// `--console-address 127.0.0.1:20001`, the pod's loopback, which a port-forward reaches).
pub const CONSOLE_PORT: u16 = 20001;

/// The kubeconfig weftctl would use: the given file, else `KUBECONFIG`, else `~/.kube/config`
/// when it exists.
pub fn kubeconfig_path(given: Option<&Path>) -> Option<PathBuf> {
    if let Some(given) = given {
        return Some(given.to_owned());
    }
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        return std::env::split_paths(&paths).find(|p| p.exists());
    }
    let home = std::env::var_os("HOME")?;
    Some(Path::new(&home).join(".kube/config")).filter(|p| p.exists())
}

/// A connection to a cluster: the API client, the runtime its forwards run on, and the
/// namespace the mesh's control plane is in.
pub struct Cluster {
    runtime: tokio::runtime::Runtime,
    client: kube::Client,
    namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

/// A pod found for a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundPod {
    pub name: String,
    pub node: String,
}

impl Cluster {
    /// Reads the kubeconfig (`given`, else `KUBECONFIG` or `~/.kube/config`) at `context` (its
    /// current context when `None`).
    pub fn connect(
        given: Option<&Path>,
        context: Option<&str>,
        namespace: &str,
    ) -> anyhow::Result<Self> {
        weft_identity::install_default_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting weftctl's runtime")?;
        let kubeconfig = match given {
            Some(path) => Kubeconfig::read_from(path)
                .with_context(|| format!("reading the kubeconfig {}", path.display()))?,
            None => Kubeconfig::read()
                .context("reading the kubeconfig (KUBECONFIG or ~/.kube/config)")?,
        };
        let options = KubeConfigOptions {
            context: context.map(str::to_owned),
            ..KubeConfigOptions::default()
        };
        let client = runtime.block_on(async {
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .with_context(|| match context {
                    Some(context) => format!("the kubeconfig's context {context:?}"),
                    None => "the kubeconfig's current context".to_owned(),
                })?;
            kube::Client::try_from(config).context("building the Kubernetes client")
        })?;
        Ok(Self {
            runtime,
            client,
            namespace: namespace.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The running pods with `labels` (and on `node`, when given), by name.
    fn running(&self, labels: &str, node: Option<&str>) -> anyhow::Result<Vec<FoundPod>> {
        let mut params = ListParams::default().labels(labels);
        let field;
        if let Some(node) = node {
            field = format!("spec.nodeName={node}");
            params = params.fields(&field);
        }
        let list = self
            .runtime
            .block_on(self.pods().list(&params))
            .with_context(|| {
                format!(
                    "listing pods in namespace {} with labels {labels} (weftctl needs RBAC \
                     permission to list pods there)",
                    self.namespace
                )
            })?;
        let mut pods: Vec<FoundPod> = list
            .items
            .iter()
            .filter(|pod| {
                pod.status
                    .as_ref()
                    .and_then(|s| s.phase.as_deref())
                    .is_some_and(|phase| phase == "Running")
            })
            .map(|pod| FoundPod {
                name: pod.metadata.name.clone().unwrap_or_default(),
                node: pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        if pods.is_empty() && !list.items.is_empty() {
            let phases: Vec<String> = list
                .items
                .iter()
                .map(|pod| {
                    format!(
                        "{} ({})",
                        pod.metadata.name.as_deref().unwrap_or(""),
                        pod.status
                            .as_ref()
                            .and_then(|s| s.phase.as_deref())
                            .unwrap_or("no phase")
                    )
                })
                .collect();
            anyhow::bail!(
                "no running pod in namespace {} with labels {labels}: {}",
                self.namespace,
                phases.join(", ")
            );
        }
        Ok(pods)
    }

    /// The first running controller pod.
    pub fn controller_pod(&self) -> anyhow::Result<FoundPod> {
        Ok(self.controller_pods()?.remove(0))
    }

    /// Every running controller pod (at least one).
    pub fn controller_pods(&self) -> anyhow::Result<Vec<FoundPod>> {
        let pods = self.running(CONTROLLER_LABELS, None)?;
        if !pods.is_empty() {
            return Ok(pods);
        }
        anyhow::bail!(
            "no controller pod found in namespace {} with labels {CONTROLLER_LABELS}: pass \
             -i/--istio-namespace with the namespace the weft chart was installed into (or \
             --controller HOST:PORT to reach a controller directly)",
            self.namespace
        )
    }

    /// The running node agent of `node` (the only one when `node` is `None`).
    pub fn agent_pod(&self, node: Option<&str>) -> anyhow::Result<FoundPod> {
        let mut found = self.running(AGENT_LABELS, node)?;
        if found.len() == 1 {
            return Ok(found.remove(0));
        }
        let all = if node.is_some() {
            self.running(AGENT_LABELS, None)?
        } else {
            found
        };
        let nodes: Vec<&str> = all.iter().map(|p| p.node.as_str()).collect();
        match (node, nodes.is_empty()) {
            (_, true) => anyhow::bail!(
                "no node agent pod found in namespace {} with labels {AGENT_LABELS}: pass \
                 -i/--istio-namespace with the namespace the weft chart was installed into",
                self.namespace
            ),
            (Some(node), false) => anyhow::bail!(
                "no node agent pod on node {node:?} in namespace {} (labels {AGENT_LABELS}); \
                 nodes with one: {}",
                self.namespace,
                nodes.join(", ")
            ),
            (None, false) => anyhow::bail!(
                "the cluster has {} node agents: name a node ({})",
                nodes.len(),
                nodes.join(", ")
            ),
        }
    }

    /// Forwards `local` (port 0: any free port) to `port` of `pod` through the API server and
    /// returns the bound local address. The first forward is opened at once, so a refusal
    /// (RBAC, a pod gone) is reported here; each local connection then gets its own.
    pub fn forward(&self, pod: &str, port: u16, local: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = std::net::TcpListener::bind(local)
            .with_context(|| format!("listening on {local} for the port-forward"))?;
        self.forward_from(listener, pod, port)
    }

    /// As [`Cluster::forward`], from a bound listener.
    pub fn forward_from(
        &self,
        listener: std::net::TcpListener,
        pod: &str,
        port: u16,
    ) -> anyhow::Result<SocketAddr> {
        let bound = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let pods = self.pods();
        let namespace = self.namespace.clone();
        let pod = pod.to_owned();
        let first = self
            .runtime
            .block_on(pods.portforward(&pod, &[port]))
            .map_err(|error| refused(error, &namespace, &pod, port))?;
        let listener = {
            let _entered = self.runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        self.runtime.spawn(async move {
            let mut first = Some(first);
            loop {
                let Ok((connection, _)) = listener.accept().await else {
                    continue;
                };
                let forwarder = match first.take() {
                    Some(forwarder) => forwarder,
                    None => match pods.portforward(&pod, &[port]).await {
                        Ok(forwarder) => forwarder,
                        Err(error) => {
                            eprintln!("weftctl: {:#}", refused(error, &namespace, &pod, port));
                            continue;
                        }
                    },
                };
                let label = format!("pod {namespace}/{pod} port {port}");
                tokio::spawn(pipe(connection, forwarder, port, label));
            }
        });
        Ok(bound)
    }

    /// Blocks until the process is interrupted (Ctrl-C), forwards serving meanwhile.
    pub fn wait_for_interrupt(&self) -> anyhow::Result<()> {
        self.runtime
            .block_on(tokio::signal::ctrl_c())
            .context("waiting for Ctrl-C")
    }
}

/// Carries one local connection through one port-forward; the pod's refusal (its error
/// channel) is printed.
async fn pipe(
    mut connection: tokio::net::TcpStream,
    mut forwarder: kube::api::Portforwarder,
    port: u16,
    label: String,
) {
    let Some(mut upstream) = forwarder.take_stream(port) else {
        return;
    };
    // The pod's refusal arrives before the end of the stream: reported before the local
    // connection closes, so the command that reads it fails after saying why.
    let error = forwarder.take_error(port);
    let error = async move {
        match error {
            Some(error) => error.await,
            None => None,
        }
    };
    tokio::pin!(error);
    {
        let copy = tokio::io::copy_bidirectional(&mut connection, &mut upstream);
        tokio::pin!(copy);
        tokio::select! {
            biased;
            Some(message) = &mut error => eprintln!("weftctl: port-forward to {label}: {message}"),
            _ = &mut copy => {}
        }
    }
    drop(upstream);
    let _ = forwarder.join().await;
}

/// What a failed port-forward means, and what to do about it.
fn refused(error: kube::Error, namespace: &str, pod: &str, port: u16) -> anyhow::Error {
    let status = match &error {
        kube::Error::Api(response) => Some(response.code),
        kube::Error::UpgradeConnection(kube::client::UpgradeConnectionError::ProtocolSwitch(
            status,
        )) => Some(status.as_u16()),
        _ => None,
    };
    let hint = match status {
        Some(401 | 403) => format!(
            "the API server refused: weftctl needs RBAC permission to create pods/portforward \
             in namespace {namespace} (check with `kubectl auth can-i create pods/portforward \
             -n {namespace}`)"
        ),
        Some(404) => format!("pod {namespace}/{pod} is gone: run the command again"),
        _ => "is the API server reachable, and does it allow WebSocket port-forwards?".to_owned(),
    };
    anyhow::anyhow!("port-forward to pod {namespace}/{pod} port {port} refused: {error}\n{hint}")
}
