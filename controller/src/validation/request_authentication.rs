//! RequestAuthentication, as Istio's `ValidateRequestAuthentication` and `validateJwtRule`
//! (`validation.go`) and the CEL rules of its CRD check it.

use super::Findings;
use super::common::{check_duration, check_policy_selection};
use crate::model::security::*;

pub fn validate(spec: &RequestAuthenticationSpec, findings: &mut Findings) {
    check_policy_selection(
        findings,
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
    );
    for (i, rule) in spec.jwt_rules.iter().enumerate() {
        jwt_rule(findings, &format!("spec.jwtRules[{i}]"), rule);
    }
}

/// Istio's `security.ParseJwksURI`: an `http` or `https` URL with a host.
fn jwks_uri(uri: &str) -> Result<(), String> {
    let url = http::Uri::try_from(uri).map_err(|e| format!("invalid jwksUri {uri:?}: {e}"))?;
    match url.scheme_str() {
        Some("http" | "https") => Ok(()),
        scheme => Err(format!(
            "URI scheme {:?} is not supported",
            scheme.unwrap_or("")
        )),
    }
}

/// Istio's JWKS check: a JSON Web Key Set (`{"keys": [...]}`) whose keys name their type.
fn jwks(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("jwks parse error: {e}"))?;
    let keys = match value.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys.clone(),
        Some(_) => return Err("jwks parse error: keys is not an array".to_owned()),
        // A single key is accepted as a set of one.
        None if value.get("kty").is_some() => vec![value],
        None => return Err("jwks parse error: no keys".to_owned()),
    };
    for key in &keys {
        if !key.get("kty").is_some_and(serde_json::Value::is_string) {
            return Err("jwks parse error: a key has no \"kty\"".to_owned());
        }
    }
    Ok(keys)
}

/// Istio's `validateJwtRule` (and `warnPrivateJwksKeys`).
fn jwt_rule(findings: &mut Findings, path: &str, rule: &JwtRule) {
    for (i, audience) in rule.audiences.iter().enumerate() {
        if audience.is_empty() {
            findings.error(
                format!("{path}.audiences[{i}]"),
                "audience must be non-empty string",
            );
        }
    }
    let issuer = rule.issuer.as_deref().unwrap_or("");
    let uri = rule.jwks_uri().unwrap_or("");
    if issuer.is_empty() && uri.is_empty() {
        findings.error(
            format!("{path}.issuer"),
            "issuer or jwksUri must be non-empty string",
        );
    }
    let sources = usize::from(rule.jwks_uri.is_some())
        + usize::from(rule.jwks_uri_legacy.is_some())
        + usize::from(rule.jwks.is_some());
    if sources > 1 {
        findings.error(path, "only one of jwks or jwksUri can be set");
    }
    if !uri.is_empty() {
        findings.check(format!("{path}.jwksUri"), jwks_uri(uri));
    }
    if let Some(text) = rule.jwks.as_deref().filter(|j| !j.is_empty()) {
        match jwks(text) {
            Err(reason) => findings.error(format!("{path}.jwks"), reason),
            Ok(keys) => {
                for (i, key) in keys.iter().enumerate() {
                    // Private parts: `d` (RSA, EC, OKP), or a symmetric key.
                    let private = key.get("d").is_some()
                        || key.get("kty").and_then(|k| k.as_str()) == Some("oct");
                    if private {
                        findings.warn(
                            format!("{path}.jwks"),
                            format!("jwks key at index {i} contains private key material; only public keys are used for verification"),
                        );
                    }
                }
            }
        }
    }
    for (i, header) in rule.from_headers.iter().enumerate() {
        if header.name.is_empty() {
            findings.error(
                format!("{path}.fromHeaders[{i}].name"),
                "location header name must be non-empty string",
            );
        }
    }
    for (i, param) in rule.from_params.iter().enumerate() {
        if param.is_empty() {
            findings.error(
                format!("{path}.fromParams[{i}]"),
                "location query must be non-empty string",
            );
        }
    }
    for (i, cookie) in rule.from_cookies.iter().enumerate() {
        if cookie.is_empty() {
            findings.error(
                format!("{path}.fromCookies[{i}]"),
                "cookie name must be non-empty string",
            );
        }
    }
    for (i, claim) in rule.output_claim_to_headers.iter().enumerate() {
        let claim_path = format!("{path}.outputClaimToHeaders[{i}]");
        if claim.claim.is_empty() || claim.header.is_empty() {
            findings.error(
                &claim_path,
                "outputClaimToHeaders header and claim value must be non-empty string",
            );
            continue;
        }
        let valid = claim
            .header
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            findings.error(
                format!("{claim_path}.header"),
                format!("header name {} is not a valid header name", claim.header),
            );
        }
    }
    for (i, claim) in rule.space_delimited_claims.iter().enumerate() {
        if claim.is_empty() {
            findings.error(
                format!("{path}.spaceDelimitedClaims[{i}]"),
                "claim name must be non-empty string",
            );
        }
    }
    if rule.space_delimited_claims.len() > 64 {
        findings.error(
            format!("{path}.spaceDelimitedClaims"),
            "at most 64 claims may be listed",
        );
    }
    if let Some(timeout) = &rule.timeout {
        check_duration(findings, format!("{path}.timeout"), timeout);
    }
}
