//! The end-to-end harness: a mesh of real processes on the testbed, started exactly as users run
//! them. The controller runs on the control-plane host in local mode (a directory of YAML this
//! harness writes), a node agent runs in each node's namespace and agent cgroup, pods are
//! enrolled through each agent's enrollment socket (the CNI's role), the sample app runs in
//! pods, and a waypoint pod runs the `waypoint` binary (its own identity from the controller's
//! CA, its configuration over delta ADS), as Istio's gateway controller would deploy it for a
//! `Gateway` of class `istio-waypoint`. Everything is stopped and removed when the [`Mesh`] is
//! dropped. The end-to-end tests and `cargo xtask demo` both start the mesh through this crate.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

mod addresses;
pub mod bookinfo;
mod changes;
pub mod cni;
pub mod containerd;
pub mod cri;
pub mod curl;
pub mod demo;
pub mod h2flood;
pub mod kube_cluster;
pub mod probes;
pub mod scenarios;
pub mod session;

pub use addresses::ADDRESSES_FILE;
pub use changes::{applied_version, split_documents};
pub use curl::CurlResult;
use node_agent::enrollment::{EnrolledPod, EnrollmentClient};
use weft_testbed::{Pod, Testbed, Topology};

/// How long starting a component may take.
pub const STARTUP: Duration = Duration::from_secs(30);
const GRPC_PORT: u16 = 15010;
/// Where the agents of a mesh pin (`<base>/<prefix>/<node>`).
const PIN_BASE: &str = "weft-e2e";
/// The label Istio's gateway controller puts on a waypoint's pods: the Gateway's name.
pub use weft_istio::labels::GATEWAY_NAME as GATEWAY_NAME_LABEL;
/// The waypoint's metrics port (Istio's 15020).
pub const WAYPOINT_METRICS_PORT: u16 = 15020;
/// The sample app's HTTP port unless a pod says otherwise.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// The sample app's TCP echo port unless a pod says otherwise.
pub const DEFAULT_ECHO_PORT: u16 = 7000;

/// What runs in a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// Nothing (a client the test drives with its own commands).
    None,
    /// The sample app as this service and version.
    App { service: String, version: String },
    /// The `waypoint` binary, for the Gateway of this name in the pod's namespace.
    Waypoint { gateway: String },
}

/// A pod of the mesh: where it runs and what it is.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub node: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Enrolled through the agent's enrollment socket (its namespace or itself is ambient).
    pub enrolled: bool,
    pub workload: Workload,
    /// The sample app's HTTP port (its gRPC echo stays on 9090, its TCP echo on 7000).
    pub http_port: u16,
    /// Services the sample app calls on every request (`name=http://host:port`).
    pub upstreams: Vec<String>,
    /// Ports of the sample app's TCP echo.
    pub echo_ports: Vec<u16>,
}

impl PodSpec {
    /// An enrolled pod running the sample app as `service` `version`.
    pub fn app(name: &str, node: &str, namespace: &str, service: &str, version: &str) -> Self {
        Self {
            name: name.into(),
            node: node.into(),
            namespace: namespace.into(),
            service_account: service.into(),
            labels: [
                ("app".to_string(), service.to_string()),
                ("version".to_string(), version.to_string()),
            ]
            .into(),
            enrolled: true,
            workload: Workload::App {
                service: service.into(),
                version: version.into(),
            },
            http_port: DEFAULT_HTTP_PORT,
            upstreams: Vec::new(),
            echo_ports: vec![DEFAULT_ECHO_PORT],
        }
    }

    /// The pod of the waypoint `gateway` (a Gateway of class `istio-waypoint` in `namespace`):
    /// its own service account, labelled as Istio labels waypoint pods, and not captured by the
    /// node agent (it speaks HBONE itself).
    pub fn waypoint(gateway: &str, node: &str, namespace: &str) -> Self {
        Self {
            name: gateway.into(),
            node: node.into(),
            namespace: namespace.into(),
            service_account: gateway.into(),
            labels: [(GATEWAY_NAME_LABEL.to_string(), gateway.to_string())].into(),
            enrolled: false,
            workload: Workload::Waypoint {
                gateway: gateway.into(),
            },
            http_port: DEFAULT_HTTP_PORT,
            upstreams: Vec::new(),
            echo_ports: Vec::new(),
        }
    }

    /// An enrolled pod with nothing running (a client).
    pub fn client(name: &str, node: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            node: node.into(),
            namespace: namespace.into(),
            service_account: name.into(),
            labels: [("app".to_string(), name.to_string())].into(),
            enrolled: true,
            workload: Workload::None,
            http_port: DEFAULT_HTTP_PORT,
            upstreams: Vec::new(),
            echo_ports: Vec::new(),
        }
    }

    pub fn not_enrolled(mut self) -> Self {
        self.enrolled = false;
        self
    }

    pub fn with_http_port(mut self, port: u16) -> Self {
        self.http_port = port;
        self
    }

    pub fn with_upstream(mut self, name: &str, url: &str) -> Self {
        self.upstreams.push(format!("{name}={url}"));
        self
    }

    /// The sample app's TCP echo on `ports` instead of 7000.
    pub fn with_echo_ports(mut self, ports: &[u16]) -> Self {
        self.echo_ports = ports.to_vec();
        self
    }

    /// Another service account than the one named after the service.
    pub fn with_service_account(mut self, account: &str) -> Self {
        self.service_account = account.into();
        self
    }

    /// The sample app's arguments for this pod, serving as `service` at `version`.
    pub fn sample_app_args(&self, service: &str, version: &str) -> Vec<String> {
        let mut args: Vec<String> = [
            "--service",
            service,
            "--app-version",
            version,
            "--pod",
            &self.name,
            "--http",
            &format!("0.0.0.0:{}", self.http_port),
            "--grpc",
            "0.0.0.0:9090",
        ]
        .map(String::from)
        .into();
        for port in &self.echo_ports {
            args.extend(["--echo".to_string(), format!("0.0.0.0:{port}")]);
        }
        for upstream in &self.upstreams {
            args.extend(["--upstream".to_string(), upstream.clone()]);
        }
        args
    }

    pub fn is_waypoint(&self) -> bool {
        matches!(self.workload, Workload::Waypoint { .. })
    }
}

/// A running process of the mesh, with its log file.
pub(crate) struct Process {
    child: Child,
}

impl Process {
    pub(crate) fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        let file = std::fs::File::create(&log)?;
        command
            .stdout(file.try_clone()?)
            .stderr(file)
            .stdin(Stdio::null())
            // Plain log files: tests search them, people read them.
            .env("NO_COLOR", "1");
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} (log {})", log.display()))?;
        Ok(Self { child })
    }

    pub(crate) fn stop(&mut self) {
        terminate(&mut self.child);
    }

    /// SIGTERM, without waiting: the process is the caller's from here.
    pub(crate) fn signal_terminate(self) -> anyhow::Result<Child> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(self.child)
    }

    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops a child process: SIGTERM, up to 5 s to exit, then SIGKILL; reaped either way.
pub fn terminate(child: &mut std::process::Child) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The resources of a waypoint named `waypoint` for the services of `namespace`, as Istio's
/// gateway controller has them: the `Gateway` (class `istio-waypoint`, for services) and the
/// Service in front of the waypoint's pods (VIP 10.96.0.2, port 15008), through which agents
/// reach it. The pod is `PodSpec::waypoint("waypoint", ..)`.
pub fn waypoint_resources(namespace: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: waypoint
  namespace: {namespace}
  labels: {{gateway.networking.k8s.io/gateway-name: waypoint}}
spec:
  clusterIP: 10.96.0.2
  selector: {{gateway.networking.k8s.io/gateway-name: waypoint}}
  ports:
  - {{name: mesh, port: 15008}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: {namespace}
  labels: {{istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - {{name: mesh, port: 15008, protocol: HBONE}}
"#
    )
}

/// The directory holding the workspace's built binaries (next to the running test binary).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Test binaries live in `target/<profile>/deps`, binaries in `target/<profile>`.
    let mut dir = exe
        .parent()
        .context("the running binary has no directory")?;
    if dir.ends_with("deps") {
        dir = dir.parent().context("no profile directory above deps")?;
    }
    let path = dir.join(name);
    if !path.is_file() {
        bail!(
            "{} is not built: run `cargo build --workspace --bins` (cargo xtask test does)",
            path.display()
        );
    }
    Ok(path)
}

/// A running mesh.
pub struct Mesh {
    pub testbed: Testbed,
    pub pods: Vec<PodSpec>,
    dir: PathBuf,
    controller: Option<Process>,
    agents: BTreeMap<String, Process>,
    apps: Vec<Process>,
    waypoints: BTreeMap<String, Process>,
    enrollment: BTreeMap<String, Vec<EnrolledPod>>,
    /// Namespaces the configuration declares itself (the harness writes the others).
    declared: std::collections::BTreeSet<String>,
    certificate_ttl: Duration,
    acceleration: bool,
    log_requests: bool,
    agent_env: Vec<(String, String)>,
    runtime: tokio::runtime::Runtime,
}

/// Options of a mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Workload certificate lifetime requested by the agents.
    pub certificate_ttl: Duration,
    /// Extra YAML (services, policies) written next to the generated pods.
    pub config: String,
    /// Further configuration files, by file name, written as they are (the demo plays
    /// `deploy/examples` this way). A Namespace declared here replaces the harness's plain one.
    pub config_files: Vec<(String, String)>,
    /// Agents splice same-node loopback hops (`ACCELERATION=true`).
    pub acceleration: bool,
    /// Sample apps log one line per request (tests read them: what reached which pod).
    pub log_requests: bool,
    /// Further environment for every agent (`WORKER_THREADS`, ...), after the harness's own.
    pub agent_env: Vec<(String, String)>,
}

impl Default for MeshOptions {
    fn default() -> Self {
        Self {
            certificate_ttl: Duration::from_secs(3600),
            config: String::new(),
            config_files: Vec::new(),
            acceleration: false,
            log_requests: false,
            agent_env: Vec::new(),
        }
    }
}

impl Mesh {
    /// Builds the testbed for `pods`, writes the configuration, starts the controller, the
    /// agents and the apps, and enrolls the pods.
    pub fn start(pods: Vec<PodSpec>, options: MeshOptions) -> anyhow::Result<Self> {
        let mut nodes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pod in &pods {
            nodes
                .entry(pod.node.clone())
                .or_default()
                .push(pod.name.clone());
        }
        let mut topology = Topology::new().control_plane();
        for (node, names) in &nodes {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            topology = topology.node(node, &names);
        }
        let testbed = topology.build()?;
        let dir = std::env::temp_dir().join(format!("{}-mesh", testbed.prefix()));
        std::fs::create_dir_all(dir.join("config"))?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut mesh = Self {
            testbed,
            pods,
            dir,
            controller: None,
            agents: BTreeMap::new(),
            apps: Vec::new(),
            waypoints: BTreeMap::new(),
            enrollment: BTreeMap::new(),
            declared: Default::default(),
            certificate_ttl: options.certificate_ttl,
            acceleration: options.acceleration,
            log_requests: options.log_requests,
            agent_env: options.agent_env,
            runtime,
        };
        let mut declared = declared_namespaces(&options.config)?;
        for (file, yaml) in &options.config_files {
            declared.extend(declared_namespaces(yaml).with_context(|| file.clone())?);
        }
        mesh.declared = declared;
        mesh.write_config("00-pods.yaml", &mesh.pods_yaml())?;
        if !options.config.is_empty() {
            mesh.write_config("10-config.yaml", &options.config)?;
        }
        for (file, yaml) in &options.config_files {
            mesh.write_config(file, yaml)?;
        }
        // One bootstrap token per node agent, and one per waypoint (bound to its node: the CA
        // signs only identities of pods scheduled there).
        let mut tokens = String::new();
        for node in nodes.keys() {
            let token = format!("{node}-{}-bootstrap-token", mesh.testbed.prefix());
            writeln!(tokens, "{node} {token}")?;
            std::fs::write(mesh.dir.join(format!("{node}.token")), &token)?;
        }
        for pod in mesh.pods.iter().filter(|p| p.is_waypoint()) {
            let token = format!("{}-{}-waypoint-token", pod.name, mesh.testbed.prefix());
            writeln!(tokens, "{} {token}", pod.node)?;
            std::fs::write(
                mesh.dir.join(format!("waypoint-{}.token", pod.name)),
                &token,
            )?;
        }
        std::fs::write(mesh.dir.join("tokens"), tokens)?;

        mesh.start_controller()?;
        for node in nodes.keys() {
            mesh.start_agent(node)?;
        }
        for node in nodes.keys() {
            mesh.wait_ready(node)?;
            mesh.enroll(node)?;
        }
        mesh.start_apps()?;
        for pod in mesh.pods.clone().iter().filter(|p| p.is_waypoint()) {
            mesh.start_waypoint(&pod.name)?;
        }
        mesh.publish_addresses()?;
        Ok(mesh)
    }

    /// The directory holding the configuration, logs, tokens and sockets of this mesh.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn pods_yaml(&self) -> String {
        let declared = &self.declared;
        let mut yaml = String::new();
        let namespaces: std::collections::BTreeSet<_> = self
            .pods
            .iter()
            .map(|p| p.namespace.clone())
            .filter(|n| !declared.contains(n))
            .collect();
        for namespace in namespaces {
            let _ = writeln!(
                yaml,
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---"
            );
        }
        for pod in &self.pods {
            let ip = self.testbed.pod(&pod.name).ip;
            let mut labels = pod.labels.clone();
            labels.insert(
                "istio.io/dataplane-mode".into(),
                if pod.enrolled { "ambient" } else { "none" }.into(),
            );
            let labels: String = labels
                .iter()
                .map(|(k, v)| format!("    {k}: {v:?}\n"))
                .collect();
            let container = if pod.is_waypoint() {
                "  - name: istio-proxy\n    image: weft/waypoint\n    ports:\n    - {name: mesh, containerPort: 15008}\n    - {name: metrics, containerPort: 15020}\n".to_string()
            } else {
                format!(
                    "  - name: app\n    image: weft/sample-app\n    ports:\n    - {{name: http, containerPort: {}}}\n    - {{name: grpc, containerPort: 9090}}\n",
                    pod.http_port
                )
            };
            let _ = writeln!(
                yaml,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  uid: uid-{}\n  labels:\n{labels}spec:\n  nodeName: {}\n  serviceAccountName: {}\n  containers:\n{container}status:\n  podIP: {ip}\n---",
                pod.name, pod.namespace, pod.name, pod.node, pod.service_account
            );
        }
        yaml
    }

    /// Writes (or replaces) a configuration file the controller watches.
    pub fn write_config(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        let path = self.dir.join("config").join(file);
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, yaml)?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }

    pub fn remove_config(&self, file: &str) -> anyhow::Result<()> {
        std::fs::remove_file(self.dir.join("config").join(file))?;
        Ok(())
    }

    pub fn controller_address(&self) -> String {
        let host = self.testbed.control_plane().expect("a control plane host");
        format!("http://{}:{GRPC_PORT}", host.ip)
    }

    /// Starts (or restarts) the controller.
    pub fn start_controller(&mut self) -> anyhow::Result<()> {
        let host = self.testbed.control_plane().expect("a control plane host");
        let mut command = host
            .netns
            .command_in_cgroup(&host.cgroup, binary("controller")?.to_str().unwrap());
        command
            .arg("run")
            .arg("--config-dir")
            .arg(self.dir.join("config"))
            .arg("--ca-dir")
            .arg(self.dir.join("ca"))
            .arg("--bootstrap-tokens")
            .arg(self.dir.join("tokens"))
            .args(["--grpc-address", &format!("0.0.0.0:{GRPC_PORT}")]);
        let log = self.dir.join("controller.log");
        self.controller = Some(Process::spawn("controller", command, log)?);
        // Ready when its port answers from a node.
        let node = self.testbed.nodes()[0].name.clone();
        let target = format!("{}:{GRPC_PORT}", host.ip);
        self.wait_until("the controller's port", || {
            self.testbed
                .node_command(&node, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{}/{}", host.ip, GRPC_PORT)])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .with_context(|| format!("controller at {target}"))
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            controller.stop();
        }
    }

    /// A counter of `node`'s redirection programs (a slot of `weft_ebpf_common::stats`), summed
    /// over CPUs, read from the pinned map.
    pub fn redirect_stat(&self, node: &str, slot: u32) -> anyhow::Result<u64> {
        let map = self.pin_dir(node).join("maps/REDIRECT_STATS");
        let output = Command::new("bpftool")
            .args(["map", "lookup", "pinned"])
            .arg(&map)
            .args(["key"])
            .args(slot.to_le_bytes().map(|b| b.to_string()))
            .arg("-j")
            .output()
            .context("run bpftool")?;
        if !output.status.success() {
            bail!(
                "bpftool map lookup {}: {}",
                map.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let entry: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let values = entry["values"]
            .as_array()
            .with_context(|| format!("per-CPU values in {entry}"))?;
        values
            .iter()
            .map(|v| {
                let bytes = v["value"]
                    .as_array()
                    .with_context(|| format!("value bytes in {v}"))?
                    .iter()
                    .map(|b| match b {
                        serde_json::Value::String(hex) => {
                            u8::from_str_radix(hex.trim_start_matches("0x"), 16).ok()
                        }
                        other => other.as_u64().and_then(|n| u8::try_from(n).ok()),
                    })
                    .collect::<Option<Vec<u8>>>()
                    .with_context(|| format!("value bytes in {v}"))?;
                let bytes: [u8; 8] = bytes.try_into().map_err(|_| anyhow::anyhow!("not a u64"))?;
                Ok(u64::from_le_bytes(bytes))
            })
            .sum()
    }

    /// Bulk TCP throughput from `client` to an `iperf3 -s` at `server_ip`, in Gbit/s (iperf3
    /// inside the pod, `seconds` long; retried twice while the server is busy with a previous test).
    pub fn iperf(
        &self,
        client: &str,
        server_ip: std::net::Ipv4Addr,
        seconds: u32,
    ) -> anyhow::Result<f64> {
        // The server runs one test at a time and may still be closing the previous one.
        let mut last = String::new();
        for _ in 0..3 {
            let output = self
                .testbed
                .pod_command(client, "iperf3")
                .args([
                    "-c",
                    &server_ip.to_string(),
                    "-t",
                    &seconds.to_string(),
                    "-J",
                ])
                .output()?;
            let report: serde_json::Value =
                serde_json::from_slice(&output.stdout).unwrap_or(serde_json::Value::Null);
            if let Some(bps) = report["end"]["sum_received"]["bits_per_second"].as_f64() {
                return Ok(bps / 1e9);
            }
            last = format!(
                "{} {}",
                report["error"],
                String::from_utf8_lossy(&output.stderr)
            );
            // Only a busy server is worth another try; any other error is the result.
            if !last.contains("busy") {
                break;
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        anyhow::bail!("iperf3 reported no throughput: {last}")
    }

    fn pin_dir(&self, node: &str) -> PathBuf {
        self.testbed.pin_dir(PIN_BASE).join(node)
    }

    /// The Unix socket on which `node`'s agent enrolls pods.
    pub fn enrollment_socket(&self, node: &str) -> PathBuf {
        self.dir.join(format!("{node}.sock"))
    }

    /// The enrollment of pod `name` as the CNI would send it (whether or not it is enrolled).
    pub fn enrollment_of(&self, name: &str) -> EnrolledPod {
        enrolled(self.testbed.pod(name))
    }

    /// Starts (or restarts) the node agent of `node`.
    pub fn start_agent(&mut self, node_name: &str) -> anyhow::Result<()> {
        let node = self.testbed.node(node_name);
        // With the soft descriptor limit a service manager usually gives a daemon (1024): the
        // agent raises it to the hard limit itself.
        let mut command = node.netns.command_in_cgroup(&node.agent_cgroup, "prlimit");
        command
            .arg("--nofile=1024:")
            .arg(binary("node-agent")?)
            .env("NODE_NAME", node_name)
            .env("XDS_ADDRESS", self.controller_address())
            .env(
                "BOOTSTRAP_TOKEN_FILE",
                self.dir.join(format!("{node_name}.token")),
            )
            .env(
                "CERTIFICATE_TTL_SECONDS",
                self.certificate_ttl.as_secs().to_string(),
            )
            .env("ENROLLMENT_SOCKET", self.enrollment_socket(node_name))
            .env("PIN_DIR", self.pin_dir(node_name))
            .env("ACCELERATION", self.acceleration.to_string())
            .env("RUST_LOG", "info")
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        let log = self.dir.join(format!("agent-{node_name}.log"));
        let process = Process::spawn(&format!("agent {node_name}"), command, log)?;
        self.agents.insert(node_name.to_string(), process);
        Ok(())
    }

    /// Sends SIGTERM to the agent of `node` and hands its process over, to watch it drain and
    /// exit; [`Mesh::restart_agent`] starts the next one.
    pub fn signal_agent(&mut self, node: &str) -> anyhow::Result<Child> {
        let process = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent on {node}"))?;
        process.signal_terminate()
    }

    /// Kills the agent of `node` abruptly (SIGKILL): nothing is cleaned up.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(mut agent) = self.agents.remove(node) {
            agent.kill();
        }
    }

    /// Restarts the agent of `node` after a stop or kill: it adopts the pinned redirection, and the
    /// enrolling side (the CNI) reconnects and resends its snapshot, as it does after any agent
    /// restart.
    pub fn restart_agent(&mut self, node: &str) -> anyhow::Result<()> {
        self.start_agent(node)?;
        self.wait_ready(node)?;
        self.enroll(node)
    }

    /// Starts `program` inside `pod` in the background (its output captured).
    pub fn spawn_in_pod(&self, pod: &str, program: &str, args: &[&str]) -> anyhow::Result<Child> {
        Ok(self
            .testbed
            .pod_command(pod, program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?)
    }

    /// Waits until a socket listens on TCP `port` in `pod`, read from the pod's socket table
    /// (`ss`), so that no probe connection reaches a server that counts its clients.
    pub fn wait_listening(&self, pod: &str, port: u16) -> anyhow::Result<()> {
        self.wait_until(&format!("a listener on {pod}:{port}"), || {
            self.testbed
                .pod_command(pod, "ss")
                .args(["-Hltn", &format!("sport = :{port}")])
                .output()
                .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
        })
    }

    /// Waits for the agent's readiness endpoint.
    pub fn wait_ready(&self, node: &str) -> anyhow::Result<()> {
        let ip = self.testbed.node(node).ip;
        self.wait_until(&format!("agent {node} readiness"), || {
            self.node_curl(node, &format!("http://{ip}:15021/healthz/ready"))
                .is_ok_and(|(code, _)| code == 200)
        })
    }

    /// Sends the node's enrollment snapshot (every enrolled pod on it).
    pub fn enroll(&mut self, node: &str) -> anyhow::Result<()> {
        let pods: Vec<EnrolledPod> = self
            .pods
            .iter()
            .filter(|p| p.node == node && p.enrolled)
            .map(|p| enrolled(self.testbed.pod(&p.name)))
            .collect();
        let socket = self.enrollment_socket(node);
        self.runtime.block_on(async {
            let mut client = EnrollmentClient::connect(&socket).await?;
            client.snapshot(&pods).await?;
            anyhow::Ok(())
        })?;
        self.enrollment.insert(node.to_string(), pods);
        Ok(())
    }

    fn start_apps(&mut self) -> anyhow::Result<()> {
        let binary = binary("sample-app")?;
        let is_app = |p: &PodSpec| matches!(p.workload, Workload::App { .. });
        for spec in self.pods.clone() {
            let Workload::App { service, version } = &spec.workload else {
                continue;
            };
            let mut command = self
                .testbed
                .pod_command(&spec.name, binary.to_str().unwrap());
            command.args(spec.sample_app_args(service, version));
            if self.log_requests {
                command.arg("--log-requests");
            }
            let log = self.dir.join(format!("app-{}.log", spec.name));
            self.apps.push(Process::spawn(&spec.name, command, log)?);
        }
        for spec in self.pods.iter().filter(|p| is_app(p)) {
            let ip = self.testbed.pod(&spec.name).ip;
            let port = spec.http_port;
            self.wait_until(&format!("app {}", spec.name), || {
                self.testbed
                    .pod_command(&spec.name, "bash")
                    .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success())
            })?;
        }
        Ok(())
    }

    /// Starts the waypoint of pod `name` inside the pod (its netns and cgroup) and waits until it
    /// is ready: it has its certificate from the controller's CA (with its own bootstrap token)
    /// and has applied a `WaypointConfig` pushed over delta ADS.
    pub fn start_waypoint(&mut self, name: &str) -> anyhow::Result<()> {
        let spec = self
            .pods
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?
            .clone();
        let Workload::Waypoint { gateway } = &spec.workload else {
            bail!("pod {name} is not a waypoint");
        };
        let controller = self.controller_address();
        let mut command = self
            .testbed
            .pod_command(name, binary("waypoint")?.to_str().unwrap());
        command
            .env("XDS_ADDRESS", &controller)
            .env("CA_ADDRESS", &controller)
            .env(
                "BOOTSTRAP_TOKEN_FILE",
                self.dir.join(format!("waypoint-{name}.token")),
            )
            .env("NODE_NAME", &spec.node)
            .env("WAYPOINT_NAME", gateway)
            .env("POD_NAMESPACE", &spec.namespace)
            .env("SERVICE_ACCOUNT", &spec.service_account)
            .env("RUST_LOG", "info");
        let log = self.dir.join(format!("waypoint-{name}.log"));
        let process = Process::spawn(&format!("waypoint {name}"), command, log)?;
        self.waypoints.insert(name.to_string(), process);
        let ip = self.testbed.pod(name).ip;
        let node = spec.node.clone();
        self.wait_until(&format!("waypoint {name} readiness"), || {
            self.node_curl(&node, &format!("http://{ip}:15021/healthz/ready"))
                .is_ok_and(|(code, _)| code == 200)
        })
    }

    /// Sends SIGTERM to the waypoint of pod `name` and hands its process over, to watch it
    /// drain and exit.
    pub fn signal_waypoint(&mut self, name: &str) -> anyhow::Result<Child> {
        let process = self
            .waypoints
            .remove(name)
            .with_context(|| format!("no waypoint {name}"))?;
        process.signal_terminate()
    }

    /// Stops the waypoint of pod `name` (SIGTERM, then SIGKILL).
    pub fn stop_waypoint(&mut self, name: &str) {
        if let Some(mut waypoint) = self.waypoints.remove(name) {
            waypoint.stop();
        }
    }

    /// The waypoint's Prometheus metrics (its 15020, read from its node).
    pub fn waypoint_metrics(&self, name: &str) -> String {
        let pod = self.testbed.pod(name);
        self.node_curl(
            &pod.node,
            &format!("http://{}:{WAYPOINT_METRICS_PORT}/metrics", pod.ip),
        )
        .map(|(_, body)| body)
        .unwrap_or_default()
    }

    /// The waypoint's `/config_dump`, read inside its pod (the admin port listens on the pod's
    /// loopback only).
    pub fn waypoint_config_dump(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let output = self
            .testbed
            .pod_command(name, "curl")
            .args([
                "-s",
                "--max-time",
                "5",
                "http://127.0.0.1:15000/config_dump",
            ])
            .output()?;
        serde_json::from_slice(&output.stdout).with_context(|| {
            format!(
                "waypoint {name}'s config dump: {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }

    /// `curl` from inside `pod` with extra arguments (headers, methods, `--http2-prior-knowledge`,
    /// ...), the URL last: status, body and total time. Bounded by `--max-time 10`.
    pub fn curl_with(&self, pod: &str, args: &[&str]) -> CurlResult {
        curl::with(self.testbed.pod_command(pod, "curl"), args)
    }

    /// `count` requests from `pod` in one `curl` process (one keep-alive connection, URL
    /// globbing), each reporting `write_out` on its own line; extra `args` go before the URL.
    /// `url` must not contain curl's glob characters.
    pub fn curl_many(
        &self,
        pod: &str,
        url: &str,
        count: u32,
        write_out: &str,
        args: &[&str],
    ) -> anyhow::Result<Vec<String>> {
        curl::many(
            self.testbed.pod_command(pod, "curl"),
            url,
            count,
            write_out,
            args,
        )
    }

    /// `count` requests from `pod` in one `curl` process, like [`Mesh::curl_many`], returning
    /// each response's status and body (bodies must be one line, as the sample app's JSON is).
    pub fn curl_bodies(
        &self,
        pod: &str,
        url: &str,
        count: u32,
        args: &[&str],
    ) -> anyhow::Result<Vec<(u16, String)>> {
        curl::bodies(self.testbed.pod_command(pod, "curl"), url, count, args)
    }

    fn wait_until(&self, what: &str, mut ready: impl FnMut() -> bool) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{what} not ready after {STARTUP:?}\n{}", self.logs())
    }

    /// Polls `check` for up to `timeout`; true once it held.
    pub fn eventually(&self, timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if check() {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `curl` from inside `pod`: (HTTP status, body); status 0 when the connection failed.
    pub fn curl(&self, pod: &str, url: &str) -> (u16, String) {
        let output = self
            .testbed
            .pod_command(pod, "curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
            .output()
            .expect("run curl");
        split_status(&output.stdout)
    }

    /// `curl` from the node's namespace (metrics, readiness, config dump).
    pub fn node_curl(&self, node: &str, url: &str) -> anyhow::Result<(u16, String)> {
        let output = self
            .testbed
            .node_command(node, "curl")
            .args(["-s", "--max-time", "5", "-w", "\n%{http_code}", url])
            .output()?;
        Ok(split_status(&output.stdout))
    }

    /// The agent's Prometheus metrics.
    pub fn metrics(&self, node: &str) -> String {
        let ip = self.testbed.node(node).ip;
        self.node_curl(node, &format!("http://{ip}:15020/metrics"))
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The agent's `/config_dump`.
    pub fn config_dump(&self, node: &str) -> serde_json::Value {
        let (status, body) = self
            .node_curl(node, "http://127.0.0.1:15000/config_dump")
            .expect("run curl");
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("config_dump answered {status}: {e}: {body:?}"))
    }

    /// Every component's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let _ = writeln!(out, "==> {} <==", file.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    pub fn log_of(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.testbed.pod(name)
    }
}

fn split_status(stdout: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(stdout);
    match text.rsplit_once('\n') {
        Some((body, code)) => (code.trim().parse().unwrap_or(0), body.to_string()),
        None => (text.trim().parse().unwrap_or(0), String::new()),
    }
}

fn enrolled(pod: &Pod) -> EnrolledPod {
    node_agent::testing::enrolled_pod(
        &pod.name,
        "",
        pod.netns.path(),
        std::net::IpAddr::V4(pod.ip),
    )
}

/// Namespaces declared (as `kind: Namespace` documents) in a configuration text.
fn declared_namespaces(yaml: &str) -> anyhow::Result<std::collections::BTreeSet<String>> {
    use serde::Deserialize as _;
    let mut names = std::collections::BTreeSet::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_yaml::Value::deserialize(document).context("parsing YAML")?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("Namespace")
            && let Some(name) = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
        {
            names.insert(name.to_string());
        }
    }
    Ok(names)
}

impl Drop for Mesh {
    fn drop(&mut self) {
        for waypoint in self.waypoints.values_mut() {
            waypoint.stop();
        }
        for app in &mut self.apps {
            app.kill();
        }
        for agent in self.agents.values_mut() {
            agent.stop();
        }
        self.stop_controller();
        let _ = std::fs::remove_dir_all(self.testbed.pin_dir(PIN_BASE));
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            // Not eprintln!: a closed stderr must not turn this panic into an abort.
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "mesh logs kept in {}",
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_split_with_their_comments() {
        let docs = split_documents("# a\nkind: A\n---\n# only a comment\n---\nkind: B\n");
        assert_eq!(
            docs,
            vec!["# a\nkind: A\n".to_string(), "kind: B\n".to_string()]
        );
    }
}
