//! ServiceEntry applied: an enrolled pod reaches a host outside the cluster and the mesh (a
//! namespace of the testbed that no Pod object names, never enrolled) by the ServiceEntry's VIP,
//! in plain TCP from its node agent to the STATIC endpoint, counted under the ServiceEntry's
//! host and held to the endpoint's L4 policy; and an endpoint given by name, which the agent
//! resolves itself. Needs root.

use std::time::Duration;

use weft_e2e::{Mesh, MeshOptions, PodSpec, curl::answering_pods};

/// The ServiceEntry's VIP: nothing answers there, the agent resolves it.
const VIP: &str = "10.96.200.10";
const HOST: &str = "api.payments.example";

fn mesh() -> Mesh {
    Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("orders", "node1", "shop", "orders", "v1"),
            PodSpec::app("payments", "node2", "shop", "payments", "v1").outside_cluster(),
        ],
        MeshOptions::default(),
    )
    .expect("start the mesh")
}

fn service_entry(endpoint: &str) -> String {
    weft_e2e::fixtures::payments_service_entry(HOST, VIP, endpoint)
}

/// A DENY for the client, selecting the ServiceEntry's endpoints by the ServiceEntry's labels
/// (as istiod attaches selector policies to them).
const DENY_CLIENT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-payments-for-client, namespace: shop}
spec:
  selector: {matchLabels: {app: payments-api}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]}]
"#;

/// The value of the first sample of `family` whose line holds every one of `labels`.
fn sample(metrics: &str, family: &str, labels: &[&str]) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn an_external_host_is_reached_by_its_service_entry_through_the_agent() {
    let mesh = mesh();
    let endpoint = mesh.pod("payments").ip.to_string();
    mesh.kubectl_apply(&service_entry(&endpoint)).unwrap();
    mesh.await_agents("the ServiceEntry", |state| {
        state["services"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["hostname"] == HOST))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // By the VIP: the agent picks the endpoint and its port (8080, not 80), in plain TCP.
    let (status, body) = mesh.curl("client", &format!("http://{VIP}/egress"));
    assert_eq!(status, 200, "{body}\n{}", mesh.logs());
    assert!(body.contains("\"pod\":\"payments\""), "{body}");

    // Counted by the client's agent under the ServiceEntry's host, as Istio labels it.
    let host_label = format!("destination_service=\"{HOST}\"");
    let labels = [
        "reporter=\"source\"",
        host_label.as_str(),
        "destination_service_name=\"payments-api\"",
        "destination_service_namespace=\"shop\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
    ];
    let metrics = mesh.metrics("node1");
    let opened = sample(&metrics, "istio_tcp_connections_opened_total", &labels);
    assert!(opened.is_some_and(|n| n >= 1), "{metrics}");
    let received = sample(&metrics, "istio_tcp_received_bytes_total", &labels);
    assert!(received.is_some_and(|n| n > 0), "{metrics}");
    // The endpoint's node has no part in it: the traffic left from the client's agent.
    assert!(
        !mesh.metrics("node2").contains(&host_label),
        "the external host's traffic went through another agent"
    );

    // The endpoint's L4 policy, enforced by the client's agent: the next connection is refused
    // and counted with the DENY flag.
    mesh.kubectl_apply(DENY_CLIENT).unwrap();
    mesh.await_agents("the DENY policy", |state| {
        state["policies"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "no-payments-for-client"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let (status, body) = mesh.curl("client", &format!("http://{VIP}/egress"));
    assert_ne!(status, 200, "{body}");
    let denied = [host_label.as_str(), "response_flags=\"DENY\""];
    let metrics = mesh.metrics("node1");
    assert!(
        sample(&metrics, "istio_tcp_connections_closed_total", &denied).is_some_and(|n| n >= 1),
        "{metrics}"
    );
}

/// `resolution: DNS` with an endpoint by name: `localhost`, from the hosts file (no query leaves
/// the machine), which the agent connects to from inside the calling pod.
const BY_NAME: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: local-api, namespace: shop}
spec:
  hosts: [local.api.example]
  addresses: [10.96.200.20]
  location: MESH_EXTERNAL
  resolution: DNS
  ports:
  - {number: 80, name: http, protocol: HTTP}
  endpoints:
  - {address: localhost, ports: {http: 8080}}
"#;

#[test]
fn an_endpoint_given_by_name_is_resolved_by_the_agent() {
    let mesh = mesh();
    mesh.kubectl_apply(BY_NAME).unwrap();
    mesh.await_agents("the ServiceEntry", |state| {
        state["workloads"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w["hostname"] == "localhost"))
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    // The name is resolved off the connection path: retry until the agent knows its address.
    let reached = mesh.eventually(Duration::from_secs(10), || {
        let (status, body) = mesh.curl("orders", "http://10.96.200.20/by-name");
        status == 200 && body.contains("\"pod\":\"orders\"")
    });
    assert!(
        reached,
        "the endpoint by name was never reached\n{}",
        mesh.logs()
    );
    let metrics = mesh.metrics("node1");
    assert!(
        sample(
            &metrics,
            "istio_tcp_connections_opened_total",
            &["destination_service=\"local.api.example\""]
        )
        .is_some_and(|n| n >= 1),
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// `workloadSelector`: mesh pods as a ServiceEntry's endpoints.

const SELECTED_VIP: &str = "10.96.200.40";
const SELECTED_HOST: &str = "cart.internal";

/// A `MESH_INTERNAL` host backed by the pods labelled `app: cart` of its namespace, its port 80
/// to the pods' 8080.
const CART_ENTRY: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: cart-internal, namespace: shop}
spec:
  hosts: [cart.internal]
  addresses: [10.96.200.40]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: cart}}
"#;

#[test]
fn a_workload_selector_makes_the_selected_pods_the_endpoints_and_follows_them() {
    let mut mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("cart-1", "node2", "shop", "cart", "v1"),
            // Same labels, another namespace: a selector never reaches across namespaces.
            PodSpec::app("cart-other", "node2", "other", "cart", "v1"),
            PodSpec::app("orders", "node1", "shop", "orders", "v1"),
            // Not in the cluster yet: it comes up during the test.
            PodSpec::app("cart-2", "node1", "shop", "cart", "v2").outside_cluster(),
        ],
        MeshOptions::default(),
    )
    .expect("start the mesh");
    mesh.kubectl_apply(CART_ENTRY).unwrap();
    mesh.await_agents("the selected pod backing the ServiceEntry", |state| {
        state["workloads"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["name"] == "cart-1" && w["services"].to_string().contains(SELECTED_HOST))
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Each request on its own connection (the agent picks an endpoint per connection): only the
    // selected pod answers, reached over HBONE with its own identity, counted under the host.
    let url = format!("http://{SELECTED_VIP}/selected");
    let close = ["-H", "Connection: close"];
    let answers = mesh.curl_bodies("client", &url, 8, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        ["cart-1".to_owned()].into(),
        "{answers:?}\n{}",
        mesh.logs()
    );
    let host_label = format!("destination_service=\"{SELECTED_HOST}\"");
    let node1 = mesh.metrics("node1");
    assert!(
        sample(
            &node1,
            "istio_tcp_connections_opened_total",
            &[
                "reporter=\"source\"",
                host_label.as_str(),
                "destination_principal=\"spiffe://cluster.local/ns/shop/sa/cart\"",
            ]
        )
        .is_some_and(|n| n >= 8),
        "{node1}"
    );

    // A new pod with the labels joins the endpoints, without a restart of anything.
    mesh.update_pod("cart-2", |pod| {
        pod.outside_cluster = false;
        pod.enrolled = true;
    })
    .unwrap();
    mesh.await_agents("the new pod backing the ServiceEntry", |state| {
        state["workloads"].as_array().is_some_and(|w| {
            w.iter()
                .any(|w| w["name"] == "cart-2" && w["services"].to_string().contains(SELECTED_HOST))
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let answers = mesh.curl_bodies("client", &url, 16, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        ["cart-1".to_owned(), "cart-2".to_owned()].into(),
        "{answers:?}"
    );

    // A pod whose labels no longer match leaves them.
    mesh.update_pod("cart-1", |pod| {
        pod.labels.insert("app".into(), "retired".into());
    })
    .unwrap();
    mesh.await_agents("the relabelled pod leaving the ServiceEntry", |state| {
        state["workloads"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w["name"] == "cart-1" && !w["services"].to_string().contains(SELECTED_HOST)
            })
        })
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let answers = mesh.curl_bodies("client", &url, 8, &close).unwrap();
    assert_eq!(
        answering_pods(&answers),
        ["cart-2".to_owned()].into(),
        "{answers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// A ServiceEntry that uses a waypoint (`istio.io/use-waypoint`): egress control at L7.

const WAYPOINT: &str = "waypoint";
/// The VIP of the ServiceEntry served by the waypoint.
const EGRESS_VIP: &str = "10.96.200.30";
const EGRESS_HOST: &str = "egress.payments.example";

fn mesh_with_waypoint() -> Mesh {
    Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("payments", "node2", "shop", "payments", "v1").outside_cluster(),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: weft_e2e::waypoint_resources("shop"),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh")
}

/// A ServiceEntry labelled for the waypoint: `host` at `vip`, port 80 to `endpoint:port`.
fn egress_entry(
    name: &str,
    host: &str,
    vip: &str,
    resolution: &str,
    endpoint: &str,
    port: u16,
) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: shop
  labels: {{istio.io/use-waypoint: {WAYPOINT}}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  location: MESH_EXTERNAL
  resolution: {resolution}
  ports:
  - {{number: 80, name: http, protocol: HTTP}}
  endpoints:
  - {{address: {endpoint}, ports: {{http: {port}}}}}
"#
    )
}

/// Routes for the host: `/teapot` aborted with 418, everything else with a header added.
const EGRESS_ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: egress, namespace: shop}
spec:
  hosts: [egress.payments.example]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: egress.payments.example}}]
  - headers: {request: {set: {x-egress: through-waypoint}}}
    route: [{destination: {host: egress.payments.example}}]
"#;

/// Only GET on `/allowed/*` to the ServiceEntry's hosts, as the waypoint enforces it.
const EGRESS_POLICY: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: egress-get-allowed, namespace: shop}
spec:
  targetRefs: [{group: networking.istio.io, kind: ServiceEntry, name: egress}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET], paths: [/allowed/*]}}]}]
"#;

#[test]
fn an_external_host_is_reached_through_its_waypoint_with_its_routes_and_policies() {
    let mesh = mesh_with_waypoint();
    let endpoint = mesh.pod("payments").ip.to_string();
    mesh.kubectl_apply(&egress_entry(
        "egress",
        EGRESS_HOST,
        EGRESS_VIP,
        "STATIC",
        &endpoint,
        8080,
    ))
    .unwrap();
    mesh.kubectl_apply(EGRESS_ROUTES).unwrap();
    let url = |path: &str| format!("http://{EGRESS_VIP}{path}");

    // The client's agent sends the host's traffic to the waypoint, which routes it (the header
    // its VirtualService adds) to the endpoint outside the mesh, on the endpoint's port.
    let routed = mesh.eventually(Duration::from_secs(20), || {
        let answer = mesh.curl_with("client", &[&url("/allowed/one")]);
        answer.status == 200 && answer.body.contains("\"x-egress\":\"through-waypoint\"")
    });
    let answer = mesh.curl_with("client", &[&url("/allowed/one")]);
    assert!(routed, "{} {}\n{}", answer.status, answer.body, mesh.logs());
    assert!(
        answer.body.contains("\"pod\":\"payments\""),
        "{}",
        answer.body
    );
    assert_eq!(mesh.curl_with("client", &[&url("/teapot")]).status, 418);

    // Counted by the waypoint under the ServiceEntry's host.
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    let host_label = format!("destination_service=\"{EGRESS_HOST}\"");
    let labels = [
        "reporter=\"waypoint\"",
        host_label.as_str(),
        "destination_service_name=\"egress\"",
        "response_code=\"200\"",
        "source_principal=\"spiffe://cluster.local/ns/shop/sa/client\"",
    ];
    assert!(
        sample(&metrics, "istio_requests_total", &labels).is_some_and(|n| n >= 1),
        "{metrics}"
    );
    // The policy targeting the ServiceEntry: GET on /allowed/* passes, the rest is 403.
    mesh.kubectl_apply(EGRESS_POLICY).unwrap();
    let enforced = mesh.eventually(Duration::from_secs(20), || {
        mesh.curl_with("client", &[&url("/denied")]).status == 403
    });
    assert!(enforced, "the policy was never enforced\n{}", mesh.logs());
    assert_eq!(
        mesh.curl_with("client", &[&url("/allowed/two")]).status,
        200
    );
    assert_eq!(
        mesh.curl_with("client", &["-X", "POST", &url("/allowed/two")])
            .status,
        403
    );
}

#[test]
fn the_waypoint_originates_tls_to_an_external_host_and_resolves_endpoints_by_name() {
    let mesh = mesh_with_waypoint();
    let (ca, cert, key) = weft_e2e::server_certificate(EGRESS_HOST);
    let dir = mesh.dir().join("egress-tls");
    std::fs::create_dir_all(&dir).unwrap();
    for (file, text) in [("ca.pem", &ca), ("cert.pem", &cert), ("key.pem", &key)] {
        std::fs::write(dir.join(file), text).unwrap();
    }
    let path = |file: &str| dir.join(file).to_str().unwrap().to_owned();
    // A TLS server outside the mesh (it answers any GET with a page describing the TLS
    // session), and one in the waypoint's own namespace, reached by `localhost`.
    let server = |pod: &str, port: &str| {
        mesh.spawn_in_pod(
            pod,
            "openssl",
            &[
                "s_server",
                "-quiet",
                "-accept",
                port,
                "-cert",
                &path("cert.pem"),
                "-key",
                &path("key.pem"),
                "-www",
            ],
        )
        .expect("start openssl s_server")
    };
    let mut servers = [server("payments", "8443"), server(WAYPOINT, "8444")];
    mesh.wait_listening("payments", 8443).unwrap();
    mesh.wait_listening(WAYPOINT, 8444).unwrap();

    let endpoint = mesh.pod("payments").ip.to_string();
    mesh.kubectl_apply(&egress_entry(
        "egress",
        EGRESS_HOST,
        EGRESS_VIP,
        "STATIC",
        &endpoint,
        8443,
    ))
    .unwrap();
    mesh.kubectl_apply(&egress_entry(
        "by-name",
        "by-name.payments.example",
        "10.96.200.31",
        "DNS",
        "localhost",
        8444,
    ))
    .unwrap();
    let destination_rule = |host: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {}, namespace: shop}}\nspec:\n  host: {host}\n  trafficPolicy:\n    tls: {{mode: SIMPLE, sni: {EGRESS_HOST}, caCertificates: {}}}\n",
            host.split('.').next().unwrap(),
            path("ca.pem")
        )
    };
    mesh.kubectl_apply(&destination_rule(EGRESS_HOST)).unwrap();
    mesh.kubectl_apply(&destination_rule("by-name.payments.example"))
        .unwrap();

    // The client speaks plain HTTP; the servers answer only TLS, verified against the test CA.
    for vip in [EGRESS_VIP, "10.96.200.31"] {
        let reached = mesh.eventually(Duration::from_secs(20), || {
            let answer = mesh.curl_with("client", &[&format!("http://{vip}/")]);
            answer.status == 200 && answer.body.contains("Cipher")
        });
        let answer = mesh.curl_with("client", &[&format!("http://{vip}/")]);
        assert!(
            reached,
            "{vip}: {} {}\n{}",
            answer.status,
            answer.body,
            mesh.logs()
        );
    }

    // A server certificate the configured CA did not sign fails the handshake: 503, never
    // plain text and never an unverified server.
    let (other_ca, _, _) = weft_e2e::server_certificate("elsewhere.example");
    std::fs::write(dir.join("other-ca.pem"), other_ca).unwrap();
    mesh.kubectl_apply(&destination_rule(EGRESS_HOST).replace("ca.pem", "other-ca.pem"))
        .unwrap();
    let refused = mesh.eventually(Duration::from_secs(20), || {
        mesh.curl_with("client", &[&format!("http://{EGRESS_VIP}/")])
            .status
            == 503
    });
    assert!(
        refused,
        "an unverified server was accepted\n{}",
        mesh.logs()
    );
    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Istio's egress through a waypoint with a ServiceEntry that declares no address: the
// controller allocates one, the agent's DNS proxy answers the pod's own resolver with it.

/// What the pod's resolver names: a cluster DNS address where nothing answers, so only the
/// agent (capturing port 53) can answer it.
const CLUSTER_DNS: &str = "10.96.0.10";

#[test]
fn a_host_without_addresses_is_resolved_by_the_agent_and_reached_through_its_waypoint() {
    use std::net::{IpAddr, Ipv4Addr};

    let mesh = mesh_with_waypoint();
    let external = mesh.pod("payments").ip;
    // The agents' upstream resolver: the test's own, outside the mesh, knowing one name.
    let partner = Ipv4Addr::new(192, 0, 2, 77);
    let upstream =
        weft_e2e::dns::UpstreamResolver::start(&mesh, "payments", "partner.example.org", partner);
    std::fs::write(
        mesh.dir().join("resolv.conf"),
        format!("nameserver {external}\n"),
    )
    .unwrap();
    let resolv = mesh.pod_resolv_conf("shop", CLUSTER_DNS.parse().unwrap());

    let entry = egress_entry(
        "egress",
        EGRESS_HOST,
        "unused",
        "STATIC",
        &external.to_string(),
        8080,
    )
    .replace("  addresses: [unused]\n", "");
    assert!(!entry.contains("addresses"), "{entry}");
    mesh.kubectl_apply(&entry).unwrap();
    mesh.kubectl_apply(EGRESS_ROUTES).unwrap();
    let allocated = |state: &serde_json::Value| -> Option<IpAddr> {
        state["services"]
            .as_array()?
            .iter()
            .find(|s| s["hostname"] == EGRESS_HOST)?["vips"]
            .as_array()?
            .iter()
            .find_map(|v| v.as_str()?.parse::<Ipv4Addr>().ok().map(IpAddr::V4))
    };
    mesh.await_agents("the ServiceEntry's allocated address", |state| {
        allocated(state).is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let vip = allocated(&mesh.config_dump("node1")["state"]).unwrap();
    let IpAddr::V4(v4) = vip else { unreachable!() };
    assert_eq!(v4.octets()[..2], [240, 240], "{vip}");

    // The pod's own resolver (glibc, through its search domains) gets the allocated address
    // from the agent; a Kubernetes Service by its short name too.
    assert_eq!(
        mesh.resolve("client", &resolv, EGRESS_HOST),
        vec![vip],
        "{}",
        mesh.logs()
    );
    assert_eq!(
        mesh.resolve("client", &resolv, "waypoint"),
        vec!["10.96.0.2".parse::<IpAddr>().unwrap()]
    );
    // Other names go to the upstream resolver, through the agent: the pod's nameserver
    // answers nothing.
    assert_eq!(upstream.queries(), 0);
    assert_eq!(
        mesh.resolve("client", &resolv, "partner.example.org"),
        vec![IpAddr::V4(partner)]
    );
    assert!(upstream.queries() >= 1);
    assert!(
        mesh.resolve("client", &resolv, "nowhere.example.org")
            .is_empty()
    );

    // By name, through the waypoint: its route (a header, a fault) and then its policy.
    let url = |path: &str| format!("http://{EGRESS_HOST}{path}");
    let get = |path: &str| mesh.curl_resolving("client", &resolv, &[&url(path)]);
    let routed = mesh.eventually(Duration::from_secs(20), || {
        let answer = get("/allowed/one");
        answer.status == 200 && answer.body.contains("\"x-egress\":\"through-waypoint\"")
    });
    let answer = get("/allowed/one");
    assert!(routed, "{} {}\n{}", answer.status, answer.body, mesh.logs());
    assert!(
        answer.body.contains("\"pod\":\"payments\""),
        "{}",
        answer.body
    );
    assert_eq!(get("/teapot").status, 418);
    mesh.kubectl_apply(EGRESS_POLICY).unwrap();
    let enforced = mesh.eventually(Duration::from_secs(20), || get("/denied").status == 403);
    assert!(enforced, "the policy was never enforced\n{}", mesh.logs());
    assert_eq!(get("/allowed/two").status, 200);
    assert_eq!(
        mesh.curl_resolving("client", &resolv, &["-X", "POST", &url("/allowed/two")])
            .status,
        403
    );
}
