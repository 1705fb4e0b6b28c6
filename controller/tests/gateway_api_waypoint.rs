//! Gateway API route features the controller compiles, driving the real waypoint: an
//! HTTPRoute's `CORS` filter and a rule's `sessionPersistence`, through real HBONE to several
//! fake endpoints. Everything on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use controller::{index::ConfigIndex, loader, translate};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use waypoint::testing::{
    FakeEndpoint, LOCALHOST, TestIdentity, TestMesh, hbone_tunnel, resolver_for,
};
use waypoint::{Waypoint, WaypointOptions};
use weft_proto::waypoint::WaypointConfig;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));
const HOST: &str = "web.shop.svc.cluster.local:9080";

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /cors}}]
    filters:
    - type: CORS
      cors:
        allowOrigins: ["https://*.example.com"]
        allowMethods: [GET, PUT]
        allowHeaders: [x-token]
        exposeHeaders: [x-total]
        allowCredentials: true
        maxAge: 120
    backendRefs: [{name: web, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /header}}]
    sessionPersistence: {type: Header, sessionName: x-session}
    backendRefs: [{name: web, port: 9080}]
  - matches: [{path: {type: PathPrefix, value: /sticky}}]
    sessionPersistence: {sessionName: sticky}
    backendRefs: [{name: web, port: 9080}]
  - backendRefs: [{name: web, port: 9080}]
"#;

/// The mesh with a pod per endpoint of `endpoints` behind the Service `web`, and [`ROUTE`].
fn config(endpoints: &[&FakeEndpoint]) -> WaypointConfig {
    let mut yaml = format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: shop, labels: {{istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: waypoint, namespace: shop}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{{name: mesh, port: 15008, protocol: HBONE}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: waypoint-0, namespace: shop, labels: {{gateway.networking.k8s.io/gateway-name: waypoint, istio.io/dataplane-mode: none}}}}
spec: {{nodeName: node1, serviceAccountName: waypoint, containers: [{{name: waypoint, image: x}}]}}
status: {{podIP: 127.0.0.1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: shop}}
spec:
  clusterIP: {VIP}
  selector: {{app: web}}
  ports: [{{name: http, port: 9080, targetPort: http-web}}]
---
{ROUTE}"#
    );
    for endpoint in endpoints {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{}, namespace: shop, labels: {{app: web}}}}\nspec:\n  nodeName: node1\n  serviceAccountName: web\n  containers: [{{name: app, image: x, ports: [{{name: http-web, containerPort: {}}}]}}]\nstatus: {{podIP: 127.0.0.1}}\n",
            endpoint.name,
            endpoint.app_address.port()
        ));
    }
    let report = loader::load_str(std::path::Path::new("mesh.yaml"), &yaml);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    let translation = translate::translate(&index, &translate::MeshSettings::default());
    assert!(
        translation.problems.is_empty(),
        "{:?}",
        translation.problems
    );
    translation.waypoints["shop/waypoint"].clone()
}

struct Setup {
    mesh: TestMesh,
    endpoints: Vec<FakeEndpoint>,
    waypoint: Waypoint,
    address: SocketAddr,
    client: TestIdentity,
}

async fn setup() -> Setup {
    let mesh = TestMesh::new();
    let mut endpoints = Vec::new();
    for name in ["a", "b", "c"] {
        endpoints.push(FakeEndpoint::start(&mesh, name, "shop", "web").await);
    }
    let all: Vec<&FakeEndpoint> = endpoints.iter().collect();
    let material = mesh.material("shop", "waypoint");
    let mut options = WaypointOptions::new(material.identity().clone(), material.source());
    options.hbone_address = resolver_for(&all);
    let waypoint = Waypoint::new(options);
    waypoint
        .apply_config(config(&all))
        .expect("the waypoint applies it");
    let listener = waypoint
        .bind_hbone(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.address().unwrap();
    tokio::spawn(listener.run(weft_proxy_core::drain::DrainSource::never()));
    let client = mesh.material("shop", "client");
    Setup {
        mesh,
        endpoints,
        waypoint,
        address,
        client,
    }
}

impl Setup {
    /// Sends one request on a new HBONE tunnel; the answer's head and body.
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (http::response::Parts, Bytes) {
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header("host", HOST);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(Bytes::new())).unwrap();
        let tunnel = hbone_tunnel(
            &self.client,
            self.address,
            &TestMesh::spiffe("shop", "waypoint"),
            SocketAddr::new(IpAddr::V4(VIP), 9080),
            CLIENT_IP,
        )
        .await
        .unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
            .await
            .unwrap();
        tokio::spawn(connection);
        let response = sender.send_request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        (parts, body.collect().await.unwrap().to_bytes())
    }

    fn address_of(&self, name: &[u8]) -> SocketAddr {
        self.endpoints
            .iter()
            .find(|e| e.name.as_bytes() == name)
            .unwrap_or_else(|| panic!("{name:?}"))
            .app_address
    }

    fn seen(&self) -> usize {
        self.endpoints.iter().map(FakeEndpoint::request_count).sum()
    }
}

fn encoded(address: SocketAddr) -> String {
    STANDARD.encode(address.to_string())
}

/// The value the response's `Set-Cookie` gives cookie `name`, unquoted, and the rest.
fn set_cookie(headers: &HeaderMap, name: &str) -> Option<(String, String)> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (pair, rest) = v.split_once(';').unwrap_or((v, ""));
            let value = pair.strip_prefix(&format!("{name}="))?;
            Some((value.trim_matches('"').to_owned(), rest.trim().to_owned()))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cors_filter_answers_preflights_and_marks_actual_responses() {
    let setup = setup().await;
    let before = setup.seen();
    // A preflight from an allowed origin (the wildcard as Istio converts it): answered by the
    // waypoint, allowing it.
    let preflight = [
        ("origin", "https://app.example.com"),
        ("access-control-request-method", "PUT"),
    ];
    let (parts, _) = setup.send("OPTIONS", "/cors/item", &preflight).await;
    assert_eq!(parts.status, StatusCode::OK);
    let h = &parts.headers;
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "GET,PUT");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_HEADERS], "x-token");
    assert_eq!(h[header::ACCESS_CONTROL_MAX_AGE], "120");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    // From an origin the wildcard does not cover: answered too (Istio's IGNORE), not allowed.
    let other = [
        ("origin", "https://example.org"),
        ("access-control-request-method", "PUT"),
    ];
    let (parts, _) = setup.send("OPTIONS", "/cors/item", &other).await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        !parts
            .headers
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
    assert_eq!(setup.seen(), before, "no endpoint saw the preflights");
    // The actual request reaches an endpoint; its response allows the origin.
    let (parts, body) = setup
        .send(
            "GET",
            "/cors/item",
            &[("origin", "https://app.example.com")],
        )
        .await;
    assert_eq!(parts.status, StatusCode::OK, "{body:?}");
    assert_eq!(setup.seen(), before + 1);
    let h = &parts.headers;
    assert_eq!(
        h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
        "https://app.example.com"
    );
    assert_eq!(h[header::ACCESS_CONTROL_EXPOSE_HEADERS], "x-total");
    assert_eq!(h[header::ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    // From another origin: served, without allowing it.
    let (parts, _) = setup
        .send("GET", "/cors/item", &[("origin", "https://example.org")])
        .await;
    assert_eq!(parts.status, StatusCode::OK);
    assert!(
        !parts
            .headers
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_cookie_keeps_the_client_on_one_endpoint_until_it_leaves() {
    let setup = setup().await;
    // Without a session, requests spread over the endpoints.
    let mut spread = std::collections::BTreeSet::new();
    for _ in 0..12 {
        let (_, body) = setup.send("GET", "/plain", &[]).await;
        spread.insert(body);
    }
    assert!(spread.len() > 1, "{spread:?}");
    // The first request of a session gets the cookie naming the endpoint that answered.
    let (parts, first) = setup.send("GET", "/sticky", &[]).await;
    let (value, attributes) = set_cookie(&parts.headers, "sticky").expect("a session cookie");
    assert_eq!(value, encoded(setup.address_of(&first)));
    assert_eq!(attributes, "Path=/; HttpOnly");
    // With it, every request goes there, and the cookie is not set again.
    let cookie = format!("sticky=\"{value}\"");
    for _ in 0..20 {
        let (parts, body) = setup.send("GET", "/sticky", &[("cookie", &cookie)]).await;
        assert_eq!(body, first);
        assert!(set_cookie(&parts.headers, "sticky").is_none());
    }
    // A value naming an address outside the cluster (here a live one: the waypoint's own
    // listener) is ignored: balanced as without it, and a cookie for a member issued.
    let members: Vec<SocketAddr> = setup.endpoints.iter().map(|e| e.app_address).collect();
    let forged = format!("sticky={}", encoded(setup.address));
    for _ in 0..6 {
        let (parts, body) = setup.send("GET", "/sticky", &[("cookie", &forged)]).await;
        assert!(members.contains(&setup.address_of(&body)));
        let (value, _) = set_cookie(&parts.headers, "sticky").expect("a new cookie");
        assert_eq!(value, encoded(setup.address_of(&body)));
    }
    // The endpoint leaves the cluster: the session falls back to another and is re-issued.
    let rest: Vec<&FakeEndpoint> = setup
        .endpoints
        .iter()
        .filter(|e| e.name.as_bytes() != first.as_ref())
        .collect();
    setup
        .waypoint
        .apply_config(config(&rest))
        .expect("the waypoint applies it");
    let (parts, body) = setup.send("GET", "/sticky", &[("cookie", &cookie)]).await;
    assert_ne!(body, first);
    let (value, _) = set_cookie(&parts.headers, "sticky").expect("a re-issued cookie");
    assert_eq!(value, encoded(setup.address_of(&body)));
    let cookie = format!("sticky=\"{value}\"");
    for _ in 0..10 {
        let (_, again) = setup.send("GET", "/sticky", &[("cookie", &cookie)]).await;
        assert_eq!(again, body);
    }
    drop(setup.mesh);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_header_keeps_the_client_on_one_endpoint() {
    let setup = setup().await;
    let (parts, first) = setup.send("GET", "/header", &[]).await;
    let value = parts.headers["x-session"].to_str().unwrap().to_owned();
    assert_eq!(value, encoded(setup.address_of(&first)));
    for _ in 0..20 {
        let (parts, body) = setup.send("GET", "/header", &[("x-session", &value)]).await;
        assert_eq!(body, first);
        assert!(!parts.headers.contains_key("x-session"));
    }
    // A value that is no address at all: balanced, and a session header issued.
    let (parts, body) = setup
        .send("GET", "/header", &[("x-session", "bm90IGFuIGFkZHJlc3M=")])
        .await;
    assert_eq!(
        parts.headers["x-session"].to_str().unwrap(),
        encoded(setup.address_of(&body))
    );
}
