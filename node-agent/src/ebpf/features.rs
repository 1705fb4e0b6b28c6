//! What the kernel must offer for redirection, checked once at start so a missing piece is named
//! instead of surfacing as an obscure load or attach error.
use std::{fmt, path::Path};

use aya::{maps::MapType, programs::ProgramType};
use nix::sys::statfs::{BPF_FS_MAGIC, CGROUP2_SUPER_MAGIC, statfs};

/// Where bpffs is mounted by convention.
pub const BPFFS: &str = "/sys/fs/bpf";

/// One thing the kernel (or the machine's setup) lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingFeature {
    /// No kernel BTF (`/sys/kernel/btf/vmlinux`).
    Btf(String),
    /// A program type the kernel refuses to load.
    ProgramType(&'static str),
    /// A map type the kernel refuses to create.
    MapType(&'static str),
    /// No bpffs at the path (and mounting it failed).
    Bpffs(String),
    /// The path is not a cgroup v2 directory.
    Cgroup2(String),
}

impl fmt::Display for MissingFeature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Btf(why) => write!(f, "kernel BTF ({KERNEL_BTF}): {why}"),
            Self::ProgramType(name) => write!(f, "eBPF program type {name}"),
            Self::MapType(name) => write!(f, "eBPF map type {name}"),
            Self::Bpffs(why) => write!(f, "bpffs at {BPFFS}: {why}"),
            Self::Cgroup2(why) => write!(f, "cgroup v2: {why}"),
        }
    }
}

/// The outcome of [`check_kernel_features`]: empty `missing` means everything is there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFeatures {
    pub missing: Vec<MissingFeature>,
}

impl KernelFeatures {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }
}

impl fmt::Display for KernelFeatures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.missing.is_empty() {
            return f.write_str("all required kernel features present");
        }
        f.write_str("missing: ")?;
        for (i, feature) in self.missing.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{feature}")?;
        }
        Ok(())
    }
}

const PROGRAM_TYPES: [(ProgramType, &str); 4] = [
    (
        ProgramType::CgroupSockAddr,
        "cgroup_sock_addr (connect4/connect6)",
    ),
    (ProgramType::SockOps, "sockops"),
    (ProgramType::SkMsg, "sk_msg"),
    (ProgramType::SkLookup, "sk_lookup"),
];

/// Where the kernel publishes its own BTF.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAP_TYPES: [(MapType, &str); 3] = [
    (MapType::Hash, "hash"),
    (MapType::LruHash, "lru_hash"),
    (MapType::SockHash, "sockhash"),
];

/// Probes BTF, the program and map types redirection uses, bpffs (mounting it when absent) and
/// that `cgroup_root` is cgroup v2.
pub fn check_kernel_features(cgroup_root: &Path) -> KernelFeatures {
    let mut missing = Vec::new();
    // Present is enough (parsing it would cost megabytes for nothing the programs use).
    if let Err(error) = std::fs::File::open(KERNEL_BTF) {
        missing.push(MissingFeature::Btf(error.to_string()));
    }
    for (program_type, name) in PROGRAM_TYPES {
        if !aya::sys::is_program_supported(program_type).unwrap_or(false) {
            missing.push(MissingFeature::ProgramType(name));
        }
    }
    for (map_type, name) in MAP_TYPES {
        if !aya::sys::is_map_supported(map_type).unwrap_or(false) {
            missing.push(MissingFeature::MapType(name));
        }
    }
    if let Err(why) = ensure_bpffs() {
        missing.push(MissingFeature::Bpffs(why));
    }
    match statfs(cgroup_root) {
        Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {}
        Ok(_) => missing.push(MissingFeature::Cgroup2(format!(
            "{} is not a cgroup v2 mount",
            cgroup_root.display()
        ))),
        Err(error) => missing.push(MissingFeature::Cgroup2(format!(
            "{}: {error}",
            cgroup_root.display()
        ))),
    }
    KernelFeatures { missing }
}

/// Mounts bpffs at [`BPFFS`] unless it is there already.
pub fn ensure_bpffs() -> Result<(), String> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(());
    }
    std::fs::create_dir_all(path).map_err(|e| format!("creating the mount point: {e}"))?;
    nix::mount::mount(
        Some("bpf"),
        path,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("mount -t bpf bpf {BPFFS}: {e}"))?;
    if is_bpffs(path) {
        Ok(())
    } else {
        Err("mounted, but not seen as bpffs".into())
    }
}

/// Whether `path` is on bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_every_missing_feature() {
        let report = KernelFeatures {
            missing: vec![
                MissingFeature::ProgramType("sk_lookup"),
                MissingFeature::Bpffs("mount failed".into()),
            ],
        };
        assert!(!report.is_complete());
        assert_eq!(
            report.to_string(),
            "missing: eBPF program type sk_lookup; bpffs at /sys/fs/bpf: mount failed"
        );
        assert!(KernelFeatures::default().is_complete());
    }
}
