//! The examples the demo plays: what the controller reads as written, and the pods to place on
//! the demo's two nodes, each running the sample app with bookinfo's calls.

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};

use crate::{PodOwner, PodSpec};

/// The pod that plays the user's shell.
pub const CLIENT: &str = "client";
/// A client outside the mesh and the cluster (a namespace that is not enrolled), which reaches
/// bookinfo through the ingress gateway.
pub const OUTSIDE: &str = "outside";
/// A server outside the mesh and the cluster, which pods reach through the egress gateway.
pub const EXTERNAL: &str = "external";
/// The `app` of the in-mesh server that speaks TLS itself (the demo runs a TLS server there,
/// not the sample app), behind the ingress gateway's PASSTHROUGH server.
pub const TLS_SERVER_APP: &str = "secure";
/// The `istio` label values of the gateways' pods (the Istio `Gateway`s' selectors).
pub const GATEWAY_LABELS: [&str; 2] = ["ingressgateway", "egressgateway"];

/// A gateway's pod: the waypoint binary in the gateway role runs there.
pub fn is_gateway(pod: &PodSpec) -> bool {
    gateway_labelled(&pod.labels)
}

fn gateway_labelled(labels: &BTreeMap<String, String>) -> bool {
    labels
        .get("istio")
        .is_some_and(|role| GATEWAY_LABELS.contains(&role.as_str()))
}

/// The example directory split into what the runtime places (Pods; EndpointSlices, which carry
/// addresses) and what the controller plays as written (everything else).
pub struct Examples {
    pub files: Vec<(String, String)>,
    pub pods: Vec<serde_yaml::Value>,
    /// Service name -> (cluster IP, first port).
    pub services: BTreeMap<String, (Ipv4Addr, u16)>,
    /// (name, namespace) of the Gateway of class istio-waypoint.
    pub waypoint: (String, String),
}

pub fn field<'a>(value: &'a serde_yaml::Value, path: &[&str]) -> Option<&'a serde_yaml::Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

pub fn text(value: &serde_yaml::Value, path: &[&str]) -> Option<String> {
    field(value, path)
        .and_then(|v| v.as_str())
        .map(String::from)
}

/// The controller a Pod of the examples names (`generateName` and its `controller` owner
/// reference), carried to the testbed's Pod as written; `None` for a bare pod.
fn owner_of(pod: &serde_yaml::Value) -> Option<PodOwner> {
    let generate_name = text(pod, &["metadata", "generateName"])?;
    let controller = field(pod, &["metadata", "ownerReferences"])?
        .as_sequence()?
        .iter()
        .find(|r| r.get("controller").and_then(serde_yaml::Value::as_bool) == Some(true))?;
    Some(PodOwner {
        generate_name,
        api_version: text(controller, &["apiVersion"])?,
        kind: text(controller, &["kind"])?,
        name: text(controller, &["name"])?,
        // The Pod's own labels (copied as written) already carry what its controller added.
        labels: BTreeMap::new(),
    })
}

pub fn load(dir: &Path) -> anyhow::Result<Examples> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    paths.sort();
    let mut examples = Examples {
        files: Vec::new(),
        pods: Vec::new(),
        services: BTreeMap::new(),
        waypoint: (String::new(), String::new()),
    };
    for path in paths {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let content = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut kept = Vec::new();
        for document in crate::split_documents(&content) {
            let value: serde_yaml::Value = serde_yaml::from_str(&document)
                .with_context(|| format!("parsing {}", path.display()))?;
            match text(&value, &["kind"]).as_deref() {
                None => continue,
                Some("Pod") => {
                    examples.pods.push(value);
                    continue;
                }
                Some("EndpointSlice") => continue,
                Some("Service") => {
                    let service = text(&value, &["metadata", "name"]).unwrap_or_default();
                    let ip = text(&value, &["spec", "clusterIP"])
                        .and_then(|ip| ip.parse().ok())
                        .with_context(|| format!("{name}: Service {service} has no clusterIP"))?;
                    let port = field(&value, &["spec", "ports"])
                        .and_then(|p| p.get(0))
                        .and_then(|p| p.get("port"))
                        .and_then(|p| p.as_u64())
                        .and_then(|p| u16::try_from(p).ok())
                        .with_context(|| format!("{name}: Service {service} has no port"))?;
                    examples.services.insert(service, (ip, port));
                }
                Some("Gateway")
                    if text(&value, &["spec", "gatewayClassName"]).as_deref()
                        == Some("istio-waypoint") =>
                {
                    examples.waypoint = (
                        text(&value, &["metadata", "name"]).unwrap_or_default(),
                        text(&value, &["metadata", "namespace"])
                            .unwrap_or_else(|| "default".into()),
                    );
                }
                Some(_) => {}
            }
            kept.push(document);
        }
        if !kept.is_empty() {
            examples.files.push((name, kept.join("---\n")));
        }
    }
    if examples.waypoint.0.is_empty() {
        bail!(
            "{}: no Gateway of class istio-waypoint to run a waypoint for",
            dir.display()
        );
    }
    Ok(examples)
}

/// The demo has two nodes; the examples' `nodeName`s map onto them in order of first
/// appearance (a pod without one goes to the last node).
pub const NODES: [&str; 2] = ["node1", "node2"];

/// The pods of the demo: the examples' pods placed on the demo's nodes their `nodeName`s map to,
/// each running the sample app with bookinfo's calls (productpage calls details and reviews;
/// reviews v2 and v3 call ratings), the waypoint's pod running the waypoint, and the client. The
/// client goes on the node without details, so that its L4 call to details crosses the fabric.
pub fn pods(examples: &Examples) -> anyhow::Result<Vec<PodSpec>> {
    let service_url = |service: &str, path: &str| -> anyhow::Result<String> {
        let (ip, port) = examples
            .services
            .get(service)
            .with_context(|| format!("the examples have no Service {service}"))?;
        Ok(format!("http://{ip}:{port}{path}"))
    };
    let mut example_nodes: Vec<String> = Vec::new();
    let mut place = |pod: &serde_yaml::Value| -> anyhow::Result<&'static str> {
        let Some(node) = text(pod, &["spec", "nodeName"]) else {
            return Ok(NODES[NODES.len() - 1]);
        };
        let index = match example_nodes.iter().position(|n| *n == node) {
            Some(index) => index,
            None => {
                example_nodes.push(node.clone());
                example_nodes.len() - 1
            }
        };
        NODES.get(index).copied().with_context(|| {
            format!(
                "the examples use more than {} nodes ({})",
                NODES.len(),
                example_nodes.join(", ")
            )
        })
    };
    let (gateway, gateway_namespace) = &examples.waypoint;
    let mut specs = Vec::new();
    let mut namespace = gateway_namespace.clone();
    for pod in &examples.pods {
        let name = text(pod, &["metadata", "name"]).context("a Pod without a name")?;
        let pod_namespace =
            text(pod, &["metadata", "namespace"]).unwrap_or_else(|| "default".into());
        let node = place(pod)?;
        let owner = owner_of(pod);
        let owned = |mut spec: PodSpec| {
            spec.owner = owner.clone();
            spec
        };
        let labels: BTreeMap<String, String> = field(pod, &["metadata", "labels"])
            .and_then(|l| serde_yaml::from_value(l.clone()).ok())
            .unwrap_or_default();
        let account = text(pod, &["spec", "serviceAccountName"]);
        let port = field(pod, &["spec", "containers"])
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("ports"))
            .and_then(|p| p.get(0))
            .and_then(|p| p.get("containerPort"))
            .and_then(|p| p.as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(crate::DEFAULT_HTTP_PORT);
        let edge_pod = |spec: PodSpec| {
            let mut spec = spec.with_service_account(account.as_deref().unwrap_or(&name));
            spec.labels = labels.clone();
            spec
        };
        if gateway_labelled(&labels) {
            specs.push(owned(edge_pod(
                PodSpec::client(&name, node, &pod_namespace).not_enrolled(),
            )));
            continue;
        }
        if labels.get("app").map(String::as_str) == Some(TLS_SERVER_APP) {
            specs.push(owned(edge_pod(
                PodSpec::client(&name, node, &pod_namespace).with_http_port(port),
            )));
            continue;
        }
        if labels.get(crate::GATEWAY_NAME_LABEL) == Some(gateway) {
            let mut spec = PodSpec::waypoint(gateway, node, &pod_namespace);
            spec.name = name;
            if let Some(account) = account {
                spec.service_account = account;
            }
            specs.push(owned(spec));
            continue;
        }
        namespace = pod_namespace;
        let app = labels
            .get("app")
            .cloned()
            .with_context(|| format!("Pod {name} has no app label"))?;
        let version = labels
            .get("version")
            .cloned()
            .unwrap_or_else(|| "v1".into());
        let mut spec = PodSpec::app(&name, node, &namespace, &app, &version).with_http_port(port);
        spec.labels = labels;
        if let Some(account) = account {
            spec.service_account = account;
        }
        match (app.as_str(), version.as_str()) {
            ("productpage", _) => {
                spec = spec
                    .with_upstream("details", &service_url("details", "/details/0")?)
                    .with_upstream("reviews", &service_url("reviews", "/reviews/0")?);
            }
            ("reviews", "v1") => {}
            ("reviews", _) => {
                spec = spec.with_upstream("ratings", &service_url("ratings", "/ratings/0")?);
            }
            _ => {}
        }
        specs.push(owned(spec));
    }
    if !specs.iter().any(PodSpec::is_waypoint) {
        specs.push(PodSpec::waypoint(
            gateway,
            NODES[NODES.len() - 1],
            gateway_namespace,
        ));
    }
    let details_node = specs
        .iter()
        .find(|p| p.labels.get("app").map(String::as_str) == Some("details"))
        .map(|p| p.node.clone());
    let client_node = NODES
        .iter()
        .find(|n| Some(n.to_string()) != details_node)
        .copied()
        .unwrap_or(NODES[0]);
    specs.push(PodSpec::client(CLIENT, client_node, &namespace));
    // Outside the cluster: no Pod object names them, and no route leaves the testbed.
    specs.push(PodSpec::client(OUTSIDE, NODES[0], OUTSIDE).outside_cluster());
    specs.push(PodSpec::client(EXTERNAL, NODES[1], EXTERNAL).outside_cluster());
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bookinfo_example_places_every_pod() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
        let examples = load(&dir).unwrap();
        assert_eq!(examples.waypoint.0, "waypoint");
        assert!(
            examples
                .files
                .iter()
                .all(|(_, text)| !text.contains("kind: Pod\n"))
        );
        let pods = pods(&examples).unwrap();
        let productpage = pods.iter().find(|p| p.name == "productpage-v1").unwrap();
        assert_eq!(productpage.service_account, "bookinfo-productpage");
        // Its Deployment's ReplicaSet, as the example writes it, reaches the testbed's Pod.
        let owner = productpage.owner.as_ref().unwrap();
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str()),
            ("ReplicaSet", "productpage-v1-5c8d9f7b64")
        );
        assert_eq!(owner.generate_name, "productpage-v1-5c8d9f7b64-");
        assert_eq!(productpage.http_port, 9080);
        assert_eq!(productpage.upstreams.len(), 2);
        let waypoint = pods.iter().find(|p| p.is_waypoint()).unwrap();
        assert_eq!(waypoint.service_account, "waypoint");
        let node = |name: &str| pods.iter().find(|p| p.name == name).unwrap().node.clone();
        // The examples' two nodes, in order; the client away from details.
        assert_eq!(node("productpage-v1"), "node1");
        assert_eq!(node(&waypoint.name), "node2");
        assert_ne!(node("client"), node("details-v1"));
        // The gateways outside ambient redirection, the TLS server in it, the outside client
        // and the external server outside the cluster.
        let ingress = pods
            .iter()
            .find(|p| p.name == "istio-ingressgateway-0")
            .unwrap();
        assert!(is_gateway(ingress) && !ingress.enrolled);
        assert_eq!(ingress.service_account, "istio-ingressgateway");
        assert_eq!(ingress.namespace, "istio-system");
        assert!(
            pods.iter()
                .any(|p| p.name == "istio-egressgateway-0" && is_gateway(p))
        );
        let secure = pods.iter().find(|p| p.name == "secure-v1").unwrap();
        assert!(secure.enrolled && matches!(secure.workload, crate::Workload::None));
        assert_eq!(secure.http_port, 8443);
        assert!(
            [OUTSIDE, EXTERNAL]
                .iter()
                .all(|name| pods.iter().any(|p| p.name == *name && p.outside_cluster))
        );
        assert_eq!(
            pods.iter().find(|p| p.name == CLIENT).unwrap().namespace,
            "bookinfo"
        );
        assert!(
            pods.iter()
                .filter(|p| matches!(p.workload, crate::Workload::App { .. }))
                .all(|p| p.enrolled)
        );
    }
}
