//! `cargo xtask bench [--quick] [-- options]`: builds release binaries and runs the mesh-vs-direct benchmark
//! on the testbed (`tests/e2e/src/bin/bench.rs`), which prints a table and writes
//! `target/bench/report.md`.

use std::process::Command;

use crate::{build_ebpf, cargo, is_root, run_command, setup, step, workspace_root};

pub fn run(quick: bool, args: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "the benchmark builds a testbed of network namespaces and loads eBPF programs: run \
         `sudo -E cargo xtask bench` (or as root)"
    );
    setup::ensure()?;
    build_ebpf::run(true)?;
    let root = workspace_root();
    step("bench: building release binaries");
    run_command(cargo().args(["build", "--release", "--workspace", "--bins"]))?;
    step(if quick {
        "bench: quick run (1 s per figure, one round)"
    } else {
        "bench: full run (10 s per figure, median of three rounds)"
    });
    let mut bench = Command::new(root.join("target/release/bench"));
    if quick {
        bench.arg("--quick");
    }
    bench.args(args);
    run_command(bench.current_dir(&root))
}
