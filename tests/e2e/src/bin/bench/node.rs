//! The node section (`--only node`): what one node's proxies hold as their load grows, at three
//! sizes each so that the growth shows. [`agent`]: one node agent with up to 110 enrolled pods
//! on the testbed (memory and file descriptors, enrollment latency, restart). [`routes`]: a
//! waypoint's route table up to 2,000 services and 20,000 routes, in this process with the
//! waypoint's own store and the request pipeline's routing steps (apply time, memory, routing
//! cost per request).

pub mod agent;
pub mod policies;
pub mod routes;

use std::fmt::Write as _;

use agent::AgentFigures;
use policies::PolicyFigures;
use routes::RouteFigures;

use crate::Settings;

pub struct Figures {
    pub agent: Vec<AgentFigures>,
    pub routes: Vec<RouteFigures>,
    pub policies: Vec<PolicyFigures>,
}

pub fn run(settings: &Settings, quick: bool) -> anyhow::Result<Figures> {
    let routes = routes::run(quick)?;
    let policies = policies::run(quick)?;
    let agent = agent::run(settings, quick)?;
    Ok(Figures {
        agent,
        routes,
        policies,
    })
}

/// The value at quantile `q` (0..=1), by the nearest rank.
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One table: a column per size, then the growth per unit of work between neighbours.
fn table(
    out: &mut String,
    sizes: &[String],
    growth_header: &str,
    rows: &[(String, Vec<f64>, Vec<String>)],
) -> std::fmt::Result {
    write!(out, "\n| figure |")?;
    for size in sizes {
        write!(out, " {size} |")?;
    }
    for pair in sizes.windows(2) {
        write!(out, " {growth_header} {} → {} |", pair[0], pair[1])?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "|---|{}",
        "---:|".repeat(sizes.len() + sizes.len().saturating_sub(1))
    )?;
    for (name, values, growth) in rows {
        write!(out, "| {name} |")?;
        for value in values {
            write!(out, " {value:.2} |")?;
        }
        for g in growth {
            write!(out, " {g} |")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `(b - a) / (work_b - work_a)` for each neighbouring pair: the cost of one more unit.
fn per_unit(values: &[f64], work: &[f64]) -> Vec<String> {
    values
        .windows(2)
        .zip(work.windows(2))
        .map(|(v, w)| format!("{:+.2}", (v[1] - v[0]) / (w[1] - w[0])))
        .collect()
}

/// The ratio of each neighbouring pair: 1.00 is flat.
fn ratio(values: &[f64]) -> Vec<String> {
    values
        .windows(2)
        .map(|v| format!("×{:.2}", v[1] / v[0]))
        .collect()
}

pub fn report(out: &mut String, figures: &Figures) -> std::fmt::Result {
    if !figures.agent.is_empty() {
        let agent = &figures.agent;
        writeln!(
            out,
            "\n## Node: one agent and its enrolled pods\n\n\
             A fresh mesh per pod count: every pod on node1 enrolled, each with its own service \
             account (a certificate of its own), node1's agent measured with every pod enrolled, \
             then again after each pod made {} requests on one connection to a server on node2 \
             through the mesh. `pod_added`: \
             each pod removed and added again over the enrollment socket, the others enrolled. \
             Restart: node1's agent killed (SIGKILL), started again, the CNI's snapshot resent, \
             until ready (it serves every pod it adopted); then one request from every pod, \
             one after the other, all answered 200. Growth columns: the change per added pod \
             (memory, descriptors) or the ratio (latencies; ×1.00 is flat).",
            agent::REQUESTS_PER_POD
        )?;
        let sizes: Vec<String> = agent.iter().map(|a| format!("{} pods", a.pods)).collect();
        let work: Vec<f64> = agent.iter().map(|a| a.pods as f64).collect();
        let column = |f: &dyn Fn(&AgentFigures) -> f64| agent.iter().map(f).collect::<Vec<_>>();
        let idle_rss = column(&|a| a.idle_rss_kib as f64);
        let idle_fds = column(&|a| a.idle_fds as f64);
        let rss = column(&|a| a.rss_kib as f64);
        let peak = column(&|a| a.peak_rss_kib as f64);
        let fds = column(&|a| a.fds as f64);
        let p50 = column(&|a| quantile(&a.added_ms, 0.5));
        let p99 = column(&|a| quantile(&a.added_ms, 0.99));
        let restart = column(&|a| a.restart.as_secs_f64() * 1e3);
        let sweep = column(&|a| a.sweep_after_restart.as_secs_f64() * 1e3);
        let rows = vec![
            (
                "agent RSS, every pod enrolled, no traffic yet (KiB)".to_owned(),
                idle_rss.clone(),
                per_unit(&idle_rss, &work),
            ),
            (
                "agent open file descriptors, no traffic yet".to_owned(),
                idle_fds.clone(),
                per_unit(&idle_fds, &work),
            ),
            (
                "agent RSS after every pod's traffic (KiB)".to_owned(),
                rss.clone(),
                per_unit(&rss, &work),
            ),
            (
                "agent peak RSS (KiB)".to_owned(),
                peak.clone(),
                per_unit(&peak, &work),
            ),
            (
                "agent open file descriptors after the traffic".to_owned(),
                fds.clone(),
                per_unit(&fds, &work),
            ),
            (
                "pod_added → ack, p50 (ms)".to_owned(),
                p50.clone(),
                ratio(&p50),
            ),
            (
                "pod_added → ack, p99 (ms)".to_owned(),
                p99.clone(),
                ratio(&p99),
            ),
            (
                "killed agent restarted to ready (ms)".to_owned(),
                restart.clone(),
                per_unit(&restart, &work),
            ),
            (
                "then one request from every pod, in turn (ms)".to_owned(),
                sweep.clone(),
                per_unit(&sweep, &work),
            ),
        ];
        table(out, &sizes, "per pod", &rows)?;
    }
    if !figures.routes.is_empty() {
        let routes = &figures.routes;
        writeln!(
            out,
            "\n## Node: a waypoint's route table\n\n\
             A generated configuration in the bench process, applied to the waypoint's own \
             store: per service one VIP, one HTTP port and a cluster of 3 endpoints; half the \
             services routed by {} URI-prefix routes each, half by plain service routing, so 10 \
             routes per service. Apply: validation, conversion and publication, the first into \
             an empty store and a replacement (median of 5). Memory: a fresh process's RSS \
             growth from before the message is built to the store holding it (the allocator may \
             keep some of the freed message). Routing decision: what the request pipeline does \
             per request (the tunnel's target by VIP, the service's route selection, the \
             cluster), over 4,096 requests spread over the services and their routes, mean of up \
             to 200,000 decisions. At the edge: the same services' routes as the ingress \
             gateway's virtual hosts, one per service hostname on one HTTP server; the \
             request's Host chooses the virtual host, then its routes are tried. Growth columns: the change per added service, or the ratio \
             (×1.00 is flat).",
            routes::ROUTES_PER_ROUTED_SERVICE
        )?;
        let sizes: Vec<String> = routes
            .iter()
            .map(|r| format!("{} services, {} routes", r.services, r.routes))
            .collect();
        let work: Vec<f64> = routes.iter().map(|r| r.services as f64).collect();
        let column = |f: &dyn Fn(&RouteFigures) -> f64| routes.iter().map(f).collect::<Vec<_>>();
        let encoded = column(&|r| r.encoded_bytes as f64 / 1024.0);
        let first = column(&|r| r.first_apply.as_secs_f64() * 1e3);
        let replace = column(&|r| r.replace_apply.as_secs_f64() * 1e3);
        let rss = column(&|r| r.rss_kib as f64);
        let routed = column(&|r| r.routed_ns);
        let plain = column(&|r| r.plain_ns);
        let scan = column(&|r| r.plain_scan_ns);
        let edge = column(&|r| r.edge_ns);
        let edge_scan = column(&|r| r.edge_scan_ns);
        let rows = vec![
            (
                "configuration, encoded (KiB)".to_owned(),
                encoded.clone(),
                per_unit(&encoded, &work),
            ),
            (
                "first apply (ms)".to_owned(),
                first.clone(),
                per_unit(&first, &work),
            ),
            (
                "replacing apply (ms)".to_owned(),
                replace.clone(),
                per_unit(&replace, &work),
            ),
            (
                "RSS held (KiB)".to_owned(),
                rss.clone(),
                per_unit(&rss, &work),
            ),
            (
                "routing decision, routed service (ns)".to_owned(),
                routed.clone(),
                ratio(&routed),
            ),
            (
                "routing decision, plain service (ns)".to_owned(),
                plain.clone(),
                ratio(&plain),
            ),
            (
                "the same, clusters scanned as before the index (ns)".to_owned(),
                scan.clone(),
                ratio(&scan),
            ),
            (
                "at the edge, a virtual host per service: routed request (ns)".to_owned(),
                edge.clone(),
                ratio(&edge),
            ),
            (
                "the same, every virtual host ranked as before the index (ns)".to_owned(),
                edge_scan.clone(),
                ratio(&edge_scan),
            ),
        ];
        table(out, &sizes, "per service", &rows)?;
    }
    if !figures.policies.is_empty() {
        let policies = &figures.policies;
        writeln!(
            out,
            "\n## Node: the agent's L4 authorization of a connection\n\n\
             The agent's own store and check (`authorize_connection`) in the bench process: the \
             destination pod selected by two policies, one policy for its namespace, one for the \
             mesh; every other policy scoped to other namespaces ({} of them) or their workloads. \
             Mean of up to {} checks of an allowed connection. Baseline: every policy walked, as \
             before the store indexed them. Growth columns: the ratio (×1.00 is flat).",
            policies::NAMESPACES_OF_OTHERS,
            policies::DECISIONS
        )?;
        let sizes: Vec<String> = policies
            .iter()
            .map(|p| format!("{} policies", p.policies))
            .collect();
        let indexed: Vec<f64> = policies.iter().map(|p| p.indexed_ns).collect();
        let scan: Vec<f64> = policies.iter().map(|p| p.scan_ns).collect();
        let rows = vec![
            (
                "one connection's check (ns)".to_owned(),
                indexed.clone(),
                ratio(&indexed),
            ),
            (
                "the same, every policy walked as before the index (ns)".to_owned(),
                scan.clone(),
                ratio(&scan),
            ),
        ];
        table(out, &sizes, "growth", &rows)?;
    }
    Ok(())
}
