//! `metrics`: Istio's metrics at the waypoint (`istio_requests_total` with Istio's labels) and
//! at an agent (`istio_tcp_*`), and a summary of the waypoint's `/config_dump`.

use std::collections::BTreeMap;

use anyhow::Context;

use super::{Demo, say};

/// The labels of a Prometheus text line.
pub fn labels(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(inner) = line
        .split_once('{')
        .and_then(|(_, r)| r.rsplit_once('}'))
        .map(|(l, _)| l)
    else {
        return out;
    };
    let mut rest = inner;
    while let Some((key, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, escaped)) = chars.next() {
                        value.push(escaped);
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key.trim_start_matches(',').trim().to_string(), value);
        rest = &after[end..];
    }
    out
}

pub fn value(line: &str) -> String {
    line.rsplit_once(' ').map_or("", |(_, v)| v).to_string()
}

pub fn metrics(demo: &Demo) -> anyhow::Result<()> {
    let waypoint_ip = demo.cluster.pod_ip(&demo.waypoint);
    let total = |text: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains("destination_service_name=\"reviews\"")
            })
            .filter_map(|l| value(l).parse::<u64>().ok())
            .sum()
    };
    let before = total(&demo.waypoint_metrics());
    let sent = demo.productpage(10, &[])?;
    anyhow::ensure!(sent.iter().all(|(s, _)| *s == 200), "productpage failed");
    let text = demo.waypoint_metrics();
    let after = total(&text);
    say(&format!(
        "the waypoint's /metrics (http://{}:15020), istio_requests_total for reviews:",
        waypoint_ip
    ));
    say(&format!(
        "  {:<30} {:<8} {:<6} {:<18} {:>6}",
        "source identity (sa)", "version", "code", "security", "count"
    ));
    let mut example_line = None;
    let mut rows: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("destination_service_name=\"reviews\"")
        })
        .collect();
    rows.sort_by_key(|l| {
        let labels = labels(l);
        (
            labels.get("source_principal").cloned(),
            labels.get("destination_version").cloned(),
            labels.get("response_code").cloned(),
        )
    });
    for line in rows {
        let labels = labels(line);
        let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
        let principal = get("source_principal");
        say(&format!(
            "  {:<30} {:<8} {:<6} {:<18} {:>6}",
            principal
                .rsplit_once("/sa/")
                .map_or(principal.as_str(), |(_, sa)| sa),
            get("destination_version"),
            get("response_code"),
            get("connection_security_policy"),
            value(line)
        ));
        if principal.ends_with("/sa/bookinfo-productpage") && get("response_code") == "200" {
            example_line = Some(line.to_string());
        }
    }
    say(&format!(
        "10 more productpage requests moved the reviews count from {before} to {after}"
    ));
    let line = example_line.context("no istio_requests_total from productpage to reviews")?;
    say("one line as Prometheus reads it:");
    say(&format!("  {line}"));
    let agent_line = demo
        .agent_metrics(&demo.pod_of("details").node)
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("destination_workload=\"details\"")
        })
        .map(String::from)
        .context("no istio_tcp_connections_opened_total for details at its agent")?;
    say("and at details' agent:");
    say(&format!("  {agent_line}"));
    anyhow::ensure!(
        after >= before + 10,
        "the waypoint counted {} of 10 requests",
        after.saturating_sub(before)
    );
    for label in [
        "reporter=\"waypoint\"",
        "source_principal=\"spiffe://cluster.local/ns/",
        "destination_principal=\"spiffe://cluster.local/ns/",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        anyhow::ensure!(line.contains(label), "{label} missing in {line}");
    }
    // The waypoint's admin page, as `istioctl proxy-config` would read Envoy's.
    let dump = demo.waypoint_config_dump()?;
    let count = |key: &str| dump[key].as_array().map_or(0, Vec::len);
    say(&format!(
        "and the waypoint's /config_dump (127.0.0.1:15000 inside its pod): {} services, {} clusters, {} pods served directly, {} policies; certificate {} (serial {}, valid until {}); xDS {}, {} version {}",
        count("services"),
        count("clusters"),
        count("workloads"),
        count("policies"),
        dump["certificate"]["identity"].as_str().unwrap_or("?"),
        dump["certificate"]["serial"].as_str().unwrap_or("?"),
        dump["certificate"]["not_after"].as_str().unwrap_or("?"),
        if dump["xds"]["connected"] == true {
            "connected"
        } else {
            "not connected"
        },
        dump["xds"]["last_applied"]["resource"]
            .as_str()
            .unwrap_or("?"),
        dump["xds"]["last_applied"]["version"]
            .as_str()
            .unwrap_or("?"),
    ));
    anyhow::ensure!(
        count("services") > 0 && count("clusters") > 0 && dump["xds"]["connected"] == true,
        "the waypoint's config dump is incomplete: {dump:#}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_labels_are_parsed() {
        let line =
            r#"istio_requests_total{reporter="waypoint",source_workload="a,b",path="x\"y"} 12"#;
        let labels = labels(line);
        assert_eq!(labels["reporter"], "waypoint");
        assert_eq!(labels["source_workload"], "a,b");
        assert_eq!(labels["path"], "x\"y");
        assert_eq!(value(line), "12");
    }
}
