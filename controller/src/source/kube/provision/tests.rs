//! Provisioning against the fake API server: the objects appear, owner-referenced to their
//! Gateway, and are put back when changed by hand.

use serde_json::json;

use super::*;
use crate::source::kube::test_support::{Started, eventually};

const GATEWAY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, uid: 0a1b-2c3d}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, uid: 4e5f-6a7b}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: foreign, namespace: shop, uid: 8c9d}
spec:
  gatewayClassName: other
  listeners: [{name: http, port: 80, protocol: HTTP}]
"#;

#[tokio::test]
async fn gateways_get_their_deployment_service_and_service_account() {
    let mut started = Started::with(GATEWAY).await;
    let settings = ProvisionSettings::for_tests();
    started.run(|client, index, shutdown| keep_provisioned(client, index, settings, shutdown));
    let fake = &started.fake;

    let deployment = || fake.get("apps/v1", "Deployment", "shop", "edge-istio");
    eventually("the ingress Gateway's Deployment", || {
        deployment().is_some()
    })
    .await;
    eventually("the ingress Gateway's Service", || {
        fake.get("v1", "Service", "shop", "edge-istio").is_some()
    })
    .await;
    let service = fake.get("v1", "Service", "shop", "edge-istio").unwrap();
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    let gateway_uid = fake
        .get("gateway.networking.k8s.io/v1", "Gateway", "shop", "edge")
        .unwrap()["metadata"]["uid"]
        .clone();
    assert_eq!(
        service["metadata"]["ownerReferences"][0]["uid"], gateway_uid,
        "{service}"
    );
    let account = fake
        .get("v1", "ServiceAccount", "shop", "edge-istio")
        .expect("the ServiceAccount");
    assert_eq!(
        account["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "edge"
    );
    eventually("the waypoint's Deployment", || {
        fake.get("apps/v1", "Deployment", "shop", "waypoint")
            .is_some()
    })
    .await;
    assert!(
        fake.get("apps/v1", "Deployment", "shop", "foreign-istio")
            .is_none()
    );

    // A listener added: the Service follows, keeping what the API server assigned.
    let mut gateway = fake
        .get("gateway.networking.k8s.io/v1", "Gateway", "shop", "edge")
        .unwrap();
    let mut service = fake.get("v1", "Service", "shop", "edge-istio").unwrap();
    service["spec"]["clusterIP"] = json!("10.96.0.99");
    fake.update(service).unwrap();
    gateway["spec"]["listeners"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "db", "port": 5432, "protocol": "TCP"}));
    fake.update(gateway).unwrap();
    eventually("the new listener's port on the Service", || {
        fake.get("v1", "Service", "shop", "edge-istio")
            .is_some_and(|s| {
                s["spec"]["ports"]
                    .as_array()
                    .is_some_and(|p| p.iter().any(|p| p["port"] == 5432))
            })
    })
    .await;
    let service = fake.get("v1", "Service", "shop", "edge-istio").unwrap();
    assert_eq!(service["spec"]["clusterIP"], "10.96.0.99");

    started.stop().await;
}
