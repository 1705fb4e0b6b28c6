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

/// A route to the whole service retrying a 503 once, with these more `retries` fields.
/// The slow-start weight (percent) the waypoint's admin page shows for `pod`'s endpoint of the
/// service's cluster; `None` while it is not an endpoint there.
fn slow_start_weight(mesh: &Mesh, pod: &str) -> Option<f64> {
    let address = format!("{}:8080", mesh.pod(pod).ip);
    let dump = mesh.waypoint_config_dump(WAYPOINT).ok()?;
    let cluster = dump["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == format!("outbound|80||{HOST}"))?;
    cluster["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == address)?["slow_start_weight_percent"]
        .as_f64()
}

#[test]
fn a_pod_that_joins_takes_a_small_share_while_it_warms_up() {
    let mut mesh = mesh();
    // DestinationRule `warmup` (Istio's `setWarmup`, its 10% minimum): a 20 s window with an
    // aggression of 0.1, so that a newcomer's weight, `(t / 20 s)^10`, stays at the minimum for
    // its first 15.8 s.
    apply(
        &mesh,
        "10-dr.yaml",
        &reviews_subsets(
            VERSIONS,
            "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN, warmup: {duration: 20s, aggression: 0.1}}",
        ),
    );
    // The pods there from the start warm up together; wait (bounded) until the admin page
    // shows every one warm.
    assert!(
        mesh.eventually(Duration::from_secs(60), || VERSIONS.iter().all(|v| {
            slow_start_weight(&mesh, &format!("reviews-{v}")) == Some(100.0)
        })),
        "the endpoints never warmed up: {:?}",
        mesh.waypoint_config_dump(WAYPOINT)
    );
    // v3's pod goes away and comes back: a new endpoint, at its minimum weight.
    mesh.set_pod_phase("reviews-v3", PodPhase::Absent)
        .expect("delete v3's pod");
    assert!(
        mesh.eventually(Duration::from_secs(15), || slow_start_weight(
            &mesh,
            "reviews-v3"
        )
        .is_none()),
        "v3 never left the cluster"
    );
    mesh.set_pod_phase("reviews-v3", PodPhase::Running)
        .expect("create v3's pod");
    assert!(
        mesh.eventually(Duration::from_secs(10), || slow_start_weight(
            &mesh,
            "reviews-v3"
        ) == Some(10.0)),
        "v3 did not come back at its minimum weight: {:?}",
        slow_start_weight(&mesh, "reviews-v3")
    );
    let requests = 60;
    let served = versions(&mesh, "/warmup", requests, &[]);
    assert_eq!(
        slow_start_weight(&mesh, "reviews-v3"),
        Some(10.0),
        "the requests outlasted v3's time at its minimum weight"
    );
    assert_eq!(served.values().sum::<u32>(), requests, "{served:?}");
    let to_v3 = served.get("200 v3").copied().unwrap_or(0);
    // Weights 1, 1 and 0.1: v3's expected share is 1/21, 2.9 of 60 (a standard deviation of
    // 1.6); round robin without slow start gives it 20.
    assert!(to_v3 <= 10, "v3 served {to_v3} of {requests}: {served:?}");
    assert!(
        served.get("200 v1").is_some_and(|n| *n >= 20)
            && served.get("200 v2").is_some_and(|n| *n >= 20),
        "{served:?}"
    );
}

fn retrying_once(fields: &str) -> String {
    virtual_service(&format!(
        "  - route: [{{destination: {{host: reviews}}}}]\n    retries: {{attempts: 1, retryOn: '503', {fields}}}\n"
    ))
}

/// The VirtualService's `retries` fields that choose where and when a retry goes: with
/// `retryIgnorePreviousHosts` (Istio's default) a retry goes to another pod than the one that
/// failed, without it the retry may meet the same pod again; `backoff` spaces the retries.
#[test]
fn retries_go_where_and_when_the_route_says() {
    let mesh = mesh();
    apply(
        &mesh,
        "10-dr.yaml",
        &reviews_subsets(
            VERSIONS,
            "  trafficPolicy:\n    loadBalancer: {simple: RANDOM}",
        ),
    );
    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &retrying_once("retryIgnorePreviousHosts: true"),
    );
    // v1 answers 503 to everything; told by pod IP, through the waypoint to exactly that pod.
    let v1 = mesh.pod("reviews-v1").ip;
    let failing = mesh.curl_with(
        "client",
        &[
            "-X",
            "POST",
            &format!("http://{v1}:8080/control/fail?status=503"),
        ],
    );
    assert_eq!(failing.json()["forced_status"], 503, "{}", failing.body);
    let elsewhere = versions(&mesh, "/retry-elsewhere", 60, &[]);
    assert!(
        elsewhere.keys().all(|k| k == "200 v2" || k == "200 v3"),
        "a retry met v1 again: {elsewhere:?}"
    );
    assert_eq!(elsewhere.values().sum::<u32>(), 60, "{elsewhere:?}");
    // Allowed back to the pod tried, a request whose two random draws both meet v1 fails: one
    // in nine, and none of 90 has odds of 3 in 100,000.
    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &retrying_once("retryIgnorePreviousHosts: false"),
    );
    let anywhere = versions(&mesh, "/retry-anywhere", 90, &[]);
    assert!(
        anywhere.keys().any(|k| k.starts_with("503")),
        "no retry met v1 again: {anywhere:?}"
    );

    // A `backoff` holds each retry, within the route's timeout: to v1 alone, three retries
    // waiting below 60, 120 and 240 s end in the route's 504 at 300 ms, where Envoy's default
    // 25 ms base would let all four attempts fail with 503 first.
    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &virtual_service(
            r#"
  - route: [{destination: {host: reviews, subset: v1}}]
    timeout: 300ms
    retries: {attempts: 3, retryOn: '503', backoff: 60s}
"#,
        ),
    );
    let held = mesh.curl_with("client", &[&format!("http://{VIP}/backoff")]);
    assert_eq!(held.status, 504, "{}", held.body);
    assert!(
        held.seconds >= 0.3 && held.seconds < 2.0,
        "the timeout answered after {} s",
        held.seconds
    );
}

#[test]
fn l7_deny_outlier_detection_and_metrics_at_the_waypoint() {
    let mesh = mesh();

    // An L7 DENY on a path, attached to the service: the path and its `//` and `%2F` variants
    // are refused with 403, other paths pass, and nothing denied reaches a pod.
    apply(
        &mesh,
        "30-deny-admin.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: reviews-deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: reviews}]
  action: DENY
  rules: [{to: [{operation: {paths: [/admin, /admin/*]}}]}]
"#,
    );
    for path in [
        "/admin",
        "//admin",
        "/%2Fadmin",
        "/%2fadmin/users",
        "/admin/users",
    ] {
        let answer = mesh.curl_with("client", &["--path-as-is", &format!("http://{VIP}{path}")]);
        assert_eq!(answer.status, 403, "{path}: {}", answer.body);
    }
    for pod in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert!(
            !app_log_mentions(&mesh, pod, "admin"),
            "{pod} saw a denied path"
        );
    }
    assert_eq!(
        mesh.curl_with("client", &[&format!("http://{VIP}/administrators-guide")])
            .status,
        200
    );

    // A pod addressed by its own IP (a headless service, a StatefulSet member, a scrape): its
    // agent accepts only the waypoint, so the request goes through the waypoint, which carries
    // it to exactly that pod, with the service's L7 policies still applied.
    let v3 = mesh.pod("reviews-v3").ip;
    let direct = mesh
        .curl_many(
            "client",
            &format!("http://{v3}:8080/direct"),
            2,
            "%{http_code} %header{x-weft-version}",
            &[],
        )
        .unwrap_or_else(|e| panic!("{e:#}\n{}", mesh.logs()));
    assert_eq!(direct, ["200 v3", "200 v3"], "{}", mesh.logs());
    for pod in ["reviews-v1", "reviews-v2"] {
        assert!(
            !app_log_mentions(&mesh, pod, "/direct"),
            "{pod} got a request addressed to reviews-v3"
        );
    }
    let direct_admin = mesh.curl_with("client", &[&format!("http://{v3}:8080/admin")]);
    assert_eq!(direct_admin.status, 403, "{}", direct_admin.body);
    let waypoint_log = mesh.log_of(&format!("waypoint-{WAYPOINT}"));
    let carried = waypoint_log
        .lines()
        .filter(|l| {
            l.contains("GET /direct")
                && l.contains(&format!("\"{v3}:8080\" inbound-pod|8080||{v3}"))
        })
        .count();
    assert_eq!(carried, 2, "the waypoint did not log both:\n{waypoint_log}");

    // Outlier detection: v1 starts failing every request; after two 5xx in a row it is ejected
    // (for 5 s) and v2/v3 serve everything; once it recovers it is back after the ejection time.
    apply(
        &mesh,
        "10-dr.yaml",
        &reviews_subsets(
            VERSIONS,
            "  trafficPolicy:\n    loadBalancer: {simple: ROUND_ROBIN}\n    outlierDetection: {consecutive5xxErrors: 2, interval: 100ms, baseEjectionTime: 5s, maxEjectionPercent: 50}",
        ),
    );
    apply(
        &mesh,
        "20-reviews-vs.yaml",
        &virtual_service(
            "  - route: [{destination: {host: reviews}}]\n    retries: {attempts: 0}\n",
        ),
    );
    // Told by pod IP from the client: through the waypoint, to exactly that pod.
    let v1 = mesh.pod("reviews-v1").ip;
    let control = |action: &str| {
        mesh.curl_with(
            "client",
            &["-X", "POST", &format!("http://{v1}:8080/control/{action}")],
        )
    };
    let failing = control("fail?status=500");
    assert_eq!(failing.json()["forced_status"], 500, "{}", failing.body);
    let mut failures = 0;
    for _ in 0..30 {
        if mesh
            .curl_with("client", &[&format!("http://{VIP}/outlier")])
            .status
            == 500
        {
            failures += 1;
            if failures == 2 {
                break;
            }
        }
    }
    assert_eq!(failures, 2, "v1's failures never showed");
    assert!(
        mesh.log_of(&format!("waypoint-{WAYPOINT}"))
            .contains("endpoint ejected"),
        "no ejection logged\n{}",
        mesh.log_of(&format!("waypoint-{WAYPOINT}"))
    );
    let while_ejected = versions(&mesh, "/outlier", 30, &[]);
    assert!(
        while_ejected.keys().all(|k| k == "200 v2" || k == "200 v3"),
        "v1 served while ejected: {while_ejected:?}"
    );
    let recovered = control("recover");
    assert_eq!(recovered.json()["forced_status"], 0, "{}", recovered.body);
    assert!(
        mesh.eventually(Duration::from_secs(15), || versions(
            &mesh,
            "/outlier",
            6,
            &[]
        )
        .contains_key("200 v1")),
        "v1 never came back after recovering"
    );

    // The waypoint's admin page, on its pod's loopback only: the configuration in force with
    // v1's ejection on record, the policy, its certificate and the xDS stream.
    let dump = mesh
        .waypoint_config_dump(WAYPOINT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let cluster = dump["clusters"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["name"] == format!("outbound|80||{HOST}"))
        })
        .unwrap_or_else(|| panic!("no default cluster in {dump:#}"));
    let v1_endpoint = cluster["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["address"] == format!("{v1}:8080")))
        .unwrap_or_else(|| panic!("no v1 endpoint in {cluster:#}"));
    assert!(
        v1_endpoint["outlier"]["ejections"].as_u64() >= Some(1),
        "{v1_endpoint:#}"
    );
    assert!(
        dump["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "reviews-deny-admin")),
        "{dump:#}"
    );
    assert_eq!(
        dump["certificate"]["identity"],
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    );
    assert_eq!(dump["xds"]["connected"], true, "{:#}", dump["xds"]);
    assert_eq!(dump["xds"]["last_applied"]["resource"], "shop/waypoint");
    let waypoint_pod = mesh.pod(WAYPOINT);
    let (status, _) = mesh
        .node_curl(
            &waypoint_pod.node,
            &format!("http://{}:15000/config_dump", waypoint_pod.ip),
        )
        .expect("run curl");
    assert_eq!(status, 0, "the admin port answered from outside the pod");

    // Every request above is in the waypoint's Istio metrics, with the labels Kiali reads.
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    let samples = Exposition::parse(&metrics);
    // The client's requests to the service (those it sent to pod addresses carry no service).
    let find = |code: &str| {
        samples
            .find(
                "istio_requests_total",
                &[
                    ("response_code", code),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/shop/sa/client",
                    ),
                    ("destination_service", HOST),
                ],
            )
            .unwrap_or_else(|| panic!("no istio_requests_total for {code} to {HOST}:\n{metrics}"))
            .clone()
    };
    let denied = find("403").line;
    for label in [
        "reporter=\"waypoint\"",
        "source_workload=\"client\"",
        "source_workload_namespace=\"shop\"",
        "destination_service_name=\"reviews\"",
        "destination_service_namespace=\"shop\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(denied.contains(label), "{label} missing in {denied}");
    }
    let served = find("200");
    let (served, count) = (served.line, served.value);
    for label in [
        "destination_principal=\"spiffe://cluster.local/ns/shop/sa/reviews\"",
        "destination_canonical_service=\"reviews\"",
        "request_protocol=\"http\"",
    ] {
        assert!(served.contains(label), "{label} missing in {served}");
    }
    // The workload is the pod's Deployment (`reviews-vN`, as Istio names it), not its `app`.
    assert!(
        ["reviews-v1", "reviews-v2", "reviews-v3"]
            .iter()
            .any(|w| served.contains(&format!("destination_workload=\"{w}\""))),
        "destination_workload is not a reviews Deployment in {served}"
    );
    assert!(count >= 1.0, "{served}");
    assert!(
        metrics.contains("istio_request_duration_milliseconds_bucket{"),
        "{metrics}"
    );
}

#[test]
fn real_clients_and_abuse_through_the_waypoint() {
    let mesh = mesh();
    let url = format!("http://{VIP}/");

    // curl, HTTP/1.1 and HTTP/2 with prior knowledge.
    let h1 = mesh.curl_with("client", &["--http1.1", &url]);
    assert_eq!(h1.status, 200, "{}", h1.body);
    let h2 = mesh.curl_with("client", &["--http2-prior-knowledge", &url]);
    assert_eq!(h2.status, 200, "{}", h2.body);

    // h2load: 400 requests over 4 HTTP/2 connections, 10 streams each at a time.
    let output = mesh
        .testbed
        .pod_command("client", "h2load")
        .args(["-n", "400", "-c", "4", "-m", "10", &url])
        .output()
        .expect("run h2load");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains("400 succeeded, 0 failed, 0 errored") && text.contains("400 2xx"),
        "h2load:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // gRPC (tonic) on one channel: every call answered, and balanced per request across pods,
    // which only an L7 proxy does for one HTTP/2 connection.
    let grpc = mesh.mesh_client(
        "client",
        &[
            "grpc",
            "--target",
            &format!("http://{VIP}:9090"),
            "--count",
            "30",
        ],
    );
    assert_eq!(grpc["errors"], serde_json::json!([]), "{grpc}");
    let replies = grpc["replies"].as_array().unwrap();
    assert_eq!(replies.len(), 30);
    assert!(replies.iter().all(|r| r["echoed"] == true), "{grpc}");
    let pods: std::collections::BTreeSet<_> =
        replies.iter().filter_map(|r| r["pod"].as_str()).collect();
    println!("30 gRPC calls on one channel answered by {pods:?}");
    assert!(pods.len() >= 2, "all gRPC calls went to {pods:?}");

    // WebSocket echo through the upgrade.
    let websocket = mesh.mesh_client(
        "client",
        &[
            "websocket",
            "--url",
            &format!("ws://{VIP}/ws"),
            "--count",
            "20",
        ],
    );
    assert_eq!(websocket["status"], 101, "{websocket}");
    assert_eq!(websocket["echoed"], 20, "{websocket}");

    // Request smuggling (Content-Length and Transfer-Encoding together): refused with 400, and
    // neither the front request nor the hidden one reaches a pod.
    let smuggle = mesh.mesh_client(
        "client",
        &[
            "smuggle",
            "--target",
            &format!("{VIP}:80"),
            "--host",
            "reviews",
        ],
    );
    assert_eq!(smuggle["statuses"], serde_json::json!(["400"]), "{smuggle}");
    // Every pod then answers a request sent through the waypoint after the attempt: anything
    // the waypoint had forwarded from that connection reached its pod before it.
    assert!(
        mesh.eventually(Duration::from_secs(10), || {
            mesh.curl("client", &format!("http://{VIP}/after-smuggle"));
            ["reviews-v1", "reviews-v2", "reviews-v3"]
                .iter()
                .all(|pod| app_log_mentions(&mesh, pod, "/after-smuggle"))
        }),
        "requests after the smuggling attempt did not reach every pod\n{}",
        mesh.logs()
    );
    for pod in ["reviews-v1", "reviews-v2", "reviews-v3"] {
        assert!(!app_log_mentions(&mesh, pod, "/smuggled"), "{pod}");
        assert!(!app_log_mentions(&mesh, pod, "/front"), "{pod}");
    }

    // HTTP/2 rapid reset: the abusive connection is closed with GOAWAY while another connection
    // of the same client keeps being served.
    let reset = mesh.mesh_client(
        "client",
        &[
            "rapid-reset",
            "--target",
            &format!("{VIP}:80"),
            "--authority",
            HOST,
            "--streams",
            "2000",
        ],
    );
    println!("rapid reset through the waypoint: {reset}");
    // The waypoint sends GOAWAY and closes; a client still writing its burst may see the
    // closed socket (EPIPE, or a reset for its unread frames) before it reads the GOAWAY. Either
    // way the server ended the abusive connection; an unprotected server leaves it open.
    assert!(
        reset["burst_connection"].as_str().is_some_and(|s| {
            s.starts_with("GOAWAY") || s.contains("broken pipe") || s.contains("reset")
        }),
        "the burst connection was not closed: {reset}"
    );
    assert!(reset["neighbour_ok"].as_u64().unwrap_or(0) >= 5, "{reset}");
    assert_eq!(reset["neighbour_failed"], 0, "{reset}");
    assert_eq!(mesh.curl_with("client", &[&url]).status, 200);
}

/// A Service with a TCP port (named `tcp-...`, as Istio reads protocols) on the reviews pods,
/// using the waypoint.
const ECHO: &str = r#"
---
apiVersion: v1
kind: Service
metadata:
  name: echo
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  clusterIP: 10.96.0.21
  selector: {app: reviews}
  ports:
  - {name: tcp-echo, port: 7000, targetPort: 7000}
"#;
const ECHO_VIP: &str = "10.96.0.21";
const ECHO_HOST: &str = "echo.shop.svc.cluster.local";

/// One line through the sample app's raw TCP echo at `ip:7000` from the client: what came back
/// (empty when the connection was refused). Bounded by the timeouts.
fn tcp_echo(mesh: &Mesh, ip: &str, message: &str) -> String {
    let output = mesh
        .testbed
        .pod_command("client", "timeout")
        .args([
            "5",
            "bash",
            "-c",
            &format!("exec 3<>/dev/tcp/{ip}/7000 && echo {message} >&3 && timeout 2 head -n1 <&3"),
        ])
        .output()
        .expect("run bash");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn tcp_services_that_use_the_waypoint_are_forwarded_at_l4() {
    let mesh = mesh_with(ECHO);

    // The echo comes back byte for byte through the waypoint, and the waypoint reports the
    // connection in Istio's TCP metrics and its access log.
    assert!(
        mesh.eventually(Duration::from_secs(10), || tcp_echo(
            &mesh, ECHO_VIP, "hello-l4"
        ) == "hello-l4"),
        "no echo through the waypoint\n{}",
        mesh.logs()
    );
    let cluster = format!("outbound|7000||{ECHO_HOST}");
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    let samples = Exposition::parse(&metrics);
    let tcp_sample = |name: &str| {
        samples
            .find(
                name,
                &[
                    ("destination_service", ECHO_HOST),
                    (
                        "source_principal",
                        "spiffe://cluster.local/ns/shop/sa/client",
                    ),
                    (
                        "destination_principal",
                        "spiffe://cluster.local/ns/shop/sa/reviews",
                    ),
                ],
            )
            .unwrap_or_else(|| panic!("no {name} for the echo:\n{metrics}"))
            .clone()
    };
    let opened = tcp_sample("istio_tcp_connections_opened_total");
    let (opened, opened_count) = (opened.line, opened.value);
    for label in [
        "reporter=\"waypoint\"",
        "request_protocol=\"tcp\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ] {
        assert!(opened.contains(label), "{label} missing in {opened}");
    }
    assert!(opened_count >= 1.0, "{opened}");
    // "hello-l4\n" each way, at least once.
    assert!(tcp_sample("istio_tcp_received_bytes_total").value >= 9.0);
    assert!(tcp_sample("istio_tcp_sent_bytes_total").value >= 9.0);
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            mesh.log_of(&format!("waypoint-{WAYPOINT}"))
                .lines()
                .any(|l| l.contains("\"- - -\" 0 - -") && l.contains(&cluster))
        }),
        "the waypoint logged no TCP connection to {cluster}\n{}",
        mesh.log_of(&format!("waypoint-{WAYPOINT}"))
    );

    // A pod addressed directly on its TCP port: through the waypoint at L4 too, to that pod.
    let v2 = mesh.pod("reviews-v2").ip.to_string();
    assert_eq!(tcp_echo(&mesh, &v2, "hello-pod"), "hello-pod");
    assert!(
        mesh.eventually(Duration::from_secs(5), || {
            mesh.log_of(&format!("waypoint-{WAYPOINT}"))
                .lines()
                .any(|l| l.contains("\"- - -\"") && l.contains(&format!("inbound-pod|7000||{v2}")))
        }),
        "the waypoint did not carry the pod-addressed connection\n{}",
        mesh.log_of(&format!("waypoint-{WAYPOINT}"))
    );

    // An AuthorizationPolicy on the waypoint with only L4 attributes (source principal,
    // destination port) applies to TCP: the client's echo is refused, its HTTP still passes.
    apply(
        &mesh,
        "30-deny-client-echo.yaml",
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client-echo, namespace: shop}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {ports: ["7000"]}}]
"#,
    );
    assert_eq!(tcp_echo(&mesh, ECHO_VIP, "denied"), "");
    assert_eq!(tcp_echo(&mesh, &v2, "denied-too"), "");
    assert_eq!(
        mesh.curl_with("client", &[&format!("http://{VIP}/still-http")])
            .status,
        200
    );
    let log = mesh.log_of(&format!("waypoint-{WAYPOINT}"));
    assert!(
        log.contains(
            "rbac_access_denied_matched_policy[ns[shop]-policy[deny-client-echo]-rule[0]]"
        ),
        "the refusal was not logged:\n{log}"
    );
}

/// Istio's Telemetry for the waypoint's namespace with these `metrics`.
fn metrics_telemetry(metrics: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: metrics, namespace: shop}}\nspec:\n  metrics:\n{metrics}"
    )
}

const COUNT_DISABLED: &str = r#"
  - overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      disabled: true
    - match: {metric: TCP_SENT_BYTES}
      disabled: true
    - match: {metric: TCP_OPENED_CONNECTIONS, mode: CLIENT_AND_SERVER}
      tagOverrides:
        destination_principal: {operation: REMOVE}
        cluster: {value: xds.cluster_name}
        host: {value: "has(request.host) ? request.host : 'no-request'"}
"#;

const COUNT_RETAGGED: &str = r#"
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        request_host: {value: request.host}
        user: {value: "has(request.headers['x-user']) ? request.headers['x-user'] : 'anonymous'"}
    - match: {metric: REQUEST_DURATION, mode: CLIENT_AND_SERVER}
      disabled: true
"#;

#[test]
fn telemetry_metric_overrides_change_the_waypoints_metrics_live() {
    const COUNT: &str = "istio_requests_total";
    const DURATION: &str = "istio_request_duration_milliseconds_count";
    let to_reviews = [("destination_service", HOST)];
    let mesh = mesh_with_files(
        ECHO,
        vec![("metrics.yaml".to_owned(), metrics_telemetry(COUNT_DISABLED))],
    );
    let exposed = || Exposition::parse(&mesh.waypoint_metrics(WAYPOINT));
    let to_echo = [("destination_service", ECHO_HOST)];
    let echo_cluster = format!("outbound|7000||{ECHO_HOST}");
    // The TCP metrics under their overrides from the start: the sent bytes not recorded, the
    // opened count without the destination's principal and with the connection's cluster
    // (a connection has no request: the request's host falls back to the literal).
    assert!(
        mesh.eventually(Duration::from_secs(10), || tcp_echo(
            &mesh,
            ECHO_VIP,
            "tcp-overridden"
        ) == "tcp-overridden"),
        "no echo through the waypoint\n{}",
        mesh.logs()
    );
    let metrics = exposed();
    let opened = metrics.matching("istio_tcp_connections_opened_total", &to_echo);
    assert!(!opened.is_empty(), "{:?}", metrics.samples());
    let expected = [
        ("destination_principal", None),
        ("cluster", Some(echo_cluster.as_str())),
        ("host", Some("no-request")),
    ];
    for (sample, (label, value)) in opened.iter().flat_map(|s| expected.map(|e| (s, e))) {
        assert_eq!(sample.label(label), value, "{}", sample.line);
    }
    assert!(
        metrics
            .matching("istio_tcp_sent_bytes_total", &to_echo)
            .is_empty(),
        "{:?}",
        metrics.matching("istio_tcp_sent_bytes_total", &[])
    );
    assert!(metrics.count("istio_tcp_received_bytes_total", &to_echo) >= 15);
    // Disabled from the start: the waypoint records the other request metrics, never the
    // request count (the requests that found the service reachable included).
    for _ in 0..3 {
        assert_eq!(
            mesh.curl_with("client", &[&format!("http://{VIP}/counted")])
                .status,
            200
        );
    }
    let metrics = exposed();
    assert!(
        metrics.matching(COUNT, &[]).is_empty(),
        "{:?}",
        metrics.matching(COUNT, &[])
    );
    let durations = metrics.count(DURATION, &to_reviews);
    assert!(durations >= 3, "{durations}");

    // A live edit: the request count back with one label removed and two computed per
    // request, the duration disabled. It reaches the waypoint without a restart, and the
    // agents' pooled connections to it carry the next requests under the new configuration.
    apply(&mesh, "metrics.yaml", &metrics_telemetry(COUNT_RETAGGED));
    for user in ["jason", "jason", "jason", "", ""] {
        let mut args = vec![];
        let header = format!("x-user: {user}");
        if !user.is_empty() {
            args.extend(["-H", header.as_str()]);
        }
        let url = format!("http://{VIP}/retagged");
        args.push(&url);
        assert_eq!(mesh.curl_with("client", &args).status, 200);
    }
    let metrics = exposed();
    let counted = metrics.matching(COUNT, &to_reviews);
    assert!(!counted.is_empty(), "{:?}", metrics.samples());
    for sample in &counted {
        assert_eq!(sample.label("request_protocol"), None, "{}", sample.line);
        assert_eq!(sample.label("request_host"), Some(VIP), "{}", sample.line);
        assert_eq!(
            sample.label("reporter"),
            Some("waypoint"),
            "{}",
            sample.line
        );
    }
    assert_eq!(metrics.count(COUNT, &[("user", "jason")]), 3);
    assert_eq!(metrics.count(COUNT, &[("user", "anonymous")]), 2);
    assert_eq!(
        metrics.count(DURATION, &to_reviews),
        durations,
        "the duration was recorded while disabled"
    );
    // The TCP overrides are gone with the edit: the next connection is counted under Istio's
    // labels, its sent bytes recorded.
    assert_eq!(tcp_echo(&mesh, ECHO_VIP, "tcp-standard"), "tcp-standard");
    let metrics = exposed();
    let standard = [
        ("destination_service", ECHO_HOST),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/shop/sa/reviews",
        ),
    ];
    assert!(
        metrics.count("istio_tcp_connections_opened_total", &standard) >= 1,
        "{:?}",
        metrics.matching("istio_tcp_connections_opened_total", &[])
    );
    assert!(metrics.count("istio_tcp_sent_bytes_total", &standard) >= 13);

    // The Telemetry deleted: Istio's standard labels again, and the duration recorded.
    mesh.await_waypoint(WAYPOINT, "the Telemetry deleted", || {
        mesh.remove_config("metrics.yaml")
    })
    .expect("the waypoint follows the deletion");
    assert_eq!(
        mesh.curl_with("client", &[&format!("http://{VIP}/standard")])
            .status,
        200
    );
    let metrics = exposed();
    assert_eq!(
        metrics.count(
            COUNT,
            &[("destination_service", HOST), ("request_protocol", "http")]
        ),
        1,
        "{:?}",
        metrics.matching(COUNT, &[])
    );
    assert!(metrics.count(DURATION, &to_reviews) > durations);
}
