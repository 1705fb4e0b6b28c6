//! Graceful shutdown with the real binaries: SIGTERM to the waypoint, then to a node agent,
//! while a long request is in flight through it. Readiness fails at once, a new connection is
//! refused, the request in flight completes, and the process exits within its termination
//! deadline (Istio's `terminationDrainDuration`, 5 s by default). The agent's pods stay
//! captured (fail closed) until the next agent serves them. And a rolling update of the agents
//! under load (the next agent beside the old one, then SIGTERM to the old one), in which no
//! request fails. Needs root.

use std::io::Read as _;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_behind_waypoint};
use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_test_support::prometheus::Exposition;

const WAYPOINT: &str = "waypoint";
/// The waypoint's termination deadline: it runs with the default.
const DEADLINE: Duration = Duration::from_secs(5);

/// `/slow` goes to v2, everything else to v1: v2's first connection from the waypoint is the
/// slow request's, which is how the test sees it arrive.
const ROUTES: &str = r#"
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

/// Starts `curl` in `pod` for a request the app answers late (`?delay_ms=`).
fn slow_request(mesh: &Mesh, pod: &str, url: &str) -> Child {
    mesh.spawn_in_pod(
        pod,
        "curl",
        &["-s", "--max-time", "20", "-w", "\n%{http_code}", url],
    )
    .expect("start the slow request")
}

/// Waits for a `curl` started by [`slow_request`]: its output ends with the status code.
fn finish(mut curl: Child) -> String {
    let status = curl.wait().expect("the slow request");
    let mut output = String::new();
    curl.stdout
        .take()
        .expect("curl's output")
        .read_to_string(&mut output)
        .expect("curl's output");
    assert!(status.success(), "curl failed: {output}");
    output
}

/// Waits for a signalled proxy to exit on its own: its exit status and the time since
/// `signalled`.
fn exited(process: &mut Child, signalled: Instant) -> (ExitStatus, Duration) {
    loop {
        if let Some(exit) = process.try_wait().expect("the proxy process") {
            return (exit, signalled.elapsed());
        }
        assert!(
            signalled.elapsed() < DEADLINE + Duration::from_secs(5),
            "the proxy did not exit after its drain"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
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
            config: format!(
                "{}---\n{ROUTES}",
                reviews_behind_waypoint(false, &["v1", "v2"])
            ),
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
    let mut slow = slow_request(&mesh, "client", &format!("http://{VIP}/slow?delay_ms=3000"));
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

#[test]
fn sigterm_drains_the_agent_and_its_pods_fail_closed_until_the_next_one() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node2", "shop", "reviews", "v1"),
        ],
        MeshOptions::default(),
    )
    .expect("start the mesh");
    let app = mesh.testbed.pod("reviews-v1").ip;
    let url = format!("http://{app}:8080/");
    let answers = |mesh: &Mesh| mesh.curl_with("client", &["--max-time", "3", &url]).status == 200;
    assert!(
        mesh.eventually(Duration::from_secs(10), || answers(&mesh)),
        "the app is not reachable across the mesh\n{}",
        mesh.logs()
    );
    // The warm-up's connection to the app is gone once its tunnel closed.
    assert!(
        mesh.eventually(Duration::from_secs(10), || !app_connected(
            &mesh,
            "reviews-v1"
        )),
        "the warm-up's connection to the app stayed open"
    );
    // 4 s: inside the agent's deadline, longer than the checks below.
    let mut slow = slow_request(&mesh, "client", &format!("{url}slow?delay_ms=4000"));
    assert!(
        mesh.eventually(Duration::from_secs(10), || app_connected(
            &mesh,
            "reviews-v1"
        )),
        "the slow request never reached the app\n{}",
        mesh.logs()
    );

    let node2 = mesh.testbed.node("node2").ip;
    let mut process = mesh.signal_agent("node2").expect("SIGTERM the agent");
    let signalled = Instant::now();

    // Unready at once; the pod's listeners are closed, so a new connection to the app fails
    // (closed, not carried in plaintext), while the request is in flight still.
    assert!(
        mesh.eventually(Duration::from_secs(2), || mesh
            .node_curl("node2", &format!("http://{node2}:15021/healthz/ready"))
            .is_ok_and(|(code, _)| code == 503)),
        "the draining agent still reports ready"
    );
    let refused = mesh.curl_with("client", &["--max-time", "2", &url]);
    assert_ne!(refused.status, 200, "a new connection reached the app");
    assert!(
        slow.try_wait().expect("the slow request").is_none(),
        "the slow request ended before the drain could be observed ({:?} after SIGTERM)",
        signalled.elapsed()
    );

    // The request in flight completes, then the agent exits within its deadline.
    let output = finish(slow);
    assert!(output.ends_with("\n200"), "{output}");
    let (exit, took) = exited(&mut process, signalled);
    assert!(exit.success(), "the agent exited with {exit}");
    assert!(
        took < DEADLINE + Duration::from_secs(1),
        "the agent took {took:?} to exit"
    );

    // Without an agent the pod stays captured: nothing reaches it.
    assert_ne!(
        mesh.curl_with("client", &["--max-time", "3", &url]).status,
        200,
        "the app was reached with no agent serving it"
    );
    // The next agent adopts the pins and serves the pod again.
    mesh.restart_agent("node2").expect("restart the agent");
    assert!(
        mesh.eventually(Duration::from_secs(10), || answers(&mesh)),
        "the restarted agent does not serve the pod\n{}",
        mesh.logs()
    );
}

/// Connections `node`'s current agent counted, as the destination's or the source's reporter.
fn connections_opened(mesh: &Mesh, node: &str, reporter: &str) -> f64 {
    Exposition::parse(&mesh.metrics(node)).sum(
        "istio_tcp_connections_opened_total",
        &[("reporter", reporter)],
    )
}

/// STRICT at the destination: a request that left the source uncaptured (in plaintext) would
/// be refused there, so it counts as failed.
const STRICT: &str = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                      metadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n";

#[test]
fn a_rolling_update_of_both_agents_under_load_fails_no_request() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node2", "shop", "reviews", "v1"),
        ],
        MeshOptions {
            config: STRICT.to_owned(),
            // One listener per port and agent: the next agent's can only join the old one's
            // group, not stand alone in it (with more workers each agent has its own group
            // members already).
            agent_env: vec![("WORKER_THREADS".to_owned(), "1".to_owned())],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let app = mesh.testbed.pod("reviews-v1").ip;
    let url = format!("http://{app}:8080/");
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh
            .curl_with("client", &["--max-time", "3", &url])
            .status
            == 200),
        "the app is not reachable across the mesh\n{}",
        mesh.logs()
    );

    let load = mesh
        .steady_load("client", &url, 5, "load")
        .expect("start the load");
    assert!(
        load.progressed(0, 20),
        "the load does not run\n{}",
        mesh.logs()
    );

    // The destination's agent (inbound HBONE), then the source's (outbound capture and its
    // tunnels): each time the next agent takes over beside the old one, the old one drains.
    for (node, reporter) in [("node2", "destination"), ("node1", "source")] {
        let mut old = mesh.roll_agent(node).expect("roll the agent");
        let signalled = Instant::now();
        let (exit, took) = exited(&mut old, signalled);
        assert!(exit.success(), "the old agent of {node} exited with {exit}");
        assert!(
            took < DEADLINE + Duration::from_secs(1),
            "the old agent of {node} took {took:?} to exit"
        );
        // The next agent carries what comes after, alone.
        let before = connections_opened(&mesh, node, reporter);
        assert!(
            load.progressed(load.count(), 20),
            "the load stalled after {node}'s update\n{}",
            mesh.logs()
        );
        let after = connections_opened(&mesh, node, reporter);
        assert!(
            after >= before + 20.0,
            "{node}'s next agent counted {} of 20 connections ({reporter})\n{}",
            after - before,
            mesh.logs()
        );
    }

    let outcomes = load.finish().expect("stop the load");
    let failed: Vec<_> = outcomes.iter().filter(|o| o.status != 200).collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the rolling updates: {failed:?}\n{}",
        failed.len(),
        outcomes.len(),
        mesh.logs()
    );
    assert!(outcomes.len() >= 60, "only {} requests ran", outcomes.len());
}
