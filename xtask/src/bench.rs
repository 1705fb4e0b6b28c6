//! `cargo xtask bench [--quick] [-- options]`: builds optimised binaries and runs the
//! mesh-vs-direct benchmark on the testbed (`tests/e2e/src/bin/bench.rs`), which prints a table
//! and writes `target/bench/report.md`. The full run builds the release profile; `--quick` the
//! `bench-quick` profile (release without link-time optimisation, `Cargo.toml`), whose build takes
//! a fraction of the time, for a run that checks every figure still works.

use std::process::Command;

use crate::{build_ebpf, cargo, is_root, run_command, setup, step, workspace_root};

/// The packages whose binaries the benchmark runs (`weft-e2e` holds the benchmark itself and
/// the load client `mesh-client`).
const BENCHMARKED_PACKAGES: &[&str] = &[
    "controller",
    "node-agent",
    "waypoint",
    "weft-sample-app",
    "weft-e2e",
];

pub fn run(quick: bool, args: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "the benchmark builds a testbed of network namespaces and loads eBPF programs: run \
         `sudo -E cargo xtask bench` (or as root)"
    );
    setup::ensure()?;
    build_ebpf::run(true)?;
    let root = workspace_root();
    let profile = if quick { "bench-quick" } else { "release" };
    step(&format!(
        "bench: building the binaries it runs ({profile} profile)"
    ));
    let mut build = cargo();
    build.args(["build", "--profile", profile]);
    // The benchmark and what it starts: the proxies, the controller, the sample application
    // and the load client; not the command-line tool, the CNI plugin or the build tasks.
    for package in BENCHMARKED_PACKAGES {
        build.args(["-p", package]);
    }
    run_command(build.arg("--bins"))?;
    step(if quick {
        "bench: quick run (1 s per figure, one round)"
    } else {
        "bench: full run (10 s per figure, median of three rounds)"
    });
    let mut bench = Command::new(root.join("target").join(profile).join("bench"));
    if quick {
        bench.arg("--quick");
    }
    bench.args(args);
    run_command(bench.current_dir(&root))
}
