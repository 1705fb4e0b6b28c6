//! JWT request authentication, as Envoy's `jwt_authn` filter applies Istio's
//! RequestAuthentication: the token is looked for where the rules say, validated against the
//! rule of its issuer, and becomes the request's [`RequestAuth`] for authorization.
//!
//! Istio's semantics, which Envoy's filter implements for it (`requires_any` of the rules, then
//! `allow_missing`):
//! - no token in any of the rules' locations: the request passes, with no request principal
//!   (an AuthorizationPolicy decides whether that is enough);
//! - a token no rule accepts (malformed, unknown issuer, expired, not yet valid, bad signature,
//!   no key for its `kid`/`alg`) is refused with 401 and Envoy's message as the body; a token
//!   whose audiences the rule does not allow, with 403 (Envoy's `JwtAudienceNotAllowed`);
//! - `exp` and `nbf` are checked with Envoy's default clock skew of 60 s; a token without
//!   `exp` does not expire;
//! - the request principal is `iss/sub`.
//!
//! Where we choose: the first token found (rules in order, each rule's locations in order)
//! is the one validated, as Envoy validates the first token it extracts for a provider. The
//! output headers of every rule (`outputPayloadToHeader`, `outputClaimToHeaders`) are removed
//! from every request before they are set from a validated token, so a client cannot send them
//! itself (Envoy only overwrites them; we are stricter). Keys come inline (the controller
//! resolves `jwksUri`); the rule's conversion is in this module, the token's in `verify`.

mod verify;

use std::sync::Arc;

use http::HeaderMap;
use http::header::HeaderName;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use weft_policy::request_auth::RequestAuth;
use weft_proto::waypoint as proto;

use crate::model::ConfigError;

pub use verify::{CLOCK_SKEW_SECONDS, JwtError};

/// Claims Envoy splits on spaces for every provider (Istio's defaults).
const DEFAULT_SPACE_DELIMITED_CLAIMS: [&str; 2] = ["scope", "permission"];

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLocation {
    /// A header, its value starting with `prefix` (removed before validation).
    Header { name: HeaderName, prefix: String },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

/// The key families JWS algorithms need: a key only verifies its own family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    /// With its curve (`P-256`, `P-384`).
    Ec(EcCurve),
    Ed25519,
    Hmac,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EcCurve {
    P256,
    P384,
}

/// One key of a JWKS.
pub struct JwtKey {
    kid: Option<String>,
    /// The `alg` the key is restricted to, when the JWKS says.
    alg: Option<Algorithm>,
    family: KeyFamily,
    key: DecodingKey,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("family", &self.family)
            .finish_non_exhaustive()
    }
}

/// One accepted issuer (an Istio `JWTRule`), ready for the request path.
#[derive(Debug)]
pub struct JwtProvider {
    pub issuer: String,
    /// Normalized as Envoy compares them (no scheme, no trailing `/`).
    audiences: Vec<String>,
    keys: Vec<JwtKey>,
    locations: Vec<TokenLocation>,
    forward: bool,
    payload_header: Option<HeaderName>,
    /// Header, then the claim's path (`a.b` split on dots).
    claim_headers: Vec<(HeaderName, Vec<String>)>,
    space_delimited: Vec<String>,
}

impl JwtProvider {
    /// The headers a validated token sets upstream.
    fn output_headers(&self) -> impl Iterator<Item = &HeaderName> {
        self.payload_header
            .iter()
            .chain(self.claim_headers.iter().map(|(header, _)| header))
    }
}

/// A RequestAuthentication's rules and the services it is scoped to (empty: all).
#[derive(Debug, Clone)]
pub struct TargetedAuthentication {
    pub name: String,
    pub namespace: String,
    pub providers: Vec<Arc<JwtProvider>>,
    pub target_services: Vec<String>,
}

/// What authentication leaves for the rest of the request: the validated JWT, if any.
pub type Authenticated = Option<RequestAuth>;

/// Authenticates a request: finds its token, validates it, removes the token header (unless
/// the rule forwards it) and sets the rule's output headers. `now` is in seconds since the Unix
/// epoch. With no provider the request is left untouched.
pub fn authenticate(
    providers: &[&JwtProvider],
    headers: &mut HeaderMap,
    query: Option<&str>,
    now: u64,
) -> Result<Authenticated, JwtError> {
    if providers.is_empty() {
        return Ok(None);
    }
    for provider in providers {
        for header in provider.output_headers() {
            headers.remove(header);
        }
    }
    let Some((token, location)) = verify::find_token(providers, headers, query) else {
        return Ok(None);
    };
    let validated = verify::validate(providers, &token, &location, now)?;
    if !validated.provider.forward
        && let TokenLocation::Header { name, .. } = &location
    {
        headers.remove(name);
    }
    verify::set_output_headers(&validated, headers);
    Ok(Some(validated.auth))
}

fn header_name(name: &str, context: &str) -> Result<HeaderName, ConfigError> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
        ConfigError::HeaderName {
            context: context.to_owned(),
            name: name.to_owned(),
        }
    })
}

/// The keys of a JWKS that can be used; keys of unknown types or with bad parameters are
/// skipped, as Envoy skips them. An unusable JWKS gives no key: every token is refused.
fn jwks_keys(jwks: &str) -> Vec<JwtKey> {
    let Ok(set) = serde_json::from_str::<Value>(jwks) else {
        return Vec::new();
    };
    let Some(keys) = set.get("keys").and_then(Value::as_array) else {
        return Vec::new();
    };
    keys.iter().filter_map(jwk_key).collect()
}

fn jwk_key(value: &Value) -> Option<JwtKey> {
    let text = |name: &str| value.get(name).and_then(Value::as_str);
    let family = match (text("kty")?, text("crv")) {
        ("RSA", _) => KeyFamily::Rsa,
        ("EC", Some("P-256")) => KeyFamily::Ec(EcCurve::P256),
        ("EC", Some("P-384")) => KeyFamily::Ec(EcCurve::P384),
        ("OKP", Some("Ed25519")) => KeyFamily::Ed25519,
        ("oct", _) => KeyFamily::Hmac,
        _ => return None,
    };
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(value.clone()).ok()?;
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    let alg = match text("alg") {
        Some(alg) => Some(alg.parse::<Algorithm>().ok()?),
        None => None,
    };
    Some(JwtKey {
        kid: text("kid").map(str::to_owned),
        alg,
        family,
        key,
    })
}

/// Envoy's audience comparison: without `http://`/`https://` and a trailing `/`.
fn normalize_audience(audience: &str) -> String {
    let stripped = audience
        .strip_prefix("http://")
        .or_else(|| audience.strip_prefix("https://"))
        .unwrap_or(audience);
    stripped.strip_suffix('/').unwrap_or(stripped).to_owned()
}

fn provider(rule: &proto::JwtRule, context: &str) -> Result<JwtProvider, ConfigError> {
    let context = format!("{context}: jwt rule for issuer {:?}", rule.issuer);
    let context = context.as_str();
    let mut locations = Vec::new();
    for h in &rule.from_headers {
        locations.push(TokenLocation::Header {
            name: header_name(&h.name, context)?,
            prefix: h.prefix.clone(),
        });
    }
    locations.extend(rule.from_params.iter().cloned().map(TokenLocation::Param));
    locations.extend(rule.from_cookies.iter().cloned().map(TokenLocation::Cookie));
    if locations.is_empty() {
        locations = vec![
            TokenLocation::Header {
                name: http::header::AUTHORIZATION,
                prefix: "Bearer ".to_owned(),
            },
            TokenLocation::Param("access_token".to_owned()),
        ];
    }
    let payload_header = match rule.output_payload_to_header.as_str() {
        "" => None,
        name => Some(header_name(name, context)?),
    };
    let claim_headers = rule
        .output_claim_to_headers
        .iter()
        .map(|c| {
            Ok((
                header_name(&c.header, context)?,
                c.claim.split('.').map(str::to_owned).collect(),
            ))
        })
        .collect::<Result<_, ConfigError>>()?;
    Ok(JwtProvider {
        issuer: rule.issuer.clone(),
        audiences: rule
            .audiences
            .iter()
            .map(|a| normalize_audience(a))
            .collect(),
        keys: jwks_keys(&rule.jwks),
        locations,
        forward: rule.forward_original_token,
        payload_header,
        claim_headers,
        space_delimited: DEFAULT_SPACE_DELIMITED_CLAIMS
            .iter()
            .map(|c| (*c).to_owned())
            .chain(rule.space_delimited_claims.iter().cloned())
            .collect(),
    })
}

/// A RequestAuthentication from the waypoint's configuration.
pub fn authentication(
    a: &proto::RequestAuthentication,
) -> Result<TargetedAuthentication, ConfigError> {
    let context = format!("request authentication {}/{}", a.namespace, a.name);
    let providers = a
        .jwt_rules
        .iter()
        .map(|rule| provider(rule, &context).map(Arc::new))
        .collect::<Result<_, _>>()?;
    Ok(TargetedAuthentication {
        name: a.name.clone(),
        namespace: a.namespace.clone(),
        providers,
        target_services: a.target_services.clone(),
    })
}

#[cfg(test)]
mod tests;
