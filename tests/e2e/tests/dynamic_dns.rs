//! A wildcard ServiceEntry host with `resolution: DYNAMIC_DNS` at a waypoint, as Istio's
//! ambient mode serves it: the controller allocates the wildcard one address, the client's
//! agent answers every name under it with that address and carries the connection to the
//! waypoint, which routes it by the wildcard's VirtualService and resolves the request's Host
//! (a resolver the test runs in a namespace of its own) to reach the server that name stands
//! for. A name outside the wildcard is refused before anything is resolved. Mirrors to the
//! wildcard go where each copy's host resolves; a VirtualService naming one name under the
//! wildcard binds to it as Istio's waypoint binds it. Needs root.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use weft_e2e::{Mesh, MeshOptions, PodSpec};

const WAYPOINT: &str = "waypoint";
/// What the pods' resolver names: a cluster DNS address where nothing answers, so only the
/// agent (capturing port 53) can answer it.
const CLUSTER_DNS: &str = "10.96.0.10";

const WILDCARD_ENTRY: &str = r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: wild
  namespace: shop
  labels: {istio.io/use-waypoint: waypoint}
spec:
  hosts: ["*.wild.example"]
  location: MESH_EXTERNAL
  resolution: DYNAMIC_DNS
  ports:
  - {number: 8080, name: http, protocol: HTTP}
  - {number: 8443, name: tls, protocol: TLS}
  - {number: 9443, name: http-origination, protocol: HTTP}
"#;

/// TLS originated by the waypoint on port 9443, verified with the test's CA bundle (`{ca}`);
/// no `sni`: each request's host is presented and verified, as Envoy's `auto_sni` and
/// `auto_san_validation`.
const WILDCARD_ORIGINATION: &str = r#"apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: wild-origination, namespace: shop}
spec:
  host: "*.wild.example"
  trafficPolicy:
    portLevelSettings:
    - port: {number: 9443}
      tls: {mode: SIMPLE, caCertificates: "{ca}"}
"#;

/// A route on the wildcard host: a header, and a fault on one path.
const WILDCARD_ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.wild.example"]
  http:
  - match: [{uri: {prefix: /teapot}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: "*.wild.example"}}]
  - headers: {request: {set: {x-wild: through-waypoint}}}
    route: [{destination: {host: "*.wild.example"}}]
"#;

/// Mirrors to the wildcard: a copy of each request goes to what its own host resolves to (a
/// route's answer comes from there too, so that name's server sees the request twice), with
/// its Host kept, as istiod sets `disable_shadow_host_suffix_append` by default.
const WILDCARD_MIRRORED: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wild, namespace: shop}
spec:
  hosts: ["*.wild.example"]
  http:
  - match: [{uri: {prefix: /mirrored}}]
    route: [{destination: {host: "*.wild.example"}}]
    mirror: {host: "*.wild.example"}
  - route: [{destination: {host: "*.wild.example"}}]
"#;

/// A VirtualService naming one name under the wildcard: Istio's waypoint binds it to the
/// wildcard's service (the names overlap) and its routes apply to every name under it; a
/// destination naming that one name is no cluster (503 `NC`).
const CONCRETE_ROUTES: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: only-a, namespace: shop}
spec:
  hosts: [a.wild.example]
  http:
  - match: [{uri: {prefix: /concrete-destination}}]
    route: [{destination: {host: a.wild.example}}]
  - headers: {request: {set: {x-concrete: bound}}}
    route: [{destination: {host: "*.wild.example"}}]
"#;

fn mesh() -> Mesh {
    Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("alpha", "node2", "shop", "alpha", "v1").outside_cluster(),
            PodSpec::app("beta", "node2", "shop", "beta", "v1").outside_cluster(),
            PodSpec::waypoint(WAYPOINT, "node2", "shop"),
        ],
        MeshOptions {
            config: weft_e2e::waypoint_resources("shop"),
            log_requests: true,
            // The waypoint resolves with the test's resolver only: no query leaves the machine.
            waypoint_env: vec![(
                "DNS_RESOLV_CONF".to_owned(),
                "{dir}/waypoint-resolv.conf".to_owned(),
            )],
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh")
}

/// The first IPv4 address of the agents' service for `host`.
fn vip_of(state: &serde_json::Value, host: &str) -> Option<IpAddr> {
    state["services"]
        .as_array()?
        .iter()
        .find(|s| s["hostname"] == host)?["vips"]
        .as_array()?
        .iter()
        .find_map(|v| v.as_str()?.parse::<Ipv4Addr>().ok().map(IpAddr::V4))
}

/// The value of the first sample of `family` whose line holds every one of `labels`.
fn sample(metrics: &str, family: &str, labels: &[&str]) -> Option<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| labels.iter().all(|label| l.contains(label)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn names_under_a_dynamic_dns_wildcard_reach_their_own_servers_through_the_waypoint() {
    let mesh = mesh();
    let (alpha, beta) = (mesh.pod("alpha").ip, mesh.pod("beta").ip);
    // The names' real addresses, known only to the test's resolver (in alpha's namespace).
    let resolver = weft_e2e::dns::UpstreamResolver::with_records(
        &mesh,
        "alpha",
        &[
            ("a.wild.example", alpha),
            ("b.wild.example", beta),
            ("stranger.wild.example", beta),
        ],
    );
    std::fs::write(
        mesh.dir().join("waypoint-resolv.conf"),
        format!("nameserver {alpha}\n"),
    )
    .unwrap();
    std::fs::write(
        mesh.dir().join("resolv.conf"),
        format!("nameserver {alpha}\n"),
    )
    .unwrap();
    let resolv = mesh.pod_resolv_conf("shop", CLUSTER_DNS.parse().unwrap());

    mesh.kubectl_apply(WILDCARD_ENTRY).unwrap();
    mesh.kubectl_apply(WILDCARD_ROUTES).unwrap();
    mesh.await_agents("the wildcard's allocated address", |state| {
        vip_of(state, "*.wild.example").is_some()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let vip = vip_of(&mesh.config_dump("node1")["state"], "*.wild.example").unwrap();
    let IpAddr::V4(v4) = vip else { unreachable!() };
    assert_eq!(v4.octets()[..2], [240, 240], "{vip}");

    // The client's own resolver gets the wildcard's address for every name under it, from
    // its agent: the real addresses are never the client's to know.
    for name in ["a.wild.example", "b.wild.example"] {
        assert_eq!(
            mesh.resolve("client", &resolv, name),
            vec![vip],
            "{name}\n{}",
            mesh.logs()
        );
    }
    assert!(!resolver.asked("a.wild.example"), "the agent forwarded");

    // Two names, one wildcard, two servers: the waypoint resolves each request's Host.
    let get = |url: &str| mesh.curl_resolving("client", &resolv, &[url]);
    let reached = mesh.eventually(Duration::from_secs(20), || {
        get("http://a.wild.example:8080/one").status == 200
    });
    let answer = get("http://a.wild.example:8080/one");
    assert!(
        reached,
        "{} {}\n{}",
        answer.status,
        answer.body,
        mesh.logs()
    );
    assert!(answer.body.contains("\"pod\":\"alpha\""), "{}", answer.body);
    // The wildcard's VirtualService applies to every name under it.
    assert!(
        answer.body.contains("\"x-wild\":\"through-waypoint\""),
        "{}",
        answer.body
    );
    let answer = get("http://b.wild.example:8080/two");
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, mesh.logs());
    assert!(answer.body.contains("\"pod\":\"beta\""), "{}", answer.body);
    assert!(
        answer.body.contains("\"x-wild\":\"through-waypoint\""),
        "{}",
        answer.body
    );
    assert_eq!(get("http://b.wild.example:8080/teapot").status, 418);
    assert!(resolver.asked("a.wild.example") && resolver.asked("b.wild.example"));

    // A Host outside the wildcard, on the wildcard's address: refused before routing (404 NR),
    // never resolved.
    let outside = mesh.curl_resolving(
        "client",
        &resolv,
        &[
            "-H",
            "Host: elsewhere.example.org:8080",
            "http://a.wild.example:8080/",
        ],
    );
    assert_eq!(outside.status, 404, "{}", outside.body);
    assert!(!resolver.asked("elsewhere.example.org"));

    // A name under the wildcard that does not resolve fails closed: 503 with Envoy's flag.
    let unknown = get("http://c.wild.example:8080/");
    assert_eq!(unknown.status, 503, "{}", unknown.body);
    assert!(
        unknown.body.contains("DNS resolution failure"),
        "{}",
        unknown.body
    );
    assert!(resolver.asked("c.wild.example"));
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    let flagged = sample(
        &metrics,
        "istio_requests_total",
        &["response_code=\"503\"", "response_flags=\"DF\""],
    );
    assert!(flagged.is_some_and(|n| n >= 1), "{metrics}");
    let refused = sample(
        &metrics,
        "istio_requests_total",
        &["response_code=\"404\"", "response_flags=\"NR\""],
    );
    assert!(refused.is_some_and(|n| n >= 1), "{metrics}");

    // TLS passed through: the ClientHello's SNI names the server. Each server holds a
    // certificate for its own name only, which the client verifies.
    let mut servers = Vec::new();
    for (pod, name) in [("alpha", "a.wild.example"), ("beta", "b.wild.example")] {
        let (ca, cert, key) = weft_e2e::server_certificate(name);
        let file = |kind: &str, text: &str| {
            let path = mesh.dir().join(format!("{name}-{kind}.pem"));
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        let (cert, key) = (file("cert", &cert), file("key", &key));
        file("ca", &ca);
        let args = [
            "s_server", "-quiet", "-accept", "8443", "-cert", &cert, "-key", &key, "-www",
        ];
        servers.push(
            mesh.spawn_in_pod(pod, "openssl", &args)
                .expect("start openssl s_server"),
        );
        mesh.wait_listening(pod, 8443).unwrap();
    }
    let ca = |name: &str| {
        mesh.dir()
            .join(format!("{name}-ca.pem"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    for name in ["a.wild.example", "b.wild.example"] {
        let answer = mesh.curl_resolving(
            "client",
            &resolv,
            &["--cacert", &ca(name), &format!("https://{name}:8443/")],
        );
        assert_eq!(
            answer.status,
            200,
            "{name}: {}\n{}",
            answer.body,
            mesh.logs()
        );
        assert!(answer.body.contains("Cipher"), "{}", answer.body);
    }
    // A server name outside the wildcard, on the wildcard's address: no connection, no query.
    let outside = mesh.curl_resolving(
        "client",
        &resolv,
        &[
            "-k",
            "--resolve",
            &format!("elsewhere.example.org:8443:{vip}"),
            "https://elsewhere.example.org:8443/",
        ],
    );
    assert_eq!(outside.status, 0, "{}", outside.body);
    assert!(!resolver.asked("elsewhere.example.org"));

    // TLS originated by the waypoint to each name's own server: alpha's server refuses any
    // other SNI than its name (a fatal alert), beta's presents b.wild.example's certificate
    // to any SNI, which the waypoint verifies against the request's host.
    let (a_cert, a_key) = (
        mesh.dir().join("a.wild.example-cert.pem"),
        mesh.dir().join("a.wild.example-key.pem"),
    );
    let (a_cert, a_key) = (a_cert.to_str().unwrap(), a_key.to_str().unwrap());
    let strict = [
        "s_server",
        "-quiet",
        "-accept",
        "9443",
        "-cert",
        a_cert,
        "-key",
        a_key,
        "-servername",
        "a.wild.example",
        "-servername_fatal",
        "-cert2",
        a_cert,
        "-key2",
        a_key,
        "-www",
    ];
    servers.push(mesh.spawn_in_pod("alpha", "openssl", &strict).unwrap());
    mesh.wait_listening("alpha", 9443).unwrap();
    let (beta_server, beta_ca) = mesh
        .start_tls_server("beta", 9443, "b.wild.example")
        .unwrap();
    servers.push(beta_server);
    let bundle = mesh.dir().join("wild-ca-bundle.pem");
    std::fs::write(
        &bundle,
        std::fs::read_to_string(ca("a.wild.example")).unwrap()
            + &std::fs::read_to_string(beta_ca).unwrap(),
    )
    .unwrap();
    mesh.kubectl_apply(&WILDCARD_ORIGINATION.replace("{ca}", bundle.to_str().unwrap()))
        .unwrap();
    let originated = |name: &str| get(&format!("http://{name}:9443/"));
    assert!(
        mesh.eventually(Duration::from_secs(20), || originated("a.wild.example")
            .status
            == 200),
        "{:?}\n{}",
        originated("a.wild.example"),
        mesh.logs()
    );
    let answer = originated("a.wild.example");
    assert!(answer.body.contains("Cipher"), "{}", answer.body);
    let answer = originated("b.wild.example");
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, mesh.logs());
    assert!(answer.body.contains("Cipher"), "{}", answer.body);
    // A name whose server holds another name's certificate: refused by the waypoint.
    let stranger = originated("stranger.wild.example");
    assert_eq!(stranger.status, 503, "{}\n{}", stranger.body, mesh.logs());
    assert!(resolver.asked("stranger.wild.example"));
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    let failed = sample(
        &metrics,
        "istio_requests_total",
        // Refused at each of the default policy's attempts (connect-failure is retried):
        // Envoy's `UF,URX`.
        &["response_code=\"503\"", "response_flags=\"UF,URX\""],
    );
    assert!(failed.is_some_and(|n| n >= 1), "{metrics}");

    // Mirrors to the wildcard: the copy goes where its own host resolves, so b's server sees
    // the request twice (the route's and the copy, its Host kept) and a's never.
    mesh.kubectl_apply(WILDCARD_MIRRORED).unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            let answer = get("http://a.wild.example:8080/probe");
            answer.status == 200 && !answer.body.contains("x-wild")
        }),
        "the mirrored routes never applied\n{}",
        mesh.logs()
    );
    let answer = get("http://b.wild.example:8080/mirrored-once");
    assert_eq!(answer.status, 200, "{}\n{}", answer.body, mesh.logs());
    assert!(answer.body.contains("\"pod\":\"beta\""), "{}", answer.body);
    let seen = |pod: &str| {
        mesh.log_of(&format!("app-{pod}"))
            .lines()
            .filter(|l| l.contains("/mirrored-once"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(
        mesh.eventually(Duration::from_secs(10), || seen("beta").len() == 2),
        "{:?}\n{}",
        seen("beta"),
        mesh.logs()
    );
    assert!(
        seen("beta")
            .iter()
            .all(|l| l.contains("b.wild.example:8080") && !l.contains("-shadow")),
        "{:?}",
        seen("beta")
    );
    assert!(seen("alpha").is_empty(), "{:?}", seen("alpha"));

    // A VirtualService naming one name under the wildcard, the wildcard's own gone: bound to
    // the wildcard's service, its routes apply to every name under it (Istio's waypoint), and
    // a destination naming the one name is no cluster (503 `NC`, as istiod's).
    mesh.kubectl_delete("VirtualService", "shop", "wild")
        .unwrap();
    mesh.kubectl_apply(CONCRETE_ROUTES).unwrap();
    assert!(
        mesh.eventually(Duration::from_secs(20), || {
            get("http://b.wild.example:8080/other")
                .body
                .contains("\"x-concrete\":\"bound\"")
        }),
        "{:?}\n{}",
        get("http://b.wild.example:8080/other"),
        mesh.logs()
    );
    let answer = get("http://b.wild.example:8080/other");
    assert!(answer.body.contains("\"pod\":\"beta\""), "{}", answer.body);
    let answer = get("http://a.wild.example:8080/concrete-destination");
    assert_eq!(answer.status, 503, "{}", answer.body);
    let metrics = mesh.waypoint_metrics(WAYPOINT);
    let not_found = sample(
        &metrics,
        "istio_requests_total",
        &["response_code=\"503\"", "response_flags=\"NC\""],
    );
    assert!(not_found.is_some_and(|n| n >= 1), "{metrics}");

    for server in &mut servers {
        let _ = server.kill();
        let _ = server.wait();
    }
}
