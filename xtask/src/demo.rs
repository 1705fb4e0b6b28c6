//! `cargo xtask demo`: setup when needed, the eBPF object and the binaries built (and, for
//! `--runtime containerd`, the images the pods run), then the demo itself
//! (`tests/e2e/src/bin/demo.rs`, which starts the mesh through the end-to-end harness).
//! The demo replaces this process, so that Ctrl-C reaches it directly and it removes everything
//! before the shell prompt comes back. `cargo xtask demo exec <pod> -- <command>` runs a command
//! inside a pod of the running demo.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

use crate::{build_ebpf, cargo, images, is_root, run_command, setup, step, workspace_root};

/// The demo's own list of scenarios, shared as a source file: this crate must build before the
/// eBPF object exists, so it cannot depend on the end-to-end crate.
#[path = "../../tests/e2e/src/scenarios.rs"]
mod scenarios;

/// Where the demo's pods run (the demo binary's `--runtime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// The harness starts every component in its pod's network namespace and cgroup.
    Testbed,
    /// containerd on each node: pods created through the CRI from the images, enrolled by
    /// weft-cni; the node agent as its DaemonSet's pod; the controller in Kubernetes mode.
    Containerd,
}

impl Runtime {
    fn name(self) -> &'static str {
        match self {
            Self::Testbed => "testbed",
            Self::Containerd => "containerd",
        }
    }
}

fn demo_binary() -> PathBuf {
    workspace_root().join("target/debug/demo")
}

fn require_root(what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "{what} network namespaces, cgroups and eBPF programs and needs root: run \
         `sudo -E cargo xtask demo` (or as root)"
    );
    Ok(())
}

/// `cargo xtask demo [--runtime R] [--scenario NAME] [--no-wait]`. An unknown scenario is
/// refused first, before setup and the build.
pub fn run(runtime: Runtime, scenario: Option<&str>, no_wait: bool) -> anyhow::Result<()> {
    if let Some(name) = scenario {
        scenarios::check(name).map_err(anyhow::Error::msg)?;
    }
    require_root("the demo creates")?;
    setup::ensure()?;
    build_ebpf::run(true)?;
    let root = workspace_root();
    step(
        "demo: building the controller, node agent, waypoint and sample app (first time: several minutes)",
    );
    // Every binary of the workspace, the build `cargo xtask test` makes, so that one serves
    // both (the demo runs the controller, node agent, waypoint, sample app and mesh client;
    // containerd also the CNI plugin, its node daemon and the pause image).
    run_command(cargo().args(["build", "--workspace", "--bins"]))?;
    let images = runtime == Runtime::Containerd;
    if images {
        step("demo: container images of the debug binaries");
        images::package(false)?;
    }
    step("demo: starting");
    let mut demo = Command::new(demo_binary());
    demo.arg("run")
        .arg("--examples")
        .arg(root.join("deploy/examples/bookinfo"))
        .args(["--runtime", runtime.name()])
        .current_dir(&root);
    if let Some(scenario) = scenario {
        demo.args(["--scenario", scenario]);
    }
    if no_wait {
        demo.arg("--no-wait");
    }
    let error = demo.exec();
    anyhow::bail!("cannot start {}: {error}", demo_binary().display())
}

/// `cargo xtask demo exec <name> -- <command>`.
pub fn exec(name: &str, command: &[String]) -> anyhow::Result<()> {
    require_root("entering the demo's pods enters")?;
    let binary = demo_binary();
    anyhow::ensure!(
        binary.is_file(),
        "{} is not built: start the demo with `cargo xtask demo` first",
        binary.display()
    );
    let error = Command::new(&binary)
        .arg("exec")
        .arg(name)
        .arg("--")
        .args(command)
        .exec();
    anyhow::bail!("cannot run {}: {error}", binary.display())
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unknown_scenario_is_refused_before_anything_is_built() {
        let started = std::time::Instant::now();
        let error = super::run(super::Runtime::Testbed, Some("no-such-scenario"), true)
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "no scenario \"no-such-scenario\"; the scenarios are: mtls, deny, canary, header-routing, fault, metrics, ingress, egress"
        );
        // Nothing was set up or built on the way (either takes far longer).
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert!(super::scenarios::check("header-routing").is_ok());
    }
}
