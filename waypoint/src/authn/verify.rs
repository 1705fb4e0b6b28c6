//! One token: where it is found, whether a rule accepts it (in the order Envoy's
//! `jwt_verify_lib` and `jwt_authn` check), and the headers a validated token sets.

use base64::Engine;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::{DecodePaddingMode, general_purpose};
use http::{HeaderMap, HeaderValue, StatusCode};
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use weft_policy::request_auth::RequestAuth;

use super::{EcCurve, JwtProvider, KeyFamily, TokenLocation, normalize_audience};

/// Envoy's default `clock_skew_seconds`, which Istio keeps.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// base64url, padded or not, as Envoy decodes token segments.
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a token is refused; the message is Envoy's, the body of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections")]
    BadFormat,
    #[error("Jwt header is an invalid Base64url encoded")]
    HeaderBadBase64,
    #[error("Jwt header is an invalid JSON")]
    HeaderBadJson,
    #[error("Jwt header [alg] field is required and must be a string")]
    HeaderBadAlg,
    #[error("Jwt header [alg] is not supported")]
    HeaderNotImplementedAlg,
    #[error("Jwt header [kid] field is not a string")]
    HeaderBadKid,
    #[error("Jwt payload is an invalid Base64url encoded")]
    PayloadBadBase64,
    #[error("Jwt payload is an invalid JSON")]
    PayloadBadJson,
    #[error("Jwt payload [iss] field is not a string")]
    IssNotString,
    #[error("Jwt payload [sub] field is not a string")]
    SubNotString,
    #[error("Jwt signature is an invalid Base64url encoded")]
    SignatureBadBase64,
    #[error("Jwt issuer is not configured")]
    UnknownIssuer,
    #[error("Jwt is expired")]
    Expired,
    #[error("Jwt not yet valid")]
    NotYetValid,
    #[error("Audiences in Jwt are not allowed")]
    AudienceNotAllowed,
    #[error("Jwks doesn't have key to match kid or alg from Jwt")]
    KidAlgMismatch,
    #[error("Jwt verification fails")]
    VerificationFails,
}

impl JwtError {
    /// Envoy answers a disallowed audience with 403 and every other refusal with 401.
    pub fn status(self) -> StatusCode {
        match self {
            JwtError::AudienceNotAllowed => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The first token in the providers' locations, and where it was.
pub(super) fn find_token(
    providers: &[&JwtProvider],
    headers: &HeaderMap,
    query: Option<&str>,
) -> Option<(String, TokenLocation)> {
    for provider in providers {
        for location in &provider.locations {
            if let Some(token) = extract(location, headers, query) {
                return Some((token, location.clone()));
            }
        }
    }
    None
}

fn extract(location: &TokenLocation, headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    match location {
        TokenLocation::Header { name, prefix } => headers.get_all(name).iter().find_map(|v| {
            let value = v.to_str().ok()?.trim();
            let token = if prefix.is_empty() {
                value
            } else {
                let head = value.get(..prefix.len())?;
                if !head.eq_ignore_ascii_case(prefix) {
                    return None;
                }
                &value[prefix.len()..]
            };
            let token = token.trim();
            (!token.is_empty()).then(|| token.to_owned())
        }),
        TokenLocation::Param(name) => query?.split('&').find_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            (key == name && !value.is_empty()).then(|| value.to_owned())
        }),
        TokenLocation::Cookie(name) => headers
            .get_all(http::header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                let value = value.trim_matches('"');
                (key == name && !value.is_empty()).then(|| value.to_owned())
            }),
    }
}

/// A token split and decoded, not yet trusted.
struct ParsedToken<'t> {
    alg: Algorithm,
    kid: Option<String>,
    /// `header.payload`, what the signature covers.
    signed: &'t str,
    payload_b64: &'t str,
    signature_b64: &'t str,
    payload: Map<String, Value>,
}

fn parse(token: &str) -> Result<ParsedToken<'_>, JwtError> {
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::BadFormat);
    };
    let header = BASE64URL
        .decode(header_b64)
        .map_err(|_| JwtError::HeaderBadBase64)?;
    let header: Map<String, Value> =
        serde_json::from_slice(&header).map_err(|_| JwtError::HeaderBadJson)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(JwtError::HeaderBadAlg)?
        .parse::<Algorithm>()
        .map_err(|_| JwtError::HeaderNotImplementedAlg)?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(JwtError::HeaderBadKid),
    };
    let payload = BASE64URL
        .decode(payload_b64)
        .map_err(|_| JwtError::PayloadBadBase64)?;
    let payload: Map<String, Value> =
        serde_json::from_slice(&payload).map_err(|_| JwtError::PayloadBadJson)?;
    let signature = BASE64URL
        .decode(signature_b64)
        .map_err(|_| JwtError::SignatureBadBase64)?;
    if signature.is_empty() {
        return Err(JwtError::BadFormat);
    }
    for (claim, error) in [
        ("iss", JwtError::IssNotString),
        ("sub", JwtError::SubNotString),
    ] {
        if payload.get(claim).is_some_and(|v| !v.is_string()) {
            return Err(error);
        }
    }
    Ok(ParsedToken {
        alg,
        kid,
        signed: &token[..header_b64.len() + 1 + payload_b64.len()],
        payload_b64,
        signature_b64: signature_b64.trim_end_matches('='),
        payload,
    })
}

fn audiences(payload: &Map<String, Value>) -> Vec<String> {
    match payload.get("aud") {
        Some(Value::String(aud)) => vec![aud.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}

fn family_of(alg: Algorithm) -> KeyFamily {
    use Algorithm as A;
    match alg {
        A::HS256 | A::HS384 | A::HS512 => KeyFamily::Hmac,
        A::ES256 => KeyFamily::Ec(EcCurve::P256),
        A::ES384 => KeyFamily::Ec(EcCurve::P384),
        A::EdDSA => KeyFamily::Ed25519,
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => KeyFamily::Rsa,
    }
}

/// The provider's checks after parsing, in Envoy's order: time, audiences, then the keys.
fn check(provider: &JwtProvider, token: &ParsedToken<'_>, now: u64) -> Result<(), JwtError> {
    let time = |claim| token.payload.get(claim).and_then(Value::as_u64);
    if let Some(exp) = time("exp")
        && now > exp.saturating_add(CLOCK_SKEW_SECONDS)
    {
        return Err(JwtError::Expired);
    }
    if let Some(nbf) = time("nbf")
        && now.saturating_add(CLOCK_SKEW_SECONDS) < nbf
    {
        return Err(JwtError::NotYetValid);
    }
    if !provider.audiences.is_empty()
        && !audiences(&token.payload)
            .iter()
            .any(|aud| provider.audiences.contains(&normalize_audience(aud)))
    {
        return Err(JwtError::AudienceNotAllowed);
    }
    let family = family_of(token.alg);
    let mut tried = false;
    for key in &provider.keys {
        let kid_matches = match (&token.kid, &key.kid) {
            (Some(token_kid), Some(key_kid)) => token_kid == key_kid,
            _ => true,
        };
        if !kid_matches || key.alg.is_some_and(|alg| alg != token.alg) || key.family != family {
            continue;
        }
        tried = true;
        // The family check above keeps `verify` from meeting a key of another family.
        if jsonwebtoken::crypto::verify(
            token.signature_b64,
            token.signed.as_bytes(),
            &key.key,
            token.alg,
        )
        .unwrap_or(false)
        {
            return Ok(());
        }
    }
    Err(if tried {
        JwtError::VerificationFails
    } else {
        JwtError::KidAlgMismatch
    })
}

/// A token a provider accepted.
pub(super) struct Validated<'p> {
    pub provider: &'p JwtProvider,
    /// What authorization reads.
    pub auth: RequestAuth,
    /// The payload segment, as the token carried it.
    pub payload_b64: String,
    /// The payload as signed (space-delimited claims not split).
    pub payload: Map<String, Value>,
}

/// Validates `token` found at `location` against the providers of its issuer that read that
/// location; the first to accept it wins, else the first refusal is the answer.
pub(super) fn validate<'p>(
    providers: &[&'p JwtProvider],
    token: &str,
    location: &TokenLocation,
    now: u64,
) -> Result<Validated<'p>, JwtError> {
    let parsed = parse(token)?;
    let issuer = parsed
        .payload
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or("");
    let mut first_error = None;
    for provider in providers
        .iter()
        .filter(|p| p.issuer == issuer && p.locations.contains(location))
    {
        match check(provider, &parsed, now) {
            Ok(()) => {
                return Ok(Validated {
                    provider,
                    auth: request_auth(provider, &parsed),
                    payload_b64: parsed.payload_b64.to_owned(),
                    payload: parsed.payload,
                });
            }
            Err(error) => {
                first_error.get_or_insert(error);
            }
        }
    }
    Err(first_error.unwrap_or(JwtError::UnknownIssuer))
}

fn request_auth(provider: &JwtProvider, token: &ParsedToken<'_>) -> RequestAuth {
    let text = |claim| token.payload.get(claim).and_then(Value::as_str);
    let mut claims = token.payload.clone();
    for name in &provider.space_delimited {
        if let Some(Value::String(words)) = claims.get(name) {
            let list = words
                .split_whitespace()
                .map(|w| Value::String(w.to_owned()))
                .collect();
            claims.insert(name.clone(), Value::Array(list));
        }
    }
    RequestAuth {
        principal: format!(
            "{}/{}",
            text("iss").unwrap_or(""),
            text("sub").unwrap_or("")
        ),
        audiences: audiences(&token.payload),
        presenter: text("azp").map(str::to_owned),
        claims,
    }
}

/// `outputPayloadToHeader` (the payload as the token carried it, base64url) and
/// `outputClaimToHeaders` (string, number and boolean claims; others are not copied, as in
/// Envoy).
pub(super) fn set_output_headers(token: &Validated<'_>, headers: &mut HeaderMap) {
    let provider = token.provider;
    if let Some(name) = &provider.payload_header {
        let unpadded = token.payload_b64.trim_end_matches('=');
        // Re-encode when the token's padding or alphabet differs from unpadded base64url.
        let value = match BASE64URL.decode(unpadded) {
            Ok(bytes) => general_purpose::URL_SAFE_NO_PAD.encode(bytes),
            Err(_) => unpadded.to_owned(),
        };
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name.clone(), value);
        }
    }
    for (name, path) in &provider.claim_headers {
        let mut value = token.payload.get(&path[0]);
        for part in &path[1..] {
            value = value.and_then(|v| v.get(part));
        }
        let text = match value {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            Some(Value::Bool(b)) => b.to_string(),
            _ => continue,
        };
        if let Ok(value) = HeaderValue::from_str(&text) {
            headers.insert(name.clone(), value);
        }
    }
}
