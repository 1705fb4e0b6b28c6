//! `weftctl node-config` (istioctl ztunnel-config's role): tables of what a node agent holds,
//! read from its admin `/config_dump` (workloads, services, policies, certificates) and its
//! Prometheus metrics (connections), as a client: the dump's JSON is read field by field, so a
//! field the agent adds does not break the command.

use serde_json::Value;

use crate::http;
use crate::output::{self, Format, Table};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Workloads,
    Services,
    Policies,
    Certificates,
    Connections,
}

/// The dump of the agent of `node` among `agents` (the only one when `node` is `None`).
pub fn find_dump(agents: &[String], node: Option<&str>) -> anyhow::Result<(String, Value)> {
    let mut seen = Vec::new();
    let mut failures = Vec::new();
    for agent in agents {
        let dump: Value = match http::get(agent, "/config_dump")
            .and_then(|body| serde_json::from_str(&body).map_err(Into::into))
        {
            Ok(dump) => dump,
            Err(error) => {
                failures.push(format!("{error:#}"));
                continue;
            }
        };
        let name = text(&dump["config"]["node_name"]);
        if node.is_none_or(|wanted| wanted == name) {
            return Ok((agent.clone(), dump));
        }
        seen.push(name);
    }
    let mut message = match node {
        Some(node) => format!("no agent of node {node:?} among {}", agents.join(", ")),
        None => format!("no agent answered at {}", agents.join(", ")),
    };
    if !seen.is_empty() {
        message.push_str(&format!(" (nodes found: {})", seen.join(", ")));
    }
    for failure in failures {
        message.push_str(&format!("\n  {failure}"));
    }
    message.push_str(
        "\nThe agent's admin port (15000) listens on the node's loopback: run weftctl on that node, \
         or pass --agent HOST:PORT (WEFT_AGENT_ADMIN) for each agent.",
    );
    Err(anyhow::anyhow!(message))
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn list(value: &Value) -> String {
    value
        .as_array()
        .map(|items| items.iter().map(text).collect::<Vec<_>>().join(","))
        .unwrap_or_default()
}

fn cell(value: &Value) -> String {
    output::or_dash(&text(value))
}

/// The rows of `section` in `dump`: the items (for JSON and YAML) and the human table.
pub fn section(dump: &Value, section: Section) -> (Vec<Value>, Table) {
    let items = |path: &[&str]| -> Vec<Value> {
        path.iter()
            .fold(dump, |value, key| &value[*key])
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    match section {
        Section::Workloads => {
            let workloads = items(&["state", "workloads"]);
            let mut table = Table::new(&[
                "NAMESPACE",
                "POD NAME",
                "WORKLOAD",
                "ADDRESS",
                "NODE",
                "IDENTITY",
                "WAYPOINT",
                "PROTOCOL",
            ]);
            for w in &workloads {
                let identity = format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    text(&w["trust_domain"]),
                    text(&w["namespace"]),
                    text(&w["service_account"])
                );
                table.row(vec![
                    cell(&w["namespace"]),
                    cell(&w["name"]),
                    cell(&w["workload_name"]),
                    output::or_dash(&list(&w["addresses"])),
                    cell(&w["node"]),
                    identity,
                    if w["waypoint"].is_null() {
                        "None".into()
                    } else {
                        "yes".into()
                    },
                    cell(&w["tunnel"]),
                ]);
            }
            (workloads, table)
        }
        Section::Services => {
            let services = items(&["state", "services"]);
            let mut table =
                Table::new(&["NAMESPACE", "NAME", "HOSTNAME", "VIPS", "PORTS", "WAYPOINT"]);
            for s in &services {
                let ports = s["ports"]
                    .as_object()
                    .map(|ports| {
                        ports
                            .iter()
                            .map(|(port, target)| format!("{port}->{}", text(target)))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default();
                table.row(vec![
                    cell(&s["namespace"]),
                    cell(&s["name"]),
                    cell(&s["hostname"]),
                    output::or_dash(&list(&s["vips"])),
                    output::or_dash(&ports),
                    if s["waypoint"].is_null() {
                        "None".into()
                    } else {
                        "yes".into()
                    },
                ]);
            }
            (services, table)
        }
        Section::Policies => {
            let policies = items(&["state", "policies"]);
            let mut table =
                Table::new(&["NAMESPACE", "NAME", "ACTION", "SCOPE", "RULES", "DRY RUN"]);
            for p in &policies {
                table.row(vec![
                    cell(&p["namespace"]),
                    cell(&p["name"]),
                    cell(&p["action"]),
                    cell(&p["scope"]),
                    p["rules"].as_array().map_or(0, Vec::len).to_string(),
                    cell(&p["dry_run"]),
                ]);
            }
            (policies, table)
        }
        Section::Certificates => {
            let certificates = items(&["certificates"]);
            let mut table = Table::new(&["IDENTITY", "SERIAL", "NOT AFTER", "REFRESH AT", "STATE"]);
            for c in &certificates {
                let certificate = &c["certificate"];
                let state = match (&certificate, text(&c["last_error"])) {
                    (_, error) if !error.is_empty() => format!("error: {error}"),
                    (Value::Null, _) => "pending".into(),
                    _ => "valid".into(),
                };
                table.row(vec![
                    cell(&c["identity"]),
                    cell(&certificate["serial"]),
                    cell(&certificate["not_after"]),
                    cell(&certificate["refresh_at"]),
                    state,
                ]);
            }
            (certificates, table)
        }
        // Not in the dump: read from the agent's metrics by [`connections`].
        Section::Connections => (Vec::new(), Table::new(&[])),
    }
}

/// The TCP counters of one source and destination pair.
#[derive(Debug, Default)]
struct Traffic {
    opened: f64,
    closed: f64,
    sent: f64,
    received: f64,
}

/// A metric's label value (`key="value"`) in a Prometheus series' label set.
fn label(labels: &str, key: &str) -> String {
    labels
        .split("\",")
        .find_map(|pair| {
            pair.trim_start_matches(',')
                .strip_prefix(&format!("{key}=\""))
        })
        .map(|v| v.trim_end_matches("\"}").trim_end_matches('"').to_owned())
        .unwrap_or_default()
}

/// Connections from the agent's Istio TCP metrics: opened and closed per source and destination.
pub fn connections(metrics: &str) -> (Vec<Value>, Table) {
    use std::collections::BTreeMap;
    let mut by_pair: BTreeMap<(String, String, String), Traffic> = BTreeMap::new();
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let key = (
            format!(
                "{}.{}",
                label(labels, "source_workload"),
                label(labels, "source_workload_namespace")
            ),
            format!(
                "{}.{}",
                label(labels, "destination_workload"),
                label(labels, "destination_workload_namespace")
            ),
            label(labels, "reporter"),
        );
        let entry = by_pair.entry(key).or_default();
        match name.trim_end_matches("_total") {
            "istio_tcp_connections_opened" => entry.opened += value,
            "istio_tcp_connections_closed" => entry.closed += value,
            "istio_tcp_sent_bytes" => entry.sent += value,
            "istio_tcp_received_bytes" => entry.received += value,
            _ => {}
        }
    }
    let mut table = Table::new(&[
        "SOURCE",
        "DESTINATION",
        "REPORTER",
        "OPEN",
        "OPENED",
        "SENT BYTES",
        "RECEIVED BYTES",
    ]);
    let mut items = Vec::new();
    for ((source, destination, reporter), traffic) in by_pair {
        if traffic.opened == 0.0 {
            continue;
        }
        let open = (traffic.opened - traffic.closed).max(0.0);
        table.row(vec![
            source.clone(),
            destination.clone(),
            output::or_dash(&reporter),
            open.to_string(),
            traffic.opened.to_string(),
            traffic.sent.to_string(),
            traffic.received.to_string(),
        ]);
        items.push(serde_json::json!({
            "source": source, "destination": destination, "reporter": reporter,
            "open": open, "opened": traffic.opened,
            "sent_bytes": traffic.sent, "received_bytes": traffic.received,
        }));
    }
    (items, table)
}

pub fn run(
    agents: &[String],
    which: Section,
    node: Option<&str>,
    format: Format,
) -> anyhow::Result<u8> {
    let (agent, dump) = find_dump(agents, node)?;
    let (items, table) = match which {
        Section::Connections => {
            let metrics_address = text(&dump["config"]["metrics_address"]);
            let metrics = if metrics_address.is_empty() {
                http::get(&agent, "/stats/prometheus")
            } else {
                http::get(&metrics_address, "/metrics")
            };
            connections(
                &metrics
                    .map_err(|e| e.context("reading the agent's metrics for its connections"))?,
            )
        }
        other => section(&dump, other),
    };
    output::emit(format, &items, || table)?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dump() -> Value {
        serde_json::json!({
            "config": {"node_name": "node1"},
            "state": {
                "workloads": [{"uid": "u1", "name": "reviews-v1-7c9f5b8d46-x2k4p", "workload_name": "reviews-v1", "namespace": "shop", "addresses": ["10.1.0.3"],
                    "trust_domain": "cluster.local", "service_account": "reviews", "node": "node1",
                    "tunnel": "hbone", "waypoint": null}],
                "services": [{"name": "reviews", "namespace": "shop", "hostname": "reviews.shop.svc.cluster.local",
                    "vips": ["10.96.0.9"], "ports": {"9080": 9080}, "waypoint": {"address": "10.96.0.2"}}],
                "policies": [{"name": "deny", "namespace": "shop", "action": "deny", "scope": "namespace", "rules": [{}], "dry_run": false}]
            },
            "certificates": [{"identity": "spiffe://cluster.local/ns/shop/sa/reviews",
                "certificate": {"serial": "ab", "not_after": "2030-01-01T00:00:00Z", "refresh_at": "2029-12-31T12:00:00Z"},
                "last_error": null}]
        })
    }

    #[test]
    fn sections_render_their_columns() {
        let dump = dump();
        let (items, table) = section(&dump, Section::Workloads);
        assert_eq!(items.len(), 1);
        let text = table.render();
        assert!(
            text.contains("reviews-v1-7c9f5b8d46-x2k4p   reviews-v1")
                && text.contains("spiffe://cluster.local/ns/shop/sa/reviews"),
            "{text}"
        );
        let text = section(&dump, Section::Services).1.render();
        assert!(
            text.contains("9080->9080") && text.contains("10.96.0.9   9080->9080   yes"),
            "{text}"
        );
        let text = section(&dump, Section::Policies).1.render();
        assert!(text.contains("deny   deny     namespace   1"), "{text}");
        let text = section(&dump, Section::Certificates).1.render();
        assert!(
            text.contains("ab       2030-01-01T00:00:00Z") && text.contains("valid"),
            "{text}"
        );
    }

    #[test]
    fn connections_from_tcp_metrics() {
        let metrics = "# TYPE istio_tcp_connections_opened counter\n\
            istio_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"shop\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"shop\"} 3\n\
            istio_tcp_connections_closed_total{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"shop\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"shop\"} 2\n\
            istio_tcp_sent_bytes_total{reporter=\"destination\",source_workload=\"client\",source_workload_namespace=\"shop\",destination_workload=\"reviews-v1\",destination_workload_namespace=\"shop\"} 120\n";
        let (items, table) = connections(metrics);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0]["open"], 1.0);
        let text = table.render();
        assert!(
            text.contains("client.shop   reviews-v1.shop   destination   1      3        120"),
            "{text}"
        );
    }
}
