//! Conditions on the request's validated JWT (`request.auth.*`, `requestPrincipals`).

use super::*;

fn jwt_policy(action: PolicyAction, rule: HttpRule) -> HttpAuthorization {
    HttpAuthorization {
        name: "jwt".to_owned(),
        namespace: "default".to_owned(),
        action,
        rules: vec![rule],
        dry_run: false,
    }
}

fn jwt_when(key: &str, values: &[&str], not_values: &[&str]) -> HttpRule {
    let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    HttpRule {
        when: vec![Condition::parse(key, &owned(values), &owned(not_values)).unwrap()],
        ..Default::default()
    }
}

#[test]
fn request_principals_match_the_validated_jwt_only() {
    let allow = [jwt_policy(
        PolicyAction::Allow,
        HttpRule {
            from: vec![Source {
                request_principals: w(&["https://issuer.example/*"]),
                ..Default::default()
            }],
            ..Default::default()
        },
    )];
    let token = || get("/").jwt("https://issuer.example/alice", serde_json::json!({}));
    assert_eq!(token().decide(&allow), Decision::Allow);
    assert_eq!(
        get("/")
            .jwt("https://other.example/alice", serde_json::json!({}))
            .decide(&allow),
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    );
    // No token: no request principal, even when the peer is authenticated.
    assert_eq!(
        get("/").decide(&allow),
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    );
    // `*` requires a request principal, whatever it is.
    let any = [jwt_policy(
        PolicyAction::Allow,
        HttpRule {
            from: vec![Source {
                request_principals: w(&["*"]),
                ..Default::default()
            }],
            ..Default::default()
        },
    )];
    assert_eq!(token().decide(&any), Decision::Allow);
    assert_ne!(get("/").decide(&any), Decision::Allow);
    // notRequestPrincipals: "*" denies every request without a token.
    let deny_missing = [jwt_policy(
        PolicyAction::Deny,
        HttpRule {
            from: vec![Source {
                not_request_principals: w(&["*"]),
                ..Default::default()
            }],
            ..Default::default()
        },
    )];
    assert_eq!(token().decide(&deny_missing), Decision::Allow);
    assert!(matches!(
        get("/").decide(&deny_missing),
        Decision::Deny(DenyReason::DeniedBy(_))
    ));
}

#[test]
fn request_auth_conditions_read_principal_audiences_presenter_and_claims() {
    let claims = serde_json::json!({
        "aud": ["api", "web"],
        "azp": "frontend",
        "groups": ["dev", "ops"],
        "org": {"team": "payments"},
    });
    let req = || get("/").jwt("iss/sub", claims.clone());
    let cases: &[(&str, &[&str], &[&str], bool)] = &[
        ("request.auth.principal", &["iss/sub"], &[], true),
        ("request.auth.principal", &["iss/*"], &["iss/sub"], false),
        ("request.auth.audiences", &["web"], &[], true),
        ("request.auth.audiences", &["mobile"], &[], false),
        ("request.auth.presenter", &["frontend"], &[], true),
        ("request.auth.presenter", &["backend"], &[], false),
        ("request.auth.claims[groups]", &["ops"], &[], true),
        ("request.auth.claims[groups]", &["admin"], &[], false),
        ("request.auth.claims[groups]", &[], &["admin"], true),
        ("request.auth.claims[org][team]", &["pay*"], &[], true),
        ("request.auth.claims[org][team]", &["billing"], &[], false),
        ("request.auth.claims[missing]", &["*"], &[], false),
    ];
    for (key, values, not_values, allowed) in cases {
        let policy = [jwt_policy(
            PolicyAction::Allow,
            jwt_when(key, values, not_values),
        )];
        assert_eq!(
            req().decide(&policy) == Decision::Allow,
            *allowed,
            "{key} {values:?} {not_values:?}"
        );
        // Without a token nothing under request.auth matches; notValues alone hold.
        assert_eq!(
            get("/").decide(&policy) == Decision::Allow,
            values.is_empty(),
            "no token: {key} {values:?} {not_values:?}"
        );
    }
}

#[test]
fn request_auth_keys_must_be_well_formed() {
    for key in [
        "request.auth.claims",
        "request.auth.claims[]",
        "request.auth.claims.groups",
        "request.auth.raw",
    ] {
        assert!(
            Condition::parse(key, &["x".to_owned()], &[]).is_err(),
            "{key}"
        );
    }
}

#[test]
fn tcp_treats_jwt_attributes_as_http_only() {
    let tcp = TcpAuthzRequest {
        source_identity: None,
        source_ip: "10.1.0.5".parse().unwrap(),
        remote_ip: "10.1.0.5".parse().unwrap(),
        destination_ip: "10.2.0.9".parse().unwrap(),
        port: 9000,
    };
    let principals = HttpRule {
        from: vec![Source {
            request_principals: w(&["*"]),
            ..Default::default()
        }],
        ..Default::default()
    };
    // An ALLOW rule needing a JWT never matches a connection ...
    assert_eq!(
        evaluate_tcp(&[jwt_policy(PolicyAction::Allow, principals.clone())], &tcp),
        Decision::Deny(DenyReason::NoAllowPolicyMatched)
    );
    // ... and a DENY rule loses its JWT parts, so it denies the connection.
    assert!(matches!(
        evaluate_tcp(&[jwt_policy(PolicyAction::Deny, principals)], &tcp),
        Decision::Deny(DenyReason::DeniedBy(_))
    ));
    assert!(matches!(
        evaluate_tcp(
            &[jwt_policy(
                PolicyAction::Deny,
                jwt_when("request.auth.claims[groups]", &["admin"], &[])
            )],
            &tcp
        ),
        Decision::Deny(DenyReason::DeniedBy(_))
    ));
}
