//! RequestAuthentication at the waypoint, end to end through a real tunnel: a token is
//! validated before authorization, a `requestPrincipals` policy then decides, and the rules are
//! read per request, so a change reaches a connection already open.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use weft_proto::waypoint as proto;

use waypoint::testing::TestIssuer;

use crate::harness::*;

const ISSUER: &str = "https://issuer.example";

fn request_authentication(issuer: &TestIssuer) -> proto::RequestAuthentication {
    proto::RequestAuthentication {
        name: "jwt".to_owned(),
        namespace: "default".to_owned(),
        jwt_rules: vec![proto::JwtRule {
            issuer: issuer.issuer.clone(),
            audiences: vec!["reviews".to_owned()],
            jwks: issuer.jwks(),
            output_claim_to_headers: vec![proto::ClaimToHeader {
                header: "x-jwt-sub".to_owned(),
                claim: "sub".to_owned(),
            }],
            ..Default::default()
        }],
        target_services: vec![HOST.to_owned()],
    }
}

fn require_principal(principal: &str) -> proto::L7Authorization {
    proto::L7Authorization {
        name: "require-jwt".to_owned(),
        namespace: "default".to_owned(),
        action: proto::l7_authorization::Action::Allow as i32,
        rules: vec![proto::Rule {
            from: vec![proto::rule::From {
                source: Some(proto::Source {
                    request_principals: vec![principal.to_owned()],
                    ..Default::default()
                }),
            }],
            to: Vec::new(),
            when: vec![proto::Condition {
                key: "request.auth.claims[groups]".to_owned(),
                values: vec!["readers".to_owned()],
                not_values: Vec::new(),
            }],
        }],
        dry_run: false,
        target_services: Vec::new(),
    }
}

fn with_token(path: &str, token: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", HOST)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn a_jwt_policy_admits_valid_tokens_refuses_invalid_ones_and_denies_missing_ones() {
    let (mesh, v1, _v2) = two_endpoints().await;
    let harness = Harness::start(mesh, &[&v1]).await;
    let issuer = TestIssuer::es256(ISSUER, "k1");
    let forger = TestIssuer::es256(ISSUER, "k1");
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.request_authentications
        .push(request_authentication(&issuer));
    cfg.authorization_policies
        .push(require_principal(&format!("{ISSUER}/*")));
    harness.waypoint.apply_config(cfg).unwrap();
    let claims = |sub: &str, exp: u64| json!({"sub": sub, "aud": "reviews", "exp": exp, "groups": ["readers"]});

    // One connection for every request: the configuration is read per request.
    let mut sender = harness.http1().await;
    let valid = issuer.token(claims("alice", now() + 300));
    let (status, _, _) = send_on(&mut sender, with_token("/valid", &valid)).await;
    assert_eq!(status, StatusCode::OK);
    let seen = v1.last_request().expect("the app saw the request");
    assert_eq!(seen.path, "/valid");
    assert!(
        !seen.headers.contains_key("authorization"),
        "the token is not forwarded by default"
    );
    assert_eq!(seen.headers.get("x-jwt-sub").unwrap(), "alice");

    let before = v1.request_count();
    for (name, token, body) in [
        (
            "forged",
            forger.token(claims("alice", now() + 300)),
            "Jwt verification fails",
        ),
        (
            "expired",
            issuer.token(claims("alice", now() - 120)),
            "Jwt is expired",
        ),
        (
            "malformed",
            "not-a-jwt".to_owned(),
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections",
        ),
    ] {
        let (status, headers, got) = send_on(&mut sender, with_token("/x?q=1", &token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(got, body, "{name}");
        assert_eq!(
            headers.get("www-authenticate").unwrap(),
            &format!("Bearer realm=\"http://{HOST}/x\", error=\"invalid_token\""),
            "{name}"
        );
    }
    // A token for another audience: Envoy's 403.
    let other = issuer.token(json!({"sub": "alice", "aud": "web", "exp": now() + 300}));
    let (status, _, body) = send_on(&mut sender, with_token("/aud", &other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "Audiences in Jwt are not allowed");

    // No token: authentication passes, the policy finds no request principal.
    let (status, _, body) = send_on(&mut sender, get("/missing")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, weft_policy::ACCESS_DENIED_BODY);
    // A valid token without the claim the policy asks for.
    let no_group = issuer.token(json!({"sub": "bob", "aud": "reviews", "exp": now() + 300}));
    let (status, _, _) = send_on(&mut sender, with_token("/no-group", &no_group)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        v1.request_count(),
        before,
        "no refused request reached the app"
    );

    // The policy now names another principal: the same connection sees it at once.
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.request_authentications
        .push(request_authentication(&issuer));
    cfg.authorization_policies
        .push(require_principal(&format!("{ISSUER}/bob")));
    harness.waypoint.apply_config(cfg).unwrap();
    let (status, _, _) = send_on(&mut sender, with_token("/valid", &valid)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Without the RequestAuthentication a token is not even read: no principal, denied, and a
    // forged token is no longer a 401.
    let mut cfg = config(vec![route_to("v1")], vec![cluster("v1", &[&v1])]);
    cfg.authorization_policies
        .push(require_principal(&format!("{ISSUER}/*")));
    harness.waypoint.apply_config(cfg).unwrap();
    let forged = forger.token(claims("alice", now() + 300));
    let (status, _, _) = send_on(&mut sender, with_token("/forged", &forged)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
