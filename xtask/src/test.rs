//! `cargo xtask test`: the whole test suite. Unit tests first (fast feedback), then the tests
//! that need root and the kernel: the testbed, eBPF and end-to-end tests. Nothing is skipped.

use std::process::Command;

use crate::{build_ebpf, images, is_root, run_command, setup, step, workspace_root};

/// The soak's length in the long form (`--long`), in seconds; CI's is the test's default.
const LONG_SOAK_SECONDS: &str = "1800";

pub fn run(long: bool, extra: &[String]) -> anyhow::Result<()> {
    anyhow::ensure!(
        is_root(),
        "the test suite creates network namespaces, cgroups and eBPF programs and needs root: \
         run `sudo -E cargo xtask test` (or as root)"
    );
    setup::ensure()?;
    build_ebpf::run(true)?;
    let root = workspace_root();

    step("test: formatting");
    run_command(
        Command::new("cargo")
            .args(["fmt", "--all", "--", "--check"])
            .current_dir(&root),
    )?;

    step("test: unit tests");
    run_command(
        Command::new("cargo")
            .args(["test", "--workspace", "--lib", "--bins"])
            .arg("--")
            .args(extra)
            .current_dir(&root),
    )?;

    step("test: building the binaries the end-to-end tests run");
    run_command(
        Command::new("cargo")
            .args(["build", "--workspace", "--bins"])
            .current_dir(&root),
    )?;

    step("test: container images of the debug binaries (the container runtime tests run them)");
    images::package(false)?;

    step("test: integration, kernel and end-to-end tests (root)");
    let mut tests = Command::new("cargo");
    tests
        .args(["test", "--workspace", "--test", "*"])
        .arg("--")
        .args(extra)
        .current_dir(&root);
    if long && std::env::var_os("WEFT_SOAK_SECONDS").is_none() {
        tests.env("WEFT_SOAK_SECONDS", LONG_SOAK_SECONDS);
    }
    run_command(&mut tests)?;
    step("test: all passed");
    Ok(())
}
