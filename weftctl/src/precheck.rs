//! `weftctl precheck`: whether this machine can run a node agent: the kernel version, the BPF
//! program and map types redirection needs (the agent's own start-up check), cgroup v2, bpffs and
//! the CNI configuration directory, each with why it matters.

use std::path::Path;

use serde::Serialize;

use crate::output::{self, Format, Table};

/// The oldest kernel with every program type the agent loads (`sk_lookup` arrived in 5.9; 5.10
/// is the long-term release after it).
pub const MIN_KERNEL: (u32, u32) = (5, 10);

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
    /// What breaks without it, and what to do.
    pub why: String,
}

/// `major.minor` of a kernel release string (`6.18.0-1-amd64` -> (6, 18)).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn why_missing(feature: &node_agent::ebpf::MissingFeature) -> (&'static str, &'static str) {
    use node_agent::ebpf::MissingFeature;
    match feature {
        MissingFeature::Btf(_) => (
            "kernel BTF",
            "the eBPF programs are CO-RE: without BTF they cannot be relocated to this kernel; use a kernel built with CONFIG_DEBUG_INFO_BTF=y",
        ),
        MissingFeature::ProgramType(_) => (
            "BPF program type",
            "the agent captures pod traffic with it: without it no connection is redirected; use a newer kernel (5.10+) with CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF, CONFIG_BPF_STREAM_PARSER",
        ),
        MissingFeature::MapType(_) => (
            "BPF map type",
            "redirection state lives in it: the agent cannot load its programs without it; use a newer kernel with CONFIG_BPF_SYSCALL",
        ),
        MissingFeature::Bpffs(_) => (
            "bpffs",
            "the agent pins its programs and maps there so redirection survives its restarts; mount it: mount -t bpf bpf /sys/fs/bpf",
        ),
        MissingFeature::Cgroup2(_) => (
            "cgroup v2",
            "the connect programs attach to the cgroup v2 root to see every pod; boot with systemd.unified_cgroup_hierarchy=1",
        ),
    }
}

pub fn checks(cni_dir: &Path) -> Vec<Check> {
    let mut checks = Vec::new();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = kernel_version(&release);
    let kernel_ok = version.is_some_and(|v| v >= MIN_KERNEL);
    checks.push(Check {
        name: "kernel version".into(),
        ok: kernel_ok,
        detail: format!("{release} (needs {}.{}+)", MIN_KERNEL.0, MIN_KERNEL.1),
        why: if kernel_ok {
            String::new()
        } else {
            "older kernels lack sk_lookup and the sockops/sk_msg fixes the agent relies on; upgrade the node's kernel".into()
        },
    });
    let cgroup_root = node_agent::ebpf::cgroup2_root();
    let features = node_agent::ebpf::check_kernel_features(
        cgroup_root
            .as_deref()
            .unwrap_or(Path::new("/sys/fs/cgroup")),
    );
    let mut failed: Vec<&'static str> = Vec::new();
    for feature in &features.missing {
        let (name, why) = why_missing(feature);
        failed.push(name);
        checks.push(Check {
            name: name.into(),
            ok: false,
            detail: feature.to_string(),
            why: why.into(),
        });
    }
    for (name, detail) in [
        ("kernel BTF", "/sys/kernel/btf/vmlinux present"),
        (
            "BPF program type",
            "cgroup_sock_addr, sockops, sk_msg, sk_lookup load",
        ),
        ("BPF map type", "hash, lru_hash, sockhash create"),
        ("bpffs", "/sys/fs/bpf mounted"),
        ("cgroup v2", "the hierarchy's root is mounted"),
    ] {
        if !failed.contains(&name) {
            let detail = match (name, &cgroup_root) {
                ("cgroup v2", Ok(root)) => format!("root at {}", root.display()),
                _ => detail.to_owned(),
            };
            checks.push(Check {
                name: name.into(),
                ok: true,
                detail,
                why: String::new(),
            });
        }
    }
    let cni_ok = cni_dir.is_dir();
    checks.push(Check {
        name: "CNI directory".into(),
        ok: cni_ok,
        detail: cni_dir.display().to_string(),
        why: if cni_ok {
            String::new()
        } else {
            "the CNI plugin installs its configuration there to enroll new pods; create it or pass the runtime's --cni-dir".into()
        },
    });
    checks
}

pub fn run(cni_dir: &Path, format: Format) -> anyhow::Result<u8> {
    let checks = checks(cni_dir);
    output::emit(format, &checks, || {
        let mut table = Table::new(&["CHECK", "STATUS", "DETAIL", "WHY IT MATTERS"]);
        for check in &checks {
            table.row(vec![
                check.name.clone(),
                if check.ok { "ok" } else { "MISSING" }.into(),
                check.detail.clone(),
                output::or_dash(&check.why),
            ]);
        }
        table
    })?;
    let missing = checks.iter().filter(|c| !c.ok).count();
    if format == Format::Table {
        if missing == 0 {
            println!("this node can run the weft node agent");
        } else {
            println!(
                "{missing} requirement(s) missing: see WHY IT MATTERS for what fails without each"
            );
        }
    }
    Ok(u8::from(missing > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_releases() {
        assert_eq!(kernel_version("6.18.0-1-amd64"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(kernel_version("5.4.0").unwrap() < MIN_KERNEL);
    }

    #[test]
    fn a_missing_cni_directory_is_reported_with_its_reason() {
        let checks = checks(Path::new("/nonexistent/weftctl-cni"));
        let cni = checks.iter().find(|c| c.name == "CNI directory").unwrap();
        assert!(!cni.ok);
        assert!(cni.why.contains("enroll"));
        // This machine runs the e2e suite: every kernel feature is there.
        assert!(
            checks
                .iter()
                .filter(|c| c.name != "CNI directory")
                .all(|c| c.ok),
            "{checks:#?}"
        );
    }
}
