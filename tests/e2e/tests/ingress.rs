//! The ingress gateway end to end, with the real binaries: the waypoint binary in the gateway
//! role runs in a pod an Istio `Gateway` selects (`istio: ingressgateway`), takes its
//! configuration from the controller (the Gateway's servers and the VirtualServices bound to
//! it) and its certificate from the controller's CA, and serves a client outside the mesh (a
//! network namespace that is not enrolled) on plain ports, reaching the mesh's pods over HBONE
//! with its own identity. Certificates come from files (local mode's credentials directory).
//! The same proxy serves a Gateway API `Gateway` of class `istio` (its pod named by the
//! `gateway.networking.k8s.io/gateway-name` label) with an HTTPRoute and a TLSRoute.
//! Needs root.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
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
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: secure}
  ports: [{name: tls, port: 8443}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews.shop.svc.cluster.local
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert, minProtocolVersion: TLSV1_2}
  - port: {number: 443, name: https-broken, protocol: HTTPS}
    hosts: [broken.example.com]
    tls: {mode: SIMPLE, credentialName: broken-cert}
  - port: {number: 443, name: tls-passthrough, protocol: TLS}
    hosts: [secure.internal]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com, broken.example.com]
  gateways: [shop-gateway]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - route: [{destination: {host: reviews, subset: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: shop}
spec:
  hosts: [secure.internal]
  gateways: [shop-gateway]
  tls:
  - match: [{sniHosts: [secure.internal], port: 443}]
    route: [{destination: {host: secure, port: {number: 8443}}}]
"#;

/// A CA and a certificate it signed for `hosts`: (CA PEM, certificate PEM, key PEM).
fn certificates(hosts: &[&str]) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Distinct names: a leaf named as its issuer would look self-signed.
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{} test CA", hosts[0]));
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params =
        CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, hosts[0]);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// What `curl -v` says from the outside client, for failure messages.
fn verbose(mesh: &Mesh, args: &[&str]) -> String {
    let output = mesh
        .testbed
        .pod_command("outside", "curl")
        .args(["-sv", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// curl's arguments for the outside client's HTTPS request to `/reviews` of
/// `shop.example.com`, resolved to the gateway by `resolve` (`host:port:address`) and verified
/// against `ca_file`, with `extra` arguments before the URL.
fn shop_https<'a>(ca_file: &'a str, resolve: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--cacert", ca_file, "--resolve", resolve];
    args.extend_from_slice(extra);
    args.push("https://shop.example.com/reviews");
    args
}

/// Waits until `gateway` answers the outside client's HTTPS request 200; panics with what
/// `curl -v` says and the mesh's logs if it never does.
fn wait_for_shop_https(mesh: &Mesh, ca_file: &str, resolve: &str, gateway: &str) {
    let args = shop_https(ca_file, resolve, &[]);
    assert!(
        mesh.eventually(Duration::from_secs(15), || mesh
            .curl_with("outside", &args)
            .status
            == 200),
        "HTTPS through {gateway} never answered 200: {:?}\n{}\n{}",
        mesh.curl_with("outside", &args),
        verbose(mesh, &args),
        mesh.logs()
    );
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// The in-mesh TLS server `secure` (openssl on 8443, a certificate for `secure.internal`),
/// which passthrough must reach untouched; its directory holds `ca.pem`.
fn secure_server(mesh: &Mesh) -> (PathBuf, Child) {
    let (ca, cert, key) = certificates(&["secure.internal"]);
    let dir = mesh.dir().join("secure");
    write(&dir.join("cert.pem"), &cert);
    write(&dir.join("key.pem"), &key);
    write(&dir.join("ca.pem"), &ca);
    let server = mesh
        .spawn_in_pod(
            "secure",
            "openssl",
            &[
                "s_server",
                "-quiet",
                "-accept",
                "8443",
                "-cert",
                dir.join("cert.pem").to_str().unwrap(),
                "-key",
                dir.join("key.pem").to_str().unwrap(),
                "-www",
            ],
        )
        .expect("start openssl s_server");
    mesh.wait_listening("secure", 8443).expect("the TLS server");
    (dir, server)
}

#[test]
fn an_outside_client_reaches_the_mesh_through_the_ingress_gateway() {
    // Istio's ingress gateway Deployment: its workload name, whatever its pod's name.
    let mut gateway_pod = PodSpec::client("ingress", "node1", "edge")
        .not_enrolled()
        .with_deployment("istio-ingressgateway")
        .with_service_account("ingress");
    gateway_pod.labels = [
        ("istio".to_string(), "ingressgateway".to_string()),
        ("app".to_string(), "istio-ingressgateway".to_string()),
    ]
    .into();
    let mesh = Mesh::start(
        vec![
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::client("secure", "node2", "shop"),
            gateway_pod,
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config: CONFIG.to_owned(),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");

    // Credentials as Istio's Secrets hold them, one directory each; the broken one's
    // certificate is not PEM.
    let credentials = mesh.dir().join("credentials");
    let (ca, cert, key) = certificates(&["shop.example.com"]);
    write(&credentials.join("shop-cert/tls.crt"), &cert);
    write(&credentials.join("shop-cert/tls.key"), &key);
    write(
        &credentials.join("broken-cert/tls.crt"),
        "not a certificate",
    );
    write(&credentials.join("broken-cert/tls.key"), &key);
    let ca_file = mesh.dir().join("shop-ca.pem");
    write(&ca_file, &ca);
    let ca_file = ca_file.to_str().unwrap().to_owned();

    let (secure_dir, mut tls_server) = secure_server(&mesh);

    let gateway = mesh
        .start_gateway("ingress", &credentials)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = mesh.pod(&gateway.pod).ip.to_string();
    let resolve = |host: &str, port: u16| format!("{host}:{port}:{gw}");

    // HTTPS with the certificate from the file, verified by the client against its CA.
    let shop_resolve = resolve("shop.example.com", 443);
    let https =
        |extra: &[&str]| mesh.curl_with("outside", &shop_https(&ca_file, &shop_resolve, extra));
    wait_for_shop_https(&mesh, &ca_file, &shop_resolve, "the gateway");
    let plain = https(&[]);
    assert_eq!(plain.json()["version"], "v1", "{}", plain.body);
    // Without tracing, a client's `x-envoy-decorator-operation` is dropped at the edge all
    // the same: it never reaches the app.
    let decorated = https(&["-H", "x-envoy-decorator-operation: chosen-by-the-client"]);
    assert_eq!(decorated.status, 200, "{decorated:?}");
    assert!(
        decorated.json()["headers"]["x-envoy-decorator-operation"].is_null(),
        "{}",
        decorated.body
    );
    // The header route applies at the edge, over HTTP/2 as over HTTP/1.1.
    for version in ["--http1.1", "--http2"] {
        let jason = https(&["-H", "end-user: jason", version]);
        assert_eq!(jason.status, 200, "{jason:?}");
        assert_eq!(jason.json()["version"], "v2", "{version}: {}", jason.body);
    }

    // HTTP is redirected to HTTPS, same host and path.
    let redirect_resolve = resolve("shop.example.com", 80);
    let redirected = mesh.curl_with(
        "outside",
        &[
            "--resolve",
            &redirect_resolve,
            "-D",
            "-",
            "-o",
            "/dev/null",
            "http://shop.example.com/reviews?x=1",
        ],
    );
    assert_eq!(redirected.status, 301, "{redirected:?}");
    assert!(
        redirected
            .body
            .to_ascii_lowercase()
            .contains("location: https://shop.example.com/reviews?x=1"),
        "{redirected:?}"
    );

    // PASSTHROUGH: the in-mesh server's own certificate reaches the client (verified against
    // its CA, not the gateway's), and its answer comes back.
    let secure_resolve = resolve("secure.internal", 443);
    let secure_ca_file = secure_dir.join("ca.pem");
    let passthrough = mesh.curl_with(
        "outside",
        &[
            "--cacert",
            secure_ca_file.to_str().unwrap(),
            "--resolve",
            &secure_resolve,
            "https://secure.internal/",
        ],
    );
    assert_eq!(passthrough.status, 200, "{passthrough:?}\n{}", mesh.logs());
    assert!(passthrough.body.contains("s_server"), "{passthrough:?}");

    // The broken credential fails its own server only: its handshake is refused while the
    // good server keeps serving on the same port.
    let broken_resolve = resolve("broken.example.com", 443);
    let broken = mesh.curl_with(
        "outside",
        &[
            "-k",
            "--resolve",
            &broken_resolve,
            "https://broken.example.com/reviews",
        ],
    );
    assert_eq!(broken.status, 0, "{broken:?}");
    assert_eq!(https(&[]).status, 200);
    let log = mesh.log_of("gateway-ingress");
    assert!(
        log.contains("credential unusable")
            && log.contains("broken-cert")
            && log.contains("shop/shop-gateway")
            && log.contains("https.443.https-broken.shop-gateway.shop"),
        "{log}"
    );
    // Repaired in place: served without a restart.
    let (broken_ca, broken_cert, broken_key) = certificates(&["broken.example.com"]);
    write(&credentials.join("broken-cert/tls.key"), &broken_key);
    write(&credentials.join("broken-cert/tls.crt"), &broken_cert);
    let broken_ca_file = mesh.dir().join("broken-ca.pem");
    write(&broken_ca_file, &broken_ca);
    let repaired = mesh.curl_with(
        "outside",
        &[
            "--cacert",
            broken_ca_file.to_str().unwrap(),
            "--resolve",
            &broken_resolve,
            "https://broken.example.com/reviews",
        ],
    );
    assert_eq!(repaired.status, 200, "{repaired:?}");

    // A rotated certificate is served to the next connection, without a restart.
    let (rotated_ca, rotated_cert, rotated_key) = certificates(&["shop.example.com"]);
    write(&credentials.join("shop-cert/tls.key"), &rotated_key);
    write(&credentials.join("shop-cert/tls.crt"), &rotated_cert);
    let rotated_ca_file = mesh.dir().join("rotated-ca.pem");
    write(&rotated_ca_file, &rotated_ca);
    let rotated_resolve = resolve("shop.example.com", 443);
    let rotated = mesh.curl_with(
        "outside",
        &[
            "--cacert",
            rotated_ca_file.to_str().unwrap(),
            "--resolve",
            &rotated_resolve,
            "https://shop.example.com/reviews",
        ],
    );
    assert_eq!(rotated.status, 200, "{rotated:?}");
    assert_eq!(
        https(&[]).status,
        0,
        "the old CA no longer verifies the new certificate"
    );

    // Istio's metrics, as its gateways report them: the gateway is the source.
    let metrics = mesh.waypoint_metrics(&gateway.pod);
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("istio_requests_total{")
                && l.contains("reporter=\"source\"")
                && l.contains("destination_service=\"reviews.shop.svc.cluster.local\"")
                && l.contains("destination_version=\"v2\"")
                && l.contains("response_code=\"200\"")
        })
        .unwrap_or_else(|| panic!("no request counted from the gateway:\n{metrics}"));
    assert!(
        line.contains("source_workload=\"istio-ingressgateway\"")
            && line.contains("source_workload_namespace=\"edge\""),
        "{line}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_tcp_connections_opened_total{")
                && l.contains("destination_service=\"secure.shop.svc.cluster.local\"")),
        "no passthrough connection counted:\n{metrics}"
    );

    let _ = tls_server.kill();
    let _ = tls_server.wait();
    drop(gateway);
}

const GATEWAY_API_CONFIG: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: reviews-v1, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: reviews, version: v1}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: reviews-v2, namespace: shop}
spec:
  clusterIP: 10.96.0.22
  selector: {app: reviews, version: v2}
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: secure, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: secure}
  ports: [{name: tls, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: shop-edge, namespace: shop}
spec:
  gatewayClassName: istio
  listeners:
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shop.example.com
    tls: {mode: Terminate, certificateRefs: [{kind: Secret, name: shop-cert}]}
  - {name: tls, port: 443, protocol: TLS, hostname: secure.internal, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop}
spec:
  parentRefs: [{name: shop-edge, sectionName: https}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: reviews-v2, port: 80}]
  - backendRefs: [{name: reviews-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: shop}
spec:
  parentRefs: [{name: shop-edge, sectionName: tls}]
  hostnames: [secure.internal]
  rules: [{backendRefs: [{name: secure, port: 8443}]}]
"#;

#[test]
fn a_gateway_api_gateway_terminates_https_and_passes_tls_through() {
    let mut gateway_pod = PodSpec::client("shop-edge-istio", "node1", "shop")
        .not_enrolled()
        .with_service_account("shop-edge-istio");
    gateway_pod.labels = [(
        "gateway.networking.k8s.io/gateway-name".to_string(),
        "shop-edge".to_string(),
    )]
    .into();
    let mesh = Mesh::start(
        vec![
            PodSpec::app("reviews-v1", "node1", "shop", "reviews", "v1"),
            PodSpec::app("reviews-v2", "node2", "shop", "reviews", "v2"),
            PodSpec::client("secure", "node2", "shop"),
            gateway_pod,
            PodSpec::client("outside", "node2", "outside").not_enrolled(),
        ],
        MeshOptions {
            config: GATEWAY_API_CONFIG.to_owned(),
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");

    // The listener's certificateRefs name the Secret; local mode holds it as a directory.
    let credentials = mesh.dir().join("credentials");
    let (ca, cert, key) = certificates(&["shop.example.com"]);
    write(&credentials.join("shop-cert/tls.crt"), &cert);
    write(&credentials.join("shop-cert/tls.key"), &key);
    let ca_file = mesh.dir().join("shop-ca.pem");
    write(&ca_file, &ca);
    let ca_file = ca_file.to_str().unwrap().to_owned();

    let (secure_dir, mut tls_server) = secure_server(&mesh);

    let gateway = mesh
        .start_gateway("shop-edge-istio", &credentials)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = mesh.pod(&gateway.pod).ip.to_string();
    let shop_resolve = format!("shop.example.com:443:{gw}");
    let https =
        |extra: &[&str]| mesh.curl_with("outside", &shop_https(&ca_file, &shop_resolve, extra));
    wait_for_shop_https(&mesh, &ca_file, &shop_resolve, "the Gateway API gateway");
    // The HTTPRoute's rules: the catch-all to v1, the header match to v2.
    let plain = https(&[]);
    assert_eq!(plain.json()["version"], "v1", "{}", plain.body);
    let jason = https(&["-H", "end-user: jason"]);
    assert_eq!(jason.status, 200, "{jason:?}");
    assert_eq!(jason.json()["version"], "v2", "{}", jason.body);

    // A hostname no listener serves gets no certificate: the handshake is refused.
    let other_resolve = format!("other.example.com:443:{gw}");
    let other = mesh.curl_with(
        "outside",
        &[
            "-k",
            "--resolve",
            &other_resolve,
            "https://other.example.com/",
        ],
    );
    assert_eq!(other.status, 0, "{other:?}");

    // The TLS listener passes the in-mesh server's own TLS through, by the TLSRoute.
    let secure_resolve = format!("secure.internal:443:{gw}");
    let passthrough = mesh.curl_with(
        "outside",
        &[
            "--cacert",
            secure_dir.join("ca.pem").to_str().unwrap(),
            "--resolve",
            &secure_resolve,
            "https://secure.internal/",
        ],
    );
    assert_eq!(passthrough.status, 200, "{passthrough:?}\n{}", mesh.logs());
    assert!(passthrough.body.contains("s_server"), "{passthrough:?}");

    let _ = tls_server.kill();
    let _ = tls_server.wait();
    drop(gateway);
}

const MUTUAL_CONFIG: &str = r#"
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
metadata: {name: mutual-gateway, namespace: edge}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-optional, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: OPTIONAL_MUTUAL, credentialName: shop-cert}
  - port: {number: 443, name: https-mesh, protocol: HTTPS}
    hosts: [mesh.example.com]
    tls: {mode: ISTIO_MUTUAL}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: edge}
spec:
  hosts: [shop.example.com, mesh.example.com]
  gateways: [mutual-gateway]
  http:
  - route: [{destination: {host: reviews.shop.svc.cluster.local}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: buyers-only, namespace: edge}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules:
  - from: [{source: {notPrincipals: [cluster.local/ns/outside/sa/buyer]}}]
    to: [{operation: {hosts: [mesh.example.com]}}]
"#;

/// A certificate the mesh's CA issues to `outside/<service_account>`, as it issues workload
/// certificates (a CSR for that identity): (chain PEM, key PEM).
fn mesh_certificate(mesh: &Mesh, service_account: &str) -> (String, String) {
    let ca = weft_identity::CertificateAuthority::load(&mesh.ca_dir()).expect("the mesh's CA");
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let identity = weft_identity::SpiffeId::new("cluster.local", "outside", service_account)
        .expect("an identity");
    let chain = ca
        .sign_csr(&csr, &identity, Duration::from_secs(3600))
        .expect("the CA signs");
    (chain.to_pem_list().concat(), key.serialize_pem())
}

#[test]
fn optional_mutual_and_istio_mutual_servers_check_client_certificates() {
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
            config: MUTUAL_CONFIG.to_owned(),
            log_requests: true,
            ..MeshOptions::default()
        },
    )
    .expect("start the mesh");

    // The server's credential, with the CA that verifies clients (`ca.crt`, Istio's key).
    let credentials = mesh.dir().join("credentials");
    let (server_ca, cert, key) = certificates(&["shop.example.com"]);
    let (client_ca, client_cert, client_key) = certificates(&["client.example.com"]);
    let (_, foreign_cert, foreign_key) = certificates(&["foreign.example.com"]);
    write(&credentials.join("shop-cert/tls.crt"), &cert);
    write(&credentials.join("shop-cert/tls.key"), &key);
    write(&credentials.join("shop-cert/ca.crt"), &client_ca);
    let files = mesh.dir().join("clients");
    let (buyer_cert, buyer_key) = mesh_certificate(&mesh, "buyer");
    let (stranger_cert, stranger_key) = mesh_certificate(&mesh, "stranger");
    for (name, text) in [
        ("server-ca.pem", server_ca.as_str()),
        ("client.pem", &client_cert),
        ("client.key", &client_key),
        ("foreign.pem", &foreign_cert),
        ("foreign.key", &foreign_key),
        ("buyer.pem", &buyer_cert),
        ("buyer.key", &buyer_key),
        ("stranger.pem", &stranger_cert),
        ("stranger.key", &stranger_key),
    ] {
        write(&files.join(name), text);
    }
    let file = |name: &str| files.join(name).to_str().unwrap().to_owned();
    let identity = |name: &str| {
        vec![
            "--cert".to_owned(),
            file(&format!("{name}.pem")),
            "--key".to_owned(),
            file(&format!("{name}.key")),
        ]
    };

    let gateway = mesh
        .start_gateway("ingress", &credentials)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let gw = mesh.pod(&gateway.pod).ip.to_string();

    // OPTIONAL_MUTUAL: a client without a certificate and one with a certificate the CA
    // signed both pass; one another CA signed is refused at the handshake.
    let shop_resolve = format!("shop.example.com:443:{gw}");
    let server_ca_file = file("server-ca.pem");
    let optional = |client: &[String]| {
        let client: Vec<&str> = client.iter().map(String::as_str).collect();
        mesh.curl_with(
            "outside",
            &shop_https(&server_ca_file, &shop_resolve, &client),
        )
    };
    wait_for_shop_https(
        &mesh,
        &server_ca_file,
        &shop_resolve,
        "the OPTIONAL_MUTUAL server",
    );
    let verified = optional(&identity("client"));
    assert_eq!(verified.status, 200, "{verified:?}");
    assert_eq!(verified.json()["version"], "v1", "{}", verified.body);
    let foreign = optional(&identity("foreign"));
    assert_eq!(
        foreign.status, 0,
        "a certificate another CA signed: {foreign:?}"
    );
    assert_eq!(optional(&[]).status, 200, "no certificate is fine");

    // ISTIO_MUTUAL: the gateway's mesh certificate, a mesh-issued client certificate required;
    // its identity is the principal the AuthorizationPolicy matches.
    let mesh_resolve = format!("mesh.example.com:443:{gw}");
    let istio_mutual = |client: &[String]| {
        let mut args = vec!["-k", "--resolve", mesh_resolve.as_str()];
        args.extend(client.iter().map(String::as_str));
        args.push("https://mesh.example.com/reviews");
        mesh.curl_with("outside", &args)
    };
    let buyer = istio_mutual(&identity("buyer"));
    assert_eq!(
        buyer.status,
        200,
        "{buyer:?}\n{}\n{}",
        verbose(
            &mesh,
            &[
                "-k",
                "--resolve",
                &mesh_resolve,
                "--cert",
                &file("buyer.pem"),
                "--key",
                &file("buyer.key"),
                "https://mesh.example.com/reviews"
            ]
        ),
        mesh.logs()
    );
    let stranger = istio_mutual(&identity("stranger"));
    assert_eq!(
        stranger.status, 403,
        "another mesh identity is denied by principal: {stranger:?}"
    );
    let anonymous = istio_mutual(&[]);
    assert_eq!(anonymous.status, 0, "no certificate: {anonymous:?}");
    let outsider = istio_mutual(&identity("client"));
    assert_eq!(
        outsider.status, 0,
        "a certificate the mesh did not issue: {outsider:?}"
    );
}
