//! Outbound capture on the real kernel: an enrolled pod's unmodified clients reach a pod on
//! another node through the stand-in agent, which recovers each connection's original
//! destination; pods never see each other's records; records never pile up. Needs root.

mod support;

use std::net::SocketAddr;

use node_agent::ebpf::{OriginalDst, RedirectionStats};
use support::{AgentMode, OutboundAgent, Server, client};
use weft_testbed::Topology;

#[test]
fn pod_client() {
    client::entry();
}

#[test]
fn unmodified_clients_reach_another_node_through_the_agent() {
    let testbed = Topology::new()
        .node("node1", &["client", "bystander"])
        .node("node2", &["server"])
        .build()
        .expect("build the testbed");
    let redirection = support::open_redirection(&testbed, false);
    let server_ip = testbed.pod("server").ip;
    let client_ip = testbed.pod("client").ip;
    let http = Server::start(&testbed.pod("server").netns, "0.0.0.0:8080");
    let lines = Server::start(&testbed.pod("server").netns, "0.0.0.0:9090");
    let excluded = Server::start(&testbed.pod("server").netns, "0.0.0.0:9099");

    let (pod, _inbound) = support::enroll(&redirection, &testbed, "client", vec![9099], vec![]);
    let agent = OutboundAgent::start(
        &testbed.pod("client").netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::Forward,
    );

    // curl: an HTTP client that knows nothing of the mesh.
    let (code, body) = support::curl(&testbed, "client", &format!("http://{server_ip}:8080/"));
    assert_eq!((code, body.as_str()), (Some(0), "ok"));
    let accepted = agent.wait_for(1);
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    let http_destination: SocketAddr = (server_ip, 8080).into();
    assert_eq!(accepted[0].original, Some(http_destination));
    assert!(accepted[0].peer.ip().is_loopback(), "{accepted:?}");
    // The server saw the agent's upstream socket, not the client's.
    assert_eq!(http.peers(), vec![accepted[0].upstream.unwrap()]);
    assert_eq!(accepted[0].upstream.unwrap().ip(), client_ip);

    // A plain TCP client, several connections.
    let result = client::in_pod(&testbed, "client", &format!("echo {server_ip}:9090 20 0"));
    assert_eq!(result, "ok=20 failed=0");
    let accepted = agent.wait_for(21);
    assert_eq!(accepted.len(), 21);
    let line_destination: SocketAddr = (server_ip, 9090).into();
    assert!(
        accepted[1..]
            .iter()
            .all(|a| a.original == Some(line_destination))
    );
    let upstreams: Vec<_> = accepted[1..].iter().map(|a| a.upstream.unwrap()).collect();
    let mut seen = lines.peers();
    seen.sort();
    let mut expected = upstreams.clone();
    expected.sort();
    assert_eq!(
        seen, expected,
        "the server saw exactly the agent's connections"
    );

    // A dual-stack (IPv6) socket to an IPv4-mapped destination: `connect6` captures it.
    let result = client::in_pod(
        &testbed,
        "client",
        &format!("echo [::ffff:{server_ip}]:9090 2 0"),
    );
    assert_eq!(result, "ok=2 failed=0");
    let accepted = agent.wait_for(23);
    assert!(
        accepted[21..]
            .iter()
            .all(|a| a.original == Some(line_destination))
    );
    let upstreams: Vec<_> = accepted[1..].iter().map(|a| a.upstream.unwrap()).collect();

    // UDP is not captured.
    let udp = support::UdpEcho::start(&testbed.pod("server").netns, "0.0.0.0:5353");
    let result = client::in_pod(&testbed, "client", &format!("udp {server_ip}:5353"));
    assert_eq!(result, "reply=datagram");
    assert_eq!(udp.peers().len(), 1);

    // An excluded port goes straight to the destination.
    let result = client::in_pod(&testbed, "client", &format!("echo {server_ip}:9099 1 0"));
    assert_eq!(result, "ok=1 failed=0");
    assert_eq!(agent.accepted().len(), 23, "excluded port was captured");
    assert_eq!(excluded.peers().len(), 1);
    assert!(!upstreams.contains(&excluded.peers()[0]));

    // A pod that is not enrolled is not captured.
    let result = client::in_pod(&testbed, "bystander", &format!("echo {server_ip}:9090 1 0"));
    assert_eq!(result, "ok=1 failed=0");
    assert_eq!(agent.accepted().len(), 23, "a bystander was captured");

    // Loopback destinations inside the enrolled pod are not captured: the 15001 listener itself
    // is reachable directly (the connection lands there with no original destination).
    let result = client::in_pod(&testbed, "client", "connect 127.0.0.1:15001");
    assert_eq!(result, "connected");
    let accepted = agent.wait_for(24);
    assert_eq!(
        accepted[23].original, None,
        "a loopback connect was recorded"
    );

    // Capture follows the network namespace, not the cgroup: this test process, in no pod's
    // cgroup, is captured when it connects from inside the pod's netns; a socket marked as the
    // agent's own is not.
    let (captured, marked) = support::spawn_in_netns(&testbed.pod("client").netns, move || {
        let plain = std::net::TcpStream::connect_timeout(&line_destination, support::PATIENCE)
            .expect("connect");
        let marked = support::connect_as_agent(line_destination).expect("connect marked");
        (plain.peer_addr().unwrap(), marked.peer_addr().unwrap())
    })
    .join()
    .unwrap();
    assert_eq!(captured, "127.0.0.1:15001".parse().unwrap());
    assert_eq!(
        marked, line_destination,
        "the agent's own socket was captured"
    );
    let accepted = agent.wait_for(25);
    assert_eq!(accepted.len(), 25, "{accepted:?}");
    assert_eq!(accepted[24].original, Some(line_destination));

    let stats: RedirectionStats = redirection.stats().unwrap();
    assert_eq!(stats.redirected_connects, 24, "{stats:?}");
    drop(agent);
    std::sync::Arc::into_inner(redirection)
        .unwrap()
        .uninstall()
        .unwrap();
}

#[test]
fn two_pods_with_the_same_client_ports_never_get_each_others_destination() {
    let testbed = Topology::new()
        .node("node1", &["alpha", "beta"])
        .node("node2", &["server"])
        .build()
        .expect("build the testbed");
    let redirection = support::open_redirection(&testbed, false);
    let server_ip = testbed.pod("server").ip;
    let _http = Server::start(&testbed.pod("server").netns, "0.0.0.0:7001");
    let _lines = Server::start(&testbed.pod("server").netns, "0.0.0.0:7002");
    let (alpha, _alpha_inbound) = support::enroll(&redirection, &testbed, "alpha", vec![], vec![]);
    let (beta, _beta_inbound) = support::enroll(&redirection, &testbed, "beta", vec![], vec![]);
    assert_ne!(alpha.netns_cookie, beta.netns_cookie);
    let alpha_agent = OutboundAgent::start(
        &testbed.pod("alpha").netns,
        redirection.clone(),
        alpha.netns_cookie,
        AgentMode::Forward,
    );
    let beta_agent = OutboundAgent::start(
        &testbed.pod("beta").netns,
        redirection.clone(),
        beta.netns_cookie,
        AgentMode::Forward,
    );

    // Same client ports (bound explicitly), same destination host, at the same time; only the
    // destination port tells the pods' connections apart.
    const ROUNDS: u32 = 50;
    let a = client::spawn_in_pod(
        &testbed,
        "alpha",
        &format!("echo {server_ip}:7001 {ROUNDS} 41000"),
    );
    let b = client::spawn_in_pod(
        &testbed,
        "beta",
        &format!("echo {server_ip}:7002 {ROUNDS} 41000"),
    );
    assert_eq!(client::result_of(a), format!("ok={ROUNDS} failed=0"));
    assert_eq!(client::result_of(b), format!("ok={ROUNDS} failed=0"));

    for (agent, port) in [(&alpha_agent, 7001), (&beta_agent, 7002)] {
        let accepted = agent.wait_for(ROUNDS as usize);
        assert_eq!(accepted.len(), ROUNDS as usize);
        let destination: SocketAddr = (server_ip, port).into();
        for a in &accepted {
            assert_eq!(a.original, Some(destination), "{a:?}");
            assert!(
                (41000..41000 + ROUNDS as u16).contains(&a.peer.port()),
                "{a:?}"
            );
        }
    }
    // The very same peer address, asked in the wrong pod, finds nothing.
    let peer: SocketAddr = "127.0.0.1:41000".parse().unwrap();
    assert_eq!(
        redirection
            .take_original_dst(beta.netns_cookie, peer)
            .unwrap(),
        None
    );
    drop((alpha_agent, beta_agent));
    std::sync::Arc::into_inner(redirection)
        .unwrap()
        .uninstall()
        .unwrap();
}

#[test]
fn ten_thousand_short_connections_leave_no_records() {
    let testbed = Topology::new()
        .node("node1", &["client"])
        .build()
        .expect("build the testbed");
    let redirection = support::open_redirection(&testbed, false);
    let (pod, _inbound) = support::enroll(&redirection, &testbed, "client", vec![], vec![]);
    let agent = OutboundAgent::start(
        &testbed.pod("client").netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::Echo,
    );
    // The destination never sees these: the agent answers (echo) in its place.
    let result = client::in_pod(&testbed, "client", "echo 10.251.9.9:80 10000 0");
    assert_eq!(result, "ok=10000 failed=0");
    let accepted = agent.wait_for(10_000);
    assert_eq!(accepted.len(), 10_000);
    let destination: SocketAddr = "10.251.9.9:80".parse().unwrap();
    assert!(accepted.iter().all(|a| a.original == Some(destination)));
    drop(agent);

    // An agent that never asks: the records go when its sockets close.
    let lazy = OutboundAgent::start(
        &testbed.pod("client").netns,
        redirection.clone(),
        pod.netns_cookie,
        AgentMode::EchoWithoutLookup,
    );
    let result = client::in_pod(&testbed, "client", "echo 10.251.9.9:80 200 0");
    assert_eq!(result, "ok=200 failed=0");
    assert_eq!(lazy.wait_for(200).len(), 200);
    drop(lazy);

    let deadline = std::time::Instant::now() + support::PATIENCE;
    let mut records = redirection.connection_records().unwrap();
    while (records.pending, records.established) != (0, 0) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        records = redirection.connection_records().unwrap();
    }
    assert_eq!(
        (records.pending, records.established),
        (0, 0),
        "leftover records"
    );
    std::sync::Arc::into_inner(redirection)
        .unwrap()
        .uninstall()
        .unwrap();
}
