//! Same-node acceleration on the real kernel: with `sockops` + `sk_msg` splicing the app <->
//! agent loopback hop, data still arrives intact and in order, and the programs really spliced
//! it; with acceleration off nothing is spliced. Prints latency and throughput both ways
//! (`cargo test -p node-agent --test redirection_acceleration -- --nocapture`). Needs root.

mod support;

use std::sync::Arc;

use support::{AgentMode, OutboundAgent, SINK_STALL, client};
use weft_testbed::Topology;

/// Request/response round trips per latency measurement.
const ROUND_TRIPS: u32 = 20_000;
/// MiB per bulk transfer (echoed back, so twice over the hop).
const BULK_MIB: u32 = 256;

#[test]
fn pod_client() {
    client::entry();
}

struct Measurement {
    rtt_us: f64,
    mib_per_s: f64,
    spliced_messages: u64,
    local_sockets_added: u64,
}

fn measure(testbed: &weft_testbed::Testbed, acceleration: bool) -> Measurement {
    let redirection = support::open_redirection(testbed, acceleration);
    let (pod, _inbound) = support::enroll(&redirection, testbed, "client", vec![], vec![]);
    // The agent answers in the destination's place: what is measured is the app <-> agent hop,
    // the one acceleration splices.
    let agent = OutboundAgent::start(
        &testbed.pod("client").netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::Echo,
    );
    let value = |result: String, key: &str| -> f64 {
        result
            .strip_prefix(key)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unexpected client result {result:?}"))
    };
    // Client results are printed only when every byte came back as sent.
    let rtt_us = value(
        client::in_pod(
            testbed,
            "client",
            &format!("rtt 10.251.9.9:80 {ROUND_TRIPS}"),
        ),
        "rtt_us=",
    );
    let bulk = client::in_pod(testbed, "client", &format!("bulk 10.251.9.9:80 {BULK_MIB}"));
    let mib_per_s = value(bulk, "mib_per_s=");
    let accepted = agent.wait_for(2);
    assert_eq!(accepted.len(), 2);
    assert!(
        accepted
            .iter()
            .all(|a| a.original == Some("10.251.9.9:80".parse().unwrap()))
    );
    let stats = redirection.stats().unwrap();
    drop(agent);
    Arc::into_inner(redirection).unwrap().uninstall().unwrap();
    Measurement {
        rtt_us,
        mib_per_s,
        spliced_messages: stats.spliced_messages,
        local_sockets_added: stats.local_sockets_added,
    }
}

/// Alternating off/on rounds; the median of each is reported (the machine is shared).
const ROUNDS: usize = 3;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[test]
fn acceleration_on_and_off_both_carry_data_and_on_splices() {
    let testbed = Topology::new()
        .node("node1", &["client"])
        .build()
        .expect("build the testbed");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        off.push(measure(&testbed, false));
        on.push(measure(&testbed, true));
    }
    for m in &off {
        assert_eq!(m.spliced_messages, 0);
        assert_eq!(m.local_sockets_added, 0);
    }
    for m in &on {
        // Both ends of both connections (client and agent sides).
        assert!(
            m.local_sockets_added >= 4,
            "sockets added: {}",
            m.local_sockets_added
        );
        // Every round trip's request and reply are spliced.
        assert!(
            m.spliced_messages >= u64::from(2 * ROUND_TRIPS),
            "spliced messages: {}",
            m.spliced_messages
        );
    }
    let report = |name: &str, ms: &[Measurement]| {
        println!(
            "acceleration {name}: median of {ROUNDS}: {:.2} us per round trip ({ROUND_TRIPS} x 64 B), \
             {:.0} MiB/s bulk echo ({BULK_MIB} MiB)",
            median(ms.iter().map(|m| m.rtt_us).collect()),
            median(ms.iter().map(|m| m.mib_per_s).collect()),
        );
    };
    report("off", &off);
    report("on ", &on);
}

/// MiB a flooding client sends to a reader that falls behind.
const FLOOD_MIB: usize = 64;

/// A spliced message lands in the peer's queue whatever the peer reads, so a reader that falls
/// behind must not let a sender queue without bound (the kernel would end up failing the
/// sender's writes with ENOMEM). Past its splice budget the pair goes on by TCP, whose window
/// makes the sender wait; every byte still arrives, in order.
#[test]
fn a_slow_reader_holds_back_a_spliced_sender_and_loses_nothing() {
    let testbed = Topology::new()
        .node("node1", &["client"])
        .build()
        .expect("build the testbed");
    let redirection = support::open_redirection(&testbed, true);
    let (pod, _inbound) = support::enroll(&redirection, &testbed, "client", vec![], vec![]);
    let _agent = OutboundAgent::start(
        &testbed.pod("client").netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::SlowSink,
    );
    let window_ms = SINK_STALL.as_millis() * 2 / 3;
    let result = client::in_pod(
        &testbed,
        "client",
        &format!("flood 10.251.9.9:80 {FLOOD_MIB} {window_ms}"),
    );
    println!("flood of {FLOOD_MIB} MiB against a stalled reader: {result}");
    let field = |key: &str| -> usize {
        result
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("unexpected client result {result:?}"))
    };
    assert_eq!(
        field("confirmed="),
        FLOOD_MIB << 20,
        "the reader received every byte, intact and in order"
    );
    // Budget (4 MiB) plus at most a full send and receive buffer (4 + 6 MiB by default):
    // anything near the whole flood means the queue grew without bound.
    let early = field("early_mib=");
    assert!(
        early <= 24,
        "{early} MiB left the sender while the reader read nothing"
    );
    let stats = redirection.stats().unwrap();
    assert!(
        stats.spliced_messages > 0,
        "the start of the flood was spliced"
    );
    assert!(
        stats.splice_budget_spent >= 1,
        "the flood's direction spent its budget: {stats:?}"
    );
}
