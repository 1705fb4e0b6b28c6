//! `cargo xtask bench`: the mesh against a direct path, measured in the same run on the testbed.
//!
//! Four pods: `client-direct` -> `server-direct` (not enrolled: plain networking) and
//! `client-mesh` -> `server-mesh` (enrolled: pod -> agent -> mTLS -> agent -> pod), the clients on
//! node1 and the servers on node2. Each figure is measured on both pairs and reported with its
//! ratio to direct. Tools run inside the pods: iperf3 (bulk TCP), wrk (HTTP rps and latency).

use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::Context;
use weft_e2e::{Mesh, MeshOptions, PodSpec};

struct Settings {
    seconds: u32,
    rounds: usize,
}

/// One measured figure on both paths.
struct Row {
    name: String,
    unit: &'static str,
    direct: f64,
    mesh: f64,
    /// Whether a larger value is better (throughput) or worse (latency).
    higher_is_better: bool,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// (requests per second, p50 latency in µs) from wrk.
fn wrk(
    mesh: &Mesh,
    client: &str,
    url: &str,
    connections: u32,
    seconds: u32,
    close: bool,
) -> anyhow::Result<(f64, f64)> {
    let mut command = mesh.testbed.pod_command(client, "wrk");
    command.args([
        "-t",
        if connections > 1 { "2" } else { "1" },
        "-c",
        &connections.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--latency",
    ]);
    if close {
        command.args(["-H", "Connection: close"]);
    }
    let output = command.arg(url).output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("wrk output:\n{text}"))?;
    let p50 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("50%"))
        .and_then(|v| parse_duration_us(v.trim()))
        .with_context(|| format!("wrk latency:\n{text}"))?;
    Ok((rps, p50))
}

fn parse_duration_us(text: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = text.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1_000.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1_000_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

fn agent_rss_kib(mesh: &Mesh, node: &str) -> Option<u64> {
    let cgroup = &mesh.testbed.node(node).agent_cgroup;
    let pid = *cgroup.procs().ok()?.first()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn main() -> anyhow::Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let settings = if quick {
        Settings {
            seconds: 2,
            rounds: 1,
        }
    } else {
        Settings {
            seconds: 10,
            rounds: 3,
        }
    };
    let pods = vec![
        PodSpec::client("client-direct", "node1", "bench").not_enrolled(),
        PodSpec::app("server-direct", "node2", "bench", "server-direct", "v1").not_enrolled(),
        PodSpec::client("client-mesh", "node1", "bench"),
        PodSpec::app("server-mesh", "node2", "bench", "server-mesh", "v1"),
    ];
    let mesh = Mesh::start(pods, MeshOptions::default())?;
    std::thread::sleep(Duration::from_secs(1));
    let idle_rss = agent_rss_kib(&mesh, "node1");
    let mut iperf_servers = Vec::new();
    for server in ["server-direct", "server-mesh"] {
        iperf_servers.push(mesh.spawn_in_pod(server, "iperf3", &["-s"])?);
    }
    std::thread::sleep(Duration::from_millis(500));

    let pairs = [
        ("client-direct", "server-direct"),
        ("client-mesh", "server-mesh"),
    ];
    let mut rows: Vec<Row> = Vec::new();
    let mut measure = |name: &str,
                       unit: &'static str,
                       higher: bool,
                       f: &mut dyn FnMut(&str, &str) -> anyhow::Result<f64>|
     -> anyhow::Result<()> {
        let mut results = [Vec::new(), Vec::new()];
        for _ in 0..settings.rounds {
            // Alternate the paths so drift affects both alike.
            for (i, (client, server)) in pairs.iter().enumerate() {
                results[i].push(f(client, server)?);
            }
        }
        let [direct, meshed] = results;
        rows.push(Row {
            name: name.into(),
            unit,
            direct: median(direct),
            mesh: median(meshed),
            higher_is_better: higher,
        });
        eprintln!("measured: {name}");
        Ok(())
    };
    let seconds = settings.seconds;
    let ip = |server: &str| mesh.pod(server).ip;
    measure(
        "TCP throughput (iperf3, 1 stream)",
        "Gbit/s",
        true,
        &mut |c, s| mesh.iperf(c, ip(s), seconds),
    )?;
    measure(
        "HTTP rps, 1 keep-alive connection",
        "req/s",
        true,
        &mut |c, s| {
            wrk(
                &mesh,
                c,
                &format!("http://{}:8080/", ip(s)),
                1,
                seconds,
                false,
            )
            .map(|r| r.0)
        },
    )?;
    measure(
        "HTTP p50 latency, 1 connection",
        "µs",
        false,
        &mut |c, s| {
            wrk(
                &mesh,
                c,
                &format!("http://{}:8080/", ip(s)),
                1,
                seconds,
                false,
            )
            .map(|r| r.1)
        },
    )?;
    measure(
        "HTTP rps, 64 keep-alive connections",
        "req/s",
        true,
        &mut |c, s| {
            wrk(
                &mesh,
                c,
                &format!("http://{}:8080/", ip(s)),
                64,
                seconds,
                false,
            )
            .map(|r| r.0)
        },
    )?;
    measure(
        "HTTP rps, new connection per request",
        "req/s",
        true,
        &mut |c, s| {
            wrk(
                &mesh,
                c,
                &format!("http://{}:8080/", ip(s)),
                8,
                seconds,
                true,
            )
            .map(|r| r.0)
        },
    )?;
    let peak_rss = agent_rss_kib(&mesh, "node1");
    for mut server in iperf_servers {
        let _ = server.kill();
        let _ = server.wait();
    }

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
        "- command: `cargo xtask bench{}`",
        if quick { " --quick" } else { "" }
    )?;
    writeln!(
        report,
        "- {} s per measurement, median of {} round(s); release binaries",
        settings.seconds, settings.rounds
    )?;
    writeln!(
        report,
        "- path: pod (node1) -> agent -> HBONE mTLS -> agent -> pod (node2); direct: the same pods' path without enrollment\n"
    )?;
    writeln!(report, "| figure | direct | mesh | mesh / direct |")?;
    writeln!(report, "|---|---:|---:|---:|")?;
    for row in &rows {
        let ratio = if row.higher_is_better {
            format!("{:.0}%", 100.0 * row.mesh / row.direct)
        } else {
            format!("+{:.0} {}", row.mesh - row.direct, row.unit)
        };
        writeln!(
            report,
            "| {} ({}) | {:.2} | {:.2} | {} |",
            row.name, row.unit, row.direct, row.mesh, ratio
        )?;
    }
    writeln!(
        report,
        "\nNode agent RSS: idle {} KiB, after the load {} KiB.",
        idle_rss.map_or("?".into(), |v| v.to_string()),
        peak_rss.map_or("?".into(), |v| v.to_string())
    )?;
    print!("{report}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    std::fs::create_dir_all(&target)?;
    std::fs::write(target.join("report.md"), &report)?;
    eprintln!("report written to {}", target.join("report.md").display());
    Ok(())
}
