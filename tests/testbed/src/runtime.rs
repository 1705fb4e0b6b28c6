//! What a container runtime run on the testbed leaves on the host, and removing it: the pods'
//! cgroups (under [`Testbed::runtime_cgroup_parent`], in the cgroup v2 tree and in every v1
//! hierarchy of a hybrid host), the runtime's state directory ([`Testbed::runtime_state_dir`])
//! and the mounts below it (container root filesystems, sandboxes' `/dev/shm`). The testbed
//! removes its own when dropped; the sweep removes a crashed run's.

use std::path::{Path, PathBuf};

use crate::{CGROUP_ROOT, Cgroup, Testbed};

/// Where cgroup hierarchies are mounted (v1 controllers beside the v2 tree on a hybrid host).
const CGROUP_MOUNTS: &str = "/sys/fs/cgroup";
/// Where runtime state directories go.
const RUN_DIR: &str = "/run";

impl Testbed {
    /// The cgroup parent the test's pods run under (the kubelet's `kubepods`), named after the
    /// testbed so a crashed run's are swept.
    pub fn runtime_cgroup_parent(&self) -> String {
        format!("/{}", pods_cgroup(self.prefix()))
    }

    /// The state directory of a container runtime on `node`.
    pub fn runtime_state_dir(&self, node: &str) -> PathBuf {
        Path::new(RUN_DIR).join(format!("{}-containerd-{node}", self.prefix()))
    }
}

fn pods_cgroup(prefix: &str) -> String {
    format!("{prefix}-pods")
}

/// Removes what a runtime left for `prefix`: kills the pods' processes (their v2 cgroup),
/// removes their cgroups in every hierarchy, unmounts whatever is mounted below the state
/// directories and removes those. Best effort: failures are logged.
pub(crate) fn remove_leftovers(prefix: &str) {
    let pods = pods_cgroup(prefix);
    let unified = Cgroup::at(Path::new(CGROUP_ROOT).join(&pods));
    if let Err(error) = unified.kill_all().and_then(|()| unified.remove_tree()) {
        tracing::warn!(cgroup = %unified.path().display(), %error, "removing the pods' cgroups");
    }
    if let Ok(hierarchies) = std::fs::read_dir(CGROUP_MOUNTS) {
        for hierarchy in hierarchies.flatten() {
            let path = hierarchy.path().join(&pods);
            if path.starts_with(CGROUP_ROOT) || !path.exists() {
                continue;
            }
            if let Err(error) = Cgroup::at(path.clone()).remove_tree() {
                tracing::warn!(cgroup = %path.display(), %error, "removing the pods' cgroups");
            }
        }
    }
    let state_prefix = format!("{RUN_DIR}/{prefix}-");
    unmount_below(&state_prefix);
    if let Ok(entries) = std::fs::read_dir(RUN_DIR) {
        for entry in entries.flatten() {
            if entry.path().to_string_lossy().starts_with(&state_prefix)
                && let Err(error) = std::fs::remove_dir_all(entry.path())
            {
                tracing::warn!(path = %entry.path().display(), %error, "removing runtime state");
            }
        }
    }
}

/// Detaches every mount whose mount point starts with `prefix`, deepest first.
fn unmount_below(prefix: &str) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| point.starts_with(prefix))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        if let Err(error) = nix::mount::umount2(point, nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(mount = point, %error, "unmounting runtime state");
        }
    }
}

/// The prefixes of runtime leftovers on the host (the names the sweep checks for staleness).
pub(crate) fn leftover_names() -> Vec<String> {
    let mut names = Vec::new();
    for dir in [RUN_DIR, CGROUP_ROOT] {
        if let Ok(entries) = std::fs::read_dir(dir) {
            names.extend(entries.flatten().filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                (name.ends_with("-pods") || name.contains("-containerd-")).then_some(name)
            }));
        }
    }
    if let Ok(hierarchies) = std::fs::read_dir(CGROUP_MOUNTS) {
        for hierarchy in hierarchies.flatten() {
            if let Ok(entries) = std::fs::read_dir(hierarchy.path()) {
                names.extend(entries.flatten().filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.ends_with("-pods").then_some(name)
                }));
            }
        }
    }
    names
}
