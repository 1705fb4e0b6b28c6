//! The scale section: the real controller (its release binary, in Kubernetes mode) against a
//! generated cluster held by the fake API server, with node agents and waypoints as real delta
//! ADS clients over TLS in this process ([`proxies`]), at three sizes ([`cluster::Size::CURVE`];
//! a quick run takes the smallest). Per size: the time from the controller's start to every
//! proxy synced, the time from an edit made at the API server (a VirtualService, a pod added,
//! an AuthorizationPolicy) to every proxy it reaches having applied and ACKed it, the bytes
//! each push carries, and the controller's CPU time and memory.

mod cluster;
mod edits;
mod on_demand;
mod proxies;
mod report;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use weft_fake_apiserver::FakeApiServer;
use weft_test_support::temp::TempDir;

use crate::host::{process_cpu_seconds, status_kib};
pub use cluster::Size;
pub use report::report;

/// How long the controller may take to list the cluster and serve, and the proxies to sync.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(300);

/// Everything measured at one size.
#[derive(Debug)]
pub struct SizeFigures {
    pub size: Size,
    /// Controller process start to serving: every kind listed, the first translation done.
    pub ready: Duration,
    /// The proxies' start (once the controller serves) to every proxy having applied the full
    /// state of every type it subscribes to.
    pub synced: Duration,
    /// Controller CPU time from its start to every proxy synced, in seconds.
    pub startup_cpu: f64,
    /// Controller RSS once every proxy is synced, and its peak over the run, in KiB.
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    /// What one node agent receives at start: bytes and resources (mean over the agents).
    pub agent_initial_bytes: f64,
    pub agent_initial_resources: f64,
    /// What one waypoint receives at start, in bytes (mean over the waypoints).
    pub waypoint_initial_bytes: f64,
    pub edits: Vec<edits::EditFigures>,
    /// Controller CPU time per edit over the edit phase, in ms.
    pub cpu_per_edit_ms: f64,
    /// The same agents again, in on-demand mode, after the edits.
    pub on_demand: on_demand::OnDemandFigures,
}

/// Runs the section at the first `sizes` of the curve (by default the smallest in a quick run,
/// all of them otherwise).
pub fn run(quick: bool, sizes: Option<usize>) -> anyhow::Result<Vec<SizeFigures>> {
    let count = sizes.unwrap_or(if quick { 1 } else { Size::CURVE.len() });
    let sizes = &Size::CURVE[..count.min(Size::CURVE.len())];
    let edits_per_kind = if quick { 5 } else { 20 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut figures = Vec::new();
    for size in sizes {
        eprintln!("scale: {}", size.describe());
        let measured = runtime.block_on(measure(size, edits_per_kind))?;
        eprintln!(
            "scale: ready in {:?}, every proxy synced {:?} later",
            measured.ready, measured.synced
        );
        figures.push(measured);
    }
    Ok(figures)
}

/// The controller's process; killed when dropped.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

fn start_controller(dir: &Path, tls: SocketAddr, monitoring: SocketAddr) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("controller.log"))?;
    Command::new(weft_e2e::binary("controller")?)
        .args(["run", "--mode", "kubernetes"])
        .args(["--namespace", cluster::SYSTEM_NAMESPACE])
        .args(["--tls-address", &tls.to_string()])
        .args(["--monitoring-address", &monitoring.to_string()])
        .args(["--webhook-address", &free_port()?.to_string()])
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("WEFT_CONFIG_DIR")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting the controller")
}

fn is_ready(monitoring: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&monitoring, Duration::from_secs(1))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let mut response = String::new();
    stream
        .write_all(b"GET /ready HTTP/1.0\r\nHost: controller\r\n\r\n")
        .and_then(|()| stream.read_to_string(&mut response))
        .is_ok_and(|_| response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
}

/// Polls `probe` every 10 ms until it answers, or fails naming `what` after `within`.
pub(crate) async fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn measure(size: &Size, edits_per_kind: usize) -> anyhow::Result<SizeFigures> {
    let api = FakeApiServer::start().await?;
    for object in cluster::objects(size) {
        api.create(object)?;
    }
    let dir = TempDir::new("bench-scale");
    std::fs::write(dir.join("kubeconfig"), api.kubeconfig())?;
    let (tls, monitoring) = (free_port()?, free_port()?);

    let started = Instant::now();
    let controller = Controller(start_controller(dir.path(), tls, monitoring)?);
    let pid = controller.0.id();
    let log = dir.join("controller.log");
    let ready = eventually("the controller serving", START_DEADLINE, || {
        is_ready(monitoring).then(Instant::now)
    })
    .await
    .with_context(|| {
        format!(
            "controller log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    let root = eventually("the published root", START_DEADLINE, || {
        let map = api.get(
            "v1",
            "ConfigMap",
            cluster::SYSTEM_NAMESPACE,
            "istio-ca-root-cert",
        )?;
        map["data"]["root-cert.pem"].as_str().map(str::to_owned)
    })
    .await?;

    let (fleet, clients) = proxies::build(size, &api, &format!("https://{tls}"), &root)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let proxies_started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for client in clients {
        let mut stopped = stopped.clone();
        tasks.spawn(client.run_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    let synced = eventually("every proxy synced", START_DEADLINE, || fleet.all_synced()).await?;
    let startup_cpu = process_cpu_seconds(pid).context("the controller's CPU time")?;
    let rss_kib = status_kib(pid, "VmRSS").context("the controller's RSS")?;
    let initial = edits::initial_pushes(&fleet);

    let cpu_before = startup_cpu;
    let edits = edits::run(size, &api, &fleet, edits_per_kind).await?;
    let edit_count = edits.iter().map(|e| e.all_acked.len()).sum::<usize>();
    let cpu_after = process_cpu_seconds(pid).context("the controller's CPU time")?;
    let peak_rss_kib = status_kib(pid, "VmHWM").context("the controller's peak RSS")?;
    anyhow::ensure!(
        fleet.refused() == 0,
        "{} updates were refused (NACKed)",
        fleet.refused()
    );

    let _ = stop.send(true);
    while let Some(ended) = tasks.join_next().await {
        ended??;
    }
    let on_demand = on_demand::run(size, &api, &format!("https://{tls}"), &root, pid).await?;
    drop(controller);
    Ok(SizeFigures {
        size: *size,
        ready: ready - started,
        synced: synced.saturating_duration_since(proxies_started),
        startup_cpu,
        rss_kib,
        peak_rss_kib,
        agent_initial_bytes: initial.agent_bytes,
        agent_initial_resources: initial.agent_resources,
        waypoint_initial_bytes: initial.waypoint_bytes,
        edits,
        cpu_per_edit_ms: 1e3 * (cpu_after - cpu_before) / edit_count.max(1) as f64,
        on_demand,
    })
}
