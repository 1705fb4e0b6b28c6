//! AuthorizationPolicies as the waypoint gets them.

use super::*;

/// Trust domains reach the waypoint as written (it matches them against the peer's identity):
/// an ALLOW source with them is kept, not dropped, and nothing is reported.
#[test]
fn trust_domains_reach_the_waypoint() {
    let index = validated(&format!(
        r#"{MESH}---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: allow-domains, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  rules:
  - from: [{{source: {{trustDomains: [cluster.local, "*.example.com"]}}}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {{name: deny-foreign, namespace: shop}}
spec:
  targetRefs: [{{kind: Service, group: "", name: reviews}}]
  action: DENY
  rules:
  - from: [{{source: {{notTrustDomains: ["cluster.*"]}}}}]
    when: [{{key: source.trustDomain, notValues: [legacy.local]}}]
"#
    ));
    let mut problems = Vec::new();
    let mut configs = waypoint_configs(&index, &MeshSettings::default(), &mut problems);
    assert!(problems.is_empty(), "{problems:#?}");
    let config = configs
        .remove("shop/waypoint")
        .expect("the waypoint's config");
    let policy = |name: &str| {
        config
            .authorization_policies
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no policy {name}"))
            .clone()
    };
    let allow = policy("allow-domains");
    assert_eq!(allow.rules.len(), 1, "the ALLOW rule is kept");
    let source = allow.rules[0].from[0].source.clone().unwrap();
    assert_eq!(source.trust_domains, ["cluster.local", "*.example.com"]);
    assert!(source.not_trust_domains.is_empty());

    let deny = policy("deny-foreign");
    let source = deny.rules[0].from[0].source.clone().unwrap();
    assert_eq!(source.not_trust_domains, ["cluster.*"]);
    assert_eq!(deny.rules[0].when[0].key, "source.trustDomain");

    // The waypoint's own model accepts it (a `source.trustDomain` condition included).
    ::waypoint::model::WaypointConfig::try_from(config).expect("the waypoint accepts it");
}
