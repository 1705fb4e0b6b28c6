//! The L7 rows: one mesh in which the same HTTP load runs direct, through the mesh at L4, through
//! the waypoint and through nginx doing the waypoint's routing, each path measured in every
//! round back to back with the others.
//!
//! Three nodes, so that every hop a proxy adds crosses the fabric:
//! - node1: `client-direct` (not enrolled) and `client` (enrolled);
//! - node2: `server-direct` (not enrolled); `backend-v1`, `backend-v2` behind Service `backend`,
//!   which uses the waypoint; `plain-v1`, `plain-v2` behind Service `plain`, which does not;
//! - node3: the waypoint's pod, and `nginx`, an enrolled pod running nginx.
//!
//! The paths:
//! - direct: `client-direct` -> `server-direct`;
//! - mesh L4: `client` -> agent -> HBONE -> agent -> `plain-vN` (the agent's round robin);
//! - waypoint: `client` -> agent -> HBONE -> waypoint -> HBONE -> agent -> `backend-vN`, routed by
//!   a VirtualService (`end-user: jason` to subset v2, the rest split 50/50 over v1 and v2) and
//!   a DestinationRule defining the subsets;
//! - nginx: `client` -> agent -> HBONE -> agent -> nginx -> agent -> HBONE -> agent ->
//!   `plain-vN`, nginx configured with the same routes over the same kind of backends
//!   ([`super::nginx`]).
//!
//! The backends of the waypoint and of nginx are two pairs of identical pods on the same node:
//! the pods of a Service that uses a waypoint accept traffic only from the waypoint, so nginx
//! cannot share them.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context;
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};

use super::host::{agent_cpu, cgroup_cpu_seconds, status_kib};
use super::load::{fixed_rate, wrk};
use super::nginx::{self, Nginx, NginxRoutes};
use super::{FIXED_RATE, Settings, median};

const WAYPOINT_VIP: &str = "10.96.0.30";
const PLAIN_VIP: &str = "10.96.0.31";
const NGINX_VIP: &str = "10.96.0.32";
const WAYPOINT: &str = "waypoint";
const NGINX: &str = "nginx";
/// Where the waypoint and nginx run.
const PROXY_NODE: &str = "node3";
/// The user whose requests both proxies send to v2.
const HEADER_USER: &str = "jason";
/// The share of the other requests both proxies send to v1.
const V1_PERCENT: u32 = 50;

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: backend
  namespace: bench
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.30
  selector: {app: backend}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: bench}
spec:
  clusterIP: 10.96.0.31
  selector: {app: plain}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Service
metadata: {name: nginx, namespace: bench}
spec:
  clusterIP: 10.96.0.32
  selector: {app: nginx}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: backend, namespace: bench}
spec:
  host: backend.bench.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: backend, namespace: bench}
spec:
  hosts: [backend]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: backend, subset: v2}}]
  - name: split
    route:
    - {destination: {host: backend, subset: v1}, weight: 50}
    - {destination: {host: backend, subset: v2}, weight: 50}
"#;

/// One way from a client to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L7Path {
    Direct,
    MeshL4,
    Waypoint,
    Nginx,
}

const PATHS: [L7Path; 4] = [
    L7Path::Direct,
    L7Path::MeshL4,
    L7Path::Waypoint,
    L7Path::Nginx,
];

impl L7Path {
    fn index(self) -> usize {
        self as usize
    }

    fn client(self) -> &'static str {
        match self {
            L7Path::Direct => "client-direct",
            _ => "client",
        }
    }

    /// `host:port` the client sends to.
    fn address(self, mesh: &Mesh) -> String {
        match self {
            L7Path::Direct => format!("{}:8080", mesh.pod("server-direct").ip),
            L7Path::MeshL4 => format!("{PLAIN_VIP}:80"),
            L7Path::Waypoint => format!("{WAYPOINT_VIP}:80"),
            L7Path::Nginx => format!("{NGINX_VIP}:80"),
        }
    }
}

fn pods() -> Vec<PodSpec> {
    vec![
        PodSpec::client("client-direct", "node1", "bench").not_enrolled(),
        PodSpec::client("client", "node1", "bench"),
        PodSpec::app("server-direct", "node2", "bench", "server-direct", "v1").not_enrolled(),
        PodSpec::app("backend-v1", "node2", "bench", "backend", "v1"),
        PodSpec::app("backend-v2", "node2", "bench", "backend", "v2"),
        PodSpec::app("plain-v1", "node2", "bench", "plain", "v1"),
        PodSpec::app("plain-v2", "node2", "bench", "plain", "v2"),
        PodSpec::waypoint(WAYPOINT, PROXY_NODE, "bench"),
        PodSpec::client(NGINX, PROXY_NODE, "bench"),
    ]
}

/// CPU seconds of the mesh's parts: every agent together, the agent of the proxies' node
/// (node3) alone, the waypoint's pod, nginx's pod.
#[derive(Debug, Clone, Copy, Default)]
struct CpuTimes {
    agents: f64,
    proxy_node_agent: f64,
    waypoint: f64,
    nginx: f64,
}

impl CpuTimes {
    fn now(mesh: &Mesh) -> Option<Self> {
        Some(Self {
            agents: agent_cpu(mesh)?,
            proxy_node_agent: cgroup_cpu_seconds(&mesh.testbed.node(PROXY_NODE).agent_cgroup)?,
            waypoint: cgroup_cpu_seconds(&mesh.pod(WAYPOINT).cgroup)?,
            nginx: cgroup_cpu_seconds(&mesh.pod(NGINX).cgroup)?,
        })
    }

    /// Per 1,000 requests, in ms, of the time between `self` and `after`.
    fn per_1k_requests(self, after: Self, requests: f64) -> Self {
        let scale = 1e6 / requests;
        Self {
            agents: (after.agents - self.agents) * scale,
            proxy_node_agent: (after.proxy_node_agent - self.proxy_node_agent) * scale,
            waypoint: (after.waypoint - self.waypoint) * scale,
            nginx: (after.nginx - self.nginx) * scale,
        }
    }
}

/// What one run of a load on one path measured: its figures, and the requests it carried.
struct Run {
    values: Vec<f64>,
    requests: f64,
}

/// Every round of a load on every path: `values[path][round][figure]`, and the median CPU per
/// 1,000 requests on each path.
struct Measured {
    values: [Vec<Vec<f64>>; 4],
    cpu: [Option<CpuTimes>; 4],
}

/// Runs `load` on every path, `rounds` times, the paths back to back within a round.
fn measure(
    mesh: &Mesh,
    rounds: usize,
    load: &mut dyn FnMut(L7Path) -> anyhow::Result<Run>,
) -> anyhow::Result<Measured> {
    let mut values: [Vec<Vec<f64>>; 4] = Default::default();
    let mut cpu: [Vec<CpuTimes>; 4] = Default::default();
    for _ in 0..rounds {
        for path in PATHS {
            let before = CpuTimes::now(mesh);
            let run = load(path).with_context(|| format!("{path:?}"))?;
            if let (Some(before), Some(after)) = (before, CpuTimes::now(mesh))
                && run.requests > 0.0
            {
                cpu[path.index()].push(before.per_1k_requests(after, run.requests));
            }
            values[path.index()].push(run.values);
        }
    }
    let cpu = cpu.map(|samples| {
        (!samples.is_empty()).then(|| CpuTimes {
            agents: median(samples.iter().map(|c| c.agents).collect()),
            proxy_node_agent: median(samples.iter().map(|c| c.proxy_node_agent).collect()),
            waypoint: median(samples.iter().map(|c| c.waypoint).collect()),
            nginx: median(samples.iter().map(|c| c.nginx).collect()),
        })
    });
    Ok(Measured { values, cpu })
}

/// One figure on every path.
pub struct L7Row {
    name: String,
    unit: &'static str,
    higher_is_better: bool,
    /// `rounds[path]`: the figure in each round.
    rounds: [Vec<f64>; 4],
    /// CPU per 1,000 requests on each path (rows that carried a load).
    cpu: Option<[Option<CpuTimes>; 4]>,
}

impl L7Row {
    fn median(&self, path: L7Path) -> f64 {
        median(self.rounds[path.index()].clone())
    }

    /// `path` against `base`: the ratio (rates) or the difference (latencies) of the medians,
    /// and in brackets the range of the per-round comparisons.
    fn comparison(&self, path: L7Path, base: L7Path) -> String {
        let compare = |base: f64, value: f64| {
            if self.higher_is_better {
                100.0 * value / base
            } else {
                value - base
            }
        };
        let overall = compare(self.median(base), self.median(path));
        let per_round: Vec<f64> = self.rounds[base.index()]
            .iter()
            .zip(&self.rounds[path.index()])
            .map(|(&b, &v)| compare(b, v))
            .collect();
        let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
        let high = per_round.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let range = if per_round.len() > 1 {
            if self.higher_is_better {
                format!(" ({low:.0}-{high:.0}%)")
            } else {
                format!(" ({low:+.0} to {high:+.0})")
            }
        } else {
            String::new()
        };
        if self.higher_is_better {
            format!("{overall:.0}%{range}")
        } else {
            format!("{overall:+.0} {}{range}", self.unit)
        }
    }
}

/// Resident memory of the waypoint and of nginx (its master and workers together), in KiB.
#[derive(Default)]
pub struct ProxyMemory {
    waypoint_idle: Option<MemoryStatus>,
    waypoint_peak_kib: Option<u64>,
    nginx_idle_kib: Option<u64>,
    nginx_peak_kib: Option<u64>,
}

#[derive(Clone, Copy)]
struct MemoryStatus {
    rss: u64,
    anon: u64,
    file: u64,
}

fn pod_pids(mesh: &Mesh, pod: &str) -> Vec<u32> {
    mesh.pod(pod).cgroup.procs().unwrap_or_default()
}

fn waypoint_memory(mesh: &Mesh) -> Option<MemoryStatus> {
    let pid = *pod_pids(mesh, WAYPOINT).first()?;
    Some(MemoryStatus {
        rss: status_kib(pid, "VmRSS")?,
        anon: status_kib(pid, "RssAnon")?,
        file: status_kib(pid, "RssFile")?,
    })
}

/// The sum of `field` over nginx's processes (pages they share are counted in each).
fn nginx_memory_kib(mesh: &Mesh, field: &str) -> Option<u64> {
    let pids = pod_pids(mesh, NGINX);
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&pid| status_kib(pid, field)).sum()
}

/// What the L7 section measured.
pub struct L7Report {
    rows: Vec<L7Row>,
    memory: ProxyMemory,
    workers: usize,
}

/// Checks that both proxies really route: `end-user: jason` reaches only v2, other requests
/// reach both v1 and v2.
fn check_routes(mesh: &Mesh) -> anyhow::Result<()> {
    for (name, vip) in [("waypoint", WAYPOINT_VIP), ("nginx", NGINX_VIP)] {
        let url = format!("http://{vip}/");
        let write_out = "%{http_code} %header{x-weft-version}";
        let header = format!("end-user: {HEADER_USER}");
        let matched = mesh.curl_many("client", &url, 10, write_out, &["-H", &header])?;
        anyhow::ensure!(
            matched.iter().all(|l| l == "200 v2"),
            "{name}: requests with {header:?} must all reach v2: {matched:?}"
        );
        // 40 requests split 50/50 all landing on one side: one chance in 2^39.
        let split = mesh.curl_many("client", &url, 40, write_out, &[])?;
        for version in ["v1", "v2"] {
            anyhow::ensure!(
                split.iter().any(|l| *l == format!("200 {version}")),
                "{name}: the weighted split never reached {version}: {split:?}"
            );
        }
        anyhow::ensure!(
            split.iter().all(|l| l.starts_with("200 ")),
            "{name}: the weighted split answered errors: {split:?}"
        );
    }
    Ok(())
}

/// Starts the L7 mesh and nginx and waits until both proxies serve.
pub fn start(settings: &Settings) -> anyhow::Result<(Mesh, Nginx)> {
    let mesh = Mesh::start(
        pods(),
        MeshOptions {
            config: format!("{CONFIG}---\n{}", waypoint_resources("bench")),
            ..settings.mesh_options()
        },
    )?;
    let workers = proxy_workers();
    let backend = |pod: &str| format!("{}:8080", mesh.pod(pod).ip);
    let routes = NginxRoutes {
        workers,
        v1: backend("plain-v1"),
        v2: backend("plain-v2"),
        header_user: HEADER_USER,
        v1_percent: V1_PERCENT,
    };
    let nginx = Nginx::start(&mesh, NGINX, nginx::PORT, |ip, dir| {
        nginx::config(&routes, ip, dir)
    })?;
    // The agents learn the service's waypoint from the controller.
    for vip in [WAYPOINT_VIP, PLAIN_VIP, NGINX_VIP] {
        anyhow::ensure!(
            mesh.eventually(Duration::from_secs(10), || mesh
                .curl_with("client", &[&format!("http://{vip}/")])
                .status
                == 200),
            "{vip} is not reachable\n{}",
            mesh.logs()
        );
    }
    Ok((mesh, nginx))
}

/// Worker threads of the waypoint, and so worker processes of nginx: the waypoint's runtime has
/// one per CPU.
pub fn proxy_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub fn run(settings: &Settings) -> anyhow::Result<L7Report> {
    let (mesh, nginx) = start(settings)?;
    let workers = proxy_workers();
    std::thread::sleep(Duration::from_secs(1));
    let mut memory = ProxyMemory {
        waypoint_idle: waypoint_memory(&mesh),
        nginx_idle_kib: nginx_memory_kib(&mesh, "VmRSS"),
        ..ProxyMemory::default()
    };
    check_routes(&mesh)?;
    let seconds = settings.seconds;
    let mut rows = Vec::new();
    let url = |path: L7Path| format!("http://{}/", path.address(&mesh));

    let one = measure(&mesh, settings.rounds, &mut |path| {
        let result = wrk(&mesh, path.client(), &url(path), 1, seconds, false)?;
        Ok(Run {
            values: vec![result.rps, result.p50_us],
            requests: result.requests,
        })
    })?;
    rows.push(row(
        "HTTP rps, 1 keep-alive connection",
        "req/s",
        true,
        &one,
        0,
        true,
    ));
    rows.push(row(
        "HTTP p50 latency, 1 connection",
        "µs",
        false,
        &one,
        1,
        false,
    ));

    let fixed = measure(&mesh, settings.rounds, &mut |path| {
        let [p50, p90, p99] = fixed_rate(
            &mesh,
            path.client(),
            &path.address(&mesh),
            FIXED_RATE,
            seconds,
        )?;
        Ok(Run {
            values: vec![p50, p90, p99],
            requests: f64::from(FIXED_RATE * seconds),
        })
    })?;
    for (index, name) in ["p50", "p90", "p99"].iter().enumerate() {
        rows.push(row(
            &format!("HTTP {name} latency at {FIXED_RATE} req/s, 1 connection"),
            "µs",
            false,
            &fixed,
            index,
            index == 0,
        ));
    }

    let many = measure(&mesh, settings.rounds, &mut |path| {
        let result = wrk(&mesh, path.client(), &url(path), 64, seconds, false)?;
        Ok(Run {
            values: vec![result.rps],
            requests: result.requests,
        })
    })?;
    rows.push(row(
        "HTTP rps, 64 keep-alive connections",
        "req/s",
        true,
        &many,
        0,
        true,
    ));
    for row in &rows {
        eprintln!(
            "measured: {}: direct {:.2}, mesh L4 {:.2}, waypoint {:.2}, nginx {:.2}",
            row.name,
            row.median(L7Path::Direct),
            row.median(L7Path::MeshL4),
            row.median(L7Path::Waypoint),
            row.median(L7Path::Nginx),
        );
    }
    memory.waypoint_peak_kib = pod_pids(&mesh, WAYPOINT)
        .first()
        .and_then(|&pid| status_kib(pid, "VmHWM"));
    memory.nginx_peak_kib = nginx_memory_kib(&mesh, "VmHWM");
    drop(nginx);
    Ok(L7Report {
        rows,
        memory,
        workers,
    })
}

fn row(
    name: &str,
    unit: &'static str,
    higher_is_better: bool,
    measured: &Measured,
    figure: usize,
    with_cpu: bool,
) -> L7Row {
    L7Row {
        name: name.to_owned(),
        unit,
        higher_is_better,
        rounds: std::array::from_fn(|path| {
            measured.values[path]
                .iter()
                .map(|values| values[figure])
                .collect()
        }),
        cpu: with_cpu.then_some(measured.cpu),
    }
}

/// The section of the report.
pub fn report(report: &mut String, l7: &L7Report) -> std::fmt::Result {
    writeln!(
        report,
        "\n## Through a waypoint, and nginx doing the same job\n\n\
         The same HTTP load on four paths, in one mesh of three nodes, each round measuring the \
         paths back to back:\n\n\
         - direct: client (node1) -> server (node2), neither enrolled;\n\
         - mesh L4: client -> agent -> HBONE mTLS -> agent -> server (a Service without a waypoint);\n\
         - waypoint: client -> agent -> HBONE mTLS -> waypoint (node3) -> HBONE mTLS -> agent -> \
         server, for a Service labelled `istio.io/use-waypoint` whose VirtualService sends \
         `end-user: {HEADER_USER}` to subset v2 and splits the rest {V1_PERCENT}/{} over v1 and \
         v2 (a DestinationRule defines the subsets);\n\
         - nginx: client -> agent -> HBONE mTLS -> agent -> nginx (node3, a pod enrolled like any \
         other) -> agent -> HBONE mTLS -> agent -> server, nginx configured with the same routes \
         (`map` on the header, `split_clients` at random per request), HTTP/1.1 kept-alive \
         upstream connections, the same forwarded headers and an access-log line per request, \
         {} worker processes as the waypoint has {} worker threads.\n\n\
         Before measuring, the bench checks that both proxies route (`end-user: {HEADER_USER}` \
         reaches only v2, other requests reach both). The backends are identical pods on node2 \
         (two for the waypoint, two for nginx and mesh L4: a waypoint's backends accept only the \
         waypoint). Both proxied paths carry mTLS on both sides; the waypoint does its own TLS \
         and HTTP/2 (HBONE), nginx's is done by node3's agent, so the nginx path has two more \
         agent passes, whose CPU is in the agents' column, and the waypoint's own CPU includes \
         its TLS.\n",
        100 - V1_PERCENT,
        l7.workers,
        l7.workers,
    )?;
    writeln!(
        report,
        "| figure | direct | mesh L4 | waypoint | nginx | waypoint / direct | waypoint / nginx |"
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|")?;
    for row in &l7.rows {
        writeln!(
            report,
            "| {} ({}) | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
            row.name,
            row.unit,
            row.median(L7Path::Direct),
            row.median(L7Path::MeshL4),
            row.median(L7Path::Waypoint),
            row.median(L7Path::Nginx),
            row.comparison(L7Path::Waypoint, L7Path::Direct),
            row.comparison(L7Path::Waypoint, L7Path::Nginx),
        )?;
    }
    writeln!(
        report,
        "\nCPU time per 1,000 requests (ms), median over the rounds, from the cgroups: all agents \
         together, the proxy's pod (the waypoint process; nginx's master and workers), and for \
         nginx also with node3's agent, which does the TLS and HTTP/2 of nginx's two hops as the \
         waypoint does its own.\n"
    )?;
    writeln!(
        report,
        "| load | mesh L4: agents | waypoint path: agents | waypoint | nginx path: agents | nginx | nginx + node3's agent | waypoint / nginx | waypoint / (nginx + node3's agent) |"
    )?;
    writeln!(report, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    for row in &l7.rows {
        let Some(cpu) = &row.cpu else { continue };
        let at = |path: L7Path| cpu[path.index()].unwrap_or_default();
        let (l4, waypoint, nginx) = (at(L7Path::MeshL4), at(L7Path::Waypoint), at(L7Path::Nginx));
        let nginx_hop = nginx.nginx + nginx.proxy_node_agent;
        writeln!(
            report,
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% | {:.0}% |",
            row.name,
            l4.agents,
            waypoint.agents,
            waypoint.waypoint,
            nginx.agents,
            nginx.nginx,
            nginx_hop,
            100.0 * waypoint.waypoint / nginx.nginx,
            100.0 * waypoint.waypoint / nginx_hop,
        )?;
    }
    let kib = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
    let idle = l7.memory.waypoint_idle;
    writeln!(
        report,
        "\nWaypoint RSS: idle {} KiB ({} KiB anonymous, {} KiB file-backed), peak {} KiB. nginx \
         (master and {} workers, summed, shared pages counted in each): idle {} KiB, peak {} KiB.",
        kib(idle.map(|m| m.rss)),
        kib(idle.map(|m| m.anon)),
        kib(idle.map(|m| m.file)),
        kib(l7.memory.waypoint_peak_kib),
        l7.workers,
        kib(l7.memory.nginx_idle_kib),
        kib(l7.memory.nginx_peak_kib),
    )
}
