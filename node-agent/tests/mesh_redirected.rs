//! The agent's real data path fed by the real eBPF redirection, on the testbed: unmodified
//! clients (curl, a plain bash TCP client) in enrolled pods, mutual TLS across the fabric,
//! inbound capture for STRICT and PERMISSIVE pods, failing closed while the agent is down, and the
//! next agent taking the pods over in place beside a running one (a rolling update).
//! The agents run in this process (one `PodManager` + `Redirection` per node). Needs root.

mod support;

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use node_agent::{
    agent::Agent,
    ebpf::Redirection,
    enrollment::{EnrolledPod, PodLifecycle},
    pods::PodManager,
    state::{TunnelProtocol, Workload, WorkloadStore},
    testing::local_certificates,
    testing::{enrolled_pod, workload as meshed},
};
use support::{Server, curl, redirection_config};
use weft_identity::CertificateAuthority;
use weft_policy::l4::{
    EffectivePeerAuthentication, MtlsMode, PolicyScope, peer_authentication_policy,
};
use weft_testbed::{Pod, Testbed, Topology};

const APP_PORT: u16 = 8080;

/// An agent for one node: its store, redirection and pod manager.
struct NodeAgent {
    store: WorkloadStore,
    manager: std::sync::Arc<PodManager>,
}

fn start_agent(
    testbed: &Testbed,
    node: &str,
    ca: &Arc<CertificateAuthority>,
    enrolled_pods: &[&str],
) -> (NodeAgent, Arc<Redirection>) {
    let mut config = redirection_config(testbed, false);
    config.pin_root = config.pin_root.join(node);
    let redirection = Arc::new(Redirection::open(config).expect("load redirection"));
    let store = WorkloadStore::new();
    for pod in testbed.pods() {
        let tunnel = if ["client", "server"].contains(&pod.name.as_str()) {
            TunnelProtocol::Hbone
        } else {
            TunnelProtocol::None
        };
        store.insert_workload(workload(pod, tunnel));
    }
    let Agent {
        store,
        pods: manager,
        ..
    } = Agent::build(local_certificates(ca.clone()).source(), redirection.clone())
        .store(store)
        .capture(redirection.clone())
        .start()
        .expect("agent");
    let agent = NodeAgent { store, manager };
    for name in enrolled_pods {
        futures_lite_block(agent.manager.add(enrolled(testbed.pod(name)))).expect("enroll");
    }
    (agent, redirection)
}

/// Runs an enrollment future to completion (the pod manager's work is synchronous inside).
fn futures_lite_block<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}

fn bash_tcp(testbed: &Testbed, pod: &str, target: SocketAddr) -> (Option<i32>, String) {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && printf 'ping\\n' >&3 && timeout 5 head -n1 <&3",
        target.ip(),
        target.port()
    );
    let output = testbed
        .pod_command(pod, "timeout")
        .args(["8", "bash", "-c", &script])
        .output()
        .expect("run bash");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn unmodified_clients_go_through_the_agents_and_fail_closed_when_the_agent_is_down() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let testbed = Topology::new()
        .node("node1", &["client"])
        .node("node2", &["server", "outsider"])
        .build()
        .expect("testbed");
    let server_pod = testbed.pod("server");
    let server = Server::start(&server_pod.netns, &format!("{}:{APP_PORT}", server_pod.ip));
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let (agent1, redirection1) = start_agent(&testbed, "node1", &ca, &["client"]);
    let (agent2, redirection2) = start_agent(&testbed, "node2", &ca, &["server"]);
    let url = format!("http://{}:{APP_PORT}/", server_pod.ip);
    let target = SocketAddr::from((server_pod.ip, APP_PORT));

    // curl and a plain TCP client, unmodified, reach the server through both agents: the server
    // sees connections from its own agent, made from the client's address inside its netns.
    assert_eq!(curl(&testbed, "client", &url), (Some(0), "ok".to_string()));
    assert_eq!(
        bash_tcp(&testbed, "client", target),
        (Some(0), "ping\n".to_string())
    );
    let peers = server.peers();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(
        peers
            .iter()
            .all(|p| p.ip() == IpAddr::V4(testbed.pod("client").ip)),
        "the server did not see the client's address: {peers:?}"
    );
    let stats = redirection1.stats().unwrap();
    assert!(stats.redirected_connects >= 2, "{stats:?}");

    // Inbound capture: the non-enrolled outsider reaches the PERMISSIVE server through the
    // agent's plaintext listener...
    assert_eq!(
        curl(&testbed, "outsider", &url),
        (Some(0), "ok".to_string())
    );
    assert!(redirection2.stats().unwrap().steered_inbound >= 1);
    // ... and is refused once the server's namespace is STRICT.
    let strict = peer_authentication_policy(&EffectivePeerAuthentication {
        name: "default".into(),
        namespace: "shop".into(),
        scope: PolicyScope::Namespace,
        mode: MtlsMode::Strict,
        port_level: Default::default(),
    })
    .unwrap();
    agent2.store.insert_policy(strict);
    let before = server.peers().len();
    let (code, body) = curl(&testbed, "outsider", &url);
    assert_ne!(code, Some(0), "STRICT let plaintext through: {body}");
    assert_eq!(server.peers().len(), before);
    // Mutual TLS still passes STRICT.
    assert_eq!(curl(&testbed, "client", &url), (Some(0), "ok".to_string()));

    // Fail closed: the client's agent goes away (listeners closed, programs stay pinned). New
    // connections fail and the server sees nothing.
    drop(agent1);
    drop(redirection1);
    let before = server.peers().len();
    let (code, _) = curl(&testbed, "client", &url);
    assert_ne!(code, Some(0), "traffic bypassed the stopped agent");

    // The agent comes back: it adopts the pinned redirection, the enrollment snapshot re-adds
    // the pod, and traffic flows with no re-enrollment of the programs.
    let (agent1, redirection1) = start_agent(&testbed, "node1", &ca, &["client"]);
    assert_eq!(curl(&testbed, "client", &url), (Some(0), "ok".to_string()));
    // The server accepts in order: had the failed attempt reached it, it would be listed before
    // this answered request, which came through the server's agent.
    let peers = server.peers();
    assert_eq!(
        peers[before..],
        [peers[before]],
        "the server saw a connection while the client's agent was down: {peers:?}"
    );
    assert_eq!(
        peers[before].ip(),
        IpAddr::V4(testbed.pod("client").ip),
        "{peers:?}"
    );

    drop(agent1);
    drop(agent2);
    let _ = Arc::try_unwrap(redirection1).map(|r| r.uninstall());
    let _ = Arc::try_unwrap(redirection2).map(|r| r.uninstall());
}

fn workload(pod: &Pod, tunnel: TunnelProtocol) -> Workload {
    meshed(
        &pod.name,
        "shop",
        &pod.name,
        &pod.node,
        IpAddr::V4(pod.ip),
        tunnel,
    )
}

fn enrolled(pod: &Pod) -> EnrolledPod {
    enrolled_pod(&pod.name, "shop", pod.netns.path(), IpAddr::V4(pod.ip))
}

/// The pod's pinned inbound steering link, as a file of bpffs: enrolling anew would re-create it
/// (another inode), taking it over in place keeps it.
fn steering_pin(testbed: &Testbed, node: &str, pod: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let config = redirection_config(testbed, false);
    let pin = config
        .pin_root
        .join(node)
        .join("pods")
        .join(enrolled(testbed.pod(pod)).uid)
        .join("sk_lookup");
    std::fs::metadata(&pin)
        .unwrap_or_else(|e| panic!("{}: {e}", pin.display()))
        .ino()
}

#[test]
fn the_next_agent_takes_the_pods_over_in_place_beside_the_running_one() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let _entered = runtime.enter();
    let testbed = Topology::new()
        .node("node1", &["client"])
        .node("node2", &["server"])
        .build()
        .expect("testbed");
    let server_pod = testbed.pod("server");
    let server = Server::start(&server_pod.netns, &format!("{}:{APP_PORT}", server_pod.ip));
    let ca = Arc::new(CertificateAuthority::generate().unwrap());
    let (old, old_redirection) = start_agent(&testbed, "node1", &ca, &["client"]);
    let (agent2, redirection2) = start_agent(&testbed, "node2", &ca, &["server"]);
    let url = format!("http://{}:{APP_PORT}/", server_pod.ip);
    assert_eq!(curl(&testbed, "client", &url), (Some(0), "ok".to_string()));
    let pin = steering_pin(&testbed, "node1", "client");

    // The next agent opens the same pins while the old one serves: it is not ready (the pod is
    // captured, not served by it) until the enrolling side's snapshot reaches it...
    let (next, next_redirection) = start_agent(&testbed, "node1", &ca, &[]);
    assert_eq!(next.manager.unserved(), 1);
    // ... which it takes over with its own listeners beside the old one's (the pod's ports are
    // shared, not refused), in place: never un-enrolled, not for an instant.
    futures_lite_block(next.manager.add(enrolled(testbed.pod("client")))).expect("take over");
    assert_eq!(next.manager.unserved(), 0);
    assert_eq!(
        steering_pin(&testbed, "node1", "client"),
        pin,
        "the pod was enrolled anew (uncaptured meanwhile)"
    );
    assert_eq!(curl(&testbed, "client", &url), (Some(0), "ok".to_string()));

    // The old agent goes (its listeners close): the next one serves the pod alone.
    drop(old);
    drop(old_redirection);
    for _ in 0..5 {
        assert_eq!(curl(&testbed, "client", &url), (Some(0), "ok".to_string()));
    }
    let stats = next_redirection.stats().unwrap();
    assert!(stats.redirected_connects >= 7, "{stats:?}");
    assert!(server.peers().len() >= 7);

    drop(next);
    drop(agent2);
    let _ = Arc::try_unwrap(next_redirection).map(|r| r.uninstall());
    let _ = Arc::try_unwrap(redirection2).map(|r| r.uninstall());
}
