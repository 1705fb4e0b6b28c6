//! The embedded eBPF object loads into the kernel, and its smoke program, attached to a pod's
//! cgroup, runs for that pod's connects and for nobody else's. Needs root.

use std::process::Stdio;

use node_agent::ebpf::SmokeProbe;
use weft_testbed::Topology;

/// Runs a TCP connect attempt (refused is fine: `connect()` is what is counted).
fn connect_attempt(mut command: std::process::Command, target: &str) {
    let status = command
        .args(["-s", "--max-time", "2", &format!("http://{target}:9/")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run curl");
    // 7: connection refused, the expected outcome against a closed port.
    assert_eq!(status.code(), Some(7), "curl to {target}: {status}");
}

#[test]
fn smoke_program_attaches_to_a_pod_cgroup_and_counts_its_connects() {
    let testbed = Topology::new()
        .node("node1", &["client", "server"])
        .build()
        .expect("build the testbed");
    let client = testbed.pod("client");
    let server_ip = testbed.pod("server").ip.to_string();

    let probe = SmokeProbe::attach(client.cgroup.path()).expect("load and attach");
    let before = probe.counts().unwrap();
    assert_eq!(before.connects, 0);

    connect_attempt(testbed.pod_command("client", "curl"), &server_ip);
    let after_pod = probe.counts().unwrap();
    assert!(
        after_pod.tcp_connects >= 1,
        "pod connect not seen: {after_pod:?}"
    );
    assert!(after_pod.connects >= after_pod.tcp_connects);

    // A process outside the pod's cgroup is not seen.
    connect_attempt(
        testbed.pod_command("server", "curl"),
        &client.ip.to_string(),
    );
    assert_eq!(
        probe.counts().unwrap(),
        after_pod,
        "another cgroup's connect was counted"
    );
}
