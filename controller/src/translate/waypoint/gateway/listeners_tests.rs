//! Gateway API Gateways of class `istio` as their gateway proxy receives them: listeners as
//! servers, attached routes compiled behind them.

use super::super::super::tests::validated;
use super::super::gateway_configs;
use super::*;
use crate::translate::MeshSettings;
use crate::translate::gateway_api::gateway_statuses;

const EDGE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: edge-istio-0, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: edge}}
spec: {nodeName: n1, serviceAccountName: edge-istio, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.5}
---
apiVersion: v1
kind: Pod
metadata: {name: other-0, namespace: team, labels: {gateway.networking.k8s.io/gateway-name: edge}}
spec: {nodeName: n1, serviceAccountName: other, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.6}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: ratings}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Service
metadata: {name: tls-echo, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: tls-echo}
  ports: [{name: tls, port: 8443}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, generation: 3}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shop.example.com
    tls: {certificateRefs: [{kind: Secret, name: shop-cert}]}
  - {name: passthrough, port: 443, protocol: TLS, hostname: "*.internal", tls: {mode: Passthrough}}
  - {name: db, port: 5432, protocol: TCP}
  - {name: bad, port: 8443, protocol: HTTPS}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shop, namespace: shop, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  parentRefs: [{name: edge, sectionName: https}]
  rules:
  - matches: [{headers: [{name: end-user, value: jason}]}]
    backendRefs: [{name: ratings, port: 9080}]
  - backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: exact, namespace: shop, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.com]
  rules:
  - matches: [{path: {type: Exact, value: /ratings}}]
    backendRefs: [{name: ratings, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: passthrough}]
  hostnames: [secure.internal]
  rules: [{backendRefs: [{name: tls-echo, port: 8443}]}]
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db, namespace: shop}
spec:
  parentRefs: [{name: edge, port: 5432}]
  rules: [{backendRefs: [{name: tls-echo, port: 8443}]}]
"#;

fn edge() -> (wp::WaypointConfig, Vec<crate::translate::TranslateError>) {
    let index = validated(EDGE);
    let mut problems = Vec::new();
    let mut configs = gateway_configs(&index, &MeshSettings::default(), &mut problems);
    let config = configs
        .remove("shop/edge-istio-0")
        .expect("the gateway pod's config");
    // A pod of another namespace naming the Gateway is not its pod.
    assert!(configs.is_empty(), "{:?}", configs.keys());
    (config, problems)
}

fn listener(config: &wp::WaypointConfig, port: u32) -> &wp::GatewayListener {
    let gateway = config.gateway.as_ref().expect("a gateway section");
    gateway
        .listeners
        .iter()
        .find(|l| l.port == port)
        .unwrap_or_else(|| panic!("no listener on {port}"))
}

fn clusters_of(route: &wp::HttpRoute) -> Vec<&str> {
    route
        .route
        .iter()
        .map(|d| d.destination.as_ref().unwrap().cluster.as_str())
        .collect()
}

#[test]
fn listeners_become_servers_with_their_routes() {
    let (config, problems) = edge();
    let ports: Vec<u32> = config
        .gateway
        .as_ref()
        .unwrap()
        .listeners
        .iter()
        .map(|l| l.port)
        .collect();
    assert_eq!(
        ports,
        [80, 443, 5432],
        "the listener without a certificate is left out"
    );
    assert!(
        problems.iter().any(|p| {
            let text = p.to_string();
            text.contains("spec.listeners[4]") && text.contains("certificateRefs")
        }),
        "{problems:?}"
    );

    // HTTPS: the Secret's name is the credential; the two routes merge on the listener's
    // hostname, ordered as the Gateway API orders matches (exact path, then headers, then
    // the catch-all).
    let https = listener(&config, 443);
    assert_eq!(https.servers.len(), 2);
    let server = &https.servers[0];
    assert_eq!(server.gateway, "shop/edge");
    assert_eq!(server.name, "https.edge.shop");
    assert_eq!(server.protocol, wp::GatewayProtocol::Https as i32);
    assert_eq!(server.hosts, ["shop.example.com"]);
    let tls = server.tls.as_ref().unwrap();
    assert_eq!(tls.mode, wp::ServerTlsMode::Simple as i32);
    assert_eq!(tls.credential_name, "shop-cert");
    assert_eq!(server.virtual_hosts.len(), 1);
    let host = &server.virtual_hosts[0];
    assert_eq!(host.domains, ["shop.example.com"]);
    let routes: Vec<Vec<&str>> = host.http_routes.iter().map(clusters_of).collect();
    assert_eq!(
        routes,
        [
            vec!["outbound|9080||ratings.shop.svc.cluster.local"],
            vec!["outbound|9080||ratings.shop.svc.cluster.local"],
            vec!["outbound|9080||reviews.shop.svc.cluster.local"],
        ]
    );
    assert_eq!(
        host.http_routes[0].r#match[0].uri,
        Some(wp::StringMatch {
            match_type: Some(wp::string_match::MatchType::Exact("/ratings".into()))
        })
    );
    assert!(
        host.http_routes[1].r#match[0]
            .headers
            .contains_key("end-user")
    );

    // TLS passthrough by SNI, within the listener's hostname.
    let passthrough = &https.servers[1];
    assert_eq!(passthrough.protocol, wp::GatewayProtocol::Tls as i32);
    assert_eq!(
        passthrough.tls.as_ref().unwrap().mode,
        wp::ServerTlsMode::Passthrough as i32
    );
    assert_eq!(passthrough.hosts, ["*.internal"]);
    assert_eq!(passthrough.tls_routes.len(), 1);
    assert_eq!(passthrough.tls_routes[0].sni_hosts, ["secure.internal"]);
    assert_eq!(
        passthrough.tls_routes[0].route[0]
            .destination
            .as_ref()
            .unwrap()
            .cluster,
        "outbound|8443||tls-echo.shop.svc.cluster.local"
    );

    // HTTP without a hostname takes the route that names one, on that name only; the route
    // bound to the HTTPS section does not attach here.
    let http = &listener(&config, 80).servers[0];
    assert_eq!(http.hosts, ["*"]);
    let domains: Vec<&[String]> = http
        .virtual_hosts
        .iter()
        .map(|h| h.domains.as_slice())
        .collect();
    assert_eq!(domains, [["shop.example.com".to_owned()]]);
    assert_eq!(http.virtual_hosts[0].http_routes.len(), 1);

    // TCP by port.
    let tcp = &listener(&config, 5432).servers[0];
    assert_eq!(tcp.protocol, wp::GatewayProtocol::Tcp as i32);
    assert_eq!(tcp.tcp_routes.len(), 1);

    let clusters: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(
        clusters.contains(&"outbound|9080||reviews.shop.svc.cluster.local"),
        "{clusters:?}"
    );
    assert!(
        clusters.contains(&"outbound|8443||tls-echo.shop.svc.cluster.local"),
        "{clusters:?}"
    );
}

#[test]
fn the_gateways_pod_gets_an_identity() {
    let index = validated(EDGE);
    let pod = index.pods.get("shop/edge-istio-0").unwrap();
    assert!(crate::translate::waypoint::is_gateway_pod(&index, pod));
    let other = index.pods.get("team/other-0").unwrap();
    assert!(!crate::translate::waypoint::is_gateway_pod(&index, other));
}

#[test]
fn gateway_status_reports_listeners_and_routes() {
    let index = validated(EDGE);
    let statuses = gateway_statuses(&index, &MeshSettings::default());
    assert_eq!(statuses.len(), 1);
    let status = &statuses[0];
    assert_eq!(status.generation, Some(3));
    let kinds: Vec<(&str, bool, &str)> = status
        .conditions
        .iter()
        .map(|c| (c.condition_type, c.status, c.reason))
        .collect();
    // No Service `edge-istio` yet: not programmed.
    assert_eq!(
        kinds,
        [
            ("Accepted", true, "Accepted"),
            ("Programmed", false, "AddressNotAssigned")
        ]
    );
    let attached: Vec<(&str, i32)> = status
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.attached_routes))
        .collect();
    assert_eq!(
        attached,
        [
            ("http", 1),
            ("https", 2),
            ("passthrough", 1),
            ("db", 1),
            ("bad", 1)
        ]
    );
    let bad = &status.listeners[4];
    let resolved = bad
        .conditions
        .iter()
        .find(|c| c.condition_type == "ResolvedRefs")
        .unwrap();
    assert_eq!(
        (resolved.status, resolved.reason),
        (false, "InvalidCertificateRef")
    );
    assert_eq!(status.listeners[2].supported_kinds, ["TLSRoute"]);

    // With the Service provisioned, the Gateway is programmed at its address.
    let with_service = format!(
        "{EDGE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: edge-istio, namespace: shop}}\nspec: {{type: LoadBalancer, clusterIP: 10.96.0.40, ports: [{{name: http, port: 80}}]}}\nstatus: {{loadBalancer: {{ingress: [{{ip: 192.0.2.7}}]}}}}\n"
    );
    let index = validated(&with_service);
    let status = &gateway_statuses(&index, &MeshSettings::default())[0];
    assert_eq!(status.conditions[1].reason, "Programmed");
    assert_eq!(status.addresses, [("IPAddress", "192.0.2.7".to_owned())]);
}

#[test]
fn routes_get_the_gateway_controllers_status() {
    let index = validated(EDGE);
    let statuses = crate::translate::gateway_api::route_statuses(&index, &MeshSettings::default());
    let tls = statuses
        .iter()
        .find(|s| s.kind == RouteKind::Tls)
        .expect("the TLSRoute's status");
    assert_eq!(tls.parents[0].controller, "istio.io/gateway-controller");
    assert_eq!(tls.parents[0].conditions[0].reason, "Accepted");
    assert!(tls.parents[0].conditions[1].status, "{:?}", tls.parents[0]);
}

#[test]
fn an_http_routes_rate_limit_reaches_its_rules_behind_the_listener() {
    let annotated = EDGE.replacen(
        "metadata: {name: exact, namespace: shop, creationTimestamp: \"2024-02-01T00:00:00Z\"}",
        "metadata: {name: exact, namespace: shop, creationTimestamp: \"2024-02-01T00:00:00Z\", annotations: {weft.dev/local-rate-limit: '{maxTokens: 7, fillInterval: 1s}'}}",
        1,
    );
    assert_ne!(annotated, EDGE);
    let index = validated(&annotated);
    let mut problems = Vec::new();
    let config = gateway_configs(&index, &MeshSettings::default(), &mut problems)
        .remove("shop/edge-istio-0")
        .unwrap();
    let host = &listener(&config, 443).servers[0].virtual_hosts[0];
    let limits: Vec<Option<(&str, u32, i32)>> = host
        .http_routes
        .iter()
        .map(|r| {
            r.local_rate_limit
                .as_ref()
                .map(|l| (l.key.as_str(), l.max_tokens, l.scope))
        })
        .collect();
    // The annotated route's rule only; the other HTTPRoute merged on the host has none.
    assert_eq!(
        limits,
        [
            Some((
                "HTTPRoute/shop/exact/spec.rules[0]",
                7,
                wp::RateLimitScope::Route as i32
            )),
            None,
            None,
        ]
    );
}

#[test]
fn a_split_routes_span_is_named_after_the_virtual_service_istiod_makes_on_the_listener() {
    // istiod (1.27 and later) names the VirtualService of a listener's routes by their merge
    // key, the listener's internal Gateway and the host; a route to several backends takes it
    // as its span's operation (`GetRouteOperation`).
    let split = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: http}]
  hostnames: [split.example.com]
  rules:
  - backendRefs: [{name: reviews, port: 9080, weight: 90}, {name: ratings, port: 9080, weight: 10}]
"#;
    let index = validated(&format!("{EDGE}{split}"));
    let mut problems = Vec::new();
    let configs = gateway_configs(&index, &MeshSettings::default(), &mut problems);
    let http = &listener(&configs["shop/edge-istio-0"], 80).servers[0];
    let host = http
        .virtual_hosts
        .iter()
        .find(|h| h.domains == ["split.example.com"])
        .expect("the split route's host");
    assert_eq!(
        host.http_routes[0].operations,
        ["shop~edge~istio-autogenerated-k8s-gateway~http~split.example.com:80/*"]
    );
}
