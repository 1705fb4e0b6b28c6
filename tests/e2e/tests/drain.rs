//! Graceful shutdown with the real binaries: SIGTERM to the waypoint, then to a node agent,
//! while a long request is in flight through it. Readiness fails at once and the request in
//! flight completes. The waypoint drains as Envoy under pilot-agent does: it keeps accepting for
//! its whole termination period (Istio's `terminationDrainDuration`, 5 s by default), a new
//! connection served and told to close, then exits; the agent drains as ztunnel does: a new
//! connection is refused, its pods stay captured (fail closed) until the next agent serves
//! them, and it exits once its connections finished, within its deadline. And rolling updates
//! under load, in which no request fails: of both agents (the next agent beside the old one,
//! then SIGTERM to the old one), and of a waypoint's two replicas (the next replica ready and
//! known to the agents, then SIGTERM to the old one as its endpoint turns terminating). Needs
//! root.

use std::io::Read as _;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_behind_waypoint};
use weft_e2e::{Mesh, MeshOptions, PodPhase, PodSpec};
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

/// Reviews v1 and v2 behind one waypoint (with `waypoint_env`), reachable from the client, and a
/// request that takes 3 s on its way to v2: the mesh and that request's `curl`.
fn slow_request_through_the_waypoint(waypoint_env: &[(&str, &str)]) -> (Mesh, Child) {
    let mesh = Mesh::start(
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
            waypoint_env: waypoint_env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    // The agents learn the service's waypoint from the controller.
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    assert!(!app_connected(&mesh, "reviews-v2"), "v2 served already");
    let slow = slow_request(&mesh, "client", &format!("http://{VIP}/slow?delay_ms=3000"));
    assert!(
        mesh.eventually(Duration::from_secs(10), || app_connected(
            &mesh,
            "reviews-v2"
        )),
        "the slow request never reached v2\n{}",
        mesh.logs()
    );
    (mesh, slow)
}

#[test]
fn sigterm_drains_the_waypoint_finishing_requests_in_flight() {
    // A request that takes 3 s, on its way to v2 when the waypoint is told to stop.
    let (mut mesh, mut slow) = slow_request_through_the_waypoint(&[]);

    let waypoint = mesh.testbed.pod(WAYPOINT).ip;
    let mut process = mesh
        .signal_waypoint(WAYPOINT)
        .expect("SIGTERM the waypoint");
    let signalled = Instant::now();

    // Unready at once, while the request is in flight still.
    assert!(
        mesh.eventually(Duration::from_secs(2), || mesh
            .node_curl("node2", &format!("http://{waypoint}:15021/healthz/ready"))
            .is_ok_and(|(code, _)| code == 503)),
        "the draining waypoint still reports ready"
    );
    // A new connection (the agent's endpoint has not changed: nothing told it) is accepted,
    // served, and told to close.
    let fresh = mesh.curl_with("client", &["-D", "-", &format!("http://{VIP}/fresh")]);
    assert_eq!(fresh.status, 200, "{}\n{}", fresh.body, mesh.logs());
    let head = fresh.body.to_ascii_lowercase();
    assert!(
        head.contains("connection: close"),
        "a new connection during the drain is not told to close: {}",
        fresh.body
    );
    assert!(
        slow.try_wait().expect("the slow request").is_none(),
        "the slow request ended before the drain could be observed ({:?} after SIGTERM)",
        signalled.elapsed()
    );

    // The request in flight completes through the draining waypoint.
    let output = finish(slow);
    assert!(output.ends_with("\n200"), "{output}");
    assert!(
        output.contains("v2"),
        "answered by another version: {output}"
    );

    // Then the waypoint exits on its own when its termination period ran out.
    let (exit, took) = exited(&mut process, signalled);
    assert!(exit.success(), "the waypoint exited with {exit}");
    assert!(
        (DEADLINE..DEADLINE + Duration::from_secs(1)).contains(&took),
        "the waypoint took {took:?} to exit"
    );
}

/// Under pilot-agent's `EXIT_ON_ZERO_ACTIVE_CONNECTIONS` the waypoint exits once its last
/// connection has finished (after `MINIMUM_DRAIN_DURATION`), long before its deadline.
#[test]
fn exit_on_zero_active_connections_ends_the_drain_with_the_last_connection() {
    let (mut mesh, slow) = slow_request_through_the_waypoint(&[
        ("EXIT_ON_ZERO_ACTIVE_CONNECTIONS", "true"),
        ("MINIMUM_DRAIN_DURATION", "1s"),
        ("CONNECTION_TERMINATION_DEADLINE", "60s"),
    ]);
    let mut process = mesh
        .signal_waypoint(WAYPOINT)
        .expect("SIGTERM the waypoint");
    let signalled = Instant::now();

    // The waypoint waits for the request in flight, then exits with its connection.
    let output = finish(slow);
    let answered = signalled.elapsed();
    assert!(output.ends_with("\n200"), "{output}");
    let (exit, took) = exited(&mut process, signalled);
    assert!(exit.success(), "the waypoint exited with {exit}");
    assert!(
        took >= answered && took < answered + Duration::from_secs(3),
        "the waypoint exited {took:?} after SIGTERM, its last request answered after {answered:?}"
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

/// The waypoint's replicas in its rolling update: each that runs at start, and the one that
/// replaces it, in order.
const ROLL: [(&str, &str); 2] = [("waypoint-a", "waypoint-c"), ("waypoint-b", "waypoint-d")];

/// Requests the waypoint replica `name` served (counted whatever their outcome).
fn served(mesh: &Mesh, name: &str) -> f64 {
    Exposition::parse(&mesh.waypoint_metrics(name)).sum("istio_requests_total", &[])
}

/// Requests the replicas `names` served together.
fn served_by(mesh: &Mesh, names: &[&str]) -> f64 {
    names.iter().map(|name| served(mesh, name)).sum()
}

/// Requests per keep-alive connection in the rolling-update load.
const KEEP_ALIVE_ROUND: usize = 10;

#[test]
fn a_rolling_update_of_a_waypoint_under_load_fails_no_request() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node2", "shop", "reviews", "v1"),
            PodSpec::waypoint_replica("waypoint-a", WAYPOINT, "node2", "shop"),
            PodSpec::waypoint_replica("waypoint-b", WAYPOINT, "node1", "shop"),
            PodSpec::waypoint_replica("waypoint-c", WAYPOINT, "node2", "shop").not_created(),
            PodSpec::waypoint_replica("waypoint-d", WAYPOINT, "node1", "shop").not_created(),
        ],
        MeshOptions {
            config: reviews_behind_waypoint(false, &["v1"]),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let url = format!("http://{VIP}/");
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh
            .curl_with("client", &["--max-time", "3", &url])
            .status
            == 200),
        "the service is not reachable through the waypoint\n{}",
        mesh.logs()
    );

    // A new connection per request, and keep-alive connections of 10 requests each, for as
    // long as the test runs: bounded by 3 minutes, and by counts no quiet machine reaches in
    // that time (a request takes about 3 ms; the two updates take 15 s and more).
    let fresh = mesh
        .repeat_in_pod(
            "client",
            "fresh",
            &format!(
                "curl -s -o /dev/null --max-time 5 -w '%{{http_code}} %{{time_total}}\\n' {url}"
            ),
            60_000,
            180,
        )
        .expect("start the load on new connections");
    let keep_alive_round = format!(
        "curl -s --max-time 10 -w '%{{http_code}} %{{time_total}}\\n' {}",
        vec![format!("-o /dev/null {url}"); KEEP_ALIVE_ROUND].join(" ")
    );
    let keep_alive = mesh
        .repeat_in_pod("client", "keep-alive", &keep_alive_round, 6_000, 180)
        .expect("start the load on keep-alive connections");
    assert!(
        fresh.progressed(0, 20) && keep_alive.progressed(0, 20),
        "the load does not run\n{}",
        mesh.logs()
    );
    let finished = || fresh.count() + keep_alive.count();

    let mut running = vec![ROLL[0].0, ROLL[1].0];
    for (old, next) in ROLL {
        // The old replica carries its share of the load until its update.
        assert!(
            mesh.eventually(Duration::from_secs(10), || served(&mesh, old) > 0.0),
            "{old} served nothing before its update\n{}",
            mesh.logs()
        );
        let mut process = mesh.roll_waypoint(old, next).expect("roll the waypoint");
        let signalled = Instant::now();
        let (exit, took) = exited(&mut process, signalled);
        assert!(exit.success(), "{old} exited with {exit}");
        assert!(
            took < DEADLINE + Duration::from_secs(1),
            "{old} took {took:?} to exit"
        );
        mesh.set_pod_phase(old, PodPhase::Absent)
            .expect("delete the old replica's pod");
        running.retain(|name| *name != old);
        running.push(next);

        // Whatever finishes after its exit was served by the replicas that run. Between the
        // two readings, a request may be served but not yet written down: one on new
        // connections, and a whole keep-alive round, whose lines curl writes to its file
        // (block-buffered) when it exits.
        let in_flight = (1 + KEEP_ALIVE_ROUND) as f64;
        let served_before = served_by(&mesh, &running);
        let finished_before = finished();
        assert!(
            fresh.progressed(fresh.count(), 20) && keep_alive.progressed(keep_alive.count(), 20),
            "the load stalled after {old}'s update\n{}",
            mesh.logs()
        );
        let finished_after = finished();
        let served_after = served_by(&mesh, &running);
        assert!(
            served_after - served_before + in_flight >= (finished_after - finished_before) as f64,
            "{} requests finished after {old} exited, {} served by {running:?}",
            finished_after - finished_before,
            served_after - served_before
        );
    }

    for (name, load) in [("new connections", fresh), ("keep-alive", keep_alive)] {
        let outcomes = load.finish().expect("stop the load");
        let failed: Vec<_> = outcomes.iter().filter(|o| o.status != 200).collect();
        assert!(
            failed.is_empty(),
            "{} of {} requests on {name} failed across the rolling update: {failed:?}\n{}",
            failed.len(),
            outcomes.len(),
            mesh.logs()
        );
        assert!(
            outcomes.len() >= 60,
            "only {} requests on {name} ran",
            outcomes.len()
        );
    }
}
