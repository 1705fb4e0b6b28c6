//! Resilience with the real binaries: certificate rotation under a live connection, a controller
//! outage, and an agent crash (fail closed, then recovery without re-enrolling). Needs root.

use std::{
    collections::BTreeSet,
    process::Child,
    time::{Duration, Instant},
};

use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_test_support::prometheus::Exposition;

/// A client in the pod that keeps one TCP connection to `ip:7000` (the app's echo) busy for
/// `seconds`, checking every echo; prints `ok <n>` at the end, or why it failed.
fn long_connection(mesh: &Mesh, pod: &str, ip: std::net::Ipv4Addr, seconds: u64) -> Child {
    let script = format!(
        r#"
import socket, sys, time
s = socket.create_connection(("{ip}", 7000), timeout=5)
deadline = time.time() + {seconds}
ok = 0
while time.time() < deadline:
    msg = ("ping %d\n" % ok).encode()
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(len(msg) - len(got))
        if not chunk:
            print("closed after", ok); sys.exit(1)
        got += chunk
    if got != msg:
        print("mismatch", got); sys.exit(1)
    ok += 1
    time.sleep(0.25)
print("ok", ok)
"#
    );
    mesh.spawn_in_pod(pod, "python3", &["-c", &script])
        .expect("start the client")
}

fn finish(child: Child) -> String {
    let output = child.wait_with_output().expect("client output");
    assert!(
        output.status.success(),
        "the long connection failed: {} {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn mesh(ttl: Duration) -> Mesh {
    Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("server", "node2", "shop", "server", "v1"),
        ],
        MeshOptions {
            certificate_ttl: ttl,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh")
}

fn certificate_serial(mesh: &Mesh, node: &str, identity: &str) -> Option<String> {
    let dump = mesh.config_dump(node);
    dump["certificates"]
        .as_array()?
        .iter()
        .find(|c| c["identity"] == identity)
        .and_then(|c| c["certificate"]["serial"].as_str().map(String::from))
}

#[test]
fn a_connection_keeps_flowing_across_two_certificate_rotations() {
    let mesh = mesh(Duration::from_secs(60));
    let server = mesh.pod("server").ip;
    let client = long_connection(&mesh, "client", server, 70);
    let identity = "spiffe://cluster.local/ns/shop/sa/client";
    let mut serials = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(70);
    while Instant::now() < deadline {
        if let Some(serial) = certificate_serial(&mesh, "node1", identity) {
            serials.insert(serial);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(
        serials.len() >= 3,
        "expected two rotations (three certificates), saw {serials:?}"
    );
    let out = finish(client);
    assert!(out.starts_with("ok "), "{out}");
    // New connections use the rotated certificates.
    assert_eq!(
        mesh.curl("client", &format!("http://{server}:8080/")).0,
        200
    );
}

#[test]
fn a_controller_outage_drops_nothing_and_the_agents_reconnect() {
    let mut mesh = mesh(Duration::from_secs(3600));
    let server = mesh.pod("server").ip;
    let url = format!("http://{server}:8080/");
    assert_eq!(mesh.curl("client", &url).0, 200);
    let opened = destination_connections(&mesh, "node2");
    let client = long_connection(&mesh, "client", server, 6);
    // The long connection is up (its destination agent counted it) before the outage.
    assert!(
        mesh.eventually(Duration::from_secs(5), || destination_connections(
            &mesh, "node2"
        ) > opened),
        "the long connection never reached the server's agent\n{}",
        mesh.logs()
    );

    mesh.stop_controller();
    // New connections keep working on the last configuration.
    for _ in 0..3 {
        assert_eq!(mesh.curl("client", &url).0, 200, "{}", mesh.logs());
    }
    assert!(
        mesh.eventually(Duration::from_secs(5), || mesh.config_dump("node1")["xds"]
            ["connected"]
            == false)
    );
    // The connection opened before the outage was not dropped.
    assert!(finish(client).starts_with("ok "));

    mesh.start_controller().unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(20), || mesh.config_dump("node1")["xds"]
            ["connected"]
            == true),
        "the agent never reconnected\n{}",
        mesh.logs()
    );
    assert_eq!(mesh.curl("client", &url).0, 200);
}

fn destination_connections(mesh: &Mesh, node: &str) -> u64 {
    Exposition::parse(&mesh.metrics(node)).count(
        "istio_tcp_connections_opened_total",
        &[("reporter", "destination")],
    )
}

#[test]
fn a_killed_agent_fails_closed_and_comes_back_without_re_enrolling() {
    let mut mesh = mesh(Duration::from_secs(3600));
    let server = mesh.pod("server").ip;
    let url = format!("http://{server}:8080/");
    assert_eq!(mesh.curl("client", &url).0, 200);
    // The access log records the connection (once it has closed) with both identities.
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            let log = mesh.log_of("agent-node1");
            log.contains("connection complete")
                && log.contains("spiffe://cluster.local/ns/shop/sa/server")
        }),
        "no access log line:\n{}",
        mesh.log_of("agent-node1")
    );

    mesh.kill_agent("node1");
    let before = destination_connections(&mesh, "node2");
    for _ in 0..3 {
        let (status, body) = mesh.curl("client", &url);
        assert_eq!(status, 0, "traffic bypassed the dead agent: {body}");
    }
    // Any connection reaching the server pod would pass its agent: none arrived.
    assert_eq!(destination_connections(&mesh, "node2"), before);

    mesh.restart_agent("node1").unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh.curl("client", &url).0
            == 200),
        "traffic did not come back\n{}",
        mesh.logs()
    );
    assert!(
        mesh.log_of("agent-node1").contains("adopted"),
        "the restarted agent did not adopt the pinned redirection"
    );
}
