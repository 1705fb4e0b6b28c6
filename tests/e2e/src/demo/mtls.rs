//! `mtls`: a capture of the wire between the nodes while the client calls details on the other
//! node; the destination agent's metrics name the client's SPIFFE identity.

use anyhow::Context;
use weft_test_support::prometheus::Exposition;
use weft_testbed::FabricCapture;

use super::{CLIENT, Demo, say};

pub fn mtls(demo: &Demo) -> anyhow::Result<()> {
    let details = demo.pod_of("details");
    let client_node = demo.node_of(CLIENT);
    let marker = format!("weft-demo-marker-{}", std::process::id());
    let scope = demo.cluster.capture_scope();
    let capture = FabricCapture::start(demo.cluster.testbed()).context("capturing the fabric")?;
    let answer = demo.curl_with(
        CLIENT,
        &[
            "-H",
            &format!("x-demo-marker: {marker}"),
            &demo.url("details", &format!("/details/0?{marker}")),
        ],
    );
    let captured = capture
        .finish(
            scope.filter,
            &[
                "tcp.srcport",
                "tcp.dstport",
                "tls.handshake.extensions.supported_version",
            ],
        )
        .context("reading the capture")?;
    say(&format!(
        "client ({client_node}) -> details ({}): HTTP {} from {}",
        details.node,
        answer.status,
        answer.json()["pod"].as_str().unwrap_or("?")
    ));
    anyhow::ensure!(answer.status == 200, "the call failed: {}", answer.body);
    let packets: Vec<&str> = captured.fields.lines().collect();
    let allowed = |line: &&str| {
        line.split('\t')
            .take(2)
            .any(|port| scope.ports.iter().any(|(p, _)| *p == port))
    };
    let other: Vec<&&str> = packets.iter().filter(|l| !allowed(l)).collect();
    let tls13 = captured.fields.contains("0x0304");
    let in_clear = captured.contains_bytes(marker.as_bytes());
    say(&format!(
        "fabric capture ({}): {} packets with payload, {} bytes; TLS 1.3 handshake (0x0304): {}",
        scope.description,
        packets.len(),
        captured.raw.len(),
        if tls13 { "seen" } else { "NOT seen" }
    ));
    let ports = scope
        .ports
        .iter()
        .map(|(port, what)| format!("{port} ({what})"))
        .collect::<Vec<_>>()
        .join(" or ");
    say(&format!(
        "every payload packet on {ports}: {}",
        if other.is_empty() {
            "yes".to_string()
        } else {
            format!("no, {} others", other.len())
        }
    ));
    say(&format!(
        "the request's marker {marker:?} in the captured bytes: {}",
        if in_clear { "FOUND" } else { "not found" }
    ));
    anyhow::ensure!(!packets.is_empty(), "nothing crossed the fabric");
    anyhow::ensure!(tls13, "no TLS 1.3 handshake crossed the fabric");
    anyhow::ensure!(other.is_empty(), "traffic outside HBONE: {other:?}");
    anyhow::ensure!(!in_clear, "the request crossed the fabric in clear");
    let identity = format!("spiffe://cluster.local/ns/{}/sa/{CLIENT}", demo.namespace);
    let text = demo.agent_metrics(&details.node);
    let samples = Exposition::parse(&text);
    let sample = samples
        .find(
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("source_principal", &identity),
                // details' Deployment, as Istio names the workload.
                ("destination_workload", "details-v1"),
            ],
        )
        .with_context(|| {
            format!(
                "{}'s agent did not record the client's identity",
                details.node
            )
        })?;
    let label = |key: &str| sample.label(key).unwrap_or("?");
    say(&format!(
        "{}'s agent: istio_tcp_connections_opened_total{{source_principal={}, destination_workload={}, connection_security_policy={}}} {}",
        details.node,
        label("source_principal"),
        label("destination_workload"),
        label("connection_security_policy"),
        sample.value
    ));
    anyhow::ensure!(
        label("connection_security_policy") == "mutual_tls",
        "the connection is not recorded as mutual TLS: {}",
        sample.line
    );
    Ok(())
}
