//! Every fuzz target on every seed (`fuzz/seeds/<target>`) and every input that once made it
//! fail (`fuzz/regressions/<target>`): what `cargo xtask test` runs of the fuzzing, in the
//! ordinary test build. The generated search itself is `cargo xtask fuzz`.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_binary_and_seeds_and_runs_them_all() {
    let fuzz = fuzz_dir();
    for (name, target) in weft_fuzz_targets::TARGETS {
        assert!(
            fuzz.join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "no cargo-fuzz binary for {name}"
        );
        let seeds = inputs(&fuzz.join("seeds").join(name));
        assert!(!seeds.is_empty(), "no seeds for {name}");
        let regressions = inputs(&fuzz.join("regressions").join(name));
        for input in seeds.iter().chain(&regressions) {
            let data = std::fs::read(input).unwrap();
            eprintln!("{name} {}", input.display());
            target(&data);
        }
    }
}

#[test]
fn every_cargo_fuzz_binary_is_a_known_target() {
    for binary in inputs(&fuzz_dir().join("fuzz_targets")) {
        let name = binary.file_stem().unwrap().to_str().unwrap();
        assert!(
            weft_fuzz_targets::target(name).is_some(),
            "fuzz/fuzz_targets/{name}.rs is not in TARGETS"
        );
    }
}
