//! Each `istioctl analyze` check Weft makes, on a small mesh: the finding it must give, with its
//! code, and none on the configuration that is right.

use std::path::Path;

use super::*;
use crate::loader;

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: shop}
spec: {selector: {app: reviews}, ports: [{name: http, port: 9080}]}
---
apiVersion: v1
kind: Service
metadata: {name: multi, namespace: shop}
spec: {selector: {app: multi}, ports: [{name: http, port: 80}, {name: grpc, port: 9090}]}
---
apiVersion: v1
kind: Pod
metadata: {name: reviews-v1, namespace: shop, labels: {app: reviews, version: v1}}
spec: {containers: [{name: r, image: r}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: shop}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: shop}
spec: {gatewayClassName: istio, listeners: [{name: http, port: 80, protocol: HTTP}]}
"#;

fn analyze_with(extra: &str) -> Vec<Message> {
    let report = loader::load_str(Path::new("mesh.yaml"), &format!("{MESH}\n---\n{extra}"));
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let (index, rejections) = ConfigIndex::from_report(report, None);
    assert!(rejections.is_empty(), "{rejections:?}");
    analyze(&index, &MeshSettings::default())
}

fn found(messages: &[Message], name: &str) -> Vec<(String, &'static str, String)> {
    messages
        .iter()
        .filter(|m| m.name == name)
        .map(|m| {
            (
                m.warning.path.clone(),
                m.warning.code.map_or("", |c| c.code),
                m.warning.reason.clone(),
            )
        })
        .collect()
}

#[test]
fn a_consistent_mesh_gives_no_finding_but_the_unused_subset() {
    let messages = analyze_with(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews, namespace: shop}\nspec: {hosts: [reviews], http: [{route: [{destination: {host: reviews, subset: v1}}]}]}\n---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]}\n",
    );
    let codes: Vec<(&str, &str)> = messages
        .iter()
        .map(|m| (m.name.as_str(), m.warning.code.map_or("", |c| c.code)))
        .collect();
    assert_eq!(codes, [("reviews", "IST0173")], "{messages:#?}");
    assert_eq!(messages[0].warning.path, "spec.subsets[1]");
}

#[test]
fn every_check_reports_its_code() {
    let messages = analyze_with(
        r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken, namespace: shop}
spec:
  hosts: [reviews]
  gateways: [mesh, missing-gateway]
  http:
  - route:
    - {destination: {host: ratings}, weight: 25}
    - {destination: {host: reviews, subset: v9}, weight: 25}
    - {destination: {host: multi}, weight: 25}
    - {destination: {host: reviews, port: {number: 8080}}, weight: 25}
    mirror: {host: nowhere}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: second, namespace: shop}
spec: {hosts: [reviews.shop.svc.cluster.local], http: [{route: [{destination: {host: reviews}}]}]}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: stray, namespace: shop}
spec: {host: nothing.example.com}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: policy, namespace: shop}
spec:
  targetRefs:
  - {kind: Gateway, group: gateway.networking.k8s.io, name: missing-waypoint}
  - {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}
  rules: [{from: [{source: {namespaces: [nowhere]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: selected, namespace: shop}
spec: {selector: {matchLabels: {app: nothing}}}
"#,
    );
    let broken = found(&messages, "broken");
    let expect = [
        (
            "spec.http[0].route[0].destination.host",
            "IST0101",
            "Referenced host not found: \"ratings\"",
        ),
        (
            "spec.http[0].route[1].destination.subset",
            "IST0101",
            "Referenced host+subset in destinationrule not found: \"reviews+v9\"",
        ),
        (
            "spec.http[0].route[2].destination.port",
            "IST0112",
            "exposes multiple ports [80, 9090]",
        ),
        (
            "spec.http[0].route[3].destination.port.number",
            "IST0101",
            "Referenced host:port not found: \"reviews:8080\"",
        ),
        (
            "spec.http[0].mirror.host",
            "IST0101",
            "Referenced mirror host not found: \"nowhere\"",
        ),
        (
            "spec.gateways[1]",
            "IST0101",
            "Referenced gateway not found: \"missing-gateway\"",
        ),
        (
            "spec.hosts",
            "IST0109",
            "define the same host */reviews.shop.svc.cluster.local",
        ),
    ];
    for (path, code, reason) in expect {
        assert!(
            broken
                .iter()
                .any(|(p, c, r)| p == path && *c == code && r.contains(reason)),
            "{path} {code} {reason}: {broken:#?}"
        );
    }
    assert!(
        found(&messages, "second")
            .iter()
            .any(|(_, c, _)| *c == "IST0109")
    );
    assert_eq!(
        found(&messages, "stray"),
        [(
            "spec.host".to_owned(),
            "IST0174",
            "The host nothing.example.com defined in the DestinationRule does not match any services in the mesh.".to_owned()
        )]
    );
    let policy = found(&messages, "policy");
    for (path, code, reason) in [
        (
            "spec.targetRefs[0]",
            "IST0101",
            "Referenced gateway not found: \"missing-waypoint\"",
        ),
        (
            "spec.targetRefs[1]",
            "IST0167",
            "Gateway shop/ingress is not a waypoint",
        ),
        (
            "spec.rules[0].from[0].source.namespaces[0]",
            "IST0101",
            "Referenced namespace not found: \"nowhere\"",
        ),
    ] {
        assert!(
            policy
                .iter()
                .any(|(p, c, r)| p == path && *c == code && r.contains(reason)),
            "{path} {code} {reason}: {policy:#?}"
        );
    }
    assert_eq!(
        found(&messages, "selected"),
        [(
            "spec.selector".to_owned(),
            "IST0127",
            "No matching workloads for this resource with the following labels: app=nothing"
                .to_owned()
        )]
    );
}
