//! Agents in on-demand mode (`XDS_ON_DEMAND`, ztunnel's): each receives only its own node's
//! workloads up front and asks the controller for any other address at the first connection
//! to it. With the real binaries on the netns testbed. Needs root.

use std::time::Duration;

use weft_e2e::fixtures::{CART_SERVICE, DENY_CLIENT};
use weft_e2e::{Mesh, MeshOptions, PodSpec};

const CART_KEY: &str = "shop/cart.shop.svc.cluster.local";

/// The uids of the workloads and the keys of the services an agent holds.
fn held(mesh: &Mesh, node: &str) -> (Vec<String>, Vec<String>) {
    let dump = mesh.config_dump(node);
    let list = |field: &str, key: fn(&serde_json::Value) -> String| {
        dump["state"][field]
            .as_array()
            .unwrap_or_else(|| panic!("no state.{field} in {dump}"))
            .iter()
            .map(key)
            .collect::<Vec<_>>()
    };
    (
        list("workloads", |w| {
            w["uid"].as_str().unwrap_or_default().to_owned()
        }),
        list("services", |s| {
            format!(
                "{}/{}",
                s["namespace"].as_str().unwrap_or_default(),
                s["hostname"].as_str().unwrap_or_default()
            )
        }),
    )
}

#[test]
fn a_service_on_another_node_is_fetched_at_the_first_connection_and_policies_still_apply() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-2", "node2", "shop", "cart", "v2"),
        ],
        MeshOptions {
            config: CART_SERVICE.to_string(),
            agent_env: vec![("XDS_ON_DEMAND".into(), "true".into())],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");

    // Up front, node1's agent holds its own pod and nothing of node2's or of the service.
    let (workloads, services) = held(&mesh, "node1");
    assert!(
        workloads.iter().any(|uid| uid.contains("client")),
        "the node's own pod is missing: {workloads:?}"
    );
    assert!(
        !workloads.iter().any(|uid| uid.contains("cart-2")),
        "node2's pod was sent up front: {workloads:?}"
    );
    assert!(
        services.is_empty(),
        "services were sent up front: {services:?}"
    );
    assert_eq!(mesh.config_dump("node1")["config"]["xds_on_demand"], true);

    // The first connection to the service's VIP waits for it, then goes over mutual TLS to
    // the endpoint on node2.
    let (status, body) = mesh.curl("client", "http://10.96.0.10/");
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"cart-2\""), "{body}");
    let server_metrics = mesh.metrics("node2");
    assert!(
        server_metrics.lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"destination\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"")
                && l.contains("connection_security_policy=\"mutual_tls\"")
                && !l.ends_with(" 0")
        }),
        "no mutual TLS connection from the client at node2:\n{server_metrics}"
    );
    let (workloads, services) = held(&mesh, "node1");
    assert!(
        workloads.iter().any(|uid| uid.contains("cart-2")),
        "the service's endpoint was not fetched: {workloads:?}"
    );
    assert_eq!(services, [CART_KEY]);

    // What was fetched stays subscribed: a policy denying the client applies to it, and its
    // removal lets it through again.
    mesh.write_config("20-deny.yaml", DENY_CLIENT).unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(5), || mesh
            .curl("client", "http://10.96.0.10/")
            .0
            == 0),
        "the DENY policy never applied\n{}",
        mesh.logs()
    );
    assert!(mesh.metrics("node2").contains("response_flags=\"DENY\""));
    mesh.remove_config("20-deny.yaml").unwrap();
    assert!(mesh.eventually(
        Duration::from_secs(5),
        || mesh.curl("client", "http://10.96.0.10/").0 == 200
    ));
}
