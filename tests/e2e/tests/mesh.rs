//! The mesh end to end, with the real binaries: controller (local mode), node agents with their
//! eBPF redirection, the sample app in pods, unmodified clients. Needs root.

use std::time::Duration;

use weft_e2e::fixtures::{CART_SERVICE, DENY_CLIENT};
use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_test_support::prometheus::Exposition;
use weft_testbed::FabricCapture;

/// The workload name `cart-2` carries as Istio's `service.istio.io/workload-name` label.
const CART_2_WORKLOAD: &str = "cart-canary";

fn two_nodes(config: &str) -> Mesh {
    let mut cart_2 = PodSpec::app("cart-2", "node2", "shop", "cart", "v2");
    cart_2.labels.insert(
        "service.istio.io/workload-name".into(),
        CART_2_WORKLOAD.into(),
    );
    Mesh::start(
        vec![
            // Created by the Deployment `storefront`: the workload's name, not the pod's.
            PodSpec::client("client", "node1", "shop").with_deployment("storefront"),
            PodSpec::app("cart-1", "node1", "shop", "cart", "v1"),
            cart_2,
            PodSpec::client("outsider", "node2", "shop").not_enrolled(),
        ],
        MeshOptions {
            config: config.to_string(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh")
}

#[test]
fn pods_reach_each_other_over_mutual_tls_through_both_agents() {
    let mesh = two_nodes(CART_SERVICE);
    let cart2 = mesh.pod("cart-2").ip;
    let capture = FabricCapture::start(&mesh.testbed).expect("capture the fabric");
    let (status, body) = mesh.curl("client", &format!("http://{cart2}:8080/weft-secret-path"));
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"cart-2\""), "{body}");
    assert!(body.contains("weft-secret-path"), "{body}");
    // On the wire between the nodes: TLS 1.3 to port 15008 only, and the request never in clear.
    let captured = capture
        .finish(
            "tcp.len > 0",
            &[
                "tcp.dstport",
                "tcp.srcport",
                "tls.handshake.extensions.supported_version",
            ],
        )
        .expect("read the capture");
    assert!(
        !captured.contains_bytes(b"weft-secret-path"),
        "the request crossed the fabric in clear"
    );
    assert!(
        captured.fields.contains("0x0304"),
        "no TLS 1.3 handshake: {}",
        captured.fields
    );
    for line in captured.fields.lines() {
        assert!(
            line.starts_with("15008\t")
                || line.contains("\t15008\t")
                || line.contains("15010")
                || line.contains("\t15010"),
            "traffic other than HBONE and the control plane on the fabric: {line:?}"
        );
    }

    // Both agents counted it, with the client's identity on the server's side.
    let server_metrics = mesh.metrics("node2");
    let opened = server_metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
        })
        .unwrap_or_else(|| panic!("no destination-side record:\n{server_metrics}"));
    assert!(!opened.ends_with(" 0"), "{opened}");
    // Workloads as Istio names them: the client's Deployment, cart-2's workload-name label;
    // the canonical service stays the `app` label.
    for label in [
        "source_workload=\"storefront\"".to_owned(),
        format!("destination_workload=\"{CART_2_WORKLOAD}\""),
        "destination_canonical_service=\"cart\"".to_owned(),
    ] {
        assert!(opened.contains(&label), "{label} missing in {opened}");
    }
    assert!(
        mesh.metrics("node1")
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"source\""))
    );

    // The config dump shows the workloads and the certificates, never a key.
    let dump = mesh.config_dump("node1");
    let text = dump.to_string();
    assert!(text.contains("uid-cart-2"), "{text}");
    assert!(
        text.contains("spiffe://cluster.local/ns/shop/sa/client"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"));
    assert_eq!(dump["xds"]["connected"], true);
}

#[test]
fn a_service_spreads_over_endpoints_on_both_nodes() {
    let mesh = two_nodes(CART_SERVICE);
    let mut pods = std::collections::BTreeMap::new();
    for _ in 0..12 {
        let (status, body) = mesh.curl("client", "http://10.96.0.10/");
        assert_eq!(status, 200, "{body}\n{}", mesh.logs());
        let value: serde_json::Value = serde_json::from_str(&body).unwrap();
        *pods
            .entry(value["pod"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(pods.len(), 2, "{pods:?}");

    // The destination side names the service the connections came through (it sees only the
    // pod's address; the target port tells), and both sides log the addresses.
    let cart = "destination_service=\"cart.shop.svc.cluster.local\"";
    let destination_lines = mesh.metrics("node2");
    assert!(
        destination_lines.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains(cart)
        }),
        "{destination_lines}"
    );
    let source_log = mesh.log_of("agent-node1");
    assert!(
        source_log
            .lines()
            .any(|l| l.contains("connection complete") && l.contains("dst=10.96.0.10:80")),
        "{source_log}"
    );
    let cart2 = mesh.pod("cart-2").ip;
    let destination_log = mesh.log_of("agent-node2");
    assert!(
        destination_log
            .lines()
            .any(|l| l.contains("connection complete")
                && l.contains(&format!("dst={cart2}:8080"))
                && l.contains(&format!("src={}:", mesh.pod("client").ip))),
        "{destination_log}"
    );
}

#[test]
fn policies_from_the_controller_apply_and_change_live() {
    let mesh = two_nodes(CART_SERVICE);
    let cart2 = mesh.pod("cart-2").ip;
    let url = format!("http://{cart2}:8080/");
    assert_eq!(mesh.curl("client", &url).0, 200);
    // PERMISSIVE: the non-enrolled outsider passes through the agent in plaintext, and is
    // counted there as such.
    assert_eq!(mesh.curl("outsider", &url).0, 200);
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            mesh.metrics("node2").lines().any(|l| {
                l.starts_with("istio_tcp_connections_opened_total{")
                    && l.contains("reporter=\"destination\"")
                    && l.contains("source_workload=\"outsider\"")
                    && l.contains("connection_security_policy=\"unknown\"")
            })
        }),
        "the plaintext connection was not counted:\n{}",
        mesh.metrics("node2")
    );

    // ALLOW by namespace and port, with a DENY on the same port for the client's principal:
    // DENY wins for the client, the ALLOW admits nothing else on other ports.
    mesh.write_config(
        "15-allow.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-shop-8080, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules: [{from: [{source: {namespaces: [shop]}}], to: [{operation: {ports: ["8080"]}}]}]
"#,
    )
    .unwrap();
    let echo_port = format!("{cart2}:7000");
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            mesh.testbed
                .pod_command("client", "bash")
                .args([
                    "-c",
                    &format!(
                        "exec 3<>/dev/tcp/{}/7000 && echo hi >&3 && timeout 2 head -n1 <&3",
                        cart2
                    ),
                ])
                .output()
                .is_ok_and(|o| o.stdout.is_empty())
        }),
        "port 7000 ({echo_port}) is not covered by the ALLOW and must be refused"
    );
    assert_eq!(
        mesh.curl("client", &url).0,
        200,
        "namespace shop on 8080 is allowed"
    );

    // A DENY on the client's identity: refused within seconds of the edit.
    mesh.write_config("20-deny.yaml", DENY_CLIENT).unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(5), || mesh.curl("client", &url).0 == 0),
        "the DENY policy never applied\n{}",
        mesh.logs()
    );
    assert!(mesh.metrics("node2").contains("response_flags=\"DENY\""));

    // An invalid edit (an empty principal, which Istio refuses) is rejected and the last good
    // policy keeps applying.
    let rejections = mesh.controller_rejections();
    mesh.write_config(
        "20-deny.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: [""]}}]}]
"#,
    )
    .unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(5), || mesh.controller_rejections()
            > rejections),
        "the controller never refused the invalid edit\n{}",
        mesh.logs()
    );
    assert_eq!(
        mesh.curl("client", &url).0,
        0,
        "the invalid edit replaced the good policy"
    );
    assert!(
        mesh.log_of("controller").contains("deny-client"),
        "the rejection does not name the policy"
    );

    mesh.remove_config("20-deny.yaml").unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(5), || mesh.curl("client", &url).0
            == 200)
    );

    // STRICT: plaintext from the outsider is refused, mutual TLS still passes.
    mesh.write_config(
        "30-strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(5), || mesh.curl("outsider", &url).0
            == 0),
        "STRICT never applied"
    );
    assert_eq!(mesh.curl("client", &url).0, 200);
}

#[test]
fn the_application_sees_its_clients_address_not_the_pods_own() {
    let mesh = two_nodes(CART_SERVICE);
    let client = mesh.pod("client").ip;
    let outsider = mesh.pod("outsider").ip;
    // Across nodes over HBONE, on one node through the agent alone, and plaintext from a pod
    // outside the mesh: each time the application's socket has the caller's address as peer,
    // as with ztunnel (the agent connects from it inside the pod).
    for (from, to, expected) in [
        ("client", "cart-2", client),
        ("client", "cart-1", client),
        ("outsider", "cart-2", outsider),
    ] {
        let target = mesh.pod(to).ip;
        let reply = mesh.curl_with(from, &[&format!("http://{target}:8080/who")]);
        assert_eq!(
            reply.status,
            200,
            "{from} -> {to}: {}\n{}",
            reply.body,
            mesh.logs()
        );
        let peer = reply.json()["peer"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let seen: std::net::SocketAddr = peer
            .parse()
            .unwrap_or_else(|_| panic!("{from} -> {to}: no peer in {}", reply.body));
        assert_eq!(
            seen.ip(),
            expected,
            "{from} -> {to}: the application saw {seen}"
        );
    }
}

/// An agent in an unprivileged container sees `/proc/sys` read-only and cannot set a pod's
/// sysctls itself; the CNI plugin, privileged, set them at ADD, so the agent still keeps the
/// clients' addresses (it writes a sysctl only when it is not 1 already).
#[test]
fn an_agent_that_sees_proc_sys_read_only_keeps_the_clients_address_the_plugin_prepared() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-1", "node1", "shop", "cart", "v1"),
            PodSpec::app("cart-2", "node2", "shop", "cart", "v2"),
        ],
        MeshOptions {
            config: CART_SERVICE.to_string(),
            agents_proc_sys_read_only: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    for node in ["node1", "node2"] {
        let pid = mesh.agent_pid(node).expect("the agent runs");
        let mounts = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        // mountinfo: id, parent, device, root, mount point, options, ...
        let read_only = mounts.lines().any(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            fields.get(4) == Some(&"/proc/sys")
                && fields
                    .get(5)
                    .is_some_and(|options| options.split(',').any(|o| o == "ro"))
        });
        assert!(read_only, "{node}'s agent can write /proc/sys:\n{mounts}");
    }
    let client = mesh.pod("client").ip;
    for to in ["cart-1", "cart-2"] {
        let target = mesh.pod(to).ip;
        let reply = mesh.curl_with("client", &[&format!("http://{target}:8080/who")]);
        assert_eq!(reply.status, 200, "{to}: {}\n{}", reply.body, mesh.logs());
        let peer = reply.json()["peer"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let seen: std::net::SocketAddr = peer
            .parse()
            .unwrap_or_else(|_| panic!("{to}: no peer in {}", reply.body));
        assert_eq!(
            seen.ip(),
            client,
            "{to}: the application saw {seen}\n{}",
            mesh.logs()
        );
    }
    for node in ["node1", "node2"] {
        let log = mesh.log_of(&format!("agent-{node}"));
        assert!(
            !log.contains("cannot be kept"),
            "{node}'s agent fell back:\n{log}"
        );
    }
}

/// The sum of `family`'s samples the client's agent reports as the source.
fn source_total(mesh: &Mesh, family: &str) -> u64 {
    mesh.metrics("node1")
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains("reporter=\"source\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A connection's bytes show in the agent's metrics while it is open, as ztunnel counts them,
/// not only once it closes: a long upload shows before its answer.
#[test]
fn a_connections_bytes_show_while_it_is_open() {
    let mesh = two_nodes(CART_SERVICE);
    let cart2 = mesh.pod("cart-2").ip;
    let received_before = source_total(&mesh, "istio_tcp_received_bytes_total");
    let closed_before = source_total(&mesh, "istio_tcp_connections_closed_total");
    let upload = mesh.dir().join("upload");
    std::fs::write(&upload, vec![b'x'; 200_000]).unwrap();
    let upload = format!("@{}", upload.display());
    let url = format!("http://{cart2}:8080/slow?delay_ms=5000");
    let mut slow = mesh
        .spawn_in_pod(
            "client",
            "curl",
            &[
                "-s",
                "-o",
                "/dev/null",
                "--max-time",
                "20",
                "--data-binary",
                &upload,
                &url,
            ],
        )
        .expect("start the upload");
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let counted = loop {
        let received = source_total(&mesh, "istio_tcp_received_bytes_total") - received_before;
        if received >= 200_000 || std::time::Instant::now() > deadline {
            break received;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let closed = source_total(&mesh, "istio_tcp_connections_closed_total") - closed_before;
    let still_open = slow.try_wait().expect("the upload").is_none();
    let _ = slow.kill();
    let _ = slow.wait();
    assert!(still_open, "the upload ended before the bytes were read");
    assert_eq!(closed, 0, "a connection closed meanwhile");
    assert!(
        counted >= 200_000,
        "the open connection's 200,000 bytes were not counted: {counted}"
    );
}

/// A connection between two pods of one node is reported on both sides, as ztunnel reports it
/// (it carries it over HBONE to itself): the destination's report names the client's identity
/// and counts the bytes, as one from another node would.
#[test]
fn a_connection_within_a_node_is_reported_by_source_and_destination() {
    let mesh = two_nodes(CART_SERVICE);
    let cart1 = mesh.pod("cart-1").ip;
    let (status, body) = mesh.curl("client", &format!("http://{cart1}:8080/same-node"));
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"cart-1\""), "{body}");
    let labels = [
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/cart",
        ),
        ("connection_security_policy", "mutual_tls"),
    ];
    let reported = |reporter: &str, family: &str| {
        let mut wanted = vec![("reporter", reporter)];
        wanted.extend(labels);
        Exposition::parse(&mesh.metrics("node1")).sum(family, &wanted)
    };
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            reported("destination", "istio_tcp_connections_closed_total") >= 1.0
        }),
        "no destination report of the closed connection:\n{}",
        mesh.metrics("node1")
    );
    for reporter in ["source", "destination"] {
        assert!(
            reported(reporter, "istio_tcp_connections_opened_total") >= 1.0,
            "no {reporter} report of the opened connection:\n{}",
            mesh.metrics("node1")
        );
        // The request went one way, the response (with its body) the other.
        for family in [
            "istio_tcp_sent_bytes_total",
            "istio_tcp_received_bytes_total",
        ] {
            assert!(
                reported(reporter, family) > 0.0,
                "{reporter} counted no {family}:\n{}",
                mesh.metrics("node1")
            );
        }
    }
}
