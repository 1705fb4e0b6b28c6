//! L7 policy, outlier detection and metrics at the waypoint, and real clients and abuse
//! through it.

use super::*;

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
