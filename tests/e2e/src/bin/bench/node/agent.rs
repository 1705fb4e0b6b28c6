//! One node agent at three pod counts (up to 110, the kubelet's default `maxPods`): a fresh
//! mesh per count, every pod on node1 enrolled with an identity of its own (its own service
//! account, so the agent holds a certificate per pod), calling a server on node2 through the
//! mesh. Per count: the agent's RSS and open file descriptors with every pod enrolled, and
//! again once every pod has carried traffic, the `pod_added` latency of each pod with the others enrolled, and the time a
//! killed agent takes, restarted, to serve every pod again (process start to ready, the CNI's
//! snapshot resent), checked by a request from every pod afterwards.

use std::time::{Duration, Instant};

use anyhow::Context;
use node_agent::enrollment::EnrollmentClient;
use weft_e2e::{DEFAULT_HTTP_PORT, Mesh, PodSpec};

use crate::Settings;
use crate::host::{agent_pid, status_kib};

/// Pod counts of the curve; a quick run takes the first.
pub const PODS: [usize; 3] = [10, 50, 110];
/// Requests each pod makes on one connection, before the agent is measured.
pub const REQUESTS_PER_POD: u32 = 20;
const NAMESPACE: &str = "scale";
const SERVER: &str = "server";

/// What one pod count measured.
#[derive(Debug)]
pub struct AgentFigures {
    pub pods: usize,
    /// The agent's RSS and open file descriptors with every pod enrolled, before any traffic.
    pub idle_rss_kib: u64,
    pub idle_fds: usize,
    /// The agent's RSS and peak RSS after every pod's traffic, in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// Its open file descriptors then.
    pub fds: usize,
    /// `pod_added` -> ack, one per pod, in milliseconds.
    pub added_ms: Vec<f64>,
    /// A killed agent's restart to ready, serving every pod (snapshot resent).
    pub restart: Duration,
    /// After the restart, one request from every pod, one pod after the other.
    pub sweep_after_restart: Duration,
}

fn pod_name(i: usize) -> String {
    format!("pod-{i}")
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing the file descriptors of {pid}"))?
        .count())
}

/// Every pod's `requests` requests to the server on one connection, all answered 200.
fn traffic(mesh: &Mesh, pods: usize, requests: u32) -> anyhow::Result<()> {
    let server = mesh.testbed.pod(SERVER).ip;
    let url = format!("http://{server}:{DEFAULT_HTTP_PORT}/");
    for i in 0..pods {
        let pod = pod_name(i);
        let codes = mesh.curl_many(&pod, &url, requests, "%{http_code}", &[])?;
        anyhow::ensure!(
            codes.iter().all(|c| c == "200"),
            "{pod} -> {url}: {codes:?}\n{}",
            mesh.logs()
        );
    }
    Ok(())
}

/// Each pod removed and added again over a fresh enrollment connection (what a CNI ADD waits
/// for), the others staying enrolled: the add's latency, in milliseconds.
fn enrollment_latency(mesh: &Mesh, pods: usize) -> anyhow::Result<Vec<f64>> {
    let enrollments: Vec<_> = (0..pods)
        .map(|i| mesh.enrollment_of(&pod_name(i)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut client = EnrollmentClient::connect(&mesh.enrollment_socket("node1")).await?;
        client.snapshot(&enrollments).await?;
        let mut added = Vec::with_capacity(pods);
        for pod in &enrollments {
            client.remove(&pod.uid).await.context("pod_removed")?;
            let started = Instant::now();
            client.add(pod).await.context("pod_added")?;
            added.push(started.elapsed().as_secs_f64() * 1e3);
        }
        anyhow::Ok(added)
    })
}

fn measure(settings: &Settings, pods: usize) -> anyhow::Result<AgentFigures> {
    let mut specs: Vec<PodSpec> = (0..pods)
        .map(|i| PodSpec::client(&pod_name(i), "node1", NAMESPACE))
        .collect();
    specs.push(PodSpec::app(SERVER, "node2", NAMESPACE, SERVER, "v1"));
    let mut mesh = Mesh::start(specs, settings.mesh_options())?;
    let added_ms = enrollment_latency(&mesh, pods)?;
    let pid = agent_pid(&mesh, "node1").context("node1's agent")?;
    let idle_rss_kib = status_kib(pid, "VmRSS").context("the agent's RSS")?;
    let idle_fds = open_fds(pid)?;
    traffic(&mesh, pods, REQUESTS_PER_POD)?;
    let rss_kib = status_kib(pid, "VmRSS").context("the agent's RSS")?;
    let peak_rss_kib = status_kib(pid, "VmHWM").context("the agent's peak RSS")?;
    let fds = open_fds(pid)?;

    mesh.kill_agent("node1");
    let started = Instant::now();
    mesh.restart_agent("node1")?;
    let restart = started.elapsed();
    let started = Instant::now();
    traffic(&mesh, pods, 1)?;
    let sweep_after_restart = started.elapsed();
    Ok(AgentFigures {
        pods,
        idle_rss_kib,
        idle_fds,
        rss_kib,
        peak_rss_kib,
        fds,
        added_ms,
        restart,
        sweep_after_restart,
    })
}

/// Runs the agent part at its pod counts.
pub fn run(settings: &Settings, quick: bool) -> anyhow::Result<Vec<AgentFigures>> {
    let counts: &[usize] = if quick { &PODS[..1] } else { &PODS };
    counts
        .iter()
        .map(|&pods| {
            eprintln!("node: one agent with {pods} pods");
            measure(settings, pods)
        })
        .collect()
}
