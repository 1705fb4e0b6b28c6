//! The scale section's node agents in on-demand mode (`XDS_ON_DEMAND`): the same cluster and
//! controller, each agent subscribing to its node's workloads only, then asking for one
//! service on another node as its first connection there would (the service's VIP, answered
//! with the service and its endpoints).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use weft_fake_apiserver::FakeApiServer;
use weft_proto::{ADDRESS_TYPE_URL, address_subscription};

use super::cluster::{self, Size};
use super::{START_DEADLINE, edits, eventually, proxies};
use crate::host::process_cpu_seconds;

/// Bursts of demands the controller's CPU time is measured over (the process's clock counts in
/// 10 ms ticks: one burst at the smallest size is about one tick).
const CPU_ROUNDS: usize = 8;

/// What the on-demand agents received, at one size.
#[derive(Debug)]
pub struct OnDemandFigures {
    /// The agents' start to every agent synced.
    pub synced: Duration,
    /// One agent's first push (both types): bytes and resources (mean over the agents).
    pub initial_bytes: f64,
    pub initial_resources: f64,
    /// One service fetched on demand: bytes and resources of the answer, per agent.
    pub fetch_bytes: f64,
    pub fetch_resources: f64,
    /// From the demand to its answer applied, one per agent (all at once).
    pub fetch_latency: Vec<Duration>,
    /// The controller's CPU time per demand answered, in ms, over that burst and
    /// [`CPU_ROUNDS`] more like it (each agent asking for another service of the next node).
    pub fetch_cpu_ms: f64,
}

pub async fn run(
    size: &Size,
    api: &FakeApiServer,
    xds_uri: &str,
    root_pem: &str,
    controller_pid: u32,
) -> anyhow::Result<OnDemandFigures> {
    let fleet = proxies::agent_fleet(size.agents);
    let mut demands = Vec::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for a in 0..size.agents {
        let client = proxies::agent(api, xds_uri, root_pem, (a, &fleet), true)?;
        demands.push(client.demand());
        let mut stopped = stopped.clone();
        tasks.spawn(client.run_until(async move {
            let _ = stopped.wait_for(|s| *s).await;
        }));
    }
    let synced = eventually("every on-demand agent synced", START_DEADLINE, || {
        fleet.all_synced()
    })
    .await?;
    let initial = edits::initial_pushes(&fleet);
    let applied_before: Vec<usize> = fleet.logs().iter().map(|l| l.applied.len()).collect();

    // Service `(a + 1) mod agents` has its pods on the next node (pod k backs service
    // k mod services and runs on node k mod agents; services are a multiple of agents).
    let cpu_before = process_cpu_seconds(controller_pid).context("the controller's CPU time")?;
    let fetch_latency = burst(size, &demands, 0).await?;
    let (mut fetch_bytes, mut fetch_resources) = (0, 0);
    for (log, before) in fleet.logs().iter().zip(&applied_before) {
        for applied in &log.applied[*before..] {
            fetch_bytes += applied.bytes;
            fetch_resources += applied.resources;
        }
    }
    // Service `(a + 1) mod agents + r * agents` is on the same next node, another one each
    // round (as many rounds as the cluster has services per node).
    let rounds = CPU_ROUNDS.min(size.services / size.agents.max(1) - 1);
    for round in 1..=rounds {
        burst(size, &demands, round).await?;
    }
    let cpu_after = process_cpu_seconds(controller_pid).context("the controller's CPU time")?;
    anyhow::ensure!(
        fleet.refused() == 0,
        "{} on-demand updates were refused (NACKed)",
        fleet.refused()
    );
    let _ = stop.send(true);
    while let Some(ended) = tasks.join_next().await {
        ended??;
    }
    let agents = size.agents.max(1) as f64;
    Ok(OnDemandFigures {
        synced: synced.saturating_duration_since(started),
        initial_bytes: initial.agent_bytes,
        initial_resources: initial.agent_resources,
        fetch_bytes: fetch_bytes as f64 / agents,
        fetch_resources: fetch_resources as f64 / agents,
        fetch_latency,
        fetch_cpu_ms: 1e3 * (cpu_after - cpu_before) / ((rounds + 1) as f64 * agents),
    })
}

/// Every agent asks at once for service `(a + 1) mod agents + round * agents` (on the next
/// node) by its VIP, as its first connection there would; the time each waited.
async fn burst(
    size: &Size,
    demands: &[weft_xds::Demand],
    round: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut fetches = tokio::task::JoinSet::new();
    for (a, demand) in demands.iter().enumerate() {
        let service = (a + 1) % size.agents + round * size.agents;
        let vip: IpAddr = cluster::service_vip(service).parse()?;
        let demand = demand.clone();
        fetches.spawn(async move {
            let asked = Instant::now();
            tokio::time::timeout(
                START_DEADLINE,
                demand.request(ADDRESS_TYPE_URL, &address_subscription("", vip)),
            )
            .await
            .context("no answer to a demand")?
            .context("a demand failed")?;
            anyhow::Ok(asked.elapsed())
        });
    }
    let mut latency = Vec::new();
    while let Some(fetched) = fetches.join_next().await {
        latency.push(fetched??);
    }
    Ok(latency)
}
