//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent binary.
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=WEFT_EBPF_OBJECT");
    let object = match std::env::var_os("WEFT_EBPF_OBJECT") {
        Some(path) => PathBuf::from(path),
        // Read when the script runs, not when it was compiled: a build directory copied from
        // another checkout keeps the compiled script, which must not point back there.
        None => PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"))
            .join("../target/bpf/weft-ebpf.o"),
    };
    println!("cargo:rerun-if-changed={}", object.display());
    if !object.is_file() {
        panic!(
            "the eBPF object {} is missing: run `cargo xtask build-ebpf` first \
             (`cargo xtask test` and `cargo xtask demo` do it for you), \
             or point WEFT_EBPF_OBJECT at a built object",
            object.display()
        );
    }
    let object = object
        .canonicalize()
        .expect("canonical path of the eBPF object");
    println!("cargo:rustc-env=WEFT_EBPF_OBJECT_PATH={}", object.display());
}
