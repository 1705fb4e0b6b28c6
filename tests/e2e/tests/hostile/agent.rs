//! Attacks on the node agents and the CA: a node's stolen credentials used to claim another
//! source address, plaintext on Istio's ports of a STRICT pod (directly, and forwarded by its
//! node masqueraded to the node's own address), a pod outside the mesh holding
//! the agent's descriptors, a selector DENY written with HTTP attributes, a hostile enrollment
//! message; and, kept failing, HBONE to agent ports and to pods served elsewhere, certificates of
//! every wrong kind, data sent before the tunnel is authorized, attempts to slip out of the
//! capture, and certificates asked for identities of other nodes.

use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use weft_e2e::{Mesh, PodSpec, waypoint_resources};
use weft_identity::SpiffeId;

use crate::attacker::{Connect, closed_by_server, hbone, hold_connections, in_netns};
use crate::certs::{ca_request, csr, issued, unacceptable};
use crate::{CLIENT, Checks, NODE1, app_saw, http_service, start, status, wait_for};

const REVIEWS_VIP: &str = "10.96.0.20";
const CART_VIP: &str = "10.96.0.30";

/// Connections a source may hold on one pod's HBONE port (the agent's default).
const PER_SOURCE: usize = 256;

fn config() -> String {
    format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: vault}}
---
{reviews}---
{cart}---
{waypoint}---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: shop}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {{name: strict, namespace: vault}}
spec: {{mtls: {{mode: STRICT}}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: reviews-deny-admin, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: [/admin, /admin/*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: cart-deny-nodes, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: cart}}}}
  action: DENY
  rules: [{{from: [{{source: {{ipBlocks: ["{NODE1}/32"]}}}}]}}]
"#,
        reviews = http_service("reviews", REVIEWS_VIP, true),
        cart = http_service("cart", CART_VIP, false),
        waypoint = waypoint_resources("shop"),
    )
}

fn agent_mesh() -> Mesh {
    let pods = vec![
        PodSpec::client("client", "node1", "shop"),
        PodSpec::client("outsider", "node1", "shop").not_enrolled(),
        PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
        PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
        PodSpec::app("cart", "node2", "shop", "cart", "v1"),
        PodSpec::app("vault", "node2", "vault", "vault", "v1").with_http_port(15020),
        PodSpec::waypoint("waypoint", "node2", "shop"),
    ];
    let mesh = start(pods, config());
    wait_for(&mesh, "client", &format!("http://{REVIEWS_VIP}/ready"));
    wait_for(&mesh, "client", &format!("http://{CART_VIP}/ready"));
    mesh
}

#[test]
fn the_agents_and_the_ca_refuse_what_their_peers_may_not_do() {
    let mut mesh = agent_mesh();
    let mut checks = Checks::default();
    let node1 = mesh.testbed.node("node1").netns.clone();
    let v2 = mesh.pod("reviews-v2").ip;
    let cart = mesh.pod("cart").ip;
    let vault = mesh.pod("vault").ip;
    // What a stolen node1 bootstrap token gives: the identities of node1's pods.
    let stolen = issued(&mesh, "node1", CLIENT);

    // A claimed source address is believed only from the destination's waypoint: claiming to be
    // the pod itself does not get past "only the waypoint may reach this pod" (and its DENY on
    // /admin), claiming to be elsewhere does not escape an ipBlocks DENY.
    let bypass = |forwarded: Option<String>, ip, authority: String, path: &str, host: &str| {
        let mut connect = Connect::to(std::net::IpAddr::V4(ip), authority).get(path, host);
        if let Some(source) = forwarded {
            connect = connect.forwarded_for(source);
        }
        let stolen = &stolen;
        in_netns(&node1, || async move { hbone(stolen, &connect).await })
    };
    for forwarded in [None, Some(v2.to_string())] {
        let outcome = bypass(
            forwarded.clone(),
            v2,
            format!("{v2}:8080"),
            "/admin-past-the-waypoint",
            "reviews",
        );
        checks.equal(
            outcome.status,
            Some(401),
            format_args!("past the waypoint, forwarded {forwarded:?} ({outcome:?})"),
        );
    }
    checks.check(
        !app_saw(&mesh, "reviews-v2", "/admin-past-the-waypoint"),
        "reviews-v2 served a tunnel that bypassed its waypoint",
    );
    for forwarded in [None, Some("8.8.8.8".to_owned())] {
        let outcome = bypass(
            forwarded.clone(),
            cart,
            format!("{cart}:8080"),
            "/from-a-denied-node",
            "cart",
        );
        checks.equal(
            outcome.status,
            Some(401),
            format_args!("ipBlocks DENY, forwarded {forwarded:?} ({outcome:?})"),
        );
    }
    checks.check(
        !app_saw(&mesh, "cart", "/from-a-denied-node"),
        "cart served a source its ipBlocks DENY names",
    );
    let vip = |path: &str| format!("http://{REVIEWS_VIP}{path}");
    checks.equal(
        status(&mesh, "client", &[&vip("/admin")]),
        403,
        "client to /admin",
    );
    checks.equal(
        status(&mesh, "client", &[&vip("/through-the-waypoint")]),
        200,
        "client to reviews",
    );
    checks.equal(
        status(&mesh, "client", &[&format!("http://{CART_VIP}/")]),
        200,
        "client to cart",
    );

    // STRICT holds on every port but HBONE's: plaintext to an application on Istio's 15020 is
    // refused, mutual TLS to it is carried.
    let on_15020 = format!("http://{vault}:15020/plaintext-on-15020");
    checks.equal(
        status(&mesh, "outsider", &[&on_15020]),
        0,
        "plaintext to 15020 of a STRICT pod",
    );
    checks.check(
        !app_saw(&mesh, "vault", "/plaintext-on-15020"),
        "vault served plaintext under STRICT",
    );
    checks.equal(
        status(
            &mesh,
            "client",
            &[&format!("http://{vault}:15020/mtls-on-15020")],
        ),
        200,
        "mutual TLS to an application on 15020",
    );

    // The node's own connections are let through to a STRICT pod's application (the kubelet's
    // probes, as Istio lets them through); a connection the node only forwards is not, even
    // masqueraded to the very address the node's own connections come from.
    let node2 = mesh.testbed.node("node2").netns.clone();
    let probe = mesh
        .node_curl(
            "node2",
            &format!("http://{vault}:15020/probe-from-the-node"),
        )
        .unwrap();
    checks.equal(probe.0, 200, "the node's probe of a STRICT pod");
    let outsider = mesh.pod("outsider").ip;
    node2.masquerade(outsider, vault).unwrap();
    checks.equal(
        status(
            &mesh,
            "outsider",
            &[&format!("http://{vault}:15020/masqueraded-by-the-node")],
        ),
        0,
        "plaintext forwarded by the node and masqueraded to its address",
    );
    checks.check(
        !app_saw(&mesh, "vault", "/masqueraded-by-the-node"),
        "vault served plaintext masqueraded by its node under STRICT",
    );

    // An HTTP-only DENY enforced by an agent fails safe: it refuses every connection its other
    // conditions match (here: all), the controller says so, and removing it restores service.
    mesh.write_config(
        "40-cart-deny-admin.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: cart-deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
"#,
    )
    .unwrap();
    let cart_url = format!("http://{CART_VIP}/while-http-deny");
    checks.check(
        mesh.eventually(Duration::from_secs(10), || {
            status(&mesh, "client", &[&cart_url]) == 0
        }),
        "a DENY on HTTP paths denied nothing at the agent",
    );
    let controller_log = mesh.log_of("controller");
    checks.check(
        controller_log.contains("shop/cart-deny-admin")
            && controller_log.contains("HTTP attributes"),
        "the controller did not warn about the HTTP-only DENY",
    );
    let monitoring = mesh.controller_metrics();
    checks.check(
        monitoring
            .lines()
            .any(|l| l == "weft_authorization_policies_enforced_without_http_attributes 1"),
        format_args!("the controller did not count the HTTP-only DENY:\n{monitoring}"),
    );
    mesh.remove_config("40-cart-deny-admin.yaml").unwrap();
    wait_for(
        &mesh,
        "client",
        &format!("http://{CART_VIP}/after-http-deny"),
    );

    // A pod outside the mesh holding connections to a pod's HBONE port without ever starting
    // TLS: beyond the per-source limit they are closed at once, the rest when the handshake
    // times out, and the mesh keeps serving meanwhile.
    let agent = mesh.agent_pid("node2").expect("node2's agent runs");
    let limits = std::fs::read_to_string(format!("/proc/{agent}/limits")).unwrap();
    let open_files: Vec<&str> = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| l.split_whitespace().skip(3).take(2).collect())
        .unwrap_or_default();
    checks.check(
        open_files.len() == 2 && open_files[0] == open_files[1],
        format_args!("the agent did not raise its descriptor limit: {open_files:?}"),
    );
    let outsider = mesh.pod("outsider").netns.clone();
    let attempts = PER_SOURCE + 144;
    let started = Instant::now();
    let (held, failed) = hold_connections(
        &outsider,
        std::net::SocketAddr::from((cart, 15008)),
        attempts,
    );
    let excess = attempts - PER_SOURCE;
    checks.check(
        mesh.eventually(Duration::from_secs(5), || {
            failed + closed_by_server(&held) >= excess
        }),
        format_args!(
            "{} of {attempts} idle connections closed at once, {excess} expected",
            failed + closed_by_server(&held)
        ),
    );
    checks.equal(
        status(&mesh, "client", &[&format!("http://{CART_VIP}/")]),
        200,
        "client to cart while its HBONE port is held",
    );
    checks.check(
        mesh.eventually(Duration::from_secs(20), || {
            closed_by_server(&held) == held.len()
        }),
        format_args!(
            "{} of {} idle connections still open after {:?}",
            held.len() - closed_by_server(&held),
            held.len(),
            started.elapsed()
        ),
    );
    drop(held);

    // A pod uid is a path component of the agent's pins: one that climbs out is refused, and the
    // node keeps serving.
    let socket = mesh.enrollment_socket("node1");
    for message in [
        serde_json::json!({"type": "pod_added", "uid": "../../escape", "namespace": "shop",
            "name": "escape", "netns": "/proc/self/ns/net", "cgroup": "/sys/fs/cgroup",
            "addresses": ["10.251.1.99"]}),
        serde_json::json!({"type": "pod_removed", "uid": "../pods"}),
    ] {
        let mut stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        writeln!(stream, "{message}").unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        checks.check(
            reply.contains("\"error\"") && reply.contains("pod uid") && reply.contains("invalid"),
            format_args!("enrollment {message}: {reply}"),
        );
    }
    mesh.enroll("node1").unwrap();
    checks.equal(
        status(&mesh, "client", &[&format!("http://{CART_VIP}/")]),
        200,
        "client to cart after a hostile enrollment",
    );

    // Kept failing: tunnels to the agent's own ports, to loopback, and to pods this agent does
    // not serve (here or on another node); the echo port of the same pod is the control.
    let gateway = std::net::IpAddr::V4(vault);
    let reviews_v1 = mesh.pod("reviews-v1").ip;
    for authority in [
        format!("{vault}:15008"),
        format!("{vault}:15006"),
        format!("{vault}:15001"),
        "127.0.0.1:7000".to_owned(),
        format!("{cart}:7000"),
        format!("{reviews_v1}:7000"),
    ] {
        let connect = Connect::to(gateway, authority.clone());
        let outcome = in_netns(&node1, || async { hbone(&stolen, &connect).await });
        checks.equal(
            outcome.status,
            Some(400),
            format_args!("CONNECT {authority}"),
        );
    }
    let mut echo = Connect::to(gateway, format!("{vault}:7000"));
    echo.payload = Some(bytes::Bytes::from_static(b"still served\n"));
    let outcome = in_netns(&node1, || async { hbone(&stolen, &echo).await });
    checks.check(
        outcome.answer.contains("still served"),
        format_args!("the echo through a valid tunnel: {outcome:?}"),
    );

    // Kept failing: every kind of certificate the mesh must not accept.
    for (what, credential) in unacceptable(&mesh) {
        let outcome = in_netns(&node1, || async { hbone(&credential, &echo).await });
        checks.check(
            outcome.refused.is_some(),
            format_args!("a certificate with {what} at the agent: {outcome:?}"),
        );
    }

    // Kept failing: bytes sent before the CONNECT is answered never reach a pod that refuses it.
    let early = Connect::to(std::net::IpAddr::V4(v2), format!("{v2}:8080"))
        .early("GET /early-data HTTP/1.1\r\nHost: reviews\r\n\r\n");
    let outcome = in_netns(&node1, || async { hbone(&stolen, &early).await });
    checks.equal(outcome.status, Some(401), "data before the 200");
    checks.check(
        !app_saw(&mesh, "reviews-v2", "/early-data"),
        "data sent before the 200 reached the pod",
    );

    // Kept failing: leaving the capture. Whatever the trick, the client's connections reach the
    // destination's agent over mutual TLS (served, or failing closed when the trick leaves no
    // way to the agent's listener), never in plaintext; 15001 takes no direct connection.
    let cart_direct = format!("{cart}:8080");
    for (trick, args, served) in [
        (
            "TCP Fast Open",
            vec![
                "--tcp-fastopen".to_owned(),
                format!("http://{cart_direct}/fast-open"),
            ],
            true,
        ),
        (
            "an IPv4-mapped IPv6 address",
            vec![format!("http://[::ffff:{cart}]:8080/mapped")],
            true,
        ),
        (
            "SO_BINDTODEVICE (no route to the agent's loopback listener: fails closed)",
            vec![
                "--interface".to_owned(),
                "if!eth0".to_owned(),
                format!("http://{cart_direct}/bound-to-device"),
            ],
            false,
        ),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        checks.equal(
            status(&mesh, "client", &args),
            if served { 200 } else { 0 },
            trick,
        );
    }
    checks.equal(
        status(
            &mesh,
            "client",
            &["http://127.0.0.1:15001/straight-to-15001"],
        ),
        0,
        "a direct connection to 15001",
    );
    let plaintext_from_client = mesh.metrics("node2").lines().any(|l| {
        l.starts_with("istio_tcp_connections_opened_total{")
            && l.contains("reporter=\"destination\"")
            && l.contains("source_workload=\"client\"")
            && !l.contains("connection_security_policy=\"mutual_tls\"")
    });
    checks.check(
        !plaintext_from_client,
        "a connection of the client reached node2 without mutual TLS",
    );
    checks.equal(
        status(&mesh, "client", &[&format!("http://{CART_VIP}/")]),
        200,
        "client to cart after the capture tricks",
    );

    // Kept failing: the CA signs only identities of pods on the caller's node, only as the
    // identity the CSR names, and only for the node the token belongs to.
    let id = |s: &str| -> SpiffeId { s.parse().unwrap() };
    let cart_id = id("spiffe://cluster.local/ns/shop/sa/cart");
    let vault_id = id("spiffe://cluster.local/ns/vault/sa/vault");
    let client_id = id(CLIENT);
    for (what, claimed_node, identity, csr_for) in [
        ("another node's pod", "node1", &cart_id, &cart_id),
        (
            "another node's pod, claiming to be it",
            "node2",
            &cart_id,
            &cart_id,
        ),
        (
            "another namespace on another node",
            "node1",
            &vault_id,
            &vault_id,
        ),
        ("a CSR naming someone else", "node1", &client_id, &cart_id),
    ] {
        let result = ca_request(&mesh, "node1", claimed_node, identity, csr(csr_for));
        checks.check(result.is_err(), format_args!("the CA signed {what}"));
    }
    checks.check(
        ca_request(&mesh, "node1", "node1", &client_id, csr(&client_id)).is_ok(),
        "the CA refused node1 its own pod's identity",
    );
    checks.finish(&mesh);
}
