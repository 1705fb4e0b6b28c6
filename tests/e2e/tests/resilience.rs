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

/// When the agent's certificate for `identity` expires, in seconds since the epoch.
fn certificate_expiry(mesh: &Mesh, node: &str, identity: &str) -> Option<f64> {
    Exposition::parse(&mesh.metrics(node))
        .find(
            "weft_workload_certificate_expiry_timestamp_seconds",
            &[("identity", identity)],
        )
        .map(|sample| sample.value)
}

fn epoch_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The controller goes away for longer than the workload certificates live. The certificates
/// held keep serving until they expire, and the HBONE connections opened with them carry on,
/// as ztunnel's pooled connections outlive their certificates; a connection that needs a new
/// handshake after the expiry fails closed (the peer refuses the expired certificate, nothing
/// falls back to plain text). Once the controller is back the agents ask at once, not when
/// their backoff next would, and traffic flows again.
#[test]
fn certificates_expiring_while_the_controller_is_away_fail_closed_and_recover_when_it_is_back() {
    let ttl = Duration::from_secs(20);
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            // The same identity from another pod: its tunnels are its own (the pool is per
            // source pod), so its first one is a new handshake.
            PodSpec::client("late", "node1", "shop").with_service_account("client"),
            PodSpec::app("server", "node2", "shop", "server", "v1"),
        ],
        MeshOptions {
            certificate_ttl: ttl,
            // The discovery stream reconnects within 2 s of the controller's return (15 s by
            // default), so that what is measured is how soon certificates follow it.
            agent_env: vec![("XDS_RETRY_MAX_MS".into(), "2000".into())],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let server = mesh.pod("server").ip;
    let url = format!("http://{server}:8080/");
    assert_eq!(mesh.curl("client", &url).0, 200);
    let identity = "spiffe://cluster.local/ns/shop/sa/client";
    let first = certificate_serial(&mesh, "node1", identity).expect("a certificate");
    let expiry = certificate_expiry(&mesh, "node1", identity).expect("its expiry");

    mesh.stop_controller();
    assert_eq!(
        mesh.curl("client", &url).0,
        200,
        "the certificates held serve while the controller is away\n{}",
        mesh.logs()
    );
    assert!(
        mesh.eventually(ttl + Duration::from_secs(5), || epoch_seconds()
            > expiry + 1.0),
        "the certificate never expired"
    );
    assert_eq!(
        certificate_serial(&mesh, "node1", identity).as_deref(),
        Some(first.as_str()),
        "a certificate was issued without the controller"
    );
    let before = destination_connections(&mesh, "node2");
    let (status, body) = mesh.curl("late", &url);
    assert_ne!(
        status, 200,
        "a new connection was made with an expired certificate: {body}"
    );
    assert_eq!(
        destination_connections(&mesh, "node2"),
        before,
        "a connection reached the server's agent"
    );

    mesh.start_controller().unwrap();
    let back = std::time::Instant::now();
    // Reconnected within 2 s, certificates within 1 s of that; by then the backoff of the
    // certificate requests, failing since the half life, is past 9 s.
    assert!(
        mesh.eventually(Duration::from_secs(7), || mesh.curl("late", &url).0 == 200),
        "traffic did not come back within 7 s of the controller\n{}",
        mesh.logs()
    );
    let renewed = certificate_serial(&mesh, "node1", identity).expect("a certificate");
    assert_ne!(renewed, first, "the expired certificate is still held");
    println!(
        "new connections refused after the expiry; served again {:?} after the controller came back",
        back.elapsed()
    );
}
