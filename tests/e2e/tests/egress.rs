//! Egress control, as Istio's ambient mode does it: a waypoint serving a ServiceEntry is the
//! mesh's egress gateway (Istio's "Egress gateways" task for ambient). An enrolled client
//! reaches an HTTPS server outside the mesh (a testbed namespace no Pod object names) in plain
//! HTTP through the egress waypoint, which originates TLS toward it (DestinationRule
//! `tls.mode: SIMPLE`, SNI, the CA to verify), counts and logs the request, and lets only some
//! paths through (an L7 AuthorizationPolicy targeting the ServiceEntry). With the mesh's
//! `outboundTrafficPolicy.mode` REGISTRY_ONLY, the client's direct attempt at the server's
//! address is refused by its node agent and counted under `BlackHoleCluster`; ALLOW_ANY (the
//! default, and again after the change) passes it through, counted under `PassthroughCluster`.
//! Needs root.

use std::time::Duration;

use weft_e2e::{Mesh, MeshOptions, PodSpec};
use weft_test_support::prometheus::Exposition;

/// The ServiceEntry's VIP (nothing answers there: the agents send it to the waypoint).
const VIP: &str = "10.96.210.10";
const HOST: &str = "api.external.example";
/// The external server's HTTPS port.
const TLS_PORT: u16 = 8443;

fn mesh() -> Mesh {
    Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("external", "node2", "shop", "external", "v1").outside_cluster(),
            PodSpec::waypoint("waypoint", "node2", "shop"),
        ],
        MeshOptions {
            config: weft_e2e::waypoint_resources("shop"),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh")
}

/// The ServiceEntry of the external host, using the waypoint, with its `ports` and
/// `endpoints` entries.
fn external_entry(ports: &str, endpoints: &str) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: external-api
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  hosts: [{HOST}]
  addresses: [{VIP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports:
{ports}
  endpoints:
{endpoints}"#
    )
}

/// The external host, its port 80 carried by the egress waypoint to the server's TLS port,
/// with TLS originated there, and only GET on `/allowed/*` let through.
fn egress_config(endpoint: &str, ca_file: &str) -> String {
    let entry = external_entry(
        &format!("  - {{number: 80, name: http, protocol: HTTP, targetPort: {TLS_PORT}}}"),
        &format!("  - {{address: {endpoint}}}"),
    );
    format!(
        r#"{entry}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: external-api-tls, namespace: shop}}
spec:
  host: {HOST}
  trafficPolicy:
    tls: {{mode: SIMPLE, sni: {HOST}, caCertificates: {ca_file}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: external-api-paths, namespace: shop}}
spec:
  targetRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: external-api}}]
  action: ALLOW
  rules: [{{to: [{{operation: {{methods: [GET], paths: [/allowed/*]}}}}]}}]
"#
    )
}

fn connections(mesh: &Mesh, labels: &[(&str, &str)]) -> u64 {
    Exposition::parse(&mesh.metrics("node1")).count("istio_tcp_connections_opened_total", labels)
}

#[test]
fn the_egress_waypoint_originates_tls_and_registry_only_refuses_the_direct_path() {
    let mesh = mesh();
    // The external server answers only TLS (any GET: a page describing the TLS session).
    let (mut server, ca) = mesh
        .start_tls_server("external", TLS_PORT, HOST)
        .expect("the external TLS server");
    let external = mesh.pod("external").ip.to_string();
    mesh.kubectl_apply(&egress_config(&external, ca.to_str().unwrap()))
        .unwrap();

    // Through the egress waypoint: plain HTTP from the client, TLS to the server, verified.
    let url = |path: &str| format!("http://{VIP}{path}");
    let reached = mesh.eventually(Duration::from_secs(30), || {
        let answer = mesh.curl_with("client", &[&url("/allowed/report")]);
        answer.status == 200 && answer.body.contains("Cipher")
    });
    assert!(
        reached,
        "the egress waypoint never reached the server\n{}",
        mesh.logs()
    );
    // Counted at the waypoint under the ServiceEntry's host.
    let metrics = Exposition::parse(&mesh.waypoint_metrics("waypoint"));
    let through = [
        ("reporter", "waypoint"),
        ("destination_service", HOST),
        ("destination_service_name", "external-api"),
        ("response_code", "200"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
    ];
    assert!(
        metrics.count("istio_requests_total", &through) >= 1,
        "{metrics:?}"
    );
    // Only the allowed paths: the others are refused at the waypoint.
    let forbidden = mesh.curl_with("client", &[&url("/admin")]);
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    let forbidden = mesh.curl_with("client", &["-X", "POST", &url("/allowed/report")]);
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);

    // ALLOW_ANY (Istio's default): the direct path to the server's address passes through.
    let direct = format!("https://{external}:{TLS_PORT}/");
    let direct_args = ["-k", "--max-time", "5", direct.as_str()];
    let passthrough = [("destination_service_name", "PassthroughCluster")];
    assert_eq!(mesh.curl_with("client", &direct_args).status, 200);
    assert!(
        connections(&mesh, &passthrough) >= 1,
        "{}",
        mesh.metrics("node1")
    );

    // REGISTRY_ONLY: refused by the client's agent, counted under BlackHoleCluster with `UH`;
    // the ServiceEntry's host stays reachable.
    mesh.set_mesh_config("outboundTrafficPolicy:\n  mode: REGISTRY_ONLY\n")
        .unwrap();
    mesh.await_agents("REGISTRY_ONLY", |state| {
        state["outbound_traffic_policy"] == "REGISTRY_ONLY"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    let refused = mesh.curl_with("client", &direct_args);
    assert_eq!(refused.status, 0, "{}", refused.body);
    let black_hole = [
        ("reporter", "source"),
        ("destination_service", "unknown"),
        ("destination_service_name", "BlackHoleCluster"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
    ];
    assert!(
        connections(&mesh, &black_hole) >= 1,
        "{}",
        mesh.metrics("node1")
    );
    let closed = Exposition::parse(&mesh.metrics("node1")).count(
        "istio_tcp_connections_closed_total",
        &[
            ("destination_service_name", "BlackHoleCluster"),
            ("response_flags", "UH"),
        ],
    );
    assert!(closed >= 1, "{}", mesh.metrics("node1"));
    assert_eq!(
        mesh.curl_with("client", &[&url("/allowed/report")]).status,
        200
    );

    // Back to ALLOW_ANY: the next connection passes through again.
    mesh.set_mesh_config("outboundTrafficPolicy:\n  mode: ALLOW_ANY\n")
        .unwrap();
    mesh.await_agents("ALLOW_ANY", |state| {
        state["outbound_traffic_policy"] == "ALLOW_ANY"
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(mesh.curl_with("client", &direct_args).status, 200);
    let _ = server.kill();
    let _ = server.wait();
}

/// A second external host on the same server, its TLS origination's CA from the credential
/// `credential` (a DestinationRule `credentialName`), served at `vip`.
fn credential_config(
    name: &str,
    host: &str,
    vip: &str,
    endpoint: &str,
    credential: &str,
) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: {name}
  namespace: shop
  labels: {{istio.io/use-waypoint: waypoint}}
spec:
  hosts: [{host}]
  addresses: [{vip}]
  location: MESH_EXTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: {TLS_PORT}}}]
  endpoints: [{{address: {endpoint}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}-tls, namespace: shop}}
spec:
  host: {host}
  trafficPolicy:
    tls: {{mode: SIMPLE, sni: {HOST}, credentialName: {credential}}}
"#
    )
}

#[test]
fn tls_origination_takes_its_ca_from_a_credential_and_a_missing_one_fails_only_its_cluster() {
    let mesh = mesh();
    let (mut server, ca) = mesh
        .start_tls_server("external", TLS_PORT, HOST)
        .expect("the external TLS server");
    let external = mesh.pod("external").ip.to_string();
    // The waypoint's credentials, laid out as the gateways' (Istio's Secret keys as files).
    let credentials = mesh.waypoint_credentials("waypoint");
    std::fs::create_dir_all(credentials.join("external-ca")).unwrap();
    std::fs::copy(&ca, credentials.join("external-ca").join("ca.crt")).unwrap();
    let (other_ca, _, _) = weft_e2e::server_certificate("someone.else.example");
    std::fs::create_dir_all(credentials.join("other-ca")).unwrap();
    std::fs::write(credentials.join("other-ca").join("ca.crt"), other_ca).unwrap();
    let config = [
        credential_config(
            "with-secret",
            "secret.external.example",
            "10.96.210.30",
            &external,
            "external-ca",
        ),
        credential_config(
            "without-secret",
            "missing.external.example",
            "10.96.210.31",
            &external,
            "no-such-secret",
        ),
        credential_config(
            "wrong-ca",
            "wrong.external.example",
            "10.96.210.32",
            &external,
            "other-ca",
        ),
    ]
    .join("---\n");
    mesh.kubectl_apply(&config).unwrap();

    // The credential's CA verifies the server: plain HTTP from the client, TLS to the server.
    let reached = mesh.eventually(Duration::from_secs(30), || {
        let answer = mesh.curl_with("client", &["http://10.96.210.30/report"]);
        answer.status == 200 && answer.body.contains("Cipher")
    });
    assert!(
        reached,
        "the credential's cluster never reached the server\n{}",
        mesh.logs()
    );

    // The missing Secret fails its cluster closed, with Envoy's answer and flag, and reports
    // the DestinationRule and the field; the other host keeps working.
    let failed = mesh.curl_with("client", &["http://10.96.210.31/report"]);
    assert_eq!(failed.status, 503, "{}", failed.body);
    assert!(
        failed.body.contains("connection failure"),
        "{}",
        failed.body
    );
    let metrics = Exposition::parse(&mesh.waypoint_metrics("waypoint"));
    let flagged = [
        ("destination_service", "missing.external.example"),
        ("response_code", "503"),
        // Failed at each of the default policy's attempts: Envoy's `UF,URX`.
        ("response_flags", "UF,URX"),
    ];
    assert!(
        metrics.count("istio_requests_total", &flagged) >= 1,
        "{metrics:?}"
    );
    let logs = mesh.log_of("waypoint-waypoint");
    assert!(
        logs.contains("without-secret-tls")
            && logs.contains("spec.trafficPolicy.tls.credentialName")
            && logs.contains("no-such-secret"),
        "the missing credential was not reported\n{logs}"
    );
    assert_eq!(
        mesh.curl_with("client", &["http://10.96.210.30/report"])
            .status,
        200
    );

    // A credential whose CA does not sign the server's certificate: the handshake fails (closed).
    let wrong = mesh.curl_with("client", &["http://10.96.210.32/report"]);
    assert_eq!(wrong.status, 503, "{}", wrong.body);
    let _ = server.kill();
    let _ = server.wait();
}

// ---------------------------------------------------------------------------------------------
// Istio's egress gateway (networking.istio.io `Gateway`), as its "Egress Gateways" and "Egress
// Gateways with TLS Origination" tasks configure it: a VirtualService bound to `mesh` and to
// the gateway sends the host's mesh traffic to the gateway's Service, and the gateway's own
// route sends it on to the host's port 443, where a DestinationRule originates TLS. In an
// ambient mesh only waypoints apply VirtualServices bound to `mesh`: the ServiceEntry uses a
// waypoint, which applies the mesh route (the one line an ambient mesh adds to the tasks'
// YAML), and it lists its address (until addresses are allocated automatically).

const GATEWAY_VIP: &str = "10.96.210.20";

fn egress_gateway_config(endpoint: &str, ca_file: &str) -> String {
    let entry = external_entry(
        "  - {number: 80, name: http, protocol: HTTP}\n  - {number: 443, name: https, protocol: HTTPS}",
        &format!("  - {{address: {endpoint}, ports: {{http: 8080, https: {TLS_PORT}}}}}"),
    );
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: istio-egressgateway, namespace: istio-system}}
spec:
  clusterIP: {GATEWAY_VIP}
  selector: {{istio: egressgateway}}
  ports: [{{name: http2, port: 80}}]
---
{entry}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: istio-egressgateway, namespace: shop}}
spec:
  selector: {{istio: egressgateway}}
  servers:
  - port: {{number: 80, name: http, protocol: HTTP}}
    hosts: [{HOST}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: egressgateway-for-external, namespace: shop}}
spec:
  host: istio-egressgateway.istio-system.svc.cluster.local
  subsets: [{{name: external}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: direct-external-through-egress-gateway, namespace: shop}}
spec:
  hosts: [{HOST}]
  gateways: [istio-egressgateway, mesh]
  http:
  - match: [{{gateways: [mesh], port: 80}}]
    route:
    - destination:
        host: istio-egressgateway.istio-system.svc.cluster.local
        subset: external
        port: {{number: 80}}
      weight: 100
  - match: [{{gateways: [istio-egressgateway], port: 80}}]
    route:
    - destination:
        host: {HOST}
        port: {{number: 443}}
      weight: 100
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: originate-tls-for-external, namespace: shop}}
spec:
  host: {HOST}
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 443}}
      tls: {{mode: SIMPLE, sni: {HOST}, caCertificates: {ca_file}}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: egress-allowed-paths, namespace: istio-system}}
spec:
  selector: {{matchLabels: {{istio: egressgateway}}}}
  action: ALLOW
  rules: [{{to: [{{operation: {{paths: [/allowed/*]}}}}]}}]
"#
    )
}

#[test]
fn mesh_traffic_leaves_through_the_egress_gateway_which_originates_tls() {
    // Istio's egress gateway Deployment: its workload name, whatever its pod's name.
    let mut gateway_pod = PodSpec::client("egressgateway", "node1", "istio-system")
        .not_enrolled()
        .with_deployment("istio-egressgateway")
        .with_service_account("istio-egressgateway");
    gateway_pod.labels = [
        ("istio".to_string(), "egressgateway".to_string()),
        ("app".to_string(), "istio-egressgateway".to_string()),
    ]
    .into();
    let mesh = Mesh::start(
        vec![
            PodSpec::client("client", "node1", "shop"),
            PodSpec::app("external", "node2", "shop", "external", "v1").outside_cluster(),
            PodSpec::waypoint("waypoint", "node2", "shop"),
            gateway_pod,
        ],
        MeshOptions {
            config: weft_e2e::waypoint_resources("shop"),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");
    let (mut server, ca) = mesh
        .start_tls_server("external", TLS_PORT, HOST)
        .expect("the external TLS server");
    let external = mesh.pod("external").ip.to_string();
    mesh.kubectl_apply(&egress_gateway_config(&external, ca.to_str().unwrap()))
        .unwrap();
    let credentials = mesh.dir().join("egress-credentials");
    std::fs::create_dir_all(&credentials).unwrap();
    let _gateway = mesh
        .start_gateway("egressgateway", &credentials)
        .expect("start the egress gateway");

    // The client asks for the host by name, as the task's `curl http://edition.cnn.com/...`.
    let resolve = format!("{HOST}:80:{VIP}");
    let get = |path: &str| {
        mesh.curl_with(
            "client",
            &["--resolve", &resolve, &format!("http://{HOST}{path}")],
        )
    };
    let reached = mesh.eventually(Duration::from_secs(30), || {
        let answer = get("/allowed/report");
        answer.status == 200 && answer.body.contains("Cipher")
    });
    let answer = get("/allowed/report");
    assert!(
        reached,
        "{} {}\n{}",
        answer.status,
        answer.body,
        mesh.logs()
    );
    // Counted at the gateway as Istio's gateways report, under the external host.
    let metrics = Exposition::parse(&mesh.waypoint_metrics("egressgateway"));
    let through = [
        ("reporter", "source"),
        ("source_workload", "istio-egressgateway"),
        ("destination_service", HOST),
        ("response_code", "200"),
    ];
    assert!(
        metrics.count("istio_requests_total", &through) >= 1,
        "{metrics:?}"
    );
    // The gateway's policy lets only `/allowed/*` out.
    let forbidden = get("/admin");
    assert_eq!(forbidden.status, 403, "{}", forbidden.body);
    let _ = server.kill();
    let _ = server.wait();
}
