//! Graceful shutdown with the real binaries: SIGTERM to the waypoint while a long request is
//! in flight through it. Readiness fails at once, a new connection to its HBONE port is
//! refused, the request in flight completes, and the process exits within its termination
//! deadline (Istio's `terminationDrainDuration`, 5 s by default). Needs root.

use std::io::Read as _;
use std::time::{Duration, Instant};

use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};

const WAYPOINT: &str = "waypoint";
const VIP: &str = "10.96.0.20";
/// The waypoint's termination deadline: it runs with the default.
const DEADLINE: Duration = Duration::from_secs(5);

/// `/slow` goes to v2, everything else to v1: v2's first connection from the waypoint is the
/// slow request's, which is how the test sees it arrive.
const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: shop
  labels: {app: reviews, istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports:
  - {name: http, port: 80, targetPort: 8080}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /slow}}]
    route: [{destination: {host: reviews.shop.svc.cluster.local, subset: v2}}]
  - route: [{destination: {host: reviews.shop.svc.cluster.local, subset: v1}}]
"#;

/// Whether `pod` has an established TCP connection to its port 8080 (the app's), read from the
/// pod's socket table.
fn app_connected(mesh: &Mesh, pod: &str) -> bool {
    mesh.testbed
        .pod_command(pod, "ss")
        .args(["-Htn", "state", "established", "sport = :8080"])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.trim_ascii().is_empty())
}

#[test]
fn sigterm_drains_the_waypoint_finishing_requests_in_flight() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: format!("{CONFIG}---\n{}", waypoint_resources("shop")),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    // The agents learn the service's waypoint from the controller.
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh
            .curl_with("client", &[&format!("http://{VIP}/ready")])
            .status
            == 200),
        "the service is not reachable through the waypoint\n{}",
        mesh.logs()
    );
    assert!(!app_connected(&mesh, "reviews-v2"), "v2 served already");

    // A request that takes 3 s, on its way to v2 when the waypoint is told to stop.
    let mut slow = mesh
        .spawn_in_pod(
            "client",
            "curl",
            &[
                "-s",
                "--max-time",
                "20",
                "-w",
                "\n%{http_code}",
                &format!("http://{VIP}/slow?delay_ms=3000"),
            ],
        )
        .expect("start the slow request");
    assert!(
        mesh.eventually(Duration::from_secs(10), || app_connected(
            &mesh,
            "reviews-v2"
        )),
        "the slow request never reached v2\n{}",
        mesh.logs()
    );

    let waypoint = mesh.testbed.pod(WAYPOINT).ip;
    let mut process = mesh
        .signal_waypoint(WAYPOINT)
        .expect("SIGTERM the waypoint");
    let signalled = Instant::now();

    // Unready at once, and the HBONE port refuses new connections, while the request is in
    // flight still.
    assert!(
        mesh.eventually(Duration::from_secs(2), || mesh
            .node_curl("node2", &format!("http://{waypoint}:15021/healthz/ready"))
            .is_ok_and(|(code, _)| code == 503)),
        "the draining waypoint still reports ready"
    );
    let refused = || {
        mesh.testbed
            .node_command("node2", "bash")
            .args(["-c", &format!("exec 3<>/dev/tcp/{waypoint}/15008")])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| !s.success())
    };
    assert!(
        mesh.eventually(Duration::from_secs(2), refused),
        "the draining waypoint still accepts connections"
    );
    assert!(
        slow.try_wait().expect("the slow request").is_none(),
        "the slow request ended before the drain could be observed ({:?} after SIGTERM)",
        signalled.elapsed()
    );

    // The request in flight completes through the draining waypoint.
    let status = slow.wait().expect("the slow request");
    let mut output = String::new();
    slow.stdout
        .take()
        .expect("curl's output")
        .read_to_string(&mut output)
        .expect("curl's output");
    assert!(status.success(), "curl failed: {output}");
    assert!(output.ends_with("\n200"), "{output}");
    assert!(
        output.contains("v2"),
        "answered by another version: {output}"
    );

    // Then the waypoint exits on its own, within its deadline.
    let exit = loop {
        if let Some(exit) = process.try_wait().expect("the waypoint process") {
            break exit;
        }
        assert!(
            signalled.elapsed() < DEADLINE + Duration::from_secs(5),
            "the waypoint did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = signalled.elapsed();
    assert!(exit.success(), "the waypoint exited with {exit}");
    assert!(
        took < DEADLINE + Duration::from_secs(1),
        "the waypoint took {took:?} to exit"
    );
}
