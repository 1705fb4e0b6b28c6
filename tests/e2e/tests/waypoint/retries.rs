//! Where a joining pod's share and a retry go: DestinationRule `warmup` and the
//! VirtualService's `retries` fields.

use super::*;

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

/// A route to the whole service retrying a 503 once, with these more `retries` fields.
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
