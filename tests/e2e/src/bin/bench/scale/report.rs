//! The scale section of the report: one table per figure, a column per size, and the growth
//! from one size to the next set against the growth of the work (pods), so that a figure
//! growing faster than the cluster shows.

use std::fmt::Write as _;
use std::time::Duration;

use super::SizeFigures;
use super::edits::EditFigures;

/// The value at quantile `q` (0..=1) of `values`, by the nearest rank.
fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mean(values: impl IntoIterator<Item = usize>) -> f64 {
    let (sum, count) = values
        .into_iter()
        .fold((0usize, 0usize), |(s, c), v| (s + v, c + 1));
    sum as f64 / count.max(1) as f64
}

fn edit_of(figures: &SizeFigures, kind: usize) -> &EditFigures {
    &figures.edits[kind]
}

/// One row: a figure at every size.
struct Line {
    name: String,
    values: Vec<f64>,
    /// Whether the figure is expected to grow with the cluster (then the growth column sets it
    /// against the pods' growth), or is a latency meant to stay flat.
    grows: bool,
}

fn lines(figures: &[SizeFigures]) -> Vec<Line> {
    let line = |name: &str, grows: bool, f: &dyn Fn(&SizeFigures) -> f64| Line {
        name: name.to_owned(),
        values: figures.iter().map(f).collect(),
        grows,
    };
    let mut lines = vec![
        line("controller start to serving (ms)", true, &|f| ms(f.ready)),
        line("proxies started to every proxy synced (ms)", true, &|f| {
            ms(f.synced)
        }),
        line(
            "controller CPU, start to every proxy synced (s)",
            true,
            &|f| f.startup_cpu,
        ),
        line("controller RSS, every proxy synced (MiB)", true, &|f| {
            f.rss_kib as f64 / 1024.0
        }),
        line("controller peak RSS (MiB)", true, &|f| {
            f.peak_rss_kib as f64 / 1024.0
        }),
        line("one node agent's first push (KiB)", true, &|f| {
            f.agent_initial_bytes / 1024.0
        }),
        line("one node agent's first push (resources)", true, &|f| {
            f.agent_initial_resources
        }),
        line("one waypoint's first push (KiB)", true, &|f| {
            f.waypoint_initial_bytes / 1024.0
        }),
        line("controller CPU per edit (ms)", true, &|f| f.cpu_per_edit_ms),
        line(
            "on demand: agents started to every agent synced (ms)",
            true,
            &|f| ms(f.on_demand.synced),
        ),
        line("on demand: one node agent's first push (KiB)", true, &|f| {
            f.on_demand.initial_bytes / 1024.0
        }),
        line(
            "on demand: one node agent's first push (resources)",
            true,
            &|f| f.on_demand.initial_resources,
        ),
        line(
            "on demand: one service fetched, per agent (KiB)",
            false,
            &|f| f.on_demand.fetch_bytes / 1024.0,
        ),
        line(
            "on demand: one service fetched, per agent (resources)",
            false,
            &|f| f.on_demand.fetch_resources,
        ),
        line(
            "on demand: one service fetched, every agent at once, p50 (ms)",
            false,
            &|f| ms(quantile(&f.on_demand.fetch_latency, 0.5)),
        ),
        line(
            "on demand: one service fetched, every agent at once, p99 (ms)",
            false,
            &|f| ms(quantile(&f.on_demand.fetch_latency, 0.99)),
        ),
        line(
            "on demand: controller CPU per demand answered (ms)",
            false,
            &|f| f.on_demand.fetch_cpu_ms,
        ),
    ];
    for (k, edit) in figures[0].edits.iter().enumerate() {
        let name = edit.kind.describe();
        lines.push(line(
            &format!("{name}: every proxy reached ACKed, p50 (ms)"),
            false,
            &|f| ms(quantile(&edit_of(f, k).all_acked, 0.5)),
        ));
        lines.push(line(
            &format!("{name}: every proxy reached ACKed, p99 (ms)"),
            false,
            &|f| ms(quantile(&edit_of(f, k).all_acked, 0.99)),
        ));
        lines.push(line(
            &format!("{name}: one proxy ACKed, p50 (ms)"),
            false,
            &|f| ms(quantile(&edit_of(f, k).per_proxy, 0.5)),
        ));
        lines.push(line(
            &format!("{name}: one proxy ACKed, p99 (ms)"),
            false,
            &|f| ms(quantile(&edit_of(f, k).per_proxy, 0.99)),
        ));
        lines.push(line(&format!("{name}: proxies reached"), true, &|f| {
            mean(edit_of(f, k).reached.iter().copied())
        }));
        lines.push(line(&format!("{name}: KiB pushed per edit"), true, &|f| {
            mean(edit_of(f, k).bytes.iter().copied()) / 1024.0
        }));
        lines.push(line(
            &format!("{name}: KiB pushed per proxy reached"),
            true,
            &|f| {
                let e = edit_of(f, k);
                mean(e.bytes.iter().copied()) / mean(e.reached.iter().copied()).max(1.0) / 1024.0
            },
        ));
    }
    lines
}

pub fn report(out: &mut String, figures: &[SizeFigures]) -> std::fmt::Result {
    let Some(first) = figures.first() else {
        return Ok(());
    };
    writeln!(
        out,
        "\n## Scale: the controller and its proxies\n\n\
         The controller's release binary in Kubernetes mode against the fake API server holding \
         a generated cluster; every node agent and waypoint a real delta ADS client over TLS in \
         the bench process with its binary's own handlers (decode, convert, apply, then ACK). \
         {} edits of each kind, made at the API server one at a time. \"Every proxy reached \
         ACKed\": from the edit to the last proxy that received a push for it having applied it \
         (the ACK leaves as the handler returns). Growth: the figure's ratio to the previous \
         size divided by the pods' ratio (1.0 = linear, above = faster than the work; for \
         latencies the plain ratio, 1.0 = flat).\n",
        first.edits[0].all_acked.len()
    )?;
    for (i, f) in figures.iter().enumerate() {
        writeln!(out, "- size {}: {}", i + 1, f.size.describe())?;
    }
    write!(out, "\n| figure |")?;
    for i in 0..figures.len() {
        write!(out, " size {} |", i + 1)?;
    }
    for i in 1..figures.len() {
        write!(out, " growth {}→{} |", i, i + 1)?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "|---|{}",
        "---:|".repeat(figures.len() + figures.len().saturating_sub(1))
    )?;
    for line in lines(figures) {
        write!(out, "| {} |", line.name)?;
        for value in &line.values {
            write!(out, " {value:.1} |")?;
        }
        for i in 1..figures.len() {
            let ratio = line.values[i] / line.values[i - 1];
            let work = figures[i].size.pods as f64 / figures[i - 1].size.pods as f64;
            let growth = if line.grows { ratio / work } else { ratio };
            write!(out, " {growth:.2} |")?;
        }
        writeln!(out)?;
    }
    Ok(())
}
