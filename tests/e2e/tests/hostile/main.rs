//! The mesh under attack, with the real binaries: every way in that probing the running mesh
//! found open (forged source addresses, STRICT bypassed on Istio's ports, descriptor exhaustion
//! without credentials, DENY rules that silently denied nothing, `h2c` upgrades past the
//! waypoint's checks, foreign trust domains at the waypoint, lenient HTTP parsing), and the
//! attacks that already failed, kept so that they stay failed (path normalization, request
//! smuggling, HTTP/2 floods, HBONE to agent ports and to pods served elsewhere, certificates of
//! every wrong kind, data before the tunnel is authorized, capture bypass, CA impersonation).
//! Every refusal is checked together with the mesh still serving everyone else. Needs root.
//!
//! Two meshes, one per test, each serving many attacks: `agent` attacks the node agents and the
//! CA, `waypoint` attacks the waypoint.

mod agent;
mod attacker;
mod certs;
mod waypoint;

use std::net::Ipv4Addr;
use std::time::Duration;

use weft_e2e::{Mesh, MeshOptions, PodSpec};

/// The client's identity (its pod runs on node1).
const CLIENT: &str = "spiffe://cluster.local/ns/shop/sa/client";
/// node1's address on the fabric (the testbed's first node), which policies name.
const NODE1: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);

/// Starts a mesh of `pods` with `config`; the apps log their requests.
fn start(pods: Vec<PodSpec>, config: String) -> Mesh {
    let mesh = Mesh::start(
        pods,
        MeshOptions {
            config,
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    assert_eq!(mesh.testbed.node("node1").ip, NODE1, "policies name node1");
    mesh
}

/// A Service of namespace `shop` named `name` at `vip`, port 80 to the pods' 8080, selecting
/// `app: <name>`, using the waypoint when `waypoint`.
fn http_service(name: &str, vip: &str, waypoint: bool) -> String {
    let labels = if waypoint {
        "\n  labels: {istio.io/use-waypoint: waypoint}"
    } else {
        ""
    };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: shop{labels}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

/// Waits until `url` answers 200 from `pod`.
fn wait_for(mesh: &Mesh, pod: &str, url: &str) {
    assert!(
        mesh.eventually(Duration::from_secs(15), || mesh
            .curl_with(pod, &[url])
            .status
            == 200),
        "{url} never answered {pod}\n{}",
        mesh.logs()
    );
}

/// The status of one request from `pod` (0: no response).
fn status(mesh: &Mesh, pod: &str, args: &[&str]) -> u16 {
    mesh.curl_with(pod, args).status
}

/// Whether `pod`'s sample app logged a request whose line contains `needle`.
fn app_saw(mesh: &Mesh, pod: &str, needle: &str) -> bool {
    mesh.log_of(&format!("app-{pod}")).contains(needle)
}

/// The checks of one test. A failed check is recorded, not raised at once, so that one run shows
/// every attack that got through; [`Checks::finish`] fails the test if any did.
#[derive(Debug, Default)]
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn check(&mut self, held: bool, what: impl std::fmt::Display) {
        if !held {
            eprintln!("FAILED: {what}");
            self.failed.push(what.to_string());
        }
    }

    fn equal<T: PartialEq + std::fmt::Debug>(
        &mut self,
        found: T,
        expected: T,
        what: impl std::fmt::Display,
    ) {
        let held = found == expected;
        self.check(
            held,
            format_args!("{what}: {found:?}, expected {expected:?}"),
        );
    }

    fn finish(self, mesh: &Mesh) {
        assert!(
            self.failed.is_empty(),
            "{} check(s) failed:\n{}\n{}",
            self.failed.len(),
            self.failed.join("\n"),
            mesh.logs()
        );
    }
}
