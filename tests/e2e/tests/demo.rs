//! The demo's scenarios on containerd, as `cargo xtask demo --runtime containerd` plays them:
//! bookinfo's pods, the client and the waypoint created through the CRI from the images and
//! enrolled by weft-cni, the node agents as their DaemonSet's pods, the controller in
//! Kubernetes mode, the gateways as pods from the waypoint image with their Secrets in the API
//! server. Every scenario must pass, and nothing the run created may outlive it. The scenarios
//! at the mesh's edge are also played on the testbed (CI plays every scenario there with
//! `cargo xtask demo --no-wait`).
//! Needs root and the images of `cargo xtask images --debug` (`cargo xtask test` builds them).

use std::{
    collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::atomic::AtomicBool, time::Duration,
};

use weft_e2e::{
    WAYPOINT_METRICS_PORT,
    demo::{Demo, EDGE_SCENARIOS, NODES, Runtime, eventually, examples},
    kube_cluster::{CONTROLLER_MONITORING, PIN_BASE},
    observability::{AGENT_JOB, AGENT_METRICS_PORT, CONTROLLER_JOB, WAYPOINT_JOB, http_request},
    scenarios::SCENARIOS,
};

fn bookinfo() -> examples::Examples {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
    examples::load(&dir).expect("the bookinfo examples")
}

#[test]
fn the_demo_plays_the_edge_scenarios_on_the_testbed() {
    let demo = Demo::start(Runtime::Testbed, &bookinfo()).expect("bookinfo starts on the testbed");
    for name in EDGE_SCENARIOS {
        let (played, failed) = demo.play(Some(name), &AtomicBool::new(false));
        assert_eq!(played, 1, "{name}");
        assert!(failed.is_empty(), "{name} failed\n{}", demo.cluster.logs());
    }
    prometheus_sees_the_gateways(&demo);
}

#[test]
fn the_demo_plays_every_scenario_on_containerd_and_leaves_nothing() {
    let examples = bookinfo();
    let demo = Demo::start(Runtime::Containerd, &examples).expect("bookinfo starts on containerd");
    let (played, failed) = demo.play(None, &AtomicBool::new(false));
    assert!(
        failed.is_empty(),
        "scenarios failed: {failed:?}\n{}",
        demo.cluster.logs()
    );
    // Every scenario, the edge's included.
    assert_eq!(played, SCENARIOS.len());
    prometheus_scrapes_every_target_and_the_console_draws_from_it(&demo);

    // What the run created, to check it is gone once the demo is dropped: the pods' network
    // namespaces (made by containerd's CNI chain), the runtime's state, the agents' pins, the
    // run's files.
    let testbed = demo.cluster.testbed();
    let mut left: Vec<PathBuf> = demo
        .cluster
        .places()
        .values()
        .map(|place| PathBuf::from(weft_testbed::NETNS_DIR).join(&place.netns))
        .collect();
    assert!(left.iter().all(|netns| netns.exists()));
    left.extend(["node1", "node2"].map(|node| testbed.runtime_state_dir(node)));
    left.push(testbed.pin_dir(PIN_BASE));
    left.push(demo.cluster.dir().to_path_buf());
    drop(demo);
    let remaining: Vec<&PathBuf> = left.iter().filter(|path| path.exists()).collect();
    assert!(remaining.is_empty(), "left behind: {remaining:?}");
}

/// Prometheus, started by the demo on containerd, scrapes each node agent's DaemonSet pod, the
/// waypoint's and the gateways' pods and the controller (every target `up`, by Prometheus' HTTP API), and the
/// console draws bookinfo's graph from it after the scenarios' traffic.
fn prometheus_scrapes_every_target_and_the_console_draws_from_it(demo: &Demo) {
    let observability = demo
        .observability
        .as_ref()
        .expect("the containerd demo runs Prometheus");
    let target = |job: &str, address: SocketAddr| (job.to_string(), address.to_string());
    let mut expected: BTreeSet<(String, String)> = NODES
        .iter()
        .map(|node| {
            let (_, ip) = demo.cluster.agent(node);
            target(AGENT_JOB, (ip, AGENT_METRICS_PORT).into())
        })
        .collect();
    let waypoint = demo.cluster.pod_ip(&demo.waypoint);
    expected.insert(target(
        WAYPOINT_JOB,
        (waypoint, WAYPOINT_METRICS_PORT).into(),
    ));
    expected.insert(target(CONTROLLER_JOB, CONTROLLER_MONITORING));
    for gateway in demo.cluster.edge().gateways() {
        let ip = demo.cluster.pod_ip(gateway);
        expected.insert(target(WAYPOINT_JOB, (ip, WAYPOINT_METRICS_PORT).into()));
    }
    let mut up = BTreeSet::new();
    let all_up = eventually(Duration::from_secs(30), || {
        up = observability.targets_up().unwrap_or_default();
        up == expected
    });
    assert!(
        all_up,
        "Prometheus has up {up:?}, expected {expected:?}\n{}",
        demo.cluster.logs()
    );

    let path = format!("/api/graph?namespace={}", demo.namespace);
    let (status, body) = http_request(observability.console(), "GET", &path, None).expect(&path);
    assert_eq!(status, 200, "{path}: {body}");
    let graph: serde_json::Value = serde_json::from_str(&body).expect("the graph as JSON");
    assert!(
        graph["edges"]
            .as_array()
            .is_some_and(|edges| !edges.is_empty()),
        "the console draws no edge of {} from Prometheus: {graph:#}",
        demo.namespace
    );
    prometheus_sees_the_gateways(demo);
}

/// The gateway's workload, as the ingress gateway reports itself the source of what it sends
/// into the mesh (the Deployment `istio-ingressgateway` of `70-gateway.yaml`).
const INGRESS_WORKLOAD: &str = "istio-ingressgateway";

/// Prometheus' targets (`/api/v1/targets`) show both gateways' metrics endpoints scraped and
/// up (in the job of the waypoint binary, as the chart's Prometheus configuration has them), and after the `ingress` scenario's pages Prometheus holds the ingress gateway's
/// `istio_requests_total` reported as the source, as Istio's gateways report it.
fn prometheus_sees_the_gateways(demo: &Demo) {
    let observability = demo
        .observability
        .as_ref()
        .expect("the demo runs Prometheus");
    let expected: BTreeSet<String> = demo
        .cluster
        .edge()
        .gateways()
        .iter()
        .map(|pod| SocketAddr::from((demo.cluster.pod_ip(pod), WAYPOINT_METRICS_PORT)).to_string())
        .collect();
    let mut targets = serde_json::Value::Null;
    let proxies_up = |targets: &serde_json::Value| -> BTreeSet<String> {
        targets["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["labels"]["job"] == WAYPOINT_JOB && t["health"] == "up")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect()
    };
    let up = eventually(Duration::from_secs(30), || {
        targets = observability.api("/api/v1/targets").unwrap_or_default();
        expected.is_subset(&proxies_up(&targets))
    });
    assert!(
        up,
        "Prometheus' targets lack the gateways {expected:?} up: {targets:#}\n{}",
        demo.cluster.logs()
    );
    let query = format!(
        "sum(istio_requests_total{{reporter=\"source\", source_workload=\"{INGRESS_WORKLOAD}\", destination_service_name=\"productpage\"}})"
    );
    let mut series = Vec::new();
    let seen = eventually(Duration::from_secs(30), || {
        series = observability.query(&query).unwrap_or_default();
        series
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|v| v > 0.0)
    });
    assert!(
        seen,
        "Prometheus has no series for {query}: {series:?}\nthe ingress gateway's metrics:\n{}",
        demo.proxy_metrics(&demo.cluster.edge().ingress)
    );
}
