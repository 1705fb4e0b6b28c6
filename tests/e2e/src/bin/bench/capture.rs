//! The capture section: what enrolling costs a pod, and what the capture programs cost the
//! processes that are not in the mesh.
//!
//! - Enrollment latency: the time from `pod_added` to the agent's ack, which a CNI plugin waits
//!   for before the pod's containers start (and the same for `pod_removed`), measured on a real
//!   agent over its enrollment socket, pod after pod.
//! - Connect cost for processes outside the mesh: `connect4`, `connect6` and `sockops` run at the
//!   cgroup root, so every TCP connection of the node runs them and pays for the netns lookup.
//!   Measured as the time of a loopback-free TCP connection set-up (connect, the peer's accept,
//!   reset) in a network namespace nobody enrolled, with and without one agent's programs
//!   attached, in alternating rounds (so the machine's drift moves both alike). The agent is told
//!   that namespace is the node's own, the dearer case: a connect of the node's also looks its
//!   destination up among the enrolled pods (the node's own connections to pods are let through).

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::Context;
use node_agent::{
    ebpf::{Redirection, RedirectionConfig, cgroup2_root, netns_cookie_of},
    enrollment::EnrollmentClient,
};
use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_testbed::Topology;

use crate::Settings;

/// Pods enrolled one after the other per round.
const ENROLLED_PODS: usize = 8;
/// Connections per measurement of the connect cost.
const CONNECTIONS: usize = 3_000;
/// Where the connect-cost measurement pins its programs (swept with the testbed after a crash).
const PIN_BASE: &str = "weft-bench";

/// What the capture section measured.
pub struct Figures {
    /// pod_added -> ack, one sample per pod and round, in milliseconds.
    added_ms: Vec<f64>,
    /// pod_removed -> ack, in milliseconds.
    removed_ms: Vec<f64>,
    /// Microseconds per connection set-up without and with the programs, per round.
    connect_us: Vec<(f64, f64)>,
    /// Connect programs other software had attached at the root while measuring.
    others_at_root: usize,
}

pub fn run(settings: &Settings) -> anyhow::Result<Figures> {
    let (added_ms, removed_ms) = enrollment_latency(settings)?;
    let (connect_us, others_at_root) = connect_cost(settings)?;
    Ok(Figures {
        added_ms,
        removed_ms,
        connect_us,
        others_at_root,
    })
}

fn enrollment_latency(settings: &Settings) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let pods: Vec<PodSpec> = (0..ENROLLED_PODS)
        .map(|i| PodSpec::client(&format!("pod-{i}"), "node1", "bench").not_enrolled())
        .collect();
    let names: Vec<String> = pods.iter().map(|p| p.name.clone()).collect();
    let mesh = Mesh::start(pods, MeshOptions::default())?;
    let enrollments: Vec<_> = names.iter().map(|n| mesh.enrollment_of(n)).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    runtime.block_on(async {
        let mut client = EnrollmentClient::connect(&mesh.enrollment_socket("node1")).await?;
        client.snapshot(&[]).await?;
        for _ in 0..settings.rounds {
            for pod in &enrollments {
                let started = Instant::now();
                client.add(pod).await.context("pod_added")?;
                added.push(started.elapsed().as_secs_f64() * 1e3);
            }
            for pod in &enrollments {
                let started = Instant::now();
                client.remove(&pod.uid).await.context("pod_removed")?;
                removed.push(started.elapsed().as_secs_f64() * 1e3);
            }
        }
        anyhow::Ok(())
    })?;
    Ok((added, removed))
}

fn connect_cost(settings: &Settings) -> anyhow::Result<(Vec<(f64, f64)>, usize)> {
    let testbed = Topology::new().node("node1", &["probe"]).build()?;
    let probe = testbed.pod("probe");
    let cgroup_root = cgroup2_root().map_err(anyhow::Error::msg)?;
    let config = RedirectionConfig {
        pin_root: testbed.pin_dir(PIN_BASE),
        acceleration: false,
        cgroup_root: cgroup_root.clone(),
        node_netns: netns_cookie_of(&probe.netns.path())?,
    };
    let others_at_root = connect_programs_at(&cgroup_root)?;
    let address: SocketAddr = (probe.ip, 7100).into();
    let netns = probe.netns.clone();
    let measure = move || -> anyhow::Result<f64> {
        let netns = netns.clone();
        netns.run(move || connection_setup_us(address))?
    };
    // One warm-up pass fills caches and the listener's code paths.
    measure()?;
    let mut rounds = Vec::new();
    for _ in 0..settings.rounds.max(3) {
        let without = measure()?;
        let redirection = Redirection::open(config.clone()).context("loading the programs")?;
        let with = measure()?;
        redirection.uninstall().context("removing the programs")?;
        rounds.push((without, with));
    }
    Ok((rounds, others_at_root))
}

/// Mean time of a TCP connection set-up to `address` (a listener in the same namespace, on its
/// non-loopback address): connect, accept, reset.
fn connection_setup_us(address: SocketAddr) -> anyhow::Result<f64> {
    let listener = TcpListener::bind(address).with_context(|| format!("binding {address}"))?;
    let started = Instant::now();
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
        let (server, _) = listener.accept()?;
        // Reset rather than close: no TIME_WAIT, so the rounds never run out of ports.
        socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO))?;
        drop((client, server));
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / CONNECTIONS as f64)
}

/// How many connect4 programs are attached at the root (others' agents and tests among them).
fn connect_programs_at(root: &std::path::Path) -> anyhow::Result<usize> {
    let output = std::process::Command::new("bpftool")
        .args(["cgroup", "show"])
        .arg(root)
        .output()
        .context("running bpftool")?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.contains("cgroup_inet4_connect"))
        .count())
}

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

pub fn report(out: &mut String, figures: &Figures) -> std::fmt::Result {
    writeln!(
        out,
        "\n## Capture\n\nEnrollment over the agent's socket, {ENROLLED_PODS} pods per round, one \
         after the other (what a CNI ADD waits for before the pod's containers start):\n"
    )?;
    writeln!(
        out,
        "| message -> ack | samples | p50 (ms) | p90 (ms) | max (ms) |"
    )?;
    writeln!(out, "|---|---:|---:|---:|---:|")?;
    for (name, samples) in [
        ("pod_added", &figures.added_ms),
        ("pod_removed", &figures.removed_ms),
    ] {
        writeln!(
            out,
            "| {name} | {} | {:.2} | {:.2} | {:.2} |",
            samples.len(),
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 1.0)
        )?;
    }
    let without: Vec<f64> = figures.connect_us.iter().map(|r| r.0).collect();
    let with: Vec<f64> = figures.connect_us.iter().map(|r| r.1).collect();
    let deltas: Vec<f64> = figures.connect_us.iter().map(|(a, b)| b - a).collect();
    writeln!(
        out,
        "\nTCP connection set-up (connect, accept, reset) of a process outside the mesh, {CONNECTIONS} \
         connections per round, without and with one agent's programs at the cgroup root ({} \
         other connect programs were attached there):\n",
        figures.others_at_root
    )?;
    writeln!(
        out,
        "| without (µs) | with (µs) | cost per connection (µs, median; range over {} rounds) |",
        deltas.len()
    )?;
    writeln!(out, "|---:|---:|---:|")?;
    writeln!(
        out,
        "| {:.2} | {:.2} | {:+.2} ({:+.2} .. {:+.2}) |",
        percentile(&without, 0.5),
        percentile(&with, 0.5),
        percentile(&deltas, 0.5),
        percentile(&deltas, 0.0),
        percentile(&deltas, 1.0)
    )
}
