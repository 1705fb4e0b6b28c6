//! RequestAuthentication: Istio's `ValidateRequestAuthentication` and `validateJwtRule`
//! (`validation.go`) and the CRD's rules.

use super::*;

fn ra(spec: &str) -> String {
    doc(SEC, "RequestAuthentication", spec)
}

#[test]
fn request_authentication_rules() {
    run(&[
        warns(
            "issuer and jwks uri",
            "ValidateRequestAuthentication",
            ra(
                "{selector: {matchLabels: {app: a}}, jwtRules: [{issuer: 'https://issuer.example.com', jwksUri: 'https://issuer.example.com/jwks.json', audiences: [a], fromHeaders: [{name: x-jwt, prefix: 'Bearer '}], fromParams: [token], outputPayloadToHeader: x-payload, forwardOriginalToken: true, outputClaimToHeaders: [{header: x-sub, claim: sub}], timeout: 5s}]}",
            ),
            "spec.selector",
            crate::validation::NOT_APPLIED,
        ),
        ok(
            "fetch timeout",
            "JWTRule.timeout",
            ra(
                "{targetRefs: [{kind: Service, name: a}], jwtRules: [{issuer: i, jwksUri: 'https://i/jwks', timeout: 1500ms}]}",
            ),
        ),
        ok(
            "targetRefs and every applied field",
            "ValidateRequestAuthentication",
            ra(
                "{targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}], jwtRules: [{issuer: 'https://issuer.example.com', jwksUri: 'https://issuer.example.com/jwks.json', audiences: [a], fromHeaders: [{name: x-jwt, prefix: 'Bearer '}], fromParams: [token], fromCookies: [session], outputPayloadToHeader: x-payload, forwardOriginalToken: true, outputClaimToHeaders: [{header: x-sub, claim: sub}], spaceDelimitedClaims: [roles]}]}",
            ),
        ),
        ok(
            "legacy jwks_uri",
            "CRD: jwks_uri",
            ra("{jwtRules: [{issuer: i, jwks_uri: 'http://i/jwks'}]}"),
        ),
        ok(
            "inline jwks",
            "validateJwtRule: jwk.Parse",
            ra(
                r#"{jwtRules: [{issuer: i, jwks: '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "abc"}]}'}]}"#,
            ),
        ),
        warns(
            "private key in jwks",
            "warnPrivateJwksKeys",
            ra(
                r#"{jwtRules: [{issuer: i, jwks: '{"keys": [{"kty": "RSA", "e": "AQAB", "n": "abc", "d": "secret"}]}'}]}"#,
            ),
            "spec.jwtRules[0].jwks",
            "private key material",
        ),
        bad(
            "bad jwks",
            "validateJwtRule: jwks parse error",
            ra("{jwtRules: [{issuer: i, jwks: 'not json'}]}"),
            "spec.jwtRules[0].jwks",
            "jwks parse error",
        ),
        bad(
            "no issuer or uri",
            "validateJwtRule",
            ra("{jwtRules: [{audiences: [a]}]}"),
            "spec.jwtRules[0].issuer",
            "issuer or jwksUri must be non-empty",
        ),
        bad(
            "jwks and uri",
            "CRD: only one of jwks or jwksUri",
            ra(r#"{jwtRules: [{issuer: i, jwksUri: 'https://i/j', jwks: '{"keys": []}'}]}"#),
            "spec.jwtRules[0]",
            "only one of jwks or jwksUri",
        ),
        bad(
            "uri scheme",
            "ParseJwksURI; CRD: url must have scheme http:// or https://",
            ra("{jwtRules: [{issuer: i, jwksUri: 'ftp://i/j'}]}"),
            "spec.jwtRules[0].jwksUri",
            "is not supported",
        ),
        bad(
            "empty audience",
            "validateJwtRule",
            ra("{jwtRules: [{issuer: i, audiences: ['']}]}"),
            "spec.jwtRules[0].audiences[0]",
            "non-empty",
        ),
        bad(
            "empty header name",
            "validateJwtRule; CRD required name",
            ra("{jwtRules: [{issuer: i, fromHeaders: [{name: ''}]}]}"),
            "spec.jwtRules[0].fromHeaders[0].name",
            "non-empty",
        ),
        bad(
            "bad claim header",
            "ValidateStrictHTTPHeaderName; CRD pattern",
            ra("{jwtRules: [{issuer: i, outputClaimToHeaders: [{header: 'x y', claim: sub}]}]}"),
            "spec.jwtRules[0].outputClaimToHeaders[0].header",
            "not a valid header name",
        ),
        bad(
            "bad timeout",
            "validateJwtRule: ValidateDuration; CRD rule",
            ra("{jwtRules: [{issuer: i, timeout: 0s}]}"),
            "spec.jwtRules[0].timeout",
            "greater than 1ms",
        ),
        bad(
            "negative timeout",
            "validateJwtRule: ValidateDuration",
            ra("{jwtRules: [{issuer: i, timeout: -2s}]}"),
            "spec.jwtRules[0].timeout",
            "greater than 1ms",
        ),
        bad(
            "selector and targetRef",
            "validateOneOfSelectorType; CRD rule",
            ra(
                "{selector: {matchLabels: {app: a}}, targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: w}}",
            ),
            "spec",
            "only one of targetRefs or workloadSelector",
        ),
    ]);
}
