//! `cargo xtask setup`: checks for, and installs when missing, what a fresh machine lacks.
//! Every check is cheap, so a second run finishes in seconds and changes nothing.

use std::process::Command;

use crate::{is_root, run_command, step};

/// Debian packages the build, the tests, the demo and the benchmarks use.
const APT_PACKAGES: &[&str] = &[
    // bpf-linker links against LLVM 22
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    // aws-lc-rs (rustls's crypto provider) compiles AWS-LC from C: a C/C++ compiler is all it
    // needs on x86_64 Linux (no CMake, Go or NASM)
    "g++",
    // protobuf code generation
    "protobuf-compiler",
    "libprotobuf-dev",
    // testbed and inspection
    "iproute2",
    "bpftool",
    "nftables",
    "tshark",
    // traffic and benchmarks
    "curl",
    "wrk",
    "nghttp2-client",
    "iperf3",
    "nginx",
    // container images (cargo xtask images) and the node on a real container runtime
    "umoci",
    "containerd",
    "runc",
    "containernetworking-plugins",
    // the demo's Prometheus and the console's browser test (headless, driven over WebDriver)
    "prometheus",
    "chromium",
    "chromium-driver",
];

/// bpf-linker's default features want LLVM 23; this machine has LLVM 22.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const NIGHTLY: &str = "nightly";

struct Status {
    missing_packages: Vec<&'static str>,
    nightly: bool,
    rust_src: bool,
    bpf_linker: bool,
    cargo_fuzz: bool,
}

impl Status {
    fn probe() -> Self {
        Self {
            missing_packages: APT_PACKAGES
                .iter()
                .copied()
                .filter(|p| !package_installed(p))
                .collect(),
            nightly: nightly_installed(),
            rust_src: rust_src_installed(),
            bpf_linker: bpf_linker_installed(),
            cargo_fuzz: cargo_fuzz_installed(),
        }
    }

    fn complete(&self) -> bool {
        self.missing_packages.is_empty()
            && self.nightly
            && self.rust_src
            && self.bpf_linker
            && self.cargo_fuzz
    }
}

/// Runs setup only when something is missing (used by test, demo and build-ebpf).
pub fn ensure() -> anyhow::Result<()> {
    if Status::probe().complete() {
        return Ok(());
    }
    step("setup: this machine lacks build or test prerequisites; installing them");
    run()
}

/// `cargo xtask setup`.
pub fn run() -> anyhow::Result<()> {
    let status = Status::probe();

    step("setup: apt packages");
    if status.missing_packages.is_empty() {
        eprintln!("    ok: all {} packages present", APT_PACKAGES.len());
    } else {
        anyhow::ensure!(
            is_root(),
            "installing {} needs root: run `sudo cargo xtask setup`",
            status.missing_packages.join(" ")
        );
        run_command(Command::new("apt-get").args(["update", "-q"]))?;
        run_command(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(&status.missing_packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    step("setup: nightly toolchain");
    if status.nightly {
        eprintln!("    ok: {NIGHTLY} installed");
    } else {
        run_command(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }

    step("setup: rust-src for the nightly toolchain (build-std for bpfel-unknown-none)");
    if status.rust_src {
        eprintln!("    ok: rust-src installed");
    } else {
        run_command(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }

    step("setup: bpf-linker (built against LLVM 22)");
    if status.bpf_linker {
        eprintln!("    ok: bpf-linker installed");
    } else {
        run_command(
            Command::new("cargo")
                .args([
                    "install",
                    "bpf-linker",
                    "--no-default-features",
                    "--features",
                    "llvm-22",
                ])
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX)
                .env_remove("RUSTUP_TOOLCHAIN"),
        )?;
    }

    step("setup: cargo-fuzz (cargo xtask fuzz)");
    if status.cargo_fuzz {
        eprintln!("    ok: cargo-fuzz installed");
    } else {
        run_command(
            Command::new("cargo")
                .args(["install", "cargo-fuzz", "--locked"])
                .env_remove("RUSTUP_TOOLCHAIN"),
        )?;
    }

    let after = Status::probe();
    anyhow::ensure!(
        after.complete(),
        "setup finished but something is still missing (packages: {:?}, nightly: {}, rust-src: {}, bpf-linker: {}, cargo-fuzz: {})",
        after.missing_packages,
        after.nightly,
        after.rust_src,
        after.bpf_linker,
        after.cargo_fuzz
    );
    step("setup: complete");
    Ok(())
}

fn package_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed"))
        .unwrap_or(false)
}

fn nightly_installed() -> bool {
    Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.starts_with(NIGHTLY))
        })
        .unwrap_or(false)
}

fn rust_src_installed() -> bool {
    Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", NIGHTLY])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| l.trim() == "rust-src")
        })
        .unwrap_or(false)
}

fn bpf_linker_installed() -> bool {
    succeeds(Command::new("bpf-linker").arg("--version"))
}

fn cargo_fuzz_installed() -> bool {
    succeeds(Command::new("cargo").args(["fuzz", "--version"]))
}

fn succeeds(command: &mut Command) -> bool {
    command
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
