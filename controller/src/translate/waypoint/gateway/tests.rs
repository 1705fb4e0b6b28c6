//! Istio `Gateway` servers and the VirtualServices bound to them, as gateway proxies receive
//! them.

use super::super::tests::validated;
use super::*;
use crate::translate::translate;

const EDGE: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: ingress-0, namespace: edge, labels: {istio: ingressgateway}}
spec: {nodeName: n1, serviceAccountName: ingress, containers: [{name: g, image: g}]}
status: {podIP: 10.0.0.5}
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
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {nodeName: n1, serviceAccountName: reviews, containers: [{name: r, image: r}]}
status: {podIP: 10.0.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: tls-echo, namespace: shop}
spec:
  clusterIP: 10.96.0.30
  selector: {app: tls-echo}
  ports: [{name: tls, port: 8443}]
---
apiVersion: v1
kind: Pod
metadata: {name: tls-echo-0, namespace: shop, labels: {app: tls-echo}}
spec: {nodeName: n1, serviceAccountName: tls-echo, containers: [{name: t, image: t}]}
status: {podIP: 10.0.0.12}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gateway, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["shop/*.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*.example.com"]
    tls: {mode: SIMPLE, credentialName: shop-cert, minProtocolVersion: TLSV1_2, cipherSuites: [ECDHE-RSA-AES128-GCM-SHA256]}
  - port: {number: 443, name: passthrough, protocol: TLS}
    hosts: ["secure.internal"]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com, other.test]
  gateways: [shop-gateway]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews}}]
    timeout: 3s
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: mesh-only, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: passthrough, namespace: shop}
spec:
  hosts: [secure.internal]
  gateways: [shop/shop-gateway]
  tls:
  - match: [{sniHosts: [secure.internal], port: 443}]
    route: [{destination: {host: tls-echo, port: {number: 8443}}}]
  tcp:
  - route: [{destination: {host: tls-echo, port: {number: 8443}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-deny-admin, namespace: edge}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: [/admin]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-pods, namespace: edge}
spec:
  selector: {matchLabels: {app: other}}
  action: DENY
  rules: [{}]
"#;

fn edge_config(yaml: &str) -> (wp::WaypointConfig, Vec<TranslateError>) {
    let index = validated(yaml);
    let mut problems = Vec::new();
    let mut configs = gateway_configs(&index, &MeshSettings::default(), &mut problems);
    let config = configs
        .remove("edge/ingress-0")
        .expect("the gateway pod's config");
    assert!(configs.is_empty(), "{:?}", configs.keys());
    (config, problems)
}

fn listener(config: &wp::WaypointConfig, port: u32) -> &wp::GatewayListener {
    config
        .gateway
        .as_ref()
        .expect("a gateway section")
        .listeners
        .iter()
        .find(|l| l.port == port)
        .unwrap_or_else(|| panic!("no listener on {port}"))
}

#[test]
fn servers_of_the_selecting_gateway_become_listeners_by_port() {
    let (config, _) = edge_config(EDGE);
    let ports: Vec<u32> = config
        .gateway
        .as_ref()
        .unwrap()
        .listeners
        .iter()
        .map(|l| l.port)
        .collect();
    assert_eq!(ports, [80, 443, 31400]);
    assert_eq!(config.name, "ingress-0");
    assert_eq!(config.namespace, "edge");
    let workload = config.gateway.as_ref().unwrap().workload.as_ref().unwrap();
    assert_eq!(workload.address, "10.0.0.5");
    assert_eq!(
        workload.identity,
        "spiffe://cluster.local/ns/edge/sa/ingress"
    );
    // Two servers on 443, told apart by SNI: the terminated one and the passthrough one.
    let https = listener(&config, 443);
    assert_eq!(https.servers.len(), 2);
    let simple = &https.servers[0];
    assert_eq!(simple.protocol, wp::GatewayProtocol::Https as i32);
    let tls = simple.tls.as_ref().unwrap();
    assert_eq!(tls.mode, wp::ServerTlsMode::Simple as i32);
    assert_eq!(tls.credential_name, "shop-cert");
    assert_eq!(
        tls.min_protocol_version,
        wp::TlsProtocolVersion::Tlsv12 as i32
    );
    assert_eq!(tls.cipher_suites, ["ECDHE-RSA-AES128-GCM-SHA256"]);
    assert_eq!(simple.gateway, "shop/shop-gateway");
    assert_eq!(simple.name, "https.443.https.shop-gateway.shop");
    let passthrough = &https.servers[1];
    assert_eq!(passthrough.protocol, wp::GatewayProtocol::Tls as i32);
    assert_eq!(
        passthrough.tls.as_ref().unwrap().mode,
        wp::ServerTlsMode::Passthrough as i32
    );
}

#[test]
fn bound_virtual_services_route_the_hosts_both_name() {
    let (config, _) = edge_config(EDGE);
    let http = &listener(&config, 80).servers[0];
    assert!(http.tls.as_ref().unwrap().https_redirect);
    // `other.test` is not a host of the server, and the mesh-only VirtualService is not bound.
    assert_eq!(http.virtual_hosts.len(), 1);
    let host = &http.virtual_hosts[0];
    assert_eq!(host.domains, ["shop.example.com"]);
    assert_eq!(host.virtual_service, "shop/shop");
    // No default route at a gateway: what no route matches is 404.
    assert_eq!(host.http_routes.len(), 2);
    let jason = &host.http_routes[0];
    assert_eq!(
        jason.r#match[0].headers["end-user"].match_type,
        Some(wp::string_match::MatchType::Exact("jason".into()))
    );
    assert_eq!(
        jason.route[0].destination.as_ref().unwrap().cluster,
        "outbound|9080|v1|reviews.shop.svc.cluster.local"
    );
    assert_eq!(host.http_routes[1].timeout.unwrap().seconds, 3);
    // The clusters the routes name are built, with their endpoints.
    let names: Vec<&str> = config.clusters.iter().map(|c| c.name.as_str()).collect();
    assert!(
        names.contains(&"outbound|9080|v1|reviews.shop.svc.cluster.local"),
        "{names:?}"
    );
    assert!(
        names.contains(&"outbound|9080||reviews.shop.svc.cluster.local"),
        "{names:?}"
    );
    let v1 = config
        .clusters
        .iter()
        .find(|c| c.name == "outbound|9080|v1|reviews.shop.svc.cluster.local")
        .unwrap();
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(v1.endpoints[0].address, "10.0.0.11");
    // The HTTPS server on a wildcard host gets the same table.
    let https = &listener(&config, 443).servers[0];
    assert_eq!(https.virtual_hosts[0].domains, ["shop.example.com"]);
}

#[test]
fn passthrough_and_tcp_servers_take_tls_and_tcp_routes() {
    let (config, _) = edge_config(EDGE);
    let passthrough = &listener(&config, 443).servers[1];
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
    assert!(passthrough.virtual_hosts.is_empty());
    // The TCP server's hosts are `*`: the VirtualService's tcp route is bound there.
    let tcp = &listener(&config, 31400).servers[0];
    assert_eq!(tcp.tcp_routes.len(), 1);
    assert_eq!(tcp.tcp_routes[0].virtual_service, "shop/passthrough");
}

#[test]
fn policies_selecting_the_gateway_pod_apply() {
    let (config, _) = edge_config(EDGE);
    let names: Vec<&str> = config
        .authorization_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["edge-deny-admin"]);
    assert!(config.authorization_policies[0].target_services.is_empty());
}

#[test]
fn server_host_namespaces_limit_the_virtual_services_that_bind() {
    // `edge/*.example.com` admits VirtualServices of `edge` only: the shop's binds nothing.
    let yaml = EDGE.replace("\"shop/*.example.com\"", "\"edge/*.example.com\"");
    let (config, _) = edge_config(&yaml);
    assert!(listener(&config, 80).servers[0].virtual_hosts.is_empty());
    let yaml = EDGE.replace("\"shop/*.example.com\"", "\"./*.example.com\"");
    let (config, _) = edge_config(&yaml);
    // `.` is the Gateway's namespace, shop, where the VirtualService is.
    assert_eq!(listener(&config, 80).servers[0].virtual_hosts.len(), 1);
}

#[test]
fn unsupported_servers_are_reported_and_left_out() {
    let yaml = EDGE.replace("tls: {mode: PASSTHROUGH}", "tls: {mode: AUTO_PASSTHROUGH}");
    let (config, problems) = edge_config(&yaml);
    assert_eq!(listener(&config, 443).servers.len(), 1);
    let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Gateway shop/shop-gateway")
                && m.contains("spec.servers[2].tls.mode")
                && m.contains("AUTO_PASSTHROUGH")),
        "{messages:?}"
    );
}

#[test]
fn istio_mutual_and_optional_mutual_servers_are_served() {
    // ISTIO_MUTUAL: the gateway's own certificate, no credential to deliver.
    let yaml = EDGE.replace("tls: {mode: PASSTHROUGH}", "tls: {mode: ISTIO_MUTUAL}");
    let (config, problems) = edge_config(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let servers = &listener(&config, 443).servers;
    assert_eq!(servers.len(), 2);
    let tls = servers[1].tls.as_ref().unwrap();
    assert_eq!(tls.mode, wp::ServerTlsMode::IstioMutual as i32);
    assert!(tls.credential_resource.is_empty(), "{tls:?}");
    // OPTIONAL_MUTUAL: a credential with its CA, as MUTUAL.
    let yaml = EDGE.replace(
        "tls: {mode: PASSTHROUGH}",
        "tls: {mode: OPTIONAL_MUTUAL, credentialName: mtls-cert}",
    );
    let (config, problems) = edge_config(&yaml);
    assert!(problems.is_empty(), "{problems:?}");
    let tls = listener(&config, 443).servers[1].tls.clone().unwrap();
    assert_eq!(tls.mode, wp::ServerTlsMode::OptionalMutual as i32);
    assert_eq!(tls.credential_resource, "kubernetes://edge/mtls-cert");
}

#[test]
fn client_pins_reach_mutual_servers_only_as_istio_applies_them() {
    // Istio's `ApplyCredentialSDSToServerCommonTLSContext` sets `verify_certificate_spki` and
    // `verify_certificate_hash` for MUTUAL and OPTIONAL_MUTUAL only.
    let spki = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let hash = "ab".repeat(32);
    let pinned = |mode: &str| {
        let yaml = EDGE.replace(
            "tls: {mode: PASSTHROUGH}",
            &format!(
                "tls: {{mode: {mode}, credentialName: mtls-cert, verifyCertificateSpki: ['{spki}'], verifyCertificateHash: ['{hash}']}}"
            ),
        );
        let (config, _) = edge_config(&yaml);
        let tls = listener(&config, 443).servers[1].tls.clone().unwrap();
        (tls.verify_certificate_spki, tls.verify_certificate_hash)
    };
    for mode in ["MUTUAL", "OPTIONAL_MUTUAL"] {
        assert_eq!(
            pinned(mode),
            (vec![spki.to_owned()], vec![hash.clone()]),
            "{mode}"
        );
    }
    assert_eq!(pinned("SIMPLE"), (Vec::new(), Vec::new()));
}

#[test]
fn gateway_configs_are_served_beside_the_waypoints() {
    let index = validated(EDGE);
    let translation = translate(&index, &MeshSettings::default());
    let config = translation
        .waypoints
        .get("edge/ingress-0")
        .expect("served under the waypoint type");
    assert!(config.gateway.is_some());
    // The waypoint's own model accepts it.
    let bytes = prost::Message::encode_to_vec(config);
    assert!(!bytes.is_empty());
}

#[test]
fn host_intersection_takes_the_narrower_pattern() {
    let cases = [
        (
            "shop.example.com",
            "*.example.com",
            Some("shop.example.com"),
        ),
        ("*", "shop.example.com", Some("shop.example.com")),
        ("*.example.com", "*", Some("*.example.com")),
        (
            "shop.example.com",
            "shop.example.com",
            Some("shop.example.com"),
        ),
        ("shop.example.com", "*.test", None),
    ];
    for (a, b, expected) in cases {
        assert_eq!(intersect(a, b).as_deref(), expected, "{a} ∩ {b}");
    }
}

/// `reviews` behind the namespace's waypoint, and (with `label`) asking gateways to use it.
fn behind_a_waypoint(label: &str) -> String {
    let waypoint = r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Pod
metadata:
  name: waypoint-0
  namespace: shop
  labels: {gateway.networking.k8s.io/gateway-name: waypoint}
spec: {nodeName: n1, serviceAccountName: waypoint, containers: [{name: w, image: w}]}
status: {podIP: 10.0.0.2}
"#;
    EDGE.replace(
        "metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}",
        "metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}}",
    )
    .replace(
        "metadata: {name: reviews, namespace: shop}\nspec:\n  clusterIP",
        &format!("metadata: {{name: reviews, namespace: shop{label}}}\nspec:\n  clusterIP"),
    ) + waypoint
}

#[test]
fn a_service_asking_for_it_is_reached_through_its_waypoint() {
    let cluster = |config: &wp::WaypointConfig| {
        config
            .clusters
            .iter()
            .find(|c| c.name == "outbound|9080||reviews.shop.svc.cluster.local")
            .cloned()
            .unwrap()
    };
    // Asked for: one tunnel per waypoint pod, CONNECT to the service's VIP, the waypoint's
    // identity.
    let (config, problems) = edge_config(&behind_a_waypoint(
        ", labels: {istio.io/ingress-use-waypoint: \"true\"}",
    ));
    let through = cluster(&config);
    assert_eq!(through.endpoints.len(), 1, "{through:?}");
    let endpoint = &through.endpoints[0];
    assert_eq!(
        (endpoint.address.as_str(), endpoint.port),
        ("10.96.0.20", 9080)
    );
    assert_eq!(endpoint.tunnel_address, "10.0.0.2");
    assert_eq!(endpoint.tunnel, wp::EndpointTunnel::Hbone as i32);
    assert_eq!(
        endpoint.identity,
        "spiffe://cluster.local/ns/shop/sa/waypoint"
    );
    // (tls-echo, behind the same waypoint without the label, is still reported.)
    let reported = |problems: &[TranslateError]| {
        problems
            .iter()
            .any(|p| p.name == "reviews" && p.to_string().contains("own waypoint"))
    };
    assert!(!reported(&problems), "{problems:?}");
    // Not asked for: the pods, which accept only their waypoint (reported).
    let (config, problems) = edge_config(&behind_a_waypoint(""));
    let direct = cluster(&config);
    assert_eq!(direct.endpoints[0].address, "10.0.0.11");
    assert!(direct.endpoints[0].tunnel_address.is_empty());
    assert!(
        problems.iter().any(|p| p
            .to_string()
            .contains("accept only the traffic of its own waypoint")),
        "{problems:?}"
    );
}

#[test]
fn a_rate_limit_annotation_limits_each_route_rule_of_its_virtual_service() {
    let annotated = EDGE.replacen(
        "metadata: {name: shop, namespace: shop}\nspec:\n  hosts: [shop.example.com, other.test]",
        "metadata: {name: shop, namespace: shop, annotations: {weft.dev/local-rate-limit: '{maxTokens: 4, tokensPerFill: 2, fillInterval: 30s, per: client}'}}\nspec:\n  hosts: [shop.example.com, other.test]",
        1,
    );
    assert_ne!(annotated, EDGE);
    let (config, problems) = edge_config(&annotated);
    assert!(problems.is_empty(), "{problems:?}");
    let routes = &listener(&config, 443).servers[0].virtual_hosts[0].http_routes;
    let limits: Vec<_> = routes
        .iter()
        .map(|r| r.local_rate_limit.clone().expect("a rate limit"))
        .collect();
    assert_eq!(limits[0].key, "VirtualService/shop/shop/spec.http[0]");
    assert_eq!(limits[1].key, "VirtualService/shop/shop/spec.http[1]");
    assert_eq!(limits[1].max_tokens, 4);
    assert_eq!(limits[1].tokens_per_fill, 2);
    assert_eq!(limits[1].fill_interval.unwrap().seconds, 30);
    assert_eq!(limits[1].scope, wp::RateLimitScope::Client as i32);
    // Without the annotation, no limit.
    let (plain, _) = edge_config(EDGE);
    let routes = &listener(&plain, 443).servers[0].virtual_hosts[0].http_routes;
    assert!(routes.iter().all(|r| r.local_rate_limit.is_none()));
}

#[test]
fn edge_limits_and_connection_limits_reach_every_server_of_their_gateway() {
    let annotated = EDGE.replacen(
        "metadata: {name: shop-gateway, namespace: shop}",
        "metadata: {name: shop-gateway, namespace: shop, annotations: {weft.dev/edge-limits: '{maxRequestHeadersKb: 8, idleTimeout: 90s, http2MaxConcurrentStreams: 7, requestTimeout: 1m30s, maxRequestBytes: 65536, maxConnections: 1000, connectionRateLimit: {maxTokens: 3, fillInterval: 1m, per: client}}'}}",
        1,
    );
    assert_ne!(annotated, EDGE);
    let (config, problems) = edge_config(&annotated);
    assert!(problems.is_empty(), "{problems:?}");
    let https = &listener(&config, 443).servers;
    let http = &listener(&config, 80).servers[0];
    let tcp = &listener(&config, 31400).servers[0];
    for server in [http, &https[0], &https[1], tcp] {
        let limits = server.limits.expect("limits");
        assert_eq!(limits.max_request_headers_kb, 8, "{}", server.name);
        assert_eq!(limits.idle_timeout.unwrap().seconds, 90);
        assert_eq!(limits.http2_max_concurrent_streams, 7);
        assert_eq!(limits.per_connection_buffer_limit_bytes, 0);
        assert!(limits.request_headers_timeout.is_none());
        assert_eq!(limits.request_timeout.unwrap().seconds, 90);
        assert_eq!(limits.max_request_bytes, 65536);
        assert_eq!(limits.max_connections, 1000);
    }
    // Connections are limited on every server, each with its own bucket.
    let by_name = |name: &str| {
        [http, &https[0], &https[1], tcp]
            .into_iter()
            .find(|s| s.name.starts_with(name))
            .unwrap()
            .connection_rate_limit
            .clone()
    };
    assert_eq!(
        by_name("http.").expect("a connection limit").key,
        "Gateway/shop/shop-gateway/http.80.http.shop-gateway.shop"
    );
    assert_eq!(
        by_name("https.").expect("a connection limit").scope,
        wp::RateLimitScope::Client as i32
    );
    let passthrough = by_name("tls.").expect("a connection limit");
    assert_eq!(
        passthrough.key,
        "Gateway/shop/shop-gateway/tls.443.passthrough.shop-gateway.shop"
    );
    assert_eq!(passthrough.max_tokens, 3);
    assert_eq!(passthrough.tokens_per_fill, 1);
    assert_eq!(passthrough.fill_interval.unwrap().seconds, 60);
    assert_eq!(passthrough.scope, wp::RateLimitScope::Client as i32);
    assert_eq!(
        by_name("tcp.").unwrap().key,
        "Gateway/shop/shop-gateway/tcp.31400.tcp.shop-gateway.shop"
    );
    // Without the annotation, the proxy's defaults.
    let (plain, _) = edge_config(EDGE);
    assert!(listener(&plain, 31400).servers[0].limits.is_none());
    assert!(
        listener(&plain, 31400).servers[0]
            .connection_rate_limit
            .is_none()
    );
}

#[test]
fn trusted_proxies_come_from_the_pod_annotation_else_the_mesh_config() {
    let trusted = |yaml: &str, mesh_default: u32| {
        let index = validated(yaml);
        let mesh = crate::mesh_config::Mesh {
            gateway_trusted_proxies: mesh_default,
            ..Default::default()
        };
        let settings = MeshSettings {
            mesh: std::sync::Arc::new(crate::mesh_config::MeshConfigWatch::fixed(mesh)),
            ..MeshSettings::default()
        };
        let mut problems = Vec::new();
        let config = gateway_configs(&index, &settings, &mut problems)
            .remove("edge/ingress-0")
            .unwrap();
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        (config.gateway.unwrap().num_trusted_proxies, problems)
    };
    assert_eq!(trusted(EDGE, 0), (0, vec![]));
    assert_eq!(trusted(EDGE, 2), (2, vec![]));
    let pod = |config: &str| {
        EDGE.replacen(
            "metadata: {name: ingress-0, namespace: edge, labels: {istio: ingressgateway}}",
            &format!(
                "metadata: {{name: ingress-0, namespace: edge, labels: {{istio: ingressgateway}}, annotations: {{proxy.istio.io/config: '{config}'}}}}"
            ),
            1,
        )
    };
    assert_eq!(
        trusted(&pod("{gatewayTopology: {numTrustedProxies: 1}}"), 2),
        (1, vec![])
    );
    assert_eq!(
        trusted(&pod("{gatewayTopology: {numTrustedProxies: 0}}"), 2),
        (0, vec![])
    );
    let (count, problems) = trusted(&pod("{gatewayTopology: {numTrustedProxies: -1}}"), 2);
    assert_eq!(count, 2);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("Pod edge/ingress-0")
            && problems[0].contains(
                "metadata.annotations.proxy.istio.io/config.gatewayTopology.numTrustedProxies"
            )
            && problems[0].contains("the mesh default (2) applies"),
        "{problems:?}"
    );
}

#[test]
fn registry_only_changes_nothing_a_gateway_or_waypoint_receives() {
    // istiod gives gateways no PassthroughCluster in any mode ("they do not have original dst
    // listeners") and waypoints none either: a route to a host outside the registry names a
    // cluster that is never built, answered 503 `NC`, whatever `outboundTrafficPolicy` says.
    let index = validated(&format!(
        r#"{EDGE}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: unregistered, namespace: shop}}
spec:
  hosts: [out.example.com]
  gateways: [shop-gateway]
  http:
  - route: [{{destination: {{host: api.unregistered.test, port: {{number: 443}}}}}}]
"#
    ));
    let translated = |mode: weft_proto::mesh::OutboundTrafficPolicy| {
        let mut mesh = weft_proto::mesh::MeshConfig::default();
        mesh.set_outbound_traffic_policy(mode);
        let settings = MeshSettings {
            mesh: std::sync::Arc::new(crate::mesh_config::MeshConfigWatch::fixed(mesh)),
            ..MeshSettings::default()
        };
        let mut problems = Vec::new();
        let mut configs = gateway_configs(&index, &settings, &mut problems);
        configs.extend(super::super::waypoint_configs(
            &index,
            &settings,
            &mut problems,
        ));
        configs
    };
    let allow_any = translated(weft_proto::mesh::OutboundTrafficPolicy::AllowAny);
    let registry_only = translated(weft_proto::mesh::OutboundTrafficPolicy::RegistryOnly);
    assert_eq!(allow_any, registry_only);
    let gateway = &registry_only["edge/ingress-0"];
    let missing = "outbound|443||api.unregistered.test";
    let routed = gateway
        .gateway
        .iter()
        .flat_map(|g| &g.listeners)
        .flat_map(|l| &l.servers)
        .flat_map(|s| &s.virtual_hosts)
        .flat_map(|h| &h.http_routes)
        .filter(|r| {
            r.route
                .iter()
                .any(|d| d.destination.as_ref().is_some_and(|d| d.cluster == missing))
        })
        .collect::<Vec<_>>();
    assert!(!routed.is_empty(), "{gateway:#?}");
    assert!(routed.iter().all(|r| r.cluster_not_found_response_code
        == wp::ClusterNotFoundResponseCode::ServiceUnavailable as i32));
    assert!(gateway.clusters.iter().all(|c| c.name != missing));
}
