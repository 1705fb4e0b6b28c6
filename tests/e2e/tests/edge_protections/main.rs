//! Protections at the edge, end to end with the real binaries: the ingress gateway (the
//! waypoint binary in the gateway role) serves a client outside the mesh on a plain HTTP port,
//! and
//! - a route whose VirtualService carries `weft.dev/local-rate-limit` answers `429`
//!   (`response_flags` `RL`, `x-envoy-ratelimited`) past its budget while other routes keep
//!   serving, and a changed budget reaches the client's established connection;
//! - the client's address follows Istio's `numTrustedProxies` (from the mesh config): with 0, a
//!   spoofed `x-forwarded-for` does not get past a `remoteIpBlocks` DENY; with 1, the entry the
//!   trusted proxy appended is the client's;
//! - an oversize header gets `431`, as Envoy answers, and a body larger than what the gateway
//!   keeps for retries streams through to the app, as Envoy streams it;
//! - a Gateway's `weft.dev/edge-limits` sets its servers' header limit and idle timeout, a
//!   change reaches the client's established connection with its next request, and a bad value
//!   is refused while the last good limits keep applying;
//! - its `connectionRateLimit` closes TCP and TLS passthrough connections past the server's
//!   budget at once (counted and logged with `RL`), each server with its own bucket, and with
//!   `per: client` one client's budget is not another's;
//! - on its HTTP server, its `maxConnections` closes a connection past the port's cap at
//!   accept (counted in `weft_gateway_connections_over_limit_total`) until an open one closes,
//!   and its `connectionRateLimit` closes new connections past a client's budget (`RL`);
//! - its `requestTimeout` answers `408` to a client trickling its body past it, and its
//!   `maxRequestBytes` answers `413` to a declared length over it without contacting the app and
//!   cuts an endless body at the cap, over HTTP/1.1 and HTTP/2, while a request within both is
//!   served whole (the app counts what it read).
//!
//! Needs root.

use std::time::Duration;

use weft_e2e::fixtures::STDOUT_ACCESS_LOG;
use weft_e2e::gateway::GatewayProcess;
use weft_e2e::session::Session;
use weft_e2e::{Mesh, MeshOptions, PodSpec};

mod connections;
mod request_bounds;

const CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [edge]
  http:
  - route: [{destination: {host: reviews}}]
"#;

/// The rate-limited VirtualService, with `max_tokens` for the whole route.
fn limited(max_tokens: u32) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: limited
  namespace: shop
  annotations:
    weft.dev/local-rate-limit: "{{maxTokens: {max_tokens}, tokensPerFill: 1, fillInterval: 1h}}"
spec:
  hosts: [limited.example.com]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: reviews}}}}]
"#
    )
}

/// Requests from the outside client's own address to `/private` are denied, whatever it
/// claims in `x-forwarded-for` unless a trusted proxy says so.
fn deny_outside(outside: &str) -> String {
    format!(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-outside, namespace: edge}}
spec:
  selector: {{matchLabels: {{istio: ingressgateway}}}}
  action: DENY
  rules:
  - from: [{{source: {{remoteIpBlocks: ["{outside}/32"]}}}}]
    to: [{{operation: {{paths: [/private]}}}}]
"#
    )
}

fn statuses(answer: &serde_json::Value) -> Vec<u64> {
    answer["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| r["status"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_edge_limits_rates_trusts_forwarded_for_as_configured_and_refuses_oversize_requests() {
    let mut gateway_pod = PodSpec::client("ingress", "node1", "edge")
        .not_enrolled()
        .with_service_account("ingress");
    gateway_pod.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
    let mesh = Mesh::start(
        vec![
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            gateway_pod,
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config: format!("{CONFIG}---{}", limited(3)),
            mesh_config: STDOUT_ACCESS_LOG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let credentials = mesh.dir().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let gateway = mesh
        .start_gateway("ingress", &credentials)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = mesh.pod(&gateway.pod).ip.to_string();
    let outside = mesh.pod("outside").ip.to_string();
    let resolve = |host: &str| format!("{host}:80:{gw}");
    let shop_resolve = resolve("shop.example.com");
    let shop = |path: &str, extra: &[&str]| {
        let url = format!("http://shop.example.com{path}");
        let mut args = vec!["--resolve", shop_resolve.as_str()];
        args.extend_from_slice(extra);
        args.push(&url);
        mesh.curl_with("outside", &args)
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || shop("/reviews", &[]).status
            == 200),
        "the gateway never served shop.example.com: {:?}\n{}",
        shop("/reviews", &[]),
        mesh.logs()
    );

    // The limited route: three tokens, then 429 on the same keep-alive connection.
    let mut session: Session = mesh
        .http_session("outside", &format!("{gw}:80"), "limited.example.com")
        .expect("a session to the gateway");
    let first = session.get("/reviews", &[], 5);
    assert_eq!(statuses(&first), [200, 200, 200, 429, 429], "{first}");
    assert_eq!(first["answers"][3]["body"], "local_rate_limited", "{first}");
    // Envoy's header on the refusal.
    let limited_resolve = resolve("limited.example.com");
    let refused = mesh.curl_with(
        "outside",
        &[
            "--resolve",
            &limited_resolve,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "http://limited.example.com/reviews",
        ],
    );
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused
            .body
            .to_ascii_lowercase()
            .contains("x-envoy-ratelimited: true"),
        "{refused:?}"
    );
    // Another route keeps serving.
    assert_eq!(shop("/reviews", &[]).status, 200);
    // Counted and logged as Istio's gateways count and log a local rate limit.
    let rate_limited_counted = || {
        mesh.waypoint_metrics(&gateway.pod).lines().any(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("response_code=\"429\"")
                && l.contains("response_flags=\"RL\"")
        })
    };
    assert!(
        mesh.eventually(Duration::from_secs(5), rate_limited_counted),
        "no 429 RL counted:\n{}",
        mesh.waypoint_metrics(&gateway.pod)
    );
    let log = mesh.log_of("gateway-ingress");
    assert!(log.contains(" 429 RL local_rate_limited "), "{log}");

    // A new budget reaches the established connection: the bucket starts again, full.
    mesh.await_waypoint(&gateway.pod, "the new budget", || {
        mesh.kubectl_apply(&limited(10))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let after = session.get("/reviews", &[], 11);
    assert_eq!(after["connection"], first["connection"], "{after}");
    let expected: Vec<u64> = [200; 10].into_iter().chain([429]).collect();
    assert_eq!(statuses(&after), expected, "{after}");
    drop(session);

    // numTrustedProxies 0 (Istio's default): the client's own address decides, whatever
    // x-forwarded-for claims; the gateway appends the peer and names it as the external address.
    mesh.await_waypoint(&gateway.pod, "the DENY policy", || {
        mesh.kubectl_apply(&deny_outside(&outside))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let spoofed = ["-H", "x-forwarded-for: 198.51.100.9"];
    assert_eq!(shop("/private", &[]).status, 403);
    let denied = shop("/private", &spoofed);
    assert_eq!(
        denied.status, 403,
        "a spoofed XFF got past the DENY: {denied:?}"
    );
    let seen = shop("/reviews", &spoofed);
    assert_eq!(seen.status, 200, "{seen:?}");
    let headers = &seen.json()["headers"];
    assert_eq!(
        headers["x-envoy-external-address"],
        outside.as_str(),
        "{seen:?}"
    );
    assert_eq!(
        headers["x-forwarded-for"],
        format!("198.51.100.9, {outside}").as_str(),
        "{seen:?}"
    );

    // One trusted proxy in front (the mesh config's default for gateways): the entry it
    // appended is the client.
    mesh.await_waypoint(&gateway.pod, "numTrustedProxies 1", || {
        mesh.set_mesh_config("defaultConfig:\n  gatewayTopology:\n    numTrustedProxies: 1\n")
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let honoured = shop("/private", &spoofed);
    assert_eq!(honoured.status, 200, "{honoured:?}");
    assert_eq!(
        honoured.json()["headers"]["x-envoy-external-address"],
        "198.51.100.9",
        "{honoured:?}"
    );
    let own = format!("x-forwarded-for: 198.51.100.9, {outside}");
    assert_eq!(shop("/private", &["-H", &own]).status, 403);
    // Without an entry, the peer is the client.
    assert_eq!(shop("/private", &[]).status, 403);

    // Oversize requests: Envoy's 60 KiB of headers; a body far over what is kept for retries.
    let big_header = format!("x-big: {}", "a".repeat(70 * 1024));
    let oversize = shop("/reviews", &["--http1.1", "-H", &big_header]);
    assert_eq!(oversize.status, 431, "{oversize:?}");
    // HTTP/2 refuses the header block itself (the h2 codec's limit): no response at all.
    let oversize = shop("/reviews", &["--http2-prior-knowledge", "-H", &big_header]);
    assert_eq!(oversize.status, 0, "{oversize:?}");
    let fits = shop("/reviews", &["--http2-prior-knowledge", "-H", "x-small: a"]);
    assert_eq!(fits.status, 200, "{fits:?}");
    let body = mesh.dir().join("oversize-body");
    std::fs::write(&body, vec![b'x'; 17 * 1024 * 1024]).unwrap();
    let upload = format!("@{}", body.display());
    // The app answers once it has read the whole body: a 200 is the body streamed through.
    let streamed = shop("/reviews", &["--data-binary", &upload]);
    assert_eq!(streamed.status, 200, "{streamed:?}");
    assert_eq!(
        shop("/reviews", &[]).status,
        200,
        "the gateway keeps serving"
    );

    drop(gateway);
}

/// The gateway pod: Istio's ingress gateway labels, outside the mesh's enrollment.
fn ingress_pod() -> PodSpec {
    let mut gateway_pod = PodSpec::client("ingress", "node1", "edge")
        .not_enrolled()
        .with_service_account("ingress");
    gateway_pod.labels = [("istio".to_string(), "ingressgateway".to_string())].into();
    gateway_pod
}

/// The Gateway of [`CONFIG`] with `weft.dev/edge-limits` set to `limits`.
fn limited_gateway(limits: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: edge
  namespace: shop
  annotations:
    weft.dev/edge-limits: "{limits}"
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: ["*"]
"#
    )
}

/// The mesh of [`CONFIG`] with its Gateway `shop/edge` as [`limited_gateway`] writes it with
/// `limits`, in the file `kubectl_apply` replaces (one Gateway `shop/edge` at a time), the
/// ingress gateway running, and its address.
fn mesh_with_limited_gateway(limits: &str) -> (Mesh, GatewayProcess, String) {
    let config = CONFIG.replacen(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: shop}\nspec:\n  selector: {istio: ingressgateway}\n  servers:\n  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n---\n",
        "",
        1,
    );
    assert_ne!(config, CONFIG, "the Gateway is replaced");
    let mesh = Mesh::start(
        vec![
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            ingress_pod(),
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config,
            config_files: vec![(
                "50-gateway-shop-edge.yaml".to_owned(),
                limited_gateway(limits),
            )],
            mesh_config: STDOUT_ACCESS_LOG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let credentials = mesh.dir().join("credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let gateway = mesh
        .start_gateway("ingress", &credentials)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = mesh.pod(&gateway.pod).ip.to_string();
    (mesh, gateway, gw)
}

#[test]
fn a_gateways_edge_limits_apply_follow_changes_on_open_connections_and_refuse_bad_values() {
    let (mesh, gateway, gw) = mesh_with_limited_gateway("{maxRequestHeadersKb: 4}");
    let shop_resolve = format!("shop.example.com:80:{gw}");
    let shop = |extra: &[&str]| {
        let mut args = vec!["--resolve", shop_resolve.as_str(), "--http1.1"];
        args.extend_from_slice(extra);
        args.push("http://shop.example.com/reviews");
        mesh.curl_with("outside", &args)
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || shop(&[]).status == 200),
        "the gateway never served shop.example.com: {:?}\n{}",
        shop(&[]),
        mesh.logs()
    );
    let header = |kib: usize| "a".repeat(kib * 1024);
    let (three, six) = (header(3), header(6));

    // 4 KiB of headers, not Envoy's 60: 6 KiB is refused as Envoy refuses it, 3 KiB passes.
    let x_big = |value: &str| format!("x-big: {value}");
    let refused = shop(&["-H", &x_big(&six)]);
    assert_eq!(refused.status, 431, "{refused:?}");
    assert_eq!(shop(&["-H", &x_big(&three)]).status, 200);

    // A kept-alive connection: 3 KiB passes, then the limit drops to 2 KiB and the idle timeout
    // to 2s; the same connection's next request is refused, and it is closed once idle.
    let mut session = mesh
        .http_session("outside", &format!("{gw}:80"), "shop.example.com")
        .expect("a session to the gateway");
    let before = session.get("/reviews", &[("x-big", three.as_str())], 1);
    assert_eq!(statuses(&before), [200], "{before}");
    mesh.await_waypoint(&gateway.pod, "the lower limits", || {
        mesh.kubectl_apply(&limited_gateway(
            "{maxRequestHeadersKb: 2, idleTimeout: 2s}",
        ))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let after = session.get("/reviews", &[("x-big", three.as_str())], 1);
    assert_eq!(after["connection"], before["connection"], "{after}");
    assert_eq!(statuses(&after), [431], "{after}");
    assert!(
        session.closed_within(Duration::from_secs(15)),
        "the idle connection was not closed by the new idle timeout"
    );
    drop(session);

    // A bad value is refused, naming the field; the last good limits keep applying.
    let rejections = mesh.controller_rejections();
    let version = mesh.waypoint_config_version(&gateway.pod);
    mesh.kubectl_apply(&limited_gateway("{maxRequestHeadersKb: 0}"))
        .unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(10), || mesh.controller_rejections()
            > rejections),
        "the controller never refused maxRequestHeadersKb: 0\n{}",
        mesh.logs()
    );
    let log = mesh.log_of("controller");
    assert!(
        log.contains("weft.dev/edge-limits.maxRequestHeadersKb"),
        "the refusal does not name the field:\n{log}"
    );
    assert_eq!(mesh.waypoint_config_version(&gateway.pod), version);
    assert_eq!(shop(&["-H", &x_big(&three)]).status, 431);
    assert_eq!(shop(&["-H", "x-small: a"]).status, 200);

    drop(gateway);
}
