//! AuthorizationPolicy: Istio's `ValidateAuthorizationPolicy`, `checkDryRunAnnotation`
//! (`validation.go`), its `pkg/config/security` helpers and the CRD's rules.

use super::*;

fn ap(spec: &str) -> String {
    doc(SEC, "AuthorizationPolicy", spec)
}

fn annotated(annotation: &str, spec: &str) -> String {
    format!(
        "apiVersion: {SEC}\nkind: AuthorizationPolicy\nmetadata: {{name: t, namespace: ns, annotations: {{'istio.io/dry-run': '{annotation}'}}}}\nspec: {spec}\n"
    )
}

const NOT_APPLIED: &str = crate::validation::NOT_APPLIED;

#[test]
fn authorization_policy_rules() {
    run(&[
        ok(
            "deny all with empty spec",
            "ValidateAuthorizationPolicy: ALLOW without rules",
            ap("{}"),
        ),
        ok(
            "deny path on a port",
            "ValidateAuthorizationPolicy",
            ap(
                "{selector: {matchLabels: {app: reviews}}, action: DENY, rules: [{to: [{operation: {paths: ['/admin*'], ports: ['9080']}}]}]}",
            ),
        ),
        ok(
            "allow principals",
            "ValidateAuthorizationPolicy",
            ap(
                "{targetRefs: [{kind: Service, group: '', name: reviews}], rules: [{from: [{source: {principals: ['cluster.local/ns/default/sa/productpage', '*/sa/admin'], namespaces: ['prod-*']}}], when: [{key: 'request.headers[version]', values: [v1]}]}]}",
            ),
        ),
        ok(
            "principal with a wildcard inside",
            "CheckEmptyValues only: Istio does not check principal wildcards",
            ap("{rules: [{from: [{source: {principals: ['cluster.local/*/sa/x']}}]}]}"),
        ),
        ok(
            "namespace in upper case",
            "CheckEmptyValues only",
            ap("{rules: [{from: [{source: {namespaces: ['Bad_NS']}}]}]}"),
        ),
        ok(
            "custom with provider",
            "ValidateAuthorizationPolicy: CUSTOM",
            ap(
                "{action: CUSTOM, provider: {name: ext-authz}, rules: [{to: [{operation: {paths: ['/api/{*}/items/{**}']}}]}]}",
            ),
        ),
        ok(
            "trust domains",
            "Source.trustDomains; CheckTrustDomainValues",
            ap(
                "{rules: [{from: [{source: {trustDomains: ['td1', '*.example.com', 'cluster.*', '*'], notTrustDomains: [legacy.local]}}]}]}",
            ),
        ),
        bad(
            "trust domain with a slash",
            "CheckTrustDomainValues",
            ap("{rules: [{from: [{source: {trustDomains: ['a/b']}}]}]}"),
            "spec.rules[0].from[0].source.trustDomains",
            "must not contain '/'",
        ),
        bad(
            "trust domain wildcard inside",
            "CheckWildcardValues",
            ap("{rules: [{from: [{source: {notTrustDomains: ['a*b']}}]}]}"),
            "spec.rules[0].from[0].source.notTrustDomains",
            "wildcard is only allowed at the start or end",
        ),
        warns(
            "http-only deny",
            "ValidateAuthorizationPolicy: DENY with only HTTP attributes warns",
            ap("{action: DENY, rules: [{to: [{operation: {methods: [POST]}}]}]}"),
            "spec.rules[0]",
            "will deny all traffic to TCP ports",
        ),
        ok(
            "request principals at a waypoint",
            "Source.requestPrincipals",
            ap(
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], rules: [{from: [{source: {requestPrincipals: ['issuer/subject'], notRequestPrincipals: ['issuer/banned']}}]}]}",
            ),
        ),
        ok(
            "jwt conditions at a waypoint",
            "Condition request.auth.*",
            ap(
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], rules: [{when: [{key: 'request.auth.claims[group]', values: [admin]}, {key: 'request.auth.claims[org][team]', values: [a]}, {key: request.auth.principal, values: [i/s]}, {key: request.auth.audiences, values: [a]}, {key: request.auth.presenter, values: [p]}]}]}",
            ),
        ),
        warns(
            "audit",
            "AuthorizationPolicy AUDIT",
            ap("{action: AUDIT, rules: [{to: [{operation: {paths: ['/x']}}]}]}"),
            "spec.action",
            NOT_APPLIED,
        ),
        bad(
            "selector with targetRefs",
            "validateOneOfSelectorType; CRD rule",
            ap("{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Service, name: a}]}"),
            "spec",
            "only one of targetRefs or workloadSelector",
        ),
        bad(
            "custom without provider",
            "ValidateAuthorizationPolicy: CUSTOM",
            ap("{action: CUSTOM, rules: [{}]}"),
            "spec.provider.name",
            "`provider.name` must not be empty",
        ),
        bad(
            "custom with namespaces",
            "ValidateAuthorizationPolicy: CUSTOM",
            ap(
                "{action: CUSTOM, provider: {name: x}, rules: [{from: [{source: {namespaces: [a]}}]}]}",
            ),
            "spec.rules[0].from[0].source",
            "From.Namespaces is currently not supported with CUSTOM action",
        ),
        bad(
            "deny with provider",
            "ValidateAuthorizationPolicy",
            ap("{action: DENY, provider: {name: x}, rules: [{}]}"),
            "spec.provider",
            "must not be with non CUSTOM action, found DENY",
        ),
        bad(
            "deny without rules",
            "ValidateAuthorizationPolicy",
            ap("{action: DENY}"),
            "spec.rules",
            "DENY action without `rules`",
        ),
        bad(
            "unknown action",
            "CRD enum",
            ap("{action: BLOCK}"),
            "spec.action",
            "unknown variant `BLOCK`",
        ),
        bad(
            "empty principal",
            "CheckEmptyValues",
            ap("{rules: [{from: [{source: {principals: ['']}}]}]}"),
            "spec.rules[0].from[0].source.principals",
            "empty value not allowed",
        ),
        bad(
            "service accounts with principals",
            "ValidateAuthorizationPolicy; CRD rule",
            ap("{rules: [{from: [{source: {serviceAccounts: ['bar/sa'], principals: ['bar']}}]}]}"),
            "spec.rules[0].from[0].source",
            "cannot set serviceAccounts with namespaces or principals",
        ),
        bad(
            "service account wildcard",
            "CheckServiceAccount",
            ap("{rules: [{from: [{source: {serviceAccounts: ['ns/*']}}]}]}"),
            "spec.rules[0].from[0].source.serviceAccounts",
            "wildcard not allowed",
        ),
        bad(
            "empty source",
            "ValidateAuthorizationPolicy",
            ap("{rules: [{from: [{source: {}}]}]}"),
            "spec.rules[0].from[0].source",
            "must not be empty",
        ),
        bad(
            "empty from",
            "ValidateAuthorizationPolicy",
            ap("{rules: [{from: []}]}"),
            "spec.rules[0].from",
            "`from` must not be empty",
        ),
        bad(
            "bad port",
            "ValidatePorts",
            ap("{rules: [{to: [{operation: {ports: ['70000']}}]}]}"),
            "spec.rules[0].to[0].operation.ports",
            "bad port",
        ),
        bad(
            "bad condition key",
            "ValidateAttribute",
            ap("{rules: [{when: [{key: 'destination.labels[app]', values: [a]}]}]}"),
            "spec.rules[0].when[0].values",
            "replaced by the workload selector",
        ),
        bad(
            "condition without values",
            "ValidateAuthorizationPolicy",
            ap("{rules: [{when: [{key: source.ip}]}]}"),
            "spec.rules[0].when[0]",
            "at least one of `values` or `notValues`",
        ),
        bad(
            "bad ip block",
            "ValidateIPs",
            ap("{rules: [{from: [{source: {ipBlocks: ['10.0.0.0/40']}}]}]}"),
            "spec.rules[0].from[0].source.ipBlocks",
            "bad CIDR range",
        ),
        bad(
            "bad path template",
            "CheckValidPathTemplate",
            ap("{rules: [{to: [{operation: {paths: ['/a/{**}/b/{*}']}}]}]}"),
            "spec.rules[0].to[0].operation.paths",
            "{**} is not the last operator",
        ),
        bad(
            "bad targetRef kind",
            "validatePolicyTargetReference",
            ap("{targetRef: {kind: Deployment, name: x}}"),
            "spec.targetRef",
            "targetRef must be to one of",
        ),
        bad(
            "cross namespace targetRef",
            "validatePolicyTargetReference; CRD rule",
            ap("{targetRefs: [{kind: Service, name: x, namespace: other}]}"),
            "spec.targetRefs[0].namespace",
            "cross namespace referencing is not supported",
        ),
        ok(
            "dry run",
            "checkDryRunAnnotation: ParseBool",
            annotated("true", "{action: DENY, rules: [{}]}"),
        ),
        bad(
            "dry run not a boolean",
            "checkDryRunAnnotation",
            annotated("yes", "{action: DENY, rules: [{}]}"),
            "metadata.annotations.istio.io/dry-run",
            "invalid value",
        ),
        bad(
            "dry run on custom",
            "checkDryRunAnnotation: ALLOW/DENY only",
            annotated("true", "{action: CUSTOM, provider: {name: x}, rules: [{}]}"),
            "metadata.annotations.istio.io/dry-run",
            "only supports action ALLOW/DENY",
        ),
    ]);
}

#[test]
fn dry_run_is_authorization_policy_only() {
    run(&[bad(
        "dry run on a VirtualService",
        "checkDryRunAnnotation: unsupported annotation",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: t, namespace: ns, annotations: {istio.io/dry-run: 'true'}}\nspec: {hosts: [a], http: [{route: [{destination: {host: a}}]}]}\n".to_owned(),
        "metadata.annotations.istio.io/dry-run",
        "unsupported annotation",
    )]);
}

#[test]
fn http_attributes_in_policies_node_agents_enforce_are_warned_about() {
    let warnings = |spec: &str| -> Vec<(String, String)> {
        let (errors, warnings) = findings(&ap(spec));
        assert!(errors.is_empty(), "{errors:?}");
        warnings
            .into_iter()
            .filter(|(_, reason)| reason.contains("which node agents cannot evaluate"))
            .collect()
    };
    let deny = warnings(
        "{selector: {matchLabels: {app: a}}, action: DENY, rules: [{to: [{operation: {paths: [/admin], ports: ['80']}}]}]}",
    );
    assert_eq!(deny.len(), 1, "{deny:?}");
    assert_eq!(deny[0].0, "spec.rules[0].to[0].operation.paths");
    assert!(deny[0].1.contains("refuses every connection"), "{deny:?}");
    let allow = warnings(
        "{rules: [{from: [{source: {requestPrincipals: ['*']}}], when: [{key: 'request.auth.claims[iss]', values: [x]}]}]}",
    );
    assert_eq!(
        allow.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        [
            "spec.rules[0].from[0].source.requestPrincipals",
            "spec.rules[0].when[0] (request.auth.claims[iss])"
        ]
    );
    assert!(allow[0].1.contains("allow nothing"), "{allow:?}");
    // Enforced per request by a waypoint, or without HTTP attributes: nothing to say.
    assert!(
        warnings(
            "{targetRefs: [{kind: Service, group: '', name: s}], action: DENY, rules: [{to: [{operation: {paths: [/x]}}]}]}"
        )
        .is_empty()
    );
    assert!(warnings("{action: DENY, rules: [{to: [{operation: {ports: ['80']}}]}]}").is_empty());
}
