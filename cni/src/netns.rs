//! Finding a running pod's network namespace, as Istio's CNI node agent does: a process whose
//! cgroup names the pod's uid (the kubelet puts every pod under a `pod<uid>` cgroup, with `_`
//! for `-` under the systemd driver) lives in the pod's sandbox, and its `/proc/<pid>/ns/net` is
//! the pod's namespace. The agent is given the runtime's bind mount of that namespace (the file
//! under the runtime's netns directory with the same inode), which outlives any one process.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};

/// The node agent's per-namespace switches in a mesh pod (`/proc/sys` keys): an accepted socket
/// takes its SYN's mark, so the application's replies to a client's address go back to the
/// agent; a closing reuse-port listener hands its queued connections to the group, so an
/// agent's restart loses none. The agent sets them too at enrollment, unless they are already
/// set: where its container sees `/proc/sys` read-only it could not, and the plugin, running
/// privileged at ADD, does it first.
pub const POD_SYSCTLS: &[&str] = &["net/ipv4/tcp_fwmark_accept", "net/ipv4/tcp_migrate_req"];

/// Sets every [`POD_SYSCTLS`] key to 1 inside the network namespace at `netns`, from a thread
/// of its own (it enters the namespace and ends there: `/proc/sys/net` shows the namespace of
/// the thread that opens it).
pub fn enable_pod_sysctls(netns: &Path) -> Result<(), String> {
    let file = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET)
                    .map_err(|e| format!("entering {}: {e}", netns.display()))?;
                for key in POD_SYSCTLS {
                    let path = Path::new("/proc/sys").join(key);
                    std::fs::write(&path, "1").map_err(|e| {
                        format!("setting {} in {}: {e}", path.display(), netns.display())
                    })?;
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err("setting the pod's sysctls panicked".to_owned()))
    })
}

/// Where to look: the host's `/proc` (mounted in the daemon's container) and the runtime's
/// netns directory (the same path the agent opens).
#[derive(Debug, Clone)]
pub struct NetnsFinder {
    pub proc_root: PathBuf,
    pub netns_dir: PathBuf,
}

impl NetnsFinder {
    /// The network namespace of the pod with `uid`: the runtime's file for it (under the netns
    /// directory).
    pub fn find(&self, uid: &str) -> Result<PathBuf, String> {
        let pid = self.pod_process(uid)?;
        let ns = self.proc_root.join(pid.to_string()).join("ns/net");
        let inode = std::fs::metadata(&ns)
            .map_err(|e| format!("{}: {e}", ns.display()))?
            .ino();
        let entries = std::fs::read_dir(&self.netns_dir)
            .map_err(|e| format!("{}: {e}", self.netns_dir.display()))?;
        entries
            .flatten()
            .map(|e| e.path())
            .find(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == inode))
            .ok_or_else(|| {
                format!(
                    "pod {uid}: process {pid}'s network namespace has no file in {}",
                    self.netns_dir.display()
                )
            })
    }

    /// A process of the pod: the first whose cgroup names the pod's uid.
    fn pod_process(&self, uid: &str) -> Result<u32, String> {
        let dashed = format!("pod{uid}");
        let underscored = format!("pod{}", uid.replace('-', "_"));
        let entries = std::fs::read_dir(&self.proc_root)
            .map_err(|e| format!("{}: {e}", self.proc_root.display()))?;
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            // Processes come and go while we look: unreadable ones are skipped.
            let Ok(cgroups) = std::fs::read_to_string(entry.path().join("cgroup")) else {
                continue;
            };
            if cgroups
                .lines()
                .any(|l| cgroup_names(l, &dashed) || cgroup_names(l, &underscored))
            {
                return Ok(pid);
            }
        }
        Err(format!(
            "pod {uid}: no process under a {dashed} cgroup in {}",
            self.proc_root.display()
        ))
    }
}

/// Whether a `/proc/<pid>/cgroup` line's path has the component `name` (the cgroupfs driver's
/// `pod<uid>`), or a systemd slice ending in it (`kubepods-besteffort-pod<uid>.slice`).
fn cgroup_names(line: &str, name: &str) -> bool {
    let path = line.splitn(3, ':').nth(2).unwrap_or_default();
    path.split('/').any(|part| {
        let part = part.strip_suffix(".slice").unwrap_or(part);
        part == name
            || part
                .strip_suffix(name)
                .is_some_and(|rest| rest.ends_with('-'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_lines_name_the_pod() {
        let uid = "podd1e5a7c2-0b4e-4c61-9d1a-2f3c5e6a7b8c";
        let under = "podd1e5a7c2_0b4e_4c61_9d1a_2f3c5e6a7b8c";
        let cases = [
            (
                format!("4:cpu:/kubepods/besteffort/{uid}/0123abcd"),
                uid,
                true,
            ),
            (format!("0::/kubepods/{uid}/0123abcd"), uid, true),
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{under}.slice/cri-containerd-0123.scope"
                ),
                under,
                true,
            ),
            (format!("0::/kubepods/{uid}x/0123"), uid, false),
            ("0::/user.slice/session-1.scope".to_string(), uid, false),
        ];
        for (line, name, expected) in cases {
            assert_eq!(cgroup_names(&line, name), expected, "{line}");
        }
    }
}
