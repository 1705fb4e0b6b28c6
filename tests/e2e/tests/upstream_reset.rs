//! An upstream that resets its connection in the middle of an answer, end to end with the real
//! binaries: a server in a pod (`mesh-client reset-server`) sends a `200` head and 100 bytes of
//! a 1,000-byte body (or of a chunked one), then closes with `SO_LINGER` 0 (a TCP RST), or, to a
//! proxy that talks HTTP/2 to it (the proxies keep their client's protocol), resets the stream
//! (`RST_STREAM`), which leaves the connection's other streams alone. Through
//! the ingress gateway (for a client outside the mesh) and through the waypoint (for a client
//! pod), what Istio's Envoy does in that case (its router's `onUpstreamReset` once the response
//! started):
//! - an HTTP/1.1 client sees the answer cut short, never a complete-looking one;
//! - an HTTP/2 client sees the stream reset, and the other streams on its connection go on;
//! - no retry is made once the head went downstream, even under `retryOn: reset` (which does
//!   retry a reset before any answer);
//! - `istio_requests_total` and the access log record the upstream's `200` with
//!   `response_flags="UPE"` and `upstream_reset_after_response_started{protocol_error}` for the
//!   HTTP/1.1 upstream cut short, `UR` and `{remote_reset}` for the HTTP/2 stream reset; a
//!   connection reset before any answer, `503` with `UC` and
//!   `upstream_reset_before_response_started{connection_termination}` (the flag of its reason),
//!   and `URX` beside it once the route's retries are spent (Envoy's
//!   `UpstreamRetryLimitExceeded`, set by its router's `maybeRetryReset`, printed after `UC` as
//!   `source/common/stream_info/utility.h` orders its flags), but not when a retry succeeded;
//! - an HTTP/2 upstream whose whole connection ends (a `GOAWAY` and the TCP close) under the
//!   stream: `UC` with `upstream_reset_after_response_started{connection_termination}` once the
//!   response began (the `200` cut short), `503` with `UC,URX` and
//!   `upstream_reset_before_response_started{connection_termination}` before it;
//! - the gateway holds no connection of the client's afterwards, nor a file it did not hold
//!   before.
//!
//! Needs root.

use std::path::Path;
use std::time::Duration;

use weft_e2e::fixtures::STDOUT_ACCESS_LOG;
use weft_e2e::{Mesh, MeshOptions, PodSpec, binary, waypoint_resources};
use weft_test_support::prometheus::Exposition;

/// The resetting servers' Services: `brittle`, reached from the gateway (straight to its pod,
/// as Istio's gateways reach a service), and `brittle-mesh` behind the waypoint (whose pod's
/// agent refuses a caller that bypassed it).
const BRITTLE_HOST: &str = "brittle.shop.svc.cluster.local";
const MESH_VIP: &str = "10.96.0.41";
const MESH_HOST: &str = "brittle-mesh.shop.svc.cluster.local";
/// What the server sends of its answers before the reset, and what they declare.
const SENT_BYTES: u64 = 100;
const DECLARED_BYTES: u64 = 1000;
/// Retries the routes allow; a reset before any answer is tried this many more times.
const ATTEMPTS: u64 = 3;
/// curl's exit codes for a transfer cut short: the connection closed with data outstanding
/// (18), or reset while receiving (56).
const CUT_SHORT: [i32; 2] = [18, 56];

/// A Service `name` of `shop` at `vip`, `http` 80 to its pods' 8080, selecting `app: name`,
/// with `labels`.
fn service(name: &str, vip: &str, labels: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop, labels: {{{labels}}}}}\nspec:\n  clusterIP: {vip}\n  selector: {{app: {name}}}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n"
    )
}

fn config() -> String {
    format!(
        r#"{}---
{}---
{}---
{}---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: shop-gateway, namespace: shop}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [shop.example.com]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: edge, namespace: shop}}
spec:
  hosts: [shop.example.com]
  gateways: [shop-gateway]
  http:
  - match: [{{uri: {{prefix: /reset}}}}]
    retries: {{attempts: {ATTEMPTS}, retryOn: reset}}
    route: [{{destination: {{host: brittle}}}}]
  - route: [{{destination: {{host: reviews}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: brittle-mesh, namespace: shop}}
spec:
  hosts: [brittle-mesh]
  http:
  - retries: {{attempts: {ATTEMPTS}, retryOn: reset}}
    route: [{{destination: {{host: brittle-mesh}}}}]
"#,
        service("reviews", "10.96.0.20", ""),
        service("brittle", "10.96.0.40", ""),
        service("brittle-mesh", MESH_VIP, "istio.io/use-waypoint: waypoint"),
        waypoint_resources("shop")
    )
}

/// What curl saw of one answer: its exit code, status, body bytes and HTTP version.
#[derive(Debug)]
struct Transfer {
    exit: i32,
    status: u16,
    bytes: u64,
    version: String,
}

fn transfer(mesh: &Mesh, pod: &str, args: &[&str]) -> Transfer {
    let output = mesh
        .testbed
        .pod_command(pod, "curl")
        .args([
            "-s",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut fields = text.split_whitespace();
    Transfer {
        exit: output.status.code().unwrap_or(-1),
        status: fields.next().and_then(|f| f.parse().ok()).unwrap_or(0),
        bytes: fields.next().and_then(|f| f.parse().ok()).unwrap_or(0),
        version: fields.next().unwrap_or_default().to_owned(),
    }
}

/// Asserts that `seen` is the server's answer cut short: its `200` head and the part of the
/// body sent before the reset, and curl failing the transfer.
fn assert_cut_short(seen: &Transfer, what: &str, mesh: &Mesh) {
    assert!(
        seen.status == 200 && seen.bytes == SENT_BYTES && CUT_SHORT.contains(&seen.exit),
        "{what}: {seen:?}, expected the 200 head, {SENT_BYTES} of {DECLARED_BYTES} bytes and a \
         transfer cut short\n{}",
        mesh.logs()
    );
}

/// How many answers a server has broken off (or reset before answering) so far, asked from
/// `pod` by curl with `args` (its `/count`).
fn broken_count(mesh: &Mesh, pod: &str, args: &[&str]) -> u64 {
    let answer = mesh.curl_with(pod, args);
    assert_eq!(answer.status, 200, "{answer:?}\n{}", mesh.logs());
    answer.json()["broken"]
        .as_u64()
        .unwrap_or_else(|| panic!("{answer:?}"))
}

/// Asserts what `mesh-client h2-reset` reports: the broken stream reset after its head and
/// part of its body, the slow stream opened before it and the one sent after it answered whole,
/// on a connection still open.
fn assert_h2_stream_reset_alone(report: &serde_json::Value, what: &str) {
    let broken = &report["broken"];
    assert!(
        broken["status"] == 200
            && broken["body_bytes"] == SENT_BYTES
            && broken["reset_reason"].is_string(),
        "{what}: the broken stream was not reset after its head: {report}"
    );
    for stream in ["concurrent", "after"] {
        assert!(
            report[stream]["status"] == 200 && report[stream]["error"].is_null(),
            "{what}: the {stream} stream failed: {report}"
        );
    }
    assert_eq!(
        report["concurrent_finished_after_broken"], true,
        "{what}: the slow stream was not in flight across the reset: {report}"
    );
    assert_eq!(report["connection_open"], true, "{what}: {report}");
}

/// Requests to `destination_service` `host` counted in `metrics` with `labels`.
fn requests_to(metrics: &str, host: &str, labels: &[(&str, &str)]) -> u64 {
    let mut all = vec![("destination_service", host)];
    all.extend_from_slice(labels);
    Exposition::parse(metrics).count("istio_requests_total", &all)
}

fn open_fds(metrics: &str) -> f64 {
    Exposition::parse(metrics).sum("process_open_fds", &[])
}

/// The gateway's TCP sockets with `peer` in any state but TIME-WAIT (which the kernel holds
/// after the gateway closed first).
fn sockets_with(mesh: &Mesh, gateway: &str, peer: &str) -> Vec<String> {
    let output = mesh
        .testbed
        .pod_command(gateway, "ss")
        .args(["-Htan", "dst", peer])
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| !l.starts_with("TIME-WAIT"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_upstream_reset_after_the_response_began_reaches_clients_as_envoy_passes_it_on() {
    let mut gateway_pod = PodSpec::client("ingress", "node1", "shop")
        .not_enrolled()
        .with_service_account("ingress");
    gateway_pod.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
    let brittle = |name: &str| {
        let mut pod = PodSpec::client(name, "node1", "shop");
        pod.labels = [("app".to_string(), name.to_string())].into();
        pod
    };
    let mesh = Mesh::start(
        vec![
            brittle("brittle"),
            brittle("brittle-mesh"),
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::client("client", "node2", "shop"),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            gateway_pod,
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config: config(),
            mesh_config: STDOUT_ACCESS_LOG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let mesh_client = binary("mesh-client").expect("mesh-client is built");
    let mut servers = Vec::new();
    for pod in ["brittle", "brittle-mesh"] {
        servers.push(
            mesh.spawn_in_pod(
                pod,
                mesh_client.to_str().unwrap(),
                &["reset-server", "--listen", "0.0.0.0:8080"],
            )
            .expect("start the resetting server"),
        );
        mesh.wait_listening(pod, 8080)
            .expect("the resetting server");
    }

    let credentials = mesh.dir().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let gateway = mesh
        .start_gateway("ingress", Path::new(&credentials))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = mesh.pod(&gateway.pod).ip.to_string();
    let resolve = format!("shop.example.com:80:{gw}");
    let url = |path: &str| format!("http://shop.example.com{path}");
    let count_url = url("/reset/count");
    let edge_count = || broken_count(&mesh, "outside", &["--resolve", &resolve, &count_url]);
    // Both services answer through the gateway once their pods' agents have their
    // certificates.
    for path in ["/", "/reset/count"] {
        assert!(
            mesh.eventually(Duration::from_secs(15), || mesh
                .curl_with("outside", &["--resolve", &resolve, &url(path)])
                .status
                == 200),
            "the gateway never answered 200 for {path}\n{}",
            mesh.logs()
        );
    }
    // The server has broken nothing off yet.
    assert_eq!(edge_count(), 0);
    let fds_before = open_fds(&mesh.waypoint_metrics(&gateway.pod));

    // HTTP/1.1, the body delimited by its length, then chunked: cut short, not retried.
    for (path, what) in [
        ("/reset/length", "HTTP/1.1 Content-Length"),
        ("/reset/chunked", "HTTP/1.1 chunked"),
    ] {
        let seen = transfer(&mesh, "outside", &["--resolve", &resolve, &url(path)]);
        assert_cut_short(&seen, &format!("through the gateway, {what}"), &mesh);
    }
    assert_eq!(
        edge_count(),
        2,
        "an answer broken off after its head was retried"
    );

    // HTTP/2: that stream alone is reset, its neighbours answered.
    let report = mesh.mesh_client(
        "outside",
        &[
            "h2-reset",
            "--target",
            &format!("{gw}:80"),
            "--authority",
            "shop.example.com",
            "--prefix",
            "/reset",
        ],
    );
    assert_h2_stream_reset_alone(&report, "through the gateway");
    assert_eq!(edge_count(), 3, "{report}");

    // The same retry policy does retry a reset before any answer: it is in force.
    let early = mesh.curl_with("outside", &["--resolve", &resolve, &url("/reset/early")]);
    assert_eq!(early.status, 503, "{early:?}");
    assert_eq!(edge_count(), 3 + 1 + ATTEMPTS);
    // A reset the retry recovers from: the client sees the answer.
    let once = mesh.curl_with("outside", &["--resolve", &resolve, &url("/reset/once")]);
    assert_eq!(once.status, 200, "{once:?}");
    assert_eq!(edge_count(), 3 + 1 + ATTEMPTS + 1);

    // HTTP/2, the upstream's whole connection ending under the stream: once the answer began,
    // it is cut short (not retried); before, it is retried until the retries are spent.
    let h2 = |path: &str| {
        transfer(
            &mesh,
            "outside",
            &["--http2-prior-knowledge", "--resolve", &resolve, &url(path)],
        )
    };
    let cut = h2("/reset/goaway");
    assert!(
        cut.status == 200 && cut.bytes == SENT_BYTES && cut.exit != 0 && cut.version == "2",
        "HTTP/2 connection ended after the head: {cut:?}\n{}",
        mesh.logs()
    );
    let refused = h2("/reset/goaway/early");
    assert_eq!(
        (refused.status, refused.version.as_str()),
        (503, "2"),
        "{refused:?}"
    );
    assert_eq!(edge_count(), 3 + 1 + ATTEMPTS + 1 + 1 + 1 + ATTEMPTS);

    // Counted and logged with the upstream's status and Envoy's flag and details.
    let metrics = mesh.waypoint_metrics(&gateway.pod);
    for (code, flags, count) in [
        ("200", "UPE", 2),
        ("200", "UR", 1),
        ("200", "UC", 1),
        ("503", "UC,URX", 2),
        ("503", "UC", 0),
    ] {
        assert_eq!(
            requests_to(
                &metrics,
                BRITTLE_HOST,
                &[
                    ("reporter", "source"),
                    ("response_code", code),
                    ("response_flags", flags)
                ]
            ),
            count,
            "{code} {flags}: {metrics}"
        );
    }
    let log = mesh.log_of("gateway-ingress");
    for (request, recorded) in [
        (
            "/reset/length HTTP/1.1",
            "200 UPE upstream_reset_after_response_started{protocol_error}",
        ),
        (
            "/reset/chunked HTTP/1.1",
            "200 UPE upstream_reset_after_response_started{protocol_error}",
        ),
        (
            "/reset/length HTTP/2",
            "200 UR upstream_reset_after_response_started{remote_reset}",
        ),
        // Before any answer, the flag of the reason: the connection ended (Envoy's `UC`), with
        // `URX` once every retry failed so.
        (
            "/reset/early HTTP/1.1",
            "503 UC,URX upstream_reset_before_response_started{connection_termination}",
        ),
        // A retry that succeeded: the upstream's answer, no flag, Envoy's `via_upstream`.
        ("/reset/once HTTP/1.1", "200 - via_upstream"),
        // The HTTP/2 connection ended under the stream: `UC`, before and after the head.
        (
            "/reset/goaway HTTP/2",
            "200 UC upstream_reset_after_response_started{connection_termination}",
        ),
        (
            "/reset/goaway/early HTTP/2",
            "503 UC,URX upstream_reset_before_response_started{connection_termination}",
        ),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("\"GET {request}\" {recorded} "))),
            "no access log line for {request} with {recorded}:\n{log}"
        );
    }

    // Nothing of those connections stays on the gateway.
    let outside = mesh.pod("outside").ip.to_string();
    assert!(
        mesh.eventually(Duration::from_secs(10), || sockets_with(
            &mesh,
            &gateway.pod,
            &outside
        )
        .is_empty()),
        "the gateway still holds the client's connections: {:?}",
        sockets_with(&mesh, &gateway.pod, &outside)
    );
    assert!(
        mesh.eventually(Duration::from_secs(10), || open_fds(
            &mesh.waypoint_metrics(&gateway.pod)
        ) <= fds_before),
        "the gateway holds more files than before the resets ({fds_before}):\n{}",
        mesh.waypoint_metrics(&gateway.pod)
    );

    // Mesh traffic through the waypoint: the same, for a client pod calling the Service.
    let direct = |path: &str| format!("http://{MESH_VIP}{path}");
    mesh.await_reachable("client", &direct("/ok"))
        .expect("the brittle-mesh service is reachable through the waypoint");
    let mesh_count = || broken_count(&mesh, "client", &[&direct("/count")]);
    assert_eq!(mesh_count(), 0);
    let seen = transfer(&mesh, "client", &[&direct("/length")]);
    assert_cut_short(&seen, "through the waypoint, HTTP/1.1", &mesh);
    let report = mesh.mesh_client(
        "client",
        &[
            "h2-reset",
            "--target",
            &format!("{MESH_VIP}:80"),
            "--authority",
            MESH_HOST,
        ],
    );
    assert_h2_stream_reset_alone(&report, "through the waypoint");
    assert_eq!(
        mesh_count(),
        2,
        "the waypoint retried an answer broken off after its head"
    );
    let metrics = mesh.waypoint_metrics("waypoint");
    for flags in ["UPE", "UR"] {
        assert_eq!(
            requests_to(
                &metrics,
                MESH_HOST,
                &[("response_code", "200"), ("response_flags", flags)]
            ),
            1,
            "{flags}: {metrics}"
        );
    }
    assert_eq!(seen.version, "1.1");

    for mut server in servers {
        let _ = server.kill();
        let _ = server.wait();
    }
    drop(gateway);
}
