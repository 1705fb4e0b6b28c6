//! The data path on the testbed: two agents (in this process) serving pods on two nodes, real
//! mutual TLS over the fabric, L4 policy, same-node and passthrough paths. The eBPF redirection
//! is replaced by connecting to the outbound listener directly and a fixed original-destination
//! table; everything from the accepted socket onwards is the agent's real code. Needs root.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use node_agent::{
    agent::Agent,
    enrollment::{EnrolledPod, PodLifecycle},
    pods::PodManager,
    state::{NamespacedHostname, TunnelProtocol, Workload, WorkloadStore},
    testing::{FixedOriginalDestinations, LocalCertificates, local_certificates},
    testing::{enrolled_pod, workload as meshed},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use weft_identity::CertificateAuthority;
use weft_policy::{
    PolicyAction, WildcardMatch,
    l4::{Authorization, Clause, ConnectionMatch, PolicyScope, Rule},
};
use weft_test_support::logs;
use weft_test_support::prometheus::Exposition;
use weft_testbed::{FabricCapture, Netns, Pod, Testbed, Topology};

const APP_PORT: u16 = 8080;
const TIMEOUT: Duration = Duration::from_secs(10);

struct NodeAgent {
    store: WorkloadStore,
    /// Serves the node's pods until the test ends.
    manager: Arc<PodManager>,
    registry: Arc<prometheus_client::registry::Registry>,
}

/// The mesh: client and neighbor on node1, server on node2, all in the mesh; `outside` is the
/// control-plane host, not in the mesh.
struct Mesh {
    testbed: Testbed,
    ca: Arc<CertificateAuthority>,
    original: Arc<FixedOriginalDestinations>,
    agents: Vec<NodeAgent>,
}

impl Mesh {
    async fn start() -> Self {
        let testbed = Topology::new()
            .node("node1", &["client", "neighbor"])
            .node("node2", &["server"])
            .control_plane()
            .build()
            .expect("testbed");
        let ca = Arc::new(CertificateAuthority::generate().unwrap());
        let original = Arc::new(FixedOriginalDestinations::default());
        let mut agents = Vec::new();
        for node in ["node1", "node2"] {
            let store = WorkloadStore::new();
            store.insert_workload(workload(
                testbed.pod("client"),
                "client",
                TunnelProtocol::Hbone,
            ));
            store.insert_workload(workload(
                testbed.pod("neighbor"),
                "neighbor",
                TunnelProtocol::Hbone,
            ));
            store.insert_workload(workload(
                testbed.pod("server"),
                "server",
                TunnelProtocol::Hbone,
            ));
            let Agent {
                store,
                pods: manager,
                registry,
            } = Agent::build(local_certificates(ca.clone()).source(), original.clone())
                .store(store)
                .start()
                .expect("agent");
            for pod in testbed.pods().iter().filter(|p| p.node == node) {
                manager.add(enrolled(pod)).await.expect("enroll");
            }
            agents.push(NodeAgent {
                store,
                manager,
                registry,
            });
        }
        Self {
            testbed,
            ca,
            original,
            agents,
        }
    }

    fn ca_for_tests(&self) -> LocalCertificates {
        local_certificates(self.ca.clone())
    }

    fn both_agents(&self, change: impl Fn(&WorkloadStore)) {
        for agent in &self.agents {
            change(&agent.store);
        }
    }

    /// Connects from `pod` through its outbound listener to `destination`, as a redirected
    /// application connection would arrive, and checks an echo of `payload`.
    async fn echo_via_agent(
        &self,
        pod: &str,
        destination: SocketAddr,
        payload: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        let mut stream = self.connect_via_agent(pod, destination).await?;
        tokio::time::timeout(TIMEOUT, async {
            stream.write_all(payload).await?;
            stream.shutdown().await?;
            let mut reply = Vec::new();
            stream.read_to_end(&mut reply).await?;
            Ok(reply)
        })
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "echo timed out"))?
    }

    /// A connection from `pod` through its outbound listener to `destination`.
    async fn connect_via_agent(
        &self,
        pod: &str,
        destination: SocketAddr,
    ) -> std::io::Result<TcpStream> {
        let pod = self.testbed.pod(pod);
        let original = self.original.clone();
        let std_stream = pod
            .netns
            .run(move || {
                let socket =
                    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                original.set(node_agent::ebpf::netns_cookie(&socket)?, destination);
                socket.connect_timeout(
                    &SocketAddr::from((Ipv4Addr::LOCALHOST, 15001)).into(),
                    TIMEOUT,
                )?;
                socket.set_nonblocking(true)?;
                std::io::Result::Ok(std::net::TcpStream::from(socket))
            })
            .unwrap()?;
        TcpStream::from_std(std_stream)
    }

    /// A connection from `pod` to `destination` that stays open, after one echo through it.
    async fn open_echo(&self, pod: &str, destination: SocketAddr) -> TcpStream {
        let mut stream = self.connect_via_agent(pod, destination).await.unwrap();
        assert!(round_trip(&mut stream).await, "no echo from {destination}");
        stream
    }

    /// The agents' metrics, as Prometheus text.
    fn metrics(&self) -> String {
        let mut text = String::new();
        for agent in &self.agents {
            prometheus_client::encoding::text::encode(&mut text, &agent.registry).unwrap();
        }
        text
    }
}

/// Whether an open echo connection still answers.
async fn round_trip(stream: &mut TcpStream) -> bool {
    let exchange = async {
        stream.write_all(b"ping").await?;
        let mut reply = [0u8; 4];
        stream.read_exact(&mut reply).await?;
        std::io::Result::Ok(&reply == b"ping")
    };
    matches!(tokio::time::timeout(TIMEOUT, exchange).await, Ok(Ok(true)))
}

/// Whether an open connection is closed (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(limit, stream.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// An echo server in `netns` on `ip:port`, answering until the test ends.
fn echo_server(netns: &Netns, ip: Ipv4Addr, port: u16) {
    let listener = netns
        .run(move || std::net::TcpListener::bind((ip, port)))
        .unwrap()
        .unwrap();
    listener.set_nonblocking(true).unwrap();
    let listener = TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
}

fn only_principal(name: &str, principal: &str) -> Authorization {
    Authorization {
        name: name.into(),
        namespace: "shop".into(),
        scope: PolicyScope::Namespace,
        action: PolicyAction::Allow,
        rules: vec![Rule {
            clauses: vec![Clause {
                matches: vec![ConnectionMatch {
                    principals: vec![WildcardMatch::Exact(principal.into())],
                    ..Default::default()
                }],
            }],
        }],
        dry_run: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_node_traffic_is_mutual_tls_and_authorized_by_identity() {
    logs::capture();
    let mesh = Mesh::start().await;
    let server = mesh.testbed.pod("server");
    echo_server(&server.netns, server.ip, APP_PORT);
    let destination = SocketAddr::from((server.ip, APP_PORT));

    let capture = FabricCapture::start(&mesh.testbed).expect("capture");
    let secret = b"weft-payload-that-must-never-appear-in-clear".repeat(20);
    let reply = mesh
        .echo_via_agent("client", destination, &secret)
        .await
        .expect("echo through both agents");
    assert_eq!(reply, secret);
    let captured = capture
        .finish(
            "tls.handshake.type == 2",
            &["ip.src", "tls.handshake.extensions.supported_version"],
        )
        .expect("capture");
    assert!(
        !captured.contains_bytes(b"weft-payload-that-must-never-appear"),
        "the payload crossed the fabric in clear"
    );
    // The client's record names the client pod as the source, not the redirect's loopback.
    explained(&[
        "connection complete",
        "direction=\"outbound\"",
        format!("src={}:", mesh.testbed.pod("client").ip).as_str(),
        format!("dst={destination}").as_str(),
    ]);
    let tls = captured.fields;
    assert!(
        tls.contains("0x0304"),
        "no TLS 1.3 ServerHello on the fabric: {tls:?}"
    );
    assert!(
        tls.lines().all(|l| l.contains(&server.ip.to_string())),
        "TLS came from somewhere other than the server pod's 15008: {tls:?}"
    );

    // The server's agent sees the client's identity: allowing only the client's principal keeps
    // it working, allowing only someone else refuses it.
    mesh.both_agents(|store| {
        store.insert_policy(only_principal(
            "only-client",
            "cluster.local/ns/shop/sa/client",
        ))
    });
    assert_eq!(
        mesh.echo_via_agent("client", destination, b"again")
            .await
            .unwrap(),
        b"again"
    );
    mesh.both_agents(|store| {
        store.insert_policy(only_principal(
            "only-client",
            "cluster.local/ns/shop/sa/someone-else",
        ))
    });
    let refused = mesh.echo_via_agent("client", destination, b"denied").await;
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "a denied connection carried data: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_node_skips_tls_but_keeps_policy_and_outside_passes_through() {
    let mesh = Mesh::start().await;
    let neighbor = mesh.testbed.pod("neighbor");
    echo_server(&neighbor.netns, neighbor.ip, APP_PORT);
    let destination = SocketAddr::from((neighbor.ip, APP_PORT));
    assert_eq!(
        mesh.echo_via_agent("client", destination, b"next door")
            .await
            .unwrap(),
        b"next door"
    );

    // The neighbor's policy applies although no TLS is involved.
    mesh.both_agents(|store| {
        store.insert_policy(only_principal(
            "only-server",
            "cluster.local/ns/shop/sa/server",
        ))
    });
    let refused = mesh.echo_via_agent("client", destination, b"denied").await;
    assert!(
        refused.as_ref().map_or(true, |r| r.is_empty()),
        "{refused:?}"
    );

    // The control-plane host is outside the mesh: plain TCP from the client pod's address.
    let host = mesh.testbed.control_plane().unwrap();
    echo_server(&host.netns, host.ip, APP_PORT);
    let outside = SocketAddr::from((host.ip, APP_PORT));
    assert_eq!(
        mesh.echo_via_agent("client", outside, b"plain")
            .await
            .unwrap(),
        b"plain"
    );
}

/// Connections counted closed with `flags` (a same-node connection has one record, the
/// source's; one over HBONE one at each end).
fn closed_with(text: &str, flags: &str) -> u64 {
    Exposition::parse(text).count(
        "istio_tcp_connections_closed_total",
        &[("response_flags", flags)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_a_policy_no_longer_allows_are_closed() {
    logs::capture();
    let mesh = Mesh::start().await;
    let server = mesh.testbed.pod("server");
    let neighbor = mesh.testbed.pod("neighbor");
    echo_server(&server.netns, server.ip, APP_PORT);
    echo_server(&neighbor.netns, neighbor.ip, APP_PORT);
    // Over HBONE to the other node, and to a pod of the same node (no TLS).
    let mut remote = mesh
        .open_echo("client", SocketAddr::from((server.ip, APP_PORT)))
        .await;
    let mut local = mesh
        .open_echo("client", SocketAddr::from((neighbor.ip, APP_PORT)))
        .await;
    let denied_before = closed_with(&mesh.metrics(), "DENY");

    // A policy that still allows the client changes nothing for its connections.
    mesh.both_agents(|store| {
        store.insert_policy(only_principal(
            "only-client",
            "cluster.local/ns/shop/sa/client",
        ))
    });
    assert!(round_trip(&mut remote).await && round_trip(&mut local).await);

    // One that no longer does closes both, at once.
    mesh.both_agents(|store| {
        store.insert_policy(only_principal(
            "only-client",
            "cluster.local/ns/shop/sa/someone-else",
        ))
    });
    assert!(
        closed_within(&mut remote, Duration::from_secs(1)).await,
        "the cross-node connection is still open a second after the policy denied it"
    );
    assert!(
        closed_within(&mut local, Duration::from_secs(1)).await,
        "the same-node connection is still open a second after the policy denied it"
    );
    // Counted as closed by policy, and logged with the reason.
    assert!(
        closed_with(&mesh.metrics(), "DENY") >= denied_before + 2,
        "{}",
        mesh.metrics()
    );
    explained(&[
        "connection complete",
        "response_flags=DENY",
        "connection closed due to policy change",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_leaves_the_mesh_loses_its_open_connections() {
    let mesh = Mesh::start().await;
    let server = mesh.testbed.pod("server");
    let neighbor = mesh.testbed.pod("neighbor");
    echo_server(&server.netns, server.ip, APP_PORT);
    echo_server(&neighbor.netns, neighbor.ip, APP_PORT);
    let mut to_server = mesh
        .open_echo("client", SocketAddr::from((server.ip, APP_PORT)))
        .await;
    let mut from_neighbor = mesh
        .open_echo("neighbor", SocketAddr::from((server.ip, APP_PORT)))
        .await;

    // The client leaves: its own connections end; the neighbor's are not its business.
    mesh.agents[0]
        .manager
        .remove(&enrolled(mesh.testbed.pod("client")).uid)
        .await
        .unwrap();
    assert!(
        closed_within(&mut to_server, Duration::from_secs(1)).await,
        "the departed pod's outbound connection is still open"
    );
    assert!(round_trip(&mut from_neighbor).await);

    // The server leaves: the connections into it end.
    mesh.agents[1]
        .manager
        .remove(&enrolled(server).uid)
        .await
        .unwrap();
    assert!(
        closed_within(&mut from_neighbor, Duration::from_secs(1)).await,
        "a connection into the departed pod is still open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_with_endpoints_on_two_nodes_uses_both() {
    let mesh = Mesh::start().await;
    let vip = SocketAddr::from(([10, 96, 0, 10], 80));
    let key = NamespacedHostname {
        namespace: "shop".into(),
        hostname: "echo.shop.svc.cluster.local".into(),
    };
    // Endpoints: neighbor (node1) and server (node2), each answering with its own name.
    for name in ["neighbor", "server"] {
        let pod = mesh.testbed.pod(name);
        let listener = pod
            .netns
            .run(move || std::net::TcpListener::bind((pod.ip, APP_PORT)))
            .unwrap()
            .unwrap();
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let answer = name.as_bytes().to_vec();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut sink = Vec::new();
                    let _ = stream.read_to_end(&mut sink).await;
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        let mut w = workload(pod, name, TunnelProtocol::Hbone);
        w.services.insert(key.clone(), [(80, APP_PORT)].into());
        mesh.both_agents(|store| store.insert_workload(w.clone()));
    }
    mesh.both_agents(|store| {
        store.insert_service(node_agent::state::Service {
            name: "echo".into(),
            namespace: "shop".into(),
            hostname: key.hostname.clone(),
            vips: vec![vip.ip()],
            ports: [(80, APP_PORT)].into(),
            subject_alt_names: vec![],
            waypoint: None,
            load_balancing: node_agent::state::LoadBalancingMode::Standard,
            routing_preferences: vec![],
            allow_unhealthy: false,
        })
    });
    let mut seen = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let reply = mesh.echo_via_agent("client", vip, b"hi").await.unwrap();
        *seen.entry(String::from_utf8(reply).unwrap()).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "both endpoints must receive connections: {seen:?}"
    );
    assert!(
        seen.values().all(|n| *n >= 3),
        "round robin is lopsided: {seen:?}"
    );
}

/// A TLS connection to `pod`'s HBONE port from the client pod, presenting a certificate for
/// `identity` from the mesh CA and offering `alpn`.
async fn raw_tls_to(
    mesh: &Mesh,
    certificates: &LocalCertificates,
    identity: &weft_identity::SpiffeId,
    server: &Pod,
    expected_server: &weft_identity::SpiffeId,
    alpn: &[u8],
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use weft_identity::CertificateSource;
    let certificate = certificates.fetch(identity).await.unwrap();
    let mut config = (*weft_identity::client_config(
        &certificate,
        &certificates.trust_roots().unwrap(),
        expected_server.clone(),
    )
    .unwrap())
    .clone();
    config.alpn_protocols = vec![alpn.to_vec()];
    let client = mesh.testbed.pod("client");
    let target = SocketAddr::from((server.ip, 15008));
    let tcp = client
        .netns
        .run(move || std::net::TcpStream::connect_timeout(&target, TIMEOUT))
        .unwrap()?;
    tcp.set_nonblocking(true)?;
    let tcp = TcpStream::from_std(tcp)?;
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(weft_identity::hbone_server_name(server.ip.into()), tcp)
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_is_refused_and_the_agent_keeps_serving() {
    logs::capture();
    let mesh = Mesh::start().await;
    let server = mesh.testbed.pod("server");
    echo_server(&server.netns, server.ip, APP_PORT);
    let destination = SocketAddr::from((server.ip, APP_PORT));
    let server_id = weft_identity::SpiffeId::new("cluster.local", "shop", "server").unwrap();
    let client_id = weft_identity::SpiffeId::new("cluster.local", "shop", "client").unwrap();
    // An attacker with certificates from the same CA (a compromised workload, say).
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let foreign = local_certificates(ca);
    let h2 = weft_hbone::H2Config::default();

    // 1. A certificate from a CA the mesh does not trust: the handshake fails.
    let result = raw_tls_to(&mesh, &foreign, &client_id, server, &server_id, b"h2").await;
    let failed = match result {
        Err(_) => true,
        // TLS 1.3 servers reject the client certificate after the client finished: the first
        // read then fails.
        Ok(mut tls) => {
            let mut byte = [0u8; 1];
            tls.read(&mut byte).await.map_or(true, |n| n == 0)
        }
    };
    assert!(failed, "a foreign CA's client certificate was accepted");
    explained(&["inbound hbone connection refused", "tls handshake"]);

    // The remaining cases use certificates from the mesh's own CA: take them from the agent
    // that serves the client, as a compromised pod would.
    let mesh_ca = mesh_certificates(&mesh).await;

    // 2. HTTP/1.1 instead of h2: no common ALPN, no handshake.
    let result = raw_tls_to(&mesh, &mesh_ca, &client_id, server, &server_id, b"http/1.1").await;
    let refused = match result {
        Err(_) => true,
        Ok(mut tls) => {
            let mut byte = [0u8; 1];
            tls.read(&mut byte).await.map_or(true, |n| n == 0)
        }
    };
    assert!(refused, "an HTTP/1.1 client got through");
    explained(&[
        "inbound hbone connection refused",
        "tls handshake",
        "protocol",
    ]);

    // 3. A trust-domain mismatch: the connection is closed before any tunnel.
    let evil = weft_identity::SpiffeId::new("evil.local", "shop", "client").unwrap();
    if let Ok(tls) = raw_tls_to(&mesh, &mesh_ca, &evil, server, &server_id, b"h2").await {
        let tunnel =
            weft_hbone::connect(tls, &weft_hbone::ConnectRequest::new(destination), &h2).await;
        assert!(tunnel.is_err(), "a foreign trust domain opened a tunnel");
    }
    explained(&[
        "inbound hbone connection refused",
        "peer identity",
        "evil.local",
    ]);

    // 4. A CONNECT to an address the server pod does not own, and to the agent's own port.
    for authority in [
        SocketAddr::from((mesh.testbed.pod("neighbor").ip, APP_PORT)),
        SocketAddr::from((server.ip, 15008)),
    ] {
        let tls = raw_tls_to(&mesh, &mesh_ca, &client_id, server, &server_id, b"h2")
            .await
            .unwrap();
        let error = weft_hbone::connect(tls, &weft_hbone::ConnectRequest::new(authority), &h2)
            .await
            .err()
            .unwrap_or_else(|| panic!("CONNECT to {authority} was accepted"));
        assert_eq!(
            error.status().map(|s| s.as_u16()),
            Some(400),
            "{authority}: {error}"
        );
    }
    explained(&["hbone tunnel refused", "is not an address of this pod"]);
    explained(&["hbone tunnel refused", "is an agent port"]);

    // A CONNECT its policy denies: 401, as ztunnel answers it, with DENY in the record.
    mesh.both_agents(|store| {
        store.insert_policy(only_principal(
            "only-someone-else",
            "cluster.local/ns/shop/sa/someone-else",
        ))
    });
    let tls = raw_tls_to(&mesh, &mesh_ca, &client_id, server, &server_id, b"h2")
        .await
        .unwrap();
    let error = weft_hbone::connect(tls, &weft_hbone::ConnectRequest::new(destination), &h2)
        .await
        .expect_err("a CONNECT the policy denies was accepted");
    assert_eq!(error.status().map(|s| s.as_u16()), Some(401), "{error}");
    explained(&[
        "connection complete",
        "direction=\"inbound\"",
        "response_flags=DENY",
        "allow policies exist, none matched",
    ]);
    mesh.both_agents(|store| store.remove_policy("shop/only-someone-else"));

    // 5. The server presents a different identity than the client's agent expects.
    mesh.agents[0].store.insert_workload(workload(
        server,
        "expected-someone-else",
        TunnelProtocol::Hbone,
    ));
    let result = mesh.echo_via_agent("client", destination, b"x").await;
    assert!(
        result.as_ref().map_or(true, |r| r.is_empty()),
        "wrong server identity accepted: {result:?}"
    );
    explained(&["outbound connection failed", "expected-someone-else"]);
    mesh.agents[0]
        .store
        .insert_workload(workload(server, "server", TunnelProtocol::Hbone));

    // 6. A pod connecting to its agent's ports directly: the outbound listener with no recorded
    // destination, and the plaintext listener addressed as such.
    let client = mesh.testbed.pod("client");
    let direct = client
        .netns
        .run(|| {
            std::net::TcpStream::connect_timeout(&SocketAddr::from((client.ip, 15006)), TIMEOUT)
        })
        .unwrap()
        .unwrap();
    direct.set_nonblocking(true).unwrap();
    let mut direct = TcpStream::from_std(direct).unwrap();
    let mut sink = Vec::new();
    let _ = direct.write_all(b"loop?").await;
    let read = tokio::time::timeout(TIMEOUT, direct.read_to_end(&mut sink)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a connection to 15006 itself was served"
    );
    explained(&["inbound plaintext connection refused", ":15006"]);

    // After all of it, the agents still carry traffic.
    assert_eq!(
        mesh.echo_via_agent("client", destination, b"still fine")
            .await
            .unwrap(),
        b"still fine"
    );
}

/// Asserts that the agents logged a line explaining a refusal.
fn explained(needles: &[&str]) {
    assert!(
        logs::line_within(TIMEOUT, needles),
        "no log line with {needles:?}:\n{}",
        logs::text()
    );
}

/// A certificate source issuing from the mesh's CA, as a compromised workload would hold.
async fn mesh_certificates(mesh: &Mesh) -> LocalCertificates {
    mesh.ca_for_tests()
}

fn workload(pod: &Pod, sa: &str, tunnel: TunnelProtocol) -> Workload {
    meshed(&pod.name, "shop", sa, &pod.node, IpAddr::V4(pod.ip), tunnel)
}

fn enrolled(pod: &Pod) -> EnrolledPod {
    enrolled_pod(&pod.name, "shop", pod.netns.path(), IpAddr::V4(pod.ip))
}
