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
    path::PathBuf,
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
pub mod dashboards;
pub mod demo;
pub mod dns;
pub mod fixtures;
pub mod gateway;
mod grpc_receiver;
pub mod h2flood;
pub mod kube_cluster;
mod lifecycle;
pub mod load;
pub mod observability;
mod observation;
pub mod probes;
pub mod scenarios;
pub mod session;
pub mod webdriver;

pub use addresses::ADDRESSES_FILE;
pub use changes::{applied_version, split_documents};
pub use curl::CurlResult;
use node_agent::enrollment::EnrolledPod;
use weft_testbed::{Pod, Testbed};

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
    /// A host outside the cluster: a namespace of the testbed like any pod's, but with no Pod
    /// object, so the controller never hears of it (a ServiceEntry's endpoint, say).
    pub outside_cluster: bool,
    pub workload: Workload,
    /// The sample app's HTTP port (its gRPC echo stays on 9090, its TCP echo on 7000).
    pub http_port: u16,
    /// Services the sample app calls on every request (`name=http://host:port`).
    pub upstreams: Vec<String>,
    /// Ports of the sample app's TCP echo.
    pub echo_ports: Vec<u16>,
    /// Files the sample app serves (`/path=FILE`).
    pub files: Vec<String>,
    /// The controller its Pod object names (what the mesh derives the workload name from, as
    /// Istio does); `None`: a bare pod, its workload named after itself.
    pub owner: Option<PodOwner>,
    /// Where the Pod object is in its life, as the configuration shows it.
    pub phase: PodPhase,
}

/// A Pod object's life as the controller sees it, for a rolling update: created (not Ready
/// until what runs in it is), Ready, terminating (`deletionTimestamp` set, as when Kubernetes
/// deletes it and marks its endpoints terminating), deleted. The testbed's network namespaces
/// are made at start for every pod, whatever its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodPhase {
    /// No Pod object (not created yet, or deleted).
    Absent,
    /// Created, its Ready condition false.
    Starting,
    Running,
    /// Being deleted: its endpoints are terminating, no longer healthy.
    Terminating,
}

/// What Kubernetes' controllers write on the pods they create: the generated name's prefix and
/// the controlling owner reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodOwner {
    /// `metadata.generateName`.
    pub generate_name: String,
    /// The owner reference's `apiVersion`, `kind` and `name`.
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// Labels the controller adds to the pod's own (a ReplicaSet's `pod-template-hash`).
    pub labels: BTreeMap<String, String>,
}

/// The `pod-template-hash` the testbed's Deployments' ReplicaSets carry.
pub const POD_TEMPLATE_HASH: &str = "7c9f5b8d46";

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
            outside_cluster: false,
            workload: Workload::App {
                service: service.into(),
                version: version.into(),
            },
            http_port: DEFAULT_HTTP_PORT,
            upstreams: Vec::new(),
            echo_ports: vec![DEFAULT_ECHO_PORT],
            files: Vec::new(),
            owner: None,
            phase: PodPhase::Running,
        }
        .with_deployment(name)
    }

    /// The pod of the waypoint `gateway` (a Gateway of class `istio-waypoint` in `namespace`):
    /// its own service account, labelled as Istio labels waypoint pods, and not captured by the
    /// node agent (it speaks HBONE itself).
    pub fn waypoint(gateway: &str, node: &str, namespace: &str) -> Self {
        Self::waypoint_replica(gateway, gateway, node, namespace)
    }

    /// Pod `name`, one replica of the waypoint `gateway` ([`PodSpec::waypoint`]): the
    /// waypoint's Service selects every replica, which share its service account.
    pub fn waypoint_replica(name: &str, gateway: &str, node: &str, namespace: &str) -> Self {
        Self {
            name: name.into(),
            node: node.into(),
            namespace: namespace.into(),
            service_account: gateway.into(),
            labels: [(GATEWAY_NAME_LABEL.to_string(), gateway.to_string())].into(),
            enrolled: false,
            outside_cluster: false,
            workload: Workload::Waypoint {
                gateway: gateway.into(),
            },
            http_port: DEFAULT_HTTP_PORT,
            upstreams: Vec::new(),
            echo_ports: Vec::new(),
            files: Vec::new(),
            owner: None,
            phase: PodPhase::Running,
        }
        .with_deployment(gateway)
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
            outside_cluster: false,
            workload: Workload::None,
            http_port: DEFAULT_HTTP_PORT,
            upstreams: Vec::new(),
            echo_ports: Vec::new(),
            files: Vec::new(),
            owner: None,
            phase: PodPhase::Running,
        }
        .with_deployment(name)
    }

    /// Created by the Deployment `deployment`, as its ReplicaSet creates pods: a generated name,
    /// the ReplicaSet `<deployment>-<hash>` as controller and the `pod-template-hash` label, so
    /// the mesh names the workload `deployment` (every testbed pod is so created by default, the
    /// Deployment named as the pod).
    pub fn with_deployment(mut self, deployment: &str) -> Self {
        let replica_set = format!("{deployment}-{POD_TEMPLATE_HASH}");
        self.owner = Some(PodOwner {
            generate_name: format!("{replica_set}-"),
            api_version: "apps/v1".into(),
            kind: "ReplicaSet".into(),
            name: replica_set,
            labels: [("pod-template-hash".into(), POD_TEMPLATE_HASH.into())].into(),
        });
        self
    }

    /// A bare pod: no controller, its workload named after the pod.
    pub fn without_owner(mut self) -> Self {
        self.owner = None;
        self
    }

    /// Not created when the mesh starts ([`PodPhase::Absent`]): a replica a rolling update
    /// adds later ([`Mesh::roll_waypoint`]).
    pub fn not_created(mut self) -> Self {
        self.phase = PodPhase::Absent;
        self
    }

    pub fn not_enrolled(mut self) -> Self {
        self.enrolled = false;
        self
    }

    /// Not a pod at all: a host outside the cluster and the mesh ([`PodSpec::outside_cluster`]).
    pub fn outside_cluster(mut self) -> Self {
        self.enrolled = false;
        self.outside_cluster = true;
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

    /// The sample app serves `file` to GET requests for `path` (read on every request).
    pub fn with_file(mut self, path: &str, file: &std::path::Path) -> Self {
        self.files.push(format!("{path}={}", file.display()));
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
        for file in &self.files {
            args.extend(["--file".to_string(), file.clone()]);
        }
        args
    }

    pub fn is_waypoint(&self) -> bool {
        matches!(self.workload, Workload::Waypoint { .. })
    }
}

/// A running process of the mesh, with its log file.
pub(crate) struct Process {
    /// What it was started as: the pod's name for a sample app.
    pub(crate) name: String,
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
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    pub(crate) fn stop(&mut self) {
        terminate(&mut self.child);
    }

    /// SIGTERM, without waiting: the process is the caller's from here.
    pub(crate) fn signal_terminate(self) -> anyhow::Result<Child> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        Ok(self.child)
    }

    pub(crate) fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal)?;
        Ok(())
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

/// A CA and a server certificate it signed for `host`, for TLS servers outside the mesh:
/// (CA PEM, certificate PEM, key PEM).
pub fn server_certificate(host: &str) -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "external test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec![host.to_owned()]).expect("server parameters");
    params.distinguished_name.push(DnType::CommonName, host);
    let key = KeyPair::generate().expect("server key");
    let cert = params.signed_by(&key, &issuer).expect("server certificate");
    (ca.pem(), cert.pem(), key.serialize_pem())
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
    /// Nodes whose agent runs on the rolling update's other ports ([`Mesh::roll_agent`]).
    surged: std::collections::BTreeSet<String>,
    apps: Vec<Process>,
    waypoints: BTreeMap<String, Process>,
    enrollment: BTreeMap<String, Vec<EnrolledPod>>,
    /// Namespaces the configuration declares itself (the harness writes the others).
    declared: std::collections::BTreeSet<String>,
    certificate_ttl: Duration,
    acceleration: bool,
    log_requests: bool,
    agent_env: Vec<(String, String)>,
    agents_proc_sys_read_only: bool,
    waypoint_env: Vec<(String, String)>,
    runtime: tokio::runtime::Runtime,
}

/// Options of a mesh.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Workload certificate lifetime requested by the agents and the waypoints.
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
    /// The agents see `/proc/sys` read-only, as the runtime mounts it for an unprivileged
    /// container, and every pod's namespace gets the sysctls the CNI plugin sets at ADD
    /// (`weft_cni::netns::enable_pod_sysctls`) before its agent enrolls it.
    pub agents_proc_sys_read_only: bool,
    /// Further environment for every waypoint (`DNS_RESOLV_CONF`, ...), after the harness's own;
    /// `{dir}` in a value stands for the mesh's directory.
    pub waypoint_env: Vec<(String, String)>,
    /// Istio's mesh config (YAML) the controller starts with (`--mesh-config`); Istio's
    /// defaults when empty. [`Mesh::set_mesh_config`] changes it later.
    pub mesh_config: String,
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
            agents_proc_sys_read_only: false,
            waypoint_env: Vec::new(),
            mesh_config: String::new(),
        }
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
        // Killed, not stopped: on SIGTERM a waypoint drains for its whole termination period
        // (5 s), as Envoy under pilot-agent does, and nothing is left to drain at the end of a
        // test. The drain itself is `tests/drain.rs`'s.
        for waypoint in self.waypoints.values_mut() {
            waypoint.kill();
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
