use http::HeaderValue;
use jsonwebtoken::Algorithm;
use serde_json::json;

use super::*;
use crate::testing::TestIssuer;

const NOW: u64 = 1_800_000_000;
const ISSUER: &str = "https://issuer.example";

fn rule(issuer: &TestIssuer) -> proto::JwtRule {
    proto::JwtRule {
        issuer: issuer.issuer.clone(),
        jwks: issuer.jwks(),
        ..Default::default()
    }
}

fn providers(rules: Vec<proto::JwtRule>) -> TargetedAuthentication {
    authentication(&proto::RequestAuthentication {
        name: "jwt".to_owned(),
        namespace: "default".to_owned(),
        jwt_rules: rules,
        target_services: Vec::new(),
    })
    .unwrap()
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    headers
}

fn run(
    authn: &TargetedAuthentication,
    headers: &mut HeaderMap,
    query: Option<&str>,
) -> Result<Authenticated, JwtError> {
    let providers: Vec<&JwtProvider> = authn.providers.iter().map(AsRef::as_ref).collect();
    authenticate(&providers, headers, query, NOW)
}

fn claims(sub: &str) -> serde_json::Value {
    json!({"sub": sub, "exp": NOW + 300})
}

#[test]
fn every_supported_algorithm_validates_and_gives_iss_sub() {
    for issuer in [
        TestIssuer::es256(ISSUER, "ec"),
        TestIssuer::ed25519(ISSUER, "ed"),
        TestIssuer::rsa(ISSUER, "rsa", Algorithm::RS256),
        TestIssuer::rsa(ISSUER, "rsa", Algorithm::PS256),
    ] {
        let authn = providers(vec![rule(&issuer)]);
        let mut headers = bearer(&issuer.token(claims("alice")));
        let auth = run(&authn, &mut headers, None)
            .unwrap_or_else(|e| panic!("{:?}: {e}", issuer.alg))
            .expect("a request principal");
        assert_eq!(
            auth.principal,
            format!("{ISSUER}/alice"),
            "{:?}",
            issuer.alg
        );
        // Not forwarded by default: the token's header is removed.
        assert!(!headers.contains_key(http::header::AUTHORIZATION));
    }
}

#[test]
fn refusals_carry_envoys_reason() {
    let issuer = TestIssuer::es256(ISSUER, "ec");
    let forger = TestIssuer::es256(ISSUER, "ec");
    let other_kid = TestIssuer::es256(ISSUER, "other");
    let stranger = TestIssuer::es256("https://stranger.example", "ec");
    let mut audience_rule = rule(&issuer);
    audience_rule.audiences = vec!["https://api.example/".to_owned()];
    let authn = providers(vec![rule(&issuer)]);
    let with_audience = providers(vec![audience_rule]);
    let cases: Vec<(&str, &TargetedAuthentication, String, Result<(), JwtError>)> = vec![
        ("valid", &authn, issuer.token(claims("a")), Ok(())),
        (
            "bad signature",
            &authn,
            forger.token(claims("a")),
            Err(JwtError::VerificationFails),
        ),
        (
            "no key for kid",
            &authn,
            other_kid.token(claims("a")),
            Err(JwtError::KidAlgMismatch),
        ),
        (
            "unknown issuer",
            &authn,
            stranger.token(claims("a")),
            Err(JwtError::UnknownIssuer),
        ),
        (
            "expired",
            &authn,
            issuer.token(json!({"sub": "a", "exp": NOW - 61})),
            Err(JwtError::Expired),
        ),
        (
            "expired within skew",
            &authn,
            issuer.token(json!({"sub": "a", "exp": NOW - 59})),
            Ok(()),
        ),
        (
            "not yet valid",
            &authn,
            issuer.token(json!({"sub": "a", "nbf": NOW + 61})),
            Err(JwtError::NotYetValid),
        ),
        (
            "nbf within skew",
            &authn,
            issuer.token(json!({"sub": "a", "nbf": NOW + 59})),
            Ok(()),
        ),
        ("no exp", &authn, issuer.token(json!({"sub": "a"})), Ok(())),
        (
            "audience",
            &with_audience,
            issuer.token(json!({"sub": "a", "aud": "api.example"})),
            Ok(()),
        ),
        (
            "audience in list",
            &with_audience,
            issuer.token(json!({"sub": "a", "aud": ["x", "https://api.example"]})),
            Ok(()),
        ),
        (
            "wrong audience",
            &with_audience,
            issuer.token(json!({"sub": "a", "aud": "web"})),
            Err(JwtError::AudienceNotAllowed),
        ),
        (
            "no audience",
            &with_audience,
            issuer.token(json!({"sub": "a"})),
            Err(JwtError::AudienceNotAllowed),
        ),
        (
            "two sections",
            &authn,
            "abc.def".to_owned(),
            Err(JwtError::BadFormat),
        ),
        (
            "bad header",
            &authn,
            "%%%.e30.c2ln".to_owned(),
            Err(JwtError::HeaderBadBase64),
        ),
        // {"alg":"none"}
        (
            "alg none",
            &authn,
            "eyJhbGciOiJub25lIn0.e30.c2ln".to_owned(),
            Err(JwtError::HeaderNotImplementedAlg),
        ),
        (
            "empty signature",
            &authn,
            format!("{}.", issuer.token(claims("a")).rsplit_once('.').unwrap().0),
            Err(JwtError::BadFormat),
        ),
    ];
    for (name, authn, token, want) in cases {
        let got = run(authn, &mut bearer(&token), None).map(|_| ());
        assert_eq!(got, want, "{name}");
    }
    assert_eq!(JwtError::Expired.to_string(), "Jwt is expired");
    assert_eq!(
        JwtError::VerificationFails.to_string(),
        "Jwt verification fails"
    );
    assert_eq!(
        JwtError::AudienceNotAllowed.status(),
        http::StatusCode::FORBIDDEN
    );
    assert_eq!(JwtError::Expired.status(), http::StatusCode::UNAUTHORIZED);
}

#[test]
fn an_hmac_token_never_meets_an_asymmetric_key() {
    // Algorithm confusion: an HS256 token "signed" with the public key must not verify.
    let issuer = TestIssuer::rsa(ISSUER, "rsa", Algorithm::RS256);
    let mut jwk = issuer.jwk();
    jwk.as_object_mut().unwrap().remove("alg");
    let mut r = rule(&issuer);
    r.jwks = json!({"keys": [jwk]}).to_string();
    let authn = providers(vec![r]);
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","kid":"rsa"}"#);
    let payload = URL_SAFE_NO_PAD.encode(format!(r#"{{"iss":"{ISSUER}","sub":"x"}}"#));
    let token = format!("{header}.{payload}.c2lnbmF0dXJl");
    assert_eq!(
        run(&authn, &mut bearer(&token), None),
        Err(JwtError::KidAlgMismatch)
    );
}

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

#[test]
fn missing_tokens_pass_without_a_principal() {
    let issuer = TestIssuer::es256(ISSUER, "ec");
    let authn = providers(vec![rule(&issuer)]);
    assert_eq!(run(&authn, &mut HeaderMap::new(), None), Ok(None));
    // Another scheme in Authorization is not a bearer token.
    let mut basic = HeaderMap::new();
    basic.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwYXNz"),
    );
    assert_eq!(run(&authn, &mut basic, None), Ok(None));
    assert!(basic.contains_key(http::header::AUTHORIZATION));
    // No provider: nothing is read or removed.
    let mut headers = bearer("garbage");
    assert_eq!(authenticate(&[], &mut headers, None, NOW), Ok(None));
    assert!(headers.contains_key(http::header::AUTHORIZATION));
}

#[test]
fn tokens_are_read_from_the_rules_locations() {
    let issuer = TestIssuer::es256(ISSUER, "ec");
    let token = issuer.token(claims("bob"));
    // Defaults: Authorization: Bearer and the access_token parameter.
    let defaults = providers(vec![rule(&issuer)]);
    let query = format!("a=1&access_token={token}");
    let auth = run(&defaults, &mut HeaderMap::new(), Some(&query)).unwrap();
    assert_eq!(auth.unwrap().principal, format!("{ISSUER}/bob"));

    let mut custom = rule(&issuer);
    custom.from_headers = vec![proto::JwtHeader {
        name: "X-Jwt".to_owned(),
        prefix: "Token ".to_owned(),
    }];
    custom.from_params = vec!["jwt".to_owned()];
    custom.from_cookies = vec!["session".to_owned()];
    let custom = providers(vec![custom]);

    let mut headers = HeaderMap::new();
    headers.insert(
        "x-jwt",
        HeaderValue::from_str(&format!("Token {token}")).unwrap(),
    );
    assert!(run(&custom, &mut headers, None).unwrap().is_some());
    assert!(
        !headers.contains_key("x-jwt"),
        "the token header is removed"
    );

    // Without its prefix the header holds no token.
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt", HeaderValue::from_str(&token).unwrap());
    assert_eq!(run(&custom, &mut headers, None), Ok(None));

    let query = format!("jwt={token}");
    assert!(
        run(&custom, &mut HeaderMap::new(), Some(&query))
            .unwrap()
            .is_some()
    );
    // The default locations are not read once the rule names its own.
    assert_eq!(run(&custom, &mut bearer(&token), None), Ok(None));

    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::COOKIE,
        HeaderValue::from_str(&format!("theme=dark; session={token}")).unwrap(),
    );
    assert!(run(&custom, &mut headers, None).unwrap().is_some());

    // An invalid token in a custom location is refused like any other.
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt", HeaderValue::from_static("Token not.a.jwt"));
    assert!(run(&custom, &mut headers, None).is_err());
}

#[test]
fn multiple_rules_each_accept_their_issuer() {
    let first = TestIssuer::es256("https://one.example", "one");
    let second = TestIssuer::ed25519("https://two.example", "two");
    let authn = providers(vec![rule(&first), rule(&second)]);
    for (issuer, sub) in [(&first, "a"), (&second, "b")] {
        let auth = run(&authn, &mut bearer(&issuer.token(claims(sub))), None)
            .unwrap()
            .unwrap();
        assert_eq!(auth.principal, format!("{}/{sub}", issuer.issuer));
    }
    // The second issuer's key does not validate a token claiming the first issuer.
    let forged = second.token(json!({"iss": "https://one.example", "sub": "x"}));
    assert_eq!(
        run(&authn, &mut bearer(&forged), None),
        Err(JwtError::KidAlgMismatch)
    );
}

#[test]
fn outputs_forwarding_and_claims_for_authorization() {
    let issuer = TestIssuer::es256(ISSUER, "ec");
    let mut r = rule(&issuer);
    r.forward_original_token = true;
    r.output_payload_to_header = "x-jwt-payload".to_owned();
    r.output_claim_to_headers = vec![
        proto::ClaimToHeader {
            header: "x-team".to_owned(),
            claim: "org.team".to_owned(),
        },
        proto::ClaimToHeader {
            header: "x-level".to_owned(),
            claim: "level".to_owned(),
        },
        proto::ClaimToHeader {
            header: "x-groups".to_owned(),
            claim: "groups".to_owned(),
        },
    ];
    r.space_delimited_claims = vec!["roles".to_owned()];
    let authn = providers(vec![r]);
    let body = json!({
        "sub": "carol", "aud": ["api"], "azp": "web", "org": {"team": "payments"},
        "level": 3, "groups": ["a"], "scope": "read write", "roles": "x y",
    });
    let token = issuer.token(body);
    let mut headers = bearer(&token);
    headers.insert("x-groups", HeaderValue::from_static("spoofed"));
    let auth = run(&authn, &mut headers, None).unwrap().unwrap();
    assert_eq!(
        headers.get(http::header::AUTHORIZATION).unwrap(),
        &format!("Bearer {token}"),
        "forwardOriginalToken keeps the token"
    );
    let payload = headers.get("x-jwt-payload").unwrap().to_str().unwrap();
    assert_eq!(payload, token.split('.').nth(1).unwrap());
    assert_eq!(headers.get("x-team").unwrap(), "payments");
    assert_eq!(headers.get("x-level").unwrap(), "3");
    // A list claim is not copied, and what the client sent under that name is gone.
    assert!(!headers.contains_key("x-groups"));
    assert_eq!(auth.audiences, vec!["api".to_owned()]);
    assert_eq!(auth.presenter.as_deref(), Some("web"));
    assert_eq!(auth.claims["scope"], json!(["read", "write"]));
    assert_eq!(auth.claims["roles"], json!(["x", "y"]));

    // Without a token, a client cannot supply the output headers itself.
    let mut headers = HeaderMap::new();
    headers.insert("x-jwt-payload", HeaderValue::from_static("e30"));
    headers.insert("x-team", HeaderValue::from_static("admins"));
    assert_eq!(run(&authn, &mut headers, None), Ok(None));
    assert!(headers.is_empty());
}

#[test]
fn unusable_jwks_refuse_every_token() {
    let issuer = TestIssuer::es256(ISSUER, "ec");
    for jwks in [
        "",
        "not json",
        r#"{"keys": 3}"#,
        r#"{"keys": [{"kty": "XYZ"}]}"#,
    ] {
        let mut r = rule(&issuer);
        r.jwks = jwks.to_owned();
        let authn = providers(vec![r]);
        assert_eq!(
            run(&authn, &mut bearer(&issuer.token(claims("a"))), None),
            Err(JwtError::KidAlgMismatch),
            "{jwks:?}"
        );
    }
    // A bad key beside a good one is skipped, as Envoy skips it.
    let mut r = rule(&issuer);
    r.jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "x": "!"}, issuer.jwk()]}).to_string();
    let authn = providers(vec![r]);
    assert!(run(&authn, &mut bearer(&issuer.token(claims("a"))), None).is_ok());
}

#[test]
fn invalid_header_names_are_configuration_errors() {
    let issuer = TestIssuer::es256(ISSUER, "ec");
    let mut r = rule(&issuer);
    r.output_payload_to_header = "bad header".to_owned();
    let error = authentication(&proto::RequestAuthentication {
        name: "jwt".to_owned(),
        namespace: "default".to_owned(),
        jwt_rules: vec![r],
        target_services: Vec::new(),
    })
    .unwrap_err();
    assert!(error.to_string().contains("default/jwt"), "{error}");
}
