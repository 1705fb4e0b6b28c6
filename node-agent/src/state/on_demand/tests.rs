//! The store asking a real controller-side server over a real stream: what a first
//! connection to an unknown destination makes the agent fetch.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use prost::Message;
use prost_types::Any;
use tokio_stream::wrappers::TcpListenerStream;
use weft_proto::istio::workload::{
    self, GatewayAddress, NetworkAddress, address::Type, gateway_address::Destination,
};
use weft_xds::{DeltaAdsServer, ResourceStore, StoredResource, Target};

use super::super::WorkloadStore;

/// Well under [`super::ON_DEMAND_WAIT`]: an answer, not the bound, ends each wait.
const ANSWERED_WITHIN: Duration = Duration::from_secs(3);

fn ip(last: [u8; 4]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(last))
}

fn packed(address: &workload::Address) -> Any {
    Any {
        type_url: weft_proto::ADDRESS_TYPE_URL.to_string(),
        value: address.encode_to_vec(),
    }
}

fn workload(uid: &str, address: [u8; 4], aliases: &[&str]) -> StoredResource {
    let message = workload::Address {
        r#type: Some(Type::Workload(workload::Workload {
            uid: uid.into(),
            name: uid.into(),
            namespace: "shop".into(),
            addresses: vec![address.to_vec()],
            service_account: uid.into(),
            tunnel_protocol: workload::TunnelProtocol::Hbone as i32,
            ..Default::default()
        })),
    };
    StoredResource::new(uid, packed(&message))
        .with_aliases(aliases.iter().map(|a| a.to_string()).collect())
}

/// Service `cart` at 10.96.0.10 behind the waypoint at 10.0.9.9, its endpoint at 10.0.1.1 on
/// node n2, the waypoint, and node n1's own pod.
fn mesh() -> Vec<StoredResource> {
    let service = workload::Address {
        r#type: Some(Type::Service(workload::Service {
            name: "cart".into(),
            namespace: "shop".into(),
            hostname: "cart.shop.svc.cluster.local".into(),
            addresses: vec![NetworkAddress {
                network: String::new(),
                address: vec![10, 96, 0, 10],
            }],
            waypoint: Some(GatewayAddress {
                destination: Some(Destination::Address(NetworkAddress {
                    network: String::new(),
                    address: vec![10, 0, 9, 9],
                })),
                hbone_mtls_port: 15008,
            }),
            ..Default::default()
        })),
    };
    vec![
        StoredResource::new("shop/cart.shop.svc.cluster.local", packed(&service))
            .with_aliases(vec!["/10.96.0.10".into(), "node:n2".into()]),
        workload(
            "cart-1",
            [10, 0, 1, 1],
            &["/10.0.1.1", "/10.96.0.10", "node:n2"],
        ),
        workload("waypoint", [10, 0, 9, 9], &["/10.0.9.9", "node:n2"]),
        workload("client", [10, 0, 0, 1], &["/10.0.0.1", "node:n1"]),
    ]
}

#[tokio::test]
async fn a_first_connection_fetches_the_destination_and_its_waypoint() {
    let mut resources = ResourceStore::new();
    resources.replace_type(weft_proto::ADDRESS_TYPE_URL, mesh());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(DeltaAdsServer::new(resources.reader()).into_service())
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let store = WorkloadStore::new();
    let client = crate::xds::client(
        Target::address(&format!("http://{address}")).unwrap(),
        "n1",
        "Kubernetes",
        &store,
        true,
    );
    let agent = tokio::spawn(client.run_until(std::future::pending()));

    // Up front: the node's own pod, nothing of node n2.
    assert!(
        store
            .wait_for_workload_by_uid("client", ANSWERED_WITHIN)
            .await
            .is_some()
    );
    assert!(store.service_by_vip(ip([10, 96, 0, 10])).is_none());
    assert!(store.workload_by_uid("cart-1").is_none());
    assert!(store.workload_by_ip(ip([10, 0, 9, 9])).is_none());

    // The service's VIP: the service, its endpoint and its waypoint.
    tokio::time::timeout(
        ANSWERED_WITHIN,
        store.fetch_destination(ip([10, 96, 0, 10])),
    )
    .await
    .expect("answered, not waited out");
    assert!(store.service_by_vip(ip([10, 96, 0, 10])).is_some());
    assert!(store.workload_by_uid("cart-1").is_some());
    assert!(store.workload_by_ip(ip([10, 0, 9, 9])).is_some());

    // An address nobody holds is answered as such, and stays unknown.
    tokio::time::timeout(ANSWERED_WITHIN, store.fetch_destination(ip([10, 9, 9, 9])))
        .await
        .expect("answered, not waited out");
    assert!(store.workload_by_ip(ip([10, 9, 9, 9])).is_none());
    agent.abort();
    server.abort();
}
