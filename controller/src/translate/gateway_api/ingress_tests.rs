//! Listeners of ingress Gateways and the routes attaching to them, as the Gateway API defines
//! attachment (sectionName, port, kinds, namespaces, hostnames).

use super::*;
use crate::translate::gateway_api::all_routes;
use crate::translate::waypoint::tests::validated;

const GATEWAY: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: team, labels: {edge: allowed}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - name: https
    port: 443
    protocol: HTTPS
    hostname: shop.example.com
    tls: {certificateRefs: [{name: shop-cert}]}
    allowedRoutes: {namespaces: {from: Selector, selector: {matchLabels: {edge: allowed}}}}
  - {name: passthrough, port: 443, protocol: TLS, hostname: secure.internal, tls: {mode: Passthrough}}
  - {name: plain, port: 443, protocol: TCP}
  - {name: udp, port: 53, protocol: UDP}
  - name: foreign-cert
    port: 8443
    protocol: HTTPS
    tls: {certificateRefs: [{name: cert, namespace: other}]}
"#;

fn route(yaml: &str) -> String {
    format!("{GATEWAY}---\n{yaml}")
}

/// (listener name, route index, hosts) per attachment.
type Attachments = Vec<(String, usize, Vec<String>)>;

fn resolved(yaml: &str) -> (Attachments, Vec<Listener<'static>>) {
    let index: &'static ConfigIndex = Box::leak(Box::new(validated(&route(yaml))));
    let routes: &'static [MeshRoute<'static>] = Box::leak(all_routes(index).into_boxed_slice());
    let gateway = ingress_gateways(index, routes).remove(0);
    let attached = gateway
        .listeners
        .iter()
        .flat_map(|l| {
            l.routes
                .iter()
                .map(|a| (l.name.to_owned(), a.route, a.hosts.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    (attached, gateway.listeners)
}

fn verdict(yaml: &str) -> Result<Vec<(usize, Vec<String>)>, NotAttached> {
    let index = validated(&route(yaml));
    let routes = all_routes(&index);
    let gateway = ingress_gateways(&index, &routes).remove(0);
    let route = &routes[0];
    attach(&index, &gateway, route, &route.spec.parent_refs[0])
}

#[test]
fn listeners_are_read_as_istio_reads_them() {
    let (_, listeners) = resolved("");
    let by_name = |n: &str| listeners.iter().find(|l| l.name == n).unwrap();
    assert_eq!(by_name("http").protocol, Some(ListenerProtocol::Http));
    assert_eq!(
        by_name("http").kinds,
        vec![RouteKind::Http, RouteKind::Grpc]
    );
    assert_eq!(
        by_name("https").tls,
        ListenerTls::Terminate {
            secret: Some(("shop".into(), "shop-cert".into()))
        }
    );
    assert!(by_name("https").served());
    assert_eq!(by_name("passthrough").tls, ListenerTls::Passthrough);
    assert_eq!(by_name("passthrough").kinds, vec![RouteKind::Tls]);
    // A plain TCP listener on a port TLS listeners hold conflicts.
    assert!(by_name("plain").conflicted);
    assert!(!by_name("plain").served());
    let udp = by_name("udp");
    assert_eq!(udp.protocol, None);
    assert_eq!(udp.problems[0].reason, "UnsupportedProtocol");
    // A Secret in another namespace needs a ReferenceGrant there.
    let foreign = by_name("foreign-cert");
    assert_eq!(foreign.problems[0].reason, "RefNotPermitted");
    assert!(!foreign.served());
}

#[test]
fn a_reference_grant_opens_a_secret_in_another_namespace() {
    let (_, listeners) = resolved(
        r#"apiVersion: gateway.networking.k8s.io/v1beta1
kind: ReferenceGrant
metadata: {name: certs, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: shop}]
  to: [{group: "", kind: Secret}]
"#,
    );
    let foreign = listeners.iter().find(|l| l.name == "foreign-cert").unwrap();
    assert!(foreign.served(), "{:?}", foreign.problems);
    assert_eq!(
        foreign.tls,
        ListenerTls::Terminate {
            secret: Some(("other".into(), "cert".into()))
        }
    );
}

#[test]
fn hostnames_intersect_as_the_gateway_api_defines() {
    let hosts = |l: Option<&str>, r: &[&str]| {
        listener_hosts(l, &r.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
    };
    assert_eq!(hosts(None, &[]), vec!["*"]);
    assert_eq!(hosts(Some("a.example.com"), &[]), vec!["a.example.com"]);
    assert_eq!(
        hosts(Some("*.example.com"), &["a.example.com", "b.other.com"]),
        vec!["a.example.com"]
    );
    assert_eq!(
        hosts(Some("a.example.com"), &["*.example.com"]),
        vec!["a.example.com"]
    );
    assert!(hosts(Some("*.example.com"), &["example.com"]).is_empty());
    assert_eq!(hosts(None, &["x.io"]), vec!["x.io"]);
}

#[test]
fn routes_attach_by_section_port_kind_namespace_and_hostname() {
    // No sectionName: every listener whose kinds take HTTPRoutes and whose hostnames meet.
    let attached = verdict(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.com]
"#,
    )
    .unwrap();
    // The HTTPS listener takes routes only from namespaces labelled edge=allowed; the one
    // whose certificate is refused still takes routes (its ResolvedRefs says why it is not
    // served), as the Gateway API counts them.
    assert_eq!(
        attached,
        vec![
            (0, vec!["shop.example.com".to_owned()]),
            (5, vec!["shop.example.com".to_owned()])
        ]
    );

    let from_team = verdict(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: team}
spec:
  parentRefs: [{name: edge, namespace: shop, sectionName: https}]
"#,
    )
    .unwrap();
    assert_eq!(from_team, vec![(1, vec!["shop.example.com".to_owned()])]);

    let refused = |yaml: &str| verdict(yaml).unwrap_err().reason;
    assert_eq!(
        refused(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec: {parentRefs: [{name: edge, sectionName: https}]}
"#
        ),
        "NotAllowedByListeners"
    );
    assert_eq!(
        refused(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec: {parentRefs: [{name: edge, sectionName: passthrough}]}
"#
        ),
        "NotAllowedByListeners"
    );
    assert_eq!(
        refused(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec: {parentRefs: [{name: edge, sectionName: http}], hostnames: [shop.other.com]}
"#
        ),
        "NoMatchingListenerHostname"
    );
    assert_eq!(
        refused(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec: {parentRefs: [{name: edge, sectionName: nope}]}
"#
        ),
        "NoMatchingParent"
    );
    assert_eq!(
        refused(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec: {parentRefs: [{name: edge, port: 8080}]}
"#
        ),
        "NoMatchingParent"
    );

    let tls = verdict(
        r#"apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{name: edge, port: 443}]
  hostnames: [secure.internal]
  rules: [{backendRefs: [{name: secure, port: 8443}]}]
"#,
    )
    .unwrap();
    assert_eq!(tls, vec![(2, vec!["secure.internal".to_owned()])]);
}

#[test]
fn listeners_count_their_routes() {
    let (attached, listeners) = resolved(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: shop}
spec:
  parentRefs: [{name: edge, sectionName: http}, {name: edge, sectionName: http}]
  hostnames: [a.example.com]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: other}
spec:
  parentRefs: [{name: edge, namespace: shop}]
"#,
    );
    // The same route named twice counts once; one from a namespace no listener admits, none
    // (routes are in key order: other/b is 0, shop/a is 1).
    assert_eq!(
        attached,
        vec![("http".to_owned(), 1, vec!["a.example.com".to_owned()])]
    );
    assert_eq!(listeners[0].routes.len(), 1);
}
