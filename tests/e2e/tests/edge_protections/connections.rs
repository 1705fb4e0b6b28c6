//! Connection limits at the gateway: `connectionRateLimit` for TCP and TLS passthrough servers
//! and, on an HTTP server, `maxConnections` per port and a client's connection budget.

use super::*;

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
