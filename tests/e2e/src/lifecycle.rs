//! Starting and stopping the mesh's parts: the testbed and the configuration directory, the
//! controller, each node's agent (start, kill, restart, readiness, the enrollment snapshot), the
//! sample apps and the waypoints, and background programs in pods.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use node_agent::enrollment::{EnrolledPod, EnrollmentClient};
use weft_testbed::Topology;

use crate::*;

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
            surged: Default::default(),
            apps: Vec::new(),
            waypoints: BTreeMap::new(),
            enrollment: BTreeMap::new(),
            declared: Default::default(),
            certificate_ttl: options.certificate_ttl,
            acceleration: options.acceleration,
            log_requests: options.log_requests,
            agent_env: options.agent_env,
            agents_proc_sys_read_only: options.agents_proc_sys_read_only,
            waypoint_env: options.waypoint_env,
            runtime,
        };
        let mut declared = declared_namespaces(&options.config)?;
        for (file, yaml) in &options.config_files {
            declared.extend(declared_namespaces(yaml).with_context(|| file.clone())?);
        }
        mesh.declared = declared;
        if !options.mesh_config.is_empty() {
            mesh.set_mesh_config(&options.mesh_config)?;
        }
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

        if mesh.agents_proc_sys_read_only {
            for pod in mesh.pods.iter().filter(|p| !p.outside_cluster) {
                weft_cni::netns::enable_pod_sysctls(&mesh.testbed.pod(&pod.name).netns.path())
                    .map_err(|e| anyhow::anyhow!("pod {}: {e}", pod.name))?;
            }
        }
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
            if pod.phase != PodPhase::Absent {
                mesh.start_waypoint(&pod.name)?;
            }
        }
        mesh.publish_addresses()?;
        Ok(mesh)
    }

    pub(crate) fn pods_yaml(&self) -> String {
        let declared = &self.declared;
        let mut yaml = String::new();
        let namespaces: std::collections::BTreeSet<_> = self
            .pods
            .iter()
            .filter(|p| !p.outside_cluster)
            .map(|p| p.namespace.clone())
            .filter(|n| !declared.contains(n))
            .collect();
        for namespace in namespaces {
            let _ = writeln!(
                yaml,
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n---"
            );
        }
        for pod in self
            .pods
            .iter()
            .filter(|p| !p.outside_cluster && p.phase != PodPhase::Absent)
        {
            let ip = self.testbed.pod(&pod.name).ip;
            let mut labels = pod.labels.clone();
            if let Some(owner) = &pod.owner {
                labels.extend(owner.labels.clone());
            }
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
            // What the pod's controller writes, from which the mesh names its workload.
            let ownership = pod.owner.as_ref().map_or_else(String::new, |owner| {
                format!(
                    "  generateName: {}\n  ownerReferences:\n  - {{apiVersion: {}, kind: {}, name: {}, uid: uid-{}-{}, controller: true}}\n",
                    owner.generate_name,
                    owner.api_version,
                    owner.kind,
                    owner.name,
                    owner.kind.to_lowercase(),
                    owner.name
                )
            });
            // What the kubelet and the API server write as the pod starts and is deleted.
            let (deletion, conditions) = match pod.phase {
                PodPhase::Starting => ("", "  conditions:\n  - {type: Ready, status: \"False\"}\n"),
                PodPhase::Terminating => ("  deletionTimestamp: \"2026-01-01T00:00:00Z\"\n", ""),
                PodPhase::Running | PodPhase::Absent => ("", ""),
            };
            let _ = writeln!(
                yaml,
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: {}\n  uid: uid-{}\n{deletion}{ownership}  labels:\n{labels}spec:\n  nodeName: {}\n  serviceAccountName: {}\n  containers:\n{container}status:\n  podIP: {ip}\n{conditions}---",
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

    /// Replaces the mesh configuration file the controller follows (Istio's `MeshConfig`
    /// YAML, the `mesh` key of its `istio` ConfigMap).
    pub fn set_mesh_config(&self, yaml: &str) -> anyhow::Result<()> {
        let path = self.mesh_config_path();
        let temporary = path.with_extension("tmp");
        std::fs::write(&temporary, yaml)?;
        std::fs::rename(&temporary, &path)?;
        Ok(())
    }

    fn mesh_config_path(&self) -> PathBuf {
        self.dir.join("mesh-config.yaml")
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
        // Istio's defaults until a test changes them; a restart keeps what it set.
        if !self.mesh_config_path().exists() {
            std::fs::write(self.mesh_config_path(), "")?;
        }
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
            .arg("--mesh-config")
            .arg(self.mesh_config_path())
            .args(["--grpc-address", &format!("0.0.0.0:{GRPC_PORT}")])
            // The console reads the Prometheus that `start_observability` runs beside it.
            .args([
                "--console-address",
                &format!("0.0.0.0:{}", observability::CONSOLE_PORT),
                "--prometheus-url",
                &format!("http://{}", observability::PROMETHEUS_ADDRESS),
            ]);
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

    /// Kills the controller abruptly (SIGKILL); [`Mesh::start_controller`] starts the next one.
    pub fn kill_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            controller.kill();
        }
    }

    pub fn stop_controller(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            controller.stop();
        }
    }

    pub(crate) fn pin_dir(&self, node: &str) -> PathBuf {
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
        self.surged.remove(node_name);
        let process = self.spawn_agent(node_name, AgentPorts::DEFAULT, "")?;
        self.agents.insert(node_name.to_string(), process);
        Ok(())
    }

    /// A rolling update of `node`'s agent, as the DaemonSet's (`maxSurge: 1`,
    /// `maxUnavailable: 0`) does it: the next agent starts beside the running one (on other
    /// admin, metrics and readiness ports: both live in the node's namespace here, where in
    /// Kubernetes each has its pod's), takes the enrollment socket over, and gets the snapshot
    /// the enrolling side sends it once the old agent released it; once it is ready (it serves
    /// every captured pod), the old agent gets SIGTERM. Returns the old agent's process, to
    /// watch its drain.
    pub fn roll_agent(&mut self, node: &str) -> anyhow::Result<Child> {
        let old = self
            .agents
            .remove(node)
            .with_context(|| format!("no agent on {node}"))?;
        let ports = if self.surged.contains(node) {
            AgentPorts::DEFAULT
        } else {
            AgentPorts::SURGE
        };
        let next = self.spawn_agent(node, ports, "-next")?;
        self.agents.insert(node.to_string(), next);
        if ports == AgentPorts::SURGE {
            self.surged.insert(node.to_string());
        } else {
            self.surged.remove(node);
        }
        // Its readiness port answers once its enrollment socket is bound (the agent binds it
        // before it serves anything).
        let ip = self.testbed.node(node).ip;
        let readiness = format!("http://{ip}:{}/healthz/ready", ports.readiness);
        self.wait_until(&format!("the next agent of {node} to listen"), || {
            self.node_curl(node, &readiness)
                .is_ok_and(|(code, _)| code != 0)
        })?;
        self.enroll(node)?;
        self.wait_ready(node)?;
        old.signal_terminate()
    }

    fn spawn_agent(
        &self,
        node_name: &str,
        ports: AgentPorts,
        log_suffix: &str,
    ) -> anyhow::Result<Process> {
        let node = self.testbed.node(node_name);
        // With the soft descriptor limit a service manager usually gives a daemon (1024): the
        // agent raises it to the hard limit itself.
        let mut command = if self.agents_proc_sys_read_only {
            // A mount namespace of its own (following the node's mounts: pods' namespaces
            // appear in it as they are made) where `/proc/sys` is read-only.
            let mut command = node.netns.command_in_cgroup(&node.agent_cgroup, "unshare");
            command.args([
                "--mount",
                "--propagation",
                "slave",
                "sh",
                "-c",
                r#"mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && exec "$@""#,
                "sh",
                "prlimit",
            ]);
            command
        } else {
            node.netns.command_in_cgroup(&node.agent_cgroup, "prlimit")
        };
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
            .env("ADMIN_ADDRESS", format!("127.0.0.1:{}", ports.admin))
            .env("METRICS_ADDRESS", format!("0.0.0.0:{}", ports.metrics))
            .env("READINESS_ADDRESS", format!("0.0.0.0:{}", ports.readiness))
            .env("RUST_LOG", "info")
            // The pods' DNS queries for names outside the mesh go to the nameservers of this
            // file, which only a test writes (naming a resolver it started): none leaves the
            // machine.
            .env("DNS_RESOLV_CONF", self.dir.join("resolv.conf"))
            .envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        let log = self.dir.join(format!("agent-{node_name}{log_suffix}.log"));
        Process::spawn(&format!("agent {node_name}"), command, log)
    }

    /// The port of `node`'s current agent that its default would put on `port` (15000, 15020
    /// or 15021).
    pub fn agent_port(&self, node: &str, port: u16) -> u16 {
        if self.surged.contains(node) {
            port + AgentPorts::SURGE.admin - AgentPorts::DEFAULT.admin
        } else {
            port
        }
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

    /// Whether an agent of this mesh runs on `node`.
    pub fn runs_agent(&self, node: &str) -> bool {
        self.agents.contains_key(node)
    }

    /// Kills the agent of `node` abruptly (SIGKILL): nothing is cleaned up.
    pub fn kill_agent(&mut self, node: &str) {
        if let Some(mut agent) = self.agents.remove(node) {
            agent.kill();
        }
    }

    /// Restarts the agent of `node` after a stop or kill: it adopts the pinned redirection, and the
    /// enrolling side (the CNI) reconnects and resends its snapshot, as it does after any agent
    /// restart. The agent is ready once it serves every pod it adopted.
    pub fn restart_agent(&mut self, node: &str) -> anyhow::Result<()> {
        self.start_agent(node)?;
        let socket = self.enrollment_socket(node);
        self.wait_until(&format!("agent {node}'s enrollment socket"), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        })?;
        self.enroll(node)?;
        self.wait_ready(node)
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

    /// An HTTPS server outside the mesh's control: `openssl s_server -www` in `pod` on `port`
    /// (any GET answers a page describing the TLS session) with a certificate for `host` from
    /// a fresh test CA, whose PEM file is returned beside the running server, once it listens.
    pub fn start_tls_server(
        &self,
        pod: &str,
        port: u16,
        host: &str,
    ) -> anyhow::Result<(Child, PathBuf)> {
        let (ca, cert, key) = server_certificate(host);
        let dir = self.dir.join(format!("tls-{pod}-{port}"));
        std::fs::create_dir_all(&dir)?;
        for (file, text) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
            std::fs::write(dir.join(file), text)?;
        }
        let path = |file: &str| dir.join(file).display().to_string();
        let port_text = port.to_string();
        let server = self.spawn_in_pod(
            pod,
            "openssl",
            &[
                "s_server",
                "-quiet",
                "-accept",
                &port_text,
                "-cert",
                &path("cert.pem"),
                "-key",
                &path("key.pem"),
                "-www",
            ],
        )?;
        self.wait_listening(pod, port)?;
        Ok((server, dir.join("ca.pem")))
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
        let port = self.agent_port(node, 15021);
        self.wait_until(&format!("agent {node} readiness"), || {
            self.node_curl(node, &format!("http://{ip}:{port}/healthz/ready"))
                .is_ok_and(|(code, _)| code == 200)
        })
    }

    /// Sends the node's enrollment snapshot (every enrolled pod on it).
    pub fn enroll(&mut self, node: &str) -> anyhow::Result<()> {
        self.enroll_with(node, |_| {})
    }

    /// [`Mesh::enroll`] with each pod's enrollment passed through `edit` first (as the CNI
    /// side sends a pod whose annotations changed).
    pub fn enroll_with(
        &mut self,
        node: &str,
        edit: impl Fn(&mut EnrolledPod),
    ) -> anyhow::Result<()> {
        let pods: Vec<EnrolledPod> = self
            .pods
            .iter()
            .filter(|p| p.node == node && p.enrolled && p.phase != PodPhase::Absent)
            .map(|p| {
                let mut pod = enrolled(self.testbed.pod(&p.name));
                edit(&mut pod);
                pod
            })
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

    pub(crate) fn start_apps(&mut self) -> anyhow::Result<()> {
        let apps: Vec<PodSpec> = self
            .pods
            .iter()
            .filter(|p| matches!(p.workload, Workload::App { .. }) && p.phase != PodPhase::Absent)
            .cloned()
            .collect();
        for spec in &apps {
            self.spawn_app(spec)?;
        }
        for spec in &apps {
            self.wait_app(spec)?;
        }
        Ok(())
    }

    /// Starts the sample app of pod `spec` in the pod (a pod that is not an app's: nothing).
    /// Its log is `app-<pod>.log`, then `app-<pod>.2.log` for its next life, and so on.
    pub(crate) fn spawn_app(&mut self, spec: &PodSpec) -> anyhow::Result<()> {
        let Workload::App { service, version } = &spec.workload else {
            return Ok(());
        };
        let mut command = self
            .testbed
            .pod_command(&spec.name, binary("sample-app")?.to_str().unwrap());
        command.args(spec.sample_app_args(service, version));
        if self.log_requests {
            command.arg("--log-requests");
        }
        let mut log = self.dir.join(format!("app-{}.log", spec.name));
        for life in 2.. {
            if !log.exists() {
                break;
            }
            log = self.dir.join(format!("app-{}.{life}.log", spec.name));
        }
        self.apps.push(Process::spawn(&spec.name, command, log)?);
        Ok(())
    }

    /// Waits until the sample app of pod `spec` accepts on its HTTP port.
    pub(crate) fn wait_app(&self, spec: &PodSpec) -> anyhow::Result<()> {
        if !matches!(spec.workload, Workload::App { .. }) {
            return Ok(());
        }
        let ip = self.testbed.pod(&spec.name).ip;
        let port = spec.http_port;
        self.wait_until(&format!("app {}", spec.name), || {
            self.testbed
                .pod_command(&spec.name, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// The local-mode credentials directory of the waypoint of pod `name` (Secrets as
    /// directories of files, `<name>/ca.crt`, ...): where a DestinationRule's `credentialName`
    /// is read.
    pub fn waypoint_credentials(&self, name: &str) -> PathBuf {
        self.dir.join(format!("waypoint-{name}-credentials"))
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
            .env("CREDENTIALS_DIR", self.waypoint_credentials(name))
            .env(
                "CERTIFICATE_TTL_SECONDS",
                self.certificate_ttl.as_secs().to_string(),
            )
            .env("RUST_LOG", "info")
            .envs(
                self.waypoint_env
                    .iter()
                    .map(|(k, v)| (k, v.replace("{dir}", &self.dir.to_string_lossy()))),
            );
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

    /// Moves pod `name` to `phase` in the configuration the controller reads (its Pod object
    /// created, Ready, terminating or deleted).
    pub fn set_pod_phase(&mut self, name: &str, phase: PodPhase) -> anyhow::Result<()> {
        let pod = self
            .pods
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod {name}"))?;
        pod.phase = phase;
        self.write_config("00-pods.yaml", &self.pods_yaml())
    }

    /// Replaces the waypoint replica `old` with `next` (a pod declared
    /// [`PodSpec::not_created`]), as a Deployment's rolling update (`maxSurge`) does: `next`'s
    /// Pod is created, unready; its waypoint starts, and once it reports ready the Pod is Ready
    /// and the test waits until every agent holds it as a healthy endpoint. Then `old` gets
    /// SIGTERM and, at the same moment, its Pod is marked terminating, as Kubernetes deletes
    /// a pod: the agents learn it a little later, meanwhile still choosing it. Returns `old`'s
    /// process, to watch its drain; [`Mesh::set_pod_phase`] deletes its Pod once it exited.
    pub fn roll_waypoint(&mut self, old: &str, next: &str) -> anyhow::Result<Child> {
        self.set_pod_phase(next, PodPhase::Starting)?;
        self.start_waypoint(next)?;
        self.set_pod_phase(next, PodPhase::Running)?;
        let namespace = self.namespace_of_pod(next)?;
        self.await_agents(&format!("waypoint {next} as a healthy endpoint"), |state| {
            state["workloads"].as_array().is_some_and(|workloads| {
                workloads.iter().any(|w| {
                    w["name"] == next
                        && w["namespace"] == namespace.as_str()
                        && w["healthy"] == true
                })
            })
        })?;
        let process = self.signal_waypoint(old)?;
        self.set_pod_phase(old, PodPhase::Terminating)?;
        Ok(process)
    }

    fn namespace_of_pod(&self, name: &str) -> anyhow::Result<String> {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.namespace.clone())
            .with_context(|| format!("no pod {name}"))
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

    /// Kills the waypoint of pod `name` abruptly (SIGKILL); [`Mesh::start_waypoint`] starts
    /// the next one.
    pub fn kill_waypoint(&mut self, name: &str) {
        if let Some(mut waypoint) = self.waypoints.remove(name) {
            waypoint.kill();
        }
    }

    /// Stops the waypoint of pod `name` (SIGTERM, then SIGKILL).
    pub fn stop_waypoint(&mut self, name: &str) {
        if let Some(mut waypoint) = self.waypoints.remove(name) {
            waypoint.stop();
        }
    }

    pub(crate) fn wait_until(
        &self,
        what: &str,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + STARTUP;
        while Instant::now() < deadline {
            if ready() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("{what} not ready after {STARTUP:?}\n{}", self.logs())
    }

    /// Starts `mesh-client <args>` inside `pod` as a long-running server (logged as
    /// `<name>.log`, stopped with the mesh) and waits until `port` accepts in the pod.
    pub fn start_in_pod(
        &mut self,
        pod: &str,
        name: &str,
        args: &[&str],
        port: u16,
    ) -> anyhow::Result<()> {
        let mut command = self
            .testbed
            .pod_command(pod, binary("mesh-client")?.to_str().unwrap());
        command.args(args);
        let log = self.dir.join(format!("{name}.log"));
        self.apps.push(Process::spawn(name, command, log)?);
        let ip = self.testbed.pod(pod).ip;
        self.wait_until(&format!("{name} in {pod}"), || {
            self.testbed
                .pod_command(pod, "bash")
                .args(["-c", &format!("exec 3<>/dev/tcp/{ip}/{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }
}

/// Where an agent of the testbed serves its admin, metrics and readiness ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AgentPorts {
    admin: u16,
    metrics: u16,
    readiness: u16,
}

impl AgentPorts {
    /// The agent's defaults.
    const DEFAULT: Self = Self {
        admin: 15000,
        metrics: 15020,
        readiness: 15021,
    };
    /// The next agent's during a rolling update, beside one on the defaults.
    const SURGE: Self = Self {
        admin: 25000,
        metrics: 25020,
        readiness: 25021,
    };
}
