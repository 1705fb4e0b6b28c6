//! Access logs as Istio configures them, end to end: the mesh config declares an
//! `envoyFileAccessLog` provider writing Envoy's JSON format to a file, and a Telemetry
//! attached to the waypoint selects it with the filter `response.code >= 400`. Through the
//! waypoint, a request answered 200 and one answered 503: only the failing one is written to
//! the file, one JSON object with the fields its labels name. Removing the Telemetry brings
//! the waypoint's default line back and the file receives nothing more. Needs root.

use std::time::Duration;

use weft_e2e::fixtures::{REVIEWS_VIP as VIP, reviews_service};
use weft_e2e::{Mesh, MeshOptions, PodSpec, waypoint_resources};
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

#[test]
fn a_waypoint_logs_only_failing_requests_to_the_selected_json_file() {
    let dir = TempDir::new("e2e-access-log");
    let path = dir.join("waypoint.json");
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
            mesh_config: mesh_config(path.to_str().unwrap()),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    mesh.await_reachable("client", &format!("http://{VIP}/ready"))
        .expect("the service is reachable through the waypoint");
    mesh.await_waypoint("waypoint", "a Telemetry selecting the JSON file", || {
        mesh.write_config("telemetry.yaml", FAILURES_ONLY)
    })
    .expect("the waypoint applies the Telemetry");

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
    assert!(
        mesh.eventually(Duration::from_secs(10), || !lines(&path).is_empty()),
        "nothing written to {}\n{}",
        path.display(),
        mesh.log_of("waypoint-waypoint")
    );
    // The 200 ended before the 503 was sent: had it been logged, it would be there already.
    let logged = lines(&path);
    assert_eq!(logged.len(), 1, "{logged:?}");
    let line = &logged[0];
    assert_eq!(line["code"], 503, "{line}");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["path"], "/broken?status=503");
    assert_eq!(line["authority"], VIP);
    assert_eq!(line["flags"], "-");
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

    // Without the Telemetry the waypoint writes its default line again: a failing request
    // reaches the process log and not the file.
    mesh.await_waypoint("waypoint", "the Telemetry removed", || {
        mesh.remove_config("telemetry.yaml")
    })
    .expect("the waypoint follows the removal");
    let again = mesh.curl_with("client", &[&format!("http://{VIP}/after?status=503")]);
    assert_eq!(again.status, 503, "{}", again.body);
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh
            .log_of("waypoint-waypoint")
            .contains("/after?status=503")),
        "no default line for the request\n{}",
        mesh.log_of("waypoint-waypoint")
    );
    assert_eq!(lines(&path).len(), 1, "{:?}", lines(&path));
}
