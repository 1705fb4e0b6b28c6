//! PeerAuthentication: Istio's `ValidatePeerAuthentication` (`validation.go`) and the CRD's rules.

use super::*;

fn pa(spec: &str) -> String {
    doc(SEC, "PeerAuthentication", spec)
}

#[test]
fn peer_authentication_rules() {
    run(&[
        ok(
            "strict",
            "ValidatePeerAuthentication",
            pa("{mtls: {mode: STRICT}}"),
        ),
        ok(
            "port level with selector",
            "ValidatePeerAuthentication",
            pa(
                "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}",
            ),
        ),
        ok(
            "port keys as strings",
            "CRD: portLevelMtls keys",
            pa(
                "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {'8080': {mode: PERMISSIVE}}}",
            ),
        ),
        bad(
            "port level without selector",
            "ValidatePeerAuthentication; CRD: portLevelMtls requires selector",
            pa("{mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: PERMISSIVE}}}"),
            "spec.portLevelMtls",
            "cannot have port level mTLS",
        ),
        bad(
            "empty port level",
            "ValidatePeerAuthentication; CRD minProperties 1",
            pa("{selector: {matchLabels: {foo: bar}}, portLevelMtls: {}}"),
            "spec.portLevelMtls",
            "must have at least one element",
        ),
        bad(
            "unknown mode",
            "CRD enum",
            pa("{mtls: {mode: BLAH}}"),
            "spec.mtls.mode",
            "unknown variant `BLAH`",
        ),
        bad(
            "port key not a number",
            "CRD: type conversion error",
            pa("{selector: {matchLabels: {foo: bar}}, portLevelMtls: {acd: {mode: STRICT}}}"),
            "spec.portLevelMtls.acd",
            "is not a number",
        ),
        bad(
            "port zero",
            "ValidatePeerAuthentication; CRD: port must be between 1-65535",
            pa("{selector: {matchLabels: {app: a}}, portLevelMtls: {0: {mode: STRICT}}}"),
            "spec.portLevelMtls.0",
            "port must be in range",
        ),
        bad(
            "port too high",
            "CRD: port must be between 1-65535",
            pa(
                "{selector: {matchLabels: {foo: bar}}, portLevelMtls: {'42949672': {mode: STRICT}}}",
            ),
            "spec.portLevelMtls.42949672",
            "port must be in range",
        ),
        bad(
            "wildcard selector",
            "validateWorkloadSelector; CRD rule",
            pa("{selector: {matchLabels: {app: '*'}}}"),
            "spec.selector.matchLabels.app",
            "wildcard is not supported",
        ),
        warns(
            "empty selector",
            "validateWorkloadSelector: warning",
            pa("{selector: {}, mtls: {mode: STRICT}}"),
            "spec.selector",
            "without labels",
        ),
    ]);
}
