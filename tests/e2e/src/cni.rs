//! A node's CNI side on the testbed, with the real binaries: the node agent (in the node's
//! namespace), `weft-cni-node` (installing into a CNI configuration directory of this test,
//! watching a fake API server that holds the test's Namespaces and Pods) and the `weft-cni`
//! plugin, run as a container runtime runs it (environment and stdin). The testbed's pods
//! stand for the sandboxes; a `/proc` of this test's making shows each running pod's sandbox
//! process (its cgroup names the pod's uid, its `ns/net` is the pod's namespace).

use std::{
    collections::BTreeMap,
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;
use serde_json::{Value, json};
use weft_fake_apiserver::FakeApiServer;
use weft_testbed::{Testbed, Topology};

use crate::{Process, binary};

/// The node the harness builds.
pub const NODE: &str = "node1";
/// Where the agent pins (swept with the testbed after a crash).
const PIN_BASE: &str = "weft-cni-test";
/// The port of the probe destination ([`CniNode::capture_of`]).
const TARGET_PORT: u16 = 7070;

/// A pod of the harness: its namespace and labels in the API, and whether it is running
/// already (a running pod has a sandbox process in the harness's `/proc`).
#[derive(Debug, Clone)]
pub struct CniPod {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
}

impl CniPod {
    pub fn new(name: &str, namespace: &str, running: bool) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            labels: BTreeMap::new(),
            running,
        }
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
}

/// What a connection from a pod to the probe destination showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// Redirected to the agent's outbound listener.
    Captured,
    /// Reached the destination directly.
    Direct,
    /// Refused: captured, and nobody listening (the agent is down: failing closed).
    Refused,
}

/// What one plugin run printed and returned.
#[derive(Debug, Clone)]
pub struct PluginRun {
    pub success: bool,
    pub stdout: Value,
    pub stderr: String,
}

pub struct CniNode {
    pub testbed: Testbed,
    pub api: FakeApiServer,
    runtime: tokio::runtime::Runtime,
    pub dir: PathBuf,
    pods: Vec<CniPod>,
    agent: Option<Process>,
    daemon: Option<Process>,
    _target: TcpListener,
}

impl CniNode {
    /// Builds the node with `pods` (plus `target`, the probe destination), puts every namespace
    /// named in `namespaces` (with its labels) and every pod in the API, starts the agent and
    /// the node daemon, and waits until the plugin is installed.
    pub fn start(
        namespaces: &[(&str, &[(&str, &str)])],
        pods: Vec<CniPod>,
    ) -> anyhow::Result<Self> {
        let mut names: Vec<&str> = pods.iter().map(|p| p.name.as_str()).collect();
        names.push("target");
        let testbed = Topology::new().node(NODE, &names).build()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let api = runtime.block_on(FakeApiServer::start())?;
        let dir = std::env::temp_dir().join(format!("{}-cni", testbed.prefix()));
        for sub in ["net.d", "bin", "proc", "run"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        let target = testbed.pod("target");
        let address: SocketAddr = (target.ip, TARGET_PORT).into();
        let listener = target.netns.run(move || TcpListener::bind(address))??;
        let mut node = Self {
            testbed,
            api,
            runtime,
            dir,
            pods: pods.clone(),
            agent: None,
            daemon: None,
            _target: listener,
        };
        for (name, labels) in namespaces {
            node.put_namespace(name, labels)?;
        }
        for (i, pod) in pods.iter().enumerate() {
            node.api.create(node.pod_object(pod))?;
            if pod.running {
                node.fake_sandbox_process(pod, 100 + i as u32)?;
            }
        }
        std::fs::write(node.dir.join("kubeconfig"), node.api.kubeconfig())?;
        let gateway = node.testbed.node(NODE).gateway;
        std::fs::write(
            node.dir.join("net.d/10-pods.conflist"),
            json!({
                "cniVersion": "1.0.0",
                "name": "pods",
                "plugins": [{"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": format!("{gateway}/24")}}]
            })
            .to_string(),
        )?;
        std::fs::write(node.dir.join("token"), "agent-token")?;
        node.start_agent()?;
        node.start_daemon()?;
        node.wait_for("the plugin to be installed", Duration::from_secs(30), |n| {
            n.installed_entry().is_some() && n.dir.join("bin/weft-cni").exists()
        })?;
        Ok(node)
    }

    /// The uid the API server gave pod `name` (empty for a pod it does not know).
    pub fn uid(&self, name: &str) -> String {
        let namespace = self
            .pods
            .iter()
            .find(|p| p.name == name)
            .map_or("default", |p| p.namespace.as_str());
        self.api
            .get("v1", "Pod", namespace, name)
            .and_then(|pod| pod["metadata"]["uid"].as_str().map(String::from))
            .unwrap_or_default()
    }

    /// Creates or replaces a Namespace.
    pub fn put_namespace(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<()> {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let object = json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}
        });
        if self.api.get("v1", "Namespace", "", name).is_some() {
            self.api.update(object)?;
        } else {
            self.api.create(object)?;
        }
        Ok(())
    }

    fn pod_object(&self, pod: &CniPod) -> Value {
        let ip = self.testbed.pod(&pod.name).ip.to_string();
        let status = if pod.running {
            json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]})
        } else {
            json!({"phase": "Pending"})
        };
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod.name, "namespace": pod.namespace, "labels": pod.labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "weft/sample-app"}]},
            "status": status
        })
    }

    /// Marks `name` running: its status in the API, and its sandbox process in the harness's
    /// `/proc` (a pod the plugin enrolled becomes running this way after ADD).
    pub fn set_running(&mut self, name: &str) -> anyhow::Result<()> {
        let index = self
            .pods
            .iter()
            .position(|p| p.name == name)
            .context("no such pod")?;
        self.pods[index].running = true;
        let pod = self.pods[index].clone();
        self.api.update(self.pod_object(&pod))?;
        self.fake_sandbox_process(&pod, 100 + index as u32)
    }

    fn fake_sandbox_process(&self, pod: &CniPod, pid: u32) -> anyhow::Result<()> {
        let process = self.dir.join("proc").join(pid.to_string());
        std::fs::create_dir_all(process.join("ns"))?;
        std::fs::write(
            process.join("cgroup"),
            format!(
                "0::/kubepods/besteffort/pod{}/sandbox\n",
                self.uid(&pod.name)
            ),
        )?;
        let netns = self.testbed.pod(&pod.name).netns.path();
        let link = process.join("ns/net");
        if !link.exists() {
            std::os::unix::fs::symlink(&netns, &link)?;
        }
        Ok(())
    }

    /// Starts (or restarts) the node agent in the node's namespace.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let node = self.testbed.node(NODE);
        let mut command = node.netns.command(binary("node-agent")?.to_str().unwrap());
        command
            .env("NODE_NAME", NODE)
            // No controller: enrollment and capture need none.
            .env("XDS_ADDRESS", "http://127.0.0.1:9")
            .env("BOOTSTRAP_TOKEN_FILE", self.dir.join("token"))
            .env("ENROLLMENT_SOCKET", self.enrollment_socket())
            .env("PIN_DIR", self.testbed.pin_dir(PIN_BASE).join(NODE))
            .env("RUST_LOG", "info");
        let log = self.dir.join("agent.log");
        self.agent = Some(Process::spawn("node agent", command, log)?);
        let socket = self.enrollment_socket();
        self.wait_for(
            "the agent's enrollment socket",
            Duration::from_secs(30),
            |_| std::os::unix::net::UnixStream::connect(&socket).is_ok(),
        )
    }

    /// Kills the node agent (SIGKILL): its pinned capture stays.
    pub fn kill_agent(&mut self) {
        if let Some(mut agent) = self.agent.take() {
            agent.kill();
        }
    }

    fn start_daemon(&mut self) -> anyhow::Result<()> {
        let mut command = Command::new(binary("weft-cni-node")?);
        command
            .env("NODE_NAME", NODE)
            .env("CNI_NET_DIR", self.dir.join("net.d"))
            .env("CNI_BIN_DIR", self.dir.join("bin"))
            .env("HOST_CNI_NET_DIR", self.dir.join("net.d"))
            .env("PLUGIN_BINARY", binary("weft-cni")?)
            .env("ENROLLMENT_SOCKET", self.enrollment_socket())
            .env("NODE_SOCKET", self.node_socket())
            .env("PROC_ROOT", self.dir.join("proc"))
            .env("NETNS_DIR", weft_testbed::NETNS_DIR)
            .env("KUBECONFIG", self.dir.join("kubeconfig"))
            .env("RUST_LOG", "info");
        let log = self.dir.join("daemon.log");
        self.daemon = Some(Process::spawn("weft-cni-node", command, log)?);
        Ok(())
    }

    /// Stops the node daemon with SIGTERM, as the kubelet does.
    pub fn stop_daemon(&mut self) {
        if let Some(mut daemon) = self.daemon.take() {
            daemon.stop();
        }
    }

    pub fn enrollment_socket(&self) -> PathBuf {
        self.dir.join("run/enroll.sock")
    }

    pub fn node_socket(&self) -> PathBuf {
        self.dir.join("run/cni.sock")
    }

    /// The plugin's entry in the node's configuration list, if installed.
    pub fn installed_entry(&self) -> Option<Value> {
        let text = std::fs::read_to_string(self.dir.join("net.d/10-pods.conflist")).ok()?;
        let list: Value = serde_json::from_str(&text).ok()?;
        list["plugins"]
            .as_array()?
            .iter()
            .find(|p| p["type"] == "weft-cni")
            .cloned()
    }

    /// The network configuration the runtime hands the plugin for `pod`: the installed entry,
    /// the list's version and name, and the bridge plugin's result for the pod.
    pub fn plugin_config(&self, pod: &str) -> anyhow::Result<Value> {
        let mut conf = self
            .installed_entry()
            .context("the plugin is not installed")?;
        let pod = self.testbed.pod(pod);
        conf["cniVersion"] = json!("1.0.0");
        conf["name"] = json!("pods");
        conf["prevResult"] = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": pod.netns.path()}],
            "ips": [{"address": format!("{}/24", pod.ip), "gateway": pod.gateway.to_string(), "interface": 0}],
            "dns": {}
        });
        Ok(conf)
    }

    /// Runs the installed plugin binary as the runtime does.
    pub fn plugin(&self, command: &str, pod: &str, stdin: &[u8]) -> anyhow::Result<PluginRun> {
        let namespace = self
            .pods
            .iter()
            .find(|p| p.name == pod)
            .map_or("default", |p| p.namespace.as_str());
        let netns = self
            .testbed
            .pods()
            .iter()
            .find(|p| p.name == pod)
            .map(|p| p.netns.path());
        run_plugin(
            &self.dir.join("bin/weft-cni"),
            &PluginCall {
                command,
                sandbox: &format!("sandbox-{pod}"),
                netns: netns.as_deref(),
                namespace,
                pod,
                uid: &self.uid(pod),
            },
            stdin,
        )
    }

    /// Connects from `pod` to the probe destination (a listener in another pod of the node).
    pub fn capture_of(&self, pod: &str) -> Capture {
        let target: SocketAddr = (self.testbed.pod("target").ip, TARGET_PORT).into();
        capture_of(&self.testbed.pod(pod).netns, target)
    }

    /// Waits (bounded) until `pod`'s connections show `expected`.
    pub fn wait_for_capture(&self, pod: &str, expected: Capture) -> anyhow::Result<()> {
        self.wait_for(
            &format!("{pod} to be {expected:?}"),
            Duration::from_secs(20),
            |n| n.capture_of(pod) == expected,
        )
    }

    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !done(self) {
            if Instant::now() > deadline {
                anyhow::bail!("timed out waiting for {what}\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The pods whose inbound steering link is pinned: what the agent has enrolled.
    pub fn pinned_pods(&self) -> Vec<String> {
        let dir = self.testbed.pin_dir(PIN_BASE).join(NODE).join("pods");
        let mut pods: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        pods.sort();
        pods
    }

    /// The tails of the agent's and the daemon's logs.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["agent.log", "daemon.log"] {
            let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            out.push_str(&format!("==> {name} <==\n"));
            for line in tail.into_iter().rev() {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    pub fn runtime(&self) -> &tokio::runtime::Runtime {
        &self.runtime
    }
}

/// One plugin call's environment.
#[derive(Debug, Clone, Copy)]
pub struct PluginCall<'a> {
    pub command: &'a str,
    pub sandbox: &'a str,
    pub netns: Option<&'a std::path::Path>,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
}

/// Runs the plugin at `binary` as a container runtime does: the call in the environment, the
/// network configuration on stdin.
pub fn run_plugin(
    binary: &std::path::Path,
    call: &PluginCall<'_>,
    stdin: &[u8],
) -> anyhow::Result<PluginRun> {
    let mut child = Command::new(binary)
        .env_clear()
        .env("CNI_COMMAND", call.command)
        .env("CNI_CONTAINERID", call.sandbox)
        .env("CNI_NETNS", call.netns.unwrap_or(std::path::Path::new("")))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", binary.parent().unwrap_or(std::path::Path::new("/")))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
                call.namespace, call.pod, call.sandbox, call.uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().unwrap().write_all(stdin)?;
    let output = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(PluginRun {
        success: output.status.success(),
        stdout: if stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&stdout)
                .with_context(|| format!("the plugin printed {stdout:?}"))?
        },
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Connects from `netns` to `target`: a captured connection lands on the agent's outbound
/// listener (its peer is not `target`), refused when the agent is down.
pub fn capture_of(netns: &weft_testbed::Netns, target: SocketAddr) -> Capture {
    let connected = netns
        .run(move || TcpStream::connect_timeout(&target, Duration::from_secs(2)))
        .expect("enter the pod's namespace");
    match connected {
        Ok(stream) if stream.peer_addr().ok() == Some(target) => Capture::Direct,
        Ok(_) => Capture::Captured,
        Err(_) => Capture::Refused,
    }
}

impl Drop for CniNode {
    fn drop(&mut self) {
        self.stop_daemon();
        if let Some(mut agent) = self.agent.take() {
            agent.stop();
        }
        let _ = std::fs::remove_dir_all(self.testbed.pin_dir(PIN_BASE));
        if std::thread::panicking() {
            let _ = writeln!(
                std::io::stderr(),
                "CNI node files kept in {}",
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
