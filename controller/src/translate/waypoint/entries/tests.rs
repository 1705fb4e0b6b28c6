//! ServiceEntry hosts at the waypoint: which entries it serves (Istio's labels), their routes,
//! clusters (endpoints outside the mesh, by address or by name, TLS origination) and the
//! policies that target them.

use super::super::tests::validated;
use super::super::*;
use crate::translate::MeshSettings;

const WAYPOINT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: egress, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: egress, labels: {istio.io/waypoint-for: service}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"#;

/// A STATIC entry labelled for the waypoint, and a DNS one by name.
fn entry(labels: &str, name: &str, host: &str, resolution: &str, address: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: egress, labels: {{{labels}}}}}
spec:
  hosts: [{host}]
  addresses: [240.0.0.{}]
  location: MESH_EXTERNAL
  resolution: {resolution}
  ports: [{{number: 80, name: http, protocol: HTTP}}, {{number: 443, name: https, protocol: TLS}}]
  endpoints: [{{address: {address}, ports: {{http: 8080}}}}]
"#,
        host.len()
    )
}

fn configs(text: &str) -> (wp::WaypointConfig, Vec<TranslateError>) {
    let index = validated(text);
    let mut problems = Vec::new();
    let mut configs = waypoint_configs(&index, &MeshSettings::default(), &mut problems);
    (
        configs
            .remove("egress/waypoint")
            .expect("the waypoint's config"),
        problems,
    )
}

fn cluster<'c>(config: &'c wp::WaypointConfig, name: &str) -> &'c wp::Cluster {
    config
        .clusters
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no cluster {name} in {:?}", config.clusters))
}

#[test]
fn the_use_waypoint_labels_decide_which_entries_the_waypoint_serves() {
    // (entry labels, namespace label, served)
    let cases = [
        ("istio.io/use-waypoint: waypoint", "", true),
        ("", "", false),
        ("", "istio.io/use-waypoint: waypoint", true),
        // `none` on the entry opts out of its namespace's waypoint.
        (
            "istio.io/use-waypoint: none",
            "istio.io/use-waypoint: waypoint",
            false,
        ),
        // Another namespace's waypoint, named with use-waypoint-namespace.
        (
            "istio.io/use-waypoint: waypoint, istio.io/use-waypoint-namespace: egress",
            "",
            true,
        ),
        ("istio.io/use-waypoint: other", "", false),
    ];
    for (labels, namespace_label, served) in cases {
        let text = format!(
            "{}{}",
            WAYPOINT.replace(
                "istio.io/dataplane-mode: ambient}",
                &format!("istio.io/dataplane-mode: ambient, {namespace_label}}}")
            ),
            entry(labels, "api", "api.example.com", "STATIC", "192.0.2.10"),
        );
        let (config, _) = configs(&text);
        let hosts: Vec<&str> = config
            .services
            .iter()
            .map(|s| s.hostname.as_str())
            .collect();
        assert_eq!(
            hosts == ["api.example.com"],
            served,
            "labels {labels:?}, namespace {namespace_label:?}: {hosts:?}"
        );
    }
}

#[test]
fn an_entry_host_is_served_with_its_ports_vips_and_default_routes() {
    let text = format!(
        "{WAYPOINT}{}",
        entry(
            "istio.io/use-waypoint: waypoint",
            "api",
            "api.example.com",
            "STATIC",
            "192.0.2.10"
        )
    );
    let (config, _) = configs(&text);
    let service = &config.services[0];
    assert_eq!(service.name, "api");
    assert_eq!(service.namespace, "egress");
    assert_eq!(service.vips, ["240.0.0.15"]);
    let ports: Vec<(u32, i32)> = service.ports.iter().map(|p| (p.port, p.protocol)).collect();
    assert_eq!(
        ports,
        [
            (80, wp::Protocol::Http as i32),
            (443, wp::Protocol::Tls as i32)
        ]
    );
    // HTTP on 80 by its default route, TLS on 443 at L4.
    assert_eq!(service.http_routes.len(), 1);
    assert_eq!(service.tcp_routes.len(), 1);
    let http = cluster(&config, "outbound|80||api.example.com");
    let endpoint = &http.endpoints[0];
    assert_eq!(
        (endpoint.address.as_str(), endpoint.port, endpoint.tunnel),
        ("192.0.2.10", 8080, wp::EndpointTunnel::None as i32)
    );
    assert!(endpoint.identity.is_empty() && endpoint.hostname.is_empty());
    assert_eq!(
        endpoint.workload_uid,
        "Kubernetes/networking.istio.io/ServiceEntry/egress/api/192.0.2.10"
    );
    assert!(http.tls.is_none());
    // No `http` port name on the endpoint for 443: the port's number.
    assert_eq!(
        cluster(&config, "outbound|443||api.example.com").endpoints[0].port,
        443
    );
}

#[test]
fn endpoints_by_name_are_left_to_the_waypoint_to_resolve() {
    let mut text = format!(
        "{WAYPOINT}{}",
        entry(
            "istio.io/use-waypoint: waypoint",
            "api",
            "api.example.com",
            "DNS",
            "backend.example.net"
        )
    );
    // DNS without endpoints: the host itself.
    text.push_str(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bare, namespace: egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [bare.example.org]
  addresses: [240.0.0.99]
  resolution: DNS
  ports: [{number: 80, name: http, protocol: HTTP}]
"#,
    );
    let (config, _) = configs(&text);
    let named = &cluster(&config, "outbound|80||api.example.com").endpoints[0];
    assert_eq!(
        (named.address.as_str(), named.hostname.as_str(), named.port),
        ("", "backend.example.net", 8080)
    );
    let implicit = &cluster(&config, "outbound|80||bare.example.org").endpoints[0];
    assert_eq!(
        (implicit.hostname.as_str(), implicit.port),
        ("bare.example.org", 80)
    );
}

#[test]
fn virtual_services_destination_rules_and_policies_for_an_entry_apply() {
    let text = format!(
        r#"{WAYPOINT}{}---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: api, namespace: egress}}
spec:
  hosts: [api.example.com]
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    headers: {{request: {{set: {{x-egress: v2}}}}}}
    route: [{{destination: {{host: api.example.com, port: {{number: 80}}}}}}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: egress}}
spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings:
    - port: {{number: 80}}
      tls: {{mode: SIMPLE, sni: api.example.com, caCertificates: /etc/egress/ca.pem, caCrl: /etc/egress/ca.crl}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: api-get, namespace: egress}}
spec:
  targetRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: api}}]
  action: ALLOW
  rules: [{{to: [{{operation: {{methods: [GET], paths: [/allowed/*]}}}}]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: unrelated, namespace: egress}}
spec:
  targetRefs: [{{group: networking.istio.io, kind: ServiceEntry, name: elsewhere}}]
  action: DENY
  rules: [{{}}]
"#,
        entry(
            "istio.io/use-waypoint: waypoint",
            "api",
            "api.example.com",
            "STATIC",
            "192.0.2.10"
        )
    );
    let (config, problems) = configs(&text);
    let service = &config.services[0];
    let first = &service.http_routes[0];
    assert_eq!(first.virtual_service, "egress/api");
    assert_eq!(
        first
            .headers
            .as_ref()
            .unwrap()
            .request
            .as_ref()
            .unwrap()
            .set["x-egress"],
        "v2"
    );
    let tls = cluster(&config, "outbound|80||api.example.com")
        .tls
        .clone()
        .expect("TLS origination on port 80");
    assert_eq!(tls.sni, "api.example.com");
    assert_eq!(tls.ca_certificates, "/etc/egress/ca.pem");
    assert_eq!(tls.ca_crl, "/etc/egress/ca.crl");
    assert!(tls.client_certificate.is_empty());
    assert!(
        !tls.insecure_skip_verify,
        "verified unless the user says not to"
    );
    assert!(
        cluster(&config, "outbound|443||api.example.com")
            .tls
            .is_none(),
        "port-level TLS applies to its port only"
    );
    let policies: Vec<(&str, &[String])> = config
        .authorization_policies
        .iter()
        .map(|p| (p.name.as_str(), p.target_services.as_slice()))
        .collect();
    assert_eq!(policies, [("api-get", &["api.example.com".to_owned()][..])]);
    // A policy on an entry no waypoint serves is enforced nowhere, and said so; the one on
    // the entry this waypoint serves is not.
    let unenforced: Vec<String> = problems
        .iter()
        .map(|p| p.to_string())
        .filter(|p| p.contains("uses no waypoint"))
        .collect();
    assert_eq!(
        unenforced,
        [
            "AuthorizationPolicy egress/unrelated: targets ServiceEntry egress/elsewhere, which uses no waypoint: nothing enforces this policy"
        ],
        "{problems:?}"
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.to_string().contains("unknown host")),
        "{problems:?}"
    );
}

#[test]
fn a_destination_rule_credential_name_reaches_the_waypoint_as_istio_takes_it() {
    let text = format!(
        r#"{WAYPOINT}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: egress}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {{mode: MUTUAL, credentialName: api-client, sni: api.example.com}}
"#,
        entry(
            "istio.io/use-waypoint: waypoint",
            "api",
            "api.example.com",
            "STATIC",
            "192.0.2.10"
        )
    );
    let (config, problems) = configs(&text);
    let tls = cluster(&config, "outbound|80||api.example.com")
        .tls
        .clone()
        .expect("TLS origination");
    assert_eq!(
        (tls.credential_name.as_str(), tls.mutual),
        ("api-client", true)
    );
    assert!(
        !problems
            .iter()
            .any(|p| p.to_string().contains("credentialName")),
        "credentialName is applied, not reported: {problems:?}"
    );
}

/// A wildcard entry labelled for the waypoint, without addresses or endpoints.
fn wildcard_entry(name: &str, host: &str, resolution: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: egress, labels: {{istio.io/use-waypoint: waypoint}}}}
spec:
  hosts: ["{host}"]
  location: MESH_EXTERNAL
  resolution: {resolution}
  ports: [{{number: 80, name: http, protocol: HTTP}}]
"#
    )
}

/// A VirtualService for `host` setting `x-route: <name>` on every request.
fn tagging_route(name: &str, host: &str) -> String {
    format!(
        r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}, namespace: egress}}
spec:
  hosts: ["{host}"]
  http:
  - headers: {{request: {{set: {{x-route: {name}}}}}}}
    route: [{{destination: {{host: "*.wild.example.com"}}}}]
"#
    )
}

#[test]
fn a_dynamic_dns_wildcard_is_served_with_its_most_specific_routes_and_resolved_per_request() {
    let text = [
        WAYPOINT.to_owned(),
        wildcard_entry("wild", "*.wild.example.com", "DYNAMIC_DNS"),
        // Not DYNAMIC_DNS: a wildcard has no endpoint the waypoint could reach.
        wildcard_entry("static", "*.static.example.com", "NONE"),
        tagging_route("broad", "*.example.com"),
        tagging_route("narrow", "*.wild.example.com"),
    ]
    .concat();
    let (config, problems) = configs(&text);
    let hosts: Vec<&str> = config
        .services
        .iter()
        .map(|s| s.hostname.as_str())
        .collect();
    assert_eq!(hosts, ["*.wild.example.com"], "{problems:?}");
    let service = &config.services[0];
    assert!(service.dynamic_dns);
    // The address Istio's allocator gives a DYNAMIC_DNS wildcard, which the agents' DNS
    // proxy answers every name under it with.
    assert!(
        service.vips.iter().any(|v| v.starts_with("240.240.")),
        "{:?}",
        service.vips
    );
    // Every VirtualService covering the wildcard applies, in Istio's order (age, then name).
    let bound: Vec<&str> = service
        .http_routes
        .iter()
        .map(|r| r.virtual_service.as_str())
        .collect();
    assert_eq!(bound, ["egress/broad", "egress/narrow", ""], "{problems:?}");
    let cluster = cluster(&config, "outbound|80||*.wild.example.com");
    assert!(cluster.dynamic_dns);
    assert!(cluster.endpoints.is_empty(), "{:?}", cluster.endpoints);
}

#[test]
fn a_virtual_service_naming_one_name_under_a_dynamic_dns_wildcard_binds_to_it_as_istio_does() {
    // Istio's waypoint binds a VirtualService whose host overlaps the wildcard
    // (`host.Name.Matches`) and gives the virtual host only the wildcard as domain: the routes
    // apply to every name under it. A destination naming the one name is no cluster of its
    // own (istiod looks services up by exact name), as here: reported, 503 `NC`.
    let concrete = r#"---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: concrete, namespace: egress}
spec:
  hosts: [a.wild.example.com]
  http:
  - match: [{uri: {prefix: /one}}]
    route: [{destination: {host: a.wild.example.com}}]
  - route: [{destination: {host: "*.wild.example.com"}}]
"#;
    let text = [
        WAYPOINT.to_owned(),
        wildcard_entry("wild", "*.wild.example.com", "DYNAMIC_DNS"),
        wildcard_entry("static", "*.static.example.com", "NONE"),
        concrete.to_owned(),
        // Under no DYNAMIC_DNS wildcard: binds to nothing.
        tagging_route("elsewhere", "a.static.example.com"),
    ]
    .concat();
    let (config, problems) = configs(&text);
    let service = &config.services[0];
    assert_eq!(service.hostname, "*.wild.example.com");
    let bound: Vec<&str> = service
        .http_routes
        .iter()
        .map(|r| r.virtual_service.as_str())
        .collect();
    assert_eq!(
        bound,
        ["egress/concrete", "egress/concrete", ""],
        "{problems:?}"
    );
    let to_one = &service.http_routes[0].route[0];
    let destination = to_one.destination.as_ref().unwrap();
    assert_eq!(destination.host, "a.wild.example.com");
    assert!(
        !config
            .clusters
            .iter()
            .any(|c| c.name == destination.cluster),
        "{:?}",
        config.clusters
    );
    assert!(
        problems
            .iter()
            .any(|p| p.to_string().contains("a.wild.example.com")),
        "{problems:?}"
    );

    // A VirtualService naming the wildcard itself is merged beside it, in Istio's order.
    let text = [text, tagging_route("narrow", "*.wild.example.com")].concat();
    let (config, problems) = configs(&text);
    let bound: Vec<&str> = config.services[0]
        .http_routes
        .iter()
        .map(|r| r.virtual_service.as_str())
        .collect();
    assert_eq!(
        bound,
        ["egress/concrete", "egress/concrete", "egress/narrow", ""],
        "{problems:?}"
    );
}

/// A ServiceEntry with a `workloadSelector` that uses the waypoint: its endpoints are the pods
/// and WorkloadEntries of its namespace it selects, as Istio's service registry makes them its
/// instances (`serviceentry/conversion.go`: a pod on the port's `targetPort`, a WorkloadEntry
/// on its port of the port's name, weighted by `weight`), so its routes and subsets apply.
#[test]
fn an_entry_selecting_workloads_is_served_with_them_as_endpoints() {
    let text = WAYPOINT.to_owned()
        + r#"---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: egress, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.internal]
  addresses: [240.0.1.1]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}]
  workloadSelector: {labels: {app: api}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: egress, labels: {app: api, version: v1}}
spec: {nodeName: n1, serviceAccountName: api, containers: [{name: a, image: a}]}
status: {podIP: 10.0.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: other-0, namespace: egress, labels: {app: other, version: v2}}
spec: {nodeName: n1, serviceAccountName: other, containers: [{name: o, image: o}]}
status: {podIP: 10.0.0.31}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: api-vm, namespace: egress}
spec: {address: 192.0.2.9, labels: {app: api, version: v2}, ports: {http: 9090}, weight: 3, serviceAccount: api}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api, namespace: egress}
spec:
  host: api.internal
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: api, namespace: egress}
spec:
  hosts: [api.internal]
  http: [{route: [{destination: {host: api.internal, subset: v2}}]}]
"#;
    let (config, problems) = configs(&text);
    assert!(
        problems
            .iter()
            .all(|p| !p.to_string().contains("workloadSelector")),
        "{problems:?}"
    );
    let endpoints = |name: &str| -> Vec<(String, u32, i32, u32, String)> {
        cluster(&config, name)
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.clone(),
                    e.port,
                    e.tunnel,
                    e.weight,
                    e.identity.clone(),
                )
            })
            .collect()
    };
    let hbone = wp::EndpointTunnel::Hbone as i32;
    let pod = (
        "10.0.0.30".to_owned(),
        8080,
        hbone,
        0,
        "spiffe://cluster.local/ns/egress/sa/api".to_owned(),
    );
    let vm = (
        "192.0.2.9".to_owned(),
        9090,
        wp::EndpointTunnel::None as i32,
        3,
        "spiffe://cluster.local/ns/egress/sa/api".to_owned(),
    );
    assert_eq!(endpoints("outbound|80||api.internal"), [pod, vm.clone()]);
    assert_eq!(endpoints("outbound|80|v2|api.internal"), [vm]);
    // The VirtualService's route to the subset applies at the waypoint (first, before the
    // default route), whose cluster holds the WorkloadEntry only.
    let service = config
        .services
        .iter()
        .find(|s| s.hostname == "api.internal")
        .expect("the entry's host is served");
    let routed: Vec<&str> = service
        .http_routes
        .iter()
        .flat_map(|r| &r.route)
        .filter_map(|d| d.destination.as_ref())
        .map(|d| d.cluster.as_str())
        .collect();
    assert_eq!(
        routed.first(),
        Some(&"outbound|80|v2|api.internal"),
        "{routed:?}"
    );
}

/// `insecureSkipVerify: true`, set by the user, reaches the waypoint (which then does not verify
/// the server), with no report that it is not applied.
#[test]
fn insecure_skip_verify_reaches_the_waypoint_when_set() {
    let text = format!(
        r#"{WAYPOINT}{}---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: api, namespace: egress}}
spec:
  host: api.example.com
  trafficPolicy:
    tls: {{mode: SIMPLE, sni: api.example.com, insecureSkipVerify: true}}
"#,
        entry(
            "istio.io/use-waypoint: waypoint",
            "api",
            "api.example.com",
            "STATIC",
            "192.0.2.10"
        )
    );
    let (config, problems) = configs(&text);
    let tls = cluster(&config, "outbound|80||api.example.com")
        .tls
        .clone()
        .expect("TLS origination");
    assert!(tls.insecure_skip_verify);
    assert!(
        !problems
            .iter()
            .any(|p| p.to_string().contains("insecureSkipVerify")),
        "insecureSkipVerify is applied, not reported: {problems:?}"
    );
}
