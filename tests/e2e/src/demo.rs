//! The bookinfo demo's core, shared by `cargo xtask demo` (`src/bin/demo.rs`) and the test that
//! keeps it from rotting: the examples read and placed on two nodes ([`examples`]), a cluster
//! that runs them on one of two runtimes, and the scenarios played against it, each printing
//! what it measured and failing when the result is wrong.
//!
//! The runtimes differ only in how pods and the mesh's components run ([`Cluster`]): on the
//! testbed ([`on_testbed`]) the controller runs in local mode and the harness starts each process
//! in its pod; on containerd ([`on_containerd`]) the controller runs in Kubernetes mode against
//! the fake API server, the node agents run as their DaemonSet's pods, and every pod is created
//! through the CRI, enrolled by `weft-cni` as the runtime creates it. The scenarios see only
//! [`Demo`].

use std::{
    collections::BTreeMap,
    io::IsTerminal as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use weft_testbed::Testbed;

use crate::{
    CurlResult, MeshOptions, PodSpec, binary, curl, observability::Observability,
    scenarios::SCENARIOS, session::Session,
};

pub mod edge;
mod egress;
pub mod examples;
mod ingress;
mod metrics;
mod mtls;
pub mod on_containerd;
pub mod on_testbed;
mod policy;
mod routing;

pub use examples::{CLIENT, Examples, NODES};

/// Where the demo's pods run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// The harness starts each component and app in its pod's namespace; the controller
    /// plays the examples from a directory (local mode).
    Testbed,
    /// containerd on each node: pods created through the CRI from the images, the node agent
    /// as its DaemonSet's pod, the controller in Kubernetes mode.
    Containerd,
}

/// A place `demo exec` can run a command in: a pod, a node or the control-plane host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Place {
    pub netns: String,
    /// The cgroup to run in, where the runtime gives the pod one of its own to share.
    pub cgroup: Option<PathBuf>,
    pub ip: Ipv4Addr,
}

impl Place {
    pub fn of(netns: &weft_testbed::Netns, cgroup: &weft_testbed::Cgroup, ip: Ipv4Addr) -> Self {
        Self {
            netns: netns.name().to_string(),
            cgroup: Some(cgroup.path().to_path_buf()),
            ip,
        }
    }
}

/// The testbed's nodes and control-plane host as places.
pub fn host_places(testbed: &Testbed) -> BTreeMap<String, Place> {
    let mut places = BTreeMap::new();
    for node in testbed.nodes() {
        places.insert(
            node.name.clone(),
            Place::of(&node.netns, &node.cgroup, node.ip),
        );
    }
    if let Some(host) = testbed.control_plane() {
        places.insert(
            "control-plane".into(),
            Place::of(&host.netns, &host.cgroup, host.ip),
        );
    }
    places
}

/// The scenarios at the mesh's edge (the gateways, the in-mesh TLS server, the hosts outside the
/// cluster: [`Cluster::edge`]), which every runtime plays.
pub const EDGE_SCENARIOS: [&str; 2] = ["ingress", "egress"];

/// Which packets of the fabric capture the `mtls` scenario judges, and the ports they may use.
pub struct CaptureScope {
    /// tshark's display filter.
    pub filter: &'static str,
    /// What the filter keeps, for the output.
    pub description: &'static str,
    /// The ports every kept packet must use, with what each is.
    pub ports: &'static [(&'static str, &'static str)],
}

/// What the scenarios need of a running cluster; the runtimes differ only here.
pub trait Cluster {
    fn testbed(&self) -> &Testbed;
    /// What runs where, in a line (for the banner).
    fn summary(&self) -> String;
    fn pod_ip(&self, pod: &str) -> Ipv4Addr;
    /// A command in the pod's network namespace (with the host's tools, as `kubectl debug`
    /// would bring its own).
    fn pod_command(&self, pod: &str, program: &str) -> Command;
    /// The node agent of `node`: the place it runs in and its address.
    fn agent(&self, node: &str) -> (String, Ipv4Addr);
    /// Applies a configuration file as its owner would (written to the watched directory, or
    /// `kubectl apply`); replaces what the file held before.
    fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()>;
    fn capture_scope(&self) -> CaptureScope;
    /// Every pod, node and host `demo exec` can enter.
    fn places(&self) -> BTreeMap<String, Place>;
    /// The logs and live files of the run.
    fn dir(&self) -> &Path;
    /// The tails of every log, for failures.
    fn logs(&self) -> String;
    /// Prometheus scraping the mesh, and the console, reachable from the machine's loopback;
    /// `None` where the runtime does not run them.
    fn start_observability(&self) -> anyhow::Result<Option<Observability>> {
        Ok(None)
    }
    /// What the testbed runtime shows that this one cannot, said once in the output.
    fn limits(&self) -> &'static [&'static str] {
        &[]
    }
    /// The mesh's edge (the gateways, the in-mesh TLS server, the external server).
    fn edge(&self) -> &edge::Edge;
    /// Sets the mesh configuration's `outboundTrafficPolicy.mode` (the controller's
    /// `--mesh-config` file) and waits until every agent applied it.
    fn set_outbound_traffic_policy(&self, mode: &str) -> anyhow::Result<()> {
        bail!("this runtime cannot set the outbound traffic policy to {mode}")
    }
    /// Kills the node agent of `node` (its enrolled pods lose the mesh until one serves them
    /// again), as a crashed agent would leave them.
    fn kill_agent(&mut self, node: &str) -> anyhow::Result<()> {
        bail!("this runtime cannot kill the agent of {node}")
    }
    /// Stops the controller: proxies keep their configuration, nothing is pushed or signed.
    fn stop_controller(&mut self) -> anyhow::Result<()> {
        bail!("this runtime cannot stop the controller")
    }
}

/// A running demo: the cluster and what the scenarios know of bookinfo.
pub struct Demo {
    /// Declared first: stopped before the mesh it scrapes.
    pub observability: Option<Observability>,
    pub cluster: Box<dyn Cluster>,
    pub pods: Vec<PodSpec>,
    pub services: BTreeMap<String, (Ipv4Addr, u16)>,
    pub waypoint: String,
    pub namespace: String,
    /// The configuration files (name, text), as the examples have them.
    pub files: Vec<(String, String)>,
}

impl Demo {
    /// Starts bookinfo from `examples` on `runtime` and waits until the client's calls reach
    /// it through the mesh.
    pub fn start(runtime: Runtime, examples: &Examples) -> anyhow::Result<Self> {
        let pods = examples::pods(examples)?;
        let cluster: Box<dyn Cluster> = match runtime {
            Runtime::Testbed => {
                Box::new(on_testbed::start(examples, &pods, MeshOptions::default())?)
            }
            Runtime::Containerd => Box::new(on_containerd::start(examples, &pods)?),
        };
        Self::run(cluster, pods, examples)
    }

    /// Starts bookinfo on the testbed with agents asking for workload certificates of
    /// `certificate_ttl` (an hour in [`Demo::start`]), so that a test sees them renewed, or
    /// not renewed, within its time.
    pub fn on_testbed_with_certificate_ttl(
        examples: &Examples,
        certificate_ttl: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let pods = examples::pods(examples)?;
        let options = MeshOptions {
            certificate_ttl,
            ..MeshOptions::default()
        };
        let cluster = Box::new(on_testbed::start(examples, &pods, options)?);
        Self::run(cluster, pods, examples)
    }

    fn run(
        cluster: Box<dyn Cluster>,
        pods: Vec<PodSpec>,
        examples: &Examples,
    ) -> anyhow::Result<Self> {
        let observability = cluster.start_observability()?;
        let demo = Self {
            observability,
            cluster,
            waypoint: pods
                .iter()
                .find(|p| p.is_waypoint())
                .map(|p| p.name.clone())
                .context("no waypoint pod")?,
            pods,
            services: examples.services.clone(),
            namespace: examples.waypoint.1.clone(),
            files: examples.files.clone(),
        };
        demo.wait_for_routes()?;
        Ok(demo)
    }

    pub fn url(&self, service: &str, path: &str) -> String {
        let (ip, port) = self.services[service];
        format!("http://{ip}:{port}{path}")
    }

    pub fn pod_of(&self, app: &str) -> &PodSpec {
        self.pods
            .iter()
            .find(|p| p.labels.get("app").map(String::as_str) == Some(app))
            .expect("every bookinfo service has a pod")
    }

    pub fn node_of(&self, pod: &str) -> &str {
        self.pods
            .iter()
            .find(|p| p.name == pod)
            .map_or("?", |p| p.node.as_str())
    }

    pub fn curl_with(&self, pod: &str, args: &[&str]) -> CurlResult {
        curl::with(self.cluster.pod_command(pod, "curl"), args)
    }

    /// `count` requests from the client to productpage (optionally with headers), each
    /// productpage reply as JSON.
    pub fn productpage(
        &self,
        count: u32,
        args: &[&str],
    ) -> anyhow::Result<Vec<(u16, serde_json::Value)>> {
        let answers = curl::bodies(
            self.cluster.pod_command(CLIENT, "curl"),
            &self.url("productpage", "/productpage"),
            count,
            args,
        )?;
        Ok(answers
            .into_iter()
            .map(|(status, body)| {
                (
                    status,
                    serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                )
            })
            .collect())
    }

    /// One keep-alive connection from `pod` to `target` (`ip:port`) for `host`.
    pub fn http_session(&self, pod: &str, target: &str, host: &str) -> anyhow::Result<Session> {
        let mut command = self
            .cluster
            .pod_command(pod, binary("mesh-client")?.to_str().unwrap());
        command.args(["http-session", "--target", target, "--host", host]);
        Session::spawn(
            command,
            &self.cluster.dir().join(format!("session-{pod}.log")),
        )
    }

    /// A GET from `node` itself (metrics: the node's place, as Prometheus would scrape).
    fn node_get(&self, node: &str, url: &str) -> String {
        let command = self.cluster.testbed().node_command(node, "curl");
        curl::with(command, &[url]).body
    }

    /// The Prometheus metrics of `node`'s agent.
    pub fn agent_metrics(&self, node: &str) -> String {
        let (_, ip) = self.cluster.agent(node);
        self.node_get(node, &format!("http://{ip}:15020/metrics"))
    }

    pub fn waypoint_metrics(&self) -> String {
        self.proxy_metrics(&self.waypoint)
    }

    /// The Prometheus metrics of the waypoint or gateway proxy in `pod`.
    pub fn proxy_metrics(&self, pod: &str) -> String {
        let ip = self.cluster.pod_ip(pod);
        self.node_get(
            self.node_of(pod),
            &format!("http://{ip}:{}/metrics", crate::WAYPOINT_METRICS_PORT),
        )
    }

    /// The waypoint's `/config_dump`, read inside its pod (the admin port listens on the pod's
    /// loopback only).
    pub fn waypoint_config_dump(&self) -> anyhow::Result<serde_json::Value> {
        let answer = self.curl_with(&self.waypoint, &["http://127.0.0.1:15000/config_dump"]);
        serde_json::from_str(&answer.body)
            .with_context(|| format!("the waypoint's config dump: {:?}", answer.body))
    }

    fn waypoint_version(&self) -> String {
        self.waypoint_config_dump()
            .map(|dump| crate::applied_version(&dump))
            .unwrap_or_default()
    }

    /// Applies `yaml` as file `file` and waits until the waypoint applied the configuration
    /// that follows from it.
    pub fn apply_at_waypoint(&self, file: &str, yaml: &str, what: &str) -> anyhow::Result<()> {
        let before = self.waypoint_version();
        self.cluster.apply(file, yaml)?;
        if !eventually(crate::STARTUP, || {
            let now = self.waypoint_version();
            !now.is_empty() && now != before
        }) {
            bail!(
                "the waypoint applied no new configuration after {what}\n{}",
                self.cluster.logs()
            );
        }
        Ok(())
    }

    /// The agents learn the services' waypoint from the controller as the mesh starts; waits
    /// until the client's call reaches productpage and its calls come back.
    fn wait_for_routes(&self) -> anyhow::Result<()> {
        let productpage = self.url("productpage", "/productpage");
        let ready = eventually(Duration::from_secs(30), || {
            let answer = self.curl_with(CLIENT, &[&productpage]).json();
            upstream(&answer, "reviews").is_some_and(|r| r["status"] == 200)
                && upstream(&answer, "details").is_some_and(|r| r["status"] == 200)
        });
        if !ready {
            bail!(
                "the client's calls do not reach bookinfo through the mesh\n{}",
                self.cluster.logs()
            );
        }
        Ok(())
    }

    /// Plays the scenarios (only `only` when given) until `stop` is set; returns how many
    /// were played and the names of those that failed.
    pub fn play(&self, only: Option<&str>, stop: &AtomicBool) -> (usize, Vec<&'static str>) {
        let mut failed = Vec::new();
        let mut played = 0;
        for (index, (name, title)) in SCENARIOS.iter().enumerate() {
            if only.is_some_and(|o| o != *name) {
                continue;
            }
            if stop.load(Ordering::Relaxed) {
                break;
            }
            print("");
            print(&bold(&format!(
                "[{}/{}] {name}: {title}",
                index + 1,
                SCENARIOS.len()
            )));
            played += 1;
            let outcome = match *name {
                "mtls" => mtls::mtls(self),
                "deny" => policy::deny(self),
                "canary" => routing::canary(self),
                "header-routing" => routing::header_routing(self),
                "fault" => routing::fault(self),
                "metrics" => metrics::metrics(self),
                "ingress" => ingress::ingress(self),
                "egress" => egress::egress(self),
                _ => unreachable!("every scenario has its function"),
            };
            match outcome {
                Ok(()) => say("PASS"),
                Err(error) => {
                    say(&format!("FAIL: {error:#}"));
                    failed.push(*name);
                }
            }
        }
        (played, failed)
    }
}

/// Polls `check` for up to `timeout`; true once it held.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The reply of the upstream `name` inside a sample app reply.
pub fn upstream<'a>(reply: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    reply["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == name)
}

/// Prints a line; a closed stdout (a pipe whose reader went away on Ctrl-C) is no reason to stop
/// before everything is removed.
pub fn print(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Prints a line of a step, indented.
pub fn say(line: &str) {
    print(&format!("    {line}"));
}

pub fn bold(text: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}
