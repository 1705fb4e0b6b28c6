//! `cargo xtask test`: the whole test suite. Unit tests first (fast feedback), then the tests
//! that need root and the kernel: the testbed, eBPF and end-to-end tests. Nothing is skipped.

use crate::{build_ebpf, cargo, images, is_root, run_command, setup, step};

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

    step("test: formatting");
    run_command(cargo().args(["fmt", "--all", "--", "--check"]))?;

    step("test: unit tests");
    run_command(
        cargo()
            .args(["test", "--workspace", "--lib", "--bins"])
            .arg("--")
            .args(extra),
    )?;

    step("test: building the binaries the end-to-end tests run");
    run_command(cargo().args(["build", "--workspace", "--bins"]))?;

    step("test: container images of the debug binaries (the container runtime tests run them)");
    images::package(false)?;

    step("test: integration, kernel and end-to-end tests (root)");
    let mut tests = cargo();
    tests
        .args(["test", "--workspace", "--test", "*"])
        .arg("--")
        .args(extra);
    if long && std::env::var_os("WEFT_SOAK_SECONDS").is_none() {
        tests.env("WEFT_SOAK_SECONDS", LONG_SOAK_SECONDS);
    }
    run_command(&mut tests)?;
    step("test: all passed");
    Ok(())
}
