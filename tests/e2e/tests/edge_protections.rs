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

const TCP_CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: echo}
  ports: [{name: tcp, port: 9000, targetPort: 9000}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo, namespace: shop}
spec:
  hosts: ["*"]
  gateways: [tcp-edge]
  tcp:
  - route: [{destination: {host: echo, port: {number: 9000}}}]
  tls:
  - match: [{sniHosts: [secure.internal]}]
    route: [{destination: {host: echo, port: {number: 9000}}}]
"#;

/// The TCP Gateway with `weft.dev/edge-limits` set to `limits`.
fn tcp_gateway(limits: &str) -> String {
    format!(
        r#"
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: tcp-edge
  namespace: shop
  annotations:
    weft.dev/edge-limits: "{limits}"
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: 31400, name: tcp, protocol: TCP}}
    hosts: ["*"]
  - port: {{number: 443, name: tls, protocol: TLS}}
    hosts: [secure.internal]
    tls: {{mode: PASSTHROUGH}}
"#
    )
}

#[test]
fn connection_rate_limits_close_tcp_connections_past_the_budget_per_server_and_per_client() {
    let mesh = Mesh::start(
        vec![
            PodSpec::app("echo-v1", "node1", "shop", "echo", "v1").with_echo_ports(&[9000]),
            ingress_pod(),
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
            PodSpec::client("outside-b", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config: TCP_CONFIG.to_owned(),
            // The file `kubectl_apply` replaces: one Gateway `shop/tcp-edge` at a time.
            config_files: vec![(
                "50-gateway-shop-tcp-edge.yaml".to_owned(),
                tcp_gateway("{}"),
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
    let target = format!("{}:31400", mesh.pod(&gateway.pod).ip);
    let connect = |pod: &str| {
        mesh.tcp_session(pod, &target)
            .expect("a session client")
            .echo("hello")
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || connect("outside").is_ok()),
        "the gateway never carried TCP: {:?}\n{}",
        connect("outside"),
        mesh.logs()
    );
    mesh.await_waypoint(&gateway.pod, "the server's budget", || {
        mesh.kubectl_apply(&tcp_gateway(
            "{connectionRateLimit: {maxTokens: 3, fillInterval: 1h}}",
        ))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Three tokens for the server, whoever connects, then closed at once.
    assert_eq!(connect("outside"), Ok("hello".to_owned()));
    assert_eq!(connect("outside-b"), Ok("hello".to_owned()));
    assert_eq!(connect("outside"), Ok("hello".to_owned()));
    let refused = connect("outside-b");
    assert!(
        refused.is_err(),
        "a fourth connection was carried: {refused:?}"
    );
    assert!(connect("outside").is_err());

    // Counted and logged as refused by a local rate limit.
    let rate_limited_counted = || {
        mesh.waypoint_metrics(&gateway.pod).lines().any(|l| {
            l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("response_flags=\"RL\"")
        })
    };
    assert!(
        mesh.eventually(Duration::from_secs(5), rate_limited_counted),
        "no RL connection counted:\n{}",
        mesh.waypoint_metrics(&gateway.pod)
    );
    let log = mesh.log_of("gateway-ingress");
    assert!(log.contains(" RL - local_rate_limited "), "{log}");

    // The PASSTHROUGH server has a bucket of its own, drawn once the ClientHello names it: three
    // connections are carried (to the echo, which is no TLS server: the client gives up), the
    // fourth is closed at once.
    let secure = format!("secure.internal:443:{}", mesh.pod(&gateway.pod).ip);
    let tls_lines = |what: &str| {
        mesh.log_of("gateway-ingress")
            .lines()
            .filter(|l| l.starts_with('[') && l.contains(":443 ") && l.contains(what))
            .count()
    };
    let tls = || {
        mesh.curl_with(
            "outside",
            &[
                "--resolve",
                &secure,
                "--max-time",
                "3",
                "https://secure.internal/",
            ],
        )
    };
    assert_eq!(tls_lines(" RL "), 0);
    for _ in 0..3 {
        tls();
    }
    assert!(
        mesh.eventually(Duration::from_secs(10), || tls_lines("outbound|9000|") == 3),
        "three TLS connections were not carried:\n{}",
        mesh.log_of("gateway-ingress")
    );
    assert_eq!(tls_lines(" RL "), 0);
    tls();
    assert!(
        mesh.eventually(Duration::from_secs(10), || tls_lines(
            " RL - local_rate_limited "
        ) == 1),
        "the fourth TLS connection was not refused:\n{}",
        mesh.log_of("gateway-ingress")
    );

    // One bucket per client address: one client's spent budget is not the other's.
    mesh.await_waypoint(&gateway.pod, "the per-client budget", || {
        mesh.kubectl_apply(&tcp_gateway(
            "{connectionRateLimit: {maxTokens: 1, fillInterval: 1h, per: client}}",
        ))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(connect("outside"), Ok("hello".to_owned()));
    assert!(connect("outside").is_err());
    assert_eq!(connect("outside-b"), Ok("hello".to_owned()));
    assert!(connect("outside-b").is_err());

    drop(gateway);
}

#[test]
fn an_http_servers_connections_are_capped_per_port_and_rate_limited_per_client() {
    let (mesh, gateway, gw) = mesh_with_limited_gateway("{maxConnections: 2}");
    let shop_resolve = format!("shop.example.com:80:{gw}");
    let shop = || {
        mesh.curl_with(
            "outside",
            &[
                "--resolve",
                shop_resolve.as_str(),
                "--max-time",
                "5",
                "http://shop.example.com/reviews",
            ],
        )
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || shop().status == 200),
        "the gateway never served shop.example.com: {:?}\n{}",
        shop(),
        mesh.logs()
    );
    // Two kept-alive connections fill the port; a third is closed at accept and counted.
    let session = || {
        let mut session = mesh
            .http_session("outside", &format!("{gw}:80"), "shop.example.com")
            .expect("a session to the gateway");
        let answer = session.get("/reviews", &[], 1);
        assert_eq!(statuses(&answer), [200], "{answer}");
        session
    };
    let first = session();
    let second = session();
    let over = shop();
    assert_eq!(over.status, 0, "a third connection was served: {over:?}");
    let over_cap = || {
        weft_test_support::prometheus::Exposition::parse(&mesh.waypoint_metrics(&gateway.pod))
            .count(
                "weft_gateway_connections_over_limit_total",
                &[("port", "80")],
            )
    };
    assert!(
        over_cap() >= 1,
        "not counted:\n{}",
        mesh.waypoint_metrics(&gateway.pod)
    );
    // The open ones keep being served, and a closed one frees its place.
    drop(first);
    assert!(
        mesh.eventually(Duration::from_secs(10), || shop().status == 200),
        "a closed connection did not free its place"
    );
    drop(second);

    // A client's budget of new connections on the HTTP server: two, then closed at once.
    mesh.await_waypoint(&gateway.pod, "the per-client connection budget", || {
        mesh.kubectl_apply(&limited_gateway(
            "{maxConnections: 2, connectionRateLimit: {maxTokens: 2, fillInterval: 1h, per: client}}",
        ))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(shop().status, 200);
    assert_eq!(shop().status, 200);
    let limited = shop();
    assert_eq!(
        limited.status, 0,
        "a third connection was served: {limited:?}"
    );
    let log = mesh.log_of("gateway-ingress");
    assert!(log.contains(" RL - local_rate_limited "), "{log}");

    drop(gateway);
}

/// The app's count of the requests it read (`GET /control/requests`, through the gateway).
fn app_tally(mesh: &Mesh, shop_resolve: &str) -> serde_json::Value {
    let tally = mesh.curl_with(
        "outside",
        &[
            "--resolve",
            shop_resolve,
            "http://shop.example.com/control/requests",
        ],
    );
    assert_eq!(tally.status, 200, "{tally:?}");
    tally.json()
}

#[test]
fn the_whole_request_is_bounded_in_time_and_size_over_http1_and_http2() {
    // One MiB of body, two seconds for the whole request.
    const CAP: u64 = 1024 * 1024;
    let (mesh, gateway, gw) =
        mesh_with_limited_gateway(&format!("{{requestTimeout: 2s, maxRequestBytes: {CAP}}}"));
    let shop_resolve = format!("shop.example.com:80:{gw}");
    let post = |version: &str, extra: &[&str]| {
        let mut args = vec!["--resolve", shop_resolve.as_str(), version, "-X", "POST"];
        args.extend_from_slice(extra);
        args.push("http://shop.example.com/reviews");
        mesh.curl_with("outside", &args)
    };
    assert!(
        mesh.eventually(Duration::from_secs(15), || post("--http1.1", &[]).status
            == 200),
        "the gateway never served shop.example.com\n{}",
        mesh.logs()
    );
    // Over HTTP/1.1, curl; over HTTP/2, a client that sends the body piece by piece and reads
    // an early answer as one (curl 7.88 reports a stream the server ends early as a failure).
    let target = format!("{gw}:80");
    let upload = |version: &str, curl: &[&str], h2: &[&str]| {
        if version == "--http1.1" {
            return post(version, curl);
        }
        let mut args = vec![
            "h2-upload",
            "--target",
            target.as_str(),
            "--authority",
            "shop.example.com",
            "--path",
            "/reviews",
        ];
        args.extend_from_slice(h2);
        let answer = mesh.mesh_client("outside", &args);
        weft_e2e::curl::CurlResult {
            status: u16::try_from(answer["status"].as_u64().unwrap_or(0)).unwrap_or(0),
            body: answer["body"].as_str().unwrap_or_default().to_owned(),
            seconds: answer["ms"].as_f64().unwrap_or(0.0) / 1000.0,
        }
    };
    let body_file = |name: &str, bytes: u64| {
        let path = mesh.dir().join(name);
        std::fs::write(&path, vec![b'x'; usize::try_from(bytes).unwrap()]).unwrap();
        format!("@{}", path.display())
    };
    let within = body_file("within", CAP / 4);
    let trickled = body_file("trickled", CAP / 2);
    let over = body_file("over", 2 * CAP);
    let counted = |tally: &serde_json::Value| {
        (
            tally["completed"].as_u64().unwrap_or(u64::MAX),
            tally["broken"].as_u64().unwrap_or(u64::MAX),
        )
    };
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let before = counted(&app_tally(&mesh, &shop_resolve));

        // Within both limits: the app reads the whole body.
        let fits = post(version, &["--data-binary", &within]);
        assert_eq!(fits.status, 200, "{version}: {fits:?}");
        assert_eq!(fits.json()["body_bytes"], CAP / 4, "{version}: {fits:?}");

        // Headers, then a body trickling at 16 KiB/s (32 s for all of it): 408 at the
        // request timeout, and the app never gets the request whole.
        let slow = upload(
            version,
            &["--limit-rate", "16K", "--data-binary", &trickled],
            &[
                "--content-length",
                "524288",
                "--pieces",
                "32",
                "--interval-ms",
                "1000",
            ],
        );
        assert_eq!(slow.status, 408, "{version}: {slow:?}");
        assert_eq!(slow.body, "request timeout", "{version}: {slow:?}");
        assert!(
            (1.5..6.0).contains(&slow.seconds),
            "{version}: answered after {}s, not at the 2s timeout",
            slow.seconds
        );

        // A declared length over the cap: 413 before anything goes upstream.
        let declared = upload(
            version,
            &["--data-binary", &over],
            &["--content-length", "2097152", "--pieces", "1"],
        );
        assert_eq!(declared.status, 413, "{version}: {declared:?}");
        assert_eq!(
            declared.body, "Payload Too Large",
            "{version}: {declared:?}"
        );

        // A body of no declared length far over the cap (endless, over HTTP/1.1): cut at the
        // cap, 413.
        let endless = upload(
            version,
            &["-T", "/dev/zero"],
            &["--piece-bytes", "65536", "--pieces", "64"],
        );
        assert_eq!(endless.status, 413, "{version}: {endless:?}");

        // The app read one request whole (the one within the limits); the trickled and the
        // endless ones broke off, the declared one never came; none gave it more than the cap.
        let settled = || {
            let tally = app_tally(&mesh, &shop_resolve);
            (counted(&tally) == (before.0 + 1, before.1 + 2)).then_some(tally)
        };
        let mut tally = None;
        assert!(
            mesh.eventually(Duration::from_secs(10), || {
                tally = settled();
                tally.is_some()
            }),
            "{version}: the app's requests are not one whole and two broken off: {} (before: {before:?})",
            app_tally(&mesh, &shop_resolve)
        );
        let largest = tally.unwrap()["largest_body"].as_u64().unwrap();
        assert!(largest <= CAP, "{version}: the app got {largest} bytes");
    }

    // Counted and logged as Envoy's local replies: no response flag, Envoy's details.
    let metrics = mesh.waypoint_metrics(&gateway.pod);
    for code in ["408", "413"] {
        assert!(
            metrics.lines().any(|l| {
                l.starts_with("istio_requests_total{")
                    && l.contains(&format!("response_code=\"{code}\""))
                    && l.contains("response_flags=\"-\"")
            }),
            "no {code} counted:\n{metrics}"
        );
    }
    let log = mesh.log_of("gateway-ingress");
    assert!(log.contains(" 408 - request_overall_timeout "), "{log}");
    assert!(log.contains(" 413 - request_payload_too_large "), "{log}");

    drop(gateway);
}
