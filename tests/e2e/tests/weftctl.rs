//! `weftctl` against a running mesh: the real binary, run in a node's network namespace (where
//! the agent's admin port and the controller's monitoring port are reachable), reads the
//! controller's `/debug/syncz` and the agent's `/config_dump`; `analyze` runs on files.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use weft_e2e::fixtures::CART_SERVICE;
use weft_e2e::{Mesh, MeshOptions, PodSpec, binary, waypoint_resources};

/// A VirtualService Istio refuses (a negative weight) next to one that routes through a
/// Gateway that does not exist.
const BROKEN: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: negative, namespace: shop}
spec:
  hosts: [cart]
  http:
  - route:
    - destination: {host: cart}
      weight: -5
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: dangling, namespace: shop}
spec:
  hosts: [cart.example.com]
  gateways: [no-such-gateway]
  http:
  - route:
    - destination: {host: cart}
"#;

struct Weftctl<'a> {
    mesh: &'a Mesh,
    controller: String,
}

impl Weftctl<'_> {
    /// Runs weftctl in `node`'s network namespace.
    fn run(&self, node: &str, args: &[&str]) -> Output {
        self.mesh
            .testbed
            .node_command(node, binary("weftctl").unwrap().to_str().unwrap())
            .args(["--controller", &self.controller])
            .args(args)
            .output()
            .expect("run weftctl")
    }

    fn json(&self, node: &str, args: &[&str]) -> Value {
        let output = self.run(node, &[args, &["-o", "json"]].concat());
        assert!(
            output.status.success(),
            "weftctl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("weftctl's JSON")
    }
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn weftctl_reads_a_running_mesh() {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-1", "node1", "shop", "cart", "v1"),
            PodSpec::app("cart-2", "node2", "shop", "cart", "v2"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
        ],
        MeshOptions {
            config: format!("{CART_SERVICE}---\n{}", waypoint_resources("shop")),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let control_plane = mesh.testbed.control_plane().expect("a control plane").ip;
    let weftctl = Weftctl {
        mesh: &mesh,
        controller: format!("{control_plane}:15014"),
    };

    // proxy-status: both agents and the waypoint, every type ACKed.
    let mut last = Value::Null;
    let synced = mesh.eventually(Duration::from_secs(30), || {
        last = weftctl.json("node1", &["proxy-status"]);
        let proxies = last.as_array().cloned().unwrap_or_default();
        let kinds: Vec<&str> = proxies.iter().filter_map(|p| p["kind"].as_str()).collect();
        proxies.len() == 3
            && kinds.iter().filter(|k| **k == "node-agent").count() == 2
            && kinds.contains(&"waypoint")
            && proxies
                .iter()
                .all(|p| p["status"] == "SYNCED" && !p["types"].as_array().unwrap().is_empty())
    });
    assert!(synced, "proxy-status: {last:#}\n{}", mesh.logs());
    let table = text(&weftctl.run("node1", &["proxy-status"]));
    assert!(
        table.contains("node-agent~node1") && table.contains("node-agent~node2"),
        "{table}"
    );
    assert!(
        table.contains("SYNCED") && !table.contains("STALE") && !table.contains("NACKED"),
        "{table}"
    );

    // node-config: node1's agent holds every workload and the certificates of its pods.
    let workloads = weftctl.json("node1", &["node-config", "workloads"]);
    let names: Vec<&str> = workloads
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    for pod in ["client", "cart-1", "cart-2"] {
        assert!(names.contains(&pod), "{pod} missing from {names:?}");
    }
    let table = text(&weftctl.run("node1", &["node-config", "workloads", "node1"]));
    assert!(
        table.contains("spiffe://cluster.local/ns/shop/sa/"),
        "{table}"
    );
    // A request to the other node goes over HBONE: node1's agent holds the client's certificate.
    let cart2 = mesh.pod("cart-2").ip;
    let (status, body) = mesh.curl("client", &format!("http://{cart2}:8080/"));
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    let client = mesh.pods.iter().find(|p| p.name == "client").unwrap();
    let identity = format!(
        "spiffe://cluster.local/ns/shop/sa/{}",
        client.service_account
    );
    let mut certificates = Value::Null;
    let issued =
        mesh.eventually(Duration::from_secs(10), || {
            certificates = weftctl.json("node1", &["node-config", "certificates"]);
            certificates.as_array().unwrap().iter().any(|c| {
                c["identity"] == identity.as_str() && c["certificate"]["serial"].is_string()
            })
        });
    assert!(issued, "no certificate for {identity}: {certificates:#}");
    let wrong_node = weftctl.run("node1", &["node-config", "workloads", "node2"]);
    assert!(!wrong_node.status.success());
    assert!(
        text(&wrong_node).contains("--agent"),
        "{}",
        text(&wrong_node)
    );

    // version: weftctl, the controller and every proxy.
    let versions = weftctl.json("node1", &["version"]);
    assert_eq!(versions["client"], env!("CARGO_PKG_VERSION"));
    assert_eq!(versions["controller"], env!("CARGO_PKG_VERSION"));
    let proxies: Vec<&str> = versions["proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["proxy"].as_str())
        .collect();
    assert_eq!(proxies.len(), 3, "{versions:#}");
    assert!(
        proxies.iter().any(|p| p.starts_with("waypoint~")),
        "{proxies:?}"
    );

    // analyze: the mesh's own configuration is clean; a broken document fails with its code.
    let analyze = |path: &std::path::Path| {
        std::process::Command::new(binary("weftctl").unwrap())
            .arg("analyze")
            .arg(path)
            .output()
            .expect("run weftctl analyze")
    };
    let clean = analyze(&mesh.dir().join("config"));
    assert!(clean.status.success(), "{}", text(&clean));
    let broken_dir = mesh.dir().join("broken");
    std::fs::create_dir_all(&broken_dir).unwrap();
    std::fs::write(broken_dir.join("broken.yaml"), BROKEN).unwrap();
    let broken = analyze(&broken_dir);
    let report = text(&broken);
    assert_eq!(broken.status.code(), Some(79), "{report}");
    assert!(
        report.contains("IST0106 SchemaValidationError") && report.contains("shop/negative"),
        "{report}"
    );
    assert!(
        report.contains("IST0101 ReferencedResourceNotFound") && report.contains("shop/dangling"),
        "{report}"
    );
    assert!(report.contains("broken.yaml[doc 0]"), "{report}");

    // From the host, with the mesh's published addresses: weftctl enters the namespaces itself.
    let mesh_dir = mesh.dir().to_str().unwrap();
    let from_host = |args: &[&str]| {
        let output = std::process::Command::new(binary("weftctl").unwrap())
            .args(["--mesh-dir", mesh_dir, "-o", "json"])
            .args(args)
            .output()
            .expect("run weftctl");
        assert!(
            output.status.success(),
            "weftctl {args:?}: {}",
            text(&output)
        );
        serde_json::from_slice::<Value>(&output.stdout).expect("weftctl's JSON")
    };
    let node2 = from_host(&["node-config", "workloads", "node2"]);
    assert!(
        node2
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["name"] == "cart-2"),
        "{node2:#}"
    );
    assert_eq!(from_host(&["proxy-status"]).as_array().unwrap().len(), 3);
    assert!(
        from_host(&["analyze"])
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["level"] != "Error")
    );

    // waypoint status: the mesh's waypoint, its proxy connected and synced.
    let waypoints = weftctl.json(
        "node1",
        &[
            "waypoint",
            "status",
            "-n",
            "shop",
            "--config-dir",
            mesh.dir().join("config").to_str().unwrap(),
        ],
    );
    assert_eq!(waypoints[0]["name"], "waypoint", "{waypoints:#}");
    assert_eq!(
        waypoints[0]["proxies"][0]["status"], "SYNCED",
        "{waypoints:#}"
    );
}
