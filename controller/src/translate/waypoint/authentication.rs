//! RequestAuthentications in the waypoint's form: the ones whose `targetRefs` bind the waypoint
//! (as AuthorizationPolicies bind it; a selector never does, as in Istio), their JWT rules with
//! the keys resolved inline: `jwks` as written, `jwksUri` (or, with neither, the issuer's
//! OpenID discovery) from the controller's [`crate::jwks::JwksResolver`], as istiod inlines them.

use k8s_openapi::api::core::v1::Service;
use weft_proto::waypoint as wp;

use super::Compiler;
use crate::jwks::{DEFAULT_FETCH_TIMEOUT, JwksSource, Keys};
use crate::model::ResourceKind;
use crate::model::security::{JwtRule, RequestAuthentication};
use crate::translate::TranslateProblem;
use crate::translate::resolve::{name_of, namespace_of};

impl Compiler<'_, '_> {
    /// A RequestAuthentication for this waypoint, or `None` when it does not bind it.
    pub(super) fn request_authentication(
        &mut self,
        authentication: &RequestAuthentication,
        served: &[&Service],
    ) -> Option<wp::RequestAuthentication> {
        let spec = &authentication.spec;
        let namespace = namespace_of(&authentication.metadata);
        let targets = spec.target_ref.iter().chain(&spec.target_refs);
        let target_services = self.bound_services(targets, namespace, served)?;
        let jwt_rules = spec
            .jwt_rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                let jwks = self.jwks(authentication, &format!("spec.jwtRules[{i}]"), rule);
                jwt_rule(rule, jwks)
            })
            .collect();
        Some(wp::RequestAuthentication {
            name: name_of(&authentication.metadata).to_owned(),
            namespace: namespace.to_owned(),
            jwt_rules,
            target_services,
        })
    }

    /// The rule's key set, inline: empty when it is not known (its tokens are refused).
    fn jwks(
        &mut self,
        authentication: &RequestAuthentication,
        path: &str,
        rule: &JwtRule,
    ) -> String {
        if let Some(jwks) = &rule.jwks {
            return inline_jwks(jwks);
        }
        let source = match rule.jwks_uri() {
            Some(uri) => JwksSource::Uri(uri.to_owned()),
            None => JwksSource::Discovery {
                issuer: rule.issuer.clone().unwrap_or_default(),
            },
        };
        let (jwks, error, stale) = match self.settings.jwks.keys(&source, fetch_timeout(rule)) {
            Keys::Fetched { jwks, stale } => (jwks, stale, true),
            Keys::Missing { error } => (String::new(), error, false),
        };
        if let Some(error) = error {
            self.report(
                ResourceKind::RequestAuthentication,
                &authentication.metadata,
                TranslateProblem::JwksUnavailable {
                    path: path.to_owned(),
                    url: source.to_string(),
                    error,
                    stale,
                },
            );
        }
        jwks
    }
}

/// How long a fetch of the rule's keys may take: its `timeout` (validation admits only positive
/// durations), else istiod's default.
pub(crate) fn fetch_timeout(rule: &JwtRule) -> std::time::Duration {
    rule.timeout
        .as_ref()
        .and_then(|timeout| timeout.parse().ok())
        .filter(|d| !d.negative && !d.magnitude.is_zero())
        .map_or(DEFAULT_FETCH_TIMEOUT, |d| d.magnitude)
}

/// An inline `jwks`: a key set, or a single key taken as a set of one (as Istio takes it).
fn inline_jwks(jwks: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(jwks) {
        Ok(key) if key.get("keys").is_none() && key.get("kty").is_some() => {
            serde_json::json!({ "keys": [key] }).to_string()
        }
        _ => jwks.to_owned(),
    }
}

fn jwt_rule(rule: &JwtRule, jwks: String) -> wp::JwtRule {
    wp::JwtRule {
        issuer: rule.issuer.clone().unwrap_or_default(),
        audiences: rule.audiences.clone(),
        jwks,
        from_headers: rule
            .from_headers
            .iter()
            .map(|h| wp::JwtHeader {
                name: h.name.clone(),
                prefix: h.prefix.clone().unwrap_or_default(),
            })
            .collect(),
        from_params: rule.from_params.clone(),
        from_cookies: rule.from_cookies.clone(),
        output_payload_to_header: rule.output_payload_to_header.clone().unwrap_or_default(),
        forward_original_token: rule.forward_original_token.unwrap_or(false),
        output_claim_to_headers: rule
            .output_claim_to_headers
            .iter()
            .map(|c| wp::ClaimToHeader {
                header: c.header.clone(),
                claim: c.claim.clone(),
            })
            .collect(),
        space_delimited_claims: rule.space_delimited_claims.clone(),
    }
}
