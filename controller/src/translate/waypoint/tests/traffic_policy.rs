//! DestinationRule traffic policies: how they merge and which one applies, as in Istio.

use super::*;
use crate::model::networking::{self as net, TrafficPolicy};
use crate::translate::waypoint::clusters::{EffectivePolicy, effective_policy};

fn policy(yaml: &str) -> TrafficPolicy {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn traffic_policies_merge_as_istio_merges_them() {
    let top = policy(
        "loadBalancer: {simple: RANDOM}\nconnectionPool: {tcp: {maxConnections: 5}}\noutlierDetection: {consecutive5xxErrors: 2}\nportLevelSettings:\n- port: {number: 8080}\n  connectionPool: {tcp: {maxConnections: 9}}\n",
    );
    let subset = policy(
        "loadBalancer: {simple: ROUND_ROBIN}\nportLevelSettings:\n- port: {number: 9090}\n  outlierDetection: {consecutive5xxErrors: 4}\n",
    );
    let max_connections = |p: &EffectivePolicy| {
        p.connection_pool
            .as_ref()
            .and_then(|c| c.tcp.as_ref()?.max_connections)
    };
    let simple = |p: &EffectivePolicy| p.load_balancer.as_ref().and_then(|l| l.simple);
    let consecutive = |p: &EffectivePolicy| {
        p.outlier_detection
            .as_ref()
            .and_then(|o| o.consecutive5xx_errors)
    };

    // The rule alone.
    let plain = effective_policy(Some(&top), None, 80);
    assert_eq!(
        (simple(&plain), max_connections(&plain), consecutive(&plain)),
        (Some(net::SimpleLb::Random), Some(5), Some(2))
    );
    // A port-level entry replaces everything: the load balancer and outlier detection it does
    // not set go back to the defaults.
    let port_level = effective_policy(Some(&top), None, 8080);
    assert_eq!(
        (
            simple(&port_level),
            max_connections(&port_level),
            consecutive(&port_level)
        ),
        (None, Some(9), None)
    );
    // A subset overrides field by field...
    let with_subset = effective_policy(Some(&top), Some(&subset), 80);
    assert_eq!(
        (
            simple(&with_subset),
            max_connections(&with_subset),
            consecutive(&with_subset)
        ),
        (Some(net::SimpleLb::RoundRobin), Some(5), Some(2))
    );
    // ...on top of the rule's port-level settings...
    let subset_on_port = effective_policy(Some(&top), Some(&subset), 8080);
    assert_eq!(
        (
            simple(&subset_on_port),
            max_connections(&subset_on_port),
            consecutive(&subset_on_port)
        ),
        (Some(net::SimpleLb::RoundRobin), Some(9), None)
    );
    // ...and its own port-level settings replace everything again.
    let subset_port_level = effective_policy(Some(&top), Some(&subset), 9090);
    assert_eq!(
        (
            simple(&subset_port_level),
            max_connections(&subset_port_level),
            consecutive(&subset_port_level)
        ),
        (None, None, Some(4))
    );
}

#[test]
fn outlier_thresholds_follow_istio_and_envoy_defaults() {
    let compile = |yaml: &str| {
        let p = EffectivePolicy::of(&policy(yaml));
        let ((_, _, outlier), _) = p.compile();
        let o = outlier.unwrap();
        (o.consecutive_5xx_errors, o.consecutive_gateway_errors)
    };
    assert_eq!(compile("outlierDetection: {interval: 1s}"), (Some(5), None));
    assert_eq!(
        compile("outlierDetection: {consecutive5xxErrors: 0}"),
        (Some(0), None)
    );
    assert_eq!(
        compile("outlierDetection: {consecutiveErrors: 3}"),
        (Some(0), Some(3))
    );
    assert_eq!(
        compile("outlierDetection: {consecutiveGatewayErrors: 2, consecutive5xxErrors: 6}"),
        (Some(6), Some(2))
    );
}

#[test]
fn local_origin_split_and_error_codes_follow_istio() {
    let compile = |yaml: &str| {
        let p = EffectivePolicy::of(&policy(yaml));
        let ((_, _, outlier), notes) = p.compile();
        let o = outlier.unwrap();
        assert!(notes.is_empty(), "{yaml}: {notes:?}");
        (
            o.split_external_local_origin_errors,
            o.consecutive_local_origin_failures,
            o.http_error_codes,
        )
    };
    assert_eq!(
        compile("outlierDetection: {interval: 1s}"),
        (false, None, vec![])
    );
    // applyOutlierDetection: the threshold only above 0, else Envoy's default of 5.
    assert_eq!(
        compile("outlierDetection: {splitExternalLocalOriginErrors: true}"),
        (true, Some(5), vec![])
    );
    assert_eq!(
        compile(
            "outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 0}"
        ),
        (true, Some(5), vec![])
    );
    assert_eq!(
        compile(
            "outlierDetection: {splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}"
        ),
        (true, Some(2), vec![])
    );
    assert_eq!(
        compile("outlierDetection: {splitExternalLocalOriginErrors: false}"),
        (false, None, vec![])
    );
    assert_eq!(
        compile("outlierDetection: {outlierDetectionHttpErrorCodes: [429, 503]}"),
        (false, None, vec![429, 503])
    );
}

#[test]
fn destination_rules_follow_istio_precedence_and_merge() {
    let index = validated(&format!(
        r#"{MESH}
---
# In the root namespace: used only when neither the waypoint's nor the service's has one.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: mesh-default, namespace: istio-system}}
spec:
  host: "*.svc.cluster.local"
  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}
---
# Two rules for the same host in one namespace: merged, the older policy first.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: a-first, namespace: shop, creationTimestamp: "2030-01-01T00:00:00Z"}}
spec:
  host: reviews
  trafficPolicy: {{loadBalancer: {{simple: ROUND_ROBIN}}}}
  subsets: [{{name: v1, labels: {{version: v1}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: b-second, namespace: shop, creationTimestamp: "2030-01-02T00:00:00Z"}}
spec:
  host: reviews
  trafficPolicy: {{loadBalancer: {{simple: LEAST_REQUEST}}}}
  subsets:
  - {{name: v1, labels: {{version: ignored}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: reviews, namespace: shop}}
spec:
  hosts: [reviews]
  http:
  - route:
    - {{destination: {{host: reviews, subset: v1}}, weight: 50}}
    - {{destination: {{host: reviews, subset: v2}}, weight: 50}}
"#
    ));
    let config = config(&index);
    let cluster = |name: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    };
    use wp::load_balancer_settings::{LbPolicy, SimpleLb};
    let v1 = cluster("outbound|9080|v1|reviews.shop.svc.cluster.local");
    assert_eq!(v1.destination_rule, "shop/a-first");
    assert_eq!(
        v1.subset_labels["version"], "v1",
        "the first definition wins"
    );
    assert_eq!(v1.endpoints.len(), 1);
    assert_eq!(
        v1.load_balancer.as_ref().unwrap().lb_policy,
        Some(LbPolicy::Simple(SimpleLb::RoundRobin as i32))
    );
    let v2 = cluster("outbound|9080|v2|reviews.shop.svc.cluster.local");
    assert_eq!(v2.subset_labels["version"], "v2", "subsets of both rules");
    assert!(v2.endpoints.is_empty(), "no v2 pod");
}

/// `h2UpgradePolicy` and `useClientProtocol` set each cluster's upstream HTTP version as
/// Istio's `applyConnectionPool` and `applyH2Upgrade` set a waypoint cluster's, through
/// port-level settings and subsets; MeshConfig `h2UpgradePolicy` stands in for a rule that
/// leaves it to the mesh.
#[test]
fn h2_upgrade_and_client_protocol_set_the_upstream_version() {
    use wp::UpstreamHttpProtocol as U;
    let ports =
        "ports: [{name: http, port: 9080}, {name: grpc, port: 9081}, {name: web, port: 9082}]";
    let service = MESH.replace("ports: [{name: http, port: 9080}]", ports);
    let rules = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {http: {h2UpgradePolicy: UPGRADE}}
    portLevelSettings:
    - port: {number: 9081}
      connectionPool: {http: {useClientProtocol: true}}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: DO_NOT_UPGRADE}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-v1: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: v1}}]
  - route: [{destination: {host: reviews}}]
"#;
    let translate = |text: &str, mesh_config: &str| {
        let mesh = crate::mesh_config::parse("mesh", mesh_config).unwrap();
        let settings = MeshSettings {
            mesh: std::sync::Arc::new(crate::mesh_config::MeshConfigWatch::fixed(mesh)),
            ..Default::default()
        };
        let mut problems = Vec::new();
        let config = waypoint_configs(&validated(text), &settings, &mut problems)
            .remove("shop/waypoint")
            .unwrap();
        assert!(problems.is_empty(), "{problems:?}");
        config
    };
    let protocol = |config: &wp::WaypointConfig, name: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", config.clusters))
            .upstream_protocol()
    };
    let host = "reviews.shop.svc.cluster.local";
    let config = translate(&format!("{service}{rules}"), "");
    // UPGRADE on the port declared HTTP; the port-level useClientProtocol replaces the rule's
    // pool on the GRPC port; an undeclared port keeps the client's version at a waypoint; the
    // subset's DO_NOT_UPGRADE overrides the rule's UPGRADE.
    for (name, expected) in [
        (format!("outbound|9080||{host}"), U::Http2),
        (format!("outbound|9081||{host}"), U::Client),
        (format!("outbound|9082||{host}"), U::Default),
        (format!("outbound|9080|v1|{host}"), U::Default),
        (format!("outbound|9082|v1|{host}"), U::Default),
    ] {
        assert_eq!(protocol(&config, &name), expected, "{name}");
    }
    // Without a rule, the mesh's policy: UPGRADE upgrades the ports declared HTTP.
    let upgraded = translate(&service, "h2UpgradePolicy: UPGRADE\n");
    assert_eq!(
        protocol(&upgraded, &format!("outbound|9080||{host}")),
        U::Http2
    );
    assert_eq!(
        protocol(&upgraded, &format!("outbound|9081||{host}")),
        U::Http2
    );
    assert_eq!(
        protocol(&upgraded, &format!("outbound|9082||{host}")),
        U::Default
    );
    let default = translate(&service, "");
    assert_eq!(
        protocol(&default, &format!("outbound|9080||{host}")),
        U::Default
    );
}

/// A DestinationRule's SIMPLE or MUTUAL `tls` reaches the clusters of a mesh service too (the
/// waypoint originates it inside the HBONE tunnel, as Istio's waypoint wraps the rule's TLS
/// socket in the tunnel's internal upstream), through port-level settings and subsets;
/// ISTIO_MUTUAL and DISABLE originate nothing (HBONE is the mesh's mutual TLS).
#[test]
fn simple_and_mutual_tls_reach_the_clusters_of_a_mesh_service() {
    let ports = "ports: [{name: http, port: 9080}, {name: admin, port: 9081}]";
    let service = MESH.replace("ports: [{name: http, port: 9080}]", ports);
    let rules = r#"---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  trafficPolicy:
    tls: {mode: SIMPLE, sni: reviews.tls.example, caCertificates: /etc/reviews/ca.pem, subjectAltNames: [reviews.tls.example]}
    portLevelSettings:
    - port: {number: 9081}
      tls: {mode: MUTUAL, credentialName: reviews-client}
  subsets:
  - {name: plain, labels: {version: v1}, trafficPolicy: {tls: {mode: DISABLE}}}
  - {name: mesh, labels: {version: v1}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: shop}
spec:
  hosts: [reviews]
  http:
  - match: [{headers: {x-plain: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: plain}}]
  - match: [{headers: {x-mesh: {exact: "1"}}}]
    route: [{destination: {host: reviews, subset: mesh}}]
  - route: [{destination: {host: reviews}}]
"#;
    let mut problems = Vec::new();
    let config = waypoint_configs(
        &validated(&format!("{service}{rules}")),
        &MeshSettings::default(),
        &mut problems,
    )
    .remove("shop/waypoint")
    .unwrap();
    assert!(problems.is_empty(), "nothing is left out: {problems:?}");
    let tls = |name: &str| {
        config
            .clusters
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", config.clusters))
            .tls
            .clone()
    };
    let host = "reviews.shop.svc.cluster.local";
    let simple = tls(&format!("outbound|9080||{host}")).expect("SIMPLE on 9080");
    assert_eq!(
        (
            simple.sni.as_str(),
            simple.ca_certificates.as_str(),
            simple.subject_alt_names.as_slice(),
            simple.mutual
        ),
        (
            "reviews.tls.example",
            "/etc/reviews/ca.pem",
            ["reviews.tls.example".to_owned()].as_slice(),
            false
        )
    );
    // The port-level entry replaces the rule's settings on its port.
    let mutual = tls(&format!("outbound|9081||{host}")).expect("MUTUAL on 9081");
    assert_eq!(
        (
            mutual.credential_name.as_str(),
            mutual.sni.as_str(),
            mutual.mutual
        ),
        ("reviews-client", "", true)
    );
    assert_eq!(tls(&format!("outbound|9080|plain|{host}")), None);
    assert_eq!(tls(&format!("outbound|9080|mesh|{host}")), None);
    let endpoints = &config
        .clusters
        .iter()
        .find(|c| c.name == format!("outbound|9080||{host}"))
        .unwrap()
        .endpoints;
    assert!(
        endpoints
            .iter()
            .all(|e| e.tunnel == wp::EndpointTunnel::Hbone as i32),
        "the TLS goes inside HBONE: {endpoints:?}"
    );
}
