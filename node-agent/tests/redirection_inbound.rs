//! Inbound steering on the real kernel: connections from outside an enrolled pod to its
//! application ports (Istio's 15000, 15020 and 15021 among them) land on the agent's 15006
//! listener; HBONE (15008), excluded ports, the agent's own forwarding (over loopback inside the
//! pod) and the node's own connections (its health probes, opened by a socket of the node's
//! namespace) reach their listeners untouched, while a connection the node only forwards and
//! masquerades to the same address is steered; with no inbound listener the connection fails
//! instead of reaching the application. Needs root.

mod support;

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use weft_test_support::logs;
use weft_testbed::{Netns, Topology};

/// Accepts one connection within a bounded time, if any comes.
fn accept_within(listener: &TcpListener, wait: Duration) -> Option<(TcpStream, SocketAddr)> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok(accepted) => return Some(accepted),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn connect_from(netns: &Netns, destination: SocketAddr) -> std::io::Result<TcpStream> {
    netns
        .run(move || TcpStream::connect_timeout(&destination, Duration::from_secs(2)))
        .unwrap()
}

#[test]
fn connections_to_application_ports_land_on_the_inbound_listener() {
    logs::capture();
    let testbed = Topology::new()
        .node("node1", &["app"])
        .node("node2", &["outside"])
        .build()
        .expect("build the testbed");
    let redirection = support::open_redirection(&testbed, false);
    let app = testbed.pod("app");
    let outside = testbed.pod("outside");
    let application = support::listen_in(&app.netns, "0.0.0.0:8080");
    let excluded = support::listen_in(&app.netns, "0.0.0.0:9000");
    let hbone = support::listen_in(&app.netns, "0.0.0.0:15008");
    let (_pod, inbound) = support::enroll(&redirection, &testbed, "app", vec![], vec![9000]);
    let quick = Duration::from_millis(300);

    // From another pod to the application port: steered to 15006, with the original
    // destination as the accepted socket's local address.
    let app_port: SocketAddr = (app.ip, 8080).into();
    let _client = connect_from(&outside.netns, app_port).expect("connect to the app port");
    let (_accepted, peer) = accept_within(&inbound, support::PATIENCE).expect("steered to 15006");
    assert_eq!(peer.ip(), outside.ip);
    assert_eq!(_accepted.local_addr().unwrap(), app_port);
    assert!(
        accept_within(&application, quick).is_none(),
        "the app saw it"
    );

    // HBONE is left alone.
    let _hbone_client = connect_from(&outside.netns, (app.ip, 15008).into()).expect("15008");
    assert!(
        accept_within(&hbone, support::PATIENCE).is_some(),
        "15008 not reached"
    );
    assert!(
        accept_within(&inbound, quick).is_none(),
        "15008 was steered"
    );

    // Istio's other numbers (admin, metrics, readiness) belong to the node's agent, not to the
    // pod: inside a pod they are the application's ports and are steered like any other.
    for port in [15000, 15020, 15021] {
        let _client = connect_from(&outside.netns, (app.ip, port).into())
            .unwrap_or_else(|e| panic!("connect to {port}: {e}"));
        let (accepted, _) = accept_within(&inbound, support::PATIENCE)
            .unwrap_or_else(|| panic!("{port} was not steered"));
        assert_eq!(accepted.local_addr().unwrap(), (app.ip, port).into());
    }

    // An excluded port is left alone.
    let _excluded_client = connect_from(&outside.netns, (app.ip, 9000).into()).expect("9000");
    assert!(
        accept_within(&excluded, support::PATIENCE).is_some(),
        "9000 not reached"
    );
    assert!(accept_within(&inbound, quick).is_none(), "9000 was steered");

    // The agent's own forwarding, made inside the pod, arrives on loopback: left alone.
    let _forwarded = connect_from(&app.netns, app_port).expect("forward inside the pod");
    assert!(
        accept_within(&application, support::PATIENCE).is_some(),
        "app not reached"
    );
    assert!(
        accept_within(&inbound, quick).is_none(),
        "own forwarding was steered"
    );

    // The node itself (the kubelet probing the pod) connects from its address on the pod's
    // network: a socket of the node's namespace, left alone, as Istio exempts the node's own
    // connections.
    let node = testbed.node("node1");
    let probe = connect_from(&node.netns, app_port).expect("probe from the node");
    assert_eq!(probe.local_addr().unwrap().ip(), app.gateway);
    let (probed, _) =
        accept_within(&application, support::PATIENCE).expect("the node's probe reached the app");
    assert!(
        accept_within(&inbound, quick).is_none(),
        "the node's probe was steered"
    );
    // The node's record lasts as long as its socket.
    assert_eq!(redirection.connection_records().unwrap().node, 1);
    drop((probe, probed));
    let deadline = Instant::now() + support::PATIENCE;
    while redirection.connection_records().unwrap().node != 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        redirection.connection_records().unwrap().node,
        0,
        "the node's closed connection is still recorded"
    );

    // A connection the node only forwards, masqueraded to that same address (a NodePort, an
    // SNAT of traffic from outside the cluster): no socket of the node opened it, so it is
    // steered like any other (Istio does not exempt it either).
    node.netns
        .masquerade(outside.ip, app.ip)
        .expect("masquerade");
    let _forwarded = connect_from(&outside.netns, app_port).expect("connect through the node");
    let (_accepted, peer) = accept_within(&inbound, support::PATIENCE)
        .expect("the forwarded connection was let through");
    assert_eq!(
        peer.ip(),
        app.gateway,
        "not masqueraded to the node's address"
    );
    assert!(
        accept_within(&application, quick).is_none(),
        "the masqueraded connection reached the app"
    );

    let stats = redirection.stats().unwrap();
    assert_eq!(stats.steered_inbound, 5, "{stats:?}");
    assert_eq!(stats.node_connections_passed, 1, "{stats:?}");

    // Agent down (no inbound listener): the connection fails, the application sees nothing.
    drop(inbound);
    assert!(
        connect_from(&outside.netns, app_port).is_err(),
        "connected without the agent"
    );
    assert!(
        accept_within(&application, quick).is_none(),
        "inbound bypassed the agent"
    );
    assert!(redirection.stats().unwrap().inbound_without_listener >= 1);
    // The program's warning reached `tracing`.
    assert!(
        logs::line_within(support::PATIENCE, &["no inbound listener for port 8080"]),
        "program log not bridged: {}",
        logs::text()
    );

    std::sync::Arc::into_inner(redirection)
        .unwrap()
        .uninstall()
        .unwrap();
    // Un-enrolled: plain networking again.
    let _client = connect_from(&outside.netns, app_port).expect("connect after uninstall");
    assert!(accept_within(&application, support::PATIENCE).is_some());
}
