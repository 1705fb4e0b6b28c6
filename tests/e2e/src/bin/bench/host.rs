//! What the bench reads from the host about the processes under test: memory from
//! `/proc/<pid>/status`, CPU from cgroups, and CPU pinning of the nodes.

use std::process::Command;

use weft_e2e::Mesh;

pub(crate) fn agent_pid(mesh: &Mesh, node: &str) -> Option<u32> {
    mesh.testbed
        .node(node)
        .agent_cgroup
        .procs()
        .ok()?
        .first()
        .copied()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`, `RssAnon`, `RssFile`).
pub(crate) fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A `/proc/<pid>/status` field of `node`'s agent, in KiB.
pub(crate) fn agent_memory_kib(mesh: &Mesh, node: &str, field: &str) -> Option<u64> {
    status_kib(agent_pid(mesh, node)?, field)
}

/// CPU time used so far by everything in a cgroup (`cpu.stat`), in seconds.
pub(crate) fn cgroup_cpu_seconds(cgroup: &weft_testbed::Cgroup) -> Option<f64> {
    let stat = std::fs::read_to_string(cgroup.path().join("cpu.stat")).ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|usec| usec / 1e6)
}

/// Each node of the cross-node run on a CPU of its own, like the separate machines it stands
/// for: its agent and its pods' processes (and, through this process, the clients it starts on
/// node1) may run only there.
///
/// Unpinned, the direct path's one-connection figure was bimodal: about 30 µs per request when
/// the scheduler happened to put client and server on one CPU, about 77 µs when on two (a
/// cross-CPU wakeup costs some 25 µs on this VM), so direct rps moved between 12k and 31k from
/// run to run and every ratio with it. Between real nodes, client and server never share a
/// CPU. Pinned, the ranges over the rounds were tight on a quiet machine (50-51% at one
/// connection) but wide under other engineers' load (57-103%): a pinned process cannot move
/// away from a CPU that a compile occupies. So it is opt-in. Dropping this restores the
/// process's own affinity.
pub(crate) struct NodesPinned {
    all_cpus: String,
}

impl NodesPinned {
    pub(crate) fn pin(mesh: &Mesh) -> anyhow::Result<Self> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let all_cpus = format!("0-{}", cpus - 1);
        let cpu_of = |node: &str| {
            mesh.testbed
                .nodes()
                .iter()
                .position(|n| n.name == node)
                .map_or(0, |i| i % cpus)
        };
        for node in mesh.testbed.nodes() {
            let cpu = cpu_of(&node.name);
            let mut groups = vec![&node.agent_cgroup];
            groups.extend(
                mesh.testbed
                    .pods()
                    .iter()
                    .filter(|p| p.node == node.name)
                    .map(|p| &p.cgroup),
            );
            for group in groups {
                for pid in group.procs()? {
                    set_affinity(&["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])?;
                }
            }
        }
        // Clients are started from this process's main thread and inherit its affinity.
        set_affinity(&[
            "-p",
            "-c",
            &cpu_of("node1").to_string(),
            &std::process::id().to_string(),
        ])?;
        eprintln!(
            "pinned: node1 -> cpu {}, node2 -> cpu {}",
            cpu_of("node1"),
            cpu_of("node2")
        );
        Ok(Self { all_cpus })
    }
}

impl Drop for NodesPinned {
    fn drop(&mut self) {
        let _ = set_affinity(&["-p", "-c", &self.all_cpus, &std::process::id().to_string()]);
    }
}

pub(crate) fn set_affinity(args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("taskset").args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "taskset {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Every agent's CPU seconds so far, together.
pub(crate) fn agent_cpu(mesh: &Mesh) -> Option<f64> {
    let mut total = 0.0;
    for node in mesh.testbed.nodes() {
        total += cgroup_cpu_seconds(&node.agent_cgroup)?;
    }
    Some(total)
}

/// CPU time (user and system) a process has used so far, in seconds.
pub(crate) fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields counted from after its closing parenthesis,
    // utime and stime are the 12th and 13th.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: f64 = fields.next()?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()? as f64;
    Some((utime + stime) / ticks)
}
