//! What the controller compiles drives the real waypoint: YAML in, `translate::translate`, the
//! `WaypointConfig` applied to an in-process waypoint, requests through real HBONE (TLS 1.3,
//! HTTP/2 CONNECT) to fake endpoints with their own certificates. Everything on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use bytes::Bytes;
use controller::{index::ConfigIndex, loader, translate};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use waypoint::testing::{FakeEndpoint, LOCALHOST, TestMesh, hbone_tunnel, resolver_for};
use waypoint::{Waypoint, WaypointOptions};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const CLIENT_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7));

fn mesh_yaml(v1: u16, v2: u16, v3: u16) -> String {
    let pod = |version: &str, port: u16| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: reviews-{version}, namespace: shop, labels: {{app: reviews, version: {version}}}}}\nspec:\n  nodeName: node1\n  serviceAccountName: reviews\n  containers: [{{name: app, image: x, ports: [{{name: http-web, containerPort: {port}}}]}}]\nstatus: {{podIP: 127.0.0.1}}\n---\n"
        )
    };
    format!(
        r#"{}{}{}
apiVersion: v1
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
metadata: {{name: reviews, namespace: shop}}
spec:
  clusterIP: {VIP}
  selector: {{app: reviews}}
  ports: [{{name: http, port: 9080, targetPort: http-web}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: reviews, namespace: shop}}
spec:
  host: reviews
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
  - {{name: v3, labels: {{version: v3}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: reviews, subset: v3}}}}]
  - match: [{{uri: {{prefix: /old}}}}]
    redirect: {{uri: /new}}
  - match: [{{uri: {{exact: /down}}}}]
    directResponse: {{status: 503, body: {{string: maintenance}}}}
  - match: [{{uri: {{prefix: /api/}}}}]
    rewrite: {{uri: /}}
    route: [{{destination: {{host: reviews, subset: v2}}}}]
  - route: [{{destination: {{host: reviews, subset: v1}}}}]
    headers:
      response:
        set: {{x-route: canary}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: no-admin, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: DENY
  rules: [{{to: [{{operation: {{paths: ["/admin"]}}}}]}}]
"#,
        pod("v1", v1),
        pod("v2", v2),
        pod("v3", v3)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translated_routes_and_policies_drive_the_waypoint() {
    let mesh = TestMesh::new();
    let v1 = FakeEndpoint::start(&mesh, "v1", "shop", "reviews").await;
    let v2 = FakeEndpoint::start(&mesh, "v2", "shop", "reviews").await;
    let v3 = FakeEndpoint::start(&mesh, "v3", "shop", "reviews").await;

    let yaml = mesh_yaml(
        v1.app_address.port(),
        v2.app_address.port(),
        v3.app_address.port(),
    );
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
    let config = translation.waypoints["shop/waypoint"].clone();

    let material = mesh.material("shop", "waypoint");
    let waypoint_identity = material.identity().clone();
    let mut options = WaypointOptions::new(waypoint_identity.clone(), material.source());
    options.hbone_address = resolver_for(&[&v1, &v2, &v3]);
    let waypoint = Waypoint::new(options);
    waypoint
        .apply_config(config)
        .expect("the waypoint applies it");
    let listener = waypoint
        .bind_hbone(SocketAddr::new(LOCALHOST, 0))
        .await
        .unwrap();
    let address = listener.address().unwrap();
    tokio::spawn(listener.run(weft_proxy_core::drain::DrainSource::never()));
    let client = mesh.material("shop", "productpage");

    let get = |path: &str, user: Option<&str>| {
        let mut request = Request::builder()
            .uri(path)
            .header("host", "reviews.shop.svc.cluster.local:9080");
        if let Some(user) = user {
            request = request.header("end-user", user);
        }
        request.body(Full::new(Bytes::new())).unwrap()
    };
    let send = |request: Request<Full<Bytes>>| {
        let client = &client;
        let waypoint_identity = &waypoint_identity;
        async move {
            let tunnel = hbone_tunnel(
                client,
                address,
                waypoint_identity,
                SocketAddr::new(IpAddr::V4(VIP), 9080),
                CLIENT_IP,
            )
            .await
            .unwrap();
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(tunnel))
                    .await
                    .unwrap();
            tokio::spawn(connection);
            let response = sender.send_request(request).await.unwrap();
            let (parts, body) = response.into_parts();
            (parts, body.collect().await.unwrap().to_bytes())
        }
    };

    // The catch-all route: subset v1, with its response header.
    let (parts, body) = send(get("/", None)).await;
    assert_eq!(
        (parts.status, body.as_ref()),
        (StatusCode::OK, b"v1".as_ref())
    );
    assert_eq!(parts.headers["x-route"], "canary");
    // A header match: subset v3.
    let (parts, body) = send(get("/", Some("jason"))).await;
    assert_eq!(
        (parts.status, body.as_ref()),
        (StatusCode::OK, b"v3".as_ref())
    );
    // A prefix match with a rewrite: subset v2 sees the rewritten path.
    let (parts, body) = send(get("/api/items", None)).await;
    assert_eq!(
        (parts.status, body.as_ref()),
        (StatusCode::OK, b"v2".as_ref())
    );
    assert_eq!(v2.last_request().unwrap().path, "/items");
    // Answered by the waypoint itself: a redirect, a direct response, a DENY.
    let before = v1.request_count() + v2.request_count() + v3.request_count();
    let (parts, _) = send(get("/old/page", None)).await;
    assert_eq!(parts.status, StatusCode::MOVED_PERMANENTLY);
    assert!(
        parts.headers["location"]
            .to_str()
            .unwrap()
            .ends_with("/new"),
        "{:?}",
        parts.headers
    );
    let (parts, body) = send(get("/down", None)).await;
    assert_eq!(
        (parts.status, body.as_ref()),
        (StatusCode::SERVICE_UNAVAILABLE, b"maintenance".as_ref())
    );
    let (parts, _) = send(get("/admin", None)).await;
    assert_eq!(parts.status, StatusCode::FORBIDDEN);
    assert_eq!(
        v1.request_count() + v2.request_count() + v3.request_count(),
        before,
        "no endpoint saw those"
    );
    // Every endpoint was reached over HBONE with the waypoint's identity.
    for endpoint in [&v1, &v2, &v3] {
        let tunnels = endpoint.tunnels.lock().unwrap().clone();
        assert!(!tunnels.is_empty(), "{}", endpoint.name);
        assert!(tunnels.iter().all(|t| t.peer == waypoint_identity));
    }
}
