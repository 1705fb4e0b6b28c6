//! The objects provisioned for a Gateway, as Istio's deployment controller names and labels
//! them.

use super::*;
use crate::translate::waypoint::tests::validated;

fn objects(yaml: &str) -> Option<Vec<Value>> {
    let index = validated(yaml);
    let gateway = index.gateways.values().next().expect("a Gateway");
    gateway_objects(gateway, &ProvisionSettings::for_tests())
}

const INGRESS: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, uid: 1234-5678}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c}]}}
  - {name: tls, port: 443, protocol: TLS, tls: {mode: Passthrough}}
  - {name: a-very-long-listener-name, port: 5432, protocol: TCP}
"#;

#[test]
fn an_ingress_gateway_gets_a_service_account_deployment_and_load_balancer() {
    let objects = objects(INGRESS).expect("ours");
    let kinds: Vec<&str> = objects
        .iter()
        .map(|o| o["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["ServiceAccount", "Deployment", "Service"]);
    for object in &objects {
        let meta = &object["metadata"];
        assert_eq!(meta["name"], "edge-istio");
        assert_eq!(meta["namespace"], "shop");
        assert_eq!(
            meta["labels"]["gateway.networking.k8s.io/gateway-name"],
            "edge"
        );
        assert_eq!(meta["labels"]["istio.io/gateway-name"], "edge");
        assert_eq!(
            meta["ownerReferences"],
            json!([{"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "edge", "uid": "1234-5678"}])
        );
    }
    let deployment = &objects[1];
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"],
        json!({"gateway.networking.k8s.io/gateway-name": "edge"})
    );
    assert_eq!(
        pod["metadata"]["labels"]["gateway.networking.k8s.io/gateway-name"],
        "edge"
    );
    assert_eq!(pod["metadata"]["labels"]["istio.io/dataplane-mode"], "none");
    // Scraped where its metrics are served, as Istio's gateway pods are.
    assert_eq!(
        pod["metadata"]["annotations"],
        json!({
            "prometheus.io/scrape": "true",
            "prometheus.io/port": "15020",
            "prometheus.io/path": "/stats/prometheus",
        })
    );
    assert!(
        pod["spec"]["containers"][0]["ports"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "http-metrics", "containerPort": 15020}))
    );
    assert_eq!(pod["spec"]["serviceAccountName"], "edge-istio");
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "example.com/weft/waypoint:1");
    assert!(
        container["env"]
            .as_array()
            .unwrap()
            .contains(&json!({"name": "PROXY_ROLE", "value": "gateway"}))
    );
    let service = &objects[2];
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    let ports: Vec<(String, i64)> = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_owned(),
                p["port"].as_i64().unwrap(),
            )
        })
        .collect();
    // One port per listener port; names that are not valid port names become protocol-port.
    assert_eq!(
        ports,
        [
            ("status-port".to_owned(), 15021),
            ("http".to_owned(), 80),
            ("https".to_owned(), 443),
            ("tcp-5432".to_owned(), 5432)
        ]
    );
}

#[test]
fn the_service_type_annotation_and_waypoints_are_honoured() {
    let annotated = INGRESS.replace(
        "uid: 1234-5678}",
        "uid: 1234-5678, annotations: {networking.istio.io/service-type: ClusterIP}}",
    );
    assert_eq!(objects(&annotated).unwrap()[2]["spec"]["type"], "ClusterIP");

    let waypoint = objects(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, uid: abc}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#,
    )
    .expect("ours");
    assert_eq!(waypoint[1]["metadata"]["name"], "waypoint");
    let env = waypoint[1]["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .clone();
    assert!(env.contains(&json!({"name": "PROXY_ROLE", "value": "waypoint"})));
    assert!(env.contains(&json!({"name": "WAYPOINT_NAME", "value": "waypoint"})));
    assert_eq!(waypoint[2]["spec"]["type"], "ClusterIP");
    assert_eq!(waypoint[2]["spec"]["ports"][1]["port"], 15008);
}

#[test]
fn other_classes_and_unstored_gateways_are_left_alone() {
    assert!(
        objects(&INGRESS.replace("gatewayClassName: istio", "gatewayClassName: other")).is_none()
    );
    assert!(objects(&INGRESS.replace(", uid: 1234-5678", "")).is_none());
}
