//! What the kernel must offer for redirection, checked once at start so a missing piece is named
//! instead of surfacing as an obscure load or attach error.
use std::{
    fmt,
    path::{Path, PathBuf},
};

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

/// The inode of a cgroup v2 hierarchy's root directory (kernfs numbers its root 1). A cgroup
/// namespace's root, what a container sees at `/sys/fs/cgroup`, has another: programs attached
/// there would miss every pod.
const CGROUP2_ROOT_INODE: u64 = 1;

/// Where the cgroup v2 hierarchy is mounted, read from `/proc/self/mountinfo`: `/sys/fs/cgroup`
/// on a unified host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_root() -> Result<PathBuf, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
    find_cgroup2_mount(&mountinfo)
        .ok_or_else(|| "no cgroup2 mount of the whole hierarchy in /proc/self/mountinfo".into())
}

/// The mount point of the first cgroup2 mount of a hierarchy's root (`/` as the mount's root).
fn find_cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent dev root mountpoint options [optional...] - fstype source superoptions`
        let (mount, filesystem) = line.split_once(" - ")?;
        let fields: Vec<&str> = mount.split(' ').collect();
        let (root, mount_point) = (fields.get(3)?, fields.get(4)?);
        (filesystem.split(' ').next()? == "cgroup2" && *root == "/")
            .then(|| PathBuf::from(unescape_mount_path(mount_point)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` (octal).
fn unescape_mount_path(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(digits)) => {
                out.push(
                    digits
                        .iter()
                        .fold(0u8, |n, d| n.wrapping_mul(8) + (d - b'0')),
                );
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Probes BTF, the program and map types redirection uses, bpffs (mounting it when absent) and
/// that `cgroup_root` is the root of a cgroup v2 hierarchy.
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
        Ok(fs) if fs.filesystem_type() == CGROUP2_SUPER_MAGIC => {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(cgroup_root) {
                Ok(m) if m.ino() == CGROUP2_ROOT_INODE => {}
                Ok(_) => missing.push(MissingFeature::Cgroup2(format!(
                    "{} is a cgroup, not the root of the hierarchy (a cgroup namespace's view?): \
                     the programs must attach at the root to see every pod",
                    cgroup_root.display()
                ))),
                Err(error) => missing.push(MissingFeature::Cgroup2(format!(
                    "{}: {error}",
                    cgroup_root.display()
                ))),
            }
        }
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

    #[test]
    fn the_cgroup2_root_mount_is_found() {
        let hybrid = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        let bind_of_a_child = "\
50 23 0:26 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw
51 23 0:26 / /host/cgroup\\040root rw - cgroup2 cgroup2 rw
";
        let cases = [
            (hybrid, Some("/sys/fs/cgroup/unified")),
            (unified, Some("/sys/fs/cgroup")),
            (bind_of_a_child, Some("/host/cgroup root")),
            (
                "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n",
                None,
            ),
            ("", None),
        ];
        for (mountinfo, expected) in cases {
            assert_eq!(
                find_cgroup2_mount(mountinfo),
                expected.map(PathBuf::from),
                "{mountinfo}"
            );
        }
    }

    #[test]
    fn this_machine_has_a_cgroup2_root_that_passes_the_check() {
        let root = cgroup2_root().unwrap();
        assert_eq!(
            std::fs::metadata(&root)
                .map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    m.ino()
                })
                .unwrap(),
            CGROUP2_ROOT_INODE,
            "{}",
            root.display()
        );
    }
}
