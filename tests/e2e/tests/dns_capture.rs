//! The DNS capture of a running pod follows Istio's `ambient.istio.io/dns-capture`
//! annotation as its enrollment carries it: captured, a Kubernetes Service's name is answered
//! by the agent and the pod's nameserver never sees the query; turned off, the pod's queries
//! go to its nameserver; turned on again, the agent answers again. The agent counts the
//! queries it served in ztunnel's DNS metrics.
//! Needs root.

use std::net::{IpAddr, Ipv4Addr};

use weft_e2e::{Mesh, MeshOptions, PodSpec, dns::UpstreamResolver};

#[test]
fn a_pod_opting_out_of_dns_capture_asks_its_own_nameserver_and_back() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("orders", "node1", "shop", "orders", "v1"),
            PodSpec::app("resolver", "node2", "shop", "resolver", "v1").outside_cluster(),
        ],
        MeshOptions::default(),
    )
    .expect("start the mesh");
    // The pod's nameserver, outside the mesh: knows one external name, nothing of the mesh.
    let partner = Ipv4Addr::new(192, 0, 2, 77);
    let nameserver = mesh.pod("resolver").ip;
    let upstream = UpstreamResolver::start(&mesh, "resolver", "partner.example.org", partner);
    std::fs::write(
        mesh.dir().join("resolv.conf"),
        format!("nameserver {nameserver}\n"),
    )
    .unwrap();
    let resolv = mesh.pod_resolv_conf("shop", IpAddr::V4(nameserver));
    mesh.kubectl_apply(
        "apiVersion: v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  clusterIP: 10.96.50.10
  selector: {app: orders}
  ports: [{name: http, port: 80, targetPort: 8080}]
",
    )
    .unwrap();
    let vip: IpAddr = "10.96.50.10".parse().unwrap();
    mesh.await_agents("the orders service", |state| {
        state["services"]
            .as_array()
            .is_some_and(|services| services.iter().any(|s| s["name"] == "orders"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Captured: the agent answers, the pod's nameserver is never asked.
    assert_eq!(mesh.resolve("client", &resolv, "orders"), vec![vip]);
    assert_eq!(upstream.queries(), 0);
    let metrics = mesh.metrics("node1");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_dns_requests_total{")
                && l.contains("request_protocol=\"udp\"")
                && l.contains("source_canonical_service=\"client\"")),
        "{metrics}"
    );

    // Opted out while running: the pod's queries reach its nameserver, which knows no mesh
    // name.
    let dns_capture = |on: bool| {
        move |pod: &mut node_agent::enrollment::EnrolledPod| {
            if pod.name == "client" {
                pod.dns_capture = on;
            }
        }
    };
    mesh.enroll_with("node1", dns_capture(false)).unwrap();
    assert!(mesh.resolve("client", &resolv, "orders").is_empty());
    assert!(upstream.queries() >= 1, "the query never left the pod");
    assert_eq!(
        mesh.resolve("client", &resolv, "partner.example.org"),
        vec![IpAddr::V4(partner)]
    );

    // And back: the agent answers again.
    let asked = upstream.queries();
    mesh.enroll_with("node1", dns_capture(true)).unwrap();
    assert_eq!(mesh.resolve("client", &resolv, "orders"), vec![vip]);
    assert_eq!(
        upstream.queries(),
        asked,
        "a captured query reached the nameserver"
    );
}
