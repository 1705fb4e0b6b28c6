//! AuthorizationPolicy and PeerAuthentication as the agents receive them.

use super::*;

fn policy(
    authorizations: &BTreeMap<String, security::Authorization>,
    key: &str,
) -> security::Authorization {
    authorizations
        .get(key)
        .cloned()
        .unwrap_or_else(|| panic!("no policy {key}: {:?}", authorizations.keys()))
}

#[test]
fn authorization_policies_keep_their_l4_meaning() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-from-legacy, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: [legacy]}}]
    to: [{operation: {paths: ["/admin"], ports: ["8080"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: ALLOW
  rules:
  - to: [{operation: {methods: [GET]}}]
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/pay"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-all, namespace: legacy}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: mesh-wide, namespace: istio-system}
spec:
  action: DENY
  rules: [{when: [{key: source.ip, values: [192.0.2.0/24]}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: for-the-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: pay}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
"#,
    );
    let settings = MeshSettings::default();
    let authorizations = authorizations(&index, &settings);

    // DENY with L7 parts keeps its L4 part: the namespace and the port still deny.
    let deny = policy(&authorizations, "shop/deny-admin-from-legacy");
    assert_eq!(deny.action, security::Action::Deny as i32);
    assert_eq!(deny.scope, security::Scope::Namespace as i32);
    let clauses = &deny.rules[0].clauses;
    assert_eq!(clauses.len(), 2);
    assert_eq!(clauses[1].matches[0].destination_ports, vec![8080]);

    // ALLOW: the L7-only rule is dropped (it must never allow at L4); the L4 rule stays.
    let allow = policy(&authorizations, "shop/allow-get");
    assert_eq!(allow.scope, security::Scope::WorkloadSelector as i32);
    assert_eq!(allow.rules.len(), 1);
    assert_eq!(
        allow.rules[0].clauses[0].matches[0].principals[0].match_type,
        Some(security::string_match::MatchType::Exact(
            "cluster.local/ns/shop/sa/pay".into()
        ))
    );
    // The selected workload lists it.
    let addresses = addresses(&index, &settings);
    assert!(
        workload_of(&addresses, "cart-1")
            .authorization_policies
            .contains(&"shop/allow-get".to_string())
    );
    assert!(
        workload_of(&addresses, "pay-1")
            .authorization_policies
            .is_empty()
    );

    // `spec: {}` is an ALLOW with no rules: denies everything in its namespace.
    let deny_all = policy(&authorizations, "legacy/deny-all");
    assert_eq!(
        (deny_all.action, deny_all.rules.len()),
        (security::Action::Allow as i32, 0)
    );

    // Root namespace without selector: mesh-wide.
    assert_eq!(
        policy(&authorizations, "istio-system/mesh-wide").scope,
        security::Scope::Global as i32
    );
    // targetRefs policies are for the waypoint only.
    assert!(!authorizations.contains_key("shop/for-the-waypoint"));
}

#[test]
fn a_deny_on_http_attributes_fails_safe_at_the_agents_and_is_reported() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin"]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin-or-port, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules:
  - to: [{operation: {ports: ["9000"]}}, {operation: {methods: [DELETE]}}]
    from: [{source: {namespaces: [legacy]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-jwt-on-a-port, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
    to: [{operation: {ports: ["8080"]}}]
    when: [{key: "request.headers[x-debug]", values: ["1"]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-l4-only, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  action: DENY
  rules: [{from: [{source: {namespaces: [legacy]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-get, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: at-the-waypoint, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: pay}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/x"]}}]}]
"#,
    );
    let authorizations = authorizations(&index, &MeshSettings::default());
    let rules = |key: &str| policy(&authorizations, key).rules;
    let matches_everything =
        |rules: &[security::Rule]| rules.len() == 1 && rules[0].clauses.is_empty();
    // A path alone: at L4 the DENY covers every connection (a rule without conditions).
    assert!(matches_everything(&rules("shop/deny-admin")));
    // A `to` clause ORs a port with a method: the method entry alone matches everything, so
    // the clause does; the `from` clause still narrows the rule.
    let or_port = rules("shop/deny-admin-or-port");
    assert_eq!(or_port[0].clauses.len(), 1, "{or_port:?}");
    assert_eq!(or_port[0].clauses[0].matches[0].namespaces.len(), 1);
    // A request principal and a header condition dropped: the port alone remains.
    let jwt = rules("shop/deny-jwt-on-a-port");
    assert_eq!(jwt[0].clauses.len(), 1, "{jwt:?}");
    assert_eq!(jwt[0].clauses[0].matches[0].destination_ports, vec![8080]);
    // Without HTTP attributes nothing changes.
    assert_eq!(rules("shop/deny-l4-only")[0].clauses.len(), 1);
    // An ALLOW rule on a method allows nothing.
    assert!(rules("shop/allow-get").is_empty());

    // Each policy enforced without some of its attributes is reported once, naming them; the
    // waypoint's and the L4-only one are not.
    let problems: Vec<String> = authorization_problems(&index)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(problems.len(), 4, "{problems:#?}");
    let about = |name: &str| {
        problems
            .iter()
            .find(|p| p.contains(&format!("shop/{name}:")))
            .unwrap_or_else(|| panic!("{name} not reported: {problems:#?}"))
            .clone()
    };
    let deny = about("deny-admin");
    assert!(
        deny.contains("spec.rules[0].to[0].operation.paths"),
        "{deny}"
    );
    assert!(deny.contains("refuses every connection"), "{deny}");
    let jwt = about("deny-jwt-on-a-port");
    assert!(
        jwt.contains("spec.rules[0].from[0].source.requestPrincipals")
            && jwt.contains("spec.rules[0].when[0] (request.headers[x-debug])"),
        "{jwt}"
    );
    assert!(about("allow-get").contains("allow nothing"));
}

#[test]
fn peer_authentication_strict_becomes_a_deny_on_plaintext() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: shop}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: cart-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  mtls: {mode: STRICT}
  portLevelMtls: {"9090": {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: permissive, namespace: legacy}
spec: {mtls: {mode: PERMISSIVE}}
"#,
    );
    let settings = MeshSettings::default();
    let authorizations = authorizations(&index, &settings);
    let prefix = weft_policy::l4::PEER_AUTHENTICATION_POLICY_PREFIX;
    let strict = policy(&authorizations, &format!("shop/{prefix}default"));
    assert_eq!(
        (strict.action, strict.scope),
        (
            security::Action::Deny as i32,
            security::Scope::Namespace as i32
        )
    );
    let selected = policy(&authorizations, &format!("shop/{prefix}cart-metrics"));
    assert_eq!(selected.scope, security::Scope::WorkloadSelector as i32);
    let exempt: Vec<u32> = selected.rules[0]
        .clauses
        .iter()
        .flat_map(|c| {
            c.matches
                .iter()
                .flat_map(|m| m.not_destination_ports.clone())
        })
        .collect();
    assert_eq!(exempt, vec![9090], "the PERMISSIVE port is exempt");
    assert!(!authorizations.contains_key(&format!("legacy/{prefix}permissive")));
    let addresses = addresses(&index, &settings);
    assert!(
        workload_of(&addresses, "cart-1")
            .authorization_policies
            .contains(&format!("shop/{prefix}cart-metrics"))
    );
}

/// Istio's value syntax for principals and namespaces (`*` any non-empty value, `*suffix`,
/// `prefix*`, anything else exact; `security/v1beta1/authorization.proto`), in `source` and
/// in `when` conditions alike, as the agents receive it.
#[test]
fn authorization_values_keep_their_wildcards() {
    use security::string_match::MatchType;
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: wildcards, namespace: shop}
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["*", "*-prod", "team-*", "legacy", "*a*"]
        notNamespaces: ["kube-*"]
        principals: ["spiffe://cluster.local/ns/shop/*", "*/sa/pay", "cluster.local/ns/a/sa/b"]
        notPrincipals: ["*"]
    when:
    - key: source.namespace
      values: ["*-dev"]
      notValues: ["ops*"]
    - key: source.principal
      values: ["spiffe://cluster.local/ns/x/sa/y"]
      notValues: ["*/sa/admin"]
"#,
    );
    let authorizations = authorizations(&index, &MeshSettings::default());
    let rule = &policy(&authorizations, "shop/wildcards").rules[0];
    let types = |list: &[security::StringMatch]| -> Vec<MatchType> {
        list.iter().map(|m| m.match_type.clone().unwrap()).collect()
    };
    let exact = |s: &str| MatchType::Exact(s.into());
    let prefix = |s: &str| MatchType::Prefix(s.into());
    let suffix = |s: &str| MatchType::Suffix(s.into());
    let source = &rule.clauses[0].matches[0];
    assert_eq!(
        types(&source.namespaces),
        vec![
            MatchType::Presence(()),
            suffix("-prod"),
            prefix("team-"),
            exact("legacy"),
            // A leading `*` is read first: a suffix that keeps the trailing one.
            suffix("a*"),
        ]
    );
    assert_eq!(types(&source.not_namespaces), vec![prefix("kube-")]);
    assert_eq!(
        types(&source.principals),
        vec![
            prefix("cluster.local/ns/shop/"),
            suffix("/sa/pay"),
            exact("cluster.local/ns/a/sa/b"),
        ]
    );
    assert_eq!(types(&source.not_principals), vec![MatchType::Presence(())]);
    let namespace = &rule.clauses[1].matches[0];
    assert_eq!(types(&namespace.namespaces), vec![suffix("-dev")]);
    assert_eq!(types(&namespace.not_namespaces), vec![prefix("ops")]);
    let principal = &rule.clauses[2].matches[0];
    assert_eq!(
        types(&principal.principals),
        vec![exact("cluster.local/ns/x/sa/y")]
    );
    assert_eq!(types(&principal.not_principals), vec![suffix("/sa/admin")]);
}

/// Trust domains are matched by the agents: an ALLOW rule with them is sent with them (not
/// dropped as one the agents cannot evaluate), a DENY rule keeps them, and nothing is reported.
#[test]
fn trust_domains_reach_the_agents() {
    let index = index(
        r#"
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-domains, namespace: shop}
spec:
  selector: {matchLabels: {app: cart}}
  rules:
  - from: [{source: {trustDomains: [cluster.local, "*.example.com", "*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-foreign, namespace: shop}
spec:
  action: DENY
  rules:
  - from: [{source: {notTrustDomains: ["cluster.*"]}}]
  - when: [{key: source.trustDomain, values: [legacy.local]}]
"#,
    );
    let authorizations = authorizations(&index, &MeshSettings::default());
    use security::string_match::MatchType;
    let matching = |values: &[security::StringMatch]| -> Vec<Option<MatchType>> {
        values.iter().map(|m| m.match_type.clone()).collect()
    };

    let allow = policy(&authorizations, "shop/allow-domains");
    assert_eq!(allow.rules.len(), 1, "the ALLOW rule is kept: {allow:?}");
    assert_eq!(
        matching(&allow.rules[0].clauses[0].matches[0].trust_domains),
        [
            Some(MatchType::Exact("cluster.local".into())),
            Some(MatchType::Suffix(".example.com".into())),
            Some(MatchType::Presence(())),
        ]
    );

    let deny = policy(&authorizations, "shop/deny-foreign");
    assert_eq!(deny.rules.len(), 2);
    let from = &deny.rules[0].clauses[0].matches[0];
    assert_eq!(
        matching(&from.not_trust_domains),
        [Some(MatchType::Prefix("cluster.".into()))]
    );
    let when = &deny.rules[1].clauses[0].matches[0];
    assert_eq!(
        matching(&when.trust_domains),
        [Some(MatchType::Exact("legacy.local".into()))]
    );

    assert!(
        authorization_problems(&index).is_empty(),
        "{:?}",
        authorization_problems(&index)
    );
}
