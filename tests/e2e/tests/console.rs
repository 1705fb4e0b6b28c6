//! The service-graph console on a real Prometheus: bookinfo runs as the demo runs it, Debian's
//! `prometheus` scrapes its agents, waypoint and controller, bounded traffic goes through it, and
//! once Prometheus has scraped that traffic (polled through its API) the console's JSON API
//! must draw the expected nodes and edges with the canary's 90/10 split, and headless Chromium
//! must render them. A screenshot of the graph is kept in `target/console/`. Needs root.

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use weft_e2e::{
    demo::{CLIENT, Demo, Runtime, examples, upstream},
    observability::{Observability, http_request},
    webdriver::Browser,
};

const REVIEWS_AT_WAYPOINT: &str =
    "sum(istio_requests_total{reporter=\"waypoint\",destination_service_name=\"reviews\"})";

const CLIENT_TO_DETAILS: &str = "sum(istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"client\",destination_service_name=\"details\"})";

/// Waits until Prometheus' last scrape counts at least `count` for `query`.
fn wait_scraped(observability: &Observability, query: &str, count: f64) {
    observability
        .wait_for_value(query, count)
        .expect("Prometheus scrapes the traffic");
}

fn console_get(observability: &Observability, path: &str) -> Value {
    let (status, body) = http_request(observability.console(), "GET", path, None).expect(path);
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

fn edge<'a>(graph: &'a Value, source: &str, target: &str, denied: bool) -> &'a Value {
    graph["edges"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["source"] == source && e["target"] == target && e["denied"] == denied)
        .unwrap_or_else(|| panic!("no edge {source} -> {target} (denied {denied}) in {graph:#}"))
}

#[test]
fn the_console_draws_bookinfo_from_prometheus_with_the_canary_split_in_the_api_and_in_chromium() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/bookinfo");
    let examples = examples::load(&dir).expect("the bookinfo examples");
    let demo = Demo::start(Runtime::Testbed, &examples).expect("bookinfo starts");
    let observability = demo
        .observability
        .as_ref()
        .expect("the testbed runs Prometheus");

    // A first round creates the series (Prometheus counts increases from its first sample of
    // each), the second is what the rates measure.
    // details is reached agent to agent, without the waypoint: each of the client's calls is a
    // connection of its own (productpage keeps one pooled, whose bytes count when it closes).
    let details = demo.url("details", "/details/0");
    // The client may not call reviews itself: refused at the waypoint.
    let reviews = demo.url("reviews", "/reviews/0");
    let call_details = || {
        for _ in 0..5 {
            assert_eq!(demo.curl_with(CLIENT, &[&details]).status, 200);
            assert_eq!(demo.curl_with(CLIENT, &[&reviews]).status, 403);
        }
    };
    // The first round goes on until the canary's v2 has served (20 pages miss it one time in
    // eight at 10%): a series first seen in the second round has no increase to rate.
    let mut first_pages = 0;
    loop {
        let round = demo.productpage(20, &[]).expect("productpage");
        assert!(round.iter().all(|(status, _)| *status == 200));
        first_pages += 20;
        if round
            .iter()
            .any(|(_, reply)| upstream(reply, "reviews").is_some_and(|r| r["version"] == "v2"))
        {
            break;
        }
        assert!(
            first_pages < 200,
            "no page reached reviews v2 in {first_pages}"
        );
    }
    call_details();
    wait_scraped(
        observability,
        REVIEWS_AT_WAYPOINT,
        f64::from(first_pages + 5),
    );
    wait_scraped(observability, CLIENT_TO_DETAILS, 5.0);
    let second = demo.productpage(200, &[]).expect("productpage");
    assert!(second.iter().all(|(status, _)| *status == 200));
    call_details();
    wait_scraped(
        observability,
        REVIEWS_AT_WAYPOINT,
        f64::from(first_pages + 210),
    );
    wait_scraped(observability, CLIENT_TO_DETAILS, 10.0);

    let graph = console_get(observability, "/api/graph?namespace=bookinfo");
    let ids: Vec<&str> = graph["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    for expected in [
        "workload:bookinfo/productpage-v1/v1",
        "service:bookinfo/reviews",
        "service:bookinfo/details",
        "workload:bookinfo/reviews-v1/v1",
        "workload:bookinfo/reviews-v2/v2",
        "workload:bookinfo/details-v1/v1",
        "workload:bookinfo/client/latest",
    ] {
        assert!(ids.contains(&expected), "{expected} missing in {ids:?}");
    }
    assert!(
        ids.iter().all(|id| !id.contains("waypoint")),
        "the waypoint is drawn through: {ids:?}"
    );
    let call = edge(
        &graph,
        "workload:bookinfo/productpage-v1/v1",
        "service:bookinfo/reviews",
        false,
    );
    assert!(call["request_rate"].as_f64().unwrap() > 0.0, "{call}");
    assert_eq!(call["mtls"], 1.0, "{call}");
    assert_eq!(call["error_rate"], 0.0, "{call}");
    assert!(call["p99_ms"].as_f64().is_some(), "{call}");
    let rate = |target: &str| {
        edge(&graph, "service:bookinfo/reviews", target, false)["request_rate"]
            .as_f64()
            .unwrap()
    };
    let (v1, v2) = (
        rate("workload:bookinfo/reviews-v1/v1"),
        rate("workload:bookinfo/reviews-v2/v2"),
    );
    let share = v1 / (v1 + v2);
    assert!((0.8..=0.97).contains(&share), "reviews v1's share {share}");
    let details = edge(
        &graph,
        "workload:bookinfo/client/latest",
        "service:bookinfo/details",
        false,
    );
    assert!(
        details["tcp_connections_per_second"].as_f64().unwrap() > 0.0,
        "{details}"
    );
    assert_eq!(details["request_rate"], 0.0, "{details}");
    let denied = edge(
        &graph,
        "workload:bookinfo/client/latest",
        "service:bookinfo/reviews",
        true,
    );
    assert!(denied["request_rate"].as_f64().unwrap() > 0.0, "{denied}");

    let service = console_get(
        observability,
        "/api/service?namespace=bookinfo&service=reviews",
    );
    assert_eq!(service["config"]["waypoint"], "waypoint");
    assert_eq!(service["config"]["routes"][0]["name"], "reviews");
    let split: Vec<(String, f64)> = service["split"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["version"].as_str().unwrap().to_owned(),
                s["share"].as_f64().unwrap(),
            )
        })
        .collect();
    let v1_share = split.iter().find(|(v, _)| v == "v1").expect("v1").1;
    assert!((0.8..=0.97).contains(&v1_share), "{split:?}");
    let workload = console_get(
        observability,
        "/api/workload?namespace=bookinfo&workload=reviews-v1",
    );
    // The workload is the Deployment reviews-v1 (as Istio names it), one pod.
    let pods = workload["config"]["pods"].as_array().unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0]["name"], "reviews-v1");
    assert_eq!(pods[0]["enrolled"], true);
    assert_eq!(
        pods[0]["identity"],
        "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    );
    // The certificate's expiry, from the agents' `weft_workload_certificate_expiry_timestamp_seconds`
    // once Prometheus scraped them: in the future, within the certificates' lifetime.
    let reviews_identity = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews";
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let expiry = loop {
        let workload = console_get(
            observability,
            "/api/workload?namespace=bookinfo&workload=reviews-v1",
        );
        if let Some(expiry) = workload["certificate_expiry"][reviews_identity].as_f64() {
            break expiry;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no certificate expiry for {reviews_identity}: {workload}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expiry > now && expiry < now + 25.0 * 3600.0,
        "expiry {expiry}, now {now}"
    );

    // The page, rendered by headless Chromium from the same API.
    let artifacts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/console");
    std::fs::create_dir_all(&artifacts).unwrap();
    let browser = Browser::start(&artifacts.join("chromedriver.log")).expect("chromium");
    let url = format!("http://{}/#/graph/bookinfo", observability.console());
    browser.navigate(&url).unwrap();
    let drawn = browser
        .wait_for(
            "const edges = document.querySelectorAll('#graph .edge');
             if (edges.length === 0) return null;
             return {
               nodes: [...document.querySelectorAll('#graph .node')].map(n => n.dataset.id),
               edges: [...edges].map(e => ({ source: e.dataset.source, target: e.dataset.target,
                 denied: e.dataset.denied, mtls: e.dataset.mtls, share: e.dataset.share,
                 text: e.textContent })),
             };",
            Duration::from_secs(30),
        )
        .expect("the graph is drawn");
    browser
        .screenshot(&artifacts.join("graph.png"))
        .expect("a screenshot");
    let nodes: Vec<&str> = drawn["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for expected in [
        "workload:bookinfo/productpage-v1/v1",
        "service:bookinfo/reviews",
    ] {
        assert!(nodes.contains(&expected), "{expected} not drawn: {nodes:?}");
    }
    let drawn_edges = drawn["edges"].as_array().unwrap();
    let drawn_edge = |source: &str, target: &str| {
        drawn_edges
            .iter()
            .find(|e| e["source"] == source && e["target"] == target && e["denied"] == "false")
            .unwrap_or_else(|| panic!("{source} -> {target} not drawn: {drawn_edges:#?}"))
    };
    let call = drawn_edge(
        "workload:bookinfo/productpage-v1/v1",
        "service:bookinfo/reviews",
    );
    assert_eq!(call["mtls"], "true", "{call}");
    let v1: f64 = drawn_edge(
        "service:bookinfo/reviews",
        "workload:bookinfo/reviews-v1/v1",
    )["share"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((0.8..=0.97).contains(&v1), "drawn v1 share {v1}");
    assert!(
        drawn_edges.iter().any(|e| e["denied"] == "true"
            && e["text"].as_str().unwrap_or_default().starts_with("denied")),
        "no denied edge drawn: {drawn_edges:#?}"
    );
    // The service page shows the split too.
    browser
        .navigate(&format!(
            "http://{}/#/service/bookinfo/reviews",
            observability.console()
        ))
        .unwrap();
    let page_share = browser
        .wait_for(
            "const s = document.querySelector('.share[data-version=\"v1\"]'); return s ? s.dataset.share : null;",
            Duration::from_secs(30),
        )
        .expect("the service page");
    let page_share: f64 = page_share.as_str().unwrap().parse().unwrap();
    assert!(
        (0.8..=0.97).contains(&page_share),
        "page share {page_share}"
    );
    // The traffic chart draws a line per response code: a path through two points or more.
    let chart = browser
        .wait_for(
            "const paths = [...document.querySelectorAll('#traffic path')];
             return paths.length ? paths.map(p => p.getAttribute('d')) : null;",
            Duration::from_secs(30),
        )
        .expect("the traffic chart");
    let lines: Vec<&str> = chart
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        lines.iter().any(|d| d.matches('L').count() >= 1),
        "the traffic chart draws no line: {lines:?}"
    );
    browser
        .screenshot(&artifacts.join("service-reviews.png"))
        .expect("a screenshot");
    // The workload page shows each pod's certificate expiry.
    browser
        .navigate(&format!(
            "http://{}/#/workload/bookinfo/reviews-v1",
            observability.console()
        ))
        .unwrap();
    let shown = browser
        .wait_for(
            "const e = document.querySelector('.expiry[data-expiry]');
             return e ? { seconds: e.dataset.expiry, text: e.textContent } : null;",
            Duration::from_secs(30),
        )
        .expect("the workload page shows a certificate expiry");
    let shown_seconds: f64 = shown["seconds"].as_str().unwrap().parse().unwrap();
    assert_eq!(shown_seconds, expiry, "{shown}");
    assert!(shown["text"].as_str().unwrap().contains(" (in "), "{shown}");
    browser
        .screenshot(&artifacts.join("workload-reviews.png"))
        .expect("a screenshot");
}
