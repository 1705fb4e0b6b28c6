//! `metrics`: Istio's metrics at the waypoint (`istio_requests_total` with Istio's labels) and
//! at an agent (`istio_tcp_*`), and a summary of the waypoint's `/config_dump`.

use anyhow::Context;
use weft_test_support::prometheus::{Exposition, Sample};

use super::{Demo, say};

pub fn metrics(demo: &Demo) -> anyhow::Result<()> {
    let waypoint_ip = demo.cluster.pod_ip(&demo.waypoint);
    const REQUESTS: &str = "istio_requests_total";
    const TO_REVIEWS: &[(&str, &str)] = &[("destination_service_name", "reviews")];
    let total = |text: &str| Exposition::parse(text).count(REQUESTS, TO_REVIEWS);
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
    let samples = Exposition::parse(&text);
    let mut example: Option<&Sample> = None;
    let mut rows = samples.matching(REQUESTS, TO_REVIEWS);
    rows.sort_by_key(|s| {
        (
            s.label("source_principal"),
            s.label("destination_version"),
            s.label("response_code"),
        )
    });
    for sample in rows {
        let get = |k: &str| sample.label(k).unwrap_or_default();
        let principal = get("source_principal");
        say(&format!(
            "  {:<30} {:<8} {:<6} {:<18} {:>6}",
            principal
                .rsplit_once("/sa/")
                .map_or(principal, |(_, sa)| sa),
            get("destination_version"),
            get("response_code"),
            get("connection_security_policy"),
            sample.value
        ));
        if principal.ends_with("/sa/bookinfo-productpage") && get("response_code") == "200" {
            example = Some(sample);
        }
    }
    say(&format!(
        "10 more productpage requests moved the reviews count from {before} to {after}"
    ));
    let line = &example
        .context("no istio_requests_total from productpage to reviews")?
        .line;
    say("one line as Prometheus reads it:");
    say(&format!("  {line}"));
    let agent_metrics = Exposition::parse(&demo.agent_metrics(&demo.pod_of("details").node));
    let agent_line = &agent_metrics
        .find(
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                // The workload is details' Deployment, as Istio names it (not `app`).
                ("destination_workload", "details-v1"),
            ],
        )
        .context("no istio_tcp_connections_opened_total for details at its agent")?
        .line;
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
    if let Some(observability) = &demo.observability {
        say(&format!(
            "the same series in Prometheus (http://{}/) feed the console's graph: http://{}/#/graph/{}",
            observability.prometheus(),
            observability.console(),
            demo.namespace
        ));
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
