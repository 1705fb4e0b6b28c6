//! `cargo xtask demo`: the mesh in a box. Starts, through the end-to-end harness, the testbed
//! with two nodes, the controller in local mode playing `deploy/examples/bookinfo` (the pods'
//! placement and addresses are generated for the testbed; every other document is played as
//! written), an agent per node, the waypoint, the four bookinfo services on the sample app
//! (reviews in three versions) and a client pod. Then it plays scripted scenarios, each printing
//! what it measured and failing the demo when the result is wrong, and stays up until Ctrl-C.
//!
//! `demo exec <pod|node> -- <command>` runs a command inside a pod (or node) of the running demo,
//! found through the state file the demo writes.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::IsTerminal,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use weft_e2e::scenarios::{self, SCENARIOS};
use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_testbed::{Cgroup, FabricCapture, Netns};

/// Where a running demo says where its pods are.
const STATE_FILE: &str = "/run/weft-demo/state.json";
/// The pod that plays the user's shell.
const CLIENT: &str = "client";

static STOP: AtomicBool = AtomicBool::new(false);

#[derive(Debug, Parser)]
#[command(
    name = "demo",
    about = "The mesh in a box (run through `cargo xtask demo`)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the mesh, play the scenarios, stay up until Ctrl-C.
    Run {
        /// The directory of Istio and Kubernetes YAML the controller plays.
        #[arg(long)]
        examples: PathBuf,
        /// Play only this scenario.
        #[arg(long)]
        scenario: Option<String>,
        /// Exit after the scenarios instead of staying up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Run a command inside a pod or node of the running demo.
    Exec {
        /// A pod (`client`, `productpage-v1`, ...), a node (`node1`) or `control-plane`.
        name: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Run {
            examples,
            scenario,
            no_wait,
        } => run(&examples, scenario.as_deref(), no_wait),
        Command::Exec { name, command } => exec(&name, &command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bold(text: &str) -> String {
    if std::io::stdout().is_terminal() {
        format!("\x1b[1m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// The state file: how `demo exec` finds the running demo.

#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: u32,
    prefix: String,
    /// Pods, nodes and the control-plane host: network namespace and cgroup.
    places: BTreeMap<String, Place>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Place {
    netns: String,
    cgroup: PathBuf,
    ip: Ipv4Addr,
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_state() -> anyhow::Result<Option<State>> {
    match std::fs::read_to_string(STATE_FILE) {
        Ok(text) => Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {STATE_FILE}"))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {STATE_FILE}")),
    }
}

/// Removes the state file when the demo ends, however it ends.
struct StateFile;

impl StateFile {
    fn write(mesh: &Mesh) -> anyhow::Result<Self> {
        let testbed = &mesh.testbed;
        let mut places = BTreeMap::new();
        for pod in testbed.pods() {
            places.insert(
                pod.name.clone(),
                Place {
                    netns: pod.netns.name().to_string(),
                    cgroup: pod.cgroup.path().to_path_buf(),
                    ip: pod.ip,
                },
            );
        }
        for node in testbed.nodes() {
            places.insert(
                node.name.clone(),
                Place {
                    netns: node.netns.name().to_string(),
                    cgroup: node.cgroup.path().to_path_buf(),
                    ip: node.ip,
                },
            );
        }
        if let Some(host) = testbed.control_plane() {
            places.insert(
                "control-plane".into(),
                Place {
                    netns: host.netns.name().to_string(),
                    cgroup: host.cgroup.path().to_path_buf(),
                    ip: host.ip,
                },
            );
        }
        let state = State {
            pid: std::process::id(),
            prefix: testbed.prefix().to_string(),
            places,
        };
        let path = Path::new(STATE_FILE);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(&state)?)?;
        Ok(Self)
    }
}

impl Drop for StateFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(STATE_FILE);
    }
}

fn exec(name: &str, command: &[String]) -> anyhow::Result<ExitCode> {
    let state = read_state()?
        .filter(|s| alive(s.pid))
        .context("no demo is running: start one with `cargo xtask demo`")?;
    let place = state.places.get(name).with_context(|| {
        format!(
            "the demo has no pod or node {name:?}; it has: {}",
            state.places.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    let (program, args) = command.split_first().context("no command given")?;
    let status = Netns::named(place.netns.clone())
        .command_in_cgroup(&Cgroup::at(place.cgroup.clone()), program)
        .args(args)
        .status()
        .with_context(|| format!("running {program} in {name}"))?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

// ---------------------------------------------------------------------------------------------
// The examples: what the controller plays, and the pods to place.

/// The example directory split into what the harness places (Pods; EndpointSlices, which carry
/// addresses) and what the controller plays as written (everything else).
struct Examples {
    files: Vec<(String, String)>,
    pods: Vec<serde_yaml::Value>,
    /// Service name -> (cluster IP, first port).
    services: BTreeMap<String, (Ipv4Addr, u16)>,
    /// (name, namespace) of the Gateway of class istio-waypoint.
    waypoint: (String, String),
}

fn field<'a>(value: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a serde_yaml::Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

fn text(value: &serde_yaml::Value, path: &[&str]) -> Option<String> {
    field(value, path)
        .and_then(|v| v.as_str())
        .map(String::from)
}

fn load_examples(dir: &Path) -> anyhow::Result<Examples> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut examples = Examples {
        files: Vec::new(),
        pods: Vec::new(),
        services: BTreeMap::new(),
        waypoint: (String::new(), String::new()),
    };
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let content = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut kept = Vec::new();
        for document in weft_e2e::split_documents(&content) {
            let value: serde_yaml::Value = serde_yaml::from_str(&document)
                .with_context(|| format!("parsing {}", path.display()))?;
            match text(&value, &["kind"]).as_deref() {
                None => continue,
                Some("Pod") => {
                    examples.pods.push(value);
                    continue;
                }
                Some("EndpointSlice") => continue,
                Some("Service") => {
                    let service = text(&value, &["metadata", "name"]).unwrap_or_default();
                    let ip = text(&value, &["spec", "clusterIP"])
                        .and_then(|ip| ip.parse().ok())
                        .with_context(|| format!("{name}: Service {service} has no clusterIP"))?;
                    let port = field(&value, &["spec", "ports"])
                        .and_then(|p| p.get(0))
                        .and_then(|p| p.get("port"))
                        .and_then(|p| p.as_u64())
                        .and_then(|p| u16::try_from(p).ok())
                        .with_context(|| format!("{name}: Service {service} has no port"))?;
                    examples.services.insert(service, (ip, port));
                }
                Some("Gateway")
                    if text(&value, &["spec", "gatewayClassName"]).as_deref()
                        == Some("istio-waypoint") =>
                {
                    examples.waypoint = (
                        text(&value, &["metadata", "name"]).unwrap_or_default(),
                        text(&value, &["metadata", "namespace"])
                            .unwrap_or_else(|| "default".into()),
                    );
                }
                Some(_) => {}
            }
            kept.push(document);
        }
        if !kept.is_empty() {
            examples.files.push((name, kept.join("---\n")));
        }
    }
    if examples.waypoint.0.is_empty() {
        bail!(
            "{}: no Gateway of class istio-waypoint to run a waypoint for",
            dir.display()
        );
    }
    Ok(examples)
}

/// The testbed has two nodes; the examples' `nodeName`s map onto them in order of first
/// appearance (a pod without one goes to the last node).
const NODES: [&str; 2] = ["node1", "node2"];

/// The pods of the demo: the examples' pods placed on the testbed nodes their `nodeName`s map to,
/// each running the sample app with bookinfo's calls (productpage calls details and reviews;
/// reviews v2 and v3 call ratings), the waypoint's pod running the waypoint, and the client. The
/// client goes on the node without details, so that its L4 call to details crosses the fabric.
fn pods(examples: &Examples) -> anyhow::Result<Vec<PodSpec>> {
    let service_url = |service: &str, path: &str| -> anyhow::Result<String> {
        let (ip, port) = examples
            .services
            .get(service)
            .with_context(|| format!("the examples have no Service {service}"))?;
        Ok(format!("http://{ip}:{port}{path}"))
    };
    let mut example_nodes: Vec<String> = Vec::new();
    let mut place = |pod: &serde_yaml::Value| -> anyhow::Result<&'static str> {
        let Some(node) = text(pod, &["spec", "nodeName"]) else {
            return Ok(NODES[NODES.len() - 1]);
        };
        let index = match example_nodes.iter().position(|n| *n == node) {
            Some(index) => index,
            None => {
                example_nodes.push(node.clone());
                example_nodes.len() - 1
            }
        };
        NODES.get(index).copied().with_context(|| {
            format!(
                "the examples use more than {} nodes ({})",
                NODES.len(),
                example_nodes.join(", ")
            )
        })
    };
    let (gateway, gateway_namespace) = &examples.waypoint;
    let mut specs = Vec::new();
    let mut namespace = gateway_namespace.clone();
    for pod in &examples.pods {
        let name = text(pod, &["metadata", "name"]).context("a Pod without a name")?;
        let pod_namespace =
            text(pod, &["metadata", "namespace"]).unwrap_or_else(|| "default".into());
        let node = place(pod)?;
        let labels: BTreeMap<String, String> = field(pod, &["metadata", "labels"])
            .and_then(|l| serde_yaml::from_value(l.clone()).ok())
            .unwrap_or_default();
        let account = text(pod, &["spec", "serviceAccountName"]);
        if labels.get(weft_e2e::GATEWAY_NAME_LABEL) == Some(gateway) {
            let mut spec = PodSpec::waypoint(gateway, node, &pod_namespace);
            spec.name = name;
            if let Some(account) = account {
                spec.service_account = account;
            }
            specs.push(spec);
            continue;
        }
        namespace = pod_namespace;
        let app = labels
            .get("app")
            .cloned()
            .with_context(|| format!("Pod {name} has no app label"))?;
        let version = labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "v1".into());
        let port = field(pod, &["spec", "containers"])
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("ports"))
            .and_then(|p| p.get(0))
            .and_then(|p| p.get("containerPort"))
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(weft_e2e::DEFAULT_HTTP_PORT);
        let mut spec = PodSpec::app(&name, node, &namespace, &app, &version).with_http_port(port);
        spec.labels = labels;
        if let Some(account) = account {
            spec.service_account = account;
        }
        match (app.as_str(), version.as_str()) {
            ("productpage", _) => {
                spec = spec
                    .with_upstream("details", &service_url("details", "/details/0")?)
                    .with_upstream("reviews", &service_url("reviews", "/reviews/0")?);
            }
            ("reviews", "v1") => {}
            ("reviews", _) => {
                spec = spec.with_upstream("ratings", &service_url("ratings", "/ratings/0")?);
            }
            _ => {}
        }
        specs.push(spec);
    }
    if !specs.iter().any(PodSpec::is_waypoint) {
        specs.push(PodSpec::waypoint(
            gateway,
            NODES[NODES.len() - 1],
            gateway_namespace,
        ));
    }
    let details_node = specs
        .iter()
        .find(|p| p.labels.get("app").map(String::as_str) == Some("details"))
        .map(|p| p.node.clone());
    let client_node = NODES
        .iter()
        .find(|n| Some(n.to_string()) != details_node)
        .copied()
        .unwrap_or(NODES[0]);
    specs.push(PodSpec::client(CLIENT, client_node, &namespace));
    Ok(specs)
}

// ---------------------------------------------------------------------------------------------
// Running.

struct Demo {
    mesh: Mesh,
    services: BTreeMap<String, (Ipv4Addr, u16)>,
    waypoint: String,
    namespace: String,
    /// The configuration files the controller plays (name, text), as the examples have them.
    files: Vec<(String, String)>,
}

impl Demo {
    fn url(&self, service: &str, path: &str) -> String {
        let (ip, port) = self.services[service];
        format!("http://{ip}:{port}{path}")
    }

    fn pod_of(&self, app: &str) -> &PodSpec {
        self.mesh
            .pods
            .iter()
            .find(|p| p.labels.get("app").map(String::as_str) == Some(app))
            .expect("every bookinfo service has a pod")
    }

    /// `count` requests from the client to productpage (optionally with headers), each
    /// productpage reply as JSON.
    fn productpage(
        &self,
        count: u32,
        args: &[&str],
    ) -> anyhow::Result<Vec<(u16, serde_json::Value)>> {
        let answers = self.mesh.curl_bodies(
            CLIENT,
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
}

/// The reply of the upstream `name` inside a sample app reply.
fn upstream<'a>(reply: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    reply["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["name"] == name)
}

/// Prints a line; a closed stdout (a pipe whose reader went away on Ctrl-C) is no reason to stop
/// before everything is removed.
fn print(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

fn say(line: &str) {
    print(&format!("    {line}"));
}

fn run(examples_dir: &Path, only: Option<&str>, no_wait: bool) -> anyhow::Result<ExitCode> {
    if let Some(name) = only {
        scenarios::check(name).map_err(anyhow::Error::msg)?;
    }
    if let Some(state) = read_state()?
        && alive(state.pid)
        && state.pid != std::process::id()
    {
        bail!(
            "a demo is already running (pid {}, testbed {}): stop it with Ctrl-C first",
            state.pid,
            state.prefix
        );
    }
    watch_signals()?;
    let examples = load_examples(examples_dir)?;
    let pods = pods(&examples)?;
    print(&bold(&format!(
        "==> starting the mesh: 2 nodes, {} pods, controller in local mode playing {}",
        pods.len(),
        examples_dir.display()
    )));
    for node in NODES {
        let names: Vec<&str> = pods
            .iter()
            .filter(|p| p.node == node)
            .map(|p| p.name.as_str())
            .collect();
        say(&format!("{node}: {}", names.join(", ")));
    }
    let started = Instant::now();
    let mesh = Mesh::start(
        pods,
        MeshOptions {
            config_files: examples.files.clone(),
            ..MeshOptions::default()
        },
    )
    .context("starting the mesh")?;
    let _state = StateFile::write(&mesh)?;
    say(&format!(
        "controller, {} agents, {} sample apps and the waypoint are up ({:.1} s); files in {}",
        mesh.testbed.nodes().len(),
        mesh.pods
            .iter()
            .filter(|p| matches!(p.workload, weft_e2e::Workload::App { .. }))
            .count(),
        started.elapsed().as_secs_f64(),
        mesh.dir().display()
    ));
    let demo = Demo {
        services: examples.services.clone(),
        waypoint: mesh
            .pods
            .iter()
            .find(|p| p.is_waypoint())
            .map(|p| p.name.clone())
            .context("no waypoint pod")?,
        namespace: examples.waypoint.1.clone(),
        files: examples.files.clone(),
        mesh,
    };
    wait_for_routes(&demo)?;

    let mut failed = Vec::new();
    let mut played = 0;
    for (index, (name, title)) in SCENARIOS.iter().enumerate() {
        if only.is_some_and(|o| o != *name) {
            continue;
        }
        if STOP.load(Ordering::Relaxed) {
            break;
        }
        played += 1;
        print("");
        print(&bold(&format!(
            "[{}/{}] {name}: {title}",
            index + 1,
            SCENARIOS.len()
        )));
        let outcome = match *name {
            "mtls" => mtls(&demo),
            "deny" => deny(&demo),
            "canary" => canary(&demo),
            "header-routing" => header_routing(&demo),
            "fault" => fault(&demo),
            "metrics" => metrics(&demo),
            _ => unreachable!("scenario names are checked above"),
        };
        match outcome {
            Ok(()) => say("PASS"),
            Err(error) => {
                say(&format!("FAIL: {error:#}"));
                failed.push(*name);
            }
        }
    }
    print("");
    if failed.is_empty() {
        print(&bold(&format!("==> {played} of {played} scenarios passed")));
    } else {
        print(&bold(&format!(
            "==> {} of {played} scenarios failed: {}",
            failed.len(),
            failed.join(", ")
        )));
        print(&format!("component logs:\n{}", demo.mesh.logs()));
    }
    if !no_wait && !STOP.load(Ordering::Relaxed) {
        directions(&demo);
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        print("");
        print(&bold(
            "==> stopping: removing every process, namespace and cgroup",
        ));
    }
    drop(demo);
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Ctrl-C and SIGTERM end the demo in order (the harness removes everything on the way out).
fn watch_signals() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        runtime.block_on(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut interrupt), Ok(mut terminate)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                let _ = ready_tx.send(false);
                return;
            };
            let _ = ready_tx.send(true);
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            STOP.store(true, Ordering::Relaxed);
        });
    });
    anyhow::ensure!(
        ready_rx.recv().unwrap_or(false),
        "cannot watch SIGINT and SIGTERM"
    );
    Ok(())
}

/// The agents learn the services' waypoint from the controller as the mesh starts; wait until
/// the client's call reaches productpage and its calls come back.
fn wait_for_routes(demo: &Demo) -> anyhow::Result<()> {
    let ready = demo.mesh.eventually(Duration::from_secs(20), || {
        let answer = demo
            .mesh
            .curl_with(CLIENT, &[&demo.url("productpage", "/productpage")]);
        answer.status == 200
            && upstream(&answer.json(), "reviews").is_some_and(|r| r["status"] == 200)
            && upstream(&answer.json(), "details").is_some_and(|r| r["status"] == 200)
    });
    if !ready {
        bail!(
            "the client's calls do not reach bookinfo through the mesh\n{}",
            demo.mesh.logs()
        );
    }
    Ok(())
}

fn directions(demo: &Demo) {
    let mesh = &demo.mesh;
    let waypoint = mesh.pod(&demo.waypoint);
    let node_ip = |n: &str| mesh.testbed.node(n).ip;
    let productpage = demo.url("productpage", "/productpage");
    print("");
    print(&bold(
        "==> the mesh stays up; from another terminal, as root:",
    ));
    for line in [
        format!("cargo xtask demo exec {CLIENT} -- curl -s {productpage}"),
        format!("cargo xtask demo exec {CLIENT} -- curl -s -H 'end-user: jason' {productpage}"),
        format!(
            "cargo xtask demo exec {CLIENT} -- curl -s {}   # 403: only productpage may call reviews",
            demo.url("reviews", "/reviews/0")
        ),
        "cargo xtask demo exec node1 -- curl -s http://127.0.0.1:15000/config_dump   # node1's agent"
            .to_string(),
        format!(
            "cargo xtask demo exec node2 -- curl -s http://{}:15020/metrics   # node2's agent",
            node_ip("node2")
        ),
        format!(
            "cargo xtask demo exec node2 -- curl -s http://{}:15020/metrics   # the waypoint",
            waypoint.ip
        ),
        format!(
            "cargo xtask demo exec {} -- curl -s http://127.0.0.1:15000/config_dump   # the waypoint's admin page (its pod's loopback only)",
            demo.waypoint
        ),
    ] {
        say(&line);
    }
    say(&format!(
        "pods: {}",
        mesh.pods
            .iter()
            .map(|p| format!("{} {}", p.name, mesh.pod(&p.name).ip))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    say(&format!(
        "logs and the live configuration (edit it, the mesh follows): {}",
        mesh.dir().display()
    ));
    say("Ctrl-C stops the demo and removes everything.");
}

// ---------------------------------------------------------------------------------------------
// The scenarios. Each prints what it measured and fails when the result is wrong.

fn mtls(demo: &Demo) -> anyhow::Result<()> {
    let mesh = &demo.mesh;
    let details = demo.pod_of("details");
    let client_node = &mesh.pod(CLIENT).node;
    let marker = format!("weft-demo-marker-{}", std::process::id());
    let capture = FabricCapture::start(&mesh.testbed).context("capturing the fabric")?;
    let answer = mesh.curl_with(
        CLIENT,
        &[
            "-H",
            &format!("x-demo-marker: {marker}"),
            &demo.url("details", &format!("/details/0?{marker}")),
        ],
    );
    let captured = capture
        .finish(
            "tcp.len > 0",
            &[
                "tcp.srcport",
                "tcp.dstport",
                "tls.handshake.extensions.supported_version",
            ],
        )
        .context("reading the capture")?;
    say(&format!(
        "client ({client_node}) -> details ({}): HTTP {} from {}",
        details.node,
        answer.status,
        answer.json()["pod"].as_str().unwrap_or("?")
    ));
    anyhow::ensure!(answer.status == 200, "the call failed: {}", answer.body);
    let packets: Vec<&str> = captured.fields.lines().collect();
    let on_mesh_ports = |line: &&str| {
        line.split('\t')
            .take(2)
            .any(|port| port == "15008" || port == "15010")
    };
    let other: Vec<&&str> = packets.iter().filter(|l| !on_mesh_ports(l)).collect();
    let tls13 = captured.fields.contains("0x0304");
    let in_clear = captured.contains_bytes(marker.as_bytes());
    say(&format!(
        "fabric capture: {} packets with payload, {} bytes; TLS 1.3 handshake (0x0304): {}",
        packets.len(),
        captured.raw.len(),
        if tls13 { "seen" } else { "NOT seen" }
    ));
    say(&format!(
        "every payload packet on 15008 (HBONE) or 15010 (control plane): {}",
        if other.is_empty() {
            "yes".to_string()
        } else {
            format!("no, {} others", other.len())
        }
    ));
    say(&format!(
        "the request's marker {marker:?} in the captured bytes: {}",
        if in_clear { "FOUND" } else { "not found" }
    ));
    anyhow::ensure!(tls13, "no TLS 1.3 handshake crossed the fabric");
    anyhow::ensure!(other.is_empty(), "traffic outside HBONE: {other:?}");
    anyhow::ensure!(!in_clear, "the request crossed the fabric in clear");
    let identity = format!("spiffe://cluster.local/ns/{}/sa/{CLIENT}", demo.namespace);
    let metrics = mesh.metrics(&details.node);
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(&format!("source_principal=\"{identity}\""))
                && l.contains("destination_workload=\"details\"")
        })
        .with_context(|| {
            format!(
                "{}'s agent did not record the client's identity",
                details.node
            )
        })?;
    let labels = labels(line);
    say(&format!(
        "{}'s agent: istio_tcp_connections_opened_total{{source_principal={}, destination_workload={}, connection_security_policy={}}} {}",
        details.node,
        labels.get("source_principal").map_or("?", String::as_str),
        labels
            .get("destination_workload")
            .map_or("?", String::as_str),
        labels
            .get("connection_security_policy")
            .map_or("?", String::as_str),
        value(line)
    ));
    anyhow::ensure!(
        labels.get("connection_security_policy").map(String::as_str) == Some("mutual_tls"),
        "the connection is not recorded as mutual TLS: {line}"
    );
    Ok(())
}

fn deny(demo: &Demo) -> anyhow::Result<()> {
    let mesh = &demo.mesh;
    let admin = mesh.curl_with(CLIENT, &[&demo.url("productpage", "/admin")]);
    say(&format!(
        "client -> productpage /admin: HTTP {} {:?}   (DENY productpage-deny-admin, at the waypoint)",
        admin.status,
        admin.body.trim()
    ));
    let page = mesh.curl_with(CLIENT, &[&demo.url("productpage", "/productpage")]);
    say(&format!(
        "client -> productpage /productpage: HTTP {}",
        page.status
    ));
    let reviews = mesh.curl_with(CLIENT, &[&demo.url("reviews", "/reviews/0")]);
    say(&format!(
        "client -> reviews directly: HTTP {} {:?}   (ALLOW reviews-viewer admits only productpage)",
        reviews.status,
        reviews.body.trim()
    ));
    let via_productpage = upstream(&page.json(), "reviews").map(|r| r["status"].clone());
    say(&format!(
        "productpage -> reviews: HTTP {}",
        via_productpage.clone().unwrap_or(serde_json::Value::Null)
    ));
    anyhow::ensure!(admin.status == 403, "/admin was not denied");
    anyhow::ensure!(page.status == 200, "/productpage was refused");
    anyhow::ensure!(reviews.status == 403, "the client reached reviews");
    anyhow::ensure!(
        via_productpage == Some(serde_json::json!(200)),
        "productpage could not call reviews"
    );
    Ok(())
}

/// Counts of the reviews version productpage got, over `answers`.
fn reviews_versions(answers: &[(u16, serde_json::Value)]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for (status, reply) in answers {
        let version = match upstream(reply, "reviews") {
            Some(r) if *status == 200 && r["status"] == 200 => {
                r["version"].as_str().unwrap_or("?").to_string()
            }
            Some(r) => format!("failed ({})", r["status"]),
            None => format!("productpage failed ({status})"),
        };
        *counts.entry(version).or_insert(0) += 1;
    }
    counts
}

/// The split the canary moves to while productpage's connections are open.
const MOVED_SPLIT: (u64, u64) = (50, 50);

/// The examples' file holding the reviews VirtualService, and that file with the canary
/// route's weights set to `split` (the edit an operator makes to move a canary).
fn with_canary_split(demo: &Demo, split: (u64, u64)) -> anyhow::Result<(String, String)> {
    for (file, content) in &demo.files {
        let mut documents = weft_e2e::split_documents(content);
        let Some(index) = documents.iter().position(|d| {
            serde_yaml::from_str::<serde_yaml::Value>(d).is_ok_and(|v| {
                text(&v, &["kind"]).as_deref() == Some("VirtualService")
                    && text(&v, &["metadata", "name"]).as_deref() == Some("reviews")
            })
        }) else {
            continue;
        };
        let mut rule: serde_yaml::Value = serde_yaml::from_str(&documents[index])?;
        let canary = rule["spec"]["http"]
            .as_sequence_mut()
            .and_then(|routes| {
                routes
                    .iter_mut()
                    .find(|r| r["route"].as_sequence().is_some_and(|d| d.len() == 2))
            })
            .context("the reviews VirtualService has no route split between two destinations")?;
        for (destination, weight) in canary["route"]
            .as_sequence_mut()
            .into_iter()
            .flatten()
            .zip([split.0, split.1])
        {
            destination["weight"] = serde_yaml::Value::from(weight);
        }
        documents[index] = serde_yaml::to_string(&rule)?;
        return Ok((file.clone(), documents.join("---\n")));
    }
    bail!("the examples have no reviews VirtualService")
}

/// One phase of the canary: `count` pages through the client's open session, with the reviews
/// versions they got, the client's connection and productpage's connections to reviews.
fn canary_phase(
    session: &mut weft_e2e::session::Session,
    count: u32,
) -> (BTreeMap<String, u32>, String, BTreeSet<String>) {
    let answer = session.get("/productpage", &[], count);
    let pages: Vec<(u16, serde_json::Value)> = answer["answers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| (a["status"].as_u64().unwrap_or(0) as u16, a["body"].clone()))
        .collect();
    let pooled = pages
        .iter()
        .filter_map(|(_, reply)| {
            upstream(reply, "reviews")?["connection"]
                .as_str()
                .map(String::from)
        })
        .collect();
    (
        reviews_versions(&pages),
        answer["connection"].as_str().unwrap_or_default().to_owned(),
        pooled,
    )
}

fn canary(demo: &Demo) -> anyhow::Result<()> {
    const REQUESTS: u32 = 500;
    let (ip, port) = demo.services["productpage"];
    let mut session = demo.mesh.http_session(
        CLIENT,
        &format!("{ip}:{port}"),
        &format!("productpage:{port}"),
    )?;
    let share = |counts: &BTreeMap<String, u32>, v: &str| {
        f64::from(counts.get(v).copied().unwrap_or(0)) * 100.0 / f64::from(REQUESTS)
    };
    let show = |counts: &BTreeMap<String, u32>| {
        counts
            .iter()
            .map(|(v, n)| {
                format!(
                    "{v} {n} ({:.1}%)",
                    f64::from(*n) * 100.0 / f64::from(REQUESTS)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let started = Instant::now();
    let (before, client, pooled) = canary_phase(&mut session, REQUESTS);
    say(&format!(
        "{REQUESTS} requests client -> productpage -> reviews on one keep-alive connection ({client}) in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        show(&before)
    ));
    let (file, moved) = with_canary_split(demo, MOVED_SPLIT)?;
    let original = demo
        .files
        .iter()
        .find(|(name, _)| *name == file)
        .map(|(_, text)| text.clone())
        .unwrap_or_default();
    demo.mesh
        .await_waypoint(&demo.waypoint, "the canary's new weights", || {
            demo.mesh.write_config(&file, &moved)
        })?;
    say(&format!(
        "{file}: reviews canary moved to {}/{} while the connections stay open (waypoint applied it)",
        MOVED_SPLIT.0, MOVED_SPLIT.1
    ));
    let (after, client_after, pooled_after) = canary_phase(&mut session, REQUESTS);
    say(&format!(
        "the same {REQUESTS} requests again: {}",
        show(&after)
    ));
    say(&format!(
        "client connection {client_after}; productpage -> reviews on {} (before: {})",
        pooled_after.iter().cloned().collect::<Vec<_>>().join(", "),
        pooled.iter().cloned().collect::<Vec<_>>().join(", ")
    ));
    demo.mesh
        .await_waypoint(&demo.waypoint, "the canary's original weights", || {
            demo.mesh.write_config(&file, &original)
        })?;
    for counts in [&before, &after] {
        let served =
            counts.get("v1").copied().unwrap_or(0) + counts.get("v2").copied().unwrap_or(0);
        anyhow::ensure!(
            served == REQUESTS,
            "not every request was served by v1 or v2: {counts:?}"
        );
    }
    // 90/10 over 500 requests: v2 within about four standard deviations of 10%; 50/50 within
    // about four of 50%.
    anyhow::ensure!(
        (4.5..=15.5).contains(&share(&before, "v2")),
        "v2 got {:.1}%, not about 10%",
        share(&before, "v2")
    );
    anyhow::ensure!(
        (41.0..=59.0).contains(&share(&after, "v2")),
        "after the change v2 got {:.1}% on the open connections, not about {}%",
        share(&after, "v2"),
        MOVED_SPLIT.1
    );
    anyhow::ensure!(
        client_after == client,
        "the client's connection was replaced ({client} -> {client_after})"
    );
    anyhow::ensure!(
        pooled_after.is_subset(&pooled),
        "productpage opened new connections to reviews instead of using its open ones"
    );
    Ok(())
}

fn header_routing(demo: &Demo) -> anyhow::Result<()> {
    const REQUESTS: u32 = 20;
    let jason = reviews_versions(&demo.productpage(REQUESTS, &["-H", "end-user: jason"])?);
    let others = reviews_versions(&demo.productpage(REQUESTS, &["-H", "end-user: alice"])?);
    say(&format!("end-user: jason -> reviews {jason:?}"));
    say(&format!("end-user: alice -> reviews {others:?}"));
    anyhow::ensure!(
        jason.get("v3") == Some(&REQUESTS),
        "jason was not always routed to v3"
    );
    anyhow::ensure!(!others.contains_key("v3"), "alice reached v3");
    Ok(())
}

/// The ratings status as reviews reported it (reviews v1 does not call ratings).
fn ratings_statuses(answers: &[(u16, serde_json::Value)]) -> BTreeMap<String, u32> {
    let mut counts = BTreeMap::new();
    for (_, reply) in answers {
        let key = match upstream(reply, "reviews").and_then(|r| r["upstreams"].as_array()) {
            Some(calls) => calls
                .iter()
                .find(|c| c["name"] == "ratings")
                .map_or("no ratings call".to_string(), |c| {
                    format!("HTTP {}", c["status"])
                }),
            None => "no ratings call".to_string(),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

fn fault(demo: &Demo) -> anyhow::Result<()> {
    const REQUESTS: u32 = 20;
    let jason = demo.productpage(REQUESTS, &["-H", "end-user: jason"])?;
    let alice = demo.productpage(REQUESTS, &["-H", "end-user: alice"])?;
    let jason_ratings = ratings_statuses(&jason);
    let alice_ratings = ratings_statuses(&alice);
    let aborted_body = jason
        .iter()
        .filter_map(|(_, r)| {
            upstream(r, "reviews")?["upstreams"]
                .as_array()?
                .first()
                .cloned()
        })
        .find_map(|c| c["error"].as_str().map(String::from))
        .unwrap_or_default();
    say(&format!(
        "jason: reviews -> ratings {jason_ratings:?}  (the waypoint answered {aborted_body:?})"
    ));
    say(&format!("alice: reviews -> ratings {alice_ratings:?}"));
    let productpage_ok = jason.iter().all(|(s, _)| *s == 200);
    say(&format!(
        "productpage still answered every request: {}",
        if productpage_ok { "yes" } else { "no" }
    ));
    anyhow::ensure!(
        jason_ratings.get("HTTP 500") == Some(&REQUESTS),
        "jason's calls to ratings were not all aborted with 500"
    );
    anyhow::ensure!(
        !alice_ratings.contains_key("HTTP 500"),
        "alice's calls were aborted too"
    );
    anyhow::ensure!(productpage_ok, "the fault spread beyond the ratings call");
    Ok(())
}

/// The labels of a Prometheus text line.
fn labels(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(inner) = line
        .split_once('{')
        .and_then(|(_, r)| r.rsplit_once('}'))
        .map(|(l, _)| l)
    else {
        return out;
    };
    let mut rest = inner;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

fn value(line: &str) -> String {
    line.rsplit_once(' ').map_or("", |(_, v)| v).to_string()
}

fn metrics(demo: &Demo) -> anyhow::Result<()> {
    let mesh = &demo.mesh;
    let waypoint = mesh.pod(&demo.waypoint);
    let total = |text: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("destination_service_name=\"reviews\"")
            })
            .filter_map(|l| value(l).parse::<u64>().ok())
            .sum()
    };
    let before = total(&mesh.waypoint_metrics(&demo.waypoint));
    let sent = demo.productpage(10, &[])?;
    anyhow::ensure!(sent.iter().all(|(s, _)| *s == 200), "productpage failed");
    let text = mesh.waypoint_metrics(&demo.waypoint);
    let after = total(&text);
    say(&format!(
        "the waypoint's /metrics (http://{}:15020), istio_requests_total for reviews:",
        waypoint.ip
    ));
    say(&format!(
        "  {:<30} {:<8} {:<6} {:<18} {:>6}",
        "source identity (sa)", "version", "code", "security", "count"
    ));
    let mut example_line = None;
    let mut rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_service_name=\"reviews\"")
        })
        .collect();
    rows.sort_by_key(|l| {
        let labels = labels(l);
        (
            labels.get("source_principal").cloned(),
            labels.get("destination_version").cloned(),
            labels.get("response_code").cloned(),
        )
    });
    for line in rows {
        let labels = labels(line);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let principal = get("source_principal");
        say(&format!(
            "  {:<30} {:<8} {:<6} {:<18} {:>6}",
            principal
                .rsplit_once("/sa/")
                .map_or(principal.as_str(), |(_, sa)| sa),
            get("destination_version"),
            get("response_code"),
            get("connection_security_policy"),
            value(line)
        ));
        if principal.ends_with("/sa/bookinfo-productpage") && get("response_code") == "200" {
            example_line = Some(line.to_string());
        }
    }
    say(&format!(
        "10 more productpage requests moved the reviews count from {before} to {after}"
    ));
    let line = example_line.context("no istio_requests_total from productpage to reviews")?;
    say("one line as Prometheus reads it:");
    say(&format!("  {line}"));
    let agent_line = mesh
        .metrics(&demo.pod_of("details").node)
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("destination_workload=\"details\"")
        })
        .map(String::from)
        .context("no istio_tcp_connections_opened_total for details at its agent")?;
    say("and at details' agent:");
    say(&format!("  {agent_line}"));
    anyhow::ensure!(
        after >= before + 10,
        "the waypoint counted {} of 10 requests",
        after.saturating_sub(before)
    );
    for label in [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/",
        "destination_principal=\"spiffe://cluster.local/ns/",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        anyhow::ensure!(line.contains(label), "{label} missing in {line}");
    }
    // The waypoint's admin page, as `istioctl proxy-config` would read Envoy's.
    let dump = mesh.waypoint_config_dump(&demo.waypoint)?;
    let count = |key: &str| dump[key].as_array().map_or(0, Vec::len);
    say(&format!(
        "and the waypoint's /config_dump (127.0.0.1:15000 inside its pod): {} services, {} clusters, {} pods served directly, {} policies; certificate {} (serial {}, valid until {}); xDS {}, {} version {}",
        count("services"),
        count("clusters"),
        count("workloads"),
        count("policies"),
        dump["certificate"]["identity"].as_str().unwrap_or("?"),
        dump["certificate"]["serial"].as_str().unwrap_or("?"),
        dump["certificate"]["not_after"].as_str().unwrap_or("?"),
        if dump["xds"]["connected"] == true {
            "connected"
        } else {
            "not connected"
        },
        dump["xds"]["last_applied"]["resource"]
            .as_str()
            .unwrap_or("?"),
        dump["xds"]["last_applied"]["version"]
            .as_str()
            .unwrap_or("?"),
    ));
    anyhow::ensure!(
        count("services") > 0 && count("clusters") > 0 && dump["xds"]["connected"] == true,
        "the waypoint's config dump is incomplete: {dump:#}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_labels_are_parsed() {
        let line =
            r#"istio_requests_total{reporter="waypoint",source_workload="a,b",path="x\"y"} 12"#;
        let labels = labels(line);
        assert_eq!(labels["reporter"], "waypoint");
        assert_eq!(labels["source_workload"], "a,b");
        assert_eq!(labels["path"], "x\"y");
        assert_eq!(value(line), "12");
    }

    #[test]
    fn the_bookinfo_example_places_every_pod() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
        let examples = load_examples(&dir).unwrap();
        assert_eq!(examples.waypoint.0, "waypoint");
        assert!(
            examples
                .files
                .iter()
                .all(|(_, text)| !text.contains("kind: Pod\n"))
        );
        let pods = pods(&examples).unwrap();
        let productpage = pods.iter().find(|p| p.name == "productpage-v1").unwrap();
        assert_eq!(productpage.service_account, "bookinfo-productpage");
        assert_eq!(productpage.http_port, 9080);
        assert_eq!(productpage.upstreams.len(), 2);
        let waypoint = pods.iter().find(|p| p.is_waypoint()).unwrap();
        assert_eq!(waypoint.service_account, "waypoint");
        let node = |name: &str| pods.iter().find(|p| p.name == name).unwrap().node.clone();
        // The examples' two nodes, in order; the client away from details.
        assert_eq!(node("productpage-v1"), "node1");
        assert_eq!(node(&waypoint.name), "node2");
        assert_ne!(node("client"), node("details-v1"));
        assert!(
            pods.iter()
                .filter(|p| matches!(p.workload, weft_e2e::Workload::App { .. }))
                .all(|p| p.enrolled)
        );
    }
}
