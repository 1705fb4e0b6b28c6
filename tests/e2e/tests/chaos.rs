//! Faults under load with the real binaries: while a request loop runs from a client pod
//! through the agents and a waypoint, the controller is killed (SIGKILL: the proxies keep
//! serving their last configuration, then resync with the next controller and take the changes
//! made after it started), the waypoint is killed (requests through it fail at once, none hangs
//! and none bypasses it, until it is back), and an upstream stops answering and reading in the
//! middle of a large upload (the route's timeout answers 504; the client is held back, neither
//! the waypoint nor the agent buffers what it pushes). An agent killed under traffic (fail closed, then
//! recovery) is `resilience.rs`'s. Needs root.

use std::time::Duration;

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_behind_waypoint};
use weft_e2e::load::{Load, Outcome};
use weft_e2e::{Mesh, MeshOptions, PodSpec};

const WAYPOINT: &str = "waypoint";
/// How long a request through a dead waypoint may take to fail: a refused connection, not a
/// timeout.
const FAIL_FAST: f64 = 1.0;

/// The VirtualService: `/stuck` has a one-second timeout, everything goes to `subset`.
fn routes(subset: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{uri: {{prefix: /stuck}}}}]
    timeout: 1s
    route: [{{destination: {{host: reviews.shop.svc.cluster.local, subset: {subset}}}}}]
  - route: [{{destination: {{host: reviews.shop.svc.cluster.local, subset: {subset}}}}}]
"#
    )
}

/// Client and v1 on node1, v2 and the waypoint on node2; every request to the service passes
/// the client's agent, the waypoint and the destination's agent.
fn start() -> Mesh {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: reviews_behind_waypoint(false, &["v1", "v2"]),
            config_files: vec![("20-reviews-vs.yaml".to_owned(), routes("v1"))],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    assert!(
        mesh.eventually(Duration::from_secs(10), || answered_by(&mesh) == "v1"),
        "the service is not reachable through the waypoint\n{}",
        mesh.logs()
    );
    mesh
}

/// The version of the app that answers a request to the service ("" when none does).
fn answered_by(mesh: &Mesh) -> String {
    let result = mesh.curl_with("client", &["--max-time", "3", &format!("http://{VIP}/")]);
    result.json()["version"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The load every test runs under: one request after another to the service, each on its own
/// connection, each bounded by 5 s.
fn load(mesh: &Mesh) -> Load {
    let load = mesh
        .steady_load("client", &format!("http://{VIP}/"), 5, "load")
        .expect("start the load");
    assert!(
        load.answered(0, 20, 200),
        "the load does not run\n{}",
        mesh.logs()
    );
    load
}

fn failures(outcomes: &[Outcome]) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.status != 200).collect()
}

fn xds_connected(mesh: &Mesh, node: &str) -> bool {
    mesh.config_dump(node)["xds"]["connected"] == true
}

#[test]
fn a_killed_controller_fails_no_request_and_the_next_one_pushes_new_changes() {
    let mut mesh = start();
    let load = load(&mesh);

    mesh.kill_controller();
    assert!(
        mesh.eventually(Duration::from_secs(10), || !xds_connected(&mesh, "node1")
            && !xds_connected(&mesh, "node2")),
        "the agents did not notice the controller's death\n{}",
        mesh.logs()
    );
    // Without a controller, the proxies serve what they have.
    assert!(
        load.answered(load.count(), 20, 200),
        "requests failed without the controller\n{}",
        mesh.logs()
    );

    mesh.start_controller().expect("restart the controller");
    assert!(
        mesh.eventually(Duration::from_secs(30), || xds_connected(&mesh, "node1")
            && xds_connected(&mesh, "node2")),
        "the agents did not reconnect\n{}",
        mesh.logs()
    );
    // Changes made after the restart reach every proxy: the waypoint's routes...
    mesh.write_waypoint_config(WAYPOINT, "20-reviews-vs.yaml", &routes("v2"))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        mesh.eventually(Duration::from_secs(10), || answered_by(&mesh) == "v2"),
        "the route change after the restart does not apply\n{}",
        mesh.logs()
    );
    // ... and the agents' policies (STRICT: what the agents enforce from a PeerAuthentication).
    mesh.write_config(
        "30-peer-authentication.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: after-restart, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .expect("write the policy");
    mesh.await_agents("the policy written after the restart", |state| {
        state["policies"].as_array().is_some_and(|policies| {
            policies.iter().any(|p| {
                p["name"]
                    .as_str()
                    .is_some_and(|n| n.contains("after-restart"))
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    assert!(load.answered(load.count(), 20, 200), "{}", mesh.logs());
    let outcomes = load.finish().expect("stop the load");
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed across the controller's death and restart: {failed:?}\n{}",
        failed.len(),
        outcomes.len(),
        mesh.logs()
    );
}

#[test]
fn a_killed_waypoint_fails_requests_fast_without_bypass_and_serves_again_when_back() {
    let mut mesh = start();
    let load = load(&mesh);

    let killed_at = load.count();
    mesh.kill_waypoint(WAYPOINT);
    // Requests go on being answered, each at once: refused, never sent around the waypoint
    // (that would be a 200), never left hanging.
    assert!(
        load.progressed(killed_at, 20),
        "requests hang while the waypoint is dead\n{}",
        mesh.logs()
    );
    let while_dead = mesh.curl_with("client", &["--max-time", "5", &format!("http://{VIP}/")]);
    assert_eq!(
        while_dead.status, 0,
        "a request passed without the waypoint: {}",
        while_dead.body
    );
    assert!(
        while_dead.seconds < FAIL_FAST,
        "a request to the dead waypoint took {} s to fail",
        while_dead.seconds
    );

    mesh.start_waypoint(WAYPOINT).expect("restart the waypoint");
    assert!(
        load.answered(load.count(), 20, 200),
        "requests do not succeed once the waypoint is back\n{}",
        mesh.logs()
    );

    let outcomes = load.finish().expect("stop the load");
    let failed = failures(&outcomes);
    assert!(
        failed.len() >= 10,
        "only {} requests failed while the waypoint was dead: {failed:?}",
        failed.len()
    );
    for failure in failed {
        assert!(
            failure.status == 0 && failure.seconds < FAIL_FAST,
            "a request failed otherwise than by a refused connection, at once: {failure:?}\n{}",
            mesh.logs()
        );
    }
}

/// The peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .expect("VmHWM")
        * 1024
}

/// What a client tries to upload to a stuck upstream and how long it tries.
const UPLOAD_BYTES: u64 = 256 << 20;
const UPLOAD_SECONDS: u64 = 5;
/// The waypoint streams a body upstream as it arrives and keeps at most 1 MiB of it for retries
/// and mirrors: what the client may push, and what a proxy's peak memory may grow by, is that and
/// the sockets' buffers and HTTP/2 windows on the way, bounded far below the upload.
const HELD: u64 = 48 << 20;

#[test]
fn a_stuck_upstream_times_out_and_holds_back_an_upload_without_buffering_it() {
    let mesh = start();
    let load = load(&mesh);

    // The app answers /stuck after 30 s: the route's timeout answers first.
    let stuck = mesh.curl_with(
        "client",
        &[
            "--max-time",
            "10",
            &format!("http://{VIP}/stuck?delay_ms=30000"),
        ],
    );
    assert_eq!(stuck.status, 504, "{}\n{}", stuck.body, mesh.logs());
    assert!(
        (1.0..3.0).contains(&stuck.seconds),
        "the route's 1 s timeout answered after {} s",
        stuck.seconds
    );

    // The app neither reads the body nor answers: the client streams up to 256 MiB for 5 s.
    // The route's timeout starts once the request has ended (Envoy's), which it never does here:
    // the client gives up, and what it pushed was held back on the way.
    let waypoint = mesh.waypoint_pid(WAYPOINT).expect("the waypoint runs");
    let agent = mesh.agent_pid("node1").expect("the client's agent runs");
    let (waypoint_before, agent_before) = (peak_rss(waypoint), peak_rss(agent));
    let upload = format!(
        "head -c {UPLOAD_BYTES} /dev/zero | curl -s -o /dev/null -H 'Expect:' -T - \
         --max-time {UPLOAD_SECONDS} -w '%{{http_code}} %{{time_total}} %{{size_upload}}' \
         'http://{VIP}/stuck?delay_ms=30000'"
    );
    let output = mesh
        .testbed
        .pod_command("client", "bash")
        .args(["-c", &upload])
        .output()
        .expect("run the upload");
    let report = String::from_utf8_lossy(&output.stdout).into_owned();
    let fields: Vec<f64> = report
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [status, seconds, uploaded] = fields[..] else {
        panic!("the upload's report: {report:?}");
    };
    let waypoint_grew = peak_rss(waypoint).saturating_sub(waypoint_before);
    let agent_grew = peak_rss(agent).saturating_sub(agent_before);
    eprintln!(
        "upload to a stuck upstream: status {status}, {seconds} s, {uploaded} bytes sent; peak \
         RSS grew by {} KiB (waypoint), {} KiB (client's agent)",
        waypoint_grew >> 10,
        agent_grew >> 10
    );
    assert_eq!(status, 0.0, "the upload to a stuck upstream got {status}");
    assert!(
        seconds < UPLOAD_SECONDS as f64 + 1.0,
        "the upload hung for {seconds} s"
    );
    assert!(
        (uploaded as u64) < HELD,
        "the client pushed {uploaded} bytes towards an upstream that reads nothing"
    );
    assert!(
        waypoint_grew < HELD && agent_grew < HELD,
        "a proxy buffered the upload: peak RSS grew by {waypoint_grew} bytes (waypoint), \
         {agent_grew} bytes (agent)"
    );

    // The other requests went on meanwhile.
    assert!(load.answered(load.count(), 10, 200), "{}", mesh.logs());
    let outcomes = load.finish().expect("stop the load");
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed beside the stuck upstream: {failed:?}",
        failed.len(),
        outcomes.len()
    );
}
