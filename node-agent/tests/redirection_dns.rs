//! DNS capture on the real kernel: an enrolled pod's queries to port 53 (UDP sent unconnected
//! and connected, TCP; IPv4, IPv6 and IPv4-mapped on dual-stack sockets) reach a stand-in DNS
//! proxy on the pod's loopback port 15053, and the answers come back from the nameserver the
//! application addressed; other ports, a pod that opted out (`ambient.istio.io/dns-capture:
//! "false"`) and a pod whose capture is turned off while it runs go to the real nameserver.
//! Needs root.

mod support;

use std::{
    net::{SocketAddr, UdpSocket},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use node_agent::ebpf::{Enroller, Redirection};
use support::{PATIENCE, Server};
use weft_testbed::{Netns, Topology};

/// A UDP server that echoes up to [`UdpStandIn::MAX`] datagrams and records who sent each.
struct UdpStandIn {
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    _thread: JoinHandle<()>,
}

impl UdpStandIn {
    const MAX: usize = 16;

    fn start(netns: &Netns, address: &str) -> Self {
        let address = address.to_string();
        let socket = netns
            .run(move || UdpSocket::bind(&address))
            .unwrap()
            .expect("bind udp");
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let seen = peers.clone();
        let thread = std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            for _ in 0..Self::MAX {
                let Ok((n, peer)) = socket.recv_from(&mut buffer) else {
                    return;
                };
                seen.lock().unwrap().push(peer);
                let _ = socket.send_to(&buffer[..n], peer);
            }
        });
        Self {
            peers,
            _thread: thread,
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }
}

/// How a pod's query is sent.
#[derive(Debug, Clone, Copy)]
enum Query {
    /// `sendto` on an unbound socket (`sendmsg` hooks), as glibc sends its first query.
    Unconnected,
    /// `connect` then `send` (`connect` hooks), as glibc does once it has a nameserver.
    Connected,
}

/// Sends `payload` to `nameserver` from inside `netns` and returns where the answer came from
/// (as `recvfrom` reports it), or `None` without an answer in time.
fn ask(netns: &Netns, nameserver: SocketAddr, query: Query, payload: &str) -> Option<SocketAddr> {
    let payload = payload.to_string();
    support::spawn_in_netns(netns, move || {
        let local: SocketAddr = if nameserver.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let socket = UdpSocket::bind(local).unwrap();
        socket.set_read_timeout(Some(PATIENCE)).unwrap();
        match query {
            Query::Unconnected => socket.send_to(payload.as_bytes(), nameserver).unwrap(),
            Query::Connected => {
                socket.connect(nameserver).unwrap();
                socket.send(payload.as_bytes()).unwrap()
            }
        };
        let mut buffer = [0u8; 512];
        let (n, source) = socket.recv_from(&mut buffer).ok()?;
        assert_eq!(&buffer[..n], payload.as_bytes(), "the answer is the echo");
        Some(source)
    })
    .join()
    .unwrap()
}

/// Connects over TCP to `destination` from inside `netns`: the address the socket reached.
fn tcp_connect(netns: &Netns, destination: SocketAddr) -> SocketAddr {
    support::spawn_in_netns(netns, move || {
        let stream = std::net::TcpStream::connect_timeout(&destination, PATIENCE).expect("connect");
        stream.peer_addr().unwrap()
    })
    .join()
    .unwrap()
}

#[test]
fn dns_is_captured_to_the_proxy_and_answered_from_the_nameserver() {
    let testbed = Topology::new()
        .node("node1", &["client", "optout"])
        .node("node2", &["nameserver"])
        .build()
        .expect("build the testbed");
    let redirection = support::open_redirection(&testbed, false);
    let client = &testbed.pod("client").netns;
    let optout = &testbed.pod("optout").netns;
    let ns_ip = testbed.pod("nameserver").ip;
    let nameserver: SocketAddr = (ns_ip, 53).into();
    let (_pod, _inbound) = support::enroll(&redirection, &testbed, "client", vec![], vec![]);
    let (_opted, _opted_inbound) =
        support::enroll_with(&redirection, &testbed, "optout", (vec![], vec![]), false);

    // The stand-in DNS proxy inside the client pod, and the real nameserver elsewhere.
    let proxy4 = UdpStandIn::start(client, "127.0.0.1:15053");
    let proxy6 = UdpStandIn::start(client, "[::1]:15053");
    let proxy_tcp4 = Server::start(client, "127.0.0.1:15053");
    let proxy_tcp6 = Server::start(client, "[::1]:15053");
    let real = UdpStandIn::start(&testbed.pod("nameserver").netns, "0.0.0.0:53");
    let real_other_port = UdpStandIn::start(&testbed.pod("nameserver").netns, "0.0.0.0:5353");

    // IPv4, unconnected and connected: the proxy answers, the answer carries the nameserver's
    // address as its source (recvmsg4), and the nameserver never sees the query.
    for query in [Query::Unconnected, Query::Connected] {
        assert_eq!(
            ask(client, nameserver, query, "v4"),
            Some(nameserver),
            "{query:?}"
        );
    }
    assert_eq!(proxy4.peers().len(), 2);
    assert!(real.peers().is_empty(), "a captured query left the pod");

    // IPv6 nameserver (never reachable from here: only the capture can answer) and an
    // IPv4-mapped one on a dual-stack socket (through the IPv4 loopback).
    let ipv6_nameserver: SocketAddr = "[fd00:53::53]:53".parse().unwrap();
    let mapped_nameserver: SocketAddr = format!("[::ffff:{ns_ip}]:53").parse().unwrap();
    for query in [Query::Unconnected, Query::Connected] {
        assert_eq!(
            ask(client, ipv6_nameserver, query, "v6"),
            Some(ipv6_nameserver),
            "{query:?}"
        );
        assert_eq!(
            ask(client, mapped_nameserver, query, "mapped"),
            Some(mapped_nameserver),
            "{query:?}"
        );
    }
    assert_eq!(proxy6.peers().len(), 2);
    assert_eq!(proxy4.peers().len(), 4);
    assert!(real.peers().is_empty(), "a captured query left the pod");

    // TCP to port 53 lands on the proxy's listener of its family.
    assert_eq!(
        tcp_connect(client, nameserver),
        "127.0.0.1:15053".parse().unwrap()
    );
    assert_eq!(
        tcp_connect(client, ipv6_nameserver),
        "[::1]:15053".parse().unwrap()
    );
    let deadline = std::time::Instant::now() + PATIENCE;
    while (proxy_tcp4.peers().len(), proxy_tcp6.peers().len()) != (1, 1)
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!((proxy_tcp4.peers().len(), proxy_tcp6.peers().len()), (1, 1));

    // Another port is not DNS: straight to the server, from the pod's own address.
    let other: SocketAddr = (ns_ip, 5353).into();
    assert_eq!(ask(client, other, Query::Unconnected, "other"), Some(other));
    assert_eq!(
        real_other_port
            .peers()
            .iter()
            .map(|p| p.ip())
            .collect::<Vec<_>>(),
        vec![testbed.pod("client").ip]
    );

    // The pod that opted out reaches the real nameserver; its TCP to port 53 is ordinary
    // outbound traffic (to the agent's 15001, as any TCP connection of the pod).
    let _outbound = support::listen_in(optout, "127.0.0.1:15001");
    assert_eq!(
        ask(optout, nameserver, Query::Unconnected, "opted-out"),
        Some(nameserver)
    );
    assert_eq!(real.peers().len(), 1);
    assert_eq!(real.peers()[0].ip(), testbed.pod("optout").ip);
    assert_eq!(
        tcp_connect(optout, nameserver),
        "127.0.0.1:15001".parse().unwrap()
    );

    // Turned off while the pod runs, then on again: each query follows the setting of the
    // moment, and nothing else of the pod's capture changes.
    set_dns_capture(&redirection, "uid-client", false);
    assert_eq!(
        ask(client, nameserver, Query::Unconnected, "off"),
        Some(nameserver)
    );
    assert_eq!(real.peers().len(), 2, "the query was still captured");
    assert_eq!(real.peers()[1].ip(), testbed.pod("client").ip);
    set_dns_capture(&redirection, "uid-client", true);
    assert_eq!(
        ask(client, nameserver, Query::Unconnected, "on"),
        Some(nameserver)
    );
    assert_eq!(real.peers().len(), 2, "the query was not captured again");
    assert_eq!(proxy4.peers().len(), 5);

    // UDP: 2 (IPv4) + 4 (IPv6 and mapped) + 1 (on again); TCP: 2.
    assert_eq!(redirection.stats().unwrap().dns_captured, 9);
    Arc::into_inner(redirection).unwrap().uninstall().unwrap();
}

fn set_dns_capture(redirection: &Redirection, uid: &str, capture: bool) {
    redirection
        .set_dns_capture(uid, capture)
        .expect("change the pod's dns capture");
}
