//! The waypoint end to end, with the real binaries: a client pod's connections are caught by its
//! node agent, carried over HBONE to the waypoint pod (its own identity from the controller's CA,
//! its configuration compiled by the controller from VirtualService, DestinationRule and
//! AuthorizationPolicy and pushed over delta ADS), and from there over HBONE to the sample app's
//! v1, v2 and v3 pods through their agents. Istio's way of declaring it: a Gateway of class
//! `istio-waypoint` and a Service labelled `istio.io/use-waypoint`. Needs root.
//!
//! Each test starts one mesh and walks through related behaviours on it, changing the
//! configuration between steps and waiting until the waypoint applied it.

use std::{collections::BTreeMap, time::Duration};

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, STDOUT_ACCESS_LOG, reviews_service, reviews_subsets};
use weft_e2e::{Mesh, MeshOptions, PodPhase, PodSpec, waypoint_resources};
use weft_test_support::prometheus::Exposition;

mod policy;
mod retries;
mod tcp_and_telemetry;

const WAYPOINT: &str = "waypoint";
const HOST: &str = "reviews.shop.svc.cluster.local";
const VERSIONS: &[&str] = &["v1", "v2", "v3"];

fn virtual_service(http: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews, namespace: shop}}\nspec:\n  hosts: [reviews]\n  http:\n{http}"
    )
}

/// Client and v1 on node1, v2, v3 and the waypoint on node2: every path crosses the fabric.
fn mesh() -> Mesh {
    mesh_with("")
}

/// [`mesh`] with more configuration (YAML documents, each starting with `---`).
fn mesh_with(extra: &str) -> Mesh {
    mesh_with_files(extra, Vec::new())
}

/// [`mesh_with`] and configuration files of their own, which a test may replace or remove.
fn mesh_with_files(extra: &str, config_files: Vec<(String, String)>) -> Mesh {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::app("reviews-v3", "node2", "shop", "reviews", "v3"),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{}---\n{}{extra}",
                reviews_service(true),
                waypoint_resources("shop"),
                reviews_subsets(VERSIONS, "")
            ),
            config_files,
            log_requests: true,
            mesh_config: STDOUT_ACCESS_LOG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    // The agents learn the service's waypoint from the controller; wait until traffic to the
    // service reaches a pod through it.
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    mesh
}

fn apply(mesh: &Mesh, file: &str, yaml: &str) {
    mesh.write_waypoint_config(WAYPOINT, file, yaml)
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// `status version` of `count` answers to `path` of the Service.
fn versions(mesh: &Mesh, path: &str, count: u32, args: &[&str]) -> BTreeMap<String, u32> {
    mesh.versions(&format!("http://{VIP}{path}"), count, args)
}

fn app_log_mentions(mesh: &Mesh, pod: &str, needle: &str) -> bool {
    mesh.log_of(&format!("app-{pod}")).contains(needle)
}

#[test]
fn routing_splits_faults_retries_timeouts_and_mirrors_through_the_waypoint() {
    let mesh = mesh();
    // The waypoint listens on 0.0.0.0:15008 and names itself to the controller by its pod's
    // own IP, as Istio's proxies do.
    let node_id = format!(
        "waypoint~{}~{WAYPOINT}.shop~shop.svc.cluster.local",
        mesh.pod(WAYPOINT).ip
    );
    assert!(
        mesh.log_of("controller").contains(&node_id),
        "the controller never saw {node_id}\n{}",
        mesh.log_of("controller")
    );
    // It did pass the waypoint: the waypoint counted it, with Istio's labels.
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains(&format!("destination_service=\"{HOST}\""))),
        "the waypoint counted no request:\n{metrics}"
    );

    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &virtual_service(
            r#"
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: abort
    match: [{headers: {x-case: {exact: abort}}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: delay
    match: [{headers: {x-case: {exact: delay}}}]
    fault: {delay: {fixedDelay: 500ms, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: timeout
    match: [{headers: {x-case: {exact: timeout}}}]
    timeout: 200ms
    retries: {attempts: 0}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: no-retry
    match: [{headers: {x-case: {exact: no-retry}}}]
    retries: {attempts: 0}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: undefined-subset
    match: [{headers: {x-case: {exact: v9}}}]
    route: [{destination: {host: reviews, subset: v9}}]
  - name: mirror
    match: [{headers: {x-case: {exact: mirror}}}]
    route: [{destination: {host: reviews, subset: v1}}]
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 100}
  - name: default
    route: [{destination: {host: reviews, subset: v1}}]
    retries: {attempts: 3, perTryTimeout: 2s, retryOn: 5xx}
"#,
        ),
    );

    // Header routing: jason goes to v2, everyone else to v1.
    let jason = versions(&mesh, "/header", 20, &["-H", "end-user: jason"]);
    assert_eq!(jason, BTreeMap::from([("200 v2".to_string(), 20)]));
    let others = versions(&mesh, "/header", 20, &["-H", "end-user: someone"]);
    assert_eq!(others, BTreeMap::from([("200 v1".to_string(), 20)]));

    // A subset no DestinationRule defines: the VirtualService stands (the routes above and
    // below work) and only what is routed there gets 503 with Envoy's NC (no cluster) flag.
    let undefined = versions(&mesh, "/v9-check", 3, &["-H", "x-case: v9"]);
    assert_eq!(undefined, BTreeMap::from([("503 ".to_string(), 3)]));
    for pod in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert!(!app_log_mentions(&mesh, pod, "/v9-check"), "{pod}");
    }
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("response_code=\"503\"")
                && l.contains("response_flags=\"NC\"")
                && l.ends_with(" 3")),
        "no 503 NC counted:\n{metrics}"
    );
    assert!(
        mesh.log_of("controller").contains(
            "subset \"v9\" of reviews.shop.svc.cluster.local is not defined by a DestinationRule"
        ),
        "the controller did not report the undefined subset\n{}",
        mesh.log_of("controller")
    );

    // Abort: the configured status for every request, and none reaches a pod.
    let aborted = versions(&mesh, "/abort-check", 50, &["-H", "x-case: abort"]);
    assert_eq!(aborted, BTreeMap::from([("418 ".to_string(), 50)]));
    for pod in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert!(!app_log_mentions(&mesh, pod, "/abort-check"), "{pod}");
    }

    // Delay: at least 500 ms more than the same request without it (the fastest of a few, so
    // that one slow request on a busy machine does not hide the delay).
    let plain = (0..3)
        .map(|_| mesh.curl_with("client", &[&format!("http://{VIP}/delay-check")]))
        .inspect(|plain| assert_eq!(plain.status, 200))
        .min_by(|a, b| a.seconds.total_cmp(&b.seconds))
        .unwrap();
    for _ in 0..3 {
        let delayed = mesh.curl_with(
            "client",
            &["-H", "x-case: delay", &format!("http://{VIP}/delay-check")],
        );
        assert_eq!(delayed.status, 200, "{}", delayed.body);
        assert!(
            delayed.seconds >= 0.5 && delayed.seconds < 2.0,
            "delayed request took {} s",
            delayed.seconds
        );
        assert!(
            delayed.seconds >= plain.seconds + 0.45,
            "{delayed:?} vs {plain:?}"
        );
    }

    // Retries: the app fails the first two attempts of a request id; three retries recover,
    // and the same failure without retries reaches the client.
    let recovered = mesh.curl_with(
        "client",
        &[
            "-H",
            "x-request-id: retry-recovers-1",
            "-H",
            "x-fail-attempts: 2",
            &format!("http://{VIP}/retry"),
        ],
    );
    assert_eq!(recovered.status, 200, "{}", recovered.body);
    assert_eq!(recovered.json()["attempt"], 3, "{}", recovered.body);
    let failed = mesh.curl_with(
        "client",
        &[
            "-H",
            "x-case: no-retry",
            "-H",
            "x-request-id: retry-fails-1",
            "-H",
            "x-fail-attempts: 2",
            &format!("http://{VIP}/retry"),
        ],
    );
    assert_eq!(failed.status, 503, "{}", failed.body);

    // Timeout: 504 close to the 200 ms limit while the app takes three seconds.
    let timed_out = mesh.curl_with(
        "client",
        &[
            "-H",
            "x-case: timeout",
            &format!("http://{VIP}/slow?delay_ms=3000"),
        ],
    );
    assert_eq!(timed_out.status, 504, "{}", timed_out.body);
    assert!(
        timed_out.seconds >= 0.2 && timed_out.seconds < 1.0,
        "the timeout answered after {} s",
        timed_out.seconds
    );

    // Mirror: v1 answers, and v3 receives a copy, its Host kept (istiod's
    // DISABLE_SHADOW_HOST_SUFFIX, true by default since 1.28).
    let mirrored = mesh.curl_with(
        "client",
        &[
            "-H",
            "x-case: mirror",
            &format!("http://{VIP}/mirror-check-42"),
        ],
    );
    assert_eq!(mirrored.status, 200);
    assert_eq!(mirrored.json()["version"], "v1");
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            mesh.log_of("app-reviews-v3")
                .lines()
                .any(|l| l.contains("/mirror-check-42") && !l.contains("-shadow"))
        }),
        "the mirror target got no copy:\n{}",
        mesh.log_of("app-reviews-v3")
    );
    assert!(!app_log_mentions(&mesh, "reviews-v2", "/mirror-check-42"));

    // An 80/20 split measured over 2,000 requests, within five points.
    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &virtual_service(
            r#"
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 80}
    - {destination: {host: reviews, subset: v2}, weight: 20}
"#,
        ),
    );
    let split = versions(&mesh, "/split", 2000, &[]);
    let v1 = split.get("200 v1").copied().unwrap_or(0);
    let v2 = split.get("200 v2").copied().unwrap_or(0);
    println!("80/20 split over 2000 requests: v1 {v1}, v2 {v2}");
    assert_eq!(v1 + v2, 2000, "{split:?}");
    assert!((1500..=1700).contains(&v1), "v1 {v1} of 2000: {split:?}");

    // Two VirtualServices for the same host: the waypoint applies both, their rules in order
    // (Istio's waypoints merge them), and the service itself takes what neither matches.
    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &virtual_service(
            r#"
  - match: [{uri: {prefix: /route-a}}]
    route: [{destination: {host: reviews, subset: v2}}]
"#,
        ),
    );
    apply(
        &mesh,
        "21-reviews-b.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews-b, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n  - match: [{uri: {prefix: /route-b}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n",
    );
    let a = versions(&mesh, "/route-a", 10, &[]);
    assert_eq!(a, BTreeMap::from([("200 v2".to_string(), 10)]));
    let b = versions(&mesh, "/route-b", 10, &[]);
    assert_eq!(b, BTreeMap::from([("200 v3".to_string(), 10)]));
    let neither = versions(&mesh, "/neither", 30, &[]);
    assert!(neither.len() > 1, "the default route spreads: {neither:?}");
}
