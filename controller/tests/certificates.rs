//! The waypoint's certificate from the controller's CA, over real gRPC with the waypoint's own
//! client: a waypoint pod runs on a node like any pod, so that node's credential obtains the
//! waypoint's identity; another node's does not, nor does a waypoint without a pod there.

mod common;

use std::time::Duration;

use common::{grpc_url, local_config, start};
use weft_identity::{CaToken, SpiffeId, WorkloadCertificate, WorkloadKey};
use weft_proxy_core::certificates::{CaClient, GrpcCaClient};
use weft_test_support::temp::TempDir;

const NODE1_TOKEN: &str = "node1-token-0123456789";
const NODE2_TOKEN: &str = "node2-token-0123456789";

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: unscheduled, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata: {name: waypoint-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: waypoint}}
spec: {nodeName: node1, serviceAccountName: waypoint, containers: [{name: waypoint, image: x}]}
status: {podIP: 10.0.0.2}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_gets_its_certificate_with_its_nodes_credential_only() {
    let dir = TempDir::new("ca-waypoint");
    let config = local_config(
        dir.path(),
        &format!("node1 {NODE1_TOKEN}\nnode2 {NODE2_TOKEN}\n"),
    );
    std::fs::write(dir.join("config/mesh.yaml"), MESH).unwrap();
    let controller = start(&config).await;
    // The waypoint's own CA client (the one the node agents use), on behalf of its node.
    let client = |token: &str, node: &str| {
        GrpcCaClient::connect(
            &grpc_url(&config),
            None,
            CaToken::Fixed(token.to_owned()),
            Some(node.to_owned()),
        )
        .unwrap()
    };
    let fetch_certificate = |caller: GrpcCaClient, identity: SpiffeId| async move {
        let key = WorkloadKey::generate().unwrap();
        let csr = key.csr_for(&identity).unwrap();
        let chain = caller
            .sign(&identity, csr, Duration::from_secs(24 * 3600))
            .await?;
        WorkloadCertificate::from_pem_chain(&identity, &chain, key).map_err(|e| e.to_string())
    };
    let waypoint = SpiffeId::new("cluster.local", "shop", "waypoint").unwrap();

    // The controller may not have read its configuration yet: retry the first request briefly.
    let mut issued = None;
    for _ in 0..50 {
        match fetch_certificate(client(NODE1_TOKEN, "node1"), waypoint.clone()).await {
            Ok(certificate) => {
                issued = Some(certificate);
                break;
            }
            Err(error) if error.contains("PermissionDenied") => {
                panic!("refused: {error}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let certificate = issued.expect("the waypoint's node obtains its certificate");
    assert_eq!(certificate.identity(), &waypoint);

    let refusals = [
        (
            client(NODE2_TOKEN, "node2"),
            waypoint.clone(),
            "no pod on node node2",
        ),
        (
            client(NODE1_TOKEN, "node1"),
            SpiffeId::new("cluster.local", "shop", "unscheduled").unwrap(),
            "no pod on node node1",
        ),
        (
            client(NODE2_TOKEN, "node1"),
            waypoint.clone(),
            "token belongs to node node2",
        ),
    ];
    for (caller, identity, reason) in refusals {
        let error = fetch_certificate(caller, identity.clone())
            .await
            .expect_err("refused");
        assert!(error.contains(reason), "{identity}: {error}");
    }

    controller.stop().await;
}
