//! `cargo xtask demo`: the mesh in a box. Starts bookinfo on two nodes, on the testbed (the
//! controller in local mode playing `deploy/examples/bookinfo`) or on containerd (pods created
//! through the CRI from the images, enrolled by `weft-cni`, the controller in Kubernetes mode),
//! plays the scripted scenarios of [`weft_e2e::demo`], each printing what it measured and failing
//! the demo when the result is wrong, and stays up until Ctrl-C.
//!
//! `demo exec <pod|node> -- <command>` runs a command inside a pod (or node) of the running demo,
//! found through the state file the demo writes.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};
use weft_e2e::demo::{self, CLIENT, Demo, NODES, Place, Runtime, bold, print, say};
use weft_e2e::scenarios;
use weft_testbed::{Cgroup, Netns};

/// Where a running demo says where its pods are.
const STATE_FILE: &str = "/run/weft-demo/state.json";

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
        /// Where the pods run.
        #[arg(long, value_enum, default_value_t = Runtime::Testbed)]
        runtime: Runtime,
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
            runtime,
            scenario,
            no_wait,
        } => run(&examples, runtime, scenario.as_deref(), no_wait),
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

// ---------------------------------------------------------------------------------------------
// The state file: how `demo exec` finds the running demo.

#[derive(Debug, Serialize, Deserialize)]
struct State {
    pid: u32,
    prefix: String,
    /// Pods, nodes and the control-plane host.
    places: BTreeMap<String, Place>,
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
    fn write(demo: &Demo) -> anyhow::Result<Self> {
        let state = State {
            pid: std::process::id(),
            prefix: demo.cluster.testbed().prefix().to_string(),
            places: demo.cluster.places(),
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
    let netns = Netns::named(place.netns.clone());
    let mut command = match &place.cgroup {
        Some(cgroup) => netns.command_in_cgroup(&Cgroup::at(cgroup.clone()), program),
        None => netns.command(program),
    };
    let status = command
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
// Running.

fn run(
    examples_dir: &Path,
    runtime: Runtime,
    only: Option<&str>,
    no_wait: bool,
) -> anyhow::Result<ExitCode> {
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
    let examples = demo::examples::load(examples_dir)?;
    let pods = demo::examples::pods(&examples)?;
    print(&bold(&format!(
        "==> starting the mesh on {}: 2 nodes, {} pods, {}",
        match runtime {
            Runtime::Testbed => "the testbed",
            Runtime::Containerd => "containerd",
        },
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
    let demo = Demo::start(runtime, &examples)?;
    let _state = StateFile::write(&demo)?;
    say(&format!(
        "up in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        demo.cluster.summary()
    ));
    if let Some(observability) = &demo.observability {
        say(&format!(
            "the console (service graph): http://{}/#/graph/{}   Prometheus: http://{}/",
            observability.console(),
            demo.namespace,
            observability.prometheus()
        ));
    }
    for limit in demo.cluster.limits() {
        say(&format!("on this runtime: {limit}"));
    }
    say(&format!(
        "files and logs in {}",
        demo.cluster.dir().display()
    ));

    let (played, failed) = demo.play(only, &STOP);
    print("");
    if failed.is_empty() {
        print(&bold(&format!("==> {played} of {played} scenarios passed")));
    } else {
        print(&bold(&format!(
            "==> {} of {played} scenarios failed: {}",
            failed.len(),
            failed.join(", ")
        )));
        print(&format!("component logs:\n{}", demo.cluster.logs()));
    }
    if !no_wait && !STOP.load(Ordering::Relaxed) {
        directions(&demo, runtime);
        while !STOP.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(200));
        }
        print("");
        print(&bold(
            "==> stopping: removing every process, pod, namespace and cgroup",
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

fn directions(demo: &Demo, runtime: Runtime) {
    let productpage = demo.url("productpage", "/productpage");
    let (node1_agent, _) = demo.cluster.agent("node1");
    let (_, node2_agent_ip) = demo.cluster.agent("node2");
    let waypoint_ip = demo.cluster.pod_ip(&demo.waypoint);
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
        format!(
            "cargo xtask demo exec {node1_agent} -- curl -s http://127.0.0.1:15000/config_dump   # node1's agent"
        ),
        format!(
            "cargo xtask demo exec node2 -- curl -s http://{node2_agent_ip}:15020/metrics   # node2's agent"
        ),
        format!(
            "cargo xtask demo exec node2 -- curl -s http://{waypoint_ip}:15020/metrics   # the waypoint"
        ),
        format!(
            "cargo xtask demo exec {} -- curl -s http://127.0.0.1:15000/config_dump   # the waypoint's admin page (its pod's loopback only)",
            demo.waypoint
        ),
    ] {
        say(&line);
    }
    if let Some(observability) = &demo.observability {
        say(&format!(
            "the console: http://{}/#/graph/{} (watch the canary: edit reviews' VirtualService below), Prometheus: http://{}/ (or `weftctl --demo dashboard`)",
            observability.console(),
            demo.namespace,
            observability.prometheus()
        ));
    }
    say(&format!(
        "pods: {}",
        demo.pods
            .iter()
            .map(|p| format!("{} {}", p.name, demo.cluster.pod_ip(&p.name)))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    match runtime {
        Runtime::Testbed => say(&format!(
            "logs and the live configuration (edit it, the mesh follows): {}",
            demo.cluster.dir().join("config").display()
        )),
        Runtime::Containerd => say(&format!(
            "logs (containerd's, the containers', the controller's): {}",
            demo.cluster.dir().display()
        )),
    }
    say("Ctrl-C stops the demo and removes everything.");
}
