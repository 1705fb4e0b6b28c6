//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (nightly, AddressSanitizer), each
//! for a while, from the seed corpora in the repository (`fuzz/seeds/<target>`) and the inputs
//! that once failed (`fuzz/regressions/<target>`). A crash, a hang (an input taking over 10 s)
//! or a process over 2 GiB fails the run and leaves the input in `fuzz/artifacts/<target>/`: it
//! goes into `fuzz/regressions/<target>/` with the fix, and into a unit test of the crate it
//! belongs to. What each target checks: `tests/fuzz-targets`.

use std::path::Path;
use std::process::Command;

use crate::{build_ebpf, run_command, setup, step, workspace_root};

/// Build options, the same for `build` and `run` so that running never rebuilds. Sixteen
/// codegen units instead of cargo-fuzz's default of one: a much shorter build of this large
/// dependency tree, for somewhat fewer executions per second (the optimization level is the
/// fuzz workspace's release profile, `fuzz/Cargo.toml`).
const BUILD_OPTIONS: &[&str] = &["--codegen-units", "16"];

/// The build directory of the fuzz targets: under the workspace's `target/`, so that
/// `cargo clean` and the ignore rules reach it and one build serves every target.
const TARGET_DIR: &str = "target/fuzz";

/// The cargo-fuzz targets: the binaries in `fuzz/fuzz_targets`.
fn all_targets(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut targets: Vec<String> = std::fs::read_dir(root.join("fuzz/fuzz_targets"))?
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "rs").then(|| path.file_stem()?.to_str().map(str::to_owned))?
        })
        .collect();
    targets.sort();
    Ok(targets)
}

/// Runs `targets` (all when empty) for `seconds` each, instrumented with `sanitizer`
/// (cargo-fuzz's `address`, `none`, ...), from libFuzzer's random `seed` when one is given.
pub fn run(
    seconds: u32,
    sanitizer: &str,
    seed: Option<u32>,
    targets: &[String],
) -> anyhow::Result<()> {
    setup::ensure()?;
    let root = workspace_root();
    let known = all_targets(&root)?;
    for name in targets {
        anyhow::ensure!(
            known.contains(name),
            "no fuzz target {name:?}; the targets: {}",
            known.join(", ")
        );
    }
    let selected: &[String] = if targets.is_empty() { &known } else { targets };
    step(&format!(
        "fuzz: building the targets (nightly, sanitizer {sanitizer})"
    ));
    let mut build = cargo_fuzz(&root, "build", sanitizer);
    if let [only] = selected {
        build.arg(only);
    }
    run_command(&mut build)?;
    for target in selected {
        step(&format!("fuzz: {target} for {seconds} s"));
        // New inputs go to the first directory (not in git); the others are read only.
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        let mut command = cargo_fuzz(&root, "run", sanitizer);
        command.arg(target).arg(&corpus);
        for dir in ["seeds", "regressions"] {
            let dir = root.join("fuzz").join(dir).join(target);
            if dir.is_dir() {
                command.arg(dir);
            }
        }
        command
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg("-print_final_stats=1");
        if let Some(seed) = seed {
            command.arg(format!("-seed={seed}"));
        }
        run_command(&mut command).map_err(|e| {
            anyhow::anyhow!(
                "{e}\nthe failing input is in {}; replay it with \
                 `cargo +nightly fuzz run --sanitizer {sanitizer} --target-dir ../{TARGET_DIR} \
                 {target} <file>` in fuzz/",
                root.join("fuzz/artifacts").join(target).display()
            )
        })?;
    }
    step("fuzz: no finding");
    Ok(())
}

fn cargo_fuzz(root: &Path, subcommand: &str, sanitizer: &str) -> Command {
    let mut command = Command::new("rustup");
    command
        .args(["run", "nightly", "cargo", "fuzz", subcommand])
        .args(BUILD_OPTIONS)
        .arg("--sanitizer")
        .arg(sanitizer)
        .arg("--target-dir")
        .arg(root.join(TARGET_DIR))
        .current_dir(root.join("fuzz"));
    build_ebpf::clear_outer_build(&mut command);
    command
}
