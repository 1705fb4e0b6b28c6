//! Edits made at the API server while every proxy watches, and what each one cost: the time
//! until every proxy it reached had applied (and so ACKed) it, and the bytes pushed.
//!
//! An edit is made; the proxies it must reach (every agent for a pod or a policy, the edited
//! namespace's waypoint for a VirtualService) are awaited, then the fleet must stay quiet for
//! [`QUIET`] (longer than the controller's longest debounce), so that every push the edit caused
//! anywhere is counted, also at proxies it did not need to reach.

use std::time::{Duration, Instant};

use weft_fake_apiserver::FakeApiServer;

use super::cluster::{self, Size};
use super::eventually;
use super::proxies::{Fleet, Kind};

/// No push anywhere for this long ends an edit's window (the controller debounces at most 1 s,
/// then the xDS server's own debounce).
const QUIET: Duration = Duration::from_millis(1500);
/// How long the proxies an edit must reach may take.
const EDIT_DEADLINE: Duration = Duration::from_secs(60);

/// The kinds of edit, made in turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditKind {
    /// The route of the VirtualService in the first waypoint's namespace renamed.
    VirtualService,
    /// A pod added to a service, on a node.
    PodAdded,
    /// An AuthorizationPolicy's allowed principal changed.
    Policy,
}

impl EditKind {
    pub const ALL: [EditKind; 3] = [Self::VirtualService, Self::PodAdded, Self::Policy];

    pub fn describe(self) -> &'static str {
        match self {
            Self::VirtualService => "VirtualService edited",
            Self::PodAdded => "pod added",
            Self::Policy => "AuthorizationPolicy edited",
        }
    }
}

/// What the edits of one kind cost.
#[derive(Debug)]
pub struct EditFigures {
    pub kind: EditKind,
    /// Per edit: the time until the last proxy it reached had applied it.
    pub all_acked: Vec<Duration>,
    /// Per edit and proxy reached: the time until that proxy had applied it.
    pub per_proxy: Vec<Duration>,
    /// Per edit: proxies reached, and bytes pushed to all of them.
    pub reached: Vec<usize>,
    pub bytes: Vec<usize>,
}

/// Mean bytes and resources of the first full state, per agent and per waypoint.
pub struct InitialPushes {
    pub agent_bytes: f64,
    pub agent_resources: f64,
    pub waypoint_bytes: f64,
}

pub fn initial_pushes(fleet: &Fleet) -> InitialPushes {
    let logs = fleet.logs();
    let mut sums = [(0usize, 0usize, 0usize); 2];
    for (log, kind) in logs.iter().zip(&fleet.kinds) {
        let sum = &mut sums[usize::from(*kind == Kind::Waypoint)];
        sum.0 += 1;
        for applied in log.applied.iter().filter(|a| a.full_state) {
            sum.1 += applied.bytes;
            sum.2 += applied.resources;
        }
    }
    let mean = |total: usize, count: usize| total as f64 / count.max(1) as f64;
    InitialPushes {
        agent_bytes: mean(sums[0].1, sums[0].0),
        agent_resources: mean(sums[0].2, sums[0].0),
        waypoint_bytes: mean(sums[1].1, sums[1].0),
    }
}

/// Makes edit `round` of `kind` at the API server.
fn make(size: &Size, api: &FakeApiServer, kind: EditKind, round: usize) -> anyhow::Result<()> {
    match kind {
        EditKind::VirtualService => {
            api.update(cluster::virtual_service(&format!("edit-{round}")))?;
        }
        EditKind::PodAdded => {
            let index = size.pods + round;
            api.create(cluster::app_pod(size, index, &format!("added-{round}")))?;
        }
        EditKind::Policy => {
            let index = (round * 13) % size.policies;
            api.update(cluster::policy(size, index, &format!("-edit-{round}")))?;
        }
    }
    Ok(())
}

/// The proxies an edit must reach.
fn must_reach(fleet: &Fleet, kind: EditKind) -> Vec<usize> {
    match kind {
        // The edited namespace's waypoint is the first one.
        EditKind::VirtualService => fleet
            .kinds
            .iter()
            .position(|k| *k == Kind::Waypoint)
            .into_iter()
            .collect(),
        EditKind::PodAdded | EditKind::Policy => fleet
            .kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == Kind::Agent)
            .map(|(i, _)| i)
            .collect(),
    }
}

/// Makes `per_kind` edits of every kind, in turn, and measures each.
pub async fn run(
    size: &Size,
    api: &FakeApiServer,
    fleet: &Fleet,
    per_kind: usize,
) -> anyhow::Result<Vec<EditFigures>> {
    let mut figures: Vec<EditFigures> = EditKind::ALL
        .iter()
        .map(|&kind| EditFigures {
            kind,
            all_acked: Vec::new(),
            per_proxy: Vec::new(),
            reached: Vec::new(),
            bytes: Vec::new(),
        })
        .collect();
    // Whatever the start still had in flight ends first.
    quiet(fleet).await?;
    for round in 0..per_kind {
        for (k, &kind) in EditKind::ALL.iter().enumerate() {
            let seen: Vec<usize> = fleet.logs().iter().map(|l| l.applied.len()).collect();
            let edited = Instant::now();
            make(size, api, kind, round)?;
            let must = must_reach(fleet, kind);
            eventually(
                &format!("{} (round {round}) reaching its proxies", kind.describe()),
                EDIT_DEADLINE,
                || {
                    let logs = fleet.logs();
                    must.iter()
                        .all(|&p| logs[p].applied.len() > seen[p])
                        .then_some(())
                },
            )
            .await?;
            quiet(fleet).await?;
            let logs = fleet.logs();
            let figure = &mut figures[k];
            let mut slowest = Duration::ZERO;
            let (mut reached, mut bytes) = (0, 0);
            for (log, &from) in logs.iter().zip(&seen) {
                let new = &log.applied[from..];
                let Some(last) = new.last() else { continue };
                let latency = last.at.saturating_duration_since(edited);
                reached += 1;
                bytes += new.iter().map(|a| a.bytes).sum::<usize>();
                slowest = slowest.max(latency);
                figure.per_proxy.push(latency);
            }
            figure.all_acked.push(slowest);
            figure.reached.push(reached);
            figure.bytes.push(bytes);
        }
    }
    Ok(figures)
}

/// Waits until no proxy has applied anything for [`QUIET`].
async fn quiet(fleet: &Fleet) -> anyhow::Result<()> {
    eventually("the proxies to go quiet", EDIT_DEADLINE, || {
        let last = fleet
            .logs()
            .iter()
            .filter_map(|l| l.applied.last().map(|a| a.at))
            .max();
        last.is_none_or(|at| at.elapsed() >= QUIET).then_some(())
    })
    .await
}
