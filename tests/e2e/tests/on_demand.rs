//! Agents in on-demand mode (`XDS_ON_DEMAND`, ztunnel's): each receives only its own node's
//! workloads up front and asks the controller for any other address at the first connection
//! to it, or at a pod's DNS query for its name; what it fetched is unsubscribed once idle.
//! With the real binaries on the netns testbed. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use weft_e2e::dns::UpstreamResolver;
use weft_e2e::fixtures::{CART_SERVICE, DENY_CLIENT, payments_service_entry};
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

/// The value of the counter `name` in an agent's metrics text, 0 when absent.
fn counter(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A wildcard host, one whose parent has 7 labels, and a Kubernetes host declared in
/// namespace `egress` for namespace `bank`.
const ENTRIES: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: payments-wildcard, namespace: egress}
spec:
  hosts: ["*.payments.example"]
  addresses: [10.96.200.20]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: deep-wildcard, namespace: egress}
spec:
  hosts: ["*.a.b.c.d.e.deep.example"]
  addresses: [10.96.200.22]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger, namespace: egress}
spec:
  hosts: [ledger.bank.svc.cluster.local]
  addresses: [10.96.200.21]
  location: MESH_EXTERNAL
  resolution: NONE
  ports: [{number: 80, name: http, protocol: HTTP}]
"#;

#[test]
fn a_pods_dns_query_fetches_a_service_of_another_node_and_an_idle_name_is_fetched_again() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-2", "node2", "shop", "cart", "v2"),
            PodSpec::app("resolver", "node2", "shop", "resolver", "v1").outside_cluster(),
        ],
        MeshOptions {
            config: CART_SERVICE.to_string(),
            agent_env: vec![
                ("XDS_ON_DEMAND".into(), "true".into()),
                // Short, so that the test sees a name go idle.
                ("XDS_ON_DEMAND_IDLE".into(), "1s".into()),
            ],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    assert_eq!(
        mesh.config_dump("node1")["config"]["xds_on_demand_idle"],
        1.0
    );
    // The pod's nameserver, outside the mesh: knows one external name, nothing of the mesh.
    let partner = Ipv4Addr::new(192, 0, 2, 77);
    let upstream = UpstreamResolver::start(&mesh, "resolver", "partner.example.org", partner);
    let nameserver = mesh.pod("resolver").ip;
    // The agents' own configuration (where they forward), and the pods'.
    std::fs::write(
        mesh.dir().join("resolv.conf"),
        format!("nameserver {nameserver}\n"),
    )
    .unwrap();
    let resolv = mesh.pod_resolv_conf("shop", IpAddr::V4(nameserver));
    let (_, services) = held(&mesh, "node1");
    assert!(services.is_empty(), "sent up front: {services:?}");

    // The service's short name, completed by the pod's resolver: the agent fetches the
    // service and answers its VIP; the nameserver is never asked.
    let vip: IpAddr = "10.96.0.10".parse().unwrap();
    assert_eq!(
        mesh.resolve("client", &resolv, "cart"),
        vec![vip],
        "{}",
        mesh.logs()
    );
    assert!(
        !upstream.asked("cart.shop.svc.cluster.local"),
        "the mesh name went upstream"
    );
    let (workloads, services) = held(&mesh, "node1");
    assert_eq!(services, [CART_KEY]);
    assert!(
        workloads.iter().any(|uid| uid.contains("cart-2")),
        "the service's endpoint was not fetched: {workloads:?}"
    );
    // A name the mesh does not have is forwarded as before, and answered upstream.
    assert_eq!(
        mesh.resolve("client", &resolv, "partner.example.org"),
        vec![IpAddr::V4(partner)],
        "{}",
        mesh.logs()
    );
    assert!(
        mesh.resolve("client", &resolv, "nowhere.example.org")
            .is_empty()
    );

    // Unused for its idle period, the name is unsubscribed and the service dropped.
    assert!(
        mesh.eventually(Duration::from_secs(10), || held(&mesh, "node1")
            .1
            .is_empty()),
        "the idle service stayed: {:?}",
        held(&mesh, "node1")
    );
    assert!(
        counter(
            &mesh.metrics("node1"),
            "weft_on_demand_released_names_total"
        ) >= 1
    );

    // The next use fetches it again: a connection to the VIP reaches node2's pod.
    let (status, body) = mesh.curl("client", "http://10.96.0.10/");
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"cart-2\""), "{body}");
    assert_eq!(held(&mesh, "node1").1, [CART_KEY]);
    // And by name again.
    assert!(mesh.eventually(Duration::from_secs(10), || {
        held(&mesh, "node1").1.is_empty()
    }));
    assert_eq!(mesh.resolve("client", &resolv, "cart.shop"), vec![vip]);
    assert_eq!(held(&mesh, "node1").1, [CART_KEY]);

    // A wildcard ServiceEntry host answers a name under it, whatever the wildcard's depth,
    // and a ServiceEntry declaring a Kubernetes host of another namespace answers that host:
    // each fetched at the query by the name asked alone (the upstream resolver knows none; a
    // query before the controller loaded them is a miss, kept subscribed, so the entries are
    // pushed as they appear).
    mesh.write_config("30-entries.yaml", ENTRIES).unwrap();
    for (name, entry_vip) in [
        ("api.payments.example", "10.96.200.20"),
        ("x.a.b.c.d.e.deep.example", "10.96.200.22"),
        ("ledger.bank.svc.cluster.local", "10.96.200.21"),
    ] {
        let entry_vip: IpAddr = entry_vip.parse().unwrap();
        assert!(
            mesh.eventually(Duration::from_secs(10), || mesh
                .resolve("client", &resolv, name)
                == [entry_vip]),
            "{name} was not answered from its ServiceEntry\n{}",
            mesh.logs()
        );
    }

    assert_eq!(
        counter(
            &mesh.metrics("node1"),
            "weft_on_demand_refused_connections_total"
        ),
        0
    );
}

/// A ServiceEntry whose VIP nothing holds before it is written.
const EXTERNAL_VIP: &str = "10.96.200.10";
const EXTERNAL_HOST: &str = "api.payments.example";

#[test]
fn connections_to_an_unknown_address_ask_once_and_a_service_entry_created_there_is_reached_at_once()
{
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("payments", "node2", "shop", "payments", "v1").outside_cluster(),
        ],
        MeshOptions {
            agent_env: vec![("XDS_ON_DEMAND".into(), "true".into())],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    // Refused at once while the address is unknown (not a passthrough into nowhere).
    mesh.set_mesh_config("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")
        .unwrap();
    mesh.await_agents("REGISTRY_ONLY", |state| {
        state["outbound_traffic_policy"] == "REGISTRY_ONLY"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // The first connection asks the controller, which holds nothing there; the next ones
    // are refused from the remembered miss, without asking.
    const CONNECTIONS: u64 = 5;
    let url = format!("http://{EXTERNAL_VIP}/egress");
    for _ in 0..CONNECTIONS {
        let (status, body) = mesh.curl("client", &url);
        assert_eq!(status, 0, "an unknown address was reached: {body}");
    }
    assert_eq!(
        counter(
            &mesh.metrics("node1"),
            "weft_on_demand_address_miss_hits_total"
        ),
        CONNECTIONS - 1,
        "every connection but the first was to be served from the miss"
    );

    // A ServiceEntry created at the address is pushed to the agent (the miss stayed
    // subscribed) with no connection asking, well before the miss's 30 s run out, and the
    // next connection reaches its endpoint.
    let endpoint = mesh.pod("payments").ip.to_string();
    mesh.write_config(
        "30-payments.yaml",
        &payments_service_entry(EXTERNAL_HOST, EXTERNAL_VIP, &endpoint),
    )
    .unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(10), || held(&mesh, "node1")
            .1
            .contains(&format!("shop/{EXTERNAL_HOST}"))),
        "the ServiceEntry was not pushed to the remembered miss: {:?}\n{}",
        held(&mesh, "node1"),
        mesh.logs()
    );
    let (status, body) = mesh.curl("client", &url);
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"payments\""), "{body}");
    assert_eq!(
        counter(
            &mesh.metrics("node1"),
            "weft_on_demand_address_miss_hits_total"
        ),
        CONNECTIONS - 1,
        "the held address was served from the store"
    );
}
