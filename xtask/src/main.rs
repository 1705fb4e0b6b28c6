//! Project tasks, run as `cargo xtask <task>`: everything a developer or CI needs beyond plain
//! cargo, so that a fresh machine needs no manual step.

mod bench;
mod build_ebpf;
#[cfg(test)]
mod chart_tests;
mod demo;
mod fuzz;
mod images;
mod setup;
mod test;

use std::path::PathBuf;
use std::process::Command;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "xtask",
    about = "Project tasks: setup, build-ebpf, test, fuzz, demo, bench, images, crdgen"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what this machine lacks (apt packages, nightly rust-src, bpf-linker,
    /// cargo-fuzz). Idempotent.
    Setup,
    /// Build the eBPF object that the node agent embeds (target/bpf/weft-ebpf.o).
    BuildEbpf {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Measure the mesh against a direct path on the testbed (needs root); writes
    /// target/bench/report.md.
    Bench {
        /// Short run (about a minute after the build), for CI.
        #[arg(long)]
        quick: bool,
        /// Options passed on to the bench binary (`--only rps1`, `--seconds 3`, `--hold`, ...).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// The mesh in a box: two nodes, the controller, agents, a waypoint and bookinfo on the
    /// testbed or on containerd, scripted scenarios, then up until Ctrl-C (needs root).
    Demo {
        #[command(subcommand)]
        action: Option<DemoAction>,
        /// Where the pods run: the testbed, or containerd (pods created through the CRI from
        /// the images, enrolled by weft-cni; the controller in Kubernetes mode).
        #[arg(long, value_enum, default_value_t = demo::Runtime::Testbed)]
        runtime: demo::Runtime,
        /// Play only this scenario (mtls, deny, canary, header-routing, fault, metrics).
        #[arg(long)]
        scenario: Option<String>,
        /// Exit after the scenarios (CI) instead of staying up.
        #[arg(long)]
        no_wait: bool,
    },
    /// Build OCI image archives of the controller, the node agent (with the CNI plugin and its
    /// node daemon), the waypoint, the sample app and the pause image, under the chart's tags
    /// (target/images/<profile>/<name>.tar; `ctr images import` loads them).
    Images {
        /// From debug binaries (what the tests use) instead of release ones.
        #[arg(long)]
        debug: bool,
    },
    /// Regenerate the CRDs of the Istio kinds (`controller crdgen --out deploy/crds`) and copy
    /// them into the Helm chart (deploy/charts/weft/crds).
    Crdgen,
    /// Run the fuzz targets in fuzz/ (cargo-fuzz, nightly, AddressSanitizer) from their seeds
    /// and past failures, each for a while; a finding fails the run and leaves its input in
    /// fuzz/artifacts/<target>/.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 30)]
        seconds: u32,
        /// cargo-fuzz's sanitizer: `address` (the default), or `none` for a shorter build
        /// that still finds panics, overflows, hangs and runaway memory.
        #[arg(long, default_value = "address")]
        sanitizer: String,
        /// libFuzzer's random seed: a fixed one makes a run depend on the code, not on luck
        /// (CI's); without it each run explores anew.
        #[arg(long)]
        seed: Option<u32>,
        /// The targets to run (all when none is named).
        targets: Vec<String>,
    },
    /// Run every test: unit tests, then the kernel, netns and end-to-end tests (needs root).
    Test {
        /// The long forms of the endurance tests: the soak runs 30 minutes instead of 5
        /// (`WEFT_SOAK_SECONDS`, when set, decides over both).
        #[arg(long)]
        long: bool,
        /// Arguments passed on to every `cargo test` run (a test name filter, for example).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum DemoAction {
    /// Run a command inside a pod (or node) of the running demo.
    Exec {
        /// A pod (`client`, `productpage-v1`, ...), a node (`node1`) or `control-plane`.
        name: String,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.task {
        Task::Setup => setup::run(),
        Task::BuildEbpf { release } => {
            setup::ensure()?;
            build_ebpf::run(release)
        }
        Task::Test { long, args } => test::run(long, &args),
        Task::Fuzz {
            seconds,
            sanitizer,
            seed,
            targets,
        } => fuzz::run(seconds, &sanitizer, seed, &targets),
        Task::Bench { quick, args } => bench::run(quick, &args),
        Task::Demo {
            action: Some(DemoAction::Exec { name, command }),
            ..
        } => demo::exec(&name, &command),
        Task::Demo {
            action: None,
            runtime,
            scenario,
            no_wait,
        } => demo::run(runtime, scenario.as_deref(), no_wait),
        Task::Images { debug } => images::run(!debug),
        Task::Crdgen => crdgen(),
    }
}

/// Where the chart keeps its copy of the CRDs (Helm installs a chart's `crds/` first).
const CHART_CRDS: &str = "deploy/charts/weft/crds";

fn crdgen() -> anyhow::Result<()> {
    let root = workspace_root();
    let out = root.join("deploy/crds");
    step("generating CRDs");
    run_command(
        std::process::Command::new(env!("CARGO"))
            .current_dir(&root)
            .args([
                "run",
                "--quiet",
                "-p",
                "controller",
                "--bin",
                "controller",
                "--",
            ])
            .arg("crdgen")
            .arg("--out")
            .arg(&out),
    )?;
    let chart = root.join(CHART_CRDS);
    std::fs::create_dir_all(&chart)?;
    for entry in std::fs::read_dir(&chart)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::remove_file(&path)?;
        }
    }
    for entry in std::fs::read_dir(&out)? {
        let path = entry?.path();
        if let Some(name) = path
            .file_name()
            .filter(|_| path.extension().is_some_and(|e| e == "yaml"))
        {
            std::fs::copy(&path, chart.join(name))?;
        }
    }
    eprintln!("    copied into {CHART_CRDS}");
    Ok(())
}

/// The workspace root (the parent of this crate). `cargo xtask` runs through `cargo run`, which
/// sets the manifest directory of this checkout; the compiled-in one is only the fallback (a
/// build directory copied from another checkout keeps a binary that would point back there).
/// The variables `cargo run` sets for the binary it runs (this one), naming the xtask
/// package. Some build scripts (ring's, through `cc`) declare `rerun-if-env-changed` on
/// them, so a cargo started from here with them set would rebuild those crates and everything
/// above them each time a cargo started from a shell had built them, and back.
const PACKAGE_VARIABLES: &[&str] = &[
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PKG_NAME",
    "CARGO_PKG_VERSION",
    "CARGO_PKG_VERSION_MAJOR",
    "CARGO_PKG_VERSION_MINOR",
    "CARGO_PKG_VERSION_PATCH",
    "CARGO_PKG_VERSION_PRE",
    "CARGO_PKG_AUTHORS",
    "CARGO_PKG_DESCRIPTION",
    "CARGO_PKG_HOMEPAGE",
    "CARGO_PKG_REPOSITORY",
    "CARGO_PKG_LICENSE",
    "CARGO_PKG_LICENSE_FILE",
    "CARGO_PKG_README",
    "CARGO_PKG_RUST_VERSION",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
];

/// `cargo` in the workspace's root with the environment of a shell: the builds it makes are
/// the ones a developer's own `cargo build` / `cargo test` reuse, and the other way round.
pub fn cargo() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(workspace_root());
    for variable in PACKAGE_VARIABLES {
        command.env_remove(variable);
    }
    command
}

pub fn workspace_root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Prints a step header so long runs show where they are.
pub fn step(message: &str) {
    eprintln!("\x1b[1m==> {message}\x1b[0m");
}

/// Runs a command, echoing it, and fails with its exit status.
pub fn run_command(command: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("    $ {}", describe(command));
    let status = command
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start `{}`: {e}", describe(command)))?;
    anyhow::ensure!(status.success(), "`{}` failed: {status}", describe(command));
    Ok(())
}

fn describe(command: &std::process::Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// True when this process runs as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}
