//! The demo on containerd: the [`KubeCluster`] harness (containerd on each node, the node agent
//! as its DaemonSet's pod from its image, `weft-cni` chained after the bridge plugin, the
//! controller in Kubernetes mode against the fake API server). The examples' documents are
//! applied to the API server as `kubectl apply` would; then every pod (the waypoint, the
//! bookinfo apps, the client) is created through the CRI as the kubelet creates it, from the
//! images of `cargo xtask images`: the Pod in the API, RunPodSandbox (the CNI chain, where
//! `weft-cni` enrolls the pod before any of its containers runs), CreateContainer,
//! StartContainer. The waypoint runs from its image with its service account's token, as
//! Istio's gateway controller would deploy it.
//!
//! The mesh's edge: the ingress and egress gateways run as pods from the waypoint image in the
//! gateway role, their certificates from the controller, which serves them from the Secrets
//! their Gateways name (`credentialName`), held by the API server. The in-mesh TLS server's pod
//! is created through the CRI like bookinfo's (enrolled by `weft-cni`); its server,
//! `openssl s_server`, runs in the pod's network namespace with the host's tools, as on the
//! testbed (the images carry none). The outside client and the external server are network
//! namespaces the demo creates on the nodes' pod bridges, enrolled by nothing and with no route
//! out of the machine.

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
    edge::{self, Credential, EXTERNAL_DIR, Edge, Server, Site, names_external},
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
    /// The edge's servers; declared first: stopped before their pods go.
    _servers: Vec<Server>,
    /// Set once the gateways run, before the cluster is handed out.
    edge: Option<Edge>,
    cluster: KubeCluster,
    /// The waypoints' pods.
    waypoints: Vec<String>,
}

pub fn start(examples: &Examples, pods: &[PodSpec]) -> anyhow::Result<OnContainerd> {
    // The hosts outside the cluster, each on its node's pod bridge.
    let outside: Vec<(&str, Vec<&str>)> = NODES
        .iter()
        .map(|node| {
            let hosts = pods.iter().filter(|p| p.outside_cluster && p.node == *node);
            (*node, hosts.map(|p| p.name.as_str()).collect())
        })
        .collect();
    let nodes: Vec<(&str, &[&str])> = outside.iter().map(|(n, h)| (*n, h.as_slice())).collect();
    let mut on = OnContainerd {
        _servers: Vec::new(),
        edge: None,
        // The access log on, as Istio's `demo` profile sets it (its default writes none).
        cluster: KubeCluster::start_with_mesh_config(&nodes, &[], STDOUT_ACCESS_LOG)
            .context("starting the containerd nodes")?,
        waypoints: pods
            .iter()
            .filter(|p| p.is_waypoint())
            .map(|p| p.name.clone())
            .collect(),
    };
    // The files naming the external server wait for its address.
    let (held_back, files): (Vec<_>, Vec<_>) = examples
        .files
        .iter()
        .cloned()
        .partition(|(_, yaml)| names_external(yaml));
    for (file, yaml) in &files {
        Cluster::apply(&on, file, yaml)?;
    }
    // The proxies mount the external server's CA (the DestinationRule's `caCertificates`).
    std::fs::create_dir_all(on.cluster.dir.join(EXTERNAL_DIR))?;
    let in_cluster: Vec<&PodSpec> = pods
        .iter()
        .filter(|p| !p.outside_cluster && !is_gateway(p))
        .collect();
    for spec in &in_cluster {
        on.run(spec)
            .with_context(|| format!("starting pod {}", spec.name))?;
    }
    for spec in &in_cluster {
        on.await_listening(spec)?;
    }
    on.start_edge(pods, &examples.files, &held_back)
        .context("starting the edge")?;
    Ok(on)
}

impl OnContainerd {
    /// The edge on the running mesh: its servers, the gateways' Secrets, then their pods.
    fn start_edge(
        &mut self,
        pods: &[PodSpec],
        files: &[(String, String)],
        held_back: &[(String, String)],
    ) -> anyhow::Result<()> {
        let servers = edge::start_servers(self, pods, held_back)?;
        let (ingress, egress) = edge::gateways(pods)?;
        let credentials = edge::credentials(files)?;
        for credential in &credentials {
            self.put_secret(&ingress.namespace, credential)?;
        }
        let ingress_ca = edge::ingress_ca(&credentials, &self.cluster.dir)?;
        for spec in [ingress, egress] {
            self.run(spec)
                .with_context(|| format!("starting pod {}", spec.name))?;
        }
        for spec in [ingress, egress] {
            self.await_listening(spec)?;
        }
        let (edge, servers) = servers.edge(&ingress.name, &egress.name, ingress_ca);
        self.edge = Some(edge);
        self._servers = servers;
        Ok(())
    }

    /// A gateway's credential as the Secret its `credentialName` names (`kubernetes.io/tls`),
    /// in the namespace of the gateway's pod.
    fn put_secret(&self, namespace: &str, credential: &Credential) -> anyhow::Result<()> {
        use base64::Engine;
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let secret = serde_json::json!({
            "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": {"name": credential.name, "namespace": namespace},
            "data": {"tls.crt": encode(&credential.cert), "tls.key": encode(&credential.key)},
        });
        self.cluster
            .api
            .create(secret)
            .with_context(|| format!("Secret {namespace}/{}", credential.name))?;
        Ok(())
    }

    /// A host outside the cluster (a namespace of the testbed).
    fn outside_host(&self, name: &str) -> Option<&weft_testbed::Pod> {
        self.cluster.testbed.pods().iter().find(|p| p.name == name)
    }

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

    /// Creates `spec`'s pod through the CRI: the sample app for bookinfo's pods, the client and
    /// the in-mesh TLS server's pod (on the app's own port: the TLS server takes the pod's),
    /// the waypoint image for the waypoint's and the gateways'.
    fn run(&mut self, spec: &PodSpec) -> anyhow::Result<RunningPod> {
        let mut labels = spec.labels.clone();
        if !spec.enrolled {
            labels.insert("istio.io/dataplane-mode".into(), "none".into());
        }
        // What the pod's controller writes, from which the mesh names its workload.
        let mut metadata = Value::Null;
        if let Some(owner) = &spec.owner {
            labels.extend(owner.labels.clone());
            metadata = serde_json::json!({
                "generateName": owner.generate_name,
                "ownerReferences": [{"apiVersion": owner.api_version, "kind": owner.kind,
                    "name": owner.name, "uid": format!("uid-{}", owner.name), "controller": true}],
            });
        }
        let pod = KubePod {
            name: spec.name.clone(),
            namespace: spec.namespace.clone(),
            node: spec.node.clone(),
            labels,
            service_account: spec.service_account.clone(),
            args: Vec::new(),
            metadata,
        };
        let role = match &spec.workload {
            Workload::Waypoint { gateway } => Some(vec![("WAYPOINT_NAME", gateway.as_str())]),
            _ if is_gateway(spec) => {
                Some(vec![("PROXY_ROLE", "gateway"), ("POD_NAME", &spec.name)])
            }
            _ => None,
        };
        match (role, &spec.workload) {
            (Some(role), _) => self.cluster.run_pod_with(pod, |cluster, running| {
                proxy_container(cluster, running, spec, &role)
            }),
            (None, workload) => {
                let args = match workload {
                    Workload::App { service, version } => spec.sample_app_args(service, version),
                    _ if is_tls_server(spec) => {
                        let mut app = spec.clone();
                        app.http_port = crate::DEFAULT_HTTP_PORT;
                        app.sample_app_args(&spec.name, "v1")
                    }
                    _ => spec.sample_app_args(&spec.name, "v1"),
                };
                let container = sample_app_container(&spec.name, args)?;
                self.cluster.run_pod_with(pod, |_, _| Ok(container))
            }
        }
    }

    /// Waits until the pod's port accepts connections from its node (the kubelet's probe); a
    /// gateway until it is ready (its certificate and configuration applied).
    fn await_listening(&self, spec: &PodSpec) -> anyhow::Result<()> {
        if is_gateway(spec) {
            let url = format!("http://{}:15021/healthz/ready", self.pod_ip(&spec.name));
            self.cluster
                .wait_for(&format!("{} to be ready", spec.name), PATIENCE, |c| {
                    (c.node_http(&spec.node, &url).ok()?.0 == 200).then_some(())
                })?;
            return Ok(());
        }
        let port = if spec.is_waypoint() {
            15021
        } else if is_tls_server(spec) {
            crate::DEFAULT_HTTP_PORT
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

/// The in-mesh TLS server's pod.
fn is_tls_server(spec: &PodSpec) -> bool {
    spec.labels.get("app").map(String::as_str) == Some(TLS_SERVER_APP)
}

/// A proxy's container from the waypoint image, with `role`'s variables: a waypoint's as
/// Istio's gateway controller configures a waypoint's pod (its Gateway), a gateway's as the
/// istio-ingressgateway Deployment does (its role and pod name; its credentials come from the
/// controller); both with their service account's token bound to this pod, the mesh's root
/// certificate, the controller's address, and the external server's CA.
fn proxy_container(
    cluster: &KubeCluster,
    running: &RunningPod,
    spec: &PodSpec,
    role: &[(&str, &str)],
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
    let external = cluster.dir.join(EXTERNAL_DIR);
    Ok(ContainerSpec {
        name: "istio-proxy".into(),
        image: image_reference("waypoint")?,
        env: [
            ("XDS_ADDRESS", controller.as_str()),
            ("CA_ADDRESS", &controller),
            ("BOOTSTRAP_TOKEN_FILE", &format!("{TOKEN_DIR}/istio-token")),
            ("ROOT_CERT_FILE", &format!("{ROOT_CERT_DIR}/root-cert.pem")),
            ("NODE_NAME", &spec.node),
            ("POD_NAMESPACE", &spec.namespace),
            ("SERVICE_ACCOUNT", &spec.service_account),
            ("LOG_LEVEL", "info"),
        ]
        .into_iter()
        .chain(role.iter().copied())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        mounts: vec![
            mount(&tokens, TOKEN_DIR, true),
            // Where the DestinationRule names it: the path is the run's on both sides.
            mount(&external, &external.to_string_lossy(), true),
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
        match self.outside_host(pod) {
            Some(host) => host.ip,
            None => self.running(pod).ip,
        }
    }

    fn pod_command(&self, pod: &str, program: &str) -> Command {
        match self.outside_host(pod) {
            Some(_) => self.cluster.testbed.pod_command(pod, program),
            None => self.running(pod).netns.command(program),
        }
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
        for host in self.cluster.testbed.pods() {
            places.insert(
                host.name.clone(),
                Place::of(&host.netns, &host.cgroup, host.ip),
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
    /// and the gateways' pods (their pod addresses, routed to each node's pod network) and the
    /// controller on the host's loopback.
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
            gateways: self.edge().metrics_addresses(|pod| self.pod_ip(pod)),
            controller: CONTROLLER_MONITORING,
        };
        Observability::start(&scraped, || self.logs()).map(Some)
    }

    fn limits(&self) -> &'static [&'static str] {
        &[
            "the fabric capture judges pod-to-pod packets only: the node daemon's watch of the (fake, plain HTTP) API server and the agents' TLS to the controller on 15012 cross the same wire",
            "`demo exec` enters a pod's network namespace with the host's tools (the images carry no shell), as `kubectl debug` brings its own; the in-mesh TLS server's openssl runs there the same way",
        ]
    }

    fn edge(&self) -> &Edge {
        self.edge
            .as_ref()
            .expect("the edge starts with the cluster")
    }

    /// Rewrites the mesh configuration file the controller follows (the chart's `meshConfig`,
    /// mounted) and waits until every node agent's `/config_dump` shows `mode`.
    fn set_outbound_traffic_policy(&self, mode: &str) -> anyhow::Result<()> {
        let path = self.cluster.dir.join("mesh-config.yaml");
        let temporary = path.with_extension("tmp");
        std::fs::write(
            &temporary,
            format!("{STDOUT_ACCESS_LOG}outboundTrafficPolicy:\n  mode: {mode}\n"),
        )?;
        std::fs::rename(&temporary, &path)?;
        self.cluster.wait_for(
            &format!("every agent to apply outboundTrafficPolicy {mode}"),
            crate::STARTUP,
            |c| {
                NODES
                    .iter()
                    .all(|node| {
                        c.agent_config_dump(node)
                            .is_ok_and(|dump| dump["state"]["outbound_traffic_policy"] == mode)
                    })
                    .then_some(())
            },
        )
    }
}

impl Site for OnContainerd {
    fn dir(&self) -> &Path {
        &self.cluster.dir
    }

    fn command(&self, pod: &str, program: &str) -> Command {
        self.pod_command(pod, program)
    }

    fn ip(&self, pod: &str) -> Ipv4Addr {
        self.pod_ip(pod)
    }

    fn apply(&self, file: &str, yaml: &str) -> anyhow::Result<()> {
        Cluster::apply(self, file, yaml)
    }
}
