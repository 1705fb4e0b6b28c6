//! Removing what a crashed earlier run left behind: namespaces, cgroups and bpffs pins whose
//! prefix names a process that no longer exists. Live testbeds of other processes are left alone.

use std::path::PathBuf;

use crate::{CGROUP_ROOT, Cgroup, Netns, PIN_BASE_PREFIX, PIN_ROOT, PREFIX, Result};

/// The pid in a `wft<pid>x<n>...` name, if the name is a testbed's.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, after) = rest.split_once('x')?;
    let instance_ok = after
        .split('-')
        .next()
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if !instance_ok {
        return None;
    }
    pid.parse().ok()
}

fn stale(name: &str) -> bool {
    owner_pid(name).is_some_and(|pid| !PathBuf::from(format!("/proc/{pid}")).exists())
}

/// Removes every stale testbed resource, processes first. Testbeds built at the same time sweep
/// the same leftovers, so a leftover vanishing mid-sweep is expected: failures are logged, and
/// the sweep goes on.
pub(crate) fn remove_stale() -> Result<()> {
    if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                let cgroup = Cgroup::at(entry.path());
                tracing::info!(cgroup = %name, "removing a stale testbed cgroup");
                if let Err(error) = cgroup.kill_all().and_then(|()| cgroup.remove_tree()) {
                    tracing::warn!(cgroup = %name, %error, "stale cgroup not removed (another sweep may have)");
                }
            }
        }
    }
    remove_stale_pins();
    let mut stale_runtimes: Vec<String> = crate::runtime::leftover_names()
        .into_iter()
        .filter(|name| stale(name))
        .filter_map(|name| name.split('-').next().map(String::from))
        .collect();
    stale_runtimes.sort();
    stale_runtimes.dedup();
    for prefix in stale_runtimes {
        tracing::info!(%prefix, "removing a stale container runtime's leftovers");
        crate::runtime::remove_leftovers(&prefix);
    }
    for name in Netns::list()? {
        if stale(&name) {
            tracing::info!(netns = %name, "removing a stale testbed namespace");
            if let Err(error) = Netns::named(name.clone()).delete() {
                tracing::warn!(netns = %name, %error, "stale namespace not removed (another sweep may have)");
            }
        }
    }
    Ok(())
}

/// Removes `<PIN_ROOT>/weft-*/<stale prefix>` directories. Removing a pin detaches its link once
/// nothing else holds it, and the owner is dead: so a crashed run's programs leave the cgroup
/// root and its pods' namespaces.
fn remove_stale_pins() {
    let Ok(bases) = std::fs::read_dir(PIN_ROOT) else {
        return;
    };
    for base in bases.flatten() {
        if !base
            .file_name()
            .to_string_lossy()
            .starts_with(PIN_BASE_PREFIX)
        {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(base.path()) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                tracing::info!(pins = %entry.path().display(), "removing stale testbed pins");
                if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                    tracing::warn!(pins = %entry.path().display(), %error, "stale pins not removed (another sweep may have)");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner_pid;

    #[test]
    fn owner_pid_reads_testbed_names_only() {
        let cases = [
            ("wft123x0", Some(123)),
            ("wft123x0-fabric", Some(123)),
            ("wft77x12-p-client", Some(77)),
            ("wft123", None),
            ("wftx0", None),
            ("wft12ax0", None),
            ("wft12x-fabric", None),
            ("other123x0", None),
            ("", None),
        ];
        for (name, want) in cases {
            assert_eq!(owner_pid(name), want, "{name}");
        }
    }
}
