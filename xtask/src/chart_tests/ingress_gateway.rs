//! The chart's classic `istio-ingressgateway` (templates/ingress-gateway.yaml): off by default;
//! on, a pod the Istio API's Gateways select, run as the controller runs the gateways it
//! deploys for Gateway API Gateways, behind a LoadBalancer Service on the ports it serves.

use std::collections::BTreeSet;

use serde_json::{Value as Json, json};

use super::{NAMESPACE, find, render, values};

const NAME: &str = "istio-ingressgateway";

fn enabled() -> std::collections::BTreeMap<String, Vec<Json>> {
    render(&values(&[("ingressGateway.enabled", json!(true))]))
}

/// The `selector` of the bookinfo example's Istio Gateway (what users write for Istio's
/// default gateway).
fn example_selector() -> Json {
    let text = std::fs::read_to_string(
        crate::workspace_root().join("deploy/examples/bookinfo/70-gateway.yaml"),
    )
    .unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| <Json as serde::Deserialize>::deserialize(document).unwrap())
        .find(|d| d["kind"] == "Gateway" && d["apiVersion"] == "networking.istio.io/v1")
        .expect("the example's Istio Gateway")["spec"]["selector"]
        .clone()
}

/// The environment of the proxy the controller deploys for a Gateway API Gateway of class
/// `istio`, with the chart's settings.
fn provisioned_env() -> Json {
    use controller::model::decode::decode;
    use controller::model::{Resource, ResourceKind};
    use controller::translate::provision::{ProvisionSettings, gateway_objects};
    let gateway = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop", "uid": "1234"},
        "spec": {"gatewayClassName": "istio", "listeners": [{"name": "http", "port": 80, "protocol": "HTTP"}]},
    });
    let Resource::KubernetesGateway(gateway) = decode(ResourceKind::KubernetesGateway, gateway)
        .expect("a Gateway")
        .resource
    else {
        panic!("not a Gateway");
    };
    let chart = values(&[]);
    let settings = ProvisionSettings {
        proxy_image: "unused".into(),
        controller_namespace: NAMESPACE.into(),
        token_audience: chart["controller"]["tokenAudience"]
            .as_str()
            .unwrap()
            .into(),
        trust_domain: chart["trustDomain"].as_str().unwrap().into(),
    };
    let objects = gateway_objects(&gateway, &settings).expect("class istio is ours");
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    deployment["spec"]["template"]["spec"]["containers"][0]["env"].clone()
}

#[test]
fn the_classic_ingress_gateway_is_installed_only_when_asked() {
    let rendered = render(&values(&[]));
    let named: Vec<&Json> = rendered
        .values()
        .flatten()
        .filter(|d| d["metadata"]["name"] == NAME)
        .collect();
    assert!(named.is_empty(), "installed by default: {named:?}");

    let rendered = enabled();
    for kind in ["ServiceAccount", "Deployment", "Service"] {
        assert_eq!(
            find(&rendered, kind, NAME)["metadata"]["namespace"],
            NAMESPACE
        );
    }
}

#[test]
fn the_classic_ingress_gateway_runs_as_the_gateways_the_controller_deploys() {
    let rendered = enabled();
    let deployment = find(&rendered, "Deployment", NAME);
    let pod = &deployment["spec"]["template"];
    let labels = pod["metadata"]["labels"].as_object().unwrap();
    // Istio's Gateways select it, and its Deployment selects its own pods.
    let selected = |selector: &Json| {
        selector
            .as_object()
            .unwrap()
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    };
    assert!(selected(&example_selector()), "{labels:?}");
    assert!(selected(&deployment["spec"]["selector"]["matchLabels"]));
    // It speaks HBONE itself: the node agent must not capture it.
    assert_eq!(labels["istio.io/dataplane-mode"], "none");
    assert_eq!(
        pod["metadata"]["annotations"],
        json!(std::collections::BTreeMap::from(
            controller::translate::provision::PROMETHEUS_ANNOTATIONS
        ))
    );

    let spec = &pod["spec"];
    assert_eq!(
        spec["serviceAccountName"],
        find(&rendered, "ServiceAccount", NAME)["metadata"]["name"]
    );
    let container = &spec["containers"][0];
    assert_eq!(
        container["image"],
        values(&[])["ingressGateway"]["image"],
        "{container}"
    );
    // The same settings as a provisioned gateway: role, identity, controller and CA, the root
    // and the token it proves itself with.
    assert_eq!(container["env"], provisioned_env());
    let audience = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|v| v["projected"]["sources"][0]["serviceAccountToken"]["audience"].as_str())
        .expect("a projected token");
    assert_eq!(audience, values(&[])["controller"]["tokenAudience"]);
    let mounts: BTreeSet<&str> = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    for variable in ["ROOT_CERT_FILE", "BOOTSTRAP_TOKEN_FILE"] {
        let file = super::env(container, variable).unwrap();
        let dir = file.rsplit_once('/').unwrap().0;
        assert!(mounts.contains(dir), "{variable} {file} is not mounted");
    }
    // Binds the Gateways' ports without root: allowed by the pod's sysctl.
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        spec["securityContext"]["sysctls"],
        json!([{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}])
    );

    // A LoadBalancer on the ports of Istio's default gateway, each served by the pod.
    let service = find(&rendered, "Service", NAME);
    assert_eq!(service["spec"]["type"], "LoadBalancer");
    assert!(selected(&service["spec"]["selector"]));
    let served = super::container_ports(container);
    let mut ports = Vec::new();
    for port in service["spec"]["ports"].as_array().unwrap() {
        let target = port["targetPort"].as_i64().unwrap();
        assert!(served.contains(&target), "{port} is not served: {served:?}");
        ports.push(port["port"].as_i64().unwrap());
    }
    assert_eq!(ports, [15021, 80, 443]);
    assert!(served.contains(&15020), "metrics port: {served:?}");
}

#[test]
fn the_service_type_follows_the_values() {
    let rendered = render(&values(&[
        ("ingressGateway.enabled", json!(true)),
        ("ingressGateway.serviceType", json!("NodePort")),
    ]));
    assert_eq!(find(&rendered, "Service", NAME)["spec"]["type"], "NodePort");
}
