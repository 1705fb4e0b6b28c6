//! `cargo xtask build-ebpf`: builds the kernel programs with nightly, build-std and bpf-linker,
//! and places the object where the node agent's build script embeds it.

use std::process::Command;

use crate::{run_command, step, workspace_root};

/// Where the node agent's `build.rs` looks for the object (relative to the workspace root).
pub const OBJECT: &str = "target/bpf/weft-ebpf.o";
const TARGET: &str = "bpfel-unknown-none";

/// Clears what running under `cargo run` on stable leaves behind, which would pin a nested
/// nightly build to the stable toolchain or to this build's flags.
pub fn clear_outer_build(command: &mut Command) {
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTDOC",
        "CARGO",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
    ] {
        command.env_remove(var);
    }
}

pub fn run(release: bool) -> anyhow::Result<()> {
    let root = workspace_root();
    let profile = if release { "release" } else { "dev" };
    step(&format!("build-ebpf: kernel programs ({profile} profile)"));
    let target_dir = root.join("target/ebpf");
    let mut cargo = Command::new("rustup");
    cargo
        .args(["run", "nightly", "cargo", "build", "-Z", "build-std=core"])
        .args(["--target", TARGET])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(root.join("ebpf/programs"));
    if release {
        cargo.arg("--release");
    }
    clear_outer_build(&mut cargo);
    run_command(&mut cargo)?;

    let built = target_dir
        .join(TARGET)
        .join(if release { "release" } else { "debug" })
        .join("weft-ebpf");
    let object = root.join(OBJECT);
    std::fs::create_dir_all(object.parent().expect("object path has a parent"))?;
    // Copy only when it changed, so the agent's build script does not re-run needlessly.
    let fresh = std::fs::read(&built)
        .map_err(|e| anyhow::anyhow!("reading the built object {}: {e}", built.display()))?;
    if std::fs::read(&object).ok().as_deref() != Some(fresh.as_slice()) {
        std::fs::write(&object, &fresh)?;
    }
    eprintln!("    object: {} ({} bytes)", object.display(), fresh.len());
    Ok(())
}
