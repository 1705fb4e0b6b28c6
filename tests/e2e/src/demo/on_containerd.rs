//! The demo on containerd: the [`KubeCluster`] harness (containerd on each node, the node agent
//! as its DaemonSet's pod from its image, `weft-cni` chained after the bridge plugin, the
//! controller in Kubernetes mode against the fake API server). The examples' documents are
//! applied to the API server as `kubectl apply` would; then every pod (the waypoint, the
//! bookinfo apps, the client) is created through the CRI as the kubelet creates it, from the
//! images of `cargo xtask images`: the Pod in the API, RunPodSandbox (the CNI chain, where
//! `weft-cni` enrolls the pod before any of its containers runs), CreateContainer,
//! StartContainer. The waypoint runs from its image with its service account's token, as
//! Istio's gateway controller would deploy it.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Command,
    time::Duration,
};

use anyhow::Context;
use serde_json::Value;
use weft_fake_apiserver::TokenIdentity;
use weft_testbed::Testbed;

use super::{
    CaptureScope, Cluster, Examples, NODES, Place,
    edge::names_external,
    examples::{TLS_SERVER_APP, is_gateway, text},
};
use crate::fixtures::STDOUT_ACCESS_LOG;
use crate::{
    PodSpec, WAYPOINT_METRICS_PORT, Workload,
    cri::{ContainerSpec, mount},
    kube_cluster::{
        AUDIENCE, CONTROLLER_MONITORING, ISTIOD, KubeCluster, KubePod, RunningPod, image_reference,
        sample_app_container,
    },
    observability::{AGENT_METRICS_PORT, Observability, Scraped},
};

/// How long a pod may take to listen once started.
const PATIENCE: Duration = Duration::from_secs(60);
/// Where a pod's projected service-account token is mounted (the waypoint's).
const TOKEN_DIR: &str = "/var/run/secrets/tokens";
const ROOT_CERT_DIR: &str = "/var/run/secrets/istio";

/// A running cluster on containerd and the demo's pods in it.
pub struct OnContainerd {
    cluster: KubeCluster,
    /// The waypoints' pods.
    waypoints: Vec<String>,
}

pub fn start(examples: &Examples, pods: &[PodSpec]) -> anyhow::Result<OnContainerd> {
    let mut on = OnContainerd {
        // The access log on, as Istio's `demo` profile sets it (its default writes none).
        cluster: KubeCluster::start_with_mesh_config(&NODES, &[], STDOUT_ACCESS_LOG)
            .context("starting the containerd nodes")?,
        waypoints: pods
            .iter()
            .filter(|p| p.is_waypoint())
            .map(|p| p.name.clone())
            .collect(),
    };
    // Not the files naming the external server, which runs on the testbed only.
    for (file, yaml) in examples.files.iter().filter(|(_, y)| !names_external(y)) {
        on.apply(file, yaml)?;
    }
    // The mesh's edge (the gateways, the in-mesh TLS server, the hosts outside the cluster)
    // runs on the testbed only.
    let pods: Vec<&PodSpec> = pods
        .iter()
        .filter(|p| {
            !p.outside_cluster
                && !is_gateway(p)
                && p.labels.get("app").map(String::as_str) != Some(TLS_SERVER_APP)
        })
        .collect();
    for spec in &pods {
        on.run(spec)
            .with_context(|| format!("starting pod {}", spec.name))?;
    }
    for spec in &pods {
        on.await_listening(spec)?;
    }
    Ok(on)
}

impl OnContainerd {
    fn running(&self, pod: &str) -> &RunningPod {
        self.cluster
            .pods
            .get(pod)
            .or_else(|| {
                self.cluster
                    .nodes
                    .values()
                    .map(|n| &n.agent_pod)
                    .find(|p| p.name == pod)
            })
            .unwrap_or_else(|| panic!("no pod {pod} in the demo"))
    }

    /// Creates `spec`'s pod through the CRI: the sample app for bookinfo's pods and the client,
    /// the waypoint for the waypoint's.
    fn run(&mut self, spec: &PodSpec) -> anyhow::Result<RunningPod> {
        let mut labels = spec.labels.clone();
        if !spec.enrolled {
            labels.insert("istio.io/dataplane-mode".into(), "none".into());
        }
        let pod = KubePod {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            node: spec.node.clone(),
            labels,
            service_account: spec.service_account.clone(),
            args: Vec::new(),
        };
        match &spec.workload {
            Workload::Waypoint { gateway } => self.cluster.run_pod_with(pod, |cluster, running| {
                waypoint_container(cluster, running, spec, gateway)
            }),
            workload => {
                let args = match workload {
                    Workload::App { service, version } => spec.sample_app_args(service, version),
                    _ => spec.sample_app_args(&spec.name, "v1"),
                };
                let container = sample_app_container(&spec.name, args)?;
                self.cluster.run_pod_with(pod, |_, _| Ok(container))
            }
        }
    }

    /// Waits until the pod's port accepts connections from its node (the kubelet's probe).
    fn await_listening(&self, spec: &PodSpec) -> anyhow::Result<()> {
        let port = if spec.is_waypoint() {
            15021
        } else {
            spec.http_port
        };
        let address = SocketAddr::from((self.pod_ip(&spec.name), port));
        let node = &self.cluster.testbed.node(&spec.node).netns;
        self.cluster.wait_for(
            &format!("{} to listen on {address}", spec.name),
            PATIENCE,
            |_| {
                node.run(move || TcpStream::connect_timeout(&address, Duration::from_secs(1)))
                    .ok()?
                    .ok()
            },
        )?;
        Ok(())
    }
}

/// The waypoint's container: its image, configured as Istio's gateway controller configures
/// a waypoint's pod (its Gateway, its service account's token bound to this pod, the mesh's
/// root certificate, the controller's address).
fn waypoint_container(
    cluster: &KubeCluster,
    running: &RunningPod,
    spec: &PodSpec,
    gateway: &str,
) -> anyhow::Result<ContainerSpec> {
    let token = format!("waypoint-token-{}-{}", cluster.testbed.prefix(), spec.name);
    cluster.api.add_token(
        &token,
        TokenIdentity::bound(
            &spec.namespace,
            &spec.service_account,
            (&running.name, &running.uid),
            Some(&spec.node),
            AUDIENCE,
        ),
    );
    let tokens = cluster.dir.join(format!("tokens-{}", spec.name));
    std::fs::create_dir_all(&tokens)?;
    std::fs::write(tokens.join("istio-token"), &token)?;
    let controller = format!("https://{ISTIOD}:15012");
    Ok(ContainerSpec {
        name: "istio-proxy".into(),
        image: image_reference("waypoint")?,
        env: [
            ("XDS_ADDRESS", controller.as_str()),
            ("CA_ADDRESS", &controller),
            ("BOOTSTRAP_TOKEN_FILE", &format!("{TOKEN_DIR}/istio-token")),
            ("ROOT_CERT_FILE", &format!("{ROOT_CERT_DIR}/root-cert.pem")),
            ("NODE_NAME", &spec.node),
            ("WAYPOINT_NAME", gateway),
            ("POD_NAMESPACE", &spec.namespace),
            ("SERVICE_ACCOUNT", &spec.service_account),
            ("LOG_LEVEL", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        mounts: vec![
            mount(&tokens, TOKEN_DIR, true),
            mount(cluster.dir.join("secrets/istio"), ROOT_CERT_DIR, true),
            mount(cluster.dir.join("hosts"), "/etc/hosts", true),
        ],
        log_path: format!("{}.log", spec.name),
        ..ContainerSpec::default()
    })
}

impl Cluster for OnContainerd {
    fn testbed(&self) -> &Testbed {
        &self.cluster.testbed
    }

    fn summary(&self) -> String {
        format!(
            "containerd on each node (pods created through the CRI from the images, enrolled by weft-cni), the node agent as its DaemonSet's pod, the controller in Kubernetes mode; API server {}",
            self.cluster.api.url()
        )
    }

    fn pod_ip(&self, pod: &str) -> Ipv4Addr {
        self.running(pod).ip
    }

    fn pod_command(&self, pod: &str, program: &str) -> Command {
        self.running(pod).netns.command(program)
    }

    fn agent(&self, node: &str) -> (String, Ipv4Addr) {
        let pod = &self.cluster.nodes[node].agent_pod;
        (pod.name.clone(), pod.ip)
    }

    /// `kubectl apply`: each document creates its object or replaces the one of the same kind,
    /// namespace and name.
    fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        for document in crate::split_documents(yaml) {
            let value: serde_yaml::Value =
                serde_yaml::from_str(&document).with_context(|| format!("parsing {file}"))?;
            let (Some(api_version), Some(kind), Some(name)) = (
                text(&value, &["apiVersion"]),
                text(&value, &["kind"]),
                text(&value, &["metadata", "name"]),
            ) else {
                continue;
            };
            let namespace = text(&value, &["metadata", "namespace"]).unwrap_or_default();
            let object: Value = serde_json::to_value(&value)?;
            let api = &self.cluster.api;
            let applied = if api.get(&api_version, &kind, &namespace, &name).is_some() {
                api.update(object)
            } else {
                api.create(object)
            };
            applied.with_context(|| format!("{file}: applying {kind} {namespace}/{name}"))?;
        }
        Ok(())
    }

    fn capture_scope(&self) -> CaptureScope {
        CaptureScope {
            // The testbed's pod networks (10.251.<node>.0/24, the bridge plugin's ranges).
            filter: "ip.src == 10.251.0.0/16 && ip.dst == 10.251.0.0/16 && tcp.len > 0",
            description: "between the pods of the two nodes",
            ports: &[("15008", "HBONE")],
        }
    }

    fn places(&self) -> BTreeMap<String, Place> {
        let mut places = BTreeMap::new();
        let agents = self.cluster.nodes.values().map(|n| &n.agent_pod);
        for pod in self.cluster.pods.values().chain(agents) {
            places.insert(
                pod.name.clone(),
                Place {
                    netns: pod.netns.name().to_string(),
                    cgroup: None,
                    ip: pod.ip,
                },
            );
        }
        places.extend(super::host_places(&self.cluster.testbed));
        places
    }

    fn dir(&self) -> &Path {
        &self.cluster.dir
    }

    fn logs(&self) -> String {
        self.cluster.logs()
    }

    /// Prometheus on the control-plane host, scraping the agents' DaemonSet pods, the waypoint's
    /// pod (their pod addresses, routed to each node's pod network) and the controller on the
    /// host's loopback.
    fn start_observability(&self) -> anyhow::Result<Option<Observability>> {
        let scraped = Scraped {
            host: self
                .cluster
                .testbed
                .control_plane()
                .context("a control-plane host")?,
            dir: &self.cluster.dir,
            agents: self
                .cluster
                .nodes
                .values()
                .map(|n| SocketAddr::from((n.agent_pod.ip, AGENT_METRICS_PORT)))
                .collect(),
            waypoints: self
                .waypoints
                .iter()
                .map(|w| SocketAddr::from((self.pod_ip(w), WAYPOINT_METRICS_PORT)))
                .collect(),
            controller: CONTROLLER_MONITORING,
        };
        Observability::start(&scraped, || self.logs()).map(Some)
    }

    fn limits(&self) -> &'static [&'static str] {
        &[
            "the fabric capture judges pod-to-pod packets only: the node daemon's watch of the (fake, plain HTTP) API server and the agents' TLS to the controller on 15012 cross the same wire",
            "`demo exec` enters a pod's network namespace with the host's tools (the images carry no shell), as `kubectl debug` brings its own",
            "no gateways run here (their pods, the in-mesh TLS server and the hosts outside the cluster run on the testbed runtime only): the ingress and egress scenarios are not played",
        ]
    }
}
