//! weftctl's cluster mode end to end: a kubeconfig names the fake API server, which lists the
//! controller's and the node agents' pods by the chart's labels and forwards their ports (the
//! WebSocket port-forward) to HTTP servers standing in for the controller's monitoring and
//! console ports and each agent's admin port. Everything weftctl prints of them crossed the
//! forward: the servers listen on ports weftctl is never told. The agents' admin ports are the
//! node agent's own endpoints; the controller's answers are its `/debug/syncz` type.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use controller::syncz::{ProxySync, Syncz, TypeSync};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use weft_fake_apiserver::FakeApiServer;

const NAMESPACE: &str = "istio-system";
const CONTROLLER_POD: &str = "weft-controller-7d9f";
/// A second replica, with its own connected proxy.
const REPLICA_POD: &str = "weft-controller-8e2a";

/// An HTTP/1.1 server answering GETs of `pages` (path, body), 404 otherwise, one request per
/// connection.
async fn serve(pages: Vec<(&'static str, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut connection, _) = listener.accept().await.unwrap();
            let pages = pages.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if connection.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("");
                let (status, body) = match pages.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => ("200 OK", body.clone()),
                    None => ("404 Not Found", format!("no page {path}")),
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = connection.write_all(answer.as_bytes()).await;
            });
        }
    });
    address
}

fn pod(name: &str, component: &str, node: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {"app.kubernetes.io/name": component, "app.kubernetes.io/part-of": "weft"},
        },
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "weft"}]},
        "status": {"phase": "Running"},
    })
}

fn syncz(replica: bool) -> String {
    let synced = |type_url: &str| TypeSync {
        type_url: type_url.into(),
        sent: Some("7".into()),
        acked: Some("7".into()),
        nacked: None,
        nack_error: None,
    };
    let proxy = |id: &str, kind: &str, version: &str| ProxySync {
        proxy: id.into(),
        kind: kind.into(),
        cluster: "Kubernetes".into(),
        version: version.into(),
        connection: 1,
        types: vec![synced("type.googleapis.com/istio.workload.Address")],
    };
    let proxies = if replica {
        vec![proxy(
            "waypoint~10.0.0.9~shop",
            "waypoint",
            "9.8.4-waypoint",
        )]
    } else {
        vec![
            proxy("node-agent~10.0.0.1~node-a", "node-agent", "9.8.6-agent-a"),
            proxy("node-agent~10.0.0.2~node-b", "node-agent", "9.8.5-agent-b"),
        ]
    };
    serde_json::to_string(&Syncz {
        controller_version: "9.8.7-forwarded".into(),
        proxies,
    })
    .unwrap()
}

/// A node agent's admin port as the agent serves it (`node_agent::admin::endpoints` on
/// `weft_proxy_core`'s server), its store holding one workload.
async fn agent_admin(node: &str, workload: &str) -> SocketAddr {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use node_agent::config::Config;
    use node_agent::state::WorkloadStore;
    use weft_proto::istio::workload as proto;

    let settings: BTreeMap<String, String> = [("NODE_NAME".to_owned(), node.to_owned())].into();
    let config = Config::from_strings(&settings).unwrap();
    let store = WorkloadStore::new();
    store.insert_workload(
        proto::Workload {
            uid: format!("Kubernetes//Pod/bookinfo/{workload}-5c7d"),
            name: format!("{workload}-5c7d"),
            namespace: "bookinfo".into(),
            workload_name: workload.into(),
            node: node.into(),
            addresses: vec![vec![10, 1, 0, 7]],
            service_account: "bookinfo".into(),
            tunnel_protocol: proto::TunnelProtocol::Hbone as i32,
            ..Default::default()
        }
        .try_into()
        .unwrap(),
    );
    let (_xds, xds_state) = tokio::sync::watch::channel(weft_xds::ConnectionState::default());
    let (drain, _watch) = weft_proxy_core::drain::channel();
    let [dump, _, _] = node_agent::admin::endpoints(
        config,
        store,
        Arc::new(Vec::new),
        xds_state,
        Arc::new(prometheus_client::registry::Registry::default()),
        drain.status(),
        Arc::new(|| 0),
    );
    let server = weft_proxy_core::admin::AdminServer::bind(([127, 0, 0, 1], 0).into(), dump)
        .await
        .unwrap();
    let address = server.address().unwrap();
    tokio::spawn(async move {
        // Held for the server's life: a dropped trigger would start the drain.
        let _drain = drain;
        server.run().await;
    });
    address
}

/// The fake cluster: a controller pod on node-a, an agent on node-a and on node-b.
struct Cluster {
    fake: FakeApiServer,
    kubeconfig: PathBuf,
}

impl Cluster {
    async fn start(name: &str) -> Self {
        let fake = FakeApiServer::start().await.unwrap();
        let monitoring = serve(vec![("/debug/syncz", syncz(false))]).await;
        let replica = serve(vec![("/debug/syncz", syncz(true))]).await;
        fake.create(pod(REPLICA_POD, "weft-controller", "node-b"))
            .unwrap();
        fake.forward_pod_port(NAMESPACE, REPLICA_POD, 15014, replica);
        let console = serve(vec![("/", "<title>weft console, forwarded</title>".into())]).await;
        fake.create(pod(CONTROLLER_POD, "weft-controller", "node-a"))
            .unwrap();
        fake.forward_pod_port(NAMESPACE, CONTROLLER_POD, 15014, monitoring);
        fake.forward_pod_port(NAMESPACE, CONTROLLER_POD, 20001, console);
        for (node, workload) in [("node-a", "productpage-v1"), ("node-b", "reviews-v2")] {
            let agent = format!("weft-node-agent-{node}");
            let admin = agent_admin(node, workload).await;
            fake.create(pod(&agent, "weft-node-agent", node)).unwrap();
            fake.forward_pod_port(NAMESPACE, &agent, 15000, admin);
        }
        let dir =
            std::env::temp_dir().join(format!("weftctl-cluster-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(&kubeconfig, fake.kubeconfig()).unwrap();
        Self { fake, kubeconfig }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_weftctl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        for variable in [
            "KUBECONFIG",
            "WEFT_CONTROLLER",
            "WEFT_AGENT_ADMIN",
            "WEFT_CONSOLE",
            "WEFT_MESH_DIR",
        ] {
            command.env_remove(variable);
        }
        command.kill_on_drop(true);
        command
    }

    /// Runs weftctl to its end: exit success, stdout, stderr.
    async fn run(&self, args: &[&str]) -> (bool, String, String) {
        let output = tokio::time::timeout(Duration::from_secs(60), self.command(args).output())
            .await
            .expect("weftctl ended")
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }

    fn forwards_of(&self, pod: &str) -> usize {
        let path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod}/portforward");
        self.fake
            .requests()
            .iter()
            .filter(|r| r.path == path && r.status == 101)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_status_and_version_read_the_controller_through_the_forward() {
    let cluster = Cluster::start("status").await;
    let (ok, stdout, stderr) = cluster.run(&["proxy-status"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("node-agent~10.0.0.1~node-a"), "{stdout}");
    assert!(stdout.contains("node-agent~10.0.0.2~node-b"), "{stdout}");
    assert!(stdout.contains("SYNCED"), "{stdout}");
    // The proxies of every replica, as istioctl asks every istiod.
    assert!(stdout.contains("waypoint~10.0.0.9~shop"), "{stdout}");
    assert_eq!(cluster.forwards_of(CONTROLLER_POD), 1);
    assert_eq!(cluster.forwards_of(REPLICA_POD), 1);
    // The pods were found by the chart's labels in its namespace.
    assert!(cluster.fake.requests().iter().any(|r| {
        r.path == format!("/api/v1/namespaces/{NAMESPACE}/pods")
            && r.query.get("labelSelector").map(String::as_str)
                == Some("app.kubernetes.io/name=weft-controller")
    }));

    let (ok, stdout, stderr) = cluster.run(&["version"]).await;
    assert!(ok, "{stderr}");
    assert!(
        stdout.contains("istio-system/weft-controller-7d9f,istio-system/weft-controller-8e2a"),
        "{stdout}"
    );
    for version in [
        "9.8.7-forwarded",
        "9.8.6-agent-a",
        "9.8.5-agent-b",
        "9.8.4-waypoint",
    ] {
        assert!(stdout.contains(version), "{version} in {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_config_reads_the_agent_of_the_named_node() {
    let cluster = Cluster::start("node").await;
    let (ok, stdout, stderr) = cluster.run(&["node-config", "workloads", "node-b"]).await;
    assert!(ok, "{stderr}");
    assert!(stdout.contains("reviews-v2"), "{stdout}");
    assert!(!stdout.contains("productpage-v1"), "{stdout}");
    assert_eq!(cluster.forwards_of("weft-node-agent-node-b"), 1);
    assert_eq!(cluster.forwards_of("weft-node-agent-node-a"), 0);

    let (ok, _, stderr) = cluster.run(&["node-config", "workloads", "node-z"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("no node agent pod on node \"node-z\"")
            && stderr.contains("node-a, node-b"),
        "{stderr}"
    );
    let (ok, _, stderr) = cluster.run(&["node-config", "workloads"]).await;
    assert!(!ok);
    assert!(stderr.contains("name a node (node-a, node-b)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_forwards_the_console_until_interrupted() {
    let cluster = Cluster::start("dashboard").await;
    let mut child = cluster
        .command(&["dashboard", "--port", "0", "--address", "127.0.0.1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(start) = line.find("http://") {
                return line[start..].trim().to_owned();
            }
        }
        panic!("weftctl dashboard printed no address");
    })
    .await
    .expect("weftctl dashboard printed its address");
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    // Twice: every connection gets its own forward, and the first does not end the command.
    for _ in 0..2 {
        let mut connection = TcpStream::connect(&authority).await.unwrap();
        connection
            .write_all(b"GET / HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        connection.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.contains("weft console, forwarded"), "{answer}");
    }
    assert_eq!(cluster.forwards_of(CONTROLLER_POD), 2);
    assert!(
        child.try_wait().unwrap().is_none(),
        "dashboard keeps forwarding"
    );
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_say_what_to_do() {
    let cluster = Cluster::start("errors").await;
    let (ok, _, stderr) = cluster.run(&["-i", "mesh-system", "proxy-status"]).await;
    assert!(!ok);
    assert!(
        stderr.contains(
            "no controller pod found in namespace mesh-system with labels \
             app.kubernetes.io/name=weft-controller"
        ),
        "{stderr}"
    );
    cluster.fake.fail_next(
        &format!("/api/v1/namespaces/{NAMESPACE}/pods/{CONTROLLER_POD}/portforward"),
        1,
        403,
    );
    let (ok, _, stderr) = cluster.run(&["proxy-status"]).await;
    assert!(!ok);
    assert!(
        stderr
            .contains("needs RBAC permission to create pods/portforward in namespace istio-system"),
        "{stderr}"
    );
    // A controller pod whose port nothing listens on: the pod's refusal is reported.
    let mut other = pod("weft-controller-0", "weft-controller", "node-a");
    other["metadata"]["namespace"] = json!("mesh-system");
    cluster.fake.create(other).unwrap();
    let (ok, _, stderr) = cluster.run(&["-i", "mesh-system", "proxy-status"]).await;
    assert!(!ok);
    assert!(
        stderr.contains("error forwarding port 15014 to pod mesh-system/weft-controller-0"),
        "{stderr}"
    );
}
