//! A small Kubernetes cluster on the testbed, with the parts a real one has on its nodes: the
//! fake API server and the controller in Kubernetes mode on the control-plane host, and on each
//! node containerd ([`crate::containerd`]) running the node agent's DaemonSet pod (the agent and
//! install-cni containers, from their image, with the chart's environment, mounts and security
//! context) and the test's pods, created through the CRI as the kubelet creates them: the Pod in
//! the API, RunPodSandbox (which runs the CNI chain, weft-cni included), then CreateContainer and
//! StartContainer, and the Pod's status written back as the kubelet reports it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use weft_fake_apiserver::{FakeApiServer, TokenIdentity};
use weft_proto::cri;
use weft_testbed::{Netns, Testbed, Topology};

use crate::{
    Process, binary,
    containerd::Containerd,
    cri::{ContainerSpec, CriClient, mount, mount_following_host, sandbox_netns},
    observability,
};

/// The mesh's namespace, as the chart installs it.
pub const SYSTEM_NAMESPACE: &str = "istio-system";
/// Where the node agents pin (swept with the testbed after a crash).
pub const PIN_BASE: &str = "weft-cri";
/// The CA's token audience (the chart's).
pub const AUDIENCE: &str = "istio-ca";
/// The controller's address as the chart's agents name it (resolved through the pods' hosts
/// file, as a cluster's DNS would).
pub const ISTIOD: &str = "istiod.istio-system.svc";
/// The controller's monitoring address, on the control-plane host's loopback (where
/// Prometheus runs beside it).
pub const CONTROLLER_MONITORING: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(Ipv4Addr::LOCALHOST),
    observability::CONTROLLER_MONITORING_PORT,
);

/// The reference of image `name`, from `cargo xtask images`.
pub fn image_reference(name: &str) -> anyhow::Result<String> {
    let listing = images()?;
    listing[name]["reference"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("no image {name} in the images listing"))
}

fn images() -> anyhow::Result<Value> {
    let dir = binary("node-agent")?
        .parent()
        .context("binaries in a directory")?
        .join("../images/debug");
    let path = dir.join("images.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{} is missing: run `cargo xtask images --debug` (cargo xtask test does)",
            path.display()
        )
    })?;
    Ok(serde_json::from_str(&text)?)
}

/// A pod to run.
#[derive(Debug, Clone)]
pub struct KubePod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub labels: BTreeMap<String, String>,
    /// The pod's service account (its identity in the mesh); the pod's name unless set.
    pub service_account: String,
    /// The sample app's arguments (`--upstream ...`) in [`KubeCluster::run_pod`].
    pub args: Vec<String>,
    /// The Pod's metadata beyond its name, namespace and labels (what its controller writes).
    pub metadata: Value,
}

impl KubePod {
    pub fn new(name: &str, namespace: &str, node: &str) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            node: node.into(),
            labels: BTreeMap::from([("app".to_string(), name.to_string())]),
            service_account: name.into(),
            args: Vec::new(),
            metadata: Value::Null,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.into());
        self
    }
}

/// A pod the runtime runs.
#[derive(Debug, Clone)]
pub struct RunningPod {
    pub name: String,
    pub namespace: String,
    pub node: String,
    pub uid: String,
    pub sandbox: String,
    pub sandbox_config: cri::PodSandboxConfig,
    pub containers: Vec<String>,
    pub ip: Ipv4Addr,
    pub netns: Netns,
}

/// One node: its runtime and the node agent's pod.
pub struct KubeNode {
    pub containerd: Containerd,
    pub cri: CriClient,
    pub agent_pod: RunningPod,
    pub agent_container: String,
    pub install_container: String,
    /// How many times the agent container was created (the kubelet's attempt count).
    agent_attempts: u32,
}

pub struct KubeCluster {
    pub testbed: Testbed,
    pub api: FakeApiServer,
    _api_runtime: tokio::runtime::Runtime,
    pub dir: PathBuf,
    controller: Option<Process>,
    pub nodes: BTreeMap<String, KubeNode>,
    pub pods: BTreeMap<String, RunningPod>,
}

impl KubeCluster {
    /// Starts the control plane and a containerd node with its node agent for each of `nodes`.
    pub fn start(nodes: &[&str], namespaces: &[(&str, &[(&str, &str)])]) -> anyhow::Result<Self> {
        let nodes: Vec<(&str, &[&str])> = nodes.iter().map(|n| (*n, &[][..])).collect();
        Self::start_with_mesh_config(&nodes, namespaces, "")
    }

    /// [`KubeCluster::start`] with the controller following `mesh_config` (Istio's MeshConfig
    /// YAML, the chart's `meshConfig`; Istio's defaults when empty), and on each node the hosts
    /// outside the cluster it names: namespaces on its pod bridge no runtime made or enrolled.
    pub fn start_with_mesh_config(
        nodes: &[(&str, &[&str])],
        namespaces: &[(&str, &[(&str, &str)])],
        mesh_config: &str,
    ) -> anyhow::Result<Self> {
        let mut topology = Topology::new().control_plane();
        for (node, hosts) in nodes {
            topology = topology.node(node, hosts);
        }
        let testbed = topology.build()?;
        let dir = std::env::temp_dir().join(format!("{}-cri", testbed.prefix()));
        std::fs::create_dir_all(dir.join("secrets/istio"))?;
        let control_plane = testbed.control_plane().context("a control-plane host")?;
        let api_address: SocketAddr = (control_plane.ip, 0).into();
        let listener = control_plane
            .netns
            .run(move || std::net::TcpListener::bind(api_address))??;
        let api_runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let api = {
            let _entered = api_runtime.enter();
            FakeApiServer::start_on(listener)?
        };
        std::fs::write(dir.join("kubeconfig"), api.kubeconfig())?;
        std::fs::write(
            dir.join("hosts"),
            format!(
                "127.0.0.1 localhost\n{} {ISTIOD} istiod.istio-system.svc.cluster.local\n",
                control_plane.ip
            ),
        )?;
        let mut cluster = Self {
            testbed,
            api,
            _api_runtime: api_runtime,
            dir,
            controller: None,
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
        };
        cluster.put_namespace(SYSTEM_NAMESPACE, &[])?;
        for (name, labels) in namespaces {
            cluster.put_namespace(name, labels)?;
        }
        cluster.start_controller(mesh_config)?;
        let archives: Vec<PathBuf> = images()?
            .as_object()
            .context("the images listing is a map")?
            .values()
            .filter_map(|image| image["archive"].as_str().map(PathBuf::from))
            .collect();
        for (name, _) in nodes {
            let node = cluster.testbed.node(name);
            let containerd = Containerd::start(&cluster.testbed, node, &cluster.dir, &archives)?;
            cluster.start_node(name, containerd)?;
        }
        Ok(cluster)
    }

    /// Creates or replaces a Namespace.
    pub fn put_namespace(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let object = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}});
        if self.api.get("v1", "Namespace", "", name).is_some() {
            self.api.update(object)?;
        } else {
            self.api.create(object)?;
        }
        Ok(())
    }

    fn start_controller(&mut self, mesh_config: &str) -> anyhow::Result<()> {
        let control_plane = self
            .testbed
            .control_plane()
            .context("a control-plane host")?;
        let mut command = control_plane.netns.command_in_cgroup(
            &control_plane.cgroup,
            binary("controller")?.to_str().unwrap(),
        );
        command
            .args([
                "run",
                "--mode",
                "kubernetes",
                "--namespace",
                SYSTEM_NAMESPACE,
            ])
            .args([
                "--tls-address",
                "0.0.0.0:15012",
                "--monitoring-address",
                &CONTROLLER_MONITORING.to_string(),
            ])
            // The console reads the Prometheus that the demo runs beside it.
            .args([
                "--console-address",
                &format!("0.0.0.0:{}", observability::CONSOLE_PORT),
                "--prometheus-url",
                &format!("http://{}", observability::PROMETHEUS_ADDRESS),
            ])
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("RUST_LOG", "info");
        if !mesh_config.is_empty() {
            let path = self.dir.join("mesh-config.yaml");
            std::fs::write(&path, mesh_config)?;
            command.arg("--mesh-config").arg(path);
        }
        self.controller = Some(Process::spawn(
            "controller",
            command,
            self.dir.join("controller.log"),
        )?);
        // The controller publishes its root, which the agents mount (the chart's ConfigMap).
        let root = self.wait_for(
            "the controller's root certificate",
            Duration::from_secs(60),
            |c| {
                c.api
                    .get("v1", "ConfigMap", SYSTEM_NAMESPACE, "istio-ca-root-cert")
                    .and_then(|m| m["data"]["root-cert.pem"].as_str().map(String::from))
            },
        )?;
        std::fs::write(self.dir.join("secrets/istio/root-cert.pem"), root)?;
        Ok(())
    }

    /// Runs the node agent's DaemonSet pod on `node`: its sandbox (the bridge alone, as
    /// install-cni has not run yet), then the agent and install-cni containers.
    fn start_node(&mut self, node: &str, containerd: Containerd) -> anyhow::Result<()> {
        let cri = containerd.client()?;
        let pod = KubePod::new(&format!("weft-node-agent-{node}"), SYSTEM_NAMESPACE, node)
            .label("app.kubernetes.io/name", "weft-node-agent")
            .label("istio.io/dataplane-mode", "none");
        let running = self.run_sandbox(&cri, &containerd, &pod, "weft-node-agent")?;
        let token = format!("agent-token-{}-{node}", self.testbed.prefix());
        self.api.add_token(
            &token,
            TokenIdentity::bound(
                SYSTEM_NAMESPACE,
                "weft-node-agent",
                (&running.name, &running.uid),
                Some(node),
                AUDIENCE,
            ),
        );
        let node_dir = containerd.dir.clone();
        std::fs::create_dir_all(node_dir.join("secrets/tokens"))?;
        std::fs::create_dir_all(node_dir.join("run"))?;
        std::fs::write(node_dir.join("secrets/tokens/istio-token"), &token)?;
        let install = self.install_cni_container(node, &containerd)?;
        let install_container =
            cri.create_container(&running.sandbox, &running.sandbox_config, &install)?;
        cri.start_container(&install_container)?;
        let mut kube_node = KubeNode {
            containerd,
            cri,
            agent_pod: running,
            agent_container: String::new(),
            install_container,
            agent_attempts: 0,
        };
        self.start_agent_container(node, &mut kube_node)?;
        self.nodes.insert(node.to_string(), kube_node);
        self.wait_for(
            "the plugin in the node's CNI configuration",
            Duration::from_secs(30),
            |c| {
                let config = c.nodes[node].containerd.cni_config().ok()?;
                config["plugins"]
                    .as_array()?
                    .iter()
                    .any(|p| p["type"] == "weft-cni")
                    .then_some(())
            },
        )?;
        self.wait_agent_ready(node)
    }

    /// The agent container as the chart has it (paths of this test where the chart names the
    /// node's: pins, the enrollment directory, the cgroup root).
    fn agent_container(
        &self,
        node: &str,
        containerd: &Containerd,
        attempt: u32,
    ) -> anyhow::Result<ContainerSpec> {
        let run = containerd.dir.join("run");
        let cgroup_root = node_agent::ebpf::cgroup2_root().map_err(anyhow::Error::msg)?;
        Ok(ContainerSpec {
            name: "node-agent".into(),
            attempt,
            image: image_reference("node-agent")?,
            env: [
                ("NODE_NAME", node.to_string()),
                ("TRUST_DOMAIN", "cluster.local".into()),
                ("XDS_ADDRESS", format!("https://{ISTIOD}:15012")),
                (
                    "ROOT_CERT_FILE",
                    "/var/run/secrets/istio/root-cert.pem".into(),
                ),
                (
                    "BOOTSTRAP_TOKEN_FILE",
                    "/var/run/secrets/tokens/istio-token".into(),
                ),
                ("CERTIFICATE_TTL_SECONDS", "86400".into()),
                ("ACCELERATION", "false".into()),
                ("WORKER_THREADS", "2".into()),
                ("CGROUP_ROOT", "/host/cgroup".into()),
                ("NODE_NETNS", "/host/node-netns".into()),
                (
                    "ENROLLMENT_SOCKET",
                    run.join("enroll.sock").to_string_lossy().into_owned(),
                ),
                (
                    "PIN_DIR",
                    self.testbed
                        .pin_dir(PIN_BASE)
                        .join(node)
                        .to_string_lossy()
                        .into_owned(),
                ),
                ("LOG_LEVEL", "info".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            mounts: vec![
                mount("/sys/fs/bpf", "/sys/fs/bpf", false),
                mount(&cgroup_root, "/host/cgroup", true),
                // The chart mounts the host's /proc/1/ns/net; this node is the testbed's.
                mount(
                    self.testbed.node(node).netns.path(),
                    "/host/node-netns",
                    true,
                ),
                mount_following_host(weft_testbed::NETNS_DIR, "/var/run/netns"),
                mount(&run, &run.to_string_lossy(), false),
                mount(
                    self.dir.join("secrets/istio"),
                    "/var/run/secrets/istio",
                    true,
                ),
                mount(
                    containerd.dir.join("secrets/tokens"),
                    "/var/run/secrets/tokens",
                    true,
                ),
                mount(self.dir.join("hosts"), "/etc/hosts", true),
            ],
            security: Some(security(&["BPF", "NET_ADMIN", "SYS_ADMIN"])),
            log_path: format!("node-agent-{attempt}.log"),
            ..ContainerSpec::default()
        })
    }

    fn install_cni_container(
        &self,
        node: &str,
        containerd: &Containerd,
    ) -> anyhow::Result<ContainerSpec> {
        let run = containerd.dir.join("run");
        Ok(ContainerSpec {
            name: "install-cni".into(),
            image: image_reference("node-agent")?,
            command: vec!["weft-cni-node".into()],
            env: [
                ("NODE_NAME", node.to_string()),
                ("POD_NAMESPACE", SYSTEM_NAMESPACE.into()),
                ("DAEMONSET_NAME", "weft-node-agent".into()),
                ("CNI_NET_DIR", "/host/etc/cni/net.d".into()),
                ("CNI_BIN_DIR", "/host/opt/cni/bin".into()),
                (
                    "HOST_CNI_NET_DIR",
                    containerd.cni_conf_dir.to_string_lossy().into_owned(),
                ),
                ("PLUGIN_BINARY", "/usr/local/bin/weft-cni".into()),
                (
                    "ENROLLMENT_SOCKET",
                    run.join("enroll.sock").to_string_lossy().into_owned(),
                ),
                (
                    "NODE_SOCKET",
                    run.join("cni.sock").to_string_lossy().into_owned(),
                ),
                ("PROC_ROOT", "/host/proc".into()),
                ("NETNS_DIR", "/var/run/netns".into()),
                ("KUBECONFIG", "/etc/weft/kubeconfig".into()),
                ("EXCLUDE_NAMESPACES", "kube-system".into()),
                ("LOG_LEVEL", "info".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            mounts: vec![
                mount(&containerd.cni_bin_dir, "/host/opt/cni/bin", false),
                mount(&containerd.cni_conf_dir, "/host/etc/cni/net.d", false),
                mount("/proc", "/host/proc", true),
                mount_following_host(weft_testbed::NETNS_DIR, "/var/run/netns"),
                mount(&run, &run.to_string_lossy(), false),
                mount(self.dir.join("kubeconfig"), "/etc/weft/kubeconfig", true),
            ],
            security: Some(security(&["SYS_PTRACE"])),
            log_path: "install-cni.log".into(),
            ..ContainerSpec::default()
        })
    }

    fn start_agent_container(&self, node: &str, kube_node: &mut KubeNode) -> anyhow::Result<()> {
        let spec = self.agent_container(node, &kube_node.containerd, kube_node.agent_attempts)?;
        let pod = &kube_node.agent_pod;
        let id = kube_node
            .cri
            .create_container(&pod.sandbox, &pod.sandbox_config, &spec)?;
        kube_node.cri.start_container(&id)?;
        kube_node.agent_container = id;
        kube_node.agent_attempts += 1;
        Ok(())
    }

    /// Kills the node agent's container at once (SIGKILL), as a crash would.
    pub fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let kube_node = &self.nodes[node];
        kube_node.cri.stop_container(&kube_node.agent_container, 0)
    }

    /// Restarts the node agent's container as the kubelet does after a crash: the dead one
    /// removed, a new one (the next attempt) created and started in the same pod.
    pub fn restart_agent(&mut self, node: &str) -> anyhow::Result<()> {
        let mut kube_node = self.nodes.remove(node).context("no such node")?;
        let result = kube_node
            .cri
            .remove_container(&kube_node.agent_container)
            .and_then(|()| self.start_agent_container(node, &mut kube_node));
        self.nodes.insert(node.to_string(), kube_node);
        result?;
        self.wait_agent_ready(node)
    }

    /// Waits until the node's agent reports ready (configured by the controller).
    pub fn wait_agent_ready(&self, node: &str) -> anyhow::Result<()> {
        let url = format!(
            "http://{}:15021/healthz/ready",
            self.nodes[node].agent_pod.ip
        );
        self.wait_for(
            &format!("{node}'s agent to be ready"),
            Duration::from_secs(60),
            |c| (c.node_http(node, &url).ok()?.0 == 200).then_some(()),
        )
    }

    /// A GET from the node itself (its network namespace: the kubelet's place): status and body.
    pub fn node_http(&self, node: &str, url: &str) -> anyhow::Result<(u16, String)> {
        http_get(&self.testbed.node(node).netns, url, &[])
    }

    /// The node agent's metrics on `node`.
    pub fn agent_metrics(&self, node: &str) -> anyhow::Result<String> {
        let url = format!("http://{}:15020/metrics", self.nodes[node].agent_pod.ip);
        Ok(self.node_http(node, &url)?.1)
    }

    /// The node agent's `/config_dump` (its admin port is the pod's loopback only).
    pub fn agent_config_dump(&self, node: &str) -> anyhow::Result<Value> {
        let (status, body) = http_get(
            &self.nodes[node].agent_pod.netns,
            "http://127.0.0.1:15000/config_dump",
            &[],
        )?;
        anyhow::ensure!(status == 200, "config_dump answered {status}");
        Ok(serde_json::from_str(&body)?)
    }

    /// Creates the pod as the kubelet does, running the sample app; returns it once running.
    pub fn run_pod(&mut self, pod: KubePod) -> anyhow::Result<RunningPod> {
        let mut args = vec![
            "--service".to_string(),
            pod.name.clone(),
            "--pod".into(),
            pod.name.clone(),
        ];
        args.extend(pod.args.iter().cloned());
        let spec = sample_app_container(&pod.name, args)?;
        self.run_pod_with(pod, |_, _| Ok(spec))
    }

    /// Creates the pod as the kubelet does, with the one container `container` makes once the
    /// sandbox runs (it may bind a token to the pod's uid first); returns it once started.
    pub fn run_pod_with(
        &mut self,
        pod: KubePod,
        container: impl FnOnce(&Self, &RunningPod) -> anyhow::Result<ContainerSpec>,
    ) -> anyhow::Result<RunningPod> {
        let kube_node = self.nodes.get(&pod.node).context("no such node")?;
        let mut running = self.run_sandbox(
            &kube_node.cri,
            &kube_node.containerd,
            &pod,
            &pod.service_account,
        )?;
        let spec = container(self, &running)?;
        let id =
            kube_node
                .cri
                .create_container(&running.sandbox, &running.sandbox_config, &spec)?;
        kube_node.cri.start_container(&id)?;
        running.containers.push(id);
        self.pods.insert(pod.name.clone(), running.clone());
        Ok(running)
    }

    /// The Pod in the API, then its sandbox (the CNI chain runs here), then the Pod's status.
    fn run_sandbox(
        &self,
        cri: &CriClient,
        containerd: &Containerd,
        pod: &KubePod,
        service_account: &str,
    ) -> anyhow::Result<RunningPod> {
        let mut metadata = pod.metadata.clone();
        metadata["name"] = json!(pod.name);
        metadata["namespace"] = json!(pod.namespace);
        metadata["labels"] = json!(pod.labels);
        self.api.create(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"nodeName": pod.node, "serviceAccountName": service_account,
                     "containers": [{"name": "app", "image": "sample-app"}]},
            "status": {"phase": "Pending"}
        }))?;
        let object = self
            .api
            .get("v1", "Pod", &pod.namespace, &pod.name)
            .context("the pod just created")?;
        let uid = object["metadata"]["uid"]
            .as_str()
            .context("a uid")?
            .to_string();
        let config = cri::PodSandboxConfig {
            metadata: Some(cri::PodSandboxMetadata {
                name: pod.name.clone(),
                uid: uid.clone(),
                namespace: pod.namespace.clone(),
                attempt: 0,
            }),
            hostname: pod.name.clone(),
            log_directory: containerd.dir.join("logs").to_string_lossy().into_owned(),
            labels: [
                ("io.kubernetes.pod.name".to_string(), pod.name.clone()),
                (
                    "io.kubernetes.pod.namespace".to_string(),
                    pod.namespace.clone(),
                ),
                ("io.kubernetes.pod.uid".to_string(), uid.clone()),
            ]
            .into(),
            linux: Some(cri::LinuxPodSandboxConfig {
                cgroup_parent: format!("{}/pod{uid}", containerd.cgroup_parent),
                security_context: Some(cri::LinuxSandboxSecurityContext {
                    namespace_options: Some(cri::NamespaceOption {
                        network: cri::NamespaceMode::Pod as i32,
                        pid: cri::NamespaceMode::Container as i32,
                        ipc: cri::NamespaceMode::Pod as i32,
                        target_id: String::new(),
                    }),
                    ..cri::LinuxSandboxSecurityContext::default()
                }),
                ..cri::LinuxPodSandboxConfig::default()
            }),
            ..cri::PodSandboxConfig::default()
        };
        let sandbox = cri.run_pod_sandbox(&config).with_context(|| {
            format!(
                "pod {}/{}; containerd's log:\n{}",
                pod.namespace,
                pod.name,
                tail(&containerd.dir.join("containerd.log"), 15)
            )
        })?;
        let (status, info) = cri.pod_sandbox_status(&sandbox)?;
        let ip: Ipv4Addr = status.network.context("no sandbox network")?.ip.parse()?;
        let netns_path = sandbox_netns(&info)?;
        let netns_name = Path::new(&netns_path)
            .file_name()
            .context("a netns file")?
            .to_string_lossy()
            .into_owned();
        let mut object = object;
        object["status"] = json!({
            "phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}]
        });
        self.api.update(object)?;
        Ok(RunningPod {
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            node: pod.node.clone(),
            uid,
            sandbox,
            sandbox_config: config,
            containers: Vec::new(),
            ip,
            netns: Netns::named(netns_name),
        })
    }

    /// Deletes the pod as the kubelet does: its containers, its sandbox (the CNI DEL runs
    /// here), then the Pod.
    pub fn delete_pod(&mut self, name: &str) -> anyhow::Result<()> {
        let pod = self.pods.remove(name).context("no such pod")?;
        let cri = &self.nodes[&pod.node].cri;
        for container in &pod.containers {
            cri.stop_container(container, 0)?;
            cri.remove_container(container)?;
        }
        cri.stop_pod_sandbox(&pod.sandbox)?;
        cri.remove_pod_sandbox(&pod.sandbox)?;
        self.api.delete("v1", "Pod", &pod.namespace, name)?;
        Ok(())
    }

    /// The node agent's pin directory of `node`.
    pub fn pin_dir(&self, node: &str) -> PathBuf {
        self.testbed.pin_dir(PIN_BASE).join(node)
    }

    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&Self) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe(self) {
                return Ok(value);
            }
            if Instant::now() > deadline {
                anyhow::bail!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The tails of every log of the cluster.
    pub fn logs(&self) -> String {
        let mut files = vec![self.dir.join("controller.log")];
        for node in self.nodes.values() {
            files.push(node.containerd.dir.join("containerd.log"));
            if let Ok(entries) = std::fs::read_dir(node.containerd.dir.join("logs")) {
                files.extend(entries.flatten().map(|e| e.path()));
            }
        }
        let mut out = String::new();
        for file in files {
            out.push_str(&format!("==> {} <==\n{}", file.display(), tail(&file, 25)));
        }
        out
    }
}

/// The last `lines` lines of a log file.
fn tail(file: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.into_iter().rev().map(|l| format!("{l}\n")).collect()
}

/// The sample app as container `app` of pod `pod`, with `args`.
pub fn sample_app_container(pod: &str, args: Vec<String>) -> anyhow::Result<ContainerSpec> {
    Ok(ContainerSpec {
        name: "app".into(),
        image: image_reference("sample-app")?,
        args,
        log_path: format!("{pod}.log"),
        ..ContainerSpec::default()
    })
}

/// A container of the chart's kind: root, every capability dropped but `add`, not privileged,
/// read-only root filesystem, the runtime's default seccomp profile.
pub fn security(add: &[&str]) -> cri::LinuxContainerSecurityContext {
    cri::LinuxContainerSecurityContext {
        capabilities: Some(cri::Capability {
            add_capabilities: add.iter().map(|c| c.to_string()).collect(),
            drop_capabilities: vec!["ALL".into()],
        }),
        privileged: false,
        run_as_user: Some(cri::Int64Value { value: 0 }),
        readonly_rootfs: true,
        seccomp: Some(cri::SecurityProfile {
            profile_type: cri::security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        }),
        ..cri::LinuxContainerSecurityContext::default()
    }
}

/// A GET with curl from inside `netns`: status and body (status 0 when nothing answered).
pub fn http_get(netns: &Netns, url: &str, headers: &[&str]) -> anyhow::Result<(u16, String)> {
    let mut command = netns.command("curl");
    command.args(["-s", "--max-time", "10", "-w", "\n%{http_code}"]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.arg(url).output().context("running curl")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    Ok((code.trim().parse().unwrap_or(0), body.to_string()))
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.pods.keys().cloned().collect();
        for name in names {
            let _ = self.delete_pod(&name);
        }
        for node in self.nodes.values_mut() {
            let cri = &node.cri;
            for container in [&node.agent_container, &node.install_container] {
                let _ = cri.stop_container(container, 0);
                let _ = cri.remove_container(container);
            }
            let _ = cri.stop_pod_sandbox(&node.agent_pod.sandbox);
            let _ = cri.remove_pod_sandbox(&node.agent_pod.sandbox);
            node.containerd.stop();
        }
        if let Some(mut controller) = self.controller.take() {
            controller.stop();
        }
        let _ = std::fs::remove_dir_all(self.testbed.pin_dir(PIN_BASE));
        if std::thread::panicking() {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "cluster files kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
