//! `egress`: the client asks for `http://catalogue.external.example` in plain HTTP; the
//! namespace's waypoint sends it to the egress gateway, which opens TLS to the external server
//! (a namespace outside the cluster) with the DestinationRule's SNI and verifies the server's
//! certificate against its CA. The external server presents the certificate that CA signed
//! only to a client naming the host by SNI, so an answer proves both. Then the mesh's
//! `outboundTrafficPolicy` goes to REGISTRY_ONLY and the client's direct attempt at the server
//! is refused by its node agent and counted under `BlackHoleCluster`.

use std::time::Duration;

use weft_test_support::prometheus::Exposition;

use super::{
    CLIENT, Demo,
    edge::{EXTERNAL_HOST, EXTERNAL_TLS_PORT, EXTERNAL_VIP},
    eventually, say,
};

/// Connections the client's node agent sent to `BlackHoleCluster`.
fn black_holed(demo: &Demo) -> u64 {
    Exposition::parse(&demo.agent_metrics(demo.node_of(CLIENT))).count(
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service_name", "BlackHoleCluster"),
        ],
    )
}

pub fn egress(demo: &Demo) -> anyhow::Result<()> {
    let edge = demo.cluster.edge();
    // The ServiceEntry's host resolves to its VIP, as a DNS proxy would answer.
    let resolve = format!("{EXTERNAL_HOST}:80:{EXTERNAL_VIP}");
    let url = format!("http://{EXTERNAL_HOST}/books");
    let get = || demo.curl_with(CLIENT, &["--resolve", &resolve, &url]);
    let reached = eventually(Duration::from_secs(15), || {
        let answer = get();
        answer.status == 200 && answer.body.contains("Cipher")
    });
    let answer = get();
    let protocol = answer
        .body
        .lines()
        .find(|l| l.trim_start().starts_with("Protocol"))
        .unwrap_or("no TLS session described")
        .trim();
    say(&format!(
        "client -> {url} (plain HTTP) -> waypoint -> egress gateway {} -> TLS to {}:{EXTERNAL_TLS_PORT}: HTTP {}, the server describes its session: {protocol:?}",
        edge.egress, edge.external, answer.status
    ));
    anyhow::ensure!(
        reached,
        "the egress gateway never reached the external server: HTTP {} {:?}",
        answer.status,
        answer.body
    );
    say(&format!(
        "the server presents the certificate its CA signed only to SNI {EXTERNAL_HOST}, and the gateway verified it against that CA (DestinationRule originate-tls-for-catalogue)"
    ));
    let counted = Exposition::parse(&demo.proxy_metrics(&edge.egress)).count(
        "istio_requests_total",
        &[
            ("reporter", "source"),
            ("source_workload", "istio-egressgateway"),
            ("destination_service", EXTERNAL_HOST),
            ("response_code", "200"),
        ],
    );
    say(&format!(
        "the egress gateway counted {counted} request(s) to {EXTERNAL_HOST} (istio_requests_total, reporter=\"source\")"
    ));
    anyhow::ensure!(counted >= 1, "the egress gateway counted no request");

    // The direct path: allowed under ALLOW_ANY (Istio's default), refused under REGISTRY_ONLY.
    let direct = format!("https://{}:{EXTERNAL_TLS_PORT}/", edge.external);
    let direct_args = ["-k", "--max-time", "5", direct.as_str()];
    demo.cluster.set_outbound_traffic_policy("ALLOW_ANY")?;
    let allowed = demo.curl_with(CLIENT, &direct_args);
    say(&format!(
        "outboundTrafficPolicy ALLOW_ANY: client -> {direct} directly: HTTP {}",
        allowed.status
    ));
    anyhow::ensure!(
        allowed.status == 200,
        "the direct path is not open under ALLOW_ANY: the refusal below would prove nothing"
    );
    demo.cluster.set_outbound_traffic_policy("REGISTRY_ONLY")?;
    let before = black_holed(demo);
    let refused = demo.curl_with(CLIENT, &direct_args);
    let after = black_holed(demo);
    say(&format!(
        "outboundTrafficPolicy REGISTRY_ONLY (every agent applied it): client -> {direct} directly: {}; BlackHoleCluster connections at {}'s agent: {before} -> {after}",
        if refused.status == 0 {
            "refused".to_string()
        } else {
            format!("HTTP {}", refused.status)
        },
        demo.node_of(CLIENT)
    ));
    let through = get();
    say(&format!(
        "through the egress gateway still: HTTP {}",
        through.status
    ));
    anyhow::ensure!(
        refused.status == 0,
        "the direct attempt was not refused under REGISTRY_ONLY"
    );
    anyhow::ensure!(
        after > before,
        "the refused attempt was not counted under BlackHoleCluster"
    );
    anyhow::ensure!(
        through.status == 200,
        "the ServiceEntry's host is no longer reachable"
    );
    Ok(())
}
