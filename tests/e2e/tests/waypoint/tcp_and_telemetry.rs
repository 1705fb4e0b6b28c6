//! TCP services that use the waypoint, and Telemetry metric overrides applied live.

use super::*;

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
