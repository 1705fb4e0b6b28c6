//! `cargo xtask bench`: the mesh against a direct path, measured in the same run on the testbed.
//!
//! Across nodes, four pods: `client-direct` -> `server-direct` (not enrolled: plain networking)
//! and `client-mesh` -> `server-mesh` (enrolled: pod -> agent -> mTLS -> agent -> pod), the
//! clients on node1 and the servers on node2. Each figure is measured on both pairs and reported
//! with its ratio to direct. Then the same four pods on one node, twice: agents without and with
//! same-node acceleration (sockops + sk_msg). Then the L7 section ([`l7`]): direct, mesh L4,
//! through a waypoint that routes, and through nginx doing the same routing ([`nginx`]). Then
//! the ingress section ([`ingress`]): TLS termination by the ingress gateway and by nginx with
//! the same certificate and routes. Then the capture section ([`capture`]): enrollment latency per pod, and what the programs at the
//! cgroup root cost a process outside the mesh per connection. Then the scale section
//! ([`scale`]): the controller and its xDS clients at three cluster sizes. Then the node section
//! ([`node`]): one agent with up to 110 pods, and a waypoint's route table up to 2,000
//! services. Tools
//! run inside the pods: iperf3 (bulk TCP), wrk (HTTP rps and closed-loop latency) and this
//! binary's own fixed-rate client (`bench fixed-rate`: latency percentiles at a set request rate
//! on one keep-alive connection).

mod capture;
mod host;
mod https_load;
mod ingress;
mod l7;
mod load;
mod nginx;
mod node;
mod scale;
mod tls;

use std::{
    fmt::Write as _,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::Context;
use host::{NodesPinned, agent_cpu, agent_memory_kib, agent_pid};
use load::{fixed_rate, fixed_rate_client, wrk};
use weft_e2e::{Mesh, MeshOptions, PodSpec};

struct Settings {
    seconds: u32,
    rounds: usize,
    /// Skip the same-node meshes (`--cross-node-only`).
    cross_node_only: bool,
    /// Extra agent environment (`--agent-env NAME=VALUE`, repeatable).
    agent_env: Vec<(String, String)>,
    /// Only these figures (`--only throughput,rps1,fixed-rate,rps64,new-connections`).
    only: Option<Vec<String>>,
    /// Pin each node of the cross-node run to a CPU of its own (`--pin-nodes`).
    pin_nodes: bool,
    /// How many sizes of the scale section's curve to run, smallest first (`--scale-sizes N`,
    /// 1 to 3; by default 1 in a quick run, all 3 otherwise).
    scale_sizes: Option<usize>,
}

/// The figure groups `--only` selects from; `waypoint` is the whole L7 section, `scale` the
/// control plane at cluster sizes, `node` one node's proxies at pod and route counts, `tls` the
/// TLS providers, `ingress` TLS termination at the edge.
const GROUPS: [&str; 11] = [
    "throughput",
    "rps1",
    "fixed-rate",
    "rps64",
    "new-connections",
    "waypoint",
    "capture",
    "scale",
    "node",
    "tls",
    "ingress",
];

/// The groups measured on the L4 meshes (cross-node, same-node).
const L4_GROUPS: [&str; 5] = [
    "throughput",
    "rps1",
    "fixed-rate",
    "rps64",
    "new-connections",
];

impl Settings {
    fn wants(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|only| only.iter().any(|g| g == group))
    }

    fn wants_any(&self, groups: &[&str]) -> bool {
        groups.iter().any(|g| self.wants(g))
    }

    fn mesh_options(&self) -> MeshOptions {
        MeshOptions {
            agent_env: self.agent_env.clone(),
            // The access log stays on, as nginx's `access_log` in the comparison.
            mesh_config: weft_e2e::fixtures::STDOUT_ACCESS_LOG.to_owned(),
            ..MeshOptions::default()
        }
    }
}

/// One measurement on one path: the figure, and how much work it carried (requests, or GB for
/// throughput), so that the agents' CPU time can be put per unit of work.
struct Sample {
    value: f64,
    work: f64,
}

/// One measured figure on both paths.
struct Row {
    name: String,
    unit: &'static str,
    direct: f64,
    mesh: f64,
    /// Whether a larger value is better (throughput) or worse (latency).
    higher_is_better: bool,
    /// Both agents' CPU time per unit of work on the mesh path (ms per 1,000 requests, or s
    /// per GB), median over the rounds; the figure the machine's noise moves least.
    cpu: Option<(f64, &'static str)>,
    /// Per-round (direct, mesh) pairs.
    rounds: Vec<(f64, f64)>,
}

impl Row {
    /// mesh / direct (or mesh - direct for latencies) of one (direct, mesh) pair.
    fn compare(&self, (direct, mesh): (f64, f64)) -> f64 {
        if self.higher_is_better {
            100.0 * mesh / direct
        } else {
            mesh - direct
        }
    }

    /// The comparison of the medians, and the range of the per-round comparisons.
    fn comparison(&self) -> String {
        let overall = self.compare((self.direct, self.mesh));
        let per_round: Vec<f64> = self.rounds.iter().map(|&p| self.compare(p)).collect();
        let range = match (
            per_round.iter().copied().reduce(f64::min),
            per_round.iter().copied().reduce(f64::max),
        ) {
            (Some(low), Some(high)) if per_round.len() > 1 => {
                if self.higher_is_better {
                    format!(" ({low:.0}-{high:.0}%)")
                } else {
                    format!(" ({low:+.0} to {high:+.0})")
                }
            }
            _ => String::new(),
        };
        if self.higher_is_better {
            format!("{overall:.0}%{range}")
        } else {
            format!("{overall:+.0} {}{range}", self.unit)
        }
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// The four benchmark pods; the servers on `server_node`.
fn bench_pods(server_node: &str) -> Vec<PodSpec> {
    vec![
        PodSpec::client("client-direct", "node1", "bench").not_enrolled(),
        PodSpec::app("server-direct", server_node, "bench", "server-direct", "v1").not_enrolled(),
        PodSpec::client("client-mesh", "node1", "bench"),
        PodSpec::app("server-mesh", server_node, "bench", "server-mesh", "v1"),
    ]
}

const PAIRS: [(&str, &str); 2] = [
    ("client-direct", "server-direct"),
    ("client-mesh", "server-mesh"),
];

/// Medians of one figure over the rounds, on both paths, and the agents' CPU per unit of work on
/// the mesh path.
struct Measured {
    direct: f64,
    mesh: f64,
    /// (direct, mesh) of each round, measured back to back: their ratio (or difference) cancels
    /// the machine's slow drift, which moves both alike.
    rounds: Vec<(f64, f64)>,
    cpu_per_work: Option<f64>,
}

impl Measured {
    fn from_rounds(direct: Vec<f64>, mesh: Vec<f64>, cpu_per_work: Option<f64>) -> Self {
        Self {
            rounds: direct.iter().copied().zip(mesh.iter().copied()).collect(),
            direct: median(direct),
            mesh: median(mesh),
            cpu_per_work,
        }
    }
}

/// Measures `f` on both pairs, alternating, `rounds` times, and the agents' CPU time during each
/// mesh measurement.
fn both(
    mesh: &Mesh,
    rounds: usize,
    f: &mut dyn FnMut(&str, &str) -> anyhow::Result<Sample>,
) -> anyhow::Result<Measured> {
    let mut results = [Vec::new(), Vec::new()];
    let mut cpu = Vec::new();
    for _ in 0..rounds {
        // Alternate the paths so drift affects both alike.
        for (i, (client, server)) in PAIRS.iter().enumerate() {
            let before = agent_cpu(mesh);
            let sample = f(client, server)?;
            if *client == "client-mesh"
                && let (Some(before), Some(after)) = (before, agent_cpu(mesh))
                && sample.work > 0.0
            {
                cpu.push((after - before) / sample.work);
            }
            results[i].push(sample.value);
        }
    }
    let [direct, meshed] = results;
    Ok(Measured::from_rounds(
        direct,
        meshed,
        (!cpu.is_empty()).then(|| median(cpu)),
    ))
}

/// Agent figures of the cross-node run.
struct AgentFigures {
    idle_rss_kib: Option<u64>,
    /// Of the idle RSS: anonymous memory (heap, stacks) and file-backed pages (the binary's
    /// code and constants, shared libraries).
    idle_anon_kib: Option<u64>,
    idle_file_kib: Option<u64>,
    peak_rss_kib: Option<u64>,
}

/// CPU per 1,000 requests, in ms.
const PER_1K_REQUESTS: (f64, &str) = (1e6, "ms / 1k req");
/// CPU per GB carried, in s.
const PER_GB: (f64, &str) = (1.0, "s / GB");

fn cross_node(settings: &Settings, rows: &mut Vec<Row>) -> anyhow::Result<AgentFigures> {
    let mesh = Mesh::start(bench_pods("node2"), settings.mesh_options())?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss_kib = agent_memory_kib(&mesh, "node1", "VmRSS");
    let idle_anon_kib = agent_memory_kib(&mesh, "node1", "RssAnon");
    let idle_file_kib = agent_memory_kib(&mesh, "node1", "RssFile");
    let iperf_servers = start_iperf_servers(&mesh)?;
    let _pinned = if settings.pin_nodes {
        Some(NodesPinned::pin(&mesh)?)
    } else {
        None
    };
    let seconds = settings.seconds;
    let ip = |server: &str| mesh.pod(server).ip;
    let url = |server: &str| format!("http://{}:8080/", ip(server));
    common_rows(&mesh, settings, "", rows)?;
    let mut percentiles = [Vec::new(), Vec::new()];
    let fixed_rounds = if settings.wants("fixed-rate") {
        settings.rounds
    } else {
        0
    };
    let mut cpu = Vec::new();
    for _ in 0..fixed_rounds {
        for (i, (client, server)) in PAIRS.iter().enumerate() {
            let before = agent_cpu(&mesh);
            percentiles[i].push(fixed_rate(
                &mesh,
                client,
                &format!("{}:8080", ip(server)),
                FIXED_RATE,
                seconds,
            )?);
            if *client == "client-mesh"
                && let (Some(before), Some(after)) = (before, agent_cpu(&mesh))
            {
                cpu.push((after - before) / f64::from(FIXED_RATE * seconds));
            }
        }
    }
    let fixed_rate_cpu = (!cpu.is_empty()).then(|| median(cpu));
    for (index, name) in [(0, "p50"), (1, "p90"), (2, "p99")] {
        if fixed_rounds == 0 {
            break;
        }
        let pick = |path: usize| percentiles[path].iter().map(|p| p[index]).collect();
        push_row(
            rows,
            format!("HTTP {name} latency at {FIXED_RATE} req/s, 1 connection"),
            "µs",
            false,
            Measured::from_rounds(
                pick(0),
                pick(1),
                if index == 0 { fixed_rate_cpu } else { None },
            ),
            PER_1K_REQUESTS,
        );
    }
    // wrk at a number of connections, kept alive or new per request.
    let mut wrk_row = |wanted: &str, label: &str, connections: u32, new_per_request: bool| {
        if !settings.wants(wanted) {
            return anyhow::Ok(());
        }
        let measured = both(&mesh, settings.rounds, &mut |c, s| {
            let result = wrk(&mesh, c, &url(s), connections, seconds, new_per_request)?;
            Ok(Sample {
                value: result.rps,
                work: result.requests,
            })
        })?;
        push_row(rows, label.into(), "req/s", true, measured, PER_1K_REQUESTS);
        Ok(())
    };
    wrk_row("rps64", "HTTP rps, 64 keep-alive connections", 64, false)?;
    wrk_row(
        "new-connections",
        "HTTP rps, new connection per request",
        8,
        true,
    )?;
    let peak_rss_kib = agent_memory_kib(&mesh, "node1", "VmHWM");
    stop(iperf_servers);
    Ok(AgentFigures {
        idle_rss_kib,
        idle_anon_kib,
        idle_file_kib,
        peak_rss_kib,
    })
}

/// Same-node rows, with the agent's acceleration off or on.
fn same_node(settings: &Settings, acceleration: bool, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let mesh = Mesh::start(
        bench_pods("node1"),
        MeshOptions {
            acceleration,
            ..settings.mesh_options()
        },
    )?;
    let iperf_servers = start_iperf_servers(&mesh)?;
    let label = if acceleration {
        "acceleration on"
    } else {
        "acceleration off"
    };
    common_rows(&mesh, settings, &format!("same node, {label}: "), rows)?;
    stop(iperf_servers);
    Ok(())
}

/// Throughput, keep-alive rps and closed-loop p50 at one connection, each name after `prefix`.
fn common_rows(
    mesh: &Mesh,
    settings: &Settings,
    prefix: &str,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let seconds = settings.seconds;
    let ip = |server: &str| mesh.pod(server).ip;
    let url = |server: &str| format!("http://{}:8080/", ip(server));
    if settings.wants("throughput") {
        let measured = both(mesh, settings.rounds, &mut |c, s| {
            let gbps = mesh.iperf(c, ip(s), seconds)?;
            Ok(Sample {
                value: gbps,
                work: gbps * f64::from(seconds) / 8.0,
            })
        })?;
        push_row(
            rows,
            format!("{prefix}TCP throughput (iperf3, 1 stream)"),
            "Gbit/s",
            true,
            measured,
            PER_GB,
        );
    }
    if !settings.wants("rps1") {
        return Ok(());
    }
    // One wrk run gives both the rate and the closed-loop p50 of a single connection.
    let mut p50 = [Vec::new(), Vec::new()];
    let measured = both(mesh, settings.rounds, &mut |c, s| {
        let result = wrk(mesh, c, &url(s), 1, seconds, false)?;
        p50[usize::from(c == "client-mesh")].push(result.p50_us);
        Ok(Sample {
            value: result.rps,
            work: result.requests,
        })
    })?;
    push_row(
        rows,
        format!("{prefix}HTTP rps, 1 keep-alive connection"),
        "req/s",
        true,
        measured,
        PER_1K_REQUESTS,
    );
    let [direct, meshed] = p50;
    push_row(
        rows,
        format!("{prefix}HTTP p50 latency, 1 connection"),
        "µs",
        false,
        Measured::from_rounds(direct, meshed, None),
        PER_1K_REQUESTS,
    );
    Ok(())
}

fn push_row(
    rows: &mut Vec<Row>,
    name: String,
    unit: &'static str,
    higher: bool,
    measured: Measured,
    (scale, cpu_unit): (f64, &'static str),
) {
    eprintln!(
        "measured: {name}: direct {:.2}, mesh {:.2}",
        measured.direct, measured.mesh
    );
    rows.push(Row {
        name,
        unit,
        direct: measured.direct,
        mesh: measured.mesh,
        higher_is_better: higher,
        cpu: measured.cpu_per_work.map(|c| (c * scale, cpu_unit)),
        rounds: measured.rounds,
    });
}

fn start_iperf_servers(mesh: &Mesh) -> anyhow::Result<Vec<std::process::Child>> {
    let mut servers = Vec::new();
    for server in ["server-direct", "server-mesh"] {
        servers.push(mesh.spawn_in_pod(server, "iperf3", &["-s"])?);
    }
    std::thread::sleep(Duration::from_millis(500));
    Ok(servers)
}

fn stop(children: Vec<std::process::Child>) {
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Requests per second of the fixed-rate latency rows.
const FIXED_RATE: u32 = 1000;

/// Longest a `--hold` mesh stays up.
const HOLD_LIMIT: Duration = Duration::from_secs(3600);

/// `--hold` (the cross-node mesh) and `--hold-waypoint` (the L7 mesh, nginx running): writes
/// how to reach the mesh to `target/bench/hold` and keeps it until that file is removed (or an
/// hour has passed), for profiling by hand.
fn hold(mesh: &Mesh, target: &std::path::Path) -> anyhow::Result<()> {
    let mut info = String::new();
    writeln!(info, "prefix={}", mesh.testbed.prefix())?;
    for p in mesh.testbed.pods() {
        writeln!(
            info,
            "{}={} netns={} cgroup={} pids={:?}",
            p.name,
            p.ip,
            p.netns.name(),
            p.cgroup.path().display(),
            p.cgroup.procs().unwrap_or_default(),
        )?;
    }
    for node in mesh.testbed.nodes() {
        writeln!(
            info,
            "agent-{}={}",
            node.name,
            agent_pid(mesh, &node.name).unwrap_or(0)
        )?;
    }
    let file = target.join("hold");
    std::fs::write(&file, &info)?;
    eprintln!("{info}mesh held until {} is removed", file.display());
    let deadline = Instant::now() + HOLD_LIMIT;
    while file.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, command, address, rps, seconds] = &args[..]
        && command == "fixed-rate"
    {
        return fixed_rate_client(address, rps.parse()?, seconds.parse()?);
    }
    if let [_, command, services] = &args[..]
        && command == node::routes::MEMORY_COMMAND
    {
        return node::routes::memory_command(services);
    }
    if args.get(1).is_some_and(|a| a == "https-load") {
        return https_load::https_load_client(&args[2..]);
    }
    let quick = args.iter().any(|a| a == "--quick");
    let mut settings = if quick {
        Settings {
            seconds: 1,
            rounds: 1,
            cross_node_only: false,
            agent_env: Vec::new(),
            only: None,
            pin_nodes: false,
            scale_sizes: None,
        }
    } else {
        Settings {
            seconds: 10,
            rounds: 3,
            cross_node_only: false,
            agent_env: Vec::new(),
            only: None,
            pin_nodes: false,
            scale_sizes: None,
        }
    };
    let mut rest = args.iter().skip(1);
    let mut hold_mesh = false;
    let mut hold_waypoint = false;
    while let Some(arg) = rest.next() {
        let mut value = |name: &str| {
            rest.next()
                .with_context(|| format!("{name} needs a value"))
                .cloned()
        };
        match arg.as_str() {
            "--quick" => {}
            "--hold" => hold_mesh = true,
            "--hold-waypoint" => hold_waypoint = true,
            "--cross-node-only" => settings.cross_node_only = true,
            "--pin-nodes" => settings.pin_nodes = true,
            "--seconds" => settings.seconds = value("--seconds")?.parse()?,
            "--rounds" => settings.rounds = value("--rounds")?.parse()?,
            "--scale-sizes" => {
                let sizes: usize = value("--scale-sizes")?.parse()?;
                anyhow::ensure!(
                    (1..=scale::Size::CURVE.len()).contains(&sizes),
                    "--scale-sizes {sizes}: expected 1 to {}",
                    scale::Size::CURVE.len()
                );
                settings.scale_sizes = Some(sizes);
            }
            "--only" => {
                let groups: Vec<String> = value("--only")?.split(',').map(str::to_string).collect();
                if let Some(unknown) = groups.iter().find(|g| !GROUPS.contains(&g.as_str())) {
                    anyhow::bail!("--only {unknown:?}: expected some of {}", GROUPS.join(","));
                }
                settings.only = Some(groups);
            }
            "--agent-env" => {
                let pair = value("--agent-env")?;
                let (name, v) = pair
                    .split_once('=')
                    .with_context(|| format!("--agent-env {pair:?}: expected NAME=VALUE"))?;
                settings.agent_env.push((name.into(), v.into()));
            }
            other => anyhow::bail!(
                "unknown argument {other:?}; expected --quick, --hold, --hold-waypoint, --cross-node-only, \
                 --pin-nodes, --seconds N, --rounds N, --scale-sizes N, --only GROUPS, --agent-env NAME=VALUE"
            ),
        }
    }
    anyhow::ensure!(
        settings.seconds > 0 && settings.rounds > 0,
        "--seconds and --rounds must be at least 1"
    );
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&target)?;
    if hold_mesh {
        let mesh = Mesh::start(bench_pods("node2"), settings.mesh_options())?;
        return hold(&mesh, &target);
    }
    if hold_waypoint {
        let (mesh, _nginx) = l7::start(&settings)?;
        return hold(&mesh, &target);
    }
    let load_at_start = load_average();
    let mut rows: Vec<Row> = Vec::new();
    let agent = if settings.wants_any(&L4_GROUPS) {
        Some(cross_node(&settings, &mut rows)?)
    } else {
        None
    };
    let mut same_node_rows = Vec::new();
    if !settings.cross_node_only && settings.wants_any(&["throughput", "rps1"]) {
        for acceleration in [false, true] {
            same_node(&settings, acceleration, &mut same_node_rows)?;
        }
    }
    let waypoint = if !settings.cross_node_only && settings.wants("waypoint") {
        Some(l7::run(&settings)?)
    } else {
        None
    };
    let ingress = if !settings.cross_node_only && settings.wants("ingress") {
        Some(ingress::run(&settings)?)
    } else {
        None
    };
    let capture = if !settings.cross_node_only && settings.wants("capture") {
        Some(capture::run(&settings)?)
    } else {
        None
    };
    let scale = if !settings.cross_node_only && settings.wants("scale") {
        scale::run(quick, settings.scale_sizes)?
    } else {
        Vec::new()
    };
    let node = if !settings.cross_node_only && settings.wants("node") {
        Some(node::run(&settings, quick)?)
    } else {
        None
    };
    let tls = if settings.wants("tls") {
        Some(tls::run(&settings)?)
    } else {
        None
    };

    let machine = Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut report = String::new();
    writeln!(report, "# Benchmark: mesh vs direct, same run\n")?;
    writeln!(report, "- machine: {machine}, {cpus} CPUs")?;
    writeln!(
        report,
        "- load average (1 min) at start {load_at_start}, at end {}: the machine is shared, and \
         everything else running competes with the load generator, the apps and the agents",
        load_average()
    )?;
    let command: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    writeln!(
        report,
        "- command: `cargo xtask bench{}{}`",
        if command.is_empty() { "" } else { " " },
        command.join(" ")
    )?;
    writeln!(
        report,
        "- {} s per measurement, median of {} round(s); release binaries",
        settings.seconds, settings.rounds
    )?;
    if let Some(agent) = &agent {
        writeln!(
            report,
            "- path: pod (node1) -> agent -> HBONE mTLS -> agent -> pod (node2); direct: the same pods' path without enrollment"
        )?;
        if settings.pin_nodes {
            writeln!(
                report,
                "- placement: each node on a CPU of its own, like the machines it stands for (node1: \
                 its agent, the client pods and the load generators on CPU 0; node2: its agent and \
                 the server pods on CPU 1); the same-node runs are not pinned"
            )?;
        }
        writeln!(
            report,
            "- mesh / direct: of the medians, and in brackets the range over the rounds (each round \
             measures direct and mesh back to back)"
        )?;
        writeln!(
            report,
            "- agents' CPU: CPU time of both agents (their cgroups) during the mesh measurements, per unit of work\n"
        )?;
        table(&mut report, &rows)?;
        let kib = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
        writeln!(
            report,
            "\nNode agent (node1) RSS: idle {} KiB ({} KiB anonymous, {} KiB file-backed), peak {} KiB.",
            kib(agent.idle_rss_kib),
            kib(agent.idle_anon_kib),
            kib(agent.idle_file_kib),
            kib(agent.peak_rss_kib),
        )?;
    }
    if !same_node_rows.is_empty() {
        writeln!(
            report,
            "\n## Same node\n\nClient and server pods on node1: pod -> agent -> pod (no TLS), \
             without and with the sockops/sk_msg acceleration of the pod <-> agent hops.\n"
        )?;
        table(&mut report, &same_node_rows)?;
    }
    if let Some(waypoint) = &waypoint {
        l7::report(&mut report, waypoint)?;
    }
    if let Some(ingress) = &ingress {
        ingress::report(&mut report, ingress)?;
    }
    if let Some(capture) = &capture {
        capture::report(&mut report, capture)?;
    }
    scale::report(&mut report, &scale)?;
    if let Some(node) = &node {
        node::report(&mut report, node)?;
    }
    if let Some(tls) = &tls {
        tls::report(&mut report, tls)?;
    }
    print!("{report}");
    std::fs::write(target.join("report.md"), &report)?;
    eprintln!("report written to {}", target.join("report.md").display());
    Ok(())
}

/// The 1-minute load average, as /proc/loadavg shows it.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
}

fn table(report: &mut String, rows: &[Row]) -> std::fmt::Result {
    writeln!(
        report,
        "| figure | direct | mesh | mesh / direct | agents' CPU |"
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|")?;
    for row in rows {
        let ratio = row.comparison();
        let cpu = row
            .cpu
            .map_or(String::new(), |(value, unit)| format!("{value:.2} {unit}"));
        writeln!(
            report,
            "| {} ({}) | {:.2} | {:.2} | {} | {} |",
            row.name, row.unit, row.direct, row.mesh, ratio, cpu
        )?;
    }
    Ok(())
}
