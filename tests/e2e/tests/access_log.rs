//! Access logs as Istio configures them, end to end: the mesh config declares an
//! `envoyFileAccessLog` provider writing Envoy's JSON format to a file, and a Telemetry
//! attached to the waypoint selects it with the filter `response.code >= 400`. Through the
//! waypoint, a request answered 200 and one answered 503: only the failing one is written to
//! the file, one JSON object with the fields its labels name. Removing the Telemetry leaves
//! no access log at all, Istio's default without `accessLogFile`; with it, a Telemetry naming
//! only a tracing provider leaves the mesh's line written, as istiod falls back to it. A
//! logging change reaches the next request of a connection open across it. With an empty mesh config no
//! line is written at all; `accessLogFile` turns Istio's default line on. Needs root.
//!
//! A request's line is written before the waypoint counts it in `istio_requests_total`: the
//! tests wait on that count (and on the waypoint's applied configuration version), then read
//! the files.

use std::time::Duration;

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_service};
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};
use weft_test_support::prometheus::Exposition;
use weft_test_support::temp::TempDir;

/// Istio's Telemetry attached to the waypoint: the JSON file provider, failing requests only.
const FAILURES_ONLY: &str = r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: failures, namespace: shop}
spec:
  targetRefs:
  - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
  accessLogging:
  - providers: [{name: json-file}]
    filter: {expression: "response.code >= 400"}
"#;

fn mesh_config(path: &str) -> String {
    format!(
        r#"
extensionProviders:
- name: json-file
  envoyFileAccessLog:
    path: {path}
    logFormat:
      labels:
        code: "%RESPONSE_CODE%"
        method: "%REQ(:METHOD)%"
        path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
        authority: "%REQ(:AUTHORITY)%"
        flags: "%RESPONSE_FLAGS%"
        cluster: "%UPSTREAM_CLUSTER%"
        upstream: "%UPSTREAM_HOST%"
        tenant: "%REQ(X-TENANT)%"
        sni: "%REQUESTED_SERVER_NAME%"
"#
    )
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The requests the waypoint counted (every line of them written already).
fn counted(mesh: &Mesh) -> f64 {
    Exposition::parse(&mesh.waypoint_metrics("waypoint")).sum("istio_requests_total", &[])
}

/// Waits until the waypoint counted `count` requests more than `before`.
fn await_counted(mesh: &Mesh, before: f64, count: u32) {
    assert!(
        mesh.eventually(Duration::from_secs(10), || counted(mesh)
            >= before + f64::from(count)),
        "the waypoint did not count {count} more requests than {before}\n{}",
        mesh.waypoint_metrics("waypoint")
    );
}

/// Sends `path` through the waypoint, asserts its status, and answers the waypoint's log once
/// the request is counted (its line, if any, written).
fn logged_after(mesh: &Mesh, path: &str, status: u16) -> String {
    let before = counted(mesh);
    let answer = mesh.curl_with("client", &[&format!("http://{VIP}{path}")]);
    assert_eq!(answer.status, status, "{}", answer.body);
    await_counted(mesh, before, 1);
    mesh.log_of("waypoint-waypoint")
}

/// Client, reviews and the namespace's waypoint under `mesh_config`, once the service answers
/// through the waypoint.
fn start(mesh_config: String) -> Mesh {
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
        ],
        MeshOptions {
            config: format!(
                "{}---\n{}",
                reviews_service(false),
                waypoint_resources("shop")
            ),
            mesh_config,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    mesh
}

#[test]
fn a_waypoint_logs_only_failing_requests_to_the_selected_json_file() {
    let dir = TempDir::new("e2e-access-log");
    let path = dir.join("waypoint.json");
    let mesh = start(mesh_config(path.to_str().unwrap()));
    mesh.await_waypoint("waypoint", "a Telemetry selecting the JSON file", || {
        mesh.write_config("telemetry.yaml", FAILURES_ONLY)
    })
    .expect("the waypoint applies the Telemetry");

    let before = counted(&mesh);
    let ok = mesh.curl_with(
        "client",
        &["-H", "x-tenant: blue", &format!("http://{VIP}/fine")],
    );
    assert_eq!(ok.status, 200, "{}", ok.body);
    let failed = mesh.curl_with(
        "client",
        &[
            "-H",
            "x-tenant: blue",
            &format!("http://{VIP}/broken?status=503"),
        ],
    );
    assert_eq!(failed.status, 503, "{}", failed.body);
    await_counted(&mesh, before, 2);
    let logged = lines(&path);
    assert_eq!(logged.len(), 1, "{logged:?}");
    let line = &logged[0];
    assert_eq!(line["code"], 503, "{line}");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/broken?status=503");
    assert_eq!(line["authority"], VIP);
    // The 503 was retried under Istio's default policy (503 is among its retriable codes)
    // until its retries ran out: Envoy's `URX`.
    assert_eq!(line["flags"], "URX");
    assert_eq!(line["tenant"], "blue");
    assert_eq!(
        line["cluster"],
        "outbound|80||reviews.shop.svc.cluster.local"
    );
    assert!(
        line["upstream"]
            .as_str()
            .is_some_and(|u| u.parse::<std::net::SocketAddr>().is_ok()),
        "{line}"
    );
    // What the waypoint does not know is `null`, as Envoy writes it in JSON.
    assert!(line["sni"].is_null(), "{line}");

    // Without the Telemetry nothing is written, neither to the file nor to the process log:
    // Istio writes no access log unless asked (`pilot/pkg/networking/core/accesslog.go`).
    mesh.await_waypoint("waypoint", "the Telemetry removed", || {
        mesh.remove_config("telemetry.yaml")
    })
    .expect("the waypoint follows the removal");
    let log = logged_after(&mesh, "/after?status=503", 503);
    assert!(!log.contains("/after?status=503"), "{log}");
    assert_eq!(lines(&path).len(), 1, "{:?}", lines(&path));

    // `accessLogFile` turns the mesh's log on: Istio's default TEXT line on standard output.
    let config = format!(
        "accessLogFile: /dev/stdout\n{}- name: zipkin\n  zipkin: {{service: zipkin.example.com, port: 9411}}\n",
        mesh_config(path.to_str().unwrap())
    );
    mesh.await_waypoint("waypoint", "accessLogFile set", || {
        mesh.set_mesh_config(&config)
    })
    .expect("the waypoint applies the mesh config");
    let written = |log: &str, path: &str| {
        log.lines()
            .filter(|l| l.starts_with('[') && l.contains(&format!("\"GET {path} HTTP/1.1\" 503 ")))
            .count()
    };
    let log = logged_after(&mesh, "/stdout?status=503", 503);
    assert_eq!(written(&log, "/stdout?status=503"), 1, "{log}");

    // A Telemetry naming only a tracing provider (zipkin writes no access log) leaves the
    // mesh's file in force, as istiod's `telemetryAccessLog` builds no log for it and
    // `setHTTPAccessLog` falls back to `accessLogFile`. Reached from the JSON file's Telemetry
    // so that each step is a new configuration the waypoint applies.
    mesh.await_waypoint("waypoint", "the JSON file selected again", || {
        mesh.write_config("telemetry.yaml", FAILURES_ONLY)
    })
    .expect("the waypoint applies the Telemetry");
    mesh.await_waypoint("waypoint", "a Telemetry naming zipkin", || {
        mesh.write_config("telemetry.yaml", &selecting("zipkin"))
    })
    .expect("the waypoint applies the Telemetry");
    let log = logged_after(&mesh, "/fallback?status=503", 503);
    assert_eq!(written(&log, "/fallback?status=503"), 1, "{log}");
    assert_eq!(lines(&path).len(), 1, "{:?}", lines(&path));
}

/// Istio writes no access log by default (`pilot/pkg/networking/core/accesslog.go`: without a
/// Telemetry provider, the mesh file only `if mesh.AccessLogFile != ""`): under an empty mesh
/// config and no Telemetry a request through the waypoint leaves no line, neither on its
/// standard output nor on its process log; `accessLogFile: /dev/stdout`, as Istio's `demo`
/// profile sets it, writes Istio's default TEXT line for the next one.
#[test]
fn without_access_log_file_nothing_is_logged_and_setting_it_writes_the_line() {
    let mesh = start(String::new());
    logged_after(&mesh, "/quiet", 200);
    let log = logged_after(&mesh, "/quiet?status=503", 503);
    assert!(!log.contains("/quiet"), "an access line by default\n{log}");

    mesh.await_waypoint("waypoint", "accessLogFile set", || {
        mesh.set_mesh_config("accessLogFile: /dev/stdout\n")
    })
    .expect("the waypoint applies the mesh config");
    let log = logged_after(&mesh, "/loud", 200);
    let written: Vec<&str> = log
        .lines()
        .filter(|l| l.starts_with('[') && l.contains("\"GET /loud HTTP/1.1\" 200 "))
        .collect();
    assert_eq!(written.len(), 1, "{log}");
    assert!(!log.contains("/quiet"), "{log}");
}

/// Telemetry selecting the provider `name`, for every request.
fn selecting(name: &str) -> String {
    format!(
        r#"
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {{name: logging, namespace: shop}}
spec:
  targetRefs:
  - {{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}}
  accessLogging:
  - providers: [{{name: {name}}}]
"#
    )
}

/// Istio's Telemetry is read per request by Envoy (its access loggers are part of the
/// listener's filter chain, replaced on change): a client holding one keep-alive connection
/// across two logging changes finds each in force on its next request.
#[test]
fn a_logging_change_reaches_the_next_request_of_an_established_connection() {
    let dir = TempDir::new("e2e-access-log-live");
    let (json_path, text_path) = (dir.join("a.json"), dir.join("b.log"));
    let mesh = start(format!(
        r#"
extensionProviders:
- name: format-a
  envoyFileAccessLog:
    path: {}
    logFormat:
      labels:
        path: "%REQ(:PATH)%"
- name: format-b
  envoyFileAccessLog:
    path: {}
    logFormat:
      text: "b %REQ(:PATH)% %RESPONSE_CODE%\n"
"#,
        json_path.display(),
        text_path.display()
    ));
    let mut session = mesh
        .http_session("client", &format!("{VIP}:80"), VIP)
        .expect("open a keep-alive connection");
    let mut connection = None;
    let mut get = |path: &str| {
        let before = counted(&mesh);
        let answer = session.get(path, &[], 1);
        assert_eq!(answer["answers"][0]["status"], 200, "{answer}");
        assert_eq!(answer["closed"], false, "{answer}");
        let on = answer["connection"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            connection.get_or_insert_with(|| on.clone()),
            &on,
            "the client's connection was replaced"
        );
        await_counted(&mesh, before, 1);
    };
    let text = || std::fs::read_to_string(&text_path).unwrap_or_default();

    get("/one");
    assert!(lines(&json_path).is_empty(), "{:?}", lines(&json_path));
    assert_eq!(text(), "");

    mesh.await_waypoint("waypoint", "a Telemetry selecting format A", || {
        mesh.write_config("telemetry.yaml", &selecting("format-a"))
    })
    .expect("the waypoint applies the Telemetry");
    get("/two");
    assert_eq!(
        lines(&json_path),
        vec![serde_json::json!({"path": "/two"})],
        "format A, from the request after the change on"
    );
    assert_eq!(text(), "");

    mesh.await_waypoint("waypoint", "the Telemetry switched to format B", || {
        mesh.write_config("telemetry.yaml", &selecting("format-b"))
    })
    .expect("the waypoint applies the change");
    get("/three");
    assert_eq!(text(), "b /three 200\n");
    assert_eq!(lines(&json_path).len(), 1, "{:?}", lines(&json_path));
}
