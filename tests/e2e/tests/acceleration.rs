//! Same-node acceleration under sustained load, with the real binaries: agents started with
//! `ACCELERATION=true` splice the app <-> agent loopback hops (sockops + sk_msg), and a bulk
//! transfer that outlasts the splice budget still runs to the end without a failed write.
//! Needs root.

use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_ebpf_common::stats;

/// Long enough that both directions' budgets are spent many times over.
const SECONDS: u32 = 10;

#[test]
fn sustained_bulk_through_accelerated_agents_completes() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "bulk"),
            PodSpec::app("server", "node2", "bulk", "server", "v1"),
        ],
        MeshOptions {
            acceleration: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let mut server = mesh
        .spawn_in_pod("server", "iperf3", &["-s", "-1"])
        .expect("start iperf3 -s");
    mesh.wait_listening("server", 5201)
        .expect("iperf3 listens on its default port");
    let server_ip = mesh.pod("server").ip;
    let result = mesh.iperf("client", server_ip, SECONDS);
    let _ = server.kill();
    let _ = server.wait();
    let gbps = result.unwrap_or_else(|e| {
        panic!(
            "{SECONDS} s of iperf3 through accelerated agents failed: {e:#}\n{}",
            mesh.logs()
        )
    });
    println!("iperf3 through accelerated agents: {gbps:.2} Gbit/s over {SECONDS} s");
    assert!(gbps > 0.0);
    for node in ["node1", "node2"] {
        let spliced = mesh
            .redirect_stat(node, stats::SPLICED_MESSAGES)
            .expect("read the spliced-message counter");
        let spent = mesh
            .redirect_stat(node, stats::SPLICE_BUDGET_SPENT)
            .expect("read the budget counter");
        println!("{node}: {spliced} messages spliced, {spent} budgets spent");
        assert!(spliced > 0, "{node}: the app <-> agent hop was spliced");
        assert!(spent >= 1, "{node}: the bulk direction spent its budget");
    }
    // The pair that went by TCP left nothing broken behind: a new connection works.
    let (code, body) = mesh.curl("client", &format!("http://{server_ip}:8080/"));
    assert_eq!(code, 200, "{body}");
}
